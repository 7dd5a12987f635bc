//! The admin listener (`admin_listen`, off by default): HTTP for operators,
//! apart from the protocol listeners (docs/OPERATIONS.md, "Metrics and
//! health").
//!
//! - `GET /metrics`: [`crate::metrics`], in the OpenMetrics text format.
//! - `GET /healthz`: `200 ok` while the process serves HTTP at all.
//! - `GET /readyz`: `200 ready` while the listeners are bound, the engine
//!   answers (through its runtime) and both SQLite files answer a read;
//!   else `503` and which of them does not.
//!
//! Nothing else is served: another path is `404`, another method `405`, a
//! request that does not parse `400`. One request per connection
//! (`Connection: close`), no body.
//!
//! Bounded whatever connects: one acceptor and [`HANDLERS`] handler
//! threads; at most [`QUEUED`] connections wait for a handler, and past that
//! a new one is closed at once. A handler gives a connection
//! [`CLIENT_PATIENCE`] to send its request head (at most [`MAX_HEAD`]
//! bytes, parsed by `httparse`) and to take the answer. So a flood of slow
//! clients can delay a scrape, never grow the server. (A general-purpose
//! HTTP crate was tried first: it spawned a thread per connection, 365
//! threads for 350 silent clients.) A scrape never waits on the engine for
//! more than [`ENGINE_PATIENCE`].

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError, bounded};

use crate::metrics::{self, Scrape};
use crate::serve::ServeError;
use crate::store::{Store, StoreLocation};

/// How long a scrape waits for the thread that owns the engine.
pub const ENGINE_PATIENCE: Duration = Duration::from_secs(2);

/// Threads that answer requests.
pub const HANDLERS: usize = 2;

/// Connections that may wait for a handler.
pub const QUEUED: usize = 16;

/// The longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head, and to take the
/// answer.
pub const CLIENT_PATIENCE: Duration = Duration::from_secs(2);

/// Asks the engine's thread for its counters: `None` if it did not answer
/// within [`ENGINE_PATIENCE`] (it is stopped, or stuck).
pub type AskEngine = Box<dyn Fn() -> Option<Scrape> + Send + Sync>;

/// A running admin listener; [`AdminListener::stop`] ends it.
pub struct AdminListener {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What every handler shares.
struct Answerer {
    ask: AskEngine,
    listening: Arc<AtomicBool>,
    store: StoreLocation,
}

impl AdminListener {
    /// Binds `addr` and serves on threads of its own. `ask` reads the
    /// counters; `listening` says whether the protocol listeners are bound
    /// (false once a shutdown closed them); each handler opens the store at
    /// `store` for readiness.
    pub fn start(
        addr: SocketAddr,
        store: StoreLocation,
        ask: AskEngine,
        listening: Arc<AtomicBool>,
    ) -> Result<AdminListener, ServeError> {
        let listener = TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })?;
        let bound = listener.local_addr().map_err(|source| ServeError::Listen { addr, source })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let answerer = Arc::new(Answerer { ask, listening, store });
        let (queue, connections) = bounded::<TcpStream>(QUEUED);
        let spawn = ServeError::os("cannot start the admin listener");
        let mut threads = Vec::new();
        for i in 0..HANDLERS {
            let (connections, answerer) = (connections.clone(), Arc::clone(&answerer));
            let thread = std::thread::Builder::new()
                .name(format!("admin-{i}"))
                .spawn(move || handle_all(&connections, &answerer))
                .map_err(spawn)?;
            threads.push(thread);
        }
        let stop = Arc::clone(&stopping);
        let acceptor = std::thread::Builder::new()
            .name("admin-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    // A failed accept (out of descriptors) is retried on
                    // the next connection; a full queue closes this one.
                    if let Ok(stream) = stream
                        && let Err(TrySendError::Disconnected(_)) = queue.try_send(stream)
                    {
                        break;
                    }
                }
                // Dropping the queue ends the handlers once it is drained.
            })
            .map_err(spawn)?;
        threads.push(acceptor);
        Ok(AdminListener { addr: bound, stopping, threads })
    }

    /// The bound address (port 0 in the settings is the real port here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the threads.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the acceptor, which sees the flag and ends.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The address to connect to so that the acceptor wakes: the bound one,
/// with a wildcard IP as loopback.
fn wake_address(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

fn handle_all(connections: &Receiver<TcpStream>, answerer: &Answerer) {
    // Opened on first use, and again after a failure.
    let mut store: Option<Store> = None;
    while let Ok(stream) = connections.recv() {
        handle(stream, answerer, &mut store);
    }
}

/// Reads one request head, answers it, closes.
fn handle(mut stream: TcpStream, answerer: &Answerer, store: &mut Option<Store>) {
    let deadline = Instant::now() + CLIENT_PATIENCE;
    let _ = stream.set_write_timeout(Some(CLIENT_PATIENCE));
    let (status, content_type, body) = match read_head(&mut stream, deadline) {
        Some(head) => answer(&head, answerer, store),
        None => (400, "text/plain", "bad request\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A client gone before its answer is its own business.
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
    let _ = stream.shutdown(Shutdown::Both);
}

/// A parsed request line: (method, path).
type Head = (String, String);

/// Reads until the request head is complete, within `deadline` and
/// [`MAX_HEAD`] bytes; `None` if it is not, or does not parse.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
        stream.set_read_timeout(Some(left)).ok()?;
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Some((request.method?.to_owned(), request.path?.to_owned()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return None,
        }
    }
}

fn answer(head: &Head, answerer: &Answerer, store: &mut Option<Store>) -> (u16, &'static str, String) {
    let (method, path) = head;
    if method != "GET" {
        return (405, "text/plain", "only GET\n".to_owned());
    }
    match path.as_str() {
        "/metrics" => match (answerer.ask)() {
            Some(scrape) => (200, metrics::CONTENT_TYPE, metrics::render(scrape)),
            None => (503, "text/plain", "the engine did not answer\n".to_owned()),
        },
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => match not_ready(answerer, store) {
            None => (200, "text/plain", "ready\n".to_owned()),
            Some(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (404, "text/plain", "not found: /metrics, /healthz, /readyz\n".to_owned()),
    }
}

/// Why the server is not ready, if it is not.
fn not_ready(answerer: &Answerer, store: &mut Option<Store>) -> Option<String> {
    if !answerer.listening.load(Ordering::Acquire) {
        return Some("the listeners are closed".into());
    }
    if (answerer.ask)().is_none() {
        return Some("the engine does not answer".into());
    }
    if store.is_none() {
        *store = Store::open(&answerer.store).ok();
    }
    let pinged = store.as_mut().map(Store::ping);
    match pinged {
        Some(Ok(())) => None,
        Some(Err(e)) => {
            *store = None;
            Some(format!("the store does not answer: {e}"))
        }
        None => Some("the store could not be opened".into()),
    }
}
