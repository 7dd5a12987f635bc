//! The one pickle the old clients read: a `str`, byte-exact to what Python
//! 3.11's `pickle.dumps(s)` writes (protocol 4, one frame).
//!
//! ```text
//! 80 04               PROTO 4
//! 95 <u64 LE>         FRAME, length of everything up to and including STOP
//! 8c <u8> <utf-8>     SHORT_BINUNICODE       (under 256 bytes)
//! 58 <u32 LE> <utf-8> BINUNICODE             (256 bytes and more)
//! 94                  MEMOIZE
//! 2e                  STOP
//! ```

/// The first byte of every pickle (PROTO): a client that reads it where a
/// native reply line should be has reached a legacy port.
pub const FIRST_BYTE: u8 = 0x80;

/// Python frames payloads up to this size inline; longer strings are written
/// outside the frame. No reply comes near it.
pub const MAX_STR: usize = 64 * 1024 - 16;

/// Appends `pickle.dumps(text)` to `out`. Strings longer than [`MAX_STR`]
/// are cut at a character boundary (no reply is that long).
pub fn dumps_str(text: &str, out: &mut Vec<u8>) {
    let mut end = text.len().min(MAX_STR);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    let header = if bytes.len() < 256 { 2 } else { 5 };
    let frame = (header + bytes.len() + 2) as u64;
    out.extend_from_slice(&[FIRST_BYTE, 0x04, 0x95]);
    out.extend_from_slice(&frame.to_le_bytes());
    if bytes.len() < 256 {
        out.extend_from_slice(&[0x8c, bytes.len() as u8]);
    } else {
        out.push(0x58);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(bytes);
    out.extend_from_slice(&[0x94, 0x2e]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        dumps_str(text, &mut out);
        out
    }

    #[test]
    fn false_matches_the_spec_example() {
        assert_eq!(
            dumps("False"),
            [0x80, 0x04, 0x95, 0x09, 0, 0, 0, 0, 0, 0, 0, 0x8c, 0x05, b'F', b'a', b'l', b's', b'e', 0x94, 0x2e]
        );
    }

    #[test]
    fn matches_python_for_short_and_long_strings() {
        // Python 3.11: pickle.dumps("Passcode is sent").hex()
        assert_eq!(hex(&dumps("Passcode is sent")), "80049514000000000000008c1050617373636f64652069732073656e74942e");
        // Python 3.11: pickle.dumps("").hex()
        assert_eq!(hex(&dumps("")), "80049504000000000000008c00942e");
        // Python 3.11: pickle.dumps("é" * 200).hex()[:32]; 400 UTF-8 bytes
        // take BINUNICODE with a 4-byte length.
        let long = dumps(&"é".repeat(200));
        assert_eq!(hex(&long[..16]), "80049597010000000000005890010000");
        assert_eq!(&long[long.len() - 2..], &[0x94, 0x2e]);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
