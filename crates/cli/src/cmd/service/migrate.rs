//! `microvm snapshot`, `microvm migrate` and `start --from-snapshot / --incoming`
//! (qemu; docs/cluster.md).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use microvm_host::migrate::{self, Incoming, MigrationStats};
use microvm_host::service::load_runner;
use microvm_host::state::{StateDir, VmDir};
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
    /// ADDR:PORT where the target host's `microvm start NAME --incoming tcp:ADDR:PORT` waits.
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: String,
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

pub fn snapshot(state_root: &Path, args: &SnapshotArgs) -> anyhow::Result<i32> {
    let (_, name, vm) = super::vm_dir(state_root, &args.name)?;
    let socket = qmp_socket(&vm)?;
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("resolving {}", args.file.display()))?;
    let group = std::fs::metadata(vm.path()).ok().map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.gid()
    });
    let group = group.filter(|_| microvm_host::privilege::is_root());
    let stats = migrate::snapshot(vm.path(), &socket, &file, group, progress(args.json))
        .with_context(|| format!("snapshot of {name}"))?;
    wait_stopped(&vm);
    print_stats("saved", name.as_str(), &stats, args.json);
    Ok(OK)
}

pub fn migrate(state_root: &Path, args: &MigrateArgs) -> anyhow::Result<i32> {
    let (_, name, vm) = super::vm_dir(state_root, &args.name)?;
    let to = migrate::address(&args.to)?;
    let socket = qmp_socket(&vm)?;
    let stats = migrate::migrate(
        &socket,
        &format!("tcp:{to}"),
        migrate::MIGRATE_TIMEOUT,
        progress(args.json),
    )
    .with_context(|| format!("migration of {name} to {to}"))?;
    wait_stopped(&vm);
    print_stats("migrated", name.as_str(), &stats, args.json);
    Ok(OK)
}

/// `start NAME --from-snapshot FILE` (waits until the guest runs again) or
/// `start NAME --incoming tcp:ADDR:PORT` (returns once qemu listens).
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
    let uri = match &incoming {
        Incoming::File(p) => format!("file:{}", p.display()),
        Incoming::Tcp(a) => format!("tcp:{a}"),
    };
    let started = Instant::now();
    let extra: Vec<OsString> = vec!["--incoming".into(), uri.into()];
    super::control::start_with(&StateDir::new(state.root()), &name, &extra)?;
    match incoming {
        Incoming::File(_) => {
            let socket = qmp_socket(&vm)?;
            migrate::wait_running(&socket, super::START_TIMEOUT)?;
            eprintln!(
                "microvm: {name} resumed from its snapshot in {:.2} s",
                started.elapsed().as_secs_f64()
            );
        }
        Incoming::Tcp(a) => eprintln!("microvm: {name} waits for its migration on tcp:{a}"),
    }
    Ok(OK)
}
