//! The test guest [`super::probe`] runs: a few instructions in one page of guest memory.
//! This runs in a forked child; every failure is returned as a message, never a panic.

use std::ffi::CStr;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Guest-physical address of the code page.
const CODE_GPA: u64 = 0x1000;
const PAGE: usize = 0x1000;
/// Port and value the guest writes before halting.
const PORT: u16 = 0x10;
const VALUE: u8 = 0x42;
/// vCPU exits tolerated before giving up (interrupted runs are retried).
const MAX_EXITS: u32 = 16;

/// Iterations of the busy loop. On hardware virtualisation this takes ~5–20 ms. A KVM
/// that emulates guest instructions instead of running them (seen with the nested
/// `kvm_pvm` module: ~3 µs per iteration, and real kernels die with "emulation
/// failure") needs half a minute, so the deadline catches it.
pub(super) const LOOP_ITERATIONS: u32 = 10_000_000;
const N: [u8; 4] = LOOP_ITERATIONS.to_le_bytes();

/// Real mode: count `ecx` down from [`LOOP_ITERATIONS`], then
/// `mov al, 0x42; out 0x10, al; hlt`.
const CODE: &[u8] = &[
    0x66, 0xb9, N[0], N[1], N[2], N[3], // mov ecx, LOOP_ITERATIONS
    0x66, 0x49, // dec ecx
    0x75, 0xfc, // jnz -4
    0xb0, VALUE, // mov al, 0x42
    0xe6, PORT as u8, // out 0x10, al
    0xf4,       // hlt
];

/// Creates a VM with one vCPU and runs [`CODE`]; `Ok` when the guest wrote [`VALUE`] to
/// [`PORT`] and then halted.
pub(super) fn run_test_guest(dev: &CStr) -> Result<(), String> {
    // Declared first so that it is unmapped only after the VM is gone.
    let mem = Mapping::new(PAGE).ok_or("mmap of guest memory failed")?;
    let fd = Kvm::open_with_cloexec_at(dev, true).map_err(|e| format!("open: {e}"))?;
    // SAFETY: `fd` was just opened on a KVM device and is owned by nothing else.
    let kvm = unsafe { Kvm::from_raw_fd(fd) };
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;

    // SAFETY: `mem.ptr` points to PAGE writable bytes we own.
    unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.ptr, CODE.len()) };

    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: CODE_GPA,
        memory_size: PAGE as u64,
        userspace_addr: mem.ptr as u64,
        flags: 0,
    };
    // SAFETY: the region maps PAGE bytes owned by `mem`, which is dropped after `vm`.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;

    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let mut wrote = false;
    for _ in 0..MAX_EXITS {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if port != PORT || data.first() != Some(&VALUE) {
                    return Err(format!("unexpected port write {data:x?} to {port:#x}"));
                }
                wrote = true;
            }
            Ok(VcpuExit::Hlt) if wrote => return Ok(()),
            Ok(VcpuExit::Hlt) => return Err("halted before the port write".into()),
            Ok(other) => return Err(format!("unexpected vCPU exit {}", describe(&other))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
    Err(format!("no halt after {MAX_EXITS} vCPU exits"))
}

fn describe(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::Shutdown => "shutdown (triple fault)".into(),
        VcpuExit::FailEntry(reason, cpu) => format!("fail-entry (reason {reason:#x}, cpu {cpu})"),
        VcpuExit::InternalError => "internal-error".into(),
        VcpuExit::MmioRead(addr, _) => format!("mmio-read at {addr:#x}"),
        VcpuExit::MmioWrite(addr, _) => format!("mmio-write at {addr:#x}"),
        VcpuExit::IoIn(port, _) => format!("io-in from {port:#x}"),
        VcpuExit::Exception => "exception".into(),
        VcpuExit::Unknown => "unknown".into(),
        other => format!("{other:?}"),
    }
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Option<Self> {
        // SAFETY: an anonymous mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
