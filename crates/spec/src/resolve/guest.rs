//! The guest part NixOS used to provide: root sources, init or command, static network.

use std::net::IpAddr;

use super::Resolver;
use crate::config::{Guest, Interface, RootSource, StaticNetwork};
use crate::node::KeyPath;
use crate::schema::Spec;
use crate::types::MacAddr;

pub(crate) fn resolve(r: &mut Resolver<'_>, spec: &Spec, interfaces: &[Interface]) -> Guest {
    let root = KeyPath::root();
    let mut sources = Vec::new();
    for (i, s) in spec.root.iter().enumerate() {
        let p = root.key("root").index(i);
        let set: Vec<&str> = [
            ("directory", s.directory.is_some()),
            ("tarball", s.tarball.is_some()),
            ("oci", s.oci.is_some()),
            ("debian", s.debian.is_some()),
            ("nix", s.nix.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        if set.len() != 1 {
            r.error(p.clone(), format!(
                "a root source needs exactly one of `directory`, `tarball`, `oci`, `debian`, `nix`{}",
                if set.is_empty() { String::new() } else { format!(" (found {})", set.join(", ")) }
            ));
            continue;
        }
        let target = s.target.clone().unwrap_or_else(|| "/".into());
        if !r.absolute_guest_path(p.key("target"), &target) {
            continue;
        }
        if s.oci_ref.is_some() && s.oci.is_none() {
            r.error(p.key("ociRef"), "`ociRef` only applies to an `oci` source");
        }
        let source = if let Some(d) = &s.directory {
            RootSource::Directory {
                path: r.input(&p.key("directory"), d, super::InputKind::Directory),
                target,
            }
        } else if let Some(t) = &s.tarball {
            RootSource::Tarball {
                path: r.file_input(&p.key("tarball"), t),
                target,
            }
        } else if let Some(o) = &s.oci {
            RootSource::Oci {
                path: r.input(&p.key("oci"), o, super::InputKind::Any),
                reference: s.oci_ref.clone(),
                target,
            }
        } else if let Some(n) = &s.nix {
            RootSource::Nix {
                path: r.input(&p.key("nix"), n, super::InputKind::Any),
            }
        } else if let Some(d) = &s.debian {
            let Some(suite) = r.required(&d.suite, p.key("debian").key("suite")) else {
                continue;
            };
            RootSource::Debian {
                suite,
                packages: d.packages.clone(),
                mirror: d.mirror.clone(),
                variant: d.variant.clone(),
            }
        } else {
            continue;
        };
        sources.push(source);
    }

    let init = spec.init.clone();
    if let Some(init) = &init {
        r.absolute_guest_path(root.key("init"), init);
    }
    if let Some(cmd) = &spec.command {
        if cmd.is_empty() || cmd[0].is_empty() {
            r.error(root.key("command"), "`command` needs at least a program");
        }
    }
    if let Some(wd) = &spec.working_directory {
        r.absolute_guest_path(root.key("workingDirectory"), wd);
    }

    let mut network = Vec::new();
    for (i, n) in spec.network.iter().enumerate() {
        let p = root.key("network").index(i);
        let mac = match (&n.interface, &n.mac) {
            (Some(id), None) => match interfaces.iter().find(|i| i.id.as_str() == id) {
                Some(iface) => Some(iface.mac),
                None => {
                    r.error(
                        p.key("interface"),
                        format!("no interface with id {id:?} in `interfaces`"),
                    );
                    None
                }
            },
            (None, Some(m)) => match m.parse::<MacAddr>() {
                Ok(m) => Some(m),
                Err(e) => {
                    r.error(p.key("mac"), e.0);
                    None
                }
            },
            _ => {
                r.error(
                    p.clone(),
                    "a network entry needs exactly one of `interface` or `mac`",
                );
                None
            }
        };
        for (j, a) in n.addresses.iter().enumerate() {
            if !is_cidr(a) {
                r.error(
                    p.key("addresses").index(j),
                    format!("{a:?} is not an address with prefix length like 10.0.0.2/24"),
                );
            }
        }
        for (key, list) in [("gateways", &n.gateways), ("dns", &n.dns)] {
            for (j, a) in list.iter().enumerate() {
                if a.parse::<IpAddr>().is_err() {
                    r.error(p.key(key).index(j), format!("{a:?} is not an IP address"));
                }
            }
        }
        // Out of range is reported by `ranges::check`.
        let mtu = n
            .mtu
            .filter(|&m| crate::ranges::within("network[].mtu", crate::types::Hypervisor::Qemu, m))
            .map(|m| m as u32);
        if let Some(mac) = mac {
            network.push(StaticNetwork {
                mac,
                addresses: n.addresses.clone(),
                gateways: n.gateways.clone(),
                dns: n.dns.clone(),
                mtu,
                dhcp: n.dhcp.unwrap_or(false),
            });
        }
    }

    Guest {
        root: sources,
        init,
        command: spec.command.clone(),
        working_directory: spec.working_directory.clone(),
        environment: spec.environment.clone(),
        network,
        ssh: super::ssh::resolve(r, spec),
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<IpAddr>(), prefix.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}

/// `kernel = { build = "microvm", … }`: a `source` with a `/` is a tarball or tree path
/// (relative to the file), anything else a Debian package name; fragments are files.
pub(crate) fn kernel_build(
    r: &Resolver<'_>,
    at: &KeyPath,
    source: Option<&str>,
    fragments: &[String],
) -> crate::config::KernelRef {
    use crate::config::{KernelBuild, KernelBuildSource, KernelRef};
    let source = match source {
        Some(s) if s.contains('/') => KernelBuildSource::Path(r.file_input(&at.key("source"), s)),
        Some(s) => KernelBuildSource::Package(s.to_owned()),
        None => KernelBuildSource::Package("linux-source-6.1".to_owned()),
    };
    let fragments = fragments
        .iter()
        .enumerate()
        .map(|(i, f)| r.file_input(&at.key("fragments").index(i), f))
        .collect();
    KernelRef::Build(KernelBuild { source, fragments })
}
