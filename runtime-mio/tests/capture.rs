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
    let server =
        Server::start_with(runtime, &[("TOKENIZER_AUTH_TOKEN_TTL", "1s")], &["--capture", path.to_str().unwrap()]);
    scripted_session(&server);
    assert!(server.stop().success());
    path
}

fn replays(path: &Path) {
    let out = Command::new(BIN).arg("replay").arg(path).output().unwrap();
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
    let out = Command::new(BIN).arg("replay").arg(&changed).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("divergence at event") && stderr.contains("Authorized"), "{stderr}");

    let cut = tmp.path().join("cut.cap");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let out = Command::new(BIN).arg("replay").arg(&cut).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let garbage = tmp.path().join("garbage.cap");
    std::fs::write(&garbage, b"not a capture at all").unwrap();
    let out = Command::new(BIN).arg("replay").arg(&garbage).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a tokenizer-auth capture"));
}
