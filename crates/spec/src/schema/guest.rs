//! What a NixOS configuration used to provide: the kernel, the guest root, static
//! network settings.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The guest kernel.
///
/// - a string: a path to a bzImage, an uncompressed vmlinux, a kernel package directory
///   (Nix `linux-*` output or an extracted tree with `boot/` and `lib/modules/`) or a `.deb`;
/// - `{ path = "…" }`: the same, as a table;
/// - `{ package = "linux-image-cloud-amd64" }`: a Debian kernel package, fetched with
///   `apt-get download` and cached;
/// - `{ build = "microvm" }`: microvm's own guest kernel, built from a Linux source
///   (`source`: a Debian `linux-source-X.Y` package, default `linux-source-6.1`, or a
///   tarball or tree path) with the project's configuration plus `fragments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    Path(String),
    Package(String),
    Build {
        /// The configuration's name: only `microvm` exists.
        config: String,
        source: Option<String>,
        fragments: Vec<String>,
    },
}

const KERNEL_KEYS: &[&str] = &["path", "package", "build", "source", "fragments"];

impl<'de> Deserialize<'de> for KernelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KernelVisitor;
        impl<'de> Visitor<'de> for KernelVisitor {
            type Value = KernelSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a kernel path, or a table with `path`, `package` or `build`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KernelSpec, E> {
                Ok(KernelSpec::Path(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KernelSpec, A::Error> {
                let mut kinds = Vec::new();
                let (mut source, mut fragments) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "path" => kinds.push(KernelSpec::Path(map.next_value()?)),
                        "package" => kinds.push(KernelSpec::Package(map.next_value()?)),
                        "build" => kinds.push(KernelSpec::Build {
                            config: map.next_value()?,
                            source: None,
                            fragments: Vec::new(),
                        }),
                        "source" => source = Some(map.next_value::<String>()?),
                        "fragments" => fragments = Some(map.next_value::<Vec<String>>()?),
                        other => return Err(de::Error::unknown_field(other, KERNEL_KEYS)),
                    }
                }
                let spec = match kinds.len() {
                    0 => {
                        return Err(de::Error::custom(
                            "a kernel table needs `path`, `package` or `build`",
                        ))
                    }
                    1 => kinds.remove(0),
                    _ => {
                        return Err(de::Error::custom(
                            "a kernel is one of `path`, `package` or `build`, not several",
                        ))
                    }
                };
                match spec {
                    KernelSpec::Build { config, .. } => {
                        if config != "microvm" {
                            return Err(de::Error::custom(format!(
                                "unknown kernel configuration {config:?}: the one microvm builds is \"microvm\""
                            )));
                        }
                        Ok(KernelSpec::Build {
                            config,
                            source,
                            fragments: fragments.unwrap_or_default(),
                        })
                    }
                    _ if source.is_some() || fragments.is_some() => Err(de::Error::custom(
                        "`source` and `fragments` go with `build`",
                    )),
                    other => Ok(other),
                }
            }
        }
        deserializer.deserialize_any(KernelVisitor)
    }
}

/// One source of the guest root; exactly one of the keys is set. Sources apply in order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootSourceSpec {
    /// A directory copied into the root.
    pub directory: Option<String>,
    /// A tarball (plain, gzip, xz or zstd) unpacked into the root.
    pub tarball: Option<String>,
    /// An OCI image layout directory (`oci:DIR[:TAG]` as skopeo writes it).
    pub oci: Option<String>,
    /// Tag or digest inside the OCI layout (default: the only manifest).
    pub oci_ref: Option<String>,
    /// A Debian root built with mmdebstrap.
    pub debian: Option<DebianSpec>,
    /// A Nix store path whose closure is packed (needs `nix` on the host).
    pub nix: Option<String>,
    /// Where the source lands inside the root (default `/`).
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DebianSpec {
    pub suite: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    pub mirror: Option<String>,
    pub variant: Option<String>,
}

/// Static addresses for one interface of `interfaces` (by `id`), or for a MAC.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticNetworkSpec {
    pub interface: Option<String>,
    pub mac: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub mtu: Option<u64>,
    /// Ask a DHCP server for an address (after the static ones, if any).
    pub dhcp: Option<bool>,
}

/// `ssh`: what `microvm ssh` needs in the guest. The NixOS equivalent is
/// `users.users.root.openssh.authorizedKeys.{keys,keyFiles}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshSpec {
    /// Public keys (authorized_keys lines) allowed to log in as the guest's root.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Files of such lines (e.g. `~/.ssh/id_ed25519.pub`), relative to the definition.
    #[serde(default)]
    pub authorized_key_files: Vec<String>,
}
