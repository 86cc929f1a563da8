//! The host TSC frequency, for the guest's `tsc_early_khz=` under TCG.

use std::path::Path;
use std::process::Command;

/// The host TSC frequency in kHz, from the first source that has it:
/// `/sys/devices/system/cpu/cpu0/tsc_freq_khz`; the kernel log (`/dev/kmsg`, else
/// `dmesg`): "Refined TSC clocksource calibration: N MHz" or "tsc: Detected N MHz";
/// `/proc/cpuinfo` `cpu MHz` as a last resort.
pub fn tsc_khz() -> Option<u64> {
    tsc_khz_from(Path::new("/"), true)
}

/// [`tsc_khz`] against another root (tests). `run_dmesg` allows running `dmesg` when the
/// kernel log cannot be read from `<root>/dev/kmsg`.
pub fn tsc_khz_from(root: &Path, run_dmesg: bool) -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string(root.join("sys/devices/system/cpu/cpu0/tsc_freq_khz")) {
        if let Some(k) = s.trim().parse::<u64>().ok().filter(|k| *k > 0) {
            return Some(k);
        }
    }
    let log = read_kmsg(&root.join("dev/kmsg")).or_else(|| run_dmesg.then(dmesg).flatten());
    if let Some(k) = log.as_deref().and_then(from_kernel_log) {
        return Some(k);
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).ok()?;
    from_cpuinfo(&cpuinfo)
}

/// Reads what `/dev/kmsg` holds now, without blocking for new records.
fn read_kmsg(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            // EPIPE: a record was overwritten; keep reading the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => break, // EAGAIN: end of the buffer
        }
        if out.len() > 4 << 20 {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn dmesg() -> Option<String> {
    let out = Command::new("dmesg").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The refined calibration wins over the early detection: it is the more precise value.
pub(crate) fn from_kernel_log(log: &str) -> Option<u64> {
    let find = |marker: &str| {
        log.lines().rev().find_map(|line| {
            let rest = &line[line.find(marker)? + marker.len()..];
            mhz_to_khz(rest.split_whitespace().next()?)
        })
    };
    find("Refined TSC clocksource calibration:").or_else(|| find("tsc: Detected"))
}

pub(crate) fn from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "cpu MHz")
            .then(|| mhz_to_khz(value.trim()))
            .flatten()
    })
}

/// "2445.424" → 2445424, without going through floating point.
fn mhz_to_khz(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int: u64 = int.parse().ok()?;
    let mut frac3: String = frac.chars().take(3).collect();
    if !frac3.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while frac3.len() < 3 {
        frac3.push('0');
    }
    let khz = int * 1000 + frac3.parse::<u64>().ok()?;
    (khz > 0).then_some(khz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_log_lines() {
        let log = "[    0.000063] tsc: Detected 2445.424 MHz processor\n\
                   [    1.2] clocksource: tsc: mask: 0xffffffffffffffff\n";
        assert_eq!(from_kernel_log(log), Some(2_445_424));
        let kmsg = "6,12,63,-;tsc: Detected 2596.000 MHz processor\n\
                    6,400,1600000,-;tsc: Refined TSC clocksource calibration: 2595.998 MHz\n";
        assert_eq!(from_kernel_log(kmsg), Some(2_595_998));
        assert_eq!(from_kernel_log("nothing here"), None);
    }

    #[test]
    fn parses_cpuinfo() {
        let c = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2445.42\n";
        assert_eq!(from_cpuinfo(c), Some(2_445_420));
        assert_eq!(mhz_to_khz("3000"), Some(3_000_000));
        assert_eq!(mhz_to_khz("abc"), None);
    }

    #[test]
    fn sysfs_first_then_cpuinfo() {
        let root = tempfile::tempdir().expect("tempdir");
        let cpu0 = root.path().join("sys/devices/system/cpu/cpu0");
        std::fs::create_dir_all(&cpu0).expect("mkdir");
        std::fs::create_dir_all(root.path().join("proc")).expect("mkdir");
        std::fs::write(root.path().join("proc/cpuinfo"), "cpu MHz : 1000.000\n").expect("w");
        assert_eq!(tsc_khz_from(root.path(), false), Some(1_000_000));
        std::fs::write(cpu0.join("tsc_freq_khz"), "2596000\n").expect("w");
        assert_eq!(tsc_khz_from(root.path(), false), Some(2_596_000));
    }

    #[test]
    fn host_value_is_plausible() {
        let k = tsc_khz();
        eprintln!("host tsc_khz: {k:?}");
        if let Some(k) = k {
            assert!((100_000..10_000_000).contains(&k), "{k}");
        }
    }
}
