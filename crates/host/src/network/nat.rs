//! NAT and forwarding for a network: one nftables table per network (`ip microvm-NAME`),
//! replaced atomically in one `nft -f -` transaction and deleted with the network.
//! IPv4 forwarding is switched on (it is a host-wide setting and stays on, as with
//! libvirt and Incus).

use std::fs;

use super::{io_err, run, NetworkConfig, NetworkError, Tools};

/// The table's name.
pub(super) fn table(config: &NetworkConfig) -> String {
    format!("microvm-{}", config.name)
}

/// The ruleset: masquerade from the subnet to anything outside it (towards the uplink
/// when one is named); forward from the bridge, and back to it only for replies.
pub(super) fn ruleset(config: &NetworkConfig) -> String {
    let t = table(config);
    let br = &config.bridge;
    let net = format!("{}/{}", config.ipv4.network(), config.ipv4.prefix);
    let out = match &config.uplink {
        Some(up) => format!("oifname \"{up}\" "),
        None => format!("oifname != \"{br}\" "),
    };
    let masq = if config.nat {
        format!("    ip saddr {net} ip daddr != {net} {out}masquerade\n")
    } else {
        String::new()
    };
    format!(
        "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{masq}  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
         \x20   iifname \"{br}\" accept\n\
         \x20   oifname \"{br}\" ct state established,related accept\n\
         \x20   oifname \"{br}\" ct status dnat accept\n\
         \x20   oifname \"{br}\" drop\n  }}\n}}\n"
    )
}

/// Installs (or replaces) the network's table and enables IPv4 forwarding.
pub(super) fn apply(tools: &Tools, config: &NetworkConfig) -> Result<(), NetworkError> {
    run(
        &tools.nft,
        &format!("install the nftables table {}", table(config)),
        &["-f", "-"],
        Some(&ruleset(config)),
    )?;
    if config.nat {
        let fwd = tools.procfs.join("sys/net/ipv4/ip_forward");
        fs::write(&fwd, "1").map_err(io_err("write", &fwd))?;
    }
    Ok(())
}

/// Deletes the network's table; a table that is not there is not an error.
pub(super) fn remove(tools: &Tools, config: &NetworkConfig) -> Result<(), NetworkError> {
    let t = table(config);
    run(
        &tools.nft,
        &format!("remove the nftables table {t}"),
        &["-f", "-"],
        Some(&format!("table ip {t} {{}}\ndelete table ip {t}\n")),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_its_own_table_and_masquerades_the_subnet() {
        let mut c = NetworkConfig::new(
            "net1".parse().expect("name"),
            "10.9.8.1/24".parse().expect("subnet"),
        );
        let r = ruleset(&c);
        assert!(
            r.starts_with("table ip microvm-net1 {}\ndelete table ip microvm-net1\n"),
            "{r}"
        );
        assert!(
            r.contains(
                "ip saddr 10.9.8.0/24 ip daddr != 10.9.8.0/24 oifname != \"net1\" masquerade"
            ),
            "{r}"
        );
        c.uplink = Some("eth0".into());
        assert!(ruleset(&c).contains("oifname \"eth0\" masquerade"));
        c.nat = false;
        assert!(!ruleset(&c).contains("masquerade"));
    }
}
