//! The mailer against real SMTP over TCP (aiosmtpd, see
//! `tokenizer_auth_tests::smtp`) and against the outbox folder.

use std::net::TcpListener;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokenizer_auth_effects::mail::{DEFAULT_FROM, MailConfig, MailErrorKind, Mailer, SmtpConfig, SmtpSecurity};
use tokenizer_auth_engine::mail::{SUBJECT, find_passcode};
use tokenizer_auth_engine::{Mail, PASSCODE_LENGTH, Secret};
use tokenizer_auth_tests::smtp::{RefusingPort, SmtpServer};

const PASSCODE: &str = "Q4ZK7M";

/// The relay's timeout for each step, and how long a test waits for a
/// delivered message: generous, so that a loaded machine is never taken for
/// a failure. (A message is on disk before the server answers 250, so a
/// test that waits at all waits for nothing.)
const GENEROUS: Duration = Duration::from_secs(60);

/// A mail shaped like the engine's: the second line is 77 characters, past
/// the 76 at which lettre would otherwise switch to quoted-printable.
fn mail(to: &str, passcode: &str) -> Mail {
    assert_eq!(passcode.len(), PASSCODE_LENGTH);
    let expires_at: DateTime<Utc> = SystemTime::now().into();
    let body = format!(
        "Your passcode for {to} is: {passcode}\r\n\r\n\
         It works once, on the device that asked for it, until {expiry} UTC.\r\n\
         If you did not ask for it, someone knows your password: change it.\r\n",
        expiry = expires_at.format("%Y-%m-%d %H:%M:%S"),
    );
    Mail { to: to.to_owned(), subject: SUBJECT.to_owned(), body: Secret::new(body), expires_at }
}

fn smtp(port: u16, security: SmtpSecurity) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port,
        security,
        credentials: None,
        from: "tokenizer-auth <auth@example.com>".to_owned(),
        timeout: GENEROUS,
    }
}

fn mailer(config: SmtpConfig) -> Mailer {
    Mailer::new(&MailConfig::Smtp(config)).expect("valid mail config")
}

/// Headers and body of a message, split at the first empty line.
fn split(message: &str) -> (&str, &str) {
    message.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header/body separator in {message:?}"))
}

/// Checks a message as a person reading it would: the right headers, and
/// the passcode in the body as plain text.
fn assert_passcode_message(message: &str, from: &str, to: &str, passcode: &str) {
    let (headers, body) = split(message);
    let header_lines: Vec<&str> = headers.split("\r\n").collect();
    for expected in [
        format!("From: {from}"),
        format!("To: {to}"),
        format!("Subject: {SUBJECT}"),
        "MIME-Version: 1.0".to_owned(),
        "Content-Type: text/plain; charset=utf-8".to_owned(),
        "Content-Transfer-Encoding: 7bit".to_owned(),
    ] {
        assert!(header_lines.contains(&expected.as_str()), "no {expected:?} in headers:\n{headers}");
    }
    assert!(header_lines.iter().any(|line| line.starts_with("Date: ")), "no Date in headers:\n{headers}");
    assert!(header_lines.iter().any(|line| line.starts_with("Message-ID: <")), "no Message-ID in headers:\n{headers}");
    assert!(body.contains(&format!("Your passcode for {to} is: {passcode}\r\n")), "passcode line missing:\n{body}");
    assert!(body.contains("It works once, on the device that asked for it, until "), "{body}");
    assert_eq!(find_passcode(body), Some(passcode));
}

#[test]
fn smtp_plain_delivers_the_passcode() {
    let server = SmtpServer::start();
    let mailer = mailer(smtp(server.port, SmtpSecurity::Plain));

    mailer.send(&mail("alice@example.com", PASSCODE)).expect("relay accepts the mail");

    let messages = server.wait_for(1, GENEROUS);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_passcode_message(&messages[0], "tokenizer-auth <auth@example.com>", "alice@example.com", PASSCODE);
}

#[test]
fn smtp_mailer_is_shared_by_threads() {
    let server = SmtpServer::start();
    let mailer = mailer(smtp(server.port, SmtpSecurity::Plain));

    let handles: Vec<_> = (0..4)
        .map(|i| {
            let mailer = mailer.clone();
            thread::spawn(move || {
                for j in 0..2 {
                    let code = format!("T{i}X{j}AB");
                    mailer.send(&mail(&format!("user{i}-{j}@example.com"), &code)).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }

    let messages = server.wait_for(8, GENEROUS);
    assert_eq!(messages.len(), 8);
    for i in 0..4 {
        for j in 0..2 {
            let line = format!("Your passcode for user{i}-{j}@example.com is: T{i}X{j}AB\r\n");
            assert_eq!(messages.iter().filter(|m| m.contains(&line)).count(), 1, "{line:?} not delivered once");
        }
    }
}

#[test]
fn smtp_with_credentials() {
    let server = SmtpServer::start_with_auth("mailer", "s3cret pass");

    let mut config = smtp(server.port, SmtpSecurity::Plain);
    config.credentials = Some(("mailer".to_owned(), Secret::new("wrong")));
    let error = mailer(config.clone()).send(&mail("bob@example.com", PASSCODE)).unwrap_err();
    assert_eq!(error.kind(), MailErrorKind::Rejected, "{error}");

    let mut anonymous = config.clone();
    anonymous.credentials = None;
    let error = mailer(anonymous).send(&mail("bob@example.com", PASSCODE)).unwrap_err();
    assert_eq!(error.kind(), MailErrorKind::Rejected, "{error}");
    assert!(server.messages().is_empty());

    config.credentials = Some(("mailer".to_owned(), Secret::new("s3cret pass")));
    mailer(config).send(&mail("bob@example.com", PASSCODE)).expect("authenticated send");
    let messages = server.wait_for(1, GENEROUS);
    assert_eq!(messages.len(), 1);
    assert_passcode_message(&messages[0], "tokenizer-auth <auth@example.com>", "bob@example.com", PASSCODE);
}

#[test]
fn relay_down_fails_at_once() {
    let down = RefusingPort::bind();
    let mailer = mailer(smtp(down.port, SmtpSecurity::Plain));
    let error = mailer.send(&mail("alice@example.com", PASSCODE)).unwrap_err();
    // Refused, not waited out: the relay's timeout is a minute.
    assert!(!error.to_string().contains("timed out"), "{error}");
    assert_eq!(error.kind(), MailErrorKind::Unreachable, "{error}");
    assert!(!error.to_string().contains(PASSCODE));
}

#[test]
fn silent_relay_times_out() {
    // Accepts TCP connections (the kernel completes the handshake) but
    // never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = smtp(listener.local_addr().unwrap().port(), SmtpSecurity::Plain);
    config.timeout = Duration::from_millis(300);

    let started = Instant::now();
    let error = mailer(config).send(&mail("alice@example.com", PASSCODE)).unwrap_err();
    // It waited for its timeout, then gave up (a bound far above it only
    // tells a hang from a slow machine).
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250) && elapsed < GENEROUS, "took {elapsed:?}");
    assert_eq!(error.kind(), MailErrorKind::Unreachable, "{error}");
    assert!(error.to_string().contains("timed out"), "{error}");
    drop(listener);
}

#[test]
fn rejected_recipient_fails() {
    let server = SmtpServer::start();
    let mailer = mailer(smtp(server.port, SmtpSecurity::Plain));

    let error = mailer.send(&mail("reject-me@example.com", PASSCODE)).unwrap_err();
    assert_eq!(error.kind(), MailErrorKind::Rejected, "{error}");
    let text = error.to_string();
    assert!(text.contains("550"), "{text}");
    assert!(!text.contains(PASSCODE), "{text}");

    // The relay still works for others, and got nothing for the rejected one.
    mailer.send(&mail("carol@example.com", PASSCODE)).unwrap();
    let messages = server.wait_for(1, GENEROUS);
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("To: carol@example.com\r\n"));
}

#[test]
fn invalid_recipient_is_an_error_not_a_panic() {
    let server = SmtpServer::start();
    let mailer = mailer(smtp(server.port, SmtpSecurity::Plain));
    for to in ["", "no-at-sign", "two@@example.com", "a@b.example\r\nBcc: eve@example.com", "Name <a@b.example>"] {
        let error = mailer.send(&mail(to, PASSCODE)).unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::InvalidRecipient, "{to:?}: {error}");
    }
    assert!(server.messages().is_empty());
}

#[test]
fn tls_modes_refuse_a_relay_without_tls() {
    let server = SmtpServer::start();
    for security in [SmtpSecurity::StartTls, SmtpSecurity::Tls] {
        let error = mailer(smtp(server.port, security)).send(&mail("alice@example.com", PASSCODE)).unwrap_err();
        // Refused as soon as TLS is missing, not waited out.
        assert!(!error.to_string().contains("timed out"), "{security:?}: {error}");
        assert_eq!(error.kind(), MailErrorKind::Unreachable, "{security:?}: {error}");
    }
    assert!(server.messages().is_empty(), "a message went out without TLS");
}

#[test]
fn outbox_writes_one_complete_private_eml_per_message() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data").join("outbox");
    let mailer = Mailer::new(&MailConfig::Outbox { dir: dir.clone() }).unwrap();
    assert!(dir.is_dir(), "Mailer::new creates the outbox");

    let recipients = ["alice@example.com", "bob@example.com", "carol@example.com"];
    let codes = ["AAAA11", "BBBB22", "CCCC33"];
    for (to, code) in recipients.iter().zip(codes) {
        mailer.send(&mail(to, code)).unwrap();
    }

    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 3, "exactly one file per message, no temporary files: {names:?}");

    let mut found = Vec::new();
    for name in &names {
        assert_eml_name(name);
        let path = dir.join(name);
        #[cfg(unix)]
        assert_mode(&path, 0o600);
        let text = String::from_utf8(std::fs::read(&path).unwrap()).expect("a 7bit message");
        let (_, body) = split(&text);
        let code = find_passcode(body).expect("a passcode in the body").to_owned();
        let to = recipients[codes.iter().position(|c| *c == code).expect("a code that was sent")];
        assert_passcode_message(&text, DEFAULT_FROM, to, &code);
        // Readable as is: the passcode can be grepped from the file.
        assert!(text.contains(&format!(" is: {code}\r\n")));
        found.push(code);
    }
    found.sort();
    assert_eq!(found, codes);

    #[cfg(unix)]
    assert_mode(&dir, 0o700);

    // The outbox comes back if someone removes it while the server runs.
    std::fs::remove_dir_all(&dir).unwrap();
    mailer.send(&mail("dave@example.com", "DDDD44")).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn outbox_that_cannot_be_written_fails() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("not-a-folder");
    std::fs::write(&file, b"").unwrap();
    let error = Mailer::new(&MailConfig::Outbox { dir: file.join("outbox") }).unwrap_err();
    assert_eq!(error.kind(), MailErrorKind::Outbox, "{error}");
}

/// `<YYYYmmddTHHMMSS.ffffffZ>-<32 hex>.eml`
fn assert_eml_name(name: &str) {
    let stem = name.strip_suffix(".eml").unwrap_or_else(|| panic!("{name} is not .eml"));
    let (stamp, hex) = stem.split_once('-').unwrap_or_else(|| panic!("{name}: no '-'"));
    assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{name}");
    let stamp = stamp.strip_suffix('Z').unwrap_or_else(|| panic!("{name}: no Z"));
    let (date, time) = stamp.split_once('T').unwrap_or_else(|| panic!("{name}: no T"));
    let (seconds, micros) = time.split_once('.').unwrap_or_else(|| panic!("{name}: no fraction"));
    for (part, len) in [(date, 8), (seconds, 6), (micros, 6)] {
        assert!(part.len() == len && part.bytes().all(|b| b.is_ascii_digit()), "{name}");
    }
}

#[cfg(unix)]
fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "mode of {} is {actual:o}", path.display());
}
