//! Captures recorded from the real servers (`serve --capture`, one per
//! runtime; see `cli/tests/capture.rs`) replay through a fresh
//! engine with every output matching, given the key they were recorded
//! with (and only with it).

use std::path::Path;

use tokenizer_auth_engine::ServerKey;
use tokenizer_auth_engine::capture::{Replay, ReplayError};

/// The `server_key` the fixtures were recorded with (see
/// `cli/tests/capture.rs`).
const CAPTURE_KEY: &str = "7e57ab1e0000000000000000000000000000000000000000000000000000c0de";

#[test]
fn every_fixture_capture_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let key = ServerKey::from_hex(CAPTURE_KEY).unwrap();
        let records =
            Replay::with_key(&bytes, &key).and_then(Replay::run).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(matches!(Replay::new(&bytes), Err(ReplayError::WrongKey { .. })), "{}", path.display());
        assert!(records > 20, "{}: only {records} events", path.display());
        replayed += 1;
    }
    assert!(replayed >= 2, "the mio and std captures are expected in {}", dir.display());
}
