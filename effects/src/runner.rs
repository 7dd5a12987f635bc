//! Carries out the engine's effects: reads and writes on the store,
//! password checks on the hasher, mail on the mailer.

use tokenizer_auth_engine::{Effect, EffectResult, WriteBatch};

use crate::mail::Mailer;
use crate::password::PasswordHasher;
use crate::store::{Commit, SqliteStore, StoreError};

/// Runs every kind of effect, blocking, on one thread (tests, tools and
/// the crash-safety child use it; servers spread the kinds over
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
    run_store_group(store, &[effect]).pop().unwrap_or(EffectResult::Failed)
}

/// Store effects taken together: each run of consecutive reads is answered
/// from one read transaction, each run of consecutive writes is committed
/// as one group. Runs keep their order, so a read after a write sees it.
pub(crate) fn run_store_group(store: &mut SqliteStore, effects: &[&Effect]) -> Vec<EffectResult> {
    let mut results = Vec::with_capacity(effects.len());
    let mut rest = effects;
    while let Some(first) = rest.first() {
        let kind = std::mem::discriminant(*first);
        let (now, later) = rest.split_at(rest.iter().take_while(|e| std::mem::discriminant(**e) == kind).count());
        rest = later;
        match first {
            Effect::Read(_) => {
                let lookups = now.iter().filter_map(|e| if let Effect::Read(l) = e { Some(l) } else { None });
                let snapshots = store.read_many(lookups);
                results.extend(snapshots.into_iter().map(|r| settle(r.map(|s| EffectResult::Read(Box::new(s))))));
            }
            Effect::Write(_) => {
                let batches: Vec<&WriteBatch> =
                    now.iter().filter_map(|e| if let Effect::Write(b) = e { Some(b) } else { None }).collect();
                results.extend(store.write_group(&batches).into_iter().map(|r| {
                    settle(r.map(|commit| match commit {
                        Commit::Applied => EffectResult::Committed,
                        Commit::Conflict => EffectResult::Conflict,
                    }))
                }));
            }
            // Not a store effect: it has no business here.
            _ => results.extend(std::iter::repeat_n(EffectResult::Failed, now.len())),
        }
    }
    results
}

fn settle(outcome: Result<EffectResult, StoreError>) -> EffectResult {
    outcome.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "store effect failed");
        EffectResult::Failed
    })
}

/// A password effect.
pub(crate) fn run_hash(hasher: &PasswordHasher, effect: &Effect) -> EffectResult {
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
