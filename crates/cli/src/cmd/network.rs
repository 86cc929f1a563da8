//! `microvm network create|list|remove`.

use std::path::Path;

use anyhow::Context as _;
use microvm_host::network::{NetworkConfig, NetworkName, NetworkStatus, Networks, Tools};

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
pub fn create_taps(taps: &[TapSetup]) -> anyhow::Result<Option<Links>> {
    if taps.is_empty() || !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let mut links = Links::new(NetHost::system());
    for tap in taps {
        links
            .create_tap(tap, None)
            .with_context(|| format!("cannot create tap {}", tap.name))?;
    }
    Ok(Some(links))
}
