//! Mail: carries out [`Effect::SendMail`](tokenizer_auth_engine::Effect::SendMail).
//!
//! A [`Mailer`] hands each [`Mail`] either to an SMTP relay through lettre
//! (implicit TLS, required STARTTLS, or plain; with or without credentials)
//! or, when no relay is configured, to an outbox folder where every message
//! is a complete RFC 5322 `.eml` file a person can open and read the
//! passcode from.
//!
//! [`Mailer::send`] returns `Ok(())` only once the relay accepted the message
//! (or the file is durably in the outbox); the runner then answers
//! [`EffectResult::Sent`](tokenizer_auth_engine::EffectResult::Sent), and on
//! any error [`EffectResult::Failed`](tokenizer_auth_engine::EffectResult::Failed).
//!
//! The body names the passcode, so it is a secret: no [`MailError`] ever
//! carries it, and outbox files are created with mode 0600 in a 0700 folder.
//! Bodies are written as plain 7bit text whenever they are ASCII (the
//! engine's always are: recipients are ASCII, see [`recipient`]), so the
//! passcode can be found in the file with `grep`; anything else is left to
//! lettre's quoted-printable or base64 encoding.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, Message, SmtpTransport, Transport};
use tokenizer_auth_engine::{Mail, Secret};

/// The `From` of outbox messages (and the usual choice for a relay).
pub const DEFAULT_FROM: &str = "tokenizer-auth <tokenizer-auth@localhost>";

/// A sensible SMTP timeout: per connection attempt and per read or write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest line, in bytes without the CRLF, that RFC 5322 allows.
const MAX_LINE: usize = 998;

/// Where passcode mails go.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MailConfig {
    /// No relay: each message becomes an `.eml` file in `dir`, created if
    /// missing (mode 0700 on unix). The default.
    Outbox {
        /// The outbox folder, usually `<data dir>/outbox`.
        dir: PathBuf,
    },
    /// An SMTP relay.
    Smtp(SmtpConfig),
}

/// How to reach an SMTP relay.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SmtpConfig {
    /// Host name (checked against the relay's certificate) or IP address.
    pub host: String,
    /// TCP port; see [`SmtpSecurity::default_port`].
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// User name and password for `AUTH`, if the relay wants them.
    pub credentials: Option<(String, Secret)>,
    /// The `From` mailbox, e.g. `tokenizer-auth <auth@example.com>`.
    pub from: String,
    /// Limit on connecting, and on each read and write (must not be zero).
    pub timeout: Duration,
}

/// Transport security towards the relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SmtpSecurity {
    /// TLS from the first byte ("SMTPS", usually port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, which is required: a relay
    /// that does not offer it gets no credentials and no message (usually
    /// port 587).
    StartTls,
    /// No encryption at all (a relay on localhost, or tests; usually port 25).
    Plain,
}

impl SmtpSecurity {
    /// The customary port: 465, 587 or 25.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Tls => 465,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Plain => 25,
        }
    }
}

/// Sends passcode mails. Cheap to clone; one value can be shared by any
/// number of worker threads. Each SMTP send opens its own connection.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    from: Mailbox,
    sink: Sink,
}

enum Sink {
    Outbox { dir: PathBuf },
    Smtp { transport: Box<SmtpTransport>, host: String, port: u16, timeout: Duration },
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = self.inner.from.to_string();
        match &self.inner.sink {
            Sink::Outbox { dir } => f.debug_struct("Mailer::Outbox").field("dir", dir).field("from", &from).finish(),
            Sink::Smtp { host, port, .. } => {
                f.debug_struct("Mailer::Smtp").field("host", host).field("port", port).field("from", &from).finish()
            }
        }
    }
}

impl Mailer {
    /// A mailer for `config`. For an outbox, creates the folder; for a
    /// relay, checks the settings (no connection is made until the first
    /// [`send`](Mailer::send)).
    pub fn new(config: &MailConfig) -> Result<Mailer, MailError> {
        let inner = match config {
            MailConfig::Outbox { dir } => {
                ensure_dir(dir)?;
                let from = DEFAULT_FROM.parse().expect("DEFAULT_FROM is a valid mailbox");
                Inner { from, sink: Sink::Outbox { dir: dir.clone() } }
            }
            MailConfig::Smtp(smtp) => Inner { from: parse_from(&smtp.from)?, sink: smtp_sink(smtp)? },
        };
        Ok(Mailer { inner: Arc::new(inner) })
    }

    /// Sends `mail`: returns once the relay accepted it, or once the
    /// `.eml` file is durably in the outbox. A relay that is down, times
    /// out or refuses, an invalid recipient, or a failed write gives an
    /// error; nothing is retried here.
    pub fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let now = Utc::now();
        let message = build_message(&self.inner.from, mail, SystemTime::from(now))?;
        match &self.inner.sink {
            Sink::Outbox { dir } => write_outbox(dir, &message.formatted(), now).map(drop),
            Sink::Smtp { transport, host, port, timeout } => {
                transport.send(&message).map(drop).map_err(|error| relay_error(host, *port, *timeout, &error))
            }
        }
    }
}

/// A one-line reason for a failed SMTP send.
fn relay_error(host: &str, port: u16, timeout: Duration, error: &lettre::transport::smtp::Error) -> MailError {
    if error.is_permanent() || error.is_transient() {
        return MailError::new(
            MailErrorKind::Rejected,
            format!("mail relay {host}:{port} refused the message: {error}"),
        );
    }
    let timed_out = std::iter::successors(std::error::Error::source(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock));
    let what = if timed_out { format!("timed out (no answer within {timeout:?})") } else { "failed".to_owned() };
    MailError::new(MailErrorKind::Unreachable, format!("mail relay {host}:{port} {what}: {error}"))
}

fn parse_from(from: &str) -> Result<Mailbox, MailError> {
    from.parse()
        .map_err(|error| MailError::new(MailErrorKind::Config, format!("invalid sender address {from:?}: {error}")))
}

fn smtp_sink(config: &SmtpConfig) -> Result<Sink, MailError> {
    let host = config.host.trim();
    if host.is_empty() {
        return Err(MailError::new(MailErrorKind::Config, "the mail relay host is empty"));
    }
    if config.timeout.is_zero() {
        return Err(MailError::new(MailErrorKind::Config, "the mail relay timeout must not be zero"));
    }
    let tls_error = |error: lettre::transport::smtp::Error| {
        MailError::new(MailErrorKind::Config, format!("TLS for {host}: {error}"))
    };
    let builder = match config.security {
        SmtpSecurity::Tls => SmtpTransport::relay(host).map_err(tls_error)?,
        SmtpSecurity::StartTls => SmtpTransport::starttls_relay(host).map_err(tls_error)?,
        SmtpSecurity::Plain => SmtpTransport::builder_dangerous(host),
    };
    let mut builder = builder.port(config.port).timeout(Some(config.timeout));
    if let Some((user, password)) = &config.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(Sink::Smtp {
        transport: Box::new(builder.build()),
        host: host.to_owned(),
        port: config.port,
        timeout: config.timeout,
    })
}

/// The one address parser for recipients: the mailer uses it to build the
/// `To:` of every message, and `user add` to refuse, up front, an address
/// the mailer would refuse later (docs/SECURITY.md, "Accounts made by the
/// admin commands"). One bare address, `local@domain`, as lettre parses
/// it: no display name, no mailbox list, no path. Only ASCII: an
/// internationalized address needs SMTPUTF8 (RFC 6531) end to end, which
/// relays need not offer, and must not go into a header as raw UTF-8; the
/// refusal says so.
pub fn recipient(text: &str) -> Result<Address, MailError> {
    let invalid = |why: String| {
        MailError::new(MailErrorKind::InvalidRecipient, format!("invalid recipient address {text:?}: {why}"))
    };
    if !text.is_ascii() {
        return Err(invalid(
            "it is not ASCII; internationalized addresses need SMTPUTF8, which this server does not use \
             (give the domain in its ASCII xn-- form)"
                .to_owned(),
        ));
    }
    text.parse().map_err(|error| invalid(format!("{error}; expected one bare address, local@domain")))
}

/// The RFC 5322 message for `mail`: From, To, Subject, Date, Message-ID,
/// MIME-Version and a text/plain UTF-8 body.
fn build_message(from: &Mailbox, mail: &Mail, date: SystemTime) -> Result<Message, MailError> {
    let to = recipient(&mail.to)?;
    if mail.subject.chars().any(char::is_control) {
        return Err(MailError::new(MailErrorKind::InvalidMessage, "the subject contains a control character"));
    }
    let part = SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text_body(mail.body.expose()));
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(mail.subject.as_str())
        .date(date)
        .message_id(None)
        .singlepart(part)
        .map_err(|error| MailError::new(MailErrorKind::InvalidMessage, format!("cannot build the message: {error}")))
}

/// The body as plain 7bit text when it is ASCII with lines RFC 5322 allows
/// (so a person or `grep` reads the passcode as is); otherwise lettre picks
/// quoted-printable or base64. Line endings become CRLF either way.
fn text_body(text: &str) -> Body {
    let text = crlf(text);
    let fits = text.split("\r\n").all(|line| line.len() <= MAX_LINE);
    if text.is_ascii() && fits && !text.contains('\0') {
        Body::dangerous_pre_encoded(text.into_bytes(), ContentTransferEncoding::SevenBit)
    } else {
        Body::new(text)
    }
}

/// `text` with every line ending (CRLF, LF or a lone CR) as CRLF.
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// Creates the outbox folder (and its parents) if missing; a folder it
/// creates gets mode 0700 on unix. An existing folder is left as it is.
fn ensure_dir(dir: &Path) -> Result<(), MailError> {
    crate::private::create_dir(dir).map_err(|error| outbox_error(dir, "cannot create the outbox folder", &error))
}

/// Writes `bytes` as a new `.eml` file in `dir`, all or nothing: a hidden
/// temporary file (mode 0600) is written and fsynced, then renamed to
/// `<UTC timestamp>-<random hex>.eml`, and the folder is fsynced.
fn write_outbox(dir: &Path, bytes: &[u8], now: DateTime<Utc>) -> Result<PathBuf, MailError> {
    ensure_dir(dir)?;
    let suffix = random_hex()?;
    let temp = dir.join(format!(".{suffix}.eml.tmp"));
    let path = dir.join(format!("{}-{suffix}.eml", now.format("%Y%m%dT%H%M%S%.6fZ")));

    let written = create_private(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(error) = written.and_then(|()| fs::rename(&temp, &path)) {
        let _ = fs::remove_file(&temp);
        return Err(outbox_error(dir, "cannot write a message into the outbox", &error));
    }
    if let Err(error) = sync_dir(dir) {
        // Not known to be durable: take it back rather than report it sent.
        let _ = fs::remove_file(&path);
        return Err(outbox_error(dir, "cannot sync the outbox folder", &error));
    }
    Ok(path)
}

/// Creates a new file that only its owner may read or write.
fn create_private(path: &Path) -> io::Result<File> {
    crate::private::create_new_file(path)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// 128 random bits from the OS, in hex: file names that never collide.
fn random_hex() -> Result<String, MailError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| MailError::new(MailErrorKind::Outbox, format!("no OS randomness for a file name: {error}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn outbox_error(dir: &Path, what: &str, error: &io::Error) -> MailError {
    MailError::new(MailErrorKind::Outbox, format!("{what} {}: {error}", dir.display()))
}

/// What went wrong with a mail.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum MailErrorKind {
    /// The configuration cannot work (bad sender address, empty host, zero
    /// timeout, TLS setup).
    Config,
    /// The recipient is not a valid address.
    InvalidRecipient,
    /// The message could not be built (e.g. a control character in the
    /// subject).
    InvalidMessage,
    /// The relay could not be reached or the session broke down: connection
    /// refused, timeout, TLS or STARTTLS failure, protocol error.
    Unreachable,
    /// The relay answered with a refusal (a 4xx or 5xx reply), e.g. an
    /// unknown recipient or bad credentials.
    Rejected,
    /// The outbox folder could not be created or written.
    Outbox,
}

/// A mail that was not sent, with a one-line reason for the log. The text
/// never holds the message body (which names the passcode); it may name the
/// recipient, the relay and the relay's reply.
#[derive(Clone, Debug)]
pub struct MailError {
    kind: MailErrorKind,
    message: String,
}

impl MailError {
    fn new(kind: MailErrorKind, message: impl Into<String>) -> MailError {
        MailError { kind, message: message.into() }
    }

    /// What went wrong.
    pub fn kind(&self) -> MailErrorKind {
        self.kind
    }
}

impl fmt::Display for MailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MailError {}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    const PASSCODE: &str = "K7QX2M9P";

    fn mail(to: &str) -> Mail {
        Mail {
            to: to.to_owned(),
            subject: "Your tokenizer-auth passcode".to_owned(),
            body: Secret::new(format!("Your passcode for {to} is: {PASSCODE}\r\n")),
            expires_at: Utc::now(),
        }
    }

    fn assert_no_body(error: &MailError, mail: &Mail) {
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(PASSCODE), "error leaks the passcode: {text}");
            assert!(!text.contains(mail.body.expose().trim_end()), "error leaks the body: {text}");
        }
    }

    #[test]
    fn errors_never_show_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Mailer::new(&MailConfig::Outbox { dir: dir.path().join("outbox") }).unwrap();

        // Invalid recipient.
        let bad = mail("not an address");
        let error = outbox.send(&bad).unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::InvalidRecipient);
        assert_no_body(&error, &bad);

        // The outbox is a file, not a folder.
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        let good = mail("user@example.com");
        let error = write_outbox(&file, b"x", Utc::now()).unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::Outbox);
        assert_no_body(&error, &good);

        // A relay where nothing listens.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let relay = Mailer::new(&MailConfig::Smtp(SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port,
            security: SmtpSecurity::Plain,
            credentials: None,
            from: DEFAULT_FROM.to_owned(),
            timeout: Duration::from_secs(2),
        }))
        .unwrap();
        let error = relay.send(&good).unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::Unreachable);
        assert_no_body(&error, &good);
    }

    #[test]
    fn ascii_bodies_stay_readable_7bit() {
        let long = format!("{}\nYour passcode is: {PASSCODE}\n", "x".repeat(120));
        let message = build_message(
            &DEFAULT_FROM.parse().unwrap(),
            &Mail { body: Secret::new(long), ..mail("a@b.example") },
            SystemTime::now(),
        )
        .unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("Content-Transfer-Encoding: 7bit\r\n"), "{text}");
        assert!(text.contains(&format!("\r\nYour passcode is: {PASSCODE}\r\n")), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{text}");
    }

    #[test]
    fn recipients_are_one_bare_ascii_address() {
        for good in ["q@example.com", "first.last+tag@sub.example.org", "a@[127.0.0.1]"] {
            assert_eq!(recipient(good).unwrap().to_string(), good);
        }
        for bad in [
            "q@example.com, attacker@evil.com",
            "q@example.com,attacker@evil.com",
            "\"Q\" <q@example.com>",
            "Q <q@example.com>",
            "<q@example.com>",
            "../../x",
            "../../x@example.com",
            "q@example.com\r\nBcc: attacker@evil.com",
            " q@example.com",
            "q@",
            "@example.com",
        ] {
            let error = recipient(bad).unwrap_err();
            assert_eq!(error.kind(), MailErrorKind::InvalidRecipient, "{bad}");
        }
        for international in ["jörg@example.com", "q@bücher.example"] {
            let error = recipient(international).unwrap_err().to_string();
            assert!(error.contains("not ASCII") && error.contains("SMTPUTF8"), "{error}");
        }
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(crlf("a\nb\r\nc\rd\r"), "a\r\nb\r\nc\r\nd\r\n");
    }

    #[test]
    fn bad_configs_are_refused() {
        let config = SmtpConfig {
            host: "relay.example".to_owned(),
            port: 465,
            security: SmtpSecurity::Tls,
            credentials: None,
            from: "not a mailbox".to_owned(),
            timeout: DEFAULT_TIMEOUT,
        };
        let error = Mailer::new(&MailConfig::Smtp(config.clone())).unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::Config);
        let error = Mailer::new(&MailConfig::Smtp(SmtpConfig {
            from: DEFAULT_FROM.to_owned(),
            host: " ".to_owned(),
            ..config.clone()
        }))
        .unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::Config);
        let error = Mailer::new(&MailConfig::Smtp(SmtpConfig {
            from: DEFAULT_FROM.to_owned(),
            timeout: Duration::ZERO,
            ..config.clone()
        }))
        .unwrap_err();
        assert_eq!(error.kind(), MailErrorKind::Config);
        Mailer::new(&MailConfig::Smtp(SmtpConfig { from: DEFAULT_FROM.to_owned(), ..config })).unwrap();
    }

    #[test]
    fn mailer_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Mailer>();
    }
}
