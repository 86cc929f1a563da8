use super::*;

const CLOUD: &str = r#"
#
# Automatically generated file; DO NOT EDIT.
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14) 12.2.0"
CONFIG_LOCALVERSION=""
CONFIG_HZ=250
CONFIG_VIRTIO_MMIO=m
# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_BLK=m
CONFIG_EXT4_FS=y
CONFIG_EROFS_FS=m
CONFIG_EROFS_FS_ZIP=y
# CONFIG_EROFS_FS_ZIP_LZMA is not set
CONFIG_SQUASHFS=m
CONFIG_SQUASHFS_ZSTD=y
# CONFIG_9P_FS is not set
CONFIG_NET_9P=m
CONFIG_VIRTIO_FS=y
CONFIG_RD_GZIP=y
CONFIG_BLK_DEV_INITRD=y
"#;

#[test]
fn parses_values() {
    let c = KernelConfig::parse(CLOUD);
    assert!(c.is_module("VIRTIO_MMIO"));
    assert!(c.is_module("CONFIG_VIRTIO_MMIO"));
    assert!(c.is_builtin("CONFIG_EXT4_FS"));
    assert!(!c.has("VIRTIO_MMIO_CMDLINE_DEVICES"));
    assert_eq!(
        c.get("VIRTIO_MMIO_CMDLINE_DEVICES"),
        Some(&ConfigValue::NotSet)
    );
    assert!(!c.has("NOT_MENTIONED"));
    assert_eq!(c.get("NOT_MENTIONED"), None);
    assert_eq!(c.value("HZ"), Some("250"));
    assert_eq!(
        c.value("CC_VERSION_TEXT"),
        Some("gcc-12 (Debian 12.2.0-14) 12.2.0")
    );
    assert_eq!(c.value("LOCALVERSION"), Some(""));
    assert!(c.has("LOCALVERSION"));
}

#[test]
fn availability_of_features() {
    let c = KernelConfig::parse(CLOUD);
    let a = |f| availability(Some(&c), f);
    assert_eq!(a(KernelFeature::Ext4), Availability::Builtin);
    assert_eq!(a(KernelFeature::Virtiofs), Availability::Builtin);
    assert_eq!(
        a(KernelFeature::VirtioMmio),
        Availability::Module(vec!["virtio_mmio".into()])
    );
    assert_eq!(
        a(KernelFeature::NineP),
        Availability::Missing {
            option: "CONFIG_9P_FS".into()
        }
    );
    assert_eq!(
        a(KernelFeature::Erofs(Some(FsCompression::Lz4))),
        Availability::Module(vec!["erofs".into()])
    );
    assert_eq!(
        a(KernelFeature::Erofs(Some(FsCompression::Xz))),
        Availability::Missing {
            option: "CONFIG_EROFS_FS_ZIP_LZMA".into()
        }
    );
    assert_eq!(
        a(KernelFeature::Squashfs(Some(FsCompression::Xz))),
        Availability::Missing {
            option: "CONFIG_SQUASHFS_XZ".into()
        }
    );
    assert!(matches!(
        a(KernelFeature::Vsock),
        Availability::Missing { .. }
    ));
    assert_eq!(
        availability(None, KernelFeature::Ext4),
        Availability::Unknown
    );
}

#[test]
fn nine_p_needs_both_modules() {
    let c = KernelConfig::parse("CONFIG_9P_FS=m\nCONFIG_NET_9P=m\nCONFIG_NET_9P_VIRTIO=m\n");
    assert_eq!(
        availability(Some(&c), KernelFeature::NineP),
        Availability::Module(vec!["9p".into(), "9pnet_virtio".into()])
    );
}

#[test]
fn initrd_compression_support() {
    use crate::initrd::InitrdCompression;
    let c = KernelConfig::parse(CLOUD);
    assert!(c.supports_initrd(InitrdCompression::Gzip));
    assert!(c.supports_initrd(InitrdCompression::None));
    assert!(!c.supports_initrd(InitrdCompression::Zstd));
}

#[test]
fn features_display() {
    assert_eq!(KernelFeature::NineP.to_string(), "9p");
    assert_eq!(
        KernelFeature::Squashfs(Some(FsCompression::Zstd)).to_string(),
        "squashfs (zstd compression)"
    );
}
