//! The threaded runtime (`serve --runtime std`): the old server's model,
//! done right.
//!
//! # Why threads
//!
//! Blocking `std::net` sockets and a thread per connection are the simplest
//! runtime that can be read top to bottom, and the old Python server worked
//! that way, so it is the model operators already know. Its weak points were
//! unbounded work and blocking inside the protocol; here the engine bounds
//! connections (`max_connections`: the one too many is answered by the engine
//! itself), pipelines and password checks, and every slow thing (SQLite,
//! argon2id, the relay) runs on the bounded [`EffectPool`], never on a thread
//! that serves a socket. A connection thread only moves bytes and calls the
//! engine, so its stack is small ([`CONNECTION_STACK`]).
//!
//! # Threads
//!
//! - one acceptor per listener, which spawns a thread per connection;
//! - a connection thread reads (at most [`READ_CHUNK`] bytes at a time,
//!   only while [`Engine::wants_input`] says so), feeds the engine, writes
//!   the replies its input produced, and takes over the writes other
//!   threads could not finish at once (see below);
//! - the effect pool's workers feed [`Input::Completed`] from its callback;
//! - a timer thread sleeps until [`Engine::poll_timeout`] and feeds
//!   [`Input::Timeout`]; a `handle` that makes the deadline earlier wakes it;
//! - the caller's thread waits for [`Stop`] and then runs the shutdown.
//!
//! # How order is kept
//!
//! There is one engine, behind one mutex with the RNG and the table of open
//! sockets. Whoever feeds an input drains [`Engine::poll_output`] before it
//! lets go of that lock, and appends each `Transmit` to its connection's
//! outbound queue there, so the queue holds the bytes in exactly the order
//! the engine produced them, whichever threads produced them. The socket
//! writes happen after the engine lock is released (a slow client must not
//! stall the engine), under a per-connection "writing" flag: the one thread
//! that holds it writes the queue out front to back and loops until the
//! queue is empty; a thread that finds the flag taken just leaves its bytes
//! queued for it. A `Close` marks the queue; the write side is shut down
//! only after the queued bytes are out.
//!
//! # Who waits on a slow client
//!
//! Only its own thread. The bytes of a reply usually fit in the kernel's
//! send buffer, so a write returns at once whoever makes it. When the
//! buffer is full (the client does not read), an effect worker or the timer
//! gives up after [`WORKER_PATIENCE`], puts what is left back at the front
//! of the queue and marks it stalled; from then on only the connection's
//! own thread writes it (as soon as its blocked read returns: within a
//! second at worst, a delay only a client that is not reading sees),
//! blocking for up to [`WRITE_TIMEOUT`] and not reading meanwhile, which is
//! the backpressure. A client that still reads nothing is closed then, and
//! reported with [`Input::Closed`]. So a client that stops reading never
//! holds an effect worker, and with it every other client's requests. The
//! connection thread also stops reading while more than [`MAX_BACKLOG`]
//! bytes wait to be written, so a client that sends without reading cannot
//! make the runtime buffer without bound.
//!
//! After the engine closes a connection, its thread keeps reading (and
//! discarding) for up to [`LINGER`] before the socket is dropped: closing
//! a socket with unread input makes the kernel send a reset, which can
//! destroy the last reply (`error|line_too_long`, say) before the client
//! reads it.
//!
//! # Shutdown
//!
//! [`Stop::stop`] (SIGINT or SIGTERM in [`serve()`]) wakes the caller's thread,
//! which then:
//!
//! 1. wakes each acceptor by connecting to its listener; an acceptor that
//!    sees the stop flag drops what it accepted and ends, closing its port;
//! 2. shuts down the read side of every open connection, so no new request
//!    is read (a connection thread that sees the stop flag ends without
//!    telling the engine: the connection stays open for its replies);
//! 3. waits until the engine has no effect in flight and every queued byte
//!    is written (writing stalled queues itself, their threads being gone),
//!    for at most [`DRAIN_CAP`];
//! 4. stops the timer, shuts every connection down, stops the effect pool
//!    (it finishes what is queued) and waits a moment for the threads to end.
//!
//! Then [`serve()`] returns `Ok(())`, and the process exits 0.

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

use crate::password::Hasher;
use crate::pool::{Done, EffectPool};
use crate::serve::{self, CaptureFile, Listeners, ServeError};
use crate::settings::Settings;

/// Stack of a connection thread. It reads into a heap buffer and calls the
/// engine; nothing deep runs on it.
pub const CONNECTION_STACK: usize = 128 * 1024;

/// Most bytes read in one go. The contract allows 64 KiB; requests are at
/// most a few KiB, and a smaller buffer keeps ten thousand idle
/// connections cheap while still taking a pipelined burst in one call.
pub const READ_CHUNK: usize = 16 * 1024;

/// How long a connection's own thread waits for a client to take a reply
/// (each write call may wait this long again until this much has passed).
/// A client that reads nothing for this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an effect worker or the timer waits on a full send buffer
/// before it leaves the rest of the write to the connection's own thread.
pub const WORKER_PATIENCE: Duration = Duration::from_millis(2);

/// Bytes waiting to be written past which a connection is not read.
pub const MAX_BACKLOG: usize = 64 * 1024;

/// How long a connection closed by the engine is still read (and the input
/// discarded), so that its last reply is not lost to a reset.
pub const LINGER: Duration = Duration::from_secs(2);

/// The longest the shutdown waits for requests in flight.
pub const DRAIN_CAP: Duration = Duration::from_secs(10);

/// A blocked read wakes this often to look at the stop flag, in case the
/// shutdown's own wake-up (shutting the read side) did not reach it.
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
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| ServeError::new(format!("cannot watch for SIGINT and SIGTERM: {e}")))?;
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
            .map_err(|e| ServeError::new(format!("cannot start the signal thread: {e}")))?
    };
    let result = serve_with(settings, |_| {}, stop);
    signals_handle.close();
    let _ = watcher.join();
    result
}

/// Serves until `stop` is used, then finishes the requests in flight and
/// returns. `ready` is called with the bound addresses once the listeners
/// are bound and announced and the server is taking connections.
pub fn serve_with(mut settings: Settings, ready: impl FnOnce(Bound), stop: Stop) -> Result<(), ServeError> {
    let hasher = Hasher::new(settings.cost).map_err(|e| ServeError::new(e.to_string()))?;
    settings.engine.dummy_password = hasher.dummy().clone();
    let mut engine = Engine::new(settings.engine.clone());
    let capture = match &settings.capture {
        Some(path) => Some(CaptureFile::start(path, settings.capture_max_bytes, &mut engine)?),
        None => None,
    };
    let shared = Arc::new(Shared::new(engine, stop.clone()));
    shared.core().capture = capture;

    // The callback holds the runtime weakly: the pool lives inside it.
    let weak: Weak<Shared> = Arc::downgrade(&shared);
    let done: Done = Arc::new(move |id, result| {
        if let Some(shared) = weak.upgrade() {
            shared.feed(None, Input::Completed { id, result });
        }
    });
    // Its errors already say what failed (a file, the mail settings).
    let pool = EffectPool::start(&settings, &hasher, done).map_err(|e| ServeError::new(e.to_string()))?;
    shared.core().pool = Some(pool);

    let listeners = match Listeners::bind(&settings) {
        Ok(listeners) => listeners,
        Err(e) => {
            shared.finish(&[]);
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
    let started = start_threads(&shared, listeners, &mut pokes);
    match started {
        Ok(()) => ready(bound),
        // Stops the server: the wait below returns at once.
        Err(e) => shared.fail(e),
    }

    stop.wait();
    shared.finish(&pokes);
    match lock(&shared.failure).take() {
        Some(reason) => Err(ServeError::new(reason)),
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
fn start_threads(shared: &Arc<Shared>, listeners: Listeners, pokes: &mut Vec<SocketAddr>) -> Result<(), String> {
    let timer = Arc::clone(shared);
    shared.spawn("timer".to_owned(), None, move || timer.run_timer())?;
    for (which, listener) in listeners.all {
        let local = listener.local_addr().map_err(|e| format!("cannot read a listener's address: {e}"))?;
        let acceptor = Arc::clone(shared);
        shared.spawn(format!("accept-{}", local.port()), None, move || acceptor.accept(&listener, which))?;
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
struct Shared {
    core: Mutex<Core>,
    /// Paired with `core`: the timer thread sleeps on it.
    timer_wake: Condvar,
    stop: Stop,
    /// Every socket whose thread still runs, including those the engine
    /// has closed and that linger: the shutdown must wake them all.
    sockets: Mutex<HashMap<ConnId, Arc<Conn>>>,
    next_conn: AtomicU64,
    threads: Mutex<usize>,
    threads_done: Condvar,
    failure: Mutex<Option<String>>,
}

/// What the engine lock guards.
struct Core {
    engine: Engine,
    rng: rand_core::UnwrapErr<getrandom::SysRng>,
    /// Open connections, by id; a `Close` removes one.
    conns: HashMap<ConnId, Arc<Conn>>,
    /// Taken out at the end of the shutdown.
    pool: Option<EffectPool>,
    /// The deadline the timer thread sleeps until (`None`: no deadline).
    timer_at: Option<DateTime<Utc>>,
    timer_stopped: bool,
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
    /// Bytes a writer is writing now.
    in_write: usize,
    /// A thread is writing (it takes what is queued before it stops).
    writing: bool,
    /// The engine closed the connection: shut it down once the queue is out.
    close: bool,
    /// The write side is shut down (or failed); nothing more goes out.
    shut: bool,
    /// A write found the send buffer full: only the connection's own thread
    /// (or the shutdown) writes from now on, until the queue is out.
    stalled: bool,
    /// The socket's write timeout now (setting it costs a system call).
    send_timeout: Option<Duration>,
    /// Counts changes, so a waiting reader cannot miss a wake-up.
    generation: u64,
}

impl Outbound {
    fn backlog(&self) -> usize {
        self.queue.len() + self.in_write
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.writing
    }
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
    /// The connection's own thread (or the shutdown): it may wait this long
    /// for each write.
    Owner(Duration),
}

/// Ends a tracked thread's life in the count, however the thread ends.
struct ThreadGuard(Arc<Shared>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        *lock(&self.0.threads) -= 1;
        self.0.threads_done.notify_all();
    }
}

impl Shared {
    fn new(engine: Engine, stop: Stop) -> Shared {
        Shared {
            core: Mutex::new(Core {
                engine,
                rng: serve::os_rng(),
                conns: HashMap::new(),
                pool: None,
                timer_at: None,
                timer_stopped: false,
                capture: None,
            }),
            timer_wake: Condvar::new(),
            stop,
            sockets: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
            failure: Mutex::new(None),
        }
    }

    /// The engine lock. Poisoned means the engine panicked, which is a bug:
    /// the server stops (finishing what it can) and returns the error.
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|poisoned| {
            self.fail("the engine panicked; stopping".to_owned());
            poisoned.into_inner()
        })
    }

    /// Records why the server must stop, and stops it.
    fn fail(&self, reason: String) {
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
    ) -> Result<(), String> {
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
            .map_err(|e| format!("cannot start a thread: {e}"))
    }

    /// Feeds one input, then writes out what it produced. `owner` is the
    /// connection whose own thread this is, if any.
    fn feed(&self, owner: Option<ConnId>, input: Input<'_>) {
        let touched = {
            let mut core = self.core();
            let core = &mut *core;
            let closed = if let Input::Closed { conn } = input { Some(conn) } else { None };
            core.engine.handle(serve::now(), &mut core.rng, input);
            let touched = self.dispatch(core);
            // A client that half-closed is still owed its replies: the
            // engine asks to close once they are out. One owed nothing is
            // forgotten by the engine at once, and so here.
            if let Some(conn) = closed
                && !core.engine.has_connection(conn)
            {
                core.conns.remove(&conn);
            }
            touched
        };
        self.write_out(owner, &touched);
    }

    /// Drains the engine's outputs, in order, under the engine lock: bytes
    /// and closes go onto connection queues (written by the caller once the
    /// lock is released), effects to the pool. Then wakes the timer if the
    /// deadline moved earlier.
    fn dispatch(&self, core: &mut Core) -> Touched {
        let mut touched = Touched::new();
        while let Some(output) = core.engine.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    if let Some(c) = core.conns.get(&conn) {
                        let mut out = lock(&c.out);
                        if !out.shut {
                            out.queue.extend_from_slice(&bytes);
                        }
                        out.generation += 1;
                        drop(out);
                        note(&mut touched, c);
                    }
                }
                Output::Close { conn } => {
                    if let Some(c) = core.conns.remove(&conn) {
                        let mut out = lock(&c.out);
                        out.close = true;
                        out.generation += 1;
                        drop(out);
                        note(&mut touched, &c);
                    }
                }
                Output::Perform { id, effect } => match &core.pool {
                    Some(pool) => pool.submit(id, effect),
                    // Only after the drain's cap ran out: the server is
                    // going away and nobody waits for the reply.
                    None => tracing::warn!(?id, "effect dropped: the effect workers have stopped"),
                },
            }
        }
        if let Some(capture) = &mut core.capture {
            capture.append(&mut core.engine);
        }
        if let Some(at) = core.engine.poll_timeout()
            && core.timer_at.is_none_or(|t| at < t)
        {
            core.timer_at = Some(at);
            self.timer_wake.notify_one();
        }
        touched
    }

    fn write_out(&self, owner: Option<ConnId>, touched: &[Arc<Conn>]) {
        for conn in touched {
            let writer = if owner == Some(conn.id) { Writer::Owner(WRITE_TIMEOUT) } else { Writer::Other };
            self.write_queue(conn, writer);
        }
    }

    /// Writes a connection's queue out, unless another thread is already
    /// doing so (it will take these bytes too) or the queue is stalled and
    /// this is not the owner (see the file's docs). Shuts the write side
    /// down once a closed connection's queue is out.
    fn write_queue(&self, conn: &Conn, writer: Writer) {
        let mut out = lock(&conn.out);
        if out.writing || (out.stalled && writer == Writer::Other) {
            return;
        }
        let mut failed = false;
        while !out.queue.is_empty() && !out.shut {
            let bytes = std::mem::take(&mut out.queue);
            let patience = match writer {
                Writer::Other => WORKER_PATIENCE,
                Writer::Owner(patience) => patience,
            };
            let mut send_timeout = out.send_timeout;
            out.in_write = bytes.len();
            out.writing = true;
            drop(out);
            let (sent, result) = send(&conn.stream, &bytes, patience, &mut send_timeout);
            out = lock(&conn.out);
            out.writing = false;
            out.in_write = 0;
            out.send_timeout = send_timeout;
            out.generation += 1;
            match result {
                Ok(()) => {}
                Err(e) if writer == Writer::Other && timed_out(&e) => {
                    // The rest goes back in front of what came meanwhile,
                    // for the owner to write.
                    let mut rest = bytes[sent..].to_vec();
                    rest.extend_from_slice(&out.queue);
                    out.queue = rest;
                    out.stalled = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(conn = conn.id.0, error = %e, "write failed; closing the connection");
                    out.shut = true;
                    out.queue = Vec::new();
                    failed = true;
                }
            }
        }
        if out.queue.is_empty() {
            out.stalled = false;
        }
        let shutdown = if failed {
            Some(Shutdown::Both)
        } else if out.close && !out.shut && out.queue.is_empty() {
            out.shut = true;
            Some(Shutdown::Write)
        } else {
            None
        };
        drop(out);
        conn.changed.notify_all();
        if let Some(how) = shutdown {
            // Fails only if the peer is already gone, which is the aim.
            let _ = conn.stream.shutdown(how);
        }
        if failed {
            self.feed(None, Input::Closed { conn: conn.id });
        }
    }

    /// Writes a stalled queue, if this connection has one, as its owner.
    /// Returns whether it did.
    fn write_stalled(&self, conn: &Conn, patience: Duration) -> bool {
        let stalled = {
            let out = lock(&conn.out);
            out.stalled && !out.writing
        };
        if stalled {
            self.write_queue(conn, Writer::Owner(patience));
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
                    let shared = Arc::clone(self);
                    let name = format!("conn-{}", id.0);
                    if let Err(e) =
                        self.spawn(name, Some(CONNECTION_STACK), move || shared.connection(stream, peer, which, id))
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

    /// A connection's thread: opens it in the engine, reads it, and lingers
    /// once the engine closed it.
    fn connection(&self, stream: TcpStream, peer: SocketAddr, listener: Listener, id: ConnId) {
        // Replies are small and each one is awaited by the client. (The write
        // timeout is set by each writer, see `send`.)
        let configured = stream.set_nodelay(true).and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)));
        if let Err(e) = configured {
            tracing::debug!(conn = id.0, error = %e, "cannot set up the socket");
            return;
        }
        let conn = Arc::new(Conn { id, stream, out: Mutex::default(), changed: Condvar::new() });
        {
            let mut sockets = lock(&self.sockets);
            // Checked under the lock the shutdown takes to shut the read side
            // of every socket: a connection is either seen there, or never
            // served.
            if self.stop.is_stopped() {
                return;
            }
            sockets.insert(id, Arc::clone(&conn));
        }
        self.serve_connection(&conn, peer, listener);
        lock(&self.sockets).remove(&id);
    }

    fn serve_connection(&self, conn: &Arc<Conn>, peer: SocketAddr, listener: Listener) {
        let id = conn.id;
        let touched = {
            let mut core = self.core();
            let core = &mut *core;
            core.conns.insert(id, Arc::clone(conn));
            core.engine.handle(serve::now(), &mut core.rng, Input::Opened { conn: id, peer: peer.ip(), listener });
            self.dispatch(core)
        };
        tracing::debug!(conn = id.0, peer = %peer.ip(), ?listener, "connection opened");
        self.write_out(Some(id), &touched);
        if self.read(conn) {
            self.linger(conn);
        }
    }

    /// Reads the connection while the engine wants input. Returns whether
    /// the engine closed it (then the caller lingers); on EOF or an error it
    /// reports [`Input::Closed`]; on shutdown it returns and leaves the
    /// connection to the shutdown.
    fn read(&self, conn: &Conn) -> bool {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if self.stop.is_stopped() {
                return false;
            }
            if self.write_stalled(conn, WRITE_TIMEOUT) {
                continue;
            }
            let seen = {
                let out = lock(&conn.out);
                if out.close || out.shut {
                    return out.close;
                }
                (out.generation, out.backlog() <= MAX_BACKLOG)
            };
            let wanted = seen.1 && self.core().engine.wants_input(conn.id);
            if !wanted {
                let out = lock(&conn.out);
                if out.generation == seen.0 {
                    let _ = conn.changed.wait_timeout(out, RECHECK);
                }
                continue;
            }
            match (&conn.stream).read(&mut buf) {
                // The shutdown shut the read side: not the client's doing.
                _ if self.stop.is_stopped() => return false,
                Ok(0) => {
                    tracing::debug!(conn = conn.id.0, "connection closed by the client");
                    self.feed(Some(conn.id), Input::Closed { conn: conn.id });
                    return false;
                }
                Ok(n) => self.feed(Some(conn.id), Input::Received { conn: conn.id, bytes: &buf[..n] }),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => {
                    tracing::debug!(conn = conn.id.0, error = %e, "read failed");
                    self.feed(Some(conn.id), Input::Closed { conn: conn.id });
                    return false;
                }
            }
        }
    }

    /// Reads and discards what the client still sends after the engine
    /// closed the connection, until it closes too or [`LINGER`] passes, so
    /// that the final reply is not destroyed by a reset.
    fn linger(&self, conn: &Conn) {
        let until = Instant::now() + LINGER;
        // The write side is shut once the queue is out; wait for that first
        // (writing it, if it stalled).
        loop {
            if self.write_stalled(conn, WRITE_TIMEOUT) {
                continue;
            }
            let out = lock(&conn.out);
            if out.shut || self.stop.is_stopped() || Instant::now() >= until {
                break;
            }
            let _ = conn.changed.wait_timeout(out, RECHECK);
        }
        let mut buf = [0u8; 4096];
        while !self.stop.is_stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || conn.stream.set_read_timeout(Some(left.min(READ_TIMEOUT))).is_err() {
                break;
            }
            match (&conn.stream).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(_) => break,
            }
        }
        let _ = conn.stream.shutdown(Shutdown::Both);
    }

    /// The timer thread: feeds [`Input::Timeout`] whenever the engine's
    /// deadline has passed, and otherwise sleeps until it (or until a
    /// `handle` moves it earlier, see [`Shared::dispatch`]).
    fn run_timer(&self) {
        let mut core = self.core();
        loop {
            if core.timer_stopped {
                return;
            }
            let now = serve::now();
            match core.engine.poll_timeout() {
                Some(at) if at <= now => {
                    let touched = {
                        let core = &mut *core;
                        core.engine.handle(now, &mut core.rng, Input::Timeout);
                        self.dispatch(core)
                    };
                    drop(core);
                    self.write_out(None, &touched);
                    core = self.core();
                }
                next => {
                    core.timer_at = next;
                    let sleep = next.map_or(MAX_TIMER_SLEEP, |at| {
                        (at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_TIMER_SLEEP)
                    });
                    core = self.timer_wake.wait_timeout(core, sleep).unwrap_or_else(PoisonError::into_inner).0;
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

        // No new request is read from here on; replies still go out.
        let sockets: Vec<Arc<Conn>> = lock(&self.sockets).values().cloned().collect();
        for conn in &sockets {
            let _ = conn.stream.shutdown(Shutdown::Read);
            conn.changed.notify_all();
        }

        let started = Instant::now();
        loop {
            let in_flight = self.core().engine.effects_in_flight();
            let open = self.open_connections();
            for conn in &open {
                // Their threads have stopped; within the cap, the shutdown
                // is their owner.
                let left = DRAIN_CAP.saturating_sub(started.elapsed());
                self.write_stalled(conn, left.clamp(WORKER_PATIENCE, WRITE_TIMEOUT));
            }
            let unwritten = open.iter().any(|c| !lock(&c.out).idle());
            if in_flight == 0 && !unwritten {
                break;
            }
            if started.elapsed() >= DRAIN_CAP {
                tracing::warn!(in_flight, "stopping with requests still in flight");
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }

        let (open, pool) = {
            let mut core = self.core();
            core.timer_stopped = true;
            self.timer_wake.notify_all();
            let open: Vec<Arc<Conn>> = core.conns.drain().map(|(_, c)| c).collect();
            (open, core.pool.take())
        };
        for conn in open.iter().chain(&sockets) {
            let _ = conn.stream.shutdown(Shutdown::Both);
            conn.changed.notify_all();
        }
        drop((open, sockets));
        if let Some(pool) = pool {
            pool.shutdown();
        }
        if let Some(capture) = &mut self.core().capture {
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

    fn open_connections(&self) -> Vec<Arc<Conn>> {
        self.core().conns.values().cloned().collect()
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
