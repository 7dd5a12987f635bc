//! Which store a server or a command uses: the SQLite files of the data
//! folder (the default), or a PostgreSQL database (`store_url`), which any
//! number of servers share. Everything above this file sees one [`Store`];
//! the two agree on every rule by the conformance suite (docs/STORES.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokenizer_auth_engine::{
    Counter, CounterKey, CredsBatch, Lookup, Mac, MasterToken, PasscodesBatch, PasswordHash, ServerKey, SessionRecord,
    Snapshot, WriteBatch,
};

use super::admin::{AdminError, SessionSummary, UserSummary};
use super::{Commit, Listener, NotifiedCache, PgStore, SessionCache, SqliteStore, StoreError};
use crate::password::PasswordHasher;

/// Where the records are.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `op_creds.db` and `op_passcodes.db` in this folder.
    Files(PathBuf),
    /// A PostgreSQL database.
    Postgres {
        /// Its `postgres://` URL (`store_url`).
        url: String,
        /// A CA file its TLS certificate may also be checked against
        /// (`store_ca`).
        ca: Option<PathBuf>,
        /// The most connections to it at once (`store_connections`).
        connections: u32,
    },
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreLocation {
    /// For logs and errors: the folder, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Files(dir) => dir.display().to_string(),
            StoreLocation::Postgres { url, .. } => redact(url),
        }
    }
}

/// A `postgres://user:password@host/db` URL with its password replaced.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "postgres://…".to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:…@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password may also come as a parameter.
    let tail = tail.map(|t| match t.split_once('?') {
        Some((db, params)) if params.contains("password") => format!("{db}?…"),
        _ => t.to_owned(),
    });
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// A session cache, of the kind its store keeps true.
#[derive(Clone)]
pub enum Cache {
    /// The SQLite files'.
    Files(Arc<SessionCache>),
    /// A PostgreSQL database's.
    Database(Arc<NotifiedCache>),
}

impl Cache {
    /// (hits, misses) since the cache was made.
    pub fn lookups(&self) -> (u64, u64) {
        match self {
            Cache::Files(c) => c.lookups(),
            Cache::Database(c) => c.lookups(),
        }
    }
}

/// The same call on whichever store `$store` is.
macro_rules! each {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

/// One thread's connection to the store.
// Made once per worker thread and kept: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    /// The SQLite files.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PgStore),
}

impl Store {
    /// Opens the store, creating and migrating what is needed.
    pub fn open(location: &StoreLocation) -> Result<Store, StoreError> {
        Ok(match location {
            StoreLocation::Files(dir) => Store::Sqlite(SqliteStore::open(dir)?),
            StoreLocation::Postgres { url, ca, connections } => {
                Store::Postgres(PgStore::open_with(url, ca.as_deref(), *connections)?)
            }
        })
    }

    /// What a server does with its key at start: SQLite keys the passcode
    /// digests an earlier version left unkeyed; PostgreSQL checks that the
    /// database's servers share this key (or records it, on the first).
    pub fn claim_key(&mut self, key: &ServerKey) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.key_passcodes(key).map(drop),
            Store::Postgres(s) => s.claim_key(key),
        }
    }

    /// Another connection to the same store, with no migration.
    pub fn attach(&self) -> Result<Store, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => Store::Sqlite(s.attach()?),
            Store::Postgres(s) => Store::Postgres(s.attach()?),
        })
    }

    /// A session cache of at most `capacity` sessions for this store's
    /// handles to share: on the files, one kept true by their counter
    /// (`cache`); on PostgreSQL, one kept true by the database's
    /// notifications and trusted only while told of every change made more
    /// than `revocation_delay` ago (`notified`), none if that is zero.
    pub fn new_cache(&self, capacity: usize, revocation_delay: Duration) -> Option<Cache> {
        match self {
            _ if capacity == 0 => None,
            Store::Sqlite(_) => Some(Cache::Files(Arc::new(SessionCache::new(capacity)))),
            Store::Postgres(_) if revocation_delay.is_zero() => None,
            Store::Postgres(_) => Some(Cache::Database(Arc::new(NotifiedCache::new(capacity, revocation_delay)))),
        }
    }

    /// Shares `cache` (made by [`Store::new_cache`] for this store).
    pub fn with_cache(self, cache: &Cache) -> Store {
        match (self, cache) {
            (Store::Sqlite(s), Cache::Files(c)) => Store::Sqlite(s.with_cache(Arc::clone(c))),
            (Store::Postgres(s), Cache::Database(c)) => Store::Postgres(s.with_cache(Arc::clone(c))),
            (store, _) => store,
        }
    }

    /// Starts what keeps the cache true, where that is a thread of its own
    /// (PostgreSQL's listener); the files' cache needs none.
    pub fn listen(&self) -> std::io::Result<Option<Listener>> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => s.listen(),
        }
    }

    /// Fills the session cache, if there is one; returns how many it holds.
    pub fn warm_cache(&self) -> Result<usize, StoreError> {
        each!(self, s => s.warm_cache())
    }

    /// Whether the store answers a read (readiness).
    pub fn ping(&mut self) -> Result<(), StoreError> {
        each!(self, s => s.ping())
    }

    /// Answers lookups from one consistent view, in their order.
    pub fn read_many(&mut self, lookups: &[&Lookup]) -> Vec<Result<Snapshot, StoreError>> {
        each!(self, s => s.read_many(lookups.iter().copied()))
    }

    /// The sessions among `masters` the session cache can answer now,
    /// without waiting on a disk, a lock or the network; `None` for the
    /// others (see each store's `cached_sessions`).
    pub fn cached_sessions(&self, masters: &[MasterToken]) -> Vec<Option<SessionRecord>> {
        each!(self, s => s.cached_sessions(masters))
    }

    /// Another handle on the store for a server's writer of one file (see
    /// `SqliteStore::for_writer`).
    pub fn for_writer(&self) -> Result<Store, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => Store::Sqlite(s.attach()?.for_writer()?),
            Store::Postgres(s) => Store::Postgres(s.attach()?),
        })
    }

    /// Another handle on the store for an event loop's
    /// [`Store::cached_sessions`]: on the files, connections that never wait
    /// for a lock.
    pub fn for_event_loop(&self) -> Result<Store, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => Store::Sqlite(s.attach()?.for_event_loop()?),
            Store::Postgres(s) => Store::Postgres(s.attach()?),
        })
    }

    /// Commits batches as one group (see each store's docs).
    pub fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Result<Commit, StoreError>> {
        each!(self, s => s.write_group(batches))
    }

    /// [`Store::write_group`] for credentials batches alone (a writer's).
    pub fn write_creds_group(&mut self, batches: &[&CredsBatch]) -> Vec<Result<Commit, StoreError>> {
        each!(self, s => s.write_creds_group(batches))
    }

    /// [`Store::write_group`] for passcode batches alone (a writer's).
    pub fn write_passcodes_group(&mut self, batches: &[&PasscodesBatch]) -> Vec<Result<Commit, StoreError>> {
        each!(self, s => s.write_passcodes_group(batches))
    }

    /// Adds an account (`user add`).
    pub fn add_user(&mut self, email: &str, phone: &str, password: &PasswordHash) -> Result<(), AdminError> {
        each!(self, s => s.add_user(email, phone, password))
    }

    /// Every account (`user list`).
    pub fn users(&mut self) -> Result<Vec<UserSummary>, StoreError> {
        each!(self, s => s.users())
    }

    /// Removes an account (`user remove`).
    pub fn remove_user(&mut self, email: &str) -> Result<bool, StoreError> {
        each!(self, s => s.remove_user(email))
    }

    /// Replaces a password and ends the account's sessions (`user passwd`).
    pub fn set_password(&mut self, email: &str, password: &PasswordHash) -> Result<bool, StoreError> {
        each!(self, s => s.set_password(email, password))
    }

    /// Hashes every plaintext password (`user rehash`).
    pub fn rehash_plaintext(&mut self, hasher: &PasswordHasher) -> Result<usize, AdminError> {
        each!(self, s => s.rehash_plaintext(hasher))
    }

    /// Sessions (`session list`).
    pub fn sessions(&mut self, email: Option<&str>) -> Result<Vec<SessionSummary>, StoreError> {
        each!(self, s => s.sessions(email))
    }

    /// Ends sessions (`session revoke`).
    pub fn revoke(&mut self, email: &str, mac: Option<Mac>) -> Result<usize, StoreError> {
        each!(self, s => s.revoke(email, mac))
    }

    /// The stored counters among `keys` (`limits show`).
    pub fn counters(&mut self, keys: &[CounterKey]) -> Result<Vec<(CounterKey, Counter)>, StoreError> {
        each!(self, s => s.counters(keys))
    }

    /// Removes counters (`limits reset`).
    pub fn reset_counters(&mut self, keys: &[CounterKey]) -> Result<usize, StoreError> {
        each!(self, s => s.reset_counters(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact("postgres://auth:s3cret@db.example.com:5432/auth"),
            "postgres://auth:…@db.example.com:5432/auth"
        );
        assert_eq!(redact("postgres://auth@db/auth?sslmode=require"), "postgres://auth@db/auth?sslmode=require");
        assert_eq!(redact("postgres://db/auth?user=a&password=s3cret"), "postgres://db/auth?…");
        assert_eq!(redact("postgres://a:b:c@h"), "postgres://a:…@h");
        assert!(
            !format!("{:?}", StoreLocation::Postgres { url: "postgres://u:pw@h/d".into(), ca: None, connections: 1 })
                .contains("pw")
        );
    }
}
