//! The layout keeps its dependencies pointing down: read from the source, the modules at
//! the crate root (`server`, `middleware`, `context`, ...) import each other without a
//! cycle, in the library and in every crate of the workspace (apps and tools too); and the
//! server, the layers and the lifecycle never import the modules for binaries (`cli`,
//! `logs`, `otel`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate-root module a source file belongs to (`server/drain.rs` -> `server`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// The crate-root modules `text` names in code: `crate::x` paths and grouped imports
/// `use crate::{x, y::z, ...}` (over several lines too); comment lines left out.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's items, split at its top-level commas.
            let (mut depth, mut item) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident(&item));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// `module -> modules it names` (see [`named_modules`]) for the crate whose sources are in
/// `src`.
fn edges_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = module_of(src, &file);
        let text = std::fs::read_to_string(&file).expect("read");
        let mut named = named_modules(&text);
        named.remove(&from);
        edges.entry(from).or_default().extend(named);
    }
    edges
}

/// The library's modules.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    edges_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// The first module cycle in `edges`, if any.
fn first_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| cycle(edges, node, &mut Vec::new(), &mut done))
}

/// A cycle through `node`, if any (depth-first, `path` the modules on the way).
fn cycle(
    edges: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        return Some(path[at..].to_vec());
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in edges.get(node).into_iter().flatten() {
        if let Some(c) = cycle(edges, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let edges = edges();
    assert!(edges.contains_key("server") && edges.contains_key("middleware"));
    let found = first_cycle(&edges);
    assert!(found.is_none(), "module cycle: {found:?}");
}

#[test]
fn no_crate_of_the_workspace_has_a_module_cycle() {
    let crates = workspace_sources();
    assert!(crates.len() >= 6, "found {crates:?}");
    for src in crates {
        let found = first_cycle(&edges_of(&src));
        assert!(found.is_none(), "{}: module cycle {found:?}", src.display());
    }
}

/// The `src` directories of the workspace's crates.
fn workspace_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut crates = Vec::new();
    for group in ["crates", "apps", "tools"] {
        for entry in std::fs::read_dir(root.join(group)).expect("read the workspace") {
            let src = entry.expect("entry").path().join("src");
            if src.is_dir() {
                crates.push(src);
            }
        }
    }
    crates
}

#[test]
fn no_source_file_holds_more_than_600_lines_before_its_tests() {
    let mut long = Vec::new();
    for src in workspace_sources() {
        let mut files = Vec::new();
        sources(&src, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            let lines = text
                .lines()
                .take_while(|l| !l.starts_with("#[cfg(test)]"))
                .count();
            if lines > 600 {
                long.push(format!("{} ({lines})", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "over 600 lines: {long:?}");
}

#[test]
fn grouped_imports_and_paths_name_their_modules_and_a_cycle_is_found() {
    let text = "use crate::{\n    audit::{AuditError, AuditLog},\n    db,\n    self,\n};\n\
                // crate::commented\n\
                fn f() { crate::writer::start(); }\n";
    let named: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(named, ["audit", "db", "writer"]);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(first_cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert!(first_cycle(&edges).is_some_and(|c| c.len() == 3));
}

#[test]
fn the_server_the_layers_and_the_lifecycle_never_import_the_binary_modules() {
    let edges = edges();
    for low in ["server", "middleware", "lifecycle", "context"] {
        let targets = &edges[low];
        for high in ["cli", "logs", "otel"] {
            assert!(!targets.contains(high), "{low} imports {high}: {targets:?}");
        }
    }
}
