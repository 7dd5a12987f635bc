//! `tokenizer-auth user ...` and `session ...` on real files, through the
//! binary as an operator runs it.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, TimeDelta, Utc};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::store::SqliteStore;
use tokenizer_auth_engine::{BaseToken, CredsBatch, CredsOp, Mac, MasterToken, Secret, SessionRecord, WriteBatch};

fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    support::run_on(dir, args, stdin)
}

fn ok(dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = run(dir, args, stdin);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str], stdin: &str, code: i32, reason: &str) {
    let out = run(dir, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(reason), "{args:?}: {stderr:?} does not say {reason:?}");
}

fn verifies(dir: &Path, email: &str, password: &str) -> bool {
    let store = SqliteStore::open(dir).unwrap();
    let user = store.read(&tokenizer_auth_engine::Lookup { user: Some(email.into()), ..Default::default() }).unwrap();
    let hash = user.user.expect("the user exists").password;
    PasswordHasher::new(Cost::TEST_ONLY).unwrap().verify(&hash, &Secret::new(password))
}

#[test]
fn accounts_are_added_listed_changed_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_eq!(
        ok(dir, &["user", "add", "ada@example.com", "--phone", "555", "--password-stdin"], "s3cret-passphrase\n"),
        "added ada@example.com\n"
    );
    assert!(verifies(dir, "ada@example.com", "s3cret-passphrase"));
    fails(dir, &["user", "add", "ada@example.com", "--password-stdin"], "x\n", 1, "already exists");
    fails(dir, &["user", "add", "bob@example.com"], "", 2, "--password-stdin");
    fails(dir, &["user", "add", "bob@example.com", "--password", "x"], "", 2, "unexpected argument");
    fails(dir, &["user", "add", "not-an-email", "--password-stdin"], "long enough\n", 2, "invalid recipient address");
    assert_eq!(ok(dir, &["user", "list"], ""), "ada@example.com\t555\t0 sessions\n");

    ok(dir, &["user", "passwd", "ada@example.com", "--password-stdin"], "n3w-passphrase\n");
    assert!(verifies(dir, "ada@example.com", "n3w-passphrase"));
    assert!(!verifies(dir, "ada@example.com", "s3cret-passphrase"));
    fails(dir, &["user", "passwd", "nobody@example.com", "--password-stdin"], "x\n", 1, "no user");

    assert_eq!(ok(dir, &["user", "remove", "ada@example.com"], ""), "removed ada@example.com\n");
    fails(dir, &["user", "remove", "ada@example.com"], "", 1, "no user");
    assert_eq!(ok(dir, &["user", "list"], ""), "");
}

#[test]
fn passwords_no_request_could_carry_or_too_weak_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let add = ["user", "add", "ada@example.com", "--phone", "555", "--password-stdin"];
    let megabyte = format!("{}\n", "x".repeat(1 << 20));
    fails(dir, &add, &megabyte, 2, "a request line (max_line) can carry at most 4041");
    fails(dir, &add, "        \n", 2, "only whitespace");
    fails(dir, &add, "short\n", 2, "at least 8");
    fails(dir, &add, "\n", 2, "empty");
    assert_eq!(ok(dir, &["user", "list"], ""), "", "nothing was added");
    // The longest that fits the line, and the minimum, are taken.
    ok(dir, &add, &format!("{}\n", "x".repeat(4041)));
    let passwd = ["user", "passwd", "ada@example.com", "--password-stdin"];
    fails(dir, &passwd, &megabyte, 2, "can carry at most");
    fails(dir, &passwd, " \u{3000} \n", 2, "only whitespace");
    ok(dir, &passwd, "8 chars!\n");
    assert!(verifies(dir, "ada@example.com", "8 chars!"));
    // The minimum is a setting.
    let out = Command::new(env!("CARGO_BIN_EXE_tokenizer-auth"))
        .arg("--data-dir")
        .arg(dir)
        .args(passwd)
        .env("TOKENIZER_AUTH_MIN_PASSWORD_LENGTH", "12")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"eleven char\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12"));
}

#[test]
fn addresses_the_mailer_would_refuse_are_refused_at_user_add() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for address in ["q@example.com, attacker@evil.com", "\"Q\" <q@example.com>", "Q <q@example.com>", "../../x"] {
        fails(dir, &["user", "add", address, "--password-stdin"], "long enough\n", 2, "invalid recipient address");
    }
    for address in ["jörg@example.com", "q@bücher.example"] {
        fails(dir, &["user", "add", address, "--password-stdin"], "long enough\n", 2, "SMTPUTF8");
    }
    assert_eq!(ok(dir, &["user", "list"], ""), "", "nothing was added");
    ok(dir, &["user", "add", "q@example.com", "--password-stdin"], "long enough\n");
}

#[test]
fn rehash_hashes_the_old_servers_plaintext_passwords() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let conn = rusqlite::Connection::open(dir.join("op_creds.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE op_creds (mac text, password text, email text, phone text, token text, expiry text);
         INSERT INTO op_creds VALUES ('aa:bb:cc:dd:ee:ff', 'hunter2', 'old@example.com', '1', NULL, NULL);",
    )
    .unwrap();
    drop(conn);
    assert!(ok(dir, &["user", "list"], "").contains("plaintext password"));
    assert_eq!(ok(dir, &["user", "rehash"], ""), "hashed 1 plaintext passwords\n");
    assert!(!ok(dir, &["user", "list"], "").contains("plaintext"));
    assert!(verifies(dir, "old@example.com", "hunter2"));
}

fn session(email: &str, mac: &str, seed: u8, now: DateTime<Utc>) -> CredsOp {
    let base = BaseToken::parse(format!("{seed:02x}").repeat(32).as_bytes()).unwrap();
    let mac = Mac::parse(mac).unwrap();
    CredsOp::PutSession(SessionRecord {
        master: MasterToken::derive(&base, mac, "127.0.0.1".parse().unwrap()),
        email: email.into(),
        mac,
        started_at: now,
        expires_at: now + TimeDelta::hours(1),
    })
}

#[test]
fn sessions_are_listed_and_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let ops = vec![
        session("ada@example.com", "aa:bb:cc:dd:ee:01", 1, now),
        session("ada@example.com", "aa:bb:cc:dd:ee:02", 2, now),
        session("bob@example.com", "aa:bb:cc:dd:ee:03", 3, now),
    ];
    SqliteStore::open(dir).unwrap().write(&WriteBatch::Creds(CredsBatch { expect: None, ops })).unwrap();

    let all = ok(dir, &["session", "list"], "");
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(
        all.contains("ada@example.com\taa:bb:cc:dd:ee:01\tstarted 2026-01-01 00:00:00Z\texpires 2026-01-01 01:00:00Z")
    );
    assert_eq!(ok(dir, &["session", "list", "ada@example.com"], "").lines().count(), 2);
    assert_eq!(
        ok(dir, &["session", "revoke", "ada@example.com", "--mac", "AA-BB-CC-DD-EE-02"], ""),
        "ended 1 sessions of ada@example.com\n"
    );
    assert_eq!(ok(dir, &["session", "revoke", "ada@example.com"], ""), "ended 1 sessions of ada@example.com\n");
    assert_eq!(ok(dir, &["session", "list"], "").lines().count(), 1);
    fails(dir, &["session", "revoke", "bob@example.com", "--mac", "nope"], "", 2, "invalid MAC");
}

#[test]
fn a_data_folder_that_cannot_be_written_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    fails(&file, &["user", "list"], "", 1, "data folder");
    fails(&file.join("below"), &["user", "list"], "", 1, "cannot create data folder");
}
