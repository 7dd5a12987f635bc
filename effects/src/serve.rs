//! What both runtimes share around serving: the start-up, in one order
//! ([`Start`]), the three listeners, the capture file, the clock, the OS
//! randomness, the engine's notices, and why a server stops.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::{DateTime, Utc};
use tokenizer_auth_engine::{ContractError, Engine, Listener, Notice};

use crate::admin_listener::AdminListener;
use crate::audit::{AuditLog, AuditTarget};
use crate::mail::MailError;
use crate::metrics::Scrape;
use crate::password::{HashError, PasswordHasher};
use crate::pool::{EffectPool, OnResult};
use crate::server_key::KeyError;
use crate::settings::{MAX_LOOPS, Settings};
use crate::store::StoreError;
use crate::tls::TlsConfig;

/// Why a server could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The password hasher could not be made.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// There is no server key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The mail settings cannot work.
    #[error(transparent)]
    Mail(#[from] MailError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The audit trail could not be opened.
    #[error("cannot open the audit log {}: {source}", path.display())]
    Audit {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The capture file could not be created.
    #[error("cannot create the capture file {}: {source}", path.display())]
    Capture {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The OS refused what the runtime needs: a thread, the event loop,
    /// the signal handlers.
    #[error("{what}: {source}")]
    Os {
        /// What the runtime was doing.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The engine panicked (a bug); the server stopped, finishing what it
    /// could.
    #[error("the engine panicked")]
    EnginePanicked,
    /// The runtime broke the engine's driving contract (a bug in the
    /// runtime or the effect workers: a result for an effect never asked
    /// for, a second one, one of another kind). The engine stopped for
    /// good, and so did the server, dropping its connections.
    #[error("the engine stopped: the runtime broke its driving contract: {0}")]
    Contract(ContractError),
}

impl ServeError {
    /// The OS refused `what`.
    pub fn os(what: &'static str) -> impl Fn(io::Error) -> ServeError + Copy {
        move |source| ServeError::Os { what, source }
    }
}

/// The start-up both runtimes go through, so that each step is written
/// once: the password hasher and its dummy hash (which makes an unknown
/// email cost as much as a known one), the server key, the engine with its
/// capture, the worker pools and the listeners. Each runtime calls the
/// steps in the order its own wiring needs.
pub struct Start {
    settings: Settings,
    hasher: PasswordHasher,
}

impl Start {
    /// Makes the hasher (one hash, for the dummy) and resolves the server
    /// key, both into the engine's configuration.
    pub fn new(mut settings: Settings) -> Result<Start, ServeError> {
        let hasher = PasswordHasher::new(settings.cost)?;
        settings.engine.dummy_password = hasher.dummy().clone();
        settings.engine.server_key = settings.resolve_server_key()?;
        Ok(Start { settings, hasher })
    }

    /// A new engine, recording into the capture file if one is set.
    pub fn engine(&self) -> Result<(Engine, Option<CaptureFile>), ServeError> {
        self.engine_of(0, 1)
    }

    /// How many event loops, each with an engine of its own, a runtime
    /// that runs several should run (`loops`): one while a capture
    /// records, since a capture is one engine's inputs (`docs/CAPTURE.md`).
    pub fn loops(&self) -> usize {
        if self.settings.capture.is_some() { 1 } else { self.settings.workers.loops.clamp(1, MAX_LOOPS) }
    }

    /// The engine of loop `index` of `count`: the bounds that count what
    /// the whole server holds (`max_connections`, `max_password_checks`)
    /// are shared out between the loops, so the server's sum is the bound
    /// (at least one each). Every other rule is kept in the store, which
    /// the loops share as servers share one.
    pub fn engine_of(&self, index: usize, count: usize) -> Result<(Engine, Option<CaptureFile>), ServeError> {
        let mut config = self.settings.engine.clone();
        let share = |total: usize| (total / count + usize::from(index < total % count)).max(1);
        config.max_connections = share(config.max_connections);
        config.max_password_checks = share(config.max_password_checks);
        let mut engine = Engine::new(config);
        let capture = match &self.settings.capture {
            Some(path) => Some(CaptureFile::start(path, self.settings.capture_max_bytes, &mut engine)?),
            None => None,
        };
        Ok((engine, capture))
    }

    /// Opens the store and starts the workers, which hand each result to
    /// `on_result`.
    pub fn pool(&self, on_result: OnResult) -> Result<EffectPool, ServeError> {
        EffectPool::start(&self.settings, &self.hasher, on_result)
    }

    /// The native listener's TLS, if on (each connection's session comes
    /// from it; SIGHUP reloads it).
    pub fn tls(&self) -> Option<TlsConfig> {
        self.settings.tls.clone()
    }

    /// Opens the audit trail and starts its writer.
    pub fn audit(&self) -> Result<AuditLog, ServeError> {
        let target = &self.settings.audit_log;
        AuditLog::open(target).map_err(|source| ServeError::Audit {
            path: match target {
                AuditTarget::File(path) => path.clone(),
                AuditTarget::Stderr => PathBuf::from("-"),
            },
            source,
        })
    }

    /// Binds the three listeners.
    pub fn listeners(&self) -> Result<Listeners, ServeError> {
        Listeners::bind(&self.settings)
    }

    /// Starts the admin listener, if `admin_listen` is set. `ask` reads
    /// the engine's counters on the thread that owns it; the pool's and
    /// the audit trail's are added here.
    pub fn admin(
        &self,
        pool: &EffectPool,
        audit: &AuditLog,
        ask: impl Fn() -> Option<Scrape> + Send + Sync + 'static,
        listening: Arc<AtomicBool>,
    ) -> Result<Option<AdminListener>, ServeError> {
        let Some(addr) = self.settings.admin_listen else { return Ok(None) };
        let stats = pool.stats();
        let audit = audit.stats();
        let ask = Box::new(move || {
            ask().map(|mut scrape| {
                scrape.pool = stats.counts();
                scrape.audit = audit.counts();
                scrape
            })
        });
        AdminListener::start(addr, self.settings.store(), ask, listening).map(Some)
    }
}

/// Logs the notices the engine has for the operator, and queues the audit
/// trail's events among them: call it after draining the outputs. Every
/// passcode request, login, lock and renewal is logged at `info` (event
/// `audit`) with what came of it, failures with their reason; a request
/// refused by a brute-force limit, at `info`, with the limit's name and
/// what it counts (an email or an address, never a secret); a rotated-away
/// token that came back, and so revoked its session, at `warn`, with the
/// email, MAC and address (never the token). (`audit` is `None` only
/// while a runtime starts or after it closed the trail.)
pub fn log_notices(engine: &mut Engine, audit: Option<&AuditLog>) {
    while let Some(notice) = engine.poll_notice() {
        if let Some(audit) = audit
            && let Some(line) = crate::audit::line_of(&notice, now())
        {
            audit.record(line);
        }
        match &notice {
            // The audit trail's events, at `info`, so that the log says
            // what happened to whom (never a secret).
            Notice::Audit(e) => tracing::info!(
                event = e.kind.as_str(),
                outcome = e.outcome.as_str(),
                email = e.subject.email.as_str(),
                ip = %e.subject.ip,
                mac = %e.subject.mac,
                listener = e.listener.map_or("none", Listener::as_str),
                "audit"
            ),
            Notice::Refused { limit, subject, peer } => {
                tracing::info!(limit, subject = subject.as_str(), %peer, "request refused by a limit");
            }
            Notice::TokenReuse { email, mac, peer, why, revoked } => {
                let outcome = if *revoked { "session revoked" } else { "revoking failed, the next reuse tries again" };
                tracing::warn!(
                    email = email.as_str(),
                    %mac,
                    %peer,
                    why = why.as_str(),
                    outcome,
                    "a rotated-away token came back"
                );
            }
        }
    }
}

/// The three bound listeners, in blocking mode.
pub struct Listeners {
    /// (which protocol, socket) for native, legacy passcode, legacy login.
    pub all: [(Listener, TcpListener); 3],
}

impl Listeners {
    /// Binds the three addresses of `settings` (port 0 picks a free port).
    pub(crate) fn bind(settings: &Settings) -> Result<Listeners, ServeError> {
        let bind = |addr: SocketAddr| TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source });
        Ok(Listeners {
            all: [
                (Listener::Native, bind(settings.listen)?),
                (Listener::LegacyPasscode, bind(settings.legacy_passcode_listen)?),
                (Listener::LegacyLogin, bind(settings.legacy_login_listen)?),
            ],
        })
    }

    /// The bound address of one listener.
    pub fn addr(&self, which: Listener) -> Option<SocketAddr> {
        self.all.iter().find(|(l, _)| *l == which).and_then(|(_, s)| s.local_addr().ok())
    }

    /// Logs the bound addresses: one `listening` event that scripts and
    /// tests read (port 0 in the settings becomes the real port here), with
    /// the admin listener's if it is on.
    pub fn announce(&self, runtime: &str, admin: Option<SocketAddr>) {
        let show = |l| self.addr(l).map_or_else(|| "?".to_owned(), |a| a.to_string());
        let admin = admin.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(
            runtime,
            native = %show(Listener::Native),
            legacy_passcode = %show(Listener::LegacyPasscode),
            legacy_login = %show(Listener::LegacyLogin),
            admin = %admin,
            "listening"
        );
    }
}

/// The capture file of `serve --capture FILE`: the engine's records,
/// appended as they complete (see `tokenizer_auth_engine::capture`).
pub struct CaptureFile {
    file: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    failed: bool,
    /// The bound the engine keeps the capture within.
    max_bytes: u64,
    /// The engine stopped recording at the bound (and it was logged).
    stopped: bool,
}

impl CaptureFile {
    /// Creates the file (mode 0600: a capture holds tokens) and starts the
    /// engine recording, within `max_bytes` (the engine ends the capture
    /// with a mark at the bound; see `docs/CAPTURE.md`). An existing file is
    /// never overwritten.
    pub fn start(path: &std::path::Path, max_bytes: u64, engine: &mut Engine) -> Result<CaptureFile, ServeError> {
        let file = crate::private::create_new_file(path)
            .map_err(|source| ServeError::Capture { path: path.to_owned(), source })?;
        let mut capture = CaptureFile {
            file: std::io::BufWriter::new(file),
            path: path.to_owned(),
            failed: false,
            max_bytes,
            stopped: false,
        };
        let header = engine.start_capture_bounded(max_bytes);
        capture.write(&header);
        Ok(capture)
    }

    /// Appends what the engine recorded since the last call. A write error
    /// is logged once and ends the capture; so does the capture reaching
    /// its bound. Serving goes on unchanged.
    pub fn append(&mut self, engine: &mut Engine) {
        let records = engine.take_capture();
        if !records.is_empty() {
            self.write(&records);
        }
        if !self.stopped && engine.capture_stopped() {
            self.stopped = true;
            self.flush();
            tracing::warn!(
                path = %self.path.display(),
                capture_max_bytes = self.max_bytes,
                "capture stopped: it reached capture_max_bytes; serving goes on"
            );
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        if self.failed {
            return;
        }
        if let Err(e) = self.file.write_all(bytes) {
            tracing::error!(path = %self.path.display(), error = %e, "capture stopped: cannot write");
            self.failed = true;
        }
    }

    /// Writes out what is buffered (at shutdown).
    pub fn flush(&mut self) {
        use std::io::Write as _;
        if let Err(e) = self.file.flush() {
            tracing::error!(path = %self.path.display(), error = %e, "capture incomplete: cannot write");
        }
    }
}

/// The clock, read in one place.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The OS CSPRNG, as the engine takes it.
pub type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// The OS CSPRNG, as the engine takes it. It panics only if the OS cannot
/// provide randomness at all, when no token could be issued safely anyway.
pub fn os_rng() -> OsRng {
    rand_core::UnwrapErr(getrandom::SysRng)
}
