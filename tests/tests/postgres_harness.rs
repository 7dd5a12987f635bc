//! The tests' real PostgreSQL server (`tests/src/postgres.rs`): it answers,
//! gives each test a database of its own, listens on 127.0.0.1 only with
//! fsync on, and is stopped, its folder removed, when dropped and when the
//! test process ends.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use tokenizer_auth_tests::postgres::{Postgres, shared};

/// Set in the child process of [`the_shared_cluster_stops_when_the_process_exits`].
const CHILD: &str = "POSTGRES_HARNESS_CHILD";

fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

fn show(client: &mut Client, setting: &str) -> String {
    client.query_one(&format!("SHOW {setting}"), &[]).expect("SHOW").get(0)
}

#[test]
fn the_shared_cluster_answers() {
    let url = shared().database();
    assert!(url.starts_with(&format!("postgres://tokenizer_test@127.0.0.1:{}/", shared().port())), "{url}");
    let one: i32 = connect(&url).query_one("SELECT 1", &[]).expect("SELECT 1").get(0);
    assert_eq!(one, 1);
}

#[test]
fn each_database_is_its_own() {
    let (first, second) = (shared().database(), shared().database());
    assert_ne!(first, second);
    let mut a = connect(&first);
    let mut b = connect(&second);
    a.batch_execute("CREATE TABLE only_here (x INT); INSERT INTO only_here VALUES (7)").expect("create in the first");
    let in_first: i64 = a.query_one("SELECT count(*) FROM only_here", &[]).expect("count").get(0);
    assert_eq!(in_first, 1);
    let error = b.query_one("SELECT count(*) FROM only_here", &[]).expect_err("the table is not in the second");
    assert_eq!(error.code(), Some(&postgres::error::SqlState::UNDEFINED_TABLE), "{error}");
    let tables: i64 = b
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .expect("count tables")
        .get(0);
    assert_eq!(tables, 0);
}

#[test]
fn it_listens_on_127_0_0_1_only() {
    let mut client = connect(&shared().database());
    assert_eq!(show(&mut client, "listen_addresses"), "127.0.0.1");
    let socket_dir = show(&mut client, "unix_socket_directories");
    assert_eq!(Path::new(&socket_dir), shared().dir());
}

#[test]
fn fsync_is_on() {
    let mut client = connect(&shared().database());
    assert_eq!(show(&mut client, "fsync"), "on");
    assert_eq!(show(&mut client, "synchronous_commit"), "on");
}

#[test]
fn a_dropped_cluster_is_stopped_and_removed() {
    let postgres = Postgres::start();
    let url = postgres.database();
    let _: i32 = connect(&url).query_one("SELECT 1", &[]).expect("SELECT 1").get(0);
    let (port, dir) = (postgres.port(), postgres.dir().to_path_buf());
    let pid = postmaster_pid(&dir);
    drop(postgres);
    assert!(!running(pid), "the server (pid {pid}) still runs after drop");
    assert!(!dir.exists(), "{} is still there after drop", dir.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still answers after drop");
}

/// Runs [`child_starts_the_shared_cluster`] in a process of its own, which
/// starts the shared cluster and ends; the watchdog must then stop it.
#[test]
fn the_shared_cluster_stops_when_the_process_exits() {
    let output = Command::new(std::env::current_exe().expect("this test's executable"))
        .args(["child_starts_the_shared_cluster", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed:\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.split_once(&format!("{name}=")).map(|(_, value)| value))
            .unwrap_or_else(|| panic!("no {name}= in the child's output:\n{stdout}"))
            .to_owned()
    };
    let (pid, port, dir) = (field("pid"), field("port"), field("dir"));

    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: u32 = pid.parse().expect("a pid");
    while running(pid) || Path::new(&dir).exists() {
        assert!(Instant::now() < deadline, "the shared cluster (pid {pid}, {dir}) outlived its process by a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    let port: u16 = port.parse().expect("a port");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still answers");
}

#[test]
#[ignore = "run in a child process by the_shared_cluster_stops_when_the_process_exits"]
fn child_starts_the_shared_cluster() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let pg = shared();
    let _: i32 = connect(&pg.database()).query_one("SELECT 1", &[]).expect("SELECT 1").get(0);
    println!("pid={}", postmaster_pid(pg.dir()));
    println!("port={}", pg.port());
    println!("dir={}", pg.dir().display());
}

/// The server's process id, the first line of `postmaster.pid`.
fn postmaster_pid(dir: &Path) -> u32 {
    let path = dir.join("data").join("postmaster.pid");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    text.lines().next().and_then(|line| line.trim().parse().ok()).expect("a pid in postmaster.pid")
}

/// Whether process `pid` exists and is not a zombie (the server, detached
/// by `pg_ctl`, is reaped by whoever is pid 1, which may be slow to).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    state.is_some_and(|state| state != 'Z' && state != 'X')
}
