//! Golden files: every definition in `tests/fixtures/` (`*.toml`, `*.json`) is loaded with
//! the spec loader, planned for all seven hypervisors with `HostFacts::reference()` and
//! `Artifacts::placeholders()`, rendered, and compared with
//! `crates/runner/tests/golden/<fixture>.<hypervisor>.txt`. An expected rejection is
//! the error text. `MICROVM_UPDATE_GOLDEN=1` rewrites the files (review the diff).
//!
//! Fixture-name conventions for the host and the guest:
//! - `tcg-*`: the host has no usable KVM (`kvm = false`, `tsc_khz = 2596000`).
//! - `aarch64-*`: the guest architecture is aarch64.
//!
//! Absolute paths under `tests/fixtures/` are shown as `$FIXTURES/…`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use microvm_runner::{plan_for, render, Artifacts, HostFacts};
use microvm_spec::config::Arch;
use microvm_spec::load::{load_with, LoadOptions};
use microvm_spec::types::Hypervisor;

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn updating() -> bool {
    std::env::var_os("MICROVM_UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn fixtures() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/fixtures");
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "json")
            )
        })
        .collect();
    out.sort();
    out
}

fn host_for(stem: &str) -> HostFacts {
    if stem.starts_with("tcg-") {
        HostFacts {
            kvm: false,
            tsc_khz: Some(2_596_000),
            ..HostFacts::reference()
        }
    } else {
        HostFacts::reference()
    }
}

fn arch_for(stem: &str) -> Arch {
    if stem.starts_with("aarch64-") {
        Arch::Aarch64
    } else {
        Arch::X86_64
    }
}

/// What the golden file of `fixture` × `hypervisor` should hold.
fn rendered(path: &Path, hypervisor: Hypervisor) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let options = LoadOptions {
        arch: Some(arch_for(stem)),
        ..LoadOptions::default()
    };
    let loaded = match load_with(path, &options) {
        Ok(l) => l,
        Err(f) => panic!("fixture {} does not load:\n{}", path.display(), f.render()),
    };
    let mut config = loaded.config;
    // Fixtures may set any `hypervisor`; the harness plans all seven.
    config.hypervisor = hypervisor;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} planned for {hypervisor} (generated; MICROVM_UPDATE_GOLDEN=1 rewrites)",
        display_name(path)
    );
    match plan_for(
        hypervisor,
        &config,
        &Artifacts::placeholders(),
        &host_for(stem),
    ) {
        Ok(inv) => out.push_str(&render::render(&inv)),
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
        }
    }
    // File inputs are made absolute against the fixture's directory: keep the golden
    // files independent of where the repository is checked out.
    let dir = path
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    out.replace(&format!("{dir}/"), "$FIXTURES/")
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn golden_plans() {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = updating();
    if update {
        fs::create_dir_all(&golden_dir).expect("create golden dir");
    }
    let mut failures = Vec::new();
    let mut missing = Vec::new();
    for fixture in fixtures() {
        let stem = fixture
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        for hv in Hypervisor::LINUX {
            let want_path = golden_dir.join(format!("{stem}.{hv}.txt"));
            let got = rendered(&fixture, hv);
            if update {
                if fs::read_to_string(&want_path).ok().as_deref() != Some(got.as_str()) {
                    fs::write(&want_path, &got).expect("write golden");
                    eprintln!("updated {}", want_path.display());
                }
                continue;
            }
            match fs::read_to_string(&want_path) {
                Ok(want) if want == got => {}
                Ok(want) => {
                    failures.push(format!("{}:\n{}", want_path.display(), diff(&want, &got)))
                }
                Err(_) => missing.push(want_path.display().to_string()),
            }
        }
    }
    if !missing.is_empty() {
        // A hypervisor's golden files may be committed by someone else later; a missing
        // file is reported, never silently passed.
        eprintln!(
            "golden files missing (run with MICROVM_UPDATE_GOLDEN=1):\n  {}",
            missing.join("\n  ")
        );
    }
    assert!(missing.is_empty(), "{} golden files missing", missing.len());
    assert!(
        failures.is_empty(),
        "golden mismatches (MICROVM_UPDATE_GOLDEN=1 rewrites):\n{}",
        failures.join("\n")
    );
}

/// A minimal line diff: the first differing lines with context.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    let n = w.len().max(g.len());
    let mut shown = 0;
    for i in 0..n {
        let (a, b) = (w.get(i).copied(), g.get(i).copied());
        if a != b {
            let _ = writeln!(
                out,
                "  line {}:\n  - {}\n  + {}",
                i + 1,
                a.unwrap_or("<none>"),
                b.unwrap_or("<none>")
            );
            shown += 1;
            if shown == 8 {
                out.push_str("  …\n");
                break;
            }
        }
    }
    out
}

const BEGIN: &str = "<!-- caps:begin -->";
const END: &str = "<!-- caps:end -->";

/// README.md's hypervisor table (between the markers) is generated from the capability
/// table; `MICROVM_UPDATE_GOLDEN=1` rewrites it.
#[test]
fn readme_capability_table() {
    let path = repo_root().join("README.md");
    let Ok(text) = fs::read_to_string(&path) else {
        eprintln!("skipped: {} does not exist yet", path.display());
        return;
    };
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!("skipped: README.md has no {BEGIN} … {END} section");
        return;
    };
    let section = &text[b + BEGIN.len()..e];
    let want = format!("\n{}", microvm_runner::caps::markdown_table());
    if section == want {
        return;
    }
    if updating() {
        let new = format!("{}{BEGIN}{want}{}", &text[..b], &text[e..]);
        fs::write(&path, new).expect("write README.md");
        eprintln!("updated the capability table in {}", path.display());
        return;
    }
    panic!(
        "README.md's capability table is out of date (MICROVM_UPDATE_GOLDEN=1 rewrites it):\n{}",
        diff(section, &want)
    );
}
