//! The new root under [`NEW_ROOT`]: the read-only disk, the overlay over it, then the
//! plan's mounts in order.
//!
//! Layouts:
//! - disk at `/`, no overlay: the disk itself, read-only, is the root.
//! - disk at `/`, overlay: the disk is staged at `/microvm/lower` (in the initramfs,
//!   hidden after the switch), the upper layer on a tmpfs staged at `/microvm/upper`, or
//!   on the plan's volume, staged at `/microvm/volume` and moved to its target inside
//!   the new root once the overlay is mounted.
//! - disk elsewhere (`/nix/store`): the root is a tmpfs; the disk is mounted at
//!   `<parent>/.ro-store` under an overlay at the mount point, with the upper layer on a
//!   tmpfs at `<parent>/.rw-store` or on the volume at its own target; without overlay
//!   the disk is mounted at the mount point directly.
//! - no disk: the root is a tmpfs, the mounts provide the rest.

use std::path::Path;

use microvm_init::plan::{DiskMount, GuestPlan, MountPlan, OverlayPlan};
use rustix::mount::MountFlags;

use super::fail::{Context, Failure};
use super::{devices, mounts, NEW_ROOT};

const STAGE_LOWER: &str = "/microvm/lower";
const STAGE_UPPER: &str = "/microvm/upper";
const STAGE_VOLUME: &str = "/microvm/volume";

pub fn assemble(plan: &GuestPlan) -> Result<(), Failure> {
    let root = &plan.root;
    let dmp = root.disk_mount_point.trim_end_matches('/');
    let mut consumed = None;
    match (&root.disk, dmp.is_empty(), &root.overlay) {
        (Some(disk), true, None) => mount_disk(disk, NEW_ROOT)?,
        (Some(disk), true, Some(overlay)) => {
            mount_disk(disk, STAGE_LOWER)?;
            let (upper, volume) = match overlay {
                OverlayPlan::Tmpfs { size } => {
                    tmpfs(STAGE_UPPER, Some(size))?;
                    (STAGE_UPPER.to_owned(), None)
                }
                OverlayPlan::Volume { path } => {
                    let (index, entry) = volume_entry(plan, path)?;
                    consumed = Some(index);
                    mount_entry(entry, STAGE_VOLUME)?;
                    (STAGE_VOLUME.to_owned(), Some(path))
                }
            };
            overlay_mount(
                STAGE_LOWER,
                &format!("{upper}/upper"),
                &format!("{upper}/work"),
                NEW_ROOT,
            )?;
            if let Some(path) = volume {
                mounts::move_mount(STAGE_VOLUME, &in_root(path)?)?;
            }
        }
        (disk, _, overlay) => {
            tmpfs(NEW_ROOT, None)?;
            if let Some(disk) = disk {
                let at = in_root(dmp)?;
                match overlay {
                    None => mount_disk(disk, &at)?,
                    Some(overlay) => {
                        let parent = Path::new(dmp).parent().and_then(Path::to_str).unwrap_or("");
                        let lower = format!("{NEW_ROOT}{}/.ro-store", parent.trim_end_matches('/'));
                        mount_disk(disk, &lower)?;
                        let upper = match overlay {
                            OverlayPlan::Tmpfs { size } => {
                                let rw =
                                    format!("{NEW_ROOT}{}/.rw-store", parent.trim_end_matches('/'));
                                tmpfs(&rw, Some(size))?;
                                rw
                            }
                            OverlayPlan::Volume { path } => {
                                let (index, entry) = volume_entry(plan, path)?;
                                consumed = Some(index);
                                let rw = in_root(path)?;
                                mount_entry(entry, &rw)?;
                                rw
                            }
                        };
                        overlay_mount(
                            &lower,
                            &format!("{upper}/store"),
                            &format!("{upper}/work"),
                            &at,
                        )?;
                    }
                }
            }
        }
    }
    for (index, entry) in plan.mounts.iter().enumerate() {
        if consumed != Some(index) {
            mount_entry(entry, &in_root(target(entry))?)?;
        }
    }
    Ok(())
}

/// The path of `target` (absolute, inside the new root) as the init sees it now.
pub fn in_root(target: &str) -> Result<String, Failure> {
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
        return Err(Failure::new(
            format!("mount target {target:?}"),
            "must be an absolute path without ..",
        ));
    }
    Ok(format!("{NEW_ROOT}{}", target.trim_end_matches('/')))
}

fn target(entry: &MountPlan) -> &str {
    match entry {
        MountPlan::Block { target, .. }
        | MountPlan::NineP { target, .. }
        | MountPlan::Virtiofs { target, .. }
        | MountPlan::Bind { target, .. } => target,
    }
}

/// The mount that provides the overlay's volume `path`.
fn volume_entry<'a>(plan: &'a GuestPlan, path: &str) -> Result<(usize, &'a MountPlan), Failure> {
    plan.mounts
        .iter()
        .enumerate()
        .find(|(_, m)| target(m).trim_end_matches('/') == path.trim_end_matches('/'))
        .ok_or_else(|| {
            Failure::new(
                format!("overlay volume {path}"),
                "no mount in the plan has this target",
            )
        })
}

fn mount_disk(disk: &DiskMount, at: &str) -> Result<(), Failure> {
    let node = devices::resolve(&disk.device)?;
    let options = disk.options.as_deref().filter(|o| !o.is_empty());
    mounts::mount_fs(&node, at, &disk.fs_type, MountFlags::RDONLY, options)
}

fn tmpfs(at: &str, size: Option<&str>) -> Result<(), Failure> {
    let options = match size {
        Some(size) => format!("mode=0755,size={size}"),
        None => "mode=0755".to_owned(),
    };
    mounts::mount_fs("tmpfs", at, "tmpfs", MountFlags::empty(), Some(&options))
}

fn overlay_mount(lower: &str, upper: &str, work: &str, at: &str) -> Result<(), Failure> {
    mounts::mkdir_p(Path::new(upper))?;
    mounts::mkdir_p(Path::new(work))?;
    let options = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    mounts::mount_fs(
        "overlay",
        at,
        "overlay",
        MountFlags::empty(),
        Some(&options),
    )
}

/// Mounts one plan entry at `at` (a path as the init sees it now).
fn mount_entry(entry: &MountPlan, at: &str) -> Result<(), Failure> {
    let ro = |read_only: bool| {
        if read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        }
    };
    match entry {
        MountPlan::Block {
            device,
            fs_type,
            read_only,
            ..
        } => {
            let node = devices::resolve(device)?;
            mounts::mount_fs(&node, at, fs_type, ro(*read_only), None)
        }
        MountPlan::NineP { tag, read_only, .. } => mounts::mount_fs(
            tag,
            at,
            "9p",
            ro(*read_only),
            Some("trans=virtio,version=9p2000.L,msize=512000"),
        ),
        MountPlan::Virtiofs { tag, read_only, .. } => {
            mounts::mount_fs(tag, at, "virtiofs", ro(*read_only), None)
        }
        MountPlan::Bind { source, .. } => {
            let from = in_root(source)?;
            mounts::mkdir_p(Path::new(at))?;
            mounts::bind(&from, at, false).ctx(|| format!("bind mount {source}"))
        }
    }
}
