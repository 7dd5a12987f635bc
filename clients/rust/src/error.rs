//! Every way a call can fail, one variant each.

use core::fmt;
use std::io;
use std::time::Duration;

use tokenizer_auth_engine::{ErrorCode, Reply};

/// Why a call failed. A refusal the server sends (`False`, `unauthorized`,
/// each `error|<code>` of `docs/PROTOCOL.md`) is the variant named for it;
/// so is a failure on this side. [`Error::is_retryable`] says whether the
/// same call may work if made again later.
///
/// No message holds a password, a passcode or a token.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `False`: a credential failure (unknown email, wrong password or
    /// phone, wrong, expired or spent passcode). The server never says
    /// which.
    CredentialsRejected,
    /// `unauthorized`: the token is unknown, bound to another MAC or IP,
    /// rotated away, or its session is past its absolute age. Log in again.
    Unauthorized,
    /// `error|malformed`: the request line is not one of the protocol (a
    /// field the server finds too long, say).
    Malformed,
    /// `error|line_too_long`: the request line is longer than the server's
    /// `max_line`; the server closed the connection.
    LineTooLong,
    /// `error|rate_limited`: too many passcode requests or failures for
    /// this email or address, or the account is locked; retry after the
    /// window.
    RateLimited,
    /// `error|busy`: too many password checks are queued; retry shortly.
    Busy,
    /// `error|store_unavailable`: the server's store could not read or
    /// commit; retry.
    StoreUnavailable,
    /// `error|mail_unavailable`: the mail relay is down or refused the
    /// message; no passcode was issued; retry.
    MailUnavailable,
    /// `error|too_many_connections`: the server is at its connection limit
    /// and closed the connection; retry later.
    TooManyConnections,
    /// An error code this version does not know (a newer server's).
    UnknownCode(String),
    /// A request retried with a renewed token was told to renew again (a
    /// token lifetime shorter than a round trip). The newest token is
    /// stored; calling again uses it.
    TokenRenewedAgain,
    /// A value that cannot go into a request: refused before anything is
    /// sent.
    Field {
        /// Which value ("email", "password", "MAC", ...).
        field: &'static str,
        /// What is wrong with it ("cannot hold |", ...).
        reason: &'static str,
    },
    /// The token store holds no token: log in first.
    NoToken,
    /// No MAC address for the device: a passcode request and a login need
    /// [`Options::mac`](crate::Options::mac), and so does a request whose
    /// stored token has no MAC with it.
    NoMac,
    /// The token store failed to load or save.
    TokenStore(io::Error),
    /// The server could not be reached.
    Connect {
        /// The server's address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// No reply (or no room to send) within the client's timeout.
    Timeout {
        /// The server's address.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The server closed the connection without (all) the replies.
    Closed {
        /// The server's address.
        addr: String,
    },
    /// The connection failed otherwise.
    Io {
        /// The server's address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// TLS failed: the certificate is untrusted, expired or names another
    /// host, or the server does not speak TLS. Nothing was sent.
    Tls {
        /// The server's address.
        addr: String,
        /// rustls's reason.
        reason: String,
    },
    /// The TLS settings cannot be used: a CA file that holds no certificate,
    /// or a server name that cannot be checked against one.
    TlsConfig(String),
    /// A reply the native protocol does not have for the request: not
    /// UTF-8, too long, unknown, meant for another request, or two
    /// different successors for one token.
    Protocol(String),
}

impl Error {
    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimited
            | Error::Busy
            | Error::StoreUnavailable
            | Error::MailUnavailable
            | Error::TooManyConnections
            | Error::TokenRenewedAgain
            | Error::Connect { .. }
            | Error::Timeout { .. }
            | Error::Closed { .. }
            | Error::Io { .. } => true,
            Error::CredentialsRejected
            | Error::Unauthorized
            | Error::Malformed
            | Error::LineTooLong
            | Error::UnknownCode(_)
            | Error::Field { .. }
            | Error::NoToken
            | Error::NoMac
            | Error::TokenStore(_)
            | Error::Tls { .. }
            | Error::TlsConfig(_)
            | Error::Protocol(_) => false,
        }
    }

    /// The reply the server refused the request with, if it did with one
    /// this version knows: `False`, `unauthorized` or an error code.
    pub fn reply(&self) -> Option<Reply> {
        Some(match self {
            Error::CredentialsRejected => Reply::False,
            Error::Unauthorized => Reply::Unauthorized,
            _ => Reply::Error(self.code()?),
        })
    }

    /// The protocol's error code of this error, if it is one.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::Malformed => ErrorCode::Malformed,
            Error::LineTooLong => ErrorCode::LineTooLong,
            Error::RateLimited => ErrorCode::RateLimited,
            Error::Busy => ErrorCode::Busy,
            Error::StoreUnavailable => ErrorCode::StoreUnavailable,
            Error::MailUnavailable => ErrorCode::MailUnavailable,
            Error::TooManyConnections => ErrorCode::TooManyConnections,
            _ => return None,
        })
    }

    /// The error a refusal stands for, or `None` for a reply that is not
    /// one.
    pub(crate) fn refusal(reply: Reply) -> Option<Error> {
        Some(match reply {
            Reply::False => Error::CredentialsRejected,
            Reply::Unauthorized => Error::Unauthorized,
            Reply::Error(code) => Error::from(code),
            Reply::PasscodeSent | Reply::LoggedIn(_) | Reply::Authorized | Reply::Renew(_) => return None,
        })
    }

    /// Whether the server closes the connection after this reply.
    pub(crate) fn closes_the_connection(&self) -> bool {
        matches!(self, Error::LineTooLong | Error::TooManyConnections)
    }
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Error {
        match code {
            ErrorCode::Malformed => Error::Malformed,
            ErrorCode::LineTooLong => Error::LineTooLong,
            ErrorCode::RateLimited => Error::RateLimited,
            ErrorCode::Busy => Error::Busy,
            ErrorCode::StoreUnavailable => Error::StoreUnavailable,
            ErrorCode::MailUnavailable => Error::MailUnavailable,
            ErrorCode::TooManyConnections => Error::TooManyConnections,
        }
    }
}

/// A refusal's reply text, as the server sent it (no token is in one).
fn reply_text(reply: Reply) -> String {
    let mut text = Vec::new();
    reply.write_text(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(reply) = self.reply() {
            let meaning = match self {
                Error::CredentialsRejected => "the credentials were refused",
                Error::Unauthorized => "the token is not valid: log in again",
                Error::Malformed => "the request line is not one of the protocol",
                Error::LineTooLong => "the request line is longer than the server's max_line; it closed the connection",
                Error::RateLimited => {
                    "too many passcode requests or failures for this email or address; retry after the window"
                }
                Error::Busy => "the server has too many password checks queued; retry shortly",
                Error::StoreUnavailable => "the server's store could not read or commit; retry",
                Error::MailUnavailable => {
                    "the mail relay is down or refused the message; no passcode was issued; retry"
                }
                Error::TooManyConnections => "the server is at its connection limit; retry later",
                _ => "",
            };
            return write!(f, "the server replied {}: {meaning}", reply_text(reply));
        }
        match self {
            Error::UnknownCode(code) => {
                write!(f, "the server replied with an error code this client does not know: {code}")
            }
            Error::TokenRenewedAgain => {
                f.write_str("the server renewed the token again on the retry; the newest token is stored")
            }
            Error::Field { field, reason } => write!(f, "the {field} {reason}"),
            Error::NoToken => f.write_str("no token stored: log in first"),
            Error::NoMac => f.write_str("no MAC address for the device: give the client one (Options::mac)"),
            Error::TokenStore(e) => write!(f, "{e}"),
            Error::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Error::Timeout { addr, after } => write!(f, "no reply from {addr} within {after:?}"),
            Error::Closed { addr } => write!(f, "{addr} closed the connection without a reply"),
            Error::Io { addr, source } => write!(f, "connection to {addr} failed: {source}"),
            Error::Tls { addr, reason } => write!(f, "TLS with {addr} failed: {reason}"),
            Error::TlsConfig(reason) | Error::Protocol(reason) => f.write_str(reason),
            // The refusals, said above.
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::TokenStore(source) | Error::Connect { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_a_variant_with_its_reply() {
        for code in ErrorCode::ALL {
            let error = Error::from(code);
            assert_eq!(error.code(), Some(code));
            assert_eq!(error.reply(), Some(Reply::Error(code)));
            assert_eq!(Error::refusal(Reply::Error(code)).and_then(|e| e.code()), Some(code));
            assert!(error.to_string().starts_with(&format!("the server replied error|{}: ", code.as_str())), "{error}");
            // docs/PROTOCOL.md: all but the first two are retryable.
            let retryable = !matches!(code, ErrorCode::Malformed | ErrorCode::LineTooLong);
            assert_eq!(error.is_retryable(), retryable, "{code:?}");
        }
        assert_eq!(Error::CredentialsRejected.to_string(), "the server replied False: the credentials were refused");
        assert!(Error::Unauthorized.to_string().starts_with("the server replied unauthorized: "));
        assert!(!Error::CredentialsRejected.is_retryable() && !Error::Unauthorized.is_retryable());
        assert!(Error::TokenRenewedAgain.is_retryable());
        assert!(Error::Closed { addr: "x".into() }.is_retryable());
        assert!(!Error::Tls { addr: "x".into(), reason: "y".into() }.is_retryable());
        assert_eq!(Error::refusal(Reply::Authorized).map(|e| e.to_string()), None);
    }
}
