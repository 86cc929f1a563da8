//! Remembering the probe's verdict for the rest of the host's boot, so that `build` and
//! `run` do not pay for a test guest (up to the probe deadline on a host whose KVM is
//! broken) every time. The verdict is keyed by the kernel's boot id and the identity of
//! the KVM device node, so a reboot, a reloaded module or a different device probes again.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{probe_device, KvmProbe, KvmStatus, DEFAULT_DEADLINE};

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    key: String,
    usable: bool,
    reason: String,
}

/// The key of a verdict: boot id, device rdev, inode and change time.
fn key(dev: &Path) -> Option<String> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let meta = fs::metadata(dev).ok()?;
    Some(format!(
        "{}:{:x}:{}:{}",
        boot.trim(),
        meta.rdev(),
        meta.ino(),
        meta.ctime()
    ))
}

/// [`probe_device`] on `/dev/kvm`, with the verdict cached in `cache_file` (for example
/// `/run/microvm/kvm-probe.json`, which a reboot clears). A missing or unreadable cache
/// just means probing; failing to write it is ignored.
pub fn probe_cached(cache_file: &Path) -> KvmProbe {
    let dev = Path::new("/dev/kvm");
    let Some(key) = key(dev) else {
        return probe_device(dev, DEFAULT_DEADLINE);
    };
    if let Some(entry) = fs::read(cache_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
    {
        if entry.key == key {
            let status = if entry.usable {
                KvmStatus::Usable
            } else {
                KvmStatus::Unusable {
                    reason: entry.reason,
                }
            };
            return KvmProbe {
                status,
                elapsed: std::time::Duration::ZERO,
            };
        }
    }
    let probe = probe_device(dev, DEFAULT_DEADLINE);
    let (usable, reason) = match &probe.status {
        KvmStatus::Usable => (true, String::new()),
        KvmStatus::Unusable { reason } => (false, reason.clone()),
    };
    let entry = Entry {
        key,
        usable,
        reason,
    };
    if let (Some(dir), Ok(bytes)) = (cache_file.parent(), serde_json::to_vec(&entry)) {
        let tmp = cache_file.with_extension(format!("tmp{}", std::process::id()));
        if fs::create_dir_all(dir).is_ok()
            && fs::write(&tmp, bytes).is_ok()
            && fs::rename(&tmp, cache_file).is_err()
        {
            let _ = fs::remove_file(&tmp);
        }
    }
    probe
}
