//! Replies and their encodings: a text line on the native protocol, a
//! pickled string on the legacy one.

use crate::codec::pickle;
use crate::token::BaseToken;

/// The prefix of a successful login reply, `𝔄𝔴𝔣𝔢𝔯_𝔥𝔢𝔩𝔩𝔴𝔞𝔩𝔩_` (54 bytes of
/// UTF-8), which the old clients look for.
pub const LOGIN_PREFIX: &str = "\u{1D504}\u{1D534}\u{1D523}\u{1D522}\u{1D52F}_\u{1D525}\u{1D522}\u{1D529}\u{1D529}\u{1D534}\u{1D51E}\u{1D529}\u{1D529}_";

/// Why a request was not served, when the reason is not a credential
/// failure (those are all [`Reply::False`]). Each is documented in
/// `docs/PROTOCOL.md`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    /// The line is not a request of this protocol.
    Malformed,
    /// The line is longer than the limit; the connection is closed after
    /// this reply.
    LineTooLong,
    /// Too many requests or failures for this email or IP; retry later.
    RateLimited,
    /// More password checks are waiting than the server queues; retry.
    Busy,
    /// The store could not read or commit; retry.
    StoreUnavailable,
    /// The mail relay is down or refused the message; no passcode was
    /// issued; retry.
    MailUnavailable,
    /// The server is at its connection limit; the connection is closed.
    TooManyConnections,
}

impl ErrorCode {
    /// The code's wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Busy => "busy",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::MailUnavailable => "mail_unavailable",
            ErrorCode::TooManyConnections => "too_many_connections",
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::Malformed,
        ErrorCode::LineTooLong,
        ErrorCode::RateLimited,
        ErrorCode::Busy,
        ErrorCode::StoreUnavailable,
        ErrorCode::MailUnavailable,
        ErrorCode::TooManyConnections,
    ];
}

/// A reply to one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reply {
    /// `Passcode is sent`: the relay accepted the mail and the passcode is
    /// stored.
    PasscodeSent,
    /// The login prefix and a new base token: the session is stored.
    LoggedIn(BaseToken),
    /// `False`: any credential failure, always the same bytes.
    False,
    /// `authorized`: the token is valid.
    Authorized,
    /// `renew|<token>`: the token had expired and was rotated; the request
    /// was not performed.
    Renew(BaseToken),
    /// `unauthorized`.
    Unauthorized,
    /// `error|<code>`.
    Error(ErrorCode),
}

impl Reply {
    /// Appends the reply's text (no line ending).
    pub fn write_text(&self, out: &mut Vec<u8>) {
        match self {
            Reply::PasscodeSent => out.extend_from_slice(b"Passcode is sent"),
            Reply::LoggedIn(token) => {
                out.extend_from_slice(LOGIN_PREFIX.as_bytes());
                out.extend_from_slice(&token.to_hex());
            }
            Reply::False => out.extend_from_slice(b"False"),
            Reply::Authorized => out.extend_from_slice(b"authorized"),
            Reply::Renew(token) => {
                out.extend_from_slice(b"renew|");
                out.extend_from_slice(&token.to_hex());
            }
            Reply::Unauthorized => out.extend_from_slice(b"unauthorized"),
            Reply::Error(code) => {
                out.extend_from_slice(b"error|");
                out.extend_from_slice(code.as_str().as_bytes());
            }
        }
    }

    /// Appends the native encoding: the text and a line feed.
    pub fn encode_native(&self, out: &mut Vec<u8>) {
        self.write_text(out);
        out.push(b'\n');
    }

    /// Appends the legacy encoding: the text, pickled. The old clients know
    /// only three replies, so every error becomes `False`.
    pub fn encode_legacy(&self, out: &mut Vec<u8>) {
        let reply = match self {
            Reply::PasscodeSent | Reply::LoggedIn(_) | Reply::False => *self,
            _ => Reply::False,
        };
        let mut text = Vec::with_capacity(128);
        reply.write_text(&mut text);
        // Every reply is ASCII or the fixed UTF-8 prefix.
        pickle::dumps_str(core::str::from_utf8(&text).unwrap_or("False"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_prefix_is_54_bytes() {
        assert_eq!(LOGIN_PREFIX.len(), 54);
        assert_eq!(LOGIN_PREFIX.chars().count(), 15);
    }

    #[test]
    fn native_texts() {
        let token = BaseToken::parse(&[b'a'; 64]).unwrap();
        let cases = [
            (Reply::PasscodeSent, "Passcode is sent\n".to_owned()),
            (Reply::LoggedIn(token), format!("{LOGIN_PREFIX}{}\n", "a".repeat(64))),
            (Reply::False, "False\n".into()),
            (Reply::Authorized, "authorized\n".into()),
            (Reply::Renew(token), format!("renew|{}\n", "a".repeat(64))),
            (Reply::Unauthorized, "unauthorized\n".into()),
            (Reply::Error(ErrorCode::RateLimited), "error|rate_limited\n".into()),
        ];
        for (reply, want) in cases {
            let mut out = Vec::new();
            reply.encode_native(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn legacy_errors_become_false() {
        let mut busy = Vec::new();
        Reply::Error(ErrorCode::Busy).encode_legacy(&mut busy);
        let mut f = Vec::new();
        Reply::False.encode_legacy(&mut f);
        assert_eq!(busy, f);
    }
}
