//! Carries out the engine's effects: reads and writes on the store,
//! password checks on the hasher, mail on the mailer.

use tokenizer_auth_engine::{Effect, EffectResult};

use crate::mail::Mailer;
use crate::password::Hasher;
use crate::store::{Commit, SqliteStore};

/// Runs every kind of effect, blocking, on one thread (tests, tools and
/// the crash-safety child use it; servers spread the kinds over
/// [`crate::pool::EffectPool`]).
pub struct Executor {
    /// The store.
    pub store: SqliteStore,
    /// The password hasher.
    pub hasher: Hasher,
    /// The mail relay or outbox.
    pub mailer: Mailer,
}

impl Executor {
    /// Carries out `effect` and returns its result. Failures become
    /// [`EffectResult::Failed`]; the engine turns that into a retryable error
    /// for the client.
    pub fn run(&mut self, effect: &Effect) -> EffectResult {
        match effect {
            Effect::Read(_) | Effect::Write(_) => run_store(&mut self.store, effect),
            Effect::VerifyPassword { .. } | Effect::HashPassword { .. } => run_hash(&self.hasher, effect),
            Effect::SendMail(_) => run_mail(&self.mailer, effect),
        }
    }
}

/// A store effect. Failures are logged (never with a secret: store errors
/// name files and SQLite's reason).
pub(crate) fn run_store(store: &mut SqliteStore, effect: &Effect) -> EffectResult {
    let outcome = match effect {
        Effect::Read(lookup) => store.read(lookup).map(|snapshot| EffectResult::Read(Box::new(snapshot))),
        Effect::Write(batch) => store.write(batch).map(|commit| match commit {
            Commit::Applied => EffectResult::Committed,
            Commit::Conflict => EffectResult::Conflict,
        }),
        _ => return EffectResult::Failed,
    };
    outcome.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "store effect failed");
        EffectResult::Failed
    })
}

/// A password effect.
pub(crate) fn run_hash(hasher: &Hasher, effect: &Effect) -> EffectResult {
    match effect {
        Effect::VerifyPassword { hash, candidate } => EffectResult::Verified(hasher.verify(hash, candidate)),
        Effect::HashPassword { password } => hasher.hash(password).map_or_else(
            |e| {
                tracing::warn!(error = %e, "password hashing failed");
                EffectResult::Failed
            },
            EffectResult::Hashed,
        ),
        _ => EffectResult::Failed,
    }
}

/// A mail effect.
pub(crate) fn run_mail(mailer: &Mailer, effect: &Effect) -> EffectResult {
    match effect {
        Effect::SendMail(mail) => match mailer.send(mail) {
            Ok(()) => EffectResult::Sent,
            Err(e) => {
                tracing::warn!(error = %e, "mail not sent");
                EffectResult::Failed
            }
        },
        _ => EffectResult::Failed,
    }
}
