//! Keeping passwords out of captures. The bytes a client sends are recorded
//! with every password field overwritten, so a capture never holds a
//! password, and its replay still takes the same path through the engine:
//!
//! - line and field boundaries are kept (`|`, LF, CR are never in a
//!   password field, and each byte maps to one byte);
//! - printable ASCII becomes `*`, an ASCII control character `\x01`;
//! - a whole UTF-8 character becomes a fixed character of the same length
//!   and the same class (a C1 control stays a control), so the line's
//!   validity and control-character check come out the same;
//! - bytes that are not valid UTF-8 become `\xff`, still invalid.
//!
//! The password is the only field whose bytes the engine hands on without
//! looking at them (to the password-verification effect, whose result is
//! recorded). Which field it is follows from the first field, as in the
//! parser: `require_passcode` puts it third, a token request has none, a
//! login puts it fourth. A legacy connection's listener says which.
//!
//! A multi-byte character split across two reads is recorded whole with
//! the second read; in the rare case of such a split password on a line
//! within three bytes of the length limit, a replay can diverge at that
//! event (it is reported, never silently accepted).

use crate::codec::request::REQUIRE_PASSCODE;
use crate::engine::Listener;

/// The stand-in for a C1 control character (U+0080).
const C1: &[u8] = "\u{80}".as_bytes();
/// Stand-ins for other characters of 2, 3 and 4 bytes.
const WIDE: [&[u8]; 3] = ["\u{a0}".as_bytes(), "\u{2022}".as_bytes(), "\u{1f512}".as_bytes()];

/// Where a connection's byte stream is, as far as redaction cares.
#[derive(Debug)]
pub(crate) struct Redactor {
    listener: Listener,
    /// Index of the current field in the current line.
    field: usize,
    /// The first field so far, while it decides the kind (at most 65 bytes
    /// are kept).
    first: Vec<u8>,
    /// Which field holds the password in this line, once known.
    password_field: Option<usize>,
    /// An unfinished UTF-8 sequence in a password field.
    pending: Vec<u8>,
}

fn utf8_len(lead: u8) -> Option<usize> {
    match lead {
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

impl Redactor {
    pub(crate) fn new(listener: Listener) -> Redactor {
        Redactor { listener, field: 0, first: Vec::new(), password_field: None, pending: Vec::new() }
    }

    fn decide(&mut self) {
        self.password_field = match self.listener {
            Listener::LegacyPasscode => Some(2),
            Listener::LegacyLogin => Some(3),
            Listener::Native if self.first == REQUIRE_PASSCODE.as_bytes() => Some(2),
            Listener::Native if self.first.len() == 64 && self.first.iter().all(u8::is_ascii_hexdigit) => None,
            Listener::Native => Some(3),
        };
    }

    /// Ends an unfinished sequence: it was not valid UTF-8.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        out.extend(self.pending.drain(..).map(|_| 0xff));
    }

    /// The bytes as a capture records them.
    pub(crate) fn redact(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if b == b'\n' || b == b'|' || (b == b'\r' && self.pending.is_empty()) {
                self.flush_pending(&mut out);
                out.push(b);
                if b == b'\n' {
                    self.field = 0;
                    self.first.clear();
                    self.password_field = None;
                } else if b == b'|' {
                    if self.field == 0 {
                        self.decide();
                    }
                    self.field += 1;
                }
                continue;
            }
            if self.field == 0 {
                if self.first.len() <= 64 {
                    self.first.push(b);
                }
                out.push(b);
            } else if self.password_field == Some(self.field) {
                self.redact_byte(b, &mut out);
            } else {
                out.push(b);
            }
        }
        out
    }

    fn redact_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if let Some(&lead) = self.pending.first() {
            if (0x80..=0xbf).contains(&b) {
                self.pending.push(b);
                if Some(self.pending.len()) == utf8_len(lead) {
                    let sequence = core::mem::take(&mut self.pending);
                    match core::str::from_utf8(&sequence).ok().and_then(|s| s.chars().next()) {
                        Some(c) if c.is_control() => out.extend_from_slice(C1),
                        Some(_) => out.extend_from_slice(WIDE[sequence.len() - 2]),
                        None => out.extend(sequence.iter().map(|_| 0xff)),
                    }
                }
                return;
            }
            self.flush_pending(out);
        }
        match b {
            0x00..=0x1f | 0x7f => out.push(0x01),
            0x20..=0x7e => out.push(b'*'),
            _ if utf8_len(b).is_some() => self.pending.push(b),
            _ => out.push(0xff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::request::{ParseError, Request, text};

    fn redact(listener: Listener, chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = Redactor::new(listener);
        chunks.iter().flat_map(|c| r.redact(c)).collect()
    }

    #[test]
    fn passwords_are_blanked_and_nothing_else() {
        let got = redact(Listener::Native, &[b"require_passcode|aa:bb:cc:dd:ee:ff|s3cr3t|555|a@b.c\n"]);
        assert_eq!(got, b"require_passcode|aa:bb:cc:dd:ee:ff|******|555|a@b.c\n");
        let got = redact(Listener::Native, &[b"aa:bb:cc:dd:ee:ff|a@b.c|555|hunter2|ABC123\r\n"]);
        assert_eq!(got, b"aa:bb:cc:dd:ee:ff|a@b.c|555|*******|ABC123\r\n");
        let token = format!("{}|aa:bb:cc:dd:ee:ff|get|x|y\n", "ab".repeat(32));
        assert_eq!(redact(Listener::Native, &[token.as_bytes()]), token.as_bytes());
        let got = redact(Listener::LegacyLogin, &[b"aa:bb:cc:dd:ee:ff|a@b.c|555|pw|ABC123"]);
        assert_eq!(got, b"aa:bb:cc:dd:ee:ff|a@b.c|555|**|ABC123");
    }

    #[test]
    fn split_reads_are_followed() {
        let got = redact(Listener::Native, &[b"require_pass", b"code|aa:bb:cc:dd:ee:ff|se", b"cret|555|a@b.c\n"]);
        assert_eq!(got, b"require_passcode|aa:bb:cc:dd:ee:ff|******|555|a@b.c\n");
    }

    #[test]
    fn the_parse_outcome_is_kept() {
        let lines: [&[u8]; 6] = [
            "aa:bb:cc:dd:ee:ff|a@b.c|5|pässwörd😀|C".as_bytes(),
            b"aa:bb:cc:dd:ee:ff|a@b.c|5|bad\xff\xfeutf8|C",
            b"aa:bb:cc:dd:ee:ff|a@b.c|5|nul\0inside|C",
            "aa:bb:cc:dd:ee:ff|a@b.c|5|c1\u{85}control|C".as_bytes(),
            b"aa:bb:cc:dd:ee:ff|a@b.c|5|cut\xc3|C",
            b"aa:bb:cc:dd:ee:ff|a@b.c|5|overlong\xe0\x80\x80|C",
        ];
        for line in lines {
            let redacted = redact(Listener::Native, &[line]);
            assert_eq!(redacted.len(), line.len());
            let outcome = |l: &[u8]| -> Result<(), ParseError> { text(l).map(drop) };
            assert_eq!(outcome(&redacted), outcome(line), "{:?}", String::from_utf8_lossy(line));
            assert_eq!(Request::parse(&redacted).is_ok(), Request::parse(line).is_ok());
        }
    }
}
