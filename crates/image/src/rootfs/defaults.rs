//! What the root itself says the guest should run: an OCI image's default command, or
//! a Nix system's `init` and store registration. Saved beside the root disk in the
//! store (so a cached disk keeps it) and applied to the guest plan when the definition
//! sets neither `command` nor `init`.

use std::path::Path;

use microvm_init::plan::{ExecPlan, GuestPlan};
use microvm_spec::config::Config;
use serde::{Deserialize, Serialize};

use super::nix::{NixBoot, STORE_DIR};
use super::oci::{merge_env, DefaultCommand};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootDefaults {
    /// The default command of the last OCI source.
    #[serde(default)]
    pub command: Option<DefaultCommand>,
    /// A packed Nix closure: the disk is the store, mounted at `/nix/store`.
    #[serde(default)]
    pub nix: Option<NixBoot>,
    /// The root's OpenSSH host public keys (`/etc/ssh/ssh_host_*_key.pub`, `TYPE BASE64`),
    /// which `microvm ssh` expects the guest to present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
}

impl RootDefaults {
    pub fn read(path: &Path) -> Option<RootDefaults> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The defaults recorded beside the root disk `disk` in the store (`DISK.defaults.json`).
    pub fn beside(disk: &Path) -> Option<RootDefaults> {
        Self::read(Path::new(&format!("{}.defaults.json", disk.display())))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Kernel parameters the root needs (`regInfo=` for a Nix closure, as microvm.nix).
    pub fn kernel_params(&self) -> Vec<String> {
        self.nix
            .iter()
            .map(|n| format!("regInfo={}", n.reg_info))
            .collect()
    }

    /// Applies the root's defaults to `plan` (built from `config` alone).
    pub fn apply(&self, config: &Config, plan: &mut GuestPlan) {
        let chosen_by_definition = config.guest.command.is_some() || config.guest.init.is_some();
        if let Some(nix) = &self.nix {
            plan.root.disk_mount_point = STORE_DIR.into();
            if !chosen_by_definition {
                if let ExecPlan::Init { path, .. } = &mut plan.exec {
                    path.clone_from(&nix.init);
                }
            }
        }
        if let (Some(cmd), false) = (&self.command, chosen_by_definition) {
            plan.exec = ExecPlan::Command {
                argv: cmd.argv.clone(),
                cwd: config
                    .guest
                    .working_directory
                    .clone()
                    .or_else(|| cmd.cwd.clone()),
                user: cmd.user.clone(),
            };
            plan.env = merge_env(&cmd.env, &plan.env);
        }
    }
}

/// The OpenSSH host public keys of a staged root, `TYPE BASE64` each, sorted. Nothing is
/// followed through a symlink (`/etc`, `/etc/ssh` or a key file that is one is skipped:
/// it could point outside the root), and each file is read at most 16 KiB far.
pub fn ssh_host_keys(root: &Path) -> Vec<String> {
    use std::io::Read as _;
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let dir = root.join("etc/ssh");
    if !real_dir(&root.join("etc")) || !real_dir(&dir) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("ssh_host_") && name.ends_with("_key.pub")
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let mut text = String::new();
            let file = std::fs::File::open(e.path()).ok()?;
            file.take(16 * 1024).read_to_string(&mut text).ok()?;
            let line = text.lines().next()?.trim();
            microvm_spec::ssh_key::check_line(line).ok()?;
            let words: Vec<&str> = line.split_whitespace().take(2).collect();
            Some(words.join(" "))
        })
        .collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod ssh_tests {
    use super::*;

    #[test]
    fn host_keys_are_read_without_following_symlinks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        assert!(ssh_host_keys(root).is_empty());
        std::fs::create_dir_all(root.join("etc/ssh")).expect("mkdir");
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPyAfqq+YJRryE8GPtwXSphMRc1pAaGB87AZi3hJVnlJ";
        std::fs::write(
            root.join("etc/ssh/ssh_host_ed25519_key.pub"),
            format!("{key} root@build\n"),
        )
        .expect("write");
        std::fs::write(
            root.join("etc/ssh/ssh_host_ed25519_key"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        )
        .expect("write");
        std::fs::write(root.join("etc/ssh/ssh_host_rsa_key.pub"), "garbage\n").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/ssh/ssh_host_ecdsa_key.pub"))
            .expect("symlink");
        assert_eq!(ssh_host_keys(root), [key]);
        let other = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(root.join("etc"), other.path().join("etc")).expect("symlink");
        assert!(
            ssh_host_keys(other.path()).is_empty(),
            "a symlinked /etc is not followed"
        );
    }
}
