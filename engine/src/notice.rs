//! Notices: what the operator should hear about, beside the replies. The
//! engine does no IO, so it hands them to the runtime
//! ([`crate::Engine::poll_notice`]), which logs them. They follow from the
//! inputs like every output, so a replayed capture gives the same ones; they
//! never carry a secret.

use std::fmt;
use std::net::IpAddr;

use crate::audit::AuditEvent;
use crate::device::Mac;
use crate::renewal::Reuse;

/// Something the operator should hear about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Notice {
    /// A brute-force limit refused a request (`error|rate_limited`).
    Refused {
        /// The setting that sets the limit (`failures_per_email`,
        /// `max_consecutive_failures`, ...).
        limit: &'static str,
        /// What it counts: the email as sent, the IPv4 address, or the IPv6
        /// prefix.
        subject: String,
        /// The address the request came from.
        peer: IpAddr,
    },
    /// An event of the audit trail: a passcode request, a login or a
    /// renewal, and what came of it.
    Audit(AuditEvent),
    /// A rotated-away token came back after its renewal grace, or from
    /// another binding, so its session is revoked (see `renewal`). Told once
    /// the revocation is settled.
    TokenReuse {
        /// Whose session it was.
        email: String,
        /// The MAC it was presented with.
        mac: Mac,
        /// The address it came from.
        peer: IpAddr,
        /// After the grace, or from another binding.
        why: Reuse,
        /// Whether the revocation was committed. When it was not (the store
        /// failed), the token is refused all the same and the next reuse
        /// tries again.
        revoked: bool,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Refused { limit, subject, peer } => {
                write!(f, "refused by limit {limit} for {subject:?} (request from {peer})")
            }
            Notice::Audit(e) => write!(
                f,
                "{} of {:?} from {} (MAC {}): {}",
                e.kind.as_str(),
                e.subject.email,
                e.subject.ip,
                e.subject.mac,
                e.outcome.as_str()
            ),
            Notice::TokenReuse { email, mac, peer, why, revoked } => {
                let outcome = if *revoked { "session revoked" } else { "revoking the session failed" };
                write!(
                    f,
                    "a rotated-away token of {email:?} came back {} (MAC {mac}, from {peer}): {outcome}",
                    why.as_str()
                )
            }
        }
    }
}
