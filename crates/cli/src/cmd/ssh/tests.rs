use std::io::{BufRead as _, BufReader, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::path::Path;

use microvm_host::network::Lease;

use super::proxy::{check_socket, connect, relay, VsockProxyArgs};
use super::*;

fn argv(target: &Target, identity: Option<&Path>, command: &[&str]) -> Vec<String> {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    ssh_argv(&Invocation {
        name: "web",
        known_hosts: Path::new("/var/lib/microvms/web/known_hosts"),
        // The case with a key also has the root disk's host keys.
        host_keys_known: identity.is_some(),
        target,
        microvm: Path::new("/usr/local/bin/microvm"),
        identity,
        options: &["ConnectTimeout=30".to_string()],
        command: &command,
    })
    .expect("argv")
    .into_iter()
    .map(|w| w.into_string().expect("utf-8"))
    .collect()
}

const CHECKS: [&str; 12] = [
    "-o",
    "UserKnownHostsFile=/var/lib/microvms/web/known_hosts",
    "-o",
    "GlobalKnownHostsFile=none",
    "-o",
    "StrictHostKeyChecking=accept-new",
    "-o",
    "HostKeyAlias=microvm-web",
    "-o",
    "CheckHostIP=no",
    "-o",
    "HashKnownHosts=no",
];

#[test]
fn over_an_address_with_a_key_and_a_command() {
    let ip: IpAddr = "10.177.0.23".parse().expect("ip");
    let a = argv(
        &Target::Address(ip),
        Some(Path::new("/root/id %x")),
        &["sh", "-c", "exit 7"],
    );
    let mut want = vec!["ssh"];
    want.extend(CHECKS);
    want[6] = "StrictHostKeyChecking=yes";
    want.extend([
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        "\"/root/id %%x\"",
        "-o",
        "ConnectTimeout=30",
        "-l",
        "root",
        "--",
        "10.177.0.23",
        "sh",
        "-c",
        "'exit 7'",
    ]);
    assert_eq!(a, want);
}

/// The vsock paths cannot boot here (no /dev/vhost-vsock on this machine): only their
/// command lines are checked.
#[test]
fn over_vsock_and_hybrid_vsock_the_proxy_command_is_quoted() {
    eprintln!("note: ssh over vsock is checked by its argv only; it is untested against a real guest here (no /dev/vhost-vsock)");
    let a = argv(&Target::Vsock { cid: 5 }, None, &[]);
    let mut want = vec!["ssh"];
    want.extend(CHECKS);
    want.extend([
        "-o",
        "ProxyCommand=socat - VSOCK-CONNECT:5:22",
        "-o",
        "ConnectTimeout=30",
        "-l",
        "root",
        "--",
        "microvm-web",
    ]);
    assert_eq!(a, want);
    let socket = Path::new("/var/lib/my vms/web/notify.vsock").to_path_buf();
    let a = argv(&Target::HybridVsock { socket }, None, &["hostname"]);
    assert_eq!(
        a[14],
        "ProxyCommand=/usr/local/bin/microvm vsock-proxy '/var/lib/my vms/web/notify.vsock' 22"
    );
    assert_eq!(&a[a.len() - 2..], ["microvm-web", "hostname"]);
}

/// What the guest's shell makes of the words ssh joins with spaces: the same argv.
#[test]
fn remote_words_survive_the_guests_shell() {
    let words = ["printf", "%s\\n", "a b", "it's", "$HOME", "", "*"];
    let ip: IpAddr = "10.0.0.2".parse().expect("ip");
    let a = argv(&Target::Address(ip), None, &words);
    let joined = a[a.iter().position(|w| w == "10.0.0.2").expect("host") + 1..].join(" ");
    let out = std::process::Command::new("sh")
        .args(["-c", &joined])
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a b\nit's\n$HOME\n\n*\n"
    );
}

const CONFIG: &str = r#"{
  "hypervisor": "qemu",
  "vsock": {"cid": null, "ssh": false},
  "interfaces": [{"kind": "tap", "id": "t0", "mac": "02:00:00:00:00:01"}],
  "guest": {"network": [], "ssh": {"authorizedKeys": [], "authorizedKeyFiles": []}}
}"#;

fn lease(mac: &str, ip: &str, expires: u64) -> (microvm_host::network::NetworkName, Lease) {
    (
        "net0".parse().expect("name"),
        Lease {
            expires,
            mac: mac.into(),
            ip: ip.parse().expect("ip"),
            hostname: None,
        },
    )
}

#[test]
fn the_target_is_vsock_then_a_static_address_then_the_newest_lease() {
    let dir = Path::new("/state/web");
    let view = RunnerView::parse(CONFIG).expect("parse");
    assert!(!view.has_keys());
    assert_eq!(view.target(dir, &[]), None, "no address, no lease");
    let leases = [
        lease("02:00:00:00:00:09", "10.0.0.9", 300),
        lease("02:00:00:00:00:01", "10.0.0.5", 100),
        lease("02:00:00:00:00:01", "10.0.0.6", 200),
    ];
    assert_eq!(
        view.target(dir, &leases),
        Some(Target::Address("10.0.0.6".parse().expect("ip")))
    );
    assert_eq!(
        view.addresses(&leases),
        ["10.0.0.6 (net0)", "10.0.0.5 (net0)"]
    );

    let with_static = CONFIG.replace(
        r#""network": []"#,
        r#""network": [{"mac": "02:00:00:00:00:01", "addresses": ["192.168.5.2/24"]}]"#,
    );
    let view = RunnerView::parse(&with_static).expect("parse");
    assert_eq!(
        view.target(dir, &leases),
        Some(Target::Address("192.168.5.2".parse().expect("ip")))
    );
    assert_eq!(view.addresses(&leases)[0], "192.168.5.2 (static)");

    let vsock = CONFIG
        .replace(r#""cid": null, "ssh": false"#, r#""cid": 7, "ssh": true"#)
        .replace(
            r#""authorizedKeys": []"#,
            r#""authorizedKeys": ["ssh-ed25519 AAAA"]"#,
        );
    let view = RunnerView::parse(&vsock).expect("parse");
    assert!(view.has_keys());
    assert_eq!(view.target(dir, &leases), Some(Target::Vsock { cid: 7 }));
    let hybrid = vsock.replace(r#""qemu""#, r#""cloud-hypervisor""#);
    let view = RunnerView::parse(&hybrid).expect("parse");
    assert_eq!(
        view.target(dir, &leases),
        Some(Target::HybridVsock {
            socket: dir.join("notify.vsock")
        })
    );
}

/// The hybrid vsock handshake against a Unix socket that speaks it as cloud-hypervisor
/// and firecracker do: `CONNECT 22\n`, `OK <port>\n`, then the guest's bytes.
#[test]
fn the_hybrid_vsock_proxy_connects_and_relays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("notify.vsock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let server = std::thread::spawn(move || {
        for answer in ["OK 1073741824\n", "ERR no listener\n"] {
            let (mut s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            assert_eq!(line, "CONNECT 22\n");
            s.write_all(answer.as_bytes()).expect("write");
            if answer.starts_with("OK") {
                let mut got = String::new();
                r.read_line(&mut got).expect("read");
                s.write_all(format!("echo: {got}").as_bytes())
                    .expect("write");
            }
        }
    });
    let args = VsockProxyArgs {
        socket: socket.clone(),
        port: 22,
    };
    check_socket(&socket).expect("a socket");
    let link = dir.path().join("planted");
    std::os::unix::fs::symlink(&socket, &link).expect("symlink");
    let e = check_socket(&link).expect_err("a symlink");
    assert!(format!("{e:#}").contains("is not a socket"), "{e:#}");
    let stream = connect(&args).expect("connect");
    let mut out = Vec::new();
    relay(
        stream,
        std::io::Cursor::new(b"SSH-2.0-test\n".to_vec()),
        &mut out,
    )
    .expect("relay");
    assert_eq!(String::from_utf8_lossy(&out), "echo: SSH-2.0-test\n");
    let e = connect(&args).expect_err("refused");
    assert!(format!("{e:#}").contains("refused CONNECT 22"), "{e:#}");
    server.join().expect("server");
    let e = connect(&VsockProxyArgs {
        socket: dir.path().join("missing"),
        port: 22,
    })
    .expect_err("no socket");
    assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
}
