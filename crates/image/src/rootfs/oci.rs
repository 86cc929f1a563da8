//! An OCI image layout directory (what `skopeo copy … oci:DIR:TAG` writes) as a root
//! source: `index.json` → the manifest named by the reference (through an image index to
//! the VM's platform) → its config and layers. Every blob is checked against its
//! descriptor's size and digest before it is used; layers apply in order with OCI
//! whiteouts ([`layer`]).
//!
//! The image config's `Entrypoint`/`Cmd`/`Env`/`WorkingDir`/`User` become the default
//! command of a single-command VM ([`DefaultCommand`]).

mod layer;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{RootfsError, Stage};

/// The annotation that names a manifest in `index.json` (skopeo's `oci:DIR:TAG`).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's full image name annotation (`ctr export`, `nerdctl save`).
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("OCI layout {}: {reason}", layout.display())]
    Layout { layout: PathBuf, reason: String },
    #[error("OCI layout {}: no manifest named {reference:?} (it has: {})", layout.display(), shown(available))]
    NoSuchRef {
        layout: PathBuf,
        reference: String,
        available: Vec<String>,
    },
    #[error("OCI layout {} holds {} manifests ({}); choose one with `ociRef`", layout.display(), available.len(), shown(available))]
    Ambiguous {
        layout: PathBuf,
        available: Vec<String>,
    },
    #[error("OCI image {}: no manifest for linux/{arch} in the image index (it has: {})", layout.display(), shown(available))]
    NoPlatform {
        layout: PathBuf,
        arch: String,
        available: Vec<String>,
    },
    #[error("OCI image {}: the image is for {found}, the VM is linux/{arch}", layout.display())]
    WrongPlatform {
        layout: PathBuf,
        arch: String,
        found: String,
    },
    #[error("OCI blob {}: size {actual} does not match its descriptor ({expected}); refusing a corrupt or tampered blob", blob.display())]
    SizeMismatch {
        blob: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("OCI blob {}: digest {actual} does not match its descriptor ({expected}); refusing a corrupt or tampered blob", blob.display())]
    DigestMismatch {
        blob: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("OCI image {}: digest algorithm of {digest} is not supported (sha256, sha384, sha512 are)", layout.display())]
    UnsupportedDigest { layout: PathBuf, digest: String },
    #[error("OCI image {}: {what} {digest} has media type {media_type}, which microvm cannot use", layout.display())]
    UnsupportedMediaType {
        layout: PathBuf,
        what: &'static str,
        digest: String,
        media_type: String,
    },
    #[error("OCI image {}: {what} {digest} is not valid JSON of its kind", layout.display())]
    Json {
        layout: PathBuf,
        what: &'static str,
        digest: String,
        source: oci_spec::OciSpecError,
    },
    #[error("OCI image {}: layer {digest}: {reason}", layout.display())]
    Layer {
        layout: PathBuf,
        digest: String,
        reason: String,
    },
    #[error("OCI image user {user:?}: {reason}")]
    User { user: String, reason: String },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn shown(list: &[String]) -> String {
    if list.is_empty() {
        "nothing".into()
    } else {
        list.join(", ")
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OciError + 'a {
    move |source| OciError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// One layer to apply: its descriptor's digest, size and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// An image resolved from a layout: the manifest (verified), its config (verified) and
/// the layers to apply (verified when applied).
#[derive(Debug, Clone)]
pub struct OciImage {
    pub layout: PathBuf,
    pub reference: Option<String>,
    /// `sha256:…` of the manifest: with the layout's blobs content-addressed, it names
    /// the config and every layer, so it is the cache key of the staged result.
    pub manifest_digest: String,
    pub layers: Vec<LayerRef>,
    pub config: ImageConfiguration,
}

impl PartialEq for OciImage {
    fn eq(&self, other: &Self) -> bool {
        self.layout == other.layout && self.manifest_digest == other.manifest_digest
    }
}

impl Eq for OciImage {}

/// The OCI architecture name of a VM architecture (`x86_64` → `amd64`).
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl OciImage {
    /// Reads `layout/index.json` and resolves `reference` (a `ref.name` annotation, a
    /// containerd image name, or a manifest digest; `None`: the only manifest) to the
    /// manifest for linux/`arch` (an OCI architecture such as `amd64`).
    pub fn open(layout: &Path, reference: Option<&str>, arch: &str) -> Result<Self, OciError> {
        let layout_err = |reason: String| OciError::Layout {
            layout: layout.to_owned(),
            reason,
        };
        if !layout.is_dir() {
            return Err(layout_err(
                "not a directory (expected an OCI image layout: oci-layout, index.json, blobs/)"
                    .into(),
            ));
        }
        let index_path = layout.join("index.json");
        let bytes = std::fs::read(&index_path)
            .map_err(|e| layout_err(format!("cannot read index.json: {e}")))?;
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| layout_err(format!("index.json is not an OCI image index: {e}")))?;
        let names = |d: &Descriptor| -> Vec<String> {
            let a = d.annotations().as_ref();
            [REF_NAME, CONTAINERD_NAME]
                .iter()
                .filter_map(|k| a.and_then(|a| a.get(*k)).cloned())
                .collect()
        };
        let available: Vec<String> = index
            .manifests()
            .iter()
            .map(|d| {
                names(d)
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| d.digest().to_string())
            })
            .collect();
        let chosen = match reference {
            Some(r) => index
                .manifests()
                .iter()
                .find(|d| names(d).iter().any(|n| n == r) || d.digest().to_string() == r)
                .ok_or_else(|| OciError::NoSuchRef {
                    layout: layout.to_owned(),
                    reference: r.to_owned(),
                    available: available.clone(),
                })?,
            None => match index.manifests().as_slice() {
                [only] => only,
                _ => {
                    return Err(OciError::Ambiguous {
                        layout: layout.to_owned(),
                        available,
                    })
                }
            },
        };
        let blobs = Blobs { layout };
        let manifest_desc = blobs.platform_manifest(chosen.clone(), arch, 0)?;
        let manifest_bytes = blobs.read(&manifest_desc)?;
        let manifest =
            ImageManifest::from_reader(&manifest_bytes[..]).map_err(|source| OciError::Json {
                layout: layout.to_owned(),
                what: "manifest",
                digest: manifest_desc.digest().to_string(),
                source,
            })?;
        let config_desc = manifest.config();
        let config_bytes = blobs.read(config_desc)?;
        let config = ImageConfiguration::from_reader(&config_bytes[..]).map_err(|source| {
            OciError::Json {
                layout: layout.to_owned(),
                what: "config",
                digest: config_desc.digest().to_string(),
                source,
            }
        })?;
        let (os, found_arch) = (config.os().to_string(), config.architecture().to_string());
        if *config.os() != Os::Linux || found_arch != arch {
            return Err(OciError::WrongPlatform {
                layout: layout.to_owned(),
                arch: arch.to_owned(),
                found: format!("{os}/{found_arch}"),
            });
        }
        let mut layers = Vec::new();
        for d in manifest.layers() {
            if layer::compression_of(d.media_type()).is_none() {
                return Err(OciError::UnsupportedMediaType {
                    layout: layout.to_owned(),
                    what: "layer",
                    digest: d.digest().to_string(),
                    media_type: d.media_type().to_string(),
                });
            }
            blobs.path(d)?;
            layers.push(LayerRef {
                digest: d.digest().to_string(),
                size: d.size(),
                media_type: d.media_type().to_string(),
            });
        }
        Ok(OciImage {
            layout: layout.to_owned(),
            reference: reference.map(str::to_owned),
            manifest_digest: manifest_desc.digest().to_string(),
            layers,
            config,
        })
    }

    /// `oci DIR[:REF]`, for the root manifest.
    pub fn label(&self) -> String {
        match &self.reference {
            Some(r) => format!("oci {}:{r}", self.layout.display()),
            None => format!("oci {}", self.layout.display()),
        }
    }

    /// The image's default command (`Entrypoint` + `Cmd`, `Env`, `WorkingDir`, `User`),
    /// with the user resolved to `uid:gid` through the staged tree's `/etc/passwd` and
    /// `/etc/group`. `None` when the image names no command.
    pub fn default_command(&self, root: &Path) -> Result<Option<DefaultCommand>, OciError> {
        let Some(c) = self.config.config() else {
            return Ok(None);
        };
        let mut argv: Vec<String> = c.entrypoint().clone().unwrap_or_default();
        argv.extend(c.cmd().clone().unwrap_or_default());
        if argv.is_empty() {
            return Ok(None);
        }
        let env = c
            .env()
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        let user = match c.user().as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(resolve_user(u, root)?),
        };
        Ok(Some(DefaultCommand {
            argv,
            env,
            cwd: c.working_dir().clone().filter(|w| !w.is_empty()),
            user,
        }))
    }
}

/// A single-command VM's command taken from an OCI image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultCommand {
    /// `Entrypoint` followed by `Cmd`.
    pub argv: Vec<String>,
    /// `Env`, in order.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`.
    pub cwd: Option<String>,
    /// `User` as `uid:gid`.
    pub user: Option<String>,
}

/// `user[:group]` (names or numbers) as `uid:gid`, names looked up in the tree's
/// `/etc/passwd` and `/etc/group`. Without a group: the user's primary group from
/// `/etc/passwd`, else 0 (as container runtimes do).
pub fn resolve_user(spec: &str, root: &Path) -> Result<String, OciError> {
    let err = |reason: String| OciError::User {
        user: spec.to_owned(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(root, "etc/passwd");
    let entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(u32, u32)> {
        passwd.as_deref().ok()?.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !pred(&f) {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, entry(&|f| f[2] == user).map_or(0, |(_, g)| g)),
        Err(_) => entry(&|f| f[0] == user).ok_or_else(|| {
            err(match &passwd {
                Ok(_) => format!("no user {user:?} in the image's /etc/passwd"),
                Err(e) => format!("the image has no readable /etc/passwd ({e})"),
            })
        })?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_db(root, "etc/group")
                    .map_err(|e| err(format!("the image has no readable /etc/group ({e})")))?;
                groups
                    .lines()
                    .find_map(|line| {
                        let f: Vec<&str> = line.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| err(format!("no group {g:?} in the image's /etc/group")))?
            }
        },
    };
    Ok(format!("{uid}:{gid}"))
}

/// Reads a file of the staged tree, resolving symlinks inside the tree.
fn read_db(root: &Path, rel: &str) -> std::io::Result<String> {
    let path = layer::resolve_in_root(root, Path::new(rel), true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::read_to_string(path)
}

/// The blobs of a layout.
struct Blobs<'a> {
    layout: &'a Path,
}

impl Blobs<'_> {
    /// `blobs/<algorithm>/<hex>`, for a supported algorithm.
    fn path(&self, d: &Descriptor) -> Result<PathBuf, OciError> {
        let digest = d.digest();
        match digest.algorithm() {
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha384 | DigestAlgorithm::Sha512 => {}
            _ => {
                return Err(OciError::UnsupportedDigest {
                    layout: self.layout.to_owned(),
                    digest: digest.to_string(),
                })
            }
        }
        let hex = digest.digest();
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(OciError::UnsupportedDigest {
                layout: self.layout.to_owned(),
                digest: digest.to_string(),
            });
        }
        Ok(self
            .layout
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(hex))
    }

    /// The whole blob (a manifest, index or config), verified.
    fn read(&self, d: &Descriptor) -> Result<Vec<u8>, OciError> {
        let path = self.path(d)?;
        let bytes = std::fs::read(&path).map_err(io("reading OCI blob", &path))?;
        check(
            &path,
            d,
            bytes.len() as u64,
            &hash(d, &mut &bytes[..], &path)?,
        )?;
        Ok(bytes)
    }

    /// Checks a blob against its descriptor without keeping it in memory.
    fn verify(&self, d: &Descriptor) -> Result<PathBuf, OciError> {
        let path = self.path(d)?;
        let meta = std::fs::metadata(&path).map_err(io("reading OCI blob", &path))?;
        if meta.len() != d.size() {
            return Err(OciError::SizeMismatch {
                blob: path,
                expected: d.size(),
                actual: meta.len(),
            });
        }
        let mut file = File::open(&path).map_err(io("reading OCI blob", &path))?;
        let actual = hash(d, &mut file, &path)?;
        check(&path, d, meta.len(), &actual)?;
        Ok(path)
    }

    /// Follows image indexes (nested at most [`MAX_INDEX_DEPTH`] deep) to the image
    /// manifest for linux/`arch`.
    fn platform_manifest(
        &self,
        d: Descriptor,
        arch: &str,
        depth: usize,
    ) -> Result<Descriptor, OciError> {
        let mt = d.media_type();
        let is_index = *mt == MediaType::ImageIndex || mt.to_string() == DOCKER_MANIFEST_LIST;
        let is_manifest = *mt == MediaType::ImageManifest || mt.to_string() == DOCKER_MANIFEST;
        if is_manifest {
            return Ok(d);
        }
        if !is_index || depth >= MAX_INDEX_DEPTH {
            return Err(OciError::UnsupportedMediaType {
                layout: self.layout.to_owned(),
                what: "manifest",
                digest: d.digest().to_string(),
                media_type: mt.to_string(),
            });
        }
        let bytes = self.read(&d)?;
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|source| OciError::Json {
            layout: self.layout.to_owned(),
            what: "image index",
            digest: d.digest().to_string(),
            source,
        })?;
        let want = Arch::from(arch);
        let fits = |m: &&Descriptor| match m.platform() {
            Some(p) => *p.os() == Os::Linux && *p.architecture() == want,
            None => false,
        };
        let next = match index.manifests().iter().find(fits) {
            Some(m) => m.clone(),
            None => match index.manifests().as_slice() {
                // A single manifest that names no platform: the config is checked later.
                [only] if only.platform().is_none() => only.clone(),
                _ => {
                    return Err(OciError::NoPlatform {
                        layout: self.layout.to_owned(),
                        arch: arch.to_owned(),
                        available: index
                            .manifests()
                            .iter()
                            .map(|m| match m.platform() {
                                Some(p) => format!("{}/{}", p.os(), p.architecture()),
                                None => m.digest().to_string(),
                            })
                            .collect(),
                    })
                }
            },
        };
        self.platform_manifest(next, arch, depth + 1)
    }
}

fn check(path: &Path, d: &Descriptor, size: u64, actual_hex: &str) -> Result<(), OciError> {
    if size != d.size() {
        return Err(OciError::SizeMismatch {
            blob: path.to_owned(),
            expected: d.size(),
            actual: size,
        });
    }
    if !actual_hex.eq_ignore_ascii_case(d.digest().digest()) {
        return Err(OciError::DigestMismatch {
            blob: path.to_owned(),
            expected: d.digest().to_string(),
            actual: format!("{}:{actual_hex}", d.digest().algorithm()),
        });
    }
    Ok(())
}

/// The hex digest of `r` with `d`'s algorithm.
fn hash(d: &Descriptor, r: &mut dyn Read, path: &Path) -> Result<String, OciError> {
    fn run<H: sha2::Digest>(mut h: H, r: &mut dyn Read) -> std::io::Result<String> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>())
    }
    let result = match d.digest().algorithm() {
        DigestAlgorithm::Sha384 => run(sha2::Sha384::new(), r),
        DigestAlgorithm::Sha512 => run(sha2::Sha512::new(), r),
        _ => run(sha2::Sha256::new(), r),
    };
    result.map_err(io("reading OCI blob", path))
}

/// Applies the image's layers in order into the staging tree, each verified first.
pub fn apply(image: &OciImage, stage: &mut Stage) -> Result<(), RootfsError> {
    let blobs = Blobs {
        layout: &image.layout,
    };
    let count = image.layers.len();
    for (i, l) in image.layers.iter().enumerate() {
        let d = descriptor(image, l)?;
        let path = blobs.verify(&d)?;
        let short = l.digest.split(':').nth(1).unwrap_or(&l.digest);
        stage.set_label(format!(
            "{} layer {}/{count} ({}:{})",
            image.label(),
            i + 1,
            d.digest().algorithm(),
            &short[..12.min(short.len())]
        ));
        layer::apply(&path, &image.layout, l, stage)?;
    }
    Ok(())
}

fn descriptor(image: &OciImage, l: &LayerRef) -> Result<Descriptor, OciError> {
    let digest: oci_spec::image::Digest =
        l.digest.parse().map_err(|_| OciError::UnsupportedDigest {
            layout: image.layout.clone(),
            digest: l.digest.clone(),
        })?;
    Ok(Descriptor::new(
        MediaType::from(l.media_type.as_str()),
        l.size,
        digest,
    ))
}

/// Environment of the default command: the image's `Env`, then the definition's
/// `environment` on top (same key: the definition wins).
pub fn merge_env(
    image: &[(String, String)],
    definition: &[(String, String)],
) -> Vec<(String, String)> {
    let defined: HashMap<&str, ()> = definition.iter().map(|(k, _)| (k.as_str(), ())).collect();
    image
        .iter()
        .filter(|(k, _)| !defined.contains_key(k.as_str()))
        .cloned()
        .chain(definition.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests;
