//! The crate graph of docs/ARCHITECTURE.md, checked against the manifests,
//! so a new dependency edge cannot slip in unnoticed.

use std::path::Path;

/// Each workspace crate and the workspace crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("crates/mala-core", &[]),
    ("crates/mala-domain", &["mala-core"]),
    ("crates/mala-infra", &["mala-core", "mala-domain"]),
    ("crates/mala-pipeline", &["mala-core", "mala-domain"]),
    (
        "crates/mala-orchestration",
        &["mala-core", "mala-domain", "mala-pipeline", "mala-infra"],
    ),
    // The browser view: the run's events in, HTTP out; no rules of its own.
    ("crates/mala-dashboard", &["mala-core"]),
    // Dev-only: its in-memory ports implement the core traits.
    ("crates/mala-testkit", &["mala-core", "mala-domain"]),
    (
        "apps/mala",
        &[
            "mala-core",
            "mala-domain",
            "mala-orchestration",
            "mala-infra",
            "mala-dashboard",
        ],
    ),
];

/// Workspace crates named in the `[dependencies]` table of a manifest.
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && line.starts_with("mala-") {
            let name = line.split(['.', ' ', '=']).next().unwrap_or_default();
            found.push(name.to_owned());
        }
    }
    found
}

#[test]
fn crates_depend_only_in_the_documented_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for (dir, allowed) in ALLOWED {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
        for dependency in normal_dependencies(&manifest) {
            assert!(
                allowed.contains(&dependency.as_str()),
                "{dir} depends on {dependency}, which docs/ARCHITECTURE.md does not allow"
            );
        }
    }
}

#[test]
fn every_crate_is_in_the_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let name = format!("crates/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(
            ALLOWED.iter().any(|(dir, _)| *dir == name),
            "{name} is missing from ALLOWED"
        );
    }
}

#[test]
fn every_library_inherits_the_workspace_lints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for (dir, _) in ALLOWED {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{dir} does not inherit [workspace.lints]"
        );
    }
}
