//! The PROXY protocol header decoder (`codec::proxy`) on any bytes, and
//! rendered headers round-tripping. The checks live in
//! `tokenizer_auth_engine::testkit::fuzz::proxy_header`, which the engine's
//! tests also run on this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenizer_auth_engine::testkit::fuzz;

fuzz_target!(|data: &[u8]| fuzz::proxy_header(data));
