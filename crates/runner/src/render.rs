//! Human rendering of an [`Invocation`] (golden files, `microvm plan`), and JSON.
//!
//! The command block is copy-pasteable into a POSIX shell run in the VM's working
//! directory: `export` lines for the environment, then `exec [-a NAME] PROGRAM ARGS…`
//! with one option per line and `\` continuations. Everything else is descriptive.

use std::fmt::Write as _;

use crate::quote::{shell_assignment, shell_join, shell_quote};
use crate::{ControlChannel, HelperKind, Invocation, PreStart, Shutdown};

/// The `exec` line as one line (for `bin/microvm-run` scripts).
pub fn command_line(inv: &Invocation) -> String {
    let mut out = String::from("exec ");
    if let Some(name) = &inv.process_name {
        let _ = write!(out, "-a {} ", shell_quote(name));
    }
    out.push_str(&shell_join(&inv.program, &inv.args));
    out
}

/// `program args…` broken before every argument that starts with `-`, indented.
fn multiline(prefix: &str, program: &str, args: &[String], indent: &str) -> String {
    let mut out = format!("{indent}{prefix}{}", shell_quote(program));
    let cont = format!(" \\\n{indent}  ");
    for (i, arg) in args.iter().enumerate() {
        let starts_option = arg.starts_with('-') && arg.len() > 1;
        if i == 0 || starts_option {
            out.push_str(&cont);
        } else {
            out.push(' ');
        }
        out.push_str(&shell_quote(arg));
    }
    out.push('\n');
    out
}

fn pre_start_line(step: &PreStart) -> String {
    match step {
        PreStart::RemoveFile(p) => format!("rm -f {}", shell_quote(p)),
        PreStart::MoveAside(p) => {
            format!(
                "test -e {0} && mv {0} {1}",
                shell_quote(p),
                shell_quote(&format!("{p}.old"))
            )
        }
        PreStart::CreateDir(p) => format!("mkdir -p {}", shell_quote(p)),
        PreStart::Shell(script) => script.trim_end().replace('\n', "\n  "),
        PreStart::ExtraArgs(cmd) => {
            format!("runtime_args=$({cmd})  # its words are appended to the command")
        }
    }
}

fn shutdown_text(s: &Shutdown) -> String {
    match s {
        Shutdown::Qmp { socket, command } => format!("QMP {command} on {socket}"),
        Shutdown::Http {
            socket,
            method,
            path,
            body,
        } => match body {
            Some(b) => format!("HTTP {method} {path} on {socket} with {b}"),
            None => format!("HTTP {method} {path} on {socket}"),
        },
        Shutdown::CrosvmPowerButton { socket } => format!("crosvm powerbtn {socket}"),
        Shutdown::Signal { signal } => format!("{signal} (no graceful shutdown)"),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The whole plan, for people.
pub fn render(inv: &Invocation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hypervisor: {}", inv.hypervisor);
    out.push_str("command:\n");
    for (k, v) in &inv.env {
        let _ = writeln!(out, "  export {}", shell_assignment(k, v));
    }
    let prefix = match &inv.process_name {
        Some(name) => format!("exec -a {} ", shell_quote(name)),
        None => "exec ".to_owned(),
    };
    out.push_str(&multiline(&prefix, &inv.program, &inv.args, "  "));

    if !inv.helpers.is_empty() {
        out.push_str("helpers:\n");
        for h in &inv.helpers {
            let kind = match &h.kind {
                HelperKind::Virtiofsd { tag } => format!("virtiofsd for share {tag}"),
                HelperKind::GpuDevice => "GPU device".to_owned(),
            };
            let socket = h
                .socket
                .as_deref()
                .map(|s| format!(", socket {s}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {} ({kind}{socket}):", h.name);
            out.push_str(&multiline("", &h.program, &h.args, "    "));
        }
    }
    if !inv.pre_start.is_empty() {
        out.push_str("pre-start:\n");
        for step in &inv.pre_start {
            let _ = writeln!(out, "  {}", pre_start_line(step));
        }
    }
    if !inv.files.is_empty() {
        out.push_str("files:\n");
        for f in &inv.files {
            let _ = writeln!(out, "  {} (mode {:04o}):", f.path, f.mode);
            for line in f.contents.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    if !inv.taps.is_empty() {
        out.push_str("taps:\n");
        for t in &inv.taps {
            let mut flags = Vec::new();
            if t.vnet_hdr {
                flags.push("vnet_hdr".to_owned());
            }
            if t.multi_queue {
                flags.push("multi_queue".to_owned());
            }
            if let Some(b) = &t.bridge {
                flags.push(format!("bridge {b}"));
            }
            let _ = writeln!(out, "  {} ({})", t.name, flags.join(", "));
        }
    }
    if !inv.macvtap_fds.is_empty() {
        out.push_str("macvtap fds:\n");
        for m in &inv.macvtap_fds {
            let _ = writeln!(out, "  fd {}: {} queue {}", m.fd, m.interface, m.queue);
        }
    }
    let _ = writeln!(out, "kernel cmdline: {}", inv.kernel_cmdline);
    let _ = writeln!(
        out,
        "control socket: {}",
        inv.control_socket.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "shutdown: {}", shutdown_text(&inv.shutdown));
    let channel = match &inv.control_channel {
        None => "none".to_owned(),
        Some(ControlChannel::VirtioSerial { socket, port }) => {
            format!("virtio-serial port {port} on {socket}")
        }
        Some(ControlChannel::HybridVsock { socket, port }) => {
            format!("hybrid vsock port {port} on {socket}_{port}")
        }
        Some(ControlChannel::Console { param }) => {
            format!("serial console, lines framed by the nonce in {param}=")
        }
    };
    let _ = writeln!(out, "control channel: {channel}");
    let c = &inv.capabilities;
    let _ = writeln!(
        out,
        "capabilities: can_shutdown={} notify_socket={} tap_multi_queue={} readiness={}",
        yes(c.can_shutdown),
        yes(c.supports_notify_socket),
        yes(c.tap_multi_queue),
        yes(c.readiness)
    );
    if !inv.warnings.is_empty() {
        out.push_str("warnings:\n");
        for w in &inv.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

/// The plan as pretty JSON.
pub fn to_json(inv: &Invocation) -> serde_json::Result<String> {
    serde_json::to_string_pretty(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capabilities, TapSetup};
    use microvm_spec::types::Hypervisor;

    fn inv() -> Invocation {
        Invocation {
            hypervisor: Hypervisor::Qemu,
            program: "qemu-system-x86_64".into(),
            args: vec![
                "-name".into(),
                "vm 1".into(),
                "-nographic".into(),
                "-append".into(),
                "a b".into(),
            ],
            process_name: Some("microvm@vm1".into()),
            env: vec![("HOME".into(), "/x y".into())],
            files: vec![],
            helpers: vec![],
            pre_start: vec![PreStart::RemoveFile("vm1.sock".into())],
            control_socket: Some("vm1.sock".into()),
            shutdown: Shutdown::Signal {
                signal: "SIGTERM".into(),
            },
            control_channel: None,
            taps: vec![TapSetup {
                name: "t0".into(),
                vnet_hdr: true,
                multi_queue: false,
                bridge: None,
            }],
            macvtap_fds: vec![],
            kernel_cmdline: "a b".into(),
            capabilities: Capabilities {
                can_shutdown: false,
                supports_notify_socket: false,
                tap_multi_queue: false,
                readiness: false,
            },
            warnings: vec!["w".into()],
        }
    }

    #[test]
    fn renders() {
        let text = render(&inv());
        assert!(text.contains(
            "  export HOME='/x y'\n  exec -a microvm@vm1 qemu-system-x86_64 \\\n    -name 'vm 1' \\\n    -nographic \\\n    -append 'a b'\n"
        ), "{text}");
        assert!(text.contains("pre-start:\n  rm -f vm1.sock\n"));
        assert!(text.contains("taps:\n  t0 (vnet_hdr)\n"));
        assert!(text.contains("warnings:\n  - w\n"));
        assert_eq!(
            command_line(&inv()),
            "exec -a microvm@vm1 qemu-system-x86_64 -name 'vm 1' -nographic -append 'a b'"
        );
        assert!(to_json(&inv())
            .expect("json")
            .contains("\"processName\": \"microvm@vm1\""));
    }
}
