//! The range of every number in the schema, as one table: what the hypervisors can
//! actually run, so that `check` refuses a value before a planner sizes anything by it
//! (a `vcpu` of 2^31 once made a macvtap plan allocate 8 GiB).
//!
//! A key is written as its key path with `[]` for "every entry of a list"
//! (`volumes[].size`). [`check`] walks a [`Spec`] and reports every value out of range;
//! the resolver uses [`within`] to fall back to its default for such a value.

use crate::node::KeyPath;
use crate::schema::{Spec, ThreadPoolSize};
use crate::types::Hypervisor;

/// One numeric key: its inclusive range, the unit shown in messages, and why the bound.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    /// Shown after the numbers (" MiB"), or empty.
    pub unit: &'static str,
    /// Why the maximum: the end of "the most …".
    pub why: &'static str,
    /// A lower maximum for one hypervisor.
    pub per_hypervisor: &'static [(Hypervisor, u64)],
}

const TIB_IN_MIB: u64 = 1 << 20;

/// Every numeric key of the schema. `vsock.cid` is checked by its type (`VsockCid`).
pub const RANGES: &[Range] = &[
    Range {
        key: "vcpu",
        min: 1,
        max: 255,
        unit: "",
        why: "a supported hypervisor boots (x86 APIC ids)",
        per_hypervisor: &[(Hypervisor::Firecracker, 32)],
    },
    Range {
        key: "mem",
        min: 1,
        max: 16 * TIB_IN_MIB,
        unit: " MB",
        why: "a supported hypervisor maps",
        per_hypervisor: &[],
    },
    Range {
        key: "hotplugMem",
        min: 0,
        max: 16 * TIB_IN_MIB,
        unit: " MB",
        why: "a supported hypervisor maps",
        per_hypervisor: &[],
    },
    Range {
        key: "hotpluggedMem",
        min: 0,
        max: 16 * TIB_IN_MIB,
        unit: " MB",
        why: "a supported hypervisor maps",
        per_hypervisor: &[],
    },
    Range {
        key: "initialBalloonMem",
        min: 0,
        max: 16 * TIB_IN_MIB,
        unit: " MB",
        why: "a supported hypervisor maps",
        per_hypervisor: &[],
    },
    Range {
        key: "volumes[].size",
        min: 1,
        max: 64 * TIB_IN_MIB,
        unit: " MiB",
        why: "a volume image may hold here",
        per_hypervisor: &[],
    },
    Range {
        key: "forwardPorts[].host.port",
        min: 1,
        max: 65535,
        unit: "",
        why: "a TCP or UDP port can be",
        per_hypervisor: &[],
    },
    Range {
        key: "forwardPorts[].guest.port",
        min: 1,
        max: 65535,
        unit: "",
        why: "a TCP or UDP port can be",
        per_hypervisor: &[],
    },
    Range {
        key: "network[].mtu",
        min: 68,
        max: 65535,
        unit: "",
        why: "Linux sets on an interface",
        per_hypervisor: &[],
    },
    Range {
        key: "qemu.pcieRootPorts[].chassis",
        min: 0,
        max: 255,
        unit: "",
        why: "qemu's pcie-root-port takes (8 bits)",
        per_hypervisor: &[],
    },
    Range {
        key: "qemu.pcieRootPorts[].slot",
        min: 0,
        max: 255,
        unit: "",
        why: "a PCIe slot number can be here",
        per_hypervisor: &[],
    },
    Range {
        key: "virtiofsd.threadPoolSize",
        min: 0,
        max: 1024,
        unit: "",
        why: "virtiofsd threads microvm starts",
        per_hypervisor: &[],
    },
];

/// The range of `key` (as written in [`RANGES`]).
///
/// # Panics
/// When `key` is not in the table: a programming error caught by the unit tests.
pub fn range(key: &str) -> &'static Range {
    RANGES
        .iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("no range for {key}"))
}

impl Range {
    /// The maximum for `hypervisor`.
    pub fn max_for(&self, hypervisor: Hypervisor) -> u64 {
        self.per_hypervisor
            .iter()
            .find(|(h, _)| *h == hypervisor)
            .map_or(self.max, |&(_, m)| m.min(self.max))
    }

    /// The complaint about `value`, or `None` when it is in range.
    pub fn complaint(&self, hypervisor: Hypervisor, value: u64) -> Option<String> {
        let unit = self.unit;
        if value < self.min {
            return Some(format!(
                "must be at least {}{unit}, found {value}",
                self.min
            ));
        }
        let max = self.max_for(hypervisor);
        if value > max {
            return Some(if max < self.max {
                format!(
                    "{value}{unit} is more than {max}{unit}, the most {} runs",
                    hypervisor.name()
                )
            } else {
                format!(
                    "{value}{unit} is more than {max}{unit}, the most {}",
                    self.why
                )
            });
        }
        None
    }
}

/// Whether `value` of `key` is in range for `hypervisor`.
pub fn within(key: &str, hypervisor: Hypervisor, value: u64) -> bool {
    range(key).complaint(hypervisor, value).is_none()
}

/// Every value of `spec` out of range, with its key path.
pub fn check(spec: &Spec, hypervisor: Hypervisor) -> Vec<(KeyPath, String)> {
    let root = KeyPath::root();
    let mut values: Vec<(&str, KeyPath, u64)> = Vec::new();
    let mut one = |key: &'static str, path: KeyPath, v: Option<u64>| {
        if let Some(v) = v {
            values.push((key, path, v));
        }
    };
    one("vcpu", root.key("vcpu"), spec.vcpu);
    one("mem", root.key("mem"), spec.mem);
    one("hotplugMem", root.key("hotplugMem"), spec.hotplug_mem);
    one(
        "hotpluggedMem",
        root.key("hotpluggedMem"),
        spec.hotplugged_mem,
    );
    one(
        "initialBalloonMem",
        root.key("initialBalloonMem"),
        spec.initial_balloon_mem,
    );
    for (i, v) in spec.volumes.iter().enumerate() {
        one(
            "volumes[].size",
            root.key("volumes").index(i).key("size"),
            v.size,
        );
    }
    for (i, f) in spec.forward_ports.iter().enumerate() {
        let p = root.key("forwardPorts").index(i);
        one(
            "forwardPorts[].host.port",
            p.key("host").key("port"),
            f.host.port,
        );
        one(
            "forwardPorts[].guest.port",
            p.key("guest").key("port"),
            f.guest.port,
        );
    }
    for (i, n) in spec.network.iter().enumerate() {
        one(
            "network[].mtu",
            root.key("network").index(i).key("mtu"),
            n.mtu,
        );
    }
    for (i, port) in spec.qemu.pcie_root_ports.iter().enumerate() {
        let p = root.key("qemu").key("pcieRootPorts").index(i);
        one(
            "qemu.pcieRootPorts[].chassis",
            p.key("chassis"),
            port.chassis,
        );
        one("qemu.pcieRootPorts[].slot", p.key("slot"), port.slot);
    }
    if let Some(ThreadPoolSize::Count(n)) = spec.virtiofsd.thread_pool_size {
        one(
            "virtiofsd.threadPoolSize",
            root.key("virtiofsd").key("threadPoolSize"),
            Some(n),
        );
    }
    values
        .into_iter()
        .filter_map(|(key, path, v)| range(key).complaint(hypervisor, v).map(|m| (path, m)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_sane_and_listed_once() {
        for (i, r) in RANGES.iter().enumerate() {
            assert!(r.min <= r.max, "{}", r.key);
            assert!(
                RANGES[..i].iter().all(|o| o.key != r.key),
                "{} twice",
                r.key
            );
            for &(_, m) in r.per_hypervisor {
                assert!(m >= r.min && m <= r.max, "{}", r.key);
            }
        }
    }

    #[test]
    fn complaints() {
        let qemu = Hypervisor::Qemu;
        let vcpu = range("vcpu");
        assert_eq!(vcpu.complaint(qemu, 1), None);
        assert_eq!(vcpu.complaint(qemu, 255), None);
        assert_eq!(
            vcpu.complaint(qemu, 0).as_deref(),
            Some("must be at least 1, found 0")
        );
        assert_eq!(
            vcpu.complaint(qemu, 2_147_483_648).as_deref(),
            Some(
                "2147483648 is more than 255, the most a supported hypervisor boots (x86 APIC ids)"
            )
        );
        assert_eq!(
            vcpu.complaint(Hypervisor::Firecracker, 33).as_deref(),
            Some("33 is more than 32, the most firecracker runs")
        );
        assert!(within("mem", qemu, 512));
        assert!(!within("mem", qemu, u64::MAX));
    }
}
