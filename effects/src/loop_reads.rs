//! Token checks answered on the event loop's own thread.
//!
//! Most token checks read one session, which the session cache holds.
//! Handing such a read to a store reader and its answer back costs a queue,
//! a wake-up, a thread switch and copies: more than the lookup itself. So
//! an event loop keeps the reads the cache may answer while it handles a
//! turn's input ([`LoopReads::keep`]), and at the end of the turn answers
//! them together ([`LoopReads::answer`]): the cache's validity is checked
//! once for all of them, hits become results on the spot, and misses go to
//! the readers as before.
//!
//! Checking validity is what the readers check, and it never waits: on the
//! files, the counter of `op_creds.db` is read in a transaction whose
//! statements fail at once rather than wait for a lock (then every kept
//! read goes to a reader); on PostgreSQL, the listener's last beat (see
//! `store::notified`), with no connection. It is checked after the turn's
//! last read from a socket, so a check that arrived after another program
//! committed a change (`session revoke`) is answered as of after that
//! change, as a reader would answer it.

use tokenizer_auth_engine::{Effect, EffectId, EffectResult, Lookup, MasterToken, Snapshot};

use crate::store::Store;

/// The reads an event loop keeps to answer from the session cache.
pub struct LoopReads {
    /// A handle on the store that never waits (see
    /// [`Store::for_event_loop`]).
    store: Store,
    /// Reads kept this turn, with the session each asks for.
    kept: Vec<(EffectId, Lookup, MasterToken)>,
    /// The masters of `kept`, in order (reused between turns).
    masters: Vec<MasterToken>,
}

impl LoopReads {
    /// Reads answered through `store`'s session cache.
    pub(crate) fn new(store: Store) -> LoopReads {
        LoopReads { store, kept: Vec::new(), masters: Vec::new() }
    }

    /// Keeps `effect` for [`LoopReads::answer`] if it is a read the session
    /// cache may answer (a session alone); gives any other back.
    pub fn keep(&mut self, id: EffectId, effect: Effect) -> Option<Effect> {
        match effect {
            Effect::Read(lookup) => match lookup.session_alone().copied() {
                Some(master) => {
                    self.kept.push((id, lookup, master));
                    None
                }
                None => Some(Effect::Read(lookup)),
            },
            other => Some(other),
        }
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Answers every kept read: the cache's hits into `answered`, in the
    /// order they were kept; the rest go to `to_readers` (the pool's
    /// `submit`, under the loop's own effect ids).
    pub fn answer(
        &mut self,
        mut to_readers: impl FnMut(EffectId, Effect),
        answered: &mut Vec<(EffectId, EffectResult)>,
    ) {
        if self.kept.is_empty() {
            return;
        }
        self.masters.clear();
        self.masters.extend(self.kept.iter().map(|(_, _, master)| *master));
        let hits = self.store.cached_sessions(&self.masters);
        for ((id, lookup, _), hit) in self.kept.drain(..).zip(hits) {
            match hit {
                Some(session) => {
                    let snapshot = Snapshot { session: Some(session), ..Snapshot::default() };
                    answered.push((id, EffectResult::Read(Box::new(snapshot))));
                }
                None => to_readers(id, Effect::Read(lookup)),
            }
        }
    }
}
