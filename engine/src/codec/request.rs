//! The three requests, parsed from one line of text (native) or one chunk
//! (legacy), and rendered back.
//!
//! The kind is decided by the first `|`-separated field:
//! `require_passcode` is a passcode request, 64 hex digits a token request,
//! anything else a login.
//!
//! A client builds a request from its values, checks each with
//! [`check_field`] (a value that fails would change the line's fields, or
//! end it early), and sends [`Request::render`]'s line.

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
/// What separates the fields of a request line.
pub const SEPARATOR: char = '|';
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

/// Why a client's value cannot be a field of a request line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FieldError {
    /// It holds the separator, `|`, which would split it in two.
    Separator,
    /// It holds a control character: CR or LF would end the line early,
    /// and the parser refuses the others ([`text`]).
    Control,
    /// It is empty, and the field may not be.
    Empty,
}

impl FieldError {
    /// What is wrong, in a few words that never repeat the value (it may be
    /// a secret): "cannot hold |", "cannot hold control characters", "is
    /// empty".
    pub fn reason(self) -> &'static str {
        match self {
            FieldError::Separator => "cannot hold |",
            FieldError::Control => "cannot hold control characters",
            FieldError::Empty => "is empty",
        }
    }
}

/// Checks a value a client puts into a field: no `|`, no control
/// character, and something in it if the field is `required`. Lengths are
/// the server's to judge (its limits are its configuration).
pub fn check_field(value: &str, required: bool) -> Result<(), FieldError> {
    if value.contains(SEPARATOR) {
        Err(FieldError::Separator)
    } else if value.chars().any(char::is_control) {
        Err(FieldError::Control)
    } else if required && value.is_empty() {
        Err(FieldError::Empty)
    } else {
        Ok(())
    }
}

/// The `DATA` of a token request made of `fields` (each checked with
/// [`check_field`]): the fields joined by `|`, or `None` for no field.
pub fn join_data<S: AsRef<str>>(fields: &[S]) -> Option<String> {
    let (first, rest) = fields.split_first()?;
    let mut data = first.as_ref().to_owned();
    for field in rest {
        data.push(SEPARATOR);
        data.push_str(field.as_ref());
    }
    Some(data)
}

fn field(input: &str) -> IResult<&str, &str> {
    take_till(|c| c == SEPARATOR)(input)
}

fn bar(input: &str) -> IResult<&str, char> {
    char(SEPARATOR)(input)
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
        } else if line.split(SEPARATOR).next() == Some(REQUIRE_PASSCODE) {
            let (_, (m, password, p, e)) = passcode_fields(line).map_err(|_| ParseError::Fields)?;
            Ok(Request::Passcode(PasscodeRequest { mac: mac(m)?, password, phone: phone(p)?, email: email(e)? }))
        } else {
            let (_, (m, e, p, password, passcode)) = five_fields(line).map_err(|_| ParseError::Fields)?;
            Ok(Request::Login(LoginRequest { mac: mac(m)?, email: email(e)?, phone: phone(p)?, password, passcode }))
        }
    }

    /// The request's line (no line ending), as a client writes it.
    pub fn render(&self) -> String {
        let mut line = String::new();
        self.write_line(&mut line);
        line
    }

    /// Appends the native encoding, the line and a line feed, to `out`
    /// (with no copy of the line elsewhere: it may hold a secret).
    pub fn encode_native(&self, out: &mut String) {
        self.write_line(out);
        out.push('\n');
    }

    fn write_line(&self, out: &mut String) {
        use core::fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = match self {
            Request::Passcode(r) => {
                write!(out, "{REQUIRE_PASSCODE}|{}|{}|{}|{}", r.mac, r.password, r.phone, r.email)
            }
            Request::Login(r) => {
                write!(out, "{}|{}|{}|{}|{}", r.mac, r.email, r.phone, r.password, r.passcode)
            }
            Request::Token(r) => match r.data {
                Some(data) => write!(out, "{}|{}|{}|{}", r.token, r.mac, r.request, data),
                None => write!(out, "{}|{}|{}", r.token, r.mac, r.request),
            },
        };
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
    fn client_fields_are_checked_and_data_joined() {
        assert_eq!(check_field("a@b.c", true), Ok(()));
        assert_eq!(check_field("", false), Ok(()));
        assert_eq!(check_field("", true), Err(FieldError::Empty));
        assert_eq!(check_field("a|b", false), Err(FieldError::Separator));
        assert_eq!(check_field("a\nrequire_passcode", true), Err(FieldError::Control));
        assert_eq!(check_field("a\u{85}", true), Err(FieldError::Control));
        assert_eq!(join_data::<&str>(&[]), None);
        assert_eq!(join_data(&["x"]), Some("x".to_owned()));
        assert_eq!(join_data(&["key", "", "value with spaces"]), Some("key||value with spaces".to_owned()));

        let fields = ["put", "key", "", "v"];
        let data = join_data(&fields[1..]);
        let token = BaseToken::parse(TOKEN.as_bytes()).unwrap();
        let request = Request::Token(TokenRequest {
            token,
            mac: Mac::parse(MAC).unwrap(),
            request: fields[0],
            data: data.as_deref(),
        });
        assert_eq!(request.render(), format!("{TOKEN}|{MAC}|put|key||v"));
        let mut encoded = String::from("before\n");
        request.encode_native(&mut encoded);
        assert_eq!(encoded, format!("before\n{TOKEN}|{MAC}|put|key||v\n"));
        assert_eq!(Request::parse(request.render().as_bytes()), Ok(request));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let line = format!("{MAC}|a@b.c|555|hunter2|QWERTY");
        let shown = format!("{:?}", Request::parse(line.as_bytes()).unwrap());
        assert!(!shown.contains("hunter2") && !shown.contains("QWERTY"), "{shown}");
    }
}
