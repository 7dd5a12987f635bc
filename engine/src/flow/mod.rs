//! The flows, as pure logic. Each request in flight is a small state
//! machine, one struct per state it can wait in; every state transition of
//! the protocol lives in this folder.
//!
//! A waiting state says by its type which kind of effect it waits for: a
//! flow returns [`Step::Read`] with a [`ReadWait`], [`Step::Write`] with a
//! [`WriteWait`], and so on, and the effect it asks for is built from that
//! step ([`Step::next`]), so a flow cannot wait for one kind and ask for
//! another. When the result comes in, [`Waiting::resume`] converts it, in
//! this one place, to the outcome of the kind that state takes
//! ([`ReadOutcome`], [`WriteOutcome`], ...), and each flow matches its
//! outcome exhaustively: a result of another kind never reaches a flow, it
//! is the runtime's breach of contract (see `contract`).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use rand_core::CryptoRng;

use crate::audit::{AuditEvent, AuditKind, Outcome, Subject};
use crate::codec::reply::Reply;
use crate::config::Config;
use crate::counters::CounterKey;
use crate::effect::{Effect, EffectKind, EffectResult, Mail};
use crate::io::Listener;
use crate::notice::Notice;
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::store::{Lookup, Snapshot, WriteBatch};

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
    /// Flows started on the side, with no client waiting (password
    /// upgrades, each asking for a hash).
    pub(crate) detached: Vec<Step>,
    /// What the operator should hear about this step.
    pub(crate) notices: Vec<Notice>,
    /// The listener of the request this step is for (none for work on the
    /// side), for the audit trail.
    pub(crate) listener: Option<Listener>,
}

impl<R: CryptoRng + ?Sized> Ctx<'_, R> {
    /// Whether one more password verification or hash may be queued.
    pub(crate) fn password_capacity(&self) -> bool {
        self.password_checks + self.detached.len() < self.config.max_password_checks
    }

    /// Records an event of the audit trail.
    pub(crate) fn audit(&mut self, kind: AuditKind, outcome: Outcome, subject: Subject) {
        let event = AuditEvent { at: self.now, kind, outcome, subject, listener: self.listener };
        self.notices.push(Notice::Audit(event));
    }

    /// Tells the operator that the limit on `counter` refused a request
    /// from `peer`, and returns the outcome for the audit trail.
    pub(crate) fn refused(&mut self, counter: CounterKey, peer: IpAddr) -> Outcome {
        let outcome = Outcome::refused_by(&counter);
        let subject = self.config.limits.subject(&counter);
        self.notices.push(Notice::Refused { limit: counter.limit_name(), subject, peer });
        outcome
    }

    /// Records a failure (`why`) whose places were reserved at `at` after
    /// `snapshot` was read, and, when its place filled the email's streak
    /// by the counters as read, that it locked the account. The store does
    /// not say what it counted, so this is judged from the read: two
    /// failures racing from one read may fill the streak without either
    /// telling it (the refusals that follow say `locked` all the same),
    /// and a login or `limits reset` that ended the streak between the
    /// read and the reservation makes a lock told that did not happen.
    pub(crate) fn failed(
        &mut self,
        kind: AuditKind,
        why: Outcome,
        subject: Subject,
        snapshot: &Snapshot,
        at: DateTime<Utc>,
    ) {
        let streak = CounterKey::FailureStreak(subject.email.clone());
        let stored = snapshot.counter(&streak);
        let locked = self.config.limits.fills_streak(streak.clone(), stored, at);
        self.audit(kind, why, subject.clone());
        if locked {
            self.audit(AuditKind::AccountLocked, why, subject);
        }
    }
}

/// The next step of a flow: wait in a state for an effect of one kind, or
/// finish.
pub(crate) enum Step {
    /// Read these records.
    Read(ReadWait, Lookup),
    /// Commit this batch.
    Write(WriteWait, WriteBatch),
    /// Verify a password: the stored hash, and the candidate.
    Verify(VerifyWait, PasswordHash, Secret),
    /// Hash this password for storage.
    Hash(HashWait, Secret),
    /// Hand this mail to the relay.
    Mail(MailWait, Mail),
    /// Finished with this reply.
    Done(Reply),
}

/// What a step asks of the engine.
pub(crate) enum Next {
    /// Carry out this effect; its result goes to the waiting state.
    Perform(Waiting, Effect),
    /// Send this reply.
    Reply(Reply),
}

impl Step {
    /// The effect a waiting step asks for, built from the step itself, or
    /// the reply of a finished one.
    pub(crate) fn next(self) -> Next {
        match self {
            Step::Read(wait, lookup) => Next::Perform(Waiting::Read(wait), Effect::Read(lookup)),
            Step::Write(wait, batch) => Next::Perform(Waiting::Write(wait), Effect::Write(batch)),
            Step::Verify(wait, hash, candidate) => {
                Next::Perform(Waiting::Verify(wait), Effect::VerifyPassword { hash, candidate })
            }
            Step::Hash(wait, password) => Next::Perform(Waiting::Hash(wait), Effect::HashPassword { password }),
            Step::Mail(wait, mail) => Next::Perform(Waiting::Mail(wait), Effect::SendMail(mail)),
            Step::Done(reply) => Next::Reply(reply),
        }
    }
}

/// The effect could not be carried out ([`EffectResult::Failed`]): the
/// store or the relay is down, or hashing failed.
pub(crate) struct Unavailable;

/// What a store read gave.
pub(crate) type ReadOutcome = Result<Box<Snapshot>, Unavailable>;
/// Whether the password matched.
pub(crate) type VerifyOutcome = Result<bool, Unavailable>;
/// The new stored hash.
pub(crate) type HashOutcome = Result<PasswordHash, Unavailable>;
/// Whether the relay accepted the mail.
pub(crate) type MailOutcome = Result<(), Unavailable>;

/// What became of a store write.
pub(crate) enum WriteOutcome {
    /// The batch is durable.
    Committed,
    /// Its expectation did not hold; nothing was written.
    Conflict,
    /// The store could not be written.
    Unavailable,
}

/// The flow states that wait on a store read.
pub(crate) enum ReadWait {
    /// A token check's session, or its token's rotation.
    Token(token_check::TokenRead),
    /// A passcode request's account and counters.
    Passcode(passcode_request::Claim),
    /// A login's account, passcode and counters.
    Login(login::Attempt),
}

/// The flow states that wait on a store write.
pub(crate) enum WriteWait {
    /// A token check's rotation, or a revocation for reuse.
    Token(token_check::TokenWrite),
    /// A passcode request's reservation, passcode or refund.
    Passcode(passcode_request::PasscodeWrite),
    /// A login's reservation, consumption, session or refund.
    Login(login::LoginWrite),
    /// A password upgrade's new hash, which nobody waits for.
    Upgrade,
}

/// The flow states that wait on a password verification.
pub(crate) enum VerifyWait {
    /// A passcode request's credentials (boxed: the largest states).
    Passcode(Box<passcode_request::Reserved>),
    /// A login's credentials.
    Login(Box<login::Reserved>),
}

/// The flow states that wait on a password hash.
pub(crate) enum HashWait {
    /// A password upgrade.
    Upgrade(upgrade::Rehash),
}

/// The flow states that wait on the mail relay.
pub(crate) enum MailWait {
    /// A passcode request's mail.
    Passcode(passcode_request::Mailing),
}

/// A flow state waiting for an effect, by the kind of effect.
pub(crate) enum Waiting {
    Read(ReadWait),
    Write(WriteWait),
    Verify(VerifyWait),
    Hash(HashWait),
    Mail(MailWait),
}

impl Waiting {
    /// The kind of effect this state waits for.
    pub(crate) fn kind(&self) -> EffectKind {
        match self {
            Waiting::Read(_) => EffectKind::Read,
            Waiting::Write(_) => EffectKind::Write,
            Waiting::Verify(_) => EffectKind::VerifyPassword,
            Waiting::Hash(_) => EffectKind::HashPassword,
            Waiting::Mail(_) => EffectKind::SendMail,
        }
    }

    /// Continues with the result of the effect this state waited on: the
    /// one place a result is converted to the outcome its state takes.
    /// [`EffectResult::Failed`] is the `Unavailable` of any kind. A result
    /// of another kind is given back as `Err` with the kind it answers,
    /// and no flow sees it.
    pub(crate) fn resume<R: CryptoRng + ?Sized>(
        self,
        ctx: &mut Ctx<'_, R>,
        result: EffectResult,
    ) -> Result<Step, EffectKind> {
        let step = match result {
            EffectResult::Failed => match self {
                Waiting::Read(wait) => wait.resume(ctx, Err(Unavailable)),
                Waiting::Write(wait) => wait.resume(ctx, WriteOutcome::Unavailable),
                Waiting::Verify(wait) => wait.resume(ctx, Err(Unavailable)),
                Waiting::Hash(wait) => wait.resume(Err(Unavailable)),
                Waiting::Mail(wait) => wait.resume(ctx, Err(Unavailable)),
            },
            EffectResult::Read(snapshot) => match self {
                Waiting::Read(wait) => wait.resume(ctx, Ok(snapshot)),
                _ => return Err(EffectKind::Read),
            },
            EffectResult::Committed => match self {
                Waiting::Write(wait) => wait.resume(ctx, WriteOutcome::Committed),
                _ => return Err(EffectKind::Write),
            },
            EffectResult::Conflict => match self {
                Waiting::Write(wait) => wait.resume(ctx, WriteOutcome::Conflict),
                _ => return Err(EffectKind::Write),
            },
            EffectResult::Verified(verified) => match self {
                Waiting::Verify(wait) => wait.resume(ctx, Ok(verified)),
                _ => return Err(EffectKind::VerifyPassword),
            },
            EffectResult::Hashed(hash) => match self {
                Waiting::Hash(wait) => wait.resume(Ok(hash)),
                _ => return Err(EffectKind::HashPassword),
            },
            EffectResult::Sent => match self {
                Waiting::Mail(wait) => wait.resume(ctx, Ok(())),
                _ => return Err(EffectKind::SendMail),
            },
        };
        Ok(step)
    }
}

impl ReadWait {
    fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: ReadOutcome) -> Step {
        match self {
            ReadWait::Token(wait) => wait.read(ctx, outcome),
            ReadWait::Passcode(claim) => passcode_request::looked_up(ctx, claim, outcome),
            ReadWait::Login(attempt) => login::looked_up(ctx, attempt, outcome),
        }
    }
}

impl WriteWait {
    fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: WriteOutcome) -> Step {
        match self {
            WriteWait::Token(wait) => wait.written(ctx, outcome),
            WriteWait::Passcode(wait) => wait.written(ctx, outcome),
            WriteWait::Login(wait) => wait.written(ctx, outcome),
            WriteWait::Upgrade => upgrade::stored(outcome),
        }
    }
}

impl VerifyWait {
    fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: VerifyOutcome) -> Step {
        match self {
            VerifyWait::Passcode(state) => passcode_request::verified(ctx, state, outcome),
            VerifyWait::Login(state) => login::verified(ctx, state, outcome),
        }
    }
}

impl HashWait {
    fn resume(self, outcome: HashOutcome) -> Step {
        match self {
            HashWait::Upgrade(rehash) => rehash.hashed(outcome),
        }
    }
}

impl MailWait {
    fn resume<R: CryptoRng + ?Sized>(self, ctx: &mut Ctx<'_, R>, outcome: MailOutcome) -> Step {
        match self {
            MailWait::Passcode(mailing) => mailing.sent(ctx, outcome),
        }
    }
}
