//! The admin listener (`admin_listen`, off by default): HTTP for operators,
//! on a thread of its own, apart from the protocol listeners
//! (docs/OPERATIONS.md, "Metrics and health").
//!
//! - `GET /metrics`: [`crate::metrics`], in the OpenMetrics text format.
//! - `GET /healthz`: `200 ok` while the process serves HTTP at all.
//! - `GET /readyz`: `200 ready` while the listeners are bound, the engine
//!   answers (through its runtime) and both SQLite files answer a read;
//!   else `503` and which of them does not.
//!
//! Nothing else is served: another path is `404`, another method `405`.
//! Admin traffic is light, so this is `tiny_http`, blocking, one request at
//! a time; a scrape never waits on the engine for more than
//! [`ENGINE_PATIENCE`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Response, Server};

use crate::metrics::{self, Scrape};
use crate::serve::ServeError;
use crate::store::SqliteStore;

/// How long a scrape waits for the thread that owns the engine.
pub const ENGINE_PATIENCE: Duration = Duration::from_secs(2);

/// Asks the engine's thread for its counters: `None` if it did not answer
/// within [`ENGINE_PATIENCE`] (it is stopped, or stuck).
pub type AskEngine = Box<dyn Fn() -> Option<Scrape> + Send>;

/// A running admin listener; [`AdminListener::stop`] ends it.
pub struct AdminListener {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl AdminListener {
    /// Binds `addr` and serves on a thread. `ask` reads the counters;
    /// `listening` says whether the protocol listeners are bound (false
    /// once a shutdown closed them); the store is opened read-only from
    /// `data_dir` for readiness.
    pub fn start(
        addr: SocketAddr,
        data_dir: &Path,
        ask: AskEngine,
        listening: Arc<AtomicBool>,
    ) -> Result<AdminListener, ServeError> {
        let listen_error = |e: String| ServeError::Listen { addr, source: std::io::Error::other(e) };
        let server = Arc::new(Server::http(addr).map_err(|e| listen_error(e.to_string()))?);
        let bound = server.server_addr().to_ip().ok_or_else(|| listen_error("not an IP listener".into()))?;
        let store = SqliteStore::open(data_dir).ok();
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || serve(&serving, &ask, &listening, store.as_ref()))
            .map_err(ServeError::os("cannot start the admin listener"))?;
        Ok(AdminListener { server, addr: bound, thread: Some(thread) })
    }

    /// The bound address (port 0 in the settings is the real port here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &Server, ask: &AskEngine, listening: &AtomicBool, store: Option<&SqliteStore>) {
    while let Ok(request) = server.recv() {
        let (status, content_type, body) = match (request.method(), request.url()) {
            (Method::Get, "/metrics") => match ask() {
                Some(scrape) => (200, metrics::CONTENT_TYPE, metrics::render(scrape)),
                None => (503, "text/plain", "the engine did not answer\n".to_owned()),
            },
            (Method::Get, "/healthz") => (200, "text/plain", "ok\n".to_owned()),
            (Method::Get, "/readyz") => match not_ready(ask, listening, store) {
                None => (200, "text/plain", "ready\n".to_owned()),
                Some(why) => (503, "text/plain", format!("not ready: {why}\n")),
            },
            (Method::Get, _) => (404, "text/plain", "not found: /metrics, /healthz, /readyz\n".to_owned()),
            _ => (405, "text/plain", "only GET\n".to_owned()),
        };
        let mut response = Response::from_string(body).with_status_code(status);
        if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
            response = response.with_header(header);
        }
        // A client gone before its answer is its own business.
        let _ = request.respond(response);
    }
}

/// Why the server is not ready, if it is not.
fn not_ready(ask: &AskEngine, listening: &AtomicBool, store: Option<&SqliteStore>) -> Option<String> {
    if !listening.load(Ordering::Acquire) {
        return Some("the listeners are closed".into());
    }
    if ask().is_none() {
        return Some("the engine does not answer".into());
    }
    match store.map(SqliteStore::ping) {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(format!("the store does not answer: {e}")),
        None => Some("the store could not be opened".into()),
    }
}
