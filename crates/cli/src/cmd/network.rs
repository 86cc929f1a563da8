//! `microvm network create|list|remove`.

use std::path::Path;

use anyhow::Context as _;
use microvm_host::network::{
    NetworkConfig, NetworkName, NetworkStatus, Networks, Tools, DEFAULT_NETWORK, DEFAULT_SUBNET,
};

use microvm_host::net::{Links, NetHost};
use microvm_runner::TapSetup;

use crate::cli::{NetworkCommand, NetworkCreateArgs, NetworkListArgs, NetworkRemoveArgs};

pub fn run(state: &Path, cmd: NetworkCommand) -> anyhow::Result<i32> {
    let nets = Networks::new(state, Tools::system());
    match cmd {
        NetworkCommand::Create(args) => create(&nets, &args),
        NetworkCommand::List(args) => list(&nets, &args),
        NetworkCommand::Remove(args) => remove(&nets, &args),
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
        println!(
            "network {}: bridge {}, {}, DHCP {lo}-{hi}, domain {}{}",
            c.name,
            c.bridge,
            c.ipv4,
            c.domain,
            if c.nat { ", NAT" } else { "" }
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
        let dns = match s.dnsmasq_pid {
            Some(pid) => format!("dnsmasq {pid}"),
            None => "dnsmasq not running".into(),
        };
        let bridge = if s.bridge_up { "" } else { " (missing)" };
        println!(
            "{}  bridge {}{bridge}  {}  {}{}",
            s.config.name,
            s.config.bridge,
            s.config.ipv4,
            dns,
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

/// `networks` of a host file, made absolute: `[networks.NAME]` with `subnet` (required),
/// `bridge`, `uplink`, `nat`, `domain` (the options of `network create`).
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
        for (k, _) in net.iter() {
            if !["subnet", "bridge", "uplink", "nat", "domain"].contains(&k) {
                anyhow::bail!(
                    "{}: unknown key `{k}` (known: subnet, bridge, uplink, nat, domain)",
                    at(name)
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
    let nets = Networks::new(state, Tools::system());
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
        if !dry_run {
            if let Err(e) = nets
                .apply(c)
                .and_then(|()| nets.set_managed_by(&c.name, file))
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
        if dry_run {
            actions.push((name.to_string(), "remove", Some("network".into())));
            continue;
        }
        match nets.remove(&name) {
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
    let nets = Networks::new(state, Tools::system());
    let c = NetworkConfig::new(DEFAULT_NETWORK.parse()?, DEFAULT_SUBNET.parse()?);
    nets.apply(&c)
        .with_context(|| format!("cannot create network {}", c.name))?;
    println!(
        "network {}: bridge {}, {}, NAT, DHCP and DNS",
        c.name, c.bridge, c.ipv4
    );
    Ok(())
}
