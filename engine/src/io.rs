//! What passes between a runtime and the engine: the connection names and
//! listeners, the inputs a runtime feeds and the outputs it acts on (the
//! crate docs give the driving contract).
//!
//! These are plain data, kept apart from the engine that acts on them so
//! that whatever only reads or writes them (the connection, its timers, the
//! recording of a capture) depends on this module and not on the engine:
//! the engine uses those parts, never the other way round.

use std::net::IpAddr;

use crate::effect::{Effect, EffectId, EffectResult};

/// Names a connection. Chosen by the runtime; unique among open
/// connections, and may be reused once the connection is closed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConnId(pub u64);

/// Which listener accepted a connection, and so which protocol it speaks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Listener {
    /// The native line protocol (default port 7160).
    Native,
    /// The old server's passcode port (7158): one pickled request.
    LegacyPasscode,
    /// The old server's login port (7159): one pickled request.
    LegacyLogin,
}

impl Listener {
    /// The listener's name in logs, as its setting names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Native => "native",
            Listener::LegacyPasscode => "legacy_passcode",
            Listener::LegacyLogin => "legacy_login",
        }
    }
}

/// Something that happened outside the engine.
#[derive(Debug)]
pub enum Input<'a> {
    /// A client connected.
    Opened {
        /// Its id.
        conn: ConnId,
        /// Its address, as the socket reports it.
        peer: IpAddr,
        /// The listener that accepted it.
        listener: Listener,
    },
    /// Bytes arrived.
    Received {
        /// From which connection.
        conn: ConnId,
        /// The bytes, as read.
        bytes: &'a [u8],
    },
    /// The client will send nothing more: it closed (or half-closed) its
    /// side. Replies still owed are sent before the engine closes.
    Closed {
        /// Which connection.
        conn: ConnId,
    },
    /// The socket failed (a reset, a failed write): nothing more goes in
    /// or out. The engine drops what it owes and closes.
    Failed {
        /// Which connection.
        conn: ConnId,
    },
    /// The connection's socket took `bytes` more of what was transmitted.
    /// Until it does, those bytes count against `max_backlog`, and a peer
    /// that takes none for `write_timeout` is dropped.
    Sent {
        /// Which connection.
        conn: ConnId,
        /// How many bytes the socket took.
        bytes: usize,
    },
    /// An effect finished: reported once per effect, with a result of its
    /// kind or [`EffectResult::Failed`] (anything else is a
    /// [`crate::ContractError`]).
    Completed {
        /// Which effect.
        id: EffectId,
        /// Its result.
        result: EffectResult,
    },
    /// The deadline from [`crate::Engine::poll_timeout`] has passed.
    Timeout,
    /// Stop: take no new connection or request, finish the requests in
    /// flight and send their replies, for at most `shutdown_grace`; then
    /// close what is left and say [`Output::Stopped`].
    Shutdown,
}

/// Something the runtime must do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Output {
    /// Write these bytes to the connection, in full and in order.
    Transmit {
        /// Which connection.
        conn: ConnId,
        /// What to write.
        bytes: Vec<u8>,
    },
    /// Everything owed was transmitted and taken: shut the write side of
    /// the connection. Keep reading while [`crate::Engine::wants_input`] says so
    /// and feeding what arrives (it is discarded) until [`Output::Close`].
    HalfClose {
        /// Which connection.
        conn: ConnId,
    },
    /// Close the connection now, dropping whatever of its bytes is not yet
    /// written. The engine has forgotten it; this is the only way it
    /// forgets one.
    Close {
        /// Which connection.
        conn: ConnId,
    },
    /// Carry out an effect and report its result with
    /// [`Input::Completed`].
    Perform {
        /// Its id.
        id: EffectId,
        /// What to do.
        effect: Effect,
    },
    /// After [`Input::Shutdown`]: every connection is closed and nothing is
    /// in flight (or the grace ran out). Said once; the runtime may stop.
    Stopped,
}
