//! The engine's top-level modules depend on each other one way only: no two
//! of them import each other, directly or through a cycle of others. A
//! cycle makes a module impossible to read, test or move on its own; this
//! test keeps them out.
//!
//! It reads the sources as text. A module's dependencies are the `crate::`
//! paths in its files (in `use` declarations and in code), each resolved to
//! the top-level module it names, directly or through one of the crate
//! root's `pub use` re-exports. Comments are skipped. Paths into another
//! module are written `crate::…` throughout the engine (`super::` only
//! reaches within a module), so this sees every dependency.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use support::sources;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The source without comments (line comments, doc comments included, and
/// block comments). String literals are kept as they are: a `//` inside one
/// is rare enough in the engine that cutting the rest of its line hides
/// nothing.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |end| &after[end + 2..]);
        } else if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |end| &rest[end..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> &str {
    let text = text.trim_start();
    &text[..text.find(|c: char| !is_ident(c)).unwrap_or(text.len())]
}

/// The items of a `{ … }` group that `text` starts with: the first name of
/// each of its top-level entries (`a::b` gives `a`, `{a, b}` gives `a`, `b`).
fn group(text: &str) -> Vec<&str> {
    let mut depth = 0;
    let mut entries = Vec::new();
    let mut start = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                entries.push(&text[start..i]);
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    entries.into_iter().map(ident).filter(|name| !name.is_empty()).collect()
}

/// Every name that follows `crate::` in `code`.
fn crate_paths(code: &str) -> Vec<&str> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if rest.starts_with('{') {
            names.extend(group(rest));
        } else {
            names.push(ident(rest));
        }
    }
    names
}

/// The top-level modules the crate root declares.
fn modules(root: &str) -> BTreeSet<String> {
    root.lines()
        .map(str::trim)
        .filter_map(|line| {
            let line = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
            line.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')).map(str::to_owned)
        })
        .collect()
}

/// The names the crate root re-exports, each with the module it comes from.
fn reexports(root: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in root.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else { continue };
        let module = ident(path);
        let last = path.rfind("::").map_or(path, |i| &path[i + 2..]);
        let items: Vec<&str> =
            if last.starts_with('{') { last.trim_matches(['{', '}']).split(',').collect() } else { vec![last] };
        for item in items {
            let name = item.rsplit(" as ").next().unwrap().trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    names
}

/// Each top-level module with the top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(MANIFEST_DIR).join("src");
    let root = code(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let modules = modules(&root);
    let reexports = reexports(&root);
    assert!(modules.len() > 10, "the crate root's modules were not found: {modules:?}");
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(first) = relative.components().next() else { continue };
        let owner = first.as_os_str().to_str().unwrap().trim_end_matches(".rs").to_owned();
        if owner == "lib" {
            continue;
        }
        assert!(modules.contains(&owner), "{} belongs to no module the crate root declares", relative.display());
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for name in crate_paths(&text) {
            let target = if modules.contains(name) {
                name
            } else if let Some(module) = reexports.get(name) {
                module
            } else {
                panic!("{}: `crate::{name}` names no module and no re-export of the crate root", relative.display())
            };
            if target != owner {
                graph.get_mut(&owner).unwrap().insert(target.to_owned());
            }
        }
    }
    graph
}

/// A cycle through `module`, if the search from it finds one.
fn find_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    module: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|m| m == module) {
        let mut cycle = path[start..].to_vec();
        cycle.push(module.to_owned());
        return Some(cycle);
    }
    if done.contains(module) {
        return None;
    }
    path.push(module.to_owned());
    for next in &graph[module] {
        if let Some(cycle) = find_cycle(graph, next, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(module.to_owned());
    None
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let graph = graph();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = find_cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("the engine's modules import each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_sees_paths_in_every_spelling() {
    let text = code("use crate::a::B; // crate::hidden\nuse crate::{c::D, e};\nlet x = crate::f::g(); /* crate::no */");
    assert_eq!(crate_paths(&text), ["a", "c", "e", "f"]);
    assert!(crate_paths("tokenizer_auth_engine::x").is_empty());
    let root = "pub use a::b::{C, D as E};\npub use f::G;";
    let names = reexports(root);
    assert_eq!(names["C"], "a");
    assert_eq!(names["E"], "a");
    assert_eq!(names["G"], "f");
}

#[test]
fn the_engine_is_the_module_that_drives_the_others() {
    // The direction the module docs state: the engine drives connections,
    // flows and the recorder; none of them, nor the plain types they share,
    // knows the engine.
    let graph = graph();
    for (module, uses) in &graph {
        if uses.contains("engine") {
            assert!(
                ["capture", "testkit"].contains(&module.as_str()),
                "`{module}` imports the engine; only replay and the test kit drive one"
            );
        }
    }
}
