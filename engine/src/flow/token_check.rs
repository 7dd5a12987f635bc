//! Token requests: recompute the master token from the token, the MAC and
//! the peer's IP; look it up; answer `authorized`, rotate an expired but
//! renewable session (`renew|<new token>`), or `unauthorized`.

use std::net::IpAddr;

use rand_core::CryptoRng;

use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::TokenRequest;
use crate::device::Mac;
use crate::effect::{Effect, EffectResult};
use crate::flow::{Ctx, Flow, Step};
use crate::random;
use crate::session::Standing;
use crate::store::{CredsBatch, CredsExpectation, CredsOp, Lookup, SessionRecord, WriteBatch};
use crate::token::{BaseToken, MasterToken, PeerDigests};

pub(crate) enum TokenCheck {
    /// Waiting for the session.
    Session(AwaitSession),
    /// Waiting for the rotation to commit.
    Rotate(BaseToken),
}

pub(crate) struct AwaitSession {
    master: MasterToken,
    mac: Mac,
    ip: IpAddr,
}

pub(crate) fn start(request: &TokenRequest<'_>, peer: &mut PeerDigests) -> Step {
    let (master, ip) = (peer.master(&request.token, request.mac), peer.ip());
    let lookup = Lookup { session: Some(master), ..Lookup::default() };
    Step::Await(Flow::Token(TokenCheck::Session(AwaitSession { master, mac: request.mac, ip })), Effect::Read(lookup))
}

impl TokenCheck {
    pub(crate) fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, result: EffectResult) -> Step {
        match (self, result) {
            (TokenCheck::Session(wait), EffectResult::Read(snapshot)) => {
                match snapshot.session.filter(|s| s.master == wait.master) {
                    None => Step::Done(Reply::Unauthorized),
                    Some(session) => match ctx.config.session.standing(&session, ctx.now) {
                        Standing::Valid => Step::Done(Reply::Authorized),
                        Standing::Dead => Step::Done(Reply::Unauthorized),
                        Standing::Renewable => rotate(ctx, &wait, &session),
                    },
                }
            }
            (TokenCheck::Rotate(token), EffectResult::Committed) => Step::Done(Reply::Renew(token)),
            // Someone else renewed (or revoked) it first: this token is dead.
            (TokenCheck::Rotate(_), EffectResult::Conflict) => Step::Done(Reply::Unauthorized),
            _ => Step::Done(Reply::Error(ErrorCode::StoreUnavailable)),
        }
    }
}

/// Replaces the session's token by a new one. The old row goes in the same
/// batch, under the expectation that nobody renewed it meanwhile, so one
/// expired token yields at most one new token.
fn rotate<R: CryptoRng + ?Sized>(ctx: &mut Ctx<'_, R>, wait: &AwaitSession, session: &SessionRecord) -> Step {
    let salt = random::token_salt(ctx.rng);
    let token = BaseToken::derive(wait.mac, wait.ip, &session.email, &salt);
    let master = MasterToken::derive(&token, wait.mac, wait.ip);
    let renewed = ctx.config.session.renewed(session, master, ctx.now);
    let batch = CredsBatch {
        expect: Some(CredsExpectation::Session { master: session.master, expires_at: session.expires_at }),
        ops: vec![CredsOp::DeleteSession(session.master), CredsOp::PutSession(renewed)],
    };
    Step::Await(Flow::Token(TokenCheck::Rotate(token)), Effect::Write(WriteBatch::Creds(batch)))
}
