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
pub use install::{installed_unit_dir, sync_target};
pub use supervise::run_managed;

/// How long `start` waits for the guest to be ready (the unit's TimeoutStartSec).
pub const START_TIMEOUT: Duration = Duration::from_secs(150);

pub(crate) fn vm_dir(state_root: &Path, name: &str) -> anyhow::Result<(StateDir, VmName, VmDir)> {
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

/// How many VMs one `start` boots at once by default, per host core. Waiting for a guest
/// is not CPU work: under KVM a boot spends most of its time in the guest, and even under
/// TCG four boots at once on two cores finish well before two waves of two (see
/// docs/benchmarks.md). The bound stays so that a host starting hundreds of VMs (an
/// autostart list at boot) does not boot them all at once: each boot gets slower with
/// every other one, and the restart storms of microvm.nix #317 come from boots that all
/// overran their start timeout together.
pub const START_JOBS_PER_CORE: usize = 4;
/// The default bound is never below this, so that a one-core host still starts a few VMs
/// at once.
pub const START_JOBS_MIN: usize = 4;

/// The default number of VMs one `start` boots at once on this host.
pub fn default_start_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores
        .saturating_mul(START_JOBS_PER_CORE)
        .max(START_JOBS_MIN)
}

/// Like [`each`], but up to `jobs` at a time: each VM's start waits for its own guest, so
/// starting four one by one waits four boots. Each start reports its VM's readiness (or
/// failure) as it comes, and its start timeout counts from its own boot, never from the
/// time it waited for its turn; names are deduplicated so a VM starts once.
fn each_parallel(
    state_root: &Path,
    names: &[String],
    jobs: usize,
    f: impl Fn(&StateDir, &VmName) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<i32> {
    let mut unique: Vec<&String> = Vec::new();
    for n in names {
        if !unique.contains(&n) {
            unique.push(n);
        }
    }
    let workers = jobs.min(unique.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(n) = unique.get(i) else { break };
                let result = vm_dir(state_root, n).and_then(|(state, name, _)| f(&state, &name));
                if let Err(e) = result {
                    crate::exit::report(&e);
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    Ok(if failed.into_inner() { FAILURE } else { OK })
}

pub fn start(state: &Path, args: &StartArgs) -> anyhow::Result<i32> {
    if args.from_snapshot.is_some() || args.incoming.is_some() {
        return migrate::start_incoming(state, args);
    }
    let jobs = args.jobs.map_or_else(default_start_jobs, usize::from);
    if !args.autostart {
        return each_parallel(state, &args.names, jobs, start_one);
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
    each_parallel(state, &names, jobs, start_one)
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
    show::status(state, &vm, args.json)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn each_parallel_runs_every_vm_once_up_to_the_bound_and_reports_failures() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        for n in &names {
            let vm = tmp.path().join(n);
            std::fs::create_dir_all(vm.join("runner")).expect("mkdir");
            std::os::unix::fs::symlink("runner", vm.join("current")).expect("current");
        }
        let mut asked = names.clone();
        asked.push("a".into()); // a duplicate starts once
        asked.push("missing".into()); // an unknown VM fails, the others still start
        for jobs in [1, 3, 64] {
            let (running, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let seen = Mutex::new(Vec::new());
            let code = each_parallel(tmp.path(), &asked, jobs, |_, name| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                seen.lock().expect("lock").push(name.to_string());
                running.fetch_sub(1, Ordering::SeqCst);
                if name.as_str() == "c" {
                    anyhow::bail!("c failed");
                }
                Ok(())
            })
            .expect("runs");
            assert_eq!(code, FAILURE);
            let mut seen = seen.into_inner().expect("lock");
            seen.sort();
            assert_eq!(seen, names, "jobs {jobs}");
            let peak = peak.into_inner();
            assert!(peak <= jobs, "{peak} at once with --jobs {jobs}");
            if jobs > 1 {
                // Six names (five VMs and a missing one) sleep 50 ms each: with more than
                // one worker, two of them overlap.
                assert!(peak >= 2, "never two at once with --jobs {jobs}");
            }
        }
    }

    #[test]
    fn the_default_bound_is_four_per_core_and_at_least_four() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_start_jobs(), (cores * 4).max(4));
        assert!(default_start_jobs() >= START_JOBS_MIN);
    }
}
