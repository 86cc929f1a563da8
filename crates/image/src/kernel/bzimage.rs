//! The x86 boot image: the setup header of a bzImage, its compressed payload, and the
//! uncompressed `vmlinux` ELF inside it (with its PVH entry note).
//!
//! Layout facts used here (Documentation/arch/x86/boot.rst): the magic `HdrS` at 0x202,
//! the protocol version at 0x206, `setup_sects` at 0x1f1 (0 means 4), the pointer to the
//! version string at 0x20e (relative to 0x200), `payload_offset` at 0x248 and
//! `payload_length` at 0x24c (both relative to the protected-mode code, which starts at
//! `(setup_sects + 1) * 512`). The kernel build appends the uncompressed size as 4
//! little-endian bytes to every compressed payload.

use std::io::Read;
use std::path::Path;

use super::elf;
use super::KernelError;

/// What kind of kernel file this is, judged by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// An x86 bzImage (`HdrS` setup header).
    BzImage,
}

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadCompression {
    Gzip,
    Xz,
    Lzma,
    Zstd,
    /// The kernel's legacy LZ4 frame (magic 0x184C2102).
    Lz4Legacy,
    Bzip2,
    Lzo,
    /// Not compressed (an ELF payload).
    None,
}

/// The fields of a bzImage setup header that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    pub setup_sects: u8,
    /// Boot protocol version, e.g. 0x020f.
    pub protocol: u16,
    /// First word of the kernel version string (e.g. `6.12.117+deb12-cloud-amd64`).
    pub version: Option<String>,
    /// Absolute offset of the compressed payload in the file.
    pub payload_start: usize,
    pub payload_length: usize,
}

/// The uncompressed kernel taken out of a bzImage.
#[derive(Debug, Clone)]
pub struct Vmlinux {
    pub elf: Vec<u8>,
    pub compression: PayloadCompression,
    /// Whether the ELF carries the Xen PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub has_pvh_note: bool,
}

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;

/// Detects the format of a kernel image from its first bytes.
pub fn detect_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(elf::MAGIC) {
        Some(ImageFormat::Elf)
    } else if bytes.get(0x202..0x206) == Some(b"HdrS") {
        Some(ImageFormat::BzImage)
    } else {
        None
    }
}

fn u16_at(bytes: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(off..off + 2)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

/// The kernel release named by the header's version string (its first word), if any.
/// Reads only the setup code, so the first 64 KiB of the file are enough.
pub fn header_version(bytes: &[u8]) -> Option<String> {
    let s = u16_at(bytes, 0x20e)
        .filter(|&p| p != 0)
        .and_then(|p| bytes.get(p as usize + 0x200..))?;
    let end = s.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&s[..end]).ok()?;
    text.split_whitespace().next().map(str::to_string)
}

/// Parses the setup header of a bzImage. `path` is only used in errors.
pub fn parse_setup_header(path: &Path, bytes: &[u8]) -> Result<SetupHeader, KernelError> {
    let bad = |reason: &str| KernelError::BadImage {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if detect_format(bytes) != Some(ImageFormat::BzImage) {
        return Err(bad("no bzImage setup header (magic HdrS at 0x202)"));
    }
    let setup_sects = match bytes[0x1f1] {
        0 => 4,
        n => n,
    };
    let protocol = u16_at(bytes, 0x206).ok_or_else(|| bad("truncated setup header"))?;
    if protocol < 0x0208 {
        return Err(bad(&format!(
            "boot protocol {}.{:02} is too old (payload fields need 2.08)",
            protocol >> 8,
            protocol & 0xff
        )));
    }
    let version = header_version(bytes);
    let pm_start = (setup_sects as usize + 1) * 512;
    let offset = u32_at(bytes, 0x248).ok_or_else(|| bad("truncated setup header"))? as usize;
    let length = u32_at(bytes, 0x24c).ok_or_else(|| bad("truncated setup header"))? as usize;
    let payload_start = pm_start + offset;
    if length == 0 || payload_start + length > bytes.len() {
        return Err(bad(&format!(
            "payload {payload_start:#x}+{length:#x} lies outside the {:#x}-byte file",
            bytes.len()
        )));
    }
    Ok(SetupHeader {
        setup_sects,
        protocol,
        version,
        payload_start,
        payload_length: length,
    })
}

/// Recognises the compression of a payload by its magic bytes.
pub fn payload_compression(payload: &[u8]) -> Option<PayloadCompression> {
    let c = match payload {
        [0x1f, 0x8b, ..] => PayloadCompression::Gzip,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => PayloadCompression::Xz,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => PayloadCompression::Zstd,
        [0x02, 0x21, 0x4c, 0x18, ..] => PayloadCompression::Lz4Legacy,
        [b'B', b'Z', b'h', ..] => PayloadCompression::Bzip2,
        [0x89, b'L', b'Z', b'O', ..] => PayloadCompression::Lzo,
        [0x5d, 0x00, ..] => PayloadCompression::Lzma,
        [0x7f, b'E', b'L', b'F', ..] => PayloadCompression::None,
        _ => return None,
    };
    Some(c)
}

/// Decompresses the payload of a bzImage and checks that it is an ELF.
pub fn extract_vmlinux(path: &Path, bzimage: &[u8]) -> Result<Vmlinux, KernelError> {
    let header = parse_setup_header(path, bzimage)?;
    let payload = &bzimage[header.payload_start..header.payload_start + header.payload_length];
    let compression = payload_compression(payload).ok_or_else(|| KernelError::BadImage {
        path: path.to_path_buf(),
        reason: "unknown payload compression".to_string(),
    })?;
    // The appended uncompressed size is a good capacity hint (capped against nonsense).
    let hint = payload
        .len()
        .checked_sub(4)
        .and_then(|at| u32_at(payload, at))
        .map_or(0, |n| (n as usize).min(512 << 20));
    let elf = decompress_payload(payload, compression, hint).map_err(|e| match e {
        PayloadError::Io(source) => KernelError::Decompress {
            path: path.to_path_buf(),
            compression,
            source,
        },
        PayloadError::Unsupported => KernelError::UnsupportedCompression {
            path: path.to_path_buf(),
            compression,
        },
    })?;
    if !elf.starts_with(elf::MAGIC) {
        return Err(KernelError::BadImage {
            path: path.to_path_buf(),
            reason: format!("the {compression:?} payload does not decompress to an ELF"),
        });
    }
    let has_pvh_note = elf::has_pvh_note(&elf);
    Ok(Vmlinux {
        elf,
        compression,
        has_pvh_note,
    })
}

#[derive(Debug)]
enum PayloadError {
    Io(std::io::Error),
    Unsupported,
}

fn decompress_payload(
    payload: &[u8],
    compression: PayloadCompression,
    hint: usize,
) -> Result<Vec<u8>, PayloadError> {
    let mut out = Vec::with_capacity(hint);
    let read = match compression {
        PayloadCompression::None => {
            out.extend_from_slice(payload);
            Ok(0)
        }
        PayloadCompression::Gzip => flate2::read::GzDecoder::new(payload).read_to_end(&mut out),
        PayloadCompression::Xz => xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
            .map_err(std::io::Error::other)
            .and_then(|s| decompress_xz_single(s, payload, &mut out)),
        PayloadCompression::Lzma => xz2::stream::Stream::new_lzma_decoder(u64::MAX)
            .map_err(std::io::Error::other)
            .and_then(|s| decompress_xz_single(s, payload, &mut out)),
        PayloadCompression::Zstd => zstd::stream::read::Decoder::new(payload)
            .and_then(|d| d.single_frame().read_to_end(&mut out)),
        PayloadCompression::Lz4Legacy => decompress_lz4_legacy(payload, &mut out).map(|()| 0),
        PayloadCompression::Bzip2 | PayloadCompression::Lzo => {
            return Err(PayloadError::Unsupported)
        }
    };
    read.map_err(PayloadError::Io)?;
    Ok(out)
}

/// Runs an xz/lzma decoder until its stream ends, ignoring what follows (the kernel's
/// appended size, which `xz2`'s readers would take for a corrupt second stream).
fn decompress_xz_single(
    mut stream: xz2::stream::Stream,
    input: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        if out.capacity() - out.len() < 1 << 20 {
            out.reserve(8 << 20);
        }
        let consumed = stream.total_in() as usize;
        let rest = input.get(consumed..).unwrap_or_default();
        let before = (consumed, out.len());
        let status = stream
            .process_vec(rest, out, xz2::stream::Action::Run)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if status == xz2::stream::Status::StreamEnd {
            return Ok(out.len());
        }
        if (stream.total_in() as usize, out.len()) == before {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the xz stream ends early",
            ));
        }
    }
}

/// The kernel's legacy LZ4 format: the magic, then blocks of `u32 LE compressed size` +
/// an LZ4 block of at most 8 MiB decompressed; a repeated magic starts a new stream. The
/// kernel's appended size (4 bytes) ends the input.
fn decompress_lz4_legacy(input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    const BLOCK: usize = 8 << 20;
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let mut pos = 4;
    let mut block = vec![0u8; BLOCK];
    while let Some(size) = u32_at(input, pos) {
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = size as usize;
        let Some(data) = input.get(pos..pos + size) else {
            // The appended uncompressed size, or a truncated input.
            if pos == input.len() {
                break;
            }
            return Err(invalid(format!("lz4 block of {size} bytes is truncated")));
        };
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| invalid(format!("lz4: {e}")))?;
        out.extend_from_slice(&block[..n]);
        pos += size;
    }
    Ok(())
}

/// Reads a file wholly, naming it in the error.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, KernelError> {
    std::fs::read(path).map_err(|source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
#[path = "bzimage_tests.rs"]
pub(crate) mod tests;
