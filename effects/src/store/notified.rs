//! The sessions of a PostgreSQL database, kept in memory for one server's
//! token checks while other servers (and `session revoke`) change them.
//!
//! The database is the truth. The cache is kept true by what the database
//! tells, and trusted only while it provably has been told recently:
//!
//! - **Every change is told.** A trigger in the database (migration 3 in
//!   `postgres`) sends `NOTIFY tokenizer_auth_sessions` with the master
//!   token of every session row updated or deleted, whatever program does
//!   it, and `*` when the table is truncated. PostgreSQL sends
//!   notifications at commit and delivers them in commit order. Each
//!   server's listener (`listen`) forgets what it is told.
//! - **Staleness is bounded.** The listener also sends itself a *beat* on
//!   a channel of its own, four times per `revocation_delay`. When a beat
//!   comes back, every change committed before it was sent came before it
//!   (commit order) and has been forgotten: the cache is *fresh as of* the
//!   moment that beat was sent. A lookup uses the cache only if it is fresh
//!   as of at most `revocation_delay` ago; otherwise (the listener's
//!   connection lost, the database slow to deliver) every lookup reads the
//!   database. So no server answers from memory for a session revoked,
//!   rotated or changed more than `revocation_delay` ago.
//! - **Reads race with changes.** A session read from the database just
//!   before a change, and put in the cache just after the change was
//!   forgotten, would stay. So a read takes a [`Ticket`] (how many changes
//!   were forgotten) before it starts, and keeps what it read only if no
//!   change to that session, and no "forget everything", came after it.
//! - **Missed changes.** When the listener connects, or connects again, it
//!   may have missed changes: once its `LISTEN` holds, the cache forgets
//!   everything, and fills again from reads.
//! - Only sessions that exist are cached, so a new session (an insert) is
//!   in no cache yet, and inserts need not be told.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokenizer_auth_engine::{Mac, MasterToken, SessionRecord};

use super::cache::{Lookups, MasterHash};
use super::sessions::Sessions;

/// How many recent changes are remembered for the reads racing with them.
/// A read that started more changes ago than this keeps nothing it read
/// (it reads again next time).
const RECENT: usize = 1 << 16;

/// Sessions by master token, trusted while recently told of every change.
pub struct NotifiedCache {
    state: Mutex<State>,
    capacity: usize,
    delay: Duration,
    lookups: Lookups,
}

struct State {
    sessions: Sessions,
    /// How many changes have been forgotten (each session, and each
    /// "everything").
    forgotten: u64,
    /// The latest changes, oldest first: the count after each, and its
    /// session. At most [`RECENT`].
    recent: VecDeque<(u64, MasterToken)>,
    /// Reads whose ticket is below this keep nothing: everything was
    /// forgotten since, or the changes since are no longer all in `recent`.
    floor: u64,
    /// Every change committed before this instant has been forgotten (on
    /// the monotonic clock, and on the wall clock: see [`NotifiedCache::ticket`]).
    fresh_as_of: Option<(Instant, SystemTime)>,
}

/// Taken by a read before it starts; see the module's docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Ticket(u64);

impl NotifiedCache {
    /// An empty cache of at most `capacity` sessions, trusted while told of
    /// every change made more than `delay` ago. Not fresh until its
    /// listener hears its first beat.
    pub fn new(capacity: usize, delay: Duration) -> NotifiedCache {
        let state =
            State { sessions: Sessions::default(), forgotten: 0, recent: VecDeque::new(), floor: 0, fresh_as_of: None };
        NotifiedCache { state: Mutex::new(state), capacity, delay, lookups: Lookups::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that is at worst
        // incomplete; forgetting everything makes it right again.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            forget_all(&mut state);
            state
        })
    }

    /// `revocation_delay`.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The most sessions it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A ticket for a read starting at `now` (`wall` on the wall clock), if
    /// the cache may answer it. The delay must have passed on neither
    /// clock: the monotonic one does not count a suspended machine or a
    /// paused VM, whose sleep the database did not share, and the wall
    /// clock may be stepped; a step either way only makes the cache
    /// unused until the next beat.
    pub(crate) fn ticket(&self, now: Instant, wall: SystemTime) -> Option<Ticket> {
        let state = self.lock();
        let fresh = state.fresh_as_of.is_some_and(|(at, wall_at)| {
            now.saturating_duration_since(at) <= self.delay
                && wall.duration_since(wall_at).is_ok_and(|passed| passed <= self.delay)
        });
        fresh.then_some(Ticket(state.forgotten))
    }

    /// The cached sessions, under one lock.
    pub(crate) fn get_many<'a>(
        &self,
        masters: impl Iterator<Item = Option<&'a MasterToken>>,
    ) -> Vec<Option<SessionRecord>> {
        self.lock().sessions.get_many(masters)
    }

    /// Keeps sessions read from the database by a read that took `ticket`,
    /// but none changed since the ticket. `false` once nothing more can be
    /// kept (the cache is full, or the ticket too old).
    pub(crate) fn fill(&self, ticket: Ticket, sessions: &[SessionRecord]) -> bool {
        let mut state = self.lock();
        if ticket.0 < state.floor {
            return false;
        }
        let changed: HashSet<MasterToken, MasterHash> =
            state.recent.iter().rev().take_while(|(n, _)| *n > ticket.0).map(|(_, m)| *m).collect();
        for session in sessions.iter().filter(|s| !changed.contains(&s.master)) {
            state.sessions.put(session, self.capacity);
        }
        state.sessions.len() < self.capacity
    }

    /// A session changed (told by the database, or committed here).
    pub(crate) fn forget(&self, master: &MasterToken) {
        let mut state = self.lock();
        state.sessions.remove(master);
        state.forgotten += 1;
        let entry = (state.forgotten, *master);
        state.recent.push_back(entry);
        if state.recent.len() > RECENT
            && let Some((n, _)) = state.recent.pop_front()
        {
            state.floor = state.floor.max(n);
        }
    }

    /// The sessions of one login ended (a reuse caught here). The database
    /// tells each of them too; this only makes it sooner.
    pub(crate) fn forget_login(&self, email: &str, mac: Mac, started_at: DateTime<Utc>) {
        let ended = self.lock().sessions.of_login(email, mac, started_at);
        for master in &ended {
            self.forget(master);
        }
    }

    /// Anything may have changed.
    pub(crate) fn forget_everything(&self) {
        forget_all(&mut self.lock());
    }

    /// A beat sent at `sent` (`wall` on the wall clock) came back: every
    /// change committed before then has been forgotten. Beats come back in
    /// the order they were sent.
    pub(crate) fn fresh_as_of(&self, sent: Instant, wall: SystemTime) {
        self.lock().fresh_as_of = Some((sent, wall));
    }

    /// The listener lost its connection: trust nothing until it hears a
    /// beat again.
    pub(crate) fn deaf(&self) {
        self.lock().fresh_as_of = None;
    }

    /// How many sessions are cached.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a batch's session lookups: `hits` answered from memory.
    pub(crate) fn looked_up(&self, asked: usize, hits: usize) {
        self.lookups.add(asked, hits);
    }

    /// (hits, misses) since the cache was made.
    pub fn lookups(&self) -> (u64, u64) {
        self.lookups.get()
    }
}

fn forget_all(state: &mut State) {
    state.sessions.clear();
    state.recent.clear();
    state.forgotten += 1;
    state.floor = state.forgotten;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn session(n: u8) -> SessionRecord {
        SessionRecord {
            master: MasterToken::from_bytes([n; 32]),
            email: format!("u{n}@example.com"),
            mac: Mac::parse("00:11:22:33:44:55").unwrap(),
            started_at: Utc.timestamp_millis_opt(1_000).unwrap(),
            expires_at: Utc.timestamp_millis_opt(9_000).unwrap(),
        }
    }

    fn fresh(cache: &NotifiedCache) -> Ticket {
        let (now, wall) = (Instant::now(), SystemTime::now());
        cache.fresh_as_of(now, wall);
        cache.ticket(now, wall).expect("fresh")
    }

    #[test]
    fn nothing_is_answered_before_a_beat_or_after_the_delay() {
        let cache = NotifiedCache::new(10, Duration::from_millis(100));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let ms = Duration::from_millis;
        assert_eq!(cache.ticket(now, wall), None, "not fresh before the first beat");
        cache.fresh_as_of(now, wall);
        assert!(cache.ticket(now + ms(100), wall + ms(100)).is_some());
        assert_eq!(cache.ticket(now + ms(101), wall + ms(101)), None, "stale past the delay");
        // A machine asleep: the monotonic clock did not move, the wall did.
        assert_eq!(cache.ticket(now + ms(10), wall + ms(5_000)), None, "stale after a suspend");
        // A wall clock stepped back: untrusted until the next beat.
        assert_eq!(cache.ticket(now + ms(10), wall - ms(1)), None, "a step back trusts nothing");
        cache.fresh_as_of(now + ms(50), wall + ms(50));
        assert!(cache.ticket(now + ms(150), wall + ms(150)).is_some());
        cache.deaf();
        assert_eq!(cache.ticket(now + ms(150), wall + ms(150)), None, "a lost listener trusts nothing");
    }

    #[test]
    fn a_read_keeps_nothing_changed_after_its_ticket() {
        let cache = NotifiedCache::new(10, Duration::from_secs(1));
        let (a, b) = (session(1), session(2));
        let ticket = fresh(&cache);
        // Both read; `a` changes before the read is kept.
        cache.forget(&a.master);
        cache.fill(ticket, &[a.clone(), b.clone()]);
        let got = cache.get_many([Some(&a.master), Some(&b.master)].into_iter());
        assert_eq!(got, vec![None, Some(b.clone())]);
        // A later read of `a` is kept.
        cache.fill(fresh(&cache), std::slice::from_ref(&a));
        assert_eq!(cache.get_many([Some(&a.master)].into_iter()), vec![Some(a.clone())]);
        // Forgetting everything refuses every read begun before.
        let ticket = fresh(&cache);
        cache.forget_everything();
        assert!(cache.is_empty());
        assert!(!cache.fill(ticket, &[a, b]));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_read_older_than_the_remembered_changes_keeps_nothing() {
        let cache = NotifiedCache::new(10, Duration::from_secs(1));
        let ticket = fresh(&cache);
        for n in 0..=RECENT {
            cache.forget(&MasterToken::from_bytes((n as u64).to_le_bytes().repeat(4).try_into().unwrap()));
        }
        assert!(!cache.fill(ticket, &[session(9)]));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_login_ended_here_is_forgotten_at_once() {
        let cache = NotifiedCache::new(10, Duration::from_secs(1));
        let (a, b) = (session(1), SessionRecord { email: "other@example.com".into(), ..session(2) });
        cache.fill(fresh(&cache), &[a.clone(), b.clone()]);
        cache.forget_login(&a.email, a.mac, a.started_at);
        assert_eq!(cache.get_many([Some(&a.master), Some(&b.master)].into_iter()), vec![None, Some(b)]);
    }
}
