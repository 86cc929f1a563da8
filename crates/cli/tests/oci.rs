//! Guest roots from an OCI image layout and a Nix closure, through the built `microvm`
//! binary.
//!
//! - `oci_image_boots_with_its_layers_and_default_command`: an OCI layout written here
//!   (busybox base layer, override layers with whiteouts, an opaque directory, a hard
//!   link, symlinks, a setuid and a 0700 file, a non-root owner), composed with a
//!   directory of overrides, boots under qemu; the image's `Cmd` is a script inside the
//!   image that checks the tree from the inside and exits 42 when all is right, so
//!   `microvm run` must exit 42. Needs qemu, the cloud test kernel, busybox-static and
//!   mkfs.erofs: skipped with a printed reason when one is missing, failed under `CI`.
//! - `nix_closure_is_packed_as_a_store_disk`: a synthetic store and a fake `nix-store`
//!   on `PATH`; `microvm build --list-root` shows the store paths at the image root and
//!   `microvm plan` the `regInfo=` parameter. Without `nix-store` the build is refused
//!   with a clear message.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest as _;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn kernels_dir() -> PathBuf {
    match std::env::var_os("MICROVM_TEST_KERNELS") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target/test-kernels"),
    }
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(name).is_file())
}

/// `None` after printing why the test is skipped; panics instead under `CI`.
fn require(test: &str, problems: Vec<String>) -> Option<()> {
    if problems.is_empty() {
        return Some(());
    }
    let list = problems.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisites missing under CI: {list}");
    }
    eprintln!("SKIPPED {test}: {list}");
    None
}

fn kernel_problem() -> Option<String> {
    let k = kernels_dir().join("cloud.deb");
    (!k.is_file()).then(|| {
        format!(
            "test kernel {} is missing (run scripts/fetch-test-kernels.sh)",
            k.display()
        )
    })
}

/// A scratch directory under the target dir (the store and images are large for /tmp).
fn scratch(name: &str) -> tempfile::TempDir {
    let bin = Path::new(env!("CARGO_BIN_EXE_microvm"));
    let base = bin
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| workspace().join("target"), Path::to_path_buf)
        .join("oci-e2e");
    fs::create_dir_all(&base).expect("scratch base");
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .expect("scratch")
}

fn microvm(dir: &Path, args: &[&str], path: &std::ffi::OsStr) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_microvm"));
    c.args(args)
        .arg("--store")
        .arg(dir.join("store"))
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("MICROVM_STORE")
        .stdin(Stdio::null());
    c
}

/// Runs with a deadline (a wedged boot fails the test instead of hanging it).
fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let out_path = tempfile::NamedTempFile::new().expect("tmp");
    let err_path = tempfile::NamedTempFile::new().expect("tmp");
    let mut child = cmd
        .stdout(out_path.reopen().expect("reopen"))
        .stderr(err_path.reopen().expect("reopen"))
        .spawn()
        .expect("spawn microvm");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "microvm did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                fs::read_to_string(out_path.path()).unwrap_or_default(),
                fs::read_to_string(err_path.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: fs::read(out_path.path()).unwrap_or_default(),
        stderr: fs::read(err_path.path()).unwrap_or_default(),
    }
}

// ---- an OCI image layout, written by hand ----

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        Layout {
            dir: dir.to_owned(),
        }
    }

    fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let hex: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).expect("blob");
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    /// Writes the image (config, manifest) and `index.json` naming it `tag`.
    fn image(&self, tag: &str, config: serde_json::Value, layers: &[(Vec<u8>, &str)]) {
        let layers: Vec<_> = layers.iter().map(|(b, mt)| self.blob(mt, b)).collect();
        let config = json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers,
        });
        let mut desc = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [desc]});
        fs::write(self.dir.join("index.json"), index.to_string()).expect("index");
    }
}

struct Tar(tar::Builder<Vec<u8>>);

fn header(kind: tar::EntryType, mode: u32, owner: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(owner);
    h.set_gid(owner);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn dir(mut self, path: &str, mode: u32) -> Tar {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.0
            .append_data(&mut h, path, std::io::empty())
            .expect("dir");
        self
    }
    fn bytes_owned(mut self, path: &str, content: &[u8], mode: u32, owner: u64) -> Tar {
        let mut h = header(tar::EntryType::Regular, mode, owner);
        h.set_size(content.len() as u64);
        self.0.append_data(&mut h, path, content).expect("file");
        self
    }
    fn file(self, path: &str, content: &str, mode: u32) -> Tar {
        self.bytes_owned(path, content.as_bytes(), mode, 0)
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Tar {
        let mut h = header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).expect("link");
        self
    }
    fn symlink(self, path: &str, target: &str) -> Tar {
        self.link(tar::EntryType::Symlink, path, target)
    }
    fn hardlink(self, path: &str, target: &str) -> Tar {
        self.link(tar::EntryType::Link, path, target)
    }
    fn plain(self) -> Vec<u8> {
        self.0.into_inner().expect("tar")
    }
    fn gzip(self) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&self.plain()).expect("gz");
        e.finish().expect("gz")
    }
}

/// Checks the tree from inside the guest; exits 42 when everything is right.
const CHECK: &str = r#"#!/bin/sh
fail() { echo "oci-check FAILED: $*"; exit 1; }
[ -e /etc/removed ] && fail "whiteout'd /etc/removed exists"
[ "$(ls -A /data)" = "new" ] || fail "opaque /data holds: $(ls -A /data)"
[ "$(cat /data/new)" = "new content" ] || fail "/data/new"
[ "$(stat -c %h /opt/file)" = 2 ] || fail "hard link count of /opt/file is $(stat -c %h /opt/file)"
[ "$(stat -c %i /opt/file)" = "$(stat -c %i /opt/file-link)" ] || fail "hard link inodes differ"
[ "$(readlink /opt/link)" = /opt/file ] || fail "symlink target is $(readlink /opt/link)"
[ "$(cat /opt/link)" = "linked" ] || fail "symlink content"
[ "$(stat -c %a /opt/secret)" = 700 ] || fail "/opt/secret mode $(stat -c %a /opt/secret)"
[ "$(stat -c %a /opt/suid)" = 4755 ] || fail "/opt/suid mode $(stat -c %a /opt/suid)"
[ "$(stat -c %u:%g /home/app/owned)" = 1000:1000 ] || fail "owner $(stat -c %u:%g /home/app/owned)"
[ "$(cat /etc/override)" = "from the directory" ] || fail "override directory"
[ "$(id -u):$(id -g)" = 1000:1000 ] || fail "user $(id -u):$(id -g)"
[ "$(pwd)" = /home/app ] || fail "working directory $(pwd)"
[ "$GREETING" = "hello from the image" ] || fail "image Env GREETING=$GREETING"
[ "$FROM_DEFINITION" = yes ] || fail "definition environment"
echo "oci-check: all good"
exit 42
"#;

fn busybox_problem() -> Option<String> {
    match fs::read("/bin/busybox") {
        Err(_) => Some("/bin/busybox is missing (package busybox-static)".into()),
        Ok(b) if b.windows(16).any(|w| w == b"/lib64/ld-linux-") => {
            Some("/bin/busybox is dynamically linked (install busybox-static)".into())
        }
        Ok(_) => None,
    }
}

fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut t = Tar::new()
        .dir("bin/", 0o755)
        .bytes_owned("bin/busybox", &busybox, 0o755, 0);
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            t = t.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    for d in [
        "dev/",
        "proc/",
        "sys/",
        "run/",
        "tmp/",
        "sbin/",
        "etc/",
        "data/",
        "data/sub/",
    ] {
        t = t.dir(d, 0o755);
    }
    t.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        0o644,
    )
    .file("etc/group", "root:x:0:\napp:x:1000:\n", 0o644)
    .file("etc/removed", "must be gone", 0o644)
    .file("data/old", "old", 0o644)
    .file("data/sub/older", "older", 0o644)
    .gzip()
}

#[test]
fn oci_image_boots_with_its_layers_and_default_command() {
    let test = "oci_image_boots_with_its_layers_and_default_command";
    let mut problems: Vec<String> = Vec::new();
    problems.extend(kernel_problem());
    problems.extend(busybox_problem());
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mkfs.erofs", "erofs-utils"),
    ] {
        if !on_path(tool) {
            problems.push(format!("{tool} is not installed (package {package})"));
        }
    }
    if require(test, problems).is_none() {
        return;
    }
    let dir = scratch("oci");
    let d = dir.path();
    let layout = Layout::new(&d.join("img"));
    let overrides = Tar::new()
        .file("etc/.wh.removed", "", 0o644)
        .dir("data/", 0o755)
        .file("data/.wh..wh..opq", "", 0o644)
        .file("data/new", "new content", 0o644)
        .dir("opt/", 0o755)
        .file("opt/file", "linked", 0o644)
        .hardlink("opt/file-link", "opt/file")
        .symlink("opt/link", "/opt/file")
        .file("opt/secret", "secret", 0o700)
        .file("opt/suid", "suid", 0o4755)
        .dir("home/", 0o755)
        .dir("home/app/", 0o755)
        .bytes_owned("home/app/owned", b"mine", 0o640, 1000)
        .file("etc/override", "from the image", 0o644)
        .plain();
    let check = Tar::new().file("check.sh", CHECK, 0o755).gzip();
    layout.image(
        "e2e",
        json!({
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["/check.sh"],
            "Env": ["PATH=/bin", "GREETING=hello from the image"],
            "WorkingDir": "/home/app",
            "User": "app",
        }),
        &[
            (
                busybox_layer(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            (overrides, "application/vnd.oci.image.layer.v1.tar"),
            (check, "application/vnd.oci.image.layer.v1.tar+gzip"),
        ],
    );
    fs::create_dir_all(d.join("overrides/etc")).expect("mkdir");
    fs::write(d.join("overrides/etc/override"), "from the directory").expect("write");
    let kernel = kernels_dir().join("cloud.deb");
    fs::write(
        d.join("vm.toml"),
        format!(
            "hostName = \"oci-e2e\"\nvcpu = 1\nmem = 256\nkernel = {kernel:?}\n\
             environment = {{ FROM_DEFINITION = \"yes\" }}\n\n\
             [[root]]\noci = \"img\"\nociRef = \"e2e\"\n\n\
             [[root]]\ndirectory = \"overrides\"\n"
        ),
    )
    .expect("vm.toml");
    let path = std::env::var_os("PATH").unwrap_or_default();

    // What lands where.
    let out = run_with_deadline(
        microvm(d, &["build", "vm.toml", "--list-root"], &path),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "build failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let origin = |p: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{p}\t")))
            .unwrap_or_else(|| panic!("{p} not listed:\n{stdout}"))
            .to_owned()
    };
    assert!(origin("/bin/busybox").contains("layer 1/3"), "{stdout}");
    assert!(origin("/opt/file-link").contains("layer 2/3"), "{stdout}");
    assert!(origin("/check.sh").contains("layer 3/3"), "{stdout}");
    assert!(
        origin("/etc/override").starts_with("directory ")
            && origin("/etc/override").ends_with("overrides"),
        "{stdout}"
    );
    assert!(!stdout.contains("/etc/removed\t"), "{stdout}");
    assert!(!stdout.contains("/data/old\t"), "{stdout}");

    // The boot: the image's command checks the tree from the inside.
    let out = run_with_deadline(
        microvm(
            d,
            &["run", "vm.toml", "--console-log", "console.log"],
            &path,
        ),
        Duration::from_secs(240),
    );
    let console = fs::read_to_string(d.join("console.log")).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(42),
        "microvm run should exit with the check script's 42\nstderr:\n{}\nconsole:\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(console.contains("oci-check: all good"), "{console}");
}

// ---- a Nix closure, with a fake nix-store ----

#[test]
fn nix_closure_is_packed_as_a_store_disk() {
    let test = "nix_closure_is_packed_as_a_store_disk";
    let mut problems: Vec<String> = Vec::new();
    problems.extend(kernel_problem());
    if !on_path("mkfs.erofs") {
        problems.push("mkfs.erofs is not installed (package erofs-utils)".into());
    }
    if require(test, problems).is_none() {
        return;
    }
    let dir = scratch("nix");
    let d = dir.path();
    let store = d.join("fake/nix/store");
    let system = store.join("0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-vm");
    let lib = store.join("1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-lib");
    fs::create_dir_all(&system).expect("mkdir");
    fs::write(system.join("init"), "#!/bin/sh\n").expect("init");
    fs::create_dir_all(lib.join("lib")).expect("mkdir");
    fs::write(lib.join("lib/libx.so"), "ELF").expect("lib");
    let bin = d.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n-qR) echo {s}; echo {l} ;;\n--dump-db) shift; for p; do printf '%s\\nsha256:0\\n\\n0\\n' \"$p\"; done ;;\nesac\n",
        s = system.display(),
        l = lib.display()
    );
    fs::write(bin.join("nix-store"), script).expect("script");
    fs::set_permissions(bin.join("nix-store"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let kernel = kernels_dir().join("cloud.deb");
    fs::write(
        d.join("vm.toml"),
        format!(
            "hostName = \"nix-e2e\"\nkernel = {kernel:?}\n\n[[root]]\nnix = {:?}\n",
            system.display().to_string()
        ),
    )
    .expect("vm.toml");

    // Without nix-store on PATH (a PATH of every system tool but Nix's): refused, saying why.
    let bare = path_without_nix(d);
    let out = run_with_deadline(
        microvm(d, &["build", "vm.toml"], &bare),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "a nix root source needs nix-store on PATH; install Nix or use another source"
        ),
        "{stderr}"
    );

    // With the fake one first on PATH.
    let mut dirs = vec![bin.clone()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(dirs).expect("path");
    let out = run_with_deadline(
        microvm(d, &["build", "vm.toml", "--list-root"], &path),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|p| p.matches('/').count() == 1)
        .collect();
    assert_eq!(
        top.len(),
        3,
        "two store paths and the closure info:\n{stdout}"
    );
    assert!(top.contains(&"/0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-vm"));
    assert!(top.contains(&"/1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-lib"));
    let info = top
        .iter()
        .find(|p| p.ends_with("-closure-info"))
        .expect("closure info");
    assert!(
        stdout.contains(&format!("{info}/registration\t")),
        "{stdout}"
    );

    // The runner boots it the microvm.nix way: the store at /nix/store, regInfo=.
    let out = run_with_deadline(
        microvm(d, &["build", "vm.toml", "--json"], &path),
        Duration::from_secs(120),
    );
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runner = PathBuf::from(report["runner"].as_str().expect("runner"));
    let run_script = fs::read_to_string(runner.join("bin/microvm-run")).expect("microvm-run");
    assert!(
        run_script.contains(&format!("regInfo=/nix/store{info}/registration")),
        "{run_script}"
    );
    let initrd_dir = PathBuf::from(report["initrd"].as_str().expect("initrd"));
    let plan = fs::read_to_string(initrd_dir.with_file_name("plan.json")).expect("plan");
    let plan: serde_json::Value = serde_json::from_str(&plan).expect("plan json");
    assert_eq!(plan["root"]["diskMountPoint"], "/nix/store");
    assert_eq!(
        plan["exec"]["path"],
        "/nix/store/0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-vm/init"
    );
    eprintln!("note: the real nix-store and a real Nix boot are tested in tests/nix.rs");
}

/// A directory of links to every program in /usr/bin except Nix's, as a PATH.
fn path_without_nix(dir: &Path) -> std::ffi::OsString {
    let bin = dir.join("no-nix-bin");
    fs::create_dir_all(&bin).expect("mkdir");
    for entry in fs::read_dir("/usr/bin").expect("/usr/bin").flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("nix") {
            std::os::unix::fs::symlink(entry.path(), bin.join(&name)).expect("symlink");
        }
    }
    bin.into_os_string()
}
