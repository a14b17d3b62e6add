//! The shape of the source tree, checked: modules form no import cycle,
//! no source file is over [`MAX_FILE_LINES`] lines, no function over
//! [`MAX_FN_LINES`], and `unsafe` appears only in `src/sys.rs`.
//!
//! Read from the files as text: a module's dependencies are the
//! `crate::name` paths in its code (doc comments, line comments and its
//! `#[cfg(test)]` module left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 500;
const MAX_FN_LINES: usize = 80;

fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out.sort();
    out
}

/// The top-level module a file belongs to: `src/fsx/place.rs` -> `fsx`.
fn module(path: &Path) -> String {
    let rel = path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The file's lines of code: comments blanked, its test module cut off.
fn code(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        lines.push(code.to_owned());
    }
    lines
}

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources() {
        let from = module(&path);
        let deps = graph.entry(from.clone()).or_default();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in code(&text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String =
                    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != from && name.chars().next().unwrap().is_lowercase() {
                    deps.insert(name);
                }
            }
            // `use crate::{a, b}` names several.
            if let Some(list) = line.trim().strip_prefix("use crate::{") {
                for name in list.split([',', '}', ':']).map(str::trim) {
                    if !name.is_empty()
                        && name != from
                        && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        deps.insert(name.to_owned());
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                return Some(path.iter().cloned().chain([start.to_owned()]).collect());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), path.iter().cloned().chain([next.clone()]).collect()));
            }
        }
    }
    None
}

#[test]
fn modules_form_no_cycle() {
    let graph = dependencies();
    assert!(graph.len() > 10, "read {} modules", graph.len());
    assert!(graph["download"].contains("transfer"), "the reader sees `use crate::...`: {graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

/// Whether a line begins a function: any visibility (`pub`, `pub(super)`,
/// `pub(in path)`), then any of `const`, `async`, `unsafe`, then `fn`.
fn declares_fn(line: &str) -> bool {
    let mut rest = line;
    if let Some(after) = rest.strip_prefix("pub") {
        rest = match after.strip_prefix('(') {
            Some(inner) => inner.split_once(')').map_or("", |(_, after)| after),
            None => after,
        }
        .trim_start();
    }
    for qualifier in ["const ", "async ", "unsafe "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    rest.starts_with("fn ")
}

#[test]
fn functions_are_found_whatever_their_qualifiers() {
    for line in [
        "fn a()",
        "pub fn a()",
        "pub(super) async fn a()",
        "pub(in crate::x) const fn a()",
        "async unsafe fn a()",
    ] {
        assert!(declares_fn(line), "{line}");
    }
    for line in ["let fn_ = 1;", "// fn a()", "pub struct Fn;", "fnord()"] {
        assert!(!declares_fn(line), "{line}");
    }
}

#[test]
fn files_and_functions_are_short() {
    let mut long = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.display();
        let lines = code(&text).len();
        if lines > MAX_FILE_LINES {
            long.push(format!("{name}: {lines} lines of code and docs"));
        }
        let all: Vec<&str> = text.lines().collect();
        for (i, line) in all.iter().enumerate() {
            let trimmed = line.trim_start();
            if !declares_fn(trimmed) || trimmed.ends_with(';') {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let end = all[i..].iter().position(|l| *l == format!("{indent}}}")).map_or(0, |n| n + 1);
            if end > MAX_FN_LINES {
                long.push(format!("{name}:{}: a function of {end} lines", i + 1));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines a file or {MAX_FN_LINES} a function:\n{}",
        long.join("\n")
    );
}

#[test]
fn unsafe_code_is_only_in_the_syscall_module() {
    for path in sources() {
        if module(&path) == "sys" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in code(&text).iter().enumerate() {
            assert!(
                !line.contains("unsafe ") && !line.contains("unsafe_code"),
                "{}:{}: unsafe outside src/sys.rs",
                path.display(),
                i + 1
            );
        }
    }
}

/// `rust-version` is the newest any dependency declares, so that cargo's
/// resolver and clippy's `incompatible_msrv` (on by default, `-D warnings`
/// in CI) check against the real minimum. Where that toolchain is
/// installed, `.ci/run` also builds with it.
#[test]
fn the_declared_rust_version_covers_every_dependency() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    let ours = version(env!("CARGO_PKG_RUST_VERSION"));
    let mut newest = (Vec::new(), String::new());
    for package in metadata["packages"].as_array().unwrap() {
        let Some(declared) = package["rust_version"].as_str() else { continue };
        let mut declared = version(declared);
        declared.resize(3, 0);
        if declared > newest.0 {
            newest = (declared, package["name"].as_str().unwrap().to_owned());
        }
    }
    let mut ours = ours;
    ours.resize(3, 0);
    assert!(newest.0 <= ours, "{} needs Rust {:?}, Cargo.toml says {ours:?}", newest.1, newest.0);
}
