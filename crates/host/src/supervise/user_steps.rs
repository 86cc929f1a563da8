//! The definition's own start steps, run by the supervisor (`microvm run` and managed
//! VMs) as `bin/microvm-run` runs them: `preStart` with `bash -eu`, and
//! `extraArgsScript`, whose output's words are appended to the hypervisor's arguments.
//! Both run in the working directory, as the hypervisor's user when the supervisor drops
//! to one (microvm.nix runs them as the service's user); their output goes to stderr
//! (stdout may be the guest's console).

use std::path::Path;
use std::process::{Command, Stdio};

use std::os::unix::process::CommandExt as _;

use microvm_runner::Invocation;

use super::RunError;
use crate::privilege::Credentials;

fn command(program: &str, workdir: &Path, as_user: Option<&Credentials>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workdir).stdin(Stdio::null());
    if let Some(c) = as_user {
        // std drops the supplementary groups along with the uid.
        cmd.uid(c.uid).gid(c.gid);
    }
    cmd
}

fn failed(what: &'static str, workdir: &Path, message: String) -> RunError {
    RunError::PreStart {
        step: what,
        path: workdir.to_path_buf(),
        source: std::io::Error::other(message),
    }
}

fn stderr() -> Stdio {
    use std::os::fd::AsFd as _;
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::inherit(), Stdio::from)
}

/// Runs `preStart`; a non-zero exit stops the start.
pub(crate) fn pre_start(
    script: &str,
    workdir: &Path,
    as_user: Option<&Credentials>,
) -> Result<(), RunError> {
    const WHAT: &str = "run preStart in";
    let status = command("bash", workdir, as_user)
        .args(["-euc", script, "preStart"])
        .stdout(stderr())
        .status()
        .map_err(|e| failed(WHAT, workdir, format!("bash: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(WHAT, workdir, format!("it exited with {status}")))
    }
}

/// Runs `extraArgsScript` and returns the words of its output.
pub(crate) fn extra_args(
    cmd: &str,
    workdir: &Path,
    as_user: Option<&Credentials>,
) -> Result<Vec<String>, RunError> {
    const WHAT: &str = "run extraArgsScript in";
    const MAX: usize = 1 << 20;
    let out = command("sh", workdir, as_user)
        .args(["-c", cmd])
        .stderr(stderr())
        .output()
        .map_err(|e| failed(WHAT, workdir, format!("sh: {e}")))?;
    if !out.status.success() {
        let status = out.status;
        return Err(failed(WHAT, workdir, format!("it exited with {status}")));
    }
    if out.stdout.len() > MAX {
        return Err(failed(WHAT, workdir, "it printed more than 1 MiB".into()));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| failed(WHAT, workdir, "its output is not UTF-8".into()))?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// The invocation with `extra` appended to the hypervisor's arguments.
pub(crate) fn with_args(inv: &Invocation, extra: Vec<String>) -> Invocation {
    let mut inv = inv.clone();
    inv.args.extend(extra);
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_runner::{Capabilities, PreStart, Shutdown};

    /// A fake hypervisor: `sh -c SCRIPT sh ARGS…`.
    fn sh(script: &str, pre_start: Vec<PreStart>) -> Invocation {
        Invocation {
            hypervisor: microvm_spec::types::Hypervisor::Qemu,
            program: "sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into()],
            process_name: None,
            env: vec![],
            files: vec![],
            helpers: vec![],
            pre_start,
            control_socket: None,
            shutdown: Shutdown::Signal {
                signal: "SIGTERM".into(),
            },
            control_channel: None,
            taps: vec![],
            macvtap_fds: vec![],
            kernel_cmdline: String::new(),
            capabilities: Capabilities {
                can_shutdown: false,
                supports_notify_socket: false,
                tap_multi_queue: false,
                readiness: false,
            },
            warnings: vec![],
        }
    }

    #[test]
    fn the_supervisor_runs_pre_start_and_appends_extra_args() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inv = sh(
            "[ -f pre ] && echo \"$@\" > argv",
            vec![
                PreStart::Shell("echo from-pre-start > pre\n".into()),
                PreStart::RemoveFile("stale.sock".into()),
                PreStart::ExtraArgs("echo '-smp 2'; echo -name vm1".into()),
            ],
        );
        let mut opts = super::super::RunOptions::new(dir.path());
        opts.handle_signals = false;
        opts.console = super::super::Console::Log(dir.path().join("console.log"));
        let outcome = super::super::run_foreground(&inv, &opts).expect("runs");
        assert_eq!(outcome.exit_code(), 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("argv")).expect("argv"),
            "-smp 2 -name vm1\n"
        );
        // A failing preStart stops the start: the hypervisor never runs.
        let inv = sh("touch started", vec![PreStart::Shell("exit 7".into())]);
        let err = super::super::run_foreground(&inv, &opts).expect_err("fails");
        assert!(err.to_string().contains("preStart"), "{err}");
        assert!(!dir.path().join("started").exists());
    }

    #[test]
    fn pre_start_runs_in_the_workdir_and_fails_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        pre_start("echo hi > marker\n[ -f marker ]", dir.path(), None).expect("runs");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("marker")).expect("marker"),
            "hi\n"
        );
        let err = pre_start("false\ntouch not-reached", dir.path(), None).expect_err("fails");
        assert!(
            err.to_string().starts_with("cannot run preStart in"),
            "{err}"
        );
        assert!(!dir.path().join("not-reached").exists(), "bash -e stops");
    }

    #[test]
    fn they_run_as_the_hypervisor_user() {
        use std::os::unix::fs::MetadataExt as _;
        if !crate::privilege::is_root() {
            eprintln!("skipped: dropping to another user needs root");
            return;
        }
        let nobody = crate::privilege::lookup_user("nobody")
            .ok()
            .flatten()
            .expect("user nobody");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        pre_start("touch made", d, Some(&nobody)).expect("runs");
        assert_eq!(
            std::fs::metadata(d.join("made")).expect("made").uid(),
            nobody.uid
        );
        let id = extra_args("id -u", d, Some(&nobody)).expect("runs");
        assert_eq!(id, [nobody.uid.to_string()]);
    }

    #[test]
    fn extra_args_are_the_words_of_the_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args =
            extra_args("printf -- '-smp 2\\n  -name  x\\n'", dir.path(), None).expect("runs");
        assert_eq!(args, ["-smp", "2", "-name", "x"]);
        assert!(extra_args("exit 3", dir.path(), None).is_err());
    }
}
