//! `microvm ssh` for real: a Debian bookworm guest (mmdebstrap, minbase + openssh-server,
//! cached in the service tests' store) whose single command is sshd, booted with the
//! microvm kernel as a managed VM on a microvm network in a network namespace this test
//! creates. It gets its address by DHCP; `microvm ssh` finds it in the lease, logs in
//! as root with the key of `ssh.authorizedKeyFiles`, returns the remote command's exit
//! status and output. Its known_hosts holds the root disk's host keys, and a second VM
//! from the same root that makes a host key of its own at boot (an impostor, reached at
//! its static address) is refused.
//! `status` shows the address.
//!
//! The vsock transport cannot run here (no /dev/vhost-vsock, no cloud-hypervisor or
//! firecracker): its command lines are unit tests (src/cmd/ssh/tests.rs), and only
//! `microvm vsock-proxy` runs for real, through a stand-in for the hybrid vsock socket.
//!
//! Prerequisites (root, qemu, iproute2, nft, dnsmasq, mmdebstrap, ssh, ssh-keygen, the
//! microvm kernel): a missing one skips the test with a printed reason, or fails it
//! under `CI`. The first run downloads ~25 MB of packages for the root.

mod service_harness;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use service_harness::netns::Netns;
use service_harness::{bin, find, host_install, path_var, sh, wait_for, work_dir, Slot};

const NAME: &str = "deb-ssh";
const MAC: &str = "02:00:00:00:5e:01";
/// `microvm create` (mmdebstrap on the first run, then the root disk and initrd).
const BUILD_DEADLINE: Duration = Duration::from_secs(900);
/// From `start` to a lease, and from the lease to sshd answering (TCG, a loaded host).
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

fn microvm_kernel() -> PathBuf {
    let dir = match std::env::var_os("MICROVM_TEST_MICROVM_KERNEL") {
        Some(d) => PathBuf::from(d),
        None => {
            let kernels = std::env::var_os("MICROVM_TEST_KERNELS")
                .map(PathBuf::from)
                .unwrap_or_else(|| service_harness::workspace().join("target/test-kernels"));
            kernels.join("microvm")
        }
    };
    if dir.is_absolute() {
        dir
    } else {
        service_harness::workspace().join(dir)
    }
}

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !service_harness::rustix_is_root() {
        return Some("not root (netns, taps and the hypervisor user need root)".into());
    }
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("mmdebstrap", "mmdebstrap"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ] {
        if find(tool).is_none() {
            return Some(format!("{tool} is not installed ({pkg})"));
        }
    }
    let k = microvm_kernel();
    (!k.join("vmlinux").is_file()).then(|| {
        format!(
            "the microvm kernel {} is missing (scripts/build-test-kernel.sh)",
            k.display()
        )
    })
}

struct Host {
    /// The test's namespace: the supervisor, qemu and dnsmasq live in it, the tap and
    /// bridge go with it.
    ns: Netns,
    state: PathBuf,
}

impl Host {
    /// `ip netns exec NS microvm ARGS…`.
    fn microvm(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.0]).arg(bin());
        self.output(c, args)
    }

    /// `microvm ARGS…` in the host's own namespace (mmdebstrap needs the mirror).
    fn outside(&self, args: &[&str]) -> Output {
        self.output(Command::new(bin()), args)
    }

    fn output(&self, mut c: Command, args: &[&str]) -> Output {
        let out = c
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("PATH", path_var())
            .env("MICROVM_STORE", work_dir().join("store"))
            .env("MICROVM_SERVICE_MANAGER", "own")
            .stdin(Stdio::null())
            .output()
            .expect("microvm");
        eprintln!(
            "microvm {} -> {:?}",
            args.join(" "),
            out.status.code().unwrap_or(-1)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        self.check(self.microvm(args), args)
    }

    fn check(&self, out: Output, args: &[&str]) -> String {
        assert!(
            out.status.success(),
            "microvm {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let out = self.microvm(&["logs", NAME, "--lines", "60"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// sshd as the single command: no init system, so the microvm kernel boots it in seconds.
const SSHD: &str = "mkdir -p -m 0755 /run/sshd && exec /usr/sbin/sshd -D -e";
/// An impostor: the same root, but it presents a host key of its own making.
const IMPOSTOR: &str = "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' \
                        -f /etc/ssh/ssh_host_ed25519_key && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e";

/// `DIR/NAME.toml`: the Debian sshd guest with one tap on `bridge`, configured by DHCP,
/// or with the static `address` (`ADDR/PREFIX`).
fn definition(
    dir: &Path,
    name: &str,
    (tap, mac): (&str, &str),
    bridge: &str,
    script: &str,
    address: Option<&str>,
) -> PathBuf {
    let how = match address {
        Some(a) => format!("addresses = [{a:?}]"),
        None => "dhcp = true".to_owned(),
    };
    let def = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"hostName = "{name}"
vcpu = 1
mem = 512
kernel = {kernel:?}
command = ["/bin/sh", "-c", {script:?}]

[[root]]
debian = {{ suite = "bookworm", variant = "minbase", packages = ["openssh-server"] }}

[ssh]
authorizedKeyFiles = ["id.pub"]

[[interfaces]]
type = "tap"
id = "{tap}"
mac = "{mac}"
bridge = "{bridge}"

[[network]]
interface = "{tap}"
{how}
"#,
        kernel = microvm_kernel(),
    );
    fs::write(&def, text).expect("vm.toml");
    def
}

fn keygen(path: &Path) {
    let out = sh(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "n1-ssh-test",
        "-f",
        path.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

#[test]
fn ssh_runs_commands_in_a_debian_guest_and_checks_its_host_key() {
    let test = "ssh_runs_commands_in_a_debian_guest_and_checks_its_host_key";
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: prerequisites missing under CI: {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    host_install();
    let _slot = Slot::acquire();
    let tag = std::process::id() % 100_000;
    let dir = tempfile::Builder::new()
        .prefix("ssh-")
        .tempdir_in(work_dir())
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = Host {
        ns: Netns::new(format!("n1ssh-{tag}")),
        state: dir.path().join("state"),
    };
    let (bridge, tap) = (format!("n1br{tag}"), format!("n1t{tag}"));
    host.ok(&[
        "network",
        "create",
        "n1net",
        "--bridge",
        &bridge,
        "--subnet",
        "10.183.0.1/24",
        "--no-nat",
    ]);
    let key = dir.path().join("id");
    keygen(&key);
    let def = definition(dir.path(), NAME, (&tap, MAC), &bridge, SSHD, None);

    let t = Instant::now();
    let create = ["create", NAME, "--from", def.to_str().expect("utf-8")];
    host.check(host.outside(&create), &create);
    let built = t.elapsed();
    eprintln!("{test}: create (build) {:.1} s", built.as_secs_f64());
    assert!(built < BUILD_DEADLINE, "the build took {built:?}");

    let key_s = key.to_str().expect("utf-8");
    let ssh_to = |name: &str, cmd: &[&str]| {
        let mut args = vec![
            "ssh",
            name,
            "-i",
            key_s,
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "--",
        ];
        args.extend(cmd);
        host.microvm(&args)
    };
    let ssh = |cmd: &[&str]| ssh_to(NAME, cmd);
    let out = ssh(&["true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("deb-ssh is not running"), "{err}");

    host.ok(&["start", NAME]);
    let started = Instant::now();
    let mut address = String::new();
    let leased = wait_for("a lease", BOOT_DEADLINE, || {
        let st: serde_json::Value =
            serde_json::from_str(&host.ok(&["status", NAME, "--json"])).expect("status json");
        address = st["addresses"][0].as_str().unwrap_or_default().to_owned();
        !address.is_empty()
    });
    assert!(leased, "no lease\n{}", host.logs());
    assert!(
        address.ends_with(" (n1net)") && address.starts_with("10.183.0."),
        "{address}"
    );
    let text = host.ok(&["status", NAME]);
    assert!(text.contains(&format!("  addresses:  {address}")), "{text}");
    eprintln!(
        "{test}: lease {address} {:.1} s after `start` returned",
        started.elapsed().as_secs_f64()
    );

    // sshd may still be starting: retry while ssh itself fails (255).
    let mut first = None;
    let answered = wait_for("sshd", BOOT_DEADLINE, || {
        let out = ssh(&["true"]);
        let done = out.status.code() != Some(255);
        first = Some(out);
        done || {
            std::thread::sleep(Duration::from_secs(2));
            false
        }
    });
    let first = first.expect("one try");
    assert!(
        answered && first.status.success(),
        "ssh -- true: {first:?}\n{}",
        host.logs()
    );
    eprintln!(
        "{test}: ssh answered {:.1} s after `start` returned",
        started.elapsed().as_secs_f64()
    );

    let out = ssh(&["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = ssh(&["hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{NAME}\n"),
        "{out:?}"
    );
    let out = ssh(&["printf", "%s|", "a b", "$HOME", "it's"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a b|$HOME|it's|",
        "{out:?}"
    );

    let printed = host.ok(&["ssh", NAME, "--print", "--", "hostname"]);
    let ip = address.split(' ').next().expect("ip");
    assert!(
        printed.starts_with("ssh -o UserKnownHostsFile=")
            && printed.contains("/deb-ssh/ssh/known_hosts -o GlobalKnownHostsFile=none")
            && printed
                .trim_end()
                .ends_with(&format!("-l root -- {ip} hostname")),
        "{printed}"
    );

    hybrid_vsock_proxy_carries_a_session(&host, dir.path(), ip, &key);

    // known_hosts holds the root disk's host keys under the VM's alias, in a private
    // directory; a guest presenting another key is refused from the first connection.
    let known = host.state.join(NAME).join("ssh/known_hosts");
    let mode = fs::metadata(known.parent().expect("dir"))
        .expect("ssh dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", known.display());
    let recorded = fs::read_to_string(&known).expect("known_hosts");
    assert!(
        recorded.lines().count() >= 1
            && recorded.lines().all(|l| l.starts_with("microvm-deb-ssh "))
            && recorded.contains("microvm-deb-ssh ssh-ed25519 "),
        "{recorded}"
    );
    host.ok(&["stop", NAME]);

    const IMP: &str = "deb-imp";
    let def = definition(
        dir.path(),
        IMP,
        (&format!("n1u{tag}"), "02:00:00:00:5e:02"),
        &bridge,
        IMPOSTOR,
        Some("10.183.0.5/24"),
    );
    let create = ["create", IMP, "--from", def.to_str().expect("utf-8")];
    host.check(host.outside(&create), &create);
    host.ok(&["start", IMP]);
    let mut last = None;
    let refused = wait_for("the impostor's sshd", BOOT_DEADLINE, || {
        let out = ssh_to(IMP, &["true"]);
        let done = String::from_utf8_lossy(&out.stderr).contains("Host key verification failed");
        let connected = out.status.code() != Some(255);
        last = Some(out);
        done || connected || {
            std::thread::sleep(Duration::from_secs(2));
            false
        }
    });
    let last = last.expect("one try");
    assert!(
        refused && last.status.code() == Some(255),
        "a guest with another host key was accepted, or never answered: {last:?}"
    );
    eprintln!("{test}: the impostor's host key was refused (at its static address)");
    let st: serde_json::Value =
        serde_json::from_str(&host.ok(&["status", IMP, "--json"])).expect("status json");
    assert_eq!(st["addresses"][0], "10.183.0.5 (static)", "{st}");
    let printed = host.ok(&["ssh", IMP, "--print"]);
    assert!(
        printed.trim_end().ends_with("-l root -- 10.183.0.5"),
        "{printed}"
    );
    let known = fs::read_to_string(host.state.join(IMP).join("ssh/known_hosts")).expect("known");
    assert_eq!(
        known.replace(IMP, NAME),
        recorded,
        "the same root disk, the same keys"
    );
    host.ok(&["stop", IMP]);
    host.ok(&["remove", IMP]);

    host.ok(&["remove", NAME]);
    host.ok(&["network", "remove", "n1net"]);
}

/// `microvm vsock-proxy`, the ProxyCommand `microvm ssh` gives ssh for cloud-hypervisor's
/// and firecracker's hybrid vsock, carries a real ssh session. Neither hypervisor can
/// run here, so a stand-in plays its Unix socket: socat in the namespace answers
/// `CONNECT 22` with `OK …` as they do and relays to the guest's sshd over TCP. The
/// path through a real hypervisor's vsock stays untested here.
fn hybrid_vsock_proxy_carries_a_session(host: &Host, dir: &Path, ip: &str, key: &Path) {
    let socket = dir.join("stand-in.vsock");
    // socat's own parser splits its address at `:` unless escaped.
    let reply = format!(
        "read l; [ \"$l\" = \"CONNECT 22\" ] || exit 1; echo OK 1073741824; exec socat - TCP\\:{ip}\\:22"
    );
    let mut stand_in = Command::new("ip")
        .args(["netns", "exec", &host.ns.0, "socat"])
        .arg(format!("UNIX-LISTEN:{},fork,mode=600", socket.display()))
        .arg(format!("SYSTEM:{reply}"))
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .spawn()
        .expect("socat");
    assert!(
        wait_for("the stand-in socket", Duration::from_secs(20), || socket
            .exists()),
        "socat did not listen"
    );
    let known = host.state.join(NAME).join("ssh/known_hosts");
    let out = Command::new("ssh")
        .arg("-o")
        .arg(format!(
            "ProxyCommand={} vsock-proxy {} 22",
            bin().display(),
            socket.display()
        ))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=none",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .args([
            "-o",
            &format!("HostKeyAlias=microvm-{NAME}"),
            "-o",
            "BatchMode=yes",
        ])
        .arg("-i")
        .arg(key)
        .args(["-l", "root", "--", &format!("microvm-{NAME}"), "hostname"])
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    let _ = stand_in.kill();
    let _ = stand_in.wait();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{NAME}\n"),
        "ssh through vsock-proxy: {out:?}"
    );
    eprintln!(
        "hybrid vsock: microvm vsock-proxy carried an ssh session through a stand-in socket \
         (cloud-hypervisor and firecracker themselves are untested here)"
    );
}

/// The errors before any connection: a VM whose definition gives no key, and a name
/// that is not a managed VM (both without booting).
#[test]
fn ssh_explains_a_vm_without_keys_and_an_unknown_vm() {
    let test = "ssh_explains_a_vm_without_keys_and_an_unknown_vm";
    if !service_harness::rustix_is_root() {
        eprintln!("SKIPPED {test}: not root (a managed VM's state directory is root's)");
        return;
    }
    let dir = tempfile::tempdir_in(work_dir()).expect("tempdir");
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .env("PATH", path_var())
            .output()
            .expect("microvm")
    };
    let out = run(&["ssh", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no managed VM nope"),
        "{out:?}"
    );

    // A runner as `create` leaves it, without keys in its configuration.
    let runner = dir.path().join("runner");
    fs::create_dir_all(runner.join("share/microvm")).expect("runner");
    fs::write(
        runner.join("share/microvm/config.json"),
        r#"{"hypervisor": "qemu", "interfaces": [], "guest": {"network": [], "ssh": {"authorizedKeys": [], "authorizedKeyFiles": []}}}"#,
    )
    .expect("config.json");
    fs::create_dir_all(state.join("bare")).expect("vm dir");
    std::os::unix::fs::symlink(&runner, state.join("bare/current")).expect("current");
    let out = run(&["ssh", "bare"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bare has no ssh keys"), "{err}");
}
