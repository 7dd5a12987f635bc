//! Passcode requests: check the credentials (one password verification,
//! always), mail a fresh passcode, and store it only once the relay has
//! accepted the mail, so a relay that is down leaves no usable passcode
//! behind. `Passcode is sent` goes out only after the passcode is committed.

use std::net::IpAddr;

use rand_core::CryptoRng;

use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::PasscodeRequest;
use crate::device::Mac;
use crate::effect::{Effect, EffectResult};
use crate::flow::{Ctx, Flow, Step, credentials};
use crate::limits::Limits;
use crate::mail;
use crate::passcode::{PasscodeKey, PasscodeRecord, StoredPasscode};
use crate::random;
use crate::secret::Secret;
use crate::store::{Lookup, PasscodesBatch, PasscodesOp, Snapshot, WriteBatch};

pub(crate) enum PasscodeFlow {
    /// Waiting for the account and the counters.
    Lookup(Claim),
    /// Waiting for the password verification (boxed: the largest state).
    Verify(Box<(Claim, Snapshot)>),
    /// Waiting for the relay.
    Mail(Claim, PasscodeRecord),
    /// Waiting for the passcode to commit.
    Store,
    /// Waiting for the counters to commit, then this reply.
    Record(Reply),
}

/// What the client claimed.
pub(crate) struct Claim {
    mac: Mac,
    ip: IpAddr,
    email: String,
    phone: String,
    password: Secret,
}

pub(crate) fn start(request: &PasscodeRequest<'_>, ip: IpAddr) -> Step {
    let claim = Claim {
        mac: request.mac,
        ip,
        email: request.email.to_owned(),
        phone: request.phone.to_owned(),
        password: Secret::new(request.password),
    };
    let lookup = Lookup {
        user: Some(claim.email.clone()),
        counters: Limits::passcode_request_counters(&claim.email, ip),
        ..Lookup::default()
    };
    Step::Await(Flow::Passcode(PasscodeFlow::Lookup(claim)), Effect::Read(lookup))
}

fn write(ops: Vec<PasscodesOp>) -> Effect {
    Effect::Write(WriteBatch::Passcodes(PasscodesBatch { expect: None, ops }))
}

impl PasscodeFlow {
    pub(crate) fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, result: EffectResult) -> Step {
        let limits = &ctx.config.limits;
        match (self, result) {
            (PasscodeFlow::Lookup(claim), EffectResult::Read(snapshot)) => {
                if limits.refuses_passcode_request(&snapshot, &claim.email, claim.ip, ctx.now) {
                    return Step::Done(Reply::Error(ErrorCode::RateLimited));
                }
                if !ctx.password_capacity() {
                    return Step::Done(Reply::Error(ErrorCode::Busy));
                }
                let verify = credentials::verification(ctx.config, snapshot.user.as_ref(), &claim.password);
                Step::Await(Flow::Passcode(PasscodeFlow::Verify(Box::new((claim, *snapshot)))), verify)
            }
            (PasscodeFlow::Verify(state), EffectResult::Verified(verified)) => {
                let (claim, snapshot) = *state;
                let user = snapshot.user.as_ref().filter(|u| u.email == claim.email);
                if let (true, Some(user)) = (credentials::accepted(user, &claim.phone, verified), user) {
                    credentials::upgrade_if_needed(ctx, user, &claim.password);
                    issue(ctx, claim)
                } else {
                    let mut ops: Vec<PasscodesOp> = Vec::with_capacity(5);
                    let counted = limits.passcode_request_bumps(&claim.email, claim.ip, ctx.now);
                    let failed = limits.failure_bumps(&snapshot, &claim.email, claim.ip, ctx.now);
                    ops.extend(counted.into_iter().chain(failed).map(PasscodesOp::Bump));
                    Step::Await(Flow::Passcode(PasscodeFlow::Record(Reply::False)), write(ops))
                }
            }
            (PasscodeFlow::Verify(..), _) => Step::Done(Reply::Error(ErrorCode::Busy)),
            (PasscodeFlow::Mail(claim, record), result) => {
                let counted = limits.passcode_request_bumps(&claim.email, claim.ip, ctx.now);
                let mut ops: Vec<PasscodesOp> = counted.into_iter().map(PasscodesOp::Bump).collect();
                if result == EffectResult::Sent {
                    ops.push(PasscodesOp::Put(record));
                    Step::Await(Flow::Passcode(PasscodeFlow::Store), write(ops))
                } else {
                    let reply = Reply::Error(ErrorCode::MailUnavailable);
                    Step::Await(Flow::Passcode(PasscodeFlow::Record(reply)), write(ops))
                }
            }
            (PasscodeFlow::Store, EffectResult::Committed) => Step::Done(Reply::PasscodeSent),
            // A credential failure is answered only once it is counted, so a
            // crash cannot hand out uncounted guesses.
            (PasscodeFlow::Record(Reply::False), EffectResult::Committed) => Step::Done(Reply::False),
            (PasscodeFlow::Record(Reply::False), _) => Step::Done(Reply::Error(ErrorCode::StoreUnavailable)),
            (PasscodeFlow::Record(reply), _) => Step::Done(reply),
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
