//! The checking functions of the fuzz targets in `fuzz/`, kept here so the
//! ordinary test run replays every corpus file through exactly the code the
//! fuzzer runs (`engine/tests/fuzz_corpus.rs`). Each function takes the
//! fuzzer's bytes and panics on a broken invariant; a panic is a finding.
//!
//! - [`native_line`]: the native framing and the request parser on any
//!   bytes, and a render → parse round trip of whatever parses.
//! - [`legacy_framing`]: the legacy framing, the request in it, the pickled
//!   replies, and one legacy connection end to end.
//! - [`engine`]: the engine driven by a script decoded from the bytes with
//!   `arbitrary`: connections, bytes (noise and real requests), hang-ups,
//!   clock jumps both ways, timeouts, and effect results in any order, true
//!   or not. A model beside it checks what the engine must never do: log
//!   one passcode in twice, answer `authorized` past a token's lifetime,
//!   write anything but documented replies, answer what was never asked, or
//!   let connections, effects or buffers grow past what was fed.
//! - [`capture_reader`]: any bytes read as a capture (and as the records
//!   after a valid header): an error or a replay, never a panic; and the
//!   same bytes as a client's stream through the capture's redaction, which
//!   must keep every line's parse outcome and no password.
//! - [`proxy_header`]: the PROXY protocol header decoder on any bytes, and
//!   headers rendered in both versions decoding to their address.

mod capture_reader;
mod engine;
mod legacy_framing;
mod native_line;
mod proxy_header;

pub use capture_reader::capture_reader;
pub use engine::{Report, engine, engine_script, engine_seeds};
pub use legacy_framing::{legacy_framing, unpickle};
pub use native_line::native_line;
pub use proxy_header::proxy_header;
