//! The event-loop runtime of tokenizer-auth, on mio: the default for
//! `serve`.
//!
//! The engine decides; this crate moves bytes. [`server`] runs one mio event
//! loop that owns the sockets and the engine, and hands effects to the
//! worker pools of `tokenizer-auth-effects`.

pub mod server;
