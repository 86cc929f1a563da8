//! Waiting for devices and finding block devices by path, label or virtio serial.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use microvm_init::label;
use microvm_init::plan::DeviceRef;

use super::fail::Failure;

/// How long the init waits for a device the plan names.
pub const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` every 10 ms until it yields a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Resolves a plan's device reference to a device node, waiting for it to appear.
pub fn resolve(device: &DeviceRef) -> Result<String, Failure> {
    let mut labels = HashMap::new();
    wait_for(WAIT, || find(device, &mut labels)).ok_or_else(|| {
        Failure::new(
            format!("find block device {}", describe(device)),
            format!("not present after {} s", WAIT.as_secs()),
        )
    })
}

fn describe(device: &DeviceRef) -> String {
    match device {
        DeviceRef::Path(p) => p.clone(),
        DeviceRef::Label(l) => format!("with label {l:?}"),
        DeviceRef::Serial(s) => format!("with serial {s:?}"),
    }
}

/// One look for `device`; `labels` caches the label of each disk already read.
fn find(device: &DeviceRef, labels: &mut HashMap<String, Option<String>>) -> Option<String> {
    match device {
        DeviceRef::Path(p) => is_block(p).then(|| p.clone()),
        DeviceRef::Serial(serial) => disks().into_iter().find_map(|name| {
            let s = std::fs::read_to_string(format!("/sys/block/{name}/serial")).ok()?;
            let node = format!("/dev/{name}");
            (s.trim() == serial && is_block(&node)).then_some(node)
        }),
        DeviceRef::Label(wanted) => disks().into_iter().find_map(|name| {
            let node = format!("/dev/{name}");
            if !labels.contains_key(&name) {
                if !is_block(&node) {
                    return None;
                }
                labels.insert(name.clone(), read_label(&node));
            }
            (labels.get(&name)?.as_deref() == Some(wanted.as_str())).then_some(node)
        }),
    }
}

/// Whole disks: `/sys/block` without loop, ram and zram devices.
fn disks() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    names
}

fn read_label(node: &str) -> Option<String> {
    let mut head = Vec::with_capacity(label::PROBE_BYTES);
    std::fs::File::open(node)
        .ok()?
        .take(label::PROBE_BYTES as u64)
        .read_to_end(&mut head)
        .ok()?;
    label::label(&head)
}

fn is_block(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    Path::new(path)
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device())
}
