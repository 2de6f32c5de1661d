//! The library's layout keeps its dependencies pointing down: read from the source, the
//! modules at the crate root (`server`, `middleware`, `context`, ...) import each other
//! without a cycle, and the server, the layers and the lifecycle never import the modules
//! for binaries (`cli`, `logs`, `otel`).

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

/// `module -> modules it names as `crate::x` in code (comments left out).
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).expect("read");
        let targets = edges.entry(from.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from {
                    targets.insert(name);
                }
            }
        }
    }
    edges
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
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        let found = cycle(&edges, node, &mut Vec::new(), &mut done);
        assert!(found.is_none(), "module cycle: {found:?}");
    }
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
