//! Capture and replay in the engine: a recorded session replays byte for
//! byte, holds no password (whether its lines parse or not), a bounded
//! capture ends whole and says so, and a damaged capture is reported, never
//! a panic.

use std::net::IpAddr;

use chrono::TimeDelta;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use tokenizer_auth_engine::capture::{Replay, ReplayError};
use tokenizer_auth_engine::codec::legacy;
use tokenizer_auth_engine::codec::native::{Frame, next_frame};
use tokenizer_auth_engine::codec::request::Request;
use tokenizer_auth_engine::testkit::{Completion, World};
use tokenizer_auth_engine::{Config, Listener, PasswordHash, ServerKey, UserRecord};

const MAC: &str = "aa:bb:cc:dd:ee:ff";
const PASSWORD: &str = "pässwörd-😀-secret";

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A session touching every flow, recorded.
fn recorded_session() -> Vec<u8> {
    let mut w = World::new(Config::default(), 11);
    w.store.add_user("ada@example.com", "555", PASSWORD);
    w.store.put_user(UserRecord {
        email: "old@example.com".into(),
        phone: String::new(),
        password: PasswordHash::from_column("legacy-plaintext-pw"),
    });
    let mut capture = w.engine.start_capture();
    w.complete_in(Completion::Shuffled(3));
    let token = w.login(local(), MAC, "ada@example.com", "555", PASSWORD).unwrap();
    w.login(local(), MAC, "old@example.com", "", "legacy-plaintext-pw").unwrap();
    let c = w.connect(Listener::Native, local());
    // Split reads, a wrong password, garbage, a renewal, a legacy request.
    w.send(c, format!("require_passcode|{MAC}|wrong-{PASS}", PASS = &PASSWORD[..3]).as_bytes());
    w.send(c, b"|555|ada@example.com\nnot a request\n");
    w.settle();
    w.advance(TimeDelta::hours(2));
    let c = w.connect(Listener::Native, local());
    w.send(c, format!("{token}|{MAC}|get|x\n").as_bytes());
    w.settle();
    let legacy = w.connect(Listener::LegacyPasscode, local());
    w.send(legacy, format!("require_passcode|{MAC}|{PASSWORD}|555|ada@example.com").as_bytes());
    w.settle();
    w.advance(TimeDelta::minutes(5));
    capture.extend(w.engine.take_capture());
    capture
}

#[test]
fn a_recorded_session_replays_byte_for_byte() {
    let capture = recorded_session();
    let records = Replay::new(&capture).unwrap().run().unwrap();
    assert!(records > 30, "{records} records");
}

#[test]
fn a_capture_holds_no_password() {
    let capture = recorded_session();
    for secret in [PASSWORD, "legacy-plaintext-pw", "pässwörd", "secret"] {
        let found = capture.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{secret:?} is in the capture");
    }
}

#[test]
fn a_changed_capture_diverges_at_the_right_event() {
    let capture = recorded_session();
    // Change the first transmitted reply ("Passcode is sent" -> "Passcode is Sent").
    let at = capture.windows(16).position(|w| w == b"Passcode is sent").unwrap();
    let mut changed = capture.clone();
    changed[at + 12] = b'S';
    match Replay::new(&changed).unwrap().run() {
        Err(ReplayError::Divergence { record, expected, actual }) => {
            assert!(record > 1);
            assert!(expected.contains("Passcode is Sent"), "{expected}");
            assert!(actual.contains("Passcode is sent"), "{actual}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn damaged_captures_are_errors_not_panics() {
    let capture = recorded_session();
    assert!(matches!(Replay::new(b"hello"), Err(ReplayError::NotACapture(_))));
    assert!(matches!(Replay::new(&capture[..30]), Err(ReplayError::NotACapture(_))));
    for cut in [capture.len() - 1, capture.len() / 2] {
        let result = Replay::new(&capture[..cut]).unwrap().run();
        assert!(matches!(result, Err(ReplayError::Corrupt { .. } | ReplayError::Divergence { .. })), "{result:?}");
    }
    assert!(Replay::new(&capture[..100]).is_err(), "a cut header");
    // Every single-byte change is a clean error or a clean replay.
    for i in (0..capture.len()).step_by(7) {
        let mut changed = capture.clone();
        changed[i] ^= 0x5a;
        if let Ok(replay) = Replay::new(&changed) {
            let _ = replay.run();
        }
    }
}

#[test]
fn a_capture_holds_only_the_key_fingerprint_and_replays_only_with_that_key() {
    let key = ServerKey::from_bytes(*b"a server key of thirty-two bytes");
    let mut w = World::new(Config { server_key: key.clone(), ..Config::default() }, 5);
    w.store.add_user("ada@example.com", "555", PASSWORD);
    let mut capture = w.engine.start_capture();
    w.login(local(), MAC, "ada@example.com", "555", PASSWORD).unwrap();
    capture.extend(w.engine.take_capture());
    assert!(!capture.windows(ServerKey::LEN).any(|bytes| bytes == key.expose()), "the key is in the capture");

    assert!(Replay::with_key(&capture, &key).unwrap().run().unwrap() > 5);
    let other = ServerKey::from_bytes([1; 32]);
    match Replay::with_key(&capture, &other) {
        Err(ReplayError::WrongKey { recorded, given }) => {
            assert_eq!((recorded, given), (key.fingerprint(), other.fingerprint()));
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(matches!(Replay::new(&capture), Err(ReplayError::WrongKey { .. })));
}

/// The fields lines are made of: every kind's first field, MACs, emails,
/// phones and passcodes, and text that is none of them (empty, non-UTF-8,
/// control characters, C1 controls, wide characters).
fn a_field() -> impl Strategy<Value = Vec<u8>> {
    let known = select(vec![
        "require_passcode",
        MAC,
        "AABBCCDDEEFF",
        "ada@example.com",
        "555",
        "ABC123",
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "get",
        "",
    ])
    .prop_map(|f| f.as_bytes().to_vec());
    let text = "[a-z0-9 @.:\\-]{0,12}".prop_map(String::into_bytes);
    let odd = select(vec![&b"\xff\xfe"[..], b"nul\0", b"\x01", "c1\u{85}".as_bytes(), "w\u{1f600}".as_bytes(), b"\r"])
        .prop_map(<[u8]>::to_vec);
    prop_oneof![4 => known, 2 => text, 1 => odd]
}

/// A password that stands out: its marker occurs in no other field.
fn a_password() -> impl Strategy<Value = String> {
    "[A-Za-z0-9#%äö€😀 ]{0,10}".prop_map(|tail| format!("MARK~{tail}"))
}

/// The fields a parsed line keeps in a capture: all but the password, and
/// for a token request only the token and MAC.
fn kept_field(request: &Request<'_>, position: usize) -> bool {
    match request {
        Request::Passcode(_) => position != 2,
        Request::Login(_) => position != 3,
        Request::Token(_) => position < 2,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A marked password at any field position of any line, whether the
    /// line parses or not, on any listener and in any split of reads,
    /// never reaches the capture, and the capture replays exactly. (A line
    /// that parses keeps its other fields, which the engine uses; a marker
    /// put in one of them is that field, not a password.)
    #[test]
    fn a_password_at_any_field_never_reaches_the_capture(
        mut fields in vec(a_field(), 1..7),
        position in 0usize..7,
        password in a_password(),
        listener in select(vec![Listener::Native, Listener::LegacyPasscode, Listener::LegacyLogin]),
        ending in select(vec!["", "\n", "\r\n"]),
        cuts in vec(0usize..200, 0..4),
    ) {
        let position = position % fields.len();
        fields[position] = password.clone().into_bytes();
        let line = fields.join(&b'|');
        let mut bytes = line.clone();
        bytes.extend_from_slice(ending.as_bytes());
        if listener == Listener::Native && ending.is_empty() {
            bytes.push(b'\n');
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|n| n.min(bytes.len())).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        // Whether the line parses is decided on the line as the engine
        // frames it: a CR before the LF is not part of it, and a legacy
        // request is what came until it was whole (its trailing CR or LF
        // dropped).
        let framed = match listener {
            Listener::Native => match next_frame(&bytes, Config::default().max_line) {
                Frame::Line { line, .. } => line.to_vec(),
                _ => line.clone(),
            },
            _ => {
                let mut taken: Vec<u8> = Vec::new();
                for &cut in &cuts {
                    taken = bytes[..cut.min(legacy::MAX_REQUEST)].to_vec();
                    if legacy::is_whole(&taken) {
                        break;
                    }
                }
                legacy::request(&taken).to_vec()
            }
        };
        let kept = Request::parse(&framed).is_ok_and(|r| kept_field(&r, position));

        let mut w = World::new(Config::default(), 5);
        w.store.add_user("ada@example.com", "555", PASSWORD);
        let mut capture = w.engine.start_capture();
        let c = w.connect(listener, local());
        let mut from = 0;
        for cut in cuts {
            w.send(c, &bytes[from..cut.max(from)]);
            from = cut.max(from);
        }
        w.settle();
        w.advance(TimeDelta::seconds(30));
        w.settle();
        capture.extend(w.engine.take_capture());

        let found = capture.windows(password.len()).any(|win| win == password.as_bytes());
        prop_assert!(kept || !found, "the password of {:?} is in the capture", String::from_utf8_lossy(&line));
        if let Err(e) = Replay::new(&capture).and_then(Replay::run) {
            return Err(TestCaseError::fail(format!("{:?} does not replay: {e}", String::from_utf8_lossy(&line))));
        }
    }
}

/// The old server's three-field login (`MAC|EMAIL|PASSWORD`) on each
/// listener: answered as before, replayed exactly, and its password, which
/// sits where a parsed login has its phone, is nowhere in the capture.
#[test]
fn a_malformed_legacy_login_leaves_no_password() {
    for listener in [Listener::Native, Listener::LegacyLogin, Listener::LegacyPasscode] {
        let mut w = World::new(Config::default(), 3);
        let mut capture = w.engine.start_capture();
        let c = w.connect(listener, local());
        w.send(c, format!("{MAC}|ada@example.com|{PASSWORD}").as_bytes());
        if listener == Listener::Native {
            w.send(c, b"\n");
        }
        w.advance(TimeDelta::seconds(1));
        let reply = w.take_received(c);
        capture.extend(w.engine.take_capture());
        assert!(!capture.windows(PASSWORD.len()).any(|win| win == PASSWORD.as_bytes()), "{listener:?}");
        let shown = String::from_utf8_lossy(&reply);
        assert!(shown.contains(if listener == Listener::Native { "error|malformed" } else { "False" }), "{shown}");
        Replay::new(&capture).unwrap().run().unwrap();
    }
}

/// Records the session of `recorded_session` within `max` bytes, and
/// whether the engine said it stopped.
fn bounded_session(max: u64) -> (Vec<u8>, bool) {
    let mut w = World::new(Config::default(), 11);
    w.store.add_user("ada@example.com", "555", PASSWORD);
    let mut capture = w.engine.start_capture_bounded(max);
    let token = w.login(local(), MAC, "ada@example.com", "555", PASSWORD).unwrap();
    capture.extend(w.engine.take_capture());
    // The server goes on serving whatever happened to the capture.
    for _ in 0..20 {
        let c = w.connect(Listener::Native, local());
        assert_eq!(w.request(c, &format!("{token}|{MAC}|get")), "authorized");
        capture.extend(w.engine.take_capture());
    }
    (capture, w.engine.capture_stopped())
}

#[test]
fn a_bounded_capture_stops_whole_and_replay_says_where() {
    let (full, stopped) = bounded_session(u64::MAX);
    assert!(!stopped);
    let all = Replay::new(&full).unwrap().run().unwrap();
    for max in [600, 2_000, full.len() as u64 / 2, full.len() as u64 + 3] {
        let (capture, stopped) = bounded_session(max);
        assert!(stopped, "bound {max}");
        assert!(capture.len() as u64 <= max, "{} bytes over a bound of {max}", capture.len());
        assert_eq!(&capture[capture.len() - 4..], &[0, 0, 0, 0], "no end mark");
        let mut replay = Replay::new(&capture).unwrap();
        while replay.step().unwrap() {}
        assert!(replay.cut_at_bound());
        assert!(replay.records() < all, "bound {max}: {} of {all} records", replay.records());
        // What it holds is the start of the whole capture.
        assert_eq!(capture[..capture.len() - 4], full[..capture.len() - 4]);
    }
    let (capture, stopped) = bounded_session(full.len() as u64 + 4);
    assert!(!stopped && capture == full);
    let mut replay = Replay::new(&full).unwrap();
    while replay.step().unwrap() {}
    assert!(!replay.cut_at_bound());

    // Nothing may follow the end mark.
    let (mut capture, _) = bounded_session(2_000);
    capture.push(0);
    assert!(matches!(Replay::new(&capture).unwrap().run(), Err(ReplayError::Corrupt { .. })));
}

/// What a capture costs per token check (`cargo test -p
/// tokenizer-auth-engine --all-features --test capture -- --nocapture
/// per_token_check` prints it): masked bytes are written as their framing
/// bytes and a token line without its request fields, so a check costs no
/// more than its effect, its reply and its token.
#[test]
fn a_token_check_records_a_few_hundred_bytes_per_token_check() {
    let mut w = World::new(Config::default(), 1);
    w.store.add_user("ada@example.com", "555", PASSWORD);
    let token = w.login(local(), MAC, "ada@example.com", "555", PASSWORD).unwrap();
    let c = w.connect(Listener::Native, local());
    let header = w.engine.start_capture().len();
    let mut capture = Vec::new();
    let data = "x".repeat(500);
    for _ in 0..1000 {
        assert_eq!(w.request(c, &format!("{token}|{MAC}|get|{data}")), "authorized");
    }
    capture.extend(w.engine.take_capture());
    let per_check = capture.len() as f64 / 1000.0;
    println!("per_token_check: {per_check} bytes of capture (header {header} bytes)");
    // The 500 bytes of request data and the line itself are not in it:
    // with them a check would take more than 500 bytes.
    assert!(per_check < 500.0, "{per_check} bytes per check");
}
