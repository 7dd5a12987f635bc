//! What is the PostgreSQL store's own, beyond the conformance suite: a
//! connection the server drops is replaced, reads and groups that never
//! reached a commit go on on the new one, a server key is claimed by the
//! first server and checked for every other, a server's handles share a
//! bounded pool of connections, and a session cache answers from memory
//! yet never for a session changed elsewhere more than `revocation_delay`
//! ago, even when its listener is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokenizer_auth_effects::store::{Commit, LISTENER_NAME, Listener, NotifiedCache, PgStore, StoreError};
use tokenizer_auth_engine::{CredsBatch, CredsOp, Lookup, Mac, MasterToken, ServerKey, SessionRecord, WriteBatch};

fn session(n: u8) -> SessionRecord {
    let at = DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000).unwrap();
    SessionRecord {
        master: MasterToken::parse(&format!("{n:02x}").repeat(32)).unwrap(),
        email: "ada@example.com".into(),
        mac: Mac::parse("aa:bb:cc:dd:ee:ff").unwrap(),
        started_at: at,
        expires_at: at,
    }
}

fn put(s: &SessionRecord) -> WriteBatch {
    WriteBatch::Creds(CredsBatch { expect: None, ops: vec![CredsOp::PutSession(s.clone())] })
}

fn lookup(s: &SessionRecord) -> Lookup {
    Lookup { session: Some(s.master), ..Lookup::default() }
}

/// Ends every other connection to the database, as a restart or a
/// failover would.
fn drop_connections(url: &str) -> u64 {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let rows = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    rows.len() as u64
}

#[test]
fn a_dropped_connection_is_replaced_and_nothing_unsure_is_run_twice() {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let mut store = PgStore::open(&url).unwrap();
    let (first, second) = (session(1), session(2));
    assert_eq!(store.write(&put(&first)).unwrap(), Commit::Applied);

    assert_eq!(drop_connections(&url), 1);
    let read = store.read(&lookup(&first)).expect("read again on a new connection");
    assert_eq!(read.session, Some(first.clone()));

    assert_eq!(drop_connections(&url), 1);
    assert_eq!(store.write(&put(&second)).expect("run again on a new connection"), Commit::Applied);
    assert_eq!(store.read(&lookup(&second)).unwrap().session, Some(second));
}

#[test]
fn the_first_server_claims_the_key_and_another_key_is_refused() {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let (ours, theirs) = (ServerKey::from_bytes([7; 32]), ServerKey::from_bytes([8; 32]));
    let mut first = PgStore::open(&url).unwrap();
    first.claim_key(&ours).unwrap();
    let mut second = PgStore::open(&url).unwrap();
    second.claim_key(&ours).expect("the same key again");
    match PgStore::open(&url).unwrap().claim_key(&theirs) {
        Err(StoreError::OtherKey { ours: o, theirs: t }) => {
            assert_eq!((o, t), (theirs.fingerprint().to_string(), ours.fingerprint().to_string()));
        }
        other => panic!("another key was not refused: {other:?}"),
    }
}

/// How many connections the database has open, other than the asker's.
fn connections(url: &str) -> i64 {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
    admin.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn a_servers_handles_share_a_bounded_pool() {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let store = PgStore::open_with(&url, None, 2).unwrap();
    let s = session(3);
    store.attach().unwrap().write(&put(&s)).unwrap();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut handle = store.attach().unwrap();
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(handle.read(&lookup(&s)).expect("a read waits its turn").session.as_ref(), Some(&s));
                }
            })
        })
        .collect();
    let mut most = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        most = most.max(connections(&url));
        std::thread::sleep(Duration::from_millis(2));
    }
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert!((1..=2).contains(&most), "{most} connections for a pool of 2");
}

/// A store whose handles share a session cache kept by its listener.
fn cached(url: &str, delay: Duration) -> (PgStore, Arc<NotifiedCache>, Listener) {
    let cache = Arc::new(NotifiedCache::new(100, delay));
    let store = PgStore::open(url).unwrap().with_cache(Arc::clone(&cache));
    let listener = store.listen().unwrap().expect("a listener for the cache");
    (store, cache, listener)
}

/// Reads `s` until the cache answers it (once the listener's first beat is
/// back, the first read fills it and the next one hits).
fn until_cached(store: &mut PgStore, cache: &NotifiedCache, s: &SessionRecord) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = cache.lookups().0;
        assert_eq!(store.read(&lookup(s)).unwrap().session.as_ref(), Some(s));
        if cache.lookups().0 > hits {
            return;
        }
        assert!(Instant::now() < deadline, "the cache never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn for_email(n: u8, email: &str) -> SessionRecord {
    SessionRecord { email: email.into(), ..session(n) }
}

#[test]
fn a_session_changed_elsewhere_is_refused_within_the_delay() {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let delay = Duration::from_millis(400);
    let (mut store, cache, listener) = cached(&url, delay);
    let (revoked, rotated, kept) =
        (for_email(4, "rev@example.com"), for_email(5, "rot@example.com"), for_email(6, "kept@example.com"));
    let updated = for_email(9, "upd@example.com");
    for s in [&revoked, &rotated, &kept, &updated] {
        store.write(&put(s)).unwrap();
        until_cached(&mut store, &cache, s);
    }
    // Another server (no cache) revokes one and rotates another.
    let mut other = PgStore::open(&url).unwrap();
    let changed = Instant::now();
    assert_eq!(other.revoke(&revoked.email, None).unwrap(), 1);
    let successor = for_email(7, &rotated.email);
    let rotation = CredsBatch {
        expect: None,
        ops: vec![CredsOp::DeleteSession(rotated.master), CredsOp::PutSession(successor.clone())],
    };
    assert_eq!(other.write(&WriteBatch::Creds(rotation)).unwrap(), Commit::Applied);
    // And one session written over (an upsert that updates).
    let longer = SessionRecord { expires_at: updated.expires_at + chrono::TimeDelta::hours(1), ..updated.clone() };
    assert_eq!(other.write(&put(&longer)).unwrap(), Commit::Applied);
    let written = changed.elapsed();
    // Seen as soon as told; never later than the delay.
    let seen = loop {
        let gone = [&revoked, &rotated].iter().all(|s| store.read(&lookup(s)).unwrap().session.is_none());
        if gone && store.read(&lookup(&updated)).unwrap().session.as_ref() == Some(&longer) {
            break changed.elapsed();
        }
        assert!(changed.elapsed() <= delay + written, "a changed session was still answered past the delay");
        std::thread::sleep(Duration::from_millis(1));
    };
    eprintln!("changes seen by the cached server after {seen:?} (delay {delay:?})");
    std::thread::sleep((changed + delay).saturating_duration_since(Instant::now()));
    for s in [&revoked, &rotated] {
        assert_eq!(store.read(&lookup(s)).unwrap().session, None);
    }
    // The rest of the cache stays: the untouched session is a hit.
    let hits = cache.lookups().0;
    assert_eq!(store.read(&lookup(&kept)).unwrap().session, Some(kept));
    assert_eq!(cache.lookups().0, hits + 1, "an unchanged session is still answered from memory");
    assert_eq!(store.read(&lookup(&successor)).unwrap().session, Some(successor));
    listener.stop();
}

/// Stops (or resumes) the listener's backend process, as a network that
/// stops delivering would, without the connection failing.
fn pause_listener(url: &str, signal: &str) {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1";
    let pid: i32 = admin.query_one(sql, &[&LISTENER_NAME]).expect("the listener's connection").get(0);
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn a_cache_that_hears_nothing_reads_the_database_past_the_delay() {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let delay = Duration::from_millis(300);
    let (mut store, cache, listener) = cached(&url, delay);
    let s = session(8);
    store.write(&put(&s)).unwrap();
    until_cached(&mut store, &cache, &s);
    // The listener hears nothing more, and does not know it.
    pause_listener(&url, "-STOP");
    let mut other = PgStore::open(&url).unwrap();
    other.revoke(&s.email, None).unwrap();
    let revoked = Instant::now();
    std::thread::sleep(delay);
    let misses = cache.lookups().1;
    let read = store.read(&lookup(&s)).unwrap();
    let stale_at = revoked.elapsed();
    pause_listener(&url, "-CONT");
    assert_eq!(read.session, None, "answered from a cache {stale_at:?} stale");
    assert_eq!(cache.lookups().1, misses + 1, "read from the database");
    listener.stop();
}

/// A tiny deterministic generator, so that a failure replays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

#[test]
fn a_group_of_session_writes_does_what_it_does_batch_by_batch() {
    // The PostgreSQL writer commits groups of renewals and logins in a few
    // statements (`bulk`); the SQLite store applies batch after batch.
    // The same random groups, stale and overlapping batches among them,
    // must give the same outcomes and leave the same records.
    let url = tokenizer_auth_tests::postgres::shared().database();
    let mut pg = PgStore::open(&url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = tokenizer_auth_effects::store::SqliteStore::open(dir.path()).unwrap();
    let mut rng = Lcg(7);
    let mut next = 0u32;
    let mut unique = || {
        next += 1;
        let mut bytes = [0x5a; 32];
        bytes[..4].copy_from_slice(&next.to_le_bytes());
        (bytes, next)
    };
    let origin = DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000).unwrap();
    // A login: a session of a chain of its own.
    let login = |unique: &mut dyn FnMut() -> ([u8; 32], u32)| {
        let (bytes, n) = unique();
        let at = origin + chrono::TimeDelta::milliseconds(i64::from(n));
        let s = SessionRecord {
            master: MasterToken::from_bytes(bytes),
            email: format!("u{}@example.com", n % 3),
            mac: Mac::parse("aa:bb:cc:dd:ee:ff").unwrap(),
            started_at: at,
            expires_at: at + chrono::TimeDelta::seconds(1),
        };
        CredsBatch { expect: None, ops: vec![CredsOp::PutSession(s)] }
    };
    // A renewal of `old` as read, or as the store no longer holds it.
    let rotate = |unique: &mut dyn FnMut() -> ([u8; 32], u32), old: &SessionRecord, stale: bool| {
        let (bytes, n) = unique();
        let new = SessionRecord {
            master: MasterToken::from_bytes(bytes),
            expires_at: old.expires_at + chrono::TimeDelta::seconds(1),
            ..old.clone()
        };
        let record = tokenizer_auth_engine::RotationRecord {
            tag: tokenizer_auth_engine::TokenTag::from_bytes(bytes),
            master: old.master,
            email: old.email.clone(),
            mac: old.mac,
            started_at: old.started_at,
            rotated_at: origin + chrono::TimeDelta::milliseconds(i64::from(n)),
        };
        let expires_at = old.expires_at + chrono::TimeDelta::milliseconds(i64::from(stale));
        CredsBatch {
            expect: Some(tokenizer_auth_engine::CredsExpectation::Session { master: old.master, expires_at }),
            ops: vec![CredsOp::DeleteSession(old.master), CredsOp::PutSession(new), CredsOp::PutRotation(record)],
        }
    };
    // The live sessions as written (what the engine would have read), and
    // every master and tag ever used.
    let mut live: Vec<SessionRecord> = Vec::new();
    let (mut masters, mut tags) = (Vec::new(), Vec::new());
    let mut chains: std::collections::HashMap<(String, i64), usize> = std::collections::HashMap::new();
    let mut overlapping = 0;
    for round in 0..80 {
        let mut group = Vec::new();
        if round % 2 == 0 {
            // Every chain at most once, as a busy server's groups are: the
            // group runs in bulk.
            for old in live.clone() {
                if rng.below(5) != 0 {
                    group.push(rotate(&mut unique, &old, rng.below(10) == 0));
                }
            }
            if group.is_empty() || rng.below(3) == 0 {
                let first = login(&mut unique);
                // Now and then a second login of that device in the same
                // millisecond: two sessions, one chain of rotation records.
                if rng.below(2) == 0 {
                    let mut twin = first.clone();
                    if let CredsOp::PutSession(s) = &mut twin.ops[0] {
                        s.master = MasterToken::from_bytes(unique().0);
                    }
                    group.push(twin);
                }
                group.push(first);
            }
        } else {
            // Anything: one session renewed twice, stale renewals, logins.
            for _ in 0..1 + rng.below(8) {
                match live.len() {
                    0 => group.push(login(&mut unique)),
                    // The same session put twice, the second longer.
                    _ if rng.below(6) == 0 => {
                        let first = login(&mut unique);
                        let mut again = first.clone();
                        if let CredsOp::PutSession(s) = &mut again.ops[0] {
                            s.expires_at += chrono::TimeDelta::seconds(5);
                        }
                        group.extend([first, again]);
                    }
                    n => {
                        let old = live[if rng.below(2) == 0 { n - 1 } else { rng.below(n) }].clone();
                        group.push(rotate(&mut unique, &old, rng.below(8) == 0));
                    }
                }
            }
        }
        for batch in &group {
            for op in &batch.ops {
                match op {
                    CredsOp::PutSession(s) => masters.push(s.master),
                    CredsOp::PutRotation(r) => tags.push(r.tag),
                    _ => {}
                }
            }
        }
        let refs: Vec<&CredsBatch> = group.iter().collect();
        let on_pg: Vec<Commit> = pg.write_creds_group(&refs).into_iter().map(Result::unwrap).collect();
        let on_files: Vec<Commit> = files.write_creds_group(&refs).into_iter().map(Result::unwrap).collect();
        assert_eq!(on_pg, on_files, "round {round}: {group:?}");
        // What the engine would read next.
        let mut expected = std::collections::HashSet::new();
        for (batch, outcome) in group.iter().zip(&on_pg) {
            if let Some(tokenizer_auth_engine::CredsExpectation::Session { master, .. }) = &batch.expect {
                overlapping += usize::from(!expected.insert(*master));
            }
            if *outcome == Commit::Applied {
                for op in &batch.ops {
                    match op {
                        CredsOp::DeleteSession(m) => live.retain(|s| s.master != *m),
                        CredsOp::PutSession(s) => live.push(s.clone()),
                        CredsOp::PutRotation(r) => {
                            *chains.entry((r.email.clone(), r.started_at.timestamp_millis())).or_default() += 1
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let lookups: Vec<Lookup> = masters
        .iter()
        .map(|m| Lookup { session: Some(*m), ..Lookup::default() })
        .chain(tags.iter().map(|t| Lookup { rotation: Some(*t), ..Lookup::default() }))
        .collect();
    let read = |results: Vec<Result<tokenizer_auth_engine::Snapshot, StoreError>>| {
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>()
    };
    let (on_pg, on_files) = (read(pg.read_many(&lookups)), read(files.read_many(&lookups)));
    assert_eq!(on_pg, on_files);
    // The groups reached what the bulk path must get right.
    let longest = chains.values().max().copied().unwrap_or(0);
    assert!(longest > 2 * tokenizer_auth_engine::REUSE_HISTORY, "the longest chain has {longest} rotations");
    assert!(overlapping >= 5, "{overlapping} batches expected a session another batch of their group expected");
    assert!(on_pg.iter().any(|s| s.rotation.is_some()), "rotation records kept");
    assert_eq!(tokenizer_auth_effects::store::bulk_failures(), 0, "every group ran in bulk");
}

#[test]
fn a_server_fills_its_cache_from_the_database_as_it_starts() {
    let url = tokenizer_auth_tests::postgres::shared().database();
    let mut writer = PgStore::open(&url).unwrap();
    let sessions: Vec<SessionRecord> = (0..10).map(|n| for_email(100 + n, "warm@example.com")).collect();
    for s in &sessions {
        writer.write(&put(s)).unwrap();
    }
    let (mut store, cache, listener) = cached(&url, Duration::from_millis(500));
    assert_eq!(store.warm_cache().unwrap(), 10);
    let lookups: Vec<Lookup> = sessions.iter().map(lookup).collect();
    let read: Vec<_> = store.read_many(&lookups).into_iter().map(|r| r.unwrap().session).collect();
    assert_eq!(read, sessions.iter().cloned().map(Some).collect::<Vec<_>>());
    assert_eq!(cache.lookups(), (10, 0), "every one answered from memory");
    listener.stop();
}

/// Twelve connections of `store`'s pool in use at once, then idle.
fn fill_pool(store: &PgStore, s: &SessionRecord) {
    let barrier = Arc::new(std::sync::Barrier::new(12));
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let (mut handle, barrier, s) = (store.attach().unwrap(), Arc::clone(&barrier), s.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..20 {
                    handle.read(&lookup(&s)).unwrap();
                }
            })
        })
        .collect();
    readers.into_iter().for_each(|r| r.join().unwrap());
}

#[test]
fn a_restarted_database_costs_no_request_however_many_connections_dropped() {
    // Every idle connection of the pool is dead after a restart; the next
    // read and the next group meet them all, and go on on new ones.
    let url = tokenizer_auth_tests::postgres::shared().database();
    // More connections than a group's retries of lost races.
    let store = PgStore::open_with(&url, None, 12).unwrap();
    let s = session(40);
    store.attach().unwrap().write(&put(&s)).unwrap();
    fill_pool(&store, &s);
    assert!(drop_connections(&url) > 8, "more pooled connections to drop than retries");
    let mut handle = store.attach().unwrap();
    assert_eq!(handle.read(&lookup(&s)).expect("read on a new connection").session, Some(s.clone()));
    // Again, with the pool full of idle connections.
    fill_pool(&store, &s);
    assert!(drop_connections(&url) > 8);
    assert_eq!(handle.write(&put(&session(41))).expect("a group on a new connection"), Commit::Applied);
}
