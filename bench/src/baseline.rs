//! The two baseline servers a run measures before its target, with the same
//! client settings: the most this machine and this client can do with the
//! same sockets and the same bytes, and nothing else.
//!
//! - **echo**: one reply line per request line (the line itself), pipelined,
//!   on one mio event-loop thread: what a line protocol costs at the least.
//! - **oneshot**: per connection, read one chunk, write a fixed pickled
//!   `False`, close: what the legacy one-request-per-connection exchange
//!   costs at the least.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// Which baseline.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// Line echo, pipelined.
    Echo,
    /// One request per connection, a pickled `False`, close.
    Oneshot,
}

impl Kind {
    /// The name used in output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Oneshot => "oneshot",
        }
    }
}

/// Name prefix of the baseline's thread (its CPU time is read by it).
pub(crate) const THREAD_PREFIX: &str = "baseline-";

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST: usize = 2;

/// A baseline server running on its own thread.
pub(crate) struct Baseline {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Baseline {
    /// Binds `listen` (port 0 for any) and starts serving.
    pub(crate) fn start(kind: Kind, listen: SocketAddr) -> io::Result<Baseline> {
        let mut listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("{THREAD_PREFIX}{}", kind.name()))
                .spawn(move || Server { poll, listener, conns: Vec::new(), kind, stop }.run())?
        };
        Ok(Baseline { addr, stop, waker, thread: Some(thread) })
    }

    /// Stops the server and waits for its thread.
    pub(crate) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One client connection of the baseline.
struct Conn {
    stream: TcpStream,
    /// A request line not yet complete (echo).
    partial: Vec<u8>,
    /// Reply bytes the socket has not taken yet (echo).
    out: Vec<u8>,
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    kind: Kind,
    stop: Arc<AtomicBool>,
}

/// The legacy baseline's reply: `pickle.dumps("False")`.
fn pickled_false() -> Vec<u8> {
    let mut out = Vec::new();
    tokenizer_auth_engine::codec::pickle::dumps_str("False", &mut out);
    out
}

impl Server {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 64 * 1024];
        let reply = pickled_false();
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("baseline: poll failed: {e}");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => {
                        let key = t - FIRST;
                        let keep = match self.kind {
                            Kind::Echo => self.echo(key, &mut buf),
                            Kind::Oneshot => self.oneshot(key, &mut buf, &reply),
                        };
                        if !keep {
                            self.conns[key] = None;
                        }
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let key = match self.conns.iter().position(Option::is_none) {
                        Some(key) => key,
                        None => {
                            self.conns.push(None);
                            self.conns.len() - 1
                        }
                    };
                    let interest = match self.kind {
                        Kind::Echo => Interest::READABLE | Interest::WRITABLE,
                        Kind::Oneshot => Interest::READABLE,
                    };
                    if self.poll.registry().register(&mut stream, Token(FIRST + key), interest).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.conns[key] = Some(Conn { stream, partial: Vec::new(), out: Vec::new() });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Reads what there is, echoes every complete line, writes what the
    /// socket takes. False when the connection is done.
    fn echo(&mut self, key: usize, buf: &mut [u8]) -> bool {
        let Some(Some(conn)) = self.conns.get_mut(key) else { return true };
        loop {
            match conn.stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let chunk = &buf[..n];
                    match chunk.iter().rposition(|&b| b == b'\n') {
                        Some(last) => {
                            conn.out.append(&mut conn.partial);
                            conn.out.extend_from_slice(&chunk[..=last]);
                            conn.partial.extend_from_slice(&chunk[last + 1..]);
                        }
                        None => conn.partial.extend_from_slice(chunk),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let mut written = 0;
        while written < conn.out.len() {
            match conn.stream.write(&conn.out[written..]) {
                Ok(0) => return false,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        conn.out.drain(..written);
        true
    }

    /// Reads one chunk, answers the fixed reply and closes.
    fn oneshot(&mut self, key: usize, buf: &mut [u8], reply: &[u8]) -> bool {
        let Some(Some(conn)) = self.conns.get_mut(key) else { return true };
        loop {
            match conn.stream.read(&mut buf[..1024]) {
                Ok(0) => return false,
                Ok(_) => {
                    // A fresh socket takes a few dozen bytes at once.
                    let _ = conn.stream.write(reply);
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}
