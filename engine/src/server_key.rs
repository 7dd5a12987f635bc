//! The server key: 32 secret bytes that key the passcode digests, kept
//! outside the database files (docs/SECURITY.md, "Secrets at rest"). A
//! copy of the files without the key cannot be searched for a passcode:
//! there are only 36⁶ codes, so an unkeyed digest falls to brute force in
//! minutes, a keyed one never.
//!
//! The engine does no IO: the runtime reads (or creates) the key at
//! start-up and hands it over in [`crate::Config`]. Only its
//! [`Fingerprint`] is ever shown or recorded.

use core::fmt;

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::hex;

/// HMAC-SHA-256, the keyed hash of passcode digests.
pub(crate) type HmacSha256 = hmac::Hmac<Sha256>;

/// What the fingerprint is the HMAC of: a fixed label, so the fingerprint
/// says which key it is and nothing about the key.
const FINGERPRINT_LABEL: &[u8] = b"tokenizer-auth server key fingerprint";

/// The server's secret key. `Debug` shows only its fingerprint; the bytes
/// are wiped when it is dropped; equality is constant-time.
#[derive(Clone)]
pub struct ServerKey([u8; ServerKey::LEN]);

/// Eight bytes that tell keys apart (the first bytes of an HMAC of a fixed
/// label under the key). Safe to show and to record.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl ServerKey {
    /// Bytes in a key.
    pub const LEN: usize = 32;

    /// A key from its bytes (from the key file, or drawn by the runtime).
    pub fn from_bytes(bytes: [u8; ServerKey::LEN]) -> ServerKey {
        ServerKey(bytes)
    }

    /// A key from its text form: exactly 64 hex digits, either case.
    pub fn from_hex(text: &str) -> Option<ServerKey> {
        hex::decode32(text.as_bytes()).map(ServerKey)
    }

    /// The key's bytes, to write the key file. Call sites should be few.
    pub fn expose(&self) -> &[u8; ServerKey::LEN] {
        &self.0
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        let tag = self.mac().chain_update(FINGERPRINT_LABEL).finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag[..8]);
        Fingerprint(out)
    }

    /// A fresh HMAC-SHA-256 state under this key.
    pub(crate) fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; 32 bytes never fails.
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
    }
}

/// The placeholder of [`crate::Config::default`]: all zeros, known to
/// everyone. Tests and benchmarks run with it; runtimes always replace it
/// with the server's own key at start-up.
impl Default for ServerKey {
    fn default() -> Self {
        ServerKey([0; ServerKey::LEN])
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKey(fingerprint {})", self.fingerprint())
    }
}

impl PartialEq for ServerKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ServerKey {}

impl Drop for ServerKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(16);
        hex::push(&mut text, &self.0);
        f.write_str(&text)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fingerprint_is_shown() {
        let key = ServerKey::from_hex(&"a7".repeat(32)).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("a7a7"), "{shown}");
        assert!(shown.contains(&key.fingerprint().to_string()), "{shown}");
        assert_ne!(key.fingerprint(), ServerKey::default().fingerprint());
        assert_eq!(key.fingerprint(), ServerKey::from_bytes([0xa7; 32]).fingerprint());
        assert_eq!(key, ServerKey::from_bytes([0xa7; 32]));
        assert_ne!(key, ServerKey::default());
    }

    #[test]
    fn the_text_form_is_64_hex_digits() {
        assert!(ServerKey::from_hex(&"0F".repeat(32)).is_some());
        assert!(ServerKey::from_hex(&"0f".repeat(31)).is_none());
        assert!(ServerKey::from_hex(&"0f".repeat(33)).is_none());
        assert!(ServerKey::from_hex(&"zz".repeat(32)).is_none());
    }
}
