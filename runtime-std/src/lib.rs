//! The blocking side of tokenizer-auth: the executors that carry out the
//! engine's effects against the real world, the worker pools both servers
//! use, and the threaded server.
//!
//! The engine (`tokenizer-auth-engine`) decides everything and does no IO;
//! it asks for effects. This crate runs them:
//!
//! - [`store::SqliteStore`]: reads and write batches against the two SQLite
//!   files of the old server (`op_creds.db`, `op_passcodes.db`), migrated in
//!   place, in WAL mode, each batch's expectation checked inside its write
//!   transaction;
//! - [`password::Hasher`]: argon2id hashing and verification;
//! - [`mail::Mailer`]: SMTP through lettre, or an outbox folder of `.eml`
//!   files;
//! - [`executor::Executor`]: one of each, turning an
//!   [`Effect`](tokenizer_auth_engine::Effect) into an
//!   [`EffectResult`](tokenizer_auth_engine::EffectResult);
//! - [`pool::EffectPool`]: the servers' worker threads: store readers that
//!   answer what is queued from one read transaction, one writer per file
//!   that commits what is queued as one group (one `fsync`), hashers and
//!   mailers; the readers share a [`store::SessionCache`], coherent with
//!   the file through a counter its triggers bump on every session change;
//! - [`server`]: the threaded runtime (`serve --runtime std`);
//! - [`private`] and [`server_key`]: the data folder's permissions (0700,
//!   files 0600) and the server key that keys the passcode digests.
//!
//! Every call here blocks; the servers run them on worker threads so that
//! no thread serving sockets waits on a disk, a hash or a relay.

pub mod executor;
pub mod mail;
pub mod password;
pub mod pool;
pub mod private;
pub mod serve;
pub mod server;
pub mod server_key;
pub mod settings;
pub mod socket;
pub mod store;
