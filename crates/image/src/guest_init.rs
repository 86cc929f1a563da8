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
    const PT_GNU_EH_FRAME: u32 = 0x6474_e550;

    fn u16_at(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes([b[at], b[at + 1]]) as usize
    }

    fn program_header_kinds(elf: &[u8]) -> Vec<u32> {
        let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("8 bytes")) as usize;
        let (phentsize, phnum) = (u16_at(elf, 54), u16_at(elf, 56));
        (0..phnum)
            .map(|i| phoff + i * phentsize)
            .map(|at| u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")))
            .collect()
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
        assert!(
            !program_header_kinds(elf).contains(&PT_INTERP),
            "the guest init needs a dynamic loader"
        );
    }

    #[test]
    fn embedded_init_leaves_out_what_it_never_uses() {
        // build.rs links it with init-link.ld: no unwind tables, so no index of them.
        let elf = guest_init_binary();
        assert!(
            !program_header_kinds(elf).contains(&PT_GNU_EH_FRAME),
            "the guest init carries unwind tables (init-link.ld not applied)"
        );
        // crates/init/src/libc_min.rs keeps glibc's gettext runtime out; its catalog
        // loader is the only part that parses a catalog's "nplurals=" header.
        assert!(
            !elf.windows(8).any(|w| w == b"nplurals"),
            "the guest init carries glibc's gettext runtime (libc_min.rs not linked)"
        );
    }
}
