//! Running managed VMs as services: `start`, `stop`, `restart`, `shutdown`, `status`,
//! `logs`, `console`, the hidden `supervise`, and `host install`. See docs/host.md.
//!
//! With systemd as PID 1 (`/run/systemd/system` exists) start/stop/restart go through
//! `systemctl … microvm@NAME`; otherwise microvm is its own service manager: `start`
//! runs `microvm supervise NAME --restart on-failure` detached (own session, output to
//! `supervisor.log`) and waits until the guest is ready. `MICROVM_SERVICE_MANAGER=own`
//! or `=systemd` overrides the detection.
//!
//! [`start_one`], [`stop_one`] and [`restart_one`] take the VM's lock themselves; call
//! them without holding it.

mod control;
mod install;
pub mod migrate;
mod ocf;
mod show;
mod supervise;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use microvm_host::state::{StateDir, VmDir};
use microvm_spec::types::VmName;

use crate::cli::{HostInstallArgs, LogsArgs, NameArgs, NamesArgs, StartArgs, SuperviseArgs};
use crate::exit::{FAILURE, OK};

pub use control::{restart_one, shutdown_one, start_one, stop_one};
pub use install::sync_target;
pub use supervise::run_managed;

/// How long `start` waits for the guest to be ready (the unit's TimeoutStartSec).
pub const START_TIMEOUT: Duration = Duration::from_secs(150);

fn vm_dir(state_root: &Path, name: &str) -> anyhow::Result<(StateDir, VmName, VmDir)> {
    let name: VmName = name
        .parse()
        .map_err(|e| anyhow::anyhow!("{name:?} is not a VM name: {e}"))?;
    let state = StateDir::new(state_root);
    let vm = state.vm(&name);
    vm.require()
        .with_context(|| format!("no managed VM {name} in {}", state_root.display()))?;
    Ok((state, name, vm))
}

/// Runs `f` for every name; all are tried, the exit code says whether any failed.
fn each(
    state_root: &Path,
    names: &[String],
    mut f: impl FnMut(&StateDir, &VmName) -> anyhow::Result<()>,
) -> anyhow::Result<i32> {
    let mut code = OK;
    for n in names {
        let result = vm_dir(state_root, n).and_then(|(state, name, _)| f(&state, &name));
        if let Err(e) = result {
            crate::exit::report(&e);
            code = FAILURE;
        }
    }
    Ok(code)
}

pub fn start(state: &Path, args: &StartArgs) -> anyhow::Result<i32> {
    if args.from_snapshot.is_some() || args.incoming.is_some() {
        return migrate::start_incoming(state, args);
    }
    if !args.autostart {
        return each(state, &args.names, start_one);
    }
    let names: Vec<String> = StateDir::new(state)
        .autostart()?
        .iter()
        .map(|n| n.to_string())
        .collect();
    if names.is_empty() {
        eprintln!(
            "microvm: no VM to autostart ({} is empty or missing)",
            StateDir::new(state).autostart_path().display()
        );
    }
    each(state, &names, start_one)
}

pub fn stop(state: &Path, args: &NamesArgs) -> anyhow::Result<i32> {
    let t = Duration::from_secs(args.timeout);
    each(state, &args.names, |s, n| stop_one(s, n, t))
}

pub fn restart(state: &Path, args: &NamesArgs) -> anyhow::Result<i32> {
    let t = Duration::from_secs(args.timeout);
    each(state, &args.names, |s, n| restart_one(s, n, t))
}

pub fn shutdown(state: &Path, args: &NamesArgs) -> anyhow::Result<i32> {
    let t = Duration::from_secs(args.timeout);
    each(state, &args.names, |s, n| shutdown_one(s, n, t))
}

pub fn status(state: &Path, args: &NameArgs) -> anyhow::Result<i32> {
    let (_, _, vm) = vm_dir(state, &args.name)?;
    show::status(&vm, args.json)
}

pub fn logs(state: &Path, args: &LogsArgs) -> anyhow::Result<i32> {
    let (_, _, vm) = vm_dir(state, &args.name)?;
    show::logs(&vm, args.follow, args.lines)
}

pub fn console(state: &Path, args: &NameArgs) -> anyhow::Result<i32> {
    let (_, _, vm) = vm_dir(state, &args.name)?;
    show::console(&vm)
}

pub fn supervise(state: &Path, args: &SuperviseArgs) -> anyhow::Result<i32> {
    supervise::supervise(state, args)
}

pub fn host_install(state: &Path, args: &HostInstallArgs) -> anyhow::Result<i32> {
    install::host_install(state, args)
}
