//! The SQLite store: the engine's reads and write batches against the two
//! files of the old server, in the data folder (`docs/PROTOCOL.md`, "Files
//! from the old server").
//!
//! - `op_creds.db`: accounts in the old `op_creds` table, sessions in
//!   `sessions`, rotated-away tokens in `rotations`.
//! - `op_passcodes.db`: passcodes in the old `passcode_table`, brute-force
//!   counters in `counters`.
//!
//! Both files are in WAL mode with `synchronous = FULL`, so a batch reported
//! committed has been synced to the disk before it is reported. What the
//! tests show is survival of the process's death (`tests/tests/crash.rs`
//! kills the server with SIGKILL at random moments); a crash of the machine
//! or a power loss is left to SQLite's own guarantee for a synced WAL and is
//! not tested here. Every batch
//! runs inside a `BEGIN IMMEDIATE` transaction on one file, and its
//! expectation is checked inside that transaction: two processes (or
//! threads, each with its own `SqliteStore`) can never both consume one
//! passcode or both rotate one token. A server's stores may share a
//! [`SessionCache`], which answers session lookups from memory for as long
//! as it provably matches the file (see `cache`); everything else is read
//! from the file.
//!
//! Work comes in groups, so that one lock and one `fsync` serve many
//! requests: [`SqliteStore::read_many`] answers lookups from one read
//! transaction (one consistent snapshot), and [`SqliteStore::write_group`]
//! commits batches in one transaction, each batch inside its own savepoint,
//! so a batch whose expectation fails (or whose statement fails) is undone
//! alone while the rest commit together. The files are memory-mapped for
//! reading, so a lookup reads the OS page cache in place instead of copying
//! pages into each connection's own cache.

mod admin;
mod any;
mod backup;
mod bulk;
mod cache;
mod columns;
mod copy;
mod counters;
mod listen;
mod notified;
mod postgres;
mod schema;
mod sessions;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokenizer_auth_engine::{
    Bound, Counter, CounterKey, CredsBatch, CredsExpectation, CredsOp, Lookup, Mac, MasterToken, PasscodeKey,
    PasscodeRecord, PasscodesBatch, PasscodesOp, PasswordHash, Place, REUSE_HISTORY, Reservation, RotationRecord,
    SessionRecord, Snapshot, StoredPasscode, TokenTag, UserRecord, WriteBatch,
};

pub use admin::{AdminError, SessionSummary, UserSummary};
pub use any::{Cache, Store, StoreLocation, redact};
pub use backup::snapshot;
pub use cache::SessionCache;
use cache::View;
use columns::{counter_key, from_millis, millis, parse_time_text, time_text};
pub use copy::{Copied, Records};
pub use listen::{LISTENER_NAME, Listener};
pub use notified::NotifiedCache;
pub use postgres::{DEFAULT_CONNECTIONS, PgStore, bulk_failures};

/// The credentials file's name in the data folder.
pub const CREDS_FILE: &str = "op_creds.db";
/// The passcodes file's name in the data folder.
pub const PASSCODES_FILE: &str = "op_passcodes.db";

/// How long a statement waits for another writer before the store reports
/// itself unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of each file is memory-mapped for reading (SQLite maps no more
/// than the file holds). Mapped pages are the OS page cache itself, shared
/// by every connection and process, so this costs address space, not
/// memory.
const MMAP_SIZE: u64 = 1 << 30;

/// A store failure: the files could not be opened, read or written. The
/// engine sees any of them as a failed effect (a retryable
/// `store_unavailable` for the client); the kinds are for the log and for
/// the commands, which say which file and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data folder could not be created or made private.
    #[error("cannot {action} data folder {}: {source}", dir.display())]
    DataDir {
        /// "create" or "tighten the permissions of".
        action: &'static str,
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A database file could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A database file could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// A backup copy failed its check.
    #[error("backup {}: {why}", path.display())]
    Backup {
        /// The copy.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The file system does not support SQLite's write-ahead log.
    #[error("{} cannot use WAL mode (got {mode})", path.display())]
    NoWal {
        /// The file.
        path: PathBuf,
        /// The journal mode SQLite chose instead.
        mode: String,
    },
    /// A schema migration failed (nothing of it was committed).
    #[error("cannot migrate {file}: {source}")]
    Migrate {
        /// The file's name.
        file: &'static str,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The OS gave no randomness for a salt.
    #[error("no OS randomness: {0}")]
    NoRandomness(getrandom::Error),
    /// A statement failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL database failed (or could not be reached).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The database belongs to servers with another server key.
    #[error(
        "the database was set up with another server key (fingerprint {theirs}; this server's is {ours}): every \
         server on one database needs the same server_key"
    )]
    OtherKey {
        /// This server's key's fingerprint.
        ours: String,
        /// The one the database holds.
        theirs: String,
    },
    /// A group's transaction failed after its batches were applied, so
    /// none of them is durable.
    #[error("commit failed: {0}")]
    Commit(String),
    /// SQLite rolled the group's transaction back on its own (a full disk,
    /// say) before this batch ran.
    #[error("the transaction was rolled back")]
    RolledBack,
    /// A batch of a group got no outcome. Never expected: it fails that
    /// batch rather than the server.
    #[error("no outcome for a batch")]
    NoOutcome,
}

/// Whether a batch was applied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Commit {
    /// Committed and durable.
    Applied,
    /// The expectation did not hold; nothing was written.
    Conflict,
}

/// Open connections to both files. One per thread: a `SqliteStore` is not
/// shared.
pub struct SqliteStore {
    creds: Connection,
    passcodes: Connection,
    dir: PathBuf,
    cache: Option<Arc<SessionCache>>,
}

fn open_file(path: &Path) -> Result<Connection, StoreError> {
    // Created 0600 before SQLite creates it 0644; the WAL and shared-memory
    // files take its mode (docs/SECURITY.md, "Secrets at rest").
    crate::private::precreate_file(path).map_err(|source| StoreError::Create { path: path.to_owned(), source })?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal { path: path.to_owned(), mode });
    }
    // FULL: a commit is synced before it is reported to the engine (SQLite's
    // guarantee against power loss; the tests cover the process's death).
    // secure_delete: a legacy plaintext password overwritten by its hash is
    // zeroed in the file, not left in a free page.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA mmap_size = {MMAP_SIZE};"
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the data folder if needed (mode 0700: it holds password
/// hashes), or tightens one that others can read (see `private`).
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    let action = if dir.is_dir() { "tighten the permissions of" } else { "create" };
    crate::private::tighten_data_dir(dir).map_err(|source| StoreError::DataDir { action, dir: dir.to_owned(), source })
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the two files in `dir`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        ensure_dir(dir)?;
        let mut creds = open_file(&dir.join(CREDS_FILE))?;
        schema::migrate_creds(&mut creds).map_err(|source| StoreError::Migrate { file: CREDS_FILE, source })?;
        let mut passcodes = open_file(&dir.join(PASSCODES_FILE))?;
        schema::migrate_passcodes(&mut passcodes)
            .map_err(|source| StoreError::Migrate { file: PASSCODES_FILE, source })?;
        let store = SqliteStore { creds, passcodes, dir: dir.to_owned(), cache: None };
        // Migrations may have sealed or replaced secrets: fold the WAL into
        // the main files now, so no old page with a plaintext lingers.
        store.checkpoint()?;
        Ok(store)
    }

    /// Another pair of connections to files that [`SqliteStore::open`]
    /// already brought to the current version in this process: no
    /// migration and no checkpoint, which a server's workers would
    /// otherwise each repeat at start.
    pub(crate) fn attach(&self) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            creds: open_file(&self.dir.join(CREDS_FILE))?,
            passcodes: open_file(&self.dir.join(PASSCODES_FILE))?,
            dir: self.dir.clone(),
            cache: self.cache.clone(),
        })
    }

    /// Shares `cache` for session lookups, with every other store that
    /// shares it (all of them in one process, one file).
    pub fn with_cache(mut self, cache: Arc<SessionCache>) -> SqliteStore {
        self.cache = Some(cache);
        self
    }

    /// Folds both WAL files into their main files and truncates them.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        for conn in [&self.creds, &self.passcodes] {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    /// Whether both files answer a read (readiness, for the admin
    /// listener).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.creds.query_row("SELECT count(*) FROM sessions WHERE 0", [], |_| Ok(()))?;
        self.passcodes.query_row("SELECT count(*) FROM passcode_table WHERE 0", [], |_| Ok(()))?;
        Ok(())
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Answers an engine lookup.
    pub fn read(&self, lookup: &Lookup) -> Result<Snapshot, StoreError> {
        self.read_in(lookup, View::Bypass, None)
    }

    /// `cached`: the lookup's session as the cache had it, if it did.
    fn read_in(&self, lookup: &Lookup, view: View, cached: Option<SessionRecord>) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        if let Some(email) = &lookup.user {
            snapshot.user = self.user(email)?;
        }
        if let Some(key) = &lookup.passcode {
            snapshot.passcode = passcode(&self.passcodes, key)?;
        }
        if let Some(master) = &lookup.session {
            snapshot.session = match (cached, view, &self.cache) {
                (Some(hit), _, _) => Some(hit),
                (None, View::Valid(epoch), Some(cache)) => {
                    let read = self.session(master)?;
                    if let Some(session) = &read {
                        cache.fill(epoch, session);
                    }
                    read
                }
                _ => self.session(master)?,
            };
        }
        if let Some(tag) = &lookup.rotation {
            snapshot.rotation = self.rotation(tag)?;
        }
        for key in &lookup.counters {
            if let Some(counter) = counter(&self.passcodes, key)? {
                snapshot.counters.push((key.clone(), counter));
            }
        }
        Ok(snapshot)
    }

    /// Answers lookups from one read transaction per file: one snapshot,
    /// and one lock taken and released for the lot instead of one per
    /// statement. Results come in the lookups' order.
    pub fn read_many<'a>(&self, lookups: impl IntoIterator<Item = &'a Lookup>) -> Vec<Result<Snapshot, StoreError>> {
        // A deferred BEGIN takes no lock until a statement reads the file;
        // if it fails, each lookup runs in a transaction of its own.
        let began: Vec<&Connection> = [&self.creds, &self.passcodes].into_iter().filter(|c| run(c, "BEGIN")).collect();
        // The cache is used only when the counter and the sessions are read
        // in the same transaction (the same snapshot).
        let lookups: Vec<&Lookup> = lookups.into_iter().collect();
        // One lock for the batch's view and hits.
        let (view, hits) = match &self.cache {
            Some(cache) if !self.creds.is_autocommit() => {
                cache.view(session_epoch(&self.creds), lookups.iter().map(|l| l.session.as_ref()))
            }
            _ => (View::Bypass, Vec::new()),
        };
        if let Some(cache) = &self.cache {
            let asked = lookups.iter().filter(|l| l.session.is_some()).count();
            cache.looked_up(asked, hits.iter().filter(|h| h.is_some()).count());
        }
        let mut hits = hits.into_iter();
        let results = lookups.iter().map(|lookup| self.read_in(lookup, view, hits.next().flatten())).collect();
        for conn in began {
            // Nothing was written: ending the transaction only drops the
            // read lock.
            if !conn.is_autocommit() {
                run(conn, "ROLLBACK");
            }
        }
        results
    }

    /// The sessions among `masters` that the cache holds and provably
    /// matches the file for, now; `None` for every other (not cached, or
    /// no cache, or the file changed under it): a reader reads those. The
    /// event loop answers token checks with this, so it reads only the
    /// counter from the file, in a transaction of its own that never waits
    /// on a lock (see [`Store::for_event_loop`]).
    pub fn cached_sessions(&self, masters: &[MasterToken]) -> Vec<Option<SessionRecord>> {
        let Some(cache) = &self.cache else { return vec![None; masters.len()] };
        let counter = if run(&self.creds, "BEGIN") {
            let counter = session_epoch(&self.creds);
            run(&self.creds, "ROLLBACK");
            counter
        } else {
            None
        };
        let (_, hits) = cache.view(counter, masters.iter().map(Some));
        let found = hits.iter().filter(|h| h.is_some()).count();
        // Only the hits are counted here: the rest are counted by the
        // reader that reads them.
        cache.looked_up(found, found);
        let mut hits = hits.into_iter();
        masters.iter().map(|_| hits.next().flatten()).collect()
    }

    /// Connections for a server's writer, whose groups are of small
    /// batches: the savepoint of every batch keeps the pages it changes in
    /// a statement journal, kept in memory here (`temp_store = MEMORY`)
    /// rather than spilled to a temporary file that the writer would write
    /// page by page (most of a renewal's cost was that file). Not for every
    /// connection: an in-memory statement journal is walked from its start
    /// at each statement's end, so a batch of thousands of changes (a seed,
    /// a copy) would take time that grows with its square.
    pub(crate) fn for_writer(self) -> Result<SqliteStore, StoreError> {
        for conn in [&self.creds, &self.passcodes] {
            conn.execute_batch("PRAGMA temp_store = MEMORY;")?;
        }
        Ok(self)
    }

    /// Connections for the event loop's [`SqliteStore::cached_sessions`]:
    /// a statement that would wait for a lock fails at once instead (and
    /// its checks go to a reader), so the loop never sleeps in SQLite.
    pub(crate) fn for_event_loop(self) -> Result<SqliteStore, StoreError> {
        self.creds.busy_timeout(Duration::ZERO)?;
        self.passcodes.busy_timeout(Duration::ZERO)?;
        Ok(self)
    }

    /// Commits a batch, or nothing if its expectation does not hold.
    pub fn write(&mut self, batch: &WriteBatch) -> Result<Commit, StoreError> {
        self.write_group(&[batch]).pop().unwrap_or(Err(StoreError::NoOutcome))
    }

    /// Commits batches together: one transaction (one `fsync`) per file,
    /// each batch applied in order inside a savepoint of its own, its
    /// expectation checked after the batches before it. A batch that
    /// conflicts or fails is rolled back alone; the others commit. Results
    /// come in the batches' order, each only once its commit is durable.
    /// (The servers' writers, one per file, use [`Self::write_creds_group`]
    /// and [`Self::write_passcodes_group`], their batches already sorted.)
    pub fn write_group(&mut self, batches: &[&WriteBatch]) -> Vec<Result<Commit, StoreError>> {
        let mut results: Vec<Option<Result<Commit, StoreError>>> = batches.iter().map(|_| None).collect();
        let (mut creds, mut passcodes) = (Vec::new(), Vec::new());
        for (i, batch) in batches.iter().enumerate() {
            match batch {
                WriteBatch::Creds(b) => creds.push((i, b)),
                WriteBatch::Passcodes(b) => passcodes.push((i, b)),
            }
        }
        self.commit_passcodes(&passcodes, &mut results);
        self.commit_creds(&creds, &mut results);
        outcomes(results)
    }

    /// [`Self::write_group`] for batches of `op_creds.db` alone.
    pub fn write_creds_group(&mut self, batches: &[&CredsBatch]) -> Vec<Result<Commit, StoreError>> {
        let mut results = batches.iter().map(|_| None).collect::<Vec<_>>();
        self.commit_creds(&batches.iter().copied().enumerate().collect::<Vec<_>>(), &mut results);
        outcomes(results)
    }

    /// [`Self::write_group`] for batches of `op_passcodes.db` alone.
    pub fn write_passcodes_group(&mut self, batches: &[&PasscodesBatch]) -> Vec<Result<Commit, StoreError>> {
        let mut results = batches.iter().map(|_| None).collect::<Vec<_>>();
        self.commit_passcodes(&batches.iter().copied().enumerate().collect::<Vec<_>>(), &mut results);
        outcomes(results)
    }

    fn commit_creds(&mut self, items: &[(usize, &CredsBatch)], results: &mut [Option<Result<Commit, StoreError>>]) {
        let hook = self.cache.as_deref().map(|cache| (cache, (|b: &CredsBatch| b.ops.as_slice()) as SessionOps<_>));
        group_commit(&mut self.creds, items, write_creds, results, hook);
    }

    fn commit_passcodes(
        &mut self,
        items: &[(usize, &PasscodesBatch)],
        results: &mut [Option<Result<Commit, StoreError>>],
    ) {
        group_commit(&mut self.passcodes, items, write_passcodes, results, None);
    }

    fn user(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut stmt = self
            .creds
            .prepare_cached("SELECT phone, password FROM op_creds WHERE email = ?1 ORDER BY rowid LIMIT 1")?;
        let row = stmt
            .query_row([email], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))
            .optional()?;
        Ok(row.map(|(phone, password)| UserRecord {
            email: email.to_owned(),
            phone: phone.unwrap_or_default(),
            password: PasswordHash::from_column(password.as_deref().unwrap_or_default()),
        }))
    }

    fn session(&self, master: &MasterToken) -> Result<Option<SessionRecord>, StoreError> {
        let mut stmt = self
            .creds
            .prepare_cached("SELECT master, email, mac, started_at, expires_at FROM sessions WHERE master = ?1")?;
        Ok(stmt.query_row([master.to_hex()], session_row).optional()?.flatten())
    }

    fn rotation(&self, tag: &TokenTag) -> Result<Option<RotationRecord>, StoreError> {
        let mut stmt = self
            .creds
            .prepare_cached("SELECT tag, master, email, mac, started_at, rotated_at FROM rotations WHERE tag = ?1")?;
        Ok(stmt.query_row([tag.to_hex()], rotation_row).optional()?.flatten())
    }

    /// Loads sessions into the shared cache, up to its bound, from one read
    /// transaction, and returns how many it holds then. A server calls it
    /// once at start, in the background, so that the first checks after a
    /// restart already find their sessions in memory.
    pub fn warm_cache(&self) -> Result<usize, StoreError> {
        let Some(cache) = &self.cache else { return Ok(0) };
        self.creds.execute_batch("BEGIN")?;
        let scan = || -> Result<(), StoreError> {
            let (View::Valid(epoch), _) = cache.view(session_epoch(&self.creds), std::iter::empty()) else {
                return Ok(());
            };
            let mut stmt = self.creds.prepare("SELECT master, email, mac, started_at, expires_at FROM sessions")?;
            let mut rows = stmt.query([])?;
            let mut chunk = Vec::with_capacity(WARM_CHUNK);
            loop {
                let row = rows.next()?;
                if let Some(session) = row.map(session_row).transpose()?.flatten() {
                    chunk.push(session);
                }
                if chunk.len() == WARM_CHUNK || row.is_none() {
                    // The lock is taken per chunk, so checks go on meanwhile.
                    if !cache.fill_many(epoch, &chunk) || row.is_none() {
                        return Ok(());
                    }
                    chunk.clear();
                }
            }
        };
        let outcome = scan();
        let _ = self.creds.execute_batch("ROLLBACK");
        outcome.map(|()| cache.len())
    }
}

/// How many sessions `warm_cache` adds under one lock.
const WARM_CHUNK: usize = 4096;

/// A `sessions` row (master, email, mac, started_at, expires_at); `None` if
/// it does not parse (written by hand, say): such a session is unknown.
fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<SessionRecord>> {
    let (master, email, mac) = (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?);
    let (started, expires) = (r.get::<_, i64>(3)?, r.get::<_, i64>(4)?);
    Ok(MasterToken::parse(&master).zip(Mac::parse(&mac)).map(|(master, mac)| SessionRecord {
        master,
        email,
        mac,
        started_at: from_millis(started),
        expires_at: from_millis(expires),
    }))
}

/// A `rotations` row; `None` if it does not parse.
fn rotation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<RotationRecord>> {
    let (tag, master, email, mac) =
        (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?);
    let (started, rotated) = (r.get::<_, i64>(4)?, r.get::<_, i64>(5)?);
    let (Some(tag), Some(master), Some(mac)) = (TokenTag::parse(&tag), MasterToken::parse(&master), Mac::parse(&mac))
    else {
        return Ok(None);
    };
    Ok(Some(RotationRecord {
        tag,
        master,
        email,
        mac,
        started_at: from_millis(started),
        rotated_at: from_millis(rotated),
    }))
}

/// The sessions writes of a batch, for the cache.
type SessionOps<B> = fn(&B) -> &[CredsOp];

/// The counter that every change to `sessions` bumps (migration 2); `None`
/// if it cannot be read, and then the cache is not used.
fn session_epoch(conn: &Connection) -> Option<i64> {
    conn.prepare_cached("SELECT n FROM session_epoch").and_then(|mut s| s.query_row([], |r| r.get(0))).ok()
}

/// Runs a statement without parameters or rows (`BEGIN`, `ROLLBACK`),
/// prepared once per connection: readers run these for every batch.
fn run(conn: &Connection, sql: &str) -> bool {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).is_ok()
}

/// Every slot filled by a group commit, in order.
fn outcomes(results: Vec<Option<Result<Commit, StoreError>>>) -> Vec<Result<Commit, StoreError>> {
    results.into_iter().map(|r| r.unwrap_or(Err(StoreError::NoOutcome))).collect()
}

/// One transaction for `items` (all on `conn`'s file); see
/// [`SqliteStore::write_group`]. With a cache, what commits is applied to
/// it too (see `cache`).
fn group_commit<B>(
    conn: &mut Connection,
    items: &[(usize, &B)],
    apply: fn(&Connection, &B) -> Result<Commit, StoreError>,
    results: &mut [Option<Result<Commit, StoreError>>],
    cache: Option<(&SessionCache, SessionOps<B>)>,
) {
    if items.is_empty() {
        return;
    }
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for (i, _) in items {
                results[*i] = Some(Err(StoreError::Commit(e.to_string())));
            }
            return;
        }
    };
    // Read under the write lock: nothing else commits until we do.
    let before = cache.and_then(|_| session_epoch(&tx));
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, batch) in items {
        if tx.is_autocommit() {
            // SQLite rolled the whole transaction back (a full disk, say):
            // a savepoint now would start and commit a transaction of its
            // own, outside the group.
            outcomes.push((*i, Err(StoreError::RolledBack)));
            continue;
        }
        let outcome = tx.savepoint().map_err(StoreError::from).and_then(|mut savepoint| {
            let commit = apply(&savepoint, batch);
            match commit {
                Ok(Commit::Applied) => savepoint.commit()?,
                // Undo what the batch did before it failed or conflicted.
                Ok(Commit::Conflict) | Err(_) => savepoint.rollback()?,
            }
            commit
        });
        outcomes.push((*i, outcome));
    }
    let after = cache.and_then(|_| session_epoch(&tx));
    if let Some((cache, _)) = cache {
        cache.committing();
    }
    let committed = tx.commit().map_err(|e| e.to_string());
    if let Some((cache, ops)) = cache {
        match (&committed, before, after) {
            (Ok(()), Some(before), Some(after)) => {
                let applied = items.iter().zip(&outcomes).filter(|(_, (_, o))| matches!(o, Ok(Commit::Applied)));
                cache.committed(before, after, applied.flat_map(|((_, batch), _)| ops(batch)));
            }
            _ => cache.unsure(),
        }
    }
    for (i, outcome) in outcomes {
        results[i] = Some(match (&committed, outcome) {
            // Nothing of the group is durable: no batch was applied.
            (Err(e), Ok(Commit::Applied)) => Err(StoreError::Commit(e.clone())),
            (_, outcome) => outcome,
        });
    }
}

fn passcode(conn: &Connection, key: &PasscodeKey) -> Result<Option<PasscodeRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT phone, passcode, expiry, attempts FROM passcode_table
         WHERE email = ?1 AND mac = ?2 AND ip = ?3 ORDER BY rowid DESC LIMIT 1",
    )?;
    let row = stmt
        .query_row(params![key.email, key.mac.to_string(), key.ip.to_string()], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    Ok(row.map(|(phone, code, expiry, attempts)| PasscodeRecord {
        key: key.clone(),
        phone: phone.unwrap_or_default(),
        code: StoredPasscode::from_column(code.as_deref().unwrap_or_default()),
        // A time that does not parse is taken as long expired.
        expires_at: expiry.as_deref().and_then(parse_time_text).unwrap_or(chrono::DateTime::UNIX_EPOCH),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
    }))
}

fn counter(conn: &Connection, key: &CounterKey) -> Result<Option<Counter>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT since, count, last FROM counters WHERE key = ?1")?;
    let row = stmt
        .query_row([counter_key(key)], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
        .optional()?;
    Ok(row.map(|(since, count, last)| Counter {
        since: from_millis(since),
        count: u32::try_from(count).unwrap_or(u32::MAX),
        last: from_millis(last),
    }))
}

fn write_passcodes(tx: &Connection, batch: &PasscodesBatch) -> Result<Commit, StoreError> {
    if let Some(expect) = &batch.expect {
        let holds = passcode(tx, &expect.key)?
            .is_some_and(|r| r.code == expect.code && expect.attempts_below.is_none_or(|below| r.attempts < below));
        if !holds {
            return Ok(Commit::Conflict);
        }
    }
    for op in &batch.ops {
        match op {
            PasscodesOp::Put(record) => {
                delete_passcode(tx, &record.key)?;
                tx.prepare_cached(
                    "INSERT INTO passcode_table (mac, ip, phone, email, passcode, expiry, attempts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    record.key.mac.to_string(),
                    record.key.ip.to_string(),
                    record.phone,
                    record.key.email,
                    record.code.to_column(),
                    time_text(record.expires_at),
                    record.attempts,
                ])?;
            }
            PasscodesOp::Delete(key) => delete_passcode(tx, key)?,
            PasscodesOp::CountGuess(key) => {
                tx.prepare_cached(
                    "UPDATE passcode_table SET attempts = attempts + 1 WHERE email = ?1 AND mac = ?2 AND ip = ?3",
                )?
                .execute(params![key.email, key.mac.to_string(), key.ip.to_string()])?;
            }
            PasscodesOp::Reserve(reservation) => {
                if !reserve(tx, reservation)? {
                    // The savepoint is rolled back: nothing of the batch stays.
                    return Ok(Commit::Conflict);
                }
            }
            PasscodesOp::Refund(refund) => {
                // The rule of `Refund::apply`: only the count the place was taken in.
                let sql = match refund.place {
                    Place::Window(_) => {
                        "UPDATE counters SET count = count - 1 WHERE key = ?1 AND count > 0 AND since = ?2"
                    }
                    Place::Streak(_) => {
                        "UPDATE counters SET count = count - 1 WHERE key = ?1 AND count > 0 AND since <= ?2"
                    }
                };
                let (Place::Window(at) | Place::Streak(at)) = refund.place;
                tx.prepare_cached(sql)?.execute(params![counter_key(&refund.key), millis(at)])?;
            }
            PasscodesOp::Reset(key) => {
                tx.prepare_cached("DELETE FROM counters WHERE key = ?1")?.execute([counter_key(key)])?;
            }
        }
    }
    Ok(Commit::Applied)
}

/// Counts one event on a counter if its bound allows, as one conditional
/// increment in the write transaction (the same rule as
/// `Reservation::apply`): the bound is checked and the count raised by the
/// same statement, so concurrent writers can never both take the last
/// place. Returns whether it was counted.
fn reserve(tx: &Connection, reservation: &Reservation) -> Result<bool, StoreError> {
    let key = counter_key(&reservation.key);
    let at = millis(reservation.at);
    let changed = match reservation.bound {
        Bound::Window { since, max } => tx
            .prepare_cached(
                "INSERT INTO counters (key, since, count, last) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN counters.since < excluded.since THEN 1 ELSE counters.count + 1 END,
                     since = MAX(counters.since, excluded.since),
                     last = excluded.last
                 WHERE counters.since < excluded.since OR counters.count < ?4",
            )?
            .execute(params![key, millis(since), at, max])?,
        Bound::Streak { max, lockout } => tx
            .prepare_cached(
                "INSERT INTO counters (key, since, count, last) VALUES (?1, ?2, 1, ?2)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN counters.count < ?3 THEN counters.count + 1 ELSE 1 END,
                     since = CASE WHEN counters.count < ?3 THEN counters.since ELSE excluded.since END,
                     last = excluded.last
                 WHERE counters.count < ?3 OR counters.last + ?4 <= excluded.last",
            )?
            .execute(params![key, at, max, lockout.num_milliseconds()])?,
    };
    Ok(changed == 1)
}

fn delete_passcode(tx: &Connection, key: &PasscodeKey) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM passcode_table WHERE email = ?1 AND mac = ?2 AND ip = ?3")?.execute(params![
        key.email,
        key.mac.to_string(),
        key.ip.to_string()
    ])?;
    Ok(())
}

fn write_creds(tx: &Connection, batch: &CredsBatch) -> Result<Commit, StoreError> {
    let holds = match &batch.expect {
        None => true,
        Some(CredsExpectation::Session { master, expires_at }) => tx
            .prepare_cached("SELECT expires_at FROM sessions WHERE master = ?1")?
            .query_row([master.to_hex()], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some_and(|stored| stored == millis(*expires_at)),
        Some(CredsExpectation::Password { email, password }) => tx
            .prepare_cached("SELECT password FROM op_creds WHERE email = ?1 ORDER BY rowid LIMIT 1")?
            .query_row([email], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .is_some_and(|stored| PasswordHash::from_column(stored.as_deref().unwrap_or_default()) == *password),
    };
    if !holds {
        return Ok(Commit::Conflict);
    }
    for op in &batch.ops {
        match op {
            CredsOp::PutSession(s) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO sessions (master, email, mac, started_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    s.master.to_hex(),
                    s.email,
                    s.mac.to_string(),
                    millis(s.started_at),
                    millis(s.expires_at)
                ])?;
            }
            CredsOp::DeleteSession(master) => {
                tx.prepare_cached("DELETE FROM sessions WHERE master = ?1")?.execute([master.to_hex()])?;
            }
            CredsOp::PutRotation(r) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO rotations (tag, master, email, mac, started_at, rotated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    r.tag.to_hex(),
                    r.master.to_hex(),
                    r.email,
                    r.mac.to_string(),
                    millis(r.started_at),
                    millis(r.rotated_at)
                ])?;
                // The record just written stays; of the others, the newest.
                tx.prepare_cached(
                    "DELETE FROM rotations WHERE email = ?1 AND mac = ?2 AND started_at = ?3 AND tag != ?4
                         AND tag NOT IN (SELECT tag FROM rotations
                             WHERE email = ?1 AND mac = ?2 AND started_at = ?3 AND tag != ?4
                             ORDER BY rotated_at DESC, tag DESC LIMIT ?5)",
                )?
                .execute(params![
                    r.email,
                    r.mac.to_string(),
                    millis(r.started_at),
                    r.tag.to_hex(),
                    (REUSE_HISTORY - 1) as i64
                ])?;
            }
            CredsOp::RevokeSession { email, mac, started_at } => {
                let (mac, started_at) = (mac.to_string(), millis(*started_at));
                for table in ["sessions", "rotations"] {
                    tx.prepare_cached(&format!(
                        "DELETE FROM {table} WHERE email = ?1 AND mac = ?2 AND started_at = ?3"
                    ))?
                    .execute(params![email, mac, started_at])?;
                }
            }
            CredsOp::SetPassword { email, password } => {
                tx.prepare_cached("UPDATE op_creds SET password = ?2 WHERE email = ?1")?
                    .execute(params![email, password.as_column()])?;
            }
        }
    }
    Ok(Commit::Applied)
}
