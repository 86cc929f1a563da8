//! The hypervisors without a real-binary test here: cloud-hypervisor, firecracker, crosvm,
//! kvmtool and stratovirt have no package on Debian 12 and none on the registries CI can
//! reach, so their plans are proven by golden files (and the facts of
//! hypervisor-cli-notes.md) alone. This test says which of them this host has, and checks
//! that version detection reads the ones that are installed.

mod common;

use microvm_runner::detect::{self, Detection};
use microvm_spec::types::Hypervisor;

#[test]
fn report_the_other_hypervisors() {
    let config = common::load_fixture(&common::fixtures()[0]);
    for hv in [
        Hypervisor::CloudHypervisor,
        Hypervisor::Firecracker,
        Hypervisor::Crosvm,
        Hypervisor::Kvmtool,
        Hypervisor::Stratovirt,
    ] {
        let mut c = config.clone();
        c.cloud_hypervisor.version = None;
        c.firecracker.version = None;
        c.crosvm.version = None;
        c.kvmtool.version = None;
        c.stratovirt.version = None;
        match detect::detect(hv, &c, None) {
            Detection::Missing { program } => eprintln!(
                "{hv}: {program} is not installed on this host: its plans are proven by golden files only (docs/hypervisors.md)"
            ),
            Detection::Configured { .. } => unreachable!("versions were cleared"),
            d => {
                eprintln!("{hv}: {} (no real-binary plan test for it yet)", d.describe(hv));
                // crosvm prints only its crate version, which counts as unknown.
                if hv != Hypervisor::Crosvm {
                    assert!(d.version().is_some(), "{hv}: {d:?}");
                }
            }
        }
    }
}
