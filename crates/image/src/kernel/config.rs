//! The kernel's build configuration (`config-<ver>`, `.config`) and what it says about
//! the features a VM needs.

use std::collections::BTreeMap;
use std::fmt;

/// The value of one `CONFIG_` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Builtin,
    Module,
    /// `# CONFIG_X is not set`
    NotSet,
    /// A string (quotes removed) or a number, as written.
    Value(String),
}

/// A parsed kernel configuration. Option names are kept without the `CONFIG_` prefix;
/// the query methods accept names with or without it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    options: BTreeMap<String, ConfigValue>,
}

fn key(name: &str) -> &str {
    name.strip_prefix("CONFIG_").unwrap_or(name)
}

impl KernelConfig {
    /// Parses the text of a kernel `.config`. Lines that are neither assignments nor
    /// "is not set" comments are ignored.
    pub fn parse(text: &str) -> Self {
        let mut options = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("# CONFIG_") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    options.insert(name.to_string(), ConfigValue::NotSet);
                }
                continue;
            }
            let Some((name, value)) = line
                .strip_prefix("CONFIG_")
                .and_then(|rest| rest.split_once('='))
            else {
                continue;
            };
            let value = match value {
                "y" => ConfigValue::Builtin,
                "m" => ConfigValue::Module,
                "n" => ConfigValue::NotSet,
                v => {
                    let unquoted = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"));
                    ConfigValue::Value(unquoted.unwrap_or_else(|| v.to_string()))
                }
            };
            options.insert(name.to_string(), value);
        }
        Self { options }
    }

    pub fn get(&self, name: &str) -> Option<&ConfigValue> {
        self.options.get(key(name))
    }

    /// `CONFIG_X=y`
    pub fn is_builtin(&self, name: &str) -> bool {
        self.get(name) == Some(&ConfigValue::Builtin)
    }

    /// `CONFIG_X=m`
    pub fn is_module(&self, name: &str) -> bool {
        self.get(name) == Some(&ConfigValue::Module)
    }

    /// Set to anything (`y`, `m` or a value).
    pub fn has(&self, name: &str) -> bool {
        matches!(self.get(name), Some(v) if *v != ConfigValue::NotSet)
    }

    /// The string or number value of an option.
    pub fn value(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(ConfigValue::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether the kernel can unpack an initrd compressed this way.
    pub fn supports_initrd(&self, compression: crate::initrd::InitrdCompression) -> bool {
        use crate::initrd::InitrdCompression as C;
        match compression {
            C::None => self.is_builtin("BLK_DEV_INITRD"),
            C::Gzip => self.is_builtin("RD_GZIP"),
            C::Zstd => self.is_builtin("RD_ZSTD"),
        }
    }
}

/// Compressors of read-only filesystem images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsCompression {
    Gzip,
    Xz,
    Zstd,
    Lz4,
    Lzo,
}

/// Something a VM may need from its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFeature {
    NineP,
    Virtiofs,
    /// erofs, optionally with a compressor (lz4 is `EROFS_FS_ZIP`).
    Erofs(Option<FsCompression>),
    Squashfs(Option<FsCompression>),
    Overlay,
    VirtioMmio,
    VirtioPci,
    VirtioBlk,
    VirtioNet,
    VirtioConsole,
    Vsock,
    AcpiButton,
    Evdev,
    Ext4,
    Xfs,
    Btrfs,
    Vfat,
}

/// One configuration option a feature needs, and the module that provides it when it is
/// `=m` (`None` for options that can only be `y`, such as a filesystem's compressor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub option: &'static str,
    pub module: Option<&'static str>,
}

const fn req(option: &'static str, module: &'static str) -> Requirement {
    Requirement {
        option,
        module: Some(module),
    }
}

const fn flag(option: &'static str) -> Requirement {
    Requirement {
        option,
        module: None,
    }
}

impl KernelFeature {
    /// The options the feature needs, all of them. Module dependencies (e.g. `9pnet`,
    /// `netfs`, `fuse`) are left to `modules.dep`.
    pub fn requirements(self) -> Vec<Requirement> {
        use FsCompression as C;
        use KernelFeature as F;
        match self {
            F::NineP => vec![req("9P_FS", "9p"), req("NET_9P_VIRTIO", "9pnet_virtio")],
            F::Virtiofs => vec![req("VIRTIO_FS", "virtiofs")],
            F::Erofs(c) => {
                let mut v = vec![req("EROFS_FS", "erofs")];
                v.extend(c.and_then(|c| match c {
                    C::Lz4 => Some(flag("EROFS_FS_ZIP")),
                    C::Xz => Some(flag("EROFS_FS_ZIP_LZMA")),
                    C::Zstd => Some(flag("EROFS_FS_ZIP_ZSTD")),
                    C::Gzip => Some(flag("EROFS_FS_ZIP_DEFLATE")),
                    C::Lzo => None,
                }));
                v
            }
            F::Squashfs(c) => {
                let mut v = vec![req("SQUASHFS", "squashfs")];
                v.extend(c.map(|c| match c {
                    C::Gzip => flag("SQUASHFS_ZLIB"),
                    C::Xz => flag("SQUASHFS_XZ"),
                    C::Zstd => flag("SQUASHFS_ZSTD"),
                    C::Lz4 => flag("SQUASHFS_LZ4"),
                    C::Lzo => flag("SQUASHFS_LZO"),
                }));
                v
            }
            F::Overlay => vec![req("OVERLAY_FS", "overlay")],
            F::VirtioMmio => vec![req("VIRTIO_MMIO", "virtio_mmio")],
            F::VirtioPci => vec![req("VIRTIO_PCI", "virtio_pci")],
            F::VirtioBlk => vec![req("VIRTIO_BLK", "virtio_blk")],
            F::VirtioNet => vec![req("VIRTIO_NET", "virtio_net")],
            F::VirtioConsole => vec![req("VIRTIO_CONSOLE", "virtio_console")],
            F::Vsock => vec![req("VIRTIO_VSOCKETS", "vmw_vsock_virtio_transport")],
            F::AcpiButton => vec![req("ACPI_BUTTON", "button")],
            F::Evdev => vec![req("INPUT_EVDEV", "evdev")],
            F::Ext4 => vec![req("EXT4_FS", "ext4")],
            F::Xfs => vec![req("XFS_FS", "xfs")],
            F::Btrfs => vec![req("BTRFS_FS", "btrfs")],
            F::Vfat => vec![req("VFAT_FS", "vfat")],
        }
    }

    /// The modules to load for this feature when none of it is built in.
    pub fn module_names(self) -> Vec<&'static str> {
        self.requirements()
            .iter()
            .filter_map(|r| r.module)
            .collect()
    }

    /// Advice printed when the feature is missing.
    pub fn hint(self) -> &'static str {
        match self {
            Self::NineP => {
                "use a kernel with 9p, such as Debian's linux-image-amd64, or a virtiofs share"
            }
            Self::Virtiofs => "use a kernel with virtiofs, or a 9p share",
            Self::VirtioMmio => "use a kernel with virtio-mmio, or a machine type with virtio-pci",
            Self::VirtioPci => "use a kernel with virtio-pci, or a machine type with virtio-mmio",
            Self::Erofs(_) | Self::Squashfs(_) => {
                "use a kernel with this filesystem and compressor, or another root disk format"
            }
            _ => "use a kernel built with this option",
        }
    }
}

impl fmt::Display for KernelFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |f: &mut fmt::Formatter<'_>, fs: &str, c: &Option<FsCompression>| match c {
            Some(c) => write!(f, "{fs} ({} compression)", format!("{c:?}").to_lowercase()),
            None => f.write_str(fs),
        };
        match self {
            Self::NineP => f.write_str("9p"),
            Self::Virtiofs => f.write_str("virtiofs"),
            Self::Erofs(c) => with(f, "erofs", c),
            Self::Squashfs(c) => with(f, "squashfs", c),
            Self::Overlay => f.write_str("overlayfs"),
            Self::VirtioMmio => f.write_str("virtio-mmio"),
            Self::VirtioPci => f.write_str("virtio-pci"),
            Self::VirtioBlk => f.write_str("virtio-blk"),
            Self::VirtioNet => f.write_str("virtio-net"),
            Self::VirtioConsole => f.write_str("virtio-console"),
            Self::Vsock => f.write_str("virtio vsock"),
            Self::AcpiButton => f.write_str("ACPI power button"),
            Self::Evdev => f.write_str("evdev"),
            Self::Ext4 => f.write_str("ext4"),
            Self::Xfs => f.write_str("xfs"),
            Self::Btrfs => f.write_str("btrfs"),
            Self::Vfat => f.write_str("vfat"),
        }
    }
}

/// Whether a kernel has a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Builtin,
    /// Available once these modules are loaded (their dependencies come from `modules.dep`).
    Module(Vec<String>),
    /// Not in this kernel: the first option that is not set.
    Missing {
        option: String,
    },
    /// No configuration is known for this kernel.
    Unknown,
}

/// What `config` says about `feature`.
pub fn availability(config: Option<&KernelConfig>, feature: KernelFeature) -> Availability {
    let Some(config) = config else {
        return Availability::Unknown;
    };
    let mut modules = Vec::new();
    for r in feature.requirements() {
        if config.is_builtin(r.option) {
            continue;
        }
        match r.module {
            Some(m) if config.is_module(r.option) => modules.push(m.to_string()),
            _ => {
                return Availability::Missing {
                    option: format!("CONFIG_{}", r.option),
                }
            }
        }
    }
    if modules.is_empty() {
        Availability::Builtin
    } else {
        Availability::Module(modules)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
