//! The network's bridge: created with `ip`, marked with the alias `microvm:net:NAME` (so
//! microvm only ever changes or removes a bridge it made), with exactly the host's
//! address of the subnet.

use std::fs;

use super::{run, NetworkConfig, NetworkError, Tools};

fn alias(config: &NetworkConfig) -> String {
    format!("microvm:net:{}", config.name)
}

fn ip(tools: &Tools, what: &str, args: &[&str]) -> Result<String, NetworkError> {
    run(&tools.ip, what, args, None)
}

/// The alias of an existing link, `None` when there is no such link.
fn link_alias(tools: &Tools, link: &str) -> Option<String> {
    let dir = tools.sysfs.join("class/net").join(link);
    if !dir.exists() {
        return None;
    }
    Some(
        fs::read_to_string(dir.join("ifalias"))
            .unwrap_or_default()
            .trim()
            .to_string(),
    )
}

/// Creates the bridge (or adopts the one an earlier `apply` made), sets its address and
/// brings it up.
pub(super) fn ensure(tools: &Tools, config: &NetworkConfig) -> Result<(), NetworkError> {
    let br = config.bridge.as_str();
    let want = alias(config);
    match link_alias(tools, br) {
        Some(a) if a == want => {}
        Some(a) => {
            return Err(NetworkError::ForeignBridge {
                bridge: br.into(),
                alias: a,
            })
        }
        None => {
            ip(
                tools,
                &format!("create bridge {br}"),
                &["link", "add", br, "type", "bridge"],
            )?;
            ip(
                tools,
                &format!("mark bridge {br}"),
                &["link", "set", br, "alias", &want],
            )?;
        }
    }
    set_addresses(tools, br, "-4", Some(config.ipv4.to_string()))?;
    let v6 = config.ipv6.map(|v| v.to_string());
    if v6.is_some() {
        // A host that disables IPv6 by default would refuse the address.
        let knob = tools
            .procfs
            .join(format!("sys/net/ipv6/conf/{br}/disable_ipv6"));
        if knob.exists() {
            fs::write(&knob, "0").map_err(super::io_err("write", &knob))?;
        }
    }
    set_addresses(tools, br, "-6", v6)?;
    ip(
        tools,
        &format!("bring up bridge {br}"),
        &["link", "set", br, "up"],
    )?;
    Ok(())
}

/// Gives `br` exactly `want` as its one address of `family` (`-4`, or `-6`: global scope
/// only, link-local addresses are the kernel's), or none.
fn set_addresses(
    tools: &Tools,
    br: &str,
    family: &str,
    want: Option<String>,
) -> Result<(), NetworkError> {
    let shown = ip(
        tools,
        &format!("read the addresses of {br}"),
        &[family, "-o", "addr", "show", "dev", br, "scope", "global"],
    )?;
    let inet = if family == "-4" { "inet" } else { "inet6" };
    let addrs: Vec<&str> = shown
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != inet).nth(1))
        .collect();
    let wanted: Vec<&str> = want.as_deref().into_iter().collect();
    if addrs == wanted {
        return Ok(());
    }
    ip(
        tools,
        &format!("clear the addresses of {br}"),
        &[family, "addr", "flush", "dev", br, "scope", "global"],
    )?;
    if let Some(addr) = &want {
        // No duplicate address detection: the host's address on its own bridge is usable
        // at once (dnsmasq binds to it).
        let nodad: &[&str] = if family == "-6" { &["nodad"] } else { &[] };
        let mut args = vec![family, "addr", "add", addr.as_str(), "dev", br];
        args.extend(nodad);
        ip(tools, &format!("set address {addr} on {br}"), &args)?;
    }
    Ok(())
}

/// Deletes the bridge if it is the one microvm made for this network (taps still on it
/// are detached by the kernel, not deleted).
pub(super) fn remove(tools: &Tools, config: &NetworkConfig) -> Result<(), NetworkError> {
    let br = config.bridge.as_str();
    if link_alias(tools, br).is_some_and(|a| a == alias(config)) {
        ip(
            tools,
            &format!("remove bridge {br}"),
            &["link", "delete", br],
        )?;
    }
    Ok(())
}
