//! Lowercase hexadecimal, the text form of every digest this protocol shows.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Encodes 32 bytes as 64 lowercase hex digits.
pub(crate) fn encode32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn push(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Hex digit values, 0xff for anything else: one table lookup per digit
/// and no branch, as this runs on every token request.
static NIBBLES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn nibble(c: u8) -> Option<u8> {
    let v = NIBBLES[usize::from(c)];
    (v != 0xff).then_some(v)
}

/// Decodes exactly 64 hex digits (either case) into 32 bytes.
pub(crate) fn decode32(text: &[u8]) -> Option<[u8; 32]> {
    let text: &[u8; 64] = text.try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    // Only an invalid digit sets a high bit.
    (bad & 0xf0 == 0).then_some(out)
}

/// Decodes an even-length hex string of any size.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks_exact(2).map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?)).collect()
}

/// The value of one hex digit, if it is one.
pub(crate) fn digit(c: u8) -> Option<u8> {
    nibble(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes: [u8; 32] = core::array::from_fn(|i| (i * 37) as u8);
        let text = encode32(&bytes);
        assert_eq!(decode32(&text), Some(bytes));
        assert_eq!(decode32(&text.to_ascii_uppercase()), Some(bytes));
        assert_eq!(decode32(&text[..63]), None);
        assert_eq!(decode(core::str::from_utf8(&text).unwrap()).unwrap(), bytes);
        assert!(decode("abc").is_none());
        assert!(decode("zz").is_none());
    }
}
