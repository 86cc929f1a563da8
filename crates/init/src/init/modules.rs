//! Kernel modules, loaded in the plan's order. Plain `.ko` go through `finit_module`;
//! `.ko.xz` and `.ko.zst` are first handed to the kernel to decompress
//! (`MODULE_INIT_COMPRESSED_FILE`, Linux 6.2+ with `CONFIG_MODULE_DECOMPRESS`), and
//! otherwise decompressed here and loaded with `init_module`.

use std::io::Read;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::fail::{Context, Failure};

pub fn load_all(paths: &[String]) -> Result<(), Failure> {
    for path in paths {
        load(path).ctx(|| format!("load module {path}"))?;
    }
    Ok(())
}

/// `finit_module` flag: the file is compressed, the kernel decompresses it.
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

fn load(path: &str) -> Result<(), String> {
    let compressed = path.ends_with(".ko.xz") || path.ends_with(".ko.zst");
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| e.to_string())?;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let mut result = rustix::system::finit_module(&fd, c"", flags);
    if compressed && matches!(result, Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOEXEC)) {
        // An older kernel, or one built without in-kernel module decompression.
        let image = decompress(path)?;
        result = rustix::system::init_module(&image, c"");
    }
    match result {
        // Already loaded (or built in under another path): nothing to do.
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn decompress(path: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut input = std::io::BufReader::new(file);
    let mut image = Vec::new();
    if path.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut input, &mut image).map_err(|e| format!("xz: {e}"))?;
    } else {
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut input)
            .map_err(|e| format!("zstd: {e}"))?;
        decoder
            .read_to_end(&mut image)
            .map_err(|e| format!("zstd: {e}"))?;
    }
    Ok(image)
}
