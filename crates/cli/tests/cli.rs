//! The `microvm` binary, run in temporary directories: exit codes, what `check` and `plan`
//! print (text and JSON), `generate`, help and usage errors. `build` and `run` boot real
//! guests and are tested by the end-to-end suite (tests/e2e.rs).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The inventory's example VM (§2.0).
const EXAMPLE: &str = r#"hostName = "vm1"
vcpu = 2
mem = 512

[[volumes]]
image = "var.img"
mountPoint = "/var"
size = 1024

[[shares]]
proto = "virtiofs"
tag = "home"
source = "/srv/home"
mountPoint = "/home"

[[interfaces]]
type = "tap"
id = "vm-vm1"
mac = "02:00:00:00:00:01"
"#;

/// The example without its share: firecracker can run it.
const NO_SHARES: &str = r#"hostName = "vm1"
vcpu = 2

[[volumes]]
image = "var.img"
mountPoint = "/var"
size = 1024

[[interfaces]]
type = "tap"
id = "vm-vm1"
mac = "02:00:00:00:00:01"
"#;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Runs `microvm ARGS` in this directory, with no state or store of the real host.
    fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = Command::new(env!("CARGO_BIN_EXE_microvm"))
            .args(args)
            .current_dir(self.path())
            .env("MICROVM_STATE_DIR", self.path().join("state"))
            .env("MICROVM_STORE", self.path().join("store"))
            .env("HOME", self.path())
            .env_remove("NOTIFY_SOCKET")
            .output()
            .expect("run microvm");
        Run(output)
    }
}

struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts the exit code, showing both streams when it differs.
    fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}

// --- check ----------------------------------------------------------------------------

#[test]
fn check_a_valid_definition() {
    let dir = Dir::new();
    dir.write("vm1.toml", EXAMPLE);
    let out = dir.run(["check", "vm1.toml"]).expect(0);
    let stdout = out.stdout();
    assert!(
        stdout.starts_with("vm1.toml: valid (0 warnings)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("qemu") && stdout.contains("yes"),
        "{stdout}"
    );
    assert_eq!(out.stderr(), "");
}

#[test]
fn check_an_invalid_definition_prints_every_error_with_file_and_line() {
    let dir = Dir::new();
    dir.write(
        "vm1.toml",
        "vcpu = 0\nmem = 256\n[[volumes]]\nimage = \"a.img\"\nmountPoint = \"var\"\nsize = 1\n",
    );
    let out = dir.run(["check", "vm1.toml"]).expect(3);
    let stderr = out.stderr();
    for want in [
        "error: must be at least 1, found 0",
        "vm1.toml:1:8",
        "error: \"var\" must be an absolute path in the guest (starting with /, without ..)",
        "vm1.toml:5:14",
        "volumes[0].mountPoint",
        "error: vm1.toml: the definition has 2 errors",
    ] {
        assert!(stderr.contains(want), "{want:?} missing from:\n{stderr}");
    }
    assert_eq!(out.stdout(), "");
}

#[test]
fn check_reports_warnings_and_still_succeeds() {
    let dir = Dir::new();
    dir.write("small.toml", "mem = 16\n");
    let out = dir.run(["check", "small.toml"]).expect(0);
    assert!(
        out.stdout().starts_with("small.toml: valid (1 warning)"),
        "{}",
        out.stdout()
    );
    let stderr = out.stderr();
    assert!(
        stderr.contains("warning: MicroVM small: 16 MB of RAM is uncomfortably narrow.")
            && stderr.contains("small.toml:1:7"),
        "{stderr}"
    );
    // A hypervisor's own warnings are listed under it.
    dir.write("two.toml", "mem = 2048\n");
    let out = dir.run(["check", "two.toml"]).expect(0);
    assert!(
        out.stdout()
            .contains("warning: QEMU hangs if memory is exactly 2GB"),
        "{}",
        out.stdout()
    );
}

#[test]
fn check_all_lists_the_seven_hypervisors() {
    let dir = Dir::new();
    dir.write("vm1.toml", EXAMPLE);
    let out = dir.run(["check", "--all", "vm1.toml"]).expect(0);
    let stdout = out.stdout();
    let verdicts: Vec<(String, String)> = stdout
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .map(|l| {
            let mut words = l.split_whitespace();
            (
                words.next().unwrap_or_default().to_owned(),
                words.next().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("qemu", "yes"),
        ("cloud-hypervisor", "yes"),
        ("firecracker", "no"),
        ("crosvm", "yes"),
        ("kvmtool", "no"),
        ("stratovirt", "yes"),
        ("alioth", "yes"),
    ]
    .iter()
    .map(|(h, v)| ((*h).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(verdicts, want, "{stdout}");
    assert!(
        stdout.contains("firecracker does not support virtiofs shares"),
        "{stdout}"
    );
}

#[test]
fn check_all_fails_when_the_own_hypervisor_cannot_run_it() {
    let dir = Dir::new();
    dir.write(
        "vm1.toml",
        &EXAMPLE.replace(
            "hostName = \"vm1\"",
            "hostName = \"vm1\"\nhypervisor = \"firecracker\"",
        ),
    );
    let out = dir.run(["check", "--all", "vm1.toml"]).expect(4);
    assert!(
        out.stdout().contains("  qemu             yes"),
        "{}",
        out.stdout()
    );
}

#[test]
fn an_unsupported_feature_exits_4_naming_hypervisor_and_feature() {
    let dir = Dir::new();
    dir.write(
        "vm1.toml",
        "[[shares]]\ntag = \"data\"\nsource = \"/srv/data\"\nmountPoint = \"/data\"\n",
    );
    let out = dir
        .run(["check", "--hypervisor", "firecracker", "vm1.toml"])
        .expect(4);
    let stdout = out.stdout();
    assert!(stdout.contains("firecracker      no"), "{stdout}");
    assert!(
        stdout.contains("firecracker does not support 9p shares"),
        "{stdout}"
    );
    // `plan` refuses the same way.
    let out = dir
        .run([
            "plan",
            "--reference-host",
            "--hypervisor",
            "firecracker",
            "vm1.toml",
        ])
        .expect(4);
    let stderr = out.stderr();
    assert!(
        stderr.contains("planning vm1 for firecracker")
            && stderr.contains("firecracker does not support 9p shares"),
        "{stderr}"
    );
    // The VM's own hypervisor (qemu) runs it.
    dir.run(["check", "vm1.toml"]).expect(0);
}

#[test]
fn check_json_for_an_invalid_definition() {
    let dir = Dir::new();
    dir.write(
        "vm1.toml",
        "vpcu = 2\n[[interfaces]]\ntype = \"tap\"\nid = \"vm-0123456789abcdef\"\nmac = \"02:00:00:00:00:01\"\n",
    );
    let out = dir.run(["check", "--json", "vm1.toml"]).expect(3);
    let report = out.json();
    assert_eq!(report["valid"], false);
    assert_eq!(report["file"], "vm1.toml");
    let diags = report["diagnostics"].as_array().expect("diagnostics");
    let located: Vec<(&str, &str, u64, &str)> = diags
        .iter()
        .map(|d| {
            (
                d["severity"].as_str().unwrap_or_default(),
                d["file"].as_str().unwrap_or_default(),
                d["line"].as_u64().unwrap_or_default(),
                d["path"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        located,
        [
            ("error", "vm1.toml", 1, "vpcu"),
            ("error", "vm1.toml", 4, "interfaces[0].id"),
        ]
    );
    assert_eq!(
        diags[0]["message"],
        "unknown key `vpcu`; did you mean `vcpu`?"
    );
    assert_eq!(diags[0]["column"], 1);
    assert_eq!(report["hypervisors"], Value::Array(vec![]));
}

#[test]
fn check_json_for_a_valid_definition() {
    let dir = Dir::new();
    dir.write("vm1.toml", &EXAMPLE.replace("mem = 512", "mem = 16"));
    let report = dir
        .run(["check", "--json", "--all", "vm1.toml"])
        .expect(0)
        .json();
    assert_eq!(report["valid"], true);
    let diags = report["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diags.len(), 1, "{report:#}");
    assert_eq!(diags[0]["severity"], "warning");
    assert_eq!(diags[0]["line"], 3);
    assert_eq!(diags[0]["path"], "mem");
    let hypervisors: Vec<(&str, bool)> = report["hypervisors"]
        .as_array()
        .expect("hypervisors")
        .iter()
        .map(|h| {
            (
                h["hypervisor"].as_str().unwrap_or_default(),
                h["supported"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        hypervisors,
        [
            ("qemu", true),
            ("cloud-hypervisor", true),
            ("firecracker", false),
            ("crosvm", true),
            ("kvmtool", false),
            ("stratovirt", true),
            ("alioth", true),
        ]
    );
}

#[test]
fn a_missing_file_exits_1_with_cannot_read() {
    let dir = Dir::new();
    for args in [
        &["check", "nope.toml"][..],
        &["plan", "nope.toml"],
        &["check", "--json", "nope.toml"],
    ] {
        let out = dir.run(args).expect(1);
        assert!(
            out.stderr()
                .starts_with("error: cannot read nope.toml: No such file or directory"),
            "{args:?}: {}",
            out.stderr()
        );
    }
}

#[test]
fn malformed_files_exit_3() {
    let dir = Dir::new();
    dir.write("vm1.json", "{\n  \"vcpu\": 2,\n}\n");
    let out = dir.run(["check", "vm1.json"]).expect(3);
    assert!(
        out.stderr().contains("invalid JSON") && out.stderr().contains("vm1.json:2:"),
        "{}",
        out.stderr()
    );
    dir.write("vm2.toml", "[[volumes]\n");
    let out = dir.run(["check", "vm2.toml"]).expect(3);
    assert!(out.stderr().contains("invalid TOML"), "{}", out.stderr());
    std::fs::write(dir.path().join("vm3.toml"), b"hostName = \"\xff\"\n").expect("write");
    let out = dir.run(["check", "vm3.toml"]).expect(3);
    assert!(
        out.stderr().contains("is not valid UTF-8"),
        "{}",
        out.stderr()
    );
}

#[test]
fn a_file_name_that_is_not_utf8() {
    let dir = Dir::new();
    let name = OsStr::from_bytes(b"vm\xff.toml");
    std::fs::write(dir.path().join(name), "vcpu = 1\n").expect("write");
    let out = dir.run([name]);
    // Not a verb: usage error.
    assert_eq!(out.code(), 2);
    let out = dir.run([OsStr::new("check"), name]).expect(3);
    assert!(out.stderr().contains("set `hostName`"), "{}", out.stderr());
    let out = dir
        .run([
            OsStr::new("check"),
            OsStr::new("--name"),
            OsStr::new("vm1"),
            name,
        ])
        .expect(0);
    assert!(out.stdout().contains("valid"), "{}", out.stdout());
}

// --- plan -----------------------------------------------------------------------------

#[test]
fn plan_prints_the_exact_command_line() {
    let dir = Dir::new();
    dir.write("vm1.toml", EXAMPLE);
    let out = dir.run(["plan", "--reference-host", "vm1.toml"]).expect(0);
    let stdout = out.stdout();
    assert!(
        stdout.starts_with("hypervisor: qemu\ncommand:\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  exec -a microvm@vm1 qemu-system-x86_64 \\\n    -name vm1 \\\n"),
        "{stdout}"
    );
    for want in [
        "-m 512M",
        "-smp 2",
        "-chardev socket,id=fs0,path=vm1-virtiofs-home.sock",
        "-netdev tap,id=vm-vm1,ifname=vm-vm1",
        "virtiofsd-home",
        "--socket-path=vm1-virtiofs-home.sock",
        "control socket: vm1.sock",
        "shutdown: QMP system_powerdown on vm1.sock",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    // The reference host makes the output the same everywhere.
    let again = dir.run(["plan", "--reference-host", "vm1.toml"]).expect(0);
    assert_eq!(again.stdout(), stdout);
}

#[test]
fn plan_json_has_program_and_args() {
    let dir = Dir::new();
    dir.write("vm1.toml", EXAMPLE);
    let plan = dir
        .run(["plan", "--json", "--reference-host", "vm1.toml"])
        .expect(0)
        .json();
    assert_eq!(plan["hypervisor"], "qemu");
    assert_eq!(plan["program"], "qemu-system-x86_64");
    let args: Vec<&str> = plan["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(&args[..2], ["-name", "vm1"]);
    assert!(args.windows(2).any(|w| w == ["-m", "512M"]), "{args:?}");
    assert_eq!(plan["controlSocket"], "vm1.sock");
}

#[test]
fn plan_for_firecracker_shows_the_generated_config_file() {
    let dir = Dir::new();
    dir.write("vm1.toml", NO_SHARES);
    let out = dir
        .run([
            "plan",
            "--reference-host",
            "--hypervisor",
            "firecracker",
            "vm1.toml",
        ])
        .expect(0);
    let stdout = out.stdout();
    for want in [
        "hypervisor: firecracker",
        "exec -a microvm@vm1 firecracker",
        "--config-file vm1-firecracker.json",
        "files:\n  vm1-firecracker.json",
        "\"vcpu_count\": 2",
        "\"host_dev_name\": \"vm-vm1\"",
        "\"path_on_host\": \"var.img\"",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    // As JSON, the file's contents are themselves valid JSON.
    let plan = dir
        .run([
            "plan",
            "--json",
            "--reference-host",
            "--hypervisor",
            "firecracker",
            "vm1.toml",
        ])
        .expect(0)
        .json();
    let file = &plan["files"][0];
    assert_eq!(file["path"], "vm1-firecracker.json");
    let config: Value =
        serde_json::from_str(file["contents"].as_str().expect("contents")).expect("JSON config");
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["machine-config"]["mem_size_mib"], 512);
}

#[test]
fn plan_names_a_json_definition_with_name() {
    // `nix eval --json` output has no hostName: `--name` supplies it.
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/nix-eval-example.json");
    let dir = Dir::new();
    let out = dir
        .run([
            OsStr::new("plan"),
            OsStr::new("--reference-host"),
            OsStr::new("--name"),
            OsStr::new("vm1"),
            fixture.as_os_str(),
        ])
        .expect(0);
    assert!(
        out.stdout().contains("exec -a microvm@vm1 /nix/store/")
            && out
                .stdout()
                .contains("-qemu-host-cpu-only-9.1.2/bin/qemu-system-x86_64"),
        "{}",
        out.stdout()
    );
}

#[test]
fn plan_of_an_invalid_definition_exits_3() {
    let dir = Dir::new();
    dir.write("vm1.toml", "balloonMem = 1\n");
    let out = dir.run(["plan", "vm1.toml"]).expect(3);
    assert!(out
        .stderr()
        .contains("The balloonMem option has been removed"));
    assert_eq!(out.stdout(), "");
}

// --- generate, help, usage ------------------------------------------------------------

#[test]
fn generate_man_pages() {
    let dir = Dir::new();
    dir.run(["generate", "man", "man/pages"]).expect(0);
    let man = dir.path().join("man/pages");
    for page in [
        "microvm.1",
        "microvm-check.1",
        "microvm-plan.1",
        "microvm-build.1",
        "microvm-run.1",
        "microvm-generate.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is no man page");
    }
    let main = std::fs::read_to_string(man.join("microvm.1")).expect("microvm.1");
    assert!(main.contains("Declarative MicroVMs"), "{main}");
    let check = std::fs::read_to_string(man.join("microvm-check.1")).expect("check page");
    assert!(
        check.contains("\\-\\-all") || check.contains("--all"),
        "{check}"
    );
}

#[test]
fn generate_completions() {
    let dir = Dir::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = dir.run(["generate", "completions", shell]).expect(0);
        let text = out.stdout();
        assert!(
            text.contains("microvm") && text.contains("check") && text.contains("plan"),
            "{shell}: {text}"
        );
    }
    dir.run(["generate", "completions", "tcsh"]).expect(2);
}

#[test]
fn help_lists_the_verbs() {
    let dir = Dir::new();
    let out = dir.run(["--help"]).expect(0);
    let stdout = out.stdout();
    for verb in ["check", "plan", "build", "run", "generate"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(verb)),
            "{verb} missing from:\n{stdout}"
        );
    }
    let out = dir.run(["check", "--help"]).expect(0);
    assert!(out.stdout().contains("--all") && out.stdout().contains("--json"));
    let out = dir.run(["--version"]).expect(0);
    assert!(out.stdout().starts_with("microvm "), "{}", out.stdout());
}

#[test]
fn bad_usage_exits_2() {
    let dir = Dir::new();
    dir.write("vm1.toml", EXAMPLE);
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["check"][..],
        &["check", "--frob", "vm1.toml"][..],
        &["check", "--all", "--hypervisor", "qemu", "vm1.toml"][..],
        &["plan", "vm1.toml", "extra.toml"][..],
        &["generate"][..],
        &["generate", "man"][..],
    ] {
        let out = dir.run(args);
        assert_eq!(out.code(), 2, "{args:?}: {}", out.stderr());
        assert!(
            out.stderr().contains("Usage:"),
            "{args:?}: {}",
            out.stderr()
        );
        assert_eq!(out.stdout(), "", "{args:?}");
    }
}
