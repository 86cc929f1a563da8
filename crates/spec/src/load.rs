//! Loading a definition: read the file (TOML, or JSON with the same schema), merge its
//! `imports`, deserialise the schema, resolve defaults and run every check.
//!
//! Merge rules for `imports` (documented in docs/schema.md):
//! - imported files are merged first, in the order listed, then the importing file;
//! - tables merge key by key, recursively;
//! - lists concatenate in that order (`volumes`, `shares`, `kernelParams`, `extraArgs`, …);
//! - a scalar (string, number, boolean, null) defined in two places must be equal;
//!   otherwise it is a conflict reported with both locations;
//! - an import path is relative to the file that names it; a cycle is an error.

use std::path::{Path, PathBuf};

use crate::config::{Arch, Config};
use crate::de;
use crate::diag::Diagnostic;
use crate::node::{self, Entry, KeyPath, Node, Value};
use crate::resolve;
use crate::schema::Spec;
use crate::source::{display_path, SourceMap, Span};
use crate::types::VmName;

/// Options of a load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The VM's name when the definition sets no `hostName` (default: the file stem).
    pub name: Option<VmName>,
    /// Guest architecture (default: the host's).
    pub arch: Option<Arch>,
}

/// A successfully loaded definition.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    pub sources: SourceMap,
    /// The merged value tree (for locating keys in later diagnostics).
    pub tree: Node,
    /// The host files and directories the definition names.
    pub inputs: Vec<resolve::Input>,
}

impl Loaded {
    /// An error for every input (kernel, initrd, root directory, …) that is not there or
    /// is not of its kind, located at the key that names it. `check`, `build` and `run`
    /// report them; `plan` does not need them.
    pub fn missing_inputs(&self) -> Vec<Diagnostic> {
        let mut missing: Vec<Diagnostic> = self
            .inputs
            .iter()
            .filter_map(|input| {
                let problem = input_problem(&input.path, input.kind)?;
                let span = self.tree.span_of(&input.key).clone();
                Some(Diagnostic::error(problem).at(input.key.clone(), span))
            })
            .collect();
        // In the order of the definition's text.
        missing.sort_by_key(|d| d.span.as_ref().map(|s| (s.file.0, s.range.start)));
        missing
    }
}

/// What is wrong with an input, if anything: not there, of the other kind, or not
/// readable by this user.
fn input_problem(path: &Path, kind: resolve::InputKind) -> Option<String> {
    use resolve::InputKind;
    let shown = display_path(path);
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("{shown} does not exist"))
        }
        Err(e) => return Some(format!("cannot read {shown}: {e}")),
        Ok(m) => m,
    };
    match kind {
        InputKind::File if meta.is_dir() => {
            return Some(format!("{shown} is a directory, not a file"))
        }
        InputKind::Directory if !meta.is_dir() => {
            return Some(format!("{shown} is not a directory"))
        }
        _ => {}
    }
    let readable = if meta.is_dir() {
        std::fs::read_dir(path).map(drop)
    } else {
        std::fs::File::open(path).map(drop)
    };
    readable.err().map(|e| format!("cannot read {shown}: {e}"))
}

/// A definition that did not load; `diagnostics` holds every error and warning found.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub diagnostics: Vec<Diagnostic>,
    pub sources: SourceMap,
}

impl LoadFailure {
    pub fn render(&self) -> String {
        self.sources.render(&self.diagnostics)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors().count();
        write!(
            f,
            "the definition has {n} error{}",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for LoadFailure {}

pub fn load_file(path: &Path) -> Result<Loaded, LoadFailure> {
    load_with(path, &LoadOptions::default())
}

pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Loaded, LoadFailure> {
    let mut sources = SourceMap::default();
    let mut diagnostics = Vec::new();
    let mut stack = Vec::new();
    let tree = read_tree(path, None, &mut stack, &mut sources, &mut diagnostics);
    let fail = |diagnostics, sources| {
        Err(LoadFailure {
            diagnostics,
            sources,
        })
    };
    // Every stage runs on what is left once the values in error are taken out (a merge
    // conflict, then a value of the wrong type); only what a later stage says about a
    // taken-out key, or inside one, is dropped, as it cannot be computed. A file that
    // cannot be read or parsed stops the load.
    let Some(mut tree) = tree else {
        return fail(diagnostics, sources);
    };
    let Some(mut removed) = take_out_conflicts(&mut tree, &diagnostics) else {
        return fail(diagnostics, sources);
    };
    let (spec, unknown) = de::from_node::<Spec>(&tree);
    for u in unknown {
        diagnostics.push(Diagnostic::error(u.message).at(u.path, u.span));
    }
    let (spec, tree) = match spec {
        Ok(spec) => (spec, tree),
        Err(e) => match type_errors(&tree, e, &mut diagnostics) {
            Some((spec, pruned, more)) => {
                removed.extend(more);
                (spec, pruned)
            }
            None => return fail(diagnostics, sources),
        },
    };
    let ctx = resolve::Context {
        tree: &tree,
        sources: &sources,
        file: path,
        name: options.name.clone(),
        arch: options.arch.unwrap_or_else(Arch::host),
    };
    let (config, found, inputs) = resolve::resolve(&spec, &ctx);
    diagnostics.extend(found.into_iter().filter(|d| {
        d.path
            .as_ref()
            .is_none_or(|p| !removed.iter().any(|r| p.0.starts_with(&r.0)))
    }));
    match config {
        Some(config) if !diagnostics.iter().any(Diagnostic::is_error) => Ok(Loaded {
            config,
            warnings: diagnostics,
            sources,
            tree,
            inputs,
        }),
        _ => fail(diagnostics, sources),
    }
}

/// Takes the keys of the merge conflicts out of the tree; `None` when an error of
/// reading the files has no key in the tree (an import that cannot be read or parsed).
fn take_out_conflicts(tree: &mut Node, diags: &[Diagnostic]) -> Option<Vec<KeyPath>> {
    let mut removed: Vec<KeyPath> = Vec::new();
    for d in diags.iter().filter(|d| d.is_error()) {
        let path = d.path.as_ref()?;
        if removed.iter().any(|r| path.0.starts_with(&r.0)) {
            continue; // a third definition of a key already taken out
        }
        removed.push(remove(tree, path)?);
    }
    Some(removed)
}

/// Every type error of the tree, not only the first, pushed onto `diags` with the unknown
/// keys that the first pass never reached: serde stops at the first error, so the
/// offending value is taken out of a copy of the tree (every key of the schema is
/// optional) and deserialisation is tried again, until it succeeds or an error cannot be
/// taken out. Returns the spec of the pruned tree, that tree and the paths taken out,
/// when the pruning ended in a spec.
fn type_errors(
    tree: &Node,
    first: de::DeError,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Spec, Node, Vec<KeyPath>)> {
    const MAX: usize = 100;
    let mut seen: Vec<KeyPath> = diags.iter().filter_map(|d| d.path.clone()).collect();
    let mut tree = tree.clone();
    let mut removed = Vec::new();
    let mut error = first;
    for _ in 0..MAX {
        let mut d = Diagnostic::error(error.message.clone());
        if let (Some(path), Some(span)) = (error.path.clone(), error.span.clone()) {
            d = d.at(path, span);
        }
        diags.push(d);
        let path = error.path.clone()?;
        let taken = remove(&mut tree, &path)?;
        removed.push(taken);
        let (spec, unknown) = de::from_node::<Spec>(&tree);
        for u in unknown {
            if !seen.contains(&u.path) {
                seen.push(u.path.clone());
                diags.push(Diagnostic::error(u.message).at(u.path, u.span));
            }
        }
        match spec {
            Ok(spec) => return Some((spec, tree, removed)),
            Err(e) => error = e,
        }
    }
    None
}

/// Removes the entry at `path` from the tree: the table key it ends in, or, for a list
/// element, the whole list (removing one element would shift the indices of the others).
/// Returns the path taken out.
fn remove(tree: &mut Node, path: &KeyPath) -> Option<KeyPath> {
    use crate::node::Seg;
    let last_key = path.0.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
    let mut node = tree;
    for seg in &path.0[..last_key] {
        let next = match (seg, &mut node.value) {
            (Seg::Key(k), Value::Table(entries)) => entries
                .iter_mut()
                .find(|e| &e.key == k)
                .map(|e| &mut e.value),
            (Seg::Index(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        };
        node = next?;
    }
    let (Seg::Key(key), Value::Table(entries)) = (&path.0[last_key], &mut node.value) else {
        return None;
    };
    let before = entries.len();
    entries.retain(|e| &e.key != key);
    (entries.len() < before).then(|| KeyPath(path.0[..=last_key].to_vec()))
}

/// The largest definition file read (a definition is a few kilobytes; this bounds the
/// memory and time an accidental or hostile input costs).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads at most [`MAX_FILE_BYTES`] of `path`; a longer file is an error.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB, the most a definition may be",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// Reads `path` and its imports into one merged tree.
fn read_tree(
    path: &Path,
    imported_at: Option<(&KeyPath, &Span)>,
    stack: &mut Vec<PathBuf>,
    sources: &mut SourceMap,
    diags: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let located = |d: Diagnostic| match imported_at {
        Some((p, s)) => d.at(p.clone(), s.clone()),
        None => d,
    };
    let canonical = match path.canonicalize() {
        Ok(c) => c,
        Err(e) => {
            diags.push(located(Diagnostic::error(format!(
                "cannot read {}: {e}",
                display_path(path)
            ))));
            return None;
        }
    };
    if let Some(pos) = stack.iter().position(|p| p == &canonical) {
        let chain: Vec<String> = stack[pos..]
            .iter()
            .chain([&canonical])
            .map(|p| display_path(p))
            .collect();
        diags.push(located(Diagnostic::error(format!(
            "import cycle: {}",
            chain.join(" -> ")
        ))));
        return None;
    }
    let bytes = match read_bounded(path) {
        Ok(b) => b,
        Err(e) => {
            diags.push(located(Diagnostic::error(format!(
                "cannot read {}: {e}",
                display_path(path)
            ))));
            return None;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            diags.push(located(Diagnostic::error(format!(
                "{} is not valid UTF-8 (byte {})",
                display_path(path),
                e.utf8_error().valid_up_to()
            ))));
            return None;
        }
    };
    let file = sources.add(path.to_path_buf(), text);
    let text = &sources.file(file).text;
    let is_json = path.extension().is_some_and(|e| e == "json")
        || (path.extension().is_none_or(|e| e != "toml") && text.trim_start().starts_with('{'));
    let parsed = if is_json {
        node::from_json(file, text)
    } else {
        node::from_toml(file, text)
    };
    let mut tree = match parsed {
        Ok(t) => t,
        Err(e) => {
            let what = if is_json { "JSON" } else { "TOML" };
            diags.push(
                Diagnostic::error(format!("invalid {what}: {}", e.message))
                    .at(KeyPath::root(), e.span),
            );
            return None;
        }
    };
    if !matches!(tree.value, Value::Table(_)) {
        diags.push(
            Diagnostic::error(format!(
                "a definition must be a table, found {}",
                tree.value.kind()
            ))
            .at(KeyPath::root(), tree.span.clone()),
        );
        return None;
    }
    let imports = take_imports(&mut tree, diags);
    stack.push(canonical);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut merged: Option<Node> = None;
    for (i, (import, span)) in imports.iter().enumerate() {
        let key = KeyPath::root().key("imports").index(i);
        if let Some(child) = read_tree(&dir.join(import), Some((&key, span)), stack, sources, diags)
        {
            merged = Some(match merged {
                Some(base) => merge(base, child, &KeyPath::root(), diags),
                None => child,
            });
        }
    }
    stack.pop();
    Some(match merged {
        Some(base) => merge(base, tree, &KeyPath::root(), diags),
        None => tree,
    })
}

fn take_imports(tree: &mut Node, diags: &mut Vec<Diagnostic>) -> Vec<(String, Span)> {
    let Value::Table(entries) = &mut tree.value else {
        return Vec::new();
    };
    let Some(pos) = entries.iter().position(|e| e.key == "imports") else {
        return Vec::new();
    };
    let entry = entries.remove(pos);
    let path = KeyPath::root().key("imports");
    match entry.value.value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| match item.value {
                Value::Str(s) => Some((s, item.span)),
                other => {
                    diags.push(
                        Diagnostic::error(format!("expected a file path, found {}", other.kind()))
                            .at(path.index(i), item.span),
                    );
                    None
                }
            })
            .collect(),
        other => {
            diags.push(
                Diagnostic::error(format!(
                    "expected a list of file paths, found {}",
                    other.kind()
                ))
                .at(path, entry.value.span),
            );
            Vec::new()
        }
    }
}

/// Merges `over` into `base` under the rules in the module documentation.
pub fn merge(mut base: Node, over: Node, path: &KeyPath, diags: &mut Vec<Diagnostic>) -> Node {
    match (&mut base.value, over.value) {
        (Value::Table(base_entries), Value::Table(over_entries)) => {
            for entry in over_entries {
                match base_entries.iter().position(|e| e.key == entry.key) {
                    Some(i) => {
                        let existing = base_entries.remove(i);
                        let value =
                            merge(existing.value, entry.value, &path.key(&entry.key), diags);
                        base_entries.insert(i, Entry { value, ..existing });
                    }
                    None => base_entries.push(entry),
                }
            }
            base
        }
        (Value::Array(base_items), Value::Array(over_items)) => {
            base_items.extend(over_items);
            base
        }
        (_, over_value) => {
            if !same(&base.value, &over_value) {
                diags.push(
                    Diagnostic::error(format!("conflicting definitions of `{path}`"))
                        .at(path.clone(), over.span)
                        .related(base.span.clone(), "first defined here")
                        .note("lists concatenate and tables merge, but a single value may be defined only once (or identically)"),
                );
            }
            base
        }
    }
}

/// Structural equality ignoring spans.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(&p.value, &q.value))
        }
        (Value::Table(x), Value::Table(y)) => {
            x.len() == y.len()
                && x.iter().all(|e| {
                    y.iter()
                        .any(|f| f.key == e.key && same(&e.value.value, &f.value.value))
                })
        }
        _ => a == b,
    }
}
