//! Native framing and request parsing on arbitrary bytes, with a
//! render → parse round trip. The checks live in
//! `tokenizer_auth_engine::testkit::fuzz::native_line`, which the engine's
//! tests also run on this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenizer_auth_engine::testkit::fuzz;

fuzz_target!(|data: &[u8]| fuzz::native_line(data));
