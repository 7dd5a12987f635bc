//! The SQLite store on real files, in what is its own: the old server's
//! files open and work, migrations are versioned and keep the seed's
//! columns, one passcode logs in once through the whole engine, the
//! session cache is used and follows writers it does not know of, plaintext
//! passwords are rehashed, and no secret is left in the files' raw bytes.
//! The batch rules it shares with every store are checked by the
//! conformance suite (`store_conformance.rs`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;
use rusqlite::Connection;
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::store::{Commit, SessionCache, SqliteStore, Store};
use tokenizer_auth_engine::testkit::{World, epoch};
use tokenizer_auth_engine::{
    BaseToken, Config, CredsBatch, CredsOp, Listener, Lookup, Mac, MasterToken, PasswordHash, Secret, SessionRecord,
    WriteBatch,
};
use tokenizer_auth_tests::real::{self, outbox_passcode};

const MAC: &str = "aa:bb:cc:dd:ee:ff";
const EMAIL: &str = "old@example.com";
const PHONE: &str = "5550100";
const PASSWORD: &str = "plain-old-password";

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn real_world(dir: &Path, hasher: &PasswordHasher) -> World {
    real::world(dir, hasher, Config::default(), 42)
}

/// Writes the two files as the old Python server did: its table
/// definitions, a plaintext password, its time text, a session and a
/// passcode of its own.
fn old_server_files(dir: &Path, old_token: &BaseToken) {
    let creds = Connection::open(dir.join("op_creds.db")).unwrap();
    creds
        .execute_batch(&format!(
            "CREATE TABLE op_creds (mac text, password text, email text, phone text, token text, expiry text);
             INSERT INTO op_creds VALUES ('{MAC}', '{PASSWORD}', '{EMAIL}', '{PHONE}', '{master}', '2026-01-01 01:00:00');",
            master = MasterToken::derive(old_token, Mac::parse(MAC).unwrap(), local()).to_hex(),
        ))
        .unwrap();
    let passcodes = Connection::open(dir.join("op_passcodes.db")).unwrap();
    passcodes
        .execute_batch(&format!(
            "CREATE TABLE passcode_table (mac text, ip text, phone text, email text, passcode text, expiry text);
             INSERT INTO passcode_table VALUES ('AA-BB-CC-DD-EE-01', '127.0.0.1', '{PHONE}', '{EMAIL}', 'Q7ZK2M', '2026-01-01 00:03:00');"
        ))
        .unwrap();
}

fn columns(conn: &Connection, table: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})")).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(1)).unwrap().map(Result::unwrap).collect()
}

fn stored_password(dir: &Path) -> String {
    Connection::open(dir.join("op_creds.db"))
        .unwrap()
        .query_row("SELECT password FROM op_creds WHERE email = ?1", [EMAIL], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_old_servers_files_open_and_the_whole_flow_works_on_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old_token = BaseToken::parse("0123456789abcdef".repeat(4).as_bytes()).unwrap();
    old_server_files(dir, &old_token);
    // The product's argon2id cost: this test shows the real rehash.
    let hasher = PasswordHasher::new(Cost::PRODUCT).unwrap();
    let mut world = real_world(dir, &hasher);

    // The old server's session still works, and renews.
    let c = world.connect(Listener::Native, local());
    assert_eq!(world.request(c, &format!("{old_token}|{MAC}|get")), "authorized");

    // The old server's plaintext passcode logs in, on the device it was issued to.
    let old_passcode_login = format!("aa:bb:cc:dd:ee:01|{EMAIL}|{PHONE}|{PASSWORD}|Q7ZK2M");
    let reply = world.request(c, &old_passcode_login);
    assert!(reply.starts_with(tokenizer_auth_engine::LOGIN_PREFIX), "{reply}");

    // A fresh login through the outbox.
    let token = world
        .login_reading_mail(local(), MAC, EMAIL, PHONE, PASSWORD, |_| outbox_passcode(dir, EMAIL))
        .expect("login on the old files");
    let c = world.connect(Listener::Native, local());
    assert_eq!(world.request(c, &format!("{token}|{MAC}|get")), "authorized");

    // The plaintext password became an argon2id hash at the product's cost.
    let stored = stored_password(dir);
    assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
    assert!(hasher.verify(&PasswordHash::from_column(&stored), &Secret::new(PASSWORD)));

    // Migrations are versioned and kept every column of the seed.
    let creds = Connection::open(dir.join("op_creds.db")).unwrap();
    let passcodes = Connection::open(dir.join("op_passcodes.db")).unwrap();
    for (conn, table, seed, current) in [
        (&creds, "op_creds", ["mac", "password", "email", "phone", "token", "expiry"], 3),
        (&passcodes, "passcode_table", ["mac", "ip", "phone", "email", "passcode", "expiry"], 1),
    ] {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, current);
        let cols = columns(conn, table);
        assert_eq!(&cols[..6], seed, "{table}");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
    // Opening again changes nothing.
    drop(world);
    SqliteStore::open(dir).unwrap();
}

#[test]
fn user_rehash_hashes_every_plaintext_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    old_server_files(dir, &BaseToken::parse("ab".repeat(32).as_bytes()).unwrap());
    let hasher = PasswordHasher::new(Cost::PRODUCT).unwrap();
    let mut store = SqliteStore::open(dir).unwrap();
    assert!(store.users().unwrap()[0].plaintext);
    assert_eq!(store.rehash_plaintext(&hasher).unwrap(), 1);
    assert_eq!(store.rehash_plaintext(&hasher).unwrap(), 0);
    assert!(!store.users().unwrap()[0].plaintext);
    assert!(hasher.verify(&PasswordHash::from_column(&stored_password(dir)), &Secret::new(PASSWORD)));
}

#[test]
fn fifty_simultaneous_logins_with_one_passcode_give_one_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap(); // cheap: this test is about the race, not the cost
    let mut store = SqliteStore::open(dir).unwrap();
    store.add_user(EMAIL, PHONE, &hasher.hash(&Secret::new(PASSWORD)).unwrap()).unwrap();
    // Room for all fifty password checks at once, and no per-email limit on
    // the losers' failures: every login is a real attempt.
    let mut config = Config { max_password_checks: 64, ..Config::default() };
    config.limits.failures_per_email = tokenizer_auth_engine::Window::new(0, chrono::TimeDelta::minutes(15));
    let mut world = real::world(dir, &hasher, config, 42);
    let c = world.connect(Listener::Native, local());
    assert_eq!(world.request(c, &format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let code = outbox_passcode(dir, EMAIL).unwrap();
    let conns: Vec<_> = (0..50).map(|_| world.connect(Listener::Native, local())).collect();
    for &c in &conns {
        world.send(c, format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|{code}\n").as_bytes());
    }
    world.complete_in(tokenizer_auth_engine::testkit::Completion::Shuffled(5));
    world.settle();
    let replies: Vec<String> = conns.iter().map(|&c| String::from_utf8(world.take_received(c)).unwrap()).collect();
    let tokens = replies.iter().filter(|r| r.starts_with(tokenizer_auth_engine::LOGIN_PREFIX)).count();
    assert_eq!(tokens, 1, "{replies:?}");
    assert_eq!(replies.iter().filter(|r| *r == "False\n").count(), 49, "{replies:?}");
    assert_eq!(store.sessions(Some(EMAIL)).unwrap().len(), 1);
}

/// Whether any of `secrets` appears in the raw bytes of the database files,
/// WAL files included.
fn assert_no_secret_in_files(dir: &Path, secrets: &[String], when: &str) {
    let files = ["op_creds.db", "op_creds.db-wal", "op_passcodes.db", "op_passcodes.db-wal"];
    for file in files {
        let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
        for secret in secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{when}: {file} holds a secret in plain text");
        }
    }
}

/// Passcode request, login, renewal; returns every secret that crossed the
/// wire.
fn full_flow(world: &mut World, dir: &Path, password: &str) -> Vec<String> {
    let token =
        world.login_reading_mail(local(), MAC, EMAIL, PHONE, password, |_| outbox_passcode(dir, EMAIL)).unwrap();
    let passcode = outbox_passcode(dir, EMAIL).unwrap();
    world.advance(TimeDelta::hours(2));
    let c = world.connect(Listener::Native, local());
    let renewed = world.request(c, &format!("{token}|{MAC}|get"));
    let renewed = renewed.strip_prefix("renew|").expect(&renewed).to_owned();
    assert_eq!(world.request(c, &format!("{renewed}|{MAC}|get")), "authorized");
    vec![password.to_owned(), passcode, token, renewed]
}

#[test]
fn no_secret_is_left_in_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap(); // cheap: this test reads bytes, not costs
    let mut store = SqliteStore::open(dir).unwrap();
    let password = "a rather long passphrase";
    store.add_user(EMAIL, PHONE, &hasher.hash(&Secret::new(password)).unwrap()).unwrap();
    let mut world = real_world(dir, &hasher);
    let secrets = full_flow(&mut world, dir, password);
    assert_no_secret_in_files(dir, &secrets, "after a full flow");
    store.checkpoint().unwrap();
    assert_no_secret_in_files(dir, &secrets, "after a checkpoint");
}

#[test]
fn the_old_servers_secrets_are_gone_once_rehashed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    old_server_files(dir, &BaseToken::parse("cd".repeat(32).as_bytes()).unwrap());
    let hasher = PasswordHasher::new(Cost::TEST_ONLY).unwrap(); // cheap: this test reads bytes, not costs
    let store = SqliteStore::open(dir).unwrap();
    // Opening sealed the old plaintext passcode.
    assert_no_secret_in_files(dir, &["Q7ZK2M".to_owned()], "after opening");
    let mut world = real_world(dir, &hasher);
    let secrets = full_flow(&mut world, dir, PASSWORD);
    // The login rehashed the plaintext password; a checkpoint (which SQLite
    // runs on its own as the WAL grows) leaves none of it in the files.
    store.checkpoint().unwrap();
    assert_no_secret_in_files(dir, &secrets, "after the rehash and a checkpoint");
}

fn session(master: MasterToken, expires_in: TimeDelta) -> SessionRecord {
    SessionRecord {
        master,
        email: EMAIL.into(),
        mac: Mac::parse(MAC).unwrap(),
        started_at: epoch(),
        expires_at: epoch() + expires_in,
    }
}

/// A credentials batch with no expectation.
fn unconditional(op: CredsOp) -> WriteBatch {
    WriteBatch::Creds(CredsBatch { expect: None, ops: vec![op] })
}

/// What only the SQLite store's session cache does (that every handle,
/// cached or not, reads what any other wrote is the conformance suite's
/// `every_handle_sees_every_other_handles_writes`): it keeps only sessions
/// that exist, takes in its own server's commits, answers from memory, and
/// sees a writer that knows nothing of it (raw SQL) through the counter
/// whose triggers live in the file.
#[test]
fn the_session_cache_never_answers_what_the_file_no_longer_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(SessionCache::new(1000));
    let reader = SqliteStore::open(tmp.path()).unwrap().with_cache(cache.clone());
    let mut writer = SqliteStore::open(tmp.path()).unwrap().with_cache(cache.clone());
    let (a, b) = (MasterToken::from_bytes([1; 32]), MasterToken::from_bytes([2; 32]));
    let read = |master| {
        let lookup = Lookup { session: Some(master), ..Lookup::default() };
        reader.read_many([&lookup]).pop().unwrap().unwrap().session
    };

    assert_eq!(read(a), None, "unknown sessions are not cached");
    assert!(cache.is_empty());
    assert_eq!(
        writer.write(&unconditional(CredsOp::PutSession(session(a, TimeDelta::minutes(1))))).unwrap(),
        Commit::Applied
    );
    assert_eq!(cache.len(), 1, "our own commit is written through");
    assert_eq!(read(a), Some(session(a, TimeDelta::minutes(1))));
    // Answered from memory, not the file: shown by a delete that does not
    // move the counter (its trigger dropped for that one write, which no
    // real writer can do), so the cache still has what the file lost.
    let raw = Connection::open(tmp.path().join("op_creds.db")).unwrap();
    raw.execute_batch(
        "BEGIN; DROP TRIGGER sessions_deleted; DELETE FROM sessions; \
         CREATE TRIGGER sessions_deleted AFTER DELETE ON sessions BEGIN UPDATE session_epoch SET n = n + 1; END; \
         COMMIT;",
    )
    .unwrap();
    assert_eq!(read(a), Some(session(a, TimeDelta::minutes(1))), "answered from memory");
    writer.write(&unconditional(CredsOp::PutSession(session(b, TimeDelta::minutes(2))))).unwrap();

    raw.execute("UPDATE sessions SET expires_at = expires_at + 1", []).unwrap();
    let mut moved = session(b, TimeDelta::minutes(2));
    moved.expires_at += TimeDelta::milliseconds(1);
    assert_eq!(read(b), Some(moved), "a raw UPDATE is seen: the counter's triggers live in the file");
    raw.execute("DELETE FROM sessions", []).unwrap();
    assert_eq!(read(b), None, "a raw DELETE is seen");
}

/// The cache under concurrency: this process's writer, another connection
/// writing the same sessions, and two readers filling the cache all run at
/// once; after each round every session read through the cache is what the
/// file holds (a reader that filled a session read before a newer commit
/// would leave it stale there).
#[test]
fn the_session_cache_ends_as_the_file_whatever_the_interleaving() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let cache = Arc::new(SessionCache::new(1000));
    let masters: Vec<MasterToken> = (0..12u8).map(|i| MasterToken::from_bytes([i; 32])).collect();
    let lookups: Vec<Lookup> = masters.iter().map(|m| Lookup { session: Some(*m), ..Lookup::default() }).collect();
    let writer = |mut x: u64, writes: usize, store: SqliteStore| {
        let masters = masters.clone();
        std::thread::spawn(move || {
            let mut store = store;
            for _ in 0..writes {
                // xorshift: a fixed, different sequence per writer.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let master = masters[(x % 12) as usize];
                let op = if x.is_multiple_of(3) {
                    CredsOp::DeleteSession(master)
                } else {
                    CredsOp::PutSession(session(master, TimeDelta::seconds((x % 1000) as i64)))
                };
                store.write(&unconditional(op)).unwrap();
            }
        })
    };
    let plain = SqliteStore::open(&dir).unwrap();
    for round in 0..8u64 {
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (store, lookups, done) =
                    (SqliteStore::open(&dir).unwrap().with_cache(cache.clone()), lookups.clone(), done.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        for result in store.read_many(&lookups) {
                            result.unwrap();
                        }
                    }
                })
            })
            .collect();
        // Mostly our commits, which the cache survives; a few of another's,
        // which empty it.
        let ours =
            writer(0x9e37_79b9_7f4a_7c15 + round, 80, SqliteStore::open(&dir).unwrap().with_cache(cache.clone()));
        let theirs = writer(0x2545_f491_4f6c_dd1d + round, 8, SqliteStore::open(&dir).unwrap());
        theirs.join().unwrap();
        ours.join().unwrap();
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
        let cached = SqliteStore::open(&dir).unwrap().with_cache(cache.clone());
        let through_cache: Vec<_> = cached.read_many(&lookups).into_iter().map(Result::unwrap).collect();
        let from_file: Vec<_> = lookups.iter().map(|l| plain.read(l).unwrap()).collect();
        assert_eq!(through_cache, from_file, "round {round}");
    }
}

#[test]
fn warming_fills_the_cache_up_to_its_bound_and_the_rest_is_read_from_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plain = SqliteStore::open(tmp.path()).unwrap();
    let masters: Vec<MasterToken> = (1..=3u8).map(|i| MasterToken::from_bytes([i; 32])).collect();
    for (i, m) in masters.iter().enumerate() {
        let op = CredsOp::PutSession(session(*m, TimeDelta::minutes(i as i64 + 1)));
        plain.write(&unconditional(op)).unwrap();
    }
    let cache = Arc::new(SessionCache::new(2));
    let store = SqliteStore::open(tmp.path()).unwrap().with_cache(cache.clone());
    assert_eq!(store.warm_cache().unwrap(), 2, "up to the bound");
    let lookups: Vec<Lookup> = masters.iter().map(|m| Lookup { session: Some(*m), ..Lookup::default() }).collect();
    let read: Vec<_> = store.read_many(&lookups).into_iter().map(|r| r.unwrap().session).collect();
    let want: Vec<_> =
        masters.iter().enumerate().map(|(i, m)| Some(session(*m, TimeDelta::minutes(i as i64 + 1)))).collect();
    assert_eq!(read, want, "cached or not, every session is found");
    assert_eq!(cache.len(), 2, "a full cache does not grow");
    // Once warm, a write by another connection still empties it.
    plain.write(&unconditional(CredsOp::DeleteSession(masters[0]))).unwrap();
    assert_eq!(store.read_many(&lookups[..1]).pop().unwrap().unwrap().session, None);
}

/// The event loop's own handle (`Store::for_event_loop`): it answers a
/// token check from the cache only while the file's counter says the cache
/// holds the file, and counts only its hits (the rest are a reader's).
#[test]
fn the_event_loops_handle_answers_from_the_cache_only_what_the_file_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(SessionCache::new(1000));
    let mut writer = SqliteStore::open(tmp.path()).unwrap().with_cache(cache.clone());
    let on_loop =
        Store::Sqlite(SqliteStore::open(tmp.path()).unwrap().with_cache(cache.clone())).for_event_loop().unwrap();
    let (a, b) = (MasterToken::from_bytes([1; 32]), MasterToken::from_bytes([2; 32]));
    assert_eq!(on_loop.cached_sessions(&[a]), vec![None], "nothing cached yet");
    writer.write(&unconditional(CredsOp::PutSession(session(a, TimeDelta::minutes(1))))).unwrap();
    assert_eq!(on_loop.cached_sessions(&[a, b]), vec![Some(session(a, TimeDelta::minutes(1))), None]);
    assert_eq!(cache.lookups(), (1, 0), "the loop counts its hits alone");

    // Another program's write: the loop's counter read sees it.
    let raw = Connection::open(tmp.path().join("op_creds.db")).unwrap();
    raw.execute("DELETE FROM sessions", []).unwrap();
    assert_eq!(on_loop.cached_sessions(&[a]), vec![None], "a raw DELETE is seen");
    writer.write(&unconditional(CredsOp::PutSession(session(a, TimeDelta::minutes(3))))).unwrap();
    assert_eq!(on_loop.cached_sessions(&[a]), vec![Some(session(a, TimeDelta::minutes(3)))]);

    raw.execute("UPDATE sessions SET expires_at = expires_at + 1", []).unwrap();
    let mut moved = session(a, TimeDelta::minutes(3));
    moved.expires_at += TimeDelta::milliseconds(1);
    let reader_sees = writer.read(&Lookup { session: Some(a), ..Lookup::default() }).unwrap().session;
    assert_eq!(reader_sees, Some(moved.clone()));
    assert_eq!(on_loop.cached_sessions(&[a]), vec![None], "the cache was emptied by the other program's write");
    let lookup = Lookup { session: Some(a), ..Lookup::default() };
    writer.read_many([&lookup]).pop().unwrap().unwrap();
    assert_eq!(on_loop.cached_sessions(&[a]), vec![Some(moved)], "and filled again by a reader");
}
