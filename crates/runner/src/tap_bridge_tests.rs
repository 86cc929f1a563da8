//! Every hypervisor that takes taps plans them with the interface's bridge (#247), so the
//! supervisor attaches them to it.

use microvm_spec::types::Hypervisor;

use crate::testutil::example;
use crate::{plan_for, Artifacts, HostFacts};

#[test]
fn taps_carry_their_bridge_on_every_hypervisor() {
    let mut c = example();
    c.shares.clear();
    c.interfaces[0].bridge = Some("microvm0".into());
    for hv in [
        Hypervisor::Qemu,
        Hypervisor::CloudHypervisor,
        Hypervisor::Firecracker,
        Hypervisor::Crosvm,
        Hypervisor::Kvmtool,
        Hypervisor::Stratovirt,
        Hypervisor::Alioth,
    ] {
        c.hypervisor = hv;
        let inv = plan_for(hv, &c, &Artifacts::placeholders(), &HostFacts::reference())
            .unwrap_or_else(|e| panic!("{hv:?}: {e}"));
        assert_eq!(inv.taps.len(), 1, "{hv:?}");
        assert_eq!(inv.taps[0].bridge.as_deref(), Some("microvm0"), "{hv:?}");
    }
}
