//! A real SMTP server for tests: Python's aiosmtpd, driven by
//! `tests/support/smtp_server.py`.
//!
//! [`SmtpServer::start`] runs it on 127.0.0.1 on a free port. It saves
//! every message it accepts as a file in a temporary folder, refuses (550)
//! any recipient whose address starts with `reject`, and is killed when the
//! value is dropped (or, should the test process die, when its stdin
//! closes).
//!
//! It needs the Python package aiosmtpd, which `tests/support/smtp_server.py`
//! installs from PyPI when it is missing. If it still cannot be had, `start`
//! panics: the mail tests never skip silently.
//!
//! [`RefusingPort`] is a relay that is down: a port nothing listens on,
//! held for as long as the test needs it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tempfile::TempDir;

/// The script, next to this crate's `Cargo.toml`.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/support/smtp_server.py");

/// The script's exit status when aiosmtpd cannot be imported.
const EXIT_NO_AIOSMTPD: i32 = 3;

/// A running aiosmtpd server on 127.0.0.1 that keeps what it receives.
pub struct SmtpServer {
    /// The port it listens on.
    pub port: u16,
    /// The folder holding one `.eml` file per accepted message.
    pub dir: PathBuf,
    child: Child,
    // Held open: the server stops when its stdin closes.
    _stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
    _tempdir: TempDir,
}

impl SmtpServer {
    /// Starts a server that accepts mail without authentication.
    ///
    /// # Panics
    ///
    /// If `python3` cannot be run, aiosmtpd is not installed, or the server
    /// does not come up.
    pub fn start() -> SmtpServer {
        SmtpServer::spawn(None)
    }

    /// Starts a server that requires `AUTH` (PLAIN or LOGIN, offered without
    /// TLS) and accepts only `user` with `password`.
    ///
    /// # Panics
    ///
    /// As [`SmtpServer::start`].
    pub fn start_with_auth(user: &str, password: &str) -> SmtpServer {
        SmtpServer::spawn(Some(format!("{user}:{password}")))
    }

    fn spawn(auth: Option<String>) -> SmtpServer {
        let tempdir = tempfile::tempdir().expect("create a tempdir for the SMTP server");
        let dir = tempdir.path().join("received");
        let mut command = Command::new("python3");
        command.arg(SCRIPT).arg("0").arg(&dir);
        if let Some(auth) = auth {
            command.arg("--auth").arg(auth);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run python3 for the SMTP test server ({SCRIPT}): {error}"));

        // Drain stderr all along (aiosmtpd logs there), keeping it for the
        // panic message should the server not come up.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        if let Some(port) = line.trim().parse().ok().filter(|_| read.is_ok()) {
            return SmtpServer { port, dir, child, _stdin: stdin, _stdout: stdout, _tempdir: tempdir };
        }

        let _ = child.kill();
        let status = child.wait().expect("wait for the SMTP test server");
        // Let the stderr thread catch the last words.
        thread::sleep(Duration::from_millis(50));
        let stderr = stderr.lock().unwrap().clone();
        if status.code() == Some(EXIT_NO_AIOSMTPD) || stderr.contains("No module named 'aiosmtpd'") {
            panic!(
                "the SMTP test server needs the Python package aiosmtpd, and could not install it: run \
                 `python3 -m pip install 'aiosmtpd==1.4.6'`\n{stderr}"
            );
        }
        panic!("the SMTP test server ({SCRIPT}) did not start ({status}); first line {line:?}; stderr:\n{stderr}");
    }

    /// The messages received so far, oldest first, each as the raw text
    /// the client sent after `DATA` (headers, blank line, body; CRLF line
    /// endings).
    pub fn messages(&self) -> Vec<String> {
        read_messages(&self.dir)
    }

    /// Waits up to `timeout` for at least `n` messages, then returns all the
    /// messages received (possibly fewer than `n`, if time ran out).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() >= deadline {
                return messages;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `.eml` files in `dir` (not the hidden temporary ones), by name.
fn read_messages(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".eml")
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

/// A port on 127.0.0.1 that refuses every connection, for as long as this
/// value lives: a socket is bound to it (port 0, read back) and never
/// listens. Being bound, without `SO_REUSEADDR`, the port cannot be taken
/// by another test's server meanwhile, as a port found free and released
/// could be.
pub struct RefusingPort {
    /// The port.
    pub port: u16,
    _socket: Socket,
}

impl RefusingPort {
    /// Binds a fresh port.
    ///
    /// # Panics
    ///
    /// If no socket can be bound on 127.0.0.1.
    pub fn bind() -> RefusingPort {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let port = socket.local_addr().ok().and_then(|a| a.as_socket()).expect("the bound address").port();
        RefusingPort { port, _socket: socket }
    }
}
