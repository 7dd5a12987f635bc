//! The Python client package (`clients/python`, docs/CLIENTS.md) against
//! this build's server: its own `unittest` suite, run by
//! `clients/python/run-tests.sh` with the binary cargo built for these
//! tests, so that `cargo test` runs it in the default run.

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_client_passes_its_tests_against_this_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("bash")
        .arg(root.join("clients/python/run-tests.sh"))
        .env("TOKENIZER_AUTH_BIN", env!("CARGO_BIN_EXE_tokenizer-auth"))
        // Nothing written beside the sources.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run clients/python/run-tests.sh");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Python client's tests failed:\n{report}");
    // unittest's last lines: "Ran N tests in Ts", then "OK".
    assert!(report.lines().any(|l| l.starts_with("Ran ") && !l.starts_with("Ran 0 ")), "no test ran:\n{report}");
}
