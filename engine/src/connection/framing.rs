//! How each listener's protocol frames requests and replies, behind one
//! type, so that neither the engine nor a connection's life asks which
//! listener a connection came from.
//!
//! - **Native** (the line protocol): UTF-8 lines ending in LF, pipelined,
//!   up to `max_pipeline` in flight. A line longer than `max_line` ends the
//!   connection with `line_too_long`; a partial line waits at most
//!   `partial_line_timeout`, a silent connection `idle_timeout`.
//! - **Legacy** (the old server's two ports): one request of at most 1024
//!   bytes and no terminator, one pickled reply, then the close. A request
//!   whose first bytes came but not the rest is served as it is after
//!   `legacy_wait`; a connection that sends nothing is closed after
//!   `partial_line_timeout`. Each port serves one kind of request.

use chrono::{DateTime, Utc};

use super::Due;
use crate::codec::legacy;
use crate::codec::native::{Frame, next_frame};
use crate::codec::reply::Reply;
use crate::codec::request::Request;
use crate::config::Config;
use crate::io::Listener;

/// What the runtime may buffer for a connection that ignores
/// [`crate::Engine::wants_input`]; past it the connection is closed.
const MAX_BUFFERED: usize = 256 * 1024;

/// The protocol a connection speaks, from the listener that accepted it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Framing(Listener);

/// What became of received bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Receipt {
    /// Buffered: requests may be taken from them.
    Buffered,
    /// Nothing to do: the connection takes no input, or nothing came.
    Ignored,
    /// More than the runtime may buffer: the connection is dropped.
    Overflow,
}

/// The input side of a connection that takes requests: the bytes received
/// and not yet taken, and the instants its deadlines count from.
pub(crate) struct Inbox {
    /// Received bytes not yet taken as requests.
    pub(super) bytes: Vec<u8>,
    /// When the partial request in `bytes` began: for a native connection,
    /// the partial line after the last one taken; for a legacy one, its
    /// first byte.
    partial_since: Option<DateTime<Utc>>,
    opened_at: DateTime<Utc>,
    /// When bytes last came.
    last_active: DateTime<Utc>,
}

impl Inbox {
    pub(super) fn new(now: DateTime<Utc>) -> Inbox {
        Inbox { bytes: Vec::new(), partial_since: None, opened_at: now, last_active: now }
    }

    /// Puts back what is left of `buf` once its first `consumed` bytes were
    /// taken as requests. What is left is a partial request, which began
    /// now if a request was just taken before it (or nothing was partial).
    pub(super) fn keep(&mut self, mut buf: Vec<u8>, consumed: usize, now: DateTime<Utc>) {
        buf.drain(..consumed);
        if buf.is_empty() {
            self.partial_since = None;
        } else if consumed > 0 || self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
        self.bytes = buf;
    }
}

impl Framing {
    pub(crate) fn of(listener: Listener) -> Framing {
        Framing(listener)
    }

    /// The listener this framing is for.
    pub(crate) fn listener(self) -> Listener {
        self.0
    }

    /// Takes received bytes into a connection's inbox.
    pub(super) fn receive(self, inbox: &mut Inbox, bytes: &[u8], now: DateTime<Utc>) -> Receipt {
        inbox.last_active = now;
        match self.0 {
            Listener::Native => {
                if inbox.bytes.len() + bytes.len() > MAX_BUFFERED {
                    return Receipt::Overflow;
                }
                inbox.bytes.extend_from_slice(bytes);
            }
            Listener::LegacyPasscode | Listener::LegacyLogin => {
                if bytes.is_empty() {
                    return Receipt::Ignored;
                }
                // The old server read 1024 bytes once; what comes past them
                // is not part of the request.
                let room = legacy::MAX_REQUEST - inbox.bytes.len().min(legacy::MAX_REQUEST);
                inbox.bytes.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        Receipt::Buffered
    }

    /// The next whole request at the start of `buf`. A legacy request takes
    /// all of `buf`, and is the connection's only one.
    pub(crate) fn next_request(self, buf: &[u8], max_line: usize) -> Frame<'_> {
        match self.0 {
            Listener::Native => next_frame(buf, max_line),
            Listener::LegacyPasscode | Listener::LegacyLogin if legacy::is_whole(buf) => {
                Frame::Line { line: legacy::request(buf), consumed: buf.len() }
            }
            Listener::LegacyPasscode | Listener::LegacyLogin => Frame::Incomplete,
        }
    }

    /// The request in bytes whose rest did not come in time, served as it
    /// is.
    pub(crate) fn as_is(self, buf: &[u8]) -> &[u8] {
        match self.0 {
            Listener::Native => buf,
            Listener::LegacyPasscode | Listener::LegacyLogin => legacy::request(buf),
        }
    }

    /// Whether taking a request ends the connection's input.
    pub(super) fn one_request(self) -> bool {
        self.0 != Listener::Native
    }

    /// Requests a connection may have in flight before it takes no more.
    pub(crate) fn pipeline(self, config: &Config) -> usize {
        match self.0 {
            Listener::Native => config.max_pipeline,
            Listener::LegacyPasscode | Listener::LegacyLogin => 1,
        }
    }

    /// Whether the inbox has room for more bytes from the socket.
    pub(super) fn has_room(self, inbox: &Inbox, config: &Config) -> bool {
        match self.0 {
            // One byte past the line limit: a CR whose LF is still to come.
            Listener::Native => inbox.bytes.len() <= config.max_line.saturating_add(1),
            // A partial legacy request is short of its 1024 bytes.
            Listener::LegacyPasscode | Listener::LegacyLogin => true,
        }
    }

    /// When a connection waiting for requests is next looked at, and what
    /// its silence or its partial request then means.
    pub(super) fn waiting(self, inbox: &Inbox, config: &Config) -> (DateTime<Utc>, Due) {
        match self.0 {
            Listener::Native => {
                let idle = inbox.last_active + config.idle_timeout;
                let partial = inbox.partial_since.map(|t| t + config.partial_line_timeout);
                (partial.map_or(idle, |p| p.min(idle)), Due::Quiet)
            }
            Listener::LegacyPasscode | Listener::LegacyLogin => match inbox.partial_since {
                None => (inbox.opened_at + config.partial_line_timeout, Due::Quiet),
                Some(first) => (first + config.legacy_wait, Due::ServeAsIs),
            },
        }
    }

    /// Whether this listener serves the request; any other is answered
    /// `False` (`docs/PROTOCOL.md`: each old port takes one kind, the native
    /// port every kind).
    pub(crate) fn serves(self, request: &Request<'_>) -> bool {
        matches!(
            (request, self.0),
            (Request::Token(_), Listener::Native)
                | (Request::Passcode(_), Listener::Native | Listener::LegacyPasscode)
                | (Request::Login(_), Listener::Native | Listener::LegacyLogin)
        )
    }

    /// Writes a reply as this protocol spells it.
    pub(super) fn encode(self, reply: &Reply, out: &mut Vec<u8>) {
        match self.0 {
            Listener::Native => reply.encode_native(out),
            Listener::LegacyPasscode | Listener::LegacyLogin => reply.encode_legacy(out),
        }
    }
}
