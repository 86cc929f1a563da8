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
///   `apt-get download` and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    Path(String),
    Package(String),
}

impl<'de> Deserialize<'de> for KernelSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KernelVisitor;
        impl<'de> Visitor<'de> for KernelVisitor {
            type Value = KernelSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a kernel path, or a table with `path` or `package`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KernelSpec, E> {
                Ok(KernelSpec::Path(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KernelSpec, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let spec = match key.as_str() {
                        "path" => KernelSpec::Path(value),
                        "package" => KernelSpec::Package(value),
                        other => return Err(de::Error::unknown_field(other, &["path", "package"])),
                    };
                    if out.replace(spec).is_some() {
                        return Err(de::Error::custom(
                            "a kernel is either a `path` or a `package`, not both",
                        ));
                    }
                }
                out.ok_or_else(|| de::Error::custom("a kernel table needs `path` or `package`"))
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
