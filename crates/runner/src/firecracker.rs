//! firecracker (inventory §2.3, [later] form, checked against v1.17-dev): one JSON config
//! file, `<name>-firecracker.json` in the working directory, started with
//! `firecracker --config-file <name>-firecracker.json --api-sock <socket> [--enable-pci]`.
//!
//! - The file holds only the sections the current binary accepts (`boot-source`,
//!   `machine-config`, `drives`, `network-interfaces`, `vsock`, and `cpu-config` when
//!   `firecracker.cpu` is set: that template is written to `<name>-firecracker-cpu.json`);
//!   `extraConfig` is merged into it recursively (objects key by key, anything else
//!   replaced). No `balloon`: the capability table refuses it, as the original does.
//! - `drive_id` and `iface_id`: firecracker's API only accepts ids made of ASCII letters,
//!   digits and `_` (its `checked_id`); the original's ids (`var.img`, `vm-vm1`) would
//!   make later API calls on them fail. So other characters become `_`, and an id that
//!   collides with an earlier one (or with `store`) gets `_<n>` appended.
//! - `smt` is only requested on x86_64 with 1 or an even number of vCPUs.
//! - `--enable-pci` for version ≥ 1.13 or an unknown version (the newest syntax).
//! - Shutdown is `SendCtrlAltDel`, which firecracker implements on x86_64 only; on
//!   aarch64 the process gets SIGTERM.

use microvm_spec::config::{Arch, Config, DriveIoEngine, InterfaceType};
use microvm_spec::types::Hypervisor;
use serde_json::{json, Value};

use crate::common::{cmdline, process_name, program, CONTROL_VSOCK_PORT, NOTIFY_VSOCK};
use crate::version::Version;
use crate::{
    Artifacts, Capabilities, ControlChannel, GeneratedFile, HostFacts, Invocation, PlanError,
    PreStart, Shutdown, TapSetup,
};

const HV: Hypervisor = Hypervisor::Firecracker;

fn invalid(message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        hypervisor: HV,
        message: message.into(),
    }
}

/// An id firecracker's API accepts, unique among `taken`.
fn api_id(raw: &str, taken: &mut Vec<String>) -> String {
    let mut id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        id.push('_');
    }
    let base = id.clone();
    let mut n = 1;
    while taken.contains(&id) {
        n += 1;
        id = format!("{base}_{n}");
    }
    taken.push(id.clone());
    id
}

/// `over` merged into `base`: objects key by key, anything else replaced.
pub(crate) fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    let socket = config.socket.clone().ok_or_else(|| {
        invalid("Firecracker must be configured with an API socket (option microvm.socket)!")
    })?;
    let version = match &config.firecracker.version {
        Some(v) => Some(
            v.parse::<Version>()
                .map_err(|e| invalid(format!("firecracker.version: {e}")))?,
        ),
        None => host.version_of(HV).copied(),
    };
    let x86 = config.arch == Arch::X86_64;
    let kernel = match config.arch {
        Arch::X86_64 => artifacts.vmlinux.as_ref().ok_or_else(|| {
            invalid("firecracker boots an uncompressed vmlinux on x86_64, and none was built for this kernel")
        })?,
        Arch::Aarch64 => &artifacts.kernel,
    };
    let kernel_cmdline = cmdline(
        [
            "console=ttyS0,115200",
            "reboot=k",
            "panic=1",
            "i8042.noaux",
            "i8042.nomux",
            "i8042.nopnp",
            "i8042.dumbkbd",
        ],
        config,
    );
    let io_engine = match config.firecracker.drive_io_engine {
        DriveIoEngine::Async => "Async",
        DriveIoEngine::Sync => "Sync",
    };

    let mut taken = vec!["store".to_owned()];
    let mut drives = Vec::new();
    if let Some(store) = &artifacts.store_disk {
        drives.push(json!({
            "drive_id": "store",
            "path_on_host": store.display().to_string(),
            "is_root_device": false,
            "is_read_only": true,
            "io_engine": io_engine,
        }));
    }
    for v in &config.volumes {
        drives.push(json!({
            "drive_id": api_id(&v.image, &mut taken),
            "path_on_host": v.image,
            "is_root_device": false,
            "is_read_only": v.read_only,
            "io_engine": io_engine,
        }));
    }
    let mut taps = Vec::new();
    let mut ifaces = Vec::new();
    let mut taken_ifaces = Vec::new();
    for iface in &config.interfaces {
        if iface.kind != InterfaceType::Tap {
            // Refused by the capability table.
            return Err(invalid(format!(
                "Network interface type {} not implemented for Firecracker",
                iface.kind.name()
            )));
        }
        taps.push(TapSetup {
            name: iface.id.to_string(),
            vnet_hdr: true,
            multi_queue: false,
            bridge: iface.bridge.clone(),
        });
        ifaces.push(json!({
            "iface_id": api_id(iface.id.as_str(), &mut taken_ifaces),
            "host_dev_name": iface.id.as_str(),
            "guest_mac": iface.mac.to_string(),
        }));
    }
    let vsock = match config.vsock.cid {
        Some(cid) => json!({ "guest_cid": cid.0, "uds_path": NOTIFY_VSOCK }),
        None => Value::Null,
    };
    let mut doc = json!({
        "boot-source": {
            "kernel_image_path": kernel.display().to_string(),
            "initrd_path": artifacts.initrd.display().to_string(),
            "boot_args": kernel_cmdline,
        },
        "machine-config": {
            "vcpu_count": config.vcpu,
            "mem_size_mib": config.mem,
            "smt": x86 && (config.vcpu == 1 || config.vcpu & 1 == 0),
        },
        "drives": drives,
        "network-interfaces": ifaces,
        "vsock": vsock,
    });
    let mut files = Vec::new();
    if let Some(cpu) = &config.firecracker.cpu {
        let path = format!("{}-firecracker-cpu.json", config.name);
        files.push(GeneratedFile {
            path: path.clone(),
            contents: pretty(cpu)?,
            mode: 0o644,
        });
        if let Value::Object(m) = &mut doc {
            m.insert("cpu-config".into(), Value::String(path));
        }
    }
    if let Some(extra) = &config.firecracker.extra_config {
        merge(&mut doc, extra);
    }
    let config_file = format!("{}-firecracker.json", config.name);
    files.insert(
        0,
        GeneratedFile {
            path: config_file.clone(),
            contents: pretty(&doc)?,
            mode: 0o644,
        },
    );

    let mut args = vec![
        "--config-file".to_owned(),
        config_file,
        "--api-sock".to_owned(),
        socket.clone(),
    ];
    if !matches!(version, Some(v) if v < Version::new(1, 13, 0)) {
        args.push("--enable-pci".into());
    }
    args.extend(config.firecracker.extra_args.iter().cloned());

    let mut pre_start = vec![PreStart::MoveAside(socket.clone())];
    let control_channel = match (config.vsock.cid, config.uses_own_initrd()) {
        (Some(_), true) => {
            pre_start.push(PreStart::RemoveFile(NOTIFY_VSOCK.into()));
            pre_start.push(PreStart::RemoveFile(format!(
                "{NOTIFY_VSOCK}_{CONTROL_VSOCK_PORT}"
            )));
            Some(ControlChannel::HybridVsock {
                socket: NOTIFY_VSOCK.into(),
                port: CONTROL_VSOCK_PORT,
            })
        }
        (Some(_), false) => {
            pre_start.push(PreStart::RemoveFile(NOTIFY_VSOCK.into()));
            None
        }
        _ => None,
    };
    let shutdown = if x86 {
        Shutdown::Http {
            socket: socket.clone(),
            method: "PUT".into(),
            path: "/actions".into(),
            body: Some(r#"{"action_type": "SendCtrlAltDel"}"#.into()),
        }
    } else {
        Shutdown::Signal {
            signal: "SIGTERM".into(),
        }
    };
    Ok(Invocation {
        hypervisor: HV,
        program: program(config.firecracker.package.as_deref(), "firecracker"),
        args,
        process_name: process_name(config),
        env: Vec::new(),
        files,
        helpers: Vec::new(),
        pre_start,
        control_socket: Some(socket),
        shutdown,
        capabilities: Capabilities {
            can_shutdown: x86,
            supports_notify_socket: false,
            tap_multi_queue: false,
            readiness: control_channel.is_some(),
        },
        control_channel,
        taps,
        macvtap_fds: Vec::new(),
        kernel_cmdline: doc["boot-source"]["boot_args"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        warnings: Vec::new(),
    })
}

fn pretty(v: &Value) -> Result<String, PlanError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| invalid(format!("cannot write JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::example;

    fn fc_example() -> Config {
        let mut c = example();
        c.shares.clear();
        c
    }

    #[test]
    fn example_vm_config_file() {
        let inv = plan(
            &fc_example(),
            &Artifacts::placeholders(),
            &HostFacts::reference(),
        )
        .expect("plan");
        assert_eq!(
            inv.args,
            [
                "--config-file",
                "vm1-firecracker.json",
                "--api-sock",
                "vm1.sock",
                "--enable-pci"
            ]
        );
        let doc: Value = serde_json::from_str(&inv.files[0].contents).expect("json");
        assert_eq!(
            doc["boot-source"]["boot_args"],
            "console=ttyS0,115200 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd init=/sbin/init"
        );
        assert_eq!(doc["drives"][1]["drive_id"], "var_img");
        assert_eq!(doc["drives"][1]["path_on_host"], "var.img");
        assert_eq!(doc["network-interfaces"][0]["iface_id"], "vm_vm1");
        assert_eq!(doc["network-interfaces"][0]["host_dev_name"], "vm-vm1");
        assert_eq!(doc["vsock"], Value::Null);
        assert_eq!(doc["machine-config"]["smt"], true);
        assert_eq!(inv.pre_start, [PreStart::MoveAside("vm1.sock".into())]);
    }

    #[test]
    fn versions_and_extra_config() {
        let mut c = fc_example();
        c.firecracker.version = Some("1.12.0".into());
        c.firecracker.extra_config = Some(
            json!({"machine-config": {"track_dirty_pages": true}, "vsock": {"guest_cid": 9, "uds_path": "x"}}),
        );
        c.firecracker.cpu = Some(json!({"cpuid_modifiers": []}));
        let inv = plan(&c, &Artifacts::placeholders(), &HostFacts::reference()).expect("plan");
        assert!(!inv.args.contains(&"--enable-pci".to_owned()));
        let doc: Value = serde_json::from_str(&inv.files[0].contents).expect("json");
        assert_eq!(doc["machine-config"]["track_dirty_pages"], true);
        assert_eq!(doc["machine-config"]["vcpu_count"], 2);
        assert_eq!(doc["vsock"]["guest_cid"], 9);
        assert_eq!(doc["cpu-config"], "vm1-firecracker-cpu.json");
        assert_eq!(inv.files[1].path, "vm1-firecracker-cpu.json");
    }

    #[test]
    fn ids() {
        let mut taken = vec!["store".to_owned()];
        assert_eq!(api_id("store", &mut taken), "store_2");
        assert_eq!(api_id("a.img", &mut taken), "a_img");
        assert_eq!(api_id("a-img", &mut taken), "a_img_2");
        assert_eq!(api_id("/x/ü", &mut taken), "_x__");
    }
}
