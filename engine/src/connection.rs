//! One client connection as the engine keeps it: its receive buffer, its
//! replies in request order, its output buffer and its deadlines.

use std::collections::VecDeque;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::Listener;
use crate::codec::reply::Reply;
use crate::config::Config;
use crate::token::Peer;

/// Where a connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    /// Taking requests.
    Open,
    /// Taking no more input; closes once every reply is out.
    Draining,
    /// A close is queued; nothing more happens on it.
    Closed,
}

pub(crate) struct Connection {
    /// Tells this connection from an earlier one with the same id.
    pub(crate) epoch: u64,
    /// Its IP, with its part of the master tokens derived on it.
    pub(crate) peer: Peer,
    pub(crate) listener: Listener,
    pub(crate) phase: Phase,
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
            inbuf: Vec::new(),
            partial_since: None,
            opened_at: now,
            last_active: now,
            legacy_started: false,
            replies: VecDeque::new(),
            head_seq: 0,
            outbuf: Vec::new(),
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

    /// Requests whose replies are not yet out.
    pub(crate) fn in_flight(&self) -> usize {
        self.replies.len()
    }

    /// Encodes the replies that are ready, in request order, into `outbuf`.
    /// Returns whether any were.
    pub(crate) fn flush(&mut self) -> bool {
        let mut any = false;
        if self.outbuf.capacity() == 0 && matches!(self.replies.front(), Some(Some(_))) {
            // Room for a few replies at once, so a reply is one allocation.
            self.outbuf.reserve(256);
        }
        while let Some(Some(reply)) = self.replies.front() {
            match self.listener {
                Listener::Native => reply.encode_native(&mut self.outbuf),
                Listener::LegacyPasscode | Listener::LegacyLogin => reply.encode_legacy(&mut self.outbuf),
            }
            self.replies.pop_front();
            self.head_seq += 1;
            any = true;
        }
        any
    }

    /// Drops every pending reply (the connection is going away).
    pub(crate) fn abandon(&mut self) {
        self.head_seq += self.replies.len() as u64;
        self.replies.clear();
        self.inbuf = Vec::new();
        self.phase = Phase::Closed;
    }

    /// When this connection next needs the engine's attention, if ever.
    /// Requests waiting on effects set no deadline: completing effects is
    /// the runtime's duty.
    pub(crate) fn deadline(&self, config: &Config) -> Option<DateTime<Utc>> {
        if self.phase == Phase::Closed || !self.replies.is_empty() {
            return None;
        }
        match self.listener {
            Listener::Native => {
                let idle = (self.phase == Phase::Open).then(|| self.last_active + config.idle_timeout);
                let partial = self.partial_since.map(|t| t + config.partial_line_timeout);
                match (idle, partial) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Listener::LegacyPasscode | Listener::LegacyLogin => match (self.legacy_started, self.partial_since) {
                (true, _) => None,
                (false, None) => Some(self.opened_at + config.partial_line_timeout),
                (false, Some(first)) => Some(first + config.legacy_wait),
            },
        }
    }
}
