//! A small ELF reader: just enough to find the notes of a `vmlinux`.
//!
//! The PVH entry point is announced by an ELF note named `Xen` of type 18
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) in a `PT_NOTE` segment; firecracker, cloud-hypervisor,
//! crosvm and qemu (`-kernel vmlinux`) look for it. Both ELF classes and both byte orders
//! are read; anything malformed simply has no notes.

pub const MAGIC: &[u8] = b"\x7fELF";

const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One ELF note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub desc: &'a [u8],
}

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn u16(&self, off: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(off..off.checked_add(2)?)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, off: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn u64(&self, off: usize) -> Option<u64> {
        let b: [u8; 8] = self.bytes.get(off..off.checked_add(8)?)?.try_into().ok()?;
        Some(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
}

/// The notes of every `PT_NOTE` segment, in file order.
pub fn notes(bytes: &[u8]) -> Vec<Note<'_>> {
    notes_inner(bytes).unwrap_or_default()
}

fn notes_inner(bytes: &[u8]) -> Option<Vec<Note<'_>>> {
    let (little, ranges) = note_segments(bytes)?;
    let r = Reader { bytes, little };
    let mut out = Vec::new();
    for (offset, size) in ranges {
        let Some(segment) = bytes.get(offset..offset.checked_add(size)?) else {
            continue;
        };
        parse_notes(&r, segment, offset, &mut out);
    }
    Some(out)
}

/// The byte order and the (offset, size) of every `PT_NOTE` segment, from the ELF header
/// and the program headers (which `bytes` must hold; the segments need not be there).
fn note_segments(bytes: &[u8]) -> Option<(bool, Vec<(usize, usize)>)> {
    if !bytes.starts_with(MAGIC) {
        return None;
    }
    let is64 = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let r = Reader {
        bytes,
        little: *bytes.get(5)? == 1,
    };
    let (phoff, phentsize, phnum) = program_headers(&r, is64)?;
    let mut out = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if r.u32(ph)? != PT_NOTE {
            continue;
        }
        out.push(if is64 {
            (r.u64(ph + 0x08)? as usize, r.u64(ph + 0x20)? as usize)
        } else {
            (r.u32(ph + 0x04)? as usize, r.u32(ph + 0x10)? as usize)
        });
    }
    Some((r.little, out))
}

fn program_headers(r: &Reader<'_>, is64: bool) -> Option<(usize, usize, usize)> {
    let (phoff, phentsize, phnum) = if is64 {
        (r.u64(0x20)? as usize, r.u16(0x36)?, r.u16(0x38)?)
    } else {
        (r.u32(0x1c)? as usize, r.u16(0x2a)?, r.u16(0x2c)?)
    };
    Some((phoff, phentsize as usize, phnum as usize))
}

/// Like [`has_pvh_note`], reading only the headers and the note segments of the file (a
/// `vmlinux` is tens of MiB; its notes a few hundred bytes). Headers or segments larger
/// than 1 MiB count as malformed: no note.
pub fn file_has_pvh_note(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    const LIMIT: usize = 1 << 20;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len() as usize;
    let read = |offset: usize, size: usize| -> std::io::Result<Vec<u8>> {
        let size = size.min(len.saturating_sub(offset));
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, offset as u64)?;
        Ok(buf)
    };
    let header = read(0, 64)?;
    let Some(is64) = header.starts_with(MAGIC).then(|| header.get(4) == Some(&2)) else {
        return Ok(false);
    };
    let r = Reader {
        bytes: &header,
        little: header.get(5) == Some(&1),
    };
    let Some((phoff, phentsize, phnum)) = program_headers(&r, is64) else {
        return Ok(false);
    };
    let end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if end > LIMIT {
        return Ok(false);
    }
    let head = read(0, end)?;
    let Some((little, ranges)) = note_segments(&head) else {
        return Ok(false);
    };
    for (offset, size) in ranges {
        if size > LIMIT || offset >= len {
            continue;
        }
        let segment = read(offset, size)?;
        let r = Reader {
            bytes: &segment,
            little,
        };
        let mut found = Vec::new();
        parse_notes(&r, &segment, 0, &mut found);
        if found
            .iter()
            .any(|n| n.name == b"Xen" && n.kind == XEN_ELFNOTE_PHYS32_ENTRY)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn parse_notes<'a>(r: &Reader<'a>, segment: &'a [u8], base: usize, out: &mut Vec<Note<'a>>) {
    let align4 = |n: usize| (n + 3) & !3;
    let mut pos = 0;
    while pos + 12 <= segment.len() {
        let (Some(namesz), Some(descsz), Some(kind)) = (
            r.u32(base + pos),
            r.u32(base + pos + 4),
            r.u32(base + pos + 8),
        ) else {
            return;
        };
        let name_start = pos + 12;
        let desc_start = name_start + align4(namesz as usize);
        let end = desc_start + align4(descsz as usize);
        let (Some(name), Some(desc)) = (
            segment.get(name_start..name_start + namesz as usize),
            segment.get(desc_start..desc_start + descsz as usize),
        ) else {
            return;
        };
        // The name is NUL-terminated in the file; compare without the terminator.
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        out.push(Note { name, kind, desc });
        pos = end;
    }
}

/// Whether the ELF announces a PVH entry point.
pub fn has_pvh_note(bytes: &[u8]) -> bool {
    notes(bytes)
        .iter()
        .any(|n| n.name == b"Xen" && n.kind == XEN_ELFNOTE_PHYS32_ENTRY)
}

/// Builds a minimal little-endian ELF64 with one `PT_NOTE` segment holding `notes`
/// (name, type, desc). For tests of this module and of the bzImage code.
#[cfg(test)]
pub(crate) fn synthetic_elf(notes: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut seg = Vec::new();
    for (name, kind, desc) in notes {
        let name = [name.as_bytes(), &[0]].concat();
        seg.extend((name.len() as u32).to_le_bytes());
        seg.extend((desc.len() as u32).to_le_bytes());
        seg.extend(kind.to_le_bytes());
        seg.extend(&name);
        seg.resize((seg.len() + 3) & !3, 0);
        seg.extend(*desc);
        seg.resize((seg.len() + 3) & !3, 0);
    }
    let mut elf = vec![0u8; 64 + 56];
    elf[..4].copy_from_slice(MAGIC);
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
    elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
    elf[ph + 0x20..ph + 0x28].copy_from_slice(&(seg.len() as u64).to_le_bytes());
    elf.extend(seg);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pvh_note_among_others() {
        let elf = synthetic_elf(&[("GNU", 3, b"abcd"), ("Xen", 18, &[0, 0, 0, 1])]);
        let found = notes(&elf);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].name, b"GNU");
        assert!(has_pvh_note(&elf));
    }

    #[test]
    fn the_file_reader_agrees_with_the_byte_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, elf) in [
            (
                "pvh",
                synthetic_elf(&[("GNU", 3, b"abcd"), ("Xen", 18, &[0, 0, 0, 1])]),
            ),
            ("other", synthetic_elf(&[("Xen", 5, b"x")])),
            ("short", b"\x7fELF\x02\x01".to_vec()),
            ("text", b"not an elf".to_vec()),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &elf).expect("write");
            assert_eq!(
                file_has_pvh_note(&path).expect("read"),
                has_pvh_note(&elf),
                "{name}"
            );
        }
    }

    #[test]
    fn no_pvh_note_without_it() {
        assert!(!has_pvh_note(&synthetic_elf(&[("Xen", 5, b"x")])));
        assert!(!has_pvh_note(b"\x7fELF\x02\x01"));
        assert!(!has_pvh_note(b"not an elf"));
    }
}
