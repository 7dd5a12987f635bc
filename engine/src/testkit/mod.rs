//! A deterministic harness for the engine, in the spirit of quinn-proto's
//! client/server `Pair`: an in-memory store that honours write
//! expectations, a mailbox, a stand-in password hasher, a seeded RNG, a
//! virtual clock, and scripted clients. No sockets, no sleeps, no threads:
//! a test (or a benchmark, or a fuzz target) runs the same way every time.
//!
//! Enabled by the `testkit` feature.

pub mod fuzz;
mod rng;
mod store;
mod world;

pub use rng::TestRng;
pub use store::{MemoryStore, test_hash, test_verify};
pub use world::{Completion, World, epoch};
