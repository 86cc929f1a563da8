//! `microvm kernel build`: builds microvm's guest kernel from a Linux source into the
//! store (or finds it there) and prints its directory (`bzImage`, `vmlinux`, `.config`),
//! which `kernel = "DIR"` boots. A definition's `kernel = { build = "microvm" }` does the
//! same as part of `microvm build`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use microvm_image::kernel::build::{self, BuildRequest, SourceRef, DEFAULT_SOURCE_PACKAGE};

use crate::exit::OK;

#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Build microvm's guest kernel (tinyconfig plus every driver and filesystem the
    /// guests need, built in) and print its directory in the store.
    Build(KernelBuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct KernelBuildArgs {
    /// A Debian linux-source-X.Y package (installed with apt-get when missing), or the
    /// path of a kernel tarball or a clean source tree.
    #[arg(long, value_name = "PACKAGE|PATH", default_value = DEFAULT_SOURCE_PACKAGE)]
    pub source: String,
    /// A Kconfig fragment merged after microvm's configuration (repeatable).
    #[arg(long = "fragment", value_name = "FILE")]
    pub fragments: Vec<PathBuf>,
    /// Parallel compile jobs (default: the host's cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// The store directory (see `build`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the configuration microvm builds the kernel with, and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(cmd: &KernelCommand, state_dir: &std::path::Path) -> anyhow::Result<i32> {
    let KernelCommand::Build(args) = cmd;
    if args.print_config {
        print!("{}", build::MICROVM_CONFIG);
        return Ok(OK);
    }
    let store = super::build::open_store(args.store.as_deref(), state_dir)?;
    let source = if args.source.contains('/') {
        SourceRef::Path(std::path::absolute(&args.source)?)
    } else {
        SourceRef::Package(args.source.clone())
    };
    let request = BuildRequest {
        source,
        fragments: args
            .fragments
            .iter()
            .map(std::path::absolute)
            .collect::<Result<_, _>>()?,
        jobs: args.jobs.map(usize::from),
    };
    // Every step is said; the compile's running count every few seconds on a terminal,
    // once a minute into a log (a first build takes minutes: a log must show it lives).
    let every = if std::io::stderr().is_terminal() {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs(60)
    };
    let mut last_count: Option<std::time::Instant> = None;
    let mut progress = |step: &str| {
        if step.starts_with(build::COMPILE_COUNT) {
            if last_count.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            last_count = Some(std::time::Instant::now());
        }
        eprintln!("microvm: kernel: {step}");
    };
    let built = build::build(&request, &store, &mut progress)
        .with_context(|| format!("building the microvm kernel from {}", args.source))?;
    if args.json {
        let out = serde_json::json!({
            "dir": built.dir,
            "bzImage": built.dir.join("bzImage"),
            "vmlinux": built.dir.join("vmlinux"),
            "config": built.dir.join(".config"),
            "cached": built.cached,
            "source": built.source,
            "seconds": built.duration.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", built.dir.display());
    }
    Ok(OK)
}
