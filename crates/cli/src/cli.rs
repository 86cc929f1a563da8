//! The command line, as clap definitions: help, the man page and the shell completions
//! are all generated from here.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Declarative MicroVMs: validate a definition, see exactly how each hypervisor would run
/// it, build its guest and boot it.
#[derive(Debug, Parser)]
#[command(
    name = "microvm",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a definition: report every error and warning, and whether the hypervisor
    /// (or every hypervisor, with --all) can run it.
    Check(CheckArgs),
    /// Show exactly how the VM would be started: the command line, helper daemons,
    /// generated files, control socket and shutdown method.
    Plan(PlanArgs),
    /// Build the guest (kernel, initrd, root disk) into a runner directory in the store.
    Build(BuildArgs),
    /// Build if needed, then boot the VM in the foreground with its console on the
    /// terminal; exits with the guest's status when it powers off.
    Run(RunArgs),
    /// Generate the man page or shell completions.
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct DefinitionArgs {
    /// The definition file (TOML, or JSON with the same schema).
    pub file: PathBuf,
    /// The VM's name when the definition sets no `hostName` (default: the file name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub def: DefinitionArgs,
    /// Check against this hypervisor instead of the definition's `hypervisor`.
    #[arg(long, value_name = "HYPERVISOR", conflicts_with = "all")]
    pub hypervisor: Option<String>,
    /// Check against all seven hypervisors.
    #[arg(long)]
    pub all: bool,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub def: DefinitionArgs,
    /// Plan for this hypervisor instead of the definition's `hypervisor`.
    #[arg(long, value_name = "HYPERVISOR")]
    pub hypervisor: Option<String>,
    /// Print the invocation as JSON.
    #[arg(long)]
    pub json: bool,
    /// Plan with the facts of a reference host (4 CPUs, root, working KVM) instead of
    /// probing this one, so the output is the same everywhere.
    #[arg(long)]
    pub reference_host: bool,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub def: DefinitionArgs,
    /// The store directory for built runners (default: $MICROVM_STORE, else
    /// /var/lib/microvms/.store as root or ~/.cache/microvm/store otherwise).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub def: DefinitionArgs,
    /// The store directory for built runners (see `build`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Working directory of the VM: relative volume images and sockets resolve here
    /// (default: the current directory, as with microvm.nix's `nix run`).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Seconds to wait for a graceful shutdown on SIGINT/SIGTERM before killing.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_timeout: u64,
    /// Write the serial console to this file instead of the terminal.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Write the man pages (microvm.1 and one per subcommand) into a directory.
    Man {
        /// Output directory.
        dir: PathBuf,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}
