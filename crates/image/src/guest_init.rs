//! The guest init (`microvm-init`, the guest's PID 1), a static x86_64 Linux binary
//! built by `build.rs` and embedded here, ready to be written as `/init` of an initrd.

/// The binary's bytes.
const GUEST_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/microvm-init"));

/// Size of the embedded guest init in bytes.
pub const GUEST_INIT_SIZE: usize = GUEST_INIT.len();

/// The guest init binary, to be stored as `/init` (mode 0755) in the initrd.
pub fn guest_init_binary() -> &'static [u8] {
    GUEST_INIT
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_INTERP: u32 = 3;

    fn u16_at(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes([b[at], b[at + 1]]) as usize
    }

    #[test]
    fn embedded_init_is_a_static_x86_64_elf() {
        let elf = guest_init_binary();
        assert_eq!(elf.len(), GUEST_INIT_SIZE);
        assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
        assert_eq!(elf[4], 2, "not 64-bit");
        assert_eq!(u16_at(elf, 18), 62, "not x86_64");
        // ET_EXEC, not ET_DYN: a non-PIE static binary carries no relocations to apply.
        assert_eq!(u16_at(elf, 16), 2, "not a non-PIE executable");
        let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("8 bytes")) as usize;
        let (phentsize, phnum) = (u16_at(elf, 54), u16_at(elf, 56));
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let kind = u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
            assert_ne!(kind, PT_INTERP, "the guest init needs a dynamic loader");
        }
    }
}
