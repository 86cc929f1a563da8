//! `microvm network create|list|remove`.

use std::path::Path;

use anyhow::Context as _;
use microvm_host::network::{
    parse_lease_time, DhcpState, NetworkConfig, NetworkName, NetworkStatus, Networks,
    DEFAULT_NETWORK, DEFAULT_SUBNET,
};

use microvm_host::net::{Links, NetHost};
use microvm_runner::TapSetup;

use super::network_dhcp::{networks, networks_to_change};
use crate::cli::{NetworkCommand, NetworkCreateArgs, NetworkListArgs, NetworkRemoveArgs};

pub fn run(state: &Path, cmd: NetworkCommand) -> anyhow::Result<i32> {
    if let NetworkCommand::Supervise(args) = &cmd {
        return super::network_dhcp::supervise(state, args);
    }
    let nets = match &cmd {
        NetworkCommand::List(_) => networks(state)?,
        _ => networks_to_change(state)?,
    };
    match cmd {
        NetworkCommand::Create(args) => create(&nets, &args),
        NetworkCommand::List(args) => list(&nets, &args),
        NetworkCommand::Remove(args) => remove(&nets, &args),
        NetworkCommand::Supervise(_) => unreachable!("handled above"),
    }
}

fn config(args: &NetworkCreateArgs) -> anyhow::Result<NetworkConfig> {
    let name: NetworkName = args.name.parse()?;
    let mut c = NetworkConfig::new(name, args.subnet.parse()?);
    if let Some(b) = &args.bridge {
        c.bridge = b.clone();
    }
    c.uplink = args.uplink.clone();
    c.nat = !args.no_nat;
    c.domain = args.domain.clone();
    c.ipv6 = args.ipv6.as_deref().map(str::parse).transpose()?;
    c.lease_secs = parse_lease_time(&args.lease_time)?;
    c.validate()?;
    Ok(c)
}

fn create(nets: &Networks, args: &NetworkCreateArgs) -> anyhow::Result<i32> {
    let c = config(args)?;
    nets.apply(&c)
        .with_context(|| format!("cannot create network {}", c.name))?;
    let status = nets.status(&c.name)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let (lo, hi) = c.ipv4.dhcp_range();
        let v6 = c.ipv6.map(|v| format!(", {v} (SLAAC)")).unwrap_or_default();
        println!(
            "network {}: bridge {}, {}{v6}, DHCP {lo}-{hi}, domain {}{}, {}",
            c.name,
            c.bridge,
            c.ipv4,
            c.domain,
            if c.nat { ", NAT" } else { "" },
            dhcp_text(&status)
        );
    }
    Ok(0)
}

fn list(nets: &Networks, args: &NetworkListArgs) -> anyhow::Result<i32> {
    let all: Vec<NetworkStatus> = nets
        .names()?
        .iter()
        .map(|n| nets.status(n))
        .collect::<Result<_, _>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    if all.is_empty() {
        println!("no networks");
    }
    for s in &all {
        let bridge = if s.bridge_up { "" } else { " (missing)" };
        let v6 = s.config.ipv6.map(|v| format!("  {v}")).unwrap_or_default();
        println!(
            "{}  bridge {}{bridge}  {}{v6}  {}{}",
            s.config.name,
            s.config.bridge,
            s.config.ipv4,
            dhcp_text(s),
            if s.config.nat { "  NAT" } else { "" }
        );
        for l in &s.leases {
            println!(
                "  {}  {}  {}",
                l.ip,
                l.mac,
                l.hostname.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(0)
}

/// `DHCP running (dnsmasq 123, supervisor 122)`, `DHCP restarting …`, `DHCP not running`.
fn dhcp_text(s: &NetworkStatus) -> String {
    let by = match (&s.unit, s.supervisor_pid) {
        (Some(unit), _) => unit.clone(),
        (None, Some(pid)) => format!("supervisor {pid}"),
        (None, None) => "no supervisor".into(),
    };
    match (s.dhcp, s.dnsmasq_pid) {
        (DhcpState::Running, Some(pid)) => format!("DHCP running (dnsmasq {pid}, {by})"),
        (DhcpState::Restarting, _) => format!("DHCP restarting ({by})"),
        _ => "DHCP not running (`microvm network create` starts it)".into(),
    }
}

fn remove(nets: &Networks, args: &NetworkRemoveArgs) -> anyhow::Result<i32> {
    let mut code = 0;
    for name in &args.names {
        let result = name
            .parse::<NetworkName>()
            .map_err(anyhow::Error::from)
            .and_then(|n| nets.remove(&n).map_err(Into::into));
        match result {
            Ok(()) => println!("removed network {name}"),
            Err(e) => {
                eprintln!("microvm: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// The taps of an unmanaged `microvm run FILE`, created as root like a managed VM's (up,
/// on their bridge, multi-queue as planned) and removed when the returned links drop.
/// Not root: nothing is created (the hypervisor opens taps the user made beforehand).
pub fn create_taps(vm: &str, taps: &[TapSetup]) -> anyhow::Result<Option<Links>> {
    if taps.is_empty() || !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let mut links = Links::for_vm(NetHost::system(), vm);
    for tap in taps {
        links
            .create_tap(tap, None)
            .with_context(|| format!("cannot create tap {}", tap.name))?;
    }
    Ok(Some(links))
}

/// The forwarded ports of an unmanaged `microvm run FILE` as root (nftables DNAT, as a
/// managed VM's supervisor installs them), removed when the returned value drops.
pub fn forward_ports(
    state: &Path,
    vm: &str,
    runner: &Path,
) -> anyhow::Result<Option<microvm_host::network::forward::Forwarded>> {
    if !rustix::process::geteuid().is_root() {
        if runner
            .join(microvm_host::network::forward::RUNNER_FILE)
            .exists()
        {
            eprintln!("microvm: {vm}: warning: forwardPorts on a tap need root (nftables DNAT); not forwarded");
        }
        return Ok(None);
    }
    let fwd = microvm_host::network::forward::start(state, vm, runner)?;
    for line in fwd.iter().flat_map(|f| f.log_lines()) {
        eprintln!("microvm: {vm}: {line}");
    }
    Ok(fwd)
}

/// `networks` of a host file: `[networks.NAME]` with `subnet`, `bridge`, `uplink`, `nat`,
/// `domain`, `ipv6` and `leaseTime` (the options of `network create`).
pub fn parse_host_networks(
    item: &toml_edit::Item,
    file: &Path,
) -> anyhow::Result<Vec<NetworkConfig>> {
    let at = |k: &str| format!("{}: networks.{k}", file.display());
    let table = item
        .as_table_like()
        .ok_or_else(|| anyhow::anyhow!("{}: `networks` must be a table", file.display()))?;
    let mut out = Vec::new();
    for (name, net) in table.iter() {
        let net = net
            .as_table_like()
            .ok_or_else(|| anyhow::anyhow!("{}: must be a table", at(name)))?;
        let text = |k: &str| -> anyhow::Result<Option<String>> {
            net.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow::anyhow!("{}.{k}: must be a string", at(name)))
                })
                .transpose()
        };
        const KEYS: [&str; 7] = [
            "subnet",
            "bridge",
            "uplink",
            "nat",
            "domain",
            "ipv6",
            "leaseTime",
        ];
        for (k, _) in net.iter() {
            if !KEYS.contains(&k) {
                anyhow::bail!(
                    "{}: unknown key `{k}` (known: {})",
                    at(name),
                    KEYS.join(", ")
                );
            }
        }
        let subnet = text("subnet")?.unwrap_or_else(|| DEFAULT_SUBNET.to_owned());
        let mut c = NetworkConfig::new(
            name.parse().with_context(|| at(name))?,
            subnet.parse().with_context(|| at(name))?,
        );
        if let Some(b) = text("bridge")? {
            c.bridge = b;
        }
        c.uplink = text("uplink")?;
        if let Some(d) = text("domain")? {
            c.domain = d;
        }
        if let Some(v6) = text("ipv6")? {
            c.ipv6 = Some(v6.parse().with_context(|| at(name))?);
        }
        if let Some(t) = text("leaseTime")? {
            c.lease_secs = parse_lease_time(&t).with_context(|| at(name))?;
        }
        if let Some(v) = net.get("nat") {
            c.nat = v
                .as_bool()
                .ok_or_else(|| anyhow::anyhow!("{}.nat: must be true or false", at(name)))?;
        }
        c.validate().with_context(|| at(name))?;
        out.push(c);
    }
    Ok(out)
}

/// What `host apply` did to a network: (name, action, detail).
pub type NetworkAction = (String, &'static str, Option<String>);

/// Applies a host file's networks (before its VMs, whose taps join them) and removes the
/// networks this host file created earlier but no longer lists.
pub fn apply_host_networks(
    state: &Path,
    file: &Path,
    wanted: &[NetworkConfig],
    dry_run: bool,
) -> anyhow::Result<Vec<NetworkAction>> {
    let nets = if dry_run {
        networks(state)?
    } else {
        networks_to_change(state)?
    };
    // One change of the networks from the first read to the last removal: another
    // `host apply` or `network create|remove` waits (VMs start after it is released).
    let lock = if dry_run { None } else { Some(nets.lock()?) };
    let mut actions = Vec::new();
    for c in wanted {
        let before = nets.get(&c.name)?;
        let verb = match (&before, dry_run) {
            (Some(b), _) if b == c => "unchanged",
            (Some(_), true) => "update",
            (None, true) => "create",
            (Some(_), false) => "updated",
            (None, false) => "created",
        };
        if let Some(lock) = &lock {
            if let Err(e) = lock
                .apply(c)
                .and_then(|()| lock.set_managed_by(&c.name, file))
            {
                actions.push((c.name.to_string(), "failed", Some(e.to_string())));
                continue;
            }
        }
        actions.push((
            c.name.to_string(),
            verb,
            Some(format!("network {}", c.ipv4)),
        ));
    }
    for name in nets.names()? {
        if wanted.iter().any(|c| c.name == name) || nets.managed_by(&name).as_deref() != Some(file)
        {
            continue;
        }
        let Some(lock) = &lock else {
            actions.push((name.to_string(), "remove", Some("network".into())));
            continue;
        };
        match lock.remove(&name) {
            Ok(()) => actions.push((name.to_string(), "removed", Some("network".into()))),
            Err(e) => actions.push((name.to_string(), "failed", Some(e.to_string()))),
        }
    }
    Ok(actions)
}

/// The `networks` table of a host file's text (none: no networks).
pub fn host_file_networks(text: &str, file: &Path) -> anyhow::Result<Vec<NetworkConfig>> {
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    match doc.get("networks") {
        Some(item) => parse_host_networks(item, file),
        None => Ok(Vec::new()),
    }
}

/// `host install --network`: the default network, as `network create` makes it.
pub fn create_default(state: &Path) -> anyhow::Result<()> {
    let nets = networks_to_change(state)?;
    let c = NetworkConfig::new(DEFAULT_NETWORK.parse()?, DEFAULT_SUBNET.parse()?);
    nets.apply(&c)
        .with_context(|| format!("cannot create network {}", c.name))?;
    println!(
        "network {}: bridge {}, {}, NAT, DHCP and DNS",
        c.name, c.bridge, c.ipv4
    );
    Ok(())
}
