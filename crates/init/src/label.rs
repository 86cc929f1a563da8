//! Filesystem labels read from on-disk superblocks, so the init can find a volume by
//! label without blkid. Pure functions over the first bytes of a block device.

/// How many bytes from the start of a device [`label`] needs to see every format it knows
/// (the btrfs superblock, at 64 KiB, is the farthest).
pub const PROBE_BYTES: usize = 0x10000 + 0x1000;

/// A filesystem recognised by its superblock magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext,
    Xfs,
    Btrfs,
    Vfat,
    Erofs,
    Squashfs,
}

/// The filesystem found in `head` (the first bytes of a device) and its label, if it has
/// one. `None` when no known superblock is there.
pub fn probe(head: &[u8]) -> Option<(FsKind, Option<String>)> {
    if bytes(head, 1024 + 0x38, 2) == Some(&[0x53, 0xef]) {
        return Some((FsKind::Ext, text(head, 1024 + 120, 16)));
    }
    if bytes(head, 1024, 4) == Some(&[0xe2, 0xe1, 0xf5, 0xe0]) {
        // struct erofs_super_block: volume_name[16] at offset 0x40
        return Some((FsKind::Erofs, text(head, 1024 + 0x40, 16)));
    }
    if bytes(head, 0, 4) == Some(b"XFSB") {
        return Some((FsKind::Xfs, text(head, 108, 12)));
    }
    if bytes(head, 0x10040, 8) == Some(b"_BHRfS_M") {
        return Some((FsKind::Btrfs, text(head, 0x10000 + 0x12b, 256)));
    }
    if bytes(head, 0, 4) == Some(b"hsqs") {
        return Some((FsKind::Squashfs, None));
    }
    if bytes(head, 510, 2) == Some(&[0x55, 0xaa]) {
        if bytes(head, 0x52, 5) == Some(b"FAT32") {
            return Some((FsKind::Vfat, fat_label(head, 0x47)));
        }
        if matches!(bytes(head, 0x36, 5), Some(b"FAT12" | b"FAT16" | b"FAT  ")) {
            return Some((FsKind::Vfat, fat_label(head, 0x2b)));
        }
    }
    None
}

/// The label in `head`, if a known filesystem with a non-empty label is there.
pub fn label(head: &[u8]) -> Option<String> {
    probe(head).and_then(|(_, label)| label)
}

fn bytes(head: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    head.get(offset..offset.checked_add(len)?)
}

/// A NUL-terminated (or NUL-padded) UTF-8 field; `None` when empty or not UTF-8.
fn text(head: &[u8], offset: usize, len: usize) -> Option<String> {
    let field = bytes(head, offset, len)?;
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let s = std::str::from_utf8(&field[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_owned())
}

/// An 11-byte space-padded FAT label; `NO NAME` means none.
fn fat_label(head: &[u8], offset: usize) -> Option<String> {
    let s = text(head, offset, 11)?;
    let s = s.trim_end_matches(' ');
    (!s.is_empty() && s != "NO NAME").then(|| s.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        vec![0; PROBE_BYTES]
    }

    #[test]
    fn ext4_label() {
        let mut h = image();
        h[1024 + 0x38..1024 + 0x3a].copy_from_slice(&[0x53, 0xef]);
        h[1024 + 120..1024 + 126].copy_from_slice(b"output");
        assert_eq!(probe(&h), Some((FsKind::Ext, Some("output".into()))));
    }

    #[test]
    fn erofs_label_and_empty_label() {
        let mut h = image();
        h[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        assert_eq!(probe(&h), Some((FsKind::Erofs, None)));
        h[1024 + 0x40..1024 + 0x44].copy_from_slice(b"root");
        assert_eq!(label(&h).as_deref(), Some("root"));
    }

    #[test]
    fn xfs_btrfs_squashfs() {
        let mut h = image();
        h[..4].copy_from_slice(b"XFSB");
        h[108..112].copy_from_slice(b"data");
        assert_eq!(label(&h).as_deref(), Some("data"));

        let mut h = image();
        h[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        h[0x1012b..0x1012e].copy_from_slice(b"btr");
        assert_eq!(probe(&h), Some((FsKind::Btrfs, Some("btr".into()))));

        let mut h = image();
        h[..4].copy_from_slice(b"hsqs");
        assert_eq!(probe(&h), Some((FsKind::Squashfs, None)));
    }

    #[test]
    fn vfat_labels() {
        let mut h = image();
        h[510..512].copy_from_slice(&[0x55, 0xaa]);
        h[0x52..0x5a].copy_from_slice(b"FAT32   ");
        h[0x47..0x52].copy_from_slice(b"BOOT       ");
        assert_eq!(probe(&h), Some((FsKind::Vfat, Some("BOOT".into()))));
        h[0x47..0x52].copy_from_slice(b"NO NAME    ");
        assert_eq!(label(&h), None);

        let mut h = image();
        h[510..512].copy_from_slice(&[0x55, 0xaa]);
        h[0x36..0x3e].copy_from_slice(b"FAT16   ");
        h[0x2b..0x36].copy_from_slice(b"SMALL      ");
        assert_eq!(label(&h).as_deref(), Some("SMALL"));
    }

    #[test]
    fn unknown_and_short_input() {
        assert_eq!(probe(&image()), None);
        assert_eq!(probe(&[0u8; 10]), None);
    }
}
