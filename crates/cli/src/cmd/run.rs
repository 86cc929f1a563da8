//! `microvm run`: build if needed, create missing volumes, boot in the foreground and exit
//! with the guest's status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use microvm_host::supervise::{self, Console, Progress, RunOptions};

use super::{build, common};
use crate::cli::RunArgs;

pub fn run(args: &RunArgs, state_dir: &Path) -> anyhow::Result<i32> {
    // `microvm run NAME`: a managed VM, supervised in the foreground like the service.
    let timeout = Duration::from_secs(args.shutdown_timeout);
    if let Some(result) = super::service::run_managed(state_dir, &args.def.file, timeout) {
        return result;
    }
    common::refresh(args.refresh);
    let loaded = common::load_with_inputs(&args.def, false)?;
    let config = &loaded.config;
    let store = build::open_store(args.store.as_deref(), state_dir)?;
    let (host, kvm) = common::probe_host();
    if !host.kvm {
        if let microvm_host::kvm::KvmStatus::Unusable { reason } = &kvm.status {
            eprintln!(
                "microvm: {}: KVM is not usable here ({reason}); running under TCG (software emulation), which is much slower",
                config.name
            );
        }
    }
    let runner = build::build_runner(&loaded, &store, &host)?;
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let workdir = workdir
        .canonicalize()
        .with_context(|| format!("resolving {}", workdir.display()))?;
    common::ensure_volumes(config.name.as_str(), &config.volumes, &workdir)?;

    let mut opts = RunOptions::new(&workdir);
    opts.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    if let Some(log) = &args.console_log {
        opts.console = Console::Log(absolute(log, &workdir));
    }
    let name = config.name.to_string();
    let _links = super::network::create_taps(&name, &runner.invocation.taps)?;
    let _forwards = super::network::forward_ports(state_dir, &name, &runner.dir)?;
    let outcome = supervise::run_foreground_with(&runner.invocation, &opts, |p| report(&name, p))
        .with_context(|| format!("running {name}"))?;
    Ok(outcome.exit_code())
}

fn report(name: &str, p: &Progress) {
    match p {
        Progress::Ready { after, init_start, ready } => eprintln!(
            "microvm: {name}: ready {:.2} s after start (guest init ran from {init_start:.3} s to {ready:.3} s of guest uptime)",
            after.as_secs_f64()
        ),
        Progress::GuestExit(n) => eprintln!("microvm: {name}: the guest command exited with status {n}"),
        Progress::GuestFailed(m) => eprintln!("microvm: {name}: the guest init failed: {m}"),
        Progress::ShutdownRequested { method } => eprintln!("microvm: {name}: shutting down ({method})"),
        Progress::ShutdownFallback { error } => eprintln!("microvm: {name}: graceful shutdown failed ({error}); sending SIGTERM"),
        Progress::Killed => eprintln!("microvm: {name}: the hypervisor did not stop in time and was killed"),
        Progress::HelperExited { name: helper, status } => eprintln!("microvm: {name}: {helper} exited ({status}); restarting it"),
        Progress::HelperRestarted { name: helper, pid } => eprintln!("microvm: {name}: {helper} restarted (pid {pid})"),
        Progress::HelperFailed { error, .. } => eprintln!("microvm: {name}: {error}; stopping the VM"),
        Progress::HelperStarted { .. } | Progress::HypervisorStarted { .. } | Progress::ChannelNoise(_) | Progress::Resumed { .. } => {}
    }
}

fn absolute(p: &Path, base: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
