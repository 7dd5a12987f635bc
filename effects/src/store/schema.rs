//! Versioned migrations of the two files, by `PRAGMA user_version`.
//!
//! The old server's tables are created as it created them when a file is
//! new, and otherwise left as they are: migrations add tables, columns and
//! indexes, and never drop or rename a column of the seed.

use chrono::Utc;
use rusqlite::{Connection, params};
use tokenizer_auth_engine::{Mac, MasterToken, ServerKey, StoredPasscode};

use super::columns::{millis, parse_time_text};
use super::{SqliteStore, StoreError};

/// The old server's credentials table.
const OLD_CREDS: &str =
    "CREATE TABLE IF NOT EXISTS op_creds (mac TEXT, password TEXT, email TEXT, phone TEXT, token TEXT, expiry TEXT)";

/// The old server's passcode table.
const OLD_PASSCODES: &str =
    "CREATE TABLE IF NOT EXISTS passcode_table (mac TEXT, ip TEXT, phone TEXT, email TEXT, passcode TEXT, expiry TEXT)";

/// Brings `op_creds.db` to the current version.
pub(crate) fn migrate_creds(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(OLD_CREDS)?;
    migrate(conn, &[creds_v1, creds_v2, creds_v3])
}

/// Brings `op_passcodes.db` to the current version.
pub(crate) fn migrate_passcodes(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(OLD_PASSCODES)?;
    migrate(conn, &[passcodes_v1])
}

type Migration = fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>;

/// Runs the migrations past the file's version, each in its own
/// transaction together with its version bump.
fn migrate(conn: &mut Connection, migrations: &[Migration]) -> rusqlite::Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0);
    for (i, step) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        step(&tx)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// Sessions get a table of their own (a user may be logged in on several
/// devices), with the session's start for its absolute age. Sessions the
/// old server stored in `op_creds` are copied over; their start is unknown,
/// so it is taken as the time of the migration.
fn creds_v1(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS op_creds_email ON op_creds(email);
         CREATE INDEX IF NOT EXISTS op_creds_token ON op_creds(token);
         CREATE TABLE IF NOT EXISTS sessions (
             master TEXT PRIMARY KEY NOT NULL,
             email TEXT NOT NULL,
             mac TEXT NOT NULL,
             started_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS sessions_email ON sessions(email);",
    )?;
    let now = millis(Utc::now());
    let mut old = tx.prepare("SELECT token, email, mac, expiry FROM op_creds WHERE token IS NOT NULL")?;
    let mut insert = tx.prepare(
        "INSERT OR IGNORE INTO sessions (master, email, mac, started_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let rows = old.query_map([], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (Some(token), Some(email), Some(mac), Some(expiry)) = row? else { continue };
        let (Some(master), Some(mac), Some(expiry)) =
            (MasterToken::parse(&token), Mac::parse(&mac), parse_time_text(&expiry))
        else {
            continue;
        };
        insert.execute(params![master.to_hex(), email, mac.to_string(), now, millis(expiry)])?;
    }
    Ok(())
}

/// A counter that every change to `sessions` bumps, in the same
/// transaction, whatever program makes it: a server that keeps sessions in
/// memory trusts them only while the counter has not moved under it (see
/// `store::cache`).
fn creds_v2(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS session_epoch (n INTEGER NOT NULL);
         INSERT INTO session_epoch (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM session_epoch);
         CREATE TRIGGER IF NOT EXISTS sessions_inserted AFTER INSERT ON sessions
             BEGIN UPDATE session_epoch SET n = n + 1; END;
         CREATE TRIGGER IF NOT EXISTS sessions_updated AFTER UPDATE ON sessions
             BEGIN UPDATE session_epoch SET n = n + 1; END;
         CREATE TRIGGER IF NOT EXISTS sessions_deleted AFTER DELETE ON sessions
             BEGIN UPDATE session_epoch SET n = n + 1; END;",
    )
}

/// Rotated-away tokens get a table: each by its tag (a keyed digest of the
/// token, never the token), with the master token it had and its session,
/// so the renewal grace and reuse detection hold across restarts and
/// servers (docs/PROTOCOL.md, "Renewal").
fn creds_v3(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS rotations (
             tag TEXT PRIMARY KEY NOT NULL,
             master TEXT NOT NULL,
             email TEXT NOT NULL,
             mac TEXT NOT NULL,
             started_at INTEGER NOT NULL,
             rotated_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS rotations_session ON rotations(email, mac, started_at, rotated_at);",
    )
}

/// Passcodes count their failed guesses; counters get a table; MACs are
/// normalized so lookups by (email, MAC, IP) find rows the old server wrote;
/// plaintext passcodes are sealed into digests, so none stays at rest.
fn passcodes_v1(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    seal_plaintext_passcodes(tx)?;
    tx.execute_batch(
        "ALTER TABLE passcode_table ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
         UPDATE passcode_table SET mac = lower(replace(mac, '-', ':'));
         CREATE INDEX IF NOT EXISTS passcode_key ON passcode_table(email, mac, ip);
         CREATE TABLE IF NOT EXISTS counters (
             key TEXT PRIMARY KEY NOT NULL,
             since INTEGER NOT NULL,
             count INTEGER NOT NULL,
             last INTEGER NOT NULL
         );",
    )
}

fn seal_plaintext_passcodes(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let mut select = tx.prepare("SELECT rowid, passcode FROM passcode_table WHERE passcode IS NOT NULL")?;
    let rows: Vec<(i64, String)> =
        select.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE passcode_table SET passcode = ?2 WHERE rowid = ?1")?;
    for (rowid, text) in rows {
        let stored = StoredPasscode::from_column(&text);
        if let StoredPasscode::Plain(_) = stored {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            update.execute(params![rowid, stored.sealed(salt).to_column()])?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Keys every passcode digest that is not keyed yet under `key`: the
    /// unkeyed ones an earlier version wrote, and old plaintexts sealed at
    /// open (docs/SECURITY.md, "Secrets at rest"). A server does this at
    /// start, once it has its key, so that a copy of the file without the
    /// key reveals no live passcode. Returns how many rows it keyed.
    pub fn key_passcodes(&mut self, key: &ServerKey) -> Result<usize, StoreError> {
        let tx = self.passcodes.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, String)> = {
            let mut select = tx.prepare(
                "SELECT rowid, passcode FROM passcode_table WHERE passcode IS NOT NULL AND passcode NOT LIKE 'hmac-sha256$%'",
            )?;
            select.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
        };
        let mut keyed = 0;
        {
            let mut update = tx.prepare("UPDATE passcode_table SET passcode = ?2 WHERE rowid = ?1")?;
            for (rowid, text) in rows {
                let stored = StoredPasscode::from_column(&text);
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt).map_err(StoreError::NoRandomness)?;
                let sealed = stored.keyed(key, salt);
                if sealed != stored {
                    update.execute(params![rowid, sealed.to_column()])?;
                    keyed += 1;
                }
            }
        }
        tx.commit()?;
        if keyed > 0 {
            // Fold the WAL in, so no page with an unkeyed digest lingers.
            self.checkpoint()?;
        }
        Ok(keyed)
    }
}
