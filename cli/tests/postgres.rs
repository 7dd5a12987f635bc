//! Servers on one PostgreSQL database (`store_url`), through the real
//! binary on both runtimes, against a real PostgreSQL server the tests
//! start (`tokenizer_auth_tests::postgres`): the whole flow, a token from
//! one server checked on another, a revocation by the admin command seen
//! by both at once, one login per passcode whichever server the attempts
//! reach, and a server with another key refused.

#[macro_use]
mod support;

use std::process::{Command, Output, Stdio};

use support::*;

/// The key every server on the test database shares.
const KEY: &str = POSTGRES_KEY;

/// A command of the binary on the database, with standard input.
fn command(dir: &std::path::Path, url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("TOKENIZER_AUTH_STORE_URL", url)
        .env("TOKENIZER_AUTH_SERVER_KEY", KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn ok(dir: &std::path::Path, url: &str, args: &[&str], stdin: &str) -> String {
    let out = command(dir, url, args, stdin);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A server on the database, with a data folder of its own (its outbox).
fn server(runtime: &str, url: &str) -> Server {
    let env = [("TOKENIZER_AUTH_STORE_URL", url), ("TOKENIZER_AUTH_SERVER_KEY", KEY)];
    Server::start_on(tempfile::tempdir().unwrap(), runtime, &env, &[])
}

fn servers_share_one_postgres_database(runtime: &str) {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let admin = tempfile::tempdir().unwrap();
    let added =
        ok(admin.path(), &url, &["user", "add", EMAIL, "--phone", PHONE, "--password-stdin"], &format!("{PASSWORD}\n"));
    assert_eq!(added, format!("added {EMAIL}\n"));
    assert!(!admin.path().join("op_creds.db").exists(), "the account is in the database, not in files");

    let a = server(runtime, &url);
    let b = server(runtime, &url);
    // A token from one is good on the other.
    let token = a.login();
    assert_eq!(b.connect().ask(&token_line(&token)), "authorized");
    assert_eq!(a.connect().ask(&token_line(&token)), "authorized");
    let listed = ok(admin.path(), &url, &["session", "list", EMAIL], "");
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // A revocation is seen by both at once (no cache on PostgreSQL yet).
    ok(admin.path(), &url, &["session", "revoke", EMAIL], "");
    assert_eq!(a.connect().ask(&token_line(&token)), "unauthorized");
    assert_eq!(b.connect().ask(&token_line(&token)), "unauthorized");

    // One passcode, many attempts spread over both servers: one login.
    let mut c = a.connect();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let code = a.outbox_passcode();
    let line = format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{code}");
    let attempts: Vec<_> = (0..12)
        .map(|i| {
            let addr = if i % 2 == 0 { a.native } else { b.native };
            let line = line.clone();
            std::thread::spawn(move || Client::new(std::net::TcpStream::connect(addr).unwrap()).ask(&line))
        })
        .collect();
    let replies: Vec<String> = attempts.into_iter().map(|t| t.join().unwrap()).collect();
    let tokens = replies.iter().filter(|r| r.starts_with(LOGIN_PREFIX)).count();
    assert_eq!(tokens, 1, "{replies:?}");
    assert!(replies.iter().all(|r| r.starts_with(LOGIN_PREFIX) || r == "False"), "{replies:?}");

    // The brute-force counters are shared: the admin command reads them.
    let shown = ok(admin.path(), &url, &["limits", "show", EMAIL], "");
    assert!(shown.contains("failures_per_email"), "{shown}");

    // A server with another key refuses to start.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(other.path())
        .args(["serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
        .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
        .env("TOKENIZER_AUTH_STORE_URL", &url)
        .env("TOKENIZER_AUTH_SERVER_KEY", "5".repeat(64))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("another server key"), "{said}");
    assert!(a.stop().success());
    assert!(b.stop().success());
}

/// `store copy`: a folder a server used, into a database; a second run
/// copies nothing; a server on the database takes over its sessions and
/// its live passcodes.
fn store_copy_moves_a_folder_and_a_second_run_copies_nothing(runtime: &str) {
    let old = Server::start(runtime, &[]);
    let token = old.login();
    // A passcode left live on another device, and a failure counted.
    let other_mac = "11:22:33:44:55:66";
    let mut c = old.connect();
    assert_eq!(c.ask(&format!("require_passcode|{other_mac}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let live = old.outbox_passcode();
    assert_eq!(c.ask(&format!("require_passcode|{MAC}|wrong horse battery|{PHONE}|{EMAIL}")), "False");
    let (status, folder) = old.stop_keeping_dir();
    assert!(status.success());
    let key: String =
        std::fs::read(folder.path().join("server.key")).unwrap().iter().map(|b| format!("{b:02x}")).collect();

    let url = tokenizer_auth_tests::postgres::shared().database();
    let copy = |expect_new: bool| {
        let elsewhere = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(elsewhere.path())
            .args(["store", "copy", "--from", folder.path().to_str().unwrap(), "--to", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        let accounts = if expect_new { "1 copied, 0 already there" } else { "0 copied, 1 already there" };
        assert!(said.contains(&format!("accounts: {accounts}")), "{said}");
        assert!(said.contains("the database holds every record"), "{said}");
        said
    };
    let first = copy(true);
    assert!(first.contains("sessions: 1 copied") && first.contains("live passcodes: 1 copied"), "{first}");
    assert!(first.contains("counters: ") && !first.contains("counters: 0 copied"), "{first}");
    let second = copy(false);
    assert!(second.contains("sessions: 0 copied, 1 already there"), "{second}");

    let env = [("TOKENIZER_AUTH_STORE_URL", url.as_str()), ("TOKENIZER_AUTH_SERVER_KEY", key.as_str())];
    let new = Server::start_on(tempfile::tempdir().unwrap(), runtime, &env, &[]);
    let mut c = new.connect();
    assert_eq!(c.ask(&token_line(&token)), "authorized");
    let reply = c.ask(&format!("{other_mac}|{EMAIL}|{PHONE}|{PASSWORD}|{live}"));
    assert!(reply.starts_with(LOGIN_PREFIX), "the copied passcode logs in: {reply}");
    assert!(new.stop().success());
}

both_runtimes!(servers_share_one_postgres_database, store_copy_moves_a_folder_and_a_second_run_copies_nothing);
