//! Passcode requests: check the credentials (one password verification,
//! always), mail a fresh passcode, and store it only once the relay has
//! accepted the mail, so a relay that is down leaves no usable passcode
//! behind. `Passcode is sent` goes out only after the passcode is committed.
//!
//! The request is counted before the password is verified
//! (`docs/SECURITY.md`, "Brute-force bounds under concurrency"): one write
//! reserves the request on the per-email and per-IP request counters and a
//! failure on the failure counters, each only while below its bound. When
//! the credentials hold, the failure is given back with the write that
//! stores the passcode.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::audit::{AuditKind, Outcome, Subject};
use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::PasscodeRequest;
use crate::device::Mac;
use crate::flow::{
    Ctx, MailOutcome, MailWait, ReadOutcome, ReadWait, Step, VerifyOutcome, VerifyWait, WriteOutcome, WriteWait,
    credentials,
};
use crate::limits::{AttemptKind, Limits};
use crate::mail;
use crate::passcode::{PasscodeKey, PasscodeRecord, StoredPasscode};
use crate::random;
use crate::secret::Secret;
use crate::store::{Lookup, PasscodesBatch, PasscodesOp, Snapshot, WriteBatch};

/// A passcode request waiting on a write. (It waits on a read as a
/// [`Claim`], on the password verification as a [`Reserved`], and on the
/// relay as a [`Mailing`].)
pub(crate) enum PasscodeWrite {
    /// Waiting for the request's places to be reserved (boxed: the largest
    /// states).
    Reserve(Box<Reserved>),
    /// Waiting for the passcode to commit.
    Store(Subject),
    /// Waiting for the failure to be given back, then this reply.
    Refund(Reply),
}

/// A claim with what was read for it; waiting for its places to be
/// reserved, then for the password verification.
pub(crate) struct Reserved {
    claim: Claim,
    snapshot: Snapshot,
}

/// Waiting for the relay to take the mail of this passcode.
pub(crate) struct Mailing {
    claim: Claim,
    record: PasscodeRecord,
}

/// What the client claimed; waiting for the account and the counters.
pub(crate) struct Claim {
    mac: Mac,
    ip: IpAddr,
    email: String,
    phone: String,
    password: Secret,
    /// When its places were reserved.
    reserved_at: DateTime<Utc>,
    /// Reservations tried so far.
    tries: u8,
}

/// How many times a request re-reads and tries its reservation again after
/// losing a race before it answers `busy`.
const MAX_TRIES: u8 = 4;

impl Claim {
    fn subject(&self) -> Subject {
        Subject { email: self.email.clone(), ip: self.ip, mac: self.mac }
    }
}

/// Records what came of the request, and answers it.
fn done<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, claim: &Claim, outcome: Outcome, reply: Reply) -> Step {
    ctx.audit(AuditKind::PasscodeRequest, outcome, claim.subject());
    Step::Done(reply)
}

pub(crate) fn start(request: &PasscodeRequest<'_>, ip: IpAddr, limits: &Limits) -> Step {
    let claim = Claim {
        mac: request.mac,
        ip,
        email: request.email.to_owned(),
        phone: request.phone.to_owned(),
        password: Secret::new(request.password),
        reserved_at: DateTime::<Utc>::MIN_UTC,
        tries: 0,
    };
    lookup(claim, limits)
}

fn lookup(claim: Claim, limits: &Limits) -> Step {
    let lookup = Lookup {
        user: Some(claim.email.clone()),
        counters: limits.counters(AttemptKind::PasscodeRequest, &claim.email, claim.ip),
        ..Lookup::default()
    };
    Step::Read(ReadWait::Passcode(claim), lookup)
}

/// Writes `ops`, which expect nothing, then goes on as `next`.
fn write(next: PasscodeWrite, ops: Vec<PasscodesOp>) -> Step {
    Step::Write(WriteWait::Passcode(next), WriteBatch::Passcodes(PasscodesBatch { expect: None, ops }))
}

/// Asks for the one password verification, once the request is counted.
fn verify<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, state: Box<Reserved>) -> Step {
    if !ctx.password_capacity() {
        return busy(ctx, &state.claim);
    }
    let (hash, candidate) = credentials::verification(ctx.config, state.snapshot.user.as_ref(), &state.claim.password);
    Step::Verify(VerifyWait::Passcode(state), hash, candidate)
}

/// `busy` for a request whose places are reserved but whose password was
/// never checked: the failure it reserved is given back first, so a server
/// under load does not lock out the clients it could not serve. (The
/// request itself stays counted, as every passcode request does.)
fn busy<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, claim: &Claim) -> Step {
    ctx.audit(AuditKind::PasscodeRequest, Outcome::Busy, claim.subject());
    let ops: Vec<PasscodesOp> = refunds(&ctx.config.limits, claim).collect();
    if ops.is_empty() {
        return Step::Done(Reply::Error(ErrorCode::Busy));
    }
    write(PasscodeWrite::Refund(Reply::Error(ErrorCode::Busy)), ops)
}

/// The failure a request whose credentials held gives back.
fn refunds(limits: &Limits, claim: &Claim) -> impl Iterator<Item = PasscodesOp> {
    limits.failure_refunds(&claim.email, claim.ip, claim.reserved_at, true).into_iter().map(PasscodesOp::Refund)
}

/// The account and the counters, as read: refuse by a limit, or reserve
/// the request's places.
pub(crate) fn looked_up<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, mut claim: Claim, outcome: ReadOutcome) -> Step {
    let Ok(snapshot) = outcome else {
        return done(ctx, &claim, Outcome::StoreUnavailable, Reply::Error(ErrorCode::StoreUnavailable));
    };
    let limits = &ctx.config.limits;
    if let Some(limit) = limits.refusal(AttemptKind::PasscodeRequest, &snapshot, &claim.email, claim.ip, ctx.now) {
        let outcome = ctx.refused(limit, claim.ip);
        return done(ctx, &claim, outcome, Reply::Error(ErrorCode::RateLimited));
    }
    if !ctx.password_capacity() {
        return done(ctx, &claim, Outcome::Busy, Reply::Error(ErrorCode::Busy));
    }
    claim.reserved_at = ctx.now;
    let limits = &ctx.config.limits;
    let reservations = limits.reservations(AttemptKind::PasscodeRequest, &claim.email, claim.ip, ctx.now);
    let state = Box::new(Reserved { claim, snapshot: *snapshot });
    if reservations.is_empty() {
        // Every limit is off: nothing to count.
        return verify(ctx, state);
    }
    write(PasscodeWrite::Reserve(state), reservations.into_iter().map(PasscodesOp::Reserve).collect())
}

/// The password, as verified: mail a passcode if the credentials hold.
pub(crate) fn verified<R: CryptoRng + ?Sized>(
    ctx: &mut Ctx<'_, R>,
    state: Box<Reserved>,
    outcome: VerifyOutcome,
) -> Step {
    let Ok(verified) = outcome else { return busy(ctx, &state.claim) };
    let Reserved { claim, snapshot } = *state;
    let user = snapshot.user.as_ref().filter(|u| u.email == claim.email);
    match (credentials::accepted(user, &claim.phone, verified), user) {
        (true, Some(user)) => {
            credentials::upgrade_if_needed(ctx, user, &claim.password);
            issue(ctx, claim)
        }
        // Counted when it was reserved.
        (_, user) => {
            let why = if user.is_some() { Outcome::WrongPassword } else { Outcome::UnknownEmail };
            ctx.failed(AuditKind::PasscodeRequest, why, claim.subject(), &snapshot, claim.reserved_at);
            Step::Done(Reply::False)
        }
    }
}

impl PasscodeWrite {
    pub(crate) fn written<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: WriteOutcome) -> Step {
        match (self, outcome) {
            (PasscodeWrite::Reserve(state), WriteOutcome::Committed) => verify(ctx, state),
            // A bound was reached since the read: read again, to refuse by
            // the limit (or, if the window rolled over, try again).
            (PasscodeWrite::Reserve(state), WriteOutcome::Conflict) => {
                let Reserved { mut claim, .. } = *state;
                claim.tries += 1;
                if claim.tries >= MAX_TRIES {
                    return done(ctx, &claim, Outcome::Busy, Reply::Error(ErrorCode::Busy));
                }
                lookup(claim, &ctx.config.limits)
            }
            (PasscodeWrite::Reserve(state), WriteOutcome::Unavailable) => {
                done(ctx, &state.claim, Outcome::StoreUnavailable, Reply::Error(ErrorCode::StoreUnavailable))
            }
            (PasscodeWrite::Store(subject), WriteOutcome::Committed) => {
                ctx.audit(AuditKind::PasscodeRequest, Outcome::Sent, subject);
                Step::Done(Reply::PasscodeSent)
            }
            // The batch expects nothing, so a conflict says the store
            // misbehaved: the client may try again.
            (PasscodeWrite::Store(subject), WriteOutcome::Conflict | WriteOutcome::Unavailable) => {
                ctx.audit(AuditKind::PasscodeRequest, Outcome::StoreUnavailable, subject);
                Step::Done(Reply::Error(ErrorCode::StoreUnavailable))
            }
            // Given back or not, the reply was decided before.
            (
                PasscodeWrite::Refund(reply),
                WriteOutcome::Committed | WriteOutcome::Conflict | WriteOutcome::Unavailable,
            ) => Step::Done(reply),
        }
    }
}

impl Mailing {
    /// The relay took the mail (store the passcode) or not (no usable
    /// passcode is left behind); either way the failure reserved for the
    /// request is given back, its credentials having held.
    pub(crate) fn sent<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: MailOutcome) -> Step {
        let Mailing { claim, record } = self;
        let mut ops: Vec<PasscodesOp> = refunds(&ctx.config.limits, &claim).collect();
        match outcome {
            Ok(()) => {
                ops.push(PasscodesOp::Put(record));
                write(PasscodeWrite::Store(claim.subject()), ops)
            }
            Err(_) => {
                ctx.audit(AuditKind::PasscodeRequest, Outcome::MailUnavailable, claim.subject());
                write(PasscodeWrite::Refund(Reply::Error(ErrorCode::MailUnavailable)), ops)
            }
        }
    }
}

/// Draws a passcode and asks the relay to deliver it. It is stored only
/// after the relay accepted it.
fn issue<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, claim: Claim) -> Step {
    let passcode = random::passcode(ctx.rng);
    let salt = random::passcode_salt(ctx.rng);
    let key = PasscodeKey { email: claim.email.clone(), mac: claim.mac, ip: claim.ip };
    let record = ctx.config.passcode.issue(
        key,
        &claim.phone,
        StoredPasscode::seal(&passcode, salt, &ctx.config.server_key),
        ctx.now,
    );
    let mail = mail::passcode_mail(&claim.email, &passcode, record.expires_at);
    Step::Mail(MailWait::Passcode(Mailing { claim, record }), mail)
}
