//! Resizing a running VM's balloon (`microvm balloon NAME SIZE`) over the control
//! interface the runner recorded ([`BalloonControl`], `share/microvm/balloon.json`). The
//! size is the balloon's: memory taken from the guest, in MiB.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use microvm_runner::host_scripts::BalloonControl;

use crate::{api, qmp};

const TIMEOUT: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("a balloon of {size} MiB is not below the VM's {memory} MiB")]
    TooLarge { size: u64, memory: u64 },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a balloon description: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("QMP")]
    Qmp(#[from] qmp::QmpError),
    #[error("the API socket")]
    Api(#[from] api::ApiError),
    #[error("{0}")]
    Reply(String),
    #[error("{program} balloon failed: {message}")]
    Tool { program: String, message: String },
}

/// The balloon description a runner directory carries, `None` when it has none (no
/// balloon, no control socket, or a hypervisor microvm cannot resize it on).
pub fn load(runner: &Path) -> Result<Option<BalloonControl>, BalloonError> {
    let path = runner.join("share/microvm/balloon.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(BalloonError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| BalloonError::Parse {
            path,
            message: e.to_string(),
        })
}

/// Sets the balloon to `size_mib`; returns the balloon size the hypervisor reports
/// afterwards (it grows as the guest's driver gives memory back), or `size_mib` where
/// the hypervisor does not report one.
pub fn set(c: &BalloonControl, workdir: &Path, size_mib: u64) -> Result<u64, BalloonError> {
    match c {
        BalloonControl::Qmp { socket, memory_mib } => {
            if size_mib >= *memory_mib {
                return Err(BalloonError::TooLarge {
                    size: size_mib,
                    memory: *memory_mib,
                });
            }
            let mut q = qmp::QmpClient::connect(&workdir.join(socket), TIMEOUT)?;
            let left = (memory_mib - size_mib) * MIB;
            q.execute("balloon", Some(serde_json::json!({ "value": left })))?;
            let info = q.execute("query-balloon", None)?;
            let actual = info["actual"]
                .as_u64()
                .ok_or_else(|| BalloonError::Reply(format!("query-balloon answered {info}")))?;
            Ok((memory_mib * MIB).saturating_sub(actual) / MIB)
        }
        BalloonControl::CloudHypervisor { socket } => {
            let body = serde_json::json!({ "desired_balloon_size": size_mib * MIB }).to_string();
            let sock = workdir.join(socket);
            api::request(&sock, "PUT", "/api/v1/vm.resize", Some(&body), TIMEOUT)?;
            Ok(size_mib)
        }
        BalloonControl::Firecracker { socket } => {
            let sock = workdir.join(socket);
            let body = serde_json::json!({ "amount_mib": size_mib }).to_string();
            api::request(&sock, "PATCH", "/balloon", Some(&body), TIMEOUT)?;
            let r = api::request(&sock, "GET", "/balloon", None, TIMEOUT)?;
            let v: serde_json::Value = serde_json::from_str(&r.body)
                .map_err(|e| BalloonError::Reply(format!("GET /balloon: {e}")))?;
            Ok(v["amount_mib"].as_u64().unwrap_or(size_mib))
        }
        BalloonControl::Crosvm { program, socket } => {
            let out = Command::new(program)
                .arg("balloon")
                .arg((size_mib * MIB).to_string())
                .arg(workdir.join(socket))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| BalloonError::Tool {
                    program: program.clone(),
                    message: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(BalloonError::Tool {
                    program: program.clone(),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Ok(size_mib)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real qemu (paused, no guest) with a balloon: the target reaches it over QMP, a
    /// balloon as large as the VM is refused before anything is sent.
    #[test]
    fn qemu_balloon_over_qmp() {
        if Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: qemu-system-x86_64 not found on PATH");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-M", "microvm", "-accel", "tcg", "-m", "256M", "-S"])
            .args(["-nodefaults", "-display", "none"])
            .args(["-device", "virtio-balloon-device"])
            .args(["-qmp", "unix:q.sock,server=on,wait=off"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu");
        let sock = dir.path().join("q.sock");
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let c = BalloonControl::Qmp {
            socket: "q.sock".into(),
            memory_mib: 256,
        };
        let big = set(&c, dir.path(), 256);
        assert!(matches!(big, Err(BalloonError::TooLarge { .. })), "{big:?}");
        // No guest driver: qemu accepts the target; the balloon stays empty.
        let got = set(&c, dir.path(), 64).expect("balloon");
        assert_eq!(got, 0);
        let _ = qemu.kill();
        let _ = qemu.wait();
    }

    #[test]
    fn descriptions_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("load").is_none());
        std::fs::create_dir_all(dir.path().join("share/microvm")).expect("mkdir");
        let c = BalloonControl::Firecracker {
            socket: "fc.sock".into(),
        };
        std::fs::write(
            dir.path().join("share/microvm/balloon.json"),
            serde_json::to_string(&c).expect("json"),
        )
        .expect("write");
        assert_eq!(load(dir.path()).expect("load"), Some(c));
        std::fs::write(dir.path().join("share/microvm/balloon.json"), "{").expect("write");
        assert!(matches!(load(dir.path()), Err(BalloonError::Parse { .. })));
    }
}
