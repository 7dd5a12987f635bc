//! The three requests, parsed from one line of text (native) or one chunk
//! (legacy), and rendered back.
//!
//! The kind is decided by the first `|`-separated field:
//! `require_passcode` is a passcode request, 64 hex digits a token request,
//! anything else a login.

use core::fmt;

use nom::bytes::complete::{tag, take_till};
use nom::character::complete::char;
use nom::combinator::{all_consuming, rest};
use nom::sequence::preceded;
use nom::{IResult, Parser};

use crate::device::Mac;
use crate::token::BaseToken;

/// The first field of a passcode request.
pub const REQUIRE_PASSCODE: &str = "require_passcode";
/// Longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;
/// Longest phone accepted.
pub const MAX_PHONE: usize = 64;

/// The longest MAC spelling a client may send (`aa:bb:cc:dd:ee:ff`).
const LONGEST_MAC: usize = 17;

/// The longest password a native request line of at most `max_line` bytes
/// can carry for the account (`email`, `phone`): what is left of the line
/// once the other fields of the longer request, the passcode request
/// (`require_passcode|MAC|PASSWORD|PHONE|EMAIL`, longer than a login's
/// `MAC|EMAIL|PHONE|PASSWORD|PASSCODE`), are in it with the longest MAC.
pub fn longest_password(max_line: usize, email: &str, phone: &str) -> usize {
    let others = REQUIRE_PASSCODE.len() + LONGEST_MAC + email.len() + phone.len() + 4;
    max_line.saturating_sub(others)
}

/// `require_passcode|MAC|PASSWORD|PHONE|EMAIL`
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PasscodeRequest<'a> {
    /// The device.
    pub mac: Mac,
    /// The account password.
    pub password: &'a str,
    /// The phone.
    pub phone: &'a str,
    /// The account.
    pub email: &'a str,
}

/// `MAC|EMAIL|PHONE|PASSWORD|PASSCODE`
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LoginRequest<'a> {
    /// The device.
    pub mac: Mac,
    /// The account.
    pub email: &'a str,
    /// The phone.
    pub phone: &'a str,
    /// The account password.
    pub password: &'a str,
    /// The passcode from the mail.
    pub passcode: &'a str,
}

/// `TOKEN|MAC|REQUEST[|DATA...]`
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TokenRequest<'a> {
    /// The base token.
    pub token: BaseToken,
    /// The device.
    pub mac: Mac,
    /// What the client asks for (opaque to this server).
    pub request: &'a str,
    /// The rest of the line after the request field, pipes included.
    pub data: Option<&'a str>,
}

/// A parsed request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Request<'a> {
    /// Ask for a passcode by mail.
    Passcode(PasscodeRequest<'a>),
    /// Log in with a passcode.
    Login(LoginRequest<'a>),
    /// Present a token.
    Token(TokenRequest<'a>),
}

/// Why a line is not a request. All of them are answered `error|malformed`
/// (native) or `False` (legacy); the variants exist for logs and tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParseError {
    /// Nothing but a line ending.
    Empty,
    /// Not UTF-8.
    NotUtf8,
    /// A control character (NUL included) inside the line.
    ControlCharacter,
    /// Wrong number or shape of fields.
    Fields,
    /// The MAC field is not a MAC address.
    Mac,
    /// The email is empty or too long.
    Email,
    /// The phone is too long.
    Phone,
}

fn field(input: &str) -> IResult<&str, &str> {
    take_till(|c| c == '|')(input)
}

fn bar(input: &str) -> IResult<&str, char> {
    char('|')(input)
}

/// Four fields, the last of which runs to the end and holds no `|`.
fn four_fields(input: &str) -> IResult<&str, (&str, &str, &str, &str)> {
    let (input, (a, _, b, _, c, _, d)) = all_consuming((field, bar, field, bar, field, bar, field)).parse(input)?;
    Ok((input, (a, b, c, d)))
}

fn five_fields(input: &str) -> IResult<&str, (&str, &str, &str, &str, &str)> {
    let (input, (a, _, rest)) = (field, bar, four_fields).parse(input)?;
    Ok((input, (a, rest.0, rest.1, rest.2, rest.3)))
}

/// After the token: `|MAC|REQUEST` then, optionally, `|DATA` to the end of
/// the line.
fn token_fields(input: &str) -> IResult<&str, (&str, &str, Option<&str>)> {
    let (input, (_, mac, _, request)) = (bar, field, bar, field).parse(input)?;
    let (input, data) = all_consuming(nom::combinator::opt(preceded(bar, rest))).parse(input)?;
    Ok((input, (mac, request, data)))
}

fn passcode_fields(input: &str) -> IResult<&str, (&str, &str, &str, &str)> {
    preceded((tag(REQUIRE_PASSCODE), bar), four_fields).parse(input)
}

fn mac(text: &str) -> Result<Mac, ParseError> {
    Mac::parse(text).ok_or(ParseError::Mac)
}

fn email(text: &str) -> Result<&str, ParseError> {
    if text.is_empty() || text.len() > MAX_EMAIL {
        return Err(ParseError::Email);
    }
    Ok(text)
}

fn phone(text: &str) -> Result<&str, ParseError> {
    if text.len() > MAX_PHONE {
        return Err(ParseError::Phone);
    }
    Ok(text)
}

/// Checks that a line is text a request can be made of: UTF-8 with no
/// control characters. A trailing CR must be removed by the caller.
pub fn text(line: &[u8]) -> Result<&str, ParseError> {
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let text = core::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    // ASCII lines (nearly all) are checked a byte at a time; others also
    // for Unicode's C1 controls.
    let control =
        if line.is_ascii() { line.iter().any(u8::is_ascii_control) } else { text.chars().any(char::is_control) };
    if control {
        return Err(ParseError::ControlCharacter);
    }
    Ok(text)
}

impl<'a> Request<'a> {
    /// Parses one request from its bytes (no line ending).
    pub fn parse(line: &'a [u8]) -> Result<Request<'a>, ParseError> {
        let line = text(line)?;
        // A token request starts with 64 hex digits and then a `|` (or ends).
        let token = match line.as_bytes().get(64) {
            None | Some(b'|') => line.get(..64).and_then(|t| BaseToken::parse(t.as_bytes())),
            Some(_) => None,
        };
        if let Some(token) = token {
            let (_, (m, request, data)) = token_fields(&line[64..]).map_err(|_| ParseError::Fields)?;
            Ok(Request::Token(TokenRequest { token, mac: mac(m)?, request, data }))
        } else if line.split('|').next() == Some(REQUIRE_PASSCODE) {
            let (_, (m, password, p, e)) = passcode_fields(line).map_err(|_| ParseError::Fields)?;
            Ok(Request::Passcode(PasscodeRequest { mac: mac(m)?, password, phone: phone(p)?, email: email(e)? }))
        } else {
            let (_, (m, e, p, password, passcode)) = five_fields(line).map_err(|_| ParseError::Fields)?;
            Ok(Request::Login(LoginRequest { mac: mac(m)?, email: email(e)?, phone: phone(p)?, password, passcode }))
        }
    }

    /// The request's line (no line ending), as a client writes it.
    pub fn render(&self) -> String {
        match self {
            Request::Passcode(r) => {
                format!("{REQUIRE_PASSCODE}|{}|{}|{}|{}", r.mac, r.password, r.phone, r.email)
            }
            Request::Login(r) => {
                format!("{}|{}|{}|{}|{}", r.mac, r.email, r.phone, r.password, r.passcode)
            }
            Request::Token(r) => match r.data {
                Some(data) => format!("{}|{}|{}|{}", r.token, r.mac, r.request, data),
                None => format!("{}|{}|{}", r.token, r.mac, r.request),
            },
        }
    }
}

impl fmt::Debug for PasscodeRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasscodeRequest")
            .field("mac", &self.mac)
            .field("password", &"[redacted]")
            .field("phone", &self.phone)
            .field("email", &self.email)
            .finish()
    }
}

impl fmt::Debug for LoginRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("mac", &self.mac)
            .field("email", &self.email)
            .field("phone", &self.phone)
            .field("password", &"[redacted]")
            .field("passcode", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "aa:bb:cc:dd:ee:ff";
    const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn each_kind_parses() {
        let p = Request::parse(b"require_passcode|AA-BB-CC-DD-EE-FF|pw|555|a@b.c").unwrap();
        let Request::Passcode(p) = p else { panic!("{p:?}") };
        assert_eq!((p.mac.to_string().as_str(), p.password, p.phone, p.email), (MAC, "pw", "555", "a@b.c"));

        let line = format!("{MAC}|a@b.c|555|pw|ABC123");
        let l = Request::parse(line.as_bytes()).unwrap();
        let Request::Login(l) = l else { panic!("{l:?}") };
        assert_eq!((l.email, l.phone, l.password, l.passcode), ("a@b.c", "555", "pw", "ABC123"));

        let line = format!("{TOKEN}|{MAC}|fetch|x|y||z");
        let Request::Token(t) = Request::parse(line.as_bytes()).unwrap() else { panic!() };
        assert_eq!((t.request, t.data), ("fetch", Some("x|y||z")));
        let line = format!("{TOKEN}|{MAC}|fetch");
        let Request::Token(t) = Request::parse(line.as_bytes()).unwrap() else { panic!() };
        assert_eq!(t.data, None);
    }

    #[test]
    fn malformed_lines_are_told_apart() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::Empty),
            (b"\xff\xfe", ParseError::NotUtf8),
            (b"aa:bb:cc:dd:ee:ff|a\0|1|2|3", ParseError::ControlCharacter),
            (b"aa:bb:cc:dd:ee:ff|a|1|2|3|4", ParseError::Fields),
            (b"aa:bb:cc:dd:ee:ff|a|1|2", ParseError::Fields),
            (b"require_passcode|aa:bb:cc:dd:ee:ff|pw|1", ParseError::Fields),
            (b"require_passcode|aa:bb:cc:dd:ee:ff|pw|1|a|b", ParseError::Fields),
            (b"nonsense|a|1|2|3", ParseError::Mac),
            (b"aa:bb:cc:dd:ee:ff||1|2|3", ParseError::Email),
        ];
        for (line, want) in cases {
            assert_eq!(Request::parse(line), Err(*want), "{:?}", String::from_utf8_lossy(line));
        }
        let no_request = format!("{TOKEN}|{MAC}");
        assert_eq!(Request::parse(no_request.as_bytes()), Err(ParseError::Fields));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let line = format!("{MAC}|a@b.c|555|hunter2|QWERTY");
        let shown = format!("{:?}", Request::parse(line.as_bytes()).unwrap());
        assert!(!shown.contains("hunter2") && !shown.contains("QWERTY"), "{shown}");
    }
}
