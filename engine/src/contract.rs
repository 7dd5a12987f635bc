//! A runtime's breach of the driving contract (see the crate docs), as the
//! engine detects it. Like a TLS connection after a fatal alert, an engine
//! that met one is stopped for good: it keeps the first breach, takes no
//! more input, and says why through [`crate::Engine::error`], so that the
//! runtime stops instead of serving from a state nobody can vouch for. A
//! breach is a bug in the runtime, never the client's doing, so no client
//! is ever told about it as a store or relay failure.

use std::fmt;

use crate::effect::{EffectId, EffectKind};

/// How a runtime broke the driving contract.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ContractError {
    /// A result for an effect the engine never asked for.
    UnknownEffect(EffectId),
    /// A second result for an effect already answered.
    DuplicateResult(EffectId),
    /// A result of another kind than the effect asked for (a commit for a
    /// read, say).
    WrongResult {
        /// The effect.
        id: EffectId,
        /// The kind of effect it is.
        expected: EffectKind,
        /// The kind of effect the result answers.
        got: EffectKind,
    },
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractError::UnknownEffect(id) => write!(f, "a result for effect {}, which was never asked for", id.0),
            ContractError::DuplicateResult(id) => write!(f, "a second result for effect {}", id.0),
            ContractError::WrongResult { id, expected, got } => {
                write!(f, "effect {} is a {expected}, but its result answers a {got}", id.0)
            }
        }
    }
}

impl std::error::Error for ContractError {}
