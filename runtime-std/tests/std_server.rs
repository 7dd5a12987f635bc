//! The threaded runtime driven for real: `serve_with` on loopback ports,
//! real SQLite files and an outbox in a temporary folder, clients over TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tokenizer_auth_effects::mail::{DEFAULT_FROM, MailConfig, SmtpConfig, SmtpSecurity};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::serve::ServeError;
use tokenizer_auth_effects::settings::Settings;
use tokenizer_auth_effects::store::SqliteStore;
use tokenizer_auth_engine::{LOGIN_PREFIX, Secret};
use tokenizer_auth_runtime_std::server::{Bound, Stop, serve_with};

const EMAIL: &str = "ada@example.com";
const PHONE: &str = "+15550100";
const PASSWORD: &str = "correct horse battery staple";
const MAC: &str = "aa:bb:cc:dd:ee:ff";

/// Long enough for a slow CI machine, short enough that a hang fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// A server running on a background thread.
struct Running {
    bound: Bound,
    stop: Stop,
    result: Receiver<Result<(), ServeError>>,
}

fn start(dir: &Path, configure: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = Settings::new(dir.to_path_buf());
    // Cheap argon2 parameters: this test is about the runtime, not the cost
    // of a password check.
    settings.cost = Cost::TEST_ONLY;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.listen = any_port;
    settings.legacy_passcode_listen = any_port;
    settings.legacy_login_listen = any_port;
    configure(&mut settings);

    let stop = Stop::new();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (result_tx, result_rx) = mpsc::channel();
    let server_stop = stop.clone();
    thread::spawn(move || {
        let result = serve_with(settings, move |bound| ready_tx.send(bound).unwrap(), server_stop);
        let _ = result_tx.send(result);
    });
    let Ok(bound) = ready_rx.recv_timeout(PATIENCE) else {
        panic!("the server did not start: {:?}", result_rx.try_recv());
    };
    Running { bound, stop, result: result_rx }
}

/// Adds the test account.
fn add_user(dir: &Path) {
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap();
    SqliteStore::open(dir).unwrap().add_user(EMAIL, PHONE, &hasher.hash(&Secret::new(PASSWORD)).unwrap()).unwrap();
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A native-protocol client: lines out, lines in.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client { reader: BufReader::new(connect(addr)) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn ask(&mut self, request: &str) -> String {
        self.send(format!("{request}\n").as_bytes());
        self.line()
    }

    /// Reads to the end of the stream; whatever is left must be nothing.
    fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).unwrap();
        rest
    }
}

/// The passcode in the newest message of the outbox.
fn newest_passcode(dir: &Path) -> String {
    let mut mails: Vec<_> = std::fs::read_dir(dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    // Names start with the time the message was written.
    mails.sort();
    let text = std::fs::read_to_string(mails.last().expect("a message in the outbox")).unwrap();
    assert!(text.contains(EMAIL));
    tokenizer_auth_engine::mail::find_passcode(&text).expect("a passcode in the message").to_owned()
}

/// The string in a pickle written by Python 3.11's `pickle.dumps(s)`.
fn unpickle(bytes: &[u8]) -> String {
    assert_eq!(bytes[..3], [0x80, 0x04, 0x95], "protocol 4 with a frame: {bytes:02x?}");
    let frame = u64::from_le_bytes(bytes[3..11].try_into().unwrap());
    assert_eq!(frame as usize, bytes.len() - 11, "frame length");
    assert_eq!(bytes[11], 0x8c, "SHORT_BINUNICODE");
    let len = usize::from(bytes[12]);
    assert_eq!(bytes[13 + len..], [0x94, 0x2e], "MEMOIZE, STOP");
    String::from_utf8(bytes[13..13 + len].to_vec()).unwrap()
}

#[test]
fn serves_native_and_legacy_clients_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path());
    let server = start(dir.path(), |_| {});

    // Passcode by mail, then a login with it, on one native connection.
    let mut native = Client::connect(server.bound.native);
    assert_eq!(native.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent\n");
    let passcode = newest_passcode(dir.path());
    let reply = native.ask(&format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{passcode}"));
    let token = reply.strip_prefix(LOGIN_PREFIX).unwrap_or_else(|| panic!("a login reply: {reply:?}")).trim_end();
    assert_eq!(token.len(), 64, "{token:?}");
    assert_eq!(native.ask(&format!("{token}|{MAC}|get")), "authorized\n");

    // Pipelined in one write: replies that wait on the store, on a password
    // check, and none at all still come back in request order.
    let unknown = "0".repeat(64);
    native.send(
        format!(
            "{token}|{MAC}|get\n\
             not a request\n\
             {unknown}|{MAC}|get\n\
             require_passcode|{MAC}|wrong password|{PHONE}|{EMAIL}\n\
             {token}|{MAC}|put|a|b|c\n"
        )
        .as_bytes(),
    );
    let replies: Vec<String> = (0..5).map(|_| native.line()).collect();
    assert_eq!(replies, ["authorized\n", "error|malformed\n", "unauthorized\n", "False\n", "authorized\n"]);

    // A token from another device is refused.
    let mut other = Client::connect(server.bound.native);
    assert_eq!(other.ask(&format!("{token}|11:22:33:44:55:66|get")), "unauthorized\n");

    // A line over the limit: the error reply arrives whole before the close,
    // even though the client is still sending.
    let mut long = Client::connect(server.bound.native);
    long.send(&vec![b'a'; 5000]);
    assert_eq!(long.line(), "error|line_too_long\n");
    assert_eq!(long.rest(), b"");

    // The old client: one unterminated write, one pickled reply, then EOF.
    let mut legacy = connect(server.bound.legacy_passcode);
    legacy.write_all(format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}").as_bytes()).unwrap();
    let mut pickled = Vec::new();
    legacy.read_to_end(&mut pickled).unwrap();
    assert_eq!(unpickle(&pickled), "Passcode is sent");

    // The legacy login port, with the passcode just mailed.
    let passcode = newest_passcode(dir.path());
    let mut legacy = connect(server.bound.legacy_login);
    legacy.write_all(format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{passcode}").as_bytes()).unwrap();
    let mut pickled = Vec::new();
    legacy.read_to_end(&mut pickled).unwrap();
    assert!(unpickle(&pickled).starts_with(LOGIN_PREFIX));

    // Stop with a connection still open: the server closes it and returns.
    let asked = Instant::now();
    server.stop.stop();
    let result = server.result.recv_timeout(Duration::from_secs(5)).expect("serve returns within 5 s of the stop");
    assert!(result.is_ok(), "{result:?}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(native.rest(), b"");
    assert!(TcpStream::connect(server.bound.native).is_err(), "the listener is closed");
}

#[test]
fn a_stop_before_any_client_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {});
    server.stop.stop();
    let result = server.result.recv_timeout(Duration::from_secs(5)).expect("serve returns within 5 s of the stop");
    assert!(result.is_ok(), "{result:?}");
}

/// An SMTP relay that takes a connection and then says nothing until told
/// to go on, so a test can hold a mail effect in flight.
struct HeldRelay {
    port: u16,
    /// Sent when the server has connected.
    contacted: Receiver<()>,
    /// Send to let the relay greet and take the message.
    go: Sender<()>,
}

impl HeldRelay {
    fn start() -> HeldRelay {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (contacted_tx, contacted) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            contacted_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            out.write_all(b"220 relay ESMTP\r\n").unwrap();
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let answer: &[u8] = match verb.as_str() {
                    "DATA" => {
                        out.write_all(b"354 go ahead\r\n").unwrap();
                        while line != ".\r\n" {
                            line.clear();
                            if reader.read_line(&mut line).unwrap() == 0 {
                                return;
                            }
                        }
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        out.write_all(b"221 bye\r\n").unwrap();
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                out.write_all(answer).unwrap();
            }
        });
        HeldRelay { port, contacted, go }
    }
}

#[test]
fn a_stop_lets_the_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path());
    let relay = HeldRelay::start();
    let server = start(dir.path(), |settings| {
        settings.mail = MailConfig::Smtp(SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port: relay.port,
            security: SmtpSecurity::Plain,
            credentials: None,
            from: DEFAULT_FROM.to_owned(),
            timeout: PATIENCE,
        });
    });

    let mut client = Client::connect(server.bound.native);
    client.send(format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n").as_bytes());
    relay.contacted.recv_timeout(PATIENCE).expect("the server connects to the relay");

    // The mail effect is in flight. Stop, and wait for the listener to go
    // (the shutdown has begun) before the relay answers.
    server.stop.stop();
    let asked = Instant::now();
    while TcpStream::connect(server.bound.native).is_ok() {
        assert!(asked.elapsed() < PATIENCE, "the listener is still open");
        thread::sleep(Duration::from_millis(10));
    }
    relay.go.send(()).unwrap();

    // The mail is sent, the passcode committed, the reply written; then the
    // connection is closed and serve returns.
    assert_eq!(client.line(), "Passcode is sent\n");
    assert_eq!(client.rest(), b"");
    let result = server.result.recv_timeout(Duration::from_secs(5)).expect("serve returns within 5 s of the reply");
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn serve_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // `serve` takes fixed addresses: borrow free ports from the OS, and try
    // again with others if one was taken in between.
    let (mut client, result) = (0..5)
        .find_map(|_| {
            let mut settings = Settings::new(dir.path().to_path_buf());
            // Cheap argon2 parameters: this test is about the signal, not
            // hashing.
            settings.cost = Cost::TEST_ONLY;
            let free = || std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap();
            (settings.listen, settings.legacy_passcode_listen, settings.legacy_login_listen) = (free(), free(), free());
            let native = settings.listen;
            let (result_tx, result_rx) = mpsc::channel();
            thread::spawn(move || result_tx.send(tokenizer_auth_runtime_std::server::serve(settings)));

            // Listening means the signal handler is in place (it is set up
            // first), so the signal below cannot kill the test process.
            let started = Instant::now();
            loop {
                if let Ok(result) = result_rx.try_recv() {
                    let error = result.expect_err("serve returned before the signal");
                    assert!(error.to_string().starts_with("cannot listen"), "{error}");
                    return None;
                }
                if TcpStream::connect(native).is_ok() {
                    return Some((Client::connect(native), result_rx));
                }
                assert!(started.elapsed() < PATIENCE, "the server did not start");
                thread::sleep(Duration::from_millis(10));
            }
        })
        .expect("free ports within five tries");
    assert_eq!(client.ask("not a request"), "error|malformed\n");

    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    let result = result.recv_timeout(Duration::from_secs(5)).expect("serve returns within 5 s of SIGTERM");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(client.rest(), b"");
}
