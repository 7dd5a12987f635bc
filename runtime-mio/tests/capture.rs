//! `serve --capture` on both runtimes: the same scripted client session is
//! recorded against the mio runtime and the std runtime, and both captures
//! replay (`tokenizer-auth replay`) with every output matching. Neither
//! holds the password.
//!
//! With `TOKENIZER_AUTH_UPDATE_FIXTURES=1` the captures are also kept as
//! the fixtures in `tests/fixtures/captures/`, which the default test run
//! replays (`tests/tests/replay_fixtures.rs`).

mod support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
