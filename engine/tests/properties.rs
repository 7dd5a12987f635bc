//! Property tests of the engine, run through the deterministic harness
//! (`testkit::World`): the codecs on arbitrary bytes, determinism, and the
//! security rules of `docs/PROTOCOL.md` and `docs/SECURITY.md` (one login per
//! passcode, lifetimes, device binding, rotation, no user enumeration,
//! brute-force bounds).
//!
//! Every property runs at least 1,000 cases. Failures are not persisted to
//! disk (`failure_persistence: None`); proptest prints the minimal case.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;

use tokenizer_auth_engine::codec::legacy;
use tokenizer_auth_engine::codec::native::{Frame, next_frame};
use tokenizer_auth_engine::codec::request::{
    LoginRequest, MAX_EMAIL, MAX_PHONE, PasscodeRequest, Request, TokenRequest,
};
use tokenizer_auth_engine::testkit::fuzz::unpickle;
use tokenizer_auth_engine::testkit::{Completion, World};
use tokenizer_auth_engine::{
    ALPHABET, BaseToken, ConnId, ErrorCode, LOGIN_PREFIX, Limits, Listener, Mac, Notice, Output, Reply, Window,
    normalize_ip,
};
use tokenizer_auth_engine::{AuditKind, Config, Outcome, PASSCODE_LENGTH};

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

const CASES: u32 = 1000;

const MAC: &str = "aa:bb:cc:dd:ee:ff";
const OTHER_MAC: &str = "02:00:00:00:00:01";
const EMAIL: &str = "user@example.com";
const PHONE: &str = "5550100";
const PASSWORD: &str = "correct horse";

fn proptest_config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

fn ip4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn ms(n: i64) -> TimeDelta {
    TimeDelta::milliseconds(n)
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn is_token_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_error(text: &str, codes: &[ErrorCode]) -> bool {
    text.strip_prefix("error|").is_some_and(|c| codes.iter().any(|e| e.as_str() == c))
}

fn is_login(text: &str) -> bool {
    text.strip_prefix(LOGIN_PREFIX).is_some_and(is_token_hex)
}

fn is_renew(text: &str) -> bool {
    text.strip_prefix("renew|").is_some_and(is_token_hex)
}

/// One of the reply lines `docs/PROTOCOL.md` documents.
fn documented(line: &str) -> bool {
    matches!(line, "Passcode is sent" | "False" | "authorized" | "unauthorized")
        || is_login(line)
        || is_renew(line)
        || is_error(line, &ErrorCode::ALL)
}

/// One request on a fresh native connection; the reply line without its LF.
fn native(w: &mut World, ip: IpAddr, line: &str) -> String {
    let conn = w.connect(Listener::Native, ip);
    let reply = w.request(conn, line);
    w.hang_up(conn);
    reply
}

/// One request on a fresh native connection; the raw reply bytes.
fn native_raw(w: &mut World, ip: IpAddr, line: &str) -> Vec<u8> {
    let conn = w.connect(Listener::Native, ip);
    w.send(conn, format!("{line}\n").as_bytes());
    w.settle();
    let bytes = w.take_received(conn);
    w.hang_up(conn);
    bytes
}

/// One request on a fresh legacy connection (no terminator, as the old
/// clients send it); the raw reply bytes.
fn legacy_raw(w: &mut World, listener: Listener, ip: IpAddr, line: &str) -> Vec<u8> {
    let conn = w.connect(listener, ip);
    w.send(conn, line.as_bytes());
    w.settle();
    let bytes = w.take_received(conn);
    w.hang_up(conn);
    bytes
}

fn passcode_line(mac: &str, email: &str, phone: &str, password: &str) -> String {
    format!("require_passcode|{mac}|{password}|{phone}|{email}")
}

fn login_line(mac: &str, email: &str, phone: &str, password: &str, code: &str) -> String {
    format!("{mac}|{email}|{phone}|{password}|{code}")
}

fn token_line(token: &str, mac: &str) -> String {
    format!("{token}|{mac}|get")
}

/// Asks for a passcode for the standard account and returns it.
fn fresh_passcode(w: &mut World, ip: IpAddr, mac: &str) -> Result<String, TestCaseError> {
    let reply = native(w, ip, &passcode_line(mac, EMAIL, PHONE, PASSWORD));
    prop_assert_eq!(reply.as_str(), "Passcode is sent");
    w.passcode_for(EMAIL).ok_or_else(|| TestCaseError::fail("no passcode mail"))
}

/// A passcode of the right shape that is not `code`.
fn other_code(code: &str, pick: u64) -> String {
    let mut bytes: Vec<u8> = code.bytes().collect();
    let i = (pick % PASSCODE_LENGTH as u64) as usize;
    let shift = 1 + (pick / PASSCODE_LENGTH as u64 % (ALPHABET.len() as u64 - 1)) as usize;
    let at = ALPHABET.iter().position(|&c| c == bytes[i]).unwrap_or(0);
    bytes[i] = ALPHABET[(at + shift) % ALPHABET.len()];
    String::from_utf8(bytes).unwrap_or_default()
}

/// Where the clock goes next, relative to some deadline: exactly onto it,
/// just before or after it, or anywhere within a span.
#[derive(Clone, Copy, Debug)]
enum Delay {
    Exactly,
    Before(u32),
    After(u32),
    Anywhere(u32),
}

fn delay() -> impl Strategy<Value = Delay> {
    prop_oneof![
        Just(Delay::Exactly),
        (1u32..5_000).prop_map(Delay::Before),
        (0u32..5_000).prop_map(Delay::After),
        any::<u32>().prop_map(Delay::Anywhere),
    ]
}

impl Delay {
    /// How far to move the clock from `now`: relative to `target`, or
    /// anywhere in `[0, span)`. Never backwards.
    fn from(self, now: DateTime<Utc>, target: DateTime<Utc>, span: TimeDelta) -> TimeDelta {
        let to = match self {
            Delay::Exactly => target,
            Delay::Before(x) => target - ms(i64::from(x)),
            Delay::After(x) => target + ms(i64::from(x)),
            Delay::Anywhere(x) => now + ms(i64::from(x) % span.num_milliseconds().max(1)),
        };
        (to - now).max(TimeDelta::zero())
    }
}

// ---------------------------------------------------------------------------
// 1. Parsers and connections on arbitrary bytes
// ---------------------------------------------------------------------------

/// Bytes with the structure requests have: mostly pieces of requests, and
/// some noise.
fn structured_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token: &'static [u8] = b"00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    let words: Vec<&'static [u8]> = vec![
        b"require_passcode",
        b"|",
        b"|",
        b"|",
        b"\r",
        b"\n",
        b"\r\n",
        b"aa:bb:cc:dd:ee:ff",
        b"AA-BB-CC-DD-EE-FF",
        b"aabbccddeeff",
        b"+a:bb:cc:dd:ee:ff",
        token,
        b"a@b.c",
        b"555",
        b"pw",
        b"ABC123",
        b"\0",
        b"\xc2\x85",
        b"\xff",
        b"\xe2\x80\xa8",
        "é".as_bytes(),
        b" ",
        b"",
    ];
    prop_oneof![
        vec(any::<u8>(), 0..300),
        vec(select(words), 0..40).prop_map(|w| w.concat()),
        vec(prop_oneof![select(b"|\r\n:".to_vec()), any::<u8>()], 0..300),
    ]
}

fn frame_is_consistent(buf: &[u8], max_line: usize) -> Result<(), TestCaseError> {
    let newline = buf.iter().position(|&b| b == b'\n');
    match next_frame(buf, max_line) {
        Frame::Line { line, consumed } => {
            let end = newline.ok_or_else(|| TestCaseError::fail("a line without a line feed"))?;
            prop_assert_eq!(consumed, end + 1);
            let raw = &buf[..end];
            prop_assert_eq!(line, raw.strip_suffix(b"\r").unwrap_or(raw));
            prop_assert!(line.len() <= max_line);
        }
        Frame::Incomplete => {
            prop_assert!(newline.is_none());
            prop_assert!(buf.len() <= max_line + 1, "an Incomplete buffer of {} > max_line + 1", buf.len());
            prop_assert!(buf.len() <= max_line || buf[max_line] == b'\r', "a doomed line left Incomplete");
        }
        Frame::TooLong => match newline {
            Some(end) => {
                let raw = &buf[..end];
                prop_assert!(raw.strip_suffix(b"\r").unwrap_or(raw).len() > max_line);
            }
            None => prop_assert!(buf.len() > max_line + 1 || (buf.len() == max_line + 1 && buf[max_line] != b'\r')),
        },
    }
    Ok(())
}

/// Pieces a native client might send: noise, long runs, and real requests.
fn native_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => native_line_or_noise(),
        // Bursts of pipelined lines, around the pipeline limit (64).
        1 => (1usize..100).prop_map(|n| "bad\n".repeat(n).into_bytes()),
    ]
}

/// Noise, long runs and real requests, in pieces too small to fill the
/// pipeline on their own.
fn native_line_or_noise() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => structured_bytes(),
        1 => (1usize..400).prop_map(|n| vec![b'x'; n]),
        2 => select(vec![
            format!("{}\n", passcode_line(MAC, EMAIL, PHONE, PASSWORD)),
            format!("{}\r\n", passcode_line(MAC, EMAIL, PHONE, "wrong")),
            format!("{}\n", login_line(MAC, EMAIL, PHONE, PASSWORD, "ABC123")),
            format!("{}\n", login_line(MAC, "nobody@example.com", PHONE, PASSWORD, "ABC123")),
            format!("{}\n", token_line(&"ab".repeat(32), MAC)),
            "\n".to_owned(),
            "\r\n".to_owned(),
        ])
        .prop_map(String::into_bytes),
    ]
}

/// The stream cut into chunks at `cuts` (taken modulo its length).
fn split<'a>(stream: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % (stream.len() + 1)).collect();
    points.extend([0, stream.len()]);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|p| &stream[p[0]..p[1]]).collect()
}

/// The native framing, modelled on the whole stream: the lines the engine
/// must take, and whether the stream holds a line over the limit.
struct Framed {
    lines: Vec<Vec<u8>>,
    too_long: bool,
    partial: usize,
}

fn frame_model(stream: &[u8], max_line: usize) -> Framed {
    let mut framed = Framed { lines: Vec::new(), too_long: false, partial: 0 };
    let mut pos = 0;
    loop {
        match stream[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let raw = &stream[pos..pos + i];
                let line = raw.strip_suffix(b"\r").unwrap_or(raw);
                if line.len() > max_line {
                    framed.too_long = true;
                    return framed;
                }
                framed.lines.push(line.to_vec());
                pos += i + 1;
            }
            None => {
                framed.partial = stream.len() - pos;
                // One byte of slack past the limit, for a CR; anything else
                // there dooms the line at once.
                framed.too_long = framed.partial > max_line + 1
                    || (framed.partial == max_line + 1 && stream[pos + max_line] != b'\r');
                return framed;
            }
        }
    }
}

/// Whether `reply` is a possible answer to `line` on the native protocol.
fn fits(line: &[u8], reply: &str) -> bool {
    use ErrorCode::{Busy, RateLimited};
    match Request::parse(line) {
        Err(_) => reply == "error|malformed",
        Ok(Request::Token(_)) => matches!(reply, "authorized" | "unauthorized") || is_renew(reply),
        Ok(Request::Passcode(_)) => {
            matches!(reply, "Passcode is sent" | "False") || is_error(reply, &[RateLimited, Busy])
        }
        Ok(Request::Login(_)) => reply == "False" || is_login(reply) || is_error(reply, &[RateLimited, Busy]),
    }
}

/// The outputs for one connection, in order.
fn outputs_for(w: &World, conn: ConnId) -> Vec<&Output> {
    w.outputs
        .iter()
        .filter(|o| match o {
            Output::Transmit { conn: c, .. } | Output::HalfClose { conn: c } | Output::Close { conn: c } => *c == conn,
            Output::Perform { .. } | Output::Stopped => false,
        })
        .collect()
}

/// The connection's write side was shut once everything was sent, then it
/// was closed once, and nothing was sent on it afterwards.
fn closed_last(w: &World, conn: ConnId) -> Result<(), TestCaseError> {
    let outputs = outputs_for(w, conn);
    let closes = outputs.iter().filter(|o| matches!(o, Output::Close { .. })).count();
    prop_assert_eq!(closes, 1, "closed {} times", closes);
    prop_assert!(matches!(outputs.last(), Some(Output::Close { .. })), "output after the close");
    let half = outputs.iter().position(|o| matches!(o, Output::HalfClose { .. }));
    let last_transmit = outputs.iter().rposition(|o| matches!(o, Output::Transmit { .. }));
    if let (Some(half), Some(last)) = (half, last_transmit) {
        prop_assert!(last < half, "a transmit after the half-close");
    }
    Ok(())
}

/// An open native connection with every effect completed must want input:
/// otherwise a runtime that honours `wants_input` never reads again, and
/// what the client sent is never answered.
fn keeps_reading(w: &World, conn: ConnId, sent: &[u8], max_line: usize) -> Result<(), TestCaseError> {
    let model = frame_model(sent, max_line);
    let answered: usize = outputs_for(w, conn)
        .iter()
        .map(|o| match o {
            Output::Transmit { bytes, .. } => bytes.iter().filter(|&&b| b == b'\n').count(),
            _ => 0,
        })
        .sum();
    prop_assert!(
        w.engine.wants_input(conn),
        "stalled: open, all effects done, not wanting input ({} lines sent, {} answered, \
         partial line of {} bytes, max_line {}, last byte {:?})",
        model.lines.len(),
        answered,
        model.partial,
        max_line,
        sent.last().map(|&b| char::from(b))
    );
    Ok(())
}

/// Replies a legacy client may read.
fn legacy_documented(text: &str) -> bool {
    matches!(text, "Passcode is sent" | "False") || is_login(text)
}

proptest! {
    #![proptest_config(proptest_config())]

    /// The parsers take any bytes without panicking, and their results are
    /// consistent with their definitions and bounds.
    #[test]
    fn parsers_take_any_bytes(bytes in structured_bytes(), max_line in 0usize..80) {
        if let Ok(request) = Request::parse(&bytes) {
            // A parsed request renders to a line that parses back to it.
            let line = request.render();
            prop_assert_eq!(Request::parse(line.as_bytes()), Ok(request));
        }
        frame_is_consistent(&bytes, max_line)?;
        let whole = bytes.len() >= legacy::MAX_REQUEST || bytes.iter().filter(|&&b| b == b'|').count() >= 4;
        prop_assert_eq!(legacy::is_whole(&bytes), whole);
        let request = legacy::request(&bytes);
        let head = &bytes[..bytes.len().min(legacy::MAX_REQUEST)];
        prop_assert!(head.starts_with(request) && request.len() + 2 >= head.len());
        if !head.ends_with(b"\n") && !head.ends_with(b"\r") {
            prop_assert_eq!(request, head);
        }
        let _ = Request::parse(request);
    }

    /// Long buffers too: the legacy cap and the framing bound.
    #[test]
    fn parsers_take_long_buffers(fill in any::<u8>(), len in 0usize..3000, tail in structured_bytes(), max_line in 0usize..4200) {
        let mut bytes = vec![fill; len];
        bytes.extend_from_slice(&tail);
        let _ = Request::parse(&bytes);
        frame_is_consistent(&bytes, max_line)?;
        prop_assert!(legacy::request(&bytes).len() <= legacy::MAX_REQUEST);
        prop_assert_eq!(legacy::is_whole(&bytes), bytes.len() >= legacy::MAX_REQUEST || bytes.iter().filter(|&&b| b == b'|').count() >= 4);
    }

    /// Arbitrary chunks on a native connection: one documented reply per
    /// line, in order; a line over the limit gets `error|line_too_long` and
    /// a close; otherwise the engine holds at most the partial line
    /// (max_line + 1 bytes) and keeps reading.
    #[test]
    fn native_connection_takes_any_chunks(
        max_line in 16usize..=160,
        pieces in vec(native_piece(), 0..10),
        cuts in vec(any::<u16>(), 0..10),
        steps in vec(0usize..4, 0..12),
        seed in any::<u64>(),
    ) {
        let mut w = World::new(Config { max_line, ..Config::default() }, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        w.complete_in(Completion::Shuffled(seed));
        let stream = pieces.concat();
        let conn = w.connect(Listener::Native, ip4(1));
        for (i, chunk) in split(&stream, &cuts).into_iter().enumerate() {
            w.send(conn, chunk);
            for _ in 0..steps.get(i).copied().unwrap_or(0) {
                w.step();
            }
        }
        w.settle();

        let model = frame_model(&stream, max_line);
        let received = w.take_received(conn);
        prop_assert!(received.is_empty() || received.ends_with(b"\n"), "a reply without its line feed");
        let text = String::from_utf8(received).map_err(|_| TestCaseError::fail("a reply that is not UTF-8"))?;
        let replies: Vec<&str> = text.lines().collect();
        for reply in &replies {
            prop_assert!(documented(reply), "undocumented reply {:?}", reply);
        }
        prop_assert_eq!(replies.len(), model.lines.len() + usize::from(model.too_long), "one reply per line");
        for (line, reply) in model.lines.iter().zip(&replies) {
            prop_assert!(fits(line, reply), "{:?} answered {:?}", String::from_utf8_lossy(line), reply);
        }
        if model.too_long {
            prop_assert_eq!(replies.last().copied(), Some("error|line_too_long"));
            prop_assert!(w.is_half_closed(conn), "the write side is shut after the last reply");
            let linger = w.engine.config().close_linger;
            w.advance(linger);
            prop_assert!(w.is_closed(conn));
            closed_last(&w, conn)?;
            prop_assert_eq!(w.engine.connections(), 0);
        } else {
            // Open, with nothing in flight and at most a partial line of
            // max_line + 1 bytes (the framing's slack for a CR) held.
            prop_assert!(!w.is_closed(conn));
            prop_assert_eq!(w.engine.connections(), 1);
            prop_assert_eq!(w.engine.effects_in_flight(), 0);
            prop_assert!(model.partial <= max_line + 1);
        }
    }

    /// The same chunks, read the way the driving contract says: only while
    /// `wants_input` is true. A connection that is open, with every effect
    /// completed and only a partial line within the bound held, must want
    /// input; otherwise the runtime stops reading and the line is never
    /// answered (the partial-line timeout closes it without a reply).
    #[test]
    fn native_connection_never_stalls_a_conforming_runtime(
        max_line in 16usize..=160,
        pieces in vec(prop_oneof![
            3 => native_line_or_noise(),
            // A line of exactly max_line bytes, its CR and LF possibly
            // split across reads.
            1 => Just(b"\x00MAXLINE".to_vec()),
        ], 0..10),
        cuts in vec(any::<u16>(), 0..10),
        seed in any::<u64>(),
    ) {
        let full = format!("{}\r\n", "q".repeat(max_line)).into_bytes();
        let stream: Vec<u8> =
            pieces.iter().flat_map(|p| if p == b"\x00MAXLINE" { full.clone() } else { p.clone() }).collect();
        let mut w = World::new(Config { max_line, ..Config::default() }, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        w.complete_in(Completion::Shuffled(seed));
        let conn = w.connect(Listener::Native, ip4(1));
        let mut fed = 0;
        for chunk in split(&stream, &cuts) {
            w.settle();
            if w.is_closed(conn) {
                break;
            }
            keeps_reading(&w, conn, &stream[..fed], max_line)?;
            w.send(conn, chunk);
            fed += chunk.len();
        }
        w.settle();
        if !w.is_closed(conn) {
            keeps_reading(&w, conn, &stream, max_line)?;
        }
    }

    /// Arbitrary chunks on a legacy connection: at most 1024 bytes are
    /// taken, exactly one pickled reply of the three the old clients know
    /// (or none if nothing was sent), then a close.
    #[test]
    fn legacy_connection_takes_any_chunks(
        login_port in any::<bool>(),
        pieces in vec(prop_oneof![
            3 => structured_bytes(),
            1 => (1usize..1500).prop_map(|n| vec![b'y'; n]),
            2 => select(vec![
                passcode_line(MAC, EMAIL, PHONE, PASSWORD),
                login_line(MAC, EMAIL, PHONE, PASSWORD, "ABC123"),
                login_line(MAC, EMAIL, PHONE, "wrong", "ABC123"),
            ]).prop_map(String::into_bytes),
        ], 0..5),
        cuts in vec(any::<u16>(), 0..6),
        seed in any::<u64>(),
    ) {
        let listener = if login_port { Listener::LegacyLogin } else { Listener::LegacyPasscode };
        let config = Config::default();
        let wait = config.legacy_wait.max(config.partial_line_timeout);
        let mut w = World::new(config, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let stream = pieces.concat();
        let conn = w.connect(listener, ip4(2));
        let mut buf: Vec<u8> = Vec::new();
        let mut served: Option<Vec<u8>> = None;
        for chunk in split(&stream, &cuts) {
            w.send(conn, chunk);
            if served.is_none() {
                let room = legacy::MAX_REQUEST - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if legacy::is_whole(&buf) {
                    served = Some(buf.clone());
                    // Nothing more is taken as the request; once the reply is
                    // out, input is read only to be discarded.
                    prop_assert!(!w.engine.wants_input(conn) || w.is_half_closed(conn));
                }
            }
        }
        w.settle();
        w.advance(wait);
        w.settle();
        w.advance(w.engine.config().close_linger);

        prop_assert!(w.is_closed(conn), "a legacy connection left open");
        prop_assert_eq!(w.engine.connections(), 0);
        closed_last(&w, conn)?;
        let received = w.take_received(conn);
        if buf.is_empty() {
            prop_assert!(received.is_empty());
        } else {
            let (text, used) = unpickle(&received).ok_or_else(|| TestCaseError::fail("not one pickle"))?;
            prop_assert_eq!(used, received.len(), "more than one reply");
            prop_assert!(legacy_documented(&text), "undocumented legacy reply {:?}", text);
            let request = served.unwrap_or(buf);
            let fitting = matches!(
                (Request::parse(legacy::request(&request)), listener),
                (Ok(Request::Passcode(_)), Listener::LegacyPasscode) | (Ok(Request::Login(_)), Listener::LegacyLogin)
            );
            if !fitting {
                prop_assert_eq!(text.as_str(), "False");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1b. Rendering then parsing gives the request back
// ---------------------------------------------------------------------------

/// Text with no `|` and no control character, at most `max` bytes; with
/// some weight on exactly `max` bytes.
fn field(min: usize, max: usize) -> impl Strategy<Value = String> {
    let ch = any::<char>().prop_map(|c| if c == '|' || c.is_control() { '.' } else { c });
    let any_text = vec(ch, 0..=max).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        while s.len() < min {
            s.push('a');
        }
        s
    });
    prop_oneof![
        4 => any_text,
        1 => vec(select(b"abcXYZ019@.-_ ".to_vec()), max..=max).prop_map(|b| String::from_utf8(b).unwrap_or_default()),
    ]
}

#[derive(Clone, Debug)]
enum OwnedRequest {
    Passcode { mac: [u8; 6], password: String, phone: String, email: String },
    Login { mac: [u8; 6], email: String, phone: String, password: String, passcode: String },
    Token { token: [u8; 32], mac: [u8; 6], request: String, data: Option<String> },
}

fn owned_request() -> impl Strategy<Value = OwnedRequest> {
    let data = prop_oneof![
        Just(None),
        vec(prop_oneof![field(0, 20), Just("|".to_owned())], 0..6).prop_map(|parts| Some(parts.concat())),
    ];
    prop_oneof![
        (any::<[u8; 6]>(), field(0, 100), field(0, MAX_PHONE), field(1, MAX_EMAIL))
            .prop_map(|(mac, password, phone, email)| OwnedRequest::Passcode { mac, password, phone, email }),
        (any::<[u8; 6]>(), field(1, MAX_EMAIL), field(0, MAX_PHONE), field(0, 100), field(0, 12)).prop_map(
            |(mac, email, phone, password, passcode)| OwnedRequest::Login { mac, email, phone, password, passcode }
        ),
        (any::<[u8; 32]>(), any::<[u8; 6]>(), field(0, 40), data)
            .prop_map(|(token, mac, request, data)| OwnedRequest::Token { token, mac, request, data }),
    ]
}

fn base_token(bytes: &[u8; 32]) -> BaseToken {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    BaseToken::parse(hex.as_bytes()).unwrap_or_else(|| unreachable!("64 hex digits"))
}

proptest! {
    #![proptest_config(proptest_config())]

    /// `Request::render` then `Request::parse` is the identity on valid
    /// requests.
    #[test]
    fn render_then_parse_round_trips(owned in owned_request()) {
        let request = match &owned {
            OwnedRequest::Passcode { mac, password, phone, email } => Request::Passcode(PasscodeRequest {
                mac: Mac::from_octets(*mac),
                password,
                phone,
                email,
            }),
            OwnedRequest::Login { mac, email, phone, password, passcode } => Request::Login(LoginRequest {
                mac: Mac::from_octets(*mac),
                email,
                phone,
                password,
                passcode,
            }),
            OwnedRequest::Token { token, mac, request, data } => Request::Token(TokenRequest {
                token: base_token(token),
                mac: Mac::from_octets(*mac),
                request,
                data: data.as_deref(),
            }),
        };
        let line = request.render();
        prop_assert_eq!(Request::parse(line.as_bytes()), Ok(request));
    }
}

/// Every reply the engine can send.
fn any_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::PasscodeSent),
        any::<[u8; 32]>().prop_map(|t| Reply::LoggedIn(base_token(&t))),
        Just(Reply::False),
        Just(Reply::Authorized),
        any::<[u8; 32]>().prop_map(|t| Reply::Renew(base_token(&t))),
        Just(Reply::Unauthorized),
        select(ErrorCode::ALL.to_vec()).prop_map(Reply::Error),
    ]
}

proptest! {
    #![proptest_config(proptest_config())]

    /// `Reply::parse` is the inverse of the native rendering: the line a
    /// reply is sent as, framed and parsed as a client does, is the reply.
    #[test]
    fn reply_render_then_parse_round_trips(reply in any_reply()) {
        let mut bytes = Vec::new();
        reply.encode_native(&mut bytes);
        let Frame::Line { line, consumed } = next_frame(&bytes, bytes.len()) else {
            panic!("a reply is not one line: {bytes:?}");
        };
        prop_assert_eq!(consumed, bytes.len());
        let text = std::str::from_utf8(line).expect("a reply is UTF-8");
        prop_assert_eq!(Reply::parse(text), Ok(reply));
    }

    /// Whatever text comes, `Reply::parse` answers without panicking, and a
    /// line it takes is exactly the rendering of what it took it for.
    #[test]
    fn reply_parse_takes_only_renderings(text in prop_oneof![
        any::<String>(),
        (select(vec!["renew|", "error|", LOGIN_PREFIX, "authorized", "False"]), "[0-9a-fA-F_|a-z ]{0,70}")
            .prop_map(|(head, tail)| format!("{head}{tail}")),
    ]) {
        if let Ok(reply) = Reply::parse(&text) {
            let mut again = Vec::new();
            reply.write_text(&mut again);
            prop_assert_eq!(again, text.into_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Determinism
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Connect { listener: u8, ip: u8 },
    Passcode { conn: u8, user: u8, good: bool },
    Login { conn: u8, user: u8, good_password: bool, mailed_code: bool },
    Token { conn: u8, right_mac: bool },
    Raw { conn: u8, bytes: Vec<u8> },
    Advance { ms: u32 },
    Step { n: u8 },
    HangUp { conn: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, 0u8..4).prop_map(|(listener, ip)| Op::Connect { listener, ip }),
        2 => (any::<u8>(), 0u8..2, any::<bool>()).prop_map(|(conn, user, good)| Op::Passcode { conn, user, good }),
        3 => (any::<u8>(), 0u8..2, any::<bool>(), any::<bool>()).prop_map(|(conn, user, good_password, mailed_code)| {
            Op::Login { conn, user, good_password, mailed_code }
        }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(conn, right_mac)| Op::Token { conn, right_mac }),
        1 => (any::<u8>(), vec(any::<u8>(), 0..40)).prop_map(|(conn, bytes)| Op::Raw { conn, bytes }),
        2 => prop_oneof![0u32..2_000, 0u32..4_000_000].prop_map(|ms| Op::Advance { ms }),
        3 => (0u8..6).prop_map(|n| Op::Step { n }),
        1 => any::<u8>().prop_map(|conn| Op::HangUp { conn }),
    ]
}

const USERS: [&str; 2] = ["u0@example.com", "u1@example.com"];

/// The last token a reply carried (login or renewal), on any connection.
fn last_token(w: &World) -> Option<String> {
    w.outputs.iter().rev().find_map(|o| {
        let Output::Transmit { bytes, .. } = o else { return None };
        [LOGIN_PREFIX.as_bytes(), b"renew|"].iter().find_map(|prefix| {
            let at = bytes.windows(prefix.len()).rposition(|win| win == *prefix)?;
            let hex = bytes.get(at + prefix.len()..at + prefix.len() + 64)?;
            String::from_utf8(hex.to_vec()).ok()
        })
    })
}

fn run_script(seed: u64, ops: &[Op]) -> World {
    let mut w = World::new(Config::default(), seed);
    for user in USERS {
        w.store.add_user(user, PHONE, PASSWORD);
    }
    w.complete_in(Completion::Shuffled(seed));
    let ips = [ip4(1), ip4(2), "::ffff:10.0.0.1".parse().unwrap_or(ip4(1)), "2001:db8::7".parse().unwrap_or(ip4(3))];
    let mut conns: Vec<(ConnId, Listener)> = Vec::new();
    for op in ops {
        let pick = |conns: &[(ConnId, Listener)], i: u8| conns.get(usize::from(i) % conns.len().max(1)).copied();
        let send_line = |w: &mut World, target: Option<(ConnId, Listener)>, line: &str| {
            if let Some((conn, listener)) = target {
                match listener {
                    Listener::Native => w.send(conn, format!("{line}\n").as_bytes()),
                    _ => w.send(conn, line.as_bytes()),
                }
            }
        };
        match op {
            Op::Connect { listener, ip } => {
                let listener =
                    [Listener::Native, Listener::LegacyPasscode, Listener::LegacyLogin][usize::from(*listener)];
                let conn = w.connect(listener, ips[usize::from(*ip)]);
                conns.push((conn, listener));
            }
            Op::Passcode { conn, user, good } => {
                let password = if *good { PASSWORD } else { "nope" };
                let line = passcode_line(MAC, USERS[usize::from(*user)], PHONE, password);
                send_line(&mut w, pick(&conns, *conn), &line);
            }
            Op::Login { conn, user, good_password, mailed_code } => {
                let email = USERS[usize::from(*user)];
                let code = if *mailed_code { w.passcode_for(email) } else { None };
                let password = if *good_password { PASSWORD } else { "nope" };
                let line = login_line(MAC, email, PHONE, password, code.as_deref().unwrap_or("AAAAAA"));
                send_line(&mut w, pick(&conns, *conn), &line);
            }
            Op::Token { conn, right_mac } => {
                let token = last_token(&w).unwrap_or_else(|| "cd".repeat(32));
                let line = token_line(&token, if *right_mac { MAC } else { OTHER_MAC });
                send_line(&mut w, pick(&conns, *conn), &line);
            }
            Op::Raw { conn, bytes } => {
                if let Some((conn, _)) = pick(&conns, *conn) {
                    w.send(conn, bytes);
                }
            }
            Op::Advance { ms: n } => w.advance(ms(i64::from(*n))),
            Op::Step { n } => {
                for _ in 0..*n {
                    w.step();
                }
            }
            Op::HangUp { conn } => {
                if let Some((conn, _)) = pick(&conns, *conn) {
                    w.hang_up(conn);
                    conns.retain(|(c, _)| *c != conn);
                }
            }
        }
    }
    w.settle();
    w
}

proptest! {
    #![proptest_config(proptest_config())]

    /// The same script with the same seed gives the same outputs, byte for
    /// byte.
    #[test]
    fn same_inputs_same_outputs(seed in any::<u64>(), ops in vec(op(), 0..40)) {
        let a = run_script(seed, &ops);
        let b = run_script(seed, &ops);
        prop_assert!(a.outputs == b.outputs, "outputs differ");
        prop_assert!(a.mailbox == b.mailbox, "mail differs");
        prop_assert_eq!(a.verifications, b.verifications);
        prop_assert_eq!(a.store.commits, b.store.commits);
    }
}

// ---------------------------------------------------------------------------
// 3. A passcode logs in at most once
// ---------------------------------------------------------------------------

/// Reads the one reply on a connection, native or legacy.
fn one_reply(w: &mut World, conn: ConnId, listener: Listener) -> Result<String, TestCaseError> {
    let bytes = w.take_received(conn);
    match listener {
        Listener::Native => {
            let text = String::from_utf8(bytes).map_err(|_| TestCaseError::fail("reply not UTF-8"))?;
            let line = text.strip_suffix('\n').ok_or_else(|| TestCaseError::fail("no reply line"))?;
            prop_assert!(!line.contains('\n'), "more than one reply");
            Ok(line.to_owned())
        }
        _ => {
            let (text, used) = unpickle(&bytes).ok_or_else(|| TestCaseError::fail("not a pickle"))?;
            prop_assert_eq!(used, bytes.len(), "more than one reply");
            Ok(text)
        }
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Concurrent logins with one passcode, some with the right code and
    /// some (fewer than the passcode's guesses) with a wrong one: exactly
    /// one token, and never again afterwards. Each attempt's outcome is
    /// known from what it carried: a wrong code gets `False`; a right one
    /// gets the token or, having lost the race for it, `False`. Wrong
    /// guesses cannot make every right attempt lose: each guess is reserved
    /// before it is compared, they take fewer places than the passcode
    /// has, so a right attempt always gets one, and the first to consume
    /// the passcode logs in.
    #[test]
    fn passcode_logs_in_at_most_once(
        correct in 2usize..10,
        wrong in 0usize..5,
        legacy_mask in any::<u16>(),
        interleave in prop_oneof![Just(Vec::new()), vec(0usize..4, 0..14)],
        seed in any::<u64>(),
    ) {
        let config = Config::default();
        prop_assert!(wrong < config.passcode.max_guesses as usize, "the generator keeps a place for a right code");
        let mut w = World::new(config, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let ip = ip4(9);
        let code = fresh_passcode(&mut w, ip, MAC)?;
        w.complete_in(Completion::Shuffled(seed));

        // Wrong guesses are spread among the correct logins.
        let mut rights = vec![true; correct];
        for i in 0..wrong {
            let at = (seed.rotate_left(8 * i as u32) % (rights.len() as u64 + 1)) as usize;
            rights.insert(at, false);
        }
        let mut conns = Vec::new();
        for (i, right) in rights.into_iter().enumerate() {
            let guess = if right { code.clone() } else { other_code(&code, seed.rotate_left(i as u32)) };
            prop_assert_eq!(guess == code, right);
            let listener = if legacy_mask >> i & 1 == 1 { Listener::LegacyLogin } else { Listener::Native };
            let conn = w.connect(listener, ip);
            let line = login_line(MAC, EMAIL, PHONE, PASSWORD, &guess);
            match listener {
                Listener::Native => w.send(conn, format!("{line}\n").as_bytes()),
                _ => w.send(conn, line.as_bytes()),
            }
            conns.push((conn, listener, right));
            for _ in 0..interleave.get(i).copied().unwrap_or(0) {
                w.step();
            }
        }
        w.settle();

        let mut tokens = Vec::new();
        for &(conn, listener, right) in &conns {
            let reply = one_reply(&mut w, conn, listener)?;
            match reply.strip_prefix(LOGIN_PREFIX) {
                Some(token) => {
                    prop_assert!(right, "a wrong passcode logged in");
                    prop_assert!(is_token_hex(token));
                    tokens.push(token.to_owned());
                }
                // A wrong code, or a right one that lost the race.
                None => prop_assert_eq!(reply.as_str(), "False", "right code: {}", right),
            }
        }
        prop_assert_eq!(tokens.len(), 1, "{} logins with one passcode, {} of {} attempts wrong", tokens.len(), wrong, conns.len());
        // Once it has logged in, the passcode is gone.
        let again = native(&mut w, ip, &login_line(MAC, EMAIL, PHONE, PASSWORD, &code));
        prop_assert_eq!(again.as_str(), "False", "a passcode logged in twice");
        for token in tokens {
            prop_assert_eq!(native(&mut w, ip, &token_line(&token, MAC)), "authorized");
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Nothing is authorized past its lifetime
// ---------------------------------------------------------------------------

/// A session as the test models it.
struct Model {
    token: String,
    expires_at: DateTime<Utc>,
    end_of_life: Option<DateTime<Utc>>,
}

impl Model {
    fn new(token: String, now: DateTime<Utc>, config: &Config) -> Model {
        let max_age = config.session.max_age;
        let end_of_life = (max_age > TimeDelta::zero()).then(|| now + max_age);
        let expires_at = end_of_life.map_or(now + config.session.token_ttl, |e| e.min(now + config.session.token_ttl));
        Model { token, expires_at, end_of_life }
    }

    fn alive(&self, now: DateTime<Utc>) -> bool {
        self.end_of_life.is_none_or(|e| now < e)
    }

    fn renewed(&mut self, token: String, now: DateTime<Utc>, config: &Config) {
        let expiry = now + config.session.token_ttl;
        self.token = token;
        self.expires_at = self.end_of_life.map_or(expiry, |e| e.min(expiry));
    }
}

fn session_config(ttl_secs: i64, max_age_secs: i64, passcode_secs: i64) -> Config {
    let mut config = Config::default();
    config.session.token_ttl = secs(ttl_secs);
    config.session.max_age = secs(max_age_secs);
    config.passcode.lifetime = secs(passcode_secs);
    config
}

/// How often the lifetime property checked each side of each deadline.
#[derive(Default)]
struct Lifetimes {
    cases: Cell<u32>,
    passcode_late: Cell<u32>,
    passcode_in_time: Cell<u32>,
    token_late: Cell<u32>,
    token_in_time: Cell<u32>,
}

impl Lifetimes {
    /// Counts a case in which `checked` held at least once.
    fn count(counter: &Cell<u32>, checked: bool) {
        counter.set(counter.get() + u32::from(checked));
    }
}

/// A passcode at or after its expiry gives `False`; a token at or after its
/// expiry is never `authorized`. Inside their lifetimes both work.
///
/// Every case checks a passcode and then tokens: a case whose passcode was
/// tried too late gets its token from a fresh one, and the tokens are
/// checked last at exactly their expiry. The share of cases that checked
/// each side of each deadline is asserted at the end, so the generator
/// cannot drift into checking only one side.
#[test]
fn nothing_is_authorized_past_its_lifetime() {
    let strategy =
        (1i64..=600, 1i64..=7200, prop_oneof![Just(0i64), 1i64..=50_000], delay(), vec(delay(), 1..10), any::<u64>());
    let seen = Lifetimes::default();
    let mut runner = proptest::test_runner::TestRunner::new(proptest_config());
    let outcome = runner.run(&strategy, |(passcode_secs, ttl_secs, max_age_secs, passcode_delay, delays, seed)| {
        seen.cases.set(seen.cases.get() + 1);
        let config = session_config(ttl_secs, max_age_secs, passcode_secs);
        let mut w = World::new(config.clone(), seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let ip = ip4(4);
        let code = fresh_passcode(&mut w, ip, MAC)?;
        let passcode_expiry = w.now + config.passcode.lifetime;
        let by = passcode_delay.from(w.now, passcode_expiry, config.passcode.lifetime * 2);
        w.advance(by);
        let mut reply = native(&mut w, ip, &login_line(MAC, EMAIL, PHONE, PASSWORD, &code));
        let late = w.now >= passcode_expiry;
        Lifetimes::count(&seen.passcode_late, late);
        Lifetimes::count(&seen.passcode_in_time, !late);
        if late {
            prop_assert_eq!(
                reply.as_str(),
                "False",
                "a passcode worked {} ms past its expiry",
                (w.now - passcode_expiry).num_milliseconds()
            );
            // And it stays dead.
            let again = native(&mut w, ip, &login_line(MAC, EMAIL, PHONE, PASSWORD, &code));
            prop_assert_eq!(again.as_str(), "False");
            // A fresh passcode, used at once, for the tokens.
            let code = fresh_passcode(&mut w, ip, MAC)?;
            reply = native(&mut w, ip, &login_line(MAC, EMAIL, PHONE, PASSWORD, &code));
        }
        let token =
            reply.strip_prefix(LOGIN_PREFIX).ok_or_else(|| TestCaseError::fail(format!("login refused: {reply}")))?;
        let mut session = Model::new(token.to_owned(), w.now, &config);

        let (mut token_late, mut token_in_time) = (false, false);
        // The last check is at exactly the token's expiry, the boundary.
        for d in delays.into_iter().chain([Delay::Exactly]) {
            let by = d.from(w.now, session.expires_at, config.session.token_ttl * 3);
            w.advance(by);
            let reply = native(&mut w, ip, &token_line(&session.token, MAC));
            if w.now < session.expires_at {
                token_in_time = true;
                prop_assert_eq!(reply.as_str(), "authorized", "a token refused inside its lifetime");
                continue;
            }
            token_late = true;
            prop_assert_ne!(
                reply.as_str(),
                "authorized",
                "a token authorized {} ms past its expiry",
                (w.now - session.expires_at).num_milliseconds()
            );
            if session.alive(w.now) {
                let new =
                    reply.strip_prefix("renew|").ok_or_else(|| TestCaseError::fail(format!("no renewal: {reply}")))?;
                prop_assert!(is_token_hex(new));
                session.renewed(new.to_owned(), w.now, &config);
            } else {
                prop_assert_eq!(reply.as_str(), "unauthorized");
            }
        }
        Lifetimes::count(&seen.token_late, token_late);
        Lifetimes::count(&seen.token_in_time, token_in_time);
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // Shares measured over 1,000 cases: about 62 % and 37 % for the
    // passcode, 100 % and 72 % for the tokens. The floors leave room for
    // chance, none for a generator that stops reaching a side.
    let cases = seen.cases.get();
    for (what, counter, floor) in [
        ("a passcode tried at or after its expiry", &seen.passcode_late, 50),
        ("a passcode tried in time", &seen.passcode_in_time, 25),
        ("a token checked at or after its expiry", &seen.token_late, 95),
        ("a token checked inside its lifetime", &seen.token_in_time, 60),
    ] {
        let share = counter.get() * 100 / cases;
        eprintln!("{what}: {share} % of {cases} cases");
        assert!(share >= floor, "{what}: in {share} % of {cases} cases, under {floor} %");
    }
}

// ---------------------------------------------------------------------------
// 5. A token is bound to its MAC and IP
// ---------------------------------------------------------------------------

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        (0u8..4).prop_map(ip4),
    ]
}

/// Other spellings of the same device and address.
fn respell(mac: Mac, ip: IpAddr, how: u8) -> (String, IpAddr) {
    let text = mac.to_string();
    let mac = match how % 3 {
        0 => text,
        1 => text.to_uppercase().replace(':', "-"),
        _ => text.replace(':', ""),
    };
    let ip = match normalize_ip(ip) {
        IpAddr::V4(v4) if how >= 3 => IpAddr::V6(v4.to_ipv6_mapped()),
        other => other,
    };
    (mac, ip)
}

proptest! {
    #![proptest_config(proptest_config())]

    /// A token presented with another MAC, from another IP, or both, is
    /// `unauthorized`, whether it is valid or expired; the right device
    /// still gets through afterwards.
    #[test]
    fn token_is_bound_to_mac_and_ip(
        mac in any::<[u8; 6]>(),
        other_mac in any::<[u8; 6]>(),
        ip in any_ip(),
        other_ip in any_ip(),
        when in delay(),
        spelling in 0u8..6,
        seed in any::<u64>(),
    ) {
        let (mac, other_mac) = (Mac::from_octets(mac), Mac::from_octets(other_mac));
        prop_assume!(mac != other_mac && normalize_ip(ip) != normalize_ip(other_ip));
        let config = Config::default();
        let mut w = World::new(config.clone(), seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let (mac_text, other_text) = (mac.to_string(), other_mac.to_string());
        let token = w.login(ip, &mac_text, EMAIL, PHONE, PASSWORD).map_err(TestCaseError::fail)?;
        let session = Model::new(token.clone(), w.now, &config);
        let by = when.from(w.now, session.expires_at, config.session.token_ttl * 3);
        w.advance(by);

        for (m, i) in [(&other_text, ip), (&mac_text, other_ip), (&other_text, other_ip)] {
            let reply = native(&mut w, i, &token_line(&token, m));
            prop_assert_eq!(reply.as_str(), "unauthorized", "presented with mac {} from {}", m, i);
        }
        let (m, i) = respell(mac, ip, spelling);
        let reply = native(&mut w, i, &token_line(&token, &m));
        if w.now < session.expires_at {
            prop_assert_eq!(reply.as_str(), "authorized");
        } else {
            prop_assert!(is_renew(&reply), "the right device got {:?}", reply);
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Rotation, and the absolute session age
// ---------------------------------------------------------------------------

/// A token the session rotated away, as the test models it.
struct Rotated {
    token: String,
    at: DateTime<Utc>,
    successor: String,
}

/// One burst of checks of the session's current token: for each send, the
/// connection (of four), how many copies of the line it pipelines, and how
/// many effects complete before the next send (so checks arrive before,
/// during and after the rotation commits).
fn burst() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
    vec((0usize..4, 1usize..5, 0usize..6), 1..8)
}

/// Every reply line a connection got, in order.
fn reply_lines(w: &mut World, conn: ConnId) -> Result<Vec<String>, TestCaseError> {
    let text = String::from_utf8(w.take_received(conn)).map_err(|_| TestCaseError::fail("reply not UTF-8"))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// How often the renewal property reached each rule.
#[derive(Default)]
struct Renewals {
    cases: Cell<u32>,
    /// A burst of two or more checks all told the one successor.
    shared: Cell<u32>,
    /// A rotated-away token told its successor again within the grace.
    in_grace: Cell<u32>,
    /// A rotated-away token after the grace revoked its session.
    after_grace: Cell<u32>,
    /// A rotated-away token from another binding revoked its session.
    other_binding: Cell<u32>,
}

/// Renewal as devices use it (docs/PROTOCOL.md, "Renewal"). However
/// the checks of one expired token interleave across connections and
/// pipelines, and in whatever order their effects complete:
/// - every one of them gets `renew|X` for one X, the token's only
///   successor, and the store holds at most one session;
/// - X is `authorized`;
/// - a rotated-away token from its own binding within `renew_grace` of
///   its rotation gets its successor again, and otherwise (after the
///   grace, or from another MAC or IP) revokes the whole session, the
///   current token included;
/// - nothing renews past the session's absolute age.
///
/// The share of cases that reached each rule is asserted at the end.
#[test]
fn renewal_gives_one_successor_and_revokes_on_reuse() {
    // Which rotated-away token comes back (the latest, or any), from where
    // (0 and 1: its own device), and when.
    let old = proptest::option::of((any::<usize>(), 0u8..4, prop_oneof![Just(0i64), 0i64..25_000]));
    let strategy = (
        1i64..=3600,
        prop_oneof![Just(0i64), 1i64..=12],
        0i64..3600,
        prop_oneof![Just(0i64), 1i64..=20_000],
        vec((delay(), burst(), any::<bool>(), old), 1..6),
        any::<u64>(),
    );
    let seen = Renewals::default();
    let mut runner = proptest::test_runner::TestRunner::new(proptest_config());
    let outcome = runner.run(&strategy, |(ttl_secs, max_age_factor, max_age_jitter, grace_ms, steps, seed)| {
        seen.cases.set(seen.cases.get() + 1);
        let max_age = if max_age_factor == 0 { 0 } else { ttl_secs * max_age_factor + max_age_jitter };
        let mut config = session_config(ttl_secs, max_age, 180);
        config.session.renew_grace = ms(grace_ms);
        let mut w = World::new(config.clone(), seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        w.complete_in(Completion::Shuffled(seed));
        let (ip, other_ip) = (ip4(6), ip4(7));
        let token = w.login(ip, MAC, EMAIL, PHONE, PASSWORD).map_err(TestCaseError::fail)?;
        let mut session = Model::new(token, w.now, &config);
        let mut rotated: Vec<Rotated> = Vec::new();
        let mut revoked = false;
        // Which of `seen`'s rules this case reached.
        let mut reached = [false; 4];

        for (d, sends, toward_end, old) in steps {
            let target = match session.end_of_life {
                Some(end) if toward_end => end,
                _ => session.expires_at,
            };
            let by = d.from(w.now, target, config.session.token_ttl * 3);
            w.advance(by);

            let line = format!("{}\n", token_line(&session.token, MAC));
            let conns: Vec<ConnId> = (0..4).map(|_| w.connect(Listener::Native, ip)).collect();
            let mut sent = 0;
            for (conn, copies, steps) in sends {
                w.send(conns[conn], line.repeat(copies).as_bytes());
                sent += copies;
                for _ in 0..steps {
                    w.step();
                }
            }
            w.settle();
            let mut replies = Vec::new();
            for &conn in &conns {
                replies.extend(reply_lines(&mut w, conn)?);
                w.hang_up(conn);
            }
            prop_assert_eq!(replies.len(), sent);
            prop_assert!(w.store.sessions.len() <= 1, "{} sessions of one login", w.store.sessions.len());

            if revoked || !session.alive(w.now) {
                prop_assert!(replies.iter().all(|r| r == "unauthorized"), "{:?}", replies);
            } else if w.now < session.expires_at {
                prop_assert!(replies.iter().all(|r| r == "authorized"), "{:?}", replies);
            } else {
                let first = replies[0].clone();
                prop_assert!(is_renew(&first), "{:?}", replies);
                prop_assert!(replies.iter().all(|r| *r == first), "more than one successor: {:?}", replies);
                reached[0] |= replies.len() > 1;
                let new = first["renew|".len()..].to_owned();
                prop_assert!(new != session.token && rotated.iter().all(|r| r.token != new), "a successor seen before");
                let old = std::mem::replace(&mut session.token, new.clone());
                rotated.push(Rotated { token: old, at: w.now, successor: new.clone() });
                session.renewed(new, w.now, &config);
                prop_assert_eq!(native(&mut w, ip, &token_line(&session.token, MAC)), "authorized");
            }

            // A rotated-away token comes back, up to 25 s after this step's
            // checks: from its own device, or from another MAC or IP.
            if let (Some((pick, binding, after_ms)), false) = (old, rotated.is_empty()) {
                w.advance(ms(after_ms));
                let back = if pick % 2 == 0 { &rotated[rotated.len() - 1] } else { &rotated[pick % rotated.len()] };
                let own = binding < 2;
                let (mac, from) = match binding {
                    0 | 1 => (MAC, ip),
                    2 => (OTHER_MAC, ip),
                    _ => (MAC, other_ip),
                };
                let reply = native(&mut w, from, &token_line(&back.token, mac));
                let expected = if revoked || !session.alive(w.now) {
                    "unauthorized".to_owned()
                } else if own && w.now <= back.at + config.session.renew_grace {
                    reached[1] = true;
                    format!("renew|{}", back.successor)
                } else {
                    reached[if own { 2 } else { 3 }] = true;
                    revoked = true;
                    "unauthorized".to_owned()
                };
                prop_assert_eq!(
                    reply,
                    expected,
                    "a rotated-away token, {} ms after its rotation",
                    (w.now - back.at).num_milliseconds()
                );
                if revoked {
                    prop_assert!(
                        w.store.sessions.is_empty() && w.store.rotations.is_empty(),
                        "a revoked session left records"
                    );
                }
            }
        }
        for (counter, reached) in
            [&seen.shared, &seen.in_grace, &seen.after_grace, &seen.other_binding].iter().zip(reached)
        {
            counter.set(counter.get() + u32::from(reached));
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let cases = seen.cases.get();
    for (what, counter) in [
        ("a burst of checks all told the one successor", &seen.shared),
        ("a rotated-away token told its successor within the grace", &seen.in_grace),
        ("a rotated-away token after the grace revoking its session", &seen.after_grace),
        ("a rotated-away token from another binding revoking its session", &seen.other_binding),
    ] {
        let share = counter.get() * 100 / cases;
        eprintln!("{what}: in {share} % of {cases} cases");
        assert!(share >= 5, "{what}: in {share} % of {cases} cases, under 5 %");
    }
}

// ---------------------------------------------------------------------------
// 7. Failures look alike and cost the same
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Failure {
    UnknownEmail,
    WrongPassword,
    WrongPasscode,
    ExpiredPasscode,
    PasscodeRequestUnknownEmail,
    PasscodeRequestWrongPassword,
}

fn failure() -> impl Strategy<Value = Failure> {
    select(vec![
        Failure::UnknownEmail,
        Failure::WrongPassword,
        Failure::WrongPasscode,
        Failure::ExpiredPasscode,
        Failure::PasscodeRequestUnknownEmail,
        Failure::PasscodeRequestWrongPassword,
    ])
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Unknown email, wrong password, wrong passcode and expired passcode:
    /// the same reply bytes, and exactly one password verification each;
    /// passcode requests with an unknown email or a wrong password too.
    #[test]
    fn failures_look_alike(
        attempts in vec((failure(), any::<bool>(), any::<u64>()), 1..8),
        stranger in "[a-z]{1,12}@[a-z]{1,8}\\.[a-z]{2,3}",
        bad_password in "[ -{}~]{0,24}",
        late_ms in 0i64..100_000,
        seed in any::<u64>(),
    ) {
        prop_assume!(stranger != EMAIL && bad_password != PASSWORD);
        let mut config = Config::default();
        // Only the passcode request windows: the setup asks for many.
        config.limits.passcode_requests_per_email = Window::new(0, TimeDelta::minutes(15));
        config.limits.passcode_requests_per_ip = Window::new(0, TimeDelta::minutes(15));
        let lifetime = config.passcode.lifetime;
        let mut w = World::new(config, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let ip = ip4(7);
        let mut native_replies: Vec<Vec<u8>> = vec![b"False\n".to_vec()];
        let mut legacy_replies: Vec<Vec<u8>> = Vec::new();

        for (kind, legacy, pick) in attempts {
            let line = match kind {
                Failure::UnknownEmail => login_line(MAC, &stranger, PHONE, PASSWORD, "ABC123"),
                Failure::WrongPassword => {
                    let code = fresh_passcode(&mut w, ip, MAC)?;
                    login_line(MAC, EMAIL, PHONE, &bad_password, &code)
                }
                Failure::WrongPasscode => {
                    let code = fresh_passcode(&mut w, ip, MAC)?;
                    login_line(MAC, EMAIL, PHONE, PASSWORD, &other_code(&code, pick))
                }
                Failure::ExpiredPasscode => {
                    let code = fresh_passcode(&mut w, ip, MAC)?;
                    // Exactly at the expiry, or some time after it.
                    w.advance(lifetime + if pick % 3 == 0 { TimeDelta::zero() } else { ms(late_ms) });
                    login_line(MAC, EMAIL, PHONE, PASSWORD, &code)
                }
                Failure::PasscodeRequestUnknownEmail => passcode_line(MAC, &stranger, PHONE, PASSWORD),
                Failure::PasscodeRequestWrongPassword => passcode_line(MAC, EMAIL, PHONE, &bad_password),
            };
            let passcode_request = matches!(kind, Failure::PasscodeRequestUnknownEmail | Failure::PasscodeRequestWrongPassword);
            let before = w.verifications;
            let reply = if legacy {
                let listener = if passcode_request { Listener::LegacyPasscode } else { Listener::LegacyLogin };
                let reply = legacy_raw(&mut w, listener, ip, &line);
                legacy_replies.push(reply.clone());
                reply
            } else {
                let reply = native_raw(&mut w, ip, &line);
                native_replies.push(reply.clone());
                reply
            };
            prop_assert_eq!(w.verifications - before, 1, "{:?} made {} verifications", kind, w.verifications - before);
            if legacy {
                let (text, _) = unpickle(&reply).ok_or_else(|| TestCaseError::fail("not a pickle"))?;
                prop_assert_eq!(text.as_str(), "False", "{:?}", kind);
            }
        }
        prop_assert!(native_replies.windows(2).all(|p| p[0] == p[1]), "native replies differ: {:?}", native_replies);
        prop_assert!(legacy_replies.windows(2).all(|p| p[0] == p[1]), "legacy replies differ: {:?}", legacy_replies);
    }
}

// ---------------------------------------------------------------------------
// 8. Brute-force bounds: guesses per passcode, failure streak per account
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Miss {
    WrongPassword,
    WrongPasscode,
    WrongPhone,
    NoPasscode,
    PasscodeRequestWrongPassword,
}

fn miss() -> impl Strategy<Value = Miss> {
    select(vec![
        Miss::WrongPassword,
        Miss::WrongPasscode,
        Miss::WrongPhone,
        Miss::NoPasscode,
        Miss::PasscodeRequestWrongPassword,
    ])
}

/// One failed attempt for the account; must be answered `False`.
fn fail_once(w: &mut World, miss: Miss, ip: IpAddr, code: Option<&str>, pick: u64) -> Result<(), TestCaseError> {
    let guess = code.map_or_else(|| "ZZZZZZ".to_owned(), |c| other_code(c, pick));
    let line = match miss {
        Miss::WrongPassword => login_line(MAC, EMAIL, PHONE, "wrong", code.unwrap_or("AAAAAA")),
        Miss::WrongPasscode => login_line(MAC, EMAIL, PHONE, PASSWORD, &guess),
        Miss::WrongPhone => login_line(MAC, EMAIL, "0000", PASSWORD, code.unwrap_or("AAAAAA")),
        Miss::NoPasscode => login_line(OTHER_MAC, EMAIL, PHONE, PASSWORD, &guess),
        Miss::PasscodeRequestWrongPassword => passcode_line(MAC, EMAIL, PHONE, "wrong"),
    };
    let reply = native(w, ip, &line);
    prop_assert_eq!(reply.as_str(), "False", "{:?} was not answered False", miss);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config())]

    /// After 5 wrong guesses the right passcode no longer works; after 100
    /// consecutive failures the account refuses logins until the lockout
    /// after the last failure has passed, a fresh passcode notwithstanding.
    #[test]
    fn brute_force_is_bounded(
        guesses in 0u32..9,
        prefix in vec((miss(), any::<u64>()), 0..12),
        streak in vec((miss(), 0u32..90_000, 0u8..3, any::<u64>()), 99),
        last in prop_oneof![Just(Miss::WrongPassword), Just(Miss::NoPasscode), Just(Miss::PasscodeRequestWrongPassword)],
        lockout_secs in 1i64..=7200,
        early_ms in prop_oneof![Just(1i64), 1i64..5_000],
        seed in any::<u64>(),
    ) {
        let mut config = Config::default();
        let off = Window::new(0, TimeDelta::minutes(15));
        config.limits = Limits {
            passcode_requests_per_email: off,
            passcode_requests_per_ip: off,
            failures_per_email: off,
            failures_per_ip: off,
            lockout: secs(lockout_secs),
            ..config.limits
        };
        // Long enough that a passcode outlives the lockout.
        config.passcode.lifetime = secs(lockout_secs) + TimeDelta::hours(2);
        let max_guesses = config.passcode.max_guesses;
        prop_assert_eq!(config.limits.max_consecutive_failures, 100);
        let mut w = World::new(config.clone(), seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let ip = ip4(8);
        let right = login_line(MAC, EMAIL, PHONE, PASSWORD, "");

        // Wrong guesses against one passcode.
        let code = fresh_passcode(&mut w, ip, MAC)?;
        for g in 0..guesses {
            fail_once(&mut w, Miss::WrongPasscode, ip, Some(&code), seed.wrapping_add(u64::from(g)))?;
        }
        let reply = native(&mut w, ip, &format!("{right}{code}"));
        if guesses < max_guesses {
            prop_assert!(is_login(&reply), "the right passcode after {} wrong guesses: {:?}", guesses, reply);
        } else {
            prop_assert_eq!(reply.as_str(), "False", "the right passcode worked after {} wrong guesses", guesses);
        }

        // Some failures, then a success resets the streak.
        for (miss, pick) in prefix {
            fail_once(&mut w, miss, ip, None, pick)?;
        }
        let code = fresh_passcode(&mut w, ip, MAC)?;
        let reply = native(&mut w, ip, &format!("{right}{code}"));
        prop_assert!(is_login(&reply), "a success after a few failures: {:?}", reply);

        // 99 consecutive failures, spread over time and over addresses.
        for (miss, gap, from, pick) in streak {
            w.advance(ms(i64::from(gap)));
            // A wrong guess against a live passcode, when there is one to
            // guess at (asking for it is not a failure).
            let code = match miss {
                Miss::WrongPasscode => Some(fresh_passcode(&mut w, ip, MAC)?),
                _ => None,
            };
            fail_once(&mut w, miss, ip4(8 + from), code.as_deref(), pick)?;
        }
        // Not locked yet: a fresh passcode is issued.
        let fresh = fresh_passcode(&mut w, ip, MAC)?;
        // The 100th failure locks the account.
        fail_once(&mut w, last, ip4(9), None, seed)?;
        let locked_at = w.now;
        let unlock = locked_at + config.limits.lockout;
        prop_assert_eq!(native(&mut w, ip, &format!("{right}{fresh}")), "error|rate_limited");
        prop_assert_eq!(native(&mut w, ip, &passcode_line(MAC, EMAIL, PHONE, PASSWORD)), "error|rate_limited");
        w.advance(unlock - w.now - ms(early_ms).min(unlock - w.now));
        if w.now < unlock {
            prop_assert_eq!(native(&mut w, ip, &format!("{right}{fresh}")), "error|rate_limited", "unlocked early");
        }
        w.advance(unlock - w.now);
        let reply = native(&mut w, ip, &format!("{right}{fresh}"));
        prop_assert!(is_login(&reply), "still locked once the lockout passed: {:?}", reply);
    }
}

// ---------------------------------------------------------------------------
// Connection policy: what a connection may owe a peer that reads nothing
// ---------------------------------------------------------------------------

/// The longest reply encoding: a login reply pickled for a legacy client.
const LONGEST_REPLY: usize = 134;

#[derive(Clone, Debug)]
enum Flood {
    /// Lines that are not requests, answered at once.
    Malformed(u16),
    /// Wrong logins.
    Logins(u8),
    /// Token checks of unknown tokens.
    Checks(u8),
    /// Effects complete.
    Step(u8),
    /// The client reads this many bytes.
    Read(u16),
    /// The clock moves on (less than the write timeout).
    Wait(u16),
}

fn flood() -> impl Strategy<Value = Flood> {
    prop_oneof![
        3 => (1u16..2000).prop_map(Flood::Malformed),
        2 => (1u8..40).prop_map(Flood::Logins),
        2 => (1u8..40).prop_map(Flood::Checks),
        3 => any::<u8>().prop_map(Flood::Step),
        1 => any::<u16>().prop_map(Flood::Read),
        1 => (0u16..5000).prop_map(Flood::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES / 4, ..proptest_config() })]

    /// A client that reads little or nothing while it floods malformed
    /// lines, failing logins and token checks: what its connection owes
    /// never exceeds `max_backlog` plus one reply, the engine stops wanting
    /// its input at the bound, and a client beside it keeps being answered.
    #[test]
    fn unsent_output_never_exceeds_the_backlog_plus_one_reply(
        max_backlog in 1usize..4096,
        floods in vec(flood(), 1..40),
        seed in any::<u64>(),
    ) {
        let config = Config { max_backlog, ..Config::default() };
        let mut w = World::new(config, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        w.complete_in(Completion::Shuffled(seed));
        let deaf = w.connect(Listener::Native, ip4(1));
        let good = w.connect(Listener::Native, ip4(2));
        w.stop_reading(deaf);
        let unknown = token_line(&"cd".repeat(32), MAC);
        let wrong = login_line(MAC, EMAIL, PHONE, "wrong", "AAAAAA");
        for step in &floods {
            let lines = match step {
                Flood::Malformed(n) => "x\n".repeat(usize::from(*n)),
                Flood::Logins(n) => format!("{wrong}\n").repeat(usize::from(*n)),
                Flood::Checks(n) => format!("{unknown}\n").repeat(usize::from(*n)),
                _ => String::new(),
            };
            // The runtime reads only while the engine wants input.
            if !lines.is_empty() && w.engine.wants_input(deaf) {
                w.send(deaf, lines.as_bytes());
            }
            match step {
                Flood::Step(n) => (0..*n).for_each(|_| { w.step(); }),
                Flood::Read(n) => w.read_some(deaf, usize::from(*n)),
                Flood::Wait(ms) => w.advance(ms_delta(*ms)),
                _ => {}
            }
            let owed = w.unsent(deaf);
            prop_assert!(owed < max_backlog + LONGEST_REPLY, "owes {} bytes, max_backlog {}", owed, max_backlog);
            if owed >= max_backlog {
                prop_assert!(!w.engine.wants_input(deaf), "input wanted while {} bytes are owed", owed);
            }
            if !w.is_finished(good) {
                w.send(good, format!("{unknown}\n").as_bytes());
                w.settle();
                prop_assert_eq!(w.take_received(good), b"unauthorized\n".to_vec());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 9. Brute-force bounds under concurrency
// ---------------------------------------------------------------------------

/// The one limit a case sets tight (all others off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tight {
    FailuresPerEmail,
    FailuresPerIp,
    Streak,
    RequestsPerEmail,
    RequestsPerIp,
}

fn tight() -> impl Strategy<Value = Tight> {
    select(vec![
        Tight::FailuresPerEmail,
        Tight::FailuresPerIp,
        Tight::Streak,
        Tight::RequestsPerEmail,
        Tight::RequestsPerIp,
    ])
}

/// One attempt of a burst: which request, over which listener, from which
/// address, whether its password is right, and how many effects complete
/// before the next one is sent.
#[derive(Clone, Copy, Debug)]
struct Shot {
    passcode_request: bool,
    legacy: bool,
    from: u8,
    right_password: bool,
    steps: usize,
}

fn shot() -> impl Strategy<Value = Shot> {
    (any::<bool>(), any::<bool>(), 0u8..4, any::<bool>(), prop_oneof![Just(0usize), 0usize..5]).prop_map(
        |(passcode_request, legacy, from, right_password, steps)| Shot {
            passcode_request,
            legacy,
            from,
            right_password,
            steps,
        },
    )
}

/// Sends a request on a fresh connection of the listener for its kind.
fn send_request(w: &mut World, legacy: bool, passcode_request: bool, ip: IpAddr, line: &str) -> (ConnId, Listener) {
    let listener = match (legacy, passcode_request) {
        (false, _) => Listener::Native,
        (true, true) => Listener::LegacyPasscode,
        (true, false) => Listener::LegacyLogin,
    };
    let conn = w.connect(listener, ip);
    match listener {
        Listener::Native => w.send(conn, format!("{line}\n").as_bytes()),
        _ => w.send(conn, line.as_bytes()),
    }
    (conn, listener)
}

proptest! {
    #![proptest_config(proptest_config())]

    /// A burst of attempts against one tight limit, their effects completed
    /// in any order: the password verifications are exactly as many as the
    /// limit allows (never more, and no attempt refused below it), every
    /// other attempt is refused `rate_limited` with a notice naming the
    /// limit, over both listeners, from addresses inside one IPv6 /64 or
    /// one IPv4 address for the per-IP limits.
    #[test]
    fn bounds_hold_under_any_interleaving(
        tight in tight(),
        bound in 1u32..8,
        shots in vec(shot(), 1..24),
        v6 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let quarter = TimeDelta::minutes(15);
        let off = Window::new(0, quarter);
        let on = Window::new(bound, quarter);
        let mut config = Config { max_password_checks: 1000, ..Config::default() };
        config.limits = Limits {
            passcode_requests_per_email: off,
            passcode_requests_per_ip: off,
            failures_per_email: off,
            failures_per_ip: off,
            max_consecutive_failures: u32::MAX,
            lockout: TimeDelta::hours(1),
            ipv6_prefix: 64,
        };
        match tight {
            Tight::FailuresPerEmail => config.limits.failures_per_email = on,
            Tight::FailuresPerIp => config.limits.failures_per_ip = on,
            Tight::Streak => config.limits.max_consecutive_failures = bound,
            Tight::RequestsPerEmail => config.limits.passcode_requests_per_email = on,
            Tight::RequestsPerIp => config.limits.passcode_requests_per_ip = on,
        }
        let per_ip = matches!(tight, Tight::FailuresPerIp | Tight::RequestsPerIp);
        let requests_only = matches!(tight, Tight::RequestsPerEmail | Tight::RequestsPerIp);
        let mut w = World::new(config, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        w.complete_in(Completion::Shuffled(seed));

        let mut sent = Vec::new();
        for (i, s) in shots.iter().enumerate() {
            // A per-IP limit sees one client (one address, or one /64) and
            // many emails, known and unknown; the others one email from
            // many clients.
            let ip = match (per_ip, v6) {
                (true, true) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1 + u16::from(s.from))),
                (true, false) => ip4(7),
                (false, true) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, u16::from(s.from), 0, 0, 0, 1)),
                (false, false) => ip4(10 + s.from),
            };
            let email = if per_ip && i % 2 == 1 { format!("nobody{i}@example.com") } else { EMAIL.to_owned() };
            let passcode_request = requests_only || s.passcode_request;
            // The failure limits see wrong passwords only: a right one is
            // not a failure.
            let password = if requests_only && s.right_password { PASSWORD } else { "wrong" };
            let line = if passcode_request {
                passcode_line(MAC, &email, PHONE, password)
            } else {
                login_line(MAC, &email, PHONE, password, "AAAAAA")
            };
            sent.push(send_request(&mut w, s.legacy, passcode_request, ip, &line));
            for _ in 0..s.steps {
                w.step();
            }
        }
        w.settle();

        let allowed = shots.len().min(bound as usize);
        prop_assert_eq!(w.verifications, allowed as u64, "verifications under a bound of {}", bound);
        let mut refused = 0;
        for &(conn, listener) in &sent {
            let reply = one_reply(&mut w, conn, listener)?;
            match reply.as_str() {
                "Passcode is sent" | "False" => {}
                // The legacy ports answer every error `False`.
                _ if listener != Listener::Native => prop_assert_eq!(reply.as_str(), "False"),
                "error|rate_limited" => refused += 1,
                other => prop_assert!(false, "unexpected reply {:?}", other),
            }
        }
        let native = sent.iter().filter(|(_, l)| *l == Listener::Native).count();
        prop_assert!(refused <= native);
        let mut notices = 0;
        let name = match tight {
            Tight::FailuresPerEmail => "failures_per_email",
            Tight::FailuresPerIp => "failures_per_ip",
            Tight::Streak => "max_consecutive_failures",
            Tight::RequestsPerEmail => "passcode_requests_per_email",
            Tight::RequestsPerIp => "passcode_requests_per_ip",
        };
        let mut audited = 0;
        let mut locks = 0;
        while let Some(notice) = w.engine.poll_notice() {
            match notice {
                Notice::Refused { limit, .. } => {
                    prop_assert_eq!(limit, name);
                    notices += 1;
                }
                // Every request is in the audit trail; the refused ones as
                // such (a refusal by the streak says the account is locked).
                Notice::Audit(event) => {
                    audited += usize::from(matches!(event.outcome, Outcome::RateLimited | Outcome::Locked));
                    locks += usize::from(event.kind == AuditKind::AccountLocked);
                }
                other => return Err(TestCaseError::fail(format!("a notice that is no refusal: {other}"))),
            }
        }
        prop_assert_eq!(notices, shots.len() - allowed, "one notice per refusal");
        prop_assert_eq!(audited, notices, "each refusal in the audit trail");
        // The failures race from one read here, so which one filled the
        // streak may go untold; never more than one tells it.
        prop_assert!(locks <= usize::from(matches!(tight, Tight::Streak)), "{locks} locks told");
    }

    /// A burst of logins with the right password against one passcode, its
    /// effects completed in any order: at most `max_guesses` guesses are
    /// ever compared (each is counted first), at most one logs in, and a
    /// passcode that has taken its last guess no longer works.
    #[test]
    fn passcode_guesses_hold_under_bursts(
        wrong in 1usize..14,
        right_at in proptest::option::of(0usize..14),
        legacy_mask in any::<u16>(),
        steps in vec(0usize..4, 14),
        seed in any::<u64>(),
    ) {
        let quarter = TimeDelta::minutes(15);
        let off = Window::new(0, quarter);
        let mut config = Config { max_password_checks: 1000, ..Config::default() };
        config.limits = Limits {
            passcode_requests_per_email: off,
            passcode_requests_per_ip: off,
            failures_per_email: off,
            failures_per_ip: off,
            max_consecutive_failures: u32::MAX,
            ..config.limits
        };
        let max_guesses = config.passcode.max_guesses as usize;
        let mut w = World::new(config, seed);
        w.store.add_user(EMAIL, PHONE, PASSWORD);
        let ip = ip4(9);
        let code = fresh_passcode(&mut w, ip, MAC)?;
        w.complete_in(Completion::Shuffled(seed));

        let mut guesses: Vec<String> = (0..wrong).map(|i| other_code(&code, seed.rotate_left(i as u32))).collect();
        if let Some(at) = right_at {
            guesses.insert(at.min(wrong), code.clone());
        }
        let mut sent = Vec::new();
        for (i, guess) in guesses.iter().enumerate() {
            let line = login_line(MAC, EMAIL, PHONE, PASSWORD, guess);
            sent.push(send_request(&mut w, legacy_mask >> i & 1 == 1, false, ip, &line));
            for _ in 0..steps[i] {
                w.step();
            }
        }
        w.settle();
        prop_assert_eq!(w.verifications as usize, 1 + guesses.len(), "one verification per login");

        let mut tokens = 0;
        for &(conn, listener) in &sent {
            let reply = one_reply(&mut w, conn, listener)?;
            if reply.starts_with(LOGIN_PREFIX) {
                tokens += 1;
            } else {
                prop_assert_eq!(reply.as_str(), "False");
            }
        }
        prop_assert!(tokens <= 1);
        let counted = w.store.passcodes.values().map(|r| r.attempts as usize).next();
        if tokens == 1 {
            prop_assert!(counted.is_none(), "a passcode that logged in stays");
        } else {
            // Every guess compared was counted first, and no more than the
            // passcode allows were counted.
            let counted = counted.unwrap_or(0);
            prop_assert!(counted <= max_guesses, "{} guesses counted", counted);
            if right_at.is_none() {
                prop_assert_eq!(counted, wrong.min(max_guesses));
            }
            let again = native(&mut w, ip, &login_line(MAC, EMAIL, PHONE, PASSWORD, &code));
            if counted >= max_guesses {
                prop_assert_eq!(again.as_str(), "False", "the passcode worked after its last guess");
            } else {
                prop_assert!(is_login(&again), "{:?} with {} guesses counted", again, counted);
            }
        }
    }
}

fn ms_delta(ms: u16) -> TimeDelta {
    TimeDelta::milliseconds(i64::from(ms))
}
