//! Replays every input of the fuzz targets' seed corpora
//! (`fuzz/corpus/<target>/`) and of their regressions
//! (`fuzz/regressions/<target>/`, inputs that once failed) through the very
//! function the target runs (`testkit::fuzz`), so the ordinary test run
//! keeps every input the fuzzer found worth keeping. The fuzzing itself is
//! `scripts/fuzz.sh`; see `docs/FUZZING.md`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tokenizer_auth_engine::testkit::fuzz;

/// Where the fuzz project lives, beside the engine.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz")
}

/// The files of one folder, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs every corpus and regression input of `target` through `check`;
/// fails naming every input that panicked. Returns how many ran.
fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let mut inputs = files(&fuzz_dir().join("corpus").join(target));
    assert!(!inputs.is_empty(), "no seed corpus for {target} in {}", fuzz_dir().display());
    inputs.extend(files(&fuzz_dir().join("regressions").join(target)));
    let mut failed = Vec::new();
    for input in &inputs {
        let bytes = std::fs::read(input).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err() {
            failed.push(input.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: {} of {} inputs failed: {failed:#?}", failed.len(), inputs.len());
    inputs.len()
}

#[test]
fn native_line_corpus() {
    assert!(replay("native_line", fuzz::native_line) >= 5);
}

#[test]
fn legacy_framing_corpus() {
    assert!(replay("legacy_framing", fuzz::legacy_framing) >= 5);
}

#[test]
fn proxy_header_corpus() {
    assert!(replay("proxy_header", fuzz::proxy_header) >= 4);
}

#[test]
fn capture_reader_corpus() {
    assert!(replay("capture_reader", fuzz::capture_reader) >= 3);
}

#[test]
fn engine_corpus() {
    assert!(
        replay("engine", |bytes| {
            fuzz::engine(bytes);
        }) >= 5
    );
}

/// The seed corpora stay small: a handful of files, none large.
#[test]
fn seed_corpora_are_small() {
    for target in ["native_line", "legacy_framing", "engine", "proxy_header"] {
        let inputs = files(&fuzz_dir().join("corpus").join(target));
        assert!(inputs.len() <= 32, "{target}: {} seed files", inputs.len());
        for input in inputs {
            let size = std::fs::metadata(&input).unwrap().len();
            assert!(size <= 4096, "{}: {size} bytes", input.display());
        }
    }
}

/// The engine's seed files are the scripts `fuzz::engine_seeds` writes
/// (real sessions, encoded for `arbitrary`). Rewrite them after changing
/// the script types with [`write_engine_seed_files`].
#[test]
fn engine_seed_files_are_current() {
    let dir = fuzz_dir().join("corpus").join("engine");
    for (name, bytes) in fuzz::engine_seeds() {
        let path = dir.join(name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(on_disk == bytes, "{} is out of date; rewrite it (see this test's docs)", path.display());
    }
}

/// Writes the engine's seed files; a command, not a check, so it runs only
/// when asked:
/// `cargo test -p tokenizer-auth-engine --all-features --test fuzz_corpus -- --ignored write_engine_seed_files`.
#[test]
#[ignore = "writes the seed files; run it by name after changing the script types"]
fn write_engine_seed_files() {
    let dir = fuzz_dir().join("corpus").join("engine");
    for (name, bytes) in fuzz::engine_seeds() {
        std::fs::write(dir.join(name), &bytes).unwrap();
    }
}

/// The engine seeds reach the deep states they were written for, so the
/// fuzzer starts from logins, renewals and legacy sessions, not from noise.
#[test]
fn engine_seeds_reach_deep_states() {
    let seeds: Vec<_> = fuzz::engine_seeds().into_iter().map(|(name, bytes)| (name, fuzz::engine(&bytes))).collect();
    let report = |name: &str| seeds.iter().find(|(n, _)| *n == name).map(|(_, r)| *r).unwrap();
    assert_eq!(report("seed-login").logins, 1, "{:?}", report("seed-login"));
    let tokens = report("seed-token-renew-expire");
    assert!(tokens.authorized >= 2 && tokens.renewals >= 1, "{tokens:?}");
    let race = report("seed-passcode-race");
    assert_eq!(race.logins, 2, "{race:?}");
    let legacy = report("seed-legacy-upgrade");
    assert!(legacy.passcodes_sent >= 1 && legacy.logins >= 1, "{legacy:?}");
    let hostile = report("seed-hostile-results");
    assert!(hostile.replies >= 6 && hostile.breaches == 1, "{hostile:?}");
    let abandon = report("seed-shutdown-abandons");
    assert!(abandon.abandoned == 2 && abandon.late_results == 2 && abandon.breaches == 1, "{abandon:?}");
    let limits = report("seed-limits");
    assert!(limits.closes >= 2, "{limits:?}");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

    /// Between fuzzing runs, the PROXY header target's checks on random
    /// bytes after each kind of start a header has (v1, v2, none), and on
    /// headers cut or corrupted at any byte.
    #[test]
    fn proxy_header_on_random_bytes(
        start in proptest::sample::select(vec![&b"PROXY "[..], b"PROXY TCP4 ", b"PROXY TCP6 ", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c", b""]),
        rest in proptest::collection::vec(proptest::num::u8::ANY, 0..160),
    ) {
        fuzz::proxy_header(&[start, &rest[..]].concat());
    }
}
