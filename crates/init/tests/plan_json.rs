//! The plan as the guest init reads it: JSON written by the host, parsed strictly.

use microvm_init::plan::{
    ControlChannel, DeviceRef, ExecPlan, GuestPlan, MountPlan, OverlayPlan, PLAN_VERSION,
};

const COMMAND_PLAN: &str = r#"{
  "version": 1, "name": "t1", "hostname": "t1vm",
  "modules": ["/microvm/modules/virtio_mmio.ko", "/microvm/modules/erofs.ko.xz"],
  "root": {"disk": {"device": {"by": "path", "value": "/dev/vda"}, "fsType": "erofs", "options": null},
           "diskMountPoint": "/", "overlay": {"kind": "volume", "path": "/data"}},
  "mounts": [{"kind": "block", "device": {"by": "serial", "value": "data"}, "fsType": "ext4",
              "target": "/data", "readOnly": false},
             {"kind": "nineP", "tag": "share", "target": "/mnt", "readOnly": true}],
  "network": [{"mac": "52:54:00:12:34:56", "addresses": ["10.0.2.15/24"], "gateways": ["10.0.2.2"],
               "dns": ["10.0.2.3"], "mtu": 1500}],
  "machineId": "0123456789abcdef0123456789abcdef",
  "control": {"kind": "virtioPort", "name": "microvm.ctl"},
  "powerButton": {"signalAfterHandover": null, "graceSeconds": 5},
  "exec": {"kind": "command", "argv": ["/bin/sh", "-c", "exit 3"], "cwd": "/tmp", "user": "1000:1000"},
  "env": [["FOO", "bar"]]
}"#;

#[test]
fn parses_a_command_plan() {
    let plan = GuestPlan::from_json(COMMAND_PLAN).expect("valid plan");
    assert_eq!(plan.version, PLAN_VERSION);
    assert_eq!(
        plan.root.overlay,
        Some(OverlayPlan::Volume {
            path: "/data".into()
        })
    );
    assert!(matches!(
        &plan.mounts[0],
        MountPlan::Block { device: DeviceRef::Serial(s), .. } if s == "data"
    ));
    assert!(matches!(
        &plan.mounts[1],
        MountPlan::NineP {
            read_only: true,
            ..
        }
    ));
    assert_eq!(
        plan.control,
        Some(ControlChannel::VirtioPort {
            name: "microvm.ctl".into()
        })
    );
    assert!(matches!(&plan.exec, ExecPlan::Command { user: Some(u), .. } if u == "1000:1000"));
    assert_eq!(plan.env, vec![("FOO".to_owned(), "bar".to_owned())]);
}

#[test]
fn round_trips_through_json() {
    let plan = GuestPlan::from_json(COMMAND_PLAN).expect("valid plan");
    let again = GuestPlan::from_json(&plan.to_json()).expect("own output parses");
    assert_eq!(plan, again);
}

#[test]
fn rejects_unknown_fields() {
    let typo = COMMAND_PLAN.replace("\"hostname\"", "\"hostnam\"");
    let error = GuestPlan::from_json(&typo).expect_err("unknown field");
    assert!(error.to_string().contains("hostnam"), "{error}");
}
