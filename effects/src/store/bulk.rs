//! A PostgreSQL group of session writes (renewals and logins, the bulk of
//! a busy server's writes) in a handful of statements instead of several
//! per batch: every statement is a round trip to the database, and a
//! group of 256 renewals one batch at a time is some 1,800 of them.
//!
//! A group qualifies when its batches only put and delete sessions and put
//! rotation records, expect at most a session's expiry, and touch disjoint
//! rows: no master token, and no login's rotation records, in two batches.
//! Then the order of the batches cannot change any outcome, and the group
//! runs as:
//!
//! 1. the expected sessions, read `FOR UPDATE` by one statement (in master
//!    order, so two servers' groups lock in the same order);
//! 2. the deletions of the batches whose expectation holds, in one
//!    statement; their sessions in another, their rotation records in a
//!    third (`UNNEST` of one array per column);
//! 3. each login's rotation records trimmed to the last
//!    [`REUSE_HISTORY`], the new one kept, in one statement.
//!
//! Each batch's outcome is what it would be alone: applied if its
//! expectation held, else a conflict that wrote nothing. A group that does
//! not qualify, or whose statements fail, runs batch by batch (see
//! `postgres`), which isolates a batch that fails.

use std::collections::{HashMap, HashSet};

use postgres::GenericClient;
use tokenizer_auth_engine::{CredsBatch, CredsExpectation, CredsOp, REUSE_HISTORY, RotationRecord, SessionRecord};

use super::Commit;
use super::columns::millis;
use super::postgres::{Statements, prepared};

/// A qualifying group's writes.
pub(super) struct Plan<'a> {
    batches: Vec<&'a CredsBatch>,
}

impl<'a> Plan<'a> {
    /// The plan for `batches`, if the group qualifies (see the module's
    /// docs).
    pub(super) fn of(batches: impl IntoIterator<Item = Option<&'a CredsBatch>>) -> Option<Plan<'a>> {
        let mut masters = HashSet::new();
        let mut logins = HashSet::new();
        let mut plan = Plan { batches: Vec::new() };
        for batch in batches {
            let batch = batch?;
            let mut own = HashSet::new();
            for op in &batch.ops {
                let master = match op {
                    CredsOp::PutSession(s) => s.master,
                    CredsOp::DeleteSession(m) => *m,
                    CredsOp::PutRotation(r) => {
                        if !logins.insert((r.email.as_str(), r.mac, millis(r.started_at))) {
                            return None;
                        }
                        continue;
                    }
                    CredsOp::RevokeSession { .. } | CredsOp::SetPassword { .. } => return None,
                };
                // A master put and deleted by one batch would depend on the
                // order of its ops.
                if !own.insert(master) || !masters.insert(master) {
                    return None;
                }
            }
            match &batch.expect {
                None => {}
                // Expected and deleted by the same batch (a renewal), or
                // touched by no other.
                Some(CredsExpectation::Session { master, .. }) if own.contains(master) || masters.insert(*master) => {}
                Some(_) => return None,
            }
            plan.batches.push(batch);
        }
        Some(plan)
    }

    /// Runs the plan inside the caller's transaction: each batch's outcome.
    pub(super) fn run<C: GenericClient>(&self, c: &mut C, s: &mut Statements) -> Result<Vec<Commit>, postgres::Error> {
        let holds = self.expectations(c, s)?;
        let applied = || self.batches.iter().zip(&holds).filter(|(_, holds)| **holds).flat_map(|(b, _)| &b.ops);
        let deleted: Vec<String> = applied()
            .filter_map(|op| match op {
                CredsOp::DeleteSession(m) => Some(m.to_hex()),
                _ => None,
            })
            .collect();
        let sessions: Vec<&SessionRecord> = applied()
            .filter_map(|op| match op {
                CredsOp::PutSession(s) => Some(s),
                _ => None,
            })
            .collect();
        let rotations: Vec<&RotationRecord> = applied()
            .filter_map(|op| match op {
                CredsOp::PutRotation(r) => Some(r),
                _ => None,
            })
            .collect();
        if !deleted.is_empty() {
            let sql = prepared(c, s, "DELETE FROM sessions WHERE master = ANY($1)")?;
            c.execute(&sql, &[&deleted])?;
        }
        if !sessions.is_empty() {
            put_sessions(c, s, &sessions)?;
        }
        if !rotations.is_empty() {
            put_rotations(c, s, &rotations)?;
        }
        Ok(holds.into_iter().map(|holds| if holds { Commit::Applied } else { Commit::Conflict }).collect())
    }

    /// Whether each batch's expectation holds, the rows it judges locked.
    fn expectations<C: GenericClient>(&self, c: &mut C, s: &mut Statements) -> Result<Vec<bool>, postgres::Error> {
        let expected: Vec<String> = self
            .batches
            .iter()
            .filter_map(|b| match &b.expect {
                Some(CredsExpectation::Session { master, .. }) => Some(master.to_hex()),
                _ => None,
            })
            .collect();
        let mut found = HashMap::new();
        if !expected.is_empty() {
            let sql = "SELECT master, expires_at FROM sessions WHERE master = ANY($1) ORDER BY master FOR UPDATE";
            let sql = prepared(c, s, sql)?;
            for row in c.query(&sql, &[&expected])? {
                found.insert(row.get::<_, String>(0), row.get::<_, i64>(1));
            }
        }
        Ok(self
            .batches
            .iter()
            .map(|b| match &b.expect {
                Some(CredsExpectation::Session { master, expires_at }) => {
                    found.get(&master.to_hex()) == Some(&millis(*expires_at))
                }
                _ => true,
            })
            .collect())
    }
}

fn put_sessions<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    sessions: &[&SessionRecord],
) -> Result<(), postgres::Error> {
    let sql = prepared(
        c,
        s,
        "INSERT INTO sessions (master, email, mac, started_at, expires_at)
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[])
         ON CONFLICT (master) DO UPDATE SET email = excluded.email, mac = excluded.mac,
             started_at = excluded.started_at, expires_at = excluded.expires_at",
    )?;
    let masters: Vec<String> = sessions.iter().map(|s| s.master.to_hex()).collect();
    let emails: Vec<&str> = sessions.iter().map(|s| s.email.as_str()).collect();
    let macs: Vec<String> = sessions.iter().map(|s| s.mac.to_string()).collect();
    let started: Vec<i64> = sessions.iter().map(|s| millis(s.started_at)).collect();
    let expires: Vec<i64> = sessions.iter().map(|s| millis(s.expires_at)).collect();
    c.execute(&sql, &[&masters, &emails, &macs, &started, &expires])?;
    Ok(())
}

/// Puts rotation records, then keeps of each login's records the new one
/// and the newest others, [`REUSE_HISTORY`] in all (the rule of the batch
/// by batch path, `write_creds` in `postgres`).
fn put_rotations<C: GenericClient>(
    c: &mut C,
    s: &mut Statements,
    rotations: &[&RotationRecord],
) -> Result<(), postgres::Error> {
    let sql = prepared(
        c,
        s,
        "INSERT INTO rotations (tag, master, email, mac, started_at, rotated_at)
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[])
         ON CONFLICT (tag) DO UPDATE SET master = excluded.master, email = excluded.email, mac = excluded.mac,
             started_at = excluded.started_at, rotated_at = excluded.rotated_at",
    )?;
    let tags: Vec<String> = rotations.iter().map(|r| r.tag.to_hex()).collect();
    let masters: Vec<String> = rotations.iter().map(|r| r.master.to_hex()).collect();
    let emails: Vec<&str> = rotations.iter().map(|r| r.email.as_str()).collect();
    let macs: Vec<String> = rotations.iter().map(|r| r.mac.to_string()).collect();
    let started: Vec<i64> = rotations.iter().map(|r| millis(r.started_at)).collect();
    let rotated: Vec<i64> = rotations.iter().map(|r| millis(r.rotated_at)).collect();
    c.execute(&sql, &[&tags, &masters, &emails, &macs, &started, &rotated])?;
    // Each login's records by its index (email, mac, started_at), one
    // lookup per login: a join the planner may not turn into a scan of
    // the whole table.
    let sql = prepared(
        c,
        s,
        "DELETE FROM rotations WHERE tag IN (
             SELECT old.tag
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS login (email, mac, started_at, tag)
             CROSS JOIN LATERAL (
                 SELECT r.tag FROM rotations r
                 WHERE r.email = login.email AND r.mac = login.mac AND r.started_at = login.started_at
                 ORDER BY r.tag = login.tag DESC, r.rotated_at DESC, r.tag DESC
                 OFFSET $5
             ) old)",
    )?;
    c.execute(&sql, &[&emails, &macs, &started, &tags, &(REUSE_HISTORY as i64)])?;
    Ok(())
}
