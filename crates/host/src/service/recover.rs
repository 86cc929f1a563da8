//! After a supervisor that died without cleaning up (`kill -9`, an OOM kill, a power cut
//! of its session): the next `status`, `stop`, `start` or `remove` recognises it and does
//! what the supervisor's own teardown would have done.
//!
//! The VM needs recovery when `status.json` says it is live (or `booted` or
//! `supervisor.pid` exist) while no process is the supervisor of that VM. Recovery then
//! kills what is left of its processes (the hypervisor and helpers recorded in `run.json`,
//! only while they still run in the VM's directory, so a reused pid is never signalled),
//! removes the recorded interfaces that carry the VM's alias, its forwarded ports' table
//! (when no live process owns it) and reservations, the sockets the runner's
//! processes create, `booted` and `supervisor.pid`, and writes `status.json` = `failed`.

use std::path::Path;

use crate::net::NetHost;
use crate::state::{now, Status, VmDir, VmState};

use super::{detach, record};

/// What [`recover`] cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The dead supervisor's pid, when it was recorded.
    pub supervisor_pid: Option<u32>,
    /// Processes of the VM that were still running and were killed.
    pub killed: Vec<u32>,
    /// Interfaces removed.
    pub interfaces: Vec<String>,
    /// Whether its forwarded ports' nftables table was removed.
    pub forwards: bool,
}

impl Recovered {
    /// One line for the user.
    pub fn describe(&self, name: &str) -> String {
        let pid = self
            .supervisor_pid
            .map_or_else(String::new, |p| format!(" (pid {p})"));
        let mut what = vec!["status".to_string(), "booted".to_string()];
        if !self.killed.is_empty() {
            what.push(format!("{} leftover process(es)", self.killed.len()));
        }
        if !self.interfaces.is_empty() {
            what.push(format!("interfaces {}", self.interfaces.join(", ")));
        }
        if self.forwards {
            what.push("forwarded ports".into());
        }
        format!(
            "{name}: its supervisor{pid} was gone without cleaning up; cleaned up {}",
            what.join(", ")
        )
    }
}

/// Whether `vm` was left behind by a dead supervisor.
pub fn needs_recovery(vm: &VmDir) -> bool {
    let name = vm.name().as_str();
    let status = vm.status().ok().flatten();
    let recorded = status.as_ref().and_then(|s| s.state.supervisor_pid());
    let pid_file = vm.supervisor_pid();
    if [recorded, pid_file]
        .into_iter()
        .flatten()
        .any(|p| detach::is_supervisor_of(p, name))
    {
        return false;
    }
    recorded.is_some() || pid_file.is_some() || vm.booted().is_some()
}

/// Cleans up after a dead supervisor of `vm`; `None` when there was nothing to do. Call
/// it holding the VM's lock (a supervisor starting meanwhile writes `supervisor.pid`
/// first, and is then recognised as alive).
pub fn recover(vm: &VmDir, net: &NetHost) -> Option<Recovered> {
    if !needs_recovery(vm) {
        return None;
    }
    let status = vm.status().ok().flatten();
    let rec = record::read(vm);
    let mut out = Recovered {
        supervisor_pid: status
            .as_ref()
            .and_then(|s| s.state.supervisor_pid())
            .or_else(|| vm.supervisor_pid()),
        ..Recovered::default()
    };
    if let Some(r) = &rec {
        for pid in r
            .hypervisor_pid
            .iter()
            .chain(r.helpers.iter().map(|h| &h.pid))
        {
            if runs_in(*pid, vm.path()) && detach::signal(*pid as i32, libc::SIGKILL) {
                out.killed.push(*pid);
            }
        }
        let gone = |pid: &u32| !runs_in(*pid, vm.path());
        detach::wait_gone(
            || !out.killed.iter().all(gone),
            std::time::Duration::from_secs(5),
        );
        for name in &r.interfaces {
            if net.link_exists(name)
                && net.link_alias(name).as_deref() == Some(&*format!("microvm:{}", vm.name()))
                && net.delete_link(name).is_ok()
            {
                out.interfaces.push(name.clone());
            }
        }
    }
    if let Some(state) = vm.path().parent() {
        let nets = crate::network::Networks::new(state, crate::network::Tools::system());
        out.forwards = crate::network::forward::recover(&nets, vm.name().as_str());
    }
    let runner = vm
        .booted()
        .or_else(|| rec.as_ref().and_then(|r| r.runner.clone()));
    if let Some(inv) = runner.and_then(|r| super::load_runner(&r).ok()) {
        crate::supervise::remove_created_sockets(&inv.invocation, vm.path());
    }
    crate::supervise::remove_sockets_at(&[vm.path().join("console.sock")]);
    let _ = vm.clear_booted();
    let _ = std::fs::remove_file(vm.supervisor_pid_path());
    let _ = vm.write_status(&Status {
        state: VmState::Failed {
            since: now(),
            exit_code: None,
            reason: "the supervisor was killed; microvm cleaned up after it".into(),
        },
        runner: rec.and_then(|r| r.runner),
    });
    Some(out)
}

/// Whether process `pid` is alive and its working directory is `dir` (the supervisor
/// starts the hypervisor and its helpers there).
fn runs_in(pid: u32, dir: &Path) -> bool {
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return false;
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    cwd == dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::record::RunRecord;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_dead_supervisor_is_recognised_and_cleaned_up_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let name: microvm_spec::types::VmName = "rec".parse().expect("name");
        let vm = VmDir::at(&name, dir.path().join("rec"));
        std::fs::create_dir_all(vm.path()).expect("mkdir");
        let runner = dir.path().join("runner");
        std::fs::create_dir_all(&runner).expect("runner");
        vm.set_current(&runner).expect("current");
        vm.set_booted(&runner).expect("booted");
        // A "hypervisor" left running in the VM directory, and a dead supervisor pid.
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .current_dir(vm.path())
            .process_group(0)
            .spawn()
            .expect("sleep");
        let dead = {
            let mut c = std::process::Command::new("true").spawn().expect("true");
            let pid = c.id();
            c.wait().expect("wait");
            pid
        };
        vm.write_supervisor_pid(dead).expect("pid");
        vm.write_status(&Status {
            state: VmState::Running {
                supervisor_pid: dead,
                hypervisor_pid: Some(child.id()),
                since: now(),
            },
            runner: Some(runner.clone()),
        })
        .expect("status");
        let rec = RunRecord {
            supervisor_pid: dead,
            hypervisor_pid: Some(child.id()),
            runner: Some(runner),
            ..RunRecord::default()
        };
        record::write(&vm, &rec).expect("record");
        std::fs::write(vm.path().join("stale"), "").expect("w");

        assert!(needs_recovery(&vm));
        let got = recover(&vm, &NetHost::system()).expect("recovered");
        assert_eq!(got.killed, [child.id()]);
        assert!(child.wait().expect("wait").code().is_none(), "killed");
        assert!(vm.booted().is_none() && vm.supervisor_pid().is_none());
        let status = vm.status().expect("read").expect("status");
        assert!(matches!(status.state, VmState::Failed { .. }), "{status:?}");
        assert!(
            got.describe("rec").contains("its supervisor (pid"),
            "{got:?}"
        );
        assert!(!needs_recovery(&vm), "nothing left to do");
        assert!(recover(&vm, &NetHost::system()).is_none());
    }
}
