//! Notices: what the operator should hear about, beside the replies. The
//! engine does no IO, so it hands them to the runtime
//! ([`crate::Engine::poll_notice`]), which logs them. They follow from the
//! inputs like every output, so a replayed capture gives the same ones; they
//! never carry a secret.

use std::fmt;
use std::net::IpAddr;

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
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Refused { limit, subject, peer } => {
                write!(f, "refused by limit {limit} for {subject:?} (request from {peer})")
            }
        }
    }
}
