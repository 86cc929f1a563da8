//! `microvm snapshot`, `microvm migrate` and `start --from-snapshot / --incoming`
//! (qemu; docs/cluster.md).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use microvm_host::migrate::{self, ssh, Incoming, MigrationStats};
use microvm_host::service::load_runner;
use microvm_host::state::{StateDir, VmDir};
use microvm_spec::types::VmName;
use serde_json::{json, Value};

use crate::cli::StartArgs;
use crate::exit::OK;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The running VM.
    pub name: String,
    /// The file to write (must not exist; created mode 0600).
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The running VM.
    pub name: String,
    /// ssh://[USER@]HOST[:PORT]: start the VM there over ssh and stream it through that
    /// connection; or ADDR:PORT, where the target's `start NAME --incoming tcp:ADDR:PORT`
    /// waits.
    #[arg(long, value_name = "TARGET")]
    pub to: String,
    /// ssh: the client configuration to use (`ssh -F FILE`: keys, known hosts, aliases).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// ssh: the target's state directory (default: this host's).
    #[arg(long, value_name = "DIR")]
    pub remote_state_dir: Option<PathBuf>,
    /// ssh: the microvm command on the target.
    #[arg(long, value_name = "PATH", default_value = "microvm")]
    pub remote_binary: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The running VM's QMP socket, after checking it can migrate at all.
fn qmp_socket(vm: &VmDir) -> anyhow::Result<PathBuf> {
    let name = vm.name();
    if super::control::supervisor(vm).is_none() {
        bail!("{name} is not running");
    }
    let runner = vm
        .booted()
        .with_context(|| format!("{name} has no booted runner"))?;
    let r = load_runner(&runner)?;
    migrate::check_migratable(&r.invocation, &r.pci_devices)?;
    let socket = r
        .invocation
        .control_socket
        .as_deref()
        .with_context(|| format!("{name} has no QMP socket"))?;
    Ok(vm.path().join(socket))
}

fn progress(json: bool) -> impl FnMut(&Value) {
    let mut last = Instant::now() - Duration::from_secs(10);
    move |info| {
        if json || last.elapsed() < Duration::from_secs(1) {
            return;
        }
        last = Instant::now();
        let ram = &info["ram"];
        eprintln!(
            "microvm: migration {}: {} of {} KiB sent, {} KiB remaining",
            info["status"].as_str().unwrap_or("?"),
            ram["transferred"].as_u64().unwrap_or(0) / 1024,
            ram["total"].as_u64().unwrap_or(0) / 1024,
            ram["remaining"].as_u64().unwrap_or(0) / 1024,
        );
    }
}

fn print_stats(what: &str, name: &str, stats: &MigrationStats, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "name": name, "action": what, "migration": stats })
        );
    } else {
        println!(
            "{name}: {what} in {} ms (guest paused {} ms, {} KiB sent)",
            stats.total_ms,
            stats.downtime_ms,
            stats.transferred_bytes / 1024
        );
    }
}

/// Waits until the supervisor has ended after the source qemu quit.
fn wait_stopped(vm: &VmDir) {
    let end = Instant::now() + Duration::from_secs(30);
    while super::control::supervisor(vm).is_some() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The group of the hypervisor's user (the VM directory's), which connects to the stream
/// socket we listen on; as root only.
fn socket_group(vm: &VmDir) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let group = std::fs::metadata(vm.path()).ok().map(|m| m.gid());
    group.filter(|_| microvm_host::privilege::is_root())
}

pub fn snapshot(state_root: &Path, args: &SnapshotArgs) -> anyhow::Result<i32> {
    let (_, name, vm) = super::vm_dir(state_root, &args.name)?;
    let socket = qmp_socket(&vm)?;
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("resolving {}", args.file.display()))?;
    let group = socket_group(&vm);
    let stats = migrate::snapshot(vm.path(), &socket, &file, group, progress(args.json))
        .with_context(|| format!("snapshot of {name}"))?;
    wait_stopped(&vm);
    print_stats("saved", name.as_str(), &stats, args.json);
    Ok(OK)
}

pub fn migrate(state_root: &Path, args: &MigrateArgs) -> anyhow::Result<i32> {
    let (_, name, vm) = super::vm_dir(state_root, &args.name)?;
    if args.to.starts_with("ssh://") {
        return migrate_ssh(state_root, args, &name, &vm);
    }
    let to = migrate::address(&args.to)?;
    let socket = qmp_socket(&vm)?;
    let note = || migrate::note_handover(vm.path(), &format!("migrated to tcp:{to}"));
    let stats = migrate::migrate(
        &socket,
        &format!("tcp:{to}"),
        migrate::MIGRATE_TIMEOUT,
        progress(args.json),
        note,
    )
    .with_context(|| format!("migration of {name} to {to}"))?;
    wait_stopped(&vm);
    print_stats("migrated", name.as_str(), &stats, args.json);
    Ok(OK)
}

/// `migrate NAME --to ssh://…`: the target is started and fed over ssh (docs/cluster.md).
fn migrate_ssh(
    state_root: &Path,
    args: &MigrateArgs,
    name: &VmName,
    vm: &VmDir,
) -> anyhow::Result<i32> {
    let remote = ssh::Remote {
        target: args.to.parse()?,
        config: args.ssh_config.clone(),
        binary: args.remote_binary.clone(),
        state_dir: args
            .remote_state_dir
            .clone()
            .unwrap_or_else(|| state_root.to_path_buf()),
    };
    let socket = qmp_socket(vm)?;
    let stats = ssh::migrate(
        vm.path(),
        &socket,
        name.as_str(),
        &remote,
        socket_group(vm),
        progress(args.json),
    )
    .with_context(|| format!("migration of {name} to {}", remote.target))?;
    wait_stopped(vm);
    print_stats("migrated", name.as_str(), &stats, args.json);
    Ok(OK)
}

/// `start NAME --from-snapshot FILE` (waits until the guest runs again),
/// `start NAME --incoming tcp:ADDR:PORT` (returns once qemu listens) or
/// `start NAME --incoming stdin` (the target of `migrate --to ssh://…`: feeds its standard
/// input to qemu and returns once the guest runs).
pub fn start_incoming(state_root: &Path, args: &StartArgs) -> anyhow::Result<i32> {
    let [n] = args.names.as_slice() else {
        bail!("--from-snapshot and --incoming start exactly one VM");
    };
    let (state, name, vm) = super::vm_dir(state_root, n)?;
    let incoming: Incoming = match (&args.from_snapshot, &args.incoming) {
        (Some(f), _) => {
            let f = std::path::absolute(f).with_context(|| format!("resolving {}", f.display()))?;
            migrate::open_snapshot(&f)?; // a missing file fails here, not in the supervisor
            Incoming::File(f)
        }
        (None, Some(uri)) => match uri.parse()? {
            Incoming::File(_) => bail!("use --from-snapshot FILE for a snapshot file"),
            tcp => tcp,
        },
        (None, None) => unreachable!("checked by the caller"),
    };
    let current = vm
        .current()
        .with_context(|| format!("{name} has no runner"))?;
    let r = load_runner(&current)?;
    migrate::check_migratable(&r.invocation, &r.pci_devices)?;
    let started = Instant::now();
    let extra: Vec<OsString> = vec!["--incoming".into(), incoming.arg().into()];
    super::control::start_with(&StateDir::new(state.root()), &name, &extra)?;
    match incoming {
        Incoming::File(_) => {
            wait_resumed(&vm, super::START_TIMEOUT)?;
            eprintln!(
                "microvm: {name} resumed from its snapshot in {:.2} s",
                started.elapsed().as_secs_f64()
            );
        }
        Incoming::Tcp(a) => {
            migrate::wait_listening(&qmp_socket(&vm)?, Duration::from_secs(30))?;
            eprintln!("microvm: {name} waits for its migration on tcp:{a}");
        }
        Incoming::Stdin => {
            receive(&vm)?;
            println!("resumed {name} in {:.2} s", started.elapsed().as_secs_f64());
        }
    }
    Ok(OK)
}

/// Copies our standard input (the migration stream) into the incoming qemu's socket,
/// then waits until the guest runs. `receiving NAME` on stdout tells the source to send.
fn receive(vm: &VmDir) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::FileTypeExt as _;
    let name = vm.name();
    let sock = vm.path().join(migrate::INCOMING_SOCKET);
    let end = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        // qemu's own socket, never something a link points at.
        let is_socket = std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket());
        if let Some(s) = is_socket
            .then(|| microvm_host::unixpath::connect(&sock).ok())
            .flatten()
        {
            break s;
        }
        if super::control::supervisor(vm).is_none() || Instant::now() >= end {
            bail!("{name}: the incoming qemu did not open {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("receiving {name}");
    std::io::stdout().flush()?;
    let copied = std::io::copy(&mut std::io::stdin().lock(), &mut stream);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // A copy that broke off (qemu refused the stream) is explained by how the VM ended.
    let resumed = wait_resumed(vm, super::START_TIMEOUT);
    match copied {
        Err(e) => resumed.map_err(|r| anyhow::anyhow!("{r:#} (the stream broke off: {e})")),
        _ => resumed,
    }
}

/// Waits until the supervisor records that the incoming guest runs (run.json `ready`).
fn wait_resumed(vm: &VmDir, timeout: Duration) -> anyhow::Result<()> {
    let name = vm.name();
    let end = Instant::now() + timeout;
    loop {
        let Some(pid) = super::control::supervisor(vm) else {
            let why = microvm_host::service::record::read(vm)
                .and_then(|r| r.last_exit)
                .map_or_else(|| "its supervisor ended".into(), |e| e.reason);
            bail!("{name} did not resume: {why}");
        };
        let rec = microvm_host::service::record::read(vm);
        if rec.is_some_and(|r| r.supervisor_pid == pid && r.ready.is_some()) {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("{name} did not resume within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
