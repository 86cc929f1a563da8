//! The command line, as clap definitions: help, the man page and the shell completions
//! are all generated from here.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod network;
pub use network::*;

/// Declarative MicroVMs: validate a definition, see exactly how each hypervisor would run
/// it, build its guest and boot it.
#[derive(Debug, Parser)]
#[command(
    name = "microvm",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = crate::exit::EXIT_CODES_HELP
)]
pub struct Cli {
    /// The state directory of managed VMs.
    #[arg(
        long,
        global = true,
        env = "MICROVM_STATE_DIR",
        default_value = "/var/lib/microvms",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
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
    /// terminal; exits with the guest's status when it powers off. `run NAME` runs the
    /// managed VM NAME in the foreground, under its supervisor.
    #[command(
        override_usage = "microvm run [OPTIONS] <FILE>\n       microvm run [OPTIONS] <NAME>",
        after_long_help = crate::exit::EXIT_CODES_HELP
    )]
    Run(RunArgs),
    /// Create a managed VM in the state directory from a definition, or adopt a runner
    /// directory built elsewhere (including one built by microvm.nix).
    Create(CreateArgs),
    /// Rebuild managed VMs from their recorded definitions; say whether a restart is needed.
    Update(UpdateArgs),
    /// List managed VMs and their states (current, outdated, stale, not booted, running, failed).
    List(ListArgs),
    /// Start managed VMs (through systemd when it runs, else microvm's own supervisor).
    Start(StartArgs),
    /// Stop managed VMs: graceful shutdown, then force after the timeout.
    Stop(NamesArgs),
    /// Save a running qemu VM into a file (the VM stops); `start --from-snapshot` resumes it.
    Snapshot(crate::cmd::SnapshotArgs),
    /// Live-migrate a running qemu VM to a host that waits for it (`start --incoming`).
    Migrate(crate::cmd::MigrateArgs),
    /// Stop, then start managed VMs.
    Restart(NamesArgs),
    /// Ask the guests of managed VMs to power off, and wait until they have.
    Shutdown(NamesArgs),
    /// Show the state of a managed VM.
    Status(NameArgs),
    /// Show the log of a managed VM (console and supervisor).
    Logs(LogsArgs),
    /// Attach to the serial console of a running managed VM (detach with Ctrl-] without stopping it).
    Console(NameArgs),
    /// Set the balloon of a running managed VM to SIZE MiB (memory taken from the guest);
    /// prints the balloon size the hypervisor reports.
    Balloon(BalloonArgs),
    /// Remove a managed VM (stopping it first); its volumes are kept with --keep-volumes.
    Remove(RemoveArgs),
    /// Remove store entries that no managed VM references (never current, booted or old).
    Gc(GcArgs),
    /// Host-level setup: systemd units, and declarative hosts.
    #[command(subcommand)]
    Host(HostCommand),
    /// Host networks for VMs' taps: bridge, NAT, DHCP and DNS.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Log in to a running managed VM as root with ssh (over vsock or its address) and run
    /// CMD there; exits with CMD's status (255: ssh could not connect).
    #[command(override_usage = "microvm ssh [OPTIONS] <NAME> [-- <CMD>...]")]
    Ssh(crate::cmd::ssh::SshArgs),
    /// ssh's ProxyCommand for a hybrid vsock socket (what `microvm ssh` runs).
    #[command(hide = true)]
    VsockProxy(crate::cmd::ssh::VsockProxyArgs),
    /// Run a managed VM's supervisor in the foreground (what the service manager runs).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    /// Generate the man page or shell completions.
    Generate(GenerateArgs),
    /// Build microvm's own guest kernel from a Linux source.
    #[command(subcommand)]
    Kernel(crate::cmd::kernel::KernelCommand),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The VM's name (its directory in the state directory).
    pub name: String,
    /// The definition file to build it from (recorded, so `update` rebuilds from it).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "runner",
        conflicts_with = "runner"
    )]
    pub from: Option<PathBuf>,
    /// Adopt an existing runner directory (e.g. a microvm.nix runner) instead of building.
    #[arg(long, value_name = "DIR")]
    pub runner: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The VMs to update.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Restart a VM whose runner changed (or start it if it is not running).
    #[arg(long, short = 'R')]
    pub restart: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct NamesArgs {
    /// The VMs.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Seconds to wait for a graceful shutdown before forcing.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The VMs.
    #[arg(required_unless_present = "autostart")]
    pub names: Vec<String>,
    /// Start every VM listed in `<state>/autostart` (what a host's boot runs where
    /// systemd does not start `microvms.target`).
    #[arg(long, conflicts_with = "names")]
    pub autostart: bool,
    /// Resume the VM from a file written by `microvm snapshot` instead of booting it (qemu).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["autostart", "incoming"])]
    pub from_snapshot: Option<PathBuf>,
    /// Wait for a live migration instead of booting (qemu; see `migrate`): on
    /// tcp:ADDR:PORT, or `stdin` (what `migrate --to ssh://…` runs on the target).
    #[arg(long, value_name = "tcp:ADDR:PORT|stdin", conflicts_with = "autostart")]
    pub incoming: Option<String>,
    /// Boot at most N of the VMs at once (default: 4 per host core, at least 4).
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: Option<u16>,
}

#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The VM.
    pub name: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct BalloonArgs {
    /// The VM.
    pub name: String,
    /// The balloon's size in MiB.
    pub size: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The VM.
    pub name: String,
    /// Keep printing new lines as they are written.
    #[arg(long, short)]
    pub follow: bool,
    /// Print only the last N lines.
    #[arg(long, short = 'n', value_name = "N")]
    pub lines: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The VM.
    pub name: String,
    /// Keep the VM's volume images (everything else in its directory is removed).
    #[arg(long)]
    pub keep_volumes: bool,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Only print what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Write the systemd units, create the `microvm` user and the state directory.
    Install(HostInstallArgs),
    /// Reconcile the host with a host file: install, update, restart, stop and remove VMs.
    Apply(HostApplyArgs),
}

#[derive(Debug, clap::Args)]
pub struct HostInstallArgs {
    /// Where to write the units.
    #[arg(long, default_value = "/etc/systemd/system", value_name = "DIR")]
    pub unit_dir: PathBuf,
    /// The unprivileged user hypervisors and virtiofsd run as.
    #[arg(long, default_value = "microvm")]
    pub user: String,
    /// Its group.
    #[arg(long, default_value = "kvm")]
    pub group: String,
    /// TimeoutStartSec of microvm@ (slow boots under load must not cause restart storms).
    #[arg(long, default_value_t = 150, value_name = "SECONDS")]
    pub startup_timeout: u64,
    /// Restart policy of microvm@ (systemd's Restart=).
    #[arg(long, default_value = "on-failure")]
    pub restart: String,
    /// Only write the units (no user, no state directory, no systemctl daemon-reload).
    #[arg(long)]
    pub units_only: bool,
    /// Also create the default network: microvm0, 10.177.0.1/24, NAT, DHCP and DNS
    /// (docs/network.md).
    #[arg(long, conflicts_with = "units_only")]
    pub network: bool,
}

#[derive(Debug, clap::Args)]
pub struct HostApplyArgs {
    /// The host file listing the VMs.
    pub file: PathBuf,
    /// Only print what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the actions as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// The VM.
    pub name: String,
    /// The user the hypervisor runs as when started as root (`root`: no change).
    #[arg(long, env = "MICROVM_USER", default_value = "microvm")]
    pub user: String,
    /// Start the VM again after it ended: no, on-failure, always (like systemd's Restart=;
    /// under systemd leave it at `no` and let the unit restart).
    #[arg(long, default_value = "no", value_name = "POLICY")]
    pub restart: String,
    /// Seconds a graceful shutdown may take before the hypervisor is killed.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_timeout: u64,
    /// Seconds the guest may take to report ready before the start counts as failed.
    #[arg(long, default_value_t = 150, value_name = "SECONDS")]
    pub ready_timeout: u64,
    /// Restore the first start from file:PATH, tcp:ADDR:PORT or stdin (qemu `-incoming`).
    #[arg(long, value_name = "URI")]
    pub incoming: Option<String>,
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
    /// The store where this definition's built artifacts are looked up (see `build`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
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
    /// Print every path of the guest root with the `[[root]]` source (or OCI layer) it
    /// came from, last writer wins (`PATH<TAB>SOURCE` lines; with --json, a `root` list).
    #[arg(long)]
    pub list_root: bool,
    /// Fetch kernel packages and Debian roots again, even when cached (as
    /// `MICROVM_REFRESH=1`).
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// FILE: a definition file (TOML, or JSON with the same schema); NAME: a managed VM
    /// of the state directory (`create`d), run in the foreground under its supervisor.
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
    /// Fetch kernel packages and Debian roots again, even when cached (as
    /// `MICROVM_REFRESH=1`).
    #[arg(long)]
    pub refresh: bool,
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
