//! Carries out the engine's effects, for both runtimes of tokenizer-auth,
//! and starts what a server needs.
//!
//! The engine (`tokenizer-auth-engine`) decides everything and does no IO;
//! it asks for effects. This crate runs them, blocking, on worker threads:
//!
//! - [`store::Store`]: the store a server or a command uses, the SQLite
//!   files or a PostgreSQL database ([`store::PgStore`], `store_url`: a
//!   pool of connections shared by a server's workers, groups of renewals
//!   in a few statements, and [`store::NotifiedCache`], the session cache
//!   its [`store::Listener`] keeps true by the database's notifications,
//!   within `revocation_delay`);
//! - [`store::SqliteStore`]: reads and write batches against the two SQLite
//!   files of the old server (`op_creds.db`, `op_passcodes.db`), migrated in
//!   place, in WAL mode, each batch's expectation checked inside its write
//!   transaction; [`store::SessionCache`] keeps the sessions in memory,
//!   coherent with the file through a counter its triggers bump on every
//!   session change;
//! - [`password::PasswordHasher`]: argon2id hashing and verification;
//! - [`mail::Mailer`]: SMTP through lettre, or an outbox folder of `.eml`
//!   files;
//! - [`runner::EffectRunner`]: one of each, turning an
//!   [`Effect`](tokenizer_auth_engine::Effect) into an
//!   [`EffectResult`](tokenizer_auth_engine::EffectResult) on the calling
//!   thread (tools and tests);
//! - [`pool::EffectPool`]: the servers' worker threads: store readers that
//!   answer what is queued from one read transaction, one writer per file
//!   that commits what is queued as one group (one `fsync`), hashers and
//!   mailers;
//! - [`loop_reads::LoopReads`]: token checks whose session the cache holds,
//!   answered on the event loop's own thread at the end of its turn,
//!   without the hop to a reader (the cache's validity checked once per
//!   turn, never waiting);
//! - [`settings`] and [`serve`]: what a server runs with, and the start-up
//!   both runtimes share (listeners, capture file, clock, OS randomness);
//! - [`private`] and [`server_key`]: the data folder's permissions (0700,
//!   files 0600) and the server key that keys the passcode digests;
//! - [`tls`]: TLS on the native listener, rustls's sans-IO connection
//!   between a socket and the engine, for both runtimes;
//! - [`metrics`] and [`admin_listener`]: what the engine and the workers
//!   counted, rendered for Prometheus at scrape time, and the operators'
//!   HTTP listener (`/metrics`, `/healthz`, `/readyz`);
//! - [`audit`]: the audit trail's file, one JSON line per security event,
//!   written by a thread of its own so that no event loop waits on it.
//!
//! Every call here blocks; the runtimes (`tokenizer-auth-runtime-mio`, the
//! event loop, and `tokenizer-auth-runtime-std`, a thread per connection)
//! run them on the pools so that no thread serving sockets waits on a disk,
//! a hash or a relay (the one exception, [`loop_reads`], reads memory and
//! a counter that never waits for a lock). Neither runtime depends on the other: both depend on
//! this crate and the engine.

pub mod admin_listener;
pub mod audit;
pub mod loop_reads;
pub mod mail;
pub mod metrics;
pub mod password;
pub mod pool;
pub mod private;
pub mod runner;
pub mod serve;
pub mod server_key;
pub mod settings;
pub mod socket;
pub mod store;
pub mod tls;
