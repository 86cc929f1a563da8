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
    // Detached (`microvm start`): our output is supervisor.log; rotate it like console.log.
    let output = service::logpipe::rotate_own_output(
        &vm.supervisor_log_path(),
        microvm_host::console::DEFAULT_LOG_LIMIT,
    )
    .ok()
    .flatten();
    let mode: RestartMode = args
        .restart
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let incoming = match &args.incoming {
        Some(uri) => Some(uri.parse().map_err(anyhow::Error::new)?),
        None => None,
    };
    let result = run(
        &vm,
        &args.user,
        RestartPolicy::new(mode),
        ConsoleMode::Pty,
        Duration::from_secs(args.shutdown_timeout),
        (Duration::from_secs(args.ready_timeout), incoming),
    );
    match (result, output) {
        // The error must reach the log before the pipe closes.
        (Err(e), Some(output)) => {
            let code = crate::exit::report(&e);
            drop(output);
            Err(crate::exit::Reported(code).into())
        }
        (result, _) => result,
    }
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
    let user = run_user_name(user, vm);
    let run_user = privilege::resolve_run_user(Some(&user))?;
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
    match service::supervise(vm, &opts, &mut prepare, &mut report) {
        Ok(code) => Ok(code),
        // Refused before its first start (no `current`, an unusable runner): the exit
        // status that keeps systemd from restarting it, as for a refused start later.
        Err(e) => match service::refusal::classify(&e) {
            Some(r) => {
                crate::exit::report(&anyhow::Error::new(e));
                report(&r.log_line());
                Err(crate::exit::Reported(service::refusal::REFUSED_EXIT).into())
            }
            None => Err(e.into()),
        },
    }
}

/// The user the hypervisor runs as: `--user`/`$MICROVM_USER` when it names someone other
/// than the default, else the definition's `user` (microvm.nix's `microvm.user`; one user
/// per VM keeps a compromised hypervisor away from the other VMs' disks), else the default.
fn run_user_name(cli: &str, vm: &VmDir) -> String {
    if cli != privilege::DEFAULT_USER {
        return cli.to_string();
    }
    definition_user(vm).unwrap_or_else(|| cli.to_string())
}

fn definition_user(vm: &VmDir) -> Option<String> {
    #[derive(Deserialize)]
    struct UserView {
        user: Option<String>,
    }
    let bytes = std::fs::read(vm.current()?.join("share/microvm/config.json")).ok()?;
    serde_json::from_slice::<UserView>(&bytes).ok()?.user
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_user_wins_over_the_default_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = dir.path().join("runner");
        std::fs::create_dir_all(runner.join("share/microvm")).expect("mkdir");
        let name = "u1".parse().expect("name");
        let vm = VmDir::at(&name, dir.path().join("u1"));
        std::fs::create_dir_all(vm.path()).expect("mkdir");
        vm.set_current(&runner).expect("current");
        let config = runner.join("share/microvm/config.json");
        std::fs::write(&config, r#"{"user": null, "volumes": []}"#).expect("w");
        assert_eq!(run_user_name("microvm", &vm), "microvm");
        std::fs::write(&config, r#"{"user": "vm-u1", "volumes": []}"#).expect("w");
        assert_eq!(run_user_name("microvm", &vm), "vm-u1");
        assert_eq!(run_user_name("root", &vm), "root");
        assert_eq!(run_user_name("other", &vm), "other");
    }
}
