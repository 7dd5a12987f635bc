//! The events of the audit trail (docs/OPERATIONS.md, "The audit trail"):
//! who asked for a passcode, logged in or renewed a token, from where, and
//! what came of it, with the reason a refusal keeps from the client (the
//! client is told `False` whatever failed; the operator is told which).
//!
//! The flows decide them where they decide the reply, and hand them out as
//! [`Notice::Audit`](crate::Notice::Audit); the runtime logs them. They
//! never carry a password, a passcode or a token.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::counters::CounterKey;
use crate::device::Mac;
use crate::io::Listener;

/// Who an event is about, and from where.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Subject {
    /// The email as sent.
    pub email: String,
    /// The address the request came from.
    pub ip: IpAddr,
    /// The device.
    pub mac: Mac,
}

/// What was attempted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuditKind {
    /// A passcode request.
    PasscodeRequest,
    /// A login with a passcode.
    Login,
    /// An expired token rotated to its successor.
    Renewal,
    /// A failure filled the account's streak of consecutive failures: it
    /// refuses every login and passcode request until `lockout` after its
    /// last failure (or `limits reset`). The outcome is the failure's.
    AccountLocked,
}

impl AuditKind {
    /// The event's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::PasscodeRequest => "passcode_requested",
            AuditKind::Login => "login",
            AuditKind::Renewal => "token_renewed",
            AuditKind::AccountLocked => "account_locked",
        }
    }
}

/// What came of it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The passcode was mailed and stored.
    Sent,
    /// The login stored a session.
    LoggedIn,
    /// The token was rotated.
    Renewed,
    /// No account has this email.
    UnknownEmail,
    /// The password (or the phone on file) did not match.
    WrongPassword,
    /// No passcode is live for this email, device and address (none was
    /// asked for, it was used, or its guesses are spent).
    NoLivePasscode,
    /// The passcode had expired.
    ExpiredPasscode,
    /// The passcode did not match.
    WrongPasscode,
    /// Another login consumed the passcode first.
    PasscodeUsed,
    /// A brute-force limit refused it.
    RateLimited,
    /// The account is locked (its streak of failures is full).
    Locked,
    /// Too many password checks were waiting.
    Busy,
    /// The store failed.
    StoreUnavailable,
    /// The relay failed.
    MailUnavailable,
}

impl Outcome {
    /// The outcome of a request the limit on `counter` refused.
    pub(crate) fn refused_by(counter: &CounterKey) -> Outcome {
        match counter {
            CounterKey::FailureStreak(_) => Outcome::Locked,
            _ => Outcome::RateLimited,
        }
    }

    /// The outcome's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::LoggedIn => "logged_in",
            Outcome::Renewed => "renewed",
            Outcome::UnknownEmail => "unknown_email",
            Outcome::WrongPassword => "wrong_password",
            Outcome::NoLivePasscode => "no_live_passcode",
            Outcome::ExpiredPasscode => "expired_passcode",
            Outcome::WrongPasscode => "wrong_passcode",
            Outcome::PasscodeUsed => "passcode_used",
            Outcome::RateLimited => "rate_limited",
            Outcome::Locked => "locked",
            Outcome::Busy => "busy",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::MailUnavailable => "mail_unavailable",
        }
    }
}

/// One event of the audit trail.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEvent {
    /// When it was decided, by the engine's clock.
    pub at: DateTime<Utc>,
    /// What was attempted.
    pub kind: AuditKind,
    /// What came of it.
    pub outcome: Outcome,
    /// Who, from where.
    pub subject: Subject,
    /// The listener the request came in on (none for work on the side).
    pub listener: Option<Listener>,
}
