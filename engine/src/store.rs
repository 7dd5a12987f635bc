//! The store as the engine sees it: records, the reads it asks for, and the
//! write batches it wants committed.
//!
//! The records live in two SQLite files (`docs/PROTOCOL.md`, "Files from the
//! old server"), and no transaction spans both, so a [`WriteBatch`] names
//! exactly one of them by its type: [`PasscodesBatch`] (passcodes and
//! counters) or [`CredsBatch`] (users and sessions). A batch carries at most
//! one expectation; the store checks it inside the write transaction and
//! applies nothing when it fails ([`crate::EffectResult::Conflict`]). That is
//! what stops two writers from both consuming one passcode or both renewing
//! one token.

use chrono::{DateTime, Utc};

use crate::counters::{Counter, CounterKey, Refund, Reservation};
use crate::device::Mac;
use crate::passcode::{PasscodeKey, PasscodeRecord, StoredPasscode};
use crate::password::PasswordHash;
use crate::token::{MasterToken, TokenTag};

/// An account.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UserRecord {
    /// The account's email, its identity.
    pub email: String,
    /// The phone on file; empty when none is.
    pub phone: String,
    /// The password, hashed (or plaintext from the old server).
    pub password: PasswordHash,
}

/// A session: one logged-in device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionRecord {
    /// What the session is found by.
    pub master: MasterToken,
    /// Whose session it is.
    pub email: String,
    /// The device it is bound to.
    pub mac: Mac,
    /// When the login that started it happened; renewals keep it, so the
    /// session's absolute age can be bounded.
    pub started_at: DateTime<Utc>,
    /// When the current token expires and must be renewed.
    pub expires_at: DateTime<Utc>,
}

/// A token rotated away, kept so that the same request within the renewal
/// grace gets the same successor, and a later one is caught as reuse (see
/// `renewal`). A session is known by its account, its device and the
/// instant of its login, which its renewals keep.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RotationRecord {
    /// What it is found by: the keyed digest of the rotated-away token.
    pub tag: TokenTag,
    /// The master token it had: the binding it was issued for.
    pub master: MasterToken,
    /// Whose session it was.
    pub email: String,
    /// The session's device.
    pub mac: Mac,
    /// The session's login.
    pub started_at: DateTime<Utc>,
    /// When it was rotated away: its successor's issue.
    pub rotated_at: DateTime<Utc>,
}

/// Records the engine needs for one step of a flow. Absent fields are not
/// read.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Lookup {
    /// The account with this email.
    pub user: Option<String>,
    /// The passcode under this key.
    pub passcode: Option<PasscodeKey>,
    /// The session with this master token.
    pub session: Option<MasterToken>,
    /// The rotation of the token with this tag.
    pub rotation: Option<TokenTag>,
    /// These counters.
    pub counters: Vec<CounterKey>,
}

impl Lookup {
    /// The session with this master token, and nothing else: a token
    /// check's first read, which a session cache can answer whole.
    pub fn session_alone(&self) -> Option<&MasterToken> {
        let Lookup { user, passcode, session, rotation, counters } = self;
        let alone = user.is_none() && passcode.is_none() && rotation.is_none() && counters.is_empty();
        session.as_ref().filter(|_| alone)
    }
}

/// The answer to a [`Lookup`]: what exists of what was asked.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Snapshot {
    /// The account, if it exists.
    pub user: Option<UserRecord>,
    /// The passcode, if one is stored under the key.
    pub passcode: Option<PasscodeRecord>,
    /// The session, if one exists.
    pub session: Option<SessionRecord>,
    /// The rotation, if one is kept.
    pub rotation: Option<RotationRecord>,
    /// The counters that exist, in any order.
    pub counters: Vec<(CounterKey, Counter)>,
}

impl Snapshot {
    /// A counter from the snapshot.
    pub fn counter(&self, key: &CounterKey) -> Option<&Counter> {
        self.counters.iter().find(|(k, _)| k == key).map(|(_, c)| c)
    }
}

/// Writes to commit atomically, to one file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum WriteBatch {
    /// Writes to `op_passcodes.db`.
    Passcodes(PasscodesBatch),
    /// Writes to `op_creds.db`.
    Creds(CredsBatch),
}

/// A batch for the passcodes file.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PasscodesBatch {
    /// Applied only if the passcode under the key is still exactly this one.
    pub expect: Option<PasscodeExpectation>,
    /// The writes, in order.
    pub ops: Vec<PasscodesOp>,
}

/// "The passcode row is still the one I read" (and, for a guess, "it has
/// a guess left").
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PasscodeExpectation {
    /// Which passcode.
    pub key: PasscodeKey,
    /// Its sealed code as read.
    pub code: StoredPasscode,
    /// When set, the guesses counted against it must be fewer than this.
    pub attempts_below: Option<u32>,
}

/// One write to the passcodes file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PasscodesOp {
    /// Store a passcode, replacing any under the same key.
    Put(PasscodeRecord),
    /// Remove the passcode under a key, if any.
    Delete(PasscodeKey),
    /// Count one guess against a passcode (`attempts = attempts + 1`).
    CountGuess(PasscodeKey),
    /// Count an event if its bound allows (see [`Reservation::apply`]);
    /// the batch is a conflict otherwise.
    Reserve(Reservation),
    /// Give back a reserved place (see [`Refund::apply`]).
    Refund(Refund),
    /// Remove a counter.
    Reset(CounterKey),
}

/// A batch for the credentials file.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CredsBatch {
    /// Applied only if this still holds.
    pub expect: Option<CredsExpectation>,
    /// The writes, in order.
    pub ops: Vec<CredsOp>,
}

/// A precondition on the credentials file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CredsExpectation {
    /// The session exists and still expires at this instant (nobody renewed
    /// it meanwhile).
    Session {
        /// Which session.
        master: MasterToken,
        /// Its expiry as read.
        expires_at: DateTime<Utc>,
    },
    /// The account's stored password is still this one.
    Password {
        /// Which account.
        email: String,
        /// Its password as read.
        password: PasswordHash,
    },
}

/// One write to the credentials file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CredsOp {
    /// Store a session.
    PutSession(SessionRecord),
    /// Remove a session.
    DeleteSession(MasterToken),
    /// Keep a rotated-away token's record, replacing any under its tag,
    /// and drop its session's other records but the newest
    /// [`crate::REUSE_HISTORY`] − 1 (by `rotated_at`, then tag): the record
    /// just written always stays, even when a clock that went back makes
    /// it look older than the rest.
    PutRotation(RotationRecord),
    /// Revoke a session at once: remove every session row of it (its
    /// current token) and every rotation record of it.
    RevokeSession {
        /// Whose.
        email: String,
        /// Its device.
        mac: Mac,
        /// Its login.
        started_at: DateTime<Utc>,
    },
    /// Replace an account's stored password.
    SetPassword {
        /// Which account.
        email: String,
        /// The new hash.
        password: PasswordHash,
    },
}
