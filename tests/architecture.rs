//! The layout rules of ARCHITECTURE.md, checked on the source tree: dependencies between
//! top-level modules point one way (each `crate::X` path a module names must be on its
//! allowed list), a connection's session never reaches back into its worker, every source
//! file opens with a `//!` doc, and `unsafe` appears only in `sys.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it may use. Read top-down: nothing below may
/// name anything above it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("main", &["cli"]),
    ("lib", &[]),
    (
        "cli",
        &[
            "control", "tickets", "fanout", "origin", "protocol", "config",
        ],
    ),
    (
        "control",
        &[
            "dataplane",
            "tickets",
            "metrics",
            "fanout",
            "origin",
            "config",
        ],
    ),
    (
        "dataplane",
        &[
            "fanout", "tickets", "metrics", "origin", "ws", "protocol", "config", "sys",
        ],
    ),
    ("fanout", &["origin", "ws", "protocol", "sys"]),
    ("tickets", &["gcp", "sys", "config"]),
    ("metrics", &["protocol"]),
    ("origin", &["gcp", "protocol", "config", "sys"]),
    ("ws", &["protocol"]),
    ("protocol", &[]),
    ("gcp", &[]),
    ("config", &[]),
    ("sys", &[]),
];

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

fn src() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    (root, files)
}

/// The top-level module a source file belongs to.
fn top(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The modules named as `crate::NAME` in `text`.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn dependencies_point_one_way() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let (root, files) = src();
    let mut wrong = Vec::new();
    for file in &files {
        let module = top(&root, file);
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` is not in ALLOWED",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in named(&text) {
            if used != module && !ok.contains(&used.as_str()) {
                wrong.push(format!("{}: `{module}` uses `{used}`", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "import rules broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn allowed_edges_have_no_cycle() {
    // Depth-first search over ALLOWED itself: the rules must describe a layering.
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    fn visit<'a>(
        n: &'a str,
        g: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(n) {
            return;
        }
        assert!(!path.contains(&n), "cycle: {path:?} -> {n}");
        path.push(n);
        for m in g.get(n).copied().unwrap_or(&[]) {
            visit(m, g, path, done);
        }
        path.pop();
        done.insert(n);
    }
    let mut done = BTreeSet::new();
    for n in allowed.keys() {
        visit(n, &allowed, &mut Vec::new(), &mut done);
    }
}

#[test]
fn sessions_do_not_reach_into_their_worker() {
    let (root, files) = src();
    let session = root.join("dataplane").join("session");
    for file in files.iter().filter(|f| f.starts_with(&session)) {
        // A session owns its connection's byte stream (plain or TLS), which is not its
        // worker's state.
        let text = std::fs::read_to_string(file)
            .unwrap()
            .replace("crate::dataplane::socket::", "");
        for banned in ["core::", "http::", "listener::", "Shared", "dataplane::"] {
            assert!(
                !text.contains(banned),
                "{} names `{banned}`: a session only sees its Context",
                file.display()
            );
        }
    }
}

#[test]
fn every_module_says_what_it_owns() {
    let (_, files) = src();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! doc",
            file.display()
        );
    }
}

#[test]
fn unsafe_only_in_sys() {
    let (root, files) = src();
    for file in files {
        if file == root.join("sys.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for pattern in ["unsafe {", "unsafe fn", "unsafe impl", "allow(unsafe_code)"] {
            let found = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(pattern));
            let lib_allows_sys = file == root.join("lib.rs") && pattern == "allow(unsafe_code)";
            assert!(
                !found || lib_allows_sys,
                "{} has `{pattern}`",
                file.display()
            );
        }
    }
}
