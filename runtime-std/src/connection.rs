//! A connection's side of the threaded runtime: its thread, which reads
//! while the engine wants input; its queue of bytes the engine transmitted;
//! and who may write that queue, for how long.
//!
//! Sockets are written after the engine lock is released, by one writer at
//! a time per connection. A writer that is not the connection's own thread
//! (an effect worker, the timer) waits at most [`WORKER_PATIENCE`] on a full
//! send buffer, then leaves the rest to the owner, so a client that reads
//! nothing never holds a worker. Each write reports what the socket took
//! ([`Input::Sent`]); the engine decides when to stop reading and when to
//! drop a silent client (`docs/SECURITY.md`, "Connections").
//!
//! With TLS on the native listener, a connection's [`TlsSession`] turns
//! what the engine transmits into records as it is queued, the socket's
//! bytes into plaintext as they are read, and what the socket took into
//! the plaintext it carried. Records must leave in the order TLS made
//! them, so both happen under the queue's lock (then the session's).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokenizer_auth_effects::tls::{Received, TlsSession};
use tokenizer_auth_effects::{serve, socket};
use tokenizer_auth_engine::{ConnId, Input, Listener};

use crate::server::{Server, lock};

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
/// [`Engine::wants_input`](tokenizer_auth_engine::Engine::wants_input) is looked at even without a wake-up.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection thread that may not read re-checks this often, in case a
/// change of [`Engine::wants_input`](tokenizer_auth_engine::Engine::wants_input) came without a wake-up.
pub(crate) const RECHECK: Duration = Duration::from_millis(250);

/// One client socket.
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) stream: TcpStream,
    pub(crate) out: Mutex<Outbound>,
    /// Notified when `out` changes or the engine may want input again.
    pub(crate) changed: Condvar,
    /// TLS between the socket and the engine (the native listener with
    /// `tls_cert`): `out` then holds records. Locked after `out`.
    pub(crate) tls: Option<Mutex<TlsSession>>,
}

/// What waits to go out on a connection, and who may write it.
#[derive(Default)]
pub(crate) struct Outbound {
    /// Bytes not yet taken by a writer, in the engine's order.
    pub(crate) queue: Vec<u8>,
    /// A thread is writing (it takes what is queued before it stops).
    pub(crate) writing: bool,
    /// The engine closed the connection: nothing more goes out, and its
    /// thread ends.
    pub(crate) closed: bool,
    /// A write found the send buffer full: only the connection's own thread
    /// writes from now on, until the queue is out.
    pub(crate) stalled: bool,
    /// The socket's write timeout now (setting it costs a system call).
    pub(crate) send_timeout: Option<Duration>,
    /// Counts changes, so a waiting reader cannot miss a wake-up.
    pub(crate) generation: u64,
}

/// Connections whose queues changed under the engine lock and must be
/// written after it is released.
pub(crate) type Touched = Vec<Arc<Conn>>;

/// Who writes a connection's queue, and so how long it may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// An effect worker, the timer, or another connection's thread: it must
    /// not wait on this client.
    Other,
    /// The connection's own thread: it may wait [`OWNER_WRITE_SLICE`].
    Owner,
}

impl Server {
    /// Writes out the touched connections, and reports to the engine what
    /// each socket took (which may fill queues again).
    pub(crate) fn write_out(&self, owner: Option<ConnId>, touched: Touched) {
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
        // Over TLS, the plaintext whose records are all out.
        let sent = match &conn.tls {
            Some(tls) => lock(tls).took(taken),
            None => taken,
        };
        drop(out);
        conn.changed.notify_all();
        if failed {
            self.handle(Input::Failed { conn: conn.id })
        } else if sent > 0 {
            self.handle(Input::Sent { conn: conn.id, bytes: sent })
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
    pub(crate) fn accept(self: &Arc<Self>, listener: &TcpListener, which: Listener) {
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
    pub(crate) fn connection(&self, stream: TcpStream, peer: SocketAddr, listener: Listener, id: ConnId) {
        // (The write timeout is set by each writer, see `send`.)
        if let Err(e) = socket::configure(SockRef::from(&stream), self.max_backlog, Some(READ_TIMEOUT)) {
            tracing::debug!(conn = id.0, error = %e, "cannot set up the socket");
            return;
        }
        let tls = match (&self.tls, listener) {
            (Some(config), Listener::Native) => match config.session() {
                Ok(session) => Some(Mutex::new(session)),
                Err(e) => {
                    tracing::warn!(conn = id.0, error = %e, "cannot start TLS on a connection");
                    return;
                }
            },
            _ => None,
        };
        let conn = Arc::new(Conn { id, stream, out: Mutex::default(), changed: Condvar::new(), tls });
        let touched = {
            let mut state = self.state();
            let state = &mut *state;
            if state.stopped || state.engine.error().is_some() {
                // Accepted as the server (or the engine, on a breach of its
                // contract) stopped: nothing is served.
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
        let mut plain = Vec::new();
        // The peer ended its side: nothing more to read, only to wait for
        // the engine's close.
        let mut read_done = false;
        loop {
            if self.write_stalled(conn) {
                continue;
            }
            if !read_done && self.handshake_overdue(conn) {
                tracing::debug!(conn = conn.id.0, "TLS handshake not done in time");
                read_done = true;
                self.feed(Some(conn.id), Input::Failed { conn: conn.id });
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
                Ok(n) => match &conn.tls {
                    Some(tls) => {
                        let ended = self.receive_tls(conn, tls, &buf[..n], &mut plain);
                        if let Some(input) = ended {
                            read_done = true;
                            self.feed(Some(conn.id), input);
                        }
                    }
                    None => self.feed(Some(conn.id), Input::Received { conn: conn.id, bytes: &buf[..n] }),
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => {
                    tracing::debug!(conn = conn.id.0, error = %e, "read failed");
                    read_done = true;
                    self.feed(Some(conn.id), Input::Failed { conn: conn.id });
                }
            }
        }
    }
}

impl Server {
    /// Whether the connection's TLS handshake outlived its bound.
    fn handshake_overdue(&self, conn: &Conn) -> bool {
        conn.tls.as_ref().is_some_and(|tls| lock(tls).handshake_overdue(Instant::now(), self.handshake_limit))
    }

    /// Takes ciphertext the socket gave on a TLS connection: its records go
    /// out, its plaintext to the engine. Returns the input that ends the
    /// reading, if the peer closed or broke TLS.
    fn receive_tls(
        &self,
        conn: &Arc<Conn>,
        tls: &Mutex<TlsSession>,
        bytes: &[u8],
        plain: &mut Vec<u8>,
    ) -> Option<Input<'static>> {
        plain.clear();
        let (received, wrote) = {
            let mut out = lock(&conn.out);
            let before = out.queue.len();
            let received = lock(tls).receive(bytes, plain, &mut out.queue);
            let wrote = out.queue.len() > before;
            if wrote {
                out.generation += 1;
            }
            (received, wrote)
        };
        if wrote {
            self.write_out(Some(conn.id), vec![Arc::clone(conn)]);
        }
        if !plain.is_empty() {
            self.feed(Some(conn.id), Input::Received { conn: conn.id, bytes: plain });
        }
        match received {
            Ok(Received::Open) => None,
            Ok(Received::Closed) => Some(Input::Closed { conn: conn.id }),
            Err(e) => {
                tracing::debug!(conn = conn.id.0, error = %e, "TLS failed");
                Some(Input::Failed { conn: conn.id })
            }
        }
    }
}

/// Adds a connection to the list to write out, once.
pub(crate) fn note(touched: &mut Touched, conn: &Arc<Conn>) {
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
