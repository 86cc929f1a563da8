//! NAT and forwarding for a network: one nftables table per network and family
//! (`ip microvm-NAME`, and `ip6 microvm-NAME` with an IPv6 subnet), replaced atomically
//! in one `nft -f -` transaction and deleted with the network. Forwarding is switched on
//! for the families NAT is used for (it is a host-wide setting and stays on, as with
//! libvirt and Incus).

use std::fs;

use super::{io_err, run, NetworkConfig, NetworkError, Tools};

/// The table's name.
pub(super) fn table(config: &NetworkConfig) -> String {
    format!("microvm-{}", config.name)
}

/// The ruleset: the IPv4 table, and the IPv6 one when the network has an IPv6 subnet
/// (otherwise a table an earlier configuration left is deleted).
pub(super) fn ruleset(config: &NetworkConfig) -> String {
    let t = table(config);
    let net4 = format!("{}/{}", config.ipv4.network(), config.ipv4.prefix);
    let mut r = family_table(config, "ip", &net4);
    match config.ipv6 {
        Some(v6) => r.push_str(&family_table(
            config,
            "ip6",
            &format!("{}/{}", v6.network(), super::Ipv6Subnet::PREFIX),
        )),
        None => r.push_str(&format!("table ip6 {t} {{}}\ndelete table ip6 {t}\n")),
    }
    r
}

/// One family's table: masquerade from the subnet to anything outside it (towards the
/// uplink when one is named); forward from the bridge, and back to it only for replies.
fn family_table(config: &NetworkConfig, family: &str, net: &str) -> String {
    let t = table(config);
    let br = &config.bridge;
    let out = match &config.uplink {
        Some(up) => format!("oifname \"{up}\" "),
        None => format!("oifname != \"{br}\" "),
    };
    let masq = if config.nat {
        format!("    {family} saddr {net} {family} daddr != {net} {out}masquerade\n")
    } else {
        String::new()
    };
    format!(
        "table {family} {t} {{}}\ndelete table {family} {t}\ntable {family} {t} {{\n\
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
        if config.ipv6.is_some() {
            let fwd = tools.procfs.join("sys/net/ipv6/conf/all/forwarding");
            fs::write(&fwd, "1").map_err(io_err("write", &fwd))?;
        }
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
        Some(&format!(
            "table ip {t} {{}}\ndelete table ip {t}\ntable ip6 {t} {{}}\ndelete table ip6 {t}\n"
        )),
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
        assert!(
            ruleset(&c).ends_with("table ip6 microvm-net1 {}\ndelete table ip6 microvm-net1\n"),
            "no IPv6: an old ip6 table is deleted"
        );
        c.ipv6 = Some("fd77:0:0:1::1/64".parse().expect("v6"));
        assert!(ruleset(&c).contains(
            "ip6 saddr fd77:0:0:1::/64 ip6 daddr != fd77:0:0:1::/64 oifname \"eth0\" masquerade"
        ));
        c.nat = false;
        assert!(!ruleset(&c).contains("masquerade"));
    }
}
