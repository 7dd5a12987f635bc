//! Carries out the engine's effects: one store, one hasher, one mailer.

use tokenizer_auth_engine::{Effect, EffectResult};

use crate::mail::Mailer;
use crate::password::Hasher;
use crate::store::{Commit, SqliteStore};

/// Runs effects, blocking. Each worker thread owns one (with its own
/// SQLite connections); the hasher and mailer are cheap to clone.
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
            Effect::Read(lookup) => self.store.read(lookup).map_or(EffectResult::Failed, EffectResult::Read),
            Effect::Write(batch) => match self.store.write(batch) {
                Ok(Commit::Applied) => EffectResult::Committed,
                Ok(Commit::Conflict) => EffectResult::Conflict,
                Err(_) => EffectResult::Failed,
            },
            Effect::VerifyPassword { hash, candidate } => EffectResult::Verified(self.hasher.verify(hash, candidate)),
            Effect::HashPassword { password } => {
                self.hasher.hash(password).map_or(EffectResult::Failed, EffectResult::Hashed)
            }
            Effect::SendMail(mail) => self.mailer.send(mail).map_or(EffectResult::Failed, |()| EffectResult::Sent),
        }
    }
}
