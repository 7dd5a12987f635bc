//! The child of the crash-safety test (`tests/tests/crash.rs`): logs in and
//! renews in a loop against real files, and reports each token on stdout,
//! one line at a time, the moment the engine has released the reply that
//! carries it (the bytes a server would write now), before any effect
//! still pending is carried out:
//!
//! ```text
//! LOGIN <mac> <passcode> <token>    the login reply exists
//! RENEWING <mac> <token>            a renewal of <token> is about to start
//! RENEWED <mac> <new token>         the renewal reply exists
//! ```
//!
//! Effects are completed one at a time, and the reply is looked for after
//! each: so a reply released before the write it depends on would be
//! reported before that write is made, and a kill in between would show.
//!
//! Usage: `crash_child DATA_DIR ROUND`. It runs until it is killed. The
//! switches of `tokenizer_auth_tests::crash` (environment variables) make
//! it freeze after its first login report, or plant an ordering bug.
//!
//! `crash_child DATA_DIR ROUND groups` exercises group commit instead: it
//! commits groups of rotations with `SqliteStore::write_group`, as a
//! server's writer does, and reports `GROUP <g>` once group `g` is
//! committed. Group `g` rotates the 16 sessions of group `g - 1` to 16 new
//! ones (each a batch with its expectation) and holds one batch whose
//! expectation fails and which must leave nothing behind.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;

use chrono::TimeDelta;
use tokenizer_auth_effects::mail::{MailConfig, Mailer};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::runner::EffectRunner;
use tokenizer_auth_effects::store::{Commit, SqliteStore};
use tokenizer_auth_engine::testkit::World;
use tokenizer_auth_engine::{
    Config, ConnId, CredsBatch, CredsExpectation, CredsOp, Effect, EffectResult, LOGIN_PREFIX, Limits, Listener,
    PasscodesOp, SessionRecord, Window, WriteBatch,
};
use tokenizer_auth_tests::crash::{FREEZE_AFTER_LOGIN, GROUP, PLANT, Plant, group_master};

/// The account every round logs in to.
pub const EMAIL: &str = "crash@example.com";
/// Its password.
pub const PASSWORD: &str = "crash-test-password";

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DATA_DIR"));
    let round: u32 = args.next().expect("ROUND").parse().expect("ROUND is a number");
    if args.next().as_deref() == Some("groups") {
        groups(&dir, round);
    }

    // Cheap argon2 parameters: this test is about crashes, not hashing cost.
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).expect("hasher");
    let store = SqliteStore::open(&dir).expect("store");
    let mailer = Mailer::new(&MailConfig::Outbox { dir: dir.join("outbox") }).expect("outbox");
    let runner = Rc::new(RefCell::new(EffectRunner { store, hasher: hasher.clone(), mailer }));
    let plant = std::env::var(PLANT).ok().map(|p| Plant::parse(&p).expect("a known plant"));
    let freeze = std::env::var_os(FREEZE_AFTER_LOGIN).is_some();
    // Writes a plant acknowledged before making them: effects the engine
    // no longer waits for, still to be made.
    let deferred: Rc<RefCell<VecDeque<Deferred>>> = Rc::default();
    // The passcode is taken from the mail effect itself; mail is not what
    // this test is about.
    let mailed: Rc<RefCell<Option<String>>> = Rc::default();
    let off = Window::new(0, TimeDelta::minutes(15));
    let limits = Limits {
        passcode_requests_per_email: off,
        passcode_requests_per_ip: off,
        failures_per_email: off,
        failures_per_ip: off,
        ..Limits::default()
    };
    let config = Config { dummy_password: hasher.dummy().clone(), limits, ..Config::default() };
    let mut world = World::new(config, u64::from(round));
    let (inbox, run, later) = (mailed.clone(), runner.clone(), deferred.clone());
    world.set_runner(move |effect| match effect {
        Effect::SendMail(mail) => {
            *inbox.borrow_mut() = tokenizer_auth_engine::mail::find_passcode(mail.body.expose()).map(str::to_owned);
            EffectResult::Sent
        }
        Effect::Write(batch) if let Some(behind) = plant.and_then(|p| defers(p, batch)) => {
            later.borrow_mut().push_back(Deferred { batch: batch.clone(), behind });
            EffectResult::Committed
        }
        other => run.borrow_mut().run(other),
    });
    let mut child = Child { world, runner, deferred };

    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let mut out = std::io::stdout().lock();
    for i in 0u32.. {
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            round >> 8 & 0xff,
            round & 0xff,
            i >> 16 & 0xff,
            i >> 8 & 0xff,
            i & 0xff
        );
        let c = child.world.connect(Listener::Native, ip);
        let reply = child.released_reply(c, &format!("require_passcode|{mac}|{PASSWORD}||{EMAIL}"));
        assert_eq!(reply, "Passcode is sent");
        child.settle();
        let passcode = mailed.borrow_mut().take().expect("a passcode mail");
        let reply = child.released_reply(c, &format!("{mac}|{EMAIL}||{PASSWORD}|{passcode}"));
        let token = reply.strip_prefix(LOGIN_PREFIX).unwrap_or_else(|| panic!("login refused: {reply}")).to_owned();
        writeln!(out, "LOGIN {mac} {passcode} {token}").and_then(|()| out.flush()).expect("report");
        if freeze {
            // Killed here, with the reply out and nothing after it done.
            loop {
                std::thread::park();
            }
        }
        child.settle();

        child.world.advance(TimeDelta::hours(2));
        writeln!(out, "RENEWING {mac} {token}").and_then(|()| out.flush()).expect("report");
        let c = child.world.connect(Listener::Native, ip);
        let reply = child.released_reply(c, &format!("{token}|{mac}|get"));
        let renewed = reply.strip_prefix("renew|").unwrap_or_else(|| panic!("no renewal: {reply}")).to_owned();
        writeln!(out, "RENEWED {mac} {renewed}").and_then(|()| out.flush()).expect("report");
        child.settle();
        child.world.hang_up(c);
    }
}

/// The engine's world, with the real runner and what a plant deferred.
struct Child {
    world: World,
    runner: Rc<RefCell<EffectRunner>>,
    deferred: Rc<RefCell<VecDeque<Deferred>>>,
}

/// A write a plant acknowledged, still to be made once `behind` more of the
/// engine's effects are done.
struct Deferred {
    batch: WriteBatch,
    behind: usize,
}

impl Child {
    /// Completes one effect that is owed: one the engine waits for, or a
    /// deferred write once its turn has come (or nothing else is left).
    /// Returns whether there was one.
    fn step(&mut self) -> bool {
        let due = self.deferred.borrow().front().map(|d| d.behind == 0);
        if due != Some(true) && self.world.step() {
            // The effect just done counts for a write deferred before it,
            // not for one it deferred itself.
            if due.is_some()
                && let Some(next) = self.deferred.borrow_mut().front_mut()
            {
                next.behind = next.behind.saturating_sub(1);
            }
            return true;
        }
        let Some(next) = self.deferred.borrow_mut().pop_front() else { return false };
        self.runner.borrow_mut().store.write(&next.batch).expect("a deferred write");
        true
    }

    /// Completes effects until none is owed.
    fn settle(&mut self) {
        while self.step() {}
    }

    /// Sends one request line and completes effects one at a time until its
    /// reply line has been released, and returns it then (without its line
    /// feed), leaving whatever is still owed undone.
    fn released_reply(&mut self, conn: ConnId, line: &str) -> String {
        self.world.send(conn, format!("{line}\n").as_bytes());
        let mut bytes = Vec::new();
        loop {
            bytes.extend(self.world.take_received(conn));
            if let Some(end) = bytes.iter().position(|b| *b == b'\n') {
                return String::from_utf8_lossy(&bytes[..end]).into_owned();
            }
            assert!(self.step(), "no reply, and no effect left to complete");
        }
    }
}

/// Whether `plant` acknowledges `batch` before making it, and if so, how
/// many of the engine's effects go before it: none (the write is simply
/// still owed when the engine acts on its commit), or, for a passcode's
/// consumption, the session's write that follows it.
fn defers(plant: Plant, batch: &WriteBatch) -> Option<usize> {
    match (plant, batch) {
        (Plant::ReplyBeforeCommit, WriteBatch::Creds(_)) => Some(0),
        (Plant::SessionBeforeConsume, WriteBatch::Passcodes(b))
            if b.expect.is_some() && b.ops.iter().any(|op| matches!(op, PasscodesOp::Delete(_))) =>
        {
            Some(1)
        }
        _ => None,
    }
}

fn groups(dir: &std::path::Path, round: u32) -> ! {
    let mut store = SqliteStore::open(dir).expect("store");
    let mac = tokenizer_auth_engine::Mac::parse("02:00:00:00:00:01").expect("mac");
    let expiry = |g: u32| chrono::DateTime::UNIX_EPOCH + TimeDelta::seconds(i64::from(g) + 1);
    let session = |g: u32, j: u32| SessionRecord {
        master: group_master(round, g, j),
        email: EMAIL.to_owned(),
        mac,
        started_at: chrono::DateTime::UNIX_EPOCH,
        expires_at: expiry(g),
    };
    let mut out = std::io::stdout().lock();
    for g in 0u32.. {
        let mut batches: Vec<WriteBatch> = (0..GROUP)
            .map(|j| {
                let (expect, mut ops) = match g {
                    0 => (None, Vec::new()),
                    _ => (
                        Some(CredsExpectation::Session {
                            master: group_master(round, g - 1, j),
                            expires_at: expiry(g - 1),
                        }),
                        vec![CredsOp::DeleteSession(group_master(round, g - 1, j))],
                    ),
                };
                ops.push(CredsOp::PutSession(session(g, j)));
                WriteBatch::Creds(CredsBatch { expect, ops })
            })
            .collect();
        // Expects a session that never exists: it conflicts, and its put
        // must never be seen.
        batches.insert(
            (g % GROUP) as usize,
            WriteBatch::Creds(CredsBatch {
                expect: Some(CredsExpectation::Session {
                    master: group_master(round, g, GROUP + 1),
                    expires_at: expiry(g),
                }),
                ops: vec![CredsOp::PutSession(session(g, GROUP + 2))],
            }),
        );
        let refs: Vec<&WriteBatch> = batches.iter().collect();
        let results = store.write_group(&refs);
        for (k, result) in results.into_iter().enumerate() {
            let want = if k == (g % GROUP) as usize { Commit::Conflict } else { Commit::Applied };
            assert_eq!(result.expect("group commit"), want, "group {g}, batch {k}");
        }
        writeln!(out, "GROUP {g}").and_then(|()| out.flush()).expect("report");
    }
    unreachable!("u32 groups")
}
