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
}

impl RootDefaults {
    pub fn read(path: &Path) -> Option<RootDefaults> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
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
