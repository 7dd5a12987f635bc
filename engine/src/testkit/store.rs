//! An in-memory model of the store: the same records and the same rules for
//! batches as the SQLite store (an expectation that fails applies nothing),
//! plus a switch that makes it fail like a store that is down.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, DefaultHasher};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::counters::{Counter, CounterKey};
use crate::effect::EffectResult;
use crate::hex;
use crate::passcode::{PasscodeKey, PasscodeRecord};
use crate::password::PasswordHash;
use crate::renewal::REUSE_HISTORY;
use crate::secret::Secret;
use crate::store::{
    CredsBatch, CredsExpectation, CredsOp, Lookup, PasscodesBatch, PasscodesOp, RotationRecord, SessionRecord,
    Snapshot, UserRecord, WriteBatch,
};
use crate::token::{MasterToken, TokenTag};

/// The harness's stand-in for argon2id: `$test$<sha256 hex>`. Fast, so
/// tests and benchmarks measure the engine, not the hasher.
pub fn test_hash(password: &str) -> PasswordHash {
    let mut phc = String::from("$test$");
    hex::push(&mut phc, &Sha256::digest(password.as_bytes()));
    PasswordHash::Phc(phc)
}

/// Verifies against [`test_hash`] output or a legacy plaintext; any other
/// hash (such as the dummy argon2id one) never matches.
pub fn test_verify(hash: &PasswordHash, candidate: &Secret) -> bool {
    match hash {
        PasswordHash::Phc(phc) if phc.starts_with("$test$") => {
            let PasswordHash::Phc(want) = test_hash(candidate.expose()) else { return false };
            want.as_bytes().ct_eq(phc.as_bytes()).into()
        }
        PasswordHash::Phc(_) => false,
        PasswordHash::Plain(plain) => plain == candidate,
    }
}

/// What an op of a passcodes batch replaced (`None`: nothing was there),
/// to put back if a later op of the batch does not fit.
enum Undo {
    Passcode(PasscodeKey, Option<PasscodeRecord>),
    Counter(CounterKey, Option<Counter>),
}

/// The records, in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    /// Accounts by email.
    pub users: BTreeMap<String, UserRecord>,
    /// Passcodes by key.
    pub passcodes: BTreeMap<PasscodeKey, PasscodeRecord>,
    /// Sessions by master token.
    pub sessions: HashMap<MasterToken, SessionRecord, BuildHasherDefault<DefaultHasher>>,
    /// Rotated-away tokens by tag.
    pub rotations: BTreeMap<TokenTag, RotationRecord>,
    /// Counters by key.
    pub counters: BTreeMap<CounterKey, Counter>,
    /// While set, every read and write fails.
    pub down: bool,
    /// Batches committed so far.
    pub commits: u64,
}

impl MemoryStore {
    /// Adds (or replaces) an account with a [`test_hash`]ed password.
    pub fn add_user(&mut self, email: &str, phone: &str, password: &str) {
        self.put_user(UserRecord { email: email.into(), phone: phone.into(), password: test_hash(password) });
    }

    /// Adds (or replaces) an account as given.
    pub fn put_user(&mut self, user: UserRecord) {
        self.users.insert(user.email.clone(), user);
    }

    /// Answers a lookup.
    pub fn read(&self, lookup: &Lookup) -> EffectResult {
        if self.down {
            return EffectResult::Failed;
        }
        let counters = lookup.counters.iter().filter_map(|k| self.counters.get(k).map(|c| (k.clone(), *c))).collect();
        EffectResult::Read(Box::new(Snapshot {
            user: lookup.user.as_ref().and_then(|e| self.users.get(e).cloned()),
            passcode: lookup.passcode.as_ref().and_then(|k| self.passcodes.get(k).cloned()),
            session: lookup.session.as_ref().and_then(|m| self.sessions.get(m).cloned()),
            rotation: lookup.rotation.as_ref().and_then(|t| self.rotations.get(t).cloned()),
            counters,
        }))
    }

    /// Commits a batch: all of it if its expectation holds, none otherwise.
    pub fn write(&mut self, batch: &WriteBatch) -> EffectResult {
        if self.down {
            return EffectResult::Failed;
        }
        let applied = match batch {
            WriteBatch::Passcodes(b) => self.write_passcodes(b),
            WriteBatch::Creds(b) => self.write_creds(b),
        };
        if applied {
            self.commits += 1;
            EffectResult::Committed
        } else {
            EffectResult::Conflict
        }
    }

    fn write_passcodes(&mut self, batch: &PasscodesBatch) -> bool {
        if let Some(e) = &batch.expect {
            let holds = self
                .passcodes
                .get(&e.key)
                .is_some_and(|r| r.code == e.code && e.attempts_below.is_none_or(|below| r.attempts < below));
            if !holds {
                return false;
            }
        }
        // The ops apply in order, each on what the ones before it left (a
        // reset or a refund before a reservation of the same counter frees
        // its place; two reservations of one counter must both fit), as
        // the SQLite store applies them. A reservation that does not fit
        // makes the batch a conflict: what the batch did so far is undone.
        let mut undo = Vec::new();
        for op in &batch.ops {
            if !self.apply(op, &mut undo) {
                self.undo(undo);
                return false;
            }
        }
        true
    }

    /// Applies one op, noting in `undo` what it replaced; `false` if it is
    /// a reservation that does not fit (and then it changed nothing).
    fn apply(&mut self, op: &PasscodesOp, undo: &mut Vec<Undo>) -> bool {
        let (passcodes, counters) = (&mut self.passcodes, &mut self.counters);
        match op {
            PasscodesOp::Put(record) => {
                let old = passcodes.insert(record.key.clone(), record.clone());
                undo.push(Undo::Passcode(record.key.clone(), old));
            }
            PasscodesOp::Delete(key) => {
                if let Some(old) = passcodes.remove(key) {
                    undo.push(Undo::Passcode(key.clone(), Some(old)));
                }
            }
            PasscodesOp::CountGuess(key) => {
                if let Some(r) = passcodes.get_mut(key) {
                    undo.push(Undo::Passcode(key.clone(), Some(r.clone())));
                    r.attempts = r.attempts.saturating_add(1);
                }
            }
            PasscodesOp::Reserve(reservation) => {
                let Some(next) = reservation.apply(counters.get(&reservation.key).copied()) else { return false };
                let old = counters.insert(reservation.key.clone(), next);
                undo.push(Undo::Counter(reservation.key.clone(), old));
            }
            PasscodesOp::Refund(refund) => {
                if let Some(next) = refund.apply(counters.get(&refund.key).copied()) {
                    let old = counters.insert(refund.key.clone(), next);
                    undo.push(Undo::Counter(refund.key.clone(), old));
                }
            }
            PasscodesOp::Reset(key) => {
                if let Some(old) = counters.remove(key) {
                    undo.push(Undo::Counter(key.clone(), Some(old)));
                }
            }
        }
        true
    }

    /// Puts back what a batch replaced, newest first.
    fn undo(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Passcode(key, Some(old)) => {
                    self.passcodes.insert(key, old);
                }
                Undo::Passcode(key, None) => {
                    self.passcodes.remove(&key);
                }
                Undo::Counter(key, Some(old)) => {
                    self.counters.insert(key, old);
                }
                Undo::Counter(key, None) => {
                    self.counters.remove(&key);
                }
            }
        }
    }

    fn write_creds(&mut self, batch: &CredsBatch) -> bool {
        let holds = match &batch.expect {
            None => true,
            Some(CredsExpectation::Session { master, expires_at }) => {
                self.sessions.get(master).is_some_and(|s| s.expires_at == *expires_at)
            }
            Some(CredsExpectation::Password { email, password }) => {
                self.users.get(email).is_some_and(|u| u.password == *password)
            }
        };
        if !holds {
            return false;
        }
        for op in &batch.ops {
            match op {
                CredsOp::PutSession(session) => {
                    self.sessions.insert(session.master, session.clone());
                }
                CredsOp::DeleteSession(master) => {
                    self.sessions.remove(master);
                }
                CredsOp::PutRotation(rotation) => {
                    self.rotations.insert(rotation.tag, rotation.clone());
                    self.keep_history(rotation);
                }
                CredsOp::RevokeSession { email, mac, started_at } => {
                    let of_it = |e: &String, m, s| e == email && m == *mac && s == *started_at;
                    self.sessions.retain(|_, s| !of_it(&s.email, s.mac, s.started_at));
                    self.rotations.retain(|_, r| !of_it(&r.email, r.mac, r.started_at));
                }
                CredsOp::SetPassword { email, password } => {
                    if let Some(u) = self.users.get_mut(email) {
                        u.password = password.clone();
                    }
                }
            }
        }
        true
    }
}

impl MemoryStore {
    /// Drops the rotation records of `rotation`'s session but `rotation`
    /// itself and the newest [`REUSE_HISTORY`] − 1 others, by rotation
    /// time, then tag.
    fn keep_history(&mut self, rotation: &RotationRecord) {
        let mut others: Vec<(chrono::DateTime<chrono::Utc>, TokenTag)> = self
            .rotations
            .values()
            .filter(|r| r.email == rotation.email && r.mac == rotation.mac && r.started_at == rotation.started_at)
            .filter(|r| r.tag != rotation.tag)
            .map(|r| (r.rotated_at, r.tag))
            .collect();
        others.sort_unstable_by(|a, b| b.cmp(a));
        for (_, tag) in others.iter().skip(REUSE_HISTORY - 1) {
            self.rotations.remove(tag);
        }
    }
}
