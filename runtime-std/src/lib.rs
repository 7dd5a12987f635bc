//! The blocking side of tokenizer-auth: the executors that carry out the
//! engine's effects against the real world, and (later) the threaded server.
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
//!   [`EffectResult`](tokenizer_auth_engine::EffectResult).
//!
//! Every call here blocks; the mio runtime runs them on worker threads so
//! its event loop never waits on a disk, a hash or a relay.

pub mod executor;
pub mod mail;
pub mod password;
pub mod pool;
pub mod serve;
pub mod server;
pub mod settings;
pub mod store;
