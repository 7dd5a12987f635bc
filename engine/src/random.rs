//! The one place the engine draws randomness. Every random value comes from
//! the CSPRNG the runtime hands to [`crate::Engine::handle`], so a seeded RNG
//! (tests) or a recorded one (replay) reproduces a run byte for byte.

use rand_core::CryptoRng;

use crate::passcode::{ALPHABET, LENGTH, Passcode};

/// 256 bits of salt for a new base token.
pub(crate) fn token_salt<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; 32] {
    let mut salt = [0u8; 32];
    rng.fill_bytes(&mut salt);
    salt
}

/// 128 bits of salt for storing a passcode as a digest.
pub(crate) fn passcode_salt<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; 16] {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    salt
}

/// A fresh passcode: each character uniform over [`ALPHABET`].
///
/// Rejection sampling keeps it free of modulo bias: a byte is used only when
/// it falls below the largest multiple of 36 that fits in a byte (252).
pub(crate) fn passcode<R: CryptoRng + ?Sized>(rng: &mut R) -> Passcode {
    const LIMIT: u8 = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut code = String::with_capacity(LENGTH);
    let mut pool = [0u8; 16];
    while code.len() < LENGTH {
        rng.fill_bytes(&mut pool);
        for &b in &pool {
            if b < LIMIT && code.len() < LENGTH {
                code.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Passcode::from_generated(code)
}
