use super::*;
use crate::testutil::example;
use crate::{plan_for, Artifacts, HostFacts};
use microvm_spec::config::{Device, Interface, InterfaceType, Macvtap, MacvtapMode};

fn config() -> Config {
    let mut c = example();
    c.interfaces.push(Interface {
        kind: InterfaceType::Macvtap,
        id: "vm1-mvt".parse().expect("ifname"),
        mac: "02:00:00:00:00:02".parse().expect("mac"),
        macvtap: Some(Macvtap {
            link: "eth0".into(),
            mode: MacvtapMode::Bridge,
        }),
        bridge: None,
        vhost: false,
    });
    c.devices.push(Device {
        bus: DeviceBus::Pci,
        path: "0000:01:00.0".into(),
        qemu_device_extra_args: None,
        qemu_id: None,
        qemu_bus: None,
    });
    c.balloon = true;
    c
}

fn scripts_for(h: Hypervisor, c: &Config) -> Vec<(&'static str, String)> {
    let mut c = c.clone();
    c.hypervisor = h;
    let inv = plan_for(h, &c, &Artifacts::placeholders(), &HostFacts::reference())
        .unwrap_or_else(|e| panic!("{h}: {e}"));
    scripts(&c, &inv)
}

/// Each script is valid `sh` (`sh -n`).
fn assert_parses(name: &str, body: &str) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", body])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{name}: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qemu_gets_macvtap_pci_and_balloon_scripts() {
    let s = scripts_for(Hypervisor::Qemu, &config());
    let names: Vec<&str> = s.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "bin/macvtap-up",
            "bin/macvtap-down",
            "bin/pci-setup",
            "bin/microvm-balloon"
        ]
    );
    for (n, body) in &s {
        assert_parses(n, body);
    }
    let up = &s[0].1;
    assert!(up.contains(
        "ip link add link eth0 name vm1-mvt address 02:00:00:00:00:02 type macvtap mode bridge"
    ));
    assert!(s[2].1.contains("set -- 0000:01:00.0\n"), "{}", s[2].1);
    assert!(
        s[3].1.contains("\\\"execute\\\":\\\"balloon\\\""),
        "{}",
        s[3].1
    );
}

#[test]
fn balloon_control_per_hypervisor() {
    let c = config();
    let control = |h: Hypervisor| {
        let mut c = c.clone();
        c.hypervisor = h;
        c.interfaces.retain(|i| i.macvtap.is_none());
        c.devices.clear();
        let inv = plan_for(h, &c, &Artifacts::placeholders(), &HostFacts::reference())
            .unwrap_or_else(|e| panic!("{h}: {e}"));
        balloon_control(&c, &inv)
    };
    assert!(matches!(
        control(Hypervisor::Qemu),
        Some(BalloonControl::Qmp {
            memory_mib: 512,
            ..
        })
    ));
    assert!(matches!(
        control(Hypervisor::CloudHypervisor),
        Some(BalloonControl::CloudHypervisor { .. })
    ));
    assert!(matches!(
        control(Hypervisor::Crosvm),
        Some(BalloonControl::Crosvm { .. })
    ));
    let mut no_balloon = c.clone();
    no_balloon.balloon = false;
    no_balloon.interfaces.clear();
    no_balloon.devices.clear();
    let inv = plan_for(
        Hypervisor::Qemu,
        &no_balloon,
        &Artifacts::placeholders(),
        &HostFacts::reference(),
    )
    .expect("plan");
    assert_eq!(balloon_control(&no_balloon, &inv), None);
    assert!(scripts(&no_balloon, &inv).is_empty());
}

/// Runs `body` with a `busctl` on PATH that prints its argv, one word a line.
fn run_with_fake_busctl(body: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("busctl");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").expect("fake busctl");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let out = std::process::Command::new("sh")
        .args(["-c", body, "script"])
        .args(args)
        .env("PATH", path)
        .output()
        .expect("sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn machined_scripts_call_register_machine_with_the_id_bytes_and_pid() {
    let mut c = example();
    assert!(scripts_for(Hypervisor::Qemu, &c)
        .iter()
        .all(|(n, _)| !n.contains("register")));
    c.register_with_machined = true;
    c.machine_id = "00112233-4455-6677-8899-aabbccddeeff".into();
    let s = scripts_for(Hypervisor::Qemu, &c);
    let get = |n: &str| s.iter().find(|(p, _)| *p == n).expect(n).1.clone();
    let (register, unregister) = (get("bin/microvm-register"), get("bin/microvm-unregister"));
    assert_parses("register", &register);
    assert_parses("unregister", &unregister);
    let (ok, argv) = run_with_fake_busctl(&register, &["4242"]);
    assert!(ok, "{register}");
    let name = c.name.as_str();
    let mut want = vec![
        "call",
        "org.freedesktop.machine1",
        "/org/freedesktop/machine1",
        "org.freedesktop.machine1.Manager",
        "RegisterMachine",
        "sayssus",
        name,
        "16",
    ];
    let bytes = ["0", "17", "34", "51", "68", "85", "102", "119"];
    let bytes2 = ["136", "153", "170", "187", "204", "221", "238", "255"];
    want.extend(bytes);
    want.extend(bytes2);
    want.extend(["microvm", "vm", "4242", ""]);
    assert_eq!(argv.lines().collect::<Vec<_>>(), want);
    // A pid is required, and only digits.
    for bad in [&[][..], &["12x"][..], &[""][..]] {
        assert!(!run_with_fake_busctl(&register, bad).0, "{bad:?}");
    }
    let (ok, argv) = run_with_fake_busctl(&unregister, &[]);
    assert!(ok);
    assert_eq!(
        argv.lines().last().map(str::to_owned),
        Some(name.to_owned())
    );
    assert!(argv.contains("UnregisterMachine\ns\n"), "{argv}");
}
