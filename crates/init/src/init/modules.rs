//! Kernel modules, loaded in the plan's order with `finit_module`. The host writes plain
//! `.ko` files into the initrd (it decompresses them at build time, so the init carries no
//! decompressor); a `.ko.xz`, `.ko.zst` or `.ko.gz` in a hand-written plan is handed to the
//! kernel to decompress (`MODULE_INIT_COMPRESSED_FILE`, Linux 5.17+ with
//! `CONFIG_MODULE_DECOMPRESS`, as Debian's kernels have).

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
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| path.ends_with(ext));
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| e.to_string())?;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match rustix::system::finit_module(&fd, c"", flags) {
        // Already loaded (or built in under another path): nothing to do.
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOEXEC) if compressed => Err(
            "this kernel cannot decompress modules itself (it needs CONFIG_MODULE_DECOMPRESS): \
             give the init a plain .ko"
                .to_string(),
        ),
        Err(e) => Err(e.to_string()),
    }
}
