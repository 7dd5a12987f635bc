//! Capture and replay in the engine: a recorded session replays byte for
//! byte, holds no password, and a damaged capture is reported, never a
//! panic.

use std::net::IpAddr;

use chrono::TimeDelta;
use tokenizer_auth_engine::capture::{Replay, ReplayError};
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
