//! The capability matrix, as data: one row per feature, one cell per hypervisor. Plan-time
//! errors, warnings and the README's hypervisor table all come from [`TABLE`].
//!
//! Messages are microvm.nix's own wording where it has one (inventory §2.1–§2.7), so users
//! of the original recognise them. Rows marked `checked: false` only document behaviour
//! (control socket, shutdown, multi-queue, readiness); planners implement those.

use std::fmt::Write as _;

use microvm_spec::config::{Config, DeviceBus, ImageType, InterfaceType, KvmMode, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::PlanError;

/// What one hypervisor does with one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Supported,
    /// Refused at plan time with this message.
    Unsupported(&'static str),
    /// Accepted, does nothing, and the plan carries this warning.
    Ignored(&'static str),
    /// Supported with a caveat, or (in documentation rows) how it is done.
    Partial(&'static str),
}

use Cell::{Ignored as I, Partial as P, Supported as S, Unsupported as U};

/// A feature a configuration may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    ChangeUser,
    NoStoreDisk,
    NoSocket,
    NinePShare,
    ReadOnlyNinePShare,
    VirtiofsShare,
    UserNet,
    TapNet,
    MacvtapNet,
    BridgeNet,
    ForwardPorts,
    Vsock,
    Balloon,
    InitialBalloonMem,
    HotplugMem,
    HotpluggedMem,
    HugepageMem,
    PciPassthrough,
    UsbPassthrough,
    Graphics,
    CredentialFiles,
    CpuEmulation,
    NoKvm,
    VolumeSerial,
    Qcow2Volume,
    VolumeDirect,
    ControlSocket,
    GracefulShutdown,
    TapMultiQueue,
    Readiness,
}

/// One row of the matrix. Cells follow [`Hypervisor::LINUX`].
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub feature: Feature,
    /// How the feature is named in errors and in the README.
    pub name: &'static str,
    /// Whether [`check`] and [`warnings`] consult this row (else documentation only).
    pub checked: bool,
    pub cells: [Cell; 7],
}

const fn row(feature: Feature, name: &'static str, cells: [Cell; 7]) -> Row {
    Row {
        feature,
        name,
        checked: true,
        cells,
    }
}
const fn doc(feature: Feature, name: &'static str, cells: [Cell; 7]) -> Row {
    Row {
        feature,
        name,
        checked: false,
        cells,
    }
}

#[rustfmt::skip]
pub static TABLE: &[Row] = &[
    //                                                   qemu, cloud-hypervisor, firecracker, crosvm, kvmtool, stratovirt, alioth
    row(Feature::ChangeUser, "change user (`user`)", [S, U("cloud-hypervisor will not change user"), U("firecracker will not change user"), U("crosvm will not change user"), U("kvmtool will not change user"), I("stratovirt ignores `user`: it does not change user"), U("alioth will not change user")]),
    row(Feature::NoStoreDisk, "`storeOnDisk = false`", [S, S, U("firecracker always boots with the store disk: `storeOnDisk = false` is not possible"), S, S, S, S]),
    row(Feature::NoSocket, "no control socket (`socket = null`)", [S, S, U("Firecracker must be configured with an API socket (option microvm.socket)!"), S, S, U("stratovirt must be configured with a QMP socket (option microvm.socket)"), S]),
    row(Feature::NinePShare, "9p shares", [S, U("cloud-hypervisor supports only shares that are virtiofs"), U("9p/virtiofs shares not implemented for Firecracker"), P("emitted as `--shared-dir …:type=p9`; microvm.nix marks it broken"), S, U("9p shares not implemented for stratovirt"), U("9p shares not implemented for alioth")]),
    row(Feature::ReadOnlyNinePShare, "read-only 9p shares", [S, U("cloud-hypervisor supports only shares that are virtiofs"), U("9p/virtiofs shares not implemented for Firecracker"), U("Readonly 9p share is not supported"), U("Readonly 9p share is not supported"), U("9p shares not implemented for stratovirt"), U("9p shares not implemented for alioth")]),
    row(Feature::VirtiofsShare, "virtiofs shares", [S, S, U("9p/virtiofs shares not implemented for Firecracker"), S, U("virtiofs shares not implemented for kvmtool"), P("with `mem-share=on`"), S]),
    row(Feature::UserNet, "`user` interfaces", [S, U("Unsupported interface type user for Cloud-Hypervisor"), U("Network interface type user not implemented for Firecracker"), U("Unsupported interface type user for crosvm"), P("no DHCP: the guest needs a static address"), U("interface type user is not supported by stratovirt"), U("interface type user is not supported by alioth")]),
    row(Feature::TapNet, "`tap` interfaces", [S, S, S, S, S, S, S]),
    row(Feature::MacvtapNet, "`macvtap` interfaces", [S, S, U("Network interface type macvtap not implemented for Firecracker"), S, S, S, P("one queue, as `tap=/dev/fd/N`")]),
    row(Feature::BridgeNet, "`bridge` interfaces", [S, U("Unsupported interface type bridge for Cloud-Hypervisor"), U("Network interface type bridge not implemented for Firecracker"), U("Unsupported interface type bridge for crosvm"), U("interface type bridge is not supported by kvmtool"), U("interface type bridge is not supported by stratovirt"), U("interface type bridge is not supported by alioth")]),
    row(Feature::ForwardPorts, "`forwardPorts`", [P("`user`: hostfwd; `tap`: nftables DNAT"), P(FWD), P(FWD), P(FWD), P(FWD), P(FWD), P(FWD)]),
    row(Feature::Vsock, "vsock (`vsock.cid`)", [S, S, S, S, S, I("stratovirt ignores `vsock.cid`"), S]),
    row(Feature::Balloon, "balloon", [S, S, P("config file `balloon`, sized with `PATCH /balloon`"), S, S, P("`virtio-balloon-device`, sized with QMP `balloon`"), P("free page reporting only: alioth has no control socket to size it")]),
    row(Feature::InitialBalloonMem, "`initialBalloonMem`", [U("qemu does not support initialBalloonMem"), S, P("as the balloon's `amount_mib`"), U("crosvm does not support initialBalloonMem"), U("kvmtool does not support initialBalloonMem"), U("initialBalloonMem not implemented for stratovirt"), U("initialBalloonMem not implemented for alioth")]),
    row(Feature::HotplugMem, "`hotplugMem`", [U("qemu does not support hotplugMem"), S, U("hotplugMem not implemented for Firecracker"), U("crosvm does not support hotplugMem"), U("kvmtool does not support hotplugMem"), U("stratovirt does not support hotplugMem"), U("alioth does not support hotplugMem")]),
    row(Feature::HotpluggedMem, "`hotpluggedMem`", [U("qemu does not support hotpluggedMem"), S, U("hotpluggedMem not implemented for Firecracker"), U("crosvm does not support hotpluggedMem"), U("kvmtool does not support hotpluggedMem"), U("stratovirt does not support hotpluggedMem"), U("alioth does not support hotpluggedMem")]),
    row(Feature::HugepageMem, "`hugepageMem`", [I(HUGE), S, I(HUGE), I(HUGE), I(HUGE), I(HUGE), I(HUGE)]),
    row(Feature::PciPassthrough, "PCI passthrough", [S, S, U("devices passthrough not implemented for Firecracker"), S, S, U("PCI configuration for stratovirt is non-functional"), U("PCI/USB passthrough is not supported on alioth")]),
    row(Feature::UsbPassthrough, "USB passthrough", [S, U("USB passthrough is not supported on cloud-hypervisor"), U("devices passthrough not implemented for Firecracker"), U("USB passthrough is not supported on crosvm"), U("USB passthrough is not supported on kvmtool"), U("USB passthrough needs an xHCI PCI controller, which stratovirt's microvm machine lacks"), U("PCI/USB passthrough is not supported on alioth")]),
    row(Feature::Graphics, "graphics", [S, P("crosvm vhost-user GPU device"), I("firecracker has no graphics: `graphics.enable` is ignored"), P("crosvm GPU device"), I("kvmtool has no graphics: `graphics.enable` is ignored"), I("stratovirt ignores `graphics.enable`"), I("alioth has no graphics: `graphics.enable` is ignored")]),
    row(Feature::CredentialFiles, "`credentialFiles`", [S, U("cloud-hypervisor does not support credentialFiles"), U("firecracker does not support credentialFiles"), U("crosvm does not support credentialFiles"), U("kvmtool does not support credentialFiles"), U("stratovirt does not support credentialFiles"), U("alioth does not support credentialFiles")]),
    row(Feature::CpuEmulation, "CPU emulation (`cpu`)", [S, I(CPU), I(CPU), I(CPU), I(CPU), I(CPU), I(CPU)]),
    row(Feature::NoKvm, "without KVM (`kvm = \"disabled\"`)", [P("TCG"), U(KVM), U(KVM), U(KVM), U(KVM), U(KVM), U(KVM)]),
    row(Feature::VolumeSerial, "volume `serial`", [S, S, I("Volume serial is not supported for firecracker"), P("as `id=`"), I("Volume serial is not supported for kvmtool"), S, I("Volume serial is not supported for alioth")]),
    row(Feature::Qcow2Volume, "qcow2 volumes (`imageType = \"qcow2\"`)", [S, S, U("firecracker opens every disk as raw, so the guest would see the qcow2 bytes: convert the image with `qemu-img convert -O raw`"), S, S, U("stratovirt's microvm machine takes raw disks only, so the guest would see the qcow2 bytes: convert the image with `qemu-img convert -O raw`"), U("alioth opens every disk as raw, so the guest would see the qcow2 bytes: convert the image with `qemu-img convert -O raw`")]),
    row(Feature::VolumeDirect, "volume `direct`", [S, S, I("Volume direct IO is not supported for firecracker"), S, S, S, I("Volume direct IO is not supported for alioth")]),
    doc(Feature::ControlSocket, "control socket", [P("QMP"), P("`--api-socket`"), P("`--api-sock` (mandatory)"), P("`-s`"), U("none"), P("QMP"), U("none")]),
    doc(Feature::GracefulShutdown, "graceful shutdown", [P("QMP `system_powerdown`"), P("`PUT vm.power-button`"), P("`SendCtrlAltDel`"), P("`crosvm powerbtn`"), U("no: SIGTERM"), U("no: SIGTERM"), U("no: SIGTERM")]),
    doc(Feature::TapMultiQueue, "tap multi-queue (vcpu > 1)", [S, S, U("no"), U("no"), U("no"), S, P("`qp=<vcpu>`")]),
    doc(Feature::Readiness, "readiness, exit status, systemd notify", [P("virtio-serial control channel"), P("vsock (with `vsock.cid`), else the serial console"), P("vsock (with `vsock.cid`), else the serial console"), P("serial console"), P("serial console"), P("serial console"), P("serial console")]),
];

const FWD: &str = "`tap`: nftables DNAT";
const HUGE: &str = "`hugepageMem` is only implemented for cloud-hypervisor; ignored";
const CPU: &str = "`cpu` (CPU model emulation) is only implemented for qemu; ignored";
const KVM: &str = "this hypervisor needs KVM; only qemu runs without it (TCG)";

fn column(hypervisor: Hypervisor) -> Option<usize> {
    Hypervisor::LINUX.iter().position(|h| *h == hypervisor)
}

/// Whether `config` uses `feature`.
pub fn uses(feature: Feature, config: &Config) -> bool {
    let has_iface = |t: InterfaceType| config.interfaces.iter().any(|i| i.kind == t);
    let has_share = |p: ShareProto| config.shares.iter().any(|s| s.proto == p);
    let has_dev = |b: DeviceBus| config.devices.iter().any(|d| d.bus == b);
    match feature {
        Feature::ChangeUser => config.user.is_some(),
        Feature::NoStoreDisk => !config.store_on_disk,
        Feature::NoSocket => config.socket.is_none(),
        Feature::NinePShare => has_share(ShareProto::NineP),
        Feature::ReadOnlyNinePShare => config
            .shares
            .iter()
            .any(|s| s.proto == ShareProto::NineP && s.read_only),
        Feature::VirtiofsShare => has_share(ShareProto::Virtiofs),
        Feature::UserNet => has_iface(InterfaceType::User),
        Feature::TapNet => has_iface(InterfaceType::Tap),
        Feature::MacvtapNet => has_iface(InterfaceType::Macvtap),
        Feature::BridgeNet => has_iface(InterfaceType::Bridge),
        Feature::ForwardPorts => !config.forward_ports.is_empty(),
        Feature::Vsock => config.vsock.cid.is_some(),
        Feature::Balloon => config.balloon,
        Feature::InitialBalloonMem => config.initial_balloon_mem != 0,
        Feature::HotplugMem => config.hotplug_mem != 0,
        Feature::HotpluggedMem => config.hotplugged_mem != 0,
        Feature::HugepageMem => config.hugepage_mem,
        Feature::PciPassthrough => has_dev(DeviceBus::Pci),
        Feature::UsbPassthrough => has_dev(DeviceBus::Usb),
        Feature::Graphics => config.graphics.enable,
        Feature::CredentialFiles => !config.credential_files.is_empty(),
        Feature::CpuEmulation => config.cpu.is_some(),
        Feature::NoKvm => config.kvm == KvmMode::Disabled,
        Feature::VolumeSerial => config.volumes.iter().any(|v| v.serial.is_some()),
        Feature::Qcow2Volume => config
            .volumes
            .iter()
            .any(|v| v.image_type == ImageType::Qcow2),
        Feature::VolumeDirect => config.volumes.iter().any(|v| v.direct),
        Feature::ControlSocket => config.socket.is_some(),
        Feature::GracefulShutdown | Feature::TapMultiQueue | Feature::Readiness => true,
    }
}

/// The cell of `feature` for `hypervisor` (`None` for vfkit, which has no column).
pub fn cell(hypervisor: Hypervisor, feature: Feature) -> Option<Cell> {
    let col = column(hypervisor)?;
    TABLE
        .iter()
        .find(|r| r.feature == feature)
        .map(|r| r.cells[col])
}

fn failures(hypervisor: Hypervisor, config: &Config) -> impl Iterator<Item = PlanError> + '_ {
    let col = column(hypervisor);
    let mut seen: Vec<&'static str> = Vec::new();
    TABLE.iter().filter_map(move |r| {
        let col = col?;
        match r.cells[col] {
            Cell::Unsupported(reason) if r.checked && uses(r.feature, config) => {
                if seen.contains(&reason) {
                    return None;
                }
                seen.push(reason);
                Some(PlanError::Unsupported {
                    hypervisor,
                    feature: r.name.to_owned(),
                    reason: reason.to_owned(),
                })
            }
            _ => None,
        }
    })
}

/// The first feature `config` uses that `hypervisor` refuses.
pub fn check(hypervisor: Hypervisor, config: &Config) -> Result<(), PlanError> {
    match failures(hypervisor, config).next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Every feature `config` uses that `hypervisor` refuses (one error per distinct message).
pub fn check_all(hypervisor: Hypervisor, config: &Config) -> Vec<PlanError> {
    failures(hypervisor, config).collect()
}

/// The warnings for features `config` uses that `hypervisor` ignores, in table order.
pub fn warnings(hypervisor: Hypervisor, config: &Config) -> Vec<String> {
    let Some(col) = column(hypervisor) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for r in TABLE
        .iter()
        .filter(|r| r.checked && uses(r.feature, config))
    {
        if let Cell::Ignored(w) = r.cells[col] {
            if !out.iter().any(|o| o == w) {
                out.push(w.to_owned());
            }
        }
    }
    out
}

fn cell_text(cell: Cell) -> String {
    match cell {
        Cell::Supported => "yes".to_owned(),
        Cell::Unsupported(_) => "no".to_owned(),
        Cell::Ignored(_) => "ignored".to_owned(),
        Cell::Partial(note) => note.replace('|', "\\|"),
    }
}

/// The matrix as a Markdown table (the README's hypervisor table).
pub fn markdown_table() -> String {
    let mut out = String::from("| Feature |");
    for h in Hypervisor::LINUX {
        let _ = write!(out, " {h} |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Hypervisor::LINUX.len()));
    out.push('\n');
    for r in TABLE {
        let _ = write!(out, "| {} |", r.name);
        for c in r.cells {
            let _ = write!(out, " {} |", cell_text(c));
        }
        out.push('\n');
    }
    out.push_str(
        "\n\"no\" is refused when the VM is planned, naming the hypervisor and the feature; \
         \"ignored\" is accepted with a warning.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_has_one_row() {
        for (i, r) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|o| o.feature != r.feature),
                "{:?} appears twice",
                r.feature
            );
        }
    }

    #[test]
    fn original_messages() {
        assert_eq!(
            cell(Hypervisor::Firecracker, Feature::VirtiofsShare),
            Some(Cell::Unsupported(
                "9p/virtiofs shares not implemented for Firecracker"
            ))
        );
        assert_eq!(
            cell(Hypervisor::Kvmtool, Feature::VolumeSerial),
            Some(Cell::Ignored("Volume serial is not supported for kvmtool"))
        );
        assert_eq!(
            cell(Hypervisor::Qemu, Feature::NinePShare),
            Some(Cell::Supported)
        );
        assert_eq!(cell(Hypervisor::Vfkit, Feature::NinePShare), None);
    }

    #[test]
    fn markdown_has_a_line_per_row() {
        let md = markdown_table();
        assert_eq!(
            md.lines().filter(|l| l.starts_with("| ")).count(),
            TABLE.len() + 1
        );
        assert!(md.contains("| 9p shares | yes | no | no |"));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::testutil::example;

    #[test]
    fn check_and_check_all() {
        let c = example();
        assert!(check(Hypervisor::Qemu, &c).is_ok());
        let e = check(Hypervisor::Firecracker, &c).expect_err("virtiofs");
        assert_eq!(
            e.to_string(),
            "firecracker does not support virtiofs shares: 9p/virtiofs shares not implemented for Firecracker"
        );
        let mut c2 = c.clone();
        c2.user = Some("alice".into());
        c2.balloon = true;
        let all = check_all(Hypervisor::Firecracker, &c2);
        assert_eq!(all.len(), 2, "{all:?}");
        // The real binaries take a balloon (hypervisor-cli-notes, second round).
        for hv in [
            Hypervisor::Firecracker,
            Hypervisor::Stratovirt,
            Hypervisor::Alioth,
        ] {
            assert!(!check_all(hv, &c2)
                .iter()
                .any(|e| e.to_string().contains("balloon")));
        }
        assert_eq!(
            warnings(Hypervisor::Stratovirt, &c2),
            ["stratovirt ignores `user`: it does not change user"]
        );
    }
}
