//! Effects: work the engine asks the runtime to do, and the results that
//! come back. Each effect has an [`EffectId`]; results may arrive in any
//! order, and each must arrive exactly once, of its effect's
//! [`EffectKind`] (or [`EffectResult::Failed`], which answers any kind).
//!
//! [`EffectResult`] is the one type every runtime reports and every capture
//! records; inside the engine, a waiting flow takes only the outcome of the
//! kind it waits for (see `flow`), converted once, where the result comes
//! in.

use std::fmt;

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

/// What kind of work an effect is: which worker carries it out, and which
/// results answer it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum EffectKind {
    /// [`Effect::Read`], answered by [`EffectResult::Read`].
    Read,
    /// [`Effect::Write`], answered by [`EffectResult::Committed`] or
    /// [`EffectResult::Conflict`].
    Write,
    /// [`Effect::VerifyPassword`], answered by [`EffectResult::Verified`].
    VerifyPassword,
    /// [`Effect::HashPassword`], answered by [`EffectResult::Hashed`].
    HashPassword,
    /// [`Effect::SendMail`], answered by [`EffectResult::Sent`].
    SendMail,
}

impl EffectKind {
    /// The kind's name in messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            EffectKind::Read => "store read",
            EffectKind::Write => "store write",
            EffectKind::VerifyPassword => "password verification",
            EffectKind::HashPassword => "password hash",
            EffectKind::SendMail => "mail",
        }
    }
}

impl fmt::Display for EffectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Effect {
    /// What kind of work this is.
    pub fn kind(&self) -> EffectKind {
        match self {
            Effect::Read(_) => EffectKind::Read,
            Effect::Write(_) => EffectKind::Write,
            Effect::VerifyPassword { .. } => EffectKind::VerifyPassword,
            Effect::HashPassword { .. } => EffectKind::HashPassword,
            Effect::SendMail(_) => EffectKind::SendMail,
        }
    }
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

impl EffectResult {
    /// The kind of effect this result answers; `None` for
    /// [`EffectResult::Failed`], which answers any kind.
    pub fn kind(&self) -> Option<EffectKind> {
        match self {
            EffectResult::Read(_) => Some(EffectKind::Read),
            EffectResult::Committed | EffectResult::Conflict => Some(EffectKind::Write),
            EffectResult::Verified(_) => Some(EffectKind::VerifyPassword),
            EffectResult::Hashed(_) => Some(EffectKind::HashPassword),
            EffectResult::Sent => Some(EffectKind::SendMail),
            EffectResult::Failed => None,
        }
    }
}
