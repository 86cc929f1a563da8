//! Which mkfs flags a disk build uses: a pure function of the detected tool version, the
//! guest kernel version and the options, so the policy is tested without running tools.

use super::{DiskOptions, Ownership};
use crate::tools::Version;

/// mkfs.erofs 1.5 is the first with `-Eztailpacking`; the kernel reads it from 5.16.
const EROFS_ZTAILPACKING_TOOL: Version = Version::new(1, 5, 0);
const EROFS_ZTAILPACKING_KERNEL: Version = Version::new(5, 16, 0);
/// `-Efragments`: mkfs.erofs 1.6, kernel 6.1. (`-Ededupe` is never a default: later
/// microvm.nix dropped it because it disables multithreaded mkfs.)
const EROFS_FRAGMENTS_TOOL: Version = Version::new(1, 6, 0);
const EROFS_FRAGMENTS_KERNEL: Version = Version::new(6, 1, 0);
/// `-L` and `--mount-point` are unknown to mkfs.erofs 1.5 (checked by running it).
const EROFS_LABEL_TOOL: Version = Version::new(1, 6, 0);

/// The arguments of one mkfs run, without the input tree and output file, plus notes on
/// anything asked for that this tool or kernel cannot do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlagPlan {
    pub args: Vec<String>,
    pub notes: Vec<String>,
}

/// `[user flags | defaults] -T0 [--all-root] -U <uuid> [-L label] [--mount-point=…] --quiet`
pub fn erofs(tool: Version, opts: &DiskOptions) -> FlagPlan {
    let mut plan = FlagPlan::default();
    match &opts.extra_flags {
        Some(user) => plan.args.extend(user.iter().cloned()),
        None => erofs_defaults(tool, opts.kernel_version, &mut plan),
    }
    plan.args.push("-T0".into());
    if opts.ownership == Ownership::AllRoot {
        plan.args.push("--all-root".into());
    }
    plan.args.push(format!("-U{}", format_uuid(&opts.uuid)));
    let supports_label = tool >= EROFS_LABEL_TOOL;
    if let Some(label) = &opts.label {
        if supports_label {
            plan.args.push(format!("-L{label}"));
        } else {
            plan.notes.push(format!(
                "mkfs.erofs {tool} cannot set a label; {label:?} not set"
            ));
        }
    }
    if let Some(mount_point) = &opts.mount_point {
        if supports_label {
            plan.args.push(format!("--mount-point={mount_point}"));
        } else {
            plan.notes.push(format!(
                "mkfs.erofs {tool} has no --mount-point; {mount_point:?} not set"
            ));
        }
    }
    plan.args.push("--quiet".into());
    plan
}

fn erofs_defaults(tool: Version, kernel: Option<Version>, plan: &mut FlagPlan) {
    // 1.5 knows only lz4 and lz4hc; lz4hc is the upstream default and every version has it.
    plan.args.push("-zlz4hc".into());
    let Some(kernel) = kernel else {
        plan.notes
            .push("guest kernel version unknown: no -Eztailpacking or -Efragments".into());
        return;
    };
    let mut extended = Vec::new();
    if tool >= EROFS_ZTAILPACKING_TOOL && kernel >= EROFS_ZTAILPACKING_KERNEL {
        extended.push("ztailpacking");
    }
    if kernel >= EROFS_FRAGMENTS_KERNEL {
        if tool >= EROFS_FRAGMENTS_TOOL {
            extended.push("fragments");
        } else {
            plan.notes
                .push(format!("mkfs.erofs {tool} has no -Efragments (needs 1.6)"));
        }
    }
    plan.args.extend(extended.iter().map(|e| format!("-E{e}")));
}

/// `[user flags | -comp zstd|gzip -processors N] -noappend [-all-root] -mkfs-time 0
/// -all-time 0 -no-progress -quiet` (placed after `TREE OUT`, as mksquashfs wants).
pub fn squashfs(has_zstd: bool, processors: usize, opts: &DiskOptions) -> FlagPlan {
    let mut plan = FlagPlan::default();
    match &opts.extra_flags {
        Some(user) => plan.args.extend(user.iter().cloned()),
        None => {
            let comp = if has_zstd { "zstd" } else { "gzip" };
            plan.args.extend(["-comp".into(), comp.into()]);
            plan.args
                .extend(["-processors".into(), processors.to_string()]);
        }
    }
    plan.args.push("-noappend".into());
    if opts.ownership == Ownership::AllRoot {
        plan.args.push("-all-root".into());
    }
    for flag in [
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
        "-no-progress",
        "-quiet",
    ] {
        plan.args.push(flag.into());
    }
    if let Some(label) = &opts.label {
        plan.notes
            .push(format!("squashfs has no labels; {label:?} not set"));
    }
    plan
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DiskType;

    fn opts(kernel: Option<&str>) -> DiskOptions {
        DiskOptions {
            disk_type: DiskType::Erofs,
            kernel_version: kernel.map(|k| k.parse().expect("kernel version")),
            ..DiskOptions::default()
        }
    }

    const V15: Version = Version::new(1, 5, 0);
    const V18: Version = Version::new(1, 8, 6);
    const ZERO: &str = "-U00000000-0000-0000-0000-000000000000";

    #[test]
    fn erofs_defaults_follow_tool_and_kernel() {
        let plan = erofs(V15, &opts(Some("5.15.0")));
        assert_eq!(plan.args, ["-zlz4hc", "-T0", "--all-root", ZERO, "--quiet"]);
        let plan = erofs(V15, &opts(Some("6.1.0-18-amd64")));
        assert_eq!(plan.args[..2], ["-zlz4hc", "-Eztailpacking"]);
        assert!(plan.notes[0].contains("-Efragments"), "{:?}", plan.notes);
        let plan = erofs(V18, &opts(Some("6.12.117")));
        assert_eq!(plan.args[..3], ["-zlz4hc", "-Eztailpacking", "-Efragments"]);
        assert!(!plan.args.iter().any(|a| a.contains("dedupe")));
        let plan = erofs(V18, &opts(None));
        assert_eq!(plan.args[0], "-zlz4hc");
        assert_eq!(plan.args[1], "-T0");
    }

    #[test]
    fn user_flags_replace_defaults_but_not_reproducibility() {
        let o = DiskOptions {
            extra_flags: Some(vec!["-zlz4".into()]),
            ..opts(Some("6.1"))
        };
        assert_eq!(
            erofs(V18, &o).args,
            ["-zlz4", "-T0", "--all-root", ZERO, "--quiet"]
        );
        let sq = squashfs(
            true,
            2,
            &DiskOptions {
                disk_type: DiskType::Squashfs,
                ..o
            },
        );
        assert_eq!(sq.args[..2], ["-zlz4", "-noappend"]);
    }

    #[test]
    fn label_and_mount_point_need_erofs_1_6() {
        let o = DiskOptions {
            label: Some("nix-store".into()),
            mount_point: Some("/nix/store".into()),
            ..opts(Some("5.10"))
        };
        let old = erofs(V15, &o);
        assert!(!old
            .args
            .iter()
            .any(|a| a.starts_with("-L") || a.starts_with("--mount")));
        assert_eq!(old.notes.len(), 2, "{:?}", old.notes);
        let new = erofs(V18, &o);
        assert!(new.args.contains(&"-Lnix-store".to_string()));
        assert!(new.args.contains(&"--mount-point=/nix/store".to_string()));
    }

    #[test]
    fn squashfs_defaults_and_ownership() {
        let o = DiskOptions {
            disk_type: DiskType::Squashfs,
            ..DiskOptions::default()
        };
        let plan = squashfs(true, 4, &o);
        let want = "-comp zstd -processors 4 -noappend -all-root -mkfs-time 0 -all-time 0 -no-progress -quiet";
        assert_eq!(plan.args.join(" "), want);
        let o = DiskOptions {
            ownership: Ownership::Preserve,
            ..o
        };
        let plan = squashfs(false, 1, &o);
        assert_eq!(plan.args[..2], ["-comp", "gzip"]);
        assert!(!plan.args.contains(&"-all-root".to_string()));
    }

    #[test]
    fn uuid_formatting() {
        let mut u = [0u8; 16];
        u[0] = 0xab;
        u[15] = 0x01;
        assert_eq!(format_uuid(&u), "ab000000-0000-0000-0000-000000000001");
    }
}
