//! The Rust client library (`clients/rust`, docs/CLIENTS.md) against this
//! build's server, started on loopback with free ports: the full flow,
//! pipelining, renewal with a 2-second token lifetime, TLS, every refusal
//! the server can be made to send, surfacing as its error, and the token
//! file shared with `tokenizer-auth client` and the Python package.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use support::pki::Pki;
use support::*;
use tokenizer_auth_client::{
    BaseToken, Call, Client, DeviceMac, Error, FileTokenStore, MemoryTokenStore, Options, StoredToken, TokenStore,
};

fn mac() -> DeviceMac {
    DeviceMac::parse(MAC).unwrap()
}

fn options(store: impl TokenStore + 'static) -> Options {
    Options { timeout: Duration::from_secs(20), mac: Some(mac()), store: Box::new(store), ..Options::default() }
}

fn connect(server: &Server, options: Options) -> Client {
    Client::connect(&server.native.to_string(), options).unwrap()
}

/// Asks for a passcode and logs in with it: the new token.
fn log_in(server: &Server, client: &mut Client) -> BaseToken {
    client.request_passcode(EMAIL, PHONE, PASSWORD).unwrap();
    client.login(EMAIL, PHONE, PASSWORD, &server.outbox_passcode()).unwrap()
}

/// A token no session has.
fn stranger() -> MemoryTokenStore {
    MemoryTokenStore::with(StoredToken { token: BaseToken::from_bytes([0x12; 32]), mac: Some(mac()) })
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A token file that counts its saves.
struct Counting {
    file: FileTokenStore,
    saves: AtomicUsize,
}

impl Counting {
    fn new(path: PathBuf) -> Arc<Counting> {
        Arc::new(Counting { file: FileTokenStore::new(path), saves: AtomicUsize::new(0) })
    }

    fn token(&self) -> BaseToken {
        self.file.load().unwrap().unwrap().token
    }
}

impl TokenStore for Counting {
    fn load(&self) -> std::io::Result<Option<StoredToken>> {
        self.file.load()
    }

    fn save(&self, stored: &StoredToken) -> std::io::Result<()> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.file.save(stored)
    }
}

#[test]
fn the_full_flow_then_100_requests_pipelined_in_order() {
    let server = Server::start("mio", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("device").join("token");
    let mut client = connect(&server, options(FileTokenStore::new(&path)));

    assert!(matches!(client.request_passcode(EMAIL, PHONE, "wrong password"), Err(Error::CredentialsRejected)));
    let token = log_in(&server, &mut client);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{token} {MAC}\n"));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    client.request("status", &[]).unwrap();
    client.request("put", &["key", "value with spaces", ""]).unwrap();
    // The passcode is spent.
    let spent = server.outbox_passcode();
    assert!(matches!(client.login(EMAIL, PHONE, PASSWORD, &spent), Err(Error::CredentialsRejected)));

    // A device restarted: a new client, the token and its MAC from the file.
    let mut restarted = connect(&server, Options { mac: None, ..options(FileTokenStore::new(&path)) });
    restarted.request("status", &[]).unwrap();

    // 100 pipelined, with refusals at known places: a passcode request
    // whose email is too long for the server is `error|malformed`.
    let long_email = format!("{}@example.com", "x".repeat(300));
    let numbers: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let data: Vec<[&str; 1]> = numbers.iter().map(|n| [n.as_str()]).collect();
    let calls: Vec<Call> = (0..100)
        .map(|i| match i % 10 {
            7 => Call::Passcode { email: &long_email, phone: PHONE, password: PASSWORD },
            _ => Call::Request { request: "status", data: &data[i] },
        })
        .collect();
    let results = client.pipeline(&calls).unwrap();
    assert_eq!(results.len(), 100);
    for (i, result) in results.iter().enumerate() {
        match i % 10 {
            7 => assert!(matches!(result, Err(Error::Malformed)), "{i}: {result:?}"),
            _ => assert!(result.is_ok(), "{i}: {result:?}"),
        }
    }
    // More than a window's worth.
    let results = client.pipeline(&[Call::Request { request: "status", data: &[] }; 1000]).unwrap();
    assert!(results.iter().all(Result::is_ok));

    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains(&token.to_string()) && !log.contains(&spent), "a secret in the log");
}

#[test]
fn the_token_file_is_shared_with_the_command_and_the_python_package() {
    let server = Server::start("mio", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let rust_file = tmp.path().join("rust-token");
    let token = log_in(&server, &mut connect(&server, options(FileTokenStore::new(&rust_file))));

    // `tokenizer-auth client request` uses the library's file.
    let addr = server.native.to_string();
    let file = rust_file.to_str().unwrap();
    let out = run_on(&server.dir, &["client", "--addr", &addr, "request", "--token-file", file, "status"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "authorized\n", "{}", String::from_utf8_lossy(&out.stderr));

    // The Python package reads it, and writes one (the MAC spelled its
    // own way) that the library reads and uses.
    let python_file = tmp.path().join("python-token");
    let script = "import sys\n\
                  from tokenizer_auth_client import FileTokenStore, StoredToken\n\
                  stored = FileTokenStore(sys.argv[1]).load()\n\
                  print(stored.token, stored.mac)\n\
                  FileTokenStore(sys.argv[2]).save(StoredToken(stored.token, 'AA-BB-CC-DD-EE-FF'))\n";
    let out = Command::new("python3")
        .args(["-c", script, file, python_file.to_str().unwrap()])
        .env("PYTHONPATH", Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{token} {MAC}\n"));
    assert_eq!(mode(&python_file), 0o600);
    let stored = FileTokenStore::new(&python_file).load().unwrap().unwrap();
    assert_eq!(stored, StoredToken { token, mac: Some(DeviceMac::parse("AA-BB-CC-DD-EE-FF").unwrap()) });
    connect(&server, Options { mac: None, ..options(FileTokenStore::new(&python_file)) })
        .request("status", &[])
        .unwrap();
}

#[test]
fn an_expired_token_is_renewed_once_also_for_a_burst_of_100() {
    const TTL: Duration = Duration::from_secs(2);
    let server = Server::start("mio", &[("TOKENIZER_AUTH_TOKEN_TTL", "2s")]);
    let tmp = tempfile::tempdir().unwrap();
    let store = Counting::new(tmp.path().join("token"));
    let mut client = connect(&server, options(Arc::clone(&store)));
    let old = log_in(&server, &mut client);
    let expired = |since: Instant| {
        thread::sleep((since + TTL + Duration::from_millis(300)).saturating_duration_since(Instant::now()))
    };

    // One request: renew|X, X stored, the request made again with X.
    expired(Instant::now());
    let saves = store.saves.load(Ordering::SeqCst);
    client.request("status", &[]).unwrap();
    let renewed = Instant::now();
    let new = store.token();
    assert_ne!(new, old);
    assert_eq!(store.saves.load(Ordering::SeqCst), saves + 1, "the successor, stored once");
    // Within the renewal grace the old token learns the same successor.
    let other = Arc::new(MemoryTokenStore::with(StoredToken { token: old, mac: Some(mac()) }));
    connect(&server, options(Arc::clone(&other))).request("status", &[]).unwrap();
    assert_eq!(other.load().unwrap().unwrap().token, new, "one successor");
    assert_eq!(store.saves.load(Ordering::SeqCst), saves + 1);

    // A burst of 100 with the expired successor: one renewal, stored once,
    // and every request served.
    expired(renewed);
    let results = client.pipeline(&[Call::Request { request: "status", data: &[] }; 100]).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.saves.load(Ordering::SeqCst), saves + 2, "one successor for the burst, stored once");
    let newest = store.token();
    assert!(newest != new && newest != old);
    // The command takes the renewed token from the file.
    let (addr, file) = (server.native.to_string(), tmp.path().join("token"));
    let out =
        run_on(&server.dir, &["client", "--addr", &addr, "request", "--token-file", file.to_str().unwrap(), "x"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "authorized\n", "{}", String::from_utf8_lossy(&out.stderr));
}

fn tls_server(pki: &Pki) -> Server {
    Server::start("mio", &pki.env())
}

fn tls_options(pki: &Pki, store: impl TokenStore + 'static) -> Options {
    Options { ca: Some(pki.ca.clone()), ..options(store) }
}

#[test]
fn tls_the_full_flow_and_certificates_refused_before_any_request() {
    let pki = Pki::local();
    let server = tls_server(&pki);
    let addr = server.native.to_string();
    let mut client = Client::connect(&addr, tls_options(&pki, MemoryTokenStore::new())).unwrap();
    log_in(&server, &mut client);
    client.request("status", &[]).unwrap();
    let results = client.pipeline(&[Call::Request { request: "status", data: &[] }; 100]).unwrap();
    assert!(results.iter().all(Result::is_ok));
    // By name too.
    let by_name = format!("localhost:{}", server.native.port());
    let mut named = Client::connect(&by_name, tls_options(&pki, stranger())).unwrap();
    assert!(matches!(named.request("status", &[]), Err(Error::Unauthorized)));

    // Refused in `connect`: no client, so no request, exists.
    let refused = |addr: &str, options: Options, why: &str| {
        let e = Client::connect(addr, options).unwrap_err();
        assert!(matches!(&e, Error::Tls { .. }) && !e.is_retryable(), "{e:?}");
        assert!(e.to_string().starts_with("TLS with ") && e.to_string().contains(why), "{e}");
    };
    // The test authority is not among the system's roots.
    refused(&addr, Options { tls: true, ..options(stranger()) }, "UnknownIssuer");
    let other_name = Options { server_name: Some("other.example".into()), ..tls_options(&pki, stranger()) };
    refused(&addr, other_name, "not valid for name");
    let expired = Pki::new(&["localhost", "127.0.0.1"], true);
    let old_server = tls_server(&expired);
    refused(&old_server.native.to_string(), tls_options(&expired, stranger()), "expired");

    // Plaintext to the TLS listener: closed without a reply.
    let mut plain = Client::connect(&addr, options(stranger())).unwrap();
    assert!(matches!(plain.request("status", &[]), Err(Error::Closed { .. })));
    // A CA file that holds no certificate.
    let tmp = tempfile::tempdir().unwrap();
    let not_a_ca = tmp.path().join("ca.pem");
    std::fs::write(&not_a_ca, "not a certificate").unwrap();
    let e = Client::connect(&addr, Options { ca: Some(not_a_ca), ..options(stranger()) });
    assert!(matches!(e, Err(Error::TlsConfig(_))), "{e:?}");
}

#[test]
fn refusals_surface_as_their_errors() {
    // One passcode request per email per window: the second is refused.
    let server = Server::start("mio", &[("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_EMAIL", "1")]);
    let mut client = connect(&server, options(MemoryTokenStore::new()));
    let e = client.login(EMAIL, PHONE, PASSWORD, "AAAAAA").unwrap_err();
    assert!(matches!(e, Error::CredentialsRejected) && !e.is_retryable(), "{e:?}");
    let e = connect(&server, options(stranger())).request("status", &[]).unwrap_err();
    assert!(matches!(e, Error::Unauthorized) && !e.is_retryable(), "{e:?}");

    // Fields the server finds too long; the connection goes on.
    let long_email = format!("{}@example.com", "x".repeat(300));
    let e = client.request_passcode(&long_email, PHONE, PASSWORD).unwrap_err();
    assert!(matches!(e, Error::Malformed) && !e.is_retryable(), "{e:?}");
    assert!(matches!(client.login(EMAIL, &"9".repeat(65), PASSWORD, "AAAAAA"), Err(Error::Malformed)));
    // A line over max_line (4096): the server closes the connection, and
    // the next call opens another.
    let e = client.request_passcode(EMAIL, PHONE, &"p".repeat(5000)).unwrap_err();
    assert!(matches!(e, Error::LineTooLong) && !e.is_retryable(), "{e:?}");
    assert!(matches!(client.request_passcode(&long_email, PHONE, PASSWORD), Err(Error::Malformed)));

    client.request_passcode(EMAIL, PHONE, PASSWORD).unwrap();
    let e = client.request_passcode(EMAIL, PHONE, PASSWORD).unwrap_err();
    assert!(matches!(e, Error::RateLimited) && e.is_retryable(), "{e:?}");
    assert!(!e.to_string().contains(PASSWORD));
}

#[test]
fn too_many_connections() {
    // The bound is the server's, however many event loops share it out.
    let server = Server::start("mio", &[("TOKENIZER_AUTH_MAX_CONNECTIONS", "2")]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut held = TcpStream::connect(server.native).unwrap();
            held.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // Answered, so accepted before the client's connection.
            held.write_all(b"\n").unwrap();
            let mut line = String::new();
            BufReader::new(&held).read_line(&mut line).unwrap();
            assert_eq!(line, "error|malformed\n");
            held
        })
        .collect();
    let e = connect(&server, options(stranger())).request("status", &[]).unwrap_err();
    assert!(matches!(e, Error::TooManyConnections) && e.is_retryable(), "{e:?}");
    drop(held);
}

#[test]
fn busy_when_password_checks_queue_up() {
    // One password check at a time, and no limit in the way of a burst.
    let server = Server::start(
        "mio",
        &[
            ("TOKENIZER_AUTH_MAX_PASSWORD_CHECKS", "1"),
            ("TOKENIZER_AUTH_HASH_WORKERS", "1"),
            ("TOKENIZER_AUTH_FAILURES_PER_EMAIL", "0"),
            ("TOKENIZER_AUTH_FAILURES_PER_IP", "0"),
            ("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_EMAIL", "0"),
            ("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_IP", "0"),
        ],
    );
    let refused = |e: &Error| matches!(e, Error::Busy | Error::CredentialsRejected);
    // Pipelined passcode requests each need a password check: beyond the
    // one the server queues, they are told busy.
    let emails: Vec<String> = (0..16).map(|i| format!("nobody{i}@example.com")).collect();
    let calls: Vec<Call> =
        emails.iter().map(|email| Call::Passcode { email, phone: PHONE, password: PASSWORD }).collect();
    let results = connect(&server, options(MemoryTokenStore::new())).pipeline(&calls).unwrap();
    let errors: Vec<Error> = results.into_iter().map(Result::unwrap_err).collect();
    assert!(errors.iter().all(refused), "{errors:?}");
    let busy = errors.iter().find(|e| matches!(e, Error::Busy)).expect("a busy reply");
    assert!(busy.is_retryable());

    // Logins in parallel, each on a connection of its own.
    let mut seen_busy = false;
    for _ in 0..5 {
        let start = Arc::new(Barrier::new(8));
        let addr = server.native.to_string();
        let logins: Vec<_> = (0..8)
            .map(|i| {
                let (start, addr) = (Arc::clone(&start), addr.clone());
                thread::spawn(move || {
                    let mut client = Client::connect(&addr, options(MemoryTokenStore::new())).unwrap();
                    start.wait();
                    client.login(&format!("nobody{i}@example.com"), PHONE, PASSWORD, "AAAAAA").unwrap_err()
                })
            })
            .collect();
        let errors: Vec<Error> = logins.into_iter().map(|login| login.join().unwrap()).collect();
        assert!(errors.iter().all(refused), "{errors:?}");
        seen_busy |= errors.iter().any(|e| matches!(e, Error::Busy));
        if seen_busy {
            break;
        }
    }
    assert!(seen_busy, "no parallel login was told busy");
}

#[test]
fn mail_unavailable_when_the_relay_is_down() {
    // A relay on a port where nothing listens.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let env = [
        ("TOKENIZER_AUTH_SMTP_HOST", "127.0.0.1"),
        ("TOKENIZER_AUTH_SMTP_PORT", port.as_str()),
        ("TOKENIZER_AUTH_SMTP_SECURITY", "plain"),
        ("TOKENIZER_AUTH_SMTP_TIMEOUT", "2s"),
    ];
    let server = Server::start("mio", &env);
    let e = connect(&server, options(MemoryTokenStore::new())).request_passcode(EMAIL, PHONE, PASSWORD).unwrap_err();
    assert!(matches!(e, Error::MailUnavailable) && e.is_retryable(), "{e:?}");
}

#[test]
fn store_unavailable_while_another_process_holds_the_files_lock() {
    let server = Server::start("mio", &[]);
    let mut client = connect(&server, options(MemoryTokenStore::new()));
    client.request_passcode(EMAIL, PHONE, PASSWORD).unwrap(); // the files exist, in WAL mode
    // Another process holds the passcodes file's write lock longer than
    // the server waits for it (5 s): the passcode request's counters cannot
    // be committed.
    let lock = rusqlite::Connection::open(server.dir.join("op_passcodes.db")).unwrap();
    lock.busy_timeout(Duration::from_secs(5)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let e = client.request_passcode(EMAIL, PHONE, PASSWORD).unwrap_err();
    assert!(matches!(e, Error::StoreUnavailable) && e.is_retryable(), "{e:?}");
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    // Once the lock is gone the server serves again.
    client.request_passcode(EMAIL, PHONE, PASSWORD).unwrap();
}
