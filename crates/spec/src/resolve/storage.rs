//! Volumes, shares, the store disk and the writable overlay.

use super::Resolver;
use crate::config::{ImageType, SecurityModel, Share, ShareCache, ShareProto, Volume};
use crate::node::KeyPath;
use crate::schema::Spec;

pub(crate) struct Storage {
    pub volumes: Vec<Volume>,
    pub shares: Vec<PendingShare>,
    pub store_on_disk: bool,
}

/// A share whose virtiofs socket default waits for the VM name.
pub(crate) struct PendingShare {
    share: Share,
    explicit_socket: bool,
}

impl PendingShare {
    pub fn with_default_socket(mut self, name: &str) -> Share {
        if !self.explicit_socket && self.share.proto == ShareProto::Virtiofs {
            self.share.socket = Some(format!("{name}-virtiofs-{}.sock", self.share.tag));
        }
        self.share
    }
}

const LABELLED_FS: [&str; 6] = ["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"];

pub(crate) fn resolve(r: &mut Resolver<'_>, spec: &Spec) -> Storage {
    let root = KeyPath::root();
    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let p = root.key("volumes").index(i);
        let image = r.required(&v.image, p.key("image"));
        let auto_create = v.auto_create.unwrap_or(true);
        let fs_type = v.fs_type.clone().unwrap_or_else(|| "ext4".into());
        let mount_point = v.mount_point.clone().flatten();
        if let Some(mp) = &mount_point {
            r.absolute_guest_path(p.key("mountPoint"), mp);
        }
        if auto_create && v.size.is_none() {
            r.error(
                p.key("size"),
                format!(
                    "MicroVM {}: volume {} needs a `size` (MiB) to be created automatically",
                    r.vm,
                    image.clone().unwrap_or_else(|| p.to_string())
                ),
            );
        }
        if let Some(label) = &v.label {
            if !auto_create {
                r.warn(p.key("label"), format!("Volume is not automatically labeled unless autoCreate is true. Volume \"{label}\" will be unlabeled unless you label it yourself."));
            }
            if !LABELLED_FS.contains(&fs_type.as_str()) {
                r.warn(p.key("label"), format!("Will not label volume {label} with filesystem type {fs_type}. Open an issue if you need it."));
            }
        }
        if image.as_deref() == Some("") {
            r.error(p.key("image"), "a volume image path cannot be empty");
        }
        if let Some(image) = image {
            volumes.push(Volume {
                image,
                serial: v.serial.clone(),
                direct: v.direct.unwrap_or(false),
                read_only: v.read_only.unwrap_or(false),
                label: v.label.clone(),
                mount_point,
                size: v.size,
                auto_create,
                mkfs_extra_args: v.mkfs_extra_args.clone().unwrap_or_default(),
                fs_type,
                image_type: v.image_type.unwrap_or(ImageType::Raw),
            });
        }
    }
    duplicates(
        r,
        volumes.iter().map(|v| v.image.clone()),
        "volumes",
        "image",
        |vm, img, k| format!("MicroVM {vm}: volume image \"{img}\" is used {k} > 1 times."),
    );

    let mut shares = Vec::new();
    for (i, s) in spec.shares.iter().enumerate() {
        let p = root.key("shares").index(i);
        let tag = r.required(&s.tag, p.key("tag"));
        let source = r.required(&s.source, p.key("source"));
        let mount_point = r.required(&s.mount_point, p.key("mountPoint"));
        let proto = s.proto.unwrap_or(ShareProto::NineP);
        if source.as_deref() == Some("") {
            r.error(p.key("source"), "a share source cannot be empty");
        }
        if tag.as_deref() == Some("") {
            r.error(p.key("tag"), "a share tag cannot be empty");
        }
        if let Some(mp) = &mount_point {
            r.absolute_guest_path(p.key("mountPoint"), mp);
        }
        if proto == ShareProto::Virtiofs && matches!(s.socket, Some(None)) {
            r.error(
                p.key("socket"),
                format!(
                    "MicroVM {}: virtiofs share with tag \"{}\" is missing a `socket` path.",
                    r.vm,
                    tag.clone().unwrap_or_else(|| p.to_string())
                ),
            );
        }
        let posix_acl = s.posix_acl.unwrap_or(true);
        let extra_args = s.extra_args.clone().unwrap_or_default();
        let global = spec.virtiofsd.extra_args.clone().unwrap_or_default();
        if posix_acl
            && proto == ShareProto::Virtiofs
            && extra_args
                .iter()
                .chain(&global)
                .any(|a| a.contains("--translate-uid") || a.contains("--translate-gid"))
        {
            r.error(p.key("posixAcl"), format!("MicroVM {}: virtiofs share \"{}\" has posixAcl=true but extraArgs contains --translate-uid/--translate-gid; virtiofsd refuses both together, set posixAcl = false", r.vm, tag.clone().unwrap_or_else(|| p.to_string())));
        }
        if let (Some(tag), Some(source), Some(mount_point)) = (tag, source, mount_point) {
            let explicit_socket = matches!(s.socket, Some(Some(_)));
            shares.push(PendingShare {
                share: Share {
                    tag,
                    socket: s.socket.clone().flatten(),
                    source,
                    security_model: s.security_model.unwrap_or(SecurityModel::None),
                    mount_point,
                    proto,
                    read_only: s.read_only.unwrap_or(false),
                    cache: s.cache.unwrap_or(ShareCache::Auto),
                    posix_acl,
                    extra_args,
                },
                explicit_socket,
            });
        }
    }
    duplicates(
        r,
        shares.iter().map(|s| s.share.tag.clone()),
        "shares",
        "tag",
        |vm, tag, k| format!("MicroVM {vm}: share tag \"{tag}\" is used {k} > 1 times."),
    );
    // Like the original, compare the sockets of virtiofs shares only, defaults included
    // (`<hostName>-virtiofs-<tag>.sock`), so an explicit socket that equals another
    // share's default is caught too.
    let sockets: Vec<(usize, String)> = spec
        .shares
        .iter()
        .enumerate()
        .filter(|(_, s)| s.proto == Some(ShareProto::Virtiofs))
        .filter_map(|(i, s)| match &s.socket {
            Some(socket) => socket.clone().map(|sock| (i, sock)),
            None => s
                .tag
                .as_ref()
                .map(|tag| (i, format!("{}-virtiofs-{tag}.sock", r.vm))),
        })
        .collect();
    let mut reported: Vec<&str> = Vec::new();
    for (i, sock) in sockets.iter().rev() {
        let k = sockets.iter().filter(|(_, s)| s == sock).count();
        if k > 1 && !reported.contains(&sock.as_str()) {
            reported.push(sock);
            r.error(
                root.key("shares").index(*i).key("socket"),
                format!(
                    "MicroVM {}: share socket \"{sock}\" is used {k} > 1 times.",
                    r.vm
                ),
            );
        }
    }

    let store_on_disk = spec
        .store_on_disk
        .unwrap_or_else(|| !shares.iter().any(|s| s.share.source == "/nix/store"));

    if let Some(overlay) = &spec.writable_store_overlay {
        let p = root.key("writableStoreOverlay");
        if r.absolute_guest_path(p.clone(), overlay)
            && !volumes
                .iter()
                .any(|v| v.mount_point.as_deref() == Some(overlay.as_str()))
        {
            r.error(p, format!("MicroVM {}: writableStoreOverlay {overlay} must be the mountPoint of a volume (the writable layer needs a real local filesystem)", r.vm));
        }
    }
    Storage {
        volumes,
        shares,
        store_on_disk,
    }
}

/// Reports each value that occurs more than once, at its last occurrence.
pub(crate) fn duplicates(
    r: &mut Resolver<'_>,
    values: impl Iterator<Item = String>,
    list: &str,
    key: &str,
    message: impl Fn(&str, &str, usize) -> String,
) {
    let values: Vec<String> = values.collect();
    let mut reported = Vec::new();
    for (i, v) in values.iter().enumerate().rev() {
        let k = values.iter().filter(|x| *x == v).count();
        if k > 1 && !reported.contains(v) {
            reported.push(v.clone());
            let msg = message(&r.vm, v, k);
            r.error(KeyPath::root().key(list).index(i).key(key), msg);
        }
    }
}
