//! The checks. Each states one rule of the batches in its name and checks
//! it holding and failing, on a new store. Times are whole milliseconds
//! except in the check of their precision.

use std::net::IpAddr;
use std::sync::{Arc, Barrier};

use chrono::{DateTime, TimeDelta, Utc};
use tokenizer_auth_engine::testkit::epoch;
use tokenizer_auth_engine::{
    Bound, Counter, CounterKey, CredsBatch, CredsExpectation, CredsOp, Lookup, Mac, MasterToken, PasscodeExpectation,
    PasscodeKey, PasscodeRecord, PasscodesBatch, PasscodesOp, PasswordHash, Place, REUSE_HISTORY, Refund, Reservation,
    RotationRecord, SessionRecord, Snapshot, StoredPasscode, TokenTag, UserRecord, Window, WriteBatch,
};

use super::Outcome::{Committed, Conflict};
use super::{Outcome, StoreUnderTest};

const EMAIL: &str = "user@example.com";
const OTHER: &str = "other@example.com";
const PHONE: &str = "5550100";

fn at(ms: i64) -> DateTime<Utc> {
    epoch() + TimeDelta::milliseconds(ms)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn mac(n: u8) -> Mac {
    Mac::from_octets([0xaa, 0xbb, 0xcc, 0xdd, 0xee, n])
}

fn key(email: &str, n: u8) -> PasscodeKey {
    PasscodeKey { email: email.into(), mac: mac(n), ip: ip("192.0.2.1") }
}

fn code(n: u8) -> StoredPasscode {
    StoredPasscode::Keyed { salt: [n; 16], hash: [n; 32] }
}

/// Passcode `n` under `key`, live for three minutes from the epoch.
fn passcode(key: PasscodeKey, n: u8) -> PasscodeRecord {
    PasscodeRecord { key, phone: PHONE.into(), code: code(n), expires_at: at(180_000), attempts: 0 }
}

fn master(n: u8) -> MasterToken {
    MasterToken::from_bytes([n; 32])
}

/// Session `n` of [`EMAIL`], on device `n`, expiring at `expires_ms`.
fn session(n: u8, expires_ms: i64) -> SessionRecord {
    SessionRecord { master: master(n), email: EMAIL.into(), mac: mac(n), started_at: at(0), expires_at: at(expires_ms) }
}

/// A PHC string, as the server writes passwords (the SQLite column reads
/// only `$argon2…` back as a hash).
fn hash(n: u8) -> PasswordHash {
    PasswordHash::Phc(format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$hash{n}"))
}

fn user(email: &str, n: u8) -> UserRecord {
    UserRecord { email: email.into(), phone: PHONE.into(), password: hash(n) }
}

fn passcodes(expect: Option<PasscodeExpectation>, ops: Vec<PasscodesOp>) -> WriteBatch {
    WriteBatch::Passcodes(PasscodesBatch { expect, ops })
}

fn creds(expect: Option<CredsExpectation>, ops: Vec<CredsOp>) -> WriteBatch {
    WriteBatch::Creds(CredsBatch { expect, ops })
}

/// "The passcode is still this one", with a bound on its guesses if given.
fn expecting(record: &PasscodeRecord, attempts_below: Option<u32>) -> PasscodeExpectation {
    PasscodeExpectation { key: record.key.clone(), code: record.code.clone(), attempts_below }
}

/// What a login that logs in writes to the passcodes file.
fn consume(record: &PasscodeRecord) -> WriteBatch {
    passcodes(Some(expecting(record, None)), vec![PasscodesOp::Delete(record.key.clone())])
}

/// What a login writes before it checks a guess.
fn guess(record: &PasscodeRecord, max_guesses: u32) -> WriteBatch {
    passcodes(Some(expecting(record, Some(max_guesses))), vec![PasscodesOp::CountGuess(record.key.clone())])
}

fn tag(n: u8) -> TokenTag {
    TokenTag::from_bytes([n; 32])
}

/// The record of `session`'s token rotated away at `rotated_ms`, under
/// tag `n`.
fn rotation(n: u8, session: &SessionRecord, rotated_ms: i64) -> RotationRecord {
    RotationRecord {
        tag: tag(n),
        master: session.master,
        email: session.email.clone(),
        mac: session.mac,
        started_at: session.started_at,
        rotated_at: at(rotated_ms),
    }
}

/// A token renewal of `old` as read, to `new`, as the engine writes it:
/// with the record of the token rotated away (under tag 200 plus the old
/// session's number).
fn rotate(old: &SessionRecord, new: SessionRecord) -> WriteBatch {
    let record = rotation(200 + old.master.as_bytes()[0], old, 90_000);
    creds(
        Some(CredsExpectation::Session { master: old.master, expires_at: old.expires_at }),
        vec![CredsOp::DeleteSession(old.master), CredsOp::PutSession(new), CredsOp::PutRotation(record)],
    )
}

fn revoke_session(session: &SessionRecord) -> WriteBatch {
    let (email, mac, started_at) = (session.email.clone(), session.mac, session.started_at);
    creds(None, vec![CredsOp::RevokeSession { email, mac, started_at }])
}

fn put_passcode(record: PasscodeRecord) -> WriteBatch {
    passcodes(None, vec![PasscodesOp::Put(record)])
}

fn put_session(session: SessionRecord) -> WriteBatch {
    creds(None, vec![CredsOp::PutSession(session)])
}

/// One window counter of each kind (an IPv6 client by its prefix), and the
/// streak.
fn window_keys() -> [CounterKey; 4] {
    [
        CounterKey::PasscodeRequestsByEmail(EMAIL.into()),
        CounterKey::PasscodeRequestsByIp(ip("192.0.2.1")),
        CounterKey::FailuresByEmail(EMAIL.into()),
        CounterKey::FailuresByIp(ip("2001:db8:1:2::")),
    ]
}

fn streak_key() -> CounterKey {
    CounterKey::FailureStreak(EMAIL.into())
}

/// A minute's window allowing `max` events.
fn minute(max: u32) -> Window {
    Window::new(max, TimeDelta::minutes(1))
}

fn reserve(window: Window, key: &CounterKey, ms: i64) -> PasscodesOp {
    PasscodesOp::Reserve(window.reserve(key.clone(), at(ms)).expect("a window that is on"))
}

fn refund(window: Window, key: &CounterKey, reserved_ms: i64) -> PasscodesOp {
    PasscodesOp::Refund(window.refund(key.clone(), at(reserved_ms)).expect("a window that is on"))
}

/// A streak of at most `max` failures, locked for ten seconds.
fn streak(max: u32, ms: i64) -> PasscodesOp {
    PasscodesOp::Reserve(Reservation {
        key: streak_key(),
        bound: Bound::Streak { max, lockout: TimeDelta::seconds(10) },
        at: at(ms),
    })
}

fn counter(since_ms: i64, count: u32, last_ms: i64) -> Counter {
    Counter { since: at(since_ms), count, last: at(last_ms) }
}

/// A snapshot with its counters in one order: stores may answer them in any.
fn sorted(mut snapshot: Snapshot) -> Snapshot {
    snapshot.counters.sort_by(|a, b| a.0.cmp(&b.0));
    snapshot
}

fn passcode_of<S: StoreUnderTest>(store: &S, key: &PasscodeKey) -> Option<PasscodeRecord> {
    store.read(&Lookup { passcode: Some(key.clone()), ..Lookup::default() }).passcode
}

fn session_of<S: StoreUnderTest>(store: &S, master: MasterToken) -> Option<SessionRecord> {
    store.read(&Lookup { session: Some(master), ..Lookup::default() }).session
}

fn rotation_of<S: StoreUnderTest>(store: &S, tag: TokenTag) -> Option<RotationRecord> {
    store.read(&Lookup { rotation: Some(tag), ..Lookup::default() }).rotation
}

fn user_of<S: StoreUnderTest>(store: &S, email: &str) -> Option<UserRecord> {
    store.read(&Lookup { user: Some(email.into()), ..Lookup::default() }).user
}

fn counter_of<S: StoreUnderTest>(store: &S, key: &CounterKey) -> Option<Counter> {
    let snapshot = store.read(&Lookup { counters: vec![key.clone()], ..Lookup::default() });
    assert!(snapshot.counters.len() <= 1, "one counter asked, {} answered", snapshot.counters.len());
    snapshot.counter(key).copied()
}

/// Every record the checks write, read back in one go: what a conflict
/// must leave exactly as it was.
fn everything<S: StoreUnderTest>(store: &S) -> Vec<Snapshot> {
    let mut counters = window_keys().to_vec();
    counters.push(streak_key());
    let mut lookups = vec![Lookup { counters, ..Lookup::default() }];
    for n in 1..=4 {
        lookups.push(Lookup {
            user: Some([EMAIL, OTHER][usize::from(n % 2)].into()),
            passcode: Some(key([EMAIL, OTHER][usize::from(n / 4)], n)),
            session: Some(master(n)),
            rotation: Some(tag(n)),
            counters: Vec::new(),
        });
    }
    store.read_many(&lookups).into_iter().map(sorted).collect()
}

/// The store's first handle and its peers, named.
fn handles<S: StoreUnderTest>(store: S) -> Vec<(&'static str, S)> {
    let mut all = store.peers();
    all.insert(0, ("the first handle", store));
    all
}

/// A store with an account, passcodes 1 and 2 of [`EMAIL`], sessions 1
/// and 2, one place taken on each window counter and a streak of one.
fn populated<S: StoreUnderTest>() -> S {
    let mut store = S::create();
    store.add_user(&user(EMAIL, 1));
    let mut ops = vec![PasscodesOp::Put(passcode(key(EMAIL, 1), 1)), PasscodesOp::Put(passcode(key(EMAIL, 2), 2))];
    ops.extend(window_keys().iter().map(|k| reserve(minute(5), k, 1_000)));
    ops.push(streak(5, 1_000));
    assert_eq!(store.write(&passcodes(None, ops)), Committed);
    let sessions = vec![CredsOp::PutSession(session(1, 60_000)), CredsOp::PutSession(session(2, 60_000))];
    assert_eq!(store.write(&creds(None, sessions)), Committed);
    store
}

pub(super) fn a_passcode_reads_back_as_put_and_a_put_replaces_it<S: StoreUnderTest>() {
    let mut store = S::create();
    let k = key(EMAIL, 1);
    assert_eq!(passcode_of(&store, &k), None, "a new store holds no passcode");
    let first = PasscodeRecord { attempts: 3, ..passcode(k.clone(), 1) };
    assert_eq!(store.write(&put_passcode(first.clone())), Committed);
    assert_eq!(passcode_of(&store, &k), Some(first), "read back as put, its guesses too");
    let second = passcode(k.clone(), 2);
    assert_eq!(store.write(&put_passcode(second.clone())), Committed);
    assert_eq!(passcode_of(&store, &k), Some(second), "a new passcode for the key replaces the old one");
    for code in [StoredPasscode::Digest { salt: [7; 16], hash: [8; 32] }, StoredPasscode::from_column("Q7ZK2M")] {
        let older = PasscodeRecord { code, phone: String::new(), ..passcode(k.clone(), 0) };
        assert_eq!(store.write(&put_passcode(older.clone())), Committed);
        assert_eq!(passcode_of(&store, &k), Some(older), "an earlier version's passcode reads back as it was");
    }
}

pub(super) fn each_passcode_key_is_a_passcode_of_its_own<S: StoreUnderTest>() {
    let mut store = S::create();
    let base = key(EMAIL, 1);
    let keys = [
        base.clone(),
        PasscodeKey { email: OTHER.into(), ..base.clone() },
        PasscodeKey { email: EMAIL.to_uppercase(), ..base.clone() },
        PasscodeKey { mac: mac(2), ..base.clone() },
        PasscodeKey { ip: ip("192.0.2.2"), ..base.clone() },
        PasscodeKey { ip: ip("2001:db8::1"), ..base.clone() },
        PasscodeKey { ip: ip("2001:db8::2"), ..base.clone() },
    ];
    for (n, k) in keys.iter().enumerate() {
        let n = u8::try_from(n).expect("a few keys");
        assert_eq!(store.write(&put_passcode(passcode(k.clone(), n))), Committed);
    }
    for (n, k) in keys.iter().enumerate() {
        let n = u8::try_from(n).expect("a few keys");
        assert_eq!(passcode_of(&store, k), Some(passcode(k.clone(), n)), "{k:?} (emails are compared as sent)");
    }
}

pub(super) fn a_delete_removes_its_passcode_and_nothing_else<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    let before = everything(&store);
    assert_eq!(store.write(&passcodes(None, vec![PasscodesOp::Delete(key(OTHER, 4))])), Committed);
    assert_eq!(everything(&store), before, "deleting a passcode that is not there changes nothing");
    assert_eq!(store.write(&passcodes(None, vec![PasscodesOp::Delete(key(EMAIL, 1))])), Committed);
    assert_eq!(passcode_of(&store, &key(EMAIL, 1)), None);
    assert_eq!(passcode_of(&store, &key(EMAIL, 2)), Some(passcode(key(EMAIL, 2), 2)), "another key's passcode");
}

pub(super) fn a_guess_counts_once_on_its_passcode_only<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    let count = |k| passcodes(None, vec![PasscodesOp::CountGuess(k)]);
    for want in 1..=3 {
        assert_eq!(store.write(&count(key(EMAIL, 1))), Committed);
        assert_eq!(passcode_of(&store, &key(EMAIL, 1)).map(|r| r.attempts), Some(want));
    }
    assert_eq!(passcode_of(&store, &key(EMAIL, 2)), Some(passcode(key(EMAIL, 2), 2)), "another key's passcode");
    let before = everything(&store);
    assert_eq!(store.write(&count(key(OTHER, 4))), Committed);
    assert_eq!(everything(&store), before, "a guess on no passcode makes none");
}

pub(super) fn a_window_counts_up_to_its_bound_then_refuses<S: StoreUnderTest>() {
    let mut store = S::create();
    let w = minute(3);
    let keys = window_keys();
    for (i, k) in keys.iter().enumerate() {
        for (count, ms) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
            assert_eq!(store.write(&passcodes(None, vec![reserve(w, k, ms)])), Committed, "{k:?} #{count}");
            assert_eq!(counter_of(&store, k), Some(counter(0, count, ms)), "{k:?}");
        }
        assert_eq!(store.write(&passcodes(None, vec![reserve(w, k, 4_000)])), Conflict, "{k:?}: a fourth");
        assert_eq!(counter_of(&store, k), Some(counter(0, 3, 3_000)), "{k:?}: a refused place counts nothing");
        // Only the counters that exist are read.
        let all = store.read(&Lookup { counters: keys.to_vec(), ..Lookup::default() });
        assert_eq!(sorted(all).counters.len(), i + 1, "counters never reserved are not answered");
    }
    for k in &keys {
        assert_eq!(store.write(&passcodes(None, vec![reserve(w, k, 60_500)])), Committed, "{k:?}: next window");
        assert_eq!(counter_of(&store, k), Some(counter(60_000, 1, 60_500)), "{k:?}: the next window starts over");
    }
}

pub(super) fn a_window_never_goes_back<S: StoreUnderTest>() {
    let mut store = S::create();
    let (w, k) = (minute(2), CounterKey::FailuresByEmail(EMAIL.into()));
    assert_eq!(store.write(&passcodes(None, vec![reserve(w, &k, 61_000)])), Committed);
    // A reservation of the window before, delayed behind the newer one,
    // counts in the newer one.
    assert_eq!(store.write(&passcodes(None, vec![reserve(w, &k, 59_000)])), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(60_000, 2, 59_000)));
    assert_eq!(store.write(&passcodes(None, vec![reserve(w, &k, 59_500)])), Conflict, "a late writer restarted");
    assert_eq!(counter_of(&store, &k), Some(counter(60_000, 2, 59_000)));
}

pub(super) fn a_streak_refuses_until_its_lockout_has_passed_then_starts_over<S: StoreUnderTest>() {
    let mut store = S::create();
    let k = streak_key();
    for (count, ms) in [(1, 0), (2, 1_000), (3, 2_000)] {
        assert_eq!(store.write(&passcodes(None, vec![streak(3, ms)])), Committed);
        assert_eq!(counter_of(&store, &k), Some(counter(0, count, ms)));
    }
    // Locked for ten seconds after the last counted failure; a refused one
    // does not extend it.
    for ms in [5_000, 11_999] {
        assert_eq!(store.write(&passcodes(None, vec![streak(3, ms)])), Conflict, "at {ms} ms");
        assert_eq!(counter_of(&store, &k), Some(counter(0, 3, 2_000)));
    }
    assert_eq!(store.write(&passcodes(None, vec![streak(3, 12_000)])), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(12_000, 1, 12_000)), "the streak starts over");
}

pub(super) fn a_refund_gives_back_one_place_in_its_own_window_only<S: StoreUnderTest>() {
    let mut store = S::create();
    let (w, k) = (minute(3), CounterKey::FailuresByIp(ip("192.0.2.1")));
    let write = |store: &mut S, ops| store.write(&passcodes(None, ops));
    assert_eq!(write(&mut store, vec![refund(w, &k, 1_000)]), Committed);
    assert_eq!(counter_of(&store, &k), None, "a refund creates no counter");
    for ms in [1_000, 2_000, 3_000] {
        assert_eq!(write(&mut store, vec![reserve(w, &k, ms)]), Committed);
    }
    assert_eq!(write(&mut store, vec![refund(w, &k, 2_500)]), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(0, 2, 3_000)), "one place back; the window and last kept");
    assert_eq!(write(&mut store, vec![reserve(w, &k, 4_000)]), Committed, "the place is taken again");
    assert_eq!(write(&mut store, vec![reserve(w, &k, 5_000)]), Conflict);
    assert_eq!(write(&mut store, vec![refund(w, &k, 60_500)]), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(0, 3, 4_000)), "another window's refund gives nothing back");
    for _ in 0..4 {
        assert_eq!(write(&mut store, vec![refund(w, &k, 1_000)]), Committed);
    }
    assert_eq!(counter_of(&store, &k), Some(counter(0, 0, 4_000)), "never below zero");
    // The streak's refund gives back a place in the streak under way when
    // it was reserved, and none in a streak that started after.
    let s = streak_key();
    let streak_refund =
        |reserved_ms| PasscodesOp::Refund(Refund { key: s.clone(), place: Place::Streak(at(reserved_ms)) });
    assert_eq!(write(&mut store, vec![streak(3, 0), streak(3, 1_000)]), Committed);
    assert_eq!(write(&mut store, vec![streak_refund(1_000)]), Committed);
    assert_eq!(counter_of(&store, &s), Some(counter(0, 1, 1_000)));
    assert_eq!(write(&mut store, vec![streak(3, 2_000), streak(3, 3_000)]), Committed);
    assert_eq!(write(&mut store, vec![streak(3, 13_000)]), Committed, "the lockout is over: a new streak");
    assert_eq!(counter_of(&store, &s), Some(counter(13_000, 1, 13_000)));
    assert_eq!(write(&mut store, vec![streak_refund(2_500)]), Committed);
    assert_eq!(counter_of(&store, &s), Some(counter(13_000, 1, 13_000)), "the old streak's place is not the new one's");
    assert_eq!(write(&mut store, vec![streak_refund(13_000)]), Committed);
    assert_eq!(counter_of(&store, &s), Some(counter(13_000, 0, 13_000)));
}

pub(super) fn a_reset_removes_its_counter_only<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    let [_, _, failures, _] = window_keys();
    assert_eq!(store.write(&passcodes(None, vec![PasscodesOp::Reset(streak_key())])), Committed);
    assert_eq!(counter_of(&store, &streak_key()), None);
    assert_eq!(counter_of(&store, &failures), Some(counter(0, 1, 1_000)), "another counter");
    let before = everything(&store);
    assert_eq!(store.write(&passcodes(None, vec![PasscodesOp::Reset(streak_key())])), Committed);
    assert_eq!(everything(&store), before, "resetting a counter that is not there changes nothing");
    assert_eq!(store.write(&passcodes(None, vec![streak(5, 30_000)])), Committed);
    assert_eq!(counter_of(&store, &streak_key()), Some(counter(30_000, 1, 30_000)), "a reset streak starts over");
}

pub(super) fn a_passcode_expectation_holds_only_on_the_passcode_as_read<S: StoreUnderTest>() {
    let mut store = S::create();
    let record = passcode(key(EMAIL, 1), 1);
    assert_eq!(store.write(&consume(&record)), Conflict, "no passcode stored");
    assert_eq!(store.write(&put_passcode(record.clone())), Committed);
    let other_code = PasscodeRecord { code: code(2), ..record.clone() };
    assert_eq!(store.write(&consume(&other_code)), Conflict, "another code under the key");
    let other_key = PasscodeRecord { key: key(OTHER, 1), ..record.clone() };
    assert_eq!(store.write(&consume(&other_key)), Conflict, "the same code under another key");
    // The guesses bound: fewer than `attempts_below` counted.
    assert_eq!(store.write(&guess(&record, 2)), Committed);
    assert_eq!(store.write(&guess(&record, 2)), Committed);
    assert_eq!(store.write(&guess(&record, 2)), Conflict, "two guesses counted, fewer than two expected");
    assert_eq!(passcode_of(&store, &record.key).map(|r| r.attempts), Some(2));
    assert_eq!(store.write(&guess(&record, 3)), Committed, "a higher bound");
    assert_eq!(store.write(&passcodes(Some(expecting(&record, Some(0))), vec![])), Conflict, "no guess allowed");
    // Consuming expects the code only, whatever was guessed.
    assert_eq!(store.write(&consume(&record)), Committed);
    assert_eq!(passcode_of(&store, &record.key), None);
    assert_eq!(store.write(&consume(&record)), Conflict, "consumed once");
}

/// One op of every kind on `op_passcodes.db`, each on records the populated
/// store holds.
fn every_passcodes_op(requests: &CounterKey, failures: &CounterKey) -> Vec<PasscodesOp> {
    vec![
        PasscodesOp::Put(passcode(key(EMAIL, 3), 3)),
        PasscodesOp::Delete(key(EMAIL, 2)),
        PasscodesOp::CountGuess(key(EMAIL, 1)),
        reserve(minute(5), requests, 2_000),
        refund(minute(5), failures, 1_000),
        PasscodesOp::Reset(streak_key()),
    ]
}

pub(super) fn a_failed_passcode_expectation_writes_nothing<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    let [requests, _, failures, _] = window_keys();
    let ops = every_passcodes_op(&requests, &failures);
    let held = passcode(key(EMAIL, 1), 1);
    // One guess counted, so a bound of one guess is spent.
    assert_eq!(store.write(&guess(&held, 1)), Committed);
    let failing = [
        Some(expecting(&passcode(key(EMAIL, 1), 9), None)),
        Some(expecting(&passcode(key(OTHER, 4), 1), None)),
        Some(expecting(&held, Some(1))),
    ];
    let before = everything(&store);
    for expect in failing {
        assert_eq!(store.write(&passcodes(expect.clone(), ops.clone())), Conflict, "{expect:?}");
        assert_eq!(everything(&store), before, "{expect:?}: nothing of the batch is written");
    }
    assert_eq!(store.write(&passcodes(Some(expecting(&held, None)), ops)), Committed, "the same ops, expected right");
    assert_ne!(everything(&store), before);
}

pub(super) fn a_reservation_that_does_not_fit_undoes_its_whole_batch<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    let [requests, by_ip, failures, _] = window_keys();
    // `by_ip` holds one place: with a bound of 1, it is full.
    let full = reserve(minute(1), &by_ip, 2_000);
    let ops = every_passcodes_op(&requests, &failures);
    let before = everything(&store);
    let held = Some(expecting(&passcode(key(EMAIL, 1), 1), None));
    for (expect, at_end) in [(None, true), (None, false), (held.clone(), true)] {
        let mut batch = ops.clone();
        if at_end {
            batch.push(full.clone());
        } else {
            batch.insert(0, full.clone());
        }
        assert_eq!(store.write(&passcodes(expect.clone(), batch)), Conflict, "{expect:?}, at the end: {at_end}");
        assert_eq!(everything(&store), before, "{expect:?}, at the end: {at_end}: nothing of the batch is written");
    }
    let mut batch = ops;
    batch.push(reserve(minute(2), &by_ip, 2_000));
    assert_eq!(store.write(&passcodes(held, batch)), Committed, "the same batch, with room");
}

pub(super) fn the_ops_of_a_batch_apply_in_order<S: StoreUnderTest>() {
    let mut store = S::create();
    let (w, k) = (minute(1), CounterKey::FailuresByEmail(EMAIL.into()));
    let write = |store: &mut S, ops| store.write(&passcodes(None, ops));
    assert_eq!(write(&mut store, vec![reserve(w, &k, 1_000)]), Committed);
    // A full counter, reset and then reserved in one batch: the reservation
    // sees the reset.
    assert_eq!(write(&mut store, vec![PasscodesOp::Reset(k.clone()), reserve(w, &k, 2_000)]), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(0, 1, 2_000)));
    // Likewise a refund before a reservation.
    assert_eq!(write(&mut store, vec![refund(w, &k, 2_000), reserve(w, &k, 3_000)]), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(0, 1, 3_000)));
    // Two reservations of one counter count twice, and the second must fit
    // after the first.
    let two = minute(3);
    assert_eq!(write(&mut store, vec![reserve(two, &k, 4_000), reserve(two, &k, 5_000)]), Committed);
    assert_eq!(counter_of(&store, &k), Some(counter(0, 3, 5_000)));
    let four = minute(4);
    assert_eq!(write(&mut store, vec![reserve(four, &k, 6_000), reserve(four, &k, 7_000)]), Conflict);
    assert_eq!(counter_of(&store, &k), Some(counter(0, 3, 5_000)), "the first is undone with the second");
    // Passcodes: a guess counts on what the ops before it left.
    let (k1, fresh) = (key(EMAIL, 1), passcode(key(EMAIL, 1), 1));
    assert_eq!(
        write(&mut store, vec![PasscodesOp::Put(fresh.clone()), PasscodesOp::CountGuess(k1.clone())]),
        Committed
    );
    assert_eq!(passcode_of(&store, &k1).map(|r| r.attempts), Some(1));
    let replaced = passcode(k1.clone(), 2);
    assert_eq!(
        write(&mut store, vec![PasscodesOp::CountGuess(k1.clone()), PasscodesOp::Put(replaced.clone())]),
        Committed
    );
    assert_eq!(passcode_of(&store, &k1), Some(replaced));
    assert_eq!(
        write(&mut store, vec![PasscodesOp::Delete(k1.clone()), PasscodesOp::CountGuess(k1.clone())]),
        Committed
    );
    assert_eq!(passcode_of(&store, &k1), None);
    assert_eq!(write(&mut store, vec![PasscodesOp::Put(fresh), PasscodesOp::Delete(k1.clone())]), Committed);
    assert_eq!(passcode_of(&store, &k1), None);
    // Sessions likewise.
    let (s, m) = (session(1, 60_000), master(1));
    let batch = creds(None, vec![CredsOp::PutSession(s.clone()), CredsOp::DeleteSession(m)]);
    assert_eq!(store.write(&batch), Committed);
    assert_eq!(session_of(&store, m), None);
    let batch = creds(None, vec![CredsOp::DeleteSession(m), CredsOp::PutSession(s.clone())]);
    assert_eq!(store.write(&batch), Committed);
    assert_eq!(session_of(&store, m), Some(s));
}

pub(super) fn sessions_are_put_replaced_and_deleted<S: StoreUnderTest>() {
    let mut store = S::create();
    assert_eq!(session_of(&store, master(1)), None, "a new store holds no session");
    assert_eq!(store.write(&put_session(session(1, 60_000))), Committed);
    assert_eq!(session_of(&store, master(1)), Some(session(1, 60_000)));
    let moved = SessionRecord { email: OTHER.into(), mac: mac(9), started_at: at(5), ..session(1, 90_000) };
    assert_eq!(store.write(&put_session(moved.clone())), Committed);
    assert_eq!(session_of(&store, master(1)), Some(moved.clone()), "a put replaces every field");
    assert_eq!(store.write(&put_session(session(2, 60_000))), Committed);
    assert_eq!(store.write(&creds(None, vec![CredsOp::DeleteSession(master(1))])), Committed);
    assert_eq!(session_of(&store, master(1)), None);
    assert_eq!(session_of(&store, master(2)), Some(session(2, 60_000)), "another session");
    assert_eq!(store.write(&creds(None, vec![CredsOp::DeleteSession(master(1))])), Committed, "deleted twice");
    assert_eq!(session_of(&store, master(2)), Some(session(2, 60_000)));
}

pub(super) fn a_rotation_reads_back_by_its_tag_and_a_put_replaces_it<S: StoreUnderTest>() {
    let mut store = S::create();
    let (s1, s2) = (session(1, 60_000), session(2, 60_000));
    assert_eq!(rotation_of(&store, tag(1)), None, "a new store holds no rotation");
    let put = |r: RotationRecord| creds(None, vec![CredsOp::PutRotation(r)]);
    assert_eq!(store.write(&put(rotation(1, &s1, 1_000))), Committed);
    assert_eq!(store.write(&put(rotation(2, &s2, 2_000))), Committed);
    assert_eq!(rotation_of(&store, tag(1)), Some(rotation(1, &s1, 1_000)));
    let moved = RotationRecord { email: OTHER.into(), ..rotation(1, &s2, 3_000) };
    assert_eq!(store.write(&put(moved.clone())), Committed);
    assert_eq!(rotation_of(&store, tag(1)), Some(moved), "a put replaces every field");
    assert_eq!(rotation_of(&store, tag(2)), Some(rotation(2, &s2, 2_000)), "another tag");
    assert_eq!(rotation_of(&store, tag(3)), None);
}

pub(super) fn a_session_keeps_the_records_of_its_last_rotations_only<S: StoreUnderTest>() {
    let mut store = S::create();
    let (mine, other_device, other_login) =
        (session(1, 60_000), session(2, 60_000), SessionRecord { started_at: at(7), ..session(1, 60_000) });
    assert_eq!(store.write(&creds(None, vec![CredsOp::PutRotation(rotation(100, &other_device, 0))])), Committed);
    assert_eq!(store.write(&creds(None, vec![CredsOp::PutRotation(rotation(101, &other_login, 0))])), Committed);
    let kept = u8::try_from(REUSE_HISTORY).expect("a small history");
    // Written newest first for some, so the order kept is the rotations'
    // times, not the order of the writes.
    let times: Vec<i64> = (1..=i64::from(kept) + 3).map(|i| if i % 2 == 0 { 1_000 * i } else { 50_000 - i }).collect();
    for (i, t) in times.iter().enumerate() {
        let n = u8::try_from(i + 1).expect("a few");
        assert_eq!(store.write(&creds(None, vec![CredsOp::PutRotation(rotation(n, &mine, *t))])), Committed);
    }
    let mut newest: Vec<(i64, u8)> = times.iter().enumerate().map(|(i, t)| (*t, (i + 1) as u8)).collect();
    newest.sort_unstable_by(|a, b| b.cmp(a));
    for (rank, (t, n)) in newest.iter().enumerate() {
        let want = (rank < REUSE_HISTORY).then(|| rotation(*n, &mine, *t));
        assert_eq!(rotation_of(&store, tag(*n)), want, "rotation {n} at {t} ms, newest but {rank}");
    }
    assert!(rotation_of(&store, tag(100)).is_some(), "another device's session keeps its own");
    assert!(rotation_of(&store, tag(101)).is_some(), "another login of the device keeps its own");
    // A clock that went back: the record just written is the oldest, and
    // stays; the oldest of the others goes.
    let oldest_kept = newest[REUSE_HISTORY - 1];
    assert_eq!(store.write(&creds(None, vec![CredsOp::PutRotation(rotation(99, &mine, 1))])), Committed);
    assert_eq!(rotation_of(&store, tag(99)), Some(rotation(99, &mine, 1)), "the record just written");
    assert_eq!(rotation_of(&store, tag(oldest_kept.1)), None, "the oldest of the others");
    assert!(rotation_of(&store, tag(newest[REUSE_HISTORY - 2].1)).is_some());
}

pub(super) fn a_revocation_removes_its_session_and_its_rotations_only<S: StoreUnderTest>() {
    let mut store = S::create();
    let current = session(1, 60_000);
    let other_device = session(2, 60_000);
    let other_login = SessionRecord { master: master(3), started_at: at(7), ..session(1, 60_000) };
    let theirs = SessionRecord { master: master(4), email: OTHER.into(), ..session(1, 60_000) };
    let all = [&current, &other_device, &other_login, &theirs];
    let mut ops: Vec<CredsOp> = all.iter().map(|s| CredsOp::PutSession((*s).clone())).collect();
    ops.extend(all.iter().enumerate().map(|(i, s)| CredsOp::PutRotation(rotation(10 + i as u8, s, 1_000))));
    ops.push(CredsOp::PutRotation(rotation(20, &current, 2_000)));
    assert_eq!(store.write(&creds(None, ops)), Committed);
    let mut handles = handles(store);
    // Every handle reads the sessions first, so a store that keeps them in
    // memory holds them when the revocation comes.
    let lookups: Vec<Lookup> = all.iter().map(|s| Lookup { session: Some(s.master), ..Lookup::default() }).collect();
    let want: Vec<Snapshot> =
        all.iter().map(|s| Snapshot { session: Some((*s).clone()), ..Snapshot::default() }).collect();
    all_read(&handles, &lookups, &want, "before the revocation");
    assert_eq!(handles[0].1.write(&revoke_session(&current)), Committed);
    for (name, handle) in &handles {
        assert_eq!(session_of(handle, master(1)), None, "{name}: the revoked session");
        assert_eq!((rotation_of(handle, tag(10)), rotation_of(handle, tag(20))), (None, None), "{name}: its rotations");
        for (n, s) in all.iter().enumerate().skip(1) {
            assert_eq!(session_of(handle, s.master).as_ref(), Some(*s), "{name}: session {n} stays");
            assert!(rotation_of(handle, tag(10 + n as u8)).is_some(), "{name}: rotation of session {n} stays");
        }
    }
    assert_eq!(handles[0].1.write(&revoke_session(&current)), Committed, "revoked twice");
    // The admin command ends the rotations with the sessions.
    assert_eq!(handles[1].1.revoke(EMAIL, Some(mac(2))), 1);
    assert_eq!(rotation_of(&handles[0].1, tag(11)), None, "the admin revoked a device");
    assert!(rotation_of(&handles[0].1, tag(12)).is_some(), "another device of the account");
}

pub(super) fn a_password_is_replaced_on_an_existing_account_only<S: StoreUnderTest>() {
    let mut store = S::create();
    store.add_user(&user(EMAIL, 1));
    store.add_user(&UserRecord { phone: String::new(), ..user(OTHER, 1) });
    assert_eq!(user_of(&store, EMAIL), Some(user(EMAIL, 1)));
    assert_eq!(user_of(&store, OTHER).map(|u| u.phone), Some(String::new()), "no phone on file reads empty");
    assert_eq!(user_of(&store, "nobody@example.com"), None);
    let set = |email: &str, n| creds(None, vec![CredsOp::SetPassword { email: email.into(), password: hash(n) }]);
    assert_eq!(store.write(&set(EMAIL, 2)), Committed);
    assert_eq!(user_of(&store, EMAIL), Some(user(EMAIL, 2)), "the password replaced, the rest kept");
    assert_eq!(user_of(&store, OTHER).map(|u| u.password), Some(hash(1)), "another account");
    assert_eq!(store.write(&set("nobody@example.com", 2)), Committed);
    assert_eq!(user_of(&store, "nobody@example.com"), None, "setting a password makes no account");
}

pub(super) fn a_session_expectation_holds_only_on_the_session_as_read<S: StoreUnderTest>() {
    let mut store = S::create();
    let old = session(1, 60_000);
    assert_eq!(store.write(&rotate(&old, session(2, 120_000))), Conflict, "no session stored");
    assert_eq!(store.write(&put_session(old.clone())), Committed);
    let later = SessionRecord { expires_at: at(60_001), ..old.clone() };
    assert_eq!(store.write(&rotate(&later, session(2, 120_000))), Conflict, "another expiry");
    let elsewhere = SessionRecord { master: master(3), ..old.clone() };
    assert_eq!(store.write(&rotate(&elsewhere, session(2, 120_000))), Conflict, "another session");
    assert_eq!(store.write(&rotate(&old, session(2, 120_000))), Committed);
    assert_eq!((session_of(&store, master(1)), session_of(&store, master(2))), (None, Some(session(2, 120_000))));
    assert_eq!(store.write(&rotate(&old, session(3, 120_000))), Conflict, "one token renews once");
    assert_eq!(session_of(&store, master(3)), None);
}

pub(super) fn a_password_expectation_holds_only_on_the_password_as_read<S: StoreUnderTest>() {
    let mut store = S::create();
    let upgrade = |email: &str, old, new| {
        creds(
            Some(CredsExpectation::Password { email: email.into(), password: hash(old) }),
            vec![CredsOp::SetPassword { email: email.into(), password: hash(new) }],
        )
    };
    assert_eq!(store.write(&upgrade(EMAIL, 1, 2)), Conflict, "no account");
    store.add_user(&user(EMAIL, 1));
    store.add_user(&user(OTHER, 3));
    assert_eq!(store.write(&upgrade(EMAIL, 3, 2)), Conflict, "another password");
    assert_eq!(store.write(&upgrade(EMAIL, 1, 2)), Committed);
    assert_eq!(user_of(&store, EMAIL).map(|u| u.password), Some(hash(2)));
    assert_eq!(store.write(&upgrade(EMAIL, 1, 4)), Conflict, "changed meanwhile: never overwritten");
    assert_eq!(user_of(&store, EMAIL).map(|u| u.password), Some(hash(2)));
}

pub(super) fn a_failed_credentials_expectation_writes_nothing<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    store.add_user(&user(OTHER, 1));
    let ops = vec![
        CredsOp::PutSession(session(3, 60_000)),
        CredsOp::DeleteSession(master(2)),
        CredsOp::SetPassword { email: EMAIL.into(), password: hash(9) },
    ];
    let failing = [
        CredsExpectation::Session { master: master(1), expires_at: at(1) },
        CredsExpectation::Session { master: master(4), expires_at: at(60_000) },
        CredsExpectation::Password { email: EMAIL.into(), password: hash(2) },
        CredsExpectation::Password { email: "nobody@example.com".into(), password: hash(1) },
    ];
    let before = everything(&store);
    for expect in failing {
        assert_eq!(store.write(&creds(Some(expect.clone()), ops.clone())), Conflict, "{expect:?}");
        assert_eq!(everything(&store), before, "{expect:?}: nothing of the batch is written");
    }
    let held = CredsExpectation::Password { email: EMAIL.into(), password: hash(1) };
    assert_eq!(store.write(&creds(Some(held), ops)), Committed, "the same ops, expected right");
    assert_ne!(everything(&store), before);
}

pub(super) fn a_group_applies_its_batches_in_order_each_seeing_the_ones_before<S: StoreUnderTest>() {
    let mut store = S::create();
    store.add_user(&user(EMAIL, 1));
    let record = passcode(key(EMAIL, 1), 1);
    let (s1, s2, s3) = (session(1, 60_000), session(2, 120_000), session(3, 120_000));
    let k = CounterKey::FailuresByEmail(EMAIL.into());
    let reservation = passcodes(None, vec![reserve(minute(2), &k, 1_000)]);
    let upgrade = |old, new| {
        creds(
            Some(CredsExpectation::Password { email: EMAIL.into(), password: hash(old) }),
            vec![CredsOp::SetPassword { email: EMAIL.into(), password: hash(new) }],
        )
    };
    let (put, consume) = (put_passcode(record.clone()), consume(&record));
    let (start, renew, renew_again) = (put_session(s1.clone()), rotate(&s1, s2.clone()), rotate(&s1, s3));
    let (up, up_again, up_after) = (upgrade(1, 2), upgrade(1, 3), upgrade(2, 4));
    let group = [
        &put,
        &start,
        &consume,
        &reservation,
        &renew,
        &up,
        &consume,
        &reservation,
        &renew_again,
        &up_again,
        &reservation,
        &up_after,
    ];
    let outcomes = store.write_group(&group);
    let want = [
        Committed, Committed, Committed, Committed, Committed, Committed, // each sees the ones before
        Conflict, Committed, Conflict, Conflict, Conflict, Committed,
    ];
    assert_eq!(outcomes, want);
    assert_eq!(passcode_of(&store, &record.key), None, "put, then consumed once");
    assert_eq!(counter_of(&store, &k), Some(counter(0, 2, 1_000)), "two of three reservations fit");
    let sessions = (session_of(&store, master(1)), session_of(&store, master(2)), session_of(&store, master(3)));
    assert_eq!(sessions, (None, Some(s2), None), "started, renewed once");
    assert_eq!(user_of(&store, EMAIL).map(|u| u.password), Some(hash(4)));
}

pub(super) fn a_conflict_in_a_group_undoes_its_own_batch_only<S: StoreUnderTest>() {
    let mut store = populated::<S>();
    let [requests, by_ip, ..] = window_keys();
    let stale = rotate(&session(1, 1), session(5, 60_000));
    let overfull =
        passcodes(None, vec![PasscodesOp::Put(passcode(key(EMAIL, 3), 3)), reserve(minute(1), &by_ip, 2_000)]);
    let wrong = passcodes(Some(expecting(&passcode(key(EMAIL, 1), 9), None)), vec![PasscodesOp::Delete(key(EMAIL, 1))]);
    let one = passcodes(None, vec![reserve(minute(5), &requests, 2_000)]);
    let (s3, s4) = (put_session(session(3, 60_000)), put_session(session(4, 60_000)));
    let group = [&s3, &one, &stale, &overfull, &wrong, &one, &s4];
    assert_eq!(store.write_group(&group), [Committed, Committed, Conflict, Conflict, Conflict, Committed, Committed]);
    assert_eq!(session_of(&store, master(3)), Some(session(3, 60_000)));
    assert_eq!(session_of(&store, master(4)), Some(session(4, 60_000)));
    assert_eq!(session_of(&store, master(5)), None, "the stale renewal wrote nothing");
    assert_eq!(session_of(&store, master(1)), Some(session(1, 60_000)), "nor deleted anything");
    assert_eq!(passcode_of(&store, &key(EMAIL, 3)), None, "the batch that did not fit wrote nothing");
    assert_eq!(counter_of(&store, &by_ip), Some(counter(0, 1, 1_000)));
    assert_eq!(passcode_of(&store, &key(EMAIL, 1)), Some(passcode(key(EMAIL, 1), 1)), "the wrong code consumed none");
    assert_eq!(counter_of(&store, &requests), Some(counter(0, 3, 2_000)), "both reservations around them counted");
    let all_conflicts = [&stale, &wrong];
    let before = everything(&store);
    assert_eq!(store.write_group(&all_conflicts), [Conflict, Conflict]);
    assert_eq!(everything(&store), before);
}

pub(super) fn expired_records_are_kept_as_stored_for_the_engine_to_judge<S: StoreUnderTest>() {
    // The store knows no clock: whether a passcode or a session is still
    // good is the engine's call, on what the store answers.
    let mut store = S::create();
    let record = PasscodeRecord { expires_at: at(-1_000), attempts: 5, ..passcode(key(EMAIL, 1), 1) };
    assert_eq!(store.write(&put_passcode(record.clone())), Committed);
    assert_eq!(passcode_of(&store, &record.key), Some(record.clone()), "an expired, spent passcode reads back");
    assert_eq!(store.write(&guess(&record, 5)), Conflict, "its guesses are spent");
    assert_eq!(store.write(&consume(&record)), Committed, "consuming expects the code only");
    let old = SessionRecord { started_at: at(-90_000_000), ..session(1, -1_000) };
    assert_eq!(store.write(&put_session(old.clone())), Committed);
    assert_eq!(session_of(&store, master(1)), Some(old.clone()), "an expired session reads back");
    assert_eq!(store.write(&rotate(&old, session(2, 60_000))), Committed, "and renews as read");
}

pub(super) fn times_read_back_to_the_millisecond_never_later<S: StoreUnderTest>() {
    // The runtime's clock has nanoseconds; a store may keep less, down to
    // the millisecond, but never round a time up (a passcode or a token
    // would outlive its lifetime), and every handle reads the same.
    let store = S::create();
    let odd = |ms, ns| at(ms) + TimeDelta::nanoseconds(ns);
    let s = SessionRecord { started_at: odd(0, 123_456), expires_at: odd(60_000, 987_654), ..session(1, 0) };
    let p = PasscodeRecord { expires_at: odd(180_000, 999_999), ..passcode(key(EMAIL, 1), 1) };
    let k = CounterKey::FailuresByEmail(EMAIL.into());
    let late = odd(1_000, 999_999);
    let r =
        PasscodesOp::Reserve(Reservation { key: k.clone(), bound: Bound::Window { since: at(0), max: 5 }, at: late });
    let close = |what: &str, read: DateTime<Utc>, written: DateTime<Utc>| {
        assert!(read <= written && written - read < TimeDelta::milliseconds(1), "{what}: {read} for {written}");
    };
    let lookup =
        Lookup { passcode: Some(p.key.clone()), session: Some(s.master), counters: vec![k], ..Lookup::default() };
    let mut handles = handles(store);
    // Every handle has read first, as a running server's have (a cache
    // takes in what its own server writes only once it is in use).
    for (_, h) in &handles {
        assert_eq!(h.read(&lookup), Snapshot::default());
    }
    let group = [&put_session(s.clone()), &passcodes(None, vec![PasscodesOp::Put(p.clone()), r])];
    assert_eq!(handles[0].1.write_group(&group), [Committed, Committed]);
    let reads: Vec<Snapshot> = handles.iter().map(|(_, h)| h.read(&lookup)).collect();
    for ((name, _), read) in handles.iter().zip(&reads) {
        let (session, passcode) =
            (read.session.clone().expect("the session"), read.passcode.clone().expect("the passcode"));
        close(name, session.started_at, s.started_at);
        close(name, session.expires_at, s.expires_at);
        close(name, passcode.expires_at, p.expires_at);
        close(name, read.counters[0].1.last, late);
        assert_eq!(read, &reads[0], "{name} reads what the first handle reads");
    }
    // What the engine read is what it expects.
    let (_, mut last) = handles.into_iter().last().expect("a handle");
    let read = reads.last().and_then(|r| r.session.clone()).expect("the session");
    assert_eq!(last.write(&rotate(&read, session(2, 60_000))), Committed);
}

/// `threads` connections race to write `batch` at once; how many commit.
fn race<S: StoreUnderTest>(store: &S, threads: usize, batch: &WriteBatch) -> usize {
    let barrier = Arc::new(Barrier::new(threads));
    let racers: Vec<_> = (0..threads)
        .map(|_| {
            let (mut handle, barrier, batch) = (store.connect(), barrier.clone(), batch.clone());
            std::thread::spawn(move || {
                barrier.wait();
                handle.write(&batch)
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = racers.into_iter().map(|t| t.join().expect("a racer")).collect();
    outcomes.iter().filter(|o| **o == Committed).count()
}

pub(super) fn a_passcode_is_consumed_once_however_many_connections_race<S: StoreUnderTest>() {
    let mut store = S::create();
    let record = passcode(key(EMAIL, 1), 1);
    assert_eq!(store.write(&put_passcode(record.clone())), Committed);
    assert_eq!(race(&store, 50, &consume(&record)), 1);
    assert_eq!(passcode_of(&store, &record.key), None);
}

pub(super) fn a_passcode_takes_no_more_guesses_than_its_bound_however_many_race<S: StoreUnderTest>() {
    let mut store = S::create();
    let record = passcode(key(EMAIL, 1), 1);
    assert_eq!(store.write(&put_passcode(record.clone())), Committed);
    assert_eq!(race(&store, 30, &guess(&record, 5)), 5);
    assert_eq!(passcode_of(&store, &record.key).map(|r| r.attempts), Some(5));
}

pub(super) fn a_bound_holds_exactly_however_many_connections_race<S: StoreUnderTest>() {
    let mut store = S::create();
    let (w, k) = (minute(20), CounterKey::FailuresByEmail(EMAIL.into()));
    let one = passcodes(None, vec![reserve(w, &k, 1_000)]);
    assert_eq!(race(&store, 50, &one), 20);
    assert_eq!(counter_of(&store, &k).map(|c| c.count), Some(20));
    assert_eq!(store.write(&passcodes(None, vec![refund(w, &k, 1_000)])), Committed);
    assert_eq!(race(&store, 10, &one), 1, "a refund gives one place back");
    assert_eq!(counter_of(&store, &k).map(|c| c.count), Some(20));
}

/// Reads `lookups` through every handle and checks each reads `want`.
fn all_read<S: StoreUnderTest>(handles: &[(&'static str, S)], lookups: &[Lookup], want: &[Snapshot], when: &str) {
    for (name, handle) in handles {
        let read: Vec<Snapshot> = handle.read_many(lookups).into_iter().map(sorted).collect();
        assert_eq!(read, want, "{name}, {when}");
    }
}

pub(super) fn every_handle_sees_every_other_handles_writes<S: StoreUnderTest>() {
    let mut store = S::create();
    store.add_user(&user(EMAIL, 0));
    let mut handles = handles(store);
    let k = CounterKey::FailuresByEmail(EMAIL.into());
    let lookups = [
        Lookup { user: Some(EMAIL.into()), session: Some(master(1)), ..Lookup::default() },
        Lookup {
            passcode: Some(key(EMAIL, 1)),
            session: Some(master(2)),
            counters: vec![k.clone()],
            ..Lookup::default()
        },
    ];
    for writer in 0..handles.len() {
        let n = u8::try_from(writer + 1).expect("a few handles");
        let name = handles[writer].0;
        let s1 = session(1, i64::from(n) * 60_000);
        let s2 = session(2, i64::from(n) * 60_000 + 1);
        let p = passcode(key(EMAIL, 1), n);
        let mut want = [
            Snapshot { user: Some(user(EMAIL, n - 1)), ..Snapshot::default() },
            Snapshot { counters: vec![(k.clone(), counter(0, u32::from(n - 1), 1_000))], ..Snapshot::default() },
        ];
        if n == 1 {
            want[1].counters.clear();
        }
        // Every handle has read (and may have cached) the records first.
        all_read(&handles, &lookups, &want, &format!("before {name} writes"));
        let put = creds(None, vec![CredsOp::PutSession(s1.clone())]);
        assert_eq!(handles[writer].1.write(&put), Committed);
        want[0].session = Some(s1.clone());
        all_read(&handles, &lookups, &want, &format!("after {name} started a session"));
        assert_eq!(handles[writer].1.write(&rotate(&s1, s2.clone())), Committed);
        (want[0].session, want[1].session) = (None, Some(s2.clone()));
        all_read(&handles, &lookups, &want, &format!("after {name} renewed it"));
        let password = CredsOp::SetPassword { email: EMAIL.into(), password: hash(n) };
        assert_eq!(handles[writer].1.write(&creds(None, vec![CredsOp::DeleteSession(s2.master), password])), Committed);
        (want[0].user, want[1].session) = (Some(user(EMAIL, n)), None);
        all_read(&handles, &lookups, &want, &format!("after {name} ended it and set a password"));
        let ops = vec![PasscodesOp::Put(p.clone()), reserve(minute(100), &k, 1_000)];
        assert_eq!(handles[writer].1.write(&passcodes(None, ops)), Committed);
        want[1].passcode = Some(p.clone());
        want[1].counters = vec![(k.clone(), counter(0, u32::from(n), 1_000))];
        all_read(&handles, &lookups, &want, &format!("after {name} stored a passcode and counted"));
        assert_eq!(handles[writer].1.write(&consume(&p)), Committed);
    }
}

pub(super) fn writers_taking_turns_with_no_read_between_are_all_seen<S: StoreUnderTest>() {
    let mut handles = handles(S::create());
    let lookups = [1, 2].map(|n| Lookup { session: Some(master(n)), ..Lookup::default() });
    let mut expiry = 0;
    for a in 0..handles.len() {
        for b in (0..handles.len()).filter(|b| *b != a) {
            let before: Vec<Snapshot> = handles[0].1.read_many(&lookups);
            all_read(&handles, &lookups, &before, "before the turns");
            expiry += 1_000;
            let (s1, s2) = (session(1, expiry), session(2, expiry));
            assert_eq!(handles[a].1.write(&put_session(s1.clone())), Committed);
            assert_eq!(handles[b].1.write(&put_session(s2.clone())), Committed);
            let want = [s1, s2].map(|s| Snapshot { session: Some(s), ..Snapshot::default() });
            all_read(&handles, &lookups, &want, &format!("after {} then {} wrote", handles[a].0, handles[b].0));
        }
    }
}

pub(super) fn an_admin_revoke_or_password_change_is_seen_by_every_handle<S: StoreUnderTest>() {
    let mut store = S::create();
    store.add_user(&user(EMAIL, 0));
    store.add_user(&user(OTHER, 0));
    let mut handles = handles(store);
    let theirs = SessionRecord { email: OTHER.into(), ..session(3, 60_000) };
    let lookups = [1, 2, 3].map(|n| Lookup { session: Some(master(n)), ..Lookup::default() });
    let found =
        |sessions: [Option<SessionRecord>; 3]| sessions.map(|session| Snapshot { session, ..Snapshot::default() });
    for admin in 0..handles.len() {
        let name = handles[admin].0;
        let all = [session(1, 60_000), session(2, 60_000), theirs.clone()];
        let ops = all.iter().cloned().map(CredsOp::PutSession).collect();
        assert_eq!(handles[0].1.write(&creds(None, ops)), Committed);
        all_read(&handles, &lookups, &found(all.clone().map(Some)), &format!("before {name} revokes"));
        assert_eq!(handles[admin].1.revoke(EMAIL, Some(mac(1))), 1);
        let [_, mine, theirs] = all.clone().map(Some);
        all_read(&handles, &lookups, &found([None, mine, theirs.clone()]), &format!("{name} revoked one device"));
        assert_eq!(handles[admin].1.revoke(EMAIL, None), 1);
        all_read(&handles, &lookups, &found([None, None, theirs]), &format!("{name} revoked an account"));
        let n = u8::try_from(admin + 1).expect("a few handles");
        assert!(handles[admin].1.set_password(OTHER, &hash(n)));
        assert!(!handles[admin].1.set_password("nobody@example.com", &hash(n)));
        all_read(&handles, &lookups, &found([None, None, None]), &format!("{name} changed a password"));
        let password = Lookup { user: Some(OTHER.into()), ..Lookup::default() };
        let want = [Snapshot { user: Some(user(OTHER, n)), ..Snapshot::default() }];
        all_read(&handles, &[password], &want, &format!("{name} changed a password"));
    }
}
