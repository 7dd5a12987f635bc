//! The `native_line` target: the native framing, the request parser, and
//! the reply parser clients use.

use crate::codec::native::{Frame, next_frame};
use crate::codec::reply::Reply;
use crate::codec::request::Request;
use crate::config::Config;

/// The `native_line` target: the first byte picks a line limit, the rest is
/// a receive buffer. Frames it (with that limit and the default one)
/// against a model of the framing rules, parses every line and every
/// `\n`-separated piece, and renders each parsed request back: the
/// rendering must parse to the same request. Every piece is also parsed
/// as a reply, which must be exactly the rendering of what it parsed to.
pub fn native_line(data: &[u8]) {
    let Some((&limit, buf)) = data.split_first() else { return };
    for max_line in [usize::from(limit), Config::default().max_line] {
        frame_all(buf, max_line);
    }
    check_request(buf);
    for piece in buf.split(|&b| b == b'\n') {
        let piece = piece.strip_suffix(b"\r").unwrap_or(piece);
        check_request(piece);
        check_reply(piece);
    }
}

/// Parses one line as a reply; one that parses renders to the same bytes.
fn check_reply(line: &[u8]) {
    let Ok(text) = core::str::from_utf8(line) else { return };
    let Ok(reply) = Reply::parse(text) else { return };
    let mut again = Vec::new();
    reply.write_text(&mut again);
    assert_eq!(again, line, "{reply:?} parsed from a line it does not render to");
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
pub(super) fn check_request(line: &[u8]) {
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
