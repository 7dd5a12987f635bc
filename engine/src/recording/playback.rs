//! The request lines' side of a replay: the engine, fed masked bytes, takes
//! each request line's parse outcome from the record instead of parsing its
//! buffer (see [`super::redact`]).

use std::collections::VecDeque;

use super::redact::RequestLine;
use crate::codec::proxy::Decoded;

/// The request lines one record holds, handed out in order. Asked for one
/// more than it holds, it gives a malformed line and remembers that it ran
/// dry (a divergence, which the replay reports).
#[derive(Default)]
pub(crate) struct Playback {
    lines: VecDeque<RequestLine>,
    overdrawn: bool,
}

impl Playback {
    pub(crate) fn new(lines: Vec<RequestLine>) -> Playback {
        Playback { lines: lines.into(), overdrawn: false }
    }

    /// The next request line the engine takes.
    pub(crate) fn next(&mut self) -> RequestLine {
        self.lines.pop_front().unwrap_or_else(|| {
            self.overdrawn = true;
            RequestLine::Malformed(crate::codec::request::ParseError::Empty)
        })
    }

    /// The recorded PROXY header decision, if the recording made it at
    /// this point (it is recorded in the call that made it, before that
    /// connection's lines), once `seen` bytes have come as they had then;
    /// otherwise the header was still incomplete.
    pub(crate) fn proxy_header(&mut self, seen: usize) -> Decoded {
        match self.lines.front() {
            Some(RequestLine::ProxyHeader { seen: at, decoded }) if seen as u64 >= u64::from(*at) => {
                let decoded = *decoded;
                self.lines.pop_front();
                decoded
            }
            _ => Decoded::Incomplete,
        }
    }

    /// Whether the engine took exactly the recorded lines.
    pub(crate) fn exact(&self) -> bool {
        !self.overdrawn && self.lines.is_empty()
    }
}
