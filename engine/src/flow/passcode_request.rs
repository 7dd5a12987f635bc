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

use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::PasscodeRequest;
use crate::device::Mac;
use crate::effect::{Effect, EffectResult};
use crate::flow::{Ctx, Flow, Step, credentials};
use crate::limits::{AttemptKind, Limits};
use crate::mail;
use crate::passcode::{PasscodeKey, PasscodeRecord, StoredPasscode};
use crate::random;
use crate::secret::Secret;
use crate::store::{Lookup, PasscodesBatch, PasscodesOp, Snapshot, WriteBatch};

pub(crate) enum PasscodeFlow {
    /// Waiting for the account and the counters.
    Lookup(Claim),
    /// Waiting for the request's places to be reserved (boxed: the largest
    /// states).
    Reserve(Box<(Claim, Snapshot)>),
    /// Waiting for the password verification.
    Verify(Box<(Claim, Snapshot)>),
    /// Waiting for the relay.
    Mail(Claim, PasscodeRecord),
    /// Waiting for the passcode to commit.
    Store,
    /// Waiting for the failure to be given back, then this reply.
    Refund(Reply),
}

/// What the client claimed.
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
    Step::Await(Flow::Passcode(PasscodeFlow::Lookup(claim)), Effect::Read(lookup))
}

fn write(ops: Vec<PasscodesOp>) -> Effect {
    Effect::Write(WriteBatch::Passcodes(PasscodesBatch { expect: None, ops }))
}

/// Asks for the one password verification, once the request is counted.
fn verify<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, state: Box<(Claim, Snapshot)>) -> Step {
    if !ctx.password_capacity() {
        return busy(&ctx.config.limits, &state.0);
    }
    let verify = credentials::verification(ctx.config, state.1.user.as_ref(), &state.0.password);
    Step::Await(Flow::Passcode(PasscodeFlow::Verify(state)), verify)
}

/// `busy` for a request whose places are reserved but whose password was
/// never checked: the failure it reserved is given back first, so a server
/// under load does not lock out the clients it could not serve. (The
/// request itself stays counted, as every passcode request does.)
fn busy(limits: &Limits, claim: &Claim) -> Step {
    let ops: Vec<PasscodesOp> = refunds(limits, claim).collect();
    if ops.is_empty() {
        return Step::Done(Reply::Error(ErrorCode::Busy));
    }
    Step::Await(Flow::Passcode(PasscodeFlow::Refund(Reply::Error(ErrorCode::Busy))), write(ops))
}

/// The failure a request whose credentials held gives back.
fn refunds(limits: &Limits, claim: &Claim) -> impl Iterator<Item = PasscodesOp> {
    limits.failure_refunds(&claim.email, claim.ip, claim.reserved_at, true).into_iter().map(PasscodesOp::Refund)
}

impl PasscodeFlow {
    pub(crate) fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, result: EffectResult) -> Step {
        let limits = &ctx.config.limits;
        match (self, result) {
            (PasscodeFlow::Lookup(mut claim), EffectResult::Read(snapshot)) => {
                if let Some(limit) =
                    limits.refusal(AttemptKind::PasscodeRequest, &snapshot, &claim.email, claim.ip, ctx.now)
                {
                    ctx.refused(limit, claim.ip);
                    return Step::Done(Reply::Error(ErrorCode::RateLimited));
                }
                if !ctx.password_capacity() {
                    return Step::Done(Reply::Error(ErrorCode::Busy));
                }
                claim.reserved_at = ctx.now;
                let reservations = limits.reservations(AttemptKind::PasscodeRequest, &claim.email, claim.ip, ctx.now);
                let state = Box::new((claim, *snapshot));
                if reservations.is_empty() {
                    // Every limit is off: nothing to count.
                    return verify(ctx, state);
                }
                let ops = reservations.into_iter().map(PasscodesOp::Reserve).collect();
                Step::Await(Flow::Passcode(PasscodeFlow::Reserve(state)), write(ops))
            }
            (PasscodeFlow::Reserve(state), EffectResult::Committed) => verify(ctx, state),
            // A bound was reached since the read: read again, to refuse by
            // the limit (or, if the window rolled over, try again).
            (PasscodeFlow::Reserve(state), EffectResult::Conflict) => {
                let (mut claim, _) = *state;
                claim.tries += 1;
                if claim.tries >= MAX_TRIES {
                    return Step::Done(Reply::Error(ErrorCode::Busy));
                }
                lookup(claim, limits)
            }
            (PasscodeFlow::Verify(state), EffectResult::Verified(verified)) => {
                let (claim, snapshot) = *state;
                let user = snapshot.user.as_ref().filter(|u| u.email == claim.email);
                if let (true, Some(user)) = (credentials::accepted(user, &claim.phone, verified), user) {
                    credentials::upgrade_if_needed(ctx, user, &claim.password);
                    issue(ctx, claim)
                } else {
                    // Counted when it was reserved.
                    Step::Done(Reply::False)
                }
            }
            (PasscodeFlow::Verify(state), _) => busy(limits, &state.0),
            (PasscodeFlow::Mail(claim, record), result) => {
                let mut ops: Vec<PasscodesOp> = refunds(limits, &claim).collect();
                if result == EffectResult::Sent {
                    ops.push(PasscodesOp::Put(record));
                    Step::Await(Flow::Passcode(PasscodeFlow::Store), write(ops))
                } else {
                    let reply = Reply::Error(ErrorCode::MailUnavailable);
                    Step::Await(Flow::Passcode(PasscodeFlow::Refund(reply)), write(ops))
                }
            }
            (PasscodeFlow::Store, EffectResult::Committed) => Step::Done(Reply::PasscodeSent),
            (PasscodeFlow::Refund(reply), _) => Step::Done(reply),
            _ => Step::Done(Reply::Error(ErrorCode::StoreUnavailable)),
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
    Step::Await(Flow::Passcode(PasscodeFlow::Mail(claim, record)), Effect::SendMail(mail))
}
