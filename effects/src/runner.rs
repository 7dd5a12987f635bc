//! Carries out the engine's effects: reads and writes on the store,
//! password checks on the hasher, mail on the mailer. Each function takes
//! one kind of effect, already routed: [`EffectRunner::run`] and the pool's
//! `submit` are the only places that look at which kind an effect is.

use tokenizer_auth_engine::{Effect, EffectResult, Lookup, Mail, PasswordHash, Secret, Snapshot};

use crate::mail::Mailer;
use crate::password::PasswordHasher;
use crate::store::{Commit, SqliteStore, StoreError};

/// Runs every kind of effect, blocking, on the calling thread (tests, tools
/// and the crash-safety child use it; servers spread the kinds over
/// [`crate::pool::EffectPool`]).
pub struct EffectRunner {
    /// The store.
    pub store: SqliteStore,
    /// The password hasher.
    pub hasher: PasswordHasher,
    /// The mail relay or outbox.
    pub mailer: Mailer,
}

impl EffectRunner {
    /// Carries out `effect` and returns its result. Failures become
    /// [`EffectResult::Failed`]; the engine turns that into a retryable error
    /// for the client.
    pub fn run(&mut self, effect: &Effect) -> EffectResult {
        let one = |mut results: Vec<EffectResult>| results.pop().unwrap_or(EffectResult::Failed);
        match effect {
            Effect::Read(lookup) => one(read(&self.store, &[lookup])),
            Effect::Write(batch) => {
                let outcome = self.store.write_group(&[batch]).pop().unwrap_or(Err(StoreError::NoOutcome));
                settle(outcome.map(committed))
            }
            Effect::VerifyPassword { hash, candidate } => verify(&self.hasher, hash, candidate),
            Effect::HashPassword { password } => hash(&self.hasher, password),
            Effect::SendMail(mail) => send(&self.mailer, mail),
        }
    }
}

/// Lookups answered from one read transaction, in order.
pub(crate) fn read(store: &SqliteStore, lookups: &[&Lookup]) -> Vec<EffectResult> {
    snapshots(store.read_many(lookups.iter().copied()))
}

/// Snapshots as the engine takes them.
pub(crate) fn snapshots(read: Vec<Result<Snapshot, StoreError>>) -> Vec<EffectResult> {
    read.into_iter().map(|r| settle(r.map(|s| EffectResult::Read(Box::new(s))))).collect()
}

/// A store outcome as the engine takes it.
pub(crate) fn committed(commit: Commit) -> EffectResult {
    match commit {
        Commit::Applied => EffectResult::Committed,
        Commit::Conflict => EffectResult::Conflict,
    }
}

/// A store failure is logged (never with a secret: store errors name files
/// and SQLite's reason) and reported as failed.
pub(crate) fn settle(outcome: Result<EffectResult, StoreError>) -> EffectResult {
    outcome.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "store effect failed");
        EffectResult::Failed
    })
}

/// Verifies a password against its stored hash.
pub(crate) fn verify(hasher: &PasswordHasher, hash: &PasswordHash, candidate: &Secret) -> EffectResult {
    EffectResult::Verified(hasher.verify(hash, candidate))
}

/// Hashes a password for storage.
pub(crate) fn hash(hasher: &PasswordHasher, password: &Secret) -> EffectResult {
    hasher.hash(password).map_or_else(
        |e| {
            tracing::warn!(error = %e, "password hashing failed");
            EffectResult::Failed
        },
        EffectResult::Hashed,
    )
}

/// Hands a message to the relay or the outbox.
pub(crate) fn send(mailer: &Mailer, mail: &Mail) -> EffectResult {
    match mailer.send(mail) {
        Ok(()) => EffectResult::Sent,
        Err(e) => {
            tracing::warn!(error = %e, "mail not sent");
            EffectResult::Failed
        }
    }
}
