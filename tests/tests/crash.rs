//! Crash safety: a child process logs in and renews in a loop against real
//! files and reports every token whose reply it would send; the parent
//! kills it with SIGKILL at random moments. After every kill both files pass
//! `PRAGMA integrity_check`, every reported token is still valid (or was
//! rotated by a renewal that had started), and no reported passcode could
//! log in again.
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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::store::SqliteStore;
use tokenizer_auth_engine::{BaseToken, Mac, MasterToken, Secret, ServerKey, StoredPasscode};
use tokenizer_auth_tests::crash::{GROUP, group_master};

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

/// Runs the child on `dir` for `round` (with `extra` arguments), kills it
/// with SIGKILL at the schedule's next moment, and returns the lines it
/// reported in full: a report cut by the kill was never made.
fn run_child(dir: &Path, round: u32, extra: &[&str], schedule: &mut Schedule) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
        .arg(dir)
        .arg(round.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
            lines.push(std::mem::take(&mut line));
        }
        lines
    });
    std::thread::sleep(Duration::from_micros(2_000 + schedule.next() % 60_000));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Checks the files after a kill: both pass `integrity_check`, and every
/// chain and passcode in `chains` and `passcodes` is as reported.
fn check(dir: &Path, chains: &BTreeMap<String, Chain>, passcodes: &[(String, String)], round: u32) {
    for file in ["op_creds.db", "op_passcodes.db"] {
        let conn = Connection::open(dir.join(file)).unwrap();
        let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(verdict, "ok", "round {round}: {file}");
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
            Chain::Holds(token) => {
                assert!(exists(&master(token, mac)), "round {round}: the token reported for {mac} is gone");
            }
            // The renewal may have committed without its reply going out:
            // then the old token is rotated away, and its one successor
            // holds the session.
            Chain::Renewing(token) => assert!(
                exists(&master(token, mac)) || sessions_of(mac) == 1,
                "round {round}: the session of {mac} vanished during a renewal"
            ),
        }
        assert!(sessions_of(mac) <= 1, "round {round}: {mac} has two sessions");
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
        assert!(!reusable, "round {round}: the passcode that logged in {mac} could log in again");
    }
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

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap(); // cheap: the child uses the same
    SqliteStore::open(dir).unwrap().add_user(EMAIL, "", &hasher.hash(&Secret::new(PASSWORD)).unwrap()).unwrap();

    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    let mut passcodes: Vec<(String, String)> = Vec::new();
    let mut reported = 0usize;
    for round in 0..rounds {
        let reports = run_child(dir, round, &[], &mut schedule);
        let passcodes_before = passcodes.len();
        let mut round_macs = std::collections::BTreeSet::new();
        for line in reports {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["LOGIN", mac, passcode, token] => {
                    round_macs.insert(mac.to_owned());
                    passcodes.push((mac.to_owned(), passcode.to_owned()));
                    chains.insert(mac.to_owned(), Chain::Holds(token.to_owned()));
                }
                ["RENEWING", mac, token] => {
                    round_macs.insert(mac.to_owned());
                    chains.insert(mac.to_owned(), Chain::Renewing(token.to_owned()));
                }
                ["RENEWED", mac, token] => {
                    chains.insert(mac.to_owned(), Chain::Holds(token.to_owned()));
                }
                _ => panic!("round {round}: unexpected report {line:?}"),
            }
            reported += 1;
        }
        // Every round checks what it touched; every 25th round, and the
        // last, check everything reported so far (older sessions must stay
        // valid too), which keeps long soaks from going quadratic.
        if round % 25 == 24 || round + 1 == rounds {
            check(dir, &chains, &passcodes, round);
        } else {
            let touched: BTreeMap<String, Chain> = chains
                .iter()
                .filter(|(mac, _)| round_macs.contains(*mac))
                .map(|(m, c)| (m.clone(), c.clone()))
                .collect();
            check(dir, &touched, &passcodes[passcodes_before..], round);
        }
    }
    eprintln!("crash test: {reported} reports over {rounds} rounds, {} sessions", chains.len());
    assert!(passcodes.len() as u32 >= rounds / 4, "too few logins completed to test anything: {}", passcodes.len());
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
