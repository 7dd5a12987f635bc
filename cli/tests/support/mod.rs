//! A running server and a native client, for the tests that drive the
//! real binary over real TCP.

#![allow(dead_code, unreachable_pub, unused_macros)]

pub mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The same tests on a PostgreSQL database (`store_url`), with the mio
/// runtime: `on_postgres::NAME` calls `NAME("mio+postgres")`.
macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(#[test] fn $name() { super::$name("mio+postgres") })*
        }
    };
}

/// One test per function and runtime: `mio_runtime::NAME` and
/// `std_runtime::NAME` call `NAME("mio")` and `NAME("std")`.
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod mio_runtime {
            $(#[test] fn $name() { super::$name("mio") })*
        }
        mod std_runtime {
            $(#[test] fn $name() { super::$name("std") })*
        }
    };
}

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenizer-auth");
pub const MAC: &str = "aa:bb:cc:dd:ee:ff";
pub const EMAIL: &str = "ada@example.com";
pub const PHONE: &str = "5550100";
pub const PASSWORD: &str = "correct horse battery";
pub const LOGIN_PREFIX: &str = tokenizer_auth_engine::LOGIN_PREFIX;

/// A running server, stopped with SIGTERM when dropped.
pub struct Server {
    pub child: Child,
    pub native: SocketAddr,
    pub legacy_passcode: SocketAddr,
    pub legacy_login: SocketAddr,
    /// The admin listener, if `admin_listen` is set.
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
    /// The server's log lines (JSON) so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The variables that point a command at the server's store (a
    /// PostgreSQL database and its key; none for the data folder's files).
    pub store_env: Vec<(&'static str, String)>,
    _tmp: tempfile::TempDir,
}

/// The key of the servers on a test database.
pub const POSTGRES_KEY: &str = "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b";

/// The runtime a test names, and the variables of its store: `RUNTIME`
/// for the data folder's files, `RUNTIME+postgres` for a fresh database on
/// the tests' PostgreSQL server.
fn store_of(runtime: &str) -> (&str, Vec<(&'static str, String)>) {
    match runtime.strip_suffix("+postgres") {
        Some(runtime) => {
            let url = tokenizer_auth_tests::postgres::shared().database();
            (runtime, vec![("TOKENIZER_AUTH_STORE_URL", url), ("TOKENIZER_AUTH_SERVER_KEY", POSTGRES_KEY.to_owned())])
        }
        None => (runtime, Vec::new()),
    }
}

/// The servers' default `revocation_delay` on PostgreSQL.
pub const REVOCATION_DELAY: Duration = Duration::from_secs(1);

/// How long after a revocation a server on `runtime`'s store may still
/// authorize the session: none on the files, whose cache is checked
/// against them on every read; `revocation_delay` on PostgreSQL, whose
/// cache learns of other processes' changes by notification.
pub fn revocation_delay(runtime: &str) -> Duration {
    if runtime.ends_with("+postgres") { REVOCATION_DELAY } else { Duration::ZERO }
}

/// Every server refuses `token`, revoked just before `revoked`, within
/// `delay` (at once, for none), and never authorizes it after.
pub fn refused_within(servers: &[&Server], token: &str, revoked: Instant, delay: Duration) {
    for server in servers {
        let mut c = server.connect();
        while c.ask(&token_line(token)) == "authorized" {
            assert!(revoked.elapsed() < delay, "a revoked session authorized {:?} after", revoked.elapsed());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::thread::sleep((revoked + delay).saturating_duration_since(Instant::now()));
    for server in servers {
        assert_eq!(server.connect().ask(&token_line(token)), "unauthorized");
    }
}

pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
    line[start..].split('"').next()
}

impl Server {
    pub fn start(runtime: &str, env: &[(&str, &str)]) -> Server {
        Server::start_with(runtime, env, &[])
    }

    /// [`Server::start`] with more `serve` arguments.
    pub fn start_with(runtime: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let (runtime, store_env) = store_of(runtime);
        let mut add = Command::new(BIN)
            .args(["--data-dir"])
            .arg(tmp.path())
            .args(["user", "add", EMAIL, "--phone", PHONE, "--password-stdin"])
            .envs(store_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        add.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        assert!(add.wait().unwrap().success());
        Server::launch(tmp, runtime, store_env, env, args)
    }

    /// A server on a data folder made already (whose accounts are the
    /// test's business).
    pub fn start_on(tmp: tempfile::TempDir, runtime: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let (runtime, store_env) = store_of(runtime);
        Server::launch(tmp, runtime, store_env, env, args)
    }

    fn launch(
        tmp: tempfile::TempDir,
        runtime: &str,
        store_env: Vec<(&'static str, String)>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let dir = tmp.path().to_owned();
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&dir)
            .args(["serve", "--runtime", runtime])
            // Loopback, unless the test listens elsewhere.
            .args(if args.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
            .args(args)
            .env("TOKENIZER_AUTH_LOG_FORMAT", "json")
            // Two event loops (mio) whatever the machine's cores, so that
            // every guarantee is tested across loops.
            .env("TOKENIZER_AUTH_LOOPS", "2")
            .envs(store_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "the server exited before listening");
            if line.contains("\"listening\"") {
                break;
            }
        }
        let addr = |name| field(&line, name).unwrap_or_else(|| panic!("{name} in {line}")).parse().unwrap();
        let server = Server {
            native: addr("native"),
            legacy_passcode: addr("legacy_passcode"),
            legacy_login: addr("legacy_login"),
            admin: field(&line, "admin").and_then(|a| a.parse().ok()),
            child,
            dir,
            log: Arc::default(),
            store_env,
            _tmp: tmp,
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let log = Arc::clone(&server.log);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        server
    }

    pub fn connect(&self) -> Client {
        Client::new(TcpStream::connect(self.native).unwrap())
    }

    /// The passcode in the newest outbox message, if any.
    pub fn outbox_passcode_opt(&self) -> Option<String> {
        newest_passcode(&self.dir.join("outbox"))
    }

    /// The passcode in the newest outbox message.
    pub fn outbox_passcode(&self) -> String {
        newest_passcode(&self.dir.join("outbox")).expect("a passcode in the outbox")
    }

    pub fn login(&self) -> String {
        let mut c = self.connect();
        assert_eq!(c.ask(&format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
        let passcode = self.outbox_passcode();
        let reply = c.ask(&format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{passcode}"));
        reply.strip_prefix(LOGIN_PREFIX).unwrap_or_else(|| panic!("login refused: {reply}")).to_owned()
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        self.child.wait().unwrap()
    }

    /// [`Server::stop`], keeping the data folder to read after.
    pub fn stop_keeping_dir(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let dir = std::mem::replace(&mut self._tmp, tempfile::tempdir().unwrap());
        (self.stop(), dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command of the binary (`user ...`, `client ...`, `limits ...`)
/// on the data folder `dir`, with `stdin` as its standard input.
pub fn run_on(dir: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    run_with(dir, args, stdin, &[])
}

/// [`run_on`] with more of the environment (a store's URL and key, say).
pub fn run_with(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that reads no input may have exited already: a broken pipe
    // here is not the test's business; its exit status and output are.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args(["-s", name, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

pub fn newest_passcode(outbox: &Path) -> Option<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox).ok()?.map(|e| e.unwrap().path()).collect();
    files.sort();
    let text = std::fs::read_to_string(files.last()?).ok()?;
    tokenizer_auth_engine::mail::find_passcode(&text).map(str::to_owned)
}

/// A native client with a line reader.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no whole reply line: {line:?}");
        line.pop();
        line
    }

    pub fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }

    /// Whether the server closed the connection (EOF) within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// A token request line for the test device.
pub fn token_line(token: &str) -> String {
    format!("{token}|{MAC}|get|some|data")
}
