//! The RNG's side of a capture: record what a call draws; play it back.

use core::convert::Infallible;

use rand_core::{CryptoRng, TryCryptoRng, TryRng};

/// Passes draws through to the runtime's RNG and keeps a copy.
pub(crate) struct RecordingRng<'a, R: ?Sized> {
    pub(crate) inner: &'a mut R,
    pub(crate) drawn: Vec<u8>,
}

impl<R: CryptoRng + ?Sized> TryRng for RecordingRng<'_, R> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        rand_core::utils::next_word_via_fill(self)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        rand_core::utils::next_word_via_fill(self)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.inner.fill_bytes(dst);
        self.drawn.extend_from_slice(dst);
        Ok(())
    }
}

impl<R: CryptoRng + ?Sized> TryCryptoRng for RecordingRng<'_, R> {}

/// Gives back recorded bytes, in order. Past their end it gives zeros and
/// remembers that it ran dry (a replay divergence, reported by the caller).
pub(crate) struct PlaybackRng<'a> {
    bytes: &'a [u8],
    used: usize,
    overdrawn: bool,
}

impl<'a> PlaybackRng<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> PlaybackRng<'a> {
        PlaybackRng { bytes, used: 0, overdrawn: false }
    }

    /// Whether exactly the recorded bytes were drawn.
    pub(crate) fn exact(&self) -> bool {
        !self.overdrawn && self.used == self.bytes.len()
    }

    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl TryRng for PlaybackRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        rand_core::utils::next_word_via_fill(self)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        rand_core::utils::next_word_via_fill(self)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst {
            *byte = match self.bytes.get(self.used) {
                Some(b) => *b,
                None => {
                    self.overdrawn = true;
                    0
                }
            };
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for PlaybackRng<'_> {}
