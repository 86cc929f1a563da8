use std::io::Write;
use std::path::Path;

use super::*;
use crate::kernel::elf::synthetic_elf;

/// A fake bzImage: one setup sector (plus the boot sector), a version string, then
/// `payload` 16 bytes into the protected-mode part, followed by the kernel's appended
/// uncompressed size.
pub(crate) fn fake_bzimage(setup_sects: u8, payload: &[u8], plain_len: usize) -> Vec<u8> {
    let sects = if setup_sects == 0 {
        4
    } else {
        setup_sects as usize
    };
    let pm_start = (sects + 1) * 512;
    let mut img = vec![0u8; pm_start + 16];
    img[0x1f1] = setup_sects;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let version = b"6.12.1-test (me@host) #1 SMP\0";
    img[0x300..0x300 + version.len()].copy_from_slice(version);
    img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    let mut full = payload.to_vec();
    full.extend((plain_len as u32).to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(full.len() as u32).to_le_bytes());
    img.extend(full);
    img.extend([0u8; 100]); // trailing bytes after the payload (e.g. signatures)
    img
}

fn vmlinux() -> Vec<u8> {
    let mut elf = synthetic_elf(&[("Xen", 18, &[0, 0, 0x10, 0])]);
    // Something compressible and long enough to cross an lz4 block boundary.
    elf.extend((0..9_000_000u32).map(|i| (i / 7 % 251) as u8));
    elf
}

fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = 0x184C_2102u32.to_le_bytes().to_vec();
    for chunk in data.chunks(8 << 20) {
        let block = lz4_flex::block::compress(chunk);
        out.extend((block.len() as u32).to_le_bytes());
        out.extend(block);
    }
    out
}

#[test]
fn detects_formats() {
    assert_eq!(detect_format(b"\x7fELF\x02"), Some(ImageFormat::Elf));
    assert_eq!(
        detect_format(&fake_bzimage(1, b"x", 1)),
        Some(ImageFormat::BzImage)
    );
    assert_eq!(detect_format(b"MZ"), None);
}

#[test]
fn parses_setup_header() {
    let img = fake_bzimage(0, b"\x1f\x8bpayload", 10);
    let h = parse_setup_header(Path::new("/k"), &img).expect("header");
    assert_eq!(h.setup_sects, 4);
    assert_eq!(h.payload_start, 5 * 512 + 16);
    assert_eq!(h.payload_length, 9 + 4);
    assert_eq!(h.version.as_deref(), Some("6.12.1-test"));
    assert_eq!(h.protocol, 0x020f);
}

#[test]
fn rejects_payload_outside_file() {
    let mut img = fake_bzimage(1, b"abc", 3);
    img[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = parse_setup_header(Path::new("/boot/vmlinuz-x"), &img).expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("/boot/vmlinuz-x") && msg.contains("outside"),
        "{msg}"
    );
}

fn round_trip(payload: Vec<u8>, expect: PayloadCompression) {
    let elf = vmlinux();
    let img = fake_bzimage(1, &payload, elf.len());
    let v = extract_vmlinux(Path::new("/k"), &img).expect("extract");
    assert_eq!(v.compression, expect);
    assert!(v.elf == elf, "{expect:?} payload decompressed differently");
    assert!(v.has_pvh_note);
}

#[test]
fn gzip_payload() {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&vmlinux()).expect("gzip");
    round_trip(enc.finish().expect("gzip"), PayloadCompression::Gzip);
}

#[test]
fn xz_payload() {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
    enc.write_all(&vmlinux()).expect("xz");
    round_trip(enc.finish().expect("xz"), PayloadCompression::Xz);
}

#[test]
fn zstd_payload() {
    let data = zstd::encode_all(&vmlinux()[..], 1).expect("zstd");
    round_trip(data, PayloadCompression::Zstd);
}

#[test]
fn lz4_legacy_payload() {
    round_trip(lz4_legacy(&vmlinux()), PayloadCompression::Lz4Legacy);
}

#[test]
fn payload_that_is_not_elf_is_an_error() {
    let data = zstd::encode_all(&b"hello world"[..], 1).expect("zstd");
    let img = fake_bzimage(1, &data, 11);
    let msg = extract_vmlinux(Path::new("/k"), &img)
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("does not decompress to an ELF"), "{msg}");
}

#[test]
fn bzip2_is_reported_unsupported() {
    let img = fake_bzimage(1, b"BZh91AY&SY", 10);
    let msg = extract_vmlinux(Path::new("/k"), &img)
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("Bzip2"), "{msg}");
}
