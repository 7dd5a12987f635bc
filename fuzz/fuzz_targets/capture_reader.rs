//! The capture reader and the capture's password redaction on any bytes;
//! see `tokenizer_auth_engine::testkit::fuzz::capture_reader`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tokenizer_auth_engine::testkit::fuzz::capture_reader(data));
