//! What changed between two runner directories: the equivalent of the original's
//! `nix store diff-closures OLD NEW` on update, at the granularity users act on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One changed part of a runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// "kernel", "initrd", "root disk", "arguments", "kernel command line", "scripts".
    pub what: String,
    /// Human detail: `a → b`, or `+added -removed` arguments.
    pub detail: String,
}

const ARTIFACTS: &[(&str, &str)] = &[
    ("kernel", "kernel"),
    ("initrd", "initrd"),
    ("store-disk", "root disk"),
];

/// The changes from `old` to `new` (empty when they are the same directory).
pub fn diff(old: &Path, new: &Path) -> Vec<Change> {
    let mut out = Vec::new();
    if old == new {
        return out;
    }
    for (link, what) in ARTIFACTS {
        let a = artifact(old, link);
        let b = artifact(new, link);
        if a != b {
            out.push(Change {
                what: (*what).to_owned(),
                detail: format!("{} → {}", show(a.as_deref()), show(b.as_deref())),
            });
        }
    }
    let (ia, ib) = (invocation(old), invocation(new));
    let args = |v: &serde_json::Value| -> Vec<String> {
        v["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cmdline = |v: &serde_json::Value| {
        v.get("kernelCmdline")
            .or_else(|| v.get("kernel_cmdline"))
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    if cmdline(&ia) != cmdline(&ib) {
        out.push(Change {
            what: "kernel command line".into(),
            detail: set_diff(
                cmdline(&ia).split_whitespace().map(str::to_owned).collect(),
                cmdline(&ib).split_whitespace().map(str::to_owned).collect(),
            ),
        });
    }
    // Arguments that only differ by the artifact paths or the command line are not news.
    let strip = |v: Vec<String>, inv: &serde_json::Value, dir: &Path| -> Vec<String> {
        let noise: BTreeSet<String> = ARTIFACTS
            .iter()
            .filter_map(|(l, _)| artifact(dir, l))
            .map(|p| p.display().to_string())
            .chain(std::iter::once(cmdline(inv)))
            .collect();
        v.into_iter()
            .filter(|a| {
                !noise
                    .iter()
                    .any(|n| !n.is_empty() && a.contains(n.as_str()))
            })
            .collect()
    };
    let (aa, ab) = (strip(args(&ia), &ia, old), strip(args(&ib), &ib, new));
    if aa != ab {
        out.push(Change {
            what: "arguments".into(),
            detail: set_diff(aa, ab),
        });
    }
    if out.is_empty() {
        out.push(Change {
            what: "scripts".into(),
            detail: "the runner's generated files changed".into(),
        });
    }
    out
}

fn artifact(runner: &Path, link: &str) -> Option<PathBuf> {
    std::fs::read_link(runner.join("share/microvm").join(link)).ok()
}

fn invocation(runner: &Path) -> serde_json::Value {
    std::fs::read(runner.join("share/microvm/invocation.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn show(p: Option<&Path>) -> String {
    match p {
        None => "none".into(),
        Some(p) => {
            // The store entry's short hash and name: `<hash12>…/<file>`.
            let comps: Vec<_> = p.components().rev().take(2).collect();
            match comps.as_slice() {
                [file, entry] => {
                    let entry = entry.as_os_str().to_string_lossy();
                    let short = entry.get(..12).unwrap_or(&entry);
                    format!("{short}…/{}", file.as_os_str().to_string_lossy())
                }
                _ => p.display().to_string(),
            }
        }
    }
}

fn set_diff(a: Vec<String>, b: Vec<String>) -> String {
    let (sa, sb): (BTreeSet<_>, BTreeSet<_>) = (a.iter().collect(), b.iter().collect());
    let mut parts: Vec<String> = Vec::new();
    parts.extend(sb.difference(&sa).map(|x| format!("+{x}")));
    parts.extend(sa.difference(&sb).map(|x| format!("-{x}")));
    if parts.is_empty() {
        "reordered".into()
    } else {
        parts.join(" ")
    }
}

/// Prints the changes indented under a header line.
pub fn print(name: &str, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    println!("Changes of MicroVM {name}:");
    for c in changes {
        println!("  {}: {}", c.what, c.detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(root: &Path, n: &str, kernel: &str, args: &[&str], cmdline: &str) -> PathBuf {
        let dir = root.join(n);
        let share = dir.join("share/microvm");
        std::fs::create_dir_all(&share).expect("mkdir");
        std::os::unix::fs::symlink(kernel, share.join("kernel")).expect("link");
        std::os::unix::fs::symlink("/s/i/initrd", share.join("initrd")).expect("link");
        let inv = serde_json::json!({"args": args, "kernelCmdline": cmdline});
        std::fs::write(share.join("invocation.json"), inv.to_string()).expect("write");
        dir
    }

    #[test]
    fn reports_artifacts_arguments_and_cmdline() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = runner(
            tmp.path(),
            "a",
            "/s/aaaaaaaaaaaaaaaa-kernel/bzImage",
            &["-m", "256", "-kernel", "/s/aaaaaaaaaaaaaaaa-kernel/bzImage"],
            "console=ttyS0 quiet",
        );
        let b = runner(
            tmp.path(),
            "b",
            "/s/bbbbbbbbbbbbbbbb-kernel/bzImage",
            &["-m", "512", "-kernel", "/s/bbbbbbbbbbbbbbbb-kernel/bzImage"],
            "console=ttyS0",
        );
        let d = diff(&a, &b);
        let what: Vec<_> = d.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(what, ["kernel", "kernel command line", "arguments"]);
        assert_eq!(d[0].detail, "aaaaaaaaaaaa…/bzImage → bbbbbbbbbbbb…/bzImage");
        assert_eq!(d[1].detail, "-quiet");
        assert_eq!(d[2].detail, "+512 -256");
        assert!(diff(&a, &a).is_empty());
    }
}
