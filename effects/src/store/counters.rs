//! The brute-force counters as the `limits` command sees them: read and
//! cleared on the real file, while a server runs. A server reads the
//! counters from the file for every request (they are never cached), so a
//! reset takes effect on the very next one.

use rusqlite::TransactionBehavior;
use tokenizer_auth_engine::{Counter, CounterKey};

use super::columns::counter_key;
use super::{SqliteStore, StoreError, counter};

impl SqliteStore {
    /// The stored counters among `keys`, in their order.
    pub fn counters(&self, keys: &[CounterKey]) -> Result<Vec<(CounterKey, Counter)>, StoreError> {
        let mut found = Vec::new();
        for key in keys {
            if let Some(c) = counter(&self.passcodes, key)? {
                found.push((key.clone(), c));
            }
        }
        Ok(found)
    }

    /// Removes the counters among `keys`, in one transaction. Returns how
    /// many existed.
    pub fn reset_counters(&mut self, keys: &[CounterKey]) -> Result<usize, StoreError> {
        let tx = self.passcodes.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = 0;
        for key in keys {
            removed += tx.execute("DELETE FROM counters WHERE key = ?1", [counter_key(key)])?;
        }
        tx.commit()?;
        Ok(removed)
    }
}
