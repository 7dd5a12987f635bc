//! The engine does no IO: it depends on no IO crate, and its sources touch
//! no socket, file, thread, clock, environment or OS randomness. This test
//! keeps it that way.

use std::path::{Path, PathBuf};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The crates the engine may depend on, none of which does IO as used
/// (`hmac`: the keyed passcode digests, pure computation;
/// `arbitrary` only with the `testkit` feature, to decode fuzz inputs).
const ALLOWED_DEPENDENCIES: &[&str] = &["nom", "sha2", "hmac", "subtle", "rand_core", "chrono", "zeroize", "arbitrary"];

/// Text that would mean IO, a clock, a thread or OS randomness.
const FORBIDDEN: &[&str] = &[
    "std::net::Tcp",
    "std::net::Udp",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "std::fs",
    "std::io",
    "std::thread",
    "std::process",
    "std::env",
    "std::time",
    "SystemTime",
    "Instant::",
    "Utc::now",
    "Local::now",
    "OsRng",
    "SysRng",
    "getrandom",
    "thread_rng",
    "RandomState",
    "HashMap::new",
    "HashSet::new",
    "unsafe",
];

fn section<'a>(toml: &'a str, header: &str) -> Vec<&'a str> {
    toml.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn the_engine_depends_on_no_io_crate() {
    let manifest = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("Cargo.toml")).unwrap();
    let deps = section(&manifest, "[dependencies]");
    assert!(!deps.is_empty(), "no [dependencies] section found");
    for line in deps {
        let name = line.split(['=', '.']).next().unwrap().trim();
        assert!(ALLOWED_DEPENDENCIES.contains(&name), "the engine must not depend on `{name}`");
    }
}

#[test]
fn chrono_and_rand_core_come_without_clock_or_os_randomness() {
    let root = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("../Cargo.toml")).unwrap();
    let workspace_deps = section(&root, "[workspace.dependencies]");
    let chrono = workspace_deps.iter().find(|l| l.starts_with("chrono")).expect("chrono is declared");
    assert!(chrono.contains("default-features = false"), "chrono's default features include the clock: {chrono}");
    assert!(!chrono.contains("clock") && !chrono.contains("now"), "{chrono}");
    let rand_core = workspace_deps.iter().find(|l| l.starts_with("rand_core")).expect("rand_core is declared");
    assert!(!rand_core.contains("os_rng") && !rand_core.contains("getrandom"), "{rand_core}");
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_engine_sources_do_no_io() {
    let mut files = Vec::new();
    sources(&Path::new(MANIFEST_DIR).join("src"), &mut files);
    assert!(files.len() > 10, "the engine's sources were not found");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                assert!(!code.contains(word), "{}:{}: `{word}` in the engine: {line}", file.display(), n + 1);
            }
        }
    }
}
