//! Helpers shared by the spec crate's integration tests: write definition files into a
//! temporary directory, load them, and flatten diagnostics into (message, file, line).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use microvm_spec::diag::{Diagnostic, Severity};
use microvm_spec::source::SourceMap;
use microvm_spec::{load_file, LoadFailure, Loaded};

/// A temporary directory holding definition files.
#[derive(Debug)]
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Self {
        Dir(tempfile::tempdir().expect("create a temporary directory"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `text` to `name` (sub-directories are created) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        self.write_bytes(name, text.as_bytes())
    }

    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent directory");
        }
        std::fs::write(&path, bytes).expect("write a definition file");
        path
    }
}

/// One diagnostic, located.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub severity: Severity,
    pub message: String,
    /// The key path the diagnostic names (`volumes[1].image`).
    pub key: Option<String>,
    /// The file and 1-based line of the primary span.
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// The related spans: (file, line, label).
    pub related: Vec<(PathBuf, usize, String)>,
}

pub fn flatten(diags: &[Diagnostic], sources: &SourceMap) -> Vec<Found> {
    diags
        .iter()
        .map(|d| Found {
            severity: d.severity,
            message: d.message.clone(),
            key: d.path.as_ref().map(ToString::to_string),
            file: d.span.as_ref().map(|s| sources.file(s.file).path.clone()),
            line: d.span.as_ref().map(|s| sources.line_col(s).0),
            related: d
                .related
                .iter()
                .map(|(s, label)| {
                    (
                        sources.file(s.file).path.clone(),
                        sources.line_col(s).0,
                        label.clone(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// Loads `path`, which must fail; returns the failure and its flattened diagnostics.
pub fn fails(path: &Path) -> (LoadFailure, Vec<Found>) {
    match load_file(path) {
        Ok(loaded) => panic!(
            "{} loaded, expected errors; warnings:\n{}",
            path.display(),
            loaded.sources.render(&loaded.warnings)
        ),
        Err(failure) => {
            let found = flatten(&failure.diagnostics, &failure.sources);
            (failure, found)
        }
    }
}

/// Loads `path`, which must succeed; returns it and its flattened warnings.
pub fn loads(path: &Path) -> (Loaded, Vec<Found>) {
    match load_file(path) {
        Ok(loaded) => {
            let found = flatten(&loaded.warnings, &loaded.sources);
            (loaded, found)
        }
        Err(failure) => panic!("{} does not load:\n{}", path.display(), failure.render()),
    }
}

/// Asserts that `found` holds a diagnostic of `severity` with exactly `message`, in
/// `file` at `line`, and returns it.
pub fn expect<'f>(
    found: &'f [Found],
    severity: Severity,
    message: &str,
    file: &Path,
    line: usize,
) -> &'f Found {
    let Some(d) = found
        .iter()
        .find(|d| d.severity == severity && d.message == message)
    else {
        panic!("no {severity:?} {message:?} among:\n{found:#?}");
    };
    assert_eq!(d.file.as_deref(), Some(file), "file of {message:?}");
    assert_eq!(d.line, Some(line), "line of {message:?}");
    d
}

/// A definition named `vm1.toml` holding `text` must fail with exactly one error,
/// `message`, at `line` of that file. Returns the error for further checks.
pub fn one_error(text: &str, message: &str, line: usize) -> Found {
    one_error_in("vm1.toml", text, message, line)
}

pub fn one_error_in(name: &str, text: &str, message: &str, line: usize) -> Found {
    let dir = Dir::new();
    let path = dir.write(name, text);
    let (_, found) = fails(&path);
    let errors: Vec<&Found> = found
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(errors.len(), 1, "expected one error, found:\n{found:#?}");
    expect(&found, Severity::Error, message, &path, line).clone()
}

/// A definition named `vm1.toml` holding `text` must load with the warning `message`
/// at `line`.
pub fn one_warning(text: &str, message: &str, line: usize) -> Found {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", text);
    let (_, found) = loads(&path);
    expect(&found, Severity::Warning, message, &path, line).clone()
}
