//! Hand-over to systemd: what the init leaves in `/run` (a tmpfs that systemd keeps) so
//! that systemd reports readiness itself and its networkd agrees with the static
//! network the init configured. Runs after the switch, so paths are the guest's.
//!
//! - `/run/systemd/system/microvm-ready.service` (+ the `multi-user.target.wants` link):
//!   a oneshot unit ordered after `multi-user.target` that runs `/run/microvm/ready`,
//!   which finds the control port by name in sysfs and writes
//!   `READY <init-start> <uptime>` to it.
//! - `/run/systemd/network/10-microvm-<n>.network`: one per planned interface, matched
//!   by MAC, with the same static addresses, gateways, DNS and MTU (used only when the
//!   guest runs systemd-networkd; harmless otherwise). With `dhcp`: `DHCP=ipv4` under
//!   the init's client id (`ClientIdentifier=mac`: networkd renews the same lease) and
//!   router advertisements accepted (SLAAC on an IPv6 network).

use std::fmt::Write as _;
use std::path::Path;

use microvm_init::plan::{ControlChannel, NetPlan};

use super::fail::{Context, Failure};

const UNIT_DIR: &str = "/run/systemd/system";
const NETWORK_DIR: &str = "/run/systemd/network";
const READY_UNIT: &str = "microvm-ready.service";
const READY_SCRIPT: &str = "/run/microvm/ready";
/// systemd's SIGRTMIN+4 (glibc's SIGRTMIN is 34): start `poweroff.target`.
pub const POWEROFF_SIGNAL: i32 = 38;

/// Whether `init` (a path in the current root) is systemd: it resolves, through
/// symlinks such as `/sbin/init`, to a file named `systemd`.
pub fn is_systemd(init: &str) -> bool {
    std::fs::canonicalize(init)
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "systemd"))
        .unwrap_or(false)
}

/// Installs the readiness unit for `channel`. `Ok(false)` when the channel cannot be
/// written from a shell (vsock): the caller then reports readiness at hand-over.
pub fn install_ready_unit(channel: &ControlChannel, started: f64) -> Result<bool, Failure> {
    let find_device = match channel {
        ControlChannel::VirtioPort { name } => format!(
            "dev=\nfor p in /sys/class/virtio-ports/*; do\n  \
             if [ \"$(cat \"$p/name\" 2>/dev/null)\" = {name} ]; then dev=/dev/${{p##*/}}; fi\n\
             done\n",
            name = shell_quote(name)
        ),
        ControlChannel::Serial { device } => format!("dev={}\n", shell_quote(device)),
        // The console's nonce must not be written where guest programs can read it.
        ControlChannel::Vsock { .. } | ControlChannel::Console { .. } => return Ok(false),
    };
    let script = format!(
        "#!/bin/sh\n# Written by microvm-init: tells the host that the guest is up.\n\
         {find_device}\
         [ -n \"$dev\" ] || {{ echo \"microvm-ready: no control channel\" >&2; exit 1; }}\n\
         read up rest < /proc/uptime\n\
         printf 'READY {started:.3} %s\\n' \"$up\" > \"$dev\"\n"
    );
    write(READY_SCRIPT, &script)?;
    let unit = format!(
        "# Written by microvm-init at boot.\n\
         [Unit]\n\
         Description=Report readiness to the microvm host\n\
         After=multi-user.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         TimeoutStartSec=30\n\
         ExecStart=/bin/sh {READY_SCRIPT}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    let unit_path = format!("{UNIT_DIR}/{READY_UNIT}");
    write(&unit_path, &unit)?;
    let wants = format!("{UNIT_DIR}/multi-user.target.wants");
    std::fs::create_dir_all(&wants).ctx(|| format!("create {wants}"))?;
    let link = format!("{wants}/{READY_UNIT}");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&unit_path, &link).ctx(|| format!("link {link}"))?;
    Ok(true)
}

/// Writes one systemd-networkd `.network` file per planned interface.
pub fn write_network_files(network: &[NetPlan]) -> Result<(), Failure> {
    for (i, net) in network.iter().enumerate() {
        write(
            &format!("{NETWORK_DIR}/10-microvm-{i}.network"),
            &network_file(net),
        )?;
    }
    Ok(())
}

/// The `.network` file of one interface.
pub fn network_file(net: &NetPlan) -> String {
    let mut s = String::from(
        "# Written by microvm-init: the static configuration of microvm's [[network]].\n",
    );
    let _ = write!(
        s,
        "[Match]\nMACAddress={}\n\n",
        net.mac.to_ascii_lowercase()
    );
    if let Some(mtu) = net.mtu {
        let _ = write!(s, "[Link]\nMTUBytes={mtu}\n\n");
    }
    if net.dhcp {
        // The network's router advertisements (SLAAC, when it has an IPv6 subnet) and the
        // DHCP lease the init took, renewed by networkd under the init's client id.
        s.push_str("[Network]\nLinkLocalAddressing=ipv6\nIPv6AcceptRA=yes\n");
        s.push_str("KeepConfiguration=static\nDHCP=ipv4\n");
    } else {
        s.push_str(
            "[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nKeepConfiguration=static\n",
        );
    }
    for a in &net.addresses {
        let _ = writeln!(s, "Address={a}");
    }
    for g in &net.gateways {
        let _ = writeln!(s, "Gateway={g}");
    }
    for d in &net.dns {
        let _ = writeln!(s, "DNS={d}");
    }
    if net.dhcp {
        s.push_str("\n[DHCPv4]\nClientIdentifier=mac\n");
    }
    s
}

fn write(path: &str, content: &str) -> Result<(), Failure> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, content).ctx(|| format!("write {path}"))
}

/// `'…'` with embedded single quotes escaped, for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_matches_by_mac() {
        let net = NetPlan {
            mac: "02:00:00:00:00:01".into(),
            addresses: vec!["10.0.0.2/24".into()],
            gateways: vec!["10.0.0.1".into()],
            dns: vec!["1.1.1.1".into()],
            mtu: Some(1400),
            dhcp: true,
        };
        let text = network_file(&net);
        assert!(text.contains("[Match]\nMACAddress=02:00:00:00:00:01\n"));
        assert!(text.contains("MTUBytes=1400"));
        assert!(text.contains("DHCP=ipv4\n"));
        assert!(
            text.contains("IPv6AcceptRA=yes\n"),
            "SLAAC on a DHCP interface"
        );
        assert!(
            text.ends_with("\n[DHCPv4]\nClientIdentifier=mac\n"),
            "{text}"
        );
        assert!(text.contains("Address=10.0.0.2/24\nGateway=10.0.0.1\nDNS=1.1.1.1\n"));
        let fixed = network_file(&NetPlan { dhcp: false, ..net });
        assert!(fixed.contains("LinkLocalAddressing=no\nIPv6AcceptRA=no\n"));
        assert!(!fixed.contains("DHCP") && !fixed.contains("ClientIdentifier"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("microvm.ctl"), "'microvm.ctl'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
