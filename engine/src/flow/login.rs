//! Logins with a passcode. The password is verified exactly once on every
//! path that reaches the credentials; the passcode is compared in constant
//! time. On success the passcode is consumed first (in the passcodes file,
//! under the expectation that it is still the one that was read), and the
//! session is stored second (in the credentials file): a crash between the
//! two loses a login whose reply was never sent, and can never let one
//! passcode log in twice.
//!
//! A failure is answered `False` only once it has been counted, against the
//! passcode (void after its last allowed guess) and against the email, IP
//! and account streak. When the count's expectation fails because a
//! concurrent login changed the passcode first, the answer is `False`
//! whatever the guess was, so racing guesses learn nothing uncounted.

use std::net::IpAddr;

use rand_core::CryptoRng;

use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::LoginRequest;
use crate::effect::{Effect, EffectResult};
use crate::flow::{Ctx, Flow, Step, credentials};
use crate::limits::{CounterKey, Limits};
use crate::passcode::{AfterFailure, PasscodeKey, PasscodeRecord};
use crate::random;
use crate::secret::Secret;
use crate::store::{
    CredsBatch, CredsOp, Lookup, PasscodeExpectation, PasscodesBatch, PasscodesOp, SessionRecord, Snapshot, WriteBatch,
};
use crate::token::{BaseToken, MasterToken};

pub(crate) enum LoginFlow {
    /// Waiting for the account, the passcode and the counters.
    Lookup(Attempt),
    /// Waiting for the password verification (boxed: the largest state).
    Verify(Box<(Attempt, Snapshot)>),
    /// Waiting for the passcode to be consumed.
    Consume(SessionRecord, BaseToken),
    /// Waiting for the session to be stored.
    Store(BaseToken),
    /// Waiting for the failure to be counted.
    Record,
}

/// What the client sent.
pub(crate) struct Attempt {
    key: PasscodeKey,
    phone: String,
    password: Secret,
    passcode: Secret,
}

pub(crate) fn start(request: &LoginRequest<'_>, ip: IpAddr) -> Step {
    let attempt = Attempt {
        key: PasscodeKey { email: request.email.to_owned(), mac: request.mac, ip },
        phone: request.phone.to_owned(),
        password: Secret::new(request.password),
        passcode: Secret::new(request.passcode),
    };
    let lookup = Lookup {
        user: Some(attempt.key.email.clone()),
        passcode: Some(attempt.key.clone()),
        session: None,
        counters: Limits::login_counters(&attempt.key.email, ip),
    };
    Step::Await(Flow::Login(LoginFlow::Lookup(attempt)), Effect::Read(lookup))
}

fn expectation(record: &PasscodeRecord) -> PasscodeExpectation {
    PasscodeExpectation { key: record.key.clone(), code: record.code.clone(), attempts: record.attempts }
}

impl LoginFlow {
    pub(crate) fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, result: EffectResult) -> Step {
        match (self, result) {
            (LoginFlow::Lookup(attempt), EffectResult::Read(snapshot)) => {
                let key = &attempt.key;
                if ctx.config.limits.refuses_login(&snapshot, &key.email, key.ip, ctx.now) {
                    return Step::Done(Reply::Error(ErrorCode::RateLimited));
                }
                if !ctx.password_capacity() {
                    return Step::Done(Reply::Error(ErrorCode::Busy));
                }
                let verify = credentials::verification(ctx.config, snapshot.user.as_ref(), &attempt.password);
                Step::Await(Flow::Login(LoginFlow::Verify(Box::new((attempt, *snapshot)))), verify)
            }
            (LoginFlow::Verify(state), EffectResult::Verified(verified)) => {
                let (attempt, snapshot) = *state;
                decide(ctx, attempt, snapshot, verified)
            }
            (LoginFlow::Verify(..), _) => Step::Done(Reply::Error(ErrorCode::Busy)),
            (LoginFlow::Consume(session, token), EffectResult::Committed) => {
                let batch = CredsBatch { expect: None, ops: vec![CredsOp::PutSession(session)] };
                Step::Await(Flow::Login(LoginFlow::Store(token)), Effect::Write(WriteBatch::Creds(batch)))
            }
            // Another login consumed this passcode first.
            (LoginFlow::Consume(..), EffectResult::Conflict) => Step::Done(Reply::False),
            (LoginFlow::Store(token), EffectResult::Committed) => Step::Done(Reply::LoggedIn(token)),
            (LoginFlow::Record, EffectResult::Committed | EffectResult::Conflict) => Step::Done(Reply::False),
            _ => Step::Done(Reply::Error(ErrorCode::StoreUnavailable)),
        }
    }
}

/// The verdict, once the password has been verified.
fn decide<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, attempt: Attempt, snapshot: Snapshot, verified: bool) -> Step {
    let Attempt { key, phone, password, passcode } = attempt;
    let user = snapshot.user.as_ref().filter(|u| u.email == key.email);
    let record = snapshot.passcode.as_ref().filter(|r| r.key == key);
    let policy = &ctx.config.passcode;
    let passcode_ok = record.is_some_and(|r| policy.accepts(&ctx.config.server_key, r, passcode.expose(), ctx.now));
    let credentials_ok = credentials::accepted(user, &phone, verified);

    if let (true, true, Some(user), Some(record)) = (credentials_ok, passcode_ok, user, record) {
        credentials::upgrade_if_needed(ctx, user, &password);
        let salt = random::token_salt(ctx.rng);
        let token = BaseToken::derive(key.mac, key.ip, &key.email, &salt);
        let master = MasterToken::derive(&token, key.mac, key.ip);
        let session = ctx.config.session.start(master, &key.email, key.mac, ctx.now);
        let batch = PasscodesBatch {
            expect: Some(expectation(record)),
            ops: vec![
                PasscodesOp::Delete(key.clone()),
                PasscodesOp::Reset(CounterKey::FailureStreak(key.email.clone())),
            ],
        };
        return Step::Await(
            Flow::Login(LoginFlow::Consume(session, token)),
            Effect::Write(WriteBatch::Passcodes(batch)),
        );
    }

    let failures = ctx.config.limits.failure_bumps(&snapshot, &key.email, key.ip, ctx.now);
    let mut ops: Vec<PasscodesOp> = Vec::with_capacity(4);
    if let Some(record) = record {
        ops.push(match policy.after_failure(record, ctx.now) {
            AfterFailure::CountGuess(attempts) => PasscodesOp::SetAttempts { key: key.clone(), attempts },
            AfterFailure::Void => PasscodesOp::Delete(key.clone()),
        });
    }
    ops.extend(failures.into_iter().map(PasscodesOp::Bump));
    let batch = PasscodesBatch { expect: record.map(expectation), ops };
    Step::Await(Flow::Login(LoginFlow::Record), Effect::Write(WriteBatch::Passcodes(batch)))
}
