//! `serve --capture` on both runtimes: the same scripted client session is
//! recorded against the mio runtime and the std runtime, and both captures
//! replay (`tokenizer-auth replay`) with every output matching. Neither
//! holds the password. A capture stops at `capture_max_bytes` while the
//! server keeps serving, and still replays; an existing capture file is
//! refused before anything binds.
//!
//! With `TOKENIZER_AUTH_UPDATE_FIXTURES=1` the captures are also kept as
//! the fixtures in `tests/fixtures/captures/`, which the default test run
//! replays (`tests/tests/replay_fixtures.rs`).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// The server key the captures are recorded with (given as `server_key`,
/// as several servers sharing a key would), so the fixtures replay
/// anywhere; `tests/tests/replay_fixtures.rs` has the same.
const CAPTURE_KEY: &str = "7e57ab1e0000000000000000000000000000000000000000000000000000c0de";

/// Passcode request, login, requests, garbage, split reads, a legacy login
/// and a renewal (the token lifetime is 1 s).
fn scripted_session(server: &Server) {
    let token = server.login();
    let mut c = server.connect();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
    assert_eq!(c.ask("not a request"), "error|malformed");
    c.send(format!("require_passcode|{MAC}|wrong-").as_bytes());
    std::thread::sleep(Duration::from_millis(20));
    c.send(format!("password|{PHONE}|{EMAIL}\n").as_bytes());
    assert_eq!(c.line(), "False");
    let legacy = std::net::TcpStream::connect(server.legacy_passcode).unwrap();
    let mut legacy = Client::new(legacy);
    legacy.send(format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}").as_bytes());
    assert!(legacy.closed_within(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(1100));
    let renewed = c.ask(&token_line(&token));
    assert!(renewed.starts_with("renew|"), "{renewed}");
    assert_eq!(c.ask(&token_line(&renewed["renew|".len()..])), "authorized");
}

fn capture(runtime: &str, dir: &Path) -> std::path::PathBuf {
    let path = dir.join(format!("{runtime}.cap"));
    let server = Server::start_with(
        runtime,
        &[("TOKENIZER_AUTH_TOKEN_TTL", "1s"), ("TOKENIZER_AUTH_SERVER_KEY", CAPTURE_KEY)],
        &["--capture", path.to_str().unwrap()],
    );
    scripted_session(&server);
    assert!(server.stop().success());
    path
}

fn replay(path: &Path) -> std::process::Output {
    Command::new(BIN).arg("replay").arg(path).env("TOKENIZER_AUTH_SERVER_KEY", CAPTURE_KEY).output().unwrap()
}

fn replays(path: &Path) {
    let out = replay(path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {}{}", path.display(), stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("every output matched"), "{stdout}");
}

#[test]
fn the_same_session_captured_on_both_runtimes_replays() {
    let tmp = tempfile::tempdir().unwrap();
    for runtime in ["mio", "std"] {
        let path = capture(runtime, tmp.path());
        let bytes = std::fs::read(&path).unwrap();
        for secret in [PASSWORD, "wrong-password"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{runtime}: {secret} captured");
        }
        let key = tokenizer_auth_engine::ServerKey::from_hex(CAPTURE_KEY).unwrap();
        assert!(!bytes.windows(32).any(|w| w == key.expose()), "{runtime}: the server key captured");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        replays(&path);
        if std::env::var_os("TOKENIZER_AUTH_UPDATE_FIXTURES").is_some() {
            let fixture =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/captures/{runtime}.cap"));
            std::fs::copy(&path, fixture).unwrap();
        }
    }
}

#[test]
fn replay_reports_a_divergence_and_a_damaged_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = capture("mio", tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(10).position(|w| w == b"authorized").unwrap();
    bytes[at] = b'A';
    let changed = tmp.path().join("changed.cap");
    std::fs::File::create(&changed).unwrap().write_all(&bytes).unwrap();
    let out = replay(&changed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("divergence at event") && stderr.contains("Authorized"), "{stderr}");

    let cut = tmp.path().join("cut.cap");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let out = replay(&cut);
    assert_eq!(out.status.code(), Some(1));
    let garbage = tmp.path().join("garbage.cap");
    std::fs::write(&garbage, b"not a capture at all").unwrap();
    let out = replay(&garbage);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tokenizer-auth capture"));
}

#[test]
fn replay_needs_the_recording_servers_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = capture("mio", tmp.path());
    // Another key, given or in a data folder: refused, saying why.
    let other =
        Command::new(BIN).arg("replay").arg(&path).env("TOKENIZER_AUTH_SERVER_KEY", "11".repeat(32)).output().unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("recorded under the server key with fingerprint"), "{stderr}");
    // No key at all: a data folder without one is not given one.
    let empty = tmp.path().join("empty");
    let out = Command::new(BIN).arg("--data-dir").arg(&empty).arg("replay").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.key") && !empty.join("server.key").exists(), "{stderr}");
}

/// A server started by hand, so that its log can be read while it runs.
struct Logged {
    child: std::process::Child,
    native: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Logged {
    fn start(runtime: &str, data: &Path, env: &[(&str, &str)], args: &[&str]) -> Logged {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
            .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
            .args(args)
            .env("TOKENIZER_AUTH_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Logged { child, native: SocketAddr::from(([127, 0, 0, 1], 0)), log };
        let listening = server.wait_for("\"listening\"").expect("the server exited before listening");
        server.native = field(&listening, "native").unwrap().parse().unwrap();
        server
    }

    /// The first log line from now on holding `text`, if one comes within
    /// 10 s.
    fn wait_for(&self, text: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_capture_stops_at_its_bound_and_the_server_keeps_serving() {
    const BOUND: u64 = 8192;
    let tmp = tempfile::tempdir().unwrap();
    for runtime in ["mio", "std"] {
        let path = tmp.path().join(format!("bounded-{runtime}.cap"));
        let data = tmp.path().join(format!("data-{runtime}"));
        let server = Logged::start(
            runtime,
            &data,
            &[("TOKENIZER_AUTH_CAPTURE_MAX_BYTES", &BOUND.to_string())],
            &["--capture", path.to_str().unwrap()],
        );
        let mut c = Client::new(TcpStream::connect(server.native).unwrap());
        let token = "ab".repeat(32);
        // Each check is a few hundred bytes of capture: the bound comes
        // within the first hundred, and the server answers every one.
        for i in 0..300 {
            let reply = if i % 2 == 0 { c.ask(&token_line(&token)) } else { c.ask(&format!("{MAC}|x|{PASSWORD}")) };
            assert_eq!(reply, if i % 2 == 0 { "unauthorized" } else { "error|malformed" }, "{runtime}: check {i}");
        }
        let stopped = server.wait_for("capture stopped");
        assert!(stopped.as_deref().is_some_and(|l| l.contains("capture_max_bytes")), "{runtime}: {stopped:?}");
        let mut more = Client::new(TcpStream::connect(server.native).unwrap());
        assert_eq!(more.ask(&token_line(&token)), "unauthorized", "{runtime}: serving after the bound");
        assert!(server.stop().success());

        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() as u64 <= BOUND && bytes.len() as u64 > BOUND / 2, "{runtime}: {} bytes", bytes.len());
        assert!(!bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()), "{runtime}: password captured");
        // Replay takes the recording server's key from its data folder.
        let out = Command::new(BIN).arg("--data-dir").arg(&data).arg("replay").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{runtime}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("every output matched") && stdout.contains("size bound"), "{runtime}: {stdout}");
    }
}

#[test]
fn an_existing_capture_file_is_refused_before_anything_binds() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("kept.cap");
    std::fs::write(&path, b"an earlier capture").unwrap();
    for runtime in ["mio", "std"] {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
            .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
            .arg("--capture")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{runtime}: {stderr}");
        assert!(stderr.contains("already exists") && stderr.contains("kept.cap"), "{runtime}: {stderr}");
        assert!(!stderr.contains("listening") && !stderr.contains("starting"), "{runtime}: {stderr}");
        assert_eq!(std::fs::read(&path).unwrap(), b"an earlier capture");
    }
}
