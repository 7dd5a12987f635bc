//! The event-loop runtime (the default for `serve`).
//!
//! One thread runs a mio event loop that owns every socket and the engine.
//! It reads what sockets offer (only while the engine wants input), feeds
//! it to the engine, writes what the engine transmits, and hands effects to
//! the worker pools of `tokenizer-auth-effects` (store, hash, mail). Workers send
//! results back through a channel and wake the loop with a `mio::Waker`;
//! the loop feeds them to the engine in the order they arrive. The engine's
//! next deadline is the poll timeout. So the loop never blocks on SQLite,
//! argon2 or a relay, and every protocol decision stays in the engine.
//!
//! A loop turn batches its system calls: the replies the engine transmits
//! during a turn are appended to their connection's buffer and written once
//! at the end of the turn (16 pipelined replies cost one `send`, not 16),
//! and workers wake the loop only when it is not already due to look at
//! their results. Token checks whose session the cache holds skip the
//! workers: the loop keeps their reads during the turn and answers them
//! together before it writes ([`LoopReads`]: one check of the cache's
//! validity per turn, made after the turn's last read from a socket, and
//! never waiting on a lock).
//!
//! Connection policy (how much a peer may leave unread, when a silent one
//! is dropped, how a close lingers, how shutdown drains) is the engine's:
//! the loop reports what each socket took with [`Input::Sent`] and does
//! what the outputs say. On SIGINT or SIGTERM it closes the listeners and
//! feeds [`Input::Shutdown`]; it returns when the engine says
//! [`Output::Stopped`]. If the loop or a worker breaks the engine's driving
//! contract, the engine stops for good ([`Engine::error`]), and the loop
//! logs it and returns it at the end of that turn, dropping every
//! connection.
//!
//! With TLS on the native listener, each of its connections has a
//! [`TlsSession`] between the socket and the engine: the socket's bytes go
//! through it to the engine, the engine's through it to the socket, and
//! what the socket took is reported as the plaintext it carried. SIGHUP
//! reloads the certificate for the handshakes that follow.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use socket2::SockRef;
use tokenizer_auth_effects::admin_listener::{AdminListener, ENGINE_PATIENCE};
use tokenizer_auth_effects::audit::AuditLog;
use tokenizer_auth_effects::loop_reads::LoopReads;
use tokenizer_auth_effects::metrics::Scrape;
use tokenizer_auth_effects::pool::{EffectPool, OnResult};
use tokenizer_auth_effects::serve::{CaptureFile, OsRng, ServeError, Start, log_notices, now, os_rng};
use tokenizer_auth_effects::settings::Settings;
use tokenizer_auth_effects::socket;
use tokenizer_auth_effects::tls::{Received, TlsConfig, TlsSession};
use tokenizer_auth_engine::{ConnId, EffectId, EffectResult, Engine, Input, Listener, Output};

/// The most read from a socket at a time (the engine's contract).
const READ_CHUNK: usize = 64 * 1024;

const WAKER: Token = Token(3);
const SIGNALS: Token = Token(4);
/// Tokens below this are the listeners (0–2), the waker and the signals.
const FIRST_CONN: usize = 5;

/// One client socket.
struct Conn {
    stream: TcpStream,
    /// Bytes the engine transmitted that the socket has not taken yet.
    out: Vec<u8>,
    /// Reading stopped because the engine wanted no input; retried at the
    /// end of each loop turn.
    paused: bool,
    /// The peer ended its side (or reading failed): nothing more to read.
    read_done: bool,
    /// Listed in `EventLoop::unflushed`.
    unflushed: bool,
    /// TLS between the socket and the engine (the native listener with
    /// `tls_cert`): `out` then holds records, not plaintext.
    tls: Option<Box<TlsSession>>,
}

/// The event loop and everything it owns.
struct EventLoop {
    poll: Poll,
    engine: Engine,
    rng: OsRng,
    listeners: Vec<(Listener, TcpListener)>,
    conns: Slab<Conn>,
    pool: EffectPool,
    /// Token checks this loop answers from the session cache at the end of
    /// its turn, without the hop to a reader.
    loop_reads: Option<LoopReads>,
    /// Their answers, on their way to the engine (kept for its capacity).
    answered: Vec<(EffectId, EffectResult)>,
    results: Receiver<(EffectId, EffectResult)>,
    /// Set by a worker that woke the loop; cleared before the loop takes
    /// the results, so one wake-up serves every result sent before it.
    wake_pending: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Connections with bytes to write, flushed at the end of the loop
    /// turn.
    unflushed: Vec<usize>,
    /// Connections that may be paused (a superset: entries are checked).
    paused: Vec<usize>,
    /// A signal asked for shutdown (the listeners are closed).
    shutting_down: bool,
    /// The engine said [`Output::Stopped`].
    stopped: bool,
    /// `serve --capture`: where the engine's records go.
    capture: Option<CaptureFile>,
    /// The audit trail.
    audit: Option<AuditLog>,
    /// The native listener's TLS, if on.
    tls: Option<TlsConfig>,
    /// (when its handshake is due, key) of each TLS connection, in the
    /// order they were accepted (see `expire_handshakes`).
    handshakes: VecDeque<(Instant, usize)>,
    /// Plaintext out of a TLS record, on its way to the engine.
    plain: Vec<u8>,
    /// The admin listener's requests for the engine's counters.
    scrapes: Option<Receiver<Sender<Scrape>>>,
    /// Whether the listeners are open (for `/readyz`).
    listening: Arc<AtomicBool>,
}

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight and
/// returns.
pub fn serve(settings: Settings) -> Result<(), ServeError> {
    let start = Start::new(settings)?;
    let bound = start.listeners()?;
    let poll = Poll::new().map_err(ServeError::os("cannot create the event loop"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServeError::os("cannot create a waker"))?);
    let (tx, results) = unbounded();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let pending = wake_pending.clone();
    let result_waker = Arc::clone(&waker);
    let on_result: OnResult = Arc::new(move |id, result| {
        // The loop outlives the pool's workers, so a failed send only
        // happens while it is returning.
        let _ = tx.send((id, result));
        // The send comes first: a loop that clears the flag after this swap
        // then finds the result in the channel.
        if !pending.swap(true, Ordering::AcqRel) {
            let _ = result_waker.wake();
        }
    });
    let pool = start.pool(on_result)?;
    let audit = start.audit()?;
    // The admin listener asks the loop for the engine's counters: a
    // request on a channel, and a wake-up.
    let (scrape_requests, scrapes) = unbounded::<Sender<Scrape>>();
    let listening = Arc::new(AtomicBool::new(true));
    let ask = move || {
        let (reply, answer) = bounded(1);
        scrape_requests.send(reply).ok()?;
        waker.wake().ok()?;
        answer.recv_timeout(ENGINE_PATIENCE).ok()
    };
    let admin = start.admin(&pool, &audit, ask, Arc::clone(&listening))?;

    let mut listeners = Vec::new();
    for (i, (which, socket)) in bound.all.iter().enumerate() {
        socket.set_nonblocking(true).map_err(ServeError::os("cannot configure a listener"))?;
        let socket = socket.try_clone().map_err(ServeError::os("cannot configure a listener"))?;
        let mut listener = TcpListener::from_std(socket);
        poll.registry()
            .register(&mut listener, Token(i), Interest::READABLE)
            .map_err(ServeError::os("cannot watch a listener"))?;
        listeners.push((*which, listener));
    }
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(ServeError::os("cannot catch signals"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(ServeError::os("cannot watch signals"))?;
    bound.announce("mio", admin.as_ref().map(AdminListener::addr));
    drop(bound);

    let (engine, capture) = start.engine()?;
    let mut event_loop = EventLoop::new(poll, engine, listeners, pool, results, wake_pending, capture);
    event_loop.tls = start.tls();
    event_loop.audit = Some(audit);
    event_loop.scrapes = Some(scrapes);
    event_loop.listening = listening;
    let outcome = event_loop.run(&mut signals);
    let EventLoop { pool, capture, audit, .. } = event_loop;
    if let Some(admin) = admin {
        admin.stop();
    }
    if let Some(mut capture) = capture {
        capture.flush();
    }
    pool.shutdown();
    if let Some(audit) = audit {
        audit.close();
    }
    tracing::info!("stopped");
    outcome
}

impl EventLoop {
    /// A loop with no connection yet, around what the start-up made.
    fn new(
        poll: Poll,
        engine: Engine,
        listeners: Vec<(Listener, TcpListener)>,
        pool: EffectPool,
        results: Receiver<(EffectId, EffectResult)>,
        wake_pending: Arc<AtomicBool>,
        capture: Option<CaptureFile>,
    ) -> EventLoop {
        EventLoop {
            poll,
            engine,
            rng: os_rng(),
            listeners,
            conns: Slab::new(),
            loop_reads: pool.loop_reads(),
            answered: Vec::new(),
            pool,
            results,
            wake_pending,
            buf: vec![0; READ_CHUNK],
            unflushed: Vec::new(),
            paused: Vec::new(),
            shutting_down: false,
            stopped: false,
            capture,
            audit: None,
            tls: None,
            handshakes: VecDeque::new(),
            plain: Vec::new(),
            scrapes: None,
            listening: Arc::new(AtomicBool::new(true)),
        }
    }

    fn run(&mut self, signals: &mut Signals) -> Result<(), ServeError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServeError::Os { what: "event loop failed", source: e });
            }
            for event in events.iter() {
                match event.token() {
                    Token(i) if i < self.listeners.len() => self.accept(i),
                    WAKER => {}
                    SIGNALS => {
                        for signal in signals.pending() {
                            match signal {
                                SIGHUP => self.reload_tls(),
                                _ => self.shut_down(),
                            }
                        }
                    }
                    Token(t) => {
                        let key = t - FIRST_CONN;
                        if event.is_writable() {
                            self.flush(key);
                        }
                        if event.is_readable() || event.is_read_closed() {
                            self.read(key);
                        }
                    }
                }
            }
            self.feed_results();
            self.answer_scrapes();
            self.expire_handshakes();
            if self.engine.poll_timeout().is_some_and(|at| at <= now()) {
                self.handle(Input::Timeout);
            }
            self.settle();
            // What the sockets took may have made room for more input.
            self.resume_paused();
            self.settle();
            if self.stopped {
                return Ok(());
            }
            // Checked once a turn: after a breach the engine takes no input
            // and gives no deadline, so nothing later in the turn matters,
            // and the next poll could wait forever.
            if let Some(&error) = self.engine.error() {
                tracing::error!(%error, "stopping: the engine met a breach of its driving contract");
                return Err(ServeError::Contract(error));
            }
        }
    }

    /// How long to wait for events: until the engine's next deadline, or
    /// not at all while a paused connection is wanted again (its socket
    /// may hold input that no new event will announce).
    fn poll_timeout(&self) -> Option<Duration> {
        let resumable = self
            .paused
            .iter()
            .any(|&key| self.conns.get(key).is_some_and(|c| c.paused) && self.engine.wants_input(conn_id(key)));
        if resumable || self.loop_reads.as_ref().is_some_and(|r| !r.is_empty()) {
            return Some(Duration::ZERO);
        }
        let engine = self.engine.poll_timeout().map(|at| {
            // Round up, so the wake-up is never just before the deadline.
            (at - now()).to_std().map_or(Duration::ZERO, |d| d + Duration::from_millis(1))
        });
        let handshake = self
            .next_handshake_deadline()
            .map(|at| at.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
        match (engine, handshake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The longest a TLS handshake may take: the engine's bound on a
    /// partial line.
    fn handshake_limit(&self) -> Duration {
        self.engine.config().partial_line_timeout.to_std().unwrap_or(Duration::ZERO)
    }

    /// When the oldest handshake listed is due.
    fn next_handshake_deadline(&self) -> Option<Instant> {
        self.handshakes.front().map(|&(at, _)| at)
    }

    /// Fails the TLS connections whose handshake outlived its bound. All
    /// share one bound, so the list is in deadline order. An entry names
    /// the connection by its key, which a later connection may reuse: that
    /// one is judged by its own accept time (and listed for it).
    fn expire_handshakes(&mut self) {
        let (limit, now) = (self.handshake_limit(), Instant::now());
        while let Some(&(at, key)) = self.handshakes.front() {
            if at > now {
                return;
            }
            self.handshakes.pop_front();
            let overdue =
                self.conns.get(key).and_then(|c| c.tls.as_ref()).is_some_and(|t| t.handshake_overdue(now, limit));
            if overdue {
                tracing::debug!(conn = key, "TLS handshake not done in time");
                if let Some(c) = self.conns.get_mut(key) {
                    c.read_done = true;
                }
                self.handle(Input::Failed { conn: conn_id(key) });
            }
        }
    }

    /// SIGHUP: the certificate and key files again, for the handshakes
    /// from now on.
    fn reload_tls(&mut self) {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => tracing::info!("SIGHUP: no TLS to reload"),
        }
    }

    /// Feeds one input to the engine, then carries out what it asks.
    fn handle(&mut self, input: Input<'_>) {
        self.engine.handle(now(), &mut self.rng, input);
        self.dispatch();
    }

    /// Carries out the engine's outputs; bytes wait for the end of the
    /// loop turn.
    fn dispatch(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    let key = conn_key(conn);
                    if let Some(c) = self.conns.get_mut(key) {
                        match &mut c.tls {
                            Some(tls) => tls.transmit(&bytes, &mut c.out),
                            None => c.out.extend_from_slice(&bytes),
                        }
                        mark_unflushed(&mut self.unflushed, key, c);
                    }
                }
                Output::HalfClose { conn } => {
                    let key = conn_key(conn);
                    if let Some(c) = self.conns.get_mut(key) {
                        match &mut c.tls {
                            // TLS says it with a close_notify after the
                            // replies, which are all out by now.
                            Some(tls) => {
                                tls.close(&mut c.out);
                                mark_unflushed(&mut self.unflushed, key, c);
                            }
                            // Fails only if the peer is gone, which the
                            // next read reports.
                            None => {
                                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                            }
                        }
                    }
                }
                Output::Close { conn } => self.drop_conn(conn_key(conn)),
                Output::Perform { id, effect } => {
                    let effect = match &mut self.loop_reads {
                        Some(reads) => reads.keep(id, effect),
                        None => Some(effect),
                    };
                    if let Some(effect) = effect {
                        self.pool.submit(id, effect);
                    }
                }
                Output::Stopped => self.stopped = true,
            }
        }
        log_notices(&mut self.engine, self.audit.as_ref());
        if let Some(capture) = &mut self.capture {
            capture.append(&mut self.engine);
        }
    }

    /// The end of a turn's work: the kept token checks answered, and every
    /// reply written out, until neither leaves anything behind (what a
    /// socket took may let the engine take more requests, so more checks).
    fn settle(&mut self) {
        loop {
            self.answer_kept();
            self.flush_all();
            if self.loop_reads.as_ref().is_none_or(LoopReads::is_empty) {
                return;
            }
        }
    }

    /// Answers the token checks kept this turn: the session cache's hits
    /// here, after the turn's last read from a socket (see
    /// `tokenizer_auth_effects::loop_reads`); the rest go to the readers.
    fn answer_kept(&mut self) {
        let mut answered = std::mem::take(&mut self.answered);
        while let Some(reads) = self.loop_reads.as_mut().filter(|r| !r.is_empty()) {
            reads.answer(&self.pool, &mut answered);
            for (id, result) in answered.drain(..) {
                self.handle(Input::Completed { id, result });
            }
        }
        self.answered = answered;
    }

    /// Writes out every connection that has something queued. What a
    /// socket took is reported, which may queue more.
    fn flush_all(&mut self) {
        while let Some(key) = self.unflushed.pop() {
            if let Some(c) = self.conns.get_mut(key) {
                c.unflushed = false;
                self.flush(key);
            }
        }
    }

    /// Reads from connections that paused, now that the engine may want
    /// input again (edge-triggered events will not say so).
    fn resume_paused(&mut self) {
        let mut candidates = std::mem::take(&mut self.paused);
        candidates.retain(|&key| self.conns.get(key).is_some_and(|c| c.paused));
        for &key in &candidates {
            if self.engine.wants_input(conn_id(key)) {
                self.read(key);
            }
        }
        // `read` re-lists a connection that pauses again; keep the rest.
        candidates.retain(|&key| self.conns.get(key).is_some_and(|c| c.paused));
        self.paused.extend(candidates);
        self.paused.sort_unstable();
        self.paused.dedup();
    }

    fn accept(&mut self, index: usize) {
        loop {
            let (which, listener) = &self.listeners[index];
            let which = *which;
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let handshake_limit = self.handshake_limit();
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, Token(FIRST_CONN + key), interest) {
                        tracing::warn!(error = %e, "cannot watch a connection");
                        continue;
                    }
                    let max_backlog = self.engine.config().max_backlog;
                    if let Err(e) = socket::configure(SockRef::from(&stream), max_backlog, None) {
                        tracing::debug!(error = %e, "cannot set up a connection's socket");
                    }
                    let tls = match (&self.tls, which) {
                        (Some(config), Listener::Native) => match config.session() {
                            Ok(session) => Some(Box::new(session)),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot start TLS on a connection");
                                let _ = self.poll.registry().deregister(&mut stream);
                                continue;
                            }
                        },
                        _ => None,
                    };
                    if let Some(due) = tls.as_ref().and_then(|t| t.handshake_deadline(handshake_limit)) {
                        self.handshakes.push_back((due, key));
                    }
                    entry.insert(Conn {
                        stream,
                        out: Vec::new(),
                        paused: false,
                        read_done: false,
                        unflushed: false,
                        tls,
                    });
                    self.handle(Input::Opened { conn: conn_id(key), peer: peer_ip(peer), listener: which });
                    // Data may have arrived with the connection.
                    self.read(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: the connection waits in the
                    // backlog; try again on the next event.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn read(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.read_done {
                return;
            }
            if !self.engine.wants_input(conn_id(key)) {
                if !conn.paused {
                    conn.paused = true;
                    self.paused.push(key);
                }
                return;
            }
            conn.paused = false;
            match conn.stream.read(&mut self.buf) {
                Ok(0) => {
                    // The peer is done sending: the engine finishes what it
                    // owes, then closes.
                    conn.read_done = true;
                    self.handle(Input::Closed { conn: conn_id(key) });
                    return;
                }
                Ok(n) if conn.tls.is_some() => {
                    if !self.receive_tls(key, n) {
                        return;
                    }
                }
                Ok(n) => {
                    self.engine.handle(
                        now(),
                        &mut self.rng,
                        Input::Received { conn: conn_id(key), bytes: &self.buf[..n] },
                    );
                    self.dispatch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.read_done = true;
                    self.handle(Input::Failed { conn: conn_id(key) });
                    return;
                }
            }
        }
    }

    /// Takes `n` bytes of ciphertext read into `buf` on a TLS connection:
    /// its records go out, its plaintext goes to the engine. Returns
    /// whether to read on.
    fn receive_tls(&mut self, key: usize, n: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Some(tls) = conn.tls.as_mut() else { return false };
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let before = conn.out.len();
        let received = tls.receive(&self.buf[..n], &mut plain, &mut conn.out);
        if conn.out.len() > before {
            mark_unflushed(&mut self.unflushed, key, conn);
        }
        if !plain.is_empty() {
            self.engine.handle(now(), &mut self.rng, Input::Received { conn: conn_id(key), bytes: &plain });
            self.dispatch();
        }
        self.plain = plain;
        let input = match received {
            Ok(Received::Open) => return true,
            Ok(Received::Closed) => Input::Closed { conn: conn_id(key) },
            Err(e) => {
                tracing::debug!(conn = key, error = %e, "TLS failed");
                // The alert goes out if the socket takes it now; the engine
                // closes the connection.
                self.flush(key);
                Input::Failed { conn: conn_id(key) }
            }
        };
        if let Some(c) = self.conns.get_mut(key) {
            c.read_done = true;
        }
        self.handle(input);
        false
    }

    /// Writes what is queued and reports what the socket took.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut written = 0;
        let failed = loop {
            if written == conn.out.len() {
                break false;
            }
            match conn.stream.write(&conn.out[written..]) {
                Ok(0) => break true,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        conn.out.drain(..written);
        // Over TLS, the plaintext whose records are all out.
        let sent = match &mut conn.tls {
            Some(tls) => tls.took(written),
            None => written,
        };
        if failed {
            self.handle(Input::Failed { conn: conn_id(key) });
        } else if sent > 0 {
            self.handle(Input::Sent { conn: conn_id(key), bytes: sent });
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn feed_results(&mut self) {
        // Cleared first: a result sent after this point wakes the loop again.
        // A swap, not a store, so the results sent before a worker's swap
        // that saw the flag set are visible to the reads below.
        self.wake_pending.swap(false, Ordering::AcqRel);
        while let Ok((id, result)) = self.results.try_recv() {
            self.handle(Input::Completed { id, result });
        }
    }

    /// Hands the engine's counters to the admin listener's requests.
    fn answer_scrapes(&mut self) {
        let Some(scrapes) = &self.scrapes else { return };
        while let Ok(reply) = scrapes.try_recv() {
            let _ = reply.send(Scrape::of(&self.engine));
        }
    }

    /// Stops accepting; the engine finishes what is in flight.
    fn shut_down(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.listening.store(false, Ordering::Release);
        tracing::info!("shutting down: finishing the requests in flight");
        for (_, listener) in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        self.handle(Input::Shutdown);
    }
}

fn conn_id(key: usize) -> ConnId {
    ConnId(key as u64)
}

fn conn_key(conn: ConnId) -> usize {
    usize::try_from(conn.0).unwrap_or(usize::MAX)
}

fn peer_ip(peer: SocketAddr) -> std::net::IpAddr {
    peer.ip()
}

/// Lists a connection for the end-of-turn flush, once.
fn mark_unflushed(unflushed: &mut Vec<usize>, key: usize, conn: &mut Conn) {
    if !conn.unflushed {
        conn.unflushed = true;
        unflushed.push(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tokenizer_auth_effects::password::Cost;
    use tokenizer_auth_engine::{ContractError, EffectId};

    use super::*;

    #[test]
    fn a_breach_of_the_engine_contract_ends_the_loop_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path().to_path_buf());
        settings.cost = Cost::TEST_ONLY;
        let start = Start::new(settings).unwrap();
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        let (tx, results) = unbounded();
        let pool = start.pool(Arc::new(|_, _| {})).unwrap();
        let (engine, capture) = start.engine().unwrap();
        let wake_pending = Arc::new(AtomicBool::new(true));
        let mut event_loop = EventLoop::new(poll, engine, Vec::new(), pool, results, wake_pending, capture);
        // A worker hands back a result for an effect never asked for.
        let stray = EffectId(7);
        tx.send((stray, EffectResult::Failed)).unwrap();
        waker.wake().unwrap();
        // On a thread: a loop that missed the breach would wait forever for
        // an event.
        let (done, outcome) = mpsc::channel();
        std::thread::spawn(move || {
            let mut signals = Signals::new::<[i32; 0], i32>([]).unwrap();
            let _ = done.send(event_loop.run(&mut signals));
        });
        let outcome = outcome.recv_timeout(Duration::from_secs(20)).expect("the loop did not stop");
        assert!(matches!(outcome, Err(ServeError::Contract(ContractError::UnknownEffect(id))) if id == stray));
    }
}
