//! The threaded runtime's server: one engine behind a mutex, the threads
//! around it, and the shutdown.
//!
//! Threads: an acceptor per listener; a thread per connection (see
//! `connection`), which reads, feeds the engine and ends at its
//! [`Output::Close`]; the pool's workers, which feed [`Input::Completed`];
//! a timer that feeds [`Input::Timeout`]; and the caller's, which waits for
//! [`Stop`], then feeds [`Input::Shutdown`] and waits for
//! [`Output::Stopped`].
//!
//! Order: whoever feeds an input drains the outputs before it releases the
//! engine lock, appending each `Transmit` to its connection's queue, so a
//! queue holds the bytes in the engine's order.
//!
//! If a thread breaks the engine's driving contract, the engine stops for
//! good ([`Engine::error`]): the drain that follows the input records it as
//! the server's failure, which stops the server, and the shutdown drops the
//! connections without waiting for a [`Output::Stopped`] that cannot
//! come.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokenizer_auth_effects::admin_listener::AdminListener;
use tokenizer_auth_effects::audit::AuditLog;
use tokenizer_auth_effects::metrics::Scrape;
use tokenizer_auth_effects::pool::{EffectPool, OnResult};
use tokenizer_auth_effects::serve::{self, CaptureFile, Listeners, OsRng, ServeError, Start};
use tokenizer_auth_effects::settings::Settings;
use tokenizer_auth_effects::tls::TlsConfig;
use tokenizer_auth_engine::{ConnId, Engine, Input, Listener, Output};

pub use crate::connection::{CONNECTION_STACK, OWNER_WRITE_SLICE, READ_CHUNK, WORKER_PATIENCE};
use crate::connection::{Conn, RECHECK, Touched, note};

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
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(ServeError::os("cannot watch for SIGINT and SIGTERM"))?;
    let signals_handle = signals.handle();
    let watcher = {
        let stop = stop.clone();
        let tls = settings.tls.clone();
        thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                for signal in signals.forever() {
                    match (signal, &tls) {
                        (SIGHUP, Some(tls)) => tls.reload(),
                        (SIGHUP, None) => tracing::info!("SIGHUP: no TLS to reload"),
                        _ => {
                            tracing::info!(signal, "stopping: finishing the requests in flight");
                            stop.stop();
                        }
                    }
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
    let server = Arc::new(Server::new(engine, stop.clone(), start.tls()));
    server.state().capture = capture;

    // The callback holds the runtime weakly: the pool lives inside it.
    let weak: Weak<Server> = Arc::downgrade(&server);
    let on_result: OnResult = Arc::new(move |id, result| {
        if let Some(server) = weak.upgrade() {
            server.feed(None, Input::Completed { id, result });
        }
    });
    let pool = start.pool(on_result)?;
    let audit = match start.audit() {
        Ok(audit) => audit,
        Err(e) => {
            server.state().pool = Some(pool);
            server.finish(&[]);
            return Err(e);
        }
    };
    // The admin listener reads the engine's counters under the engine lock.
    let listening = Arc::new(AtomicBool::new(false));
    let weak = Arc::downgrade(&server);
    let ask = move || {
        let server = weak.upgrade()?;
        let scrape = Scrape::of(&server.state().engine);
        Some(scrape)
    };
    let admin = start.admin(&pool, &audit, ask, Arc::clone(&listening));
    server.state().pool = Some(pool);
    server.state().audit = Some(audit);
    let admin = match admin {
        Ok(admin) => admin,
        Err(e) => {
            server.finish(&[]);
            return Err(e);
        }
    };

    let listeners = match start.listeners() {
        Ok(listeners) => listeners,
        Err(e) => {
            server.finish(&[]);
            if let Some(admin) = admin {
                admin.stop();
            }
            return Err(e);
        }
    };
    let bound = Bound {
        native: addr(&listeners, Listener::Native),
        legacy_passcode: addr(&listeners, Listener::LegacyPasscode),
        legacy_login: addr(&listeners, Listener::LegacyLogin),
    };
    listeners.announce("std", admin.as_ref().map(AdminListener::addr));
    listening.store(true, Ordering::Release);

    let mut pokes = Vec::new();
    let started = start_threads(&server, listeners, &mut pokes);
    match started {
        Ok(()) => ready(bound),
        // Stops the server: the wait below returns at once.
        Err(e) => server.fail(e),
    }

    stop.wait();
    listening.store(false, Ordering::Release);
    server.finish(&pokes);
    if let Some(admin) = admin {
        admin.stop();
    }
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

/// Locks a mutex that only this crate's code holds; nothing panics under
/// it, so a poisoned one is still consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What every thread shares.
pub(crate) struct Server {
    state: Mutex<EngineState>,
    /// Paired with `state`: the timer thread sleeps on it.
    timer_wake: Condvar,
    /// Paired with `state`: the shutdown waits on it for `stopped`.
    stopped_wake: Condvar,
    pub(crate) stop: Stop,
    /// The engine's `max_backlog`, for each accepted socket's send buffer.
    pub(crate) max_backlog: usize,
    /// The native listener's TLS, if on.
    pub(crate) tls: Option<TlsConfig>,
    /// The longest a TLS handshake may take: the engine's
    /// `partial_line_timeout`.
    pub(crate) handshake_limit: Duration,
    pub(crate) next_conn: AtomicU64,
    threads: Mutex<usize>,
    threads_done: Condvar,
    failure: Mutex<Option<ServeError>>,
}

/// What the engine lock guards.
pub(crate) struct EngineState {
    pub(crate) engine: Engine,
    pub(crate) rng: OsRng,
    /// Open connections, by id; a `Close` removes one.
    pub(crate) conns: HashMap<ConnId, Arc<Conn>>,
    /// Taken out at the end of the shutdown.
    pub(crate) pool: Option<EffectPool>,
    /// The deadline the timer thread sleeps until (`None`: no deadline).
    pub(crate) timer_at: Option<DateTime<Utc>>,
    pub(crate) timer_stopped: bool,
    /// The engine said [`Output::Stopped`].
    pub(crate) stopped: bool,
    /// `serve --capture`: where the engine's records go, in engine order
    /// (written under the engine lock).
    pub(crate) capture: Option<CaptureFile>,
    /// The audit trail (taken and closed at the end of the shutdown).
    pub(crate) audit: Option<AuditLog>,
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
    fn new(engine: Engine, stop: Stop, tls: Option<TlsConfig>) -> Server {
        let max_backlog = engine.config().max_backlog;
        let handshake_limit = engine.config().partial_line_timeout.to_std().unwrap_or(Duration::ZERO);
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
                audit: None,
            }),
            timer_wake: Condvar::new(),
            stopped_wake: Condvar::new(),
            stop,
            max_backlog,
            tls,
            handshake_limit,
            next_conn: AtomicU64::new(0),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
            failure: Mutex::new(None),
        }
    }

    /// The engine lock. Poisoned means the engine panicked, which is a bug:
    /// the server stops (finishing what it can) and returns the error.
    pub(crate) fn state(&self) -> MutexGuard<'_, EngineState> {
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
    pub(crate) fn spawn(
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
    pub(crate) fn feed(&self, owner: Option<ConnId>, input: Input<'_>) {
        let touched = self.handle(input);
        self.write_out(owner, touched);
    }

    /// Feeds one input under the engine lock; returns the connections whose
    /// queues it filled.
    pub(crate) fn handle(&self, input: Input<'_>) -> Touched {
        let mut state = self.state();
        let state = &mut *state;
        state.engine.handle(serve::now(), &mut state.rng, input);
        self.dispatch(state)
    }

    /// Drains the engine's outputs, in order, under the engine lock: bytes
    /// go onto connection queues (written by the caller once the lock is
    /// released), closes shut sockets down, effects go to the pool. Then
    /// wakes the timer if the deadline moved earlier.
    pub(crate) fn dispatch(&self, state: &mut EngineState) -> Touched {
        let mut touched = Touched::new();
        while let Some(output) = state.engine.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    if let Some(c) = state.conns.get(&conn) {
                        let mut out = lock(&c.out);
                        // Lock order: a connection's `out`, then its `tls`.
                        match &c.tls {
                            Some(tls) => lock(tls).transmit(&bytes, &mut out.queue),
                            None => out.queue.extend_from_slice(&bytes),
                        }
                        out.generation += 1;
                        drop(out);
                        note(&mut touched, c);
                    }
                }
                Output::HalfClose { conn } => {
                    if let Some(c) = state.conns.get(&conn) {
                        match &c.tls {
                            // TLS says it with a close_notify after the
                            // replies.
                            Some(tls) => {
                                let mut out = lock(&c.out);
                                lock(tls).close(&mut out.queue);
                                out.generation += 1;
                                drop(out);
                                note(&mut touched, c);
                            }
                            // Everything was written (the engine counted it
                            // taken). Fails only if the peer is gone, which
                            // the next read reports.
                            None => {
                                let _ = c.stream.shutdown(Shutdown::Write);
                            }
                        }
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
        tokenizer_auth_effects::serve::log_notices(&mut state.engine, state.audit.as_ref());
        if let Some(capture) = &mut state.capture {
            capture.append(&mut state.engine);
        }
        if let Some(&error) = state.engine.error() {
            // Kept (and logged) once, however many inputs follow.
            self.fail(ServeError::Contract(error));
        }
        if let Some(at) = state.engine.poll_timeout()
            && state.timer_at.is_none_or(|t| at < t)
        {
            state.timer_at = Some(at);
            self.timer_wake.notify_one();
        }
        touched
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
            while !state.stopped && state.engine.error().is_none() && Instant::now() < cap {
                state = self.stopped_wake.wait_timeout(state, RECHECK).unwrap_or_else(PoisonError::into_inner).0;
            }
            state.timer_stopped = true;
            self.timer_wake.notify_all();
            // Only if the wait gave up (a timer that never ran) or the engine
            // stopped on a breach of its contract: the connections the
            // engine did not close end here, with their threads.
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
        let audit = self.state().audit.take();
        if let Some(audit) = audit {
            audit.close();
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

#[cfg(test)]
mod tests {
    use tokenizer_auth_engine::{Config, ContractError, EffectId, EffectResult};

    use super::*;

    #[test]
    fn a_breach_of_the_engine_contract_stops_the_server_at_once() {
        let config = Config::default();
        let grace = config.shutdown_grace.to_std().unwrap();
        let stop = Stop::new();
        let server = Server::new(Engine::new(config), stop.clone(), None);
        let stray = EffectId(7);
        server.feed(None, Input::Completed { id: stray, result: EffectResult::Failed });
        assert!(stop.is_stopped(), "the breach did not stop the server");
        assert!(matches!(
            lock(&server.failure).as_ref(),
            Some(ServeError::Contract(ContractError::UnknownEffect(id))) if *id == stray
        ));
        // No `Stopped` can come from a stopped engine: the shutdown does not
        // wait for one.
        let started = Instant::now();
        server.finish(&[]);
        assert!(started.elapsed() < grace / 2, "the shutdown waited {:?}", started.elapsed());
    }
}
