//! crosvm (`crosvm run …`, inventory §2.4) in the syntax of current crosvm (checked against
//! `src/crosvm/cmdline.rs` of google/crosvm, 2026-08):
//!
//! - the store disk is `--block path=<store>,ro=true,root=true`, the non-deprecated spelling of
//!   the original's `-r <store>` (crosvm warns "Deprecated disk flags such as --[rw]disk or
//!   --[rw]root are passed"); `root=true` still makes crosvm add `root=/dev/vda ro` itself;
//! - vsock is `--vsock cid=<cid>` (the `--vsock` key-value form exists since 2023-02 and also
//!   takes the bare CID the original passes; older crosvm only had `--cid`);
//! - graphics use `--vhost-user type=gpu,socket=<sock>` ([later]; `--vhost-user-gpu` was
//!   removed in 2025-04) and balloon uses `--balloon-page-reporting` ([later]); the GPU
//!   device helper's `--wayland-sock` is `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY`, expanded by
//!   whoever starts the helper from the user's session (as for cloud-hypervisor);
//! - `--seccomp-log-failures` only for a known version below 107.1. crosvm's own
//!   `--version` prints its crate version `0.1.0`, which says nothing about the release, so
//!   versions below 1.0 count as unknown (= newest).
//!
//! - Every `--block` starts `path=`: crosvm reads a bare first value as an option name when
//!   the file name starts with one (`ro.img,…` → `expected '=' at position 2`; likewise
//!   `root.img`, `sparse.img`, `lock.img`, `id.img`).
//! - `/var/empty` (or `crosvm.pivotRoot`) is created before start: the sandbox pivots into
//!   it and crosvm refuses to start without it (`cannot create jail`).
//!
//! Values inside `k=v` options are read by crosvm's `serde_keyvalue`: a value with `,`,
//! `[`, `]` or a quote is double-quoted with `\"` and `\\` escapes ([`kv_value`]).

use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::argv::Out;
use crate::common::{built_store_disk, cmdline, process_name, program};
use crate::version::Version;
use crate::virtiofsd::virtiofsd_helpers;
use crate::{
    Artifacts, Capabilities, Helper, HelperKind, HostFacts, Invocation, PlanError, PreStart,
    Shutdown,
};

const HV: Hypervisor = Hypervisor::Crosvm;

/// The first release without a working seccomp policy for microvm's use (the original's
/// `lib.versionOlder crosvm.version "107.1"`).
const SECCOMP_FIXED: Version = Version::new(107, 1, 0);

/// Where crosvm's sandboxed devices pivot without `--pivot-root`: every plan fails with
/// `"/var/empty" is not a directory, cannot create jail` on a host without it.
const DEFAULT_PIVOT_ROOT: &str = "/var/empty";

/// crosvm's `DISK_ID_LEN`: a `--block id=` is at most 20 bytes.
const DISK_ID_LEN: usize = 20;

/// GPU device parameters (the original's, without `displays`, which crosvm's own GPU
/// frontend does not take over vhost-user).
const GPU_PARAMS: &str =
    r#"{"context-types":"virgl:virgl2:cross-domain","egl":true,"vulkan":true}"#;

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    reject_unsupported(config)?;
    let bin = program(config.crosvm.package.as_deref(), "crosvm");
    let kernel_cmdline = cmdline(["console=ttyS0", "reboot=k", "panic=1"], config);
    let kernel = match config.arch {
        Arch::X86_64 => artifacts.vmlinux.clone().ok_or_else(|| {
            invalid("crosvm on x86_64 boots an uncompressed vmlinux, and none could be produced from this kernel".into())
        })?,
        Arch::Aarch64 => artifacts.kernel.clone(),
    };

    let mut out = Out::new(["run"]);
    out.opt("-m", config.mem.to_string());
    out.opt("-c", config.vcpu.to_string());
    out.opt("--serial", "type=stdout,console=true,stdin=true");
    out.opt("-p", kernel_cmdline.clone());
    out.flag(if config.balloon {
        "--balloon-page-reporting"
    } else {
        "--no-balloon"
    });
    store_disk(&mut out, config, artifacts)?;

    let mut helpers = Vec::new();
    let mut pre_start = Vec::new();
    if let Some(socket) = config.socket() {
        pre_start.push(PreStart::RemoveFile(socket.to_owned()));
    }
    if config.graphics.enable {
        pre_start.push(PreStart::RemoveFile(config.graphics.socket.clone()));
        helpers.push(graphics(&mut out, config, &bin)?);
    }
    if seccomp_logs_failures(config, host)? {
        out.flag("--seccomp-log-failures");
    }
    jail(&mut out, config, &mut pre_start);
    if let Some(socket) = config.socket() {
        out.opt("-s", socket);
    }
    volumes(&mut out, config)?;
    shares(&mut out, config)?;
    helpers.splice(0..0, virtiofsd_helpers(config, host, true));
    interfaces(&mut out, config)?;
    if let Some(cid) = config.vsock.cid {
        out.opt("--vsock", format!("cid={cid}"));
    }
    passthrough(&mut out, config)?;
    out.opt("--initrd", artifacts.initrd.display().to_string());
    out.args.push(kernel.display().to_string());
    out.args.extend(config.crosvm.extra_args.iter().cloned());

    // aarch64 crosvm has no power button to press; microvm.nix [later] falls back to
    // `crosvm stop`, which is no more graceful than SIGTERM.
    let shutdown = match (config.socket(), config.arch) {
        (Some(socket), Arch::X86_64) => Shutdown::CrosvmPowerButton {
            socket: socket.to_owned(),
        },
        _ => Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
    };
    let can_shutdown = matches!(shutdown, Shutdown::CrosvmPowerButton { .. });

    Ok(Invocation {
        hypervisor: HV,
        program: bin,
        args: out.args,
        process_name: process_name(config),
        env: Vec::new(),
        files: Vec::new(),
        helpers,
        pre_start,
        control_socket: config.socket.clone(),
        shutdown,
        control_channel: None,
        taps: out.taps,
        macvtap_fds: out.macvtap_fds,
        kernel_cmdline,
        capabilities: Capabilities {
            can_shutdown,
            supports_notify_socket: false,
            tap_multi_queue: false,
            readiness: false,
        },
        warnings: out.warnings,
    })
}

/// The sandbox's pivot directory: `crosvm.pivotRoot`, or crosvm's default, which must
/// exist (without it crosvm fails at once: `cannot create jail`).
fn jail(out: &mut Out, config: &Config, pre_start: &mut Vec<PreStart>) {
    match &config.crosvm.pivot_root {
        Some(dir) => {
            out.opt("--pivot-root", dir.clone());
            pre_start.push(PreStart::CreateDir(dir.clone()));
        }
        None if !config
            .crosvm
            .extra_args
            .iter()
            .any(|a| a == "--disable-sandbox") =>
        {
            pre_start.push(PreStart::CreateDir(DEFAULT_PIVOT_ROOT.into()))
        }
        None => {}
    }
}

fn store_disk(out: &mut Out, config: &Config, artifacts: &Artifacts) -> Result<(), PlanError> {
    let Some(store) = built_store_disk(HV, config, artifacts)? else {
        return Ok(());
    };
    let path = kv_value("store disk path", &store)?;
    out.opt("--block", format!("path={path},ro=true,root=true"));
    Ok(())
}

/// The vhost-user GPU device and its helper (`crosvm device gpu`).
fn graphics(out: &mut Out, config: &Config, bin: &str) -> Result<Helper, PlanError> {
    let socket = &config.graphics.socket;
    let gpu_bin = match &config.graphics.crosvm_package {
        Some(p) => program(Some(p), "crosvm"),
        None => bin.to_owned(),
    };
    out.opt(
        "--vhost-user",
        format!("type=gpu,socket={}", kv_value("graphics.socket", socket)?),
    );
    Ok(Helper {
        name: "gpu".into(),
        kind: HelperKind::GpuDevice,
        program: gpu_bin,
        args: [
            "device",
            "gpu",
            "--socket",
            socket,
            "--wayland-sock",
            "$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY",
            "--params",
            GPU_PARAMS,
        ]
        .map(str::to_owned)
        .to_vec(),
        socket: Some(socket.clone()),
    })
}

fn volumes(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for volume in &config.volumes {
        let mut opt = format!(
            "path={},o_direct={},ro={}",
            kv_value("volume image", &volume.image)?,
            volume.direct,
            volume.read_only
        );
        if let Some(serial) = &volume.serial {
            if serial.len() > DISK_ID_LEN {
                return Err(invalid(format!(
                    "volume {} has serial {serial:?}, longer than crosvm's limit of {DISK_ID_LEN} bytes",
                    volume.image
                )));
            }
            opt.push_str(&format!(",id={}", kv_value("volume serial", serial)?));
        }
        out.opt("--block", opt);
    }
    Ok(())
}

fn shares(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for share in &config.shares {
        match share.proto {
            ShareProto::Virtiofs => {
                let socket = share
                    .socket
                    .clone()
                    .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, share.tag));
                out.opt(
                    "--vhost-user",
                    format!("type=fs,socket={}", kv_value("share socket", &socket)?),
                );
            }
            ShareProto::NineP => {
                // `--shared-dir` splits at every ':' with no escape.
                for (what, value) in [("source", &share.source), ("tag", &share.tag)] {
                    if value.contains(':') {
                        return Err(invalid(format!(
                            "9p share {}: crosvm's --shared-dir cannot take a {what} containing ':' ({value:?})",
                            share.tag
                        )));
                    }
                }
                out.opt(
                    "--shared-dir",
                    format!("{}:{}:type=p9", share.source, share.tag),
                );
            }
        }
    }
    Ok(())
}

fn interfaces(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for iface in &config.interfaces {
        let backend = match iface.kind {
            InterfaceType::Tap => {
                out.tap(iface, false);
                format!("tap-name={}", kv_value("interface id", iface.id.as_str())?)
            }
            InterfaceType::Macvtap => {
                // One queue: crosvm is not a multi-queue tap user (§2.0).
                let fd = out.macvtap_fds(iface.id.as_str(), 1)[0];
                format!("tap-fd={fd}")
            }
            // Refused in reject_unsupported.
            InterfaceType::User | InterfaceType::Bridge => continue,
        };
        out.opt("--net", format!("{backend},mac={}", iface.mac));
    }
    Ok(())
}

fn passthrough(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for device in config.devices.iter().filter(|d| d.bus == DeviceBus::Pci) {
        let path = kv_value(
            "PCI device",
            &format!("/sys/bus/pci/devices/{}", device.path),
        )?;
        out.opt("--vfio", format!("{path},iommu=viommu"));
    }
    Ok(())
}

fn reject_unsupported(config: &Config) -> Result<(), PlanError> {
    if config.user.is_some() {
        return Err(unsupported("`user`", "crosvm will not change user"));
    }
    for (value, option) in [
        (config.initial_balloon_mem, "initialBalloonMem"),
        (config.hotplug_mem, "hotplugMem"),
        (config.hotplugged_mem, "hotpluggedMem"),
    ] {
        if value != 0 {
            return Err(unsupported(
                option,
                &format!("crosvm does not support {option}"),
            ));
        }
    }
    if !config.credential_files.is_empty() {
        return Err(unsupported(
            "credentialFiles",
            "crosvm does not support credentialFiles",
        ));
    }
    for iface in &config.interfaces {
        if matches!(iface.kind, InterfaceType::User | InterfaceType::Bridge) {
            let kind = iface_kind(iface.kind);
            return Err(unsupported(
                &format!("interface type {kind}"),
                &format!(
                    "Unsupported interface type {kind} for crosvm (interface {})",
                    iface.id
                ),
            ));
        }
    }
    if let Some(share) = config
        .shares
        .iter()
        .find(|s| s.proto == ShareProto::NineP && s.read_only)
    {
        return Err(unsupported(
            "read-only 9p shares",
            &format!("Readonly 9p share is not supported (share {})", share.tag),
        ));
    }
    if config.devices.iter().any(|d| d.bus == DeviceBus::Usb) {
        return Err(unsupported(
            "USB passthrough",
            "USB passthrough is not supported on crosvm",
        ));
    }
    Ok(())
}

/// Whether this crosvm is older than 107.1 and needs `--seccomp-log-failures`.
fn seccomp_logs_failures(config: &Config, host: &HostFacts) -> Result<bool, PlanError> {
    let version = match &config.crosvm.version {
        Some(text) => Some(
            text.parse::<Version>()
                .map_err(|e| invalid(format!("crosvm.version: {e}")))?,
        ),
        None => host.version_of(HV).copied(),
    };
    Ok(version.is_some_and(|v| v.major >= 1 && v < SECCOMP_FIXED))
}

/// A value inside a crosvm `k=v,k=v` option (`serde_keyvalue`): unquoted it may not be
/// empty or contain `,`, `[`, `]`, `"` or `'`; otherwise it is double-quoted, with `"` and
/// `\` escaped by `\`.
pub(crate) fn kv_value(what: &str, value: &str) -> Result<String, PlanError> {
    if value.contains('\0') {
        return Err(invalid(format!("{what} {value:?} contains a NUL byte")));
    }
    if !value.is_empty() && !value.contains([',', '[', ']', '"', '\'']) {
        return Ok(value.to_owned());
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

fn iface_kind(kind: InterfaceType) -> &'static str {
    match kind {
        InterfaceType::User => "user",
        InterfaceType::Tap => "tap",
        InterfaceType::Macvtap => "macvtap",
        InterfaceType::Bridge => "bridge",
    }
}

fn unsupported(feature: &str, reason: &str) -> PlanError {
    PlanError::Unsupported {
        hypervisor: HV,
        feature: feature.to_owned(),
        reason: reason.to_owned(),
    }
}

fn invalid(message: String) -> PlanError {
    PlanError::Invalid {
        hypervisor: HV,
        message,
    }
}

#[cfg(test)]
pub(crate) mod tests;
