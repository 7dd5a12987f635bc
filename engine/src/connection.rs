//! One client connection as the engine keeps it: its receive buffer, its
//! replies in request order, the bytes it owes the peer, and the deadlines
//! that follow from them. The connection policy of `docs/SECURITY.md`
//! ("Connections") is decided here and in `engine.rs`, once for every
//! runtime.

use std::collections::VecDeque;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::codec::reply::Reply;
use crate::config::Config;
use crate::io::Listener;
use crate::token::Peer;

/// Where a connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    /// Taking requests.
    Open,
    /// Taking no more requests; once every reply is out and taken by the
    /// peer's socket, the write side is shut.
    Draining,
    /// Everything owed is out and the write side is shut
    /// ([`crate::Output::HalfClose`]). What still arrives is read and
    /// discarded until the peer closes or this instant, so that closing
    /// with unread input does not reset the connection before the peer has
    /// read its last reply.
    Lingering(DateTime<Utc>),
    /// A close is queued; nothing more happens on it.
    Closed,
}

/// What a connection's deadline is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Due {
    /// Bytes have waited `write_timeout` with none taken: the peer reads
    /// nothing, so the connection is dropped with them.
    WriteStall,
    /// The linger after a half-close is over.
    Linger,
    /// Idle, or a partial line that never completed: closed gracefully.
    Quiet,
    /// The first bytes of a legacy request came, the rest did not in time:
    /// served as they are.
    LegacyServe,
}

pub(crate) struct Connection {
    /// Tells this connection from an earlier one with the same id.
    pub(crate) epoch: u64,
    /// Its IP, with its part of the master tokens derived on it.
    pub(crate) peer: Peer,
    pub(crate) listener: Listener,
    pub(crate) phase: Phase,
    /// The peer said it will send nothing more.
    pub(crate) peer_done: bool,
    /// Received bytes not yet taken as requests.
    pub(crate) inbuf: Vec<u8>,
    /// When the partial line (or partial legacy request) in `inbuf` began.
    pub(crate) partial_since: Option<DateTime<Utc>>,
    pub(crate) opened_at: DateTime<Utc>,
    pub(crate) last_active: DateTime<Utc>,
    /// A legacy connection serves one request.
    pub(crate) legacy_started: bool,
    /// One slot per request in flight, in request order.
    replies: VecDeque<Option<Reply>>,
    /// Sequence number of the front slot.
    head_seq: u64,
    /// Encoded replies not yet handed to the runtime.
    pub(crate) outbuf: Vec<u8>,
    /// Bytes handed to the runtime that its socket has not taken yet.
    pub(crate) unacked: usize,
    /// Since when bytes have been owed with none taken by the peer.
    pub(crate) stalled_since: Option<DateTime<Utc>>,
    /// A transmit for this connection is queued.
    pub(crate) transmit_queued: bool,
    /// The earliest timer entry for this connection.
    pub(crate) timer_at: Option<DateTime<Utc>>,
}

impl Connection {
    pub(crate) fn new(epoch: u64, peer: IpAddr, listener: Listener, now: DateTime<Utc>) -> Connection {
        Connection {
            epoch,
            peer: Peer::new(peer),
            listener,
            phase: Phase::Open,
            peer_done: false,
            inbuf: Vec::new(),
            partial_since: None,
            opened_at: now,
            last_active: now,
            legacy_started: false,
            replies: VecDeque::new(),
            head_seq: 0,
            outbuf: Vec::new(),
            unacked: 0,
            stalled_since: None,
            transmit_queued: false,
            timer_at: None,
        }
    }

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
    pub(crate) fn owes_nothing(&self) -> bool {
        self.replies.is_empty() && self.unsent() == 0
    }

    /// Encodes the replies that are ready, in request order, into `outbuf`,
    /// while fewer than `max_backlog` bytes are owed: past it, ready replies
    /// wait in their slots (which count against `max_pipeline`), so a peer
    /// that reads nothing makes the connection stop taking requests instead
    /// of growing. So what is owed never exceeds `max_backlog` plus one
    /// reply.
    pub(crate) fn flush(&mut self, now: DateTime<Utc>, max_backlog: usize) {
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
            match self.listener {
                Listener::Native => reply.encode_native(&mut self.outbuf),
                Listener::LegacyPasscode | Listener::LegacyLogin => reply.encode_legacy(&mut self.outbuf),
            }
            self.replies.pop_front();
            self.head_seq += 1;
        }
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

    /// Stops taking requests: pending input and partial lines are dropped,
    /// replies owed still go out.
    pub(crate) fn stop_reading(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Draining;
            self.inbuf = Vec::new();
            self.partial_since = None;
        }
    }

    /// Drops every pending reply and owed byte (the connection is going
    /// away at once).
    pub(crate) fn abandon(&mut self) {
        self.head_seq += self.replies.len() as u64;
        self.replies.clear();
        self.inbuf = Vec::new();
        self.outbuf = Vec::new();
        self.unacked = 0;
        self.stalled_since = None;
        self.phase = Phase::Closed;
    }

    /// When this connection next needs the engine's attention, and why.
    /// Requests waiting on effects set no deadline of their own: completing
    /// effects is the runtime's duty.
    pub(crate) fn deadline(&self, config: &Config) -> Option<(DateTime<Utc>, Due)> {
        let stall = self.stalled_since.map(|t| (t + config.write_timeout, Due::WriteStall));
        let other = match self.phase {
            Phase::Closed => return None,
            Phase::Lingering(until) => Some((until, Due::Linger)),
            _ if !self.replies.is_empty() || self.unsent() > 0 => None,
            Phase::Draining => None,
            Phase::Open => match self.listener {
                Listener::Native => {
                    let idle = self.last_active + config.idle_timeout;
                    let partial = self.partial_since.map(|t| t + config.partial_line_timeout);
                    Some((partial.map_or(idle, |p| p.min(idle)), Due::Quiet))
                }
                Listener::LegacyPasscode | Listener::LegacyLogin => match (self.legacy_started, self.partial_since) {
                    (true, _) => None,
                    (false, None) => Some((self.opened_at + config.partial_line_timeout, Due::Quiet)),
                    (false, Some(first)) => Some((first + config.legacy_wait, Due::LegacyServe)),
                },
            },
        };
        match (stall, other) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}
