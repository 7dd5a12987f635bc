//! Logins with a passcode. The password is verified exactly once on every
//! path that reaches the credentials; the passcode is compared in constant
//! time. On success the passcode is consumed first (in the passcodes file,
//! under the expectation that it is still the one that was read), and the
//! session is stored second (in the credentials file): a crash between the
//! two loses a login whose reply was never sent, and can never let one
//! passcode log in twice.
//!
//! Every attempt is counted before its password is verified
//! (`docs/SECURITY.md`, "Brute-force bounds under concurrency"): one
//! committed write reserves a failure on the email, IP and account streak
//! counters, and a guess against the passcode, each only while it is below
//! its bound. A failure is then answered `False` at once: it was counted
//! before it was checked, so a crash cannot hand out uncounted guesses. A
//! success gives its places back when it consumes the passcode.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::audit::{AuditKind, Outcome, Subject};
use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::LoginRequest;
use crate::counters::CounterKey;
use crate::flow::{Ctx, ReadOutcome, ReadWait, Step, VerifyOutcome, VerifyWait, WriteOutcome, WriteWait, credentials};
use crate::limits::{AttemptKind, Limits};
use crate::passcode::{PasscodeKey, PasscodeRecord};
use crate::random;
use crate::secret::Secret;
use crate::store::{
    CredsBatch, CredsOp, Lookup, PasscodeExpectation, PasscodesBatch, PasscodesOp, SessionRecord, Snapshot, WriteBatch,
};
use crate::token::{BaseToken, MasterToken};

/// How many times a login re-reads and tries its reservation again after
/// losing a race (a concurrent guess took the passcode's last place, say)
/// before it answers `busy`.
const MAX_TRIES: u8 = 4;

/// A login waiting on a write. (It waits on a read as an [`Attempt`], and
/// on the password verification as a [`Reserved`].)
pub(crate) enum LoginWrite {
    /// Waiting for the attempt's places to be reserved (boxed: the largest
    /// states).
    Reserve(Box<Reserved>),
    /// Waiting for the passcode to be consumed.
    Consume(SessionRecord, BaseToken, Subject),
    /// Waiting for the session to be stored.
    Store(BaseToken, Subject),
    /// Waiting for an unchecked attempt's failure to be given back, then
    /// `busy`.
    GiveBack,
}

/// What the client sent; waiting for the account, the passcode and the
/// counters.
pub(crate) struct Attempt {
    key: PasscodeKey,
    phone: String,
    password: Secret,
    passcode: Secret,
    /// Reservations tried so far.
    tries: u8,
}

/// An attempt with what was read for it, and what it reserved; waiting
/// for its places to be reserved, then for the password verification.
pub(crate) struct Reserved {
    attempt: Attempt,
    snapshot: Snapshot,
    /// When the places were reserved (the windows they count in).
    at: DateTime<Utc>,
    /// Whether a guess against the passcode was reserved: only then is the
    /// passcode compared on its merit.
    guess: bool,
}

impl Attempt {
    fn subject(&self) -> Subject {
        Subject { email: self.key.email.clone(), ip: self.key.ip, mac: self.key.mac }
    }
}

/// Records what came of the login, and answers it.
fn done<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, subject: Subject, outcome: Outcome, reply: Reply) -> Step {
    ctx.audit(AuditKind::Login, outcome, subject);
    Step::Done(reply)
}

pub(crate) fn start(request: &LoginRequest<'_>, ip: IpAddr, limits: &Limits) -> Step {
    let attempt = Attempt {
        key: PasscodeKey { email: request.email.to_owned(), mac: request.mac, ip },
        phone: request.phone.to_owned(),
        password: Secret::new(request.password),
        passcode: Secret::new(request.passcode),
        tries: 0,
    };
    lookup(attempt, limits)
}

fn lookup(attempt: Attempt, limits: &Limits) -> Step {
    let lookup = Lookup {
        user: Some(attempt.key.email.clone()),
        passcode: Some(attempt.key.clone()),
        session: None,
        rotation: None,
        counters: limits.counters(AttemptKind::Login, &attempt.key.email, attempt.key.ip),
    };
    Step::Read(ReadWait::Login(attempt), lookup)
}

/// The account, the passcode and the counters, as read.
pub(crate) fn looked_up<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, attempt: Attempt, outcome: ReadOutcome) -> Step {
    match outcome {
        Ok(snapshot) => reserve(ctx, attempt, *snapshot),
        Err(_) => done(ctx, attempt.subject(), Outcome::StoreUnavailable, Reply::Error(ErrorCode::StoreUnavailable)),
    }
}

/// The password, as verified.
pub(crate) fn verified<R: CryptoRng + ?Sized>(
    ctx: &mut Ctx<'_, R>,
    state: Box<Reserved>,
    outcome: VerifyOutcome,
) -> Step {
    match outcome {
        Ok(verified) => decide(ctx, *state, verified),
        Err(_) => busy(ctx, &state),
    }
}

impl LoginWrite {
    pub(crate) fn written<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: WriteOutcome) -> Step {
        match (self, outcome) {
            (LoginWrite::Reserve(state), WriteOutcome::Committed) => verify(ctx, state),
            // A bound was reached, or the passcode changed, since the read:
            // read again, to refuse by the limit or try again.
            (LoginWrite::Reserve(state), WriteOutcome::Conflict) => {
                let Reserved { mut attempt, .. } = *state;
                attempt.tries += 1;
                if attempt.tries >= MAX_TRIES {
                    return done(ctx, attempt.subject(), Outcome::Busy, Reply::Error(ErrorCode::Busy));
                }
                lookup(attempt, &ctx.config.limits)
            }
            (LoginWrite::Reserve(state), WriteOutcome::Unavailable) => {
                let subject = state.attempt.subject();
                done(ctx, subject, Outcome::StoreUnavailable, Reply::Error(ErrorCode::StoreUnavailable))
            }
            (LoginWrite::Consume(session, token, subject), WriteOutcome::Committed) => {
                let batch = CredsBatch { expect: None, ops: vec![CredsOp::PutSession(session)] };
                Step::Write(WriteWait::Login(LoginWrite::Store(token, subject)), WriteBatch::Creds(batch))
            }
            // Another login consumed this passcode first.
            (LoginWrite::Consume(_, _, subject), WriteOutcome::Conflict) => {
                done(ctx, subject, Outcome::PasscodeUsed, Reply::False)
            }
            (LoginWrite::Consume(_, _, subject), WriteOutcome::Unavailable) => {
                done(ctx, subject, Outcome::StoreUnavailable, Reply::Error(ErrorCode::StoreUnavailable))
            }
            (LoginWrite::Store(token, subject), WriteOutcome::Committed) => {
                done(ctx, subject, Outcome::LoggedIn, Reply::LoggedIn(token))
            }
            // The session's batch expects nothing, so a conflict says the
            // store misbehaved: the client may try again.
            (LoginWrite::Store(_, subject), WriteOutcome::Conflict | WriteOutcome::Unavailable) => {
                done(ctx, subject, Outcome::StoreUnavailable, Reply::Error(ErrorCode::StoreUnavailable))
            }
            // Given back or not, the attempt was never checked.
            (LoginWrite::GiveBack, WriteOutcome::Committed | WriteOutcome::Conflict | WriteOutcome::Unavailable) => {
                Step::Done(Reply::Error(ErrorCode::Busy))
            }
        }
    }
}

/// Refuses the attempt if a bound is already reached as read; otherwise
/// asks the store to reserve its places, the check and the count in one
/// write.
fn reserve<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, attempt: Attempt, snapshot: Snapshot) -> Step {
    let limits = &ctx.config.limits;
    let key = &attempt.key;
    if let Some(limit) = limits.refusal(AttemptKind::Login, &snapshot, &key.email, key.ip, ctx.now) {
        let outcome = ctx.refused(limit, key.ip);
        return done(ctx, attempt.subject(), outcome, Reply::Error(ErrorCode::RateLimited));
    }
    if !ctx.password_capacity() {
        return done(ctx, attempt.subject(), Outcome::Busy, Reply::Error(ErrorCode::Busy));
    }
    let limits = &ctx.config.limits;
    let key = &attempt.key;
    let mut ops: Vec<PasscodesOp> = limits
        .reservations(AttemptKind::Login, &key.email, key.ip, ctx.now)
        .into_iter()
        .map(PasscodesOp::Reserve)
        .collect();
    let policy = &ctx.config.passcode;
    let live = snapshot.passcode.as_ref().filter(|r| r.key == *key && policy.guessable(r, ctx.now));
    let expect = live.map(|record| {
        ops.push(PasscodesOp::CountGuess(key.clone()));
        PasscodeExpectation { key: key.clone(), code: record.code.clone(), attempts_below: Some(policy.max_guesses) }
    });
    let guess = expect.is_some();
    let state = Box::new(Reserved { attempt, snapshot, at: ctx.now, guess });
    if ops.is_empty() {
        // Every limit is off and there is no passcode to guess: nothing to
        // count.
        return verify(ctx, state);
    }
    let batch = PasscodesBatch { expect, ops };
    Step::Write(WriteWait::Login(LoginWrite::Reserve(state)), WriteBatch::Passcodes(batch))
}

/// Asks for the one password verification, once the attempt is counted.
fn verify<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, state: Box<Reserved>) -> Step {
    if !ctx.password_capacity() {
        return busy(ctx, &state);
    }
    let (hash, candidate) =
        credentials::verification(ctx.config, state.snapshot.user.as_ref(), &state.attempt.password);
    Step::Verify(VerifyWait::Login(state), hash, candidate)
}

/// `busy` for an attempt whose places are reserved but whose password was
/// never checked: the failure it reserved (windows and streak) is given
/// back first, so a server under load does not lock out the clients it
/// could not serve. A reserved passcode guess stays counted: erring that
/// way only costs the client a guess.
fn busy<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, state: &Reserved) -> Step {
    ctx.audit(AuditKind::Login, Outcome::Busy, state.attempt.subject());
    let key = &state.attempt.key;
    let ops: Vec<PasscodesOp> = ctx
        .config
        .limits
        .failure_refunds(&key.email, key.ip, state.at, true)
        .into_iter()
        .map(PasscodesOp::Refund)
        .collect();
    if ops.is_empty() {
        return Step::Done(Reply::Error(ErrorCode::Busy));
    }
    let batch = PasscodesBatch { expect: None, ops };
    Step::Write(WriteWait::Login(LoginWrite::GiveBack), WriteBatch::Passcodes(batch))
}

fn consumption(record: &PasscodeRecord) -> PasscodeExpectation {
    PasscodeExpectation { key: record.key.clone(), code: record.code.clone(), attempts_below: None }
}

/// The verdict, once the password has been verified.
fn decide<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, state: Reserved, verified: bool) -> Step {
    let Reserved { attempt, snapshot, at, guess } = state;
    let Attempt { key, phone, password, passcode, .. } = attempt;
    let user = snapshot.user.as_ref().filter(|u| u.email == key.email);
    let record = snapshot.passcode.as_ref().filter(|r| r.key == key);
    let policy = &ctx.config.passcode;
    let passcode_ok =
        record.is_some_and(|r| policy.accepts(&ctx.config.server_key, r, passcode.expose(), ctx.now)) && guess;
    let credentials_ok = credentials::accepted(user, &phone, verified);

    let subject = Subject { email: key.email.clone(), ip: key.ip, mac: key.mac };
    let (true, true, Some(user), Some(record)) = (credentials_ok, passcode_ok, user, record) else {
        // Counted when it was reserved. The client hears `False` whatever
        // failed; the audit trail says what.
        let why = match (user, record) {
            (None, _) => Outcome::UnknownEmail,
            _ if !credentials_ok => Outcome::WrongPassword,
            (_, None) => Outcome::NoLivePasscode,
            (_, Some(r)) if r.expires_at <= ctx.now => Outcome::ExpiredPasscode,
            // Its guesses were spent (no place could be reserved).
            (_, Some(_)) if !guess => Outcome::NoLivePasscode,
            _ => Outcome::WrongPasscode,
        };
        ctx.failed(AuditKind::Login, why, subject, &snapshot, at);
        return Step::Done(Reply::False);
    };
    credentials::upgrade_if_needed(ctx, user, &password);
    let salt = random::token_salt(ctx.rng);
    let token = BaseToken::derive(key.mac, key.ip, &key.email, &salt);
    let master = MasterToken::derive(&token, key.mac, key.ip);
    let session = ctx.config.session.start(master, &key.email, key.mac, ctx.now);
    let mut ops =
        vec![PasscodesOp::Delete(key.clone()), PasscodesOp::Reset(CounterKey::FailureStreak(key.email.clone()))];
    let refunds = ctx.config.limits.failure_refunds(&key.email, key.ip, at, false);
    ops.extend(refunds.into_iter().map(PasscodesOp::Refund));
    let batch = PasscodesBatch { expect: Some(consumption(record)), ops };
    Step::Write(WriteWait::Login(LoginWrite::Consume(session, token, subject)), WriteBatch::Passcodes(batch))
}
