//! `microvm network …`: host networks (bridge, NAT, DHCP and DNS).

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// Create a network, or make an existing one match the options (idempotent): a bridge
    /// with the host's address, NAT to the uplink (nftables) and DHCP + DNS (dnsmasq).
    Create(NetworkCreateArgs),
    /// List the networks with their bridges, dnsmasq and leases.
    List(NetworkListArgs),
    /// Remove networks: dnsmasq, the NAT table, the bridge and the leases.
    Remove(NetworkRemoveArgs),
    /// Run a network's DHCP and DNS in the foreground: the bridge and NAT made to match,
    /// dnsmasq restarted with a backoff whenever it exits, until SIGTERM (what `network
    /// create` starts detached and `microvm-network@NAME.service` runs).
    #[command(hide = true)]
    Supervise(NetworkSuperviseArgs),
}

#[derive(Debug, clap::Args)]
pub struct NetworkSuperviseArgs {
    /// The network.
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct NetworkCreateArgs {
    /// The network's name (also the bridge's, unless --bridge).
    #[arg(default_value = microvm_host::network::DEFAULT_NETWORK)]
    pub name: String,
    /// The host's address on the bridge and the prefix; DHCP hands out .10 to .250 of a /24.
    #[arg(long, default_value = microvm_host::network::DEFAULT_SUBNET, value_name = "ADDR/PREFIX")]
    pub subnet: String,
    /// The bridge's name.
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Masquerade only towards this interface (default: any other than the bridge).
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// No NAT: the VMs reach the host and each other only.
    #[arg(long)]
    pub no_nat: bool,
    /// The DNS domain of the VMs' names.
    #[arg(long, default_value = "microvm")]
    pub domain: String,
    /// An IPv6 subnet: the host's address and /64 (router advertisements for SLAAC,
    /// stateless DHCPv6, NAT66 unless --no-nat).
    #[arg(long, value_name = "ADDR/64")]
    pub ipv6: Option<String>,
    /// The DHCP lease time: seconds, or with s, m, h or d (2m to 365d).
    #[arg(long, default_value = "12h", value_name = "TIME")]
    pub lease_time: String,
    /// Print the network as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct NetworkListArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct NetworkRemoveArgs {
    /// The networks.
    #[arg(required = true)]
    pub names: Vec<String>,
}
