//! The event-loop runtime (the default for `serve`).
//!
//! Each of `loops` threads (one per core by default) runs a mio event loop
//! that owns its connections and an engine of its own. A loop reads what
//! its sockets offer (only while the engine wants input), feeds it to the
//! engine, writes what the engine transmits, and hands effects to the
//! worker pools of `tokenizer-auth-effects` (store, hash, mail), which all
//! loops share. Workers send results back through the loop's channel (an
//! effect's id carries its loop) and wake it with a `mio::Waker`; the loop
//! feeds them to the engine in the order they arrive. The engine's next
//! deadline is the poll timeout. So a loop never blocks on SQLite, argon2
//! or a relay, and every protocol decision stays in the engine.
//!
//! The first loop owns the listeners and the signals: it accepts, and
//! deals each connection to the loop with the most room (in turn among
//! equals), where it stays. The loops
//! share nothing but the workers, the store and the audit trail: every
//! rule that spans connections (one passcode, one login; one successor per
//! token; the brute-force bounds) is kept by the store, as it is across
//! servers, and the bounds an engine counts in memory (`max_connections`,
//! `max_password_checks`) are shared out between the loops (see
//! `Start::engine_of`). A shutdown reaches every loop; the admin listener
//! shows the sum of the engines' counters.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Which loop of the server this is (0 accepts, and alone takes
    /// signals).
    index: usize,
    poll: Poll,
    engine: Engine,
    rng: OsRng,
    /// The listeners (the first loop's alone).
    listeners: Vec<(Listener, TcpListener)>,
    /// Every loop of the server, to deal accepted connections out to (the
    /// first loop's alone; empty elsewhere).
    peers: Vec<Peer>,
    /// Where the search for the loop with the most room starts next time
    /// (so that loops with equal room take turns).
    next_loop: usize,
    conns: Slab<Conn>,
    /// The workers, shared by every loop.
    pool: Arc<EffectPool>,
    /// Token checks this loop answers from the session cache at the end of
    /// its turn, without the hop to a reader.
    loop_reads: Option<LoopReads>,
    /// Their answers, on their way to the engine (kept for its capacity).
    answered: Vec<(EffectId, EffectResult)>,
    /// What other threads send this loop.
    inbox: Inbox,
    /// What the loops share.
    shared: Arc<Shared>,
    buf: Vec<u8>,
    /// Connections with bytes to write, flushed at the end of the loop
    /// turn.
    unflushed: Vec<usize>,
    /// Connections that may be paused (a superset: entries are checked).
    paused: Vec<usize>,
    /// Shutdown began here (the listeners are closed).
    shutting_down: bool,
    /// The engine said [`Output::Stopped`].
    stopped: bool,
    /// `serve --capture`: where the engine's records go.
    capture: Option<CaptureFile>,
    /// The audit trail, shared by every loop.
    audit: Option<Arc<AuditLog>>,
    /// The native listener's TLS, if on.
    tls: Option<TlsConfig>,
    /// (when its handshake is due, key) of each TLS connection, in the
    /// order they were accepted (see `expire_handshakes`).
    handshakes: VecDeque<(Instant, usize)>,
    /// Plaintext out of a TLS record, on its way to the engine.
    plain: Vec<u8>,
}

/// What the loops of one server share.
struct Shared {
    /// Shutdown was asked for (by a signal, or a loop that ended): every
    /// loop finishes what is in flight and stops.
    stop: AtomicBool,
    /// Whether the listeners are open (for `/readyz`).
    listening: Arc<AtomicBool>,
    /// Every loop's waker.
    wakers: Vec<Arc<Waker>>,
    /// Every loop's connections, to deal new ones where there is room.
    loads: Vec<Load>,
}

/// How full one loop is.
struct Load {
    /// Connections dealt to the loop and not yet closed by its engine.
    open: AtomicUsize,
    /// Its engine's `max_connections` (its share of the server's).
    share: usize,
}

impl Shared {
    /// Asks every loop to stop.
    fn stop_all(&self) {
        self.stop.store(true, Ordering::Release);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }
}

/// Asks every loop to stop when dropped: held by each loop's thread, so
/// that a loop that panics stops the server as one that returns does.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

/// A connection the first loop accepted for another.
struct Handoff {
    stream: TcpStream,
    peer: SocketAddr,
    which: Listener,
}

/// How the first loop reaches another with a connection.
struct Peer {
    handoffs: Sender<Handoff>,
    waker: Arc<Waker>,
}

/// What other threads send one loop: effect results (the workers),
/// requests for the engine's counters (the admin listener), connections
/// (the first loop).
struct Inbox {
    results: Receiver<(EffectId, EffectResult)>,
    /// Set by a worker that woke the loop; cleared before the loop takes
    /// the results, so one wake-up serves every result sent before it.
    wake_pending: Arc<AtomicBool>,
    scrapes: Receiver<Sender<Scrape>>,
    handoffs: Receiver<Handoff>,
}

/// The sending ends of one loop's [`Inbox`], and its waker.
struct Mailbox {
    results: Sender<(EffectId, EffectResult)>,
    wake_pending: Arc<AtomicBool>,
    scrapes: Sender<Sender<Scrape>>,
    handoffs: Sender<Handoff>,
    waker: Arc<Waker>,
}

impl Mailbox {
    /// A new loop's mailbox and inbox, its waker on `poll`.
    fn new(poll: &Poll) -> Result<(Mailbox, Inbox), ServeError> {
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServeError::os("cannot create a waker"))?);
        let ((results, results_rx), (scrapes, scrapes_rx), (handoffs, handoffs_rx)) =
            (unbounded(), unbounded(), unbounded());
        let wake_pending = Arc::new(AtomicBool::new(false));
        let inbox = Inbox {
            results: results_rx,
            wake_pending: Arc::clone(&wake_pending),
            scrapes: scrapes_rx,
            handoffs: handoffs_rx,
        };
        Ok((Mailbox { results, wake_pending, scrapes, handoffs, waker }, inbox))
    }

    /// A worker's result for this loop.
    fn deliver(&self, id: EffectId, result: EffectResult) {
        // The loop outlives the pool's workers, so a failed send only
        // happens while it is returning.
        let _ = self.results.send((id, result));
        // The send comes first: a loop that clears the flag after this swap
        // then finds the result in the channel.
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// The engine's counters, read on the loop's thread.
    fn scrape(&self) -> Option<Scrape> {
        let (reply, answer) = bounded(1);
        self.scrapes.send(reply).ok()?;
        self.waker.wake().ok()?;
        answer.recv_timeout(ENGINE_PATIENCE).ok()
    }
}

/// Effect ids on the shared pool carry their loop in the top byte: each
/// engine numbers its effects from 0 and never comes near 2^56, and there
/// are at most `MAX_LOOPS` (256) loops.
const LOOP_SHIFT: u32 = 56;

/// `id` of loop `index`, as the pool sees it.
fn tagged(index: usize, id: EffectId) -> EffectId {
    EffectId(id.0 | (index as u64) << LOOP_SHIFT)
}

/// The loop and the engine's own id of an id the pool hands back.
fn untagged(id: EffectId) -> (usize, EffectId) {
    ((id.0 >> LOOP_SHIFT) as usize, EffectId(id.0 & ((1 << LOOP_SHIFT) - 1)))
}

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight and
/// returns.
pub fn serve(settings: Settings) -> Result<(), ServeError> {
    let start = Start::new(settings)?;
    let count = start.loops();
    let bound = start.listeners()?;
    let (mut polls, mut mailboxes, mut inboxes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..count {
        let poll = Poll::new().map_err(ServeError::os("cannot create the event loop"))?;
        let (mailbox, inbox) = Mailbox::new(&poll)?;
        polls.push(poll);
        mailboxes.push(mailbox);
        inboxes.push(inbox);
    }
    let mailboxes = Arc::new(mailboxes);
    let on_result: OnResult = {
        let mailboxes = Arc::clone(&mailboxes);
        Arc::new(move |id, result| {
            let (index, id) = untagged(id);
            if let Some(mailbox) = mailboxes.get(index) {
                mailbox.deliver(id, result);
            }
        })
    };
    let pool = Arc::new(start.pool(on_result)?);
    let audit = Arc::new(start.audit()?);
    // The admin listener asks each loop for its engine's counters and
    // shows their sum.
    let ask = {
        let mailboxes = Arc::clone(&mailboxes);
        move || {
            let mut scrapes = mailboxes.iter().map(Mailbox::scrape);
            let mut total = scrapes.next()??;
            for scrape in scrapes {
                total.add_engine(&scrape?);
            }
            Some(total)
        }
    };
    let listening = Arc::new(AtomicBool::new(true));
    let admin = start.admin(&pool, &audit, ask, Arc::clone(&listening))?;

    let mut listeners = Vec::new();
    for (i, (which, socket)) in bound.all.iter().enumerate() {
        socket.set_nonblocking(true).map_err(ServeError::os("cannot configure a listener"))?;
        let socket = socket.try_clone().map_err(ServeError::os("cannot configure a listener"))?;
        let mut listener = TcpListener::from_std(socket);
        polls[0]
            .registry()
            .register(&mut listener, Token(i), Interest::READABLE)
            .map_err(ServeError::os("cannot watch a listener"))?;
        listeners.push((*which, listener));
    }
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(ServeError::os("cannot catch signals"))?;
    polls[0]
        .registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(ServeError::os("cannot watch signals"))?;

    let engines = (0..count).map(|index| start.engine_of(index, count)).collect::<Result<Vec<_>, _>>()?;
    let wakers = mailboxes.iter().map(|m| Arc::clone(&m.waker)).collect();
    let loads = engines
        .iter()
        .map(|(engine, _)| Load { open: AtomicUsize::new(0), share: engine.config().max_connections })
        .collect();
    let shared = Arc::new(Shared { stop: AtomicBool::new(false), listening, wakers, loads });
    let mut loops = Vec::new();
    for (index, ((poll, inbox), (engine, capture))) in polls.into_iter().zip(inboxes).zip(engines).enumerate() {
        let mut event_loop =
            EventLoop::new(index, poll, engine, Arc::clone(&pool), inbox, Arc::clone(&shared), capture);
        event_loop.tls = start.tls();
        event_loop.audit = Some(Arc::clone(&audit));
        loops.push(event_loop);
    }
    loops[0].listeners = listeners;
    loops[0].peers =
        mailboxes.iter().map(|m| Peer { handoffs: m.handoffs.clone(), waker: Arc::clone(&m.waker) }).collect();
    bound.announce("mio", admin.as_ref().map(AdminListener::addr));
    drop(bound);

    let mut first = loops.remove(0);
    let mut others = Vec::new();
    for mut event_loop in loops {
        let name = format!("event-loop-{}", event_loop.index);
        let stop = StopOnDrop(Arc::clone(&shared));
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // A loop that ends, by a breach of the engine's contract or a
            // panic, ends the server: the others finish what they have and
            // stop (the guard asks them as it drops, unwinding or not).
            let _stop = stop;
            event_loop.run(None)
        });
        // A thread that could not start drops its guard, which stops the
        // loops already running.
        others.push(thread.map_err(ServeError::os("cannot start an event loop"))?);
    }
    let mut outcome = first.run(Some(&mut signals));
    shared.stop_all();
    for thread in others {
        match thread.join() {
            Ok(Err(e)) if outcome.is_ok() => outcome = Err(e),
            Ok(_) => {}
            Err(_) => tracing::error!("an event loop panicked"),
        }
    }
    if let Some(admin) = admin {
        admin.stop();
    }
    if let Some(mut capture) = first.capture.take() {
        capture.flush();
    }
    drop(first);
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.shutdown(),
        Err(_) => tracing::warn!("the workers are still referenced; not waiting for them"),
    }
    if let Ok(audit) = Arc::try_unwrap(audit) {
        audit.close();
    }
    tracing::info!("stopped");
    outcome
}

impl EventLoop {
    /// Loop `index`, with no connection or listener yet, around what the
    /// start-up made.
    fn new(
        index: usize,
        poll: Poll,
        engine: Engine,
        pool: Arc<EffectPool>,
        inbox: Inbox,
        shared: Arc<Shared>,
        capture: Option<CaptureFile>,
    ) -> EventLoop {
        EventLoop {
            index,
            poll,
            engine,
            rng: os_rng(),
            listeners: Vec::new(),
            peers: Vec::new(),
            next_loop: 0,
            conns: Slab::new(),
            loop_reads: pool.loop_reads(),
            answered: Vec::new(),
            pool,
            inbox,
            shared,
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
        }
    }

    /// Runs the loop until its engine stopped (or broke its contract).
    /// The first loop takes the signals.
    fn run(&mut self, mut signals: Option<&mut Signals>) -> Result<(), ServeError> {
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
                        let Some(signals) = signals.as_deref_mut() else { continue };
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
            if self.shared.stop.load(Ordering::Acquire) {
                self.shut_down();
            }
            self.take_handoffs();
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
                        self.pool.submit(tagged(self.index, id), effect);
                    }
                }
                Output::Stopped => self.stopped = true,
            }
        }
        log_notices(&mut self.engine, self.audit.as_deref());
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
            let (pool, index) = (&self.pool, self.index);
            reads.answer(|id, effect| pool.submit(tagged(index, id), effect), &mut answered);
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

    /// Accepts what the listener has, and deals the connections out to
    /// the loops in turn.
    fn accept(&mut self, index: usize) {
        loop {
            let (which, listener) = &self.listeners[index];
            let which = *which;
            match listener.accept() {
                Ok((stream, peer)) => {
                    let target = self.pick_loop();
                    match self.peers.get(target) {
                        Some(other) if target != self.index => {
                            // A loop that is gone drops it (the server is
                            // stopping).
                            if other.handoffs.send(Handoff { stream, peer, which }).is_ok() {
                                let _ = other.waker.wake();
                            }
                        }
                        _ => self.adopt(stream, peer, which),
                    }
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

    /// The loop with the most room under its share of `max_connections`,
    /// counted as connections are dealt: so the server as a whole admits
    /// as many as the setting says, however they come and go (a loop with
    /// no room refuses, as its engine decides). Among equals, the next in
    /// turn.
    fn pick_loop(&mut self) -> usize {
        let loads = &self.shared.loads;
        let count = loads.len().max(1);
        let room = |i: usize| loads.get(i).map_or(0, |l| l.share as i64 - l.open.load(Ordering::Acquire) as i64);
        let mut best = self.next_loop % count;
        for i in (1..count).map(|k| (self.next_loop + k) % count) {
            if room(i) > room(best) {
                best = i;
            }
        }
        self.next_loop = (best + 1) % count;
        if let Some(load) = loads.get(best) {
            load.open.fetch_add(1, Ordering::AcqRel);
        }
        best
    }

    /// Takes the connections the first loop dealt to this one.
    fn take_handoffs(&mut self) {
        while let Ok(Handoff { stream, peer, which }) = self.inbox.handoffs.try_recv() {
            self.adopt(stream, peer, which);
        }
    }

    /// Serves an accepted connection on this loop.
    fn adopt(&mut self, mut stream: TcpStream, peer: SocketAddr, which: Listener) {
        let handshake_limit = self.handshake_limit();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(FIRST_CONN + key), interest) {
            tracing::warn!(error = %e, "cannot watch a connection");
            self.closed_one();
            return;
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
                    self.closed_one();
                    return;
                }
            },
            _ => None,
        };
        if let Some(due) = tls.as_ref().and_then(|t| t.handshake_deadline(handshake_limit)) {
            self.handshakes.push_back((due, key));
        }
        entry.insert(Conn { stream, out: Vec::new(), paused: false, read_done: false, unflushed: false, tls });
        self.handle(Input::Opened { conn: conn_id(key), peer: peer_ip(peer), listener: which });
        // Data may have arrived with the connection.
        self.read(key);
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
            self.closed_one();
        }
    }

    /// One connection dealt to this loop is gone.
    fn closed_one(&self) {
        if let Some(load) = self.shared.loads.get(self.index) {
            load.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn feed_results(&mut self) {
        // Cleared first: a result sent after this point wakes the loop again.
        // A swap, not a store, so the results sent before a worker's swap
        // that saw the flag set are visible to the reads below.
        self.inbox.wake_pending.swap(false, Ordering::AcqRel);
        while let Ok((id, result)) = self.inbox.results.try_recv() {
            self.handle(Input::Completed { id, result });
        }
    }

    /// Hands the engine's counters to the admin listener's requests.
    fn answer_scrapes(&mut self) {
        while let Ok(reply) = self.inbox.scrapes.try_recv() {
            let _ = reply.send(Scrape::of(&self.engine));
        }
    }

    /// Stops accepting; the engine finishes what is in flight.
    fn shut_down(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.shared.listening.store(false, Ordering::Release);
        // The other loops stop too (this one may have been told by them).
        self.shared.stop_all();
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
    fn a_loop_thread_that_panics_asks_every_loop_to_stop() {
        let poll = Poll::new().unwrap();
        let (mailbox, _inbox) = Mailbox::new(&poll).unwrap();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            listening: Arc::new(AtomicBool::new(true)),
            wakers: vec![Arc::clone(&mailbox.waker)],
            loads: Vec::new(),
        });
        let held = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let _stop = StopOnDrop(held);
            panic!("a bug in a loop");
        });
        assert!(thread.join().is_err());
        assert!(shared.stop.load(Ordering::Acquire), "the other loops were not asked to stop");
    }

    #[test]
    fn a_breach_of_the_engine_contract_ends_the_loop_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::new(dir.path().to_path_buf());
        settings.cost = Cost::TEST_ONLY;
        let start = Start::new(settings).unwrap();
        let poll = Poll::new().unwrap();
        let (mailbox, inbox) = Mailbox::new(&poll).unwrap();
        let pool = Arc::new(start.pool(Arc::new(|_, _| {})).unwrap());
        let (engine, capture) = start.engine().unwrap();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            listening: Arc::new(AtomicBool::new(true)),
            wakers: vec![Arc::clone(&mailbox.waker)],
            loads: Vec::new(),
        });
        let mut event_loop = EventLoop::new(0, poll, engine, pool, inbox, shared, capture);
        // A worker hands back a result for an effect never asked for.
        let stray = EffectId(7);
        mailbox.deliver(stray, EffectResult::Failed);
        // On a thread: a loop that missed the breach would wait forever for
        // an event.
        let (done, outcome) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(event_loop.run(None));
        });
        let outcome = outcome.recv_timeout(Duration::from_secs(20)).expect("the loop did not stop");
        assert!(matches!(outcome, Err(ServeError::Contract(ContractError::UnknownEffect(id))) if id == stray));
    }
}
