//! Reading depmod's text index files: `modules.dep`, `modules.builtin`,
//! `modules.softdep` and the plain (non-wildcard) entries of `modules.alias`.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::{canonical_name, ModuleCompression, ModulesError};

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub path: PathBuf,
    pub compression: ModuleCompression,
    /// Canonical names of the hard dependencies.
    pub deps: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    pub modules: HashMap<String, Entry>,
    pub builtin: HashSet<String>,
    /// `softdep <module> pre: …` names, as written (module names or aliases).
    pub softdep_pre: HashMap<String, Vec<String>>,
    /// Plain alias → module names, in file order.
    pub aliases: HashMap<String, Vec<String>>,
    /// Aliases of built-in modules (`modules.builtin.modinfo`), e.g. `crc32c`.
    pub builtin_aliases: HashSet<String>,
}

/// `kernel/fs/erofs/erofs.ko.xz` → (`erofs`, Xz).
fn module_of(path: &str) -> Option<(String, ModuleCompression)> {
    let file = path.rsplit('/').next()?;
    let compression = ModuleCompression::of(file)?;
    let stem = &file[..file.find(".ko")?];
    Some((canonical_name(stem), compression))
}

fn read_optional(path: &Path) -> Result<String, ModulesError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ModulesError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Index {
    /// Reads the index files in `index_dir`; relative module paths are taken relative to
    /// `modules_dir` (the two differ when depmod ran in a cache directory).
    pub fn read(index_dir: &Path, modules_dir: &Path) -> Result<Self, ModulesError> {
        let mut index = Index::default();
        let dep_path = index_dir.join("modules.dep");
        let dep_text = fs::read_to_string(&dep_path).map_err(|source| ModulesError::Io {
            path: dep_path.clone(),
            source,
        })?;
        for (i, line) in dep_text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: &str| ModulesError::BadIndex {
                path: dep_path.clone(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let (file, deps) = line.split_once(':').ok_or_else(|| bad("no ':'"))?;
            let (name, compression) =
                module_of(file).ok_or_else(|| bad("not a module file name"))?;
            let deps = deps
                .split_whitespace()
                .map(|d| module_of(d).map(|(n, _)| n))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("a dependency is not a module file name"))?;
            let path = if file.starts_with('/') {
                PathBuf::from(file)
            } else {
                modules_dir.join(file)
            };
            index.modules.insert(
                name,
                Entry {
                    path,
                    compression,
                    deps,
                },
            );
        }
        for line in read_optional(&index_dir.join("modules.builtin"))?.lines() {
            if let Some((name, _)) = module_of(line.trim()) {
                index.builtin.insert(name);
            }
        }
        // NUL-separated `module.key=value` strings.
        let modinfo = index_dir.join("modules.builtin.modinfo");
        let modinfo = match fs::read(&modinfo) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ModulesError::Io {
                    path: modinfo,
                    source,
                })
            }
        };
        for item in modinfo.split(|&b| b == 0) {
            let item = String::from_utf8_lossy(item);
            if let Some((_, alias)) = item.split_once(".alias=") {
                index.builtin_aliases.insert(alias.to_string());
            }
        }
        for line in read_optional(&index_dir.join("modules.softdep"))?.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    w if in_pre => pre.push(w.to_string()),
                    _ => {}
                }
            }
            if !pre.is_empty() {
                index
                    .softdep_pre
                    .entry(canonical_name(module))
                    .or_default()
                    .extend(pre);
            }
        }
        for line in read_optional(&index_dir.join("modules.alias"))?.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if !alias.contains(['*', '?', '[']) {
                    index
                        .aliases
                        .entry(alias.to_string())
                        .or_default()
                        .push(canonical_name(module));
                }
            }
        }
        Ok(index)
    }

    /// The soft `pre:` dependencies of a module, as module names. An alias (such as
    /// `crc32c`) becomes the module providing it; where several do, the portable
    /// `*_generic` one is taken, since a CPU-specific one (`crc32c_intel`) fails to load
    /// on a CPU without the instructions (TCG's default CPU, for one).
    pub fn soft_pre(&self, module: &str) -> Vec<String> {
        let Some(pre) = self.softdep_pre.get(module) else {
            return Vec::new();
        };
        pre.iter()
            .filter_map(|p| {
                let name = canonical_name(p);
                if self.modules.contains_key(&name) || self.builtin.contains(&name) {
                    return Some(name);
                }
                // A built-in provider (crc32c_generic in Debian's cloud kernel) serves it.
                if self.builtin_aliases.contains(p.as_str()) {
                    return None;
                }
                let providers = self.aliases.get(p)?;
                if providers.iter().any(|m| self.builtin.contains(m)) {
                    return None;
                }
                providers
                    .iter()
                    .find(|m| m.ends_with("_generic"))
                    .or_else(|| providers.first())
                    .cloned()
            })
            .collect()
    }
}
