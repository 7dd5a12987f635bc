//! One client connection as the engine keeps it, and its life as a state
//! machine. Every move a connection makes is in the table below, and each
//! is made by one method here; the engine calls these and never sets a
//! state itself. How requests and replies are framed on each listener is
//! [`Framing`]'s; the connection policy of `docs/SECURITY.md`
//! ("Connections") is decided here and in `engine.rs`, once for every
//! runtime.
//!
//! ```text
//! state      event (method)                          next       the runtime is told
//! ---------  --------------------------------------  ---------  -------------------
//! Open       receive, took                           Open
//! Open       took (the listener's one request)       Draining
//! Open       refuse (too many connections)           Draining   the error reply
//! Open       line_too_long                           Draining   the error reply
//! Open       give_up_waiting (legacy_wait is over)   Draining
//! Open       stop_reading (quiet, shutdown)          Draining
//! Open       peer_closed                             Draining
//! Draining   peer_closed                             Draining
//! Draining   settle (owes nothing; peer reading)     Lingering  HalfClose
//! Draining   settle (owes nothing; peer gone)        Closed     Close
//! Lingering  peer_closed                             Closed     Close (by abort)
//! any        abort (a failed socket, a write stall,  Closed     Close
//!            the linger or the grace over, a flood)
//! ```
//!
//! Events that mean nothing in a state are ignored there (`receive`,
//! `stop_reading`, `settle`, `peer_closed` and `abort` come in any state);
//! the others (`took`, `refuse`, `line_too_long`, `give_up_waiting`) are
//! only ever called on an open connection, and any move not in the table
//! panics in debug builds, so the tests catch it.
//!
//! Besides its state, a connection keeps its replies in request order and
//! the bytes it owes the peer: those decide when it may settle, and when a
//! peer that takes nothing is dropped.

mod framing;

use std::collections::VecDeque;
use std::mem;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use framing::Inbox;
pub(crate) use framing::{Framing, Receipt};

use crate::codec::reply::{ErrorCode, Reply};
use crate::config::Config;
use crate::io::Listener;
use crate::metrics::Metrics;
use crate::token::PeerDigests;

/// Where a connection is in its life.
enum Phase {
    /// Taking requests, with what came of the next ones.
    Open(Inbox),
    /// Taking no more requests; once every reply is out and taken by the
    /// peer's socket, the write side is shut (or, if the peer is gone, the
    /// connection closed).
    Draining {
        /// The peer said it will send nothing more.
        peer_gone: bool,
    },
    /// Everything owed is out and the write side is shut
    /// ([`crate::Output::HalfClose`]). What still arrives is read and
    /// discarded until the peer closes or this instant, so that closing
    /// with unread input does not reset the connection before the peer has
    /// read its last reply.
    Lingering(DateTime<Utc>),
    /// A close is queued; nothing more happens on it.
    Closed,
}

impl Phase {
    /// The table of the module docs: whether a connection may move from
    /// this state to `next`.
    fn may_become(&self, next: &Phase) -> bool {
        matches!(
            (self, next),
            (Phase::Open(_), Phase::Draining { .. } | Phase::Closed)
                | (Phase::Draining { peer_gone: false }, Phase::Draining { peer_gone: true } | Phase::Lingering(_))
                | (Phase::Draining { .. } | Phase::Lingering(_), Phase::Closed)
        )
    }
}

/// What a connection's deadline is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Due {
    /// Bytes have waited `write_timeout` with none taken: the peer reads
    /// nothing, so the connection is dropped with them.
    WriteStall,
    /// The linger after a half-close is over.
    Linger,
    /// Idle, or a partial request that never completed: closed gracefully.
    Quiet,
    /// The first bytes of a request came, the rest did not in time: they
    /// are served as they are.
    ServeAsIs,
}

/// How a drained connection settled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Settled {
    /// The write side is to be shut; the connection lingers.
    HalfClosed,
    /// The peer is gone too: the connection is to be closed.
    Closed,
}

/// What the peer closing its side leaves to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PeerClosed {
    /// Nothing: the connection is closed already.
    Nothing,
    /// Replies owed still go out: pump the connection.
    Drain,
    /// Nothing more will come to discard: abort the lingering connection.
    Abort,
}

/// A connection aborted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Aborted {
    /// It was lingering (and so not counted among those served).
    pub(crate) lingered: bool,
}

pub(crate) struct Connection {
    /// Tells this connection from an earlier one with the same id.
    pub(crate) epoch: u64,
    /// Its IP, with its part of the master tokens derived on it.
    pub(crate) peer: PeerDigests,
    framing: Framing,
    phase: Phase,
    /// One slot per request in flight, in request order.
    replies: VecDeque<Option<Reply>>,
    /// Sequence number of the front slot.
    head_seq: u64,
    /// Encoded replies not yet handed to the runtime.
    outbuf: Vec<u8>,
    /// Bytes handed to the runtime that its socket has not taken yet.
    unacked: usize,
    /// Since when bytes have been owed with none taken by the peer.
    stalled_since: Option<DateTime<Utc>>,
    /// A transmit for this connection is queued.
    transmit_queued: bool,
    /// The earliest timer entry for this connection.
    timer_at: Option<DateTime<Utc>>,
    /// Whether its first bytes are (or must not be) a PROXY header.
    pub(crate) proxy: ProxyState,
}

/// What a connection's first bytes may be (see `codec::proxy`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ProxyState {
    /// A balancer in `proxy_protocol_from`: a header must come first.
    Expected,
    /// Anyone else on the native listener: a header is refused.
    Refused,
    /// Decided, or a legacy listener: requests only.
    Done,
}

impl Connection {
    /// A connection that takes requests.
    pub(crate) fn new(epoch: u64, peer: IpAddr, listener: Listener, now: DateTime<Utc>) -> Connection {
        Connection {
            epoch,
            peer: PeerDigests::new(peer),
            framing: Framing::of(listener),
            phase: Phase::Open(Inbox::new(now)),
            replies: VecDeque::new(),
            head_seq: 0,
            outbuf: Vec::new(),
            unacked: 0,
            stalled_since: None,
            transmit_queued: false,
            timer_at: None,
            proxy: ProxyState::Done,
        }
    }

    /// The protocol the connection speaks.
    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// Moves to `next`, which the table must allow from the current state.
    fn enter(&mut self, next: Phase) -> Phase {
        debug_assert!(self.phase.may_become(&next), "a connection moved from {:?} to {:?}", self.phase, next);
        mem::replace(&mut self.phase, next)
    }

    /// Whether the connection is closed (its close queued or out).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    // Taking requests.

    /// Bytes arrived. Only an open connection takes them; lingering input
    /// is discarded, and a runtime that reads past `wants_input` elsewhere
    /// loses what it read.
    pub(crate) fn receive(&mut self, bytes: &[u8], now: DateTime<Utc>) -> Receipt {
        match &mut self.phase {
            Phase::Open(inbox) => self.framing.receive(inbox, bytes, now),
            _ => Receipt::Ignored,
        }
    }

    /// The bytes buffered for requests, taken out to be framed; `None` if
    /// the connection takes no requests or nothing is buffered. They are
    /// given back with [`Connection::took`] or dropped with
    /// [`Connection::line_too_long`].
    pub(crate) fn take_input(&mut self) -> Option<Vec<u8>> {
        match &mut self.phase {
            Phase::Open(inbox) if !inbox.bytes.is_empty() => Some(mem::take(&mut inbox.bytes)),
            _ => None,
        }
    }

    /// Requests were taken from the first `consumed` bytes of `buf`: the
    /// rest waits for more. A listener that serves one request takes no
    /// more once it took it.
    pub(crate) fn took(&mut self, buf: Vec<u8>, consumed: usize, now: DateTime<Utc>) {
        if consumed > 0 && self.framing.one_request() {
            self.enter(Phase::Draining { peer_gone: false });
            return;
        }
        match &mut self.phase {
            Phase::Open(inbox) => inbox.keep(buf, consumed, now),
            _ => debug_assert!(false, "input given back to a connection that takes none"),
        }
    }

    /// Refuses the connection as it opens: `reply`, then the close.
    pub(crate) fn refuse(&mut self, reply: Reply) {
        let seq = self.open_slot();
        self.fill(seq, reply);
        self.enter(Phase::Draining { peer_gone: false });
    }

    /// A line is too long: it is answered `line_too_long` after the replies
    /// before it, and nothing more is read.
    pub(crate) fn line_too_long(&mut self) {
        self.refuse(Reply::Error(ErrorCode::LineTooLong));
    }

    /// The rest of a request did not come in time: takes no more, and
    /// gives what came, to be served as it is.
    pub(crate) fn give_up_waiting(&mut self) -> Vec<u8> {
        match self.enter(Phase::Draining { peer_gone: false }) {
            Phase::Open(inbox) => inbox.bytes,
            _ => Vec::new(),
        }
    }

    /// Takes no more requests (the connection was quiet too long, or the
    /// engine is shutting down): what is buffered is dropped, replies owed
    /// still go out. Nothing changes on a connection not taking requests.
    pub(crate) fn stop_reading(&mut self) {
        if matches!(self.phase, Phase::Open(_)) {
            self.enter(Phase::Draining { peer_gone: false });
        }
    }

    // The peer going, and the end.

    /// The peer will send nothing more. Replies still owed go out first (a
    /// client may half-close after its last request); a lingering
    /// connection has nothing left to wait for.
    pub(crate) fn peer_closed(&mut self) -> PeerClosed {
        match self.phase {
            Phase::Closed => PeerClosed::Nothing,
            Phase::Lingering(_) => PeerClosed::Abort,
            Phase::Open(_) | Phase::Draining { .. } => {
                if !matches!(self.phase, Phase::Draining { peer_gone: true }) {
                    self.enter(Phase::Draining { peer_gone: true });
                }
                PeerClosed::Drain
            }
        }
    }

    /// Once a draining connection owes nothing: its write side is shut and
    /// it lingers, or, if the peer is gone, it closes. Nothing changes
    /// otherwise.
    pub(crate) fn settle(&mut self, now: DateTime<Utc>, config: &Config) -> Option<Settled> {
        let Phase::Draining { peer_gone } = self.phase else { return None };
        if !self.owes_nothing() {
            return None;
        }
        if peer_gone {
            self.enter(Phase::Closed);
            return Some(Settled::Closed);
        }
        self.enter(Phase::Lingering(now + config.close_linger));
        Some(Settled::HalfClosed)
    }

    /// Closes at once, dropping every pending reply and owed byte; `None`
    /// if the connection was closed already.
    pub(crate) fn abort(&mut self) -> Option<Aborted> {
        if self.is_closed() {
            return None;
        }
        let lingered = matches!(self.enter(Phase::Closed), Phase::Lingering(_));
        self.head_seq += self.replies.len() as u64;
        self.replies.clear();
        self.outbuf = Vec::new();
        self.unacked = 0;
        self.stalled_since = None;
        Some(Aborted { lingered })
    }

    /// Whether the runtime should read more: while the connection takes
    /// requests and has room for another in its pipeline, its peer has
    /// taken enough of what it owes, and its framing has room; and while it
    /// lingers, only to discard what comes, so the close is not a reset.
    pub(crate) fn wants_input(&self, config: &Config) -> bool {
        match &self.phase {
            Phase::Lingering(_) => true,
            Phase::Draining { .. } | Phase::Closed => false,
            Phase::Open(inbox) => {
                self.in_flight() < self.framing.pipeline(config)
                    && self.unsent() < config.max_backlog.max(1)
                    && self.framing.has_room(inbox, config)
            }
        }
    }

    // Replies and the bytes owed.

    /// Reserves the reply slot of a new request.
    pub(crate) fn open_slot(&mut self) -> u64 {
        self.replies.push_back(None);
        self.head_seq + self.replies.len() as u64 - 1
    }

    /// Fills a request's reply slot.
    pub(crate) fn fill(&mut self, seq: u64, reply: Reply) {
        let index = seq.wrapping_sub(self.head_seq);
        if let Some(slot) = usize::try_from(index).ok().and_then(|i| self.replies.get_mut(i)) {
            *slot = Some(reply);
        }
    }

    /// Requests whose replies are not yet encoded.
    pub(crate) fn in_flight(&self) -> usize {
        self.replies.len()
    }

    /// Bytes owed to the peer: encoded, and not yet taken by its socket.
    pub(crate) fn unsent(&self) -> usize {
        self.outbuf.len() + self.unacked
    }

    /// Whether everything the connection owes is out: no reply waits and
    /// the peer's socket took every byte.
    fn owes_nothing(&self) -> bool {
        self.replies.is_empty() && self.unsent() == 0
    }

    /// Encodes the replies that are ready, in request order, into `outbuf`,
    /// while fewer than `max_backlog` bytes are owed: past it, ready replies
    /// wait in their slots (which count against `max_pipeline`), so a peer
    /// that reads nothing makes the connection stop taking requests instead
    /// of growing. So what is owed never exceeds `max_backlog` plus one
    /// reply.
    pub(crate) fn flush(&mut self, now: DateTime<Utc>, max_backlog: usize, metrics: &mut Metrics) {
        if self.outbuf.capacity() == 0 && matches!(self.replies.front(), Some(Some(_))) {
            // Room for a few replies at once, so a reply is one allocation.
            self.outbuf.reserve(256);
        }
        while self.unsent() < max_backlog.max(1)
            && let Some(Some(reply)) = self.replies.front()
        {
            if self.unsent() == 0 {
                self.stalled_since = Some(now);
            }
            self.framing.encode(reply, &mut self.outbuf);
            metrics.reply(reply);
            self.replies.pop_front();
            self.head_seq += 1;
        }
    }

    /// Whether a transmit is to be queued: bytes wait, and none is queued
    /// yet (one queued transmit hands out everything encoded until it
    /// leaves).
    pub(crate) fn queue_transmit(&mut self) -> bool {
        if self.outbuf.is_empty() || self.transmit_queued {
            return false;
        }
        self.transmit_queued = true;
        true
    }

    /// The queued transmit leaves: the bytes to hand to the runtime, which
    /// count as owed until its socket takes them.
    pub(crate) fn transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit_queued = false;
        if self.outbuf.is_empty() {
            return None;
        }
        let bytes = mem::take(&mut self.outbuf);
        self.unacked += bytes.len();
        Some(bytes)
    }

    /// The peer's socket took `n` more of the bytes handed out.
    pub(crate) fn taken(&mut self, n: usize, now: DateTime<Utc>) {
        // More than was handed out is a runtime bug; it cannot make the
        // count wrap.
        self.unacked -= n.min(self.unacked);
        self.stalled_since = if self.unsent() == 0 {
            None
        } else if n > 0 {
            Some(now)
        } else {
            self.stalled_since
        };
    }

    // Deadlines.

    /// When this connection next needs the engine's attention, and why.
    /// Requests waiting on effects set no deadline of their own: completing
    /// effects is the runtime's duty.
    pub(crate) fn deadline(&self, config: &Config) -> Option<(DateTime<Utc>, Due)> {
        let stall = self.stalled_since.map(|t| (t + config.write_timeout, Due::WriteStall));
        let other = match &self.phase {
            Phase::Closed => return None,
            Phase::Lingering(until) => Some((*until, Due::Linger)),
            _ if !self.replies.is_empty() || self.unsent() > 0 => None,
            Phase::Draining { .. } => None,
            Phase::Open(inbox) => Some(self.framing.waiting(inbox, config)),
        };
        match (stall, other) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The deadline to put in the timers, if it comes before the entry
    /// there already (a later one is found when that entry comes due).
    pub(crate) fn arm(&mut self, config: &Config) -> Option<DateTime<Utc>> {
        let (at, _) = self.deadline(config)?;
        if self.timer_at.is_some_and(|t| at >= t) {
            return None;
        }
        self.timer_at = Some(at);
        Some(at)
    }

    /// A timer entry for `at` came due: whether it is this connection's
    /// current one (which is then spent) rather than a stale one.
    pub(crate) fn fired(&mut self, at: DateTime<Utc>) -> bool {
        if self.timer_at != Some(at) {
            return false;
        }
        self.timer_at = None;
        true
    }
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Open(inbox) => write!(f, "Open ({} bytes buffered)", inbox.bytes.len()),
            Phase::Draining { peer_gone } => write!(f, "Draining (peer gone: {peer_gone})"),
            Phase::Lingering(until) => write!(f, "Lingering until {until}"),
            Phase::Closed => f.write_str("Closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::native::Frame;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn connection(listener: Listener) -> Connection {
        Connection::new(1, "192.0.2.1".parse().unwrap(), listener, at(0))
    }

    #[test]
    fn every_move_is_in_the_table() {
        let states = || {
            [
                Phase::Open(Inbox::new(at(0))),
                Phase::Draining { peer_gone: false },
                Phase::Draining { peer_gone: true },
                Phase::Lingering(at(1)),
                Phase::Closed,
            ]
        };
        // Rows: from; columns: to; in the order of `states`.
        let table = [
            [false, true, true, false, true],
            [false, false, true, true, true],
            [false, false, false, false, true],
            [false, false, false, false, true],
            [false, false, false, false, false],
        ];
        for (from, row) in states().iter().zip(table) {
            for (to, allowed) in states().iter().zip(row) {
                assert_eq!(from.may_become(to), allowed, "{from:?} to {to:?}");
            }
        }
    }

    #[test]
    fn a_drained_connection_lingers_until_its_peer_closes() {
        let config = Config::default();
        let mut c = connection(Listener::Native);
        assert!(c.wants_input(&config));
        c.stop_reading();
        assert!(!c.wants_input(&config));
        assert_eq!(c.settle(at(1), &config), Some(Settled::HalfClosed));
        assert!(c.wants_input(&config), "a lingering connection reads, to discard");
        assert_eq!(c.deadline(&config), Some((at(1) + config.close_linger, Due::Linger)));
        assert_eq!(c.peer_closed(), PeerClosed::Abort);
        assert_eq!(c.abort(), Some(Aborted { lingered: true }));
        assert_eq!(c.abort(), None, "closed once");
        assert_eq!(c.peer_closed(), PeerClosed::Nothing);
        assert_eq!(c.receive(b"late\n", at(2)), Receipt::Ignored);
    }

    #[test]
    fn a_connection_whose_peer_is_gone_closes_once_its_reply_is_taken() {
        let config = Config::default();
        let mut c = connection(Listener::Native);
        c.refuse(Reply::Error(ErrorCode::TooManyConnections));
        assert_eq!(c.peer_closed(), PeerClosed::Drain);
        assert_eq!(c.settle(at(1), &config), None, "the reply is owed");
        c.flush(at(1), config.max_backlog, &mut Metrics::default());
        assert!(c.queue_transmit());
        assert!(!c.queue_transmit(), "one transmit queued at a time");
        let bytes = c.transmit().unwrap();
        assert_eq!(bytes, b"error|too_many_connections\n");
        assert_eq!(c.settle(at(1), &config), None, "handed out, not yet taken");
        c.taken(bytes.len(), at(2));
        assert_eq!(c.settle(at(2), &config), Some(Settled::Closed));
        assert!(c.is_closed());
    }

    #[test]
    fn a_legacy_connection_takes_one_request_and_waits_a_bounded_time_for_it() {
        let config = Config::default();
        let mut c = connection(Listener::LegacyLogin);
        assert_eq!(c.deadline(&config), Some((at(0) + config.partial_line_timeout, Due::Quiet)));
        assert_eq!(c.receive(b"", at(1)), Receipt::Ignored);
        assert_eq!(c.receive(b"aa|b", at(1)), Receipt::Buffered);
        let buf = c.take_input().unwrap();
        assert_eq!(c.framing().next_request(&buf, config.max_line), Frame::Incomplete);
        c.took(buf, 0, at(1));
        assert_eq!(c.deadline(&config), Some((at(1) + config.legacy_wait, Due::ServeAsIs)));
        assert_eq!(c.receive(b"|c|d|e\r\n", at(1)), Receipt::Buffered);
        let buf = c.take_input().unwrap();
        let Frame::Line { line, consumed } = c.framing().next_request(&buf, config.max_line) else { panic!() };
        assert_eq!((line, consumed), (&b"aa|b|c|d|e"[..], buf.len()));
        c.took(buf, consumed, at(1));
        assert!(!c.wants_input(&config), "one request per legacy connection");
        assert_eq!(c.receive(b"more", at(2)), Receipt::Ignored);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a connection moved from Draining")]
    fn a_move_not_in_the_table_is_loud() {
        let mut c = connection(Listener::Native);
        c.stop_reading();
        c.line_too_long();
    }
}
