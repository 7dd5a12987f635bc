//! Token requests: recompute the master token from the token, the MAC and
//! the peer's IP; look it up; answer `authorized`, rotate an expired but
//! renewable session (`renew|<successor>`), or `unauthorized`. A token the
//! store does not know as a session may be one rotated away: within the
//! grace it is told its successor again, after it (or from another
//! binding) it revokes its session (the rules are in `renewal`).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::audit::{AuditKind, Outcome, Subject};
use crate::codec::reply::{ErrorCode, Reply};
use crate::codec::request::TokenRequest;
use crate::device::Mac;
use crate::flow::{Ctx, ReadOutcome, ReadWait, Step, WriteOutcome, WriteWait};
use crate::notice::Notice;
use crate::renewal::{self, Reuse, Verdict};
use crate::session::Standing;
use crate::store::{CredsBatch, CredsExpectation, CredsOp, Lookup, RotationRecord, SessionRecord, WriteBatch};
use crate::token::{BaseToken, MasterToken, PeerDigests, TokenTag};

/// A token request, kept through each state it waits in.
pub(crate) struct Check {
    token: BaseToken,
    master: MasterToken,
    mac: Mac,
    ip: IpAddr,
    /// When the request was read: the renewal grace is judged at this
    /// instant, so a check already under way when its token was rotated
    /// (by another request of the same burst) is never taken for reuse,
    /// however slow the store.
    presented: DateTime<Utc>,
}

/// The reads a token check waits on.
pub(crate) enum TokenRead {
    /// The session its master token names.
    Session(Check),
    /// The rotation of its token, when no session has it.
    Rotation(Check),
}

/// The writes a token check waits on.
pub(crate) enum TokenWrite {
    /// The rotation of its expired session (of this email) to the
    /// successor.
    Rotate(Check, String),
    /// The revocation of a session whose rotated-away token came back.
    Revoke(Reused),
}

/// A rotated-away token that came back: who, from where, and why it is
/// reuse. The operator hears of it once the revocation is settled, so the
/// notice can say whether the session is gone.
pub(crate) struct Reused {
    email: String,
    mac: Mac,
    ip: IpAddr,
    why: Reuse,
}

pub(crate) fn start(request: &TokenRequest<'_>, peer: &mut PeerDigests, now: DateTime<Utc>) -> Step {
    let (master, ip) = (peer.master(&request.token, request.mac), peer.ip());
    let lookup = Lookup { session: Some(master), ..Lookup::default() };
    let check = Check { token: request.token, master, mac: request.mac, ip, presented: now };
    Step::Read(ReadWait::Token(TokenRead::Session(check)), lookup)
}

impl TokenRead {
    pub(crate) fn read<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: ReadOutcome) -> Step {
        let Ok(snapshot) = outcome else { return Step::Done(Reply::Error(ErrorCode::StoreUnavailable)) };
        match self {
            TokenRead::Session(check) => match snapshot.session.filter(|s| s.master == check.master) {
                None => check.find_rotation(ctx),
                Some(session) => match ctx.config.session.standing(&session, ctx.now) {
                    Standing::Valid => Step::Done(Reply::Authorized),
                    Standing::Dead => Step::Done(Reply::Unauthorized),
                    Standing::Renewable => check.rotate(ctx, &session),
                },
            },
            TokenRead::Rotation(check) => {
                let tag = TokenTag::of(&ctx.config.server_key, &check.token);
                match snapshot.rotation.filter(|r| r.tag == tag) {
                    None => Step::Done(Reply::Unauthorized),
                    Some(rotation) => check.rotated_away(ctx, rotation),
                }
            }
        }
    }
}

impl TokenWrite {
    pub(crate) fn written<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: WriteOutcome) -> Step {
        match (self, outcome) {
            (TokenWrite::Rotate(check, email), WriteOutcome::Committed) => {
                ctx.audit(AuditKind::Renewal, Outcome::Renewed, Subject { email, ip: check.ip, mac: check.mac });
                Step::Done(Reply::Renew(renewal::successor(&ctx.config.server_key, &check.token)))
            }
            // Someone else rotated (or revoked) it first: what became of
            // the token is in its rotation record, if anywhere.
            (TokenWrite::Rotate(check, _), WriteOutcome::Conflict) => check.find_rotation(ctx),
            (TokenWrite::Rotate(..), WriteOutcome::Unavailable) => {
                Step::Done(Reply::Error(ErrorCode::StoreUnavailable))
            }
            // The token is dead whatever became of the revocation; a
            // revocation that failed is tried again by the next reuse.
            (TokenWrite::Revoke(Reused { email, mac, ip, why }), outcome) => {
                let revoked = matches!(outcome, WriteOutcome::Committed);
                ctx.notices.push(Notice::TokenReuse { email, mac, peer: ip, why, revoked });
                Step::Done(Reply::Unauthorized)
            }
        }
    }
}

impl Check {
    fn find_rotation<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>) -> Step {
        let lookup = Lookup { rotation: Some(TokenTag::of(&ctx.config.server_key, &self.token)), ..Lookup::default() };
        Step::Read(ReadWait::Token(TokenRead::Rotation(self)), lookup)
    }

    /// Replaces the session's token by its successor. The old row goes in
    /// the same batch, under the expectation that nobody renewed it
    /// meanwhile, and its rotation record comes in.
    fn rotate<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, session: &SessionRecord) -> Step {
        let key = &ctx.config.server_key;
        let successor = renewal::successor(key, &self.token);
        let master = MasterToken::derive(&successor, self.mac, self.ip);
        let renewed = ctx.config.session.renewed(session, master, ctx.now);
        let rotation = RotationRecord {
            tag: TokenTag::of(key, &self.token),
            master: session.master,
            email: session.email.clone(),
            mac: session.mac,
            started_at: session.started_at,
            rotated_at: ctx.now,
        };
        let batch = CredsBatch {
            expect: Some(CredsExpectation::Session { master: session.master, expires_at: session.expires_at }),
            ops: vec![
                CredsOp::DeleteSession(session.master),
                CredsOp::PutSession(renewed),
                CredsOp::PutRotation(rotation),
            ],
        };
        let email = session.email.clone();
        Step::Write(WriteWait::Token(TokenWrite::Rotate(self, email)), WriteBatch::Creds(batch))
    }

    /// The token was rotated away: its successor again, or reuse.
    fn rotated_away<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, rotation: RotationRecord) -> Step {
        match renewal::judge(&ctx.config.session, &rotation, self.master, self.presented) {
            Verdict::Ended => Step::Done(Reply::Unauthorized),
            Verdict::Successor => Step::Done(Reply::Renew(renewal::successor(&ctx.config.server_key, &self.token))),
            Verdict::Reuse(why) => {
                let revoke = CredsOp::RevokeSession {
                    email: rotation.email.clone(),
                    mac: rotation.mac,
                    started_at: rotation.started_at,
                };
                let reused = Reused { email: rotation.email, mac: self.mac, ip: self.ip, why };
                let batch = CredsBatch { expect: None, ops: vec![revoke] };
                Step::Write(WriteWait::Token(TokenWrite::Revoke(reused)), WriteBatch::Creds(batch))
            }
        }
    }
}
