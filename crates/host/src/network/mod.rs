//! Host networks: a Linux bridge with an IPv4 (and optionally an IPv6) subnet, NAT to
//! the uplink (nftables, one table per network and family) and DHCP + DNS (dnsmasq, one
//! process per network, supervised: `supervise.rs`), so that taps attached to the bridge
//! reach each other by name and the outside world.
//!
//! Every part shells out to the real tool (`ip`, `nft`, `dnsmasq`, `systemctl`) with
//! argv. A network's record, the pid files, the log and the lease file live in
//! `<state>/.networks/NAME/`. [`Networks::apply`] is idempotent: it makes the host match
//! the configuration, replacing what an earlier configuration of the same network left;
//! [`Networks::remove`] leaves no link, rule, lease file or process behind. Every change
//! runs under one lock per state directory (`lock.rs`), so concurrent ones wait for each
//! other.

mod bridge;
mod config;
mod dnsmasq;
pub mod forward;
mod leases;
mod lock;
mod nat;
mod supervise;

use std::fs;
use std::path::{Path, PathBuf};

pub use config::{
    parse_lease_time, Ipv4Subnet, Ipv6Subnet, NetworkConfig, NetworkName, DEFAULT_LEASE_SECS,
    DEFAULT_NETWORK, DEFAULT_SUBNET,
};
pub use leases::Lease;
pub use lock::NetworksLock;
pub use supervise::{stop_on_signals, unit_name, Backoff, Supervision, LOG_LIMIT};

/// Where a host's network tools are (names looked up on PATH, or paths).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub nft: PathBuf,
    pub dnsmasq: PathBuf,
    /// `/sys`.
    pub sysfs: PathBuf,
    /// `/proc`.
    pub procfs: PathBuf,
}

impl Tools {
    pub fn system() -> Tools {
        Tools {
            ip: "ip".into(),
            nft: "nft".into(),
            dnsmasq: "dnsmasq".into(),
            sysfs: "/sys".into(),
            procfs: "/proc".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid network: {0}")]
    Invalid(String),
    #[error("bridge {bridge} exists and was not created by microvm (its alias is {alias:?}); choose another bridge name or remove it")]
    ForeignBridge { bridge: String, alias: String },
    #[error("network {0} does not exist")]
    NotFound(String),
    #[error("dnsmasq of network {name} did not start: {log}")]
    DnsmasqStart { name: String, log: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { what, path, source }
}

/// Runs a tool; on failure the error shows the exact argv and its stderr.
fn run(
    program: &Path,
    what: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NetworkError> {
    Ok(crate::tool::run(program, what, args, stdin)?)
}

/// The networks of one state directory: `<state>/.networks/NAME/`.
#[derive(Debug, Clone)]
pub struct Networks {
    state_root: PathBuf,
    root: PathBuf,
    tools: Tools,
    supervision: Supervision,
}

/// Whether a network's DHCP and DNS serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DhcpState {
    /// dnsmasq runs.
    Running,
    /// The supervisor runs and restarts dnsmasq (after a crash, with a backoff).
    Restarting,
    /// Neither runs: `network create` (or `host apply`) starts them again.
    Stopped,
}

/// A network as `list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    #[serde(flatten)]
    pub config: NetworkConfig,
    /// Whether the bridge exists.
    pub bridge_up: bool,
    pub dhcp: DhcpState,
    /// dnsmasq's pid when it runs.
    pub dnsmasq_pid: Option<u32>,
    /// The supervisor's pid when it runs.
    pub supervisor_pid: Option<u32>,
    /// The systemd unit that supervises it, under systemd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub leases: Vec<Lease>,
}

impl Networks {
    /// The networks of `state_root`, supervised by detached processes of this program.
    pub fn new(state_root: &Path, tools: Tools) -> Networks {
        let microvm = std::env::current_exe().unwrap_or_else(|_| "microvm".into());
        Networks {
            state_root: state_root.to_path_buf(),
            root: state_root.join(".networks"),
            tools,
            supervision: Supervision::Process { microvm },
        }
    }

    /// The same, with another supervision.
    pub fn supervised_by(mut self, supervision: Supervision) -> Networks {
        self.supervision = supervision;
        self
    }

    /// `<state>/.networks/NAME`.
    pub fn dir(&self, name: &NetworkName) -> PathBuf {
        self.root.join(name.as_str())
    }

    fn record_path(&self, name: &NetworkName) -> PathBuf {
        self.dir(name).join("network.json")
    }

    /// The recorded configuration of a network, if it exists.
    pub fn get(&self, name: &NetworkName) -> Result<Option<NetworkConfig>, NetworkError> {
        let path = self.record_path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| NetworkError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// The names of the recorded networks, sorted.
    pub fn names(&self) -> Result<Vec<NetworkName>, NetworkError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.root)(e)),
        };
        let mut names: Vec<NetworkName> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|n| self.record_path(n).exists())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Makes the host match `config`: bridge and addresses, NAT tables, the supervised
    /// dnsmasq. Applying the same configuration again changes nothing (a dnsmasq that is
    /// not running is started); a changed one replaces the old parts and restarts it.
    /// Waits for another change of these networks to end first.
    pub fn apply(&self, config: &NetworkConfig) -> Result<(), NetworkError> {
        config.validate()?;
        let _lock = self.lock()?;
        self.apply_locked(config)
    }

    /// [`Networks::apply`] of a validated `config`, under the lock.
    fn apply_locked(&self, config: &NetworkConfig) -> Result<(), NetworkError> {
        let dir = self.dir(&config.name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let hosts = dir.join(forward::HOSTS);
        fs::create_dir_all(&hosts).map_err(io_err("create", &hosts))?;
        let old = self.get(&config.name)?;
        if let Some(old) = old.as_ref().filter(|o| o.bridge != config.bridge) {
            self.teardown(old)?;
        }
        bridge::ensure(&self.tools, config)?;
        nat::apply(&self.tools, config)?;
        let changed = old.as_ref() != Some(config);
        let record = serde_json::to_vec_pretty(config).expect("serializable");
        let path = self.record_path(&config.name);
        fs::write(&path, record).map_err(io_err("write", &path))?;
        self.start_dhcp(config, changed)
    }

    /// Removes a network: dnsmasq, the NAT table, the bridge, the lease file and record.
    /// Removing a network that does not exist is an error; nothing else is. Waits for
    /// another change of these networks to end first.
    pub fn remove(&self, name: &NetworkName) -> Result<(), NetworkError> {
        self.lock()?.remove(name)
    }

    fn remove_locked(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let config = self
            .get(name)?
            .ok_or_else(|| NetworkError::NotFound(name.to_string()))?;
        self.teardown(&config)?;
        let dir = self.dir(name);
        fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))
    }

    fn teardown(&self, config: &NetworkConfig) -> Result<(), NetworkError> {
        self.stop_dhcp(&config.name)?;
        nat::remove(&self.tools, config)?;
        bridge::remove(&self.tools, config)
    }

    /// A network's state: bridge, dnsmasq, leases.
    pub fn status(&self, name: &NetworkName) -> Result<NetworkStatus, NetworkError> {
        let config = self
            .get(name)?
            .ok_or_else(|| NetworkError::NotFound(name.to_string()))?;
        let dir = self.dir(name);
        let dnsmasq_pid = dnsmasq::running(&self.tools, &dir);
        let supervisor_pid = self.supervisor_pid(name);
        let dhcp = match (dnsmasq_pid, supervisor_pid) {
            (Some(_), _) => DhcpState::Running,
            (None, Some(_)) => DhcpState::Restarting,
            (None, None) => DhcpState::Stopped,
        };
        let unit = matches!(self.supervision, Supervision::Systemd { .. }).then(|| unit_name(name));
        Ok(NetworkStatus {
            dhcp,
            supervisor_pid,
            unit,
            bridge_up: self
                .tools
                .sysfs
                .join("class/net")
                .join(&config.bridge)
                .exists(),
            dnsmasq_pid,
            leases: leases::read(&dir.join(dnsmasq::LEASES))?,
            config,
        })
    }

    /// Records that a host file manages this network (`host apply` removes it when the
    /// file no longer lists it).
    pub fn set_managed_by(&self, name: &NetworkName, file: &Path) -> Result<(), NetworkError> {
        self.lock()?.set_managed_by(name, file)
    }

    fn set_managed_by_locked(&self, name: &NetworkName, file: &Path) -> Result<(), NetworkError> {
        if self.get(name)?.is_none() {
            return Err(NetworkError::NotFound(name.to_string()));
        }
        let path = self.dir(name).join("managed-by");
        fs::write(&path, file.as_os_str().as_encoded_bytes()).map_err(io_err("write", &path))
    }

    /// The host file that manages this network, if any.
    pub fn managed_by(&self, name: &NetworkName) -> Option<PathBuf> {
        let bytes = fs::read(self.dir(name).join("managed-by")).ok()?;
        Some(PathBuf::from(String::from_utf8(bytes).ok()?))
    }

    /// The leases of every network (for `list`/`status` to find a VM's addresses).
    pub fn all_leases(&self) -> Result<Vec<(NetworkName, Lease)>, NetworkError> {
        let mut all = Vec::new();
        for name in self.names()? {
            for lease in leases::read(&self.dir(&name).join(dnsmasq::LEASES))? {
                all.push((name.clone(), lease));
            }
        }
        Ok(all)
    }
}
