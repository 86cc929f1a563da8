//! The runner package: a directory laid out like microvm.nix's runner, so that its host
//! units (which only execute `bin/microvm-run` and `bin/microvm-shutdown`) and microvm's
//! own tools can both start it.
//!
//! ```text
//! bin/microvm-run        preStart, volume autocreation, generated files, exec the hypervisor
//! bin/microvm-shutdown   graceful shutdown, waiting until the hypervisor is gone (if it can)
//! bin/virtiofsd-run      one virtiofsd per virtiofs share (if any)
//! bin/tap-up, tap-down   tap interfaces (if any)
//! bin/<name>             the definition's `binScripts` (replacing a generated one)
//! bin/macvtap-up, -down  macvtap interfaces (if any), bin/pci-setup (PCI devices),
//!                        bin/microvm-balloon (balloon), bin/microvm-register, -unregister
//!                        (registerWithMachined); see [`crate::host_scripts`]
//! share/microvm/         metadata: hypervisor, tap-interfaces, tap-flags, macvtap-interfaces,
//!                        virtiofs/<tag>/{socket,source}, pci-devices, usb-devices, vsock-cid,
//!                        forward-ports.json (DNAT of a tap VM's forwardPorts),
//!                        system (with `systemSymlink`), and microvm's invocation.json
//!                        and config.json
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use microvm_spec::config::{Config, DeviceBus, InterfaceType};

use crate::quote::shell_quote;
use crate::{render, HelperKind, Invocation, PreStart, Shutdown};

/// A file of the runner package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    pub path: String,
    pub contents: String,
    pub executable: bool,
}

/// Every file of the runner package for `inv` (pure: testable, hashable).
pub fn files(config: &Config, inv: &Invocation) -> Vec<PackageFile> {
    let mut out = vec![script("bin/microvm-run", &microvm_run(config, inv))];
    if let Some(s) = microvm_shutdown(inv) {
        out.push(script("bin/microvm-shutdown", &s));
    }
    let virtiofsd: Vec<_> = inv
        .helpers
        .iter()
        .filter(|h| matches!(h.kind, HelperKind::Virtiofsd { .. }))
        .collect();
    if !virtiofsd.is_empty() {
        let mut s = header(config, "virtiofsd-run");
        s.push_str("pids=\ntrap 'kill $pids 2>/dev/null' EXIT INT TERM\n");
        for h in &virtiofsd {
            let _ = writeln!(
                s,
                "{} &\npids=\"$pids $!\"",
                render_argv(&h.program, &h.args)
            );
        }
        s.push_str("wait\n");
        out.push(script("bin/virtiofsd-run", &s));
    }
    if !inv.taps.is_empty() {
        let mut up = header(config, "tap-up");
        let mut down = header(config, "tap-down");
        for t in &inv.taps {
            let name = shell_quote(&t.name);
            let mut flags = String::new();
            if t.vnet_hdr {
                flags.push_str(" vnet_hdr");
            }
            if t.multi_queue {
                flags.push_str(" multi_queue");
            }
            let _ = writeln!(
                up,
                "if [ -e /sys/class/net/{name} ]; then ip link delete {name}; fi"
            );
            let _ = writeln!(
                up,
                "ip tuntap add name {name} mode tap user \"${{MICROVM_USER:-microvm}}\"{flags}"
            );
            let _ = writeln!(up, "ip link set {name} up");
            if let Some(br) = &t.bridge {
                let _ = writeln!(up, "ip link set {name} master {}", shell_quote(br));
            }
            let _ = writeln!(down, "ip link delete {name} || true");
        }
        out.push(script("bin/tap-up", &up));
        out.push(script("bin/tap-down", &down));
    }
    for (path, body) in crate::host_scripts::scripts(config, inv) {
        out.push(script(path, &body));
    }
    add_bin_scripts(config, &mut out);
    let meta = |path: &str, contents: String| PackageFile {
        path: format!("share/microvm/{path}"),
        contents,
        executable: false,
    };
    out.push(meta("hypervisor", format!("{}\n", inv.hypervisor)));
    let taps: String = config
        .interfaces
        .iter()
        .filter(|i| i.kind == InterfaceType::Tap)
        .map(|i| format!("{}\n", i.id))
        .collect();
    if !taps.is_empty() {
        out.push(meta("tap-interfaces", taps));
        let mq = inv.taps.iter().any(|t| t.multi_queue);
        out.push(meta(
            "tap-flags",
            if mq {
                "vnet_hdr multi_queue\n".into()
            } else {
                "vnet_hdr\n".into()
            },
        ));
    }
    let macvtaps: String = config
        .interfaces
        .iter()
        .filter_map(|i| {
            i.macvtap
                .as_ref()
                .map(|m| format!("{} {} {} {}\n", i.id, i.mac, m.link, m.mode.name()))
        })
        .collect();
    if !macvtaps.is_empty() {
        out.push(meta("macvtap-interfaces", macvtaps));
    }
    for s in config.shares.iter().filter(|s| s.socket.is_some()) {
        out.push(meta(
            &format!("virtiofs/{}/socket", s.tag),
            format!("{}\n", s.socket.as_deref().unwrap_or("")),
        ));
        out.push(meta(
            &format!("virtiofs/{}/source", s.tag),
            format!("{}\n", s.source),
        ));
    }
    for (bus, file) in [
        (DeviceBus::Pci, "pci-devices"),
        (DeviceBus::Usb, "usb-devices"),
    ] {
        let list: String = config
            .devices
            .iter()
            .filter(|d| d.bus == bus)
            .map(|d| format!("{}\n", d.path))
            .collect();
        if !list.is_empty() {
            out.push(meta(file, list));
        }
    }
    if let Some(cid) = config.vsock.cid {
        out.push(meta("vsock-cid", format!("{cid}\n")));
    }
    if let Some(c) = crate::host_scripts::balloon_control(config, inv) {
        let json = serde_json::to_string(&c).unwrap_or_default();
        out.push(meta("balloon.json", json + "\n"));
    }
    let qemu = config.hypervisor == microvm_spec::types::Hypervisor::Qemu;
    let fwd = microvm_spec::forward::tap_forwards(
        qemu,
        &config.interfaces,
        &config.guest.network,
        &config.forward_ports,
    );
    if let Ok(Some(f)) = fwd {
        let json = serde_json::to_string_pretty(&f).unwrap_or_default();
        out.push(meta("forward-ports.json", json + "\n"));
    }
    out.push(meta(
        "invocation.json",
        render::to_json(inv).unwrap_or_default() + "\n",
    ));
    out.push(meta(
        "config.json",
        serde_json::to_string_pretty(config).unwrap_or_default() + "\n",
    ));
    out
}

/// The definition's `binScripts`, as microvm.nix's `writeShellScript`s: each is the whole
/// `bin/<name>` (a microvm.nix evaluation exports the merged scripts, generated lines
/// included), replacing a generated script of that name or adding a new entry.
fn add_bin_scripts(config: &Config, out: &mut Vec<PackageFile>) {
    for (name, body) in &config.bin_scripts {
        let path = format!("bin/{name}");
        let mut contents = header(config, name) + body;
        if !contents.ends_with('\n') {
            contents.push('\n');
        }
        match out.iter_mut().find(|f| f.path == path) {
            Some(f) => f.contents = contents,
            None => out.push(script(&path, &contents)),
        }
    }
}

/// Writes the package into `dir` (which must not exist yet).
pub fn write(dir: &Path, files: &[PackageFile]) -> io::Result<()> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, &f.contents)?;
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(if f.executable { 0o555 } else { 0o444 }),
        )?;
    }
    Ok(())
}

fn script(path: &str, body: &str) -> PackageFile {
    PackageFile {
        path: path.to_owned(),
        contents: body.to_owned(),
        executable: true,
    }
}

fn header(config: &Config, what: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n# {what} for MicroVM {} ({}), generated by microvm {}.\nset -eu\n",
        config.name,
        config.hypervisor,
        env!("CARGO_PKG_VERSION")
    )
}

fn render_argv(program: &str, args: &[String]) -> String {
    crate::quote::shell_join(program, args)
}

fn microvm_run(config: &Config, inv: &Invocation) -> String {
    let mut s = header(config, "microvm-run");
    let mut runtime_args = false;
    for step in &inv.pre_start {
        let _ = writeln!(
            s,
            "{}",
            match step {
                PreStart::RemoveFile(p) => format!("rm -f {}", shell_quote(p)),
                PreStart::MoveAside(p) => format!(
                    "if [ -e {0} ]; then mv {0} {1}; fi",
                    shell_quote(p),
                    shell_quote(&format!("{p}.old"))
                ),
                PreStart::CreateDir(p) => format!("mkdir -p {}", shell_quote(p)),
                PreStart::Shell(script) => script.trim_end_matches('\n').to_owned(),
                PreStart::ExtraArgs(cmd) => {
                    runtime_args = true;
                    format!("runtime_args=$({cmd})")
                }
            }
        );
    }
    for v in config.volumes.iter().filter(|v| v.auto_create) {
        let img = shell_quote(&v.image);
        let mut mkfs = format!("mkfs.{}", v.fs_type);
        if let Some(label) = &v.label {
            match v.fs_type.as_str() {
                "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" => {
                    let _ = write!(mkfs, " -L {}", shell_quote(label));
                }
                "vfat" => {
                    let _ = write!(mkfs, " -n {}", shell_quote(label));
                }
                _ => {}
            }
        }
        for a in &v.mkfs_extra_args {
            let _ = write!(mkfs, " {}", shell_quote(a));
        }
        let _ = writeln!(
            s,
            "if [ ! -e {img} ]; then\n  touch {img}\n  chattr +C {img} 2>/dev/null || true\n  truncate -s {}M {img}\n  {mkfs} {img}\nfi",
            v.size.unwrap_or(0)
        );
    }
    for f in &inv.files {
        let _ = writeln!(
            s,
            "cat > {} <<'MICROVM_EOF'\n{}\nMICROVM_EOF",
            shell_quote(&f.path),
            f.contents.trim_end_matches('\n')
        );
    }
    for fd in &inv.macvtap_fds {
        let _ = writeln!(
            s,
            "exec {}<>/dev/tap$(cat /sys/class/net/{}/ifindex)",
            fd.fd,
            shell_quote(&fd.interface)
        );
    }
    for (k, v) in &inv.env {
        let _ = writeln!(s, "export {}={}", k, shell_quote(v));
    }
    s.push_str(&render::command_line(inv));
    if runtime_args {
        // Unquoted: its words become arguments, as in microvm.nix.
        s.push_str(" $runtime_args");
    }
    s.push('\n');
    s
}

fn microvm_shutdown(inv: &Invocation) -> Option<String> {
    if !inv.capabilities.can_shutdown {
        return None;
    }
    // Wait until the hypervisor no longer answers on its socket (microvm.nix PR #578: do
    // not return before the VM is gone, whatever stdin is).
    let wait = |sock: &str| {
        format!(
            "while [ -S {0} ] && socat -u /dev/null UNIX-CONNECT:{0} 2>/dev/null; do sleep 0.5; done\n",
            shell_quote(sock)
        )
    };
    let mut s = String::from("#!/bin/sh\n# microvm-shutdown, generated by microvm.\nset -u\n");
    match &inv.shutdown {
        Shutdown::Qmp { socket, command } => {
            let _ = write!(
                s,
                "[ -S {0} ] || exit 0\nprintf '%s\\n' '{{\"execute\":\"qmp_capabilities\"}}' '{{\"execute\":\"{1}\"}}' | socat - UNIX-CONNECT:{0} >/dev/null\n{2}",
                shell_quote(socket),
                command,
                wait(socket)
            );
        }
        Shutdown::Http {
            socket,
            method,
            path,
            body,
        } => {
            let data = body
                .as_ref()
                .map(|b| format!(" -d {}", shell_quote(b)))
                .unwrap_or_default();
            let _ = write!(
                s,
                "[ -S {0} ] || exit 0\ncurl -s --unix-socket {0} -X {method} http://localhost{path}{data}\n{1}",
                shell_quote(socket),
                wait(socket)
            );
        }
        Shutdown::CrosvmPowerButton { socket } => {
            let _ = writeln!(
                s,
                "[ -S {0} ] || exit 0\ncrosvm powerbtn {0}",
                shell_quote(socket)
            );
        }
        Shutdown::Signal { .. } => return None,
    }
    Some(s)
}
