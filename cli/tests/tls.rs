//! TLS on the native listener (docs/SECURITY.md, "TLS"), through the real
//! binary over real TCP on both runtimes, with certificates the tests make:
//! the whole flow, a plaintext client, a certificate the client must
//! refuse, SIGHUP, handshake bounds, and the start-up refusal of plaintext
//! off loopback.

#[macro_use]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use support::pki::Pki;
use support::*;

fn tls_server(runtime: &str, pki: &Pki, more: &[(&str, &str)]) -> Server {
    let mut env = pki.env().to_vec();
    env.extend_from_slice(more);
    Server::start(runtime, &env)
}

/// A TLS client of the native protocol, trusting `ca` only.
struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects and completes the handshake, or says why it failed.
    fn connect(addr: SocketAddr, ca: &Path) -> Result<TlsClient, String> {
        let config = tokenizer_auth_effects::tls::client_config(Some(ca), false).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(config, name).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        Ok(TlsClient { reader: BufReader::new(StreamOwned::new(conn, tcp)) })
    }

    fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).unwrap();
        stream.flush().unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no whole reply line: {line:?}");
        line.pop();
        line
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }
}

/// Runs the `client` command against `server` with `args` after the
/// connection flags.
fn client(server: &Server, tls: &[&str], args: &[&str], stdin: &str) -> std::process::Output {
    let addr = server.native.to_string();
    let mut all = vec!["client", "--addr", &addr, "--timeout", "20s"];
    all.extend_from_slice(tls);
    all.extend_from_slice(args);
    run_on(&server.dir, &all, stdin)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The whole flow over TLS: the `client` command asks for a passcode, logs
/// in and makes requests; a raw TLS client pipelines 100 token checks.
fn the_full_flow_over_tls(runtime: &str) {
    let pki = Pki::local();
    let server = tls_server(runtime, &pki, &[]);
    let ca = pki.ca.to_str().unwrap();
    let tls = ["--ca", ca];
    let password = format!("{PASSWORD}\n");
    let asked = client(
        &server,
        &tls,
        &["passcode", "--mac", MAC, "--email", EMAIL, "--phone", PHONE, "--password-stdin"],
        &password,
    );
    assert!(asked.status.success(), "{}", stderr(&asked));
    let passcode = server.outbox_passcode();
    let login =
        ["login", "--mac", MAC, "--email", EMAIL, "--phone", PHONE, "--passcode", &passcode, "--password-stdin"];
    let logged_in = client(&server, &tls, &login, &password);
    assert!(logged_in.status.success(), "{}", stderr(&logged_in));
    let requested = client(&server, &tls, &["request", "--repeat", "3", "get"], "");
    assert!(requested.status.success(), "{}", stderr(&requested));
    assert_eq!(String::from_utf8_lossy(&requested.stdout), "authorized\n".repeat(3));

    let stored = std::fs::read_to_string(server.dir.join("client-token")).unwrap();
    assert_eq!(stored.split_whitespace().nth(1), Some(MAC), "the MAC is stored with the token");
    let token = stored.split_whitespace().next().unwrap().to_owned();
    let mut c = TlsClient::connect(server.native, &pki.ca).unwrap();
    c.send(format!("{}\n", token_line(&token)).repeat(100).as_bytes());
    for i in 0..100 {
        assert_eq!(c.line(), "authorized", "reply {i}");
    }
    assert_eq!(c.ask(&token_line(&"ab".repeat(32))), "unauthorized");
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains(&token) && !log.contains(&passcode) && !log.contains(PASSWORD), "a secret in the log");
    drop(log);
    assert!(server.stop().success());
}

/// A client that speaks plaintext to the TLS port gets no reply line: at
/// most a TLS alert, then the connection is closed.
fn a_plaintext_client_is_closed_without_a_reply(runtime: &str) {
    let pki = Pki::local();
    let server = tls_server(runtime, &pki, &[]);
    let mut tcp = TcpStream::connect(server.native).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(format!("{}\nrequire_passcode|{MAC}|x|y|{EMAIL}\n", token_line(&"ab".repeat(32))).as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let read = tcp.read_to_end(&mut got);
    assert!(read.is_ok(), "not closed: {read:?}");
    assert!(!got.contains(&b'\n') && !got.windows(5).any(|w| w == b"error"), "a reply in plaintext: {got:?}");
    // What there is is one TLS alert record (content type 21), if anything.
    assert!(got.is_empty() || got[0] == 21, "not an alert: {got:?}");
}

/// The client checks the certificate: one that expired, or one for another
/// name, is refused before any request is sent.
fn the_client_refuses_an_expired_certificate_or_another_name(runtime: &str) {
    for (pki, why) in [
        (Pki::new(&["localhost", "127.0.0.1"], true), "expired"),
        (Pki::new(&["other.example"], false), "not valid for name"),
    ] {
        let server = tls_server(runtime, &pki, &[]);
        std::fs::write(server.dir.join("client-token"), "ab".repeat(32)).unwrap();
        let out = client(&server, &["--ca", pki.ca.to_str().unwrap()], &["request", "--mac", MAC, "get"], "");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out).to_lowercase();
        assert!(err.contains("tls with") && err.contains(why), "{err}");
        // Said before anything else: the request never left.
        assert!(!err.contains("server replied"), "{err}");
    }
    // Without --ca, the test authority is not among the system's roots.
    let pki = Pki::local();
    let server = tls_server(runtime, &pki, &[]);
    std::fs::write(server.dir.join("client-token"), "ab".repeat(32)).unwrap();
    let out = client(&server, &["--tls"], &["request", "--mac", MAC, "get"], "");
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", stderr(&out));
}

/// SIGHUP loads the certificate files again for the handshakes that
/// follow; open connections stay; a bad pair keeps the one in use.
fn sighup_reloads_the_certificate_for_the_next_handshake(runtime: &str) {
    let first = Pki::local();
    let server = tls_server(runtime, &first, &[]);
    let unknown = token_line(&"ab".repeat(32));
    let mut open = TlsClient::connect(server.native, &first.ca).unwrap();
    assert_eq!(open.ask(&unknown), "unauthorized");

    let second = Pki::local();
    second.install_over(&first);
    signal(&server.child, "HUP");
    wait_for_log(&server, "TLS certificate reloaded");
    let mut next = TlsClient::connect(server.native, &second.ca).expect("the new certificate");
    assert_eq!(next.ask(&unknown), "unauthorized");
    let old = TlsClient::connect(server.native, &first.ca).err().expect("the old certificate is gone");
    assert!(old.contains("invalid peer certificate"), "{old}");
    assert_eq!(open.ask(&unknown), "unauthorized", "a connection open before the reload stays");

    std::fs::write(&first.cert, "not a certificate").unwrap();
    signal(&server.child, "HUP");
    wait_for_log(&server, "TLS certificate not reloaded");
    let mut still = TlsClient::connect(server.native, &second.ca).expect("the pair in use stays");
    assert_eq!(still.ask(&unknown), "unauthorized");
    assert!(server.stop().success());
}

/// A handshake counts against `max_connections` from the accept, and one
/// not done within `partial_line_timeout` is dropped.
fn handshakes_are_bounded_in_number_and_time(runtime: &str) {
    let pki = Pki::local();
    let env = [("TOKENIZER_AUTH_PARTIAL_LINE_TIMEOUT", "1s"), ("TOKENIZER_AUTH_MAX_CONNECTIONS", "3")];
    let server = tls_server(runtime, &pki, &env);
    let started = Instant::now();
    // Three connections that never say hello, and one that stops halfway
    // through its ClientHello.
    let mut silent: Vec<Client> = (0..2).map(|_| server.connect()).collect();
    let mut halfway = server.connect();
    halfway.send(&[22, 3, 1, 0, 200, 1, 0]);
    silent.push(halfway);
    std::thread::sleep(Duration::from_millis(200));
    // A fourth is refused as in plaintext: the reply comes once its
    // handshake is done, then the connection closes.
    let mut fourth = TlsClient::connect(server.native, &pki.ca).unwrap();
    assert_eq!(fourth.line(), "error|too_many_connections", "a fourth connection while three handshake");
    for c in &mut silent {
        assert!(c.closed_within(Duration::from_secs(10)), "a stalled handshake is dropped");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut after = TlsClient::connect(server.native, &pki.ca).expect("room again");
    assert_eq!(after.ask(&token_line(&"ab".repeat(32))), "unauthorized");
}

/// Secrets in the clear off this machine are refused at start (exit 2),
/// unless `allow_plaintext` says so; TLS makes the native listener fine
/// anywhere.
fn plaintext_off_loopback_is_refused_at_start(runtime: &str) {
    let dir = tempfile::tempdir().unwrap();
    let serve = |listen: &str, legacy: &str, env: &[(&str, &str)]| {
        std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--runtime", runtime, "--listen", listen])
            .args(["--legacy-passcode-listen", legacy, "--legacy-login-listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let native = serve("0.0.0.0:0", "127.0.0.1:0", &[]);
    assert_eq!(native.status.code(), Some(2));
    assert!(stderr(&native).contains("not on loopback and has no TLS"), "{}", stderr(&native));
    let legacy = serve("127.0.0.1:0", "0.0.0.0:0", &[]);
    assert_eq!(legacy.status.code(), Some(2));
    assert!(
        stderr(&legacy).contains("the legacy passcode listener 0.0.0.0:0 is not on loopback"),
        "{}",
        stderr(&legacy)
    );
    let pki = Pki::local();
    let broken = serve("127.0.0.1:0", "127.0.0.1:0", &[("TOKENIZER_AUTH_TLS_CERT", pki.cert.to_str().unwrap())]);
    assert_eq!(broken.status.code(), Some(2), "a certificate without its key");

    // Allowed, and with TLS: they start (and are stopped at once).
    for env in [vec![("TOKENIZER_AUTH_ALLOW_PLAINTEXT", "true")], pki.env().to_vec()] {
        let server = Server::start_with(runtime, &env, &["--listen", "0.0.0.0:0"]);
        assert!(server.native.ip().is_unspecified(), "{}", server.native);
        assert!(server.stop().success());
    }
}

fn wait_for_log(server: &Server, message: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log.lock().unwrap().iter().any(|l| l.contains(message)) {
        assert!(Instant::now() < deadline, "no {message:?} in the log");
        std::thread::sleep(Duration::from_millis(20));
    }
}

both_runtimes!(
    the_full_flow_over_tls,
    a_plaintext_client_is_closed_without_a_reply,
    the_client_refuses_an_expired_certificate_or_another_name,
    sighup_reloads_the_certificate_for_the_next_handshake,
    handshakes_are_bounded_in_number_and_time,
    plaintext_off_loopback_is_refused_at_start,
);
