//! The child of the crash-safety test (`tests/tests/crash.rs`): logs in and
//! renews in a loop against real files, and after each reply it would send
//! reports the token on stdout, one line at a time:
//!
//! ```text
//! LOGIN <mac> <passcode> <token>    the login reply is out (session committed)
//! RENEWING <mac> <token>            a renewal of <token> is about to start
//! RENEWED <mac> <new token>         the renewal reply is out (rotation committed)
//! ```
//!
//! Usage: `crash_child DATA_DIR ROUND`. It runs until it is killed.
//!
//! `crash_child DATA_DIR ROUND groups` exercises group commit instead: it
//! commits groups of rotations with `SqliteStore::write_group`, as a
//! server's writer does, and reports `GROUP <g>` once group `g` is
//! committed. Group `g` rotates the 16 sessions of group `g - 1` to 16 new
//! ones (each a batch with its expectation) and holds one batch whose
//! expectation fails and which must leave nothing behind.

use std::cell::RefCell;
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
    Config, CredsBatch, CredsExpectation, CredsOp, Effect, EffectResult, LOGIN_PREFIX, Limits, Listener, SessionRecord,
    Window, WriteBatch,
};
use tokenizer_auth_tests::crash::{GROUP, group_master};

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
    let mut executor = EffectRunner { store, hasher: hasher.clone(), mailer };
    // The passcode is taken from the mail effect itself; mail is not what
    // this test is about.
    let mailed: Rc<RefCell<Option<String>>> = Rc::default();
    let inbox = mailed.clone();
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
    world.set_executor(move |effect| match effect {
        Effect::SendMail(mail) => {
            *inbox.borrow_mut() = tokenizer_auth_engine::mail::find_passcode(mail.body.expose()).map(str::to_owned);
            EffectResult::Sent
        }
        other => executor.run(other),
    });

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
        let c = world.connect(Listener::Native, ip);
        let reply = world.request(c, &format!("require_passcode|{mac}|{PASSWORD}||{EMAIL}"));
        assert_eq!(reply, "Passcode is sent");
        let passcode = mailed.borrow_mut().take().expect("a passcode mail");
        let reply = world.request(c, &format!("{mac}|{EMAIL}||{PASSWORD}|{passcode}"));
        let token = reply.strip_prefix(LOGIN_PREFIX).unwrap_or_else(|| panic!("login refused: {reply}")).to_owned();
        writeln!(out, "LOGIN {mac} {passcode} {token}").and_then(|()| out.flush()).expect("report");

        world.advance(TimeDelta::hours(2));
        writeln!(out, "RENEWING {mac} {token}").and_then(|()| out.flush()).expect("report");
        let c = world.connect(Listener::Native, ip);
        let reply = world.request(c, &format!("{token}|{mac}|get"));
        let renewed = reply.strip_prefix("renew|").unwrap_or_else(|| panic!("no renewal: {reply}")).to_owned();
        writeln!(out, "RENEWED {mac} {renewed}").and_then(|()| out.flush()).expect("report");
        world.hang_up(c);
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
