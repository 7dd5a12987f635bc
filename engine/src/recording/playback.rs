//! The request lines' side of a replay: the engine, fed masked bytes, takes
//! each request line's parse outcome from the record instead of parsing its
//! buffer (see [`super::redact`]).

use std::collections::VecDeque;

use super::redact::RequestLine;

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

    /// Whether the engine took exactly the recorded lines.
    pub(crate) fn exact(&self) -> bool {
        !self.overdrawn && self.lines.is_empty()
    }
}
