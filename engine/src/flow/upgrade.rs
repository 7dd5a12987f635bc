//! Replacing a plaintext password from the old server by an argon2id hash,
//! once it has verified. Nobody waits for it; if the password changed
//! meanwhile the write's expectation fails and nothing happens.

use crate::codec::reply::Reply;
use crate::effect::{Effect, EffectResult};
use crate::flow::{Flow, Step};
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::store::{CredsBatch, CredsExpectation, CredsOp, UserRecord, WriteBatch};

pub(crate) enum PasswordUpgrade {
    /// Waiting for the new hash.
    Hashing { email: String, old: PasswordHash },
    /// Waiting for it to be stored.
    Storing,
}

pub(crate) fn start(user: &UserRecord, password: &Secret) -> (Flow, Effect) {
    let state = PasswordUpgrade::Hashing { email: user.email.clone(), old: user.password.clone() };
    (Flow::Upgrade(state), Effect::HashPassword { password: password.clone() })
}

impl PasswordUpgrade {
    pub(crate) fn resume(self, result: EffectResult) -> Step {
        match (self, result) {
            (PasswordUpgrade::Hashing { email, old }, EffectResult::Hashed(new)) => {
                let batch = CredsBatch {
                    expect: Some(CredsExpectation::Password { email: email.clone(), password: old }),
                    ops: vec![CredsOp::SetPassword { email, password: new }],
                };
                Step::Await(Flow::Upgrade(PasswordUpgrade::Storing), Effect::Write(WriteBatch::Creds(batch)))
            }
            // Nobody is waiting: the reply goes nowhere.
            _ => Step::Done(Reply::False),
        }
    }
}
