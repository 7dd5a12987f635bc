//! The event-loop runtime (the default for `serve`).
//!
//! One thread runs a mio event loop that owns every socket and the engine.
//! It reads what sockets offer (only while the engine wants input), feeds
//! it to the engine, writes what the engine transmits, and hands effects to
//! the worker pools of `runtime-std` (store, hash, mail). Workers send
//! results back through a channel and wake the loop with a `mio::Waker`;
//! the loop feeds them to the engine in the order they arrive. The engine's
//! next deadline is the poll timeout. So the loop never blocks on SQLite,
//! argon2 or a relay, and every protocol decision stays in the engine.
//!
//! A loop turn batches its system calls: the replies the engine transmits
//! during a turn are appended to their connection's buffer and written once
//! at the end of the turn (16 pipelined replies cost one `send`, not 16),
//! and workers wake the loop only when it is not already due to look at
//! their results.
//!
//! On SIGINT or SIGTERM the loop stops accepting and reading, lets the
//! requests in flight finish and their replies go out (for at most
//! [`DRAIN_LIMIT`]), then returns.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tokenizer_auth_engine::{ConnId, EffectId, EffectResult, Engine, Input, Listener, Output};
use tokenizer_auth_runtime_std::password::Hasher;
use tokenizer_auth_runtime_std::pool::EffectPool;
use tokenizer_auth_runtime_std::serve::{CaptureFile, Listeners, ServeError, now, os_rng};
use tokenizer_auth_runtime_std::settings::Settings;

/// The longest a shutdown waits for requests in flight.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The most read from a socket at a time (the engine's contract).
const READ_CHUNK: usize = 64 * 1024;

const WAKER: Token = Token(3);
const SIGNALS: Token = Token(4);
/// Tokens below this are the listeners (0–2), the waker and the signals.
const FIRST_CONN: usize = 5;

fn io_error(what: &str) -> impl Fn(io::Error) -> ServeError + '_ {
    move |e| ServeError::new(format!("{what}: {e}"))
}

/// One client socket.
struct Conn {
    stream: TcpStream,
    /// Bytes the engine transmitted that the socket has not taken yet.
    out: Vec<u8>,
    /// The engine asked to close once `out` is written.
    closing: bool,
    /// Reading stopped because the engine wanted no input; retried at the
    /// end of each loop turn.
    paused: bool,
    /// Listed in `EventLoop::unflushed`.
    unflushed: bool,
    /// All written and the write side shut: what still arrives is read and
    /// discarded until this instant, so closing with unread input does not
    /// reset the connection before the client has read its last reply.
    lingering_until: Option<Instant>,
}

/// How long a closed connection keeps discarding input.
const LINGER: Duration = Duration::from_secs(2);

/// The event loop and everything it owns.
struct EventLoop {
    poll: Poll,
    engine: Engine,
    rng: rand_core::UnwrapErr<getrandom::SysRng>,
    listeners: Vec<(Listener, TcpListener)>,
    conns: Slab<Conn>,
    pool: EffectPool,
    results: Receiver<(EffectId, EffectResult)>,
    /// Set by a worker that woke the loop; cleared before the loop takes
    /// the results, so one wake-up serves every result sent before it.
    wake_pending: Arc<AtomicBool>,
    buf: Vec<u8>,
    /// Connections with bytes to write or a close to carry out, flushed at
    /// the end of the loop turn.
    unflushed: Vec<usize>,
    /// Connections that may be paused (a superset: entries are checked).
    paused: Vec<usize>,
    /// Set once a signal asked for shutdown.
    draining_since: Option<Instant>,
    /// Connections lingering after their close, with their deadline.
    lingering: Vec<(usize, Instant)>,
    /// `serve --capture`: where the engine's records go.
    capture: Option<CaptureFile>,
}

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight and
/// returns.
pub fn serve(mut settings: Settings) -> Result<(), ServeError> {
    let hasher = Hasher::new(settings.cost).map_err(|e| ServeError::new(e.to_string()))?;
    settings.engine.dummy_password = hasher.dummy().clone();
    let bound = Listeners::bind(&settings)?;
    let poll = Poll::new().map_err(io_error("cannot create the event loop"))?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(io_error("cannot create a waker"))?;
    let (tx, results) = unbounded();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let pending = wake_pending.clone();
    let done: tokenizer_auth_runtime_std::pool::Done = Arc::new(move |id, result| {
        // The loop outlives the pool's workers, so a failed send only
        // happens while it is returning.
        let _ = tx.send((id, result));
        // The send comes first: a loop that clears the flag after this swap
        // then finds the result in the channel.
        if !pending.swap(true, Ordering::AcqRel) {
            let _ = waker.wake();
        }
    });
    let pool = EffectPool::start(&settings, &hasher, done).map_err(|e| ServeError::new(e.to_string()))?;

    let mut listeners = Vec::new();
    for (i, (which, socket)) in bound.all.iter().enumerate() {
        socket.set_nonblocking(true).map_err(io_error("cannot configure a listener"))?;
        let socket = socket.try_clone().map_err(io_error("cannot configure a listener"))?;
        let mut listener = TcpListener::from_std(socket);
        poll.registry()
            .register(&mut listener, Token(i), Interest::READABLE)
            .map_err(io_error("cannot watch a listener"))?;
        listeners.push((*which, listener));
    }
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(io_error("cannot catch signals"))?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE).map_err(io_error("cannot watch signals"))?;
    bound.announce("mio");
    drop(bound);

    let mut engine = Engine::new(settings.engine.clone());
    let capture = match &settings.capture {
        Some(path) => Some(CaptureFile::start(path, settings.capture_max_bytes, &mut engine)?),
        None => None,
    };
    let mut event_loop = EventLoop {
        poll,
        engine,
        rng: os_rng(),
        listeners,
        conns: Slab::new(),
        pool,
        results,
        wake_pending,
        buf: vec![0; READ_CHUNK],
        unflushed: Vec::new(),
        paused: Vec::new(),
        draining_since: None,
        lingering: Vec::new(),
        capture,
    };
    let outcome = event_loop.run(&mut signals);
    let EventLoop { pool, capture, .. } = event_loop;
    if let Some(mut capture) = capture {
        capture.flush();
    }
    pool.shutdown();
    tracing::info!("stopped");
    outcome
}

impl EventLoop {
    fn run(&mut self, signals: &mut Signals) -> Result<(), ServeError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServeError::new(format!("event loop failed: {e}")));
            }
            for event in events.iter() {
                match event.token() {
                    Token(i) if i < self.listeners.len() => self.accept(i),
                    WAKER => {}
                    SIGNALS => {
                        if signals.pending().next().is_some() {
                            self.begin_drain();
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
            self.take_results();
            self.end_lingering();
            if self.engine.poll_timeout().is_some_and(|at| at <= now()) {
                self.handle(Input::Timeout);
            }
            if self.draining_since.is_none() {
                self.resume_paused();
            }
            self.flush_all();
            if let Some(since) = self.draining_since {
                let idle = self.engine.effects_in_flight() == 0 && self.conns.iter().all(|(_, c)| c.out.is_empty());
                if idle || since.elapsed() >= DRAIN_LIMIT {
                    return Ok(());
                }
            }
        }
    }

    /// How long to wait for events: until the engine's next deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        let until_deadline = self.engine.poll_timeout().map(|at| {
            // Round up, so the wake-up is never just before the deadline.
            (at - now()).to_std().map_or(Duration::ZERO, |d| d + Duration::from_millis(1))
        });
        // Draining and lingering are checked on a short beat.
        let beat = (self.draining_since.is_some() || !self.lingering.is_empty()).then_some(Duration::from_millis(50));
        match (until_deadline, beat) {
            (Some(d), Some(b)) => Some(d.min(b)),
            (d, b) => d.or(b),
        }
    }

    /// Feeds one input to the engine, then carries out what it asks.
    fn handle(&mut self, input: Input<'_>) {
        self.engine.handle(now(), &mut self.rng, input);
        self.dispatch();
    }

    /// Carries out the engine's outputs; bytes and closes wait for the end
    /// of the loop turn.
    fn dispatch(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    let key = conn_key(conn);
                    if let Some(c) = self.conns.get_mut(key) {
                        c.out.extend_from_slice(&bytes);
                        mark_unflushed(&mut self.unflushed, key, c);
                    }
                }
                Output::Close { conn } => {
                    let key = conn_key(conn);
                    if let Some(c) = self.conns.get_mut(key) {
                        c.closing = true;
                        mark_unflushed(&mut self.unflushed, key, c);
                    }
                }
                Output::Perform { id, effect } => self.pool.submit(id, effect),
            }
        }
        if let Some(capture) = &mut self.capture {
            capture.append(&mut self.engine);
        }
    }

    /// Writes out every connection that has something queued. A failed
    /// write closes its connection in the engine, which may queue more.
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
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, Token(FIRST_CONN + key), interest) {
                        tracing::warn!(error = %e, "cannot watch a connection");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    entry.insert(Conn {
                        stream,
                        out: Vec::new(),
                        closing: false,
                        paused: false,
                        unflushed: false,
                        lingering_until: None,
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
        if self.conns.get(key).is_some_and(|c| c.lingering_until.is_some()) {
            self.discard(key);
            return;
        }
        while self.draining_since.is_none() {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.closing {
                return;
            }
            if !self.engine.wants_input(conn_id(key)) {
                conn.paused = true;
                self.paused.push(key);
                return;
            }
            conn.paused = false;
            match conn.stream.read(&mut self.buf) {
                Ok(0) => {
                    // The peer is done sending: the engine finishes what it
                    // owes, then asks to close.
                    conn.paused = true;
                    self.paused.push(key);
                    self.engine.handle(now(), &mut self.rng, Input::Closed { conn: conn_id(key) });
                    self.dispatch_and_forget_if_done(key);
                    return;
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
                    self.drop_conn(key);
                    self.handle(Input::Closed { conn: conn_id(key) });
                    return;
                }
            }
        }
    }

    /// After the peer closed: a connection the engine owes nothing is
    /// already forgotten there (no close will come), so its socket goes now;
    /// otherwise the engine asks to close once its replies are out.
    fn dispatch_and_forget_if_done(&mut self, key: usize) {
        self.dispatch();
        if !self.engine.has_connection(conn_id(key)) && self.conns.get(key).is_some_and(|c| !c.closing) {
            self.drop_conn(key);
        }
    }

    /// Writes what is queued; closes the socket once it is all out and the
    /// engine asked to close.
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
        if failed {
            // The peer is gone: nothing more can reach it.
            self.drop_conn(key);
            self.handle(Input::Closed { conn: conn_id(key) });
        } else if conn.closing && conn.out.is_empty() && conn.lingering_until.is_none() {
            // Everything is out: end the write side and linger.
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            let until = Instant::now() + LINGER;
            conn.lingering_until = Some(until);
            self.lingering.push((key, until));
            self.discard(key);
        }
    }

    /// Reads and drops what a closed connection still sends; the socket goes
    /// at its end of input, on an error, or when the linger time is up.
    fn discard(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        loop {
            match conn.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.drop_conn(key);
    }

    fn end_lingering(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = self.lingering.drain(..).partition(|(_, until)| *until <= now);
        self.lingering = waiting;
        for (key, until) in due {
            if self.conns.get(key).is_some_and(|c| c.lingering_until == Some(until)) {
                self.drop_conn(key);
            }
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn take_results(&mut self) {
        // Cleared first: a result sent after this point wakes the loop again.
        // A swap, not a store, so the results sent before a worker's swap
        // that saw the flag set are visible to the reads below.
        self.wake_pending.swap(false, Ordering::AcqRel);
        while let Ok((id, result)) = self.results.try_recv() {
            self.handle(Input::Completed { id, result });
        }
    }

    /// Stops accepting and reading; requests in flight finish.
    fn begin_drain(&mut self) {
        if self.draining_since.is_some() {
            return;
        }
        tracing::info!("shutting down: finishing the requests in flight");
        for (_, listener) in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        self.draining_since = Some(Instant::now());
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
