//! The content-addressed store: every artifact lives in a directory named by the hash of
//! all its inputs, file contents included. Contents are hashed once and remembered by
//! (device, inode, size, mtime, ctime), so a rebuild with nothing changed only `stat`s its
//! inputs. Entries appear atomically (built under a temporary name, then renamed).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

mod lock;
pub use lock::{LockKind, StoreLock, LOCK_FILE};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A store rooted at a directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    stat_cache: Mutex<StatCache>,
    /// Shared while the store is open: `gc` (exclusive) waits for it.
    _lock: StoreLock,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StatCache {
    entries: BTreeMap<String, (StatKey, String)>,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

impl StatKey {
    fn of(meta: &fs::Metadata) -> Self {
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }
}

impl Store {
    /// Opens the store and holds its lock shared until the `Store` is dropped; waits
    /// (saying so on stderr) while `microvm gc` holds it.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(root).map_err(io_err("creating store", root))?;
        let lock = StoreLock::wait(root, LockKind::Shared, &mut || {
            eprintln!(
                "microvm: waiting for `microvm gc` to finish with the store {}",
                root.display()
            )
        })?;
        remove_dead_scratch(&root.join(".tmp"));
        let cache_path = root.join(".stat-cache.json");
        let stat_cache = fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Store {
            root: root.to_path_buf(),
            stat_cache: Mutex::new(stat_cache),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<hash>-<name>`.
    pub fn path(&self, hash: &str, name: &str) -> PathBuf {
        self.root
            .join(format!("{}-{name}", &hash[..32.min(hash.len())]))
    }

    /// A scratch directory inside the store (same filesystem, so renames are atomic).
    pub fn scratch(&self, name: &str) -> Result<PathBuf, StoreError> {
        let dir =
            self.root
                .join(".tmp")
                .join(format!("{name}-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(dir)
    }

    /// Publishes `built` (a file or directory) as `dest` atomically. If `dest` appeared in
    /// the meantime (a concurrent build of the same inputs), the new copy is discarded.
    pub fn publish(&self, built: &Path, dest: &Path) -> Result<(), StoreError> {
        // Durable before visible: after a power loss a published entry is never empty.
        sync_tree(built).map_err(io_err("syncing", built))?;
        match fs::rename(built, dest) {
            Ok(()) => {
                if let Some(parent) = dest.parent() {
                    let _ = fs::File::open(parent).and_then(|d| d.sync_all());
                }
                Ok(())
            }
            Err(_) if dest.exists() => {
                let _ = if built.is_dir() {
                    fs::remove_dir_all(built)
                } else {
                    fs::remove_file(built)
                };
                Ok(())
            }
            Err(e) => Err(StoreError::Io {
                op: "publishing",
                path: dest.to_path_buf(),
                source: e,
            }),
        }
    }

    /// The content hash of a file or a directory tree (names, modes, symlink targets and
    /// file contents; not timestamps or owners unless `owners`).
    pub fn hash_path(&self, path: &Path) -> Result<String, StoreError> {
        let mut h = blake3::Hasher::new();
        self.hash_into(path, Path::new(""), &mut h)?;
        Ok(h.finalize().to_hex().to_string())
    }

    fn hash_into(&self, path: &Path, rel: &Path, h: &mut blake3::Hasher) -> Result<(), StoreError> {
        let meta = fs::symlink_metadata(path).map_err(io_err("reading", path))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(&[0]);
        h.update(&meta.mode().to_le_bytes());
        h.update(&meta.uid().to_le_bytes());
        h.update(&meta.gid().to_le_bytes());
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err("reading link", path))?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if ft.is_file() {
            h.update(self.file_hash(path, &meta)?.as_bytes());
        } else if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(path)
                .map_err(io_err("listing", path))?
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for name in names {
                self.hash_into(&path.join(&name), &rel.join(&name), h)?;
            }
        } else {
            h.update(&meta.rdev().to_le_bytes());
        }
        Ok(())
    }

    fn file_hash(&self, path: &Path, meta: &fs::Metadata) -> Result<String, StoreError> {
        let key = StatKey::of(meta);
        let name = path.to_string_lossy().into_owned();
        if let Ok(cache) = self.stat_cache.lock() {
            if let Some((k, hash)) = cache.entries.get(&name) {
                if *k == key {
                    return Ok(hash.clone());
                }
            }
        }
        let mut file = fs::File::open(path).map_err(io_err("reading", path))?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(io_err("reading", path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let hash = h.finalize().to_hex().to_string();
        if let Ok(mut cache) = self.stat_cache.lock() {
            cache.entries.insert(name, (key, hash.clone()));
            cache.dirty = true;
        }
        Ok(hash)
    }

    /// Writes the stat cache back (atomically) if it changed.
    pub fn save(&self) -> Result<(), StoreError> {
        let Ok(mut cache) = self.stat_cache.lock() else {
            return Ok(());
        };
        if !cache.dirty {
            return Ok(());
        }
        let path = self.root.join(".stat-cache.json");
        let tmp = self
            .root
            .join(format!(".stat-cache.json.{}", std::process::id()));
        let bytes = serde_json::to_vec(&*cache).unwrap_or_default();
        fs::write(&tmp, bytes).map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("writing", &path))?;
        cache.dirty = false;
        Ok(())
    }
}

/// fsyncs every regular file and directory of the tree at `path` (symlinks are skipped).
fn sync_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in fs::read_dir(path)? {
            sync_tree(&e?.path())?;
        }
    } else if !meta.is_file() {
        return Ok(());
    }
    fs::File::open(path)?.sync_all()
}

/// Removes scratch directories (`<name>-<pid>-<unique>`) whose process is gone: a build
/// killed half-way leaves its copy (80–90 MB for a root) behind; the next run cleans it.
fn remove_dead_scratch(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit('-').nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = e.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Hashes a list of labelled parts into one hex digest.
pub fn combine(parts: &[(&str, &str)]) -> String {
    let mut h = blake3::Hasher::new();
    for (k, v) in parts {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_of_dead_processes_is_removed_on_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("store");
        let store = Store::open(&root).expect("store");
        let mine = store.scratch("rootfs").expect("scratch");
        let dead = {
            let mut c = std::process::Command::new("true").spawn().expect("true");
            let pid = c.id();
            c.wait().expect("wait");
            pid
        };
        let stale = root.join(".tmp").join(format!("store-disk-{dead}-123"));
        fs::create_dir_all(stale.join("sub")).expect("mkdir");
        Store::open(&root).expect("reopen");
        assert!(!stale.exists(), "a dead build's scratch is removed");
        assert!(mine.exists(), "a live one's is kept");
    }

    #[test]
    fn tree_hash_follows_content_not_time() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&tmp.path().join("store")).expect("store");
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("etc")).expect("mkdir");
        fs::write(tree.join("etc/a"), "one").expect("write");
        let h1 = store.hash_path(&tree).expect("hash");
        let f = fs::File::options()
            .write(true)
            .open(tree.join("etc/a"))
            .expect("open");
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("touch");
        assert_eq!(
            store.hash_path(&tree).expect("hash"),
            h1,
            "mtime alone changes nothing"
        );
        fs::write(tree.join("etc/a"), "two").expect("write");
        assert_ne!(
            store.hash_path(&tree).expect("hash"),
            h1,
            "content changes the hash"
        );
        store.save().expect("save");
        let again = Store::open(&tmp.path().join("store")).expect("store");
        assert_eq!(
            again.hash_path(&tree).expect("hash"),
            store.hash_path(&tree).expect("hash")
        );
    }
}
