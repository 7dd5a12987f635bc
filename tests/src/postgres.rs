//! A real PostgreSQL server for tests, started and stopped by the tests
//! themselves.
//!
//! [`Postgres::start`] makes a cluster with `initdb` in a fresh temporary
//! folder and starts it with `pg_ctl` on a free TCP port. It listens on
//! 127.0.0.1 only (`listen_addresses = '127.0.0.1'`), its unix socket is in
//! the temporary folder, `fsync` is on (durability tests run against it),
//! and one role, [`USER`], a superuser, connects with `trust` from
//! 127.0.0.1 and the socket (no other role, no other address). Dropping
//! the value stops the server (`pg_ctl stop -m immediate`, waiting for it)
//! and removes the folder.
//!
//! [`shared`] is one cluster for the whole test process, started by the
//! first test that asks; [`Postgres::database`] makes a fresh database on
//! it for each test and returns its URL.
//!
//! # Stopping at process exit: a watchdog
//!
//! A `static` is never dropped, and the crate forbids `unsafe` (so no
//! `atexit`). Every cluster therefore has a watchdog: a small `sh` child,
//! started before the server, that blocks reading its stdin, a pipe whose
//! only writing end this process holds (close-on-exec, so no other child
//! inherits it). When the process ends, however it ends (`main` returning,
//! a panic, `exit`, a signal, even `SIGKILL`), the kernel closes that end;
//! the watchdog's read returns, and it runs `pg_ctl stop -m immediate`
//! (waiting) and removes the folder. It runs in a process group of its own
//! and ignores `SIGINT`, `SIGHUP` and `SIGQUIT`, so a Ctrl-C that kills the
//! tests does not kill it first. [`Drop`] takes the same path: it closes
//! the pipe and waits for the watchdog, and stops the server itself should
//! the watchdog have failed. So the server (which `pg_ctl` detaches from
//! the terminal) is stopped whenever the test process is gone, unless the
//! watchdog is killed too (say `kill -9` of both). Should the process die
//! while `pg_ctl start` is still bringing the server up, the server may
//! come up after the watchdog has removed its folder; PostgreSQL checks its
//! lock file there once a minute and shuts down when it is gone.
//!
//! # Finding PostgreSQL
//!
//! The newest `/usr/lib/postgresql/<version>/bin` (Debian's layout, not on
//! `PATH`), else an `initdb` on `PATH`. With neither, the helper runs
//! `tests/support/postgres.sh`, which installs Debian's `postgresql`
//! package (as root, under a lock so that concurrent test processes install
//! it once) and prints the folder.
//!
//! # As root
//!
//! PostgreSQL refuses to run as root, and CI runs as root. When this process
//! is root (the owner of `/proc/self`), `initdb` and `pg_ctl` run as the
//! `postgres` system user (made by the Debian package) through `runuser -u
//! postgres --` (or `su` where there is no `runuser`), and the temporary
//! folder, in `/tmp`, belongs to that user. Otherwise they run as the
//! current user.

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::TempDir;

/// The role the tests connect as: the cluster's bootstrap superuser.
pub const USER: &str = "tokenizer_test";

/// The install script, next to this crate's `Cargo.toml`.
const INSTALL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/support/postgres.sh");

/// The system user the server runs as when this process is root.
const SERVER_USER: &str = "postgres";

/// How many free ports are tried before giving up (another process may
/// take the port between our finding it free and the server binding it).
const PORT_ATTEMPTS: usize = 5;

/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT: &str = "60";

/// The watchdog (see the module docs). `$1` is the temporary folder, the
/// rest is the command that runs `pg_ctl` (with `runuser` in front as
/// root).
const WATCHDOG: &str = r#"
trap '' INT HUP QUIT
read -r _ignored || :
dir=$1
shift
status=0
"$@" stop -D "$dir/data" -m immediate -w -t 60 || status=$?
rm -rf "$dir"
exit "$status"
"#;

/// One temporary PostgreSQL cluster, running until dropped (see the module
/// docs).
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_server_user: Option<Wrapper>,
    started: bool,
    databases: AtomicU64,
    watchdog: Watchdog,
    // Last: removed after the server has stopped.
    _tempdir: TempDir,
}

struct Watchdog {
    child: Child,
    // Held open: the watchdog stops the server when this closes.
    stdin: Option<ChildStdin>,
}

/// How to run a program as [`SERVER_USER`].
#[derive(Clone, Copy)]
enum Wrapper {
    Runuser,
    Su,
}

/// The cluster the whole test process shares, started by the first call.
/// The watchdog stops it when the process ends (see the module docs).
///
/// # Panics
///
/// As [`Postgres::start`] (and again in each later call, which tries
/// afresh).
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(Postgres::start)
}

impl Postgres {
    /// Makes and starts a new cluster in a fresh temporary folder.
    ///
    /// # Panics
    ///
    /// If PostgreSQL is not installed and cannot be, or `initdb` or the
    /// server fails (with the server's log in the message).
    pub fn start() -> Postgres {
        let bin = bindir();
        let as_server_user = if running_as_root() { Some(wrapper()) } else { None };
        let tempdir = tempfile::Builder::new()
            .prefix("tokenizer-auth-pg-")
            // The server user must reach it, and the socket path must stay
            // short (107 bytes at most): /tmp when root.
            .tempdir_in(if as_server_user.is_some() { PathBuf::from("/tmp") } else { std::env::temp_dir() })
            .expect("create a temporary folder for PostgreSQL");
        let dir = tempdir.path().to_path_buf();
        if as_server_user.is_some() {
            let output = Command::new("chown").arg(format!("{SERVER_USER}:")).arg(&dir).output();
            check(
                output,
                &format!(
                    "chown {SERVER_USER}: {} (running as root, the server runs as the `{SERVER_USER}` user, which the Debian package creates)",
                    dir.display()
                ),
            );
        }

        // Before anything runs in the folder, so that nothing outlives us.
        let watchdog = Watchdog::spawn(&dir, server_command(as_server_user, &bin.join("pg_ctl")));
        let mut postgres = Postgres {
            port: 0,
            dir,
            bin,
            as_server_user,
            started: false,
            databases: AtomicU64::new(0),
            watchdog,
            _tempdir: tempdir,
        };
        postgres.init();
        postgres.run();
        postgres
    }

    /// A fresh database, uniquely named, on this cluster, and a URL to
    /// connect to it as [`USER`]:
    /// `postgres://tokenizer_test@127.0.0.1:PORT/test_N`.
    ///
    /// # Panics
    ///
    /// If the database cannot be created.
    pub fn database(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let mut admin = ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls)
            .unwrap_or_else(|error| panic!("connect to the test PostgreSQL server: {error}\n{}", self.log()));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|error| panic!("CREATE DATABASE {name}: {error}\n{}", self.log()));
        self.url(&name)
    }

    /// The URL of `database` on this cluster, as [`USER`].
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary folder: the data directory is `data/`, the server's
    /// log `server.log`; the unix socket is here too.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log so far (or why it cannot be read).
    pub fn log(&self) -> String {
        let path = self.log_path();
        match fs::read_to_string(&path) {
            Ok(log) => format!("server log ({}):\n{log}", path.display()),
            Err(error) => format!("(no server log: {}: {error})", path.display()),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `initdb`, then the settings.
    fn init(&self) {
        // `--no-sync` skips only initdb's own final flush of the new files
        // (a second of the start-up); the server runs with fsync on.
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output();
        check(output, "initdb");

        // Appended, so they override initdb's; the port is given at start.
        let settings = format!(
            "\n# The tokenizer-auth tests' server (tests/src/postgres.rs).\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             max_connections = 200\n",
            self.dir.display()
        );
        append(&self.data().join("postgresql.conf"), &settings);
        // Overwritten in place, so the file keeps its owner.
        let hba = format!(
            "# The tokenizer-auth tests' server (tests/src/postgres.rs): one role, no password.\n\
             local all {USER}              trust\n\
             host  all {USER} 127.0.0.1/32 trust\n"
        );
        fs::write(self.data().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// Starts the server on a free port, trying another should the port be
    /// taken meanwhile.
    fn run(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_port();
            let output = self
                .command("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", PG_CTL_TIMEOUT, "-o", &format!("-p {}", self.port)])
                .output();
            // Set before looking at the result: a server that said it
            // failed may still be running, and Drop then stops it.
            self.started = true;
            let output = match output {
                Ok(output) if output.status.success() => return,
                Ok(output) => output,
                Err(error) => panic!("cannot run pg_ctl ({}): {error}", self.bin.display()),
            };
            let log = self.log();
            if attempt < PORT_ATTEMPTS && log.contains("could not bind") {
                continue;
            }
            panic!(
                "the test PostgreSQL server did not start on port {} ({}):\n{}{}\n{log}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
    }

    /// `program` from the PostgreSQL folder, run as the server's user, in
    /// the temporary folder, without PostgreSQL's environment variables.
    fn command(&self, program: &str) -> Command {
        let mut command = server_command(self.as_server_user, &self.bin.join(program));
        command.current_dir(&self.dir);
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
            command.env_remove(var);
        }
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let watchdog = &mut self.watchdog;
        // Closing the pipe is the watchdog's cue: it stops the server,
        // waiting, and removes the folder.
        drop(watchdog.stdin.take());
        let stopped = watchdog.child.wait().is_ok_and(|status| status.success());
        if self.started && !stopped {
            let _ = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", PG_CTL_TIMEOUT])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Watchdog {
    /// Starts the watchdog of the cluster in `dir`, which stops it with
    /// `pg_ctl` (a command to run it, with no arguments yet).
    fn spawn(dir: &Path, pg_ctl: Command) -> Watchdog {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(WATCHDOG).arg("tokenizer-auth-pg-watchdog").arg(dir);
        command.arg(pg_ctl.get_program()).args(pg_ctl.get_args());
        let mut child = command
            .current_dir(dir)
            .stdin(Stdio::piped())
            // Not the test's output: it would keep a reader of it waiting.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in the tests' process group, so not killed by a Ctrl-C.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start the PostgreSQL watchdog (/bin/sh): {error}"));
        let stdin = child.stdin.take();
        Watchdog { child, stdin }
    }
}

/// `program` run as [`SERVER_USER`] through `wrapper`, or as is.
fn server_command(wrapper: Option<Wrapper>, program: &Path) -> Command {
    match wrapper {
        None => Command::new(program),
        Some(Wrapper::Runuser) => {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(program);
            command
        }
        Some(Wrapper::Su) => {
            // su hands the arguments after the user and `--` to the shell.
            let mut command = Command::new("su");
            command.args(["-s", "/bin/sh", "-c", r#"exec "$0" "$@""#, SERVER_USER, "--"]).arg(program);
            command
        }
    }
}

/// `runuser` where there is one (util-linux), else `su`.
fn wrapper() -> Wrapper {
    let found = Command::new("runuser").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|status| status.success()) { Wrapper::Runuser } else { Wrapper::Su }
}

/// Whether this process runs as root: the owner of `/proc/self` is its
/// effective uid (else `id -u` says).
fn running_as_root() -> bool {
    if let Ok(metadata) = fs::metadata("/proc/self") {
        return metadata.uid() == 0;
    }
    Command::new("id").arg("-u").output().is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// The folder of `initdb` and `pg_ctl` (see the module docs), installing
/// PostgreSQL when there is none. Looked up once per process.
fn bindir() -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| installed_bindir().unwrap_or_else(install)).clone()
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else the folder of an
/// `initdb` on `PATH`.
fn installed_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|p| dir.join(p).is_file());
    let version = |name: &str| -> Vec<u32> { name.split('.').map(|part| part.parse().unwrap_or(0)).collect() };
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .map(|entry| (version(&entry.file_name().to_string_lossy()), entry.path().join("bin")))
        .filter(|(_, bin)| has_server(bin))
        .max();
    if let Some((_, bin)) = newest {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_server(dir))
}

/// Runs `tests/support/postgres.sh`, which installs PostgreSQL and prints
/// its folder.
fn install() -> PathBuf {
    eprintln!("PostgreSQL is not installed: running {INSTALL_SCRIPT}");
    let output = Command::new("bash")
        .arg(INSTALL_SCRIPT)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {INSTALL_SCRIPT}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let bin = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if !output.status.success() || !bin.join("initdb").is_file() {
        panic!(
            "the tests need PostgreSQL, and {INSTALL_SCRIPT} could not install it ({}):\n{stdout}{stderr}",
            output.status
        );
    }
    eprint!("{stderr}");
    bin
}

/// A port on 127.0.0.1 free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("the bound address").port()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
    file.write_all(text.as_bytes()).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

/// Panics unless `output` is of a command that succeeded.
fn check(output: std::io::Result<Output>, what: &str) {
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) if error.kind() == ErrorKind::NotFound => panic!("{what}: program not found: {error}"),
        Err(error) => panic!("{what}: {error}"),
    }
}
