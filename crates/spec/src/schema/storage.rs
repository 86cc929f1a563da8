//! Volumes and shares (inventory §1.4, §1.5).

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub image: Option<String>,
    pub serial: Option<String>,
    pub direct: Option<bool>,
    pub read_only: Option<bool>,
    pub label: Option<String>,
    /// Guest mount point; absent or `null` means attach without mounting.
    #[serde(default, deserialize_with = "super::nullable")]
    pub mount_point: Option<Option<String>>,
    pub size: Option<u64>,
    pub auto_create: Option<bool>,
    pub mkfs_extra_args: Option<Vec<String>>,
    pub fs_type: Option<String>,
    pub image_type: Option<ImageType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Raw,
    Qcow2,
    Vhd,
    Vhdx,
}

impl ImageType {
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Raw => "raw",
            ImageType::Qcow2 => "qcow2",
            ImageType::Vhd => "vhd",
            ImageType::Vhdx => "vhdx",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareSpec {
    pub tag: Option<String>,
    #[serde(default, deserialize_with = "super::nullable")]
    pub socket: Option<Option<String>>,
    pub source: Option<String>,
    pub security_model: Option<SecurityModel>,
    pub mount_point: Option<String>,
    pub proto: Option<ShareProto>,
    pub read_only: Option<bool>,
    pub cache: Option<ShareCache>,
    pub posix_acl: Option<bool>,
    pub extra_args: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ShareProto {
    #[serde(rename = "9p")]
    NineP,
    #[serde(rename = "virtiofs")]
    Virtiofs,
}

impl ShareProto {
    pub fn name(self) -> &'static str {
        match self {
            ShareProto::NineP => "9p",
            ShareProto::Virtiofs => "virtiofs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityModel {
    Passthrough,
    None,
    Mapped,
    MappedFile,
}

impl SecurityModel {
    pub fn name(self) -> &'static str {
        match self {
            SecurityModel::Passthrough => "passthrough",
            SecurityModel::None => "none",
            SecurityModel::Mapped => "mapped",
            SecurityModel::MappedFile => "mapped-file",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareCache {
    Auto,
    Always,
    Metadata,
    Never,
}

impl ShareCache {
    pub fn name(self) -> &'static str {
        match self {
            ShareCache::Auto => "auto",
            ShareCache::Always => "always",
            ShareCache::Metadata => "metadata",
            ShareCache::Never => "never",
        }
    }
}
