//! `microvm-init`: the guest's PID 1. It carries out the plan the host wrote into the
//! initrd (see `microvm_init::plan`), then hands over to the guest's own init or runs one
//! command and powers off. It never exits and never drops to a shell: any failure is
//! printed, reported on the control channel, and ends in a poweroff.

mod init;
#[cfg(any(test, target_feature = "crt-static"))]
mod libc_min;

fn main() {
    let started = init::console::uptime();
    init::fail::install_panic_hook();
    match init::run(started) {
        Ok(never) => match never {},
        Err(failure) => init::fail::fatal(&failure),
    }
}
