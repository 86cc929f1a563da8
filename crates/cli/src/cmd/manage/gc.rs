//! `microvm gc [--dry-run] [--json]`: remove what no managed VM references.
//!
//! Roots are the `current`, `booted` and `old` links of every directory in the state
//! directory. From a root runner, everything it references is kept, transitively: store
//! entries named by its symlinks (share/microvm/kernel, initrd, store-disk, …) and by the
//! text of its small files (invocation.json, config.json, bin/ scripts). Collected:
//! - top-level store entries (`<hash>-<name>`) and kernel caches (`.cache/kernels/<hash>`)
//!   that nothing kept references;
//! - scratch directories (`.store/.tmp/*`) and interrupted `create`/`remove` leftovers
//!   (`<state>/.tmp-<name>-<pid>`, `.tmp-removing-*`) older than an hour;
//! - records of past builds (`.store/.built/<key>.json`, what `plan` shows) that name an
//!   artifact gc removes or that is gone already, and records that do not parse.
//!
//! Never collected: anything reachable, `.cache/debs` (downloaded kernel packages),
//! `.stat-cache.json`, and `.tmp-volumes-*` (user data set aside by an interrupted
//! `remove --keep-volumes`: reported, never deleted). gc holds the state directory's lock
//! exclusively, so it never runs between a build and the linking of its runner. It only
//! collects `<state>/.store`: a store given by `$MICROVM_STORE` elsewhere may hold roots
//! gc cannot see (other state directories, `microvm build` users), so gc refuses it.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use serde::Serialize;

use microvm_image::store::{LockKind, StoreLock};

use super::{Ctx, LOCK_TIMEOUT};
use crate::cli::GcArgs;
use crate::exit::OK;

/// Leftovers younger than this may belong to a command still running.
const TMP_AGE: Duration = Duration::from_secs(3600);
/// Files larger than this are artifacts (images), not text that names other entries.
const SCAN_LIMIT: u64 = 1 << 20;
/// Files the pipeline writes beside a root disk (`<disk>.manifest`, `<disk>.defaults.json`):
/// `build --list-root` and the image's default command need them as long as the disk.
const SIDECARS: [&str; 2] = [".manifest", ".defaults.json"];

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    dry_run: bool,
    removed: Vec<PathBuf>,
    kept: usize,
    freed_bytes: u64,
    /// `.tmp-volumes-*` directories: user data from an interrupted removal.
    set_aside_volumes: Vec<PathBuf>,
}

pub fn gc(state_root: &Path, args: &GcArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(state_root)?;
    if ctx.store_root != ctx.state.store_root() {
        bail!(
            "gc collects only the store of the state directory ({}); MICROVM_STORE points to {}, \
             which may hold runners of other state directories or of `microvm build`",
            ctx.state.store_root().display(),
            ctx.store_root.display()
        );
    }
    let _host = ctx.state.lock(LOCK_TIMEOUT)?;
    let store = ctx.state.store_root();
    let _store = lock_store(&store)?;
    let roots = roots(ctx.state.root())?;
    let live = reachable(&store, &roots);
    let (candidates, aside) = candidates(ctx.state.root(), &store)?;
    let mut removed = Vec::new();
    let mut freed = 0;
    let mut kept = 0;
    for c in candidates {
        if unit_of(&store, &c).is_some_and(|u| live.contains(&u)) {
            kept += 1;
            continue;
        }
        let size = du(&c);
        if !args.dry_run {
            let result = if c.is_dir() && !c.is_symlink() {
                make_writable(&c);
                fs::remove_dir_all(&c)
            } else {
                fs::remove_file(&c)
            };
            result.with_context(|| format!("removing {}", c.display()))?;
        }
        freed += size;
        removed.push(c);
    }
    for record in stale_records(&store, &removed) {
        freed += du(&record);
        if !args.dry_run {
            fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
        }
        removed.push(record);
    }
    let report = Report {
        dry_run: args.dry_run,
        removed,
        kept,
        freed_bytes: freed,
        set_aside_volumes: aside,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(OK);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for p in &report.removed {
        println!("{verb} {}", p.display());
    }
    for p in &report.set_aside_volumes {
        eprintln!(
            "microvm: {} holds volumes set aside by an interrupted `remove --keep-volumes`; move them back or delete it yourself",
            p.display()
        );
    }
    println!(
        "{} {} entries ({:.1} MiB); {} kept",
        if args.dry_run {
            "Would remove"
        } else {
            "Removed"
        },
        report.removed.len(),
        report.freed_bytes as f64 / (1024.0 * 1024.0),
        report.kept
    );
    Ok(OK)
}

/// The store's lock, exclusively: builds and `run FILE` hold it shared while they use the
/// store, so gc waits for them (at most [`LOCK_TIMEOUT`]).
fn lock_store(store: &Path) -> anyhow::Result<Option<StoreLock>> {
    if !store.is_dir() {
        return Ok(None);
    }
    let lock = StoreLock::acquire(store, LockKind::Exclusive, Some(LOCK_TIMEOUT), &mut || {
        eprintln!(
            "microvm: waiting for builds and `microvm run FILE` using {} to finish",
            store.display()
        )
    })?;
    match lock {
        Some(l) => Ok(Some(l)),
        None => bail!(
            "the store {} is still in use by a build or a running `microvm run FILE` after {} s; \
             run gc again when they are done",
            store.display(),
            LOCK_TIMEOUT.as_secs()
        ),
    }
}

/// The targets of `current`, `booted` and `old` in every directory of the state dir
/// (including `.tmp-<name>-*` of a `create` in progress).
fn roots(state: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(state) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    };
    for entry in entries {
        let dir = entry?.path();
        if dir.file_name().is_some_and(|n| n == ".store") || !dir.is_dir() {
            continue;
        }
        for link in ["current", "booted", "old"] {
            if let Ok(target) = fs::read_link(dir.join(link)) {
                out.push(if target.is_absolute() {
                    target
                } else {
                    dir.join(target)
                });
            }
        }
    }
    Ok(out)
}

/// The collectable unit a path inside the store belongs to: `<store>/<entry>` or
/// `<store>/.cache/kernels/<hash>`; `None` for paths outside the store or in other
/// dot-directories.
fn unit_of(store: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(store).ok()?;
    let comps: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    match comps.as_slice() {
        [first, ..] if !first.starts_with('.') => Some(store.join(owner(first))),
        [cache, kernels, hash, ..] if cache == ".cache" && kernels == "kernels" => {
            Some(store.join(cache).join(kernels).join(hash))
        }
        _ => None,
    }
}

/// The store entry a top-level name belongs to: a root disk's `.manifest` and
/// `.defaults.json` (written beside it by the build pipeline) belong to the disk.
fn owner(name: &str) -> &str {
    SIDECARS
        .iter()
        .find_map(|s| name.strip_suffix(s).filter(|n| !n.is_empty()))
        .unwrap_or(name)
}

/// Every unit reachable from the roots.
fn reachable(store: &Path, roots: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut live = BTreeSet::new();
    let mut queue: VecDeque<PathBuf> = VecDeque::new();
    let mark = |p: &Path, live: &mut BTreeSet<PathBuf>, queue: &mut VecDeque<PathBuf>| {
        if let Some(unit) = unit_of(store, p) {
            if live.insert(unit.clone()) {
                queue.push_back(unit);
            }
        }
    };
    for r in roots {
        mark(r, &mut live, &mut queue);
    }
    let needle = format!("{}/", store.display());
    while let Some(unit) = queue.pop_front() {
        let mut refs = Vec::new();
        scan(&unit, &needle, &mut refs);
        for r in refs {
            mark(&r, &mut live, &mut queue);
        }
    }
    live
}

/// Collects store paths named by symlinks and small files under `path`.
fn scan(path: &Path, needle: &str, out: &mut Vec<PathBuf>) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        if let Ok(t) = fs::read_link(path) {
            let t = if t.is_absolute() {
                t
            } else {
                path.parent().unwrap_or(Path::new("/")).join(t)
            };
            out.push(t);
        }
    } else if ft.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                scan(&e.path(), needle, out);
            }
        }
    } else if ft.is_file() && meta.len() <= SCAN_LIMIT {
        if let Ok(bytes) = fs::read(path) {
            let text = String::from_utf8_lossy(&bytes);
            for (i, _) in text.match_indices(needle) {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
                    })
                    .unwrap_or(rest.len());
                out.push(PathBuf::from(&rest[..end]));
            }
        }
    }
}

/// The build records (`<store>/.built/*.json`) that name an artifact in `removed` or one
/// that no longer exists, or that do not parse.
fn stale_records(store: &Path, removed: &[PathBuf]) -> Vec<PathBuf> {
    let gone = |artifact: &Path| {
        !artifact.exists() || unit_of(store, artifact).is_some_and(|u| removed.contains(&u))
    };
    let mut out: Vec<PathBuf> = crate::cmd::built::records(store)
        .into_iter()
        .filter(|(_, artifacts)| match artifacts {
            Some(a) => a.iter().any(|p| gone(p)),
            None => true,
        })
        .map(|(path, _)| path)
        .collect();
    // A record being written (`.tmp-<pid>`) by a build that died.
    if let Ok(entries) = fs::read_dir(store.join(".built")) {
        out.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
                })
                .filter(|p| old(p)),
        );
    }
    out
}

/// Units that may be collected, and `.tmp-volumes-*` directories (reported only).
fn candidates(state: &Path, store: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    let mut aside = Vec::new();
    if let Ok(entries) = fs::read_dir(store) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push(e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(store.join(".cache/kernels")) {
        out.extend(entries.flatten().map(|e| e.path()));
    }
    if let Ok(entries) = fs::read_dir(store.join(".tmp")) {
        out.extend(entries.flatten().map(|e| e.path()).filter(|p| old(p)));
    }
    if let Ok(entries) = fs::read_dir(state) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-volumes-") {
                aside.push(e.path());
            } else if name.starts_with(".tmp-") && old(&e.path()) {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok((out, aside))
}

fn old(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > TMP_AGE)
}

fn du(p: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        fs::read_dir(p)
            .map(|es| es.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

/// Store entries may be read-only; make directories writable so they can be removed.
fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = fs::symlink_metadata(p) else {
        return;
    };
    if meta.is_dir() {
        let mode = meta.permissions().mode();
        if mode & 0o200 == 0 {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(es) = fs::read_dir(p) {
            for e in es.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let s = Path::new("/st");
        assert_eq!(
            unit_of(s, Path::new("/st/abc-initrd/initrd")),
            Some(PathBuf::from("/st/abc-initrd"))
        );
        assert_eq!(
            unit_of(s, Path::new("/st/.cache/kernels/h/vmlinuz")),
            Some(PathBuf::from("/st/.cache/kernels/h"))
        );
        assert_eq!(
            unit_of(s, Path::new("/st/abc-root.erofs.manifest")),
            Some(PathBuf::from("/st/abc-root.erofs"))
        );
        assert_eq!(
            unit_of(s, Path::new("/st/abc-root.erofs.defaults.json")),
            Some(PathBuf::from("/st/abc-root.erofs"))
        );
        assert_eq!(unit_of(s, Path::new("/st/.cache/debs/x.deb")), None);
        assert_eq!(unit_of(s, Path::new("/elsewhere/x")), None);
    }

    #[test]
    fn stale_build_records_are_the_ones_naming_removed_or_missing_artifacts() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = tmp.path();
        let built = store.join(".built");
        fs::create_dir_all(&built).expect("mkdir");
        for entry in ["k1-kernel", "i1-initrd", "i2-initrd"] {
            fs::create_dir_all(store.join(entry)).expect("mkdir");
            fs::write(store.join(entry).join("f"), "x").expect("write");
        }
        let record = |name: &str, initrd: &str| {
            let text = serde_json::json!({
                "kernel": store.join("k1-kernel/f"),
                "vmlinux": null,
                "initrd": store.join(initrd),
                "storeDisk": null,
                "kernelParams": [],
            });
            fs::write(built.join(name), text.to_string()).expect("write record");
        };
        record("kept.json", "i1-initrd/f");
        record("removed.json", "i2-initrd/f");
        record("missing.json", "i3-initrd/f");
        fs::write(built.join("garbage.json"), "{").expect("write");
        fs::write(built.join(".tmp-1"), "{").expect("write");
        fs::write(built.join(".tmp-2"), "{").expect("write");
        let touched = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(built.join(".tmp-1"))
            .status()
            .expect("touch");
        assert!(touched.success());
        let mut stale = stale_records(store, &[store.join("i2-initrd")]);
        stale.sort();
        let names: Vec<_> = stale
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [".tmp-1", "garbage.json", "missing.json", "removed.json"]
        );
    }

    #[test]
    fn keeps_what_roots_reference() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path();
        let store = state.join(".store");
        let mk = |p: &str| {
            let d = store.join(p);
            fs::create_dir_all(&d).expect("mkdir");
            d
        };
        let runner = mk("r1-microvm-qemu-a");
        let initrd = mk("i1-initrd");
        let disk = mk("d1-root");
        let kernel = mk(".cache/kernels/k1");
        let unused = mk("r2-microvm-qemu-b");
        let unused_kernel = mk(".cache/kernels/k2");
        fs::create_dir_all(runner.join("share/microvm")).expect("mkdir");
        std::os::unix::fs::symlink(initrd.join("initrd"), runner.join("share/microvm/initrd"))
            .expect("link");
        std::os::unix::fs::symlink(kernel.join("vmlinuz"), runner.join("share/microvm/kernel"))
            .expect("link");
        fs::write(
            runner.join("share/microvm/invocation.json"),
            format!("{{\"args\":[\"{}/disk.img\"]}}", disk.display()),
        )
        .expect("write");
        fs::create_dir_all(state.join("a")).expect("mkdir");
        std::os::unix::fs::symlink(&runner, state.join("a/current")).expect("link");
        let live = reachable(&store, &roots(state).expect("roots"));
        for k in [&runner, &initrd, &disk, &kernel] {
            assert!(live.contains(k), "{k:?} {live:?}");
        }
        assert!(!live.contains(&unused));
        assert!(!live.contains(&unused_kernel));
    }
}
