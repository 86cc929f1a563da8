//! What the last build of a definition produced, so that `plan` can show real store
//! paths instead of `$KERNEL`, `$INITRD` and `$STORE`: `build` (and `run`) record the
//! artifacts under `<store>/.built/<key>.json`, the key being a hash of the resolved
//! definition and of the size and modification time of every input it names. A changed
//! definition or input, or a garbage-collected artifact, makes `plan` fall back to the
//! placeholders (a change deep inside a root directory is not seen: `build` shows it).

use std::path::{Path, PathBuf};

use microvm_image::store::combine;
use microvm_runner::Artifacts;
use microvm_spec::Loaded;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    kernel: PathBuf,
    vmlinux: Option<PathBuf>,
    initrd: PathBuf,
    store_disk: Option<PathBuf>,
    /// The root's own kernel parameters (`regInfo=`), added after the definition's.
    kernel_params: Vec<String>,
}

fn key(loaded: &Loaded) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let config = serde_json::to_string(&loaded.config).unwrap_or_default();
    let mut parts = vec![("config".to_owned(), config)];
    for input in &loaded.inputs {
        let stamp = std::fs::metadata(&input.path).map_or_else(
            |_| "missing".to_owned(),
            |m| format!("{}:{}.{}", m.size(), m.mtime(), m.mtime_nsec()),
        );
        parts.push((input.path.display().to_string(), stamp));
    }
    let refs: Vec<(&str, &str)> = parts
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    combine(&refs)
}

fn record_path(store_root: &Path, loaded: &Loaded) -> PathBuf {
    store_root
        .join(".built")
        .join(format!("{}.json", key(loaded)))
}

/// Records what a build produced (best effort: `plan` then shows placeholders).
pub fn record(store_root: &Path, loaded: &Loaded, artifacts: &Artifacts, kernel_params: &[String]) {
    let record = Record {
        kernel: artifacts.kernel.clone(),
        vmlinux: artifacts.vmlinux.clone(),
        initrd: artifacts.initrd.clone(),
        store_disk: artifacts.store_disk.clone(),
        kernel_params: kernel_params.to_vec(),
    };
    let path = record_path(store_root, loaded);
    let Some(dir) = path.parent() else { return };
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec_pretty(&record).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("cannot record the build in {}: {e}", path.display());
    }
}

/// The artifacts of the last build of this definition and inputs, when all are still in
/// the store, with the root's kernel parameters.
pub fn lookup(store_root: &Path, loaded: &Loaded) -> Option<(Artifacts, Vec<String>)> {
    let text = std::fs::read(record_path(store_root, loaded)).ok()?;
    let r: Record = serde_json::from_slice(&text).ok()?;
    let all_there = [
        Some(&r.kernel),
        r.vmlinux.as_ref(),
        Some(&r.initrd),
        r.store_disk.as_ref(),
    ]
    .into_iter()
    .flatten()
    .all(|p| p.exists());
    if !all_there {
        return None;
    }
    let artifacts = Artifacts {
        kernel: r.kernel,
        vmlinux: r.vmlinux,
        initrd: r.initrd,
        store_disk: r.store_disk,
    };
    Some((artifacts, r.kernel_params))
}

/// Every record in `<store>/.built`, with the artifacts it names (`None`: unreadable or not
/// a record), for `gc` to drop the ones whose artifacts are gone. Temporary files of a
/// record being written are not listed.
pub fn records(store_root: &Path) -> Vec<(PathBuf, Option<Vec<PathBuf>>)> {
    let Ok(entries) = std::fs::read_dir(store_root.join(".built")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let record = std::fs::read(&path)
            .ok()
            .and_then(|t| serde_json::from_slice::<Record>(&t).ok());
        let artifacts = record.map(|r| {
            [Some(r.kernel), r.vmlinux, Some(r.initrd), r.store_disk]
                .into_iter()
                .flatten()
                .collect()
        });
        out.push((path, artifacts));
    }
    out.sort();
    out
}
