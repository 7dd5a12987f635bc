//! The benchmark's sessions as the client sees them: base tokens made
//! deterministically from a seed, each with the MAC of its device, kept one
//! per line in a tokens file (`<64 hex digits>|<aa:bb:cc:dd:ee:ff>`) that
//! `seed` writes and `run` reads.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use tokenizer_auth_engine::Mac;

/// Bytes of one entry: 64 hex digits, `|`, a 17-character MAC.
pub(crate) const ENTRY: usize = 64 + 1 + 17;

/// SplitMix64: a tiny, fast, deterministic generator. Benchmark tokens only
/// need to be distinct and reproducible, not secret.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    /// A generator started at `seed`.
    pub(crate) fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0; the tiny modulo bias does not matter
    /// for picking sessions).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The base token of session `index` under `seed`, as 32 bytes.
pub(crate) fn base_bytes(seed: u64, index: u64) -> [u8; 32] {
    // One generator per session, so any session can be rebuilt alone.
    let mut rng = SplitMix::new(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93));
    let mut out = [0u8; 32];
    for chunk in out.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    out
}

/// The device of session `index`: a locally administered unicast MAC
/// (`02:…`) holding the index, so every session has its own device.
pub(crate) fn mac_for(index: u64) -> Mac {
    let [_, _, _, _, a, b, c, d] = index.to_be_bytes();
    Mac::from_octets([0x02, 0xbe, a, b, c, d])
}

/// Lowercase hex of 32 bytes.
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The entries of a tokens file, back to back ([`ENTRY`] bytes each).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tokens {
    data: Vec<u8>,
}

impl Tokens {
    /// How many sessions.
    pub(crate) fn len(&self) -> usize {
        self.data.len() / ENTRY
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Entry `i`: `TOKEN|MAC`, ready to be followed by `|REQUEST`.
    pub(crate) fn entry(&self, i: usize) -> &[u8] {
        &self.data[i * ENTRY..(i + 1) * ENTRY]
    }

    /// Appends one entry.
    pub(crate) fn push(&mut self, entry: &[u8]) {
        debug_assert_eq!(entry.len(), ENTRY);
        self.data.extend_from_slice(entry);
    }

    /// Reads at most `limit` entries (all with `None`) from a tokens file.
    pub(crate) fn load(path: &Path, limit: Option<usize>) -> Result<Tokens, String> {
        let file = File::open(path).map_err(|e| format!("cannot open the tokens file {}: {e}", path.display()))?;
        let mut tokens = Tokens::default();
        for (n, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
            if limit.is_some_and(|l| tokens.len() >= l) {
                break;
            }
            let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if line.len() != ENTRY || line.as_bytes()[64] != b'|' || Mac::parse(&line[65..]).is_none() {
                return Err(format!("{}:{}: expected TOKEN|MAC, got {line:?}", path.display(), n + 1));
            }
            tokens.push(line.as_bytes());
        }
        if let Some(limit) = limit
            && tokens.len() < limit
        {
            return Err(format!(
                "{} holds {} sessions, fewer than the {limit} asked for",
                path.display(),
                tokens.len()
            ));
        }
        Ok(tokens)
    }
}

/// Writes entries to a tokens file as they are made.
pub(crate) struct TokensWriter {
    out: BufWriter<File>,
}

impl TokensWriter {
    /// Creates (or replaces) the file.
    pub(crate) fn create(path: &Path) -> Result<TokensWriter, String> {
        let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TokensWriter { out: BufWriter::with_capacity(1 << 20, file) })
    }

    /// Writes one `TOKEN|MAC` line.
    pub(crate) fn write(&mut self, token_hex: &str, mac: Mac) -> Result<(), String> {
        writeln!(self.out, "{token_hex}|{mac}").map_err(|e| format!("cannot write the tokens file: {e}"))
    }

    /// Flushes the file.
    pub(crate) fn finish(mut self) -> Result<(), String> {
        self.out.flush().map_err(|e| format!("cannot write the tokens file: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_and_distinct() {
        assert_eq!(base_bytes(7, 1), base_bytes(7, 1));
        assert_ne!(base_bytes(7, 1), base_bytes(7, 2));
        assert_ne!(base_bytes(7, 1), base_bytes(8, 1));
        assert_eq!(mac_for(0x0102_0304).to_string(), "02:be:01:02:03:04");
        assert_eq!(hex32(&[0xab; 32]).len(), 64);
    }
}
