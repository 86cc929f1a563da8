//! Kernel modules, loaded in the plan's order. Plain `.ko` go through `finit_module`;
//! `.ko.xz` and `.ko.zst` are decompressed here and loaded with `init_module`.

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

fn load(path: &str) -> Result<(), String> {
    let result = if path.ends_with(".ko.xz") || path.ends_with(".ko.zst") {
        let image = decompress(path)?;
        rustix::system::init_module(&image, c"")
    } else {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| e.to_string())?;
        rustix::system::finit_module(&fd, c"", 0)
    };
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
