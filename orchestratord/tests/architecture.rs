//! The control plane's structure, as ARCHITECTURE.md states it: its modules import each other
//! in no circle, and the core (`src/cluster/`) imports no network or async-runtime crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates the core must not use: it talks to no socket and runs on no async runtime.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "tokio_rustls",
    "quinn",
    "hyper",
    "hyper_util",
    "http_body_util",
    "rustls",
    "reqwest",
    "futures",
];

/// Test-only modules (the harness may see everything).
const TEST_MODULES: &[&str] = &["cluster::harness", "cluster::tests"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module file: its path as a module name (`cluster::agents`, `api`, `main`) → text.
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src()).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read");
            out.insert(parts.join("::"), text);
        }
    }
    out
}

/// The text without comments (line comments and doc comments), so prose is not code.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifier paths in `text` that start with `prefix` (`crate::`, `super::` …), as the
/// segments after it.
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i + prefix.len()..];
        rest = tail;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let segs: Vec<&str> = tail[..end].split("::").filter(|s| !s.is_empty()).collect();
        // `use super::{a, b}`: each name in the braces.
        if segs.is_empty() && tail.starts_with('{') {
            let close = tail.find('}').unwrap_or(tail.len());
            for item in tail[1..close].split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    out.push(vec![name]);
                }
            }
            continue;
        }
        out.push(segs);
    }
    out
}

/// The modules `name` refers to.
fn edges(name: &str, text: &str, all: &BTreeMap<String, String>) -> BTreeSet<String> {
    let text = code(text);
    let mut out = BTreeSet::new();
    let parent = name.rsplit_once("::").map(|(p, _)| p.to_string());
    let resolve = |base: &str, segs: &[&str]| -> Option<String> {
        // The longest prefix of the path that is a module file.
        let mut best = None;
        for n in 1..=segs.len() {
            let candidate = if base.is_empty() {
                segs[..n].join("::")
            } else {
                format!("{base}::{}", segs[..n].join("::"))
            };
            if all.contains_key(&candidate) {
                best = Some(candidate);
            }
        }
        best
    };
    let in_lib = name == "lib" || name.starts_with("cluster");
    for segs in paths_after(&text, "crate::") {
        let target = if in_lib {
            resolve("", &segs)
        } else {
            // The binary's crate: its own modules (not the library's).
            resolve("", &segs).filter(|m| !m.starts_with("cluster"))
        };
        out.insert(target.unwrap_or_else(|| if in_lib { "lib" } else { "main" }.into()));
    }
    for segs in paths_after(&text, "orchestratord::") {
        if let Some(m) = resolve("", &segs) {
            out.insert(m);
        }
    }
    if let Some(parent) = &parent {
        for segs in paths_after(&text, "super::") {
            out.insert(resolve(parent, &segs).unwrap_or_else(|| parent.clone()));
        }
    }
    out.remove(name);
    out
}

#[test]
fn the_control_planes_modules_import_each_other_in_no_circle() {
    let all = modules();
    assert!(all.contains_key("cluster::state"), "{:?}", all.keys());
    let graph: BTreeMap<String, BTreeSet<String>> = all
        .iter()
        .filter(|(n, _)| !TEST_MODULES.contains(&n.as_str()))
        .map(|(n, t)| {
            let mut e = edges(n, t, &all);
            e.retain(|m| !TEST_MODULES.contains(&m.as_str()));
            (n.clone(), e)
        })
        .collect();
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "modules import each other in a circle: {}",
            circle.join(" -> ")
        );
    }
}

/// A circle of imports in `graph` (module → modules it refers to), if there is one. A parent
/// declares its children (`mod x;`): that is not an import.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let imports = |n: &str| -> Vec<String> {
        graph
            .get(n)
            .into_iter()
            .flatten()
            .filter(|m| !m.starts_with(&format!("{n}::")))
            .cloned()
            .collect()
    };
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        imports: &dyn Fn(&str) -> Vec<String>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut circle = stack[from..].to_vec();
                circle.push(n.to_string());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in imports(n) {
            if let Some(c) = visit(&m, imports, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    graph
        .keys()
        .find_map(|n| visit(n, &imports, &mut state, &mut Vec::new()))
}

#[test]
fn the_core_imports_no_network_or_async_runtime_crate() {
    for (name, text) in modules() {
        if !name.starts_with("cluster") {
            continue;
        }
        let text = code(&text);
        for krate in FORBIDDEN_IN_CORE {
            for prefix in [format!("{krate}::"), format!("use {krate}")] {
                let found = text.match_indices(&prefix).any(|(i, _)| {
                    !text[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                });
                assert!(!found, "{name} uses {krate}: the core talks to no network");
            }
        }
    }
    // And its manifest view: the library's dependencies are checked by use above; the
    // checker itself must see a use when there is one.
    assert!(code("use tokio::sync;").contains("use tokio"));
}

#[test]
fn the_checker_finds_a_circle_and_a_forbidden_import() {
    let mut all = BTreeMap::new();
    all.insert("cluster::a".to_string(), "use super::b::X;".to_string());
    all.insert(
        "cluster::b".to_string(),
        "fn f() { super::a::g() }".to_string(),
    );
    assert_eq!(
        edges("cluster::a", &all["cluster::a"], &all),
        BTreeSet::from(["cluster::b".to_string()])
    );
    assert_eq!(
        edges("cluster::b", &all["cluster::b"], &all),
        BTreeSet::from(["cluster::a".to_string()])
    );
    let graph: BTreeMap<String, BTreeSet<String>> = all
        .iter()
        .map(|(n, t)| (n.clone(), edges(n, t, &all)))
        .collect();
    assert_eq!(
        find_circle(&graph),
        Some(vec![
            "cluster::a".to_string(),
            "cluster::b".to_string(),
            "cluster::a".to_string()
        ])
    );
    assert!(paths_after("x tokio::spawn", "tokio::").len() == 1);
}
