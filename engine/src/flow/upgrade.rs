//! Replacing a plaintext password from the old server by an argon2id hash,
//! once it has verified. Nobody waits for it; if the password changed
//! meanwhile the write's expectation fails and nothing happens.

use crate::codec::reply::Reply;
use crate::flow::{HashOutcome, HashWait, Step, WriteOutcome, WriteWait};
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::store::{CredsBatch, CredsExpectation, CredsOp, UserRecord, WriteBatch};

/// Waiting for the new hash of the password stored for `email`, `old`
/// (then for it to be stored: [`stored`]).
pub(crate) struct Rehash {
    email: String,
    old: PasswordHash,
}

pub(crate) fn start(user: &UserRecord, password: &Secret) -> Step {
    let rehash = Rehash { email: user.email.clone(), old: user.password.clone() };
    Step::Hash(HashWait::Upgrade(rehash), password.clone())
}

impl Rehash {
    pub(crate) fn hashed(self, outcome: HashOutcome) -> Step {
        let Rehash { email, old } = self;
        match outcome {
            Ok(new) => {
                let batch = CredsBatch {
                    expect: Some(CredsExpectation::Password { email: email.clone(), password: old }),
                    ops: vec![CredsOp::SetPassword { email, password: new }],
                };
                Step::Write(WriteWait::Upgrade, WriteBatch::Creds(batch))
            }
            // The plaintext stays until the next successful check.
            Err(_) => done(),
        }
    }
}

/// The new hash is stored, or the password changed meanwhile, or the store
/// is down: the plaintext stays until the next successful check.
pub(crate) fn stored(outcome: WriteOutcome) -> Step {
    match outcome {
        WriteOutcome::Committed | WriteOutcome::Conflict | WriteOutcome::Unavailable => done(),
    }
}

/// Nobody is waiting: the reply goes nowhere.
fn done() -> Step {
    Step::Done(Reply::False)
}
