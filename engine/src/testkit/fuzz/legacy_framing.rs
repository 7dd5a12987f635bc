//! The `legacy_framing` target: the legacy framing, its request, the
//! pickled replies and one legacy connection end to end.

use std::net::{IpAddr, Ipv4Addr};

use chrono::TimeDelta;

use super::engine::{USERS, is_login};
use super::native_line::check_request;
use crate::codec::legacy;
use crate::codec::pickle;
use crate::codec::request::Request;
use crate::config::Config;
use crate::io::Listener;
use crate::store::UserRecord;
use crate::testkit::World;

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
