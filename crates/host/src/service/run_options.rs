//! How the supervisor runs one attempt's hypervisor: its [`RunOptions`] and the stop
//! handle (an adopted runner stops through its own `bin/microvm-shutdown`).

use super::adopted;
use super::managed::{ManagedOptions, Runner};
use crate::privilege::Credentials;
use crate::state::VmDir;
use crate::supervise::{PassFd, RunOptions, StopHandle};
use microvm_runner::Invocation;

/// How the supervisor runs this attempt's hypervisor (the console is added after),
/// and the watcher that turns a stop into an adopted runner's `microvm-shutdown`.
pub(super) fn run_options(
    vm: &VmDir,
    runner: &Runner,
    opts: &ManagedOptions,
    inv: &Invocation,
    incoming: bool,
    pass: Vec<PassFd>,
) -> (RunOptions, Option<adopted::GracefulStop>) {
    let creds = opts.run_user.as_ref();
    let mut ro = RunOptions::new(vm.path());
    ro.handle_signals = false;
    let (stop, graceful) = stop_handle(vm, runner, opts, creds);
    ro.stop = stop;
    ro.shutdown_timeout = opts.shutdown_timeout;
    ro.ready_timeout = if incoming { None } else { opts.ready_timeout };
    ro.path_var = opts.path_var.clone();
    ro.credentials = opts.run_user.clone();
    // Its sockets (QMP, API) for root only: the group gets nothing of the VM's.
    ro.umask = Some(0o077);
    ro.pass_fds = pass;
    ro.restart_helpers = Some(Default::default());
    ro.resume_watch = inv
        .control_socket
        .as_ref()
        .filter(|_| incoming)
        .map(|s| vm.path().join(s));
    (ro, graceful)
}

/// The stop handle the run obeys: `opts.stop`, or for an adopted runner with
/// `bin/microvm-shutdown` a handle of its own that the [`adopted::GracefulStop`] watcher
/// feeds only when the script did not end the VM in time.
fn stop_handle(
    vm: &VmDir,
    runner: &Runner,
    opts: &ManagedOptions,
    creds: Option<&Credentials>,
) -> (StopHandle, Option<adopted::GracefulStop>) {
    let script = runner.dir.join("bin/microvm-shutdown");
    if !(runner.adopted && script.is_file()) {
        return (opts.stop.clone(), None);
    }
    let inner = StopHandle::default();
    let name = vm.name().to_string();
    let watcher = adopted::GracefulStop::start(
        script,
        vm.path().to_path_buf(),
        creds.map(|c| (c.uid, c.gid)),
        opts.stop.clone(),
        inner.clone(),
        opts.shutdown_timeout,
        move |line| eprintln!("microvm: {name}: {line}"),
    );
    (inner, Some(watcher))
}
