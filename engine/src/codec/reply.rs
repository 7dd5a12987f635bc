//! Replies and their encodings: a text line on the native protocol, a
//! pickled string on the legacy one; and, for clients, the native line
//! parsed back ([`Reply::parse`]).

use crate::codec::pickle;
use crate::token::BaseToken;

/// The prefix of a successful login reply, `𝔄𝔴𝔣𝔢𝔯_𝔥𝔢𝔩𝔩𝔴𝔞𝔩𝔩_` (54 bytes of
/// UTF-8), which the old clients look for.
pub const LOGIN_PREFIX: &str = "\u{1D504}\u{1D534}\u{1D523}\u{1D522}\u{1D52F}_\u{1D525}\u{1D522}\u{1D529}\u{1D529}\u{1D534}\u{1D51E}\u{1D529}\u{1D529}_";

// The other replies' texts, shared by the rendering and the parser.
const PASSCODE_SENT: &str = "Passcode is sent";
const FALSE: &str = "False";
const AUTHORIZED: &str = "authorized";
const UNAUTHORIZED: &str = "unauthorized";
const RENEW_PREFIX: &str = "renew|";
const ERROR_PREFIX: &str = "error|";

/// The longest error code a parser takes as one it does not know (rather
/// than as garbage): the known ones are under 24 bytes, and a token (64
/// hex digits) is never taken for one.
const LONGEST_UNKNOWN_CODE: usize = 32;

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

    /// The code of a wire text (`rate_limited`), if it is one of these.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
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

/// Why a line is not a reply of the native protocol (see
/// [`Reply::parse`]). Neither variant repeats the line: it could hold a
/// token.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReplyError {
    /// Not a reply of the protocol, or one whose token is not 64 lowercase
    /// hex digits.
    NotAReply,
    /// `error|` and a code this version does not know (at most 32 of
    /// `a`–`z`, `0`–`9` and `_`), given here: a newer server may have
    /// more codes.
    UnknownCode(String),
}

impl Reply {
    /// Appends the reply's text (no line ending).
    pub fn write_text(&self, out: &mut Vec<u8>) {
        match self {
            Reply::PasscodeSent => out.extend_from_slice(PASSCODE_SENT.as_bytes()),
            Reply::LoggedIn(token) => {
                out.extend_from_slice(LOGIN_PREFIX.as_bytes());
                out.extend_from_slice(&token.to_hex());
            }
            Reply::False => out.extend_from_slice(FALSE.as_bytes()),
            Reply::Authorized => out.extend_from_slice(AUTHORIZED.as_bytes()),
            Reply::Renew(token) => {
                out.extend_from_slice(RENEW_PREFIX.as_bytes());
                out.extend_from_slice(&token.to_hex());
            }
            Reply::Unauthorized => out.extend_from_slice(UNAUTHORIZED.as_bytes()),
            Reply::Error(code) => {
                out.extend_from_slice(ERROR_PREFIX.as_bytes());
                out.extend_from_slice(code.as_str().as_bytes());
            }
        }
    }

    /// Parses one native reply line, without its line ending (framing, and
    /// the CR a line may end with, are [`crate::codec::native`]'s): the
    /// inverse of [`Reply::write_text`]. Strict, since a server never
    /// varies its replies: a token is exactly 64 lowercase hex digits, and
    /// nothing else may come before or after a reply's text.
    pub fn parse(line: &str) -> Result<Reply, ReplyError> {
        let reply = match line {
            PASSCODE_SENT => Reply::PasscodeSent,
            FALSE => Reply::False,
            AUTHORIZED => Reply::Authorized,
            UNAUTHORIZED => Reply::Unauthorized,
            _ => {
                if let Some(hex) = line.strip_prefix(LOGIN_PREFIX) {
                    Reply::LoggedIn(reply_token(hex)?)
                } else if let Some(hex) = line.strip_prefix(RENEW_PREFIX) {
                    Reply::Renew(reply_token(hex)?)
                } else if let Some(code) = line.strip_prefix(ERROR_PREFIX) {
                    Reply::Error(ErrorCode::parse(code).ok_or_else(|| unknown_code(code))?)
                } else {
                    return Err(ReplyError::NotAReply);
                }
            }
        };
        Ok(reply)
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

/// A token as a server writes it: 64 lowercase hex digits.
fn reply_token(hex: &str) -> Result<BaseToken, ReplyError> {
    let lowercase = hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lowercase {
        return Err(ReplyError::NotAReply);
    }
    BaseToken::parse(hex.as_bytes()).ok_or(ReplyError::NotAReply)
}

fn unknown_code(code: &str) -> ReplyError {
    let plausible = !code.is_empty()
        && code.len() <= LONGEST_UNKNOWN_CODE
        && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plausible { ReplyError::UnknownCode(code.to_owned()) } else { ReplyError::NotAReply }
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
    fn native_texts_parse_back() {
        let token = BaseToken::parse(&[b'a'; 64]).unwrap();
        let mut replies = vec![
            Reply::PasscodeSent,
            Reply::LoggedIn(token),
            Reply::False,
            Reply::Authorized,
            Reply::Renew(token),
            Reply::Unauthorized,
        ];
        replies.extend(ErrorCode::ALL.map(Reply::Error));
        for reply in replies {
            let mut text = Vec::new();
            reply.write_text(&mut text);
            assert_eq!(Reply::parse(core::str::from_utf8(&text).unwrap()), Ok(reply));
        }
    }

    #[test]
    fn lines_that_are_no_reply_are_refused() {
        let hex = "ab".repeat(32);
        let not_a_reply = [
            String::new(),
            "authorized ".into(),
            " authorized".into(),
            "Authorized".into(),
            "authorized\n".into(),
            "authorized\r".into(),
            "false".into(),
            "Passcode is sent.".into(),
            "passcode is sent".into(),
            "renew|".into(),
            format!("renew|{}", &hex[1..]),
            format!("renew|{hex}0"),
            format!("renew|{}", hex.to_uppercase()),
            format!("renew|{}", "zz".repeat(32)),
            format!("renew {hex}"),
            format!("renew|{hex}|"),
            format!("{LOGIN_PREFIX}{}", &hex[2..]),
            format!("{LOGIN_PREFIX} {hex}"),
            LOGIN_PREFIX.into(),
            hex.clone(),
            "error|".into(),
            "error|Busy".into(),
            "error|busy ".into(),
            "error|busy|more".into(),
            format!("error|{}", "x".repeat(33)),
            format!("error|{hex}"),
            "error".into(),
            "\u{80}\u{4}".into(),
        ];
        for line in not_a_reply {
            assert_eq!(Reply::parse(&line), Err(ReplyError::NotAReply), "{line:?}");
        }
        assert_eq!(Reply::parse("error|out_of_paper"), Err(ReplyError::UnknownCode("out_of_paper".into())));
        assert_eq!(Reply::parse(&format!("error|{}", "x".repeat(32))), Err(ReplyError::UnknownCode("x".repeat(32))));
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
