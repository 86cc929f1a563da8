//! `microvm supervise NAME` (what systemd's `microvm@NAME` and `microvm start` run) and
//! `microvm run NAME` (the same in the foreground, console on the terminal).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use microvm_host::privilege::{self, Credentials};
use microvm_host::service::{self, ConsoleMode, ManagedOptions, RestartMode, RestartPolicy};
use microvm_host::state::VmDir;
use microvm_host::StopHandle;
use serde::Deserialize;

use crate::cli::SuperviseArgs;

pub fn supervise(state_root: &Path, args: &SuperviseArgs) -> anyhow::Result<i32> {
    let (_, _, vm) = super::vm_dir(state_root, &args.name)?;
    let mode: RestartMode = args
        .restart
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let incoming = match &args.incoming {
        Some(uri) => Some(uri.parse().map_err(anyhow::Error::new)?),
        None => None,
    };
    run(
        &vm,
        &args.user,
        RestartPolicy::new(mode),
        ConsoleMode::Pty,
        Duration::from_secs(args.shutdown_timeout),
        (Duration::from_secs(args.ready_timeout), incoming),
    )
}

/// `microvm run NAME`: `Some` when `arg` is not a file but names a managed VM.
pub fn run_managed(
    state_root: &Path,
    arg: &Path,
    shutdown_timeout: Duration,
) -> Option<anyhow::Result<i32>> {
    if arg.exists() || arg.components().count() != 1 {
        return None;
    }
    let name: microvm_spec::types::VmName = arg.to_str()?.parse().ok()?;
    let vm = microvm_host::state::StateDir::new(state_root).vm(&name);
    if !vm.exists() {
        return None;
    }
    let user = std::env::var("MICROVM_USER").unwrap_or_else(|_| "microvm".into());
    Some(run(
        &vm,
        &user,
        RestartPolicy::new(RestartMode::No),
        ConsoleMode::Inherit,
        shutdown_timeout,
        (Duration::from_secs(150), None),
    ))
}

fn run(
    vm: &VmDir,
    user: &str,
    restart: RestartPolicy,
    console: ConsoleMode,
    shutdown_timeout: Duration,
    (ready_timeout, incoming): (Duration, Option<microvm_host::migrate::Incoming>),
) -> anyhow::Result<i32> {
    let run_user = privilege::resolve_run_user(Some(user))?;
    let stop = StopHandle::default();
    service::forward_signals(&stop).context("installing the SIGINT/SIGTERM handlers")?;
    let opts = ManagedOptions {
        run_user,
        restart,
        shutdown_timeout,
        ready_timeout: Some(ready_timeout),
        net: microvm_host::net::NetHost::system(),
        console,
        console_log_limit: microvm_host::console::DEFAULT_LOG_LIMIT,
        path_var: std::env::var_os("PATH"),
        stop,
        incoming,
    };
    let name = vm.name().to_string();
    let dir = vm.path().to_path_buf();
    let mut prepare = |r: &service::Runner, c: Option<&Credentials>| {
        ensure_volumes(&r.dir, &dir, c).map_err(|e| format!("{e:#}"))
    };
    let mut report = |line: &str| eprintln!("{} microvm: {name}: {line}", clock());
    let code = service::supervise(vm, &opts, &mut prepare, &mut report)?;
    Ok(code)
}

/// `HH:MM:SS` (UTC) for log lines.
fn clock() -> String {
    let s = microvm_host::state::now() % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The part of the runner's `config.json` the supervisor needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigView {
    #[serde(default)]
    volumes: Vec<microvm_spec::config::Volume>,
}

/// Creates missing volumes (inventory §3.6) in the VM directory and hands every volume
/// image to the hypervisor's user.
fn ensure_volumes(
    runner: &Path,
    workdir: &Path,
    owner: Option<&Credentials>,
) -> anyhow::Result<()> {
    let path = runner.join("share/microvm/config.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(()); // an adopted runner: its own microvm-run creates volumes
    };
    let config: ConfigView =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
    let name = workdir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    for image in super::super::common::ensure_volumes(&name, &config.volumes, workdir)? {
        if let (Some(c), true) = (owner, image.is_file()) {
            privilege::chown(&image, c.uid, c.gid)?;
        }
    }
    Ok(())
}
