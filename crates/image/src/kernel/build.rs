//! Building the microvm guest kernel from a Linux source: a Debian `linux-source-*`
//! package (its tarball under `/usr/src`, installed with apt when missing), a tarball, or
//! an unpacked tree the user points at.
//!
//! The configuration is the project's own ([`MICROVM_CONFIG`], merged over `make
//! tinyconfig`: every driver and filesystem microvm's guests use, built in, no modules)
//! plus the user's fragments; a tarball's tree also gets microvm's patches
//! ([`super::patches`]). The result is a store entry `<hash>-kernel` with `bzImage`,
//! `vmlinux` and `.config`, keyed by the source's identity, the configuration and the
//! compiler, so a host builds each combination once. The object tree is kept under
//! `<store>/.cache/kernel-build/` (or `$MICROVM_KERNEL_BUILD_DIR`), so a changed option
//! rebuilds in seconds rather than minutes.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::patches;
use crate::store::{combine, Store, StoreError};
use crate::tools::{self, ToolError};

/// The configuration fragment microvm's guest kernel is built with.
pub const MICROVM_CONFIG: &str = include_str!("microvm.config");

/// The Debian package built when the definition names none.
pub const DEFAULT_SOURCE_PACKAGE: &str = "linux-source-6.1";

/// How a progress line of the running compile starts (its count of files so far).
pub const COMPILE_COUNT: &str = "compiling the kernel:";

/// How often a running build reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KernelBuildError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("`{0}` is not a Debian kernel source package name (expected linux-source-X.Y)")]
    BadPackage(String),
    #[error("{package} is not installed and apt-get could not install it: {reason}")]
    Install { package: String, reason: String },
    #[error("kernel source {0} is neither a directory with a Makefile nor a .tar.xz/.tar.gz/.tar tarball")]
    BadSource(PathBuf),
    #[error("{tarball} does not unpack to a single kernel tree")]
    BadTarball { tarball: PathBuf },
    #[error("the kernel configuration dropped {}: their dependencies are not set (add them to a fragment)", options.join(", "))]
    Dropped { options: Vec<String> },
    #[error("the kernel build failed ({status}); the full log is {log}:\n{tail}")]
    Make {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
}

pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> KernelBuildError + 'a {
    move |source| KernelBuildError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the kernel source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    /// A Debian `linux-source-X.Y` package: `/usr/src/<name>.tar.xz`.
    Package(String),
    /// A tarball or an unpacked (clean) tree.
    Path(PathBuf),
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub source: SourceRef,
    /// Kconfig fragments merged after [`MICROVM_CONFIG`], in order.
    pub fragments: Vec<PathBuf>,
    /// `make -j`; `None`: the host's cores.
    pub jobs: Option<usize>,
}

/// A built (or found) kernel.
#[derive(Debug, Clone)]
pub struct BuiltKernel {
    /// The store entry: `bzImage`, `vmlinux`, `.config`, `build-info.json`.
    pub dir: PathBuf,
    /// Found in the store, not built.
    pub cached: bool,
    /// The source's identity (`linux-source-6.1 6.1.192-3`, a tarball's hash, a tree's path).
    pub source: String,
    pub duration: Duration,
}

/// A resolved source: what to unpack or build in, and what names it in the key.
#[derive(Debug)]
enum Source {
    Tarball { path: PathBuf, identity: String },
    Tree { path: PathBuf, identity: String },
}

impl Source {
    fn identity(&self) -> &str {
        match self {
            Source::Tarball { identity, .. } | Source::Tree { identity, .. } => identity,
        }
    }
}

/// The store key of a request, without building: the source's identity, the configuration
/// (the project's and the fragments' text), the compiler and, for a tarball, microvm's
/// patches.
fn key(source: &Source, fragments: &[String], compiler: &str) -> String {
    let patches = patches::identity(patches::PATCHES);
    let mut parts: Vec<(&str, &str)> = vec![
        ("source", source.identity()),
        ("config", MICROVM_CONFIG),
        ("compiler", compiler),
    ];
    if matches!(source, Source::Tarball { .. }) {
        parts.push(("patches", &patches));
    }
    parts.extend(fragments.iter().map(|f| ("fragment", f.as_str())));
    combine(&parts)
}

/// Builds the kernel `request` names into `store`, or finds it there. `progress` hears
/// each step, and the compile's progress every few seconds.
pub fn build(
    request: &BuildRequest,
    store: &Store,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltKernel, KernelBuildError> {
    let t = Instant::now();
    let source = resolve_source(&request.source, progress)?;
    let fragments = request
        .fragments
        .iter()
        .map(|f| fs::read_to_string(f).map_err(io("reading kernel fragment", f)))
        .collect::<Result<Vec<_>, _>>()?;
    let compiler = compiler_identity()?;
    let entry = store.path(&key(&source, &fragments, &compiler), "kernel");
    let done = |cached| BuiltKernel {
        dir: entry.clone(),
        cached,
        source: source.identity().to_owned(),
        duration: t.elapsed(),
    };
    if entry.join("vmlinux").is_file() {
        return Ok(done(true));
    }
    let work = work_dir(store, &source);
    fs::create_dir_all(&work).map_err(io("creating", &work))?;
    let lock_path = work.join("lock");
    let lock = fs::File::create(&lock_path).map_err(io("creating", &lock_path))?;
    if lock.try_lock().is_err() {
        progress(&format!(
            "waiting for another build of this kernel ({})",
            lock_path.display()
        ));
        lock.lock().map_err(io("locking", &lock_path))?;
    }
    if entry.join("vmlinux").is_file() {
        return Ok(done(true));
    }
    let src = prepare_tree(&source, &work, patches::PATCHES, progress)?;
    let obj = work.join("obj");
    fs::create_dir_all(&obj).map_err(io("creating", &obj))?;
    configure(&src, &obj, &request.fragments, &fragments, progress)?;
    let jobs = request
        .jobs
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    compile(&src, &obj, &work.join("build.log"), jobs, progress)?;
    publish(store, &obj, &work, &entry, &source, &compiler)?;
    Ok(done(false))
}

fn resolve_source(
    source: &SourceRef,
    progress: &mut dyn FnMut(&str),
) -> Result<Source, KernelBuildError> {
    match source {
        SourceRef::Package(name) => {
            let valid = name.strip_prefix("linux-source-").is_some_and(|v| {
                !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')
            });
            if !valid {
                return Err(KernelBuildError::BadPackage(name.clone()));
            }
            let tarball = PathBuf::from(format!("/usr/src/{name}.tar.xz"));
            if !tarball.is_file() {
                progress(&format!("installing {name} with apt-get"));
                install_package(name)?;
            }
            let meta = fs::metadata(&tarball).map_err(io("reading", &tarball))?;
            Ok(Source::Tarball {
                identity: format!("{name} {} {}", meta.len(), mtime_ns(&meta)),
                path: tarball,
            })
        }
        SourceRef::Path(path) if path.join("Makefile").is_file() => Ok(Source::Tree {
            identity: format!("tree {} {}", path.display(), newest_mtime(path)),
            path: path.clone(),
        }),
        SourceRef::Path(path) if is_tarball(path) => {
            let meta = fs::metadata(path).map_err(io("reading", path))?;
            Ok(Source::Tarball {
                identity: format!(
                    "tarball {} {} {}",
                    path.display(),
                    meta.len(),
                    mtime_ns(&meta)
                ),
                path: path.clone(),
            })
        }
        SourceRef::Path(path) => Err(KernelBuildError::BadSource(path.clone())),
    }
}

fn is_tarball(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    path.is_file()
        && [".tar.xz", ".tar.gz", ".tgz", ".tar"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// The newest modification time (seconds) of the files of a tree, so an edited source is
/// a new key; the object tree decides what to recompile.
fn newest_mtime(dir: &Path) -> u64 {
    let mut newest = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() && e.file_name() != ".git" {
                stack.push(e.path());
            } else if let Some(s) = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            {
                newest = newest.max(s.as_secs());
            }
        }
    }
    newest
}

fn install_package(name: &str) -> Result<(), KernelBuildError> {
    let mut cmd = Command::new("apt-get");
    cmd.args([
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "--no-install-recommends",
    ])
    .arg(name)
    .env("DEBIAN_FRONTEND", "noninteractive");
    tools::run(&mut cmd).map_err(|e| KernelBuildError::Install {
        package: name.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// The installed version of a Debian package, for the record.
fn package_version(name: &str) -> Option<String> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f", "${Version}", name]);
    let out = tools::run(&mut cmd).ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The compiler (`gcc` on `$PATH`, as kbuild runs it) by its resolved path, size and
/// mtime: a changed compiler is a new key, and a no-op build spawns nothing.
fn compiler_identity() -> Result<String, KernelBuildError> {
    let gcc = tools::Toolbox::from_env().locate("gcc")?;
    let real = fs::canonicalize(&gcc).map_err(io("resolving", &gcc))?;
    let meta = fs::metadata(&real).map_err(io("reading", &real))?;
    Ok(format!(
        "{} {} {}",
        real.display(),
        meta.len(),
        mtime_ns(&meta)
    ))
}

/// `gcc --version`'s first line, for the record.
fn compiler_version() -> String {
    tools::run(Command::new("gcc").arg("--version"))
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// `<store>/.cache/kernel-build/<name>`, or under `$MICROVM_KERNEL_BUILD_DIR`.
fn work_dir(store: &Store, source: &Source) -> PathBuf {
    let base = std::env::var_os("MICROVM_KERNEL_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| store.root().join(".cache/kernel-build"));
    let name = match source {
        Source::Tarball { path, .. } => {
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("source");
            let stem = [".tar.xz", ".tar.gz", ".tgz", ".tar"]
                .iter()
                .find_map(|s| file.strip_suffix(s))
                .unwrap_or(file);
            stem.to_owned()
        }
        Source::Tree { path, .. } => {
            let h = blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex();
            format!("tree-{}", &h[..16])
        }
    };
    base.join(name)
}

/// The stamp of an unpacked tree in the work directory: the tarball's identity and the
/// patch set's on the first line, then the name of each patch that applied.
const STAMP: &str = "source";

/// The names of the patches applied to the unpacked tree of `work` (from its stamp).
fn applied_patches(work: &Path) -> Vec<String> {
    fs::read_to_string(work.join(STAMP))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

/// The source tree to build in: a tree as given, or a tarball unpacked once into
/// `<work>/src` with `patch_set` applied (again when the tarball or the patches changed:
/// both are stamped there).
fn prepare_tree(
    source: &Source,
    work: &Path,
    patch_set: &[patches::Patch],
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, KernelBuildError> {
    let (tarball, identity) = match source {
        Source::Tree { path, .. } => {
            progress("building the source tree as it is (microvm's patches are for tarballs)");
            return Ok(path.clone());
        }
        Source::Tarball { path, identity } => (path, identity),
    };
    let src = work.join("src");
    let stamp = work.join(STAMP);
    let stamped = format!("{identity} patches {}", patches::identity(patch_set));
    let prepared =
        fs::read_to_string(&stamp).is_ok_and(|s| s.lines().next() == Some(stamped.as_str()));
    if src.is_dir() && prepared {
        return Ok(src);
    }
    progress(&format!("unpacking {}", tarball.display()));
    for stale in [&src, &work.join("obj"), &work.join("unpack")] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(io("removing", stale))?;
        }
    }
    let unpack = work.join("unpack");
    fs::create_dir_all(&unpack).map_err(io("creating", &unpack))?;
    tools::run(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(&unpack),
    )?;
    let top: Vec<PathBuf> = fs::read_dir(&unpack)
        .map_err(io("reading", &unpack))?
        .flatten()
        .map(|e| e.path())
        .collect();
    match top.as_slice() {
        [only] if only.join("Makefile").is_file() => {
            fs::rename(only, &src).map_err(io("renaming", only))?;
        }
        _ => {
            return Err(KernelBuildError::BadTarball {
                tarball: tarball.clone(),
            })
        }
    }
    let _ = fs::remove_dir(&unpack);
    let applied = patches::apply(&src, patch_set, &work.join("patches"), progress)?;
    let record: String = std::iter::once(stamped.as_str())
        .chain(applied)
        .map(|line| format!("{line}\n"))
        .collect();
    fs::write(&stamp, record).map_err(io("writing", &stamp))?;
    Ok(src)
}

fn make(src: &Path, obj: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(src).arg(format!("O={}", obj.display()));
    cmd
}

/// `make tinyconfig`, the project's fragment and the user's merged over it, `make
/// olddefconfig`; then checks that every option a fragment sets survived (kconfig drops
/// an option whose dependencies are off without a word).
fn configure(
    src: &Path,
    obj: &Path,
    fragment_paths: &[PathBuf],
    fragment_texts: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<(), KernelBuildError> {
    progress("configuring the kernel (tinyconfig + microvm.config)");
    tools::run(make(src, obj).arg("tinyconfig"))?;
    let ours = obj.join("microvm.config");
    fs::write(&ours, MICROVM_CONFIG).map_err(io("writing", &ours))?;
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(src)
        .args(["-m", "-O"])
        .arg(obj)
        .arg(obj.join(".config"))
        .arg(&ours);
    merge.args(fragment_paths);
    tools::run(&mut merge)?;
    tools::run(make(src, obj).arg("olddefconfig"))?;
    let config_path = obj.join(".config");
    let text = fs::read_to_string(&config_path).map_err(io("reading", &config_path))?;
    let dropped = dropped_options(
        &text,
        std::iter::once(MICROVM_CONFIG).chain(fragment_texts.iter().map(String::as_str)),
    );
    if dropped.is_empty() {
        Ok(())
    } else {
        Err(KernelBuildError::Dropped { options: dropped })
    }
}

/// The options the fragments (later ones win) ask for that the final `.config` lacks.
pub fn dropped_options<'a>(config: &str, fragments: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for line in fragments.flat_map(str::lines) {
        let line = line.trim();
        let Some((name, value)) = line.strip_prefix("CONFIG_").and_then(|l| l.split_once('='))
        else {
            continue;
        };
        wanted.retain(|(n, _)| n != name);
        wanted.push((name.to_owned(), value.to_owned()));
    }
    let final_config = super::KernelConfig::parse(config);
    wanted
        .into_iter()
        .filter(|(name, value)| match value.as_str() {
            "n" => final_config.has(name),
            "y" => !final_config.is_builtin(name),
            "m" => !final_config.has(name),
            v => final_config.value(name) != Some(v.trim_matches('"')),
        })
        .map(|(name, value)| format!("CONFIG_{name}={value}"))
        .collect()
}

/// `make -jN vmlinux bzImage`, the output in `log`, progress every few seconds.
fn compile(
    src: &Path,
    obj: &Path,
    log_path: &Path,
    jobs: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<(), KernelBuildError> {
    progress(&format!(
        "compiling the kernel with {jobs} jobs (log: {})",
        log_path.display()
    ));
    let mut log = fs::File::create(log_path).map_err(io("creating", log_path))?;
    let err_log = log.try_clone().map_err(io("opening", log_path))?;
    let mut cmd = make(src, obj);
    cmd.arg(format!("-j{jobs}"))
        .args(["vmlinux", "bzImage"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err_log);
    let argv = tools::display_argv(&cmd);
    let mut child = cmd
        .spawn()
        .map_err(|source| ToolError::Spawn { argv, source })?;
    let (mut compiled, mut last_report) = (0usize, Instant::now());
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if line.trim_start().starts_with("CC ") {
                compiled += 1;
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                progress(&format!(
                    "{COMPILE_COUNT} {compiled} files so far, now {}",
                    line.trim()
                ));
            }
        }
    }
    let status = child.wait().map_err(io("waiting for make in", obj))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Err(KernelBuildError::Make {
        status,
        log: log_path.to_path_buf(),
        tail: lines[lines.len().saturating_sub(20)..].join("\n"),
    })
}

/// Copies the images and the configuration into a scratch directory and publishes it.
fn publish(
    store: &Store,
    obj: &Path,
    work: &Path,
    entry: &Path,
    source: &Source,
    compiler: &str,
) -> Result<(), KernelBuildError> {
    let scratch = store.scratch("kernel")?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", ".config"),
    ] {
        let (from, to) = (obj.join(from), scratch.join(to));
        fs::copy(&from, &to).map_err(io("copying", &from))?;
    }
    let version = match source {
        Source::Tarball { path, .. } => path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.xz"))
            .and_then(package_version),
        Source::Tree { .. } => None,
    };
    let info = serde_json::json!({
        "source": source.identity(),
        "package_version": version,
        "compiler": compiler,
        "compiler_version": compiler_version(),
        "config": "microvm.config",
        "patches": match source {
            Source::Tarball { .. } => applied_patches(work),
            Source::Tree { .. } => Vec::new(),
        },
    });
    let info_path = scratch.join("build-info.json");
    fs::write(&info_path, info.to_string()).map_err(io("writing", &info_path))?;
    store.publish(&scratch, entry)?;
    Ok(())
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
