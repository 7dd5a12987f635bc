//! The `capture_reader` target: any bytes as a capture, and as a client's
//! stream through the capture's redaction.

use std::net::{IpAddr, Ipv4Addr};

use chrono::TimeDelta;

use crate::codec::request::Request;
use crate::config::Config;
use crate::engine::Engine;
use crate::io::{ConnId, Input, Listener};
use crate::testkit::{TestRng, epoch};

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
    use crate::capture::{MAGIC, Replay};
    use crate::recording::redact::{RequestLine, mask};
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
    let mut rng = TestRng::new(u64::from(cut as u8));
    let now = epoch();
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
