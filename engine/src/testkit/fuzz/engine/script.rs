//! The `engine` target's scripts: what `arbitrary` decodes from the
//! fuzzer's bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use chrono::TimeDelta;

use crate::config::Config;
use crate::io::Listener;
use crate::limits::{Limits, Window};
use crate::passcode::PasscodePolicy;
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::session::SessionPolicy;
use crate::testkit::test_hash;

/// Connection ids the scripts use (`ConnId(0)` to `ConnId(7)`).
pub(super) const SLOTS: usize = 8;
/// Actions decoded from one input at most.
pub(super) const MAX_ACTIONS: usize = 4096;
/// Effects completed by one `Settle` at most.
pub(super) const MAX_SETTLE: usize = 4096;
/// The most a runtime reads from a socket at once (the driving contract).
pub(super) const READ_SIZE: usize = 64 * 1024;
/// The longest reply encoding: a login reply pickled for a legacy client
/// (a native one is 119 bytes). What a connection owes may pass
/// `max_backlog` by less than this.
pub(super) const LONGEST_REPLY: usize = 134;

/// A stored password as the scripts' store holds it.
#[derive(Clone, Copy)]
pub(in crate::testkit::fuzz) enum Stored {
    Hashed(&'static str),
    Plain(&'static str),
    Absent,
}

impl Stored {
    pub(in crate::testkit::fuzz) fn hash(self) -> PasswordHash {
        match self {
            Stored::Hashed(p) => test_hash(p),
            Stored::Plain(p) => PasswordHash::Plain(Secret::new(p)),
            Stored::Absent => PasswordHash::Phc(String::new()),
        }
    }

    pub(in crate::testkit::fuzz) fn password(self) -> &'static str {
        match self {
            Stored::Hashed(p) | Stored::Plain(p) => p,
            Stored::Absent => "no account",
        }
    }
}

/// The accounts: a hashed password, a plaintext one left by the old server
/// (so logins upgrade it), and an email with no account.
pub(in crate::testkit::fuzz) const USERS: [(&str, &str, Stored); 3] = [
    ("ada@example.com", "+15550100", Stored::Hashed("correct horse")),
    ("bob@example.com", "", Stored::Plain("hunter2")),
    ("eve@example.com", "+15550199", Stored::Absent),
];
/// Spellings of two devices.
pub(super) const MACS: [&str; 4] = ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "02:00:00:00:00:01", "020000000001"];
/// What a token request asks for, and its data.
pub(super) const TOKEN_TAILS: [&str; 4] = ["get", "get|some|data", "", "fetch||"];

/// Peers: two IPv4 clients, the first again as an IPv4-mapped IPv6
/// address (the same device), and an IPv6 client. Documentation ranges; no
/// packet is ever sent.
pub(super) fn peer(pick: u8) -> IpAddr {
    match pick % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        2 => IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    }
}

/// Configuration knobs an input sets; the rest of the configuration is
/// short on purpose (10 s tokens, 25 s sessions, 20 s passcodes).
#[derive(Arbitrary, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Knobs {
    pub(super) max_connections: u8,
    pub(super) max_pipeline: u8,
    pub(super) max_password_checks: u8,
    pub(super) max_line: u8,
    pub(super) max_backlog: u8,
    pub(super) unlimited_age: bool,
}

/// The token lifetime of every script.
pub(super) const TOKEN_TTL: TimeDelta = TimeDelta::seconds(10);
/// The session age of every script, unless unlimited.
pub(super) const MAX_AGE: TimeDelta = TimeDelta::seconds(25);
/// The renewal grace of every script: scripts step the clock by up to
/// seconds, so tokens come back both within it and after it.
pub(super) const RENEW_GRACE: TimeDelta = TimeDelta::seconds(3);

impl Knobs {
    pub(in crate::testkit::fuzz) fn config(self) -> Config {
        let minute = TimeDelta::seconds(60);
        Config {
            passcode: PasscodePolicy { lifetime: TimeDelta::seconds(20), max_guesses: 3 },
            session: SessionPolicy {
                token_ttl: TOKEN_TTL,
                max_age: if self.unlimited_age { TimeDelta::zero() } else { MAX_AGE },
                renew_grace: RENEW_GRACE,
            },
            limits: Limits {
                passcode_requests_per_email: Window::new(6, minute),
                passcode_requests_per_ip: Window::new(12, minute),
                failures_per_email: Window::new(8, minute),
                failures_per_ip: Window::new(16, minute),
                max_consecutive_failures: 5,
                lockout: TimeDelta::seconds(30),
                ipv6_prefix: 64,
            },
            // Real requests are 60 to 110 bytes: some limits cut them.
            max_line: 64 + usize::from(self.max_line),
            idle_timeout: TimeDelta::seconds(30),
            partial_line_timeout: TimeDelta::seconds(5),
            legacy_wait: TimeDelta::milliseconds(200),
            max_connections: 1 + usize::from(self.max_connections) % SLOTS,
            max_pipeline: 1 + usize::from(self.max_pipeline) % 8,
            // From one byte (every reply waits for the last to be taken)
            // to a few replies.
            max_backlog: 1 + usize::from(self.max_backlog) * 4,
            max_password_checks: usize::from(self.max_password_checks) % 5,
            ..Config::default()
        }
    }
}

/// Bytes with a one-byte length in front (at most 255).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct Chunk(pub(super) Vec<u8>);

impl<'a> Arbitrary<'a> for Chunk {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = usize::from(u8::arbitrary(u)?).min(u.len());
        Ok(Chunk(u.bytes(len)?.to_vec()))
    }
}

/// One step of a script.
#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
pub(super) enum Action {
    /// A client connects (ignored while the slot's connection is open).
    Open { slot: u8, peer: u8, listener: ListenerPick },
    /// A client writes bytes; `force` feeds them even when the engine does
    /// not want input (a runtime that breaks the contract).
    Send { slot: u8, bytes: Chunk, force: bool },
    /// A client writes a real request.
    Request { slot: u8, request: RequestPick, ending: Ending },
    /// A client writes a repeated pattern: 1 KiB, or for `kib` from 248 to
    /// 255, 2 KiB to 256 KiB (always 1 KiB from a script's fifth flood on:
    /// big floods are slow, so they are rare).
    Flood { slot: u8, pattern: Chunk, kib: u8, force: bool },
    /// A client hangs up.
    HangUp { slot: u8 },
    /// The clock moves forward by milliseconds.
    Advance { ms: u16 },
    /// The clock moves forward by minutes.
    AdvanceLong { minutes: u8 },
    /// The clock moves backward.
    Rewind { ms: u16 },
    /// A timeout, due or not.
    Timeout,
    /// The clock jumps to the engine's deadline (if any) and it fires.
    ToDeadline,
    /// An effect is carried out but its result not yet reported.
    Execute { pick: u8 },
    /// An effect's result is reported.
    Complete { pick: u8, outcome: Outcome },
    /// Every effect is carried out and reported honestly, oldest first.
    Settle,
    /// After a shutdown abandoned effects: a late result for one of them
    /// (`id` picks which). Otherwise a result for an effect id the engine
    /// never asked for: a breach of the contract, fed at the end of the
    /// script (the first breach only; the engine stops for good on it).
    Stray { id: u64, outcome: Outcome },
    /// A second result for an effect already reported: a breach of the
    /// contract, fed at the end of the script (the first breach only).
    Replay { pick: u8, outcome: Outcome },
    /// A client's socket fails.
    Fail { slot: u8 },
    /// A client stops reading: its socket takes nothing more.
    Deafen { slot: u8 },
    /// A client reads up to this many bytes of what was sent to it.
    Read { slot: u8, bytes: u16 },
    /// The server is asked to stop.
    Shutdown,
}

#[derive(Arbitrary, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ListenerPick {
    Native,
    LegacyPasscode,
    LegacyLogin,
}

impl ListenerPick {
    pub(in crate::testkit::fuzz) fn listener(self) -> Listener {
        match self {
            ListenerPick::Native => Listener::Native,
            ListenerPick::LegacyPasscode => Listener::LegacyPasscode,
            ListenerPick::LegacyLogin => Listener::LegacyLogin,
        }
    }
}

/// A real request, built from the scripts' accounts, devices, and what
/// came back in mails and replies.
#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
pub(super) enum RequestPick {
    Passcode { mac: u8, user: u8, password: u8, phone: u8 },
    Login { mac: u8, user: u8, password: u8, phone: u8, passcode: PasscodePick },
    Token { token: TokenPick, mac: u8, tail: u8 },
}

#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
pub(super) enum PasscodePick {
    /// A passcode from the mails, newest first.
    Mailed(u8),
    /// A mailed passcode with one character changed or lowercased.
    Mangled(u8),
    /// A guess.
    Guess(u32),
}

#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
pub(super) enum TokenPick {
    /// A token from the replies, newest first.
    Issued(u8),
    /// The same, in uppercase hex.
    Upper(u8),
    /// The same, one digit changed.
    Mangled(u8),
    /// Any token.
    Random([u8; 32]),
}

#[derive(Arbitrary, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ending {
    Lf,
    CrLf,
    Bare,
    /// Sent in two reads, cut at this offset.
    Split(u8),
}

/// The result reported for an effect. `Honest` carries it out against the
/// models; the others are reported as they are, except that a result of
/// the effect's own kind is carried out honestly (the models never lie
/// about a commit, a password or a hash), and one of another kind, which
/// would break the driving contract, is reported `Failed`. What is left
/// of the lies are failures, conflicts and empty reads.
#[derive(Arbitrary, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outcome {
    Honest,
    Failed,
    Conflict,
    EmptyRead,
    Committed,
    Verified(bool),
    Hashed,
    Sent,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(super) struct Script {
    pub(super) knobs: Knobs,
    pub(super) actions: Vec<Action>,
}

pub(super) fn decode(data: &[u8]) -> Option<Script> {
    let mut u = Unstructured::new(data);
    let knobs = Knobs::arbitrary(&mut u).ok()?;
    let mut actions = Vec::new();
    while !u.is_empty() && actions.len() < MAX_ACTIONS {
        match Action::arbitrary(&mut u) {
            Ok(action) => actions.push(action),
            Err(_) => break,
        }
    }
    Some(Script { knobs, actions })
}
