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

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;

use chrono::TimeDelta;
use tokenizer_auth_engine::testkit::World;
use tokenizer_auth_engine::{Config, Effect, EffectResult, LOGIN_PREFIX, Limits, Listener, Window};
use tokenizer_auth_runtime_std::executor::Executor;
use tokenizer_auth_runtime_std::mail::{MailConfig, Mailer};
use tokenizer_auth_runtime_std::password::{Cost, Hasher};
use tokenizer_auth_runtime_std::store::SqliteStore;

/// The account every round logs in to.
pub const EMAIL: &str = "crash@example.com";
/// Its password.
pub const PASSWORD: &str = "crash-test-password";

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DATA_DIR"));
    let round: u32 = args.next().expect("ROUND").parse().expect("ROUND is a number");

    // Cheap argon2 parameters: this test is about crashes, not hashing cost.
    let hasher = Hasher::new(Cost::TEST_ONLY).expect("hasher");
    let store = SqliteStore::open(&dir).expect("store");
    let mailer = Mailer::new(&MailConfig::Outbox { dir: dir.join("outbox") }).expect("outbox");
    let mut executor = Executor { store, hasher: hasher.clone(), mailer };
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
