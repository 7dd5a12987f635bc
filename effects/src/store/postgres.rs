//! The PostgreSQL store (`store_url = "postgres://…"`, docs/STORES.md): the
//! same reads and write batches as the SQLite store, with the same meaning,
//! on a database any number of servers share.
//!
//! - **Groups.** A group of batches is one transaction (one commit, one
//!   WAL flush), each batch inside a savepoint of its own, its expectation
//!   checked after the batches before it; a batch that conflicts is rolled
//!   back alone. Nothing is reported applied before the commit returns.
//! - **Races.** Every expectation is read `FOR UPDATE`, so the row it
//!   judges stays as judged until the commit, and every other write is one
//!   statement that decides on the row's latest version (a conditional
//!   update or upsert). So `READ COMMITTED` is enough, and writers racing
//!   for one row (a burst of guesses on one passcode, one counter) wait
//!   their turn instead of failing: with `SERIALIZABLE`, the conformance
//!   suite's 32 connections racing for one counter ran out of retries.
//! - **Retries.** A serialization failure or a deadlock (SQLSTATE 40001,
//!   40P01; two groups locking rows in opposite orders, or CockroachDB,
//!   which always runs serializable) aborts the whole transaction; the
//!   group is run again from the start after a short, growing pause, at
//!   most [`MAX_ATTEMPTS`] times, and then each batch fails (the client
//!   gets the retryable `error|store_unavailable`). A group that failed was
//!   never applied, so running it again cannot count twice.
//! - **Dropped connections.** A connection the server dropped is replaced.
//!   A read is asked again on the new one; a group whose connection dropped
//!   before its commit was asked for is run again (the server rolled it
//!   back); one that dropped while committing may have landed, so it is
//!   reported failed and not run again, as a SQLite commit whose sync
//!   fails is.
//! - **Counters** are reserved as in SQLite: one conditional
//!   `INSERT … ON CONFLICT … DO UPDATE … WHERE` that checks the bound and
//!   raises the count in one statement.
//! - **Portable SQL.** Plain tables, `BIGINT` milliseconds, `ON CONFLICT`
//!   upserts, no PostgreSQL-only types, so that CockroachDB could run it;
//!   the one exception is the advisory lock that serializes migrations
//!   (`pg_advisory_xact_lock`), which CockroachDB lacks (see docs/STORES.md).
//!
//! The tables are this project's own (`accounts`, `sessions`, `rotations`,
//! `passcodes`, `counters`), not the old server's: its files stay SQLite.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use postgres::error::SqlState;
use std::path::Path;

use postgres::{Client, GenericClient, IsolationLevel, Row, Statement};
use tokenizer_auth_engine::{
    Bound, Counter, CounterKey, CredsBatch, CredsExpectation, CredsOp, Lookup, Mac, MasterToken, PasscodeKey,
    PasscodeRecord, PasscodesBatch, PasscodesOp, PasswordHash, Place, REUSE_HISTORY, Reservation, RotationRecord,
    ServerKey, SessionRecord, Snapshot, StoredPasscode, TokenTag, UserRecord, WriteBatch,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::password::PasswordHasher;

use super::admin::{AdminError, SessionSummary, UserSummary, check_account};
use super::bulk::Plan;
use super::columns::{counter_key, from_millis, millis};
use super::listen::Listener;
use super::notified::NotifiedCache;
use super::{Commit, StoreError};

/// How many sessions `warm_cache` keeps under one lock.
const WARM_CHUNK: usize = 4096;

/// How many times a group is run before its batches fail.
pub(super) const MAX_ATTEMPTS: usize = 8;

/// The key of the advisory lock migrations take, so that servers starting
/// together migrate one after the other.
const MIGRATION_LOCK: i64 = 0x0074_6f6b_6175_7468; // "tokauth"

/// The schema, one entry per version. Each runs once, in order, in the
/// migration's transaction; the version is kept in `tokenizer_auth_schema`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE IF NOT EXISTS accounts (
        email TEXT PRIMARY KEY,
        phone TEXT NOT NULL,
        password TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sessions (
        master TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        mac TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS sessions_email ON sessions (email, mac);
    CREATE TABLE IF NOT EXISTS rotations (
        tag TEXT PRIMARY KEY,
        master TEXT NOT NULL,
        email TEXT NOT NULL,
        mac TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        rotated_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rotations_session ON rotations (email, mac, started_at, rotated_at);
    CREATE TABLE IF NOT EXISTS passcodes (
        email TEXT NOT NULL,
        mac TEXT NOT NULL,
        ip TEXT NOT NULL,
        phone TEXT NOT NULL,
        code TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        PRIMARY KEY (email, mac, ip)
    );
    CREATE TABLE IF NOT EXISTS counters (
        key TEXT PRIMARY KEY,
        since BIGINT NOT NULL,
        count BIGINT NOT NULL,
        last BIGINT NOT NULL
    );
",
    "
    CREATE TABLE IF NOT EXISTS server_key (
        fingerprint TEXT NOT NULL
    );
",
    // Every change to a session is told to the servers' session caches
    // (`notified`, `listen`): its master token when a row is updated or
    // deleted, whatever program does it, and `*` when the table is emptied
    // at once. Statement triggers over the rows changed: one call per
    // statement, not per row (a group of renewals deletes hundreds of rows
    // in one). (PL/pgSQL and NOTIFY are PostgreSQL's own: see
    // docs/STORES.md on CockroachDB.)
    "
    CREATE OR REPLACE FUNCTION tokenizer_auth_sessions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('tokenizer_auth_sessions', master) FROM changed;
        RETURN NULL;
    END $$;
    CREATE OR REPLACE FUNCTION tokenizer_auth_sessions_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('tokenizer_auth_sessions', '*');
        RETURN NULL;
    END $$;
    DROP TRIGGER IF EXISTS sessions_updated ON sessions;
    CREATE TRIGGER sessions_updated AFTER UPDATE ON sessions REFERENCING OLD TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION tokenizer_auth_sessions_changed();
    DROP TRIGGER IF EXISTS sessions_deleted ON sessions;
    CREATE TRIGGER sessions_deleted AFTER DELETE ON sessions REFERENCING OLD TABLE AS changed
        FOR EACH STATEMENT EXECUTE FUNCTION tokenizer_auth_sessions_changed();
    DROP TRIGGER IF EXISTS sessions_emptied ON sessions;
    CREATE TRIGGER sessions_emptied AFTER TRUNCATE ON sessions
        FOR EACH STATEMENT EXECUTE FUNCTION tokenizer_auth_sessions_emptied();
",
];

/// Statements prepared once per connection, by their text.
pub(super) type Statements = HashMap<&'static str, Statement>;

/// A connection to the database and the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    statements: Statements,
    /// Found dropped by the database: the pool discards it when it comes
    /// back (the client may not say closed yet, the server's farewell
    /// read before its socket closes).
    lost: bool,
}

/// Makes the pool's connections (r2d2).
pub(super) struct Connector {
    url: String,
    tls: MakeRustlsConnect,
}

impl r2d2::ManageConnection for Connector {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        Ok(Conn { client: Client::connect(&self.url, self.tls.clone())?, statements: Statements::new(), lost: false })
    }

    /// Not asked on check-out (that would cost a round trip per batch): a
    /// connection found dropped when used is replaced then (see
    /// [`PgStore::read_many`] and [`PgStore::write_group`]).
    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.lost || conn.client.is_closed()
    }
}

/// The pool's failed connection attempts, in the server's log.
#[derive(Debug)]
struct LogFailures;

impl r2d2::HandleError<postgres::Error> for LogFailures {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(error = %describe(&error), "cannot connect to the store");
    }
}

/// How many connections a store opens at most when not told
/// (`store_connections`): a server's four readers, two writers and the
/// thread that fills its session cache, and one to spare.
pub const DEFAULT_CONNECTIONS: u32 = 8;

/// How long a worker waits for a connection of the pool before its work
/// fails as `store_unavailable`.
const CHECKOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A handle on a pool of connections to the database. Handles made by
/// [`PgStore::attach`] share the pool: a server's workers take a connection
/// for each group of work and give it back, so a server holds at most
/// `store_connections` connections, however many workers it runs.
pub struct PgStore {
    pool: r2d2::Pool<Connector>,
    cache: Option<Arc<NotifiedCache>>,
    /// For the listener's own connection.
    url: String,
    tls: MakeRustlsConnect,
}

/// TLS to the database, as the URL's `sslmode` asks (`prefer`, the
/// default, uses it when the server offers it; `require` refuses a server
/// that does not): rustls, checking the certificate against the system's
/// roots and `ca`, and the name against the URL's host. A certificate that
/// does not check fails the connection, whatever the mode.
fn tls(ca: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let config = crate::tls::client_config(ca, true).map_err(|e| StoreError::Postgres(format!("store_ca: {e}")))?;
    Ok(MakeRustlsConnect::new((*config).clone()))
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        StoreError::Postgres(describe(&e))
    }
}

/// An error in words: the server's message and SQLSTATE when it sent one
/// (the client's own text is only "db error").
pub(super) fn describe(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        // The client's own words, and why (a TLS handshake, say).
        (None, Some(why)) => format!("{e}: {why}"),
        (None, None) => e.to_string(),
    }
}

/// Whether the connection is gone: closed, or ended by the server (class
/// 08, connection exceptions; 57P01–57P03, an administrator, a crash or a
/// shutdown).
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

impl From<postgres::Error> for AdminError {
    fn from(e: postgres::Error) -> AdminError {
        AdminError::Store(e.into())
    }
}

/// A batch of a group, borrowed as the caller holds it (a writer holds
/// batches of one kind).
#[derive(Clone, Copy)]
enum BatchRef<'a> {
    Creds(&'a CredsBatch),
    Passcodes(&'a PasscodesBatch),
}

impl<'a> BatchRef<'a> {
    fn of(batch: &'a WriteBatch) -> BatchRef<'a> {
        match batch {
            WriteBatch::Creds(b) => BatchRef::Creds(b),
            WriteBatch::Passcodes(b) => BatchRef::Passcodes(b),
        }
    }
}

/// How a group's transaction failed.
enum Failed {
    /// Before its commit was asked for: nothing of it can have landed.
    Before(postgres::Error),
    /// At its commit.
    AtCommit(postgres::Error),
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Failed {
        Failed::Before(e)
    }
}

/// Whether the transaction failed only because another one won a race,
/// and running it again may succeed.
fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// The statement for `sql` on this connection, prepared on first use.
pub(super) fn prepared<C: GenericClient>(
    c: &mut C,
    cache: &mut Statements,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = cache.get(sql) {
        return Ok(statement.clone());
    }
    let statement = c.prepare(sql)?;
    cache.insert(sql, statement.clone());
    Ok(statement)
}

impl PgStore {
    /// Connects to `url` and brings the schema to the current version
    /// (under an advisory lock: servers starting together migrate one
    /// after the other).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_with(url, None, DEFAULT_CONNECTIONS)
    }

    /// [`PgStore::open`] with at most `connections` connections, trusting
    /// the certificates in `ca` too for the database's TLS (`store_ca`).
    pub fn open_with(url: &str, ca: Option<&Path>, connections: u32) -> Result<PgStore, StoreError> {
        let mut store = PgStore::pool(url, tls(ca)?, connections)?;
        store.migrate()?;
        Ok(store)
    }

    /// Another pool on a database [`PgStore::open`] has migrated.
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::pool(url, tls(None)?, DEFAULT_CONNECTIONS)
    }

    /// Connections are made when first needed and kept while in use (up
    /// to ten idle minutes, r2d2's default), so a command that needs one
    /// opens one.
    fn pool(url: &str, tls: MakeRustlsConnect, connections: u32) -> Result<PgStore, StoreError> {
        let connector = Connector { url: url.to_owned(), tls: tls.clone() };
        // One connection now, so that a database that cannot be reached
        // fails the start at once and says why (the pool would try again
        // until its timeout, and keep only the last error's first words).
        drop(r2d2::ManageConnection::connect(&connector)?);
        let pool = r2d2::Pool::builder()
            .max_size(connections.max(1))
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .error_handler(Box::new(LogFailures))
            .build_unchecked(connector);
        Ok(PgStore { pool, cache: None, url: url.to_owned(), tls })
    }

    /// A connection of the pool, given back when dropped.
    pub(super) fn conn(&self) -> Result<r2d2::PooledConnection<Connector>, StoreError> {
        self.pool.get().map_err(|e| StoreError::Postgres(format!("no connection to the database: {e}")))
    }

    /// Another handle on the same pool (and session cache).
    pub fn attach(&self) -> Result<PgStore, StoreError> {
        Ok(PgStore { pool: self.pool.clone(), cache: self.cache.clone(), url: self.url.clone(), tls: self.tls.clone() })
    }

    /// Shares `cache` for session lookups with every handle that shares
    /// it (a server's). It is trusted only while a [`Listener`] keeps it.
    pub fn with_cache(mut self, cache: Arc<NotifiedCache>) -> PgStore {
        self.cache = Some(cache);
        self
    }

    /// Starts the thread that keeps this store's cache told of the
    /// database's changes (see `notified`); `None` without a cache.
    pub fn listen(&self) -> std::io::Result<Option<Listener>> {
        let Some(cache) = &self.cache else { return Ok(None) };
        Listener::start(self.url.clone(), self.tls.clone(), Arc::clone(cache)).map(Some)
    }

    /// Loads sessions into the cache, up to its bound, as a server starts
    /// (see [`super::SqliteStore::warm_cache`]): once the listener hears
    /// its beats, a page of sessions at a time in master order, each page
    /// kept as a read's would be (a ticket of its own, a connection of the
    /// pool for that page only). Returns how many the cache holds then.
    pub fn warm_cache(&self) -> Result<usize, StoreError> {
        let Some(cache) = &self.cache else { return Ok(0) };
        let waited = Instant::now();
        let mut after = String::new();
        loop {
            let Some(ticket) = cache.ticket(Instant::now(), SystemTime::now()) else {
                // Not fresh (yet, or any more): wait for a beat, a few
                // delays at most.
                if waited.elapsed() > cache.delay() * 4 {
                    return Ok(cache.len());
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            };
            let sql = "SELECT master, email, mac, started_at, expires_at FROM sessions
                       WHERE master > $1 ORDER BY master LIMIT $2";
            let rows = self.conn()?.client.query(sql, &[&after, &(WARM_CHUNK as i64)])?;
            let Some(last) = rows.last() else { return Ok(cache.len()) };
            after = last.get(0);
            let page: Vec<SessionRecord> = rows.iter().filter_map(session_row).collect();
            if !cache.fill(ticket, &page) && cache.len() >= cache.capacity() {
                return Ok(cache.len());
            }
        }
    }

    /// Records `key`'s fingerprint as the database's, or checks that it is:
    /// every server on one database must share its key (the passcode
    /// digests and the successor tokens are keyed by it), so a server with
    /// another key refuses to start rather than refuse every login.
    pub fn claim_key(&mut self, key: &ServerKey) -> Result<(), StoreError> {
        let ours = key.fingerprint().to_string();
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        tx.execute("LOCK TABLE server_key IN EXCLUSIVE MODE", &[])?;
        match tx.query_opt("SELECT fingerprint FROM server_key", &[])? {
            Some(row) => {
                let theirs: String = row.get(0);
                if theirs != ours {
                    return Err(StoreError::OtherKey { ours, theirs });
                }
            }
            None => {
                tx.execute("INSERT INTO server_key (fingerprint) VALUES ($1)", &[&ours])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        // "…does not exist, skipping" of every `IF EXISTS` is no news.
        tx.batch_execute("SET LOCAL client_min_messages = warning")?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS tokenizer_auth_schema (version BIGINT NOT NULL)")?;
        let version = match tx.query_opt("SELECT version FROM tokenizer_auth_schema", &[])? {
            Some(row) => row.get::<_, i64>(0),
            None => {
                tx.execute("INSERT INTO tokenizer_auth_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        let done = usize::try_from(version).unwrap_or(usize::MAX);
        for (i, step) in MIGRATIONS.iter().enumerate().skip(done) {
            tx.batch_execute(step)?;
            tx.execute("UPDATE tokenizer_auth_schema SET version = $1", &[&(i as i64 + 1)])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the database answers a read (readiness).
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.conn()?.client.query_one("SELECT count(*) FROM sessions WHERE false", &[])?;
        Ok(())
    }

    /// Answers lookups from one read-only snapshot, in their order: the
    /// sessions the cache does not hold by one statement for the lot, the
    /// rest lookup by lookup. A group of token checks alone is that one
    /// statement, its own snapshot, with no transaction around it.
    pub fn read_many<'a>(
        &mut self,
        lookups: impl IntoIterator<Item = &'a Lookup>,
    ) -> Vec<Result<Snapshot, StoreError>> {
        let lookups: Vec<&Lookup> = lookups.into_iter().collect();
        let ticket = self.cache.as_ref().and_then(|c| c.ticket(Instant::now(), SystemTime::now()));
        let hits = match (&self.cache, ticket) {
            (Some(cache), Some(_)) => cache.get_many(lookups.iter().map(|l| l.session.as_ref())),
            _ => vec![None; lookups.len()],
        };
        if let Some(cache) = &self.cache {
            let asked = lookups.iter().filter(|l| l.session.is_some()).count();
            cache.looked_up(asked, hits.iter().filter(|h| h.is_some()).count());
        }
        // Token checks the cache answered whole need no connection (and
        // are answered while the database is away, within the delay).
        if lookups.iter().zip(&hits).all(|(l, hit)| hit.is_some() && !beyond_session(l)) {
            return hits.into_iter().map(|hit| Ok(Snapshot { session: hit, ..Snapshot::default() })).collect();
        }
        // A read changes nothing: on a connection the server dropped, it is
        // asked again on another (a dropped one leaves the pool).
        let mut why = String::new();
        // After a restart of the database every idle connection is dropped.
        for _ in 0..=self.pool.max_size() {
            let mut conn = match self.conn() {
                Ok(conn) => conn,
                Err(e) => {
                    why = e.to_string();
                    break;
                }
            };
            match read_group(&mut conn, &lookups, &hits) {
                Ok((snapshots, read)) => {
                    if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
                        cache.fill(ticket, &read);
                    }
                    return snapshots.into_iter().map(Ok).collect();
                }
                Err(e) if connection_lost(&e) || conn.client.is_closed() => {
                    conn.lost = true;
                    why = describe(&e);
                }
                Err(e) => {
                    why = describe(&e);
                    break;
                }
            }
        }
        lookups.iter().map(|_| Err(StoreError::Postgres(why.clone()))).collect()
    }

    /// The sessions among `masters` that the cache holds while it is
    /// fresh (see `notified`); `None` for every other, which a reader
    /// reads. Touches no connection: the event loop answers token checks
    /// with this.
    pub fn cached_sessions(&self, masters: &[MasterToken]) -> Vec<Option<SessionRecord>> {
        let Some(cache) = &self.cache else { return vec![None; masters.len()] };
        if cache.ticket(Instant::now(), SystemTime::now()).is_none() {
            return vec![None; masters.len()];
        }
        let hits = cache.get_many(masters.iter().map(Some));
        let found = hits.iter().filter(|h| h.is_some()).count();
        // The misses are counted by the reader that reads them.
        cache.looked_up(found, found);
        hits
    }

    /// Answers one lookup.
    pub fn read(&mut self, lookup: &Lookup) -> Result<Snapshot, StoreError> {
        self.read_many([lookup]).pop().unwrap_or(Err(StoreError::NoOutcome))
    }

    /// Commits batches as one group (see the module's docs): the outcomes
    /// in the batches' order, each only once the commit is durable.
    pub fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Result<Commit, StoreError>> {
        let refs: Vec<BatchRef<'_>> = batches.iter().map(|b| BatchRef::of(b)).collect();
        self.commit_group(&refs)
    }

    /// [`PgStore::write_group`] for credentials batches alone (a writer's).
    pub fn write_creds_group(&mut self, batches: &[&CredsBatch]) -> Vec<Result<Commit, StoreError>> {
        let refs: Vec<BatchRef<'_>> = batches.iter().map(|b| BatchRef::Creds(b)).collect();
        self.commit_group(&refs)
    }

    /// [`PgStore::write_group`] for passcode batches alone (a writer's).
    pub fn write_passcodes_group(&mut self, batches: &[&PasscodesBatch]) -> Vec<Result<Commit, StoreError>> {
        let refs: Vec<BatchRef<'_>> = batches.iter().map(|b| BatchRef::Passcodes(b)).collect();
        self.commit_group(&refs)
    }

    fn commit_group(&mut self, batches: &[BatchRef<'_>]) -> Vec<Result<Commit, StoreError>> {
        let fail = |why: String| batches.iter().map(|_| Err(StoreError::Commit(why.clone()))).collect();
        let mut last = String::new();
        // Races lost, and connections found dropped: after a restart of
        // the database every idle connection of the pool is, so a group
        // may meet them all before a new one.
        let (mut races, mut drops) = (0, 0);
        while races < MAX_ATTEMPTS && drops <= self.pool.max_size() as usize {
            let mut conn = match self.conn() {
                Ok(conn) => conn,
                Err(e) => return fail(e.to_string()),
            };
            let outcome = try_group(&mut conn, batches);
            // A socket error has no SQLSTATE; the client then says closed.
            let lost = |e: &postgres::Error| connection_lost(e) || conn.client.is_closed();
            match outcome {
                Ok(outcomes) => {
                    self.forget_ended(batches, &outcomes);
                    return outcomes.into_iter().map(|o| o.map_err(|e| StoreError::Postgres(describe(&e)))).collect();
                }
                // Lost a race: PostgreSQL rolled it all back. Run it again
                // after 1, 2, 4 … 64 ms: long enough for the winner to
                // commit.
                Err(Failed::Before(e) | Failed::AtCommit(e)) if retryable(&e) => {
                    last = describe(&e);
                    races += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1 << (races - 1)));
                }
                // The connection dropped before the commit was asked for:
                // the server rolled the transaction back, so it runs again
                // on another connection (a dropped one leaves the pool).
                Err(Failed::Before(e)) if lost(&e) => {
                    last = describe(&e);
                    drops += 1;
                    conn.lost = true;
                }
                // Dropped while committing, the group may or may not have
                // landed: it is reported failed, never run again (the
                // engine takes a failed write that landed, as it does on
                // SQLite when a commit's sync fails).
                Err(Failed::AtCommit(e)) if lost(&e) => {
                    conn.lost = true;
                    return fail(format!("the connection dropped while committing: {}", describe(&e)));
                }
                Err(Failed::Before(e) | Failed::AtCommit(e)) => return fail(describe(&e)),
            }
        }
        fail(format!("still failing after {} attempts: {last}", races + drops))
    }

    /// Sessions this server's commit ended leave its cache at once; the
    /// database tells every server's listener too, this one's included,
    /// but a moment later.
    fn forget_ended(&self, batches: &[BatchRef<'_>], outcomes: &[Result<Commit, postgres::Error>]) {
        let Some(cache) = &self.cache else { return };
        for (batch, _) in batches.iter().zip(outcomes).filter(|(_, o)| matches!(o, Ok(Commit::Applied))) {
            let BatchRef::Creds(batch) = batch else { continue };
            for op in &batch.ops {
                match op {
                    CredsOp::DeleteSession(master) => cache.forget(master),
                    CredsOp::RevokeSession { email, mac, started_at } => cache.forget_login(email, *mac, *started_at),
                    // A new session is in no cache (a login's, a renewal's
                    // successor); one written over is told by the database.
                    CredsOp::PutSession(_) | CredsOp::PutRotation(_) | CredsOp::SetPassword { .. } => {}
                }
            }
        }
    }

    /// Commits one batch, or nothing if its expectation does not hold.
    pub fn write(&mut self, batch: &WriteBatch) -> Result<Commit, StoreError> {
        self.write_group(&[batch]).pop().unwrap_or(Err(StoreError::NoOutcome))
    }

    /// Adds an account. Fails if one with this email exists.
    pub fn add_user(&mut self, email: &str, phone: &str, password: &PasswordHash) -> Result<(), AdminError> {
        check_account(email, phone)?;
        let added = self.conn()?.client.execute(
            "INSERT INTO accounts (email, phone, password) VALUES ($1, $2, $3) ON CONFLICT (email) DO NOTHING",
            &[&email, &phone, &password.as_column()],
        )?;
        if added == 0 {
            return Err(AdminError::UserExists(email.to_owned()));
        }
        Ok(())
    }

    /// Ends an account's sessions, or only one device's. Returns how many
    /// ended.
    pub fn revoke(&mut self, email: &str, mac: Option<Mac>) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        let ended = end_sessions(&mut tx, email, mac)?;
        tx.commit()?;
        Ok(ended)
    }

    /// Replaces an account's password and ends its sessions. Returns whether
    /// the account exists.
    pub fn set_password(&mut self, email: &str, password: &PasswordHash) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        let changed =
            tx.execute("UPDATE accounts SET password = $2 WHERE email = $1", &[&email, &password.as_column()])?;
        end_sessions(&mut tx, email, None)?;
        tx.commit()?;
        Ok(changed > 0)
    }
}

impl PgStore {
    /// Every account, by email.
    pub fn users(&mut self) -> Result<Vec<UserSummary>, StoreError> {
        let rows = self.conn()?.client.query(
            "SELECT a.email, a.phone, a.password, (SELECT count(*) FROM sessions s WHERE s.email = a.email)
             FROM accounts a ORDER BY a.email",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| UserSummary {
                email: r.get(0),
                phone: r.get(1),
                plaintext: PasswordHash::from_column(r.get(2)).needs_upgrade(),
                sessions: usize::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            })
            .collect())
    }

    /// Removes an account with its sessions and passcodes. Returns whether
    /// it existed.
    pub fn remove_user(&mut self, email: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        let removed = tx.execute("DELETE FROM accounts WHERE email = $1", &[&email])?;
        end_sessions(&mut tx, email, None)?;
        tx.execute("DELETE FROM passcodes WHERE email = $1", &[&email])?;
        tx.commit()?;
        Ok(removed > 0)
    }

    /// Hashes every plaintext password (copied from the old server's
    /// files). Returns how many were hashed.
    pub fn rehash_plaintext(&mut self, hasher: &PasswordHasher) -> Result<usize, AdminError> {
        let mut conn = self.conn()?;
        let rows = conn.client.query("SELECT email, password FROM accounts", &[])?;
        let mut hashed = 0;
        for row in rows {
            let (email, stored): (String, String) = (row.get(0), row.get(1));
            if let PasswordHash::Plain(plain) = PasswordHash::from_column(&stored) {
                let new = hasher.hash(&plain)?;
                // Only if it is still the plaintext: a concurrent change wins.
                let sql = "UPDATE accounts SET password = $3 WHERE email = $1 AND password = $2";
                hashed += conn.client.execute(sql, &[&email, &stored, &new.as_column()])?;
            }
        }
        Ok(usize::try_from(hashed).unwrap_or(usize::MAX))
    }

    /// Sessions, of one account or all, oldest login first.
    pub fn sessions(&mut self, email: Option<&str>) -> Result<Vec<SessionSummary>, StoreError> {
        let rows = self.conn()?.client.query(
            "SELECT email, mac, started_at, expires_at FROM sessions
             WHERE $1::TEXT IS NULL OR email = $1 ORDER BY started_at, email, mac",
            &[&email],
        )?;
        Ok(rows
            .iter()
            .map(|r| SessionSummary {
                email: r.get(0),
                mac: r.get(1),
                started_at: from_millis(r.get(2)),
                expires_at: from_millis(r.get(3)),
            })
            .collect())
    }

    /// The stored counters among `keys`, in their order.
    pub fn counters(&mut self, keys: &[CounterKey]) -> Result<Vec<(CounterKey, Counter)>, StoreError> {
        let mut conn = self.conn()?;
        let Conn { client, statements, .. } = &mut *conn;
        let mut found = Vec::new();
        for key in keys {
            if let Some(c) = counter(client, statements, key)? {
                found.push((key.clone(), c));
            }
        }
        Ok(found)
    }

    /// Removes the counters among `keys`, in one transaction. Returns how
    /// many existed.
    pub fn reset_counters(&mut self, keys: &[CounterKey]) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        let mut removed = 0;
        for key in keys {
            removed += tx.execute("DELETE FROM counters WHERE key = $1", &[&counter_key(key)])?;
        }
        tx.commit()?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}

/// One run of a group: `Err` if the transaction as a whole failed, and
/// whether before its commit was asked for.
fn try_group(conn: &mut Conn, batches: &[BatchRef<'_>]) -> Result<Vec<Result<Commit, postgres::Error>>, Failed> {
    let by_kind = batches.iter().map(|b| match b {
        BatchRef::Creds(b) => Some(*b),
        BatchRef::Passcodes(_) => None,
    });
    if let Some(plan) = Plan::of(by_kind) {
        match try_plan(conn, &plan) {
            Ok(outcomes) => return Ok(outcomes.into_iter().map(Ok).collect()),
            // A statement failed: batch by batch, the failing batch fails
            // alone.
            Err(Failed::Before(e)) if !retryable(&e) && !connection_lost(&e) => {
                tracing::warn!(error = %describe(&e), "a group of session writes failed; running it batch by batch");
                BATCH_BY_BATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(failed) => return Err(failed),
        }
    }
    let Conn { client, statements, .. } = conn;
    let mut tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start()?;
    let mut outcomes = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut savepoint = tx.transaction()?;
        let applied = match batch {
            BatchRef::Creds(b) => write_creds(&mut savepoint, statements, b),
            BatchRef::Passcodes(b) => write_passcodes(&mut savepoint, statements, b),
        };
        match applied {
            Ok(Commit::Applied) => savepoint.commit()?,
            Err(e) if retryable(&e) || connection_lost(&e) => return Err(Failed::Before(e)),
            // Undo what the batch did before it conflicted or failed.
            Ok(Commit::Conflict) | Err(_) => savepoint.rollback()?,
        }
        outcomes.push(applied);
    }
    tx.commit().map_err(Failed::AtCommit)?;
    Ok(outcomes)
}

/// Groups of session writes that qualified for `bulk` but failed there
/// and ran batch by batch, in this process.
static BATCH_BY_BATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many groups of session writes this process ran batch by batch after
/// their statements failed in bulk (each is also logged): none, unless a
/// batch holds what the database refuses.
pub fn bulk_failures() -> u64 {
    BATCH_BY_BATCH.load(std::sync::atomic::Ordering::Relaxed)
}

/// A group of session writes in a few statements (see `bulk`).
fn try_plan(conn: &mut Conn, plan: &Plan<'_>) -> Result<Vec<Commit>, Failed> {
    let Conn { client, statements, .. } = conn;
    let mut tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start()?;
    let outcomes = plan.run(&mut tx, statements)?;
    tx.commit().map_err(Failed::AtCommit)?;
    Ok(outcomes)
}

/// Deletes an account's sessions (or one device's) and their rotation
/// records. Returns how many sessions ended.
fn end_sessions(tx: &mut postgres::Transaction<'_>, email: &str, mac: Option<Mac>) -> Result<usize, StoreError> {
    let mac = mac.map(|m| m.to_string());
    let ended =
        tx.execute("DELETE FROM sessions WHERE email = $1 AND ($2::TEXT IS NULL OR mac = $2)", &[&email, &mac])?;
    tx.execute("DELETE FROM rotations WHERE email = $1 AND ($2::TEXT IS NULL OR mac = $2)", &[&email, &mac])?;
    Ok(usize::try_from(ended).unwrap_or(usize::MAX))
}

/// Reads a group of lookups (see [`PgStore::read_many`]), `hits` being
/// their sessions as the cache has them. Returns the snapshots, and the
/// sessions read from the database.
fn read_group(
    conn: &mut Conn,
    lookups: &[&Lookup],
    hits: &[Option<SessionRecord>],
) -> Result<(Vec<Snapshot>, Vec<SessionRecord>), postgres::Error> {
    let Conn { client, statements, .. } = conn;
    let mut wanted: Vec<String> = lookups
        .iter()
        .zip(hits)
        .filter(|(_, hit)| hit.is_none())
        .filter_map(|(l, _)| l.session.map(|m| m.to_hex()))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    if !lookups.iter().any(|l| beyond_session(l)) {
        let read = sessions(client, statements, &wanted)?;
        return Ok((snapshots(lookups, hits, &read, |_| Ok(Snapshot::default()))?, read));
    }
    let mut tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
    let read = sessions(&mut tx, statements, &wanted)?;
    let snapshots = snapshots(lookups, hits, &read, |l| read_rest(&mut tx, statements, l))?;
    tx.commit()?;
    Ok((snapshots, read))
}

/// Whether a lookup asks for more than a session (which the cache may
/// answer).
fn beyond_session(l: &Lookup) -> bool {
    l.user.is_some() || l.passcode.is_some() || l.rotation.is_some() || !l.counters.is_empty()
}

/// Each lookup's snapshot: what `rest` reads, and its session from the
/// cache's `hits` or the sessions `read`.
fn snapshots(
    lookups: &[&Lookup],
    hits: &[Option<SessionRecord>],
    read: &[SessionRecord],
    mut rest: impl FnMut(&Lookup) -> Result<Snapshot, postgres::Error>,
) -> Result<Vec<Snapshot>, postgres::Error> {
    let by_master: HashMap<&MasterToken, &SessionRecord> = read.iter().map(|s| (&s.master, s)).collect();
    lookups
        .iter()
        .zip(hits)
        .map(|(lookup, hit)| {
            let mut snapshot = rest(lookup)?;
            snapshot.session = match (hit, &lookup.session) {
                (Some(hit), _) => Some(hit.clone()),
                (None, Some(master)) => by_master.get(master).map(|s| (*s).clone()),
                (None, None) => None,
            };
            Ok(snapshot)
        })
        .collect()
}

/// The sessions among `masters` (hex) that exist, by one statement.
fn sessions<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    masters: &[String],
) -> Result<Vec<SessionRecord>, postgres::Error> {
    if masters.is_empty() {
        return Ok(Vec::new());
    }
    let sql = prepared(c, s, "SELECT master, email, mac, started_at, expires_at FROM sessions WHERE master = ANY($1)")?;
    Ok(c.query(&sql, &[&masters])?.iter().filter_map(session_row).collect())
}

/// A lookup's reads other than its session.
fn read_rest<C: GenericClient>(c: &mut C, s: &mut Statements, lookup: &Lookup) -> Result<Snapshot, postgres::Error> {
    let mut snapshot = Snapshot::default();
    if let Some(email) = &lookup.user {
        let sql = prepared(c, s, "SELECT phone, password FROM accounts WHERE email = $1")?;
        snapshot.user = c.query_opt(&sql, &[email])?.map(|r| UserRecord {
            email: email.clone(),
            phone: r.get(0),
            password: PasswordHash::from_column(r.get(1)),
        });
    }
    if let Some(key) = &lookup.passcode {
        snapshot.passcode = passcode(c, s, key)?;
    }
    if let Some(tag) = &lookup.rotation {
        let sql =
            prepared(c, s, "SELECT tag, master, email, mac, started_at, rotated_at FROM rotations WHERE tag = $1")?;
        snapshot.rotation = c.query_opt(&sql, &[&tag.to_hex()])?.and_then(|r| rotation_row(&r));
    }
    for key in &lookup.counters {
        if let Some(counter) = counter(c, s, key)? {
            snapshot.counters.push((key.clone(), counter));
        }
    }
    Ok(snapshot)
}

fn session_row(r: &Row) -> Option<SessionRecord> {
    let (master, email, mac): (String, String, String) = (r.get(0), r.get(1), r.get(2));
    Some(SessionRecord {
        master: MasterToken::parse(&master)?,
        email,
        mac: Mac::parse(&mac)?,
        started_at: from_millis(r.get(3)),
        expires_at: from_millis(r.get(4)),
    })
}

fn rotation_row(r: &Row) -> Option<RotationRecord> {
    let (tag, master, email, mac): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
    Some(RotationRecord {
        tag: TokenTag::parse(&tag)?,
        master: MasterToken::parse(&master)?,
        email,
        mac: Mac::parse(&mac)?,
        started_at: from_millis(r.get(4)),
        rotated_at: from_millis(r.get(5)),
    })
}

fn passcode<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    key: &PasscodeKey,
) -> Result<Option<PasscodeRecord>, postgres::Error> {
    let sql = "SELECT phone, code, expires_at, attempts FROM passcodes WHERE email = $1 AND mac = $2 AND ip = $3";
    passcode_row(c, s, key, sql)
}

/// The passcode, its row locked until the transaction ends (an
/// expectation).
fn passcode_for_update<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    key: &PasscodeKey,
) -> Result<Option<PasscodeRecord>, postgres::Error> {
    let sql = "SELECT phone, code, expires_at, attempts FROM passcodes
               WHERE email = $1 AND mac = $2 AND ip = $3 FOR UPDATE";
    passcode_row(c, s, key, sql)
}

fn passcode_row<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    key: &PasscodeKey,
    sql: &'static str,
) -> Result<Option<PasscodeRecord>, postgres::Error> {
    let sql = prepared(c, s, sql)?;
    let row = c.query_opt(&sql, &[&key.email, &key.mac.to_string(), &key.ip.to_string()])?;
    Ok(row.map(|r| PasscodeRecord {
        key: key.clone(),
        phone: r.get(0),
        code: StoredPasscode::from_column(r.get(1)),
        expires_at: from_millis(r.get(2)),
        attempts: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
    }))
}

fn counter<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    key: &CounterKey,
) -> Result<Option<Counter>, postgres::Error> {
    let sql = prepared(c, s, "SELECT since, count, last FROM counters WHERE key = $1")?;
    Ok(c.query_opt(&sql, &[&counter_key(key)])?.map(|r| Counter {
        since: from_millis(r.get(0)),
        count: u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
        last: from_millis(r.get(2)),
    }))
}

fn write_passcodes<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    batch: &PasscodesBatch,
) -> Result<Commit, postgres::Error> {
    if let Some(expect) = &batch.expect {
        let holds = passcode_for_update(c, s, &expect.key)?
            .is_some_and(|r| r.code == expect.code && expect.attempts_below.is_none_or(|below| r.attempts < below));
        if !holds {
            return Ok(Commit::Conflict);
        }
    }
    for op in &batch.ops {
        match op {
            PasscodesOp::Put(record) => {
                let sql = prepared(
                    c,
                    s,
                    "INSERT INTO passcodes (email, mac, ip, phone, code, expires_at, attempts)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (email, mac, ip) DO UPDATE SET phone = excluded.phone, code = excluded.code,
                         expires_at = excluded.expires_at, attempts = excluded.attempts",
                )?;
                c.execute(
                    &sql,
                    &[
                        &record.key.email,
                        &record.key.mac.to_string(),
                        &record.key.ip.to_string(),
                        &record.phone,
                        &record.code.to_column(),
                        &millis(record.expires_at),
                        &i64::from(record.attempts),
                    ],
                )?;
            }
            PasscodesOp::Delete(key) => {
                let sql = prepared(c, s, "DELETE FROM passcodes WHERE email = $1 AND mac = $2 AND ip = $3")?;
                c.execute(&sql, &[&key.email, &key.mac.to_string(), &key.ip.to_string()])?;
            }
            PasscodesOp::CountGuess(key) => {
                let sql = prepared(
                    c,
                    s,
                    "UPDATE passcodes SET attempts = attempts + 1 WHERE email = $1 AND mac = $2 AND ip = $3",
                )?;
                c.execute(&sql, &[&key.email, &key.mac.to_string(), &key.ip.to_string()])?;
            }
            PasscodesOp::Reserve(reservation) => {
                if !reserve(c, s, reservation)? {
                    // The savepoint is rolled back: nothing of the batch stays.
                    return Ok(Commit::Conflict);
                }
            }
            PasscodesOp::Refund(refund) => {
                // The rule of `Refund::apply`: only the count the place was taken in.
                let sql = match refund.place {
                    Place::Window(_) => {
                        "UPDATE counters SET count = count - 1 WHERE key = $1 AND count > 0 AND since = $2"
                    }
                    Place::Streak(_) => {
                        "UPDATE counters SET count = count - 1 WHERE key = $1 AND count > 0 AND since <= $2"
                    }
                };
                let (Place::Window(at) | Place::Streak(at)) = refund.place;
                let sql = prepared(c, s, sql)?;
                c.execute(&sql, &[&counter_key(&refund.key), &millis(at)])?;
            }
            PasscodesOp::Reset(key) => {
                let sql = prepared(c, s, "DELETE FROM counters WHERE key = $1")?;
                c.execute(&sql, &[&counter_key(key)])?;
            }
        }
    }
    Ok(Commit::Applied)
}

/// Counts one event on a counter if its bound allows: the bound checked
/// and the count raised by one statement (the rule of
/// `Reservation::apply`). Returns whether it was counted.
fn reserve<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    reservation: &Reservation,
) -> Result<bool, postgres::Error> {
    let key = counter_key(&reservation.key);
    let at = millis(reservation.at);
    let changed = match reservation.bound {
        Bound::Window { since, max } => {
            let sql = prepared(
                c,
                s,
                "INSERT INTO counters (key, since, count, last) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN counters.since < excluded.since THEN 1 ELSE counters.count + 1 END,
                     since = GREATEST(counters.since, excluded.since),
                     last = excluded.last
                 WHERE counters.since < excluded.since OR counters.count < $4",
            )?;
            c.execute(&sql, &[&key, &millis(since), &at, &i64::from(max)])?
        }
        Bound::Streak { max, lockout } => {
            let sql = prepared(
                c,
                s,
                "INSERT INTO counters (key, since, count, last) VALUES ($1, $2, 1, $2)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN counters.count < $3 THEN counters.count + 1 ELSE 1 END,
                     since = CASE WHEN counters.count < $3 THEN counters.since ELSE excluded.since END,
                     last = excluded.last
                 WHERE counters.count < $3 OR counters.last + $4 <= excluded.last",
            )?;
            c.execute(&sql, &[&key, &at, &i64::from(max), &lockout.num_milliseconds()])?
        }
    };
    Ok(changed == 1)
}

fn write_creds<C: GenericClient>(c: &mut C, s: &mut Statements, batch: &CredsBatch) -> Result<Commit, postgres::Error> {
    let holds = match &batch.expect {
        None => true,
        Some(CredsExpectation::Session { master, expires_at }) => {
            let sql = prepared(c, s, "SELECT expires_at FROM sessions WHERE master = $1 FOR UPDATE")?;
            c.query_opt(&sql, &[&master.to_hex()])?.is_some_and(|r| r.get::<_, i64>(0) == millis(*expires_at))
        }
        Some(CredsExpectation::Password { email, password }) => {
            let sql = prepared(c, s, "SELECT password FROM accounts WHERE email = $1 FOR UPDATE")?;
            c.query_opt(&sql, &[email])?.is_some_and(|r| PasswordHash::from_column(r.get(0)) == *password)
        }
    };
    if !holds {
        return Ok(Commit::Conflict);
    }
    for op in &batch.ops {
        match op {
            CredsOp::PutSession(session) => {
                let sql = prepared(
                    c,
                    s,
                    "INSERT INTO sessions (master, email, mac, started_at, expires_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (master) DO UPDATE SET email = excluded.email, mac = excluded.mac,
                         started_at = excluded.started_at, expires_at = excluded.expires_at",
                )?;
                c.execute(
                    &sql,
                    &[
                        &session.master.to_hex(),
                        &session.email,
                        &session.mac.to_string(),
                        &millis(session.started_at),
                        &millis(session.expires_at),
                    ],
                )?;
            }
            CredsOp::DeleteSession(master) => {
                let sql = prepared(c, s, "DELETE FROM sessions WHERE master = $1")?;
                c.execute(&sql, &[&master.to_hex()])?;
            }
            CredsOp::PutRotation(r) => {
                let sql = prepared(
                    c,
                    s,
                    "INSERT INTO rotations (tag, master, email, mac, started_at, rotated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tag) DO UPDATE SET master = excluded.master, email = excluded.email,
                         mac = excluded.mac, started_at = excluded.started_at, rotated_at = excluded.rotated_at",
                )?;
                let (tag, mac, started) = (r.tag.to_hex(), r.mac.to_string(), millis(r.started_at));
                c.execute(&sql, &[&tag, &r.master.to_hex(), &r.email, &mac, &started, &millis(r.rotated_at)])?;
                // The record just written stays; of the others, the newest.
                let sql = prepared(
                    c,
                    s,
                    "DELETE FROM rotations WHERE email = $1 AND mac = $2 AND started_at = $3 AND tag <> $4
                         AND tag NOT IN (SELECT tag FROM rotations
                             WHERE email = $1 AND mac = $2 AND started_at = $3 AND tag <> $4
                             ORDER BY rotated_at DESC, tag DESC LIMIT $5)",
                )?;
                c.execute(&sql, &[&r.email, &mac, &started, &tag, &((REUSE_HISTORY - 1) as i64)])?;
            }
            CredsOp::RevokeSession { email, mac, started_at } => {
                let (mac, started_at) = (mac.to_string(), millis(*started_at));
                for sql in [
                    "DELETE FROM sessions WHERE email = $1 AND mac = $2 AND started_at = $3",
                    "DELETE FROM rotations WHERE email = $1 AND mac = $2 AND started_at = $3",
                ] {
                    let sql = prepared(c, s, sql)?;
                    c.execute(&sql, &[email, &mac, &started_at])?;
                }
            }
            CredsOp::SetPassword { email, password } => {
                let sql = prepared(c, s, "UPDATE accounts SET password = $2 WHERE email = $1")?;
                c.execute(&sql, &[email, &password.as_column()])?;
            }
        }
    }
    Ok(Commit::Applied)
}
