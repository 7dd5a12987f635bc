//! A seeded simulation of the whole tokenizer-auth system under faults
//! (docs/SIMULATION.md), in the manner of TigerBeetle's VOPR and
//! FoundationDB's simulation: one server, its store and mail relay, the
//! network and many clients, on one virtual clock, every choice drawn
//! from one `u64` seed, so that a failing seed replays exactly.
//!
//! The engine is sans-IO, so the simulation drives it directly, the way a
//! runtime does ([`tokenizer_auth_engine::Engine`]'s driving contract): it
//! hands it inputs at the virtual time, carries out the effects it asks
//! for against the test kit's in-memory store (with latency, errors,
//! commits reported as failures, and crashes that lose what was not yet
//! committed), delivers mail through a relay that delays, loses,
//! duplicates and refuses, and moves bytes over a network that delays,
//! splits and hangs up. The server crashes and restarts from its store,
//! and its clock jumps.
//!
//! - `profile`: what a seed decides: the faults and their rates, the
//!   clients, the engine's settings.
//! - `client`: devices and guessers, each with its own behaviour.
//! - `world`: the event queue and everything the events move.
//! - `model`: the reference model that checks every rule against what the
//!   clients were told.
//!
//! [`simulate`] runs one seed and returns its [`Report`]; the `sim` binary
//! runs seeds from the command line.

mod client;
mod model;
mod profile;
mod world;

pub use profile::Profile;
pub use world::{FAULTS, Report};

/// Simulates `seed` for `requests` request lines under its faults, then
/// until every client has finished with the faults stopped, or until a
/// rule breaks. `capture` keeps the capture of the engine's last life (the
/// one in which the rule broke), for `tokenizer-auth replay`.
pub fn simulate(seed: u64, requests: u64, capture: bool) -> Report {
    world::World::new(seed, requests, capture).run()
}
