//! Token requests: recompute the master token from the token, the MAC and
//! the peer's IP; look it up; answer `authorized`, rotate an expired but
//! renewable session (`renew|<new token>`), or `unauthorized`.

use std::net::IpAddr;

use rand_core::CryptoRng;

use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::TokenRequest;
use crate::device::Mac;
use crate::flow::{Ctx, ReadOutcome, ReadWait, Step, WriteOutcome, WriteWait};
use crate::random;
use crate::session::Standing;
use crate::store::{CredsBatch, CredsExpectation, CredsOp, Lookup, SessionRecord, WriteBatch};
use crate::token::{BaseToken, MasterToken, PeerDigests};

/// Waiting for the session (then, for a renewable one, for its rotation to
/// commit: [`rotated`]).
pub(crate) struct SessionLookup {
    master: MasterToken,
    mac: Mac,
    ip: IpAddr,
}

pub(crate) fn start(request: &TokenRequest<'_>, peer: &mut PeerDigests) -> Step {
    let (master, ip) = (peer.master(&request.token, request.mac), peer.ip());
    let lookup = Lookup { session: Some(master), ..Lookup::default() };
    Step::Read(ReadWait::Token(SessionLookup { master, mac: request.mac, ip }), lookup)
}

impl SessionLookup {
    pub(crate) fn read<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: ReadOutcome) -> Step {
        let Ok(snapshot) = outcome else { return Step::Done(Reply::Error(ErrorCode::StoreUnavailable)) };
        match snapshot.session.filter(|s| s.master == self.master) {
            None => Step::Done(Reply::Unauthorized),
            Some(session) => match ctx.config.session.standing(&session, ctx.now) {
                Standing::Valid => Step::Done(Reply::Authorized),
                Standing::Dead => Step::Done(Reply::Unauthorized),
                Standing::Renewable => rotate(ctx, &self, &session),
            },
        }
    }
}

/// The rotation to `token` is settled.
pub(crate) fn rotated(token: BaseToken, outcome: WriteOutcome) -> Step {
    match outcome {
        WriteOutcome::Committed => Step::Done(Reply::Renew(token)),
        // Someone else renewed (or revoked) it first: this token is dead.
        WriteOutcome::Conflict => Step::Done(Reply::Unauthorized),
        WriteOutcome::Unavailable => Step::Done(Reply::Error(ErrorCode::StoreUnavailable)),
    }
}

/// Replaces the session's token by a new one. The old row goes in the same
/// batch, under the expectation that nobody renewed it meanwhile, so one
/// expired token yields at most one new token.
fn rotate<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, wait: &SessionLookup, session: &SessionRecord) -> Step {
    let salt = random::token_salt(ctx.rng);
    let token = BaseToken::derive(wait.mac, wait.ip, &session.email, &salt);
    let master = MasterToken::derive(&token, wait.mac, wait.ip);
    let renewed = ctx.config.session.renewed(session, master, ctx.now);
    let batch = CredsBatch {
        expect: Some(CredsExpectation::Session { master: session.master, expires_at: session.expires_at }),
        ops: vec![CredsOp::DeleteSession(session.master), CredsOp::PutSession(renewed)],
    };
    Step::Write(WriteWait::Token(token), WriteBatch::Creds(batch))
}
