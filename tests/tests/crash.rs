//! Crash safety: a child process logs in and renews in a loop against real
//! files and reports every token the moment its reply exists; the parent
//! kills it with SIGKILL at random moments. After every kill both files pass
//! `PRAGMA integrity_check`, every reported token is still valid (or was
//! rotated by a renewal that had started), and no reported passcode could
//! log in again.
//!
//! The same check is shown to catch what it is for: the child killed at
//! the very moment its first login reply exists loses nothing, and with an
//! ordering bug planted in the child (a reply released before its commit, a
//! session stored before its passcode is consumed) the same kill is caught.
//!
//! A second test kills the child while it commits groups of rotations with
//! `SqliteStore::write_group`, as a server's writer does: every group is
//! found whole or not at all, the last group reported is there (or the one
//! after it, committed but not yet reported), and a batch that conflicted
//! inside a group left nothing.
//!
//! `CRASH_ROUNDS` sets the number of rounds (default 200; the group test
//! runs a quarter as many; never fewer than [`MIN_ROUNDS`] each, so no
//! setting makes the tests vacuous); `scripts/crash-soak.sh` runs many
//! more.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::store::SqliteStore;
use tokenizer_auth_engine::{BaseToken, Mac, MasterToken, Secret, ServerKey, StoredPasscode};
use tokenizer_auth_tests::crash::{FREEZE_AFTER_LOGIN, GROUP, PLANT, Plant, group_master};

const EMAIL: &str = "crash@example.com";
const PASSWORD: &str = "crash-test-password";

/// What the parent knows of one device's session.
#[derive(Clone)]
enum Chain {
    /// The last reply sent carried this token.
    Holds(String),
    /// A renewal of this token started; its reply was not seen.
    Renewing(String),
}

/// A small xorshift generator: the kill schedule needs no cryptography,
/// and its seed is printed so a failing run can be repeated.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn master(token: &str, mac: &str) -> String {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    MasterToken::derive(&BaseToken::parse(token.as_bytes()).unwrap(), Mac::parse(mac).unwrap(), ip).to_hex()
}

/// Starts the child on `dir` for `round`, with `extra` arguments and `env`
/// set, and a thread collecting the lines it reports in full (a report cut
/// by the kill was never made), each also sent on the returned channel.
fn start_child(
    dir: &Path,
    round: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Child, JoinHandle<Vec<String>>, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
        .arg(dir)
        .arg(round.to_string())
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
            let _ = tx.send(line.clone());
            lines.push(std::mem::take(&mut line));
        }
        lines
    });
    (child, reader, rx)
}

/// Runs the child on `dir` for `round` (with `extra` arguments), kills it
/// with SIGKILL at the schedule's next moment, and returns the lines it
/// reported in full.
fn run_child(dir: &Path, round: u32, extra: &[&str], schedule: &mut Schedule) -> Vec<String> {
    let (mut child, reader, _) = start_child(dir, round, extra, &[]);
    std::thread::sleep(Duration::from_micros(2_000 + schedule.next() % 60_000));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap()
}

/// What the parent learned from one round's reports.
#[derive(Default)]
struct Reports {
    /// Each device's session, as last reported.
    chains: BTreeMap<String, Chain>,
    /// Each passcode that logged in, with its device.
    passcodes: Vec<(String, String)>,
    /// The devices this round reported on.
    macs: BTreeSet<String>,
}

impl Reports {
    /// Takes in one round's reports.
    fn read(&mut self, round: u32, lines: &[String]) {
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["LOGIN", mac, passcode, token] => {
                    self.macs.insert(mac.to_owned());
                    self.passcodes.push((mac.to_owned(), passcode.to_owned()));
                    self.chains.insert(mac.to_owned(), Chain::Holds(token.to_owned()));
                }
                ["RENEWING", mac, token] => {
                    self.macs.insert(mac.to_owned());
                    self.chains.insert(mac.to_owned(), Chain::Renewing(token.to_owned()));
                }
                ["RENEWED", mac, token] => {
                    self.chains.insert(mac.to_owned(), Chain::Holds(token.to_owned()));
                }
                _ => panic!("round {round}: unexpected report {line:?}"),
            }
        }
    }
}

/// What is wrong with the files after a kill: a file that fails
/// `integrity_check`, or a chain in `chains` or passcode in `passcodes` that
/// is not as reported. Empty when all is well.
fn violations(dir: &Path, chains: &BTreeMap<String, Chain>, passcodes: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for file in ["op_creds.db", "op_passcodes.db"] {
        let conn = Connection::open(dir.join(file)).unwrap();
        let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        if verdict != "ok" {
            found.push(format!("{file} fails its integrity check: {verdict}"));
        }
    }
    let creds = Connection::open(dir.join("op_creds.db")).unwrap();
    let exists = |master: &str| {
        creds.query_row("SELECT 1 FROM sessions WHERE master = ?1", [master], |_| Ok(())).optional().unwrap().is_some()
    };
    let sessions_of = |mac: &str| -> i64 {
        creds.query_row("SELECT count(*) FROM sessions WHERE mac = ?1", [mac], |r| r.get(0)).unwrap()
    };
    for (mac, chain) in chains {
        match chain {
            Chain::Holds(token) if !exists(&master(token, mac)) => {
                found.push(format!("the token reported for {mac} is gone"));
            }
            // The renewal may have committed without its reply going out:
            // then the old token is rotated away, and its one successor
            // holds the session.
            Chain::Renewing(token) if !exists(&master(token, mac)) && sessions_of(mac) != 1 => {
                found.push(format!("the session of {mac} vanished during a renewal"));
            }
            _ => {}
        }
        if sessions_of(mac) > 1 {
            found.push(format!("{mac} has two sessions"));
        }
    }
    let stored = Connection::open(dir.join("op_passcodes.db")).unwrap();
    for (mac, passcode) in passcodes {
        let row: Option<String> = stored
            .query_row(
                "SELECT passcode FROM passcode_table WHERE email = ?1 AND mac = ?2 AND ip = '127.0.0.1'",
                [EMAIL, mac],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        let reusable =
            row.is_some_and(|code| StoredPasscode::from_column(&code).matches(&ServerKey::default(), passcode));
        if reusable {
            found.push(format!("the passcode that logged in {mac} could log in again"));
        }
    }
    found
}

/// A data folder with the account the child logs in to.
fn data_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap(); // cheap: the child uses the same
    SqliteStore::open(tmp.path()).unwrap().add_user(EMAIL, "", &hasher.hash(&Secret::new(PASSWORD)).unwrap()).unwrap();
    tmp
}

/// Runs the child with `env` (and [`FREEZE_AFTER_LOGIN`]), kills it the
/// moment its first login is reported, and returns what is then wrong
/// with the files.
fn killed_at_the_first_login_reply(env: &[(&str, &str)]) -> Vec<String> {
    let tmp = data_dir();
    let mut env = env.to_vec();
    env.push((FREEZE_AFTER_LOGIN, "1"));
    let (mut child, reader, lines) = start_child(tmp.path(), 0, &[], &env);
    // Generous: the child hashes one password and makes a few writes.
    let first = lines.recv_timeout(Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();
    let first = first.expect("the child reported a login");
    assert!(first.starts_with("LOGIN "), "{first}");
    let mut reports = Reports::default();
    reports.read(0, &reader.join().unwrap());
    assert_eq!(reports.passcodes.len(), 1, "one login reported, then nothing");
    violations(tmp.path(), &reports.chains, &reports.passcodes)
}

#[test]
fn a_kill_the_moment_a_login_reply_exists_loses_nothing() {
    assert_eq!(killed_at_the_first_login_reply(&[]), Vec::<String>::new());
}

#[test]
fn the_crash_check_catches_a_reply_released_before_its_commit() {
    let found = killed_at_the_first_login_reply(&[(PLANT, Plant::ReplyBeforeCommit.as_str())]);
    assert!(found.iter().any(|v| v.contains("is gone")), "not caught: {found:?}");
}

#[test]
fn the_crash_check_catches_a_session_stored_before_its_passcode_is_consumed() {
    let found = killed_at_the_first_login_reply(&[(PLANT, Plant::SessionBeforeConsume.as_str())]);
    assert!(found.iter().any(|v| v.contains("could log in again")), "not caught: {found:?}");
}

/// The fewest rounds either crash test runs, whatever `CRASH_ROUNDS` says.
const MIN_ROUNDS: u32 = 20;

/// The rounds `CRASH_ROUNDS` asks for (200 by default), at least
/// [`MIN_ROUNDS`].
fn rounds() -> u32 {
    std::env::var("CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(200).max(MIN_ROUNDS)
}

#[test]
fn kill_9_at_random_moments_loses_nothing_a_client_was_told() {
    let rounds = rounds();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test: {rounds} rounds, schedule seed {seed}");
    let mut schedule = Schedule(seed);

    let tmp = data_dir();
    let dir = tmp.path();

    let mut all = Reports::default();
    let mut reported = 0usize;
    for round in 0..rounds {
        let lines = run_child(dir, round, &[], &mut schedule);
        reported += lines.len();
        let passcodes_before = all.passcodes.len();
        all.macs.clear();
        all.read(round, &lines);
        // Every round checks what it touched; every 25th round, and the
        // last, check everything reported so far (older sessions must stay
        // valid too), which keeps long soaks from going quadratic.
        let found = if round % 25 == 24 || round + 1 == rounds {
            violations(dir, &all.chains, &all.passcodes)
        } else {
            let touched: BTreeMap<String, Chain> = all
                .chains
                .iter()
                .filter(|(mac, _)| all.macs.contains(*mac))
                .map(|(m, c)| (m.clone(), c.clone()))
                .collect();
            violations(dir, &touched, &all.passcodes[passcodes_before..])
        };
        assert_eq!(found, Vec::<String>::new(), "round {round}");
    }
    eprintln!("crash test: {reported} reports over {rounds} rounds, {} sessions", all.chains.len());
    let logins = all.passcodes.len();
    assert!(logins as u32 >= rounds / 4, "too few logins completed to test anything: {logins}");
}

#[test]
fn kill_9_during_group_commits_leaves_every_group_whole_or_absent() {
    let rounds = (rounds() / 4).max(MIN_ROUNDS);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("group crash test: {rounds} rounds, schedule seed {seed}");
    let mut schedule = Schedule(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    SqliteStore::open(dir).unwrap();
    let mut groups_reported = 0u64;
    for round in 0..rounds {
        let reports = run_child(dir, round, &["groups"], &mut schedule);
        let group = |line: &String| line.trim().strip_prefix("GROUP ")?.parse::<u32>().ok();
        let groups: Vec<u32> = reports.iter().map(|line| group(line).expect("a GROUP report")).collect();
        let last = groups.last().copied();
        groups_reported += last.map_or(0, |g| u64::from(g) + 1);

        let creds = Connection::open(dir.join("op_creds.db")).unwrap();
        let verdict: String = creds.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(verdict, "ok", "round {round}");
        let exists = |g: u32, j: u32| {
            let master = group_master(round, g, j).to_hex();
            creds
                .query_row("SELECT 1 FROM sessions WHERE master = ?1", [master], |_| Ok(()))
                .optional()
                .unwrap()
                .is_some()
        };
        let present = |g: u32| (0..GROUP).filter(|&j| exists(g, j)).count() as u32;
        let upto = last.map_or(0, |g| g + 1);
        let whole: Vec<u32> = (0..=upto).filter(|&g| present(g) == GROUP).collect();
        for g in 0..=upto {
            assert!(present(g) == 0 || present(g) == GROUP, "round {round}: group {g} is partly there");
            assert!(!exists(g, GROUP + 2), "round {round}: the conflicting batch of group {g} left a session");
        }
        match last {
            // The reported group is there, or its successor committed
            // without its report.
            Some(g) => assert!(whole == [g] || whole == [g + 1], "round {round}: last report {g}, whole {whole:?}"),
            None => assert!(whole.is_empty() || whole == [0], "round {round}: no report, whole {whole:?}"),
        }
        assert!(!exists(upto + 1, 0), "round {round}: a group two past the last report");
    }
    eprintln!("group crash test: {groups_reported} groups reported over {rounds} rounds");
    assert!(groups_reported >= u64::from(rounds), "too few groups committed to test anything: {groups_reported}");
}
