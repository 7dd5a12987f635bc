//! What a server needs to run: the engine's configuration and everything
//! around it (files, mail, listeners, workers). The command line builds it
//! from a TOML file, the environment and flags; both runtimes take it as
//! it is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokenizer_auth_engine::{Config, ServerKey};

use crate::audit::AuditTarget;
use crate::mail::MailConfig;
use crate::password::Cost;
use crate::serve::ServeError;
use crate::server_key;
use crate::store::{DEFAULT_CONNECTIONS, StoreLocation};
use crate::tls::TlsConfig;

/// The most event loops a server runs: the mio runtime tells them apart
/// by the top byte of each effect's id on the shared workers.
pub const MAX_LOOPS: usize = 256;

/// The server's threads: its event loops, and those that carry out
/// effects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Workers {
    /// Event loops of the mio runtime, each with its own engine and
    /// connections (`loops`); the first accepts and deals connections out
    /// in turn. The default is one per core; at most [`MAX_LOOPS`].
    pub loops: usize,
    /// SQLite readers, each with its own connections. Writes go to one
    /// writer per file (see [`crate::pool`]).
    pub store: usize,
    /// Password hashing and verification. More than the machine's cores
    /// only queues work; the engine bounds what waits
    /// (`max_password_checks`). The default leaves one core to the event
    /// loop and the store, so a login storm cannot starve token checks.
    pub hash: usize,
    /// Mail delivery (mostly waiting on the relay).
    pub mail: usize,
}

impl Default for Workers {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Workers { loops: cores.min(MAX_LOOPS), store: 4, hash: cores.saturating_sub(1).max(1), mail: 4 }
    }
}

/// Everything a server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The engine's rules and limits. Its `server_key` is replaced at
    /// start-up with [`Settings::server_key`]'s.
    pub engine: Config,
    /// The key of the passcode digests, if given (`server_key`, shared by
    /// several servers); `None`: the data folder's `server.key`, created on
    /// the first start.
    pub server_key: Option<ServerKey>,
    /// The data folder (`op_creds.db`, `op_passcodes.db`, `outbox/`).
    pub data_dir: PathBuf,
    /// A PostgreSQL database to keep the records in instead of the data
    /// folder's SQLite files (`store_url`).
    pub store_url: Option<String>,
    /// More certificates to check the database's TLS against (`store_ca`).
    pub store_ca: Option<PathBuf>,
    /// The most connections to the database at once (`store_connections`).
    pub store_connections: u32,
    /// On PostgreSQL, how long after a session's change (a revocation, a
    /// rotation) a server may still answer from its session cache as
    /// before (`revocation_delay`; zero: no cache, every check reads the
    /// database). See `store::notified`.
    pub revocation_delay: Duration,
    /// How mail leaves: an SMTP relay, or the outbox folder.
    pub mail: MailConfig,
    /// The argon2id cost of new hashes.
    pub cost: Cost,
    /// The native listener.
    pub listen: SocketAddr,
    /// TLS on the native listener, if set (`tls_cert`, `tls_key`).
    pub tls: Option<TlsConfig>,
    /// Listeners off loopback may speak plaintext (`allow_plaintext`): see
    /// [`Settings::check_exposure`].
    pub allow_plaintext: bool,
    /// The legacy passcode listener.
    pub legacy_passcode_listen: SocketAddr,
    /// The legacy login listener.
    pub legacy_login_listen: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), if on.
    pub admin_listen: Option<SocketAddr>,
    /// Effect worker threads.
    pub workers: Workers,
    /// Where the audit trail goes (`audit_log`; by default
    /// `<data_dir>/audit.log`).
    pub audit_log: AuditTarget,
    /// Where to record a capture of the session, if anywhere.
    pub capture: Option<PathBuf>,
    /// The most bytes a capture may hold; recording stops there.
    pub capture_max_bytes: u64,
    /// The most sessions kept in memory for token checks (0: none; every
    /// check reads the file).
    pub session_cache: usize,
}

/// The default bound of a capture: 1 GiB, some 2.6 million token checks.
pub const DEFAULT_CAPTURE_MAX_BYTES: u64 = 1 << 30;

/// The smallest bound a capture may have: room for its header and a few
/// records.
pub const MIN_CAPTURE_MAX_BYTES: u64 = 4096;

/// The default `revocation_delay`.
pub const DEFAULT_REVOCATION_DELAY: Duration = Duration::from_secs(1);

/// The default bound of the session cache: about 170 MB at its fullest.
pub const DEFAULT_SESSION_CACHE: usize = 1 << 20;

impl Settings {
    /// The embedded defaults: data in `./data`, mail to `./data/outbox`,
    /// listeners on loopback 7160, 7158 and 7159.
    pub fn new(data_dir: PathBuf) -> Settings {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Settings {
            engine: Config::default(),
            server_key: None,
            mail: MailConfig::Outbox { dir: data_dir.join("outbox") },
            audit_log: AuditTarget::in_data_dir(&data_dir),
            data_dir,
            store_url: None,
            store_ca: None,
            store_connections: DEFAULT_CONNECTIONS,
            revocation_delay: DEFAULT_REVOCATION_DELAY,
            cost: Cost::PRODUCT,
            listen: loopback(7160),
            tls: None,
            allow_plaintext: false,
            legacy_passcode_listen: loopback(7158),
            legacy_login_listen: loopback(7159),
            admin_listen: None,
            workers: Workers::default(),
            capture: None,
            capture_max_bytes: DEFAULT_CAPTURE_MAX_BYTES,
            session_cache: DEFAULT_SESSION_CACHE,
        }
    }
}

impl Settings {
    /// Where the records are: `store_url`, or the data folder's files.
    pub fn store(&self) -> StoreLocation {
        match &self.store_url {
            Some(url) => StoreLocation::Postgres {
                url: url.clone(),
                ca: self.store_ca.clone(),
                connections: self.store_connections,
            },
            None => StoreLocation::Files(self.data_dir.clone()),
        }
    }

    /// The server key to run with: the one given, or the data folder's
    /// (created, with the folder, if missing).
    /// Its fingerprint is logged (never the key), so operators can check
    /// that servers meant to share a key do.
    pub fn resolve_server_key(&self) -> Result<ServerKey, ServeError> {
        let (key, from) = match &self.server_key {
            Some(key) => (key.clone(), "server_key".to_owned()),
            None => (
                server_key::load_or_create(&self.data_dir)?,
                server_key::key_path(&self.data_dir).display().to_string(),
            ),
        };
        tracing::info!(fingerprint = %key.fingerprint(), from = %from, "server key");
        Ok(key)
    }
}

impl Settings {
    /// Refuses a listener that would carry secrets in the clear off this
    /// machine (docs/SECURITY.md, "TLS"): the native listener on an
    /// address other than loopback without TLS, or a legacy listener (which
    /// cannot do TLS: the old clients do not) on one, unless
    /// `allow_plaintext` says the operator knows.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.allow_plaintext {
            return Ok(());
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "the native listener {} is not on loopback and has no TLS: passwords and tokens would cross the \
                 network in the clear; set tls_cert and tls_key, or allow_plaintext = true",
                self.listen
            ));
        }
        for (name, addr) in
            [("legacy passcode", self.legacy_passcode_listen), ("legacy login", self.legacy_login_listen)]
        {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "the {name} listener {addr} is not on loopback, and the legacy protocol has no TLS: passwords \
                     and passcodes would cross the network in the clear; keep it on loopback, or set \
                     allow_plaintext = true"
                ));
            }
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(PathBuf::from("data"))
    }
}
