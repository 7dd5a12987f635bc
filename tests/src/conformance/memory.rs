//! The engine test kit's in-memory store under the conformance suite. Its
//! handles share one model behind a lock, as a server's workers share one
//! file.

use std::sync::{Arc, Mutex, MutexGuard};

use tokenizer_auth_engine::testkit::MemoryStore;
use tokenizer_auth_engine::{EffectResult, Lookup, Mac, PasswordHash, Snapshot, UserRecord, WriteBatch};

use super::{Outcome, StoreUnderTest};

/// A handle on a [`MemoryStore`].
#[derive(Clone, Default)]
pub struct MemoryUnderTest(Arc<Mutex<MemoryStore>>);

impl MemoryUnderTest {
    fn store(&self) -> MutexGuard<'_, MemoryStore> {
        self.0.lock().expect("no check panics while holding the model")
    }
}

impl StoreUnderTest for MemoryUnderTest {
    fn create() -> Self {
        MemoryUnderTest::default()
    }

    fn connect(&self) -> Self {
        self.clone()
    }

    fn peers(&self) -> Vec<(&'static str, Self)> {
        vec![("another handle on the model", self.clone())]
    }

    fn add_user(&mut self, user: &UserRecord) {
        self.store().put_user(user.clone());
    }

    fn read_many(&self, lookups: &[Lookup]) -> Vec<Snapshot> {
        let store = self.store();
        lookups
            .iter()
            .map(|lookup| match store.read(lookup) {
                EffectResult::Read(snapshot) => *snapshot,
                other => panic!("the model failed a read: {other:?}"),
            })
            .collect()
    }

    fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Outcome> {
        let mut store = self.store();
        batches
            .iter()
            .map(|batch| match store.write(batch) {
                EffectResult::Committed => Outcome::Committed,
                EffectResult::Conflict => Outcome::Conflict,
                other => panic!("the model failed a write: {other:?}"),
            })
            .collect()
    }

    // The model has no admin commands: these do to it what the commands do
    // to the files (`effects/src/store/admin.rs`).
    fn revoke(&mut self, email: &str, mac: Option<Mac>) -> usize {
        let mut store = self.store();
        let before = store.sessions.len();
        store.sessions.retain(|_, s| s.email != email || mac.is_some_and(|m| m != s.mac));
        store.rotations.retain(|_, r| r.email != email || mac.is_some_and(|m| m != r.mac));
        before - store.sessions.len()
    }

    fn set_password(&mut self, email: &str, password: &PasswordHash) -> bool {
        let mut store = self.store();
        let Some(user) = store.users.get_mut(email) else { return false };
        user.password = password.clone();
        store.sessions.retain(|_, s| s.email != email);
        store.rotations.retain(|_, r| r.email != email);
        true
    }
}
