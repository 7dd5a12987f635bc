//! The engine does no IO: it depends on no IO crate, as Cargo resolves its
//! dependencies (their features included), and its sources touch no socket,
//! file, thread, clock, environment, standard stream or OS randomness,
//! however a path is spelled or an import grouped. This test keeps it that
//! way; its own checks on sample sources show what the scan catches.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use support::sources;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The crates the engine may depend on, none of which does IO as used
/// (`hmac`: the keyed passcode digests, pure computation;
/// `arbitrary` only with the `testkit` feature, to decode fuzz inputs).
const ALLOWED_DEPENDENCIES: &[&str] = &["nom", "sha2", "hmac", "subtle", "rand_core", "chrono", "zeroize", "arbitrary"];

/// Crates that reach the OS (clock, randomness, sockets, files), none of
/// which may be anywhere in the engine's resolved dependencies. (`libc`
/// may be there, for `sha2`'s CPU feature detection on some targets: a
/// binding, not IO, so it is not listed.)
const OS_CRATES: &[&str] = &[
    "getrandom",
    "iana-time-zone",
    "windows-sys",
    "windows-targets",
    "js-sys",
    "wasm-bindgen",
    "mio",
    "socket2",
    "tokio",
    "rusqlite",
    "lettre",
];

/// The features chrono and rand_core may be built with for the engine:
/// no `clock` (or `now`, `oldtime`, `wasmbind`) for chrono, no `os_rng` or
/// `getrandom` for rand_core.
const ALLOWED_FEATURES: &[(&str, &[&str])] = &[("chrono", &["alloc", "std"]), ("rand_core", &[])];

/// The engine's dependencies as Cargo resolves them for it alone (on this
/// machine's target, whose crates the build has fetched, so no network is
/// needed), without dev-dependencies and with every feature of the engine
/// (`testkit` too): each package's name, with the features it is built
/// with. `depth` limits how far from the engine (1: its own dependencies).
fn resolved(depth: Option<u32>) -> BTreeMap<String, Vec<String>> {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["tree", "--offline", "-p", "tokenizer-auth-engine", "--all-features", "-e", "no-dev"]);
    cargo.args(["--prefix", "none", "--format", "{p}|{f}"]).current_dir(MANIFEST_DIR);
    if let Some(depth) = depth {
        cargo.args(["--depth", &depth.to_string()]);
    }
    let out = cargo.output().expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut packages = BTreeMap::new();
    for line in String::from_utf8(out.stdout).expect("UTF-8").lines() {
        let (package, features) = line.split_once('|').expect("name version|features");
        let name = package.split_whitespace().next().expect("a package name").to_owned();
        let features = features.trim_end_matches(" (*)").split(',').filter(|f| !f.is_empty()).map(str::to_owned);
        packages.entry(name).or_insert_with(Vec::new).extend(features);
    }
    packages.remove("tokenizer-auth-engine").expect("the engine itself is listed");
    packages
}

#[test]
fn the_engine_depends_on_no_io_crate() {
    let direct = resolved(Some(1));
    assert!(direct.contains_key("chrono"), "the engine's dependencies were not found: {direct:?}");
    for name in direct.keys() {
        assert!(ALLOWED_DEPENDENCIES.contains(&name.as_str()), "the engine must not depend on `{name}`");
    }
    for name in resolved(None).keys() {
        assert!(!OS_CRATES.contains(&name.as_str()), "`{name}` is among the engine's resolved dependencies");
    }
}

#[test]
fn chrono_and_rand_core_are_built_without_clock_or_os_randomness() {
    let all = resolved(None);
    for (name, allowed) in ALLOWED_FEATURES {
        let features = all.get(*name).unwrap_or_else(|| panic!("{name} is not among the engine's dependencies"));
        for feature in features {
            assert!(allowed.contains(&feature.as_str()), "{name} is built with `{feature}` for the engine");
        }
    }
}

/// Paths no engine source may name, however reached: a path that is one
/// of these or goes on from one (`std::fs::read`) is forbidden.
const FORBIDDEN_PATHS: &[&str] = &["std::fs", "std::io", "std::thread", "std::process", "std::env", "std::os"];

/// Modules of which only these items may be named: `std::net`'s addresses
/// (not its sockets, nor `ToSocketAddrs`, which resolves names), and
/// `std::time`'s `Duration` (not its clocks). The module itself may not be
/// imported, or `net::TcpStream` would go unseen.
const ONLY: &[(&str, &[&str])] = &[
    ("std::net", &["IpAddr", "Ipv4Addr", "Ipv6Addr", "SocketAddr", "SocketAddrV4", "SocketAddrV6", "AddrParseError"]),
    ("std::time", &["Duration"]),
];

/// Names that mean IO, a clock or OS randomness wherever they appear
/// (`Instant`, `SystemTime`: clocks; `RandomState`: OS-seeded hashing).
const FORBIDDEN_NAMES: &[&str] = &[
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "ToSocketAddrs",
    "SystemTime",
    "Instant",
    "OsRng",
    "SysRng",
    "getrandom",
    "thread_rng",
    "RandomState",
    "unsafe",
];

/// Macros that write to the process's standard streams.
const FORBIDDEN_MACROS: &[&str] = &["print", "println", "eprint", "eprintln", "dbg"];

/// Calls that read a clock or seed from the OS, by their last two segments
/// (`Utc::now`, `chrono::Local::now`, `HashMap::new`: a `RandomState`).
const FORBIDDEN_CALLS: &[&str] = &[
    "Utc::now",
    "Local::now",
    "Utc::today",
    "Local::today",
    "HashMap::new",
    "HashMap::with_capacity",
    "HashSet::new",
    "HashSet::with_capacity",
];

/// The code of a source: comments, string and character literals blanked
/// out (lifetimes kept), so that only code is scanned.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        match rest {
            ['/', '/', ..] => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ['/', '*', ..] => {
                let mut depth = 0;
                while i < chars.len() {
                    match &chars[i..] {
                        ['/', '*', ..] => (depth, i) = (depth + 1, i + 2),
                        ['*', '/', ..] => (depth, i) = (depth - 1, i + 2),
                        _ => i += 1,
                    }
                    if depth == 0 {
                        break;
                    }
                }
                out.push(' ');
            }
            ['r', '#', ..] | ['r', '"', ..] | ['b', 'r', '#', ..] | ['b', 'r', '"', ..]
                if i == 0 || !is_ident(chars[i - 1]) =>
            {
                let start = i + usize::from(chars[i] == 'b') + 1;
                let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
                if chars.get(start + hashes) != Some(&'"') {
                    // `r#ident`, not a string.
                    out.push(chars[i]);
                    i += 1;
                    continue;
                }
                i = start + hashes + 1;
                while i < chars.len() && !(chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|c| *c == '#')) {
                    i += 1;
                }
                i += 1 + hashes;
                out.push_str("\"\"");
            }
            ['"', ..] => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            ['\'', '\\', ..] => {
                // The quote, the backslash and the escaped character, then
                // up to the closing quote (`'\u{1F600}'`).
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            }
            ['\'', _, '\'', ..] => {
                i += 3;
                out.push_str("' '");
            }
            [c, ..] => {
                out.push(*c);
                i += 1;
            }
            [] => break,
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of code: identifiers, `::`, and single punctuation.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// The paths a `use` tree names, in full (`std::{fs, io::Read}` gives
/// `std::fs` and `std::io::Read`); `self` names its parent.
fn use_paths(tokens: &[String], at: &mut usize, prefix: &str, out: &mut Vec<String>) {
    let mut path = prefix.to_owned();
    loop {
        match tokens.get(*at).map(String::as_str) {
            Some("{") => {
                *at += 1;
                while !matches!(tokens.get(*at).map(String::as_str), Some("}" | ";") | None) {
                    use_paths(tokens, at, &path, out);
                    if tokens.get(*at).map(String::as_str) == Some(",") {
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            Some("*") => {
                *at += 1;
                out.push(format!("{path}::*"));
                return;
            }
            Some("self") => {
                *at += 1;
                out.push(path.clone());
            }
            Some(name) if name.chars().all(is_ident) => {
                *at += 1;
                path = if path.is_empty() { name.to_owned() } else { format!("{path}::{name}") };
                if tokens.get(*at).map(String::as_str) == Some("::") {
                    *at += 1;
                    continue;
                }
                out.push(path.clone());
            }
            _ => {}
        }
        // `as` and its name, if any, up to the end of this tree.
        while !matches!(tokens.get(*at).map(String::as_str), Some("," | "}" | ";") | None) {
            *at += 1;
        }
        return;
    }
}

/// Every path the code names: each `use` tree expanded in full, and every
/// path written in the code (`std::fs::read`, `Instant::now`).
fn paths(tokens: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "use" {
            i += 1;
            if tokens.get(i).map(String::as_str) == Some("::") {
                i += 1;
            }
            use_paths(tokens, &mut i, "", &mut out);
            continue;
        }
        if tokens[i].chars().all(is_ident) && tokens.get(i + 1).map(String::as_str) == Some("::") {
            let mut path = tokens[i].clone();
            i += 1;
            while tokens.get(i).map(String::as_str) == Some("::")
                && tokens.get(i + 1).is_some_and(|t| t.chars().all(is_ident))
            {
                path = format!("{path}::{}", tokens[i + 1]);
                i += 2;
            }
            out.push(path);
            continue;
        }
        i += 1;
    }
    out
}

/// What in `source` would mean IO, a clock, a thread or OS randomness.
fn forbidden_in(source: &str) -> Vec<String> {
    let tokens = tokens(&code_only(source));
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if FORBIDDEN_NAMES.contains(&token.as_str()) {
            found.push(format!("`{token}`"));
        }
        if FORBIDDEN_MACROS.contains(&token.as_str()) && tokens.get(i + 1).is_some_and(|t| t == "!") {
            found.push(format!("`{token}!`"));
        }
    }
    for path in paths(&tokens) {
        let path = path.strip_prefix("core::").map_or(path.clone(), |rest| format!("std::{rest}"));
        let under = |module: &str| path == module || path.starts_with(&format!("{module}::"));
        if FORBIDDEN_PATHS.iter().any(|m| under(m)) {
            found.push(format!("`{path}`"));
        }
        for (module, items) in ONLY {
            let item = path.strip_prefix(&format!("{module}::")).and_then(|rest| rest.split("::").next());
            if path == *module || (under(module) && !item.is_some_and(|item| items.contains(&item))) {
                found.push(format!("`{path}`"));
            }
        }
        let segments: Vec<&str> = path.split("::").collect();
        let last_two = segments[segments.len().saturating_sub(2)..].join("::");
        if FORBIDDEN_CALLS.contains(&last_two.as_str()) {
            found.push(format!("`{path}`"));
        }
    }
    found
}

#[test]
fn the_engine_sources_do_no_io() {
    let mut files = Vec::new();
    sources(&Path::new(MANIFEST_DIR).join("src"), &mut files);
    assert!(files.len() > 10, "the engine's sources were not found");
    for file in files {
        let found = forbidden_in(&std::fs::read_to_string(&file).unwrap());
        assert!(found.is_empty(), "{}: {} in the engine", file.display(), found.join(", "));
    }
}

#[test]
fn the_scan_sees_io_however_it_is_spelled() {
    let caught = [
        "use std::{fs, io};",
        "use std::{\n    collections::BTreeMap,\n    io::{self, Write},\n};",
        "use std::fs::File;",
        "use ::std::thread;",
        "let bytes = std::fs::read(path);",
        "let _ = ::std::process::exit(0);",
        "use std::net;",
        "use std::net::{self, IpAddr};",
        "use std::net::{IpAddr, TcpStream as Stream};",
        "let s = std::net::UdpSocket::bind(a);",
        "use std::time::{Duration, SystemTime};",
        "use std::time;",
        "let t = Instant::now();",
        "let t = chrono::Utc::now();",
        "use chrono::Utc; fn f() { Utc::now(); }",
        "getrandom::fill(&mut buf);",
        "let rng = OsRng;",
        "let mut m = std::collections::HashMap::new();",
        "let v = std::env::var(\"X\");",
        "use core::time::Instant;",
        "eprintln!(\"{x}\");",
        "unsafe { x() }",
    ];
    for source in caught {
        assert!(!forbidden_in(source).is_empty(), "not caught: {source}");
    }
    let fine = [
        "use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};",
        "use std::time::Duration;",
        "use std::collections::{BTreeMap, HashMap};",
        "let m: HashMap<u8, u8, BuildHasherDefault<DefaultHasher>> = HashMap::default();",
        "// std::fs::read and Instant::now in a comment",
        "/* use std::{fs, io}; */ let a = 1;",
        "let s = \"std::fs::read, Instant::now(), println!\";",
        "let s = r#\"use std::io;\"#;",
        "let q = '\"'; let fs = 1;",
        "fn f<'a>(x: &'a str) -> &'a str { x }",
        "write!(out, \"{x}\")?;",
    ];
    for source in fine {
        assert_eq!(forbidden_in(source), Vec::<String>::new(), "{source}");
    }
}
