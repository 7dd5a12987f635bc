//! The engine: connections in, requests through their flows, replies and
//! effects out. See the crate docs for the driving contract.
//!
//! The engine routes events and owns what is shared between connections
//! (the effects in flight, the output queue, the timers, the shutdown); a
//! connection's own life is the state machine in `connection`, whose
//! transitions the engine calls, and its framing is the connection's
//! [`Framing`], so nothing here asks which listener a connection came from.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::codec::native::Frame;
use crate::codec::proxy::{self, Decoded, ProxyHeader};
use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::Request;
use crate::config::Config;
use crate::connection::{Connection, Due, Framing, PeerClosed, ProxyState, Receipt, Settled};
use crate::contract::ContractError;
use crate::device::normalize_ip;
use crate::effect::{Effect, EffectId, EffectKind, EffectResult};
use crate::flow::{self, Ctx, Next, Step, Waiting};
use crate::io::{ConnId, Input, Listener, Output};
use crate::metrics::Metrics;
use crate::notice::Notice;
use crate::recording::{Playback, Recorder, RecordingRng};
use crate::timers::Timers;
use crate::token::PeerDigests;

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
    waiting: Waiting,
    /// When the effect was asked for (its latency, in the metrics).
    asked_at: DateTime<Utc>,
}

/// Whether an effect of this kind counts against `max_password_checks`.
fn is_password_work(kind: EffectKind) -> bool {
    matches!(kind, EffectKind::VerifyPassword | EffectKind::HashPassword)
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
    /// Effects asked for whose flows a shutdown dropped at the end of its
    /// grace, with their kinds: their results may still come, once each,
    /// and go nowhere.
    abandoned: FixedMap<EffectId, EffectKind>,
    /// The first breach of the driving contract; once set, the engine is
    /// stopped for good.
    error: Option<ContractError>,
    queue: VecDeque<Queued>,
    timers: Timers,
    next_effect: u64,
    next_epoch: u64,
    password_checks: usize,
    /// Connections lingering after their last reply.
    lingering: usize,
    shutdown: Shutdown,
    notices: VecDeque<Notice>,
    metrics: Metrics,
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
            abandoned: FixedMap::default(),
            error: None,
            queue: VecDeque::new(),
            timers: Timers::default(),
            next_effect: 0,
            next_epoch: 0,
            password_checks: 0,
            lingering: 0,
            shutdown: Shutdown::No,
            notices: VecDeque::new(),
            metrics: Metrics::default(),
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

    /// Password checks and hashes asked for and not yet answered (bounded
    /// by `max_password_checks`; past it, requests get `error|busy`).
    pub fn password_checks(&self) -> usize {
        self.password_checks
    }

    /// What the engine has counted since it started, for the metrics (see
    /// [`crate::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the engine holds this connection and has not yet asked to
    /// close it (for the test kit's models; a runtime learns it from
    /// [`Output::Close`]).
    #[cfg(feature = "testkit")]
    pub(crate) fn has_connection(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.is_closed())
    }

    /// Bytes a connection owes its peer: encoded, and not yet taken by its
    /// socket (for the test kit's models).
    #[cfg(feature = "testkit")]
    pub(crate) fn unsent(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, Connection::unsent)
    }

    /// Effects asked for and not yet completed (not counting those a
    /// shutdown abandoned).
    pub fn effects_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// How the runtime broke the driving contract, if it did: the first
    /// breach, kept for good. Once it is set the engine takes no more input
    /// and gives no more output; the runtime logs it and stops. Check it
    /// after every [`Engine::handle`].
    pub fn error(&self) -> Option<&ContractError> {
        self.error.as_ref()
    }

    /// Takes one input. `now` is the current time; a time earlier than one
    /// seen before is taken as that one, so the engine's clock never runs
    /// backwards. `rng` is the only source of randomness the engine uses.
    /// After a breach of the contract ([`Engine::error`]) it does nothing,
    /// not even record.
    pub fn handle<R: CryptoRng + ?Sized>(&mut self, now: DateTime<Utc>, rng: &mut R, input: Input<'_>) {
        if self.error.is_some() {
            return;
        }
        let Some(recorder) = self.capture.as_mut().filter(|r| r.recording()) else {
            return self.dispatch(now, rng, input);
        };
        recorder.begin(now, &input);
        let mut recording = RecordingRng { inner: rng, drawn: Vec::new() };
        self.dispatch(now, &mut recording, input);
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

    /// Routes one input to what it concerns (recorded or not: see
    /// [`Engine::handle`]).
    fn dispatch<R: CryptoRng + ?Sized>(&mut self, now: DateTime<Utc>, rng: &mut R, input: Input<'_>) {
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
    /// [`Engine::handle`], until it returns `None` (at once, after a breach
    /// of the contract).
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.error.is_some() {
            return None;
        }
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
                    if let Some(bytes) =
                        self.conns.get_mut(&conn).filter(|c| c.epoch == epoch).and_then(|c| c.transmit())
                    {
                        return Some(Output::Transmit { conn, bytes });
                    }
                }
                Queued::HalfClose(conn, epoch) => {
                    if self.conns.get(&conn).is_some_and(|c| c.epoch == epoch && !c.is_closed()) {
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
        if self.error.is_some() {
            return None;
        }
        self.notices.pop_front()
    }

    /// When to call [`Engine::handle`] with [`Input::Timeout`] next. A
    /// wake-up with nothing due is harmless. Never, after a breach of the
    /// contract: the engine would do nothing.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        if self.error.is_some() {
            return None;
        }
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
    /// draining outputs. Never, after a breach of the contract.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.error.is_none() && self.conns.get(&conn).is_some_and(|c| c.wants_input(&self.config))
    }

    fn open(&mut self, id: ConnId, peer: IpAddr, listener: Listener) {
        let full = self.connections() >= self.config.max_connections;
        self.next_epoch += 1;
        let mut conn = Connection::new(self.next_epoch, normalize_ip(peer), listener, self.now);
        if listener == Listener::Native {
            let trusted = self.config.proxy_protocol_from.iter().any(|block| block.contains(peer));
            conn.proxy = if trusted { ProxyState::Expected } else { ProxyState::Refused };
        }
        if self.shutdown != Shutdown::No {
            // Accepted just before the listeners closed: nothing is served.
            conn.abort();
            self.queue.push_back(Queued::Close(id, conn.epoch));
            self.conns.insert(id, conn);
            return;
        }
        if full {
            self.metrics.connections_refused += 1;
            conn.refuse(Reply::Error(ErrorCode::TooManyConnections));
        }
        self.conns.insert(id, conn);
        self.pump(id);
    }

    fn receive(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match conn.receive(bytes, self.now) {
            Receipt::Buffered => self.pump(id),
            Receipt::Ignored => {}
            Receipt::Overflow => self.close_now(id),
        }
    }

    /// Takes what requests it can from a connection's buffer, encodes the
    /// replies that are ready (within `max_backlog`), moves the connection
    /// on in its life once it owes nothing, and re-arms its deadline. Every
    /// change of a connection ends here.
    fn pump(&mut self, id: ConnId) {
        let (now, max_backlog) = (self.now, self.config.max_backlog);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        // Replies that are ready leave first, making room in the pipeline
        // for the requests still waiting.
        conn.flush(now, max_backlog, &mut self.metrics);
        self.take_requests(id);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.flush(now, max_backlog, &mut self.metrics);
        if conn.queue_transmit() {
            self.queue.push_back(Queued::Transmit(id, conn.epoch));
        }
        match conn.settle(now, &self.config) {
            Some(Settled::Closed) => {
                self.queue.push_back(Queued::Close(id, conn.epoch));
                return;
            }
            Some(Settled::HalfClosed) => {
                self.lingering += 1;
                self.queue.push_back(Queued::HalfClose(id, conn.epoch));
            }
            None => {}
        }
        if let Some(at) = conn.arm(&self.config) {
            self.timers.schedule(at, id, conn.epoch);
        }
    }

    /// Starts the whole requests buffered on a connection that takes them,
    /// while its pipeline has room.
    fn take_requests(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(buf) = conn.take_input() else { return };
        let Some(mut consumed) = self.proxy_header(id, &buf) else {
            // A header so far, or the connection was closed.
            if let Some(conn) = self.conns.get_mut(&id).filter(|c| !c.is_closed()) {
                conn.took(buf, 0, self.now);
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let (epoch, peer, framing) = (conn.epoch, conn.peer.ip(), conn.framing());
        let pipeline = framing.pipeline(&self.config);
        while self.conns.get(&id).is_some_and(|c| c.in_flight() < pipeline) {
            match framing.next_request(&buf[consumed..], self.config.max_line) {
                Frame::Line { line, consumed: n } => {
                    consumed += n;
                    self.start_request(id, epoch, peer, line, framing);
                    // Replies decided at once leave the pipeline now (while
                    // the backlog has room), so a burst of them cannot fill
                    // it and stall the rest.
                    let (now, max_backlog) = (self.now, self.config.max_backlog);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.flush(now, max_backlog, &mut self.metrics);
                    }
                }
                Frame::Incomplete => break,
                Frame::TooLong => {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.line_too_long();
                    }
                    return;
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.took(buf, consumed, self.now);
        }
    }

    /// A native connection's first bytes, as a PROXY protocol header
    /// (docs/PROTOCOL.md, "Behind a load balancer"). From a balancer in
    /// `proxy_protocol_from` one must come first, and the client it names
    /// becomes the connection's address (its binding, its limits). From
    /// anyone else one is refused, since a client could otherwise name any
    /// address it likes: a first line that starts `PROXY `, or first bytes
    /// that are the version 2 signature. A refusal closes the connection
    /// with no reply. Returns where the requests start in `buf`, or `None`
    /// while a header is incomplete or once the connection is closed.
    fn proxy_header(&mut self, id: ConnId, buf: &[u8]) -> Option<usize> {
        let conn = self.conns.get_mut(&id)?;
        let state = conn.proxy;
        if state == ProxyState::Done {
            return Some(0);
        }
        // A capture keeps the decision (its bytes are masked), made once.
        let decoded = match &mut self.playback {
            Some(playback) => playback.proxy_header(buf.len()),
            None if state == ProxyState::Expected => proxy::decode(buf),
            None => unasked_header(buf),
        };
        if !matches!(decoded, Decoded::Incomplete)
            && let Some(recorder) = &mut self.capture
        {
            recorder.proxy_header(buf.len(), decoded);
        }
        match (state, decoded) {
            (ProxyState::Expected, Decoded::Incomplete) => None,
            (ProxyState::Expected, Decoded::Header(header, consumed)) => {
                if let ProxyHeader::Proxied(client) = header {
                    conn.peer = PeerDigests::new(normalize_ip(client.ip()));
                }
                conn.proxy = ProxyState::Done;
                Some(consumed)
            }
            // Not decided yet: no line is whole, so none is taken.
            (_, Decoded::Incomplete) => Some(0),
            (_, Decoded::Invalid(_)) if state == ProxyState::Refused => {
                conn.proxy = ProxyState::Done;
                Some(0)
            }
            _ => {
                self.close_now(id);
                None
            }
        }
    }

    /// The rest of a request did not come in time: what came is served as
    /// it is, and nothing more is read.
    fn serve_as_is(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let (epoch, peer, framing) = (conn.epoch, conn.peer.ip(), conn.framing());
        let buf = conn.give_up_waiting();
        self.start_request(id, epoch, peer, framing.as_is(&buf), framing);
        self.pump(id);
    }

    /// Parses one request and starts its flow. Requests that cannot be
    /// served get their reply at once (still in order).
    fn start_request(&mut self, id: ConnId, epoch: u64, peer: IpAddr, line: &[u8], framing: Framing) {
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
        let step = match parsed {
            Ok(request) if !framing.serves(&request) => Step::Done(Reply::False),
            Ok(Request::Token(r)) => flow::token_check::start(&r, &mut conn.peer, self.now),
            Ok(Request::Passcode(r)) => flow::passcode_request::start(&r, peer, &self.config.limits),
            Ok(Request::Login(r)) => flow::login::start(&r, peer, &self.config.limits),
            Err(_) => Step::Done(Reply::Error(ErrorCode::Malformed)),
        };
        match step {
            Step::Done(reply) => conn.fill(seq, reply),
            step => self.proceed(Some(Origin { conn: id, epoch, seq }), step),
        }
    }

    /// Carries on with a flow's step: asks for the effect it waits on, or
    /// delivers its reply (if anyone waits for it).
    fn proceed(&mut self, origin: Option<Origin>, step: Step) {
        match step.next() {
            Next::Perform(waiting, effect) => self.register(origin, waiting, effect),
            Next::Reply(reply) => {
                if let Some(origin) = origin {
                    self.deliver(origin, reply);
                }
            }
        }
    }

    fn register(&mut self, origin: Option<Origin>, waiting: Waiting, effect: Effect) {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        self.password_checks += usize::from(is_password_work(waiting.kind()));
        self.metrics.performed(waiting.kind());
        self.tasks.insert(id, Task { origin, waiting, asked_at: self.now });
        self.queue.push_back(Queued::Perform(id, effect));
    }

    fn complete<R: CryptoRng + ?Sized>(&mut self, rng: &mut R, id: EffectId, result: EffectResult) {
        let Some(task) = self.tasks.remove(&id) else {
            // A late result for an effect a shutdown abandoned goes nowhere;
            // any other id is the runtime's mistake.
            let breach = match self.abandoned.remove(&id) {
                Some(expected) => match result.kind() {
                    Some(got) if got != expected => ContractError::WrongResult { id, expected, got },
                    _ => return,
                },
                None if id.0 < self.next_effect => ContractError::DuplicateResult(id),
                None => ContractError::UnknownEffect(id),
            };
            return self.fail(breach);
        };
        let expected = task.waiting.kind();
        self.password_checks -= usize::from(is_password_work(expected));
        self.metrics.completed(expected, self.now - task.asked_at);
        let mut ctx = Ctx {
            now: self.now,
            rng,
            config: &self.config,
            password_checks: self.password_checks,
            detached: Vec::new(),
            notices: Vec::new(),
            listener: task
                .origin
                .and_then(|o| self.conns.get(&o.conn).filter(|c| c.epoch == o.epoch))
                .map(|c| c.framing().listener()),
        };
        let step = match task.waiting.resume(&mut ctx, result) {
            Ok(step) => step,
            Err(got) => return self.fail(ContractError::WrongResult { id, expected, got }),
        };
        let detached = mem::take(&mut ctx.detached);
        for notice in &ctx.notices {
            if let Notice::Refused { limit, .. } = notice {
                self.metrics.refused_by(limit);
            }
        }
        self.notices.extend(ctx.notices);
        self.proceed(task.origin, step);
        for step in detached {
            self.proceed(None, step);
        }
    }

    /// Stops the engine for good on a breach of the contract: what is
    /// queued is dropped (outputs and notices), so nothing more goes out,
    /// and no client hears about the breach.
    fn fail(&mut self, error: ContractError) {
        self.error.get_or_insert(error);
        self.queue.clear();
        self.notices.clear();
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
        match conn.peer_closed() {
            PeerClosed::Nothing => {}
            PeerClosed::Drain => self.pump(id),
            PeerClosed::Abort => self.close_now(id),
        }
    }

    /// The peer's socket took `bytes` more.
    fn sent(&mut self, id: ConnId, bytes: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.is_closed() {
            return;
        }
        conn.taken(bytes, now);
        self.pump(id);
    }

    /// Closes a connection at once, dropping replies and bytes not yet out.
    fn close_now(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(aborted) = conn.abort() else { return };
        if aborted.lingered {
            self.lingering -= 1;
        }
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
            // Their results may still come: they are abandoned, not unknown.
            self.abandoned.extend(self.tasks.drain().map(|(id, task)| (id, task.waiting.kind())));
            self.password_checks = 0;
        }
        while let Some((at, id, epoch)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            if conn.epoch != epoch || !conn.fired(at) {
                continue;
            }
            match conn.deadline(&self.config) {
                Some((due, why)) if due <= now => match why {
                    Due::WriteStall | Due::Linger => self.close_now(id),
                    Due::ServeAsIs => self.serve_as_is(id),
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
            && self.conns.values().all(Connection::is_closed)
        {
            self.shutdown = Shutdown::Done;
            self.queue.push_back(Queued::Stopped);
        }
    }
}

/// Whether a connection that may not send a PROXY header sent one: a first
/// line that starts `PROXY `, or first bytes that are the version 2
/// signature (`Header`), or neither (`Invalid`); `Incomplete` until its
/// first line is whole. Unlike [`proxy::decode`], it never holds back a
/// whole line: an empty first line is a malformed request, as ever.
fn unasked_header(buf: &[u8]) -> Decoded {
    if buf.starts_with(&proxy::V2_SIGNATURE) {
        return Decoded::Header(ProxyHeader::Local, 0);
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if buf[..end].starts_with(b"PROXY ") => Decoded::Header(ProxyHeader::Local, 0),
        Some(_) => Decoded::Invalid("no PROXY protocol header"),
        None => Decoded::Incomplete,
    }
}
