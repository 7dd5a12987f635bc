//! The SQLite store under the conformance suite: real files in a temporary
//! folder, opened as a server opens them, with a session cache shared by
//! its handles as a server's workers share one.

use std::sync::Arc;

use tempfile::TempDir;
use tokenizer_auth_engine::{Lookup, Mac, PasswordHash, Snapshot, UserRecord, WriteBatch};
// The only use of the runtime's store in the suite: repoint it here when the
// store moves crates.
use tokenizer_auth_effects::store::{Commit, SessionCache, SqliteStore};

use super::{Outcome, StoreUnderTest};

/// Sessions a test cache holds: more than any check writes.
const CACHE: usize = 1000;

/// What the handles on one store share: the folder (removed with the last
/// handle) and the server's session cache.
struct Files {
    dir: TempDir,
    cache: Arc<SessionCache>,
}

/// A handle on a [`SqliteStore`].
pub struct SqliteUnderTest {
    store: SqliteStore,
    files: Arc<Files>,
}

impl SqliteUnderTest {
    fn open(&self, cache: Option<Arc<SessionCache>>) -> Self {
        let store = SqliteStore::open(self.files.dir.path()).expect("open the store again");
        let store = match cache {
            Some(cache) => store.with_cache(cache),
            None => store,
        };
        SqliteUnderTest { store, files: self.files.clone() }
    }
}

impl StoreUnderTest for SqliteUnderTest {
    fn create() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let cache = Arc::new(SessionCache::new(CACHE));
        let store = SqliteStore::open(dir.path()).expect("open the store").with_cache(cache.clone());
        SqliteUnderTest { store, files: Arc::new(Files { dir, cache }) }
    }

    fn connect(&self) -> Self {
        self.open(None)
    }

    fn peers(&self) -> Vec<(&'static str, Self)> {
        vec![
            ("another worker sharing the session cache", self.open(Some(self.files.cache.clone()))),
            ("another process with no cache (an admin command)", self.open(None)),
            ("another server with a cache of its own", self.open(Some(Arc::new(SessionCache::new(CACHE))))),
        ]
    }

    fn add_user(&mut self, user: &UserRecord) {
        self.store.add_user(&user.email, &user.phone, &user.password).expect("add the account");
    }

    fn read_many(&self, lookups: &[Lookup]) -> Vec<Snapshot> {
        self.store.read_many(lookups).into_iter().map(|r| r.expect("read")).collect()
    }

    fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Outcome> {
        let outcome = |r: Result<Commit, _>| match r.expect("write") {
            Commit::Applied => Outcome::Committed,
            Commit::Conflict => Outcome::Conflict,
        };
        self.store.write_group(batches).into_iter().map(outcome).collect()
    }

    fn revoke(&mut self, email: &str, mac: Option<Mac>) -> usize {
        self.store.revoke(email, mac).expect("revoke")
    }

    fn set_password(&mut self, email: &str, password: &PasswordHash) -> bool {
        self.store.set_password(email, password).expect("set the password")
    }
}
