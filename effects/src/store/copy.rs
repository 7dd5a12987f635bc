//! `store copy --from DIR --to URL`: the records of a data folder's SQLite
//! files, copied into a PostgreSQL database (docs/STORES.md, "Moving to
//! PostgreSQL"): accounts, sessions with their rotation records, the
//! passcodes still live, and the brute-force counters.
//!
//! The copy is one transaction: all of it lands or none. A record already
//! in the database is left as it is and counted as there, so a second run
//! copies nothing and says so; then every source record is read back from
//! the database and compared, so the report says whether the database
//! holds the source as it was.

use chrono::{DateTime, Utc};
use postgres::GenericClient;
use tokenizer_auth_engine::{Counter, Mac, MasterToken, PasscodeKey, PasscodeRecord, PasswordHash, StoredPasscode};
use tokenizer_auth_engine::{Lookup, RotationRecord, SessionRecord, Snapshot, TokenTag, UserRecord};

use super::columns::{from_millis, millis, parse_time_text};
use super::{PgStore, SqliteStore, StoreError};

/// Everything a copy moves.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Records {
    /// Accounts.
    pub users: Vec<UserRecord>,
    /// Sessions.
    pub sessions: Vec<SessionRecord>,
    /// Rotation records of the sessions.
    pub rotations: Vec<RotationRecord>,
    /// Passcodes not yet expired.
    pub passcodes: Vec<PasscodeRecord>,
    /// Counters, by their stored key.
    pub counters: Vec<(String, Counter)>,
}

/// What a copy did, per kind of record: (copied, already there).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Copied {
    /// Accounts.
    pub users: (u64, u64),
    /// Sessions.
    pub sessions: (u64, u64),
    /// Rotation records.
    pub rotations: (u64, u64),
    /// Passcodes.
    pub passcodes: (u64, u64),
    /// Counters.
    pub counters: (u64, u64),
    /// Source records the database does not hold as they are (a record
    /// already there that differs, say): 0 when the copy is whole.
    pub differing: u64,
}

impl SqliteStore {
    /// Every record a copy moves, passcodes live at `now` only.
    pub fn export(&self, now: DateTime<Utc>) -> Result<Records, StoreError> {
        let mut records = Records::default();
        let mut users = self.creds.prepare("SELECT email, phone, password FROM op_creds WHERE email IS NOT NULL")?;
        for row in users.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
        })? {
            let (email, phone, password) = row?;
            // The first row of an email is its account, as for a login.
            if records.users.iter().all(|u| u.email != email) {
                let password = PasswordHash::from_column(password.as_deref().unwrap_or_default());
                records.users.push(UserRecord { email, phone: phone.unwrap_or_default(), password });
            }
        }
        let mut sessions = self.creds.prepare("SELECT master, email, mac, started_at, expires_at FROM sessions")?;
        for row in sessions.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?, r.get(4)?))
        })? {
            let (master, email, mac, started, expires) = row?;
            if let (Some(master), Some(mac)) = (MasterToken::parse(&master), Mac::parse(&mac)) {
                let (started_at, expires_at) = (from_millis(started), from_millis(expires));
                records.sessions.push(SessionRecord { master, email, mac, started_at, expires_at });
            }
        }
        let mut rotations =
            self.creds.prepare("SELECT tag, master, email, mac, started_at, rotated_at FROM rotations")?;
        for row in rotations.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })? {
            let (tag, master, email, mac, started, rotated) = row?;
            if let (Some(tag), Some(master), Some(mac)) =
                (TokenTag::parse(&tag), MasterToken::parse(&master), Mac::parse(&mac))
            {
                let (started_at, rotated_at) = (from_millis(started), from_millis(rotated));
                records.rotations.push(RotationRecord { tag, master, email, mac, started_at, rotated_at });
            }
        }
        let mut passcodes =
            self.passcodes.prepare("SELECT email, mac, ip, phone, passcode, expiry, attempts FROM passcode_table")?;
        for row in passcodes.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })? {
            let (Some(email), Some(mac), Some(ip), phone, Some(code), Some(expiry), attempts) = row? else { continue };
            let (Some(mac), Ok(ip), Some(expires_at)) = (Mac::parse(&mac), ip.parse(), parse_time_text(&expiry)) else {
                continue;
            };
            if expires_at > now {
                // PostgreSQL keeps milliseconds, as the rest of the store.
                let expires_at = from_millis(millis(expires_at));
                records.passcodes.push(PasscodeRecord {
                    key: PasscodeKey { email, mac, ip },
                    phone: phone.unwrap_or_default(),
                    code: StoredPasscode::from_column(&code),
                    expires_at,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                });
            }
        }
        let mut counters = self.passcodes.prepare("SELECT key, since, count, last FROM counters")?;
        for row in
            counters.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?, r.get(3)?)))?
        {
            let (key, since, count, last) = row?;
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            records.counters.push((key, Counter { since: from_millis(since), count, last: from_millis(last) }));
        }
        Ok(records)
    }
}

/// Inserts unless the key is there; returns (inserted, already there).
fn insert<C: GenericClient>(
    c: &mut C,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<(u64, u64), postgres::Error> {
    let n = c.execute(sql, params)?;
    Ok((n, 1 - n.min(1)))
}

fn add(total: &mut (u64, u64), one: (u64, u64)) {
    total.0 += one.0;
    total.1 += one.1;
}

impl PgStore {
    /// Copies `records` in, in one transaction, leaving records already
    /// there as they are; then reads every one back and counts those the
    /// database does not hold as given.
    pub fn import(&mut self, records: &Records) -> Result<Copied, StoreError> {
        let mut copied = Copied::default();
        let mut conn = self.conn()?;
        let mut tx = conn.client.transaction()?;
        for u in &records.users {
            let sql = "INSERT INTO accounts (email, phone, password) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
            add(&mut copied.users, insert(&mut tx, sql, &[&u.email, &u.phone, &u.password.as_column()])?);
        }
        for s in &records.sessions {
            let sql = "INSERT INTO sessions (master, email, mac, started_at, expires_at) VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT DO NOTHING";
            let params: [&(dyn postgres::types::ToSql + Sync); 5] =
                [&s.master.to_hex(), &s.email, &s.mac.to_string(), &millis(s.started_at), &millis(s.expires_at)];
            add(&mut copied.sessions, insert(&mut tx, sql, &params)?);
        }
        for r in &records.rotations {
            let sql = "INSERT INTO rotations (tag, master, email, mac, started_at, rotated_at)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
            let params: [&(dyn postgres::types::ToSql + Sync); 6] = [
                &r.tag.to_hex(),
                &r.master.to_hex(),
                &r.email,
                &r.mac.to_string(),
                &millis(r.started_at),
                &millis(r.rotated_at),
            ];
            add(&mut copied.rotations, insert(&mut tx, sql, &params)?);
        }
        for p in &records.passcodes {
            let sql = "INSERT INTO passcodes (email, mac, ip, phone, code, expires_at, attempts)
                       VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
            let params: [&(dyn postgres::types::ToSql + Sync); 7] = [
                &p.key.email,
                &p.key.mac.to_string(),
                &p.key.ip.to_string(),
                &p.phone,
                &p.code.to_column(),
                &millis(p.expires_at),
                &i64::from(p.attempts),
            ];
            add(&mut copied.passcodes, insert(&mut tx, sql, &params)?);
        }
        for (key, c) in &records.counters {
            let sql = "INSERT INTO counters (key, since, count, last) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
            let params: [&(dyn postgres::types::ToSql + Sync); 4] =
                [key, &millis(c.since), &i64::from(c.count), &millis(c.last)];
            add(&mut copied.counters, insert(&mut tx, sql, &params)?);
        }
        tx.commit()?;
        // Back to the pool: the reads back take connections of their own.
        drop(conn);
        copied.differing = self.differing(records)?;
        Ok(copied)
    }

    /// How many of `records` the database does not hold as they are, read
    /// back a thousand lookups to a transaction.
    fn differing(&mut self, records: &Records) -> Result<u64, StoreError> {
        let mut differing = self.count_differing(
            &records.users,
            |u| Lookup { user: Some(u.email.clone()), ..Default::default() },
            |s, u| s.user.as_ref() == Some(u),
        )?;
        differing += self.count_differing(
            &records.sessions,
            |x| Lookup { session: Some(x.master), ..Default::default() },
            |s, x| s.session.as_ref() == Some(x),
        )?;
        differing += self.count_differing(
            &records.rotations,
            |r| Lookup { rotation: Some(r.tag), ..Default::default() },
            |s, r| s.rotation.as_ref() == Some(r),
        )?;
        differing += self.count_differing(
            &records.passcodes,
            |p| Lookup { passcode: Some(p.key.clone()), ..Default::default() },
            |s, p| s.passcode.as_ref() == Some(p),
        )?;
        for (key, c) in &records.counters {
            let stored =
                self.conn()?.client.query_opt("SELECT since, count, last FROM counters WHERE key = $1", &[key])?;
            let same = stored.is_some_and(|r| {
                (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))
                    == (millis(c.since), i64::from(c.count), millis(c.last))
            });
            differing += u64::from(!same);
        }
        Ok(differing)
    }

    /// How many of `items` the snapshot of their lookup does not hold.
    fn count_differing<T>(
        &mut self,
        items: &[T],
        lookup: impl Fn(&T) -> Lookup,
        holds: impl Fn(&Snapshot, &T) -> bool,
    ) -> Result<u64, StoreError> {
        let mut differing = 0;
        for chunk in items.chunks(1000) {
            let lookups: Vec<Lookup> = chunk.iter().map(&lookup).collect();
            for (item, snapshot) in chunk.iter().zip(self.read_many(&lookups)) {
                differing += u64::from(!holds(&snapshot?, item));
            }
        }
        Ok(differing)
    }
}
