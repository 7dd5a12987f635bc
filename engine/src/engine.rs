//! The engine: connections in, requests through their flows, replies and
//! effects out. See the crate docs for the driving contract.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::codec::legacy;
use crate::codec::native::{Frame, next_frame};
use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::Request;
use crate::config::Config;
use crate::connection::{Connection, Due, Phase};
use crate::device::normalize_ip;
use crate::effect::{Effect, EffectId, EffectResult};
use crate::flow::{self, Ctx, Flow, Step};
use crate::io::{ConnId, Input, Listener, Output};
use crate::notice::Notice;
use crate::recording::{Playback, Recorder, RecordingRng};
use crate::timers::Timers;

/// What the runtime may buffer for a connection that ignores
/// [`Engine::wants_input`]; past it the connection is closed.
const MAX_BUFFERED: usize = 256 * 1024;

/// Hash maps keyed by ids that the runtime and the engine choose, never a
/// client: a multiplicative hash is enough, and it is deterministic (no OS
/// randomness, unlike the standard `RandomState`).
type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hashes one `u64` id by a multiplication (Fibonacci hashing).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A flow waiting on an effect, and whom its reply goes to.
struct Task {
    origin: Option<Origin>,
    flow: Flow,
    password_work: bool,
}

/// A reply slot on a connection.
#[derive(Clone, Copy)]
struct Origin {
    conn: ConnId,
    epoch: u64,
    seq: u64,
}

enum Queued {
    Transmit(ConnId, u64),
    HalfClose(ConnId, u64),
    Close(ConnId, u64),
    Perform(EffectId, Effect),
    Stopped,
}

/// Where the engine is in a shutdown.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shutdown {
    /// Serving.
    No,
    /// Draining until this instant.
    Until(DateTime<Utc>),
    /// [`Output::Stopped`] is queued or out.
    Done,
}

/// The protocol engine. See the crate docs for how to drive it.
pub struct Engine {
    config: Config,
    now: DateTime<Utc>,
    conns: FixedMap<ConnId, Connection>,
    tasks: FixedMap<EffectId, Task>,
    queue: VecDeque<Queued>,
    timers: Timers,
    next_effect: u64,
    next_epoch: u64,
    password_checks: usize,
    /// Connections in [`Phase::Lingering`].
    lingering: usize,
    shutdown: Shutdown,
    notices: VecDeque<Notice>,
    capture: Option<Recorder>,
    /// During a replay: the recorded request lines, taken in place of
    /// parsing the (masked) buffered bytes.
    pub(crate) playback: Option<Playback>,
}

impl Engine {
    /// A new engine with no connections.
    pub fn new(config: Config) -> Engine {
        Engine {
            config,
            now: DateTime::<Utc>::MIN_UTC,
            conns: FixedMap::default(),
            tasks: FixedMap::default(),
            queue: VecDeque::new(),
            timers: Timers::default(),
            next_effect: 0,
            next_epoch: 0,
            password_checks: 0,
            lingering: 0,
            shutdown: Shutdown::No,
            notices: VecDeque::new(),
            capture: None,
            playback: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Connections being served: open, or finishing their replies. Those
    /// lingering after their last reply are not counted (here or against
    /// `max_connections`): each goes within `close_linger`.
    pub fn connections(&self) -> usize {
        self.conns.len() - self.lingering
    }

    /// Whether the engine holds this connection and has not yet asked to
    /// close it (for the test kit's models; a runtime learns it from
    /// [`Output::Close`]).
    #[cfg(feature = "testkit")]
    pub(crate) fn has_connection(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.phase != Phase::Closed)
    }

    /// Bytes a connection owes its peer: encoded, and not yet taken by its
    /// socket (for the test kit's models).
    #[cfg(feature = "testkit")]
    pub(crate) fn unsent(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, Connection::unsent)
    }

    /// Effects asked for and not yet completed.
    pub fn effects_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Takes one input. `now` is the current time; a time earlier than one
    /// seen before is taken as that one, so the engine's clock never runs
    /// backwards. `rng` is the only source of randomness the engine uses.
    pub fn handle<R: CryptoRng + ?Sized>(&mut self, now: DateTime<Utc>, rng: &mut R, input: Input<'_>) {
        let Some(recorder) = self.capture.as_mut().filter(|r| r.recording()) else {
            return self.take(now, rng, input);
        };
        recorder.begin(now, &input);
        let mut recording = RecordingRng { inner: rng, drawn: Vec::new() };
        self.take(now, &mut recording, input);
        if let Some(recorder) = &mut self.capture {
            recorder.drew(&recording.drawn);
        }
    }

    /// Starts recording every call from now on (see [`crate::capture`]).
    /// Returns the capture file's header; [`Engine::take_capture`] gives
    /// the records that follow.
    pub fn start_capture(&mut self) -> Vec<u8> {
        self.start_capture_bounded(u64::MAX)
    }

    /// As [`Engine::start_capture`], for a capture of at most `max_bytes`,
    /// header included. The record that would go past the bound is dropped
    /// and an end mark written in its place; recording stops there, so the
    /// capture replays whole up to that call, and replay reports the cut.
    pub fn start_capture_bounded(&mut self, max_bytes: u64) -> Vec<u8> {
        let (recorder, header) = Recorder::start(&self.config, max_bytes);
        self.capture = Some(recorder);
        header
    }

    /// Whether a bounded capture reached its bound and stopped recording.
    pub fn capture_stopped(&self) -> bool {
        self.capture.as_ref().is_some_and(Recorder::stopped)
    }

    /// The capture records completed since the last call: append them to
    /// the capture file after draining outputs.
    pub fn take_capture(&mut self) -> Vec<u8> {
        self.capture.as_mut().map(Recorder::take).unwrap_or_default()
    }

    fn take<R: CryptoRng + ?Sized>(&mut self, now: DateTime<Utc>, rng: &mut R, input: Input<'_>) {
        self.now = self.now.max(now);
        match input {
            Input::Opened { conn, peer, listener } => self.open(conn, peer, listener),
            Input::Received { conn, bytes } => self.receive(conn, bytes),
            Input::Closed { conn } => self.peer_closed(conn),
            Input::Failed { conn } => self.close_now(conn),
            Input::Sent { conn, bytes } => self.sent(conn, bytes),
            Input::Completed { id, result } => self.complete(rng, id, result),
            Input::Timeout => self.expire(),
            Input::Shutdown => self.begin_shutdown(),
        }
        self.check_stopped();
    }

    /// The next thing to do, if any. Drain it after every
    /// [`Engine::handle`], until it returns `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.next_output();
        if let (Some(recorder), Some(output)) = (&mut self.capture, &output) {
            recorder.output(output);
            if let Output::Close { conn } = output {
                recorder.forget(*conn);
            }
        }
        output
    }

    fn next_output(&mut self) -> Option<Output> {
        while let Some(queued) = self.queue.pop_front() {
            match queued {
                Queued::Perform(id, effect) => return Some(Output::Perform { id, effect }),
                Queued::Transmit(conn, epoch) => {
                    if let Some(c) = self.conns.get_mut(&conn).filter(|c| c.epoch == epoch) {
                        c.transmit_queued = false;
                        if !c.outbuf.is_empty() {
                            let bytes = mem::take(&mut c.outbuf);
                            c.unacked += bytes.len();
                            return Some(Output::Transmit { conn, bytes });
                        }
                    }
                }
                Queued::HalfClose(conn, epoch) => {
                    if self.conns.get(&conn).is_some_and(|c| c.epoch == epoch && c.phase != Phase::Closed) {
                        return Some(Output::HalfClose { conn });
                    }
                }
                Queued::Close(conn, epoch) => {
                    if self.conns.get(&conn).is_some_and(|c| c.epoch == epoch) {
                        self.conns.remove(&conn);
                        return Some(Output::Close { conn });
                    }
                }
                Queued::Stopped => return Some(Output::Stopped),
            }
        }
        None
    }

    /// The next notice for the operator, if any: log it. Drain it after
    /// every [`Engine::handle`], like the outputs (notices left undrained
    /// only take memory).
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// When to call [`Engine::handle`] with [`Input::Timeout`] next. A
    /// wake-up with nothing due is harmless.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        match (self.timers.next(), self.shutdown) {
            (Some(at), Shutdown::Until(end)) => Some(at.min(end)),
            (at, Shutdown::Until(end)) => at.or(Some(end)),
            (at, _) => at,
        }
    }

    /// Whether the runtime should read more from this connection. While it
    /// is `false` (a pipelining client is far ahead of its replies, its
    /// peer leaves `max_backlog` bytes untaken, or the connection is
    /// closing) the runtime leaves the socket unread; check again after
    /// draining outputs.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| match c.phase {
            // Read only to be discarded, so the close is not a reset.
            Phase::Lingering(_) => true,
            Phase::Draining | Phase::Closed => false,
            Phase::Open => match c.listener {
                Listener::Native => {
                    // One byte past the line limit: a CR whose LF is still to come.
                    c.in_flight() < self.config.max_pipeline
                        && c.unsent() < self.config.max_backlog.max(1)
                        && c.inbuf.len() <= self.config.max_line.saturating_add(1)
                }
                Listener::LegacyPasscode | Listener::LegacyLogin => !c.legacy_started,
            },
        })
    }

    fn open(&mut self, id: ConnId, peer: IpAddr, listener: Listener) {
        let full = self.connections() >= self.config.max_connections;
        self.next_epoch += 1;
        let mut conn = Connection::new(self.next_epoch, normalize_ip(peer), listener, self.now);
        if self.shutdown != Shutdown::No {
            // Accepted just before the listeners closed: nothing is served.
            conn.phase = Phase::Closed;
            self.queue.push_back(Queued::Close(id, conn.epoch));
            self.conns.insert(id, conn);
            return;
        }
        if full {
            let seq = conn.open_slot();
            conn.fill(seq, Reply::Error(ErrorCode::TooManyConnections));
            conn.phase = Phase::Draining;
        }
        self.conns.insert(id, conn);
        self.pump(id);
    }

    fn receive(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.phase != Phase::Open {
            // Lingering input is discarded; a runtime that reads past
            // `wants_input` elsewhere loses what it read.
            return;
        }
        conn.last_active = self.now;
        match conn.listener {
            Listener::Native => {
                if conn.inbuf.len() + bytes.len() > MAX_BUFFERED {
                    self.close_now(id);
                    return;
                }
                conn.inbuf.extend_from_slice(bytes);
            }
            Listener::LegacyPasscode | Listener::LegacyLogin => {
                if conn.legacy_started {
                    return;
                }
                if bytes.is_empty() {
                    return;
                }
                let room = legacy::MAX_REQUEST - conn.inbuf.len().min(legacy::MAX_REQUEST);
                conn.inbuf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                conn.partial_since.get_or_insert(self.now);
                if legacy::is_whole(&conn.inbuf) {
                    self.start_legacy(id);
                    return;
                }
            }
        }
        self.pump(id);
    }

    /// Takes what requests it can from a native connection's buffer,
    /// encodes the replies that are ready (within `max_backlog`), moves the
    /// connection on in its life once it owes nothing, and re-arms its
    /// deadline. Every change of a connection ends here.
    fn pump(&mut self, id: ConnId) {
        let (now, max_backlog) = (self.now, self.config.max_backlog);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        // Replies that are ready leave first, making room in the pipeline
        // for the lines still waiting.
        conn.flush(now, max_backlog);
        if conn.listener == Listener::Native && conn.phase == Phase::Open && !conn.inbuf.is_empty() {
            self.take_lines(id);
        }
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.flush(now, max_backlog);
        if !conn.outbuf.is_empty() && !conn.transmit_queued {
            conn.transmit_queued = true;
            self.queue.push_back(Queued::Transmit(id, conn.epoch));
        }
        if conn.phase == Phase::Draining && conn.owes_nothing() {
            if conn.peer_done {
                conn.phase = Phase::Closed;
                self.queue.push_back(Queued::Close(id, conn.epoch));
                return;
            }
            conn.phase = Phase::Lingering(now + self.config.close_linger);
            self.lingering += 1;
            self.queue.push_back(Queued::HalfClose(id, conn.epoch));
        }
        if let Some((at, _)) = conn.deadline(&self.config)
            && conn.timer_at.is_none_or(|t| at < t)
        {
            conn.timer_at = Some(at);
            self.timers.schedule(at, id, conn.epoch);
        }
    }

    fn take_lines(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let buf = mem::take(&mut conn.inbuf);
        let (epoch, peer) = (conn.epoch, conn.peer.ip());
        let mut consumed = 0;
        let mut too_long = false;
        while self.conns.get(&id).is_some_and(|c| c.in_flight() < self.config.max_pipeline) {
            match next_frame(&buf[consumed..], self.config.max_line) {
                Frame::Line { line, consumed: n } => {
                    consumed += n;
                    self.start_request(id, epoch, peer, line, Listener::Native);
                    // Replies decided at once leave the pipeline now (while
                    // the backlog has room), so a burst of them cannot fill
                    // it and stall the rest.
                    let (now, max_backlog) = (self.now, self.config.max_backlog);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.flush(now, max_backlog);
                    }
                }
                Frame::Incomplete => break,
                Frame::TooLong => {
                    too_long = true;
                    break;
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if too_long {
            let seq = conn.open_slot();
            conn.fill(seq, Reply::Error(ErrorCode::LineTooLong));
            conn.phase = Phase::Draining;
            conn.partial_since = None;
            return;
        }
        let mut buf = buf;
        buf.drain(..consumed);
        if buf.is_empty() {
            conn.partial_since = None;
        } else if consumed > 0 || conn.partial_since.is_none() {
            conn.partial_since = Some(self.now);
        }
        conn.inbuf = buf;
    }

    fn start_legacy(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.legacy_started = true;
        conn.phase = Phase::Draining;
        let buf = mem::take(&mut conn.inbuf);
        let (epoch, peer, listener) = (conn.epoch, conn.peer.ip(), conn.listener);
        self.start_request(id, epoch, peer, legacy::request(&buf), listener);
        self.pump(id);
    }

    /// Parses one request and starts its flow. Requests that cannot be
    /// served get their reply at once (still in order).
    fn start_request(&mut self, id: ConnId, epoch: u64, peer: IpAddr, line: &[u8], listener: Listener) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let seq = conn.open_slot();
        // A capture keeps the line's parse outcome, never a password (see
        // `recording::redact`); a replay takes that outcome back.
        let played = self.playback.as_mut().map(Playback::next);
        let parsed = match &played {
            Some(recorded) => recorded.parse(),
            None => Request::parse(line),
        };
        if let Some(recorder) = &mut self.capture {
            recorder.request(line, &parsed);
        }
        let step = match (parsed, listener) {
            (Ok(Request::Token(r)), Listener::Native) => flow::token_check::start(&r, &mut conn.peer),
            (Ok(Request::Passcode(r)), Listener::Native | Listener::LegacyPasscode) => {
                flow::passcode_request::start(&r, peer, &self.config.limits)
            }
            (Ok(Request::Login(r)), Listener::Native | Listener::LegacyLogin) => {
                flow::login::start(&r, peer, &self.config.limits)
            }
            (Ok(_), _) => Step::Done(Reply::False),
            (Err(_), _) => Step::Done(Reply::Error(ErrorCode::Malformed)),
        };
        match step {
            Step::Done(reply) => conn.fill(seq, reply),
            Step::Await(flow, effect) => self.register(Some(Origin { conn: id, epoch, seq }), flow, effect),
        }
    }

    fn register(&mut self, origin: Option<Origin>, flow: Flow, effect: Effect) {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        let password_work = matches!(effect, Effect::VerifyPassword { .. } | Effect::HashPassword { .. });
        self.password_checks += usize::from(password_work);
        self.tasks.insert(id, Task { origin, flow, password_work });
        self.queue.push_back(Queued::Perform(id, effect));
    }

    fn complete<R: CryptoRng + ?Sized>(&mut self, rng: &mut R, id: EffectId, result: EffectResult) {
        let Some(task) = self.tasks.remove(&id) else { return };
        self.password_checks -= usize::from(task.password_work);
        let mut ctx = Ctx {
            now: self.now,
            rng,
            config: &self.config,
            password_checks: self.password_checks,
            detached: Vec::new(),
            notices: Vec::new(),
        };
        let step = task.flow.resume(&mut ctx, result);
        let detached = mem::take(&mut ctx.detached);
        self.notices.extend(ctx.notices);
        match step {
            Step::Await(flow, effect) => self.register(task.origin, flow, effect),
            Step::Done(reply) => {
                if let Some(origin) = task.origin {
                    self.deliver(origin, reply);
                }
            }
        }
        for (flow, effect) in detached {
            self.register(None, flow, effect);
        }
    }

    fn deliver(&mut self, origin: Origin, reply: Reply) {
        let Some(conn) = self.conns.get_mut(&origin.conn) else { return };
        if conn.epoch != origin.epoch {
            return;
        }
        conn.fill(origin.seq, reply);
        self.pump(origin.conn);
    }

    /// The peer will send nothing more. Replies still owed go out first
    /// (a client may half-close after its last request), then the
    /// connection closes.
    fn peer_closed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.peer_done = true;
        match conn.phase {
            Phase::Closed => {}
            // Nothing more will come to discard.
            Phase::Lingering(_) => self.close_now(id),
            Phase::Open | Phase::Draining => {
                conn.stop_reading();
                self.pump(id);
            }
        }
    }

    /// The peer's socket took `bytes` more.
    fn sent(&mut self, id: ConnId, bytes: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.phase == Phase::Closed {
            return;
        }
        conn.taken(bytes, now);
        self.pump(id);
    }

    /// Closes a connection at once, dropping replies and bytes not yet out.
    fn close_now(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match conn.phase {
            Phase::Closed => return,
            Phase::Lingering(_) => self.lingering -= 1,
            Phase::Open | Phase::Draining => {}
        }
        conn.abandon();
        self.queue.push_back(Queued::Close(id, conn.epoch));
    }

    fn expire(&mut self) {
        let now = self.now;
        if let Shutdown::Until(end) = self.shutdown
            && end <= now
        {
            // The grace is over: what is left is dropped.
            let ids: Vec<ConnId> = self.conns.keys().copied().collect();
            for id in ids {
                self.close_now(id);
            }
            self.tasks.clear();
            self.password_checks = 0;
        }
        while let Some((at, id, epoch)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            if conn.epoch != epoch || conn.timer_at != Some(at) {
                continue;
            }
            conn.timer_at = None;
            match conn.deadline(&self.config) {
                Some((due, why)) if due <= now => match why {
                    Due::WriteStall | Due::Linger => self.close_now(id),
                    Due::LegacyServe => self.start_legacy(id),
                    Due::Quiet => {
                        conn.stop_reading();
                        self.pump(id);
                    }
                },
                Some(_) => self.pump(id),
                None => {}
            }
        }
    }

    /// Takes no more connections or requests; see [`Input::Shutdown`].
    fn begin_shutdown(&mut self) {
        if self.shutdown != Shutdown::No {
            return;
        }
        self.shutdown = Shutdown::Until(self.now + self.config.shutdown_grace);
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        // Deterministic order: the map's is not part of the contract.
        ids.sort_unstable();
        for id in ids {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.stop_reading();
                self.pump(id);
            }
        }
    }

    /// Says [`Output::Stopped`] once a shutdown has nothing left to do.
    fn check_stopped(&mut self) {
        if matches!(self.shutdown, Shutdown::Until(_))
            && self.tasks.is_empty()
            && self.conns.values().all(|c| c.phase == Phase::Closed)
        {
            self.shutdown = Shutdown::Done;
            self.queue.push_back(Queued::Stopped);
        }
    }
}
