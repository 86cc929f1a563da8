//! qemu (inventory §2.1, with the [later] fixes), x86_64 and aarch64.
//!
//! Deviations from the anchor, on purpose:
//! - Graceful shutdown is QMP `system_powerdown` (the ACPI power button), not the
//!   original's Ctrl-Alt-Del key events: microvm's guest init watches the power button
//!   and systemd guests power off on it, while Ctrl-Alt-Del means *reboot* to systemd
//!   and only ended qemu through `-no-reboot`.
//! - `-qmp unix:SOCK,server=on,wait=off`: the short boolean forms `server,nowait` are
//!   deprecated in current qemu.
//! - `-run-with user=USER` (qemu ≥ 9.1; `-runas USER` for an older detected version)
//!   instead of the invalid `-user`.
//! - Without KVM (probed at run time, `kvm = "disabled"`, or `cpu` set) the machine uses
//!   `accel=tcg`, `-cpu max` (or `cpu`), the uncompressed vmlinux when one was built
//!   (about 1.6 s faster to boot under TCG) and `tsc_early_khz=` on x86_64 (the microvm
//!   machine has no HPET/PM timer to calibrate the TSC against) with `tsc=reliable`,
//!   plus `noreplace-smp` for one vCPU (the kernel's switch to uniprocessor code costs
//!   ~0.1 s of CPU under TCG).
//! - Bridge interfaces leave `helper=` to qemu's built-in default path; the original's
//!   `/run/wrappers/bin/qemu-bridge-helper` exists on NixOS only.
//! - A volume's `imageType` sets the drive `format=` (`vhd` is qemu's `vpc`).
//! - `qemu.extraArgs` that add a PCI device (a `-device` driver named `…pci…`) give the VM
//!   PCI (`pcie=on`): on `pcie=off` qemu refuses them (`No 'PCI' bus found`).

mod devices;
#[cfg(test)]
mod tests;

use microvm_spec::config::{Arch, Config, DeviceBus, GraphicsBackend, InterfaceType, KvmMode};
use microvm_spec::types::Hypervisor;

use crate::common::{cmdline, process_name, program};
use crate::kv::KvList;
use crate::version::Version;
use crate::virtiofsd::virtiofsd_helpers;
use crate::{Artifacts, Capabilities, HostFacts, Invocation, PlanError, Shutdown};

const HV: Hypervisor = Hypervisor::Qemu;

/// Arguments being collected, with the kv errors mapped to plan errors.
#[derive(Debug, Default)]
pub(super) struct Args(pub(super) Vec<String>);

impl Args {
    pub(super) fn flag(&mut self, flag: &str) {
        self.0.push(flag.to_owned());
    }
    pub(super) fn opt(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_owned());
        self.0.push(value.into());
    }
    pub(super) fn kv(&mut self, flag: &str, kv: KvList) -> Result<(), PlanError> {
        let value = kv.build().map_err(|e| e.into_plan(HV))?;
        self.opt(flag, value);
        Ok(())
    }
}

/// Facts derived once and shared by the device builders.
#[derive(Debug)]
pub(super) struct Ctx<'a> {
    pub(super) config: &'a Config,
    /// `pci` or `device` (virtio-mmio).
    pub(super) dt: &'static str,
    pub(super) pci: bool,
}

/// Whether this plan runs under TCG, or why it cannot run.
fn use_tcg(config: &Config, host: &HostFacts) -> Result<bool, PlanError> {
    let invalid = |message: &str| PlanError::Invalid {
        hypervisor: HV,
        message: message.to_owned(),
    };
    match config.kvm {
        KvmMode::Required if config.cpu.is_some() => Err(invalid(
            "kvm = \"required\" cannot be combined with `cpu` (CPU model emulation runs under TCG)",
        )),
        KvmMode::Required if !host.kvm => Err(invalid(
            "kvm = \"required\" but KVM is not usable on this host (is /dev/kvm present and accessible?)",
        )),
        KvmMode::Disabled => Ok(true),
        _ => Ok(!host.kvm || config.cpu.is_some()),
    }
}

fn machine_opts(config: &Config, tcg: bool, pci: bool) -> KvList {
    let mut kv = KvList::qemu(config.qemu.machine.clone()).sorted();
    if let Some(opts) = &config.qemu.machine_opts {
        for (k, v) in opts {
            kv.push(k.clone(), v);
        }
        return kv;
    }
    let accel = if tcg { "tcg" } else { "kvm:tcg" };
    kv.push("accel", accel);
    match config.arch {
        Arch::X86_64 => {
            kv.push("mem-merge", "on");
            kv.push("acpi", "on");
            if config.qemu.machine.starts_with("microvm") {
                let usb = config.graphics.enable
                    || config.devices.iter().any(|d| d.bus == DeviceBus::Usb);
                // pic=off,pit=off as the original emits: they also avoid two TCG boot
                // failures (an unprogrammed PIC, PIT calibration; qemu-tcg-notes §0).
                kv.push("pit", "off");
                kv.push("pic", "off");
                kv.push("pcie", if pci { "on" } else { "off" });
                kv.push("usb", if usb { "on" } else { "off" });
                kv.push("rtc", "on");
            }
        }
        Arch::Aarch64 => kv.push("gic-version", "max"),
    }
    kv
}

/// Whether `qemu.extraArgs` adds a PCI device (`-device virtio-keyboard-pci`, `vfio-pci`,
/// `pcie-root-port`, …): on the microvm machine with `pcie=off` qemu refuses it with
/// `No 'PCI' bus found for device …`, so such a VM gets PCI.
fn extra_args_need_pci(extra: &[String]) -> bool {
    extra.windows(2).any(|w| {
        let driver = w[1].split(',').next().unwrap_or_default();
        matches!(w[0].as_str(), "-device" | "--device") && driver.contains("pci")
    })
}

/// The console, reboot and panic settings, `kernelParams`, and under TCG the TSC's
/// frequency and reliability and, for one vCPU, `noreplace-smp`.
fn kernel_cmdline(config: &Config, host: &HostFacts, tcg: bool) -> String {
    let console: &[&str] = match (config.qemu.serial_console, config.arch) {
        (false, _) => &[],
        (true, Arch::X86_64) => &["earlyprintk=ttyS0", "console=ttyS0"],
        (true, Arch::Aarch64) => &["console=ttyAMA0"],
    };
    let mut prefix: Vec<&str> = console.to_vec();
    prefix.extend(["reboot=t", "panic=-1"]);
    let mut kernel_cmdline = cmdline(prefix, config);
    if tcg && config.arch == Arch::X86_64 {
        kernel_cmdline.push_str(&tcg_x86_params(host, config.vcpu));
    }
    kernel_cmdline
}

/// What an x86 guest under TCG is told about the emulated machine, each word with a
/// leading space.
fn tcg_x86_params(host: &HostFacts, vcpu: u32) -> String {
    let mut params = String::new();
    if let Some(khz) = host.tsc_khz {
        params.push_str(&format!(" tsc_early_khz={khz}"));
    }
    // The guest's TSC is qemu's clock, steady whatever the host's load; the kernel's
    // watchdog compares it with jiffies, which lag while the vCPU thread waits for a core,
    // calls it unstable and falls back to jiffies, and then an idle guest is no longer
    // tickless (four idle VMs on 2 cores: 2 % of a core each instead of 0.4 %).
    params.push_str(" tsc=reliable");
    // A kernel on one CPU rewrites every `lock` prefix of its text at boot, one text_poke
    // each, and each poke switches page tables: under TCG every switch flushes qemu's
    // software TLB, about 0.1 s of CPU per boot (docs/benchmarks.md). The locked forms
    // cost nothing there.
    if vcpu == 1 {
        params.push_str(" noreplace-smp");
    }
    params
}

/// Whether the VM boots qemu's qboot instead of SeaBIOS: on the x86 microvm machine, unless
/// `extraArgs` choose a firmware. SeaBIOS writes its banner, boot attempts and terminal
/// escape codes (clear screen, line wrapping off) to the serial console on every boot;
/// qboot, which ships with qemu (`pc-bios/qboot.rom`), only loads the kernel, and boots
/// as fast (docs/benchmarks.md).
fn quiet_firmware(config: &Config) -> bool {
    config.arch == Arch::X86_64
        && config.qemu.machine.starts_with("microvm")
        && !config.qemu.extra_args.iter().any(|a| a == "-bios")
}

/// Machine, memory, CPUs, kernel, consoles, entropy, early PCI devices and SMBIOS.
fn base(
    a: &mut Args,
    ctx: &Ctx<'_>,
    artifacts: &Artifacts,
    tcg: bool,
    kernel_cmdline: &str,
) -> Result<(), PlanError> {
    let config = ctx.config;
    let x86 = config.arch == Arch::X86_64;
    let kernel = match (&artifacts.vmlinux, tcg && x86) {
        (Some(vmlinux), true) => vmlinux,
        _ => &artifacts.kernel,
    };
    a.opt("-name", config.name.to_string());
    a.kv("-M", machine_opts(config, tcg, ctx.pci))?;
    a.opt("-m", format!("{}M", config.mem));
    a.opt("-smp", config.vcpu.to_string());
    for f in ["-nodefaults", "-no-user-config", "-no-reboot"] {
        a.flag(f);
    }
    if quiet_firmware(config) {
        a.opt("-bios", "qboot.rom");
    }
    a.opt("-kernel", kernel.display().to_string());
    a.opt("-initrd", artifacts.initrd.display().to_string());
    a.kv(
        "-chardev",
        KvList::qemu("stdio")
            .set("id", "stdio")
            .set("signal", "off"),
    )?;
    a.opt("-device", format!("virtio-rng-{}", ctx.dt));
    // [later]: PCIe root ports, then the VFIO devices, come before the serial console.
    devices::pcie_root_ports(a, config)?;
    devices::vfio(a, config)?;
    if config.qemu.serial_console {
        a.opt("-serial", "chardev:stdio");
    }
    if !tcg {
        a.flag("-enable-kvm");
    }
    let cpu = match (&config.cpu, tcg, config.arch) {
        (Some(cpu), _, _) => cpu.clone(),
        (None, true, _) => "max".to_owned(),
        (None, false, Arch::X86_64) => "host,+x2apic,-sgx".to_owned(),
        (None, false, Arch::Aarch64) => "host".to_owned(),
    };
    a.opt("-cpu", cpu);
    if x86 {
        a.opt("-device", "i8042");
    }
    a.opt("-append", kernel_cmdline);
    a.kv(
        "-smbios",
        KvList::qemu_plain()
            .set("type", 1)
            .set("uuid", &config.machine_id),
    )?;

    Ok(())
}

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    let tcg = use_tcg(config, host)?;
    let pci = config.graphics.enable
        || !config.qemu.machine.starts_with("microvm")
        || !config.shares.is_empty()
        || config.devices.iter().any(|d| d.bus == DeviceBus::Pci)
        || extra_args_need_pci(&config.qemu.extra_args);
    let ctx = Ctx {
        config,
        dt: if pci { "pci" } else { "device" },
        pci,
    };
    let mut a = Args::default();

    let kernel_cmdline = kernel_cmdline(config, host, tcg);
    base(&mut a, &ctx, artifacts, tcg, &kernel_cmdline)?;

    if config.store_on_disk {
        if let Some(store) = &artifacts.store_disk {
            devices::store_disk(&mut a, &ctx, &store.display().to_string())?;
        }
    }
    graphics(&mut a, &ctx)?;
    if !config
        .interfaces
        .iter()
        .any(|i| i.kind == InterfaceType::Bridge)
    {
        a.opt("-sandbox", "on");
    }
    if let Some(user) = &config.user {
        match host.version_of(HV) {
            Some(v) if *v < Version::new(9, 1, 0) => a.opt("-runas", user.clone()),
            _ => a.kv("-run-with", KvList::qemu_plain().set("user", user))?,
        }
    }
    if let Some(socket) = &config.socket {
        let qmp = KvList::qemu(format!("unix:{socket}"))
            .on_off("server", true)
            .on_off("wait", false);
        a.kv("-qmp", qmp)?;
    }
    let control_channel = devices::control_channel(&mut a, &ctx)?;

    devices::volumes(&mut a, &ctx)?;
    devices::shares(&mut a, &ctx)?;
    let net = devices::interfaces(&mut a, &ctx)?;
    devices::vsock(&mut a, &ctx)?;
    devices::balloon(&mut a, &ctx)?;
    devices::usb(&mut a, config)?;
    devices::credential_files(&mut a, config)?;
    a.0.extend(config.qemu.extra_args.iter().cloned());

    let warnings = warnings(config, tcg);

    let shutdown = match &config.socket {
        Some(socket) => Shutdown::Qmp {
            socket: socket.clone(),
            command: "system_powerdown".into(),
        },
        None => Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
    };
    let program_name = format!("qemu-system-{}", config.arch.name());
    Ok(Invocation {
        hypervisor: HV,
        program: program(config.qemu.package.as_deref(), &program_name),
        args: a.0,
        process_name: process_name(config),
        env: Vec::new(),
        files: Vec::new(),
        helpers: virtiofsd_helpers(config, host, false),
        pre_start: Vec::new(),
        control_socket: config.socket.clone(),
        shutdown,
        control_channel,
        taps: net.taps,
        macvtap_fds: net.macvtap_fds,
        kernel_cmdline,
        capabilities: Capabilities {
            can_shutdown: config.socket.is_some(),
            supports_notify_socket: false,
            tap_multi_queue: config.vcpu > 1,
            readiness: config.uses_own_initrd(),
        },
        warnings,
    })
}

/// The original's warnings about this configuration.
fn warnings(config: &Config, tcg: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.mem == 2048 {
        warnings.push("QEMU hangs if memory is exactly 2GB <https://github.com/microvm-nix/microvm.nix/issues/171>".to_owned());
    }
    if tcg && config.kvm == KvmMode::Auto && config.cpu.is_none() {
        warnings.push("KVM is not usable on this host: qemu runs the guest under TCG (software emulation), which is much slower".to_owned());
    }

    warnings
}

fn graphics(a: &mut Args, ctx: &Ctx<'_>) -> Result<(), PlanError> {
    let g = &ctx.config.graphics;
    if !g.enable {
        a.flag("-nographic");
        return Ok(());
    }
    let (display, gpu) = match g.backend {
        GraphicsBackend::Gtk => (KvList::qemu("gtk").on_off("gl", true), "virtio-vga-gl"),
        GraphicsBackend::Headless => (KvList::qemu("egl-headless"), "virtio-gpu-gl"),
        GraphicsBackend::Cocoa => {
            return Err(PlanError::Invalid {
                hypervisor: HV,
                message: "graphics.backend = \"cocoa\" is only available on macOS; use \"gtk\" or \"headless\"".into(),
            })
        }
    };
    a.kv("-display", display)?;
    let mut dev = KvList::qemu(gpu);
    if let Some(vulkan) = &g.vulkan {
        let key = match vulkan.as_str() {
            "venus" => "venus",
            "drm_native_context" => "drm_native_context",
            other => {
                let message = format!(
                    "graphics.vulkan = {other:?} is not one of \"venus\", \"drm_native_context\""
                );
                return Err(PlanError::Invalid {
                    hypervisor: HV,
                    message,
                });
            }
        };
        dev = dev
            .set("blob", "true")
            .set("hostmem", &g.hostmem)
            .on_off(key, true);
    }
    a.kv("-device", dev)?;
    for d in ["qemu-xhci", "usb-tablet", "usb-kbd"] {
        a.opt("-device", d);
    }
    Ok(())
}
