//! The audit trail's file (docs/OPERATIONS.md, "The audit trail"): one
//! JSON line per security event, appended to `audit_log` (by default
//! `<data_dir>/audit.log`, mode 0600; `-` for standard error).
//!
//! The server's events come from the engine ([`Notice`]); the admin
//! commands append theirs to the same file ([`append_one`]). A line never
//! carries a password, a passcode or a token: the types it is made from
//! hold none.
//!
//! Writing never blocks the event loop: [`AuditLog::record`] queues the
//! line (a bounded queue; a line that does not fit is counted as lost) and
//! one thread of its own writes what is queued, in one `write` per batch,
//! as soon as it is there. A write that fails (a full disk) loses its
//! lines, which the metrics count and the log says, and serving goes on:
//! the trail must not become a way to stop logins. A line a full disk cut
//! short is ended before the next one, so that a reader loses that line
//! and no other.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Serialize;
use tokenizer_auth_engine::{Listener, Notice};

/// Where the trail goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AuditTarget {
    /// Appended to this file.
    File(PathBuf),
    /// Written to standard error (`-`), for a supervisor that collects it.
    Stderr,
}

impl AuditTarget {
    /// The target `text` names: `-` for standard error, else a path.
    pub fn parse(text: &str) -> AuditTarget {
        match text {
            "-" => AuditTarget::Stderr,
            path => AuditTarget::File(PathBuf::from(path)),
        }
    }

    /// The default: `audit.log` in the data folder.
    pub fn in_data_dir(data_dir: &Path) -> AuditTarget {
        AuditTarget::File(data_dir.join("audit.log"))
    }

    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        match self {
            AuditTarget::Stderr => Ok(Box::new(io::stderr())),
            AuditTarget::File(path) => Ok(Box::new(crate::private::open_append(path)?)),
        }
    }

    fn name(&self) -> String {
        match self {
            AuditTarget::Stderr => "-".to_owned(),
            AuditTarget::File(path) => path.display().to_string(),
        }
    }
}

/// One line of the trail. Every line has every field, `null` where it does
/// not apply (an admin command has no address or listener).
#[derive(Serialize, Debug)]
pub struct AuditLine<'a> {
    /// When, in UTC, to the millisecond.
    pub time: String,
    /// What happened (`login`, `account_locked`, `user_added`, ...).
    pub event: &'a str,
    /// What came of it (`logged_in`, `wrong_password`, `done`, ...).
    pub outcome: &'a str,
    /// Whose account.
    pub email: Option<&'a str>,
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The device's MAC.
    pub mac: Option<String>,
    /// The listener the request came in on.
    pub listener: Option<&'a str>,
    /// More about it, in words (why a token counts as reused, how many
    /// sessions a command ended); absent when there is nothing to add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Who ran an admin command (the OS user); absent for the server's
    /// events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl AuditLine<'_> {
    /// The line's time field for `at`.
    pub fn time(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// The line, as written, with its newline.
    pub fn render(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and addresses cannot fail.
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The audit line of a notice, if it is an event of the trail: a passcode
/// request, login, lock or renewal; a rotated-away token that came back,
/// and the session it revoked (`now` is its time: the engine tells it when
/// the revocation settled).
pub fn line_of(notice: &Notice, now: DateTime<Utc>) -> Option<Vec<u8>> {
    let line = match notice {
        Notice::Audit(e) => AuditLine {
            time: AuditLine::time(e.at),
            event: e.kind.as_str(),
            outcome: e.outcome.as_str(),
            email: Some(&e.subject.email),
            ip: Some(e.subject.ip),
            mac: Some(e.subject.mac.to_string()),
            listener: e.listener.map(Listener::as_str),
            detail: None,
            by: None,
        },
        Notice::TokenReuse { email, mac, peer, why, revoked } => AuditLine {
            time: AuditLine::time(now),
            event: "token_reused",
            outcome: if *revoked { "session_revoked" } else { "revoke_failed" },
            email: Some(email),
            ip: Some(*peer),
            mac: Some(mac.to_string()),
            listener: Some(Listener::Native.as_str()),
            detail: Some(why.as_str().to_owned()),
            by: None,
        },
        Notice::Refused { .. } => return None,
    };
    Some(line.render())
}

/// Appends one line to the trail at `target`, from a process that writes
/// one event (an admin command): one `write` of the whole line, which an
/// append-mode file places after every other whole line, the server's
/// included.
/// If a full disk cut the server's last line short, the line is ended
/// first, so that this one stays whole.
pub fn append_one(target: &AuditTarget, line: &AuditLine<'_>) -> io::Result<()> {
    let mut bytes = line.render();
    if let AuditTarget::File(path) = target
        && path.exists()
        && !ends_a_line(path)?
    {
        bytes.insert(0, b'\n');
    }
    target.open()?.write_all(&bytes)
}

/// Whether the file at `path` is empty, missing or ends with a newline.
fn ends_a_line(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() || file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Lines that may wait to be written before new ones are lost.
pub const QUEUE_LINES: usize = 1 << 16;

/// The most bytes written in one batch.
const BATCH_BYTES: usize = 256 << 10;

/// How often a write that keeps failing is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What the writer counted, read at scrape time.
#[derive(Default, Debug)]
pub struct AuditStats {
    written: AtomicU64,
    lost: AtomicU64,
    write_errors: AtomicU64,
}

/// A reading of [`AuditStats`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct AuditCounts {
    /// Lines written.
    pub lines_written: u64,
    /// Lines lost: a failed write, or a full queue.
    pub lines_lost: u64,
    /// Writes that failed.
    pub write_errors: u64,
}

impl AuditStats {
    /// The counts now.
    pub fn counts(&self) -> AuditCounts {
        AuditCounts {
            lines_written: self.written.load(Ordering::Relaxed),
            lines_lost: self.lost.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// The server's audit trail: a queue, and the thread that writes it.
pub struct AuditLog {
    queue: Option<Sender<Vec<u8>>>,
    stats: Arc<AuditStats>,
    writer: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens the trail (a file that cannot be opened stops the start: the
    /// operator asked for a trail) and starts its writer.
    pub fn open(target: &AuditTarget) -> io::Result<AuditLog> {
        let sink = target.open()?;
        let (queue, lines) = bounded(QUEUE_LINES);
        let stats = Arc::new(AuditStats::default());
        let writer = Writer { sink, name: target.name(), stats: Arc::clone(&stats), cut: false, failing: None };
        let writer = std::thread::Builder::new().name("audit".into()).spawn(move || writer.run(&lines))?;
        Ok(AuditLog { queue: Some(queue), stats, writer: Some(writer) })
    }

    /// Queues one line (never waits: a line that does not fit is counted
    /// as lost).
    pub fn record(&self, line: Vec<u8>) {
        let Some(queue) = &self.queue else { return };
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The writer's counters, for the metrics.
    pub fn stats(&self) -> Arc<AuditStats> {
        Arc::clone(&self.stats)
    }

    /// Writes what is queued and stops the writer (at shutdown).
    pub fn close(mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread's state.
struct Writer {
    sink: Box<dyn Write + Send>,
    name: String,
    stats: Arc<AuditStats>,
    /// The last write stopped inside a line: end it before the next.
    cut: bool,
    /// Since when, and when last said, writes have been failing.
    failing: Option<Instant>,
}

impl Writer {
    /// Writes each batch as soon as it is queued, until the queue closes.
    fn run(mut self, lines: &Receiver<Vec<u8>>) {
        let mut batch = Vec::new();
        while let Ok(line) = lines.recv() {
            batch.extend_from_slice(&line);
            while batch.len() < BATCH_BYTES {
                match lines.try_recv() {
                    Ok(line) => batch.extend_from_slice(&line),
                    Err(_) => break,
                }
            }
            self.write(&batch);
            batch.clear();
        }
    }

    fn write(&mut self, batch: &[u8]) {
        let mut done = 0;
        let mut failure = None;
        while self.cut && failure.is_none() {
            match self.sink.write(b"\n") {
                Ok(1) => self.cut = false,
                Ok(_) => failure = Some(io::Error::from(io::ErrorKind::WriteZero)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => failure = Some(e),
            }
        }
        while failure.is_none() && done < batch.len() {
            match self.sink.write(&batch[done..]) {
                Ok(0) => failure = Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none()
            && let Err(e) = self.sink.flush()
        {
            failure = Some(e);
        }
        let (written, rest) = batch.split_at(done);
        let whole = written.iter().filter(|&&b| b == b'\n').count() as u64;
        self.stats.written.fetch_add(whole, Ordering::Relaxed);
        let Some(error) = failure else {
            if self.failing.take().is_some() {
                tracing::info!(audit_log = %self.name, "audit log: writing again");
            }
            return;
        };
        self.cut |= written.last().is_some_and(|&b| b != b'\n');
        let lost = rest.iter().filter(|&&b| b == b'\n').count() as u64;
        self.stats.lost.fetch_add(lost, Ordering::Relaxed);
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if self.failing.is_none_or(|said| now.duration_since(said) >= REPORT_EVERY) {
            self.failing = Some(now);
            tracing::error!(
                audit_log = %self.name,
                error = %error,
                lost,
                "audit log: cannot write, events are lost (see tokenizer_auth_audit_lines_lost_total); serving goes on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u32) -> Vec<u8> {
        let email = format!("user{n}@example.com");
        AuditLine {
            time: AuditLine::time(DateTime::UNIX_EPOCH),
            event: "login",
            outcome: "logged_in",
            email: Some(&email),
            ip: Some(IpAddr::from([127, 0, 0, 1])),
            mac: None,
            listener: Some("native"),
            detail: None,
            by: None,
        }
        .render()
    }

    #[test]
    fn lines_are_appended_whole_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let target = AuditTarget::in_data_dir(dir.path());
        let log = AuditLog::open(&target).unwrap();
        for n in 0..1000 {
            log.record(line(n));
        }
        let stats = log.stats();
        log.close();
        let AuditTarget::File(path) = &target else { unreachable!() };
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.starts_with(r#"{"time":"1970-01-01T00:00:00.000Z","event":"login","outcome":"logged_in","email":"user0@example.com","ip":"127.0.0.1","mac":null,"listener":"native"}"#));
        assert_eq!(stats.counts(), AuditCounts { lines_written: 1000, lines_lost: 0, write_errors: 0 });
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // An admin command appends to the same file.
        let added = AuditLine {
            time: AuditLine::time(DateTime::UNIX_EPOCH),
            event: "user_added",
            outcome: "done",
            email: Some("user7@example.com"),
            ip: None,
            mac: None,
            listener: None,
            detail: None,
            by: Some("root".to_owned()),
        };
        append_one(&target, &added).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 1001);
        assert!(text.lines().last().unwrap().ends_with(r#""listener":null,"by":"root"}"#));
        // After a line a full disk cut short, the command's line is whole.
        std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(b"{\"time\":\"19").unwrap();
        append_one(&target, &added).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 1003);
        assert!(text.lines().last().unwrap().starts_with(r#"{"time":"1970"#));
    }

    #[test]
    fn hostile_text_stays_on_its_line() {
        let email = "a\"b\nc\r\u{0}d\u{2028}@example.com\",\"event\":\"x";
        let bytes = AuditLine {
            time: AuditLine::time(DateTime::UNIX_EPOCH),
            event: "login",
            outcome: "unknown_email",
            email: Some(email),
            ip: None,
            mac: None,
            listener: None,
            detail: None,
            by: None,
        }
        .render();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n') && !text.contains('\r'));
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!((back["email"].as_str(), back["event"].as_str()), (Some(email), Some("login")));
    }

    /// A sink that takes `room` bytes, then fails as a full disk does.
    struct Full {
        taken: Arc<std::sync::Mutex<Vec<u8>>>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut taken = self.taken.lock().unwrap();
            let n = buf.len().min(self.room.saturating_sub(taken.len()));
            if n == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_loses_lines_counted_and_cuts_none_into_the_next() {
        let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let one = line(0).len();
        let full = Full { taken: Arc::clone(&taken), room: one + one / 2 };
        let stats = Arc::new(AuditStats::default());
        let mut writer =
            Writer { sink: Box::new(full), name: "test".into(), stats: Arc::clone(&stats), cut: false, failing: None };
        let batch: Vec<u8> = (0..3).flat_map(line).collect();
        writer.write(&batch);
        assert_eq!(stats.counts(), AuditCounts { lines_written: 1, lines_lost: 2, write_errors: 1 });
        assert!(writer.cut);
        // Room again: the cut line is ended first, and the next is whole.
        writer.sink = Box::new(Full { taken: Arc::clone(&taken), room: usize::MAX });
        writer.write(&line(9));
        let text = String::from_utf8(taken.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[2].contains("user9@example.com") && lines[2].starts_with('{'));
        assert_eq!(stats.counts().lines_written, 2);
    }
}
