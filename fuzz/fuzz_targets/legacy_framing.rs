//! Legacy framing (`is_whole`, `request`), the legacy request's parsing,
//! the pickled replies, and one legacy connection end to end. The checks
//! live in `tokenizer_auth_engine::testkit::fuzz::legacy_framing`, which the
//! engine's tests also run on this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenizer_auth_engine::testkit::fuzz;

fuzz_target!(|data: &[u8]| fuzz::legacy_framing(data));
