//! The sessions of `op_creds.db`, kept in memory for the token checks.
//!
//! A token check is one lookup of a session by its master token; answering
//! it from memory instead of a B-tree search takes SQLite off the hot path.
//! The file stays the truth, and other processes write it (the admin
//! command, a second server), so the cache is only trusted while the file
//! provably holds what it holds:
//!
//! - Every change to `sessions` bumps a counter in the same file, by
//!   triggers that live in the file (the migration to version 2), so no
//!   writer can change a session without changing the counter — whatever
//!   program it is.
//! - The cache records the counter's value it is valid for (its *epoch*).
//!   A reader reads the counter inside the read transaction of its batch;
//!   it uses the cache only if the counter equals the epoch, and fills it
//!   with what it read from the file only if the epoch is still that value.
//! - This process's writer holds the file's write lock from before it reads
//!   the counter until its commit, so nothing else commits in between: it
//!   applies its own changes to the cache and moves the epoch to the new
//!   counter. If the epoch was not where its transaction began, something
//!   else wrote in between, and it empties the cache instead.
//! - A reader that finds the counter ahead of the epoch while no commit of
//!   this process is under way has seen another process's write: it empties
//!   the cache and moves the epoch there. Committed counters only grow, so
//!   the epoch never goes back.
//!
//! Only sessions that exist are cached (unknown tokens, which anyone can
//! send, take no memory), up to a bound; past it, further sessions are read
//! from the file. A server fills the cache from the file when it starts
//! ([`super::SqliteStore::warm_cache`]), in the background.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokenizer_auth_engine::{CredsOp, MasterToken, SessionRecord};

use super::sessions::Sessions;

/// Sessions by master token, valid while the file's counter equals `epoch`.
pub struct SessionCache {
    state: Mutex<State>,
    capacity: usize,
    lookups: Lookups,
}

/// Session lookups answered from memory, and read from the store, for the
/// metrics (one add per batch of reads).
#[derive(Default)]
pub(super) struct Lookups {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Lookups {
    /// Counts a batch's session lookups: `hits` answered from memory, the
    /// rest of `asked` read from the store.
    pub(super) fn add(&self, asked: usize, hits: usize) {
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses.fetch_add(asked.saturating_sub(hits) as u64, Ordering::Relaxed);
    }

    /// (hits, misses) so far.
    pub(super) fn get(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

struct State {
    /// The counter value the cache is valid for; `None`: not known yet.
    epoch: Option<i64>,
    /// A commit of this process is between its last statement and the
    /// moment its changes are applied here.
    committing: bool,
    sessions: Sessions,
}

/// How a reader may use the cache in a batch read at counter `epoch`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum View {
    /// The cache holds the file as this batch sees it.
    Valid(i64),
    /// Read everything from the file and fill nothing.
    Bypass,
}

impl SessionCache {
    /// An empty cache of at most `capacity` sessions.
    pub fn new(capacity: usize) -> SessionCache {
        let state = State { epoch: None, committing: false, sessions: Sessions::default() };
        SessionCache { state: Mutex::new(state), capacity, lookups: Lookups::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is at worst
        // incomplete; emptying it makes it right again.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.sessions.clear();
            state.epoch = None;
            state
        })
    }

    /// Called by a reader with the counter its read transaction sees: how
    /// it may use the cache, and the sessions of `masters` the cache holds
    /// if it may (else none), under one lock.
    pub(crate) fn view<'a>(
        &self,
        counter: Option<i64>,
        masters: impl Iterator<Item = Option<&'a MasterToken>>,
    ) -> (View, Vec<Option<SessionRecord>>) {
        let Some(counter) = counter else { return (View::Bypass, Vec::new()) };
        let mut state = self.lock();
        let view = match state.epoch {
            Some(epoch) if epoch == counter => View::Valid(counter),
            // An older snapshot than the cache, or our own commit on its
            // way in: read the file this time.
            Some(epoch) if counter < epoch || state.committing => View::Bypass,
            None if state.committing => View::Bypass,
            // Another process wrote: start over at what the file holds now.
            _ => {
                state.sessions.clear();
                state.epoch = Some(counter);
                View::Valid(counter)
            }
        };
        let hits = match view {
            View::Valid(_) => state.sessions.get_many(masters),
            View::Bypass => Vec::new(),
        };
        (view, hits)
    }

    /// Keeps a session read from the file at counter `epoch`, if the cache
    /// is still valid for it.
    pub(crate) fn fill(&self, epoch: i64, session: &SessionRecord) {
        let mut state = self.lock();
        if state.epoch == Some(epoch) {
            state.sessions.put(session, self.capacity);
        }
    }

    /// Keeps sessions scanned from the file at counter `epoch`. `false`
    /// once the cache is full or no longer valid for `epoch`: the scan can
    /// stop.
    pub(crate) fn fill_many(&self, epoch: i64, sessions: &[SessionRecord]) -> bool {
        let mut state = self.lock();
        if state.epoch != Some(epoch) {
            return false;
        }
        for session in sessions {
            state.sessions.put(session, self.capacity);
        }
        state.sessions.len() < self.capacity
    }

    /// This process's writer is about to commit.
    pub(crate) fn committing(&self) {
        self.lock().committing = true;
    }

    /// The writer's commit is durable: the counter went from `before` (read
    /// under the write lock) to `after`, by the sessions `ops`.
    pub(crate) fn committed<'a>(&self, before: i64, after: i64, ops: impl IntoIterator<Item = &'a CredsOp>) {
        let mut state = self.lock();
        state.committing = false;
        if state.epoch != Some(before) {
            state.sessions.clear();
        } else {
            for op in ops {
                match op {
                    // Kept to the millisecond, as the file keeps them (see
                    // `sessions`): a handle answering from memory and one
                    // reading the file agree (a time kept finer would keep a
                    // token valid for up to a millisecond after the file,
                    // and every other server, has it expired).
                    CredsOp::PutSession(s) => state.sessions.put(s, self.capacity),
                    CredsOp::DeleteSession(master) => state.sessions.remove(master),
                    CredsOp::RevokeSession { email, mac, started_at } => {
                        for master in state.sessions.of_login(email, *mac, *started_at) {
                            state.sessions.remove(&master);
                        }
                    }
                    CredsOp::SetPassword { .. } | CredsOp::PutRotation(_) => {}
                }
            }
        }
        state.epoch = Some(after);
    }

    /// The writer's commit failed, or may or may not have happened: forget
    /// everything; the next reader starts over from the file.
    pub(crate) fn unsure(&self) {
        let mut state = self.lock();
        state.committing = false;
        state.sessions.clear();
        state.epoch = None;
    }

    /// How many sessions are cached.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a batch's session lookups: `hits` answered from memory, the
    /// rest of `asked` read from the file.
    pub(crate) fn looked_up(&self, asked: usize, hits: usize) {
        self.lookups.add(asked, hits);
    }

    /// (hits, misses) since the cache was made.
    pub fn lookups(&self) -> (u64, u64) {
        self.lookups.get()
    }
}

/// Master tokens are SHA-256 outputs of server-chosen secrets, and only
/// existing sessions are cached, so their first eight bytes are already a
/// uniform hash.
#[derive(Clone, Copy, Default)]
pub(super) struct MasterHash;

impl BuildHasher for MasterHash {
    type Hasher = MasterHasher;
    fn build_hasher(&self) -> MasterHasher {
        MasterHasher(0)
    }
}

pub(super) struct MasterHasher(u64);

impl Hasher for MasterHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `MasterToken` hashes its 32-byte array: a length, then the bytes.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}
