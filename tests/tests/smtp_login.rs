//! The whole flow with mail through a real SMTP server over TCP: the
//! passcode is read out of the message the server received, then used to
//! log in. A relay that is down or refuses leaves no usable passcode.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use tokenizer_auth_effects::mail::{MailConfig, SmtpConfig, SmtpSecurity};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::store::SqliteStore;
use tokenizer_auth_engine::testkit::World;
use tokenizer_auth_engine::{Config, LOGIN_PREFIX, Listener, Secret};
use tokenizer_auth_tests::real;
use tokenizer_auth_tests::smtp::{RefusingPort, SmtpServer};

const MAC: &str = "aa:bb:cc:dd:ee:ff";
const PASSWORD: &str = "correct horse";

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn relay(port: u16) -> MailConfig {
    MailConfig::Smtp(SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::Plain,
        credentials: None,
        from: "tokenizer-auth <auth@example.com>".into(),
        // Generous: a loaded machine is not a relay that is down.
        timeout: Duration::from_secs(60),
    })
}

fn world(dir: &Path, email: &str, mail: &MailConfig) -> World {
    // Cheap argon2 parameters: this test is about mail.
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap();
    SqliteStore::open(dir).unwrap().add_user(email, "", &hasher.hash(&Secret::new(PASSWORD)).unwrap()).unwrap();
    real::world_with_mail(dir, &hasher, Config::default(), 1, mail)
}

fn stored_passcodes(dir: &Path) -> i64 {
    let conn = Connection::open(dir.join("op_passcodes.db")).unwrap();
    conn.query_row("SELECT count(*) FROM passcode_table", [], |r| r.get(0)).unwrap()
}

#[test]
fn the_passcode_from_the_smtp_server_logs_in() {
    let server = SmtpServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let email = "ada@example.com";
    let mut w = world(tmp.path(), email, &relay(server.port));
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &format!("require_passcode|{MAC}|{PASSWORD}||{email}")), "Passcode is sent");
    let messages = server.wait_for(1, Duration::from_secs(60));
    assert!(messages[0].contains(&format!("To: {email}")), "{}", messages[0]);
    let passcode = tokenizer_auth_engine::mail::find_passcode(&messages[0]).expect("a passcode in the message");
    let reply = w.request(c, &format!("{MAC}|{email}||{PASSWORD}|{passcode}"));
    let token = reply.strip_prefix(LOGIN_PREFIX).expect(&reply).to_owned();
    assert_eq!(w.request(c, &format!("{token}|{MAC}|get")), "authorized");
}

#[test]
fn a_relay_that_is_down_gives_a_retryable_error_and_no_passcode() {
    let down = RefusingPort::bind();
    let tmp = tempfile::tempdir().unwrap();
    let email = "ada@example.com";
    let mut w = world(tmp.path(), email, &relay(down.port));
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &format!("require_passcode|{MAC}|{PASSWORD}||{email}")), "error|mail_unavailable");
    assert_eq!(stored_passcodes(tmp.path()), 0);
}

#[test]
fn a_relay_that_refuses_gives_a_retryable_error_and_no_passcode() {
    let server = SmtpServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let email = "reject-me@example.com"; // the test server refuses recipients starting with "reject"
    let mut w = world(tmp.path(), email, &relay(server.port));
    let c = w.connect(Listener::Native, local());
    assert_eq!(w.request(c, &format!("require_passcode|{MAC}|{PASSWORD}||{email}")), "error|mail_unavailable");
    assert_eq!(stored_passcodes(tmp.path()), 0);
    assert!(server.messages().is_empty());
}
