//! The event-loop runtime of tokenizer-auth (on mio) and the command line
//! of the `tokenizer-auth` binary.
//!
//! The engine decides; this crate moves bytes and runs effects. [`server`] is
//! the default runtime for `serve`: one mio event loop that owns the sockets
//! and the engine, with effects on the worker pools of
//! `tokenizer-auth-runtime-std` (whose threaded runtime is the other choice,
//! `serve --runtime std`). [`cli`] is the command line
//! (`docs/CONFIGURATION.md`, "Commands"): configuration, `serve`, `client`,
//! `user`, `session`.

pub mod cli;
pub mod server;
