//! The threaded runtime of tokenizer-auth (`serve --runtime std`): the old
//! server's model, a thread per connection on blocking sockets, around one
//! engine behind a mutex.
//!
//! The engine decides; this crate moves bytes. Effects run on the worker
//! pools of `tokenizer-auth-effects`, exactly as under the event loop.

mod connection;
pub mod server;
