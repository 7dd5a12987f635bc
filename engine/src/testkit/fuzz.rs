//! The checking functions of the fuzz targets in `fuzz/`, kept here so the
//! ordinary test run replays every corpus file through exactly the code the
//! fuzzer runs (`engine/tests/fuzz_corpus.rs`). Each function takes the
//! fuzzer's bytes and panics on a broken invariant; a panic is a finding.
//!
//! - [`native_line`]: the native framing and the request parser on any
//!   bytes, and a render → parse round trip of whatever parses.
//! - [`legacy_framing`]: the legacy framing, the request in it, the pickled
//!   replies, and one legacy connection end to end.
//! - [`engine`]: the engine driven by a script decoded from the bytes with
//!   `arbitrary`: connections, bytes (noise and real requests), hang-ups,
//!   clock jumps both ways, timeouts, and effect results in any order, true
//!   or not. A model beside it checks what the engine must never do: log
//!   one passcode in twice, answer `authorized` past a token's lifetime,
//!   write anything but documented replies, answer what was never asked, or
//!   let connections, effects or buffers grow past what was fed.
//! - [`capture_reader`]: any bytes read as a capture (and as the records
//!   after a valid header): an error or a replay, never a panic; and the
//!   same bytes as a client's stream through the capture's redaction, which
//!   must keep every line's parse outcome and no password.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use chrono::{DateTime, TimeDelta, Utc};

use crate::codec::legacy;
use crate::codec::native::{Frame, next_frame};
use crate::codec::pickle;
use crate::codec::reply::{ErrorCode, LOGIN_PREFIX};
use crate::codec::request::{REQUIRE_PASSCODE, Request};
use crate::config::Config;
use crate::device::{Mac, normalize_ip};
use crate::effect::{Effect, EffectId, EffectResult};
use crate::engine::{ConnId, Engine, Input, Listener, Output};
use crate::limits::{Limits, Window};
use crate::mail::find_passcode;
use crate::passcode::{ALPHABET, LENGTH, PasscodePolicy};
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::session::SessionPolicy;
use crate::store::{
    CredsBatch, CredsExpectation, CredsOp, PasscodesBatch, PasscodesOp, SessionRecord, Snapshot, UserRecord, WriteBatch,
};
use crate::testkit::{MemoryStore, TestRng, World, epoch, test_hash, test_verify};
use crate::token::{BaseToken, MasterToken};

// ---------------------------------------------------------------------------
// native_line
// ---------------------------------------------------------------------------

/// The `native_line` target: the first byte picks a line limit, the rest is
/// a receive buffer. Frames it (with that limit and the default one)
/// against a model of the framing rules, parses every line and every
/// `\n`-separated piece, and renders each parsed request back: the
/// rendering must parse to the same request.
pub fn native_line(data: &[u8]) {
    let Some((&limit, buf)) = data.split_first() else { return };
    for max_line in [usize::from(limit), Config::default().max_line] {
        frame_all(buf, max_line);
    }
    check_request(buf);
    for piece in buf.split(|&b| b == b'\n') {
        check_request(piece.strip_suffix(b"\r").unwrap_or(piece));
    }
}

/// Frames a whole buffer, checking each frame against the rules.
fn frame_all(buf: &[u8], max_line: usize) {
    let mut rest = buf;
    loop {
        let newline = rest.iter().position(|&b| b == b'\n');
        match next_frame(rest, max_line) {
            Frame::Line { line, consumed } => {
                let end = newline.expect("a line without a line feed");
                assert_eq!(consumed, end + 1, "a line must take exactly up to its line feed");
                let raw = &rest[..end];
                assert_eq!(line, raw.strip_suffix(b"\r").unwrap_or(raw), "a line is its bytes less CR LF");
                assert!(line.len() <= max_line, "a line of {} bytes passed a limit of {max_line}", line.len());
                check_request(line);
                rest = &rest[consumed..];
            }
            Frame::Incomplete => {
                assert!(newline.is_none(), "Incomplete with a line feed in the buffer");
                assert!(rest.len() <= max_line + 1, "Incomplete holds {} bytes past {max_line} + 1", rest.len());
                assert!(rest.len() <= max_line || rest[max_line] == b'\r', "a doomed line was left Incomplete");
                return;
            }
            Frame::TooLong => {
                match newline {
                    Some(end) => {
                        let raw = &rest[..end];
                        assert!(raw.strip_suffix(b"\r").unwrap_or(raw).len() > max_line, "TooLong for a short line");
                    }
                    None => assert!(
                        rest.len() > max_line + 1 || (rest.len() == max_line + 1 && rest[max_line] != b'\r'),
                        "TooLong for a partial line that may still fit"
                    ),
                }
                return;
            }
        }
    }
}

/// Parses one line; a request that parses renders to a line that frames
/// as one line and parses back to the same request.
fn check_request(line: &[u8]) {
    let Ok(request) = Request::parse(line) else { return };
    let text = request.render();
    let again = Request::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("{request:?} rendered as {text:?}, which does not parse: {e:?}"));
    assert_eq!(again, request, "render → parse changed the request (rendered as {text:?})");
    assert_eq!(again.render(), text, "rendering is not stable");
    let mut framed = text.clone().into_bytes();
    framed.push(b'\n');
    assert_eq!(
        next_frame(&framed, framed.len()),
        Frame::Line { line: text.as_bytes(), consumed: framed.len() },
        "a rendered request is not one line"
    );
}

// ---------------------------------------------------------------------------
// legacy_framing
// ---------------------------------------------------------------------------

/// The `legacy_framing` target: the first byte picks the listener and how
/// the rest is cut into reads. Checks `legacy::is_whole` and
/// `legacy::request` against their definitions, the parsing of the request
/// (with a round trip), `pickle::dumps_str` against an independent
/// unpickler, and then serves the bytes on a legacy connection of a
/// [`World`]: at most one pickled reply the old clients know, then a close.
pub fn legacy_framing(data: &[u8]) {
    let Some((&mode, buf)) = data.split_first() else { return };

    let separators = buf.iter().filter(|&&b| b == b'|').count();
    assert_eq!(legacy::is_whole(buf), buf.len() >= legacy::MAX_REQUEST || separators >= 4);
    let request = legacy::request(buf);
    assert!(request.len() <= legacy::MAX_REQUEST, "a legacy request of {} bytes", request.len());
    assert!(buf.starts_with(request), "a legacy request is not a prefix of what was received");
    let head = &buf[..buf.len().min(legacy::MAX_REQUEST)];
    let cut = &head[request.len()..];
    assert!(matches!(cut, b"" | b"\n" | b"\r" | b"\r\n"), "legacy::request dropped {cut:?}");
    check_request(request);

    // What the engine keeps of the bytes, read as the runtime reads them:
    // in reads of a size the mode byte picks (one byte at a time in one
    // case out of eight; each read is a whole engine call, so not more).
    let chunk = [1, 2, 3, 5, 16, 64, 333, 1024][usize::from(mode >> 1) % 8];
    let mut kept: Vec<u8> = Vec::new();
    let mut bars = 0;
    for piece in buf.chunks(chunk) {
        let room = legacy::MAX_REQUEST - kept.len();
        let taken = &piece[..piece.len().min(room)];
        kept.extend_from_slice(taken);
        bars += taken.iter().filter(|&&b| b == b'|').count();
        if kept.len() >= legacy::MAX_REQUEST || bars >= 4 {
            assert!(legacy::is_whole(&kept));
            break;
        }
    }
    assert!(buf.starts_with(&kept) && kept.len() <= legacy::MAX_REQUEST);

    let text = String::from_utf8_lossy(buf);
    let mut pickled = Vec::new();
    pickle::dumps_str(&text, &mut pickled);
    let (back, used) = unpickle(&pickled).expect("dumps_str wrote something that is not one pickled str");
    assert_eq!(used, pickled.len(), "bytes after the pickle's STOP");
    assert!(text.starts_with(&back) && (back.len() == text.len() || back.len() > pickle::MAX_STR - 4));

    // One connection, end to end.
    let listener = if mode & 1 == 0 { Listener::LegacyPasscode } else { Listener::LegacyLogin };
    let mut w = World::new(Config::default(), u64::from(mode));
    for (email, phone, password) in USERS.iter().take(2) {
        w.store.put_user(UserRecord { email: (*email).into(), phone: (*phone).into(), password: password.hash() });
    }
    let conn = w.connect(listener, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    for piece in buf.chunks(chunk) {
        w.send(conn, piece);
    }
    w.settle();
    w.advance(Config::default().partial_line_timeout + TimeDelta::seconds(1));
    w.settle();
    w.advance(Config::default().close_linger);
    assert!(w.is_closed(conn), "a legacy connection was not closed");
    assert_eq!(w.engine.connections(), 0);
    assert_eq!(w.engine.effects_in_flight(), 0);
    let replied = w.take_received(conn);
    if replied.is_empty() {
        // Only a connection that never sent anything goes without a reply.
        assert!(buf.is_empty(), "{} bytes sent, no reply", buf.len());
        return;
    }
    let (reply, used) = unpickle(&replied).expect("a legacy reply that is not one pickled str");
    assert_eq!(used, replied.len(), "more than one legacy reply");
    let fits = match (Request::parse(legacy::request(&kept)), listener) {
        (Ok(Request::Passcode(_)), Listener::LegacyPasscode) => reply == "Passcode is sent" || reply == "False",
        (Ok(Request::Login(_)), Listener::LegacyLogin) => reply == "False" || is_login(&reply),
        _ => reply == "False",
    };
    assert!(fits, "legacy reply {reply:?} on {listener:?} to {:?}", String::from_utf8_lossy(&kept));
}

/// Decodes one `pickle.dumps(str)` (protocol 4, one frame) from the front
/// of `bytes`, written independently of `codec::pickle`; returns the string
/// and the bytes it took. Tests that read legacy replies use it too.
pub fn unpickle(bytes: &[u8]) -> Option<(String, usize)> {
    if bytes.get(..3)? != [0x80, 0x04, 0x95] {
        return None;
    }
    let frame = usize::try_from(u64::from_le_bytes(bytes.get(3..11)?.try_into().ok()?)).ok()?;
    let body = bytes.get(11..11usize.checked_add(frame)?)?;
    let (len, header) = match body.first()? {
        0x8c => (usize::from(*body.get(1)?), 2),
        0x58 => (usize::try_from(u32::from_le_bytes(body.get(1..5)?.try_into().ok()?)).ok()?, 5),
        _ => return None,
    };
    if (header == 5) != (len >= 256) {
        return None;
    }
    let text = body.get(header..header + len)?;
    if body.get(header + len..)? != [0x94, 0x2e] {
        return None;
    }
    Some((String::from_utf8(text.to_vec()).ok()?, 11 + frame))
}

// ---------------------------------------------------------------------------
// engine: the script
// ---------------------------------------------------------------------------

/// Connection ids the scripts use (`ConnId(0)` to `ConnId(7)`).
const SLOTS: usize = 8;
/// Actions decoded from one input at most.
const MAX_ACTIONS: usize = 4096;
/// Effects completed by one `Settle` at most.
const MAX_SETTLE: usize = 4096;
/// The most a runtime reads from a socket at once (the driving contract).
const READ_SIZE: usize = 64 * 1024;
/// The longest reply encoding: a login reply pickled for a legacy client
/// (a native one is 119 bytes). What a connection owes may pass
/// `max_backlog` by less than this.
const LONGEST_REPLY: usize = 134;

/// A stored password as the scripts' store holds it.
#[derive(Clone, Copy)]
enum Stored {
    Hashed(&'static str),
    Plain(&'static str),
    Absent,
}

impl Stored {
    fn hash(self) -> PasswordHash {
        match self {
            Stored::Hashed(p) => test_hash(p),
            Stored::Plain(p) => PasswordHash::Plain(Secret::new(p)),
            Stored::Absent => PasswordHash::Phc(String::new()),
        }
    }

    fn password(self) -> &'static str {
        match self {
            Stored::Hashed(p) | Stored::Plain(p) => p,
            Stored::Absent => "no account",
        }
    }
}

/// The accounts: a hashed password, a plaintext one left by the old server
/// (so logins upgrade it), and an email with no account.
const USERS: [(&str, &str, Stored); 3] = [
    ("ada@example.com", "+15550100", Stored::Hashed("correct horse")),
    ("bob@example.com", "", Stored::Plain("hunter2")),
    ("eve@example.com", "+15550199", Stored::Absent),
];
/// Spellings of two devices.
const MACS: [&str; 4] = ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "02:00:00:00:00:01", "020000000001"];
/// What a token request asks for, and its data.
const TOKEN_TAILS: [&str; 4] = ["get", "get|some|data", "", "fetch||"];

/// Peers: two IPv4 clients, the first again as an IPv4-mapped IPv6
/// address (the same device), and an IPv6 client. Documentation ranges; no
/// packet is ever sent.
fn peer(pick: u8) -> IpAddr {
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
struct Knobs {
    max_connections: u8,
    max_pipeline: u8,
    max_password_checks: u8,
    max_line: u8,
    max_backlog: u8,
    unlimited_age: bool,
}

/// The token lifetime of every script.
const TOKEN_TTL: TimeDelta = TimeDelta::seconds(10);
/// The session age of every script, unless unlimited.
const MAX_AGE: TimeDelta = TimeDelta::seconds(25);

impl Knobs {
    fn config(self) -> Config {
        let minute = TimeDelta::seconds(60);
        Config {
            passcode: PasscodePolicy { lifetime: TimeDelta::seconds(20), max_guesses: 3 },
            session: SessionPolicy {
                token_ttl: TOKEN_TTL,
                max_age: if self.unlimited_age { TimeDelta::zero() } else { MAX_AGE },
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
struct Chunk(Vec<u8>);

impl<'a> Arbitrary<'a> for Chunk {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = usize::from(u8::arbitrary(u)?).min(u.len());
        Ok(Chunk(u.bytes(len)?.to_vec()))
    }
}

/// One step of a script.
#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
enum Action {
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
    /// A result for an effect id the engine never asked for.
    Stray { id: u64, outcome: Outcome },
    /// A second result for an effect already reported.
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
enum ListenerPick {
    Native,
    LegacyPasscode,
    LegacyLogin,
}

impl ListenerPick {
    fn listener(self) -> Listener {
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
enum RequestPick {
    Passcode { mac: u8, user: u8, password: u8, phone: u8 },
    Login { mac: u8, user: u8, password: u8, phone: u8, passcode: PasscodePick },
    Token { token: TokenPick, mac: u8, tail: u8 },
}

#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
enum PasscodePick {
    /// A passcode from the mails, newest first.
    Mailed(u8),
    /// A mailed passcode with one character changed or lowercased.
    Mangled(u8),
    /// A guess.
    Guess(u32),
}

#[derive(Arbitrary, Clone, PartialEq, Eq, Debug)]
enum TokenPick {
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
enum Ending {
    Lf,
    CrLf,
    Bare,
    /// Sent in two reads, cut at this offset.
    Split(u8),
}

/// The result reported for an effect. `Honest` carries it out against the
/// models; the others are reported as they are, except that a result of
/// the effect's own kind is carried out honestly (the models never lie
/// about a commit, a password or a hash).
#[derive(Arbitrary, Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
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
struct Script {
    knobs: Knobs,
    actions: Vec<Action>,
}

fn decode(data: &[u8]) -> Option<Script> {
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

// ---------------------------------------------------------------------------
// engine: the run and its model
// ---------------------------------------------------------------------------

/// What one run of the `engine` target did (for tests that want to know a
/// corpus file reaches deep states).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Report {
    /// Actions decoded and run.
    pub actions: usize,
    /// Effects the engine asked for.
    pub effects: usize,
    /// Reply lines (native) and pickles (legacy) checked.
    pub replies: usize,
    /// `Passcode is sent` replies.
    pub passcodes_sent: usize,
    /// Login replies (with a token).
    pub logins: usize,
    /// `authorized` replies.
    pub authorized: usize,
    /// `renew|<token>` replies.
    pub renewals: usize,
    /// Connections the engine closed.
    pub closes: usize,
}

/// The `engine` target: decodes a script from `data` with `arbitrary` and
/// runs it against an [`Engine`], checking the invariants after every
/// input; then settles everything and lets every deadline pass, after which
/// nothing may be left. Panics on a violation.
pub fn engine(data: &[u8]) -> Report {
    let Some(script) = decode(data) else { return Report::default() };
    let mut run = Run::new(script.knobs.config());
    for action in &script.actions {
        run.act(action);
        run.report.actions += 1;
    }
    run.finish();
    run.report
}

/// The script an `engine` input decodes to, one action a line, for reading
/// a finding (`None` if it decodes to nothing).
pub fn engine_script(data: &[u8]) -> Option<String> {
    let script = decode(data)?;
    let mut text = format!("{:?}\n", script.knobs);
    for action in &script.actions {
        text.push_str(&format!("{action:?}\n"));
    }
    Some(text)
}

/// What a request line asked, as far as the checks care.
#[derive(Clone, Debug)]
enum Expect {
    Malformed,
    /// A request this listener does not serve.
    NotServed,
    Token {
        master: MasterToken,
        mac: Mac,
    },
    Passcode {
        email: String,
    },
    Login {
        email: String,
        code: String,
        mac: Mac,
    },
}

fn expect_of(line: &[u8], peer: IpAddr, listener: Listener) -> Expect {
    match (Request::parse(line), listener) {
        (Err(_), _) => Expect::Malformed,
        (Ok(Request::Token(r)), Listener::Native) => {
            Expect::Token { master: MasterToken::derive(&r.token, r.mac, peer), mac: r.mac }
        }
        (Ok(Request::Passcode(r)), Listener::Native | Listener::LegacyPasscode) => {
            Expect::Passcode { email: r.email.to_owned() }
        }
        (Ok(Request::Login(r)), Listener::Native | Listener::LegacyLogin) => {
            Expect::Login { email: r.email.to_owned(), code: r.passcode.to_owned(), mac: r.mac }
        }
        (Ok(_), _) => Expect::NotServed,
    }
}

/// One connection slot as the runtime and the model see it.
#[derive(Default)]
struct Slot {
    opened: bool,
    /// The engine asked to close it; nothing may come for it until it is
    /// opened again.
    closed: bool,
    hung_up: bool,
    listener: Option<Listener>,
    peer: Option<IpAddr>,
    /// Written by the client, not yet read by the runtime.
    socket: Vec<u8>,
    /// Native framing model: the bytes the engine took, and where the
    /// first line not yet answered starts. Lines are framed (and parsed)
    /// only when their reply comes, as the engine frames them only when it
    /// takes them: a flood costs the model no more than the engine.
    stream: Vec<u8>,
    answered: usize,
    /// Legacy: what the engine kept of the request.
    kept: Vec<u8>,
    /// Transmitted and not yet checked (a partial native line).
    received: Vec<u8>,
    replies: usize,
    /// A reply after which nothing more may come (too many connections,
    /// line too long).
    last_reply: bool,
    /// The client reads nothing; `unread` bytes wait in its socket.
    deaf: bool,
    unread: usize,
    /// The engine shut the write side.
    half_closed: bool,
}

/// An effect the engine asked for and the runtime has not reported.
struct Pending {
    id: EffectId,
    effect: Effect,
    /// The engine's time when it asked.
    asked_at: DateTime<Utc>,
    /// Carried out already (`Execute`): the result to report.
    result: Option<EffectResult>,
}

/// The model's view of one session (one token).
#[derive(Clone, Copy, Debug)]
struct SessionModel {
    started: DateTime<Utc>,
    expires: DateTime<Utc>,
    /// The session it was rotated from.
    rotated_from: Option<MasterToken>,
    /// The write that stores it was reported committed.
    committed: bool,
    /// Its token went out in a reply.
    handed_out: bool,
}

/// Which completion the outputs of one `handle` call follow.
#[derive(Clone, Copy, Default)]
struct Resumed {
    /// A passcode consumption reported committed; the time the login was
    /// decided (when the consumption was asked for).
    consumed_at: Option<DateTime<Utc>>,
    /// A token check's session read, and the session it asked for.
    session_read: Option<MasterToken>,
}

struct Run {
    engine: Engine,
    config: Config,
    rng: TestRng,
    /// The runtime's clock (it may run backwards).
    now: DateTime<Utc>,
    /// The engine's clock: the latest `now` it was given.
    engine_now: DateTime<Utc>,
    store: MemoryStore,
    slots: Vec<Slot>,
    pending: Vec<Pending>,
    reported: Vec<EffectId>,
    next_effect: u64,
    /// Every passcode mailed, in order: (email, code).
    mails: Vec<(String, String)>,
    /// Every token that came back in a reply, with the MAC it was asked for.
    tokens: Vec<(BaseToken, Mac)>,
    sessions: BTreeMap<MasterToken, SessionModel>,
    /// Session reads reported while the session was valid, not yet matched
    /// by an `authorized` reply.
    valid_reads: BTreeMap<MasterToken, u32>,
    /// Mails per (email, code), and logins made with each.
    mailed: BTreeMap<(String, String), u32>,
    logged_in: BTreeMap<(String, String), u32>,
    /// Passcodes stored (reported committed) per email, and `Passcode is
    /// sent` replies per email.
    stored_passcodes: BTreeMap<String, u32>,
    sent_replies: BTreeMap<String, u32>,
    /// Bounds on what may be in flight: line feeds fed, legacy
    /// connections opened, password checks reported.
    lines_fed: usize,
    legacy_opened: usize,
    verifications: usize,
    floods: usize,
    /// Bytes the sockets of reading clients took, to report as `Sent`.
    taken: Vec<(ConnId, usize)>,
    shutdown: bool,
    stopped: bool,
    report: Report,
}

fn is_token_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_login(text: &str) -> bool {
    text.strip_prefix(LOGIN_PREFIX).is_some_and(is_token_hex)
}

fn error_code(text: &str) -> Option<ErrorCode> {
    let code = text.strip_prefix("error|")?;
    ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
}

impl Run {
    fn new(config: Config) -> Run {
        let mut store = MemoryStore::default();
        for (email, phone, password) in USERS {
            if !matches!(password, Stored::Absent) {
                store.put_user(UserRecord { email: email.into(), phone: phone.into(), password: password.hash() });
            }
        }
        Run {
            engine: Engine::new(config.clone()),
            config,
            rng: TestRng::new(0x5eed),
            now: epoch(),
            // As the engine's: it has seen no time yet.
            engine_now: DateTime::<Utc>::MIN_UTC,
            store,
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            pending: Vec::new(),
            reported: Vec::new(),
            next_effect: 0,
            mails: Vec::new(),
            tokens: Vec::new(),
            sessions: BTreeMap::new(),
            valid_reads: BTreeMap::new(),
            mailed: BTreeMap::new(),
            logged_in: BTreeMap::new(),
            stored_passcodes: BTreeMap::new(),
            sent_replies: BTreeMap::new(),
            lines_fed: 0,
            legacy_opened: 0,
            verifications: 0,
            floods: 0,
            taken: Vec::new(),
            shutdown: false,
            stopped: false,
            report: Report::default(),
        }
    }

    fn act(&mut self, action: &Action) {
        match action {
            Action::Open { slot, peer: p, listener } => self.open(usize::from(*slot) % SLOTS, peer(*p), *listener),
            Action::Send { slot, bytes, force } => self.write(usize::from(*slot) % SLOTS, &bytes.0, *force),
            Action::Request { slot, request, ending } => {
                let slot = usize::from(*slot) % SLOTS;
                let line = self.render(request);
                match ending {
                    Ending::Lf => self.write(slot, format!("{line}\n").as_bytes(), false),
                    Ending::CrLf => self.write(slot, format!("{line}\r\n").as_bytes(), false),
                    Ending::Bare => self.write(slot, line.as_bytes(), false),
                    Ending::Split(at) => {
                        let line = format!("{line}\n").into_bytes();
                        let (a, b) = line.split_at(usize::from(*at) % line.len());
                        self.write(slot, a, false);
                        self.write(slot, b, false);
                    }
                }
            }
            Action::Flood { slot, pattern, kib, force } => {
                let pattern: &[u8] = if pattern.0.is_empty() { b"x" } else { &pattern.0 };
                self.floods += 1;
                let size = if self.floods <= 4 { 1024 << kib.saturating_sub(247) } else { 1024 };
                let bytes: Vec<u8> = pattern.iter().copied().cycle().take(size).collect();
                self.write(usize::from(*slot) % SLOTS, &bytes, *force);
            }
            Action::HangUp { slot } => {
                let slot = usize::from(*slot) % SLOTS;
                let s = &mut self.slots[slot];
                s.socket.clear();
                if s.opened && !s.closed {
                    s.hung_up = true;
                }
                self.input(Input::Closed { conn: ConnId(slot as u64) }, Resumed::default());
            }
            Action::Fail { slot } => {
                let slot = usize::from(*slot) % SLOTS;
                let s = &mut self.slots[slot];
                s.socket.clear();
                if s.opened && !s.closed {
                    s.hung_up = true;
                }
                self.input(Input::Failed { conn: ConnId(slot as u64) }, Resumed::default());
            }
            Action::Deafen { slot } => self.slots[usize::from(*slot) % SLOTS].deaf = true,
            Action::Read { slot, bytes } => self.read_replies(usize::from(*slot) % SLOTS, usize::from(*bytes)),
            Action::Shutdown => {
                self.shutdown = true;
                self.input(Input::Shutdown, Resumed::default());
            }
            Action::Advance { ms } => self.now += TimeDelta::milliseconds(i64::from(*ms)),
            Action::AdvanceLong { minutes } => self.now += TimeDelta::minutes(i64::from(*minutes)),
            Action::Rewind { ms } => self.now -= TimeDelta::milliseconds(i64::from(*ms)),
            Action::Timeout => self.timeout(),
            Action::ToDeadline => {
                if let Some(at) = self.engine.poll_timeout() {
                    self.now = self.now.max(at);
                }
                self.timeout();
            }
            Action::Execute { pick } => {
                if !self.pending.is_empty() {
                    let i = usize::from(*pick) % self.pending.len();
                    if self.pending[i].result.is_none() {
                        let result = self.execute(&self.pending[i].effect.clone());
                        self.pending[i].result = Some(result);
                    }
                }
            }
            Action::Complete { pick, outcome } => {
                if !self.pending.is_empty() {
                    self.complete(usize::from(*pick) % self.pending.len(), *outcome);
                }
            }
            Action::Settle => self.settle(),
            Action::Stray { id, outcome } => {
                let id = EffectId(*id);
                if !self.pending.iter().any(|p| p.id == id) {
                    let result = self.lie(*outcome);
                    self.silent(Input::Completed { id, result });
                }
            }
            Action::Replay { pick, outcome } => {
                if !self.reported.is_empty() {
                    let id = self.reported[usize::from(*pick) % self.reported.len()];
                    let result = self.lie(*outcome);
                    self.silent(Input::Completed { id, result });
                }
            }
        }
        self.read_sockets();
    }

    /// After the script: everything completes, every deadline passes, and
    /// then the engine must hold nothing.
    fn finish(&mut self) {
        for slot in 0..SLOTS {
            self.slots[slot].deaf = false;
            self.read_replies(slot, usize::MAX);
        }
        for _ in 0..8 {
            // Each request makes a handful of effects, and a script feeds at
            // most a few MiB of requests.
            self.settle_at_most(1 << 22);
            self.read_sockets();
            self.check_no_stall();
            self.now = self.now.max(self.engine_now) + TimeDelta::hours(1);
            self.timeout();
            if self.pending.is_empty() && self.engine.connections() == 0 {
                break;
            }
        }
        assert_eq!(self.engine.effects_in_flight(), 0, "effects still in flight after everything settled");
        assert_eq!(self.engine.connections(), 0, "connections left after every deadline passed");
        assert_eq!(self.engine.poll_timeout().filter(|&at| at <= self.engine_now), None, "a deadline left in the past");
        assert_eq!(self.stopped, self.shutdown, "a shutdown that never said it stopped");
    }

    /// The client reads up to `bytes` of what waits in its socket.
    fn read_replies(&mut self, slot: usize, bytes: usize) {
        let s = &mut self.slots[slot];
        let n = s.unread.min(bytes);
        if n > 0 && s.opened && !s.closed {
            s.unread -= n;
            self.input(Input::Sent { conn: Run::conn(slot), bytes: n }, Resumed::default());
        }
    }

    fn conn(slot: usize) -> ConnId {
        ConnId(slot as u64)
    }

    fn open(&mut self, slot: usize, ip: IpAddr, listener: ListenerPick) {
        let conn = Run::conn(slot);
        if self.engine.has_connection(conn) {
            return;
        }
        let listener = listener.listener();
        self.slots[slot] =
            Slot { opened: true, listener: Some(listener), peer: Some(normalize_ip(ip)), ..Slot::default() };
        if listener != Listener::Native {
            self.legacy_opened += 1;
        }
        self.input(Input::Opened { conn, peer: ip, listener }, Resumed::default());
    }

    /// The client writes; the runtime reads when the engine wants input
    /// (or at once, when `force`d, with whatever was waiting first).
    fn write(&mut self, slot: usize, bytes: &[u8], force: bool) {
        self.slots[slot].socket.extend_from_slice(bytes);
        if force {
            let waiting = std::mem::take(&mut self.slots[slot].socket);
            for piece in waiting.chunks(READ_SIZE) {
                self.feed(slot, piece);
            }
        }
        self.read_sockets();
    }

    fn read_sockets(&mut self) {
        for slot in 0..SLOTS {
            while !self.slots[slot].socket.is_empty() && self.engine.wants_input(Run::conn(slot)) {
                let n = self.slots[slot].socket.len().min(READ_SIZE);
                let piece: Vec<u8> = self.slots[slot].socket.drain(..n).collect();
                self.feed(slot, &piece);
            }
        }
    }

    /// Feeds bytes to the engine, and to the model what the engine keeps of
    /// them.
    fn feed(&mut self, slot: usize, bytes: &[u8]) {
        let conn = Run::conn(slot);
        let takes = self.engine.has_connection(conn);
        let wants = self.engine.wants_input(conn);
        let s = &mut self.slots[slot];
        if takes && s.opened && !s.closed && !s.hung_up {
            match s.listener {
                Some(Listener::Native) => {
                    self.lines_fed += bytes.iter().filter(|&&b| b == b'\n').count();
                    s.stream.extend_from_slice(bytes);
                }
                // A legacy connection takes bytes only until its request
                // starts, which is exactly while it wants input.
                Some(_) if wants => {
                    let room = legacy::MAX_REQUEST - s.kept.len();
                    s.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                _ => {}
            }
        }
        self.input(Input::Received { conn, bytes }, Resumed::default());
    }

    fn timeout(&mut self) {
        self.input(Input::Timeout, Resumed::default());
        if let Some(at) = self.engine.poll_timeout() {
            assert!(
                at > self.engine_now,
                "after a timeout at {} (engine time), the next deadline {at} is not in the future: a runtime that \
                 honours poll_timeout would spin",
                self.engine_now
            );
        }
    }

    fn settle(&mut self) {
        self.settle_at_most(MAX_SETTLE);
    }

    fn settle_at_most(&mut self, limit: usize) {
        for _ in 0..limit {
            if self.pending.is_empty() {
                break;
            }
            self.complete(0, Outcome::Honest);
        }
    }

    /// Carries out an effect against the models.
    fn execute(&mut self, effect: &Effect) -> EffectResult {
        match effect {
            Effect::Read(lookup) => self.store.read(lookup),
            Effect::Write(batch) => self.store.write(batch),
            Effect::VerifyPassword { hash, candidate } => EffectResult::Verified(test_verify(hash, candidate)),
            Effect::HashPassword { password } => EffectResult::Hashed(test_hash(password.expose())),
            Effect::SendMail(_) => EffectResult::Sent,
        }
    }

    /// A result as the outcome says, whatever the effect.
    fn lie(&self, outcome: Outcome) -> EffectResult {
        match outcome {
            Outcome::Honest | Outcome::Failed => EffectResult::Failed,
            Outcome::Conflict => EffectResult::Conflict,
            Outcome::EmptyRead => EffectResult::Read(Box::default()),
            Outcome::Committed => EffectResult::Committed,
            Outcome::Verified(v) => EffectResult::Verified(v),
            Outcome::Hashed => EffectResult::Hashed(test_hash("a hash nobody asked for")),
            Outcome::Sent => EffectResult::Sent,
        }
    }

    fn complete(&mut self, index: usize, outcome: Outcome) {
        let mut p = self.pending.remove(index);
        let own_kind = matches!(
            (&p.effect, outcome),
            (_, Outcome::Honest)
                | (Effect::Write(_), Outcome::Committed)
                | (Effect::VerifyPassword { .. }, Outcome::Verified(_))
                | (Effect::HashPassword { .. }, Outcome::Hashed)
                | (Effect::SendMail(_), Outcome::Sent)
        );
        let result = if own_kind {
            match p.result.take() {
                Some(result) => result,
                None => self.execute(&p.effect),
            }
        } else {
            self.lie(outcome)
        };
        self.engine_now = self.engine_now.max(self.now);
        let mut resumed = Resumed::default();
        match (&p.effect, &result) {
            (Effect::Read(lookup), EffectResult::Read(snapshot)) => {
                if let (Some(master), None, None) = (lookup.session, &lookup.user, &lookup.passcode) {
                    resumed.session_read = Some(master);
                    self.count_session_read(master, snapshot);
                }
            }
            (Effect::Write(batch), EffectResult::Committed) => {
                if is_consumption(batch) {
                    resumed.consumed_at = Some(p.asked_at);
                }
                self.committed(batch);
            }
            (Effect::VerifyPassword { .. }, _) => self.verifications += 1,
            _ => {}
        }
        self.reported.push(p.id);
        self.input(Input::Completed { id: p.id, result }, resumed);
    }

    /// A session read reported at the engine's current time: if the session
    /// is valid now, it may justify one `authorized`.
    fn count_session_read(&mut self, master: MasterToken, snapshot: &Snapshot) {
        let Some(session) = snapshot.session.as_ref().filter(|s| s.master == master) else { return };
        let model = *self.sessions.get(&master).expect("a session in the store that the engine never wrote");
        assert_eq!((session.started_at, session.expires_at), (model.started, model.expires));
        if self.valid(&model, self.engine_now) {
            *self.valid_reads.entry(master).or_default() += 1;
        }
    }

    fn committed(&mut self, batch: &WriteBatch) {
        match batch {
            WriteBatch::Passcodes(b) => {
                for op in &b.ops {
                    if let PasscodesOp::Put(record) = op {
                        *self.stored_passcodes.entry(record.key.email.clone()).or_default() += 1;
                    }
                }
            }
            WriteBatch::Creds(b) => {
                for op in &b.ops {
                    if let CredsOp::PutSession(s) = op {
                        self.sessions.get_mut(&s.master).expect("a session write the model never saw").committed = true;
                    }
                }
            }
        }
    }

    fn alive(&self, started: DateTime<Utc>, at: DateTime<Utc>) -> bool {
        self.config.session.max_age <= TimeDelta::zero() || at < started + self.config.session.max_age
    }

    fn valid(&self, model: &SessionModel, at: DateTime<Utc>) -> bool {
        self.alive(model.started, at) && at < model.expires
    }

    /// The expiry of a token issued at `issued` in a session started at
    /// `started`: one token lifetime, never past the session's age.
    fn expiry(&self, started: DateTime<Utc>, issued: DateTime<Utc>) -> DateTime<Utc> {
        let ttl = issued + self.config.session.token_ttl;
        if self.config.session.max_age > TimeDelta::zero() {
            ttl.min(started + self.config.session.max_age)
        } else {
            ttl
        }
    }

    /// Feeds an input that must produce nothing.
    fn silent(&mut self, input: Input<'_>) {
        let before = self.report;
        self.engine_now = self.engine_now.max(self.now);
        self.engine.handle(self.now, &mut self.rng, input);
        assert_eq!(self.engine.poll_output(), None, "a result for an unknown effect id produced output");
        assert_eq!(before, self.report);
        self.check_bounds();
    }

    fn input(&mut self, input: Input<'_>, resumed: Resumed) {
        self.engine_now = self.engine_now.max(self.now);
        self.engine.handle(self.now, &mut self.rng, input);
        while let Some(output) = self.engine.poll_output() {
            self.output(output, resumed);
        }
        // The sockets of reading clients take what was sent at once.
        for (conn, bytes) in std::mem::take(&mut self.taken) {
            self.input(Input::Sent { conn, bytes }, Resumed::default());
        }
        self.check_bounds();
    }

    fn check_bounds(&self) {
        assert_eq!(self.engine.effects_in_flight(), self.pending.len(), "effects in flight ≠ effects not reported");
        assert!(
            self.pending.len() <= self.lines_fed + self.legacy_opened + self.verifications,
            "{} effects in flight for {} lines, {} legacy connections and {} password checks",
            self.pending.len(),
            self.lines_fed,
            self.legacy_opened,
            self.verifications
        );
        assert!(
            self.engine.connections() <= self.config.max_connections,
            "{} connections held, limit {}",
            self.engine.connections(),
            self.config.max_connections
        );
        for (slot, s) in self.slots.iter().enumerate() {
            if s.listener.is_some_and(|l| l != Listener::Native) && s.replies > 0 && s.unread == 0 {
                assert!(s.closed || s.half_closed, "legacy connection {slot} answered but not shut");
            }
            let unsent = self.engine.unsent(Run::conn(slot));
            assert!(
                unsent < self.config.max_backlog.max(1) + LONGEST_REPLY,
                "connection {slot} owes {unsent} bytes, max_backlog {}",
                self.config.max_backlog
            );
        }
    }

    /// With every effect reported, a connection the client still uses must
    /// want input, or what it sends is never read.
    fn check_no_stall(&self) {
        if !self.pending.is_empty() {
            return;
        }
        for (slot, s) in self.slots.iter().enumerate() {
            let conn = Run::conn(slot);
            // A connection told it is done (line too long, too many
            // connections) has nothing owed here, so it is closed already.
            if self.engine.has_connection(conn) && !s.hung_up && s.unread == 0 {
                assert!(
                    self.engine.wants_input(conn),
                    "connection {slot} stalled: open, nothing in flight, no input wanted"
                );
            }
        }
    }

    fn output(&mut self, output: Output, resumed: Resumed) {
        match output {
            Output::Transmit { conn, bytes } => {
                let slot = self.live_slot(conn, "a transmit");
                assert!(!bytes.is_empty(), "an empty transmit");
                assert!(!self.slots[slot].half_closed, "a transmit after the write side was shut");
                if self.slots[slot].deaf {
                    self.slots[slot].unread += bytes.len();
                } else {
                    self.taken.push((conn, bytes.len()));
                }
                self.slots[slot].received.extend_from_slice(&bytes);
                if self.slots[slot].listener == Some(Listener::Native) {
                    assert_eq!(bytes.last(), Some(&b'\n'), "a native transmit that does not end a line");
                    self.native_replies(slot);
                } else {
                    self.legacy_reply(slot);
                }
            }
            Output::HalfClose { conn } => {
                let slot = self.live_slot(conn, "a half-close");
                let s = &mut self.slots[slot];
                assert!(!s.half_closed, "a second half-close");
                assert_eq!(s.unread, 0, "a half-close before the client took every byte");
                s.half_closed = true;
            }
            Output::Close { conn } => {
                let slot = self.live_slot(conn, "a close");
                let s = &mut self.slots[slot];
                s.closed = true;
                s.unread = 0;
                self.taken.retain(|(c, _)| *c != conn);
                self.report.closes += 1;
            }
            Output::Stopped => {
                assert!(self.shutdown, "stopped without a shutdown");
                assert!(!self.stopped, "stopped twice");
                assert_eq!(self.engine.connections(), 0, "stopped with connections open");
                self.stopped = true;
            }
            Output::Perform { id, effect } => {
                assert_eq!(id, EffectId(self.next_effect), "effect ids must be fresh");
                self.next_effect += 1;
                self.report.effects += 1;
                self.performed(&effect, resumed);
                self.pending.push(Pending { id, effect, asked_at: self.engine_now, result: None });
            }
        }
    }

    fn live_slot(&self, conn: ConnId, what: &str) -> usize {
        let slot = usize::try_from(conn.0).ok().filter(|&s| s < SLOTS);
        let slot = slot.unwrap_or_else(|| panic!("{what} for {conn:?}, which was never opened"));
        let s = &self.slots[slot];
        assert!(s.opened, "{what} for {conn:?}, which was never opened");
        assert!(!s.closed, "{what} for {conn:?} after the engine closed it");
        slot
    }

    /// Checks an effect as the engine asks for it.
    fn performed(&mut self, effect: &Effect, resumed: Resumed) {
        match effect {
            Effect::SendMail(mail) => {
                let code = find_passcode(mail.body.expose()).expect("a mail without a passcode");
                assert!(code.len() == LENGTH && code.bytes().all(|b| ALPHABET.contains(&b)), "passcode {code:?}");
                assert_eq!(mail.expires_at, self.engine_now + self.config.passcode.lifetime);
                self.mails.push((mail.to.clone(), code.to_owned()));
                *self.mailed.entry((mail.to.clone(), code.to_owned())).or_default() += 1;
            }
            Effect::Write(WriteBatch::Creds(batch)) => self.session_write(batch, resumed),
            _ => {}
        }
    }

    /// A credentials write: a new session only after a consumed passcode,
    /// a rotation only of an expired, live session, with the lifetimes the
    /// configuration gives.
    fn session_write(&mut self, batch: &CredsBatch, resumed: Resumed) {
        match (&batch.expect, batch.ops.as_slice()) {
            (None, [CredsOp::PutSession(s)]) => {
                let started = resumed.consumed_at.expect("a session written without a passcode consumed first");
                self.check_record(s, started, started);
                self.new_session(s, None);
            }
            (
                Some(CredsExpectation::Session { master, expires_at }),
                [CredsOp::DeleteSession(old), CredsOp::PutSession(s)],
            ) if master == old => {
                assert_eq!(resumed.session_read, Some(*old), "a rotation that did not follow a read of its session");
                let model = *self.sessions.get(old).expect("a rotation of a session never written");
                assert_eq!(*expires_at, model.expires);
                assert!(self.engine_now >= model.expires, "a token rotated before it expired");
                assert!(self.alive(model.started, self.engine_now), "a session rotated past its age");
                self.check_record(s, model.started, self.engine_now);
                self.new_session(s, Some(*old));
            }
            (Some(CredsExpectation::Password { .. }), [CredsOp::SetPassword { .. }]) => {}
            _ => panic!("an unexpected credentials write: {batch:?}"),
        }
    }

    fn check_record(&self, s: &SessionRecord, started: DateTime<Utc>, issued: DateTime<Utc>) {
        assert_eq!(s.started_at, started, "session start");
        assert_eq!(s.expires_at, self.expiry(started, issued), "token expiry");
    }

    fn new_session(&mut self, s: &SessionRecord, rotated_from: Option<MasterToken>) {
        let model = SessionModel {
            started: s.started_at,
            expires: s.expires_at,
            rotated_from,
            committed: false,
            handed_out: false,
        };
        assert!(self.sessions.insert(s.master, model).is_none(), "a master token written twice");
    }

    fn native_replies(&mut self, slot: usize) {
        let received = std::mem::take(&mut self.slots[slot].received);
        let mut start = 0;
        while let Some(end) = received[start..].iter().position(|&b| b == b'\n') {
            let text = std::str::from_utf8(&received[start..start + end]).expect("a reply that is not UTF-8");
            self.native_reply(slot, text);
            start += end + 1;
        }
        self.slots[slot].received = received[start..].to_vec();
    }

    fn native_reply(&mut self, slot: usize, text: &str) {
        self.report.replies += 1;
        let max_line = self.config.max_line;
        let s = &mut self.slots[slot];
        assert!(!s.last_reply, "a reply after {text:?}'s connection was told it is done");
        s.replies += 1;
        match error_code(text) {
            Some(ErrorCode::TooManyConnections) => {
                assert_eq!(s.replies, 1, "too_many_connections after other replies");
                s.last_reply = true;
                return;
            }
            Some(ErrorCode::LineTooLong) => {
                let frame = model_frame(&s.stream[s.answered..], max_line);
                assert!(frame == ModelFrame::TooLong, "line_too_long, but the next line is {frame:?}");
                s.last_reply = true;
                return;
            }
            _ => {}
        }
        let peer = s.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let expect = match model_frame(&s.stream[s.answered..], max_line) {
            ModelFrame::Line { line, consumed } => {
                let expect = expect_of(line, peer, Listener::Native);
                s.answered += consumed;
                if s.answered > 64 * 1024 && s.answered * 2 > s.stream.len() {
                    s.stream.drain(..s.answered);
                    s.answered = 0;
                }
                expect
            }
            frame => panic!("reply {text:?} to no request (the next frame is {frame:?})"),
        };
        let fits = match &expect {
            Expect::Malformed => text == "error|malformed",
            Expect::NotServed => false,
            Expect::Token { .. } => {
                matches!(text, "authorized" | "unauthorized" | "error|store_unavailable")
                    || text.strip_prefix("renew|").is_some_and(is_token_hex)
            }
            Expect::Passcode { .. } => {
                matches!(
                    text,
                    "Passcode is sent"
                        | "False"
                        | "error|rate_limited"
                        | "error|busy"
                        | "error|store_unavailable"
                        | "error|mail_unavailable"
                )
            }
            Expect::Login { .. } => {
                matches!(text, "False" | "error|rate_limited" | "error|busy" | "error|store_unavailable")
                    || is_login(text)
            }
        };
        assert!(fits, "reply {text:?} to {expect:?}");
        self.meaning(slot, &expect, text);
    }

    fn legacy_reply(&mut self, slot: usize) {
        let received = std::mem::take(&mut self.slots[slot].received);
        let (text, used) = unpickle(&received).expect("a legacy transmit that is not one pickled str");
        assert_eq!(used, received.len(), "a legacy transmit with more than one reply");
        self.report.replies += 1;
        let s = &mut self.slots[slot];
        s.replies += 1;
        assert_eq!(s.replies, 1, "a legacy connection answered twice");
        let listener = s.listener.unwrap_or(Listener::LegacyLogin);
        let peer = s.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let expect = expect_of(legacy::request(&s.kept), peer, listener);
        let fits = match &expect {
            Expect::Passcode { .. } => text == "Passcode is sent" || text == "False",
            Expect::Login { .. } => text == "False" || is_login(&text),
            _ => text == "False",
        };
        assert!(fits, "legacy reply {text:?} on {listener:?} to {expect:?}");
        self.meaning(slot, &expect, &text);
    }

    /// What a documented reply claims, checked against the model.
    fn meaning(&mut self, slot: usize, expect: &Expect, text: &str) {
        let peer = self.slots[slot].peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        match expect {
            Expect::Token { master, .. } if text == "authorized" => {
                self.report.authorized += 1;
                let reads = self.valid_reads.entry(*master).or_default();
                assert!(*reads > 0, "authorized without a read of a valid session (past its lifetime?)");
                *reads -= 1;
            }
            Expect::Token { master, mac } => {
                if let Some(hex) = text.strip_prefix("renew|") {
                    self.report.renewals += 1;
                    let model = self.hand_out(hex, *mac, peer);
                    assert_eq!(model.rotated_from, Some(*master), "renew| with a token of another session");
                }
            }
            Expect::Passcode { email } if text == "Passcode is sent" => {
                self.report.passcodes_sent += 1;
                let sent = self.sent_replies.entry(email.clone()).or_default();
                *sent += 1;
                let stored = self.stored_passcodes.get(email).copied().unwrap_or(0);
                assert!(*sent <= stored, "`Passcode is sent` for {email} without a stored passcode");
            }
            Expect::Login { email, code, mac } => {
                if let Some(hex) = text.strip_prefix(LOGIN_PREFIX) {
                    self.report.logins += 1;
                    let key = (email.clone(), code.clone());
                    let mailed = self.mailed.get(&key).copied().unwrap_or(0);
                    let logins = self.logged_in.entry(key).or_default();
                    *logins += 1;
                    assert!(*logins <= mailed, "passcode for {email} logged in {logins} times, mailed {mailed} times");
                    let model = self.hand_out(hex, *mac, peer);
                    assert_eq!(model.rotated_from, None, "a login reply with a renewed session's token");
                }
            }
            _ => {}
        }
    }

    /// A token in a reply: its session must be committed, and its token
    /// handed out once.
    fn hand_out(&mut self, hex: &str, mac: Mac, peer: IpAddr) -> SessionModel {
        let token = BaseToken::parse(hex.as_bytes()).expect("a token that is not 64 hex digits");
        let master = MasterToken::derive(&token, mac, peer);
        let model = self.sessions.get_mut(&master).expect("a token whose session was never written");
        assert!(model.committed, "a token handed out before its session was committed");
        assert!(!model.handed_out, "a token handed out twice");
        model.handed_out = true;
        let model = *model;
        self.tokens.push((token, mac));
        model
    }

    /// The line a [`RequestPick`] stands for, from what the run has seen.
    fn render(&self, pick: &RequestPick) -> String {
        let user = |u: u8| USERS[usize::from(u) % USERS.len()];
        let password = |u: u8, p: u8| match p % 3 {
            0 => user(u).2.password(),
            1 => "wrong",
            _ => user(u.wrapping_add(1)).2.password(),
        };
        let phone = |u: u8, p: u8| match p % 3 {
            0 => user(u).1,
            1 => "",
            _ => "+15559999",
        };
        let mac = |m: u8| MACS[usize::from(m) % MACS.len()];
        match pick {
            RequestPick::Passcode { mac: m, user: u, password: p, phone: ph } => {
                format!("{REQUIRE_PASSCODE}|{}|{}|{}|{}", mac(*m), password(*u, *p), phone(*u, *ph), user(*u).0)
            }
            RequestPick::Login { mac: m, user: u, password: p, phone: ph, passcode } => {
                let code = self.passcode(passcode);
                format!("{}|{}|{}|{}|{code}", mac(*m), user(*u).0, phone(*u, *ph), password(*u, *p))
            }
            RequestPick::Token { token, mac: m, tail } => {
                let (hex, own_mac) = self.token(token);
                let mac = match (m % 5, own_mac) {
                    (0, Some(own)) => own.to_string(),
                    (i, _) => MACS[usize::from(i) % MACS.len()].to_owned(),
                };
                format!("{hex}|{mac}|{}", TOKEN_TAILS[usize::from(*tail) % TOKEN_TAILS.len()])
            }
        }
    }

    fn passcode(&self, pick: &PasscodePick) -> String {
        let mailed = |i: u8| {
            self.mails.len().checked_sub(1 + usize::from(i) % self.mails.len().max(1)).map(|j| self.mails[j].1.clone())
        };
        match pick {
            PasscodePick::Mailed(i) => mailed(*i).unwrap_or_else(|| "AAAAAA".to_owned()),
            PasscodePick::Mangled(i) => {
                let code = mailed(*i).unwrap_or_else(|| "AAAAAA".to_owned());
                let mut bytes = code.into_bytes();
                let at = usize::from(*i) % LENGTH;
                if bytes[at].is_ascii_uppercase() && i & 0x80 != 0 {
                    bytes[at] = bytes[at].to_ascii_lowercase();
                } else {
                    let pos = ALPHABET.iter().position(|&c| c == bytes[at]).unwrap_or(0);
                    bytes[at] = ALPHABET[(pos + 1) % ALPHABET.len()];
                }
                String::from_utf8(bytes).unwrap_or_default()
            }
            PasscodePick::Guess(n) => {
                let mut n = *n;
                (0..LENGTH)
                    .map(|_| {
                        let c = ALPHABET[(n % 36) as usize];
                        n /= 36;
                        char::from(c)
                    })
                    .collect()
            }
        }
    }

    fn token(&self, pick: &TokenPick) -> (String, Option<Mac>) {
        let issued = |i: u8| {
            self.tokens.len().checked_sub(1 + usize::from(i) % self.tokens.len().max(1)).map(|j| self.tokens[j])
        };
        let hex = |t: &BaseToken| String::from_utf8_lossy(&t.to_hex()).into_owned();
        match pick {
            TokenPick::Issued(i) | TokenPick::Upper(i) | TokenPick::Mangled(i) => {
                let Some((token, mac)) = issued(*i) else { return ("0".repeat(64), None) };
                let mut text = hex(&token);
                match pick {
                    TokenPick::Upper(_) => text = text.to_ascii_uppercase(),
                    TokenPick::Mangled(_) => {
                        let at = usize::from(*i) % 64;
                        let flipped = if &text[at..=at] == "0" { "1" } else { "0" };
                        text.replace_range(at..=at, flipped);
                    }
                    _ => {}
                }
                (text, Some(mac))
            }
            TokenPick::Random(bytes) => (crate::hex::encode32(bytes).iter().map(|&b| char::from(b)).collect(), None),
        }
    }
}

/// The next frame of a native stream by the framing rules, written apart
/// from `codec::native`: a line ends at LF (a CR before it dropped) and
/// holds at most `max_line` bytes; a partial line may hold one byte more,
/// if that byte is a CR.
#[derive(PartialEq, Eq, Debug)]
enum ModelFrame<'a> {
    Line { line: &'a [u8], consumed: usize },
    TooLong,
    Partial,
}

fn model_frame(rest: &[u8], max_line: usize) -> ModelFrame<'_> {
    match rest.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let raw = &rest[..end];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.len() > max_line { ModelFrame::TooLong } else { ModelFrame::Line { line, consumed: end + 1 } }
        }
        None if rest.len() > max_line + 1 || (rest.len() == max_line + 1 && rest[max_line] != b'\r') => {
            ModelFrame::TooLong
        }
        None => ModelFrame::Partial,
    }
}

/// Whether a passcodes batch consumes a passcode for a login: the only one
/// that resets the account's failure streak.
fn is_consumption(batch: &WriteBatch) -> bool {
    match batch {
        WriteBatch::Passcodes(PasscodesBatch { expect: Some(_), ops }) => {
            ops.iter().any(|op| matches!(op, PasscodesOp::Reset(crate::limits::CounterKey::FailureStreak(_))))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// engine: seeds
// ---------------------------------------------------------------------------

/// Writes values in the layout `arbitrary` 1.x reads them back from
/// (little-endian integers, `u8 & 1` booleans, an enum's variant as a `u32`
/// scaled by its number of variants), so seed inputs can be written as
/// scripts. [`engine_seeds`] checks that every seed decodes to the script it
/// was written from.
trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let tag = ((index << 32).div_ceil(count)) as u32;
    out.extend_from_slice(&tag.to_le_bytes());
}

impl Encode for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Encode for u16 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for u32 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Encode for Chunk {
    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.0.len().min(255);
        out.push(len as u8);
        out.extend_from_slice(&self.0[..len]);
    }
}

impl Encode for Knobs {
    fn encode(&self, out: &mut Vec<u8>) {
        for b in [self.max_connections, self.max_pipeline, self.max_password_checks, self.max_line, self.max_backlog] {
            b.encode(out);
        }
        self.unlimited_age.encode(out);
    }
}

impl Encode for ListenerPick {
    fn encode(&self, out: &mut Vec<u8>) {
        variant(out, *self as u64, 3);
    }
}

impl Encode for Ending {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ending::Lf => variant(out, 0, 4),
            Ending::CrLf => variant(out, 1, 4),
            Ending::Bare => variant(out, 2, 4),
            Ending::Split(at) => {
                variant(out, 3, 4);
                at.encode(out);
            }
        }
    }
}

impl Encode for Outcome {
    fn encode(&self, out: &mut Vec<u8>) {
        let index = match self {
            Outcome::Honest => 0,
            Outcome::Failed => 1,
            Outcome::Conflict => 2,
            Outcome::EmptyRead => 3,
            Outcome::Committed => 4,
            Outcome::Verified(_) => 5,
            Outcome::Hashed => 6,
            Outcome::Sent => 7,
        };
        variant(out, index, 8);
        if let Outcome::Verified(v) = self {
            v.encode(out);
        }
    }
}

impl Encode for PasscodePick {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PasscodePick::Mailed(i) => {
                variant(out, 0, 3);
                i.encode(out);
            }
            PasscodePick::Mangled(i) => {
                variant(out, 1, 3);
                i.encode(out);
            }
            PasscodePick::Guess(n) => {
                variant(out, 2, 3);
                n.encode(out);
            }
        }
    }
}

impl Encode for TokenPick {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TokenPick::Issued(i) => {
                variant(out, 0, 4);
                i.encode(out);
            }
            TokenPick::Upper(i) => {
                variant(out, 1, 4);
                i.encode(out);
            }
            TokenPick::Mangled(i) => {
                variant(out, 2, 4);
                i.encode(out);
            }
            TokenPick::Random(bytes) => {
                variant(out, 3, 4);
                out.extend_from_slice(bytes);
            }
        }
    }
}

impl Encode for RequestPick {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RequestPick::Passcode { mac, user, password, phone } => {
                variant(out, 0, 3);
                out.extend_from_slice(&[*mac, *user, *password, *phone]);
            }
            RequestPick::Login { mac, user, password, phone, passcode } => {
                variant(out, 1, 3);
                out.extend_from_slice(&[*mac, *user, *password, *phone]);
                passcode.encode(out);
            }
            RequestPick::Token { token, mac, tail } => {
                variant(out, 2, 3);
                token.encode(out);
                out.extend_from_slice(&[*mac, *tail]);
            }
        }
    }
}

impl Encode for Action {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u64 = 19;
        match self {
            Action::Open { slot, peer, listener } => {
                variant(out, 0, N);
                out.extend_from_slice(&[*slot, *peer]);
                listener.encode(out);
            }
            Action::Send { slot, bytes, force } => {
                variant(out, 1, N);
                slot.encode(out);
                bytes.encode(out);
                force.encode(out);
            }
            Action::Request { slot, request, ending } => {
                variant(out, 2, N);
                slot.encode(out);
                request.encode(out);
                ending.encode(out);
            }
            Action::Flood { slot, pattern, kib, force } => {
                variant(out, 3, N);
                slot.encode(out);
                pattern.encode(out);
                kib.encode(out);
                force.encode(out);
            }
            Action::HangUp { slot } => {
                variant(out, 4, N);
                slot.encode(out);
            }
            Action::Advance { ms } => {
                variant(out, 5, N);
                ms.encode(out);
            }
            Action::AdvanceLong { minutes } => {
                variant(out, 6, N);
                minutes.encode(out);
            }
            Action::Rewind { ms } => {
                variant(out, 7, N);
                ms.encode(out);
            }
            Action::Timeout => variant(out, 8, N),
            Action::ToDeadline => variant(out, 9, N),
            Action::Execute { pick } => {
                variant(out, 10, N);
                pick.encode(out);
            }
            Action::Complete { pick, outcome } => {
                variant(out, 11, N);
                pick.encode(out);
                outcome.encode(out);
            }
            Action::Settle => variant(out, 12, N),
            Action::Stray { id, outcome } => {
                variant(out, 13, N);
                id.encode(out);
                outcome.encode(out);
            }
            Action::Replay { pick, outcome } => {
                variant(out, 14, N);
                pick.encode(out);
                outcome.encode(out);
            }
            Action::Fail { slot } => {
                variant(out, 15, N);
                slot.encode(out);
            }
            Action::Deafen { slot } => {
                variant(out, 16, N);
                slot.encode(out);
            }
            Action::Read { slot, bytes } => {
                variant(out, 17, N);
                slot.encode(out);
                bytes.encode(out);
            }
            Action::Shutdown => variant(out, 18, N),
        }
    }
}

impl Encode for Script {
    fn encode(&self, out: &mut Vec<u8>) {
        self.knobs.encode(out);
        for action in &self.actions {
            action.encode(out);
        }
    }
}

/// The seed inputs of the `engine` target, by file name: real sessions
/// (passcode, login, token checks, renewal, legacy ports, password
/// upgrade) and hostile ones (out-of-order and false results, floods,
/// clock jumps). Panics if a seed does not decode to the script it was
/// written from (the encoder no longer matches `arbitrary`).
pub fn engine_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Action::*;
    let knobs = Knobs {
        max_connections: 7,
        max_pipeline: 7,
        max_password_checks: 4,
        max_line: 192,
        max_backlog: 255,
        unlimited_age: false,
    };
    let ada_passcode = |slot| Request {
        slot,
        request: RequestPick::Passcode { mac: 0, user: 0, password: 0, phone: 0 },
        ending: Ending::Lf,
    };
    let ada_login = |slot| Request {
        slot,
        request: RequestPick::Login { mac: 0, user: 0, password: 0, phone: 0, passcode: PasscodePick::Mailed(0) },
        ending: Ending::Lf,
    };
    let token_check =
        |slot, token| Request { slot, request: RequestPick::Token { token, mac: 0, tail: 1 }, ending: Ending::CrLf };
    let open = |slot, peer, listener| Open { slot, peer, listener };
    let login = vec![open(0, 0, ListenerPick::Native), ada_passcode(0), Settle, ada_login(0), Settle];
    let mut seeds: Vec<(&'static str, Script)> = Vec::new();

    seeds.push(("seed-login", Script { knobs, actions: login.clone() }));

    let mut tokens = login.clone();
    tokens.extend([
        token_check(0, TokenPick::Issued(0)),
        Settle,
        token_check(0, TokenPick::Upper(0)),
        token_check(0, TokenPick::Mangled(0)),
        Settle,
        Advance { ms: 10_500 },
        token_check(0, TokenPick::Issued(0)),
        Settle,
        token_check(0, TokenPick::Issued(0)),
        Settle,
        Advance { ms: 20_000 },
        token_check(0, TokenPick::Issued(0)),
        Settle,
        HangUp { slot: 0 },
    ]);
    seeds.push(("seed-token-renew-expire", Script { knobs, actions: tokens }));

    let mut twice = login.clone();
    twice.extend([
        open(1, 0, ListenerPick::Native),
        ada_passcode(1),
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Execute { pick: 0 },
        Complete { pick: 0, outcome: Outcome::Honest },
        Settle,
        ada_login(1),
        ada_login(0),
        Complete { pick: 1, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 1, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Settle,
        ada_login(1),
        Settle,
    ]);
    seeds.push(("seed-passcode-race", Script { knobs, actions: twice }));

    let legacy = vec![
        open(2, 1, ListenerPick::LegacyPasscode),
        Request {
            slot: 2,
            request: RequestPick::Passcode { mac: 2, user: 1, password: 0, phone: 0 },
            ending: Ending::Bare,
        },
        Settle,
        open(3, 1, ListenerPick::LegacyLogin),
        Request {
            slot: 3,
            request: RequestPick::Login { mac: 2, user: 1, password: 0, phone: 0, passcode: PasscodePick::Mailed(0) },
            ending: Ending::Split(20),
        },
        Settle,
        open(4, 3, ListenerPick::LegacyLogin),
        Send { slot: 4, bytes: Chunk(b"aa:bb:cc:dd:ee:ff|eve@example.com|".to_vec()), force: false },
        Advance { ms: 300 },
        ToDeadline,
        Settle,
        open(5, 2, ListenerPick::LegacyPasscode),
        ToDeadline,
    ];
    seeds.push(("seed-legacy-upgrade", Script { knobs, actions: legacy }));

    let hostile = vec![
        open(0, 3, ListenerPick::Native),
        ada_passcode(0),
        Complete { pick: 0, outcome: Outcome::Failed },
        ada_passcode(0),
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Honest },
        Execute { pick: 0 },
        Complete { pick: 0, outcome: Outcome::Failed },
        Settle,
        ada_passcode(0),
        Settle,
        ada_login(0),
        Complete { pick: 0, outcome: Outcome::Honest },
        Complete { pick: 0, outcome: Outcome::Sent },
        ada_login(0),
        Complete { pick: 0, outcome: Outcome::Conflict },
        Stray { id: 1 << 40, outcome: Outcome::Committed },
        Replay { pick: 0, outcome: Outcome::Verified(true) },
        Rewind { ms: 5000 },
        Settle,
        Send { slot: 0, bytes: Chunk(b"\xff\xfe|||\r\n\n".to_vec()), force: false },
        Flood { slot: 0, pattern: Chunk(b"x".to_vec()), kib: 0, force: true },
        Timeout,
    ];
    seeds.push(("seed-hostile-results", Script { knobs, actions: hostile }));

    let busy = Knobs {
        max_connections: 1,
        max_pipeline: 1,
        max_password_checks: 1,
        max_line: 0,
        max_backlog: 255,
        unlimited_age: true,
    };
    let crowd = vec![
        open(0, 0, ListenerPick::Native),
        open(1, 1, ListenerPick::Native),
        ada_passcode(0),
        ada_passcode(0),
        Flood { slot: 0, pattern: Chunk(b"require_passcode|x|y|z|w\n".to_vec()), kib: 255, force: true },
        Flood { slot: 0, pattern: Chunk(b"require_passcode|x|y|z|w\n".to_vec()), kib: 255, force: true },
        Settle,
        AdvanceLong { minutes: 2 },
        Timeout,
    ];
    seeds.push(("seed-limits", Script { knobs: busy, actions: crowd }));

    // A client that reads nothing floods malformed lines and token checks
    // against a small backlog, beside one that reads; then reads a little,
    // stalls past the write timeout, and the server shuts down.
    let tight = Knobs { max_backlog: 8, ..knobs };
    let deaf = vec![
        open(0, 0, ListenerPick::Native),
        open(1, 1, ListenerPick::Native),
        Deafen { slot: 0 },
        Flood { slot: 0, pattern: Chunk(b"x\n".to_vec()), kib: 0, force: false },
        token_check(0, TokenPick::Random([7; 32])),
        Settle,
        token_check(1, TokenPick::Random([9; 32])),
        Settle,
        Read { slot: 0, bytes: 100 },
        Flood { slot: 0, pattern: Chunk(b"x\n".to_vec()), kib: 0, force: true },
        Advance { ms: 11_000 },
        Timeout,
        open(2, 2, ListenerPick::LegacyLogin),
        Shutdown,
        open(3, 3, ListenerPick::Native),
        Settle,
        ToDeadline,
    ];
    seeds.push(("seed-deaf-client", Script { knobs: tight, actions: deaf }));

    seeds
        .into_iter()
        .map(|(name, script)| {
            let mut bytes = Vec::new();
            script.encode(&mut bytes);
            assert_eq!(decode(&bytes).as_ref(), Some(&script), "seed {name} does not decode to its script");
            (name, bytes)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// capture_reader
// ---------------------------------------------------------------------------

/// The `capture_reader` target. The bytes are read as a capture, and as the
/// records that follow a valid header: the reader must be total (a damaged
/// file is an error, never a panic, and lengths read from the file never
/// allocate more than the file holds) and a replay may diverge but never
/// panic. Then the bytes are a client's stream, cut in two reads where the
/// first byte says, on a native and on a legacy connection of a recording
/// engine: the capture must replay exactly; received bytes must be masked
/// down to their framing bytes; and every whole native line's record must
/// parse to the same outcome (same kind and fields, same reason when
/// malformed) with no password.
pub fn capture_reader(data: &[u8]) {
    use crate::capture::redact::{RequestLine, mask};
    use crate::capture::{MAGIC, Replay};
    let replay_all = |bytes: &[u8]| {
        if let Ok(replay) = Replay::new(bytes) {
            let _ = replay.run();
        }
    };
    replay_all(data);
    if !data.starts_with(MAGIC) {
        let mut file = Engine::new(Config::default()).start_capture();
        file.extend_from_slice(data);
        replay_all(&file);
    }

    let Some((&cut, stream)) = data.split_first() else { return };
    let cut = usize::from(cut).min(stream.len());
    let mut engine = Engine::new(Config::default());
    let mut file = engine.start_capture();
    let mut rng = super::TestRng::new(u64::from(cut as u8));
    let now = super::epoch();
    let client: IpAddr = Ipv4Addr::LOCALHOST.into();
    for (conn, listener) in [(ConnId(1), Listener::Native), (ConnId(2), Listener::LegacyLogin)] {
        let inputs = [
            Input::Opened { conn, peer: client, listener },
            Input::Received { conn, bytes: &stream[..cut] },
            Input::Received { conn, bytes: &stream[cut..] },
        ];
        for input in inputs {
            engine.handle(now, &mut rng, input);
            while engine.poll_output().is_some() {}
        }
    }
    engine.handle(now + TimeDelta::minutes(1), &mut rng, Input::Timeout);
    while engine.poll_output().is_some() {}
    file.extend(engine.take_capture());
    if let Err(e) = Replay::new(&file).and_then(Replay::run) {
        panic!("a recorded stream does not replay: {e}");
    }

    for listener in [Listener::Native, Listener::LegacyPasscode] {
        let masked = mask(listener, stream);
        assert_eq!(masked.len(), stream.len(), "masking changed the length");
        for (&before, &after) in stream.iter().zip(&masked) {
            let framing = before == b'\n' || before == b'\r' || (listener != Listener::Native && before == b'|');
            assert_eq!(after, if framing { before } else { b'*' }, "masking kept more than the framing");
        }
    }
    let whole = stream.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in stream[..whole].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = Request::parse(line);
        let recorded = RequestLine::of(line, &parsed);
        match (parsed, recorded.parse()) {
            (Ok(Request::Passcode(a)), Ok(Request::Passcode(b))) => {
                assert_eq!(b.password, "", "a password survived");
                assert_eq!((a.mac, a.phone, a.email), (b.mac, b.phone, b.email));
            }
            (Ok(Request::Login(a)), Ok(Request::Login(b))) => {
                assert_eq!(b.password, "", "a password survived");
                assert_eq!((a.mac, a.email, a.phone, a.passcode), (b.mac, b.email, b.phone, b.passcode));
            }
            (Ok(Request::Token(a)), Ok(Request::Token(b))) => {
                assert_eq!((a.token, a.mac, b.request, b.data), (b.token, b.mac, "", None));
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "the record changed why a line is malformed");
                assert!(matches!(recorded, RequestLine::Malformed(_)), "a malformed line kept its bytes");
            }
            (a, b) => panic!("the record changed the parse outcome: {a:?} became {b:?}"),
        }
    }
}
