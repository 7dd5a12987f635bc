//! The flows, as pure logic. Each request in flight is a small state
//! machine, one struct per state it can wait in; [`Flow::resume`] takes the
//! result of the effect it waited on and returns the next [`Step`]. Every
//! state transition of the protocol lives in this folder.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::codec::reply::Reply;
use crate::config::Config;
use crate::counters::CounterKey;
use crate::effect::{Effect, EffectResult};
use crate::notice::Notice;

pub(crate) mod credentials;
pub(crate) mod login;
pub(crate) mod passcode_request;
pub(crate) mod token_check;
pub(crate) mod upgrade;

/// What a flow sees of the engine while it takes a step.
pub(crate) struct Ctx<'a, R: ?Sized> {
    pub(crate) now: DateTime<Utc>,
    pub(crate) rng: &'a mut R,
    pub(crate) config: &'a Config,
    /// Password verifications and hashes in flight.
    pub(crate) password_checks: usize,
    /// Flows started on the side, with no client waiting (password upgrades).
    pub(crate) detached: Vec<(Flow, Effect)>,
    /// What the operator should hear about this step.
    pub(crate) notices: Vec<Notice>,
}

impl<R: CryptoRng + ?Sized> Ctx<'_, R> {
    /// Whether one more password verification or hash may be queued.
    pub(crate) fn password_capacity(&self) -> bool {
        self.password_checks + self.detached.len() < self.config.max_password_checks
    }

    /// Tells the operator that the limit on `counter` refused a request
    /// from `peer`.
    pub(crate) fn refused(&mut self, counter: CounterKey, peer: IpAddr) {
        let subject = self.config.limits.subject(&counter);
        self.notices.push(Notice::Refused { limit: counter.limit_name(), subject, peer });
    }
}

/// The next step of a flow.
pub(crate) enum Step {
    /// Wait for this effect's result, then resume.
    Await(Flow, Effect),
    /// Finished with this reply.
    Done(Reply),
}

/// A flow waiting for an effect.
pub(crate) enum Flow {
    Token(token_check::TokenCheck),
    Passcode(passcode_request::PasscodeFlow),
    Login(login::LoginFlow),
    Upgrade(upgrade::PasswordUpgrade),
}

impl Flow {
    /// Continues with the result of the effect this flow waited on.
    pub(crate) fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, result: EffectResult) -> Step {
        match self {
            Flow::Token(f) => f.resume(ctx, result),
            Flow::Passcode(f) => f.resume(ctx, result),
            Flow::Login(f) => f.resume(ctx, result),
            Flow::Upgrade(f) => f.resume(result),
        }
    }
}
