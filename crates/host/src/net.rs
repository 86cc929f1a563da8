//! Host network interfaces of a VM: tap and macvtap links, created before the hypervisor
//! starts and removed when it has ended (the original's `tap-up`/`tap-down` and
//! `macvtap-up`/`macvtap-down`, inventory §4.5).
//!
//! Links are made with iproute2's `ip`, like the original: synchronous, one argv per step,
//! no async netlink runtime in the supervisor, and errors that show the exact command.
//! Paths of the host are injected ([`NetHost`]): tests point `ip` at a recording script
//! and sysfs/procfs/dev at a temporary directory.
//!
//! What is removed at the end comes from the in-memory list of what was created
//! ([`Links`]), never from the `booted` runner (the original's teardown read `booted`
//! after it had been deleted and silently left taps behind).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use microvm_runner::TapSetup;

use crate::privilege::Credentials;

/// Where the host's network tools and files are.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// The `ip` program (name looked up on PATH, or a path).
    pub ip: PathBuf,
    /// `/sys`.
    pub sysfs: PathBuf,
    /// `/proc`.
    pub procfs: PathBuf,
    /// `/dev` (macvtap character devices are `/dev/tap<ifindex>`).
    pub dev: PathBuf,
}

impl NetHost {
    pub fn system() -> Self {
        NetHost {
            ip: PathBuf::from("ip"),
            sysfs: PathBuf::from("/sys"),
            procfs: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }

    fn class_net(&self, name: &str) -> PathBuf {
        self.sysfs.join("class/net").join(name)
    }

    /// Whether a link of that name exists.
    pub fn link_exists(&self, name: &str) -> bool {
        self.class_net(name).exists()
    }

    /// The alias of a link (`ip link set NAME alias …`), if it has one.
    pub fn link_alias(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.class_net(name).join("ifalias")).ok()?;
        let alias = text.trim_end();
        (!alias.is_empty()).then(|| alias.to_string())
    }

    /// The interface index of a link.
    pub fn ifindex(&self, name: &str) -> Result<u32, NetError> {
        let path = self.class_net(name).join("ifindex");
        let text = fs::read_to_string(&path).map_err(|source| NetError::Io {
            what: "read",
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| NetError::Io {
            what: "parse",
            path,
            source: std::io::ErrorKind::InvalidData.into(),
        })
    }

    fn ip(&self, what: &str, args: &[&str]) -> Result<(), NetError> {
        crate::tool::run(&self.ip, what, args, None)?;
        Ok(())
    }

    /// `ip link delete NAME`.
    pub fn delete_link(&self, name: &str) -> Result<(), NetError> {
        self.ip(
            &format!("remove interface {name}"),
            &["link", "delete", name],
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tool(#[from] crate::tool::ToolError),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interface {name} already exists and microvm did not create it for VM {vm} ({why}); refusing to replace it: rename the VM's interface `id` or remove the link yourself")]
    NotOurs {
        name: String,
        vm: String,
        why: String,
    },
    #[error("macvtap list line {line:?} is not `ID MAC LINK MODE`")]
    BadMacvtapLine { line: String },
}

/// A macvtap interface to create (a line of the runner's `share/microvm/macvtap-interfaces`:
/// `ID MAC LINK MODE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvtapSetup {
    pub id: String,
    pub mac: String,
    pub link: String,
    pub mode: String,
}

impl MacvtapSetup {
    pub fn parse_list(text: &str) -> Result<Vec<MacvtapSetup>, NetError> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(
                |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [id, mac, link, mode] => Ok(MacvtapSetup {
                        id: id.into(),
                        mac: mac.into(),
                        link: link.into(),
                        mode: mode.into(),
                    }),
                    _ => Err(NetError::BadMacvtapLine { line: line.into() }),
                },
            )
            .collect()
    }
}

/// The links this supervisor created; [`Links::remove_all`] deletes them (also on drop).
///
/// Every link it creates carries the alias `microvm:<vm>` ([`Links::for_vm`]): a link of
/// the same name left by a crashed run is replaced only when it is of the same kind and
/// carries this VM's alias, so an interface `id` that names someone else's link (a veth,
/// a bridge, another VM's tap) is refused, never deleted.
#[derive(Debug)]
pub struct Links {
    host: NetHost,
    created: Vec<String>,
    vm: String,
}

impl Links {
    /// Links of an unnamed VM (alias `microvm:`).
    pub fn new(host: NetHost) -> Links {
        Links::for_vm(host, "")
    }

    /// Links of VM `vm`.
    pub fn for_vm(host: NetHost, vm: &str) -> Links {
        Links {
            host,
            created: Vec::new(),
            vm: vm.to_string(),
        }
    }

    fn alias(&self) -> String {
        format!("microvm:{}", self.vm)
    }

    /// Deletes a stale link `name` if it is ours (see the type's docs); `kind_file` is a
    /// sysfs attribute that only links of the expected kind have (`tun_flags` for a tap,
    /// `macvtap` has `macvtap/` under its device).
    fn replace_stale(&self, name: &str, is_kind: bool) -> Result<(), NetError> {
        if !self.host.link_exists(name) {
            return Ok(());
        }
        let alias =
            fs::read_to_string(self.host.class_net(name).join("ifalias")).unwrap_or_default();
        let why = if !is_kind {
            "it is not of the kind the VM asks for".to_string()
        } else if alias.trim_end() != self.alias() {
            format!(
                "its alias is {:?}, not {:?}",
                alias.trim_end(),
                self.alias()
            )
        } else {
            return self.host.delete_link(name);
        };
        Err(NetError::NotOurs {
            name: name.to_string(),
            vm: self.vm.clone(),
            why,
        })
    }

    fn tag(&self, name: &str) -> Result<(), NetError> {
        self.host.ip(
            &format!("mark {name} as created by microvm"),
            &["link", "set", name, "alias", &self.alias()],
        )
    }

    pub fn names(&self) -> &[String] {
        &self.created
    }

    /// Creates a tap like the original's `tap-up`: a stale link of that name is deleted
    /// first, then `ip tuntap add name ID mode tap [user UID group GID] [vnet_hdr]
    /// [multi_queue]`, `ip link set ID master BRIDGE` when configured, `ip link set ID up`.
    pub fn create_tap(
        &mut self,
        tap: &TapSetup,
        owner: Option<&Credentials>,
    ) -> Result<(), NetError> {
        let name = tap.name.as_str();
        let is_tap = self.host.class_net(name).join("tun_flags").exists();
        self.replace_stale(name, is_tap)?;
        let (uid, gid) = owner
            .map(|c| (c.uid.to_string(), c.gid.to_string()))
            .unzip();
        let mut args = vec!["tuntap", "add", "name", name, "mode", "tap"];
        if let (Some(uid), Some(gid)) = (&uid, &gid) {
            args.extend(["user", uid.as_str(), "group", gid.as_str()]);
        }
        if tap.vnet_hdr {
            args.push("vnet_hdr");
        }
        if tap.multi_queue {
            args.push("multi_queue");
        }
        self.host.ip(&format!("create tap {name}"), &args)?;
        self.created.push(name.to_string());
        self.avoid_macvtap_index(name, &args)?;
        self.tag(name)?;
        if let Some(bridge) = &tap.bridge {
            // The tap takes the bridge's MTU (a smaller port would lower the bridge's).
            let mtu = fs::read_to_string(self.host.class_net(bridge).join("mtu"));
            if let Some(mtu) = mtu.ok().and_then(|m| m.trim().parse::<u32>().ok()) {
                self.host.ip(
                    &format!("set the MTU of tap {name} to bridge {bridge}'s"),
                    &["link", "set", name, "mtu", &mtu.to_string()],
                )?;
            }
            self.host.ip(
                &format!("attach tap {name} to bridge {bridge}"),
                &["link", "set", name, "master", bridge],
            )?;
        }
        self.host.ip(
            &format!("bring up tap {name}"),
            &["link", "set", name, "up"],
        )
    }

    /// qemu (≥ 8.2) opens `/dev/tap<ifindex>` of its `ifname=` before `/dev/net/tun`, and
    /// `/dev` is shared by all network namespaces: a tap whose index is that of a macvtap
    /// in another namespace would make qemu open that macvtap. Such a tap is made again
    /// (indexes are allocated cyclically, so it gets another one).
    fn avoid_macvtap_index(&self, name: &str, args: &[&str]) -> Result<(), NetError> {
        for _ in 0..8 {
            let index = self.host.ifindex(name)?;
            if !self.host.dev.join(format!("tap{index}")).exists() {
                return Ok(());
            }
            self.host.delete_link(name)?;
            self.host.ip(&format!("create tap {name}"), args)?;
        }
        Err(NetError::Io {
            what: "find an index without a macvtap device for tap",
            path: PathBuf::from(name),
            source: std::io::ErrorKind::AlreadyExists.into(),
        })
    }

    /// Creates a macvtap like the original's `macvtap-up` and returns `/dev/tap<ifindex>`,
    /// owned by `owner`.
    pub fn create_macvtap(
        &mut self,
        m: &MacvtapSetup,
        owner: Option<&Credentials>,
    ) -> Result<PathBuf, NetError> {
        let id = m.id.as_str();
        let is_macvtap = self.host.class_net(id).join("macvtap").exists();
        self.replace_stale(id, is_macvtap)?;
        self.host.ip(
            &format!("create macvtap {id} on {}", m.link),
            &[
                "link", "add", "link", &m.link, "name", id, "address", &m.mac, "type", "macvtap",
                "mode", &m.mode,
            ],
        )?;
        self.created.push(id.to_string());
        self.tag(id)?;
        self.host.ip(
            &format!("enable allmulticast on {id}"),
            &["link", "set", id, "allmulticast", "on"],
        )?;
        let v6 = self
            .host
            .procfs
            .join("sys/net/ipv6/conf")
            .join(id)
            .join("disable_ipv6");
        if v6.parent().is_some_and(Path::exists) {
            fs::write(&v6, "1").map_err(|source| NetError::Io {
                what: "write",
                path: v6.clone(),
                source,
            })?;
        }
        self.host.ip(
            &format!("bring up macvtap {id}"),
            &["link", "set", id, "up"],
        )?;
        let dev = self.host.dev.join(format!("tap{}", self.host.ifindex(id)?));
        if let Some(c) = owner {
            std::os::unix::fs::chown(&dev, Some(c.uid), Some(c.gid)).map_err(|source| {
                NetError::Io {
                    what: "change the owner of",
                    path: dev.clone(),
                    source,
                }
            })?;
        }
        Ok(dev)
    }

    /// Deletes every created link, newest first; returns the failures (already printed
    /// by the caller if it wants). A link that is already gone is not an error.
    pub fn remove_all(&mut self) -> Vec<NetError> {
        let mut errors = Vec::new();
        while let Some(name) = self.created.pop() {
            if !self.host.link_exists(&name) {
                continue;
            }
            if let Err(e) = self.host.delete_link(&name) {
                errors.push(e);
            }
        }
        errors
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Opens `/dev/tapN` once per queue (each open of a multi-queue macvtap is one queue).
pub fn open_macvtap_queues(dev: &Path, queues: usize) -> Result<Vec<OwnedFd>, NetError> {
    (0..queues)
        .map(|_| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dev)
                .map(OwnedFd::from)
                .map_err(|source| NetError::Io {
                    what: "open",
                    path: dev.to_path_buf(),
                    source,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake `ip` that appends its argv to `ip.log` and maintains `sys/class/net/<name>`.
    fn fake_host(dir: &Path) -> NetHost {
        let script = dir.join("ip");
        let sys = dir.join("sys");
        fs::create_dir_all(sys.join("class/net/eth0")).expect("mkdir");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> {log}\nnet={sys}/class/net\n\
                 case \"$1 $2\" in\n\
                 'tuntap add') mkdir -p $net/$4; echo 7 > $net/$4/ifindex; : > $net/$4/tun_flags ;;\n\
                 'link add') mkdir -p $net/$6/macvtap; echo 9 > $net/$6/ifindex; : > {dev}/tap9 ;;\n\
                 'link delete') rm -rf $net/$3 ;;\n\
                 'link set') [ \"$4\" = alias ] && echo \"$5\" > $net/$3/ifalias\n\
                 [ \"$4\" = master ] && [ ! -d $net/$5 ] && {{ echo \"no bridge $5\" >&2; exit 2; }} ;;\n\
                 esac\nexit 0\n",
                log = dir.join("ip.log").display(),
                sys = sys.display(),
                dev = dir.display(),
            ),
        )
        .expect("write");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        NetHost {
            ip: script,
            sysfs: sys,
            procfs: dir.join("proc"),
            dev: dir.to_path_buf(),
        }
    }

    fn log(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join("ip.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn tap(name: &str, mq: bool, bridge: Option<&str>) -> TapSetup {
        TapSetup {
            name: name.into(),
            vnet_hdr: true,
            multi_queue: mq,
            bridge: bridge.map(Into::into),
        }
    }

    #[test]
    fn taps_are_created_owned_bridged_and_removed_from_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = fake_host(dir.path());
        fs::create_dir_all(host.sysfs.join("class/net/br0")).expect("bridge");
        // A stale tap from a crashed run of this VM is replaced.
        let stale = host.sysfs.join("class/net/vm-a");
        fs::create_dir_all(&stale).expect("stale");
        fs::write(stale.join("tun_flags"), "0x1002\n").expect("tun_flags");
        fs::write(stale.join("ifalias"), "microvm:a\n").expect("alias");
        let owner = Credentials {
            user: "microvm".into(),
            uid: 990,
            gid: 991,
        };
        let mut links = Links::for_vm(host.clone(), "a");
        links
            .create_tap(&tap("vm-a", true, Some("br0")), Some(&owner))
            .expect("tap a");
        links
            .create_tap(&tap("vm-b", false, None), None)
            .expect("tap b");
        assert_eq!(
            log(dir.path()),
            [
                "link delete vm-a",
                "tuntap add name vm-a mode tap user 990 group 991 vnet_hdr multi_queue",
                "link set vm-a alias microvm:a",
                "link set vm-a master br0",
                "link set vm-a up",
                "tuntap add name vm-b mode tap vnet_hdr",
                "link set vm-b alias microvm:a",
                "link set vm-b up",
            ]
        );
        assert_eq!(links.names(), ["vm-a", "vm-b"]);
        assert!(links.remove_all().is_empty());
        assert!(!host.link_exists("vm-a") && !host.link_exists("vm-b"));
        assert_eq!(
            log(dir.path())[8..],
            ["link delete vm-b", "link delete vm-a"]
        );
    }

    /// Attack 4 of issue 10: an interface `id` naming a link microvm did not create for
    /// this VM (a veth, another VM's tap) made root delete it. Now it is refused.
    #[test]
    fn links_microvm_did_not_create_for_this_vm_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = fake_host(dir.path());
        let veth = host.sysfs.join("class/net/veth0");
        fs::create_dir_all(&veth).expect("veth");
        let other = host.sysfs.join("class/net/vm-o");
        fs::create_dir_all(&other).expect("tap");
        fs::write(other.join("tun_flags"), "0x1002\n").expect("tun_flags");
        fs::write(other.join("ifalias"), "microvm:other\n").expect("alias");
        let mut links = Links::for_vm(host.clone(), "a");
        let err = links
            .create_tap(&tap("veth0", false, None), None)
            .expect_err("a veth");
        assert_eq!(
            err.to_string(),
            "interface veth0 already exists and microvm did not create it for VM a (it is not of the kind the VM asks for); refusing to replace it: rename the VM's interface `id` or remove the link yourself"
        );
        let err = links
            .create_tap(&tap("vm-o", false, None), None)
            .expect_err("another VM's tap");
        assert!(
            err.to_string()
                .contains("its alias is \"microvm:other\", not \"microvm:a\""),
            "{err}"
        );
        let m = MacvtapSetup::parse_list("veth0 02:00:00:00:00:09 eth0 bridge\n").expect("parse");
        assert!(links.create_macvtap(&m[0], None).is_err());
        assert!(
            log(dir.path()).is_empty(),
            "nothing was run: {:?}",
            log(dir.path())
        );
        assert!(host.link_exists("veth0") && host.link_exists("vm-o"));
    }

    /// A tap whose index has a `/dev/tap<index>` (another namespace's macvtap, which qemu
    /// would open) is made again until its index has none.
    #[test]
    fn a_tap_never_keeps_the_index_of_a_macvtap_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = fake_host(dir.path());
        fs::write(dir.path().join("tap7"), "").expect("macvtap device");
        let script = fs::read_to_string(&host.ip).expect("script");
        // The second `tuntap add` gets index 8.
        let script = script.replace(
            "echo 7 > $net/$4/ifindex",
            "if [ -e {d}/second ]; then echo 8; else : > {d}/second; echo 7; fi > $net/$4/ifindex",
        );
        let script = script.replace("{d}", &dir.path().display().to_string());
        fs::write(&host.ip, script).expect("script");
        let mut links = Links::new(host.clone());
        links
            .create_tap(&tap("vm-x", false, None), None)
            .expect("tap");
        assert_eq!(host.ifindex("vm-x").expect("index"), 8);
        assert_eq!(
            log(dir.path())[..3],
            [
                "tuntap add name vm-x mode tap vnet_hdr",
                "link delete vm-x",
                "tuntap add name vm-x mode tap vnet_hdr",
            ]
        );
    }

    #[test]
    fn a_bridged_tap_takes_the_bridges_mtu() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = fake_host(dir.path());
        fs::create_dir_all(host.sysfs.join("class/net/br9")).expect("bridge");
        fs::write(host.sysfs.join("class/net/br9/mtu"), "9000\n").expect("mtu");
        let mut links = Links::new(host);
        links
            .create_tap(&tap("vm-j", false, Some("br9")), None)
            .expect("tap");
        assert_eq!(
            log(dir.path())[2..],
            [
                "link set vm-j mtu 9000",
                "link set vm-j master br9",
                "link set vm-j up"
            ]
        );
    }

    #[test]
    fn a_failing_step_names_the_command_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = fake_host(dir.path());
        let mut links = Links::new(host.clone());
        let err = links
            .create_tap(&tap("vm-c", false, Some("nobr")), None)
            .expect_err("no bridge");
        let msg = err.to_string();
        assert!(msg.contains("attach tap vm-c to bridge nobr"), "{msg}");
        assert!(msg.contains("no bridge nobr"), "{msg}");
        drop(links);
        assert!(
            !host.link_exists("vm-c"),
            "the half-made tap is removed on drop"
        );
    }

    #[test]
    fn macvtap_is_created_owned_and_opened_per_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = fake_host(dir.path());
        fs::create_dir_all(dir.path().join("proc/sys/net/ipv6/conf/vm-m")).expect("proc");
        let list = MacvtapSetup::parse_list("vm-m 02:00:00:00:00:09 eth0 bridge\n").expect("parse");
        let mut links = Links::new(host.clone());
        let dev = links.create_macvtap(&list[0], None).expect("macvtap");
        assert_eq!(dev, dir.path().join("tap9"));
        assert_eq!(
            log(dir.path()),
            [
                "link add link eth0 name vm-m address 02:00:00:00:00:09 type macvtap mode bridge",
                "link set vm-m alias microvm:",
                "link set vm-m allmulticast on",
                "link set vm-m up",
            ]
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("proc/sys/net/ipv6/conf/vm-m/disable_ipv6"))
                .expect("read"),
            "1"
        );
        assert_eq!(open_macvtap_queues(&dev, 2).expect("open").len(), 2);
        assert!(MacvtapSetup::parse_list("vm-m 02:00:00:00:00:09 eth0\n").is_err());
    }
}
