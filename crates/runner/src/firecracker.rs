//! firecracker (inventory §2.3, [later] form, checked against v1.17-dev): one JSON config
//! file, `<name>-firecracker.json` in the working directory, started with
//! `firecracker --config-file <name>-firecracker.json --api-sock <socket> [--enable-pci]`.
//!
//! - The file holds only the sections the current binary accepts (`boot-source`,
//!   `machine-config`, `drives`, `network-interfaces`, `vsock`, and `cpu-config` when
//!   `firecracker.cpu` is set: that template is written to `<name>-firecracker-cpu.json`);
//!   `extraConfig` is merged into it recursively (objects key by key, anything else
//!   replaced). With `balloon` (refused by the original) the file has a `balloon` section
//!   (`amount_mib` = `initialBalloonMem`, `deflate_on_oom`, `free_page_reporting`), which
//!   firecracker 1.16 accepts and resizes at run time with `PATCH /balloon`.
//! - qcow2 volumes are refused (capability table): firecracker reads every disk as raw.
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

use crate::argv::Out;
use crate::common::{cmdline, process_name, program, CONTROL_VSOCK_PORT, NOTIFY_VSOCK};
use crate::version::Version;
use crate::{
    Artifacts, Capabilities, ControlChannel, GeneratedFile, HostFacts, Invocation, PlanError,
    PreStart, Shutdown,
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
    let mut out = Out::default();
    if config.balloon && config.initial_balloon_mem >= config.mem {
        return Err(invalid(format!(
            "initialBalloonMem ({} MiB) must be below mem ({} MiB): the balloon would take all guest memory",
            config.initial_balloon_mem, config.mem
        )));
    }
    if !config.balloon && config.initial_balloon_mem > 0 {
        out.warn_once("`initialBalloonMem` does nothing without `balloon = true`; ignored");
    }
    let (doc, mut files) = config_file(&mut out, config, artifacts, &kernel_cmdline)?;
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
    let control_channel = control_channel(config, &mut pre_start);
    let shutdown = shutdown(x86, &socket);
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
        taps: out.taps,
        macvtap_fds: Vec::new(),
        kernel_cmdline: doc["boot-source"]["boot_args"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        warnings: out.warnings,
    })
}

/// The config file (with `extraConfig` merged in) and the CPU template file, if any.
fn config_file(
    out: &mut Out,
    config: &Config,
    artifacts: &Artifacts,
    kernel_cmdline: &str,
) -> Result<(Value, Vec<GeneratedFile>), PlanError> {
    let x86 = config.arch == Arch::X86_64;
    let kernel = match config.arch {
        Arch::X86_64 => artifacts.vmlinux.as_ref().ok_or_else(|| {
            invalid("firecracker boots an uncompressed vmlinux on x86_64, and none was built for this kernel")
        })?,
        Arch::Aarch64 => &artifacts.kernel,
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
        "drives": drives(config, artifacts),
        "network-interfaces": interfaces(out, config)?,
        "vsock": vsock(config),
    });
    if config.balloon {
        if let Value::Object(m) = &mut doc {
            m.insert("balloon".into(), balloon(config));
        }
    }
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
    Ok((doc, files))
}

/// `SendCtrlAltDel`, which firecracker implements on x86_64 only.
fn shutdown(x86: bool, socket: &str) -> Shutdown {
    if x86 {
        Shutdown::Http {
            socket: socket.to_owned(),
            method: "PUT".into(),
            path: "/actions".into(),
            body: Some(r#"{"action_type": "SendCtrlAltDel"}"#.into()),
        }
    } else {
        Shutdown::Signal {
            signal: "SIGTERM".into(),
        }
    }
}

fn io_engine(config: &Config) -> &'static str {
    match config.firecracker.drive_io_engine {
        DriveIoEngine::Async => "Async",
        DriveIoEngine::Sync => "Sync",
    }
}

/// The store disk and the volumes.
fn drives(config: &Config, artifacts: &Artifacts) -> Vec<Value> {
    let io_engine = io_engine(config);
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
    drives
}

fn interfaces(out: &mut Out, config: &Config) -> Result<Vec<Value>, PlanError> {
    let mut ifaces = Vec::new();
    let mut taken = Vec::new();
    for iface in &config.interfaces {
        if iface.kind != InterfaceType::Tap {
            // Refused by the capability table.
            return Err(invalid(format!(
                "Network interface type {} not implemented for Firecracker",
                iface.kind.name()
            )));
        }
        out.tap(iface, false);
        ifaces.push(json!({
            "iface_id": api_id(iface.id.as_str(), &mut taken),
            "host_dev_name": iface.id.as_str(),
            "guest_mac": iface.mac.to_string(),
        }));
    }
    Ok(ifaces)
}

fn vsock(config: &Config) -> Value {
    match config.vsock.cid {
        Some(cid) => json!({ "guest_cid": cid.0, "uds_path": NOTIFY_VSOCK }),
        None => Value::Null,
    }
}

fn balloon(config: &Config) -> Value {
    json!({
        "amount_mib": config.initial_balloon_mem,
        "deflate_on_oom": config.deflate_on_oom,
        "free_page_reporting": true,
    })
}

/// The hybrid-vsock control channel with microvm's init, and the stale sockets it removes.
fn control_channel(config: &Config, pre_start: &mut Vec<PreStart>) -> Option<ControlChannel> {
    match (config.vsock.cid, config.uses_own_initrd()) {
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
    }
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

    /// firecracker 1.16 takes a `balloon` section (hypervisor-cli-notes, second round);
    /// `initialBalloonMem` is its starting size.
    #[test]
    fn balloon_section() {
        let mut c = fc_example();
        c.balloon = true;
        c.deflate_on_oom = true;
        c.initial_balloon_mem = 128;
        crate::caps::check(HV, &c).expect("balloon is supported");
        let inv = plan(&c, &Artifacts::placeholders(), &HostFacts::reference()).expect("plan");
        let doc: Value = serde_json::from_str(&inv.files[0].contents).expect("json");
        assert_eq!(
            doc["balloon"],
            json!({"amount_mib": 128, "deflate_on_oom": true, "free_page_reporting": true})
        );
        assert!(plan_doc_has_no_balloon(), "no balloon unless asked");
        c.initial_balloon_mem = c.mem;
        let e = plan(&c, &Artifacts::placeholders(), &HostFacts::reference()).expect_err("too big");
        assert!(e.to_string().contains("must be below mem"), "{e}");
        c.balloon = false;
        let inv = plan(&c, &Artifacts::placeholders(), &HostFacts::reference()).expect("plan");
        assert_eq!(
            inv.warnings,
            ["`initialBalloonMem` does nothing without `balloon = true`; ignored"]
        );
    }

    fn plan_doc_has_no_balloon() -> bool {
        let inv = plan(
            &fc_example(),
            &Artifacts::placeholders(),
            &HostFacts::reference(),
        )
        .expect("plan");
        let doc: Value = serde_json::from_str(&inv.files[0].contents).expect("json");
        doc.get("balloon").is_none()
    }

    /// firecracker reads every disk as raw.
    #[test]
    fn qcow2_is_refused() {
        let mut c = fc_example();
        c.volumes[0].image_type = microvm_spec::config::ImageType::Qcow2;
        let e = crate::plan_for(HV, &c, &Artifacts::placeholders(), &HostFacts::reference())
            .expect_err("qcow2");
        assert!(e.to_string().contains("opens every disk as raw"), "{e}");
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
