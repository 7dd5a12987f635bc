//! The PostgreSQL store under the conformance suite: a fresh database on
//! the suite's real PostgreSQL server (`crate::postgres`), each handle a
//! connection of its own, as each worker and each server has.

use std::cell::RefCell;
use std::sync::Arc;

use tokenizer_auth_effects::store::{Commit, PgStore};
use tokenizer_auth_engine::{Lookup, Mac, PasswordHash, Snapshot, UserRecord, WriteBatch};

use super::{Outcome, StoreUnderTest};

/// A handle on a [`PgStore`]. (A `RefCell`: the suite reads through `&self`,
/// and a connection needs `&mut` for every statement.)
pub struct PgUnderTest {
    store: RefCell<PgStore>,
    url: Arc<str>,
}

impl PgUnderTest {
    fn open(&self) -> Self {
        let store = PgStore::connect(&self.url).expect("connect again");
        PgUnderTest { store: RefCell::new(store), url: Arc::clone(&self.url) }
    }
}

impl StoreUnderTest for PgUnderTest {
    fn create() -> Self {
        let url: Arc<str> = crate::postgres::shared().database().into();
        let store = PgStore::open(&url).expect("open the database");
        PgUnderTest { store: RefCell::new(store), url }
    }

    fn connect(&self) -> Self {
        self.open()
    }

    fn peers(&self) -> Vec<(&'static str, Self)> {
        vec![
            ("another connection of the same server", self.open()),
            ("another server on the same database", self.open()),
        ]
    }

    fn add_user(&mut self, user: &UserRecord) {
        self.store.get_mut().add_user(&user.email, &user.phone, &user.password).expect("add the account");
    }

    fn read_many(&self, lookups: &[Lookup]) -> Vec<Snapshot> {
        self.store.borrow_mut().read_many(lookups).into_iter().map(|r| r.expect("read")).collect()
    }

    fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Outcome> {
        let outcome = |r: Result<Commit, _>| match r.expect("write") {
            Commit::Applied => Outcome::Committed,
            Commit::Conflict => Outcome::Conflict,
        };
        self.store.get_mut().write_group(batches).into_iter().map(outcome).collect()
    }

    fn revoke(&mut self, email: &str, mac: Option<Mac>) -> usize {
        self.store.get_mut().revoke(email, mac).expect("revoke")
    }

    fn set_password(&mut self, email: &str, password: &PasswordHash) -> bool {
        self.store.get_mut().set_password(email, password).expect("set the password")
    }
}
