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

pub mod conformance;
pub mod crash;
pub mod real;
pub mod smtp;
