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
    let addr = config.ipv4.to_string();
    let shown = ip(
        tools,
        &format!("read the addresses of {br}"),
        &["-4", "-o", "addr", "show", "dev", br],
    )?;
    let addrs: Vec<&str> = shown
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .collect();
    if addrs != [addr.as_str()] {
        ip(
            tools,
            &format!("clear the addresses of {br}"),
            &["-4", "addr", "flush", "dev", br],
        )?;
        ip(
            tools,
            &format!("set address {addr} on {br}"),
            &["addr", "add", &addr, "dev", br],
        )?;
    }
    ip(
        tools,
        &format!("bring up bridge {br}"),
        &["link", "set", br, "up"],
    )?;
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
