//! The threaded runtime (`serve --runtime std`): the old server's model, a
//! thread per connection on blocking sockets, around one engine behind a
//! mutex. Every slow thing (SQLite, argon2id, the relay) runs on the bounded
//! [`EffectPool`]; every connection policy is the engine's.
//!
//! Threads: an acceptor per listener; a thread per connection, which reads
//! (only while [`Engine::wants_input`]), feeds the engine and ends at its
//! [`Output::Close`]; the pool's workers, which feed [`Input::Completed`];
//! a timer that feeds [`Input::Timeout`]; and the caller's, which waits for
//! [`Stop`], then feeds [`Input::Shutdown`] and waits for
//! [`Output::Stopped`].
//!
//! Order: whoever feeds an input drains the outputs before it releases the
//! engine lock, appending each `Transmit` to its connection's queue, so a
//! queue holds the bytes in the engine's order. Sockets are written after
//! the lock is released, by one writer at a time per connection. A writer
//! that is not the connection's own thread waits at most
//! [`WORKER_PATIENCE`] on a full send buffer, then leaves the rest to the
//! owner, so a client that reads nothing never holds a worker. Each write
//! reports what the socket took ([`Input::Sent`]); the engine decides when
//! to stop reading and when to drop a silent client (`docs/SECURITY.md`,
//! "Connections").

use std::collections::HashMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokenizer_auth_engine::{ConnId, Engine, Input, Listener, Output};

use socket2::SockRef;
use tokenizer_auth_effects::pool::{EffectPool, OnResult};
use tokenizer_auth_effects::serve::{self, CaptureFile, Listeners, OsRng, ServeError, Start};
use tokenizer_auth_effects::settings::Settings;
use tokenizer_auth_effects::socket;

/// Stack of a connection thread. It reads into a heap buffer and calls the
/// engine; nothing deep runs on it.
pub const CONNECTION_STACK: usize = 128 * 1024;

/// Most bytes read in one go. The contract allows 64 KiB; requests are at
/// most a few KiB, and a smaller buffer keeps ten thousand idle
/// connections cheap while still taking a pipelined burst in one call.
pub const READ_CHUNK: usize = 16 * 1024;

/// How long one blocking write by a connection's own thread may wait on a
/// full send buffer before it reports progress and tries again. (When the
/// peer takes nothing at all, the engine closes it after `write_timeout`.)
pub const OWNER_WRITE_SLICE: Duration = Duration::from_millis(100);

/// How long an effect worker or the timer waits on a full send buffer
/// before it leaves the rest of the write to the connection's own thread.
pub const WORKER_PATIENCE: Duration = Duration::from_millis(2);

/// A blocked read wakes this often, so a stalled queue or a change of
/// [`Engine::wants_input`] is looked at even without a wake-up.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection thread that may not read re-checks this often, in case a
/// change of [`Engine::wants_input`] came without a wake-up.
const RECHECK: Duration = Duration::from_millis(250);

/// The timer thread sleeps at most this long, so that a wall clock that
/// jumps (the engine's time) is noticed.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// How long the shutdown waits for threads to end once sockets are closed.
const THREADS_CAP: Duration = Duration::from_secs(2);

/// The bound addresses of the three listeners (port 0 in the settings is
/// the real port here).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bound {
    /// The native line protocol.
    pub native: SocketAddr,
    /// The legacy passcode port.
    pub legacy_passcode: SocketAddr,
    /// The legacy login port.
    pub legacy_login: SocketAddr,
}

/// Asks a running server to stop. Cloneable; any clone stops it, once or
/// many times, from any thread (the signal watcher of [`serve()`], a test).
#[derive(Clone, Default)]
pub struct Stop(Arc<StopState>);

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stop").field("stopped", &self.is_stopped()).finish()
    }
}

#[derive(Default)]
struct StopState {
    /// Read without a lock on every loop of every thread.
    flag: AtomicBool,
    /// The same fact under a lock, for the thread that sleeps on it.
    requested: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// A handle that has not been used.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks the server to finish the requests in flight and return.
    pub fn stop(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        *lock(&self.0.requested) = true;
        self.0.wake.notify_all();
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    fn wait(&self) {
        let mut requested = lock(&self.0.requested);
        while !*requested {
            requested = self.0.wake.wait(requested).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight and
/// returns.
pub fn serve(settings: Settings) -> Result<(), ServeError> {
    let stop = Stop::new();
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServeError::os("cannot watch for SIGINT and SIGTERM"))?;
    let signals_handle = signals.handle();
    let watcher = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                for signal in signals.forever() {
                    tracing::info!(signal, "stopping: finishing the requests in flight");
                    stop.stop();
                }
            })
            .map_err(ServeError::os("cannot start the signal thread"))?
    };
    let result = serve_with(settings, |_| {}, stop);
    signals_handle.close();
    let _ = watcher.join();
    result
}

/// Serves until `stop` is used, then finishes the requests in flight and
/// returns. `ready` is called with the bound addresses once the listeners
/// are bound and announced and the server is taking connections.
pub fn serve_with(settings: Settings, ready: impl FnOnce(Bound), stop: Stop) -> Result<(), ServeError> {
    let start = Start::new(settings)?;
    let (engine, capture) = start.engine()?;
    let server = Arc::new(Server::new(engine, stop.clone()));
    server.state().capture = capture;

    // The callback holds the runtime weakly: the pool lives inside it.
    let weak: Weak<Server> = Arc::downgrade(&server);
    let on_result: OnResult = Arc::new(move |id, result| {
        if let Some(server) = weak.upgrade() {
            server.feed(None, Input::Completed { id, result });
        }
    });
    server.state().pool = Some(start.pool(on_result)?);

    let listeners = match start.listeners() {
        Ok(listeners) => listeners,
        Err(e) => {
            server.finish(&[]);
            return Err(e);
        }
    };
    let bound = Bound {
        native: addr(&listeners, Listener::Native),
        legacy_passcode: addr(&listeners, Listener::LegacyPasscode),
        legacy_login: addr(&listeners, Listener::LegacyLogin),
    };
    listeners.announce("std");

    let mut pokes = Vec::new();
    let started = start_threads(&server, listeners, &mut pokes);
    match started {
        Ok(()) => ready(bound),
        // Stops the server: the wait below returns at once.
        Err(e) => server.fail(e),
    }

    stop.wait();
    server.finish(&pokes);
    match lock(&server.failure).take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn addr(listeners: &Listeners, which: Listener) -> SocketAddr {
    // A listener that was just bound has an address; the fallback is never
    // reached but keeps this free of a panic.
    listeners.addr(which).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Starts the timer and one acceptor per listener. `pokes` collects the
/// addresses that wake the acceptors that did start.
fn start_threads(server: &Arc<Server>, listeners: Listeners, pokes: &mut Vec<SocketAddr>) -> Result<(), ServeError> {
    let timer = Arc::clone(server);
    server.spawn("timer".to_owned(), None, move || timer.run_timer())?;
    for (which, listener) in listeners.all {
        let local = listener.local_addr().map_err(ServeError::os("cannot read a listener's address"))?;
        let acceptor = Arc::clone(server);
        server.spawn(format!("accept-{}", local.port()), None, move || acceptor.accept(&listener, which))?;
        pokes.push(poke_address(local));
    }
    Ok(())
}

/// Where to connect to wake an acceptor: its own address, with a wildcard
/// IP replaced by loopback.
fn poke_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// Locks a mutex that only this file's code holds; nothing panics under
/// it, so a poisoned one is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every thread shares.
struct Server {
    state: Mutex<EngineState>,
    /// Paired with `state`: the timer thread sleeps on it.
    timer_wake: Condvar,
    /// Paired with `state`: the shutdown waits on it for `stopped`.
    stopped_wake: Condvar,
    stop: Stop,
    /// The engine's `max_backlog`, for each accepted socket's send buffer.
    max_backlog: usize,
    next_conn: AtomicU64,
    threads: Mutex<usize>,
    threads_done: Condvar,
    failure: Mutex<Option<ServeError>>,
}

/// What the engine lock guards.
struct EngineState {
    engine: Engine,
    rng: OsRng,
    /// Open connections, by id; a `Close` removes one.
    conns: HashMap<ConnId, Arc<Conn>>,
    /// Taken out at the end of the shutdown.
    pool: Option<EffectPool>,
    /// The deadline the timer thread sleeps until (`None`: no deadline).
    timer_at: Option<DateTime<Utc>>,
    timer_stopped: bool,
    /// The engine said [`Output::Stopped`].
    stopped: bool,
    /// `serve --capture`: where the engine's records go, in engine order
    /// (written under the engine lock).
    capture: Option<CaptureFile>,
}

/// One client socket.
struct Conn {
    id: ConnId,
    stream: TcpStream,
    out: Mutex<Outbound>,
    /// Notified when `out` changes or the engine may want input again.
    changed: Condvar,
}

#[derive(Default)]
struct Outbound {
    /// Bytes not yet taken by a writer, in the engine's order.
    queue: Vec<u8>,
    /// A thread is writing (it takes what is queued before it stops).
    writing: bool,
    /// The engine closed the connection: nothing more goes out, and its
    /// thread ends.
    closed: bool,
    /// A write found the send buffer full: only the connection's own thread
    /// writes from now on, until the queue is out.
    stalled: bool,
    /// The socket's write timeout now (setting it costs a system call).
    send_timeout: Option<Duration>,
    /// Counts changes, so a waiting reader cannot miss a wake-up.
    generation: u64,
}

/// Connections whose queues changed under the engine lock and must be
/// written after it is released.
type Touched = Vec<Arc<Conn>>;

/// Who writes a connection's queue, and so how long it may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// An effect worker, the timer, or another connection's thread: it must
    /// not wait on this client.
    Other,
    /// The connection's own thread: it may wait [`OWNER_WRITE_SLICE`].
    Owner,
}

/// Ends a tracked thread's life in the count, however the thread ends.
struct ThreadGuard(Arc<Server>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        *lock(&self.0.threads) -= 1;
        self.0.threads_done.notify_all();
    }
}

impl Server {
    fn new(engine: Engine, stop: Stop) -> Server {
        let max_backlog = engine.config().max_backlog;
        Server {
            state: Mutex::new(EngineState {
                engine,
                rng: serve::os_rng(),
                conns: HashMap::new(),
                pool: None,
                timer_at: None,
                timer_stopped: false,
                stopped: false,
                capture: None,
            }),
            timer_wake: Condvar::new(),
            stopped_wake: Condvar::new(),
            stop,
            max_backlog,
            next_conn: AtomicU64::new(0),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
            failure: Mutex::new(None),
        }
    }

    /// The engine lock. Poisoned means the engine panicked, which is a bug:
    /// the server stops (finishing what it can) and returns the error.
    fn state(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|poisoned| {
            self.fail(ServeError::EnginePanicked);
            poisoned.into_inner()
        })
    }

    /// Records why the server must stop, and stops it.
    fn fail(&self, reason: ServeError) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            tracing::error!(%reason, "stopping");
            *failure = Some(reason);
        }
        drop(failure);
        self.stop.stop();
    }

    /// Spawns a thread counted by the shutdown.
    fn spawn(
        self: &Arc<Self>,
        name: String,
        stack: Option<usize>,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), ServeError> {
        *lock(&self.threads) += 1;
        // The guard moves into the thread; if the spawn fails, the closure
        // (and the guard) is dropped here, and the count goes back down.
        let guard = ThreadGuard(Arc::clone(self));
        let mut builder = thread::Builder::new().name(name);
        if let Some(size) = stack {
            builder = builder.stack_size(size);
        }
        builder
            .spawn(move || {
                let _guard = guard;
                body();
            })
            .map(drop)
            .map_err(ServeError::os("cannot start a thread"))
    }

    /// Feeds one input, then writes out what it produced. `owner` is the
    /// connection whose own thread this is, if any.
    fn feed(&self, owner: Option<ConnId>, input: Input<'_>) {
        let touched = self.handle(input);
        self.write_out(owner, touched);
    }

    /// Feeds one input under the engine lock; returns the connections whose
    /// queues it filled.
    fn handle(&self, input: Input<'_>) -> Touched {
        let mut state = self.state();
        let state = &mut *state;
        state.engine.handle(serve::now(), &mut state.rng, input);
        self.dispatch(state)
    }

    /// Drains the engine's outputs, in order, under the engine lock: bytes
    /// go onto connection queues (written by the caller once the lock is
    /// released), closes shut sockets down, effects go to the pool. Then
    /// wakes the timer if the deadline moved earlier.
    fn dispatch(&self, state: &mut EngineState) -> Touched {
        let mut touched = Touched::new();
        while let Some(output) = state.engine.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    if let Some(c) = state.conns.get(&conn) {
                        let mut out = lock(&c.out);
                        out.queue.extend_from_slice(&bytes);
                        out.generation += 1;
                        drop(out);
                        note(&mut touched, c);
                    }
                }
                Output::HalfClose { conn } => {
                    if let Some(c) = state.conns.get(&conn) {
                        // Everything was written (the engine counted it
                        // taken). Fails only if the peer is gone, which the
                        // next read reports.
                        let _ = c.stream.shutdown(Shutdown::Write);
                    }
                }
                Output::Close { conn } => {
                    if let Some(c) = state.conns.remove(&conn) {
                        let mut out = lock(&c.out);
                        out.closed = true;
                        out.queue = Vec::new();
                        out.generation += 1;
                        drop(out);
                        // Wakes the connection's thread from a blocked read
                        // or write; it ends and drops the socket.
                        let _ = c.stream.shutdown(Shutdown::Both);
                        c.changed.notify_all();
                    }
                }
                Output::Perform { id, effect } => match &state.pool {
                    Some(pool) => pool.submit(id, effect),
                    // Only after the shutdown: the server is going away and
                    // nobody waits for the reply.
                    None => tracing::warn!(?id, "effect dropped: the effect workers have stopped"),
                },
                Output::Stopped => {
                    state.stopped = true;
                    self.stopped_wake.notify_all();
                }
            }
        }
        tokenizer_auth_effects::serve::log_notices(&mut state.engine);
        if let Some(capture) = &mut state.capture {
            capture.append(&mut state.engine);
        }
        if let Some(at) = state.engine.poll_timeout()
            && state.timer_at.is_none_or(|t| at < t)
        {
            state.timer_at = Some(at);
            self.timer_wake.notify_one();
        }
        touched
    }

    /// Writes out the touched connections, and reports to the engine what
    /// each socket took (which may fill queues again).
    fn write_out(&self, owner: Option<ConnId>, touched: Touched) {
        let mut work = touched;
        while let Some(conn) = work.pop() {
            let writer = if owner == Some(conn.id) { Writer::Owner } else { Writer::Other };
            let more = self.write_queue(&conn, writer);
            for c in more {
                note(&mut work, &c);
            }
        }
    }

    /// Writes a connection's queue out, unless another thread is already
    /// doing so (it will take these bytes too) or the queue is stalled and
    /// this is not the owner (see the file's docs). Reports what the socket
    /// took, or that it failed; returns the connections that report
    /// touched.
    fn write_queue(&self, conn: &Conn, writer: Writer) -> Touched {
        let mut out = lock(&conn.out);
        if out.writing || out.closed || (out.stalled && writer == Writer::Other) {
            return Touched::new();
        }
        let patience = match writer {
            Writer::Other => WORKER_PATIENCE,
            Writer::Owner => OWNER_WRITE_SLICE,
        };
        let mut taken = 0;
        let mut failed = false;
        while !out.queue.is_empty() && !out.closed {
            let bytes = std::mem::take(&mut out.queue);
            let mut send_timeout = out.send_timeout;
            out.writing = true;
            drop(out);
            let (sent, result) = send(&conn.stream, &bytes, patience, &mut send_timeout);
            taken += sent;
            out = lock(&conn.out);
            out.writing = false;
            out.send_timeout = send_timeout;
            out.generation += 1;
            match result {
                Ok(()) => {}
                Err(e) if timed_out(&e) => {
                    // The rest goes back in front of what came meanwhile;
                    // from another thread, for the owner to write.
                    let mut rest = bytes[sent..].to_vec();
                    rest.extend_from_slice(&out.queue);
                    out.queue = rest;
                    out.stalled = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(conn = conn.id.0, error = %e, "write failed");
                    out.queue = Vec::new();
                    failed = true;
                    break;
                }
            }
        }
        if out.queue.is_empty() {
            out.stalled = false;
        }
        drop(out);
        conn.changed.notify_all();
        if failed {
            self.handle(Input::Failed { conn: conn.id })
        } else if taken > 0 {
            self.handle(Input::Sent { conn: conn.id, bytes: taken })
        } else {
            Touched::new()
        }
    }

    /// Writes a stalled queue, if this connection has one, as its owner.
    /// Returns whether it did.
    fn write_stalled(&self, conn: &Arc<Conn>) -> bool {
        let stalled = {
            let out = lock(&conn.out);
            out.stalled && !out.writing && !out.closed
        };
        if stalled {
            self.write_out(Some(conn.id), vec![Arc::clone(conn)]);
        }
        stalled
    }

    /// The acceptor of one listener. Accept errors (a full file table, say)
    /// are logged and retried after a pause, never fatal.
    fn accept(self: &Arc<Self>, listener: &TcpListener, which: Listener) {
        loop {
            let accepted = listener.accept();
            if self.stop.is_stopped() {
                // The shutdown's wake-up, or a client that came too late.
                return;
            }
            match accepted {
                Ok((stream, peer)) => {
                    let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
                    let server = Arc::clone(self);
                    let name = format!("conn-{}", id.0);
                    if let Err(e) =
                        self.spawn(name, Some(CONNECTION_STACK), move || server.connection(stream, peer, which, id))
                    {
                        // The socket went with the closure; the engine never
                        // heard of it.
                        tracing::warn!(error = %e, "connection dropped");
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// A connection's thread: opens it in the engine and serves it until
    /// the engine closes it.
    fn connection(&self, stream: TcpStream, peer: SocketAddr, listener: Listener, id: ConnId) {
        // (The write timeout is set by each writer, see `send`.)
        if let Err(e) = socket::configure(SockRef::from(&stream), self.max_backlog, Some(READ_TIMEOUT)) {
            tracing::debug!(conn = id.0, error = %e, "cannot set up the socket");
            return;
        }
        let conn = Arc::new(Conn { id, stream, out: Mutex::default(), changed: Condvar::new() });
        let touched = {
            let mut state = self.state();
            let state = &mut *state;
            if state.stopped {
                // Accepted as the server stopped: nothing is served.
                return;
            }
            state.conns.insert(id, Arc::clone(&conn));
            state.engine.handle(serve::now(), &mut state.rng, Input::Opened { conn: id, peer: peer.ip(), listener });
            self.dispatch(state)
        };
        tracing::debug!(conn = id.0, peer = %peer.ip(), ?listener, "connection opened");
        self.write_out(Some(id), touched);
        self.serve_connection(&conn);
    }

    /// Reads the connection while the engine wants input, and writes what
    /// stalled, until the engine closes it.
    fn serve_connection(&self, conn: &Arc<Conn>) {
        let mut buf = vec![0u8; READ_CHUNK];
        // The peer ended its side: nothing more to read, only to wait for
        // the engine's close.
        let mut read_done = false;
        loop {
            if self.write_stalled(conn) {
                continue;
            }
            let generation = {
                let out = lock(&conn.out);
                if out.closed {
                    return;
                }
                out.generation
            };
            if read_done || !self.state().engine.wants_input(conn.id) {
                let out = lock(&conn.out);
                if out.generation == generation {
                    let _ = conn.changed.wait_timeout(out, RECHECK);
                }
                continue;
            }
            match (&conn.stream).read(&mut buf) {
                Ok(0) => {
                    read_done = true;
                    self.feed(Some(conn.id), Input::Closed { conn: conn.id });
                }
                Ok(n) => self.feed(Some(conn.id), Input::Received { conn: conn.id, bytes: &buf[..n] }),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => {
                    tracing::debug!(conn = conn.id.0, error = %e, "read failed");
                    read_done = true;
                    self.feed(Some(conn.id), Input::Failed { conn: conn.id });
                }
            }
        }
    }

    /// The timer thread: feeds [`Input::Timeout`] whenever the engine's
    /// deadline has passed, and otherwise sleeps until it (or until a
    /// `handle` moves it earlier, see [`Server::dispatch`]).
    fn run_timer(&self) {
        let mut state = self.state();
        loop {
            if state.timer_stopped {
                return;
            }
            let now = serve::now();
            match state.engine.poll_timeout() {
                Some(at) if at <= now => {
                    let touched = {
                        let state = &mut *state;
                        state.engine.handle(now, &mut state.rng, Input::Timeout);
                        self.dispatch(state)
                    };
                    drop(state);
                    self.write_out(None, touched);
                    state = self.state();
                }
                next => {
                    state.timer_at = next;
                    let sleep = next.map_or(MAX_TIMER_SLEEP, |at| {
                        (at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_TIMER_SLEEP)
                    });
                    state = self.timer_wake.wait_timeout(state, sleep).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
    }

    /// The shutdown (see the file's docs). `pokes` wake the acceptors.
    fn finish(&self, pokes: &[SocketAddr]) {
        for &addr in pokes {
            if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                tracing::warn!(%addr, error = %e, "cannot wake an acceptor");
            }
        }

        self.feed(None, Input::Shutdown);
        let pool = {
            let mut state = self.state();
            // The timer feeds the engine's deadlines, its grace among them;
            // the cap only guards against a timer that never ran.
            let cap = Instant::now() + state.engine.config().shutdown_grace.to_std().unwrap_or_default() + THREADS_CAP;
            while !state.stopped && Instant::now() < cap {
                state = self.stopped_wake.wait_timeout(state, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
            }
            state.timer_stopped = true;
            self.timer_wake.notify_all();
            // Only if the wait gave up (a timer that never ran): the
            // connections the engine did not close end here, with their
            // threads.
            for (_, conn) in state.conns.drain() {
                lock(&conn.out).closed = true;
                let _ = conn.stream.shutdown(Shutdown::Both);
                conn.changed.notify_all();
            }
            state.pool.take()
        };
        if let Some(pool) = pool {
            pool.shutdown();
        }
        if let Some(capture) = &mut self.state().capture {
            capture.flush();
        }

        let deadline = Instant::now() + THREADS_CAP;
        let mut threads = lock(&self.threads);
        while *threads > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(threads = *threads, "threads still running at exit");
                break;
            }
            threads = self.threads_done.wait_timeout(threads, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        tracing::info!("stopped");
    }
}

/// Adds a connection to the list to write out, once.
fn note(touched: &mut Touched, conn: &Arc<Conn>) {
    if !touched.iter().any(|c| Arc::ptr_eq(c, conn)) {
        touched.push(Arc::clone(conn));
    }
}

/// Writes `bytes`, waiting on a full send buffer for about `patience` in all
/// (one write call may start just before it passes, and wait that long
/// again). Returns how many bytes went out, and the error if not all did.
/// `current` is the socket's write timeout, kept to spare system calls.
fn send(
    stream: &TcpStream,
    bytes: &[u8],
    patience: Duration,
    current: &mut Option<Duration>,
) -> (usize, std::io::Result<()>) {
    if *current != Some(patience) {
        if let Err(e) = stream.set_write_timeout(Some(patience)) {
            return (0, Err(e));
        }
        *current = Some(patience);
    }
    let deadline = Instant::now() + patience;
    let mut sent = 0;
    while sent < bytes.len() {
        match (&*stream).write(&bytes[sent..]) {
            Ok(0) => return (sent, Err(ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (sent, Err(e)),
        }
        // A client that takes a byte now and then cannot stretch a write
        // past the deadline.
        if sent < bytes.len() && Instant::now() >= deadline {
            return (sent, Err(ErrorKind::TimedOut.into()));
        }
    }
    (sent, Ok(()))
}

/// Whether a write error means "the send buffer stayed full".
fn timed_out(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
