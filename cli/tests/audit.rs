//! The audit trail (docs/OPERATIONS.md, "The audit trail"), through the
//! real binary on both runtimes: every event of a full life is a JSON line
//! with every field, the admin commands append theirs, no secret is ever
//! written, and a full disk loses lines, counted, not logins.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const FIELDS: [&str; 7] = ["time", "event", "outcome", "email", "ip", "mac", "listener"];

fn login_line(password: &str, passcode: &str) -> String {
    format!("{MAC}|{EMAIL}|{PHONE}|{password}|{passcode}")
}

fn ok(dir: &Path, args: &[&str], stdin: &str) {
    let out = run_on(dir, args, stdin);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The trail's lines, each checked to carry every field.
fn read_trail(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for field in FIELDS {
                assert!(value.get(field).is_some(), "no {field} in {line}");
            }
            value
        })
        .collect()
}

fn text<'a>(line: &'a serde_json::Value, field: &str) -> &'a str {
    line[field].as_str().unwrap_or("")
}

/// (event, outcome) of each line, the server's or the commands'.
fn events(trail: &[serde_json::Value], by_commands: bool) -> Vec<(String, String)> {
    trail
        .iter()
        .filter(|line| line.get("by").is_some() == by_commands)
        .map(|line| (text(line, "event").to_owned(), text(line, "outcome").to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(e, o)| ((*e).to_owned(), (*o).to_owned())).collect()
}

fn the_trail_records_a_whole_life_and_no_secret(runtime: &str) {
    let env = [
        ("TOKENIZER_AUTH_TOKEN_TTL", "1s"),
        ("TOKENIZER_AUTH_RENEW_GRACE", "0s"),
        ("TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES", "3"),
    ];
    let server = Server::start(runtime, &env);
    let dir = server.dir.clone();
    let mut secrets: BTreeSet<String> = [PASSWORD.to_owned(), "wrong horse battery".to_owned()].into();
    let mut c = server.connect();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|wrong horse battery|{PHONE}|{EMAIL}")), "False");
    let first = server.login();
    secrets.insert(server.outbox_passcode());
    secrets.insert(first.clone());

    // Renewal, then the rotated-away token again: reuse.
    std::thread::sleep(Duration::from_millis(1200));
    let reply = c.ask(&token_line(&first));
    let second = reply.strip_prefix("renew|").unwrap_or_else(|| panic!("{reply}")).to_owned();
    secrets.insert(second.clone());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(c.ask(&token_line(&first)), "unauthorized");

    // Three failures in a row lock the account; `limits reset` unlocks it.
    for _ in 0..3 {
        assert_eq!(c.ask(&login_line("wrong horse battery", "AAAAAA")), "False");
    }
    assert_eq!(c.ask(&login_line(PASSWORD, "AAAAAA")), "error|rate_limited");
    // The command judges the lock by the same settings as the server.
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["limits", "reset", EMAIL])
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let third = server.login();
    secrets.insert(server.outbox_passcode());
    secrets.insert(third.clone());
    ok(&dir, &["session", "revoke", EMAIL, "--mac", MAC], "");
    ok(&dir, &["user", "passwd", EMAIL, "--password-stdin"], "another horse battery\n");
    secrets.insert("another horse battery".to_owned());
    let (status, _kept) = server.stop_keeping_dir();
    assert!(status.success());

    let path = dir.join("audit.log");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let trail = read_trail(&path);
    assert_eq!(
        events(&trail, false),
        pairs(&[
            ("passcode_requested", "wrong_password"),
            ("passcode_requested", "sent"),
            ("login", "logged_in"),
            ("token_renewed", "renewed"),
            ("token_reused", "session_revoked"),
            ("login", "wrong_password"),
            ("login", "wrong_password"),
            ("login", "wrong_password"),
            ("account_locked", "wrong_password"),
            ("login", "locked"),
            ("passcode_requested", "sent"),
            ("login", "logged_in"),
        ])
    );
    assert_eq!(
        events(&trail, true),
        pairs(&[
            ("user_added", "done"),
            ("limits_reset", "done"),
            ("account_unlocked", "done"),
            ("sessions_revoked", "done"),
            ("password_changed", "done"),
        ])
    );
    for line in &trail {
        assert_eq!(text(line, "email"), EMAIL, "{line}");
        if line.get("by").is_none() {
            assert_eq!((text(line, "ip"), text(line, "mac"), text(line, "listener")), ("127.0.0.1", MAC, "native"));
        }
    }
    let revoked = trail.iter().find(|l| text(l, "event") == "sessions_revoked").unwrap();
    assert_eq!((text(revoked, "mac"), text(revoked, "detail")), (MAC, "1 sessions ended"));

    // No secret, in any case, nor the tokens' halves.
    let whole = std::fs::read_to_string(&path).unwrap().to_lowercase();
    for secret in &secrets {
        let secret = secret.to_lowercase();
        assert!(!whole.contains(&secret), "a secret in the audit log: {secret}");
        if secret.len() >= 32 {
            let (a, b) = secret.split_at(secret.len() / 2);
            assert!(!whole.contains(a) && !whole.contains(b), "half a token in the audit log");
        }
    }
}

fn a_full_disk_loses_audit_lines_not_logins(runtime: &str) {
    let env = [("TOKENIZER_AUTH_AUDIT_LOG", "/dev/full"), ("TOKENIZER_AUTH_ADMIN_LISTEN", "127.0.0.1:0")];
    let server = Server::start(runtime, &env);
    let token = server.login();
    assert_eq!(server.connect().ask(&token_line(&token)), "authorized");
    let admin = server.admin.unwrap();
    let value = |name: &str| {
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        use std::io::{Read, Write};
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let found = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
        found.unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    // The writer runs on its own: wait for it to have tried.
    let mut tries = 0;
    while value("tokenizer_auth_audit_lines_lost_total") < 2.0 {
        tries += 1;
        assert!(tries < 100, "the lost lines were never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(value("tokenizer_auth_audit_write_errors_total") >= 1.0);
    assert_eq!(value("tokenizer_auth_audit_lines_total"), 0.0);
    let said = server.log.lock().unwrap().iter().any(|l| l.contains("audit log: cannot write"));
    assert!(said, "the log says the trail cannot be written");

    // An admin command whose line cannot be written says so.
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&server.dir)
        .args(["limits", "reset", EMAIL])
        .env("TOKENIZER_AUTH_AUDIT_LOG", "/dev/full")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("done, but the audit log could not record it"));
    assert!(server.stop().success());
}

fn the_trail_can_go_to_standard_error(runtime: &str) {
    let server = Server::start(runtime, &[("TOKENIZER_AUTH_AUDIT_LOG", "-")]);
    server.login();
    let line = |event: &str| {
        let log = server.log.lock().unwrap();
        log.iter().any(|l| l.starts_with("{\"time\":") && l.contains(&format!("\"event\":\"{event}\"")))
    };
    let mut tries = 0;
    while !line("login") {
        tries += 1;
        assert!(tries < 100, "no audit line on standard error");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(line("passcode_requested"));
    assert!(!server.dir.join("audit.log").exists() || read_trail(&server.dir.join("audit.log")).len() == 1);
    assert!(server.stop().success());
}

both_runtimes!(
    the_trail_records_a_whole_life_and_no_secret,
    a_full_disk_loses_audit_lines_not_logins,
    the_trail_can_go_to_standard_error,
);
