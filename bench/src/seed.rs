//! `seed`: writes many sessions straight into a data folder through the
//! server's own store, so a run with a million sessions needs no logins.
//!
//! Session `i` has the base token [`base_bytes`]`(seed, i)`, the device
//! [`mac_for`]`(i)` and the email `user<i>@bench.example`; its master token
//! is derived exactly as the server derives it for a client at `ip`. The
//! base tokens go to the tokens file, in order, for `run`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use tokenizer_auth_effects::store::{Commit, SqliteStore};
use tokenizer_auth_engine::{BaseToken, CredsBatch, CredsOp, MasterToken, SessionRecord, WriteBatch};

use crate::tokens::{TokensWriter, base_bytes, hex32, mac_for};

/// What to seed.
#[derive(Clone, Debug)]
pub(crate) struct SeedPlan {
    /// The server's data folder (created if missing).
    pub(crate) data_dir: PathBuf,
    /// Where the base tokens go.
    pub(crate) tokens: PathBuf,
    /// How many sessions.
    pub(crate) sessions: u64,
    /// The seed of the base tokens.
    pub(crate) seed: u64,
    /// The client address the sessions are bound to.
    pub(crate) ip: IpAddr,
    /// Sessions per committed batch.
    pub(crate) batch: usize,
    /// Store the sessions already expired (but renewable): every first
    /// request on one is a rotation.
    pub(crate) expired: bool,
}

/// Seeds the sessions; returns how long it took.
pub(crate) fn seed(plan: &SeedPlan) -> Result<std::time::Duration, String> {
    let started = Instant::now();
    let mut store = SqliteStore::open(&plan.data_dir).map_err(|e| e.to_string())?;
    let mut tokens = TokensWriter::create(&plan.tokens)?;
    let now: DateTime<Utc> = SystemTime::now().into();
    // A session started a minute ago; a valid one works for a day, an
    // expired one expired 30 s ago (renewable: far from the absolute age).
    let started_at = now - TimeDelta::minutes(1);
    let expires_at = if plan.expired { now - TimeDelta::seconds(30) } else { now + TimeDelta::days(1) };
    let mut ops = Vec::with_capacity(plan.batch);
    let mut last_note = Instant::now();
    for i in 0..plan.sessions {
        let hex = hex32(&base_bytes(plan.seed, i));
        let base = BaseToken::parse(hex.as_bytes()).ok_or("a generated token does not parse")?;
        let mac = mac_for(i);
        tokens.write(&hex, mac)?;
        ops.push(CredsOp::PutSession(SessionRecord {
            master: MasterToken::derive(&base, mac, plan.ip),
            email: format!("user{i}@bench.example"),
            mac,
            started_at,
            expires_at,
        }));
        if ops.len() >= plan.batch || i + 1 == plan.sessions {
            let batch = WriteBatch::Creds(CredsBatch { expect: None, ops: std::mem::take(&mut ops) });
            match store.write(&batch).map_err(|e| format!("cannot write sessions: {e}"))? {
                Commit::Applied => {}
                Commit::Conflict => return Err("the store refused a batch without expectation".to_owned()),
            }
            if last_note.elapsed().as_secs() >= 1 || i + 1 == plan.sessions {
                eprintln!("seed: {} of {} sessions ({:.1} s)", i + 1, plan.sessions, started.elapsed().as_secs_f64());
                last_note = Instant::now();
            }
        }
    }
    tokens.finish()?;
    store.checkpoint().map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}
