//! Keeps `docs/architecture.md` true: every module imports only the
//! modules its row allows, so data flows one way (source -> spec -> plan ->
//! reconcile -> kernel; kernel -> reports). A new arrow is a decision to
//! write down there and here, not an accident.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Each top-level module of the library and what it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("spec", &["model"]),
    ("plan", &["model", "spec"]),
    ("kernel", &["model"]),
    ("tags", &["kernel", "model"]),
    ("identity", &["kernel", "model", "plan", "spec", "tags"]),
    (
        "reconcile",
        &["identity", "kernel", "model", "plan", "spec", "tags"],
    ),
    ("source", &["kernel", "model", "spec"]),
    (
        "report",
        &["identity", "kernel", "model", "reconcile", "spec", "tags"],
    ),
    ("state", &["spec"]),
    (
        "metrics",
        &["identity", "kernel", "reconcile", "report", "spec"],
    ),
    (
        "api",
        &[
            "identity",
            "kernel",
            "model",
            "reconcile",
            "report",
            "spec",
            "tags",
        ],
    ),
    (
        "daemon",
        &[
            "api",
            "identity",
            "kernel",
            "metrics",
            "reconcile",
            "report",
            "source",
            "spec",
            "state",
            "tags",
        ],
    ),
];

/// The first path segment of every `crate::…` path in `text`, including
/// each branch of a `use crate::{a::…, b::…}` group.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut segment_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && segment_start && (c.is_alphanumeric() || c == '_') {
                    ident.push(c);
                    continue;
                }
                if depth == 1 && c == ',' {
                    segment_start = true;
                } else if !c.is_whitespace() && !ident.is_empty() {
                    segment_start = false;
                }
                if !ident.is_empty() {
                    found.insert(std::mem::take(&mut ident));
                }
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(ident);
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn crate_import_parsing_sees_every_branch_of_a_group() {
    let text = "use crate::{\n    kernel::{Dataplane, KernelError},\n    plan::{self, Plan},\n    \
                spec::ClaimKey,\n};\nfn f() { crate::tags::monotonic_ns(); }";
    let found: Vec<String> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["kernel", "plan", "spec", "tags"]);
}

#[test]
fn modules_import_only_in_the_allowed_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs"))
            .unwrap_or_default();
        let Some(may_import) = allowed.get(module) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for import in crate_imports(&text) {
            if import != module && !may_import.contains(&import.as_str()) {
                violations.push(format!("{} imports crate::{import}", relative.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the direction in docs/architecture.md:\n{}",
        violations.join("\n")
    );
}
