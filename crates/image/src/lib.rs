//! Guest artifacts: the kernel (intake, ELF extraction, capabilities, modules), the
//! initrd (a reproducible cpio holding the guest init, its plan and the modules the VM
//! needs), the read-only root/store disk, and volume autocreation.

pub mod disk;
pub mod fetch;
pub mod guest;
pub mod guest_init;
pub mod initrd;
pub mod kernel;
pub mod modules;
pub mod pipeline;
pub mod rootfs;
pub mod store;
pub mod tools;
pub mod volume;
