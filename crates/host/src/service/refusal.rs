//! Start failures that waiting cannot change: the one place that tells a refused start
//! (the VM ends `failed` at once, like systemd's `RestartPreventExitStatus=`) from one that
//! may pass on the next try (the restart policy applies). See docs/host.md ("Restart
//! policy").

use serde::{Deserialize, Serialize};

use super::managed::ServiceError;
use crate::net::NetError;
use crate::network::forward::ForwardError;
use crate::supervise::RunError;

/// The exit status of `microvm supervise` after a refused start (sysexits' `EX_CONFIG`);
/// the systemd unit names it in `RestartPreventExitStatus=`.
pub const REFUSED_EXIT: i32 = 78;

/// Why a start was refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// A disk image's lock is held by another process (qemu: `Failed to get "write"
    /// lock`): another VM on this host, or on another host sharing the storage, writes it.
    ImageLocked,
    /// A forwarded host port is another VM's, or the VM's forwarding table is held.
    PortTaken,
    /// An interface of the VM exists and is not microvm's for this VM.
    InterfaceTaken,
    /// The runner is missing or not usable (no `current`, no valid `invocation.json`).
    Runner,
    /// The host refuses the hypervisor's user something it needs (`/dev/net/tun`).
    Access,
}

impl Refusal {
    /// What the status says after the reason.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::ImageLocked => "a disk image is locked by another process",
            Refusal::PortTaken => "a forwarded port is taken",
            Refusal::InterfaceTaken => "an interface is not the VM's",
            Refusal::Runner => "the runner is not usable",
            Refusal::Access => "the host denies the hypervisor's user",
        }
    }

    /// The supervisor's log line for a refused start.
    pub fn log_line(self) -> String {
        format!(
            "start refused ({}): waiting cannot change it, so the VM is not started again",
            self.describe()
        )
    }

    /// The `failed` status's reason: the attempt's `reason`, and that it was refused.
    pub fn status_reason(self, reason: &str) -> String {
        format!("{reason}; refused: {}, not started again", self.describe())
    }
}

/// The refusal `e` is, or `None` when a later start may pass (crashes, timeouts, helpers,
/// I/O, pre-start steps, and KVM failures: one may come of the guest's own doing after it
/// ran for a while).
pub fn classify(e: &ServiceError) -> Option<Refusal> {
    match e {
        ServiceError::NoCurrent { .. }
        | ServiceError::Invocation { .. }
        | ServiceError::UnusableRunner(_) => Some(Refusal::Runner),
        ServiceError::TunAccess { .. } => Some(Refusal::Access),
        ServiceError::Net(NetError::NotOurs { .. }) => Some(Refusal::InterfaceTaken),
        ServiceError::Forward(f) => forward(f),
        ServiceError::Run(RunError::HypervisorFailed {
            program,
            stderr_tail,
            ..
        }) => hypervisor(program, stderr_tail),
        _ => None,
    }
}

fn forward(e: &ForwardError) -> Option<Refusal> {
    match e {
        ForwardError::Clash { .. } | ForwardError::Held { .. } => Some(Refusal::PortTaken),
        ForwardError::NoNetwork { .. } | ForwardError::Runner { .. } => Some(Refusal::Runner),
        // A pool frees up when other VMs stop; an address may be learnt later.
        _ => None,
    }
}

/// A hypervisor that exited before its guest started, by what it wrote last. Only qemu's
/// image-lock error is known (block/file-posix.c: `Failed to get "write" lock`, or
/// `Failed to get shared "write" lock`, followed by `Is another process using the
/// image [PATH]?`); every other early exit may pass.
fn hypervisor(program: &str, stderr_tail: &str) -> Option<Refusal> {
    lock_line(program, stderr_tail).map(|_| Refusal::ImageLocked)
}

/// qemu's line that says it cannot lock an image, from its stderr tail: the reason a
/// refused start gives.
pub fn lock_line<'a>(program: &str, stderr_tail: &'a str) -> Option<&'a str> {
    if !program.starts_with("qemu") {
        return None;
    }
    stderr_tail.lines().map(str::trim_end).find(|l| {
        (l.contains("Failed to get \"") || l.contains("Failed to get shared \""))
            && l.ends_with("\" lock")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::process::ExitStatus;

    fn failed(program: &str, tail: &str) -> ServiceError {
        ServiceError::Run(RunError::HypervisorFailed {
            program: program.into(),
            status: ExitStatus::from_raw(1 << 8),
            stderr_tail: tail.into(),
        })
    }

    const LOCKED: &str = "qemu-system-x86_64: -drive file=/var/lib/microvms/a/data.img,format=raw,if=none,id=vol0: Failed to get \"write\" lock\nIs another process using the image [/var/lib/microvms/a/data.img]?\n";

    #[test]
    fn qemu_image_lock_is_a_refusal() {
        assert_eq!(
            classify(&failed("qemu-system-x86_64", LOCKED)),
            Some(Refusal::ImageLocked)
        );
        let shared = "qemu-system-aarch64: -drive file=x: Failed to get shared \"write\" lock\n";
        assert_eq!(
            classify(&failed("qemu-system-aarch64", shared)),
            Some(Refusal::ImageLocked)
        );
    }

    #[test]
    fn other_early_exits_may_pass() {
        for tail in [
            "",
            "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\n",
            // The guest's own words, or a path that merely mentions a lock.
            "could not open /run/lock/\"x\" lock file\n",
            "Failed to get \"write\" lock, retrying later",
        ] {
            assert_eq!(
                classify(&failed("qemu-system-x86_64", tail)),
                None,
                "{tail}"
            );
        }
        // Only qemu's message is known.
        assert_eq!(classify(&failed("cloud-hypervisor", LOCKED)), None);
    }

    #[test]
    fn typed_refusals() {
        let clash = ServiceError::Forward(ForwardError::Clash {
            vm: "b".into(),
            port: "tcp 8080".into(),
            other: "a".into(),
        });
        assert_eq!(classify(&clash), Some(Refusal::PortTaken));
        let held = ServiceError::Forward(ForwardError::Held {
            vm: "b".into(),
            pid: 7,
        });
        assert_eq!(classify(&held), Some(Refusal::PortTaken));
        let tap = ServiceError::Net(NetError::NotOurs {
            name: "vm-a".into(),
            vm: "b".into(),
            why: "no marker".into(),
        });
        assert_eq!(classify(&tap), Some(Refusal::InterfaceTaken));
        let none = ServiceError::NoCurrent {
            name: "b".into(),
            dir: PathBuf::from("/x"),
        };
        assert_eq!(classify(&none), Some(Refusal::Runner));
        let json = serde_json::from_slice::<serde_json::Value>(b"{").expect_err("truncated json");
        let bad = ServiceError::Invocation {
            path: PathBuf::from("/x/invocation.json"),
            source: json,
        };
        assert_eq!(classify(&bad), Some(Refusal::Runner));
        let gone = ServiceError::UnusableRunner(Box::new(ServiceError::Read {
            path: PathBuf::from("/x/share/microvm/invocation.json"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }));
        assert_eq!(classify(&gone), Some(Refusal::Runner));
        let tun = ServiceError::TunAccess {
            user: "microvm".into(),
            mode: 0o600,
        };
        assert_eq!(classify(&tun), Some(Refusal::Access));
    }

    #[test]
    fn transient_failures_keep_the_restart_policy() {
        let pool = ServiceError::Forward(ForwardError::PoolFull {
            vm: "b".into(),
            network: "n".into(),
            tap: "t".into(),
        });
        assert_eq!(classify(&pool), None);
        assert_eq!(classify(&ServiceError::Prepare("mkfs failed".into())), None);
        let io = ServiceError::Read {
            path: PathBuf::from("/x"),
            source: std::io::Error::other("eio"),
        };
        assert_eq!(classify(&io), None);
        let ready = ServiceError::Run(RunError::NotReady {
            program: "qemu-system-x86_64".into(),
            timeout: std::time::Duration::from_secs(1),
            stderr_tail: LOCKED.into(),
        });
        assert_eq!(classify(&ready), None);
        let kvm = ServiceError::Run(RunError::KvmFailed {
            program: "qemu-system-x86_64".into(),
            line: "KVM internal error. Suberror: 1".into(),
        });
        assert_eq!(classify(&kvm), None);
    }

    #[test]
    fn refusal_kinds_serialize_kebab_case() {
        assert_eq!(
            serde_json::to_string(&Refusal::ImageLocked).expect("json"),
            "\"image-locked\""
        );
    }
}
