//! Effects: work the engine asks the runtime to do, and the results that
//! come back. Each effect has an [`EffectId`]; results may arrive in any
//! order, and each must arrive exactly once.

use chrono::{DateTime, Utc};

use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::store::{Lookup, Snapshot, WriteBatch};

/// Names one effect from the moment it is asked for until its result comes
/// back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EffectId(pub u64);

/// Work for the runtime.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Effect {
    /// Read records; answer [`EffectResult::Read`].
    Read(Lookup),
    /// Commit a batch, checking its expectation inside the transaction;
    /// answer [`EffectResult::Committed`] only once it is durable, or
    /// [`EffectResult::Conflict`].
    Write(WriteBatch),
    /// Verify a password against a stored hash; answer
    /// [`EffectResult::Verified`].
    VerifyPassword {
        /// The stored hash (or legacy plaintext, compared in constant time).
        hash: PasswordHash,
        /// The password the client sent.
        candidate: Secret,
    },
    /// Hash a password for storage; answer [`EffectResult::Hashed`].
    HashPassword {
        /// The password to hash.
        password: Secret,
    },
    /// Hand a message to the mail relay; answer [`EffectResult::Sent`] once
    /// the relay accepted it.
    SendMail(Mail),
}

/// A message carrying a passcode.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Mail {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The text body; it names the passcode, so it is a secret.
    pub body: Secret,
    /// When the passcode in it expires.
    pub expires_at: DateTime<Utc>,
}

/// The outcome of an effect.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EffectResult {
    /// The records that were read (boxed: a snapshot is large, and results
    /// are moved several times on the way to their flow).
    Read(Box<Snapshot>),
    /// The batch is durable.
    Committed,
    /// The batch's expectation did not hold; nothing was written.
    Conflict,
    /// Whether the password matched.
    Verified(bool),
    /// The new stored hash.
    Hashed(PasswordHash),
    /// The relay accepted the message.
    Sent,
    /// The effect could not be carried out (store or relay down, hashing
    /// failed). The client gets a retryable error.
    Failed,
}
