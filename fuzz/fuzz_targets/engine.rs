//! The engine driven by a script decoded from the input with `arbitrary`
//! (connections, real and random bytes, hang-ups, clock jumps, timeouts,
//! effect results in any order, true or not), its invariants checked after
//! every input. The script and the checks live in
//! `tokenizer_auth_engine::testkit::fuzz::engine`, which the engine's tests
//! also run on this target's corpus; the input stays raw bytes here so that
//! the fuzzer and the tests decode it the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenizer_auth_engine::testkit::fuzz;

fuzz_target!(|data: &[u8]| {
    fuzz::engine(data);
});
