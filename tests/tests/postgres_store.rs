//! What is the PostgreSQL store's own, beyond the conformance suite: a
//! connection the server drops is replaced, reads and groups that never
//! reached a commit go on on the new one, and a server key is claimed by
//! the first server and checked for every other.

use chrono::{DateTime, Utc};
use tokenizer_auth_effects::store::{Commit, PgStore, StoreError};
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
