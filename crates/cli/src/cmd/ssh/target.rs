//! Where `microvm ssh` connects, from the booted runner's resolved configuration
//! (`share/microvm/config.json`) and the host networks' leases.

use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use microvm_host::network::{Lease, NetworkName};
use microvm_spec::types::{Hypervisor, MacAddr, VsockCid};
use serde::Deserialize;

/// The resolved configuration is read at most this far.
const MAX_CONFIG: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP to port 22 of this address.
    Address(IpAddr),
    /// AF_VSOCK to port 22 of this guest CID (vhost-vsock: qemu, crosvm, kvmtool, alioth).
    Vsock { cid: u32 },
    /// The hybrid vsock Unix socket of cloud-hypervisor and firecracker, `CONNECT 22`.
    HybridVsock { socket: PathBuf },
}

/// The parts of a runner's `config.json` that `ssh` and `status` read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunnerView {
    hypervisor: Option<Hypervisor>,
    vsock: VsockView,
    interfaces: Vec<MacView>,
    guest: GuestView,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct VsockView {
    cid: Option<VsockCid>,
    ssh: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MacView {
    mac: Option<MacAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GuestView {
    network: Vec<StaticView>,
    ssh: SshView,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StaticView {
    mac: Option<MacAddr>,
    addresses: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SshView {
    authorized_keys: Vec<String>,
    authorized_key_files: Vec<PathBuf>,
}

impl RunnerView {
    /// Reads `RUNNER/share/microvm/config.json`; a runner without one (adopted from
    /// microvm.nix) is an error naming the file.
    pub fn read(runner: &Path) -> anyhow::Result<RunnerView> {
        let path = runner.join("share/microvm/config.json");
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_CONFIG).read_to_string(&mut text))
            .with_context(|| {
                format!(
                    "cannot read {} (a runner not built by microvm has no configuration to find the VM's keys and address in)",
                    path.display()
                )
            })?;
        Self::parse(&text).with_context(|| format!("cannot parse {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<RunnerView> {
        Ok(serde_json::from_str(text)?)
    }

    pub fn has_keys(&self) -> bool {
        let s = &self.guest.ssh;
        !s.authorized_keys.is_empty() || !s.authorized_key_files.is_empty()
    }

    fn macs(&self) -> impl Iterator<Item = MacAddr> + '_ {
        self.interfaces.iter().filter_map(|i| i.mac)
    }

    /// Static addresses of the VM's own interfaces, without their prefix length.
    fn static_addresses(&self) -> Vec<IpAddr> {
        let macs: Vec<MacAddr> = self.macs().collect();
        self.guest
            .network
            .iter()
            .filter(|n| n.mac.is_some_and(|m| macs.contains(&m)))
            .flat_map(|n| &n.addresses)
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect()
    }

    /// The VM's leases (matched by its interfaces' MACs), the newest first.
    fn leases<'a>(&self, leases: &'a [(NetworkName, Lease)]) -> Vec<&'a (NetworkName, Lease)> {
        let macs: Vec<String> = self.macs().map(|m| m.to_string()).collect();
        let mut mine: Vec<_> = leases
            .iter()
            .filter(|(_, l)| macs.iter().any(|m| m.eq_ignore_ascii_case(&l.mac)))
            .collect();
        mine.sort_by_key(|(_, l)| std::cmp::Reverse(l.expires));
        mine
    }

    /// Where to connect: vsock when `vsock.ssh` asks for it, else a static address, else
    /// the newest lease. `vm_dir` is the hypervisor's working directory.
    pub fn target(&self, vm_dir: &Path, leases: &[(NetworkName, Lease)]) -> Option<Target> {
        if let (true, Some(cid)) = (self.vsock.ssh, self.vsock.cid) {
            return Some(match self.hypervisor {
                Some(Hypervisor::CloudHypervisor | Hypervisor::Firecracker) => {
                    Target::HybridVsock {
                        socket: vm_dir.join(microvm_runner::NOTIFY_VSOCK),
                    }
                }
                _ => Target::Vsock { cid: cid.0 },
            });
        }
        let ip = self
            .static_addresses()
            .into_iter()
            .next()
            .or_else(|| self.leases(leases).first().map(|(_, l)| l.ip))?;
        Some(Target::Address(ip))
    }

    /// Every address of the VM for `status`: static ones, then leases as `ADDRESS (NETWORK)`.
    pub fn addresses(&self, leases: &[(NetworkName, Lease)]) -> Vec<String> {
        let statics = self
            .static_addresses()
            .into_iter()
            .map(|a| format!("{a} (static)"));
        let leased = self
            .leases(leases)
            .into_iter()
            .map(|(n, l)| format!("{} ({n})", l.ip));
        statics.chain(leased).collect()
    }
}

/// The addresses of the VM whose runner is `runner` (empty when it has none or no
/// readable configuration).
pub fn addresses(runner: &Path, leases: &[(NetworkName, Lease)]) -> Vec<String> {
    RunnerView::read(runner)
        .map(|v| v.addresses(leases))
        .unwrap_or_default()
}
