//! The docs cite only what is in the repository: every relative link of README.md and
//! docs/*.md resolves to a file, and no page points at the project's private notes
//! (the "inventory" of microvm.nix, style.md) that a clone does not have.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pages() -> Vec<PathBuf> {
    let root = workspace();
    let mut out = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// The targets of `](target)` links that are not URLs or in-page anchors.
fn relative_links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')')?];
            let target = target.split('#').next().unwrap_or_default();
            let external = target.contains("://") || target.starts_with("mailto:");
            (!target.is_empty() && !external).then(|| target.to_owned())
        })
        .collect()
}

#[test]
fn every_relative_link_resolves() {
    let root = workspace().canonicalize().expect("root");
    let mut missing = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        for link in relative_links(&text) {
            let target = page.parent().expect("dir").join(&link);
            let rel = target
                .canonicalize()
                .ok()
                .and_then(|t| t.strip_prefix(&root).ok().map(Path::to_path_buf));
            if rel.is_some() {
                continue;
            }
            missing.push(format!("{}: {link}", page.display()));
        }
    }
    assert!(missing.is_empty(), "links to nothing: {missing:#?}");
}

#[test]
fn no_page_cites_notes_outside_the_repository() {
    let mut found = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        for (n, line) in text.lines().enumerate() {
            for needle in ["inventory §", "style.md", "design.md", "host-test-notes"] {
                if line.contains(needle) {
                    found.push(format!("{}:{}: {needle}", page.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
