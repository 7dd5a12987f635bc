//! Helpers for the integration tests of tokenizer-auth (the tests
//! themselves are in `tests/tests/`).
//!
//! - [`smtp::SmtpServer`]: a real SMTP server (Python's aiosmtpd, run from
//!   `tests/support/smtp_server.py`) that keeps what it receives in a
//!   temporary folder.
//! - [`real`]: engine worlds whose effects run against the real SQLite
//!   store, argon2id hasher and outbox.
//! - [`crash`]: what the crash-safety child and its test agree on.
//! - [`conformance`]: the checks every store passes, and the adapters
//!   that put the in-memory model and the SQLite store under them.
//! - [`haproxy`]: a real HAProxy in front of servers, each connection
//!   opened with a PROXY protocol header.
//! - [`postgres`]: a real PostgreSQL server (`initdb` and `pg_ctl` in a
//!   temporary folder, on 127.0.0.1), one [`postgres::shared`] per test
//!   process, with a fresh database for each test; installed by
//!   `tests/support/postgres.sh` when missing.

pub mod conformance;
pub mod crash;
pub mod haproxy;
pub mod postgres;
pub mod real;
pub mod smtp;
