//! The sessions a session cache holds, packed.
//!
//! A cache of a million sessions is most of a server's memory. Kept as a
//! `HashMap<MasterToken, SessionRecord>`, a session cost about 290 bytes:
//! the key twice (in the map and in the record), an email `String` of its
//! own (24 bytes, and a heap block), times of 12 bytes each, and a hash
//! table bucket of 136 bytes at half load. Here a session is one 64-byte
//! [`Entry`] in a dense vector, found through a table of 4-byte positions;
//! its email is an index into [`Emails`], where each address is kept once
//! however many devices share it; its times are milliseconds, as the
//! stores keep them (`columns`). A record is rebuilt, its email copied
//! out, when it is read.

use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use tokenizer_auth_engine::{Mac, MasterToken, SessionRecord};

use super::columns::{from_millis, millis};

/// Cached sessions by master token.
#[derive(Default)]
pub(super) struct Sessions {
    /// The sessions, in no order.
    entries: Vec<Entry>,
    /// Each entry's position in `entries`, by its master token.
    positions: HashTable<u32>,
    emails: Emails,
}

/// One cached session: 64 bytes.
struct Entry {
    master: MasterToken,
    /// Its email's number in [`Emails`].
    email: u32,
    mac: Mac,
    started_at: i64,
    expires_at: i64,
}

/// Master tokens are SHA-256 outputs of server-chosen secrets, and only
/// existing sessions are cached, so their first eight bytes are already a
/// uniform hash.
fn hash(master: &MasterToken) -> u64 {
    let bytes = master.as_bytes();
    u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

impl Sessions {
    /// How many sessions are held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets every session.
    pub(super) fn clear(&mut self) {
        *self = Sessions::default();
    }

    /// Where `master`'s entry is.
    fn position(&self, master: &MasterToken) -> Option<usize> {
        let entries = &self.entries;
        self.positions.find(hash(master), |&i| entries[i as usize].master == *master).map(|&i| i as usize)
    }

    /// The session of `master`, if held.
    #[cfg(test)]
    fn get(&self, master: &MasterToken) -> Option<SessionRecord> {
        self.position(master).map(|i| self.record(i))
    }

    /// The sessions of `masters`, in order: found all first, then copied,
    /// so that the probes' cache misses overlap instead of queueing behind
    /// each copy's allocation.
    pub(super) fn get_many<'a>(
        &self,
        masters: impl Iterator<Item = Option<&'a MasterToken>>,
    ) -> Vec<Option<SessionRecord>> {
        let found: Vec<Option<usize>> = masters.map(|m| m.and_then(|m| self.position(m))).collect();
        found.into_iter().map(|i| i.map(|i| self.record(i))).collect()
    }

    fn record(&self, i: usize) -> SessionRecord {
        let e = &self.entries[i];
        SessionRecord {
            master: e.master,
            email: self.emails.get(e.email).to_owned(),
            mac: e.mac,
            started_at: from_millis(e.started_at),
            expires_at: from_millis(e.expires_at),
        }
    }

    /// Replaces `session`, or adds it while fewer than `capacity` are held
    /// (a full cache just misses: the session is read from the store).
    /// Times are kept to the millisecond, as the stores keep them.
    pub(super) fn put(&mut self, session: &SessionRecord, capacity: usize) {
        let (started_at, expires_at) = (millis(session.started_at), millis(session.expires_at));
        if let Some(i) = self.position(&session.master) {
            let old = self.entries[i].email;
            if self.emails.get(old) != session.email {
                let email = self.emails.add(&session.email);
                self.emails.release(old);
                self.entries[i].email = email;
            }
            let e = &mut self.entries[i];
            (e.mac, e.started_at, e.expires_at) = (session.mac, started_at, expires_at);
        } else if self.entries.len() < capacity.min(u32::MAX as usize) {
            let email = self.emails.add(&session.email);
            let position = self.entries.len() as u32;
            self.entries.push(Entry { master: session.master, email, mac: session.mac, started_at, expires_at });
            let entries = &self.entries;
            self.positions.insert_unique(hash(&session.master), position, |&i| hash(&entries[i as usize].master));
        }
    }

    /// Forgets the session of `master`, if held.
    pub(super) fn remove(&mut self, master: &MasterToken) {
        let entries = &self.entries;
        let Ok(slot) = self.positions.find_entry(hash(master), |&i| entries[i as usize].master == *master) else {
            return;
        };
        let (i, _) = slot.remove();
        let i = i as usize;
        let gone = self.entries.swap_remove(i);
        self.emails.release(gone.email);
        // The last entry moved into the hole: point its position there.
        if let Some(moved) = self.entries.get(i) {
            let from = self.entries.len() as u32;
            if let Some(p) = self.positions.find_mut(hash(&moved.master), |&p| p == from) {
                *p = i as u32;
            }
        }
    }

    /// The master tokens of the sessions of one login: its email, device
    /// and start (compared to the millisecond, as the stores keep it). A
    /// scan: it is rare (a reuse caught).
    pub(super) fn of_login(&self, email: &str, mac: Mac, started_at: DateTime<Utc>) -> Vec<MasterToken> {
        let Some(email) = self.emails.find(email) else { return Vec::new() };
        let started_at = millis(started_at);
        self.entries
            .iter()
            .filter(|e| e.email == email && e.mac == mac && e.started_at == started_at)
            .map(|e| e.master)
            .collect()
    }
}

/// Email addresses, each kept once with the number of sessions that use
/// it; a number freed when its last session goes is used again.
#[derive(Default)]
struct Emails {
    slots: Vec<Slot>,
    /// Each used slot's number, by its address.
    numbers: HashTable<u32>,
    /// Numbers of slots no session uses.
    free: Vec<u32>,
    hasher: std::hash::RandomState,
}

#[derive(Default)]
struct Slot {
    text: Box<str>,
    sessions: u32,
}

impl Emails {
    fn get(&self, number: u32) -> &str {
        &self.slots[number as usize].text
    }

    fn find(&self, email: &str) -> Option<u32> {
        let slots = &self.slots;
        self.numbers.find(self.hasher.hash_one(email), |&n| &*slots[n as usize].text == email).copied()
    }

    /// `email`'s number, for one more session.
    fn add(&mut self, email: &str) -> u32 {
        if let Some(n) = self.find(email) {
            self.slots[n as usize].sessions += 1;
            return n;
        }
        let slot = Slot { text: email.into(), sessions: 1 };
        let n = match self.free.pop() {
            Some(n) => {
                self.slots[n as usize] = slot;
                n
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.numbers.insert_unique(hasher.hash_one(email), n, |&m| hasher.hash_one(&*slots[m as usize].text));
        n
    }

    /// One session fewer uses `number`; the last frees it.
    fn release(&mut self, number: u32) {
        let slot = &mut self.slots[number as usize];
        slot.sessions -= 1;
        if slot.sessions > 0 {
            return;
        }
        let text = std::mem::take(&mut slot.text);
        if let Ok(entry) = self.numbers.find_entry(self.hasher.hash_one(&*text), |&n| n == number) {
            entry.remove();
        }
        self.free.push(number);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeDelta;
    use proptest::prelude::*;

    use super::*;

    fn session(master: u8, email: u8, expires: i64) -> SessionRecord {
        let at = from_millis(1_800_000_000_000);
        SessionRecord {
            master: MasterToken::from_bytes([master; 32]),
            email: format!("user{email}@example.com"),
            mac: Mac::parse("aa:bb:cc:dd:ee:ff").unwrap(),
            started_at: at,
            expires_at: at + TimeDelta::milliseconds(expires),
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u8, i64),
        Remove(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..24u8, 0..6u8, 0..1000i64).prop_map(|(m, e, x)| Op::Put(m, e, x)),
            3 => (0..24u8).prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Whatever the order of puts, removes and clears, the packed
        /// sessions answer as a plain map of records would, within the
        /// bound, and keep no email no session uses.
        #[test]
        fn packed_sessions_answer_as_a_map_would(ops in proptest::collection::vec(op(), 0..200), capacity in 1..30usize) {
            let mut packed = Sessions::default();
            let mut plain: HashMap<MasterToken, SessionRecord> = HashMap::new();
            for op in ops {
                match op {
                    Op::Put(m, e, x) => {
                        let s = session(m, e, x);
                        packed.put(&s, capacity);
                        if plain.contains_key(&s.master) || plain.len() < capacity {
                            plain.insert(s.master, s);
                        }
                    }
                    Op::Remove(m) => {
                        let master = MasterToken::from_bytes([m; 32]);
                        packed.remove(&master);
                        plain.remove(&master);
                    }
                    Op::Clear => {
                        packed.clear();
                        plain.clear();
                    }
                }
                prop_assert_eq!(packed.len(), plain.len());
            }
            for m in 0..24u8 {
                let master = MasterToken::from_bytes([m; 32]);
                prop_assert_eq!(packed.get(&master), plain.get(&master).cloned());
            }
            let used: std::collections::HashSet<&str> = plain.values().map(|s| s.email.as_str()).collect();
            prop_assert_eq!(packed.emails.numbers.len(), used.len());
            let mac = Mac::parse("aa:bb:cc:dd:ee:ff").unwrap();
            let mut of_login = packed.of_login("user1@example.com", mac, from_millis(1_800_000_000_000));
            let mut want: Vec<MasterToken> =
                plain.values().filter(|s| s.email == "user1@example.com").map(|s| s.master).collect();
            of_login.sort_unstable_by_key(|m| *m.as_bytes());
            want.sort_unstable_by_key(|m| *m.as_bytes());
            prop_assert_eq!(of_login, want);
        }
    }

    #[test]
    fn an_entry_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }
}
