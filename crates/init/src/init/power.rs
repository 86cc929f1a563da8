//! Powering off, and the ACPI power button (read as an evdev "Power Button" device).

use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags};
use rustix::system::RebootCommand;

use super::devices;

/// How long the init waits for the power button's input device once `button` and
/// `evdev` are loaded.
const BUTTON_WAIT: Duration = Duration::from_secs(3);

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: a 16-byte timeval, type, code, value.
const EVENT_SIZE: usize = 24;

/// Syncs and powers the machine off (falling back to a reboot, which `-no-reboot` and
/// `reboot=t` turn into an exit where ACPI is off). Never returns.
pub fn off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(RebootCommand::PowerOff);
    let _ = rustix::system::reboot(RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The open "Power Button" input devices (there can be two: fixed and PNP0C0C).
pub fn buttons() -> Vec<OwnedFd> {
    devices::wait_for(BUTTON_WAIT, || {
        let found = find_buttons();
        (!found.is_empty()).then_some(found)
    })
    .unwrap_or_default()
}

fn find_buttons() -> Vec<OwnedFd> {
    let Ok(dir) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        if !name.starts_with("event") {
            return None;
        }
        let sys = format!("/sys/class/input/{name}");
        let device_name = std::fs::read_to_string(format!("{sys}/device/name")).ok()?;
        if device_name.trim() != "Power Button" {
            return None;
        }
        let node = format!("/dev/input/{name}");
        if !std::path::Path::new(&node).exists() {
            let dev = std::fs::read_to_string(format!("{sys}/dev")).ok()?;
            let (major, minor) = dev.trim().split_once(':')?;
            let _ = std::fs::create_dir_all("/dev/input");
            let dev = rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?);
            let mode = Mode::from_raw_mode(0o600);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                node.as_str(),
                FileType::CharacterDevice,
                mode,
                dev,
            )
            .ok()?;
        }
        rustix::fs::open(
            node.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    })
    .collect()
}

/// Blocks until the power button is pressed. Returns `false` if the devices went away.
pub fn wait_press(buttons: &[OwnedFd]) -> bool {
    let mut buf = [0u8; EVENT_SIZE * 16];
    loop {
        let mut fds: Vec<PollFd<'_>> = buttons
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        if fds.is_empty() {
            return false;
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
        let ready: Vec<bool> = fds.iter().map(|p| !p.revents().is_empty()).collect();
        for (fd, ready) in buttons.iter().zip(ready) {
            if !ready {
                continue;
            }
            let Ok(n) = rustix::io::read(fd, &mut buf) else {
                return false;
            };
            if buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press) {
                return true;
            }
        }
    }
}

fn is_power_press(event: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}
