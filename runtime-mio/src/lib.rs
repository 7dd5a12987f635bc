//! The event-loop runtime of tokenizer-auth (on mio) and the command line
//! of the `tokenizer-auth` binary.
//!
//! The engine decides; this crate moves bytes and runs effects. Today it
//! holds the command line's administration commands; the server arrives
//! with the runtimes.

pub mod cli;
pub mod server;
