//! Hypervisor-specific options (inventory §1.10, §1.11, §1.16).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QemuSpec {
    pub machine: Option<String>,
    pub machine_opts: Option<BTreeMap<String, String>>,
    pub extra_args: Option<Vec<String>>,
    pub serial_console: Option<bool>,
    #[serde(default)]
    pub pcie_root_ports: Vec<PcieRootPortSpec>,
    pub package: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PcieRootPortSpec {
    pub id: Option<String>,
    pub bus: Option<String>,
    pub chassis: Option<u64>,
    pub slot: Option<u64>,
    pub addr: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudHypervisorSpec {
    pub extra_args: Option<Vec<String>>,
    #[serde(rename = "platformOEMStrings")]
    pub platform_oem_strings: Option<Vec<String>>,
    pub package: Option<String>,
    /// Version of the binary, to choose its argument syntax (detected when unset).
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrosvmSpec {
    pub extra_args: Option<Vec<String>>,
    pub pivot_root: Option<String>,
    pub package: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirecrackerSpec {
    pub cpu: Option<serde_json::Value>,
    pub drive_io_engine: Option<DriveIoEngine>,
    pub extra_args: Option<Vec<String>>,
    pub extra_config: Option<serde_json::Value>,
    pub package: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum DriveIoEngine {
    Async,
    Sync,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageOnlySpec {
    pub package: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtiofsdSpec {
    pub inode_file_handles: Option<InodeFileHandles>,
    pub thread_pool_size: Option<ThreadPoolSize>,
    pub extra_args: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::nullable")]
    pub group: Option<Option<String>>,
    pub package: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InodeFileHandles {
    Never,
    Prefer,
    Mandatory,
}

impl InodeFileHandles {
    pub fn name(self) -> &'static str {
        match self {
            InodeFileHandles::Never => "never",
            InodeFileHandles::Prefer => "prefer",
            InodeFileHandles::Mandatory => "mandatory",
        }
    }
}

/// `virtiofsd.threadPoolSize`: a number, or the original's default string "`nproc`"
/// (the number of host CPUs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ThreadPoolSize {
    Count(u64),
    Expr(String),
}
