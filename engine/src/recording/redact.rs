//! Keeping passwords out of captures, without depending on a line parsing.
//!
//! A capture keeps the client's bytes in two forms, neither of which can
//! hold a password:
//!
//! - **Received bytes are masked.** Every byte but the ones the engine's
//!   framing looks at becomes `*`: LF and CR (native lines, and the legacy
//!   request's optional line ending), and `|` on a legacy connection (a
//!   legacy request is whole at its fourth `|`). Until a line is taken as a
//!   request, the engine looks at nothing else: how long the buffered bytes
//!   are and where those bytes sit decide every framing outcome (a whole
//!   line, a partial one and its timeout, `line_too_long`, a legacy request
//!   being whole). So the masked bytes frame the same way on replay, and
//!   they need no guess about which field is a password, which a line split
//!   across reads could not give.
//! - **Each request line is recorded once it is taken**, as its parse
//!   outcome ([`RequestLine`]): a line that parses keeps the fields the
//!   engine uses and loses its password field (emptied; its position is
//!   certain once the line parsed) and, for a token request, the request and
//!   data fields, which the server never looks at. A line that does not
//!   parse keeps only why it does not: no byte of it is written, so none of
//!   its fields, whichever held a password, reaches the capture.
//!
//! Replay feeds the masked bytes and, where the engine takes a request line,
//! hands it the recorded one ([`super::playback`]); it parses to the same
//! outcome, so every output comes out the same.

use crate::codec::proxy::Decoded;
use crate::codec::request::{ParseError, Request};
use crate::io::Listener;

/// What a masked byte becomes.
pub(crate) const MASK: u8 = b'*';

/// Received bytes as a capture records them: only the framing bytes kept.
pub(crate) fn mask(listener: Listener, bytes: &[u8]) -> Vec<u8> {
    let legacy = listener != Listener::Native;
    bytes.iter().map(|&b| if b == b'\n' || b == b'\r' || (legacy && b == b'|') { b } else { MASK }).collect()
}

/// A request line as a capture records it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum RequestLine {
    /// A line that parsed, without its password (and, for a token request,
    /// without its request and data fields). It parses to the same request
    /// kind, with the same device, account, phone, passcode and token.
    Parsed(Vec<u8>),
    /// A line that does not parse, and why: nothing of its bytes.
    Malformed(ParseError),
    /// What the start of a native connection made as a PROXY protocol
    /// header (`codec::proxy`), once it was decided, and how many bytes
    /// had come by then: the masked bytes cannot be decoded again, and
    /// replay decides at the same length. (The client's address is not a
    /// secret; the header holds nothing else the engine keeps.)
    ProxyHeader {
        /// Bytes received when it was decided.
        seen: u32,
        /// The decision.
        decoded: Decoded,
    },
}

/// The reason replay gives for a header recorded as invalid.
pub(crate) const RECORDED_INVALID: &str = "recorded as not a valid PROXY header";

/// Which `|`-separated field of a parsed request holds its password.
fn password_field(request: &Request<'_>) -> Option<usize> {
    match request {
        Request::Passcode(_) => Some(2),
        Request::Login(_) => Some(3),
        Request::Token(_) => None,
    }
}

impl RequestLine {
    /// The record of `line`, whose parse outcome is `parsed`.
    pub(crate) fn of(line: &[u8], parsed: &Result<Request<'_>, ParseError>) -> RequestLine {
        let request = match parsed {
            Ok(request) => request,
            Err(why) => return RequestLine::Malformed(*why),
        };
        let mut out = Vec::with_capacity(line.len());
        let kept = match request {
            // TOKEN|MAC| and an empty request field: all a token check uses.
            Request::Token(_) => 2,
            // A parsed passcode request or login has exactly five fields.
            Request::Passcode(_) | Request::Login(_) => 5,
        };
        for (i, field) in line.split(|&b| b == b'|').take(kept).enumerate() {
            if i > 0 {
                out.push(b'|');
            }
            if password_field(request) != Some(i) {
                out.extend_from_slice(field);
            }
        }
        if let Request::Token(_) = request {
            out.push(b'|');
        }
        RequestLine::Parsed(out)
    }

    /// The parse outcome replay hands the engine.
    pub(crate) fn parse(&self) -> Result<Request<'_>, ParseError> {
        match self {
            RequestLine::Parsed(line) => Request::parse(line),
            RequestLine::Malformed(why) => Err(*why),
            // A header where a line was taken: the replay has diverged.
            RequestLine::ProxyHeader { .. } => Err(ParseError::Empty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn record(line: &str) -> RequestLine {
        RequestLine::of(line.as_bytes(), &Request::parse(line.as_bytes()))
    }

    #[test]
    fn parsed_lines_lose_their_password_and_nothing_the_engine_uses() {
        let cases = [
            ("require_passcode|AA-BB-CC-DD-EE-FF|s3cr3t|555|a@b.c", "require_passcode|AA-BB-CC-DD-EE-FF||555|a@b.c"),
            ("aabbccddeeff|a@b.c|555|hunter2|ABC123", "aabbccddeeff|a@b.c|555||ABC123"),
            (&format!("{TOKEN}|aa:bb:cc:dd:ee:ff|get|x|y"), &format!("{TOKEN}|aa:bb:cc:dd:ee:ff|")),
            (&format!("{TOKEN}|aa:bb:cc:dd:ee:ff|get"), &format!("{TOKEN}|aa:bb:cc:dd:ee:ff|")),
        ];
        for (line, kept) in cases {
            let recorded = record(line);
            assert_eq!(recorded, RequestLine::Parsed(kept.as_bytes().to_vec()), "{line}");
            let (before, after) = (Request::parse(line.as_bytes()).unwrap(), recorded.parse().unwrap());
            match (before, after) {
                (Request::Passcode(a), Request::Passcode(b)) => {
                    assert_eq!((a.mac, a.phone, a.email, b.password), (b.mac, b.phone, b.email, ""));
                }
                (Request::Login(a), Request::Login(b)) => {
                    assert_eq!((a.mac, a.email, a.phone, a.passcode), (b.mac, b.email, b.phone, b.passcode));
                    assert_eq!(b.password, "");
                }
                (Request::Token(a), Request::Token(b)) => assert_eq!((a.token, a.mac), (b.token, b.mac)),
                (a, b) => panic!("{a:?} became {b:?}"),
            }
        }
    }

    #[test]
    fn a_line_that_does_not_parse_keeps_only_why() {
        // The old server's three-field login, with the password third.
        assert_eq!(record("aa:bb:cc:dd:ee:ff|a@b.c|hunter2"), RequestLine::Malformed(ParseError::Fields));
        assert_eq!(record("hunter2"), RequestLine::Malformed(ParseError::Fields));
        assert_eq!(record("hunter2|a@b.c|5|pw|C"), RequestLine::Malformed(ParseError::Mac));
        assert_eq!(RequestLine::of(b"a|\xff", &Request::parse(b"a|\xff")), RequestLine::Malformed(ParseError::NotUtf8));
        assert_eq!(RequestLine::Malformed(ParseError::Email).parse(), Err(ParseError::Email));
    }

    #[test]
    fn masks_keep_only_the_framing() {
        let bytes = "aa|pässwörd\r\n|x".as_bytes();
        let native = mask(Listener::Native, bytes);
        assert_eq!(native.len(), bytes.len());
        assert!(native.iter().all(|&b| b == MASK || b == b'\r' || b == b'\n'));
        assert_eq!(&native[native.len() - 4..], b"\r\n**");
        let legacy = mask(Listener::LegacyLogin, b"aa|b|c\n");
        assert_eq!(legacy, b"**|*|*\n");
    }
}
