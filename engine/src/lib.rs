//! The protocol engine of tokenizer-auth: every decision the server makes,
//! and no IO.
//!
//! # The model
//!
//! A user proves who they are with email, password and a one-time passcode
//! sent by mail, and then carries a session token bound to their device's
//! MAC address and IP. The engine holds the connections and the requests in
//! flight; everything else comes in as [`Input`] and goes out as
//! [`Output`]:
//!
//! - bytes from a connection, with the peer's IP and the listener (native
//!   line protocol, or one of the two legacy ports);
//! - the current time, with every call (`chrono::DateTime<Utc>`);
//! - randomness, through the `rand_core` CSPRNG passed to every call (all
//!   draws happen in one module, `random`);
//! - the results of the effects it asked for: store reads, store writes
//!   with preconditions, password verification and hashing, mail.
//!
//! The engine reads no clock, opens no socket or file, spawns no thread and
//! draws no OS randomness. So the same inputs, with the same RNG output,
//! give the same outputs, byte for byte: that is what the property tests,
//! the fuzz targets and the replay of captured sessions stand on.
//!
//! Each request is a small state machine in `flow/`:
//! waiting for records, for the password check, for the relay, for a
//! commit. A reply that depends on a write is released only once the
//! runtime reports the write committed. Replies on one connection go out in
//! request order, whatever order effects complete in.
//!
//! # The driving contract
//!
//! 1. Feed each event to [`Engine::handle`] with the current time and the
//!    RNG. Time never runs backwards inside the engine: an earlier `now` is
//!    taken as the latest seen.
//! 2. After every `handle`, drain [`Engine::poll_output`] until it returns
//!    `None`, and act on each output in order:
//!    - [`Output::Transmit`]: write the bytes to the connection, in order
//!      with earlier transmits (never half a write: what the socket does
//!      not take now waits for it), and report what the socket took with
//!      [`Input::Sent`]. Until then the bytes count against
//!      `max_backlog`, and a peer that takes none for `write_timeout` is
//!      closed.
//!    - [`Output::HalfClose`]: everything owed was taken; shut the write
//!      side, and go on reading while [`Engine::wants_input`] says so (the
//!      engine discards what comes) until the close.
//!    - [`Output::Close`]: drop the connection now, with whatever of its
//!      bytes is not yet written. The engine has forgotten it; every
//!      connection it forgets gets exactly one `Close`, whatever the cause,
//!      so a runtime never needs to ask whether a connection still exists.
//!    - [`Output::Perform`]: carry out the effect, then report its result
//!      with [`Input::Completed`], exactly once, at any later time and in any
//!      order relative to other effects: a result of the effect's
//!      [`EffectKind`], or [`EffectResult::Failed`] when it could not be
//!      carried out. A write is reported [`EffectResult::Committed`] only
//!      once it is durable. (Effects still out when a shutdown's grace ends
//!      are abandoned: their results may still come, and go nowhere.)
//!    - [`Output::Stopped`]: after [`Input::Shutdown`], nothing is left;
//!      the runtime may return.
//!
//!    Then drain [`Engine::poll_notice`] and log each [`Notice`] (a request
//!    refused by a limit, at `info`).
//! 3. Then ask [`Engine::poll_timeout`], and call `handle` with
//!    [`Input::Timeout`] once that instant has passed. Early or spurious
//!    timeouts are harmless.
//! 4. Read from a connection only while [`Engine::wants_input`] is true,
//!    at most 64 KiB at a time; report end of input with [`Input::Closed`]
//!    and a failed socket with [`Input::Failed`]. Outputs for a connection
//!    the runtime has already dropped are ignored.
//! 5. A [`ConnId`] is unique among open connections and may be reused once
//!    the engine closed the connection.
//! 6. To stop, close the listeners and feed [`Input::Shutdown`]; go on
//!    driving the engine until [`Output::Stopped`].
//! 7. After every `handle`, check [`Engine::error`]. A result for an effect
//!    never asked for, a second result for one, or a result of another kind
//!    is a bug in the runtime, and the engine stops for good on the first:
//!    it keeps that [`ContractError`], ignores every later input, and gives
//!    no more outputs, notices, timeouts or wish for input (so there is no
//!    [`Output::Close`] or [`Output::Stopped`] to wait for). The runtime
//!    logs it and stops, dropping its connections. No client is told
//!    anything about it: above all not that the store is unavailable.
//!
//! The connection policy (how much a peer may leave unread, when a silent
//! peer is dropped, how a close lingers, how a shutdown drains) is the
//! engine's, so every runtime applies the same one: `docs/SECURITY.md`,
//! "Connections".
//!
//! Bytes from the network never make the engine panic; a panic is a bug in
//! the engine. A runtime that makes a protocol decision is a bug in the
//! runtime: the decision belongs here.
//!
//! # Layout
//!
//! The modules depend on each other one way only, from the top of this
//! list down (`tests/module_graph.rs` fails on any import cycle):
//!
//! 1. `capture` (the replay) and `testkit` drive an [`Engine`].
//! 2. `engine`: connections in, requests through their flows, effects and
//!    replies out.
//! 3. What the engine holds, none of which knows the engine or each other:
//!    `connection` (a connection's life, and its framing per listener),
//!    `flow/` (one state machine per request), `recording` (a capture
//!    being written, and the format it shares with replay), `timers`.
//! 4. Plain types and pure rules: `io` (inputs and outputs), `effect`,
//!    `contract` (a runtime's breach of the driving contract),
//!    `store`, `limits` over `counters`, `codec/`, `config`, and the domain
//!    types (tokens, passcodes, passwords, sessions, devices, secrets).

// Inputs, effects and flow states are moved a few times per request; boxing
// their large variants would add an allocation per effect on the hot path.
#![allow(clippy::large_enum_variant)]

mod audit;
pub mod capture;
pub mod codec;
mod config;
mod connection;
mod contract;
mod counters;
mod device;
mod effect;
mod engine;
mod flow;
mod hex;
mod io;
mod limits;
pub mod mail;
pub mod metrics;
mod notice;
mod passcode;
mod password;
mod random;
mod recording;
mod renewal;
mod secret;
mod server_key;
mod session;
mod store;
mod timers;
mod token;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use audit::{AuditEvent, AuditKind, Outcome, Subject};
pub use codec::reply::{ErrorCode, LOGIN_PREFIX, Reply};
pub use config::{Config, DEFAULT_DUMMY_PASSWORD, MAX_DURATION, MAX_LINE};
pub use contract::ContractError;
pub use counters::{Bound, Counter, CounterKey, Place, Refund, Reservation};
pub use device::{Mac, normalize_ip};
pub use effect::{Effect, EffectId, EffectKind, EffectResult, Mail};
pub use engine::Engine;
pub use io::{ConnId, Input, Listener, Output};
pub use limits::{Limits, Window};
pub use notice::Notice;
pub use passcode::{ALPHABET, LENGTH as PASSCODE_LENGTH, PasscodeKey, PasscodePolicy, PasscodeRecord, StoredPasscode};
pub use password::{DEFAULT_MIN_PASSWORD_LENGTH, NewPasswordRule, PasswordHash};
pub use renewal::{REUSE_HISTORY, Reuse, successor};
pub use secret::Secret;
pub use server_key::{Fingerprint, ServerKey};
pub use session::SessionPolicy;
pub use store::{
    CredsBatch, CredsExpectation, CredsOp, Lookup, PasscodeExpectation, PasscodesBatch, PasscodesOp, RotationRecord,
    SessionRecord, Snapshot, UserRecord, WriteBatch,
};
pub use token::{BaseToken, MasterToken, TokenTag};
