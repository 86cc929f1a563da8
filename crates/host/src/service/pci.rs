//! Binding PCI devices to vfio-pci before start (the original's `pci-setup`, inventory
//! §4.6): unbind the current driver, set `driver_override`, probe, then hand the IOMMU
//! group's `/dev/vfio/<group>` to the hypervisor's user. Devices stay on vfio-pci
//! afterwards, as in the original. sysfs and /dev are injected so tests run on a
//! temporary tree.

use std::fs;
use std::path::{Path, PathBuf};

use crate::privilege::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("PCI device {device}: cannot {what} {}", path.display())]
    Io {
        device: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PCI device {device} has no IOMMU group ({} is missing): enable the IOMMU (intel_iommu=on / amd_iommu=on) to pass it through", path.display())]
    NoIommuGroup { device: String, path: PathBuf },
    #[error("cannot load vfio-pci (`modprobe vfio-pci` failed: {0})")]
    Modprobe(String),
}

/// Binds every device (`0000:01:00.0`) to vfio-pci; returns the `/dev/vfio/<group>` nodes.
/// `modprobe` is run when `<sysfs>/bus/pci/drivers/vfio-pci` is missing and `modprobe` is
/// true.
pub fn bind_vfio(
    sysfs: &Path,
    dev: &Path,
    devices: &[String],
    owner: Option<&Credentials>,
    modprobe: bool,
) -> Result<Vec<PathBuf>, PciError> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let drivers = sysfs.join("bus/pci/drivers");
    if modprobe && !drivers.join("vfio-pci").exists() {
        let out = std::process::Command::new("modprobe")
            .arg("vfio-pci")
            .output()
            .map_err(|e| PciError::Modprobe(e.to_string()))?;
        if !out.status.success() {
            return Err(PciError::Modprobe(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
    }
    let mut nodes = Vec::new();
    for device in devices {
        let io = |what, path: &Path| {
            let device = device.clone();
            let path = path.to_path_buf();
            move |source| PciError::Io {
                device,
                what,
                path,
                source,
            }
        };
        let dir = sysfs.join("bus/pci/devices").join(device);
        let driver = dir.join("driver");
        let current = fs::read_link(&driver)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        if current.as_deref() != Some("vfio-pci") {
            if current.is_some() {
                let unbind = driver.join("unbind");
                fs::write(&unbind, device).map_err(io("write", &unbind))?;
            }
            let over = dir.join("driver_override");
            fs::write(&over, "vfio-pci").map_err(io("write", &over))?;
            let probe = sysfs.join("bus/pci/drivers_probe");
            fs::write(&probe, device).map_err(io("write", &probe))?;
        }
        let group_link = dir.join("iommu_group");
        let group = fs::read_link(&group_link)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| PciError::NoIommuGroup {
                device: device.clone(),
                path: group_link.clone(),
            })?;
        let node = dev.join("vfio").join(group);
        if let Some(c) = owner {
            std::os::unix::fs::chown(&node, Some(c.uid), Some(c.gid))
                .map_err(io("change the owner of", &node))?;
        }
        nodes.push(node);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn unbinds_overrides_probes_and_finds_the_group() {
        let t = tempfile::tempdir().expect("tempdir");
        let sys = t.path().join("sys");
        let dev = t.path().join("dev");
        let d = sys.join("bus/pci/devices/0000:01:00.0");
        fs::create_dir_all(&d).expect("mkdir");
        fs::create_dir_all(sys.join("bus/pci/drivers/e1000e")).expect("mkdir");
        fs::create_dir_all(sys.join("bus/pci/drivers/vfio-pci")).expect("mkdir");
        fs::create_dir_all(sys.join("kernel/iommu_groups/12")).expect("mkdir");
        fs::create_dir_all(dev.join("vfio")).expect("mkdir");
        fs::write(dev.join("vfio/12"), "").expect("node");
        symlink(sys.join("bus/pci/drivers/e1000e"), d.join("driver")).expect("ln");
        symlink(sys.join("kernel/iommu_groups/12"), d.join("iommu_group")).expect("ln");
        let nodes = bind_vfio(&sys, &dev, &["0000:01:00.0".into()], None, true).expect("bind");
        assert_eq!(nodes, [dev.join("vfio/12")]);
        let read = |p: PathBuf| fs::read_to_string(p).expect("read");
        assert_eq!(
            read(sys.join("bus/pci/drivers/e1000e/unbind")),
            "0000:01:00.0"
        );
        assert_eq!(read(d.join("driver_override")), "vfio-pci");
        assert_eq!(read(sys.join("bus/pci/drivers_probe")), "0000:01:00.0");

        // Without an IOMMU group: a clear error.
        let e = sys.join("bus/pci/devices/0000:02:00.0");
        fs::create_dir_all(&e).expect("mkdir");
        let err =
            bind_vfio(&sys, &dev, &["0000:02:00.0".into()], None, true).expect_err("no group");
        assert!(err.to_string().contains("IOMMU"), "{err}");
    }
}
