//! One virtiofsd per virtiofs share (inventory §2.0, §4.7, with the [later] options),
//! shared by every planner that attaches vhost-user-fs devices.

use microvm_spec::config::{Config, ShareCache, ShareProto, ThreadPool};

use crate::common::program;
use crate::{Helper, HelperKind, HostFacts};

/// The helpers for `config`'s virtiofs shares, in share order:
/// `virtiofsd --socket-path=<sock> [--socket-group=<group>] --shared-dir=<src>
/// [--rlimit-nofile 1048576] --thread-pool-size <n> [--posix-acl --xattr]
/// [--inode-file-handles=X] [--cache=X] [--readonly] [--tag=<tag>] <extraArgs> <share extraArgs>`.
///
/// `--tag` is only for crosvm, which needs `VHOST_USER_PROTOCOL_F_CONFIG`. `--cache` is
/// left out for `auto` (virtiofsd's own default), so the common case reads like the
/// original's example.
pub(crate) fn virtiofsd_helpers(
    config: &Config,
    host: &HostFacts,
    for_crosvm: bool,
) -> Vec<Helper> {
    let bin = program(config.virtiofsd.package.as_deref(), "virtiofsd");
    config
        .shares
        .iter()
        .filter(|s| s.proto == ShareProto::Virtiofs)
        .map(|share| {
            let socket = share
                .socket
                .clone()
                .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, share.tag));
            let mut args = vec![format!("--socket-path={socket}")];
            if let Some(group) = &config.virtiofsd.group {
                args.push(format!("--socket-group={group}"));
            }
            args.push(format!("--shared-dir={}", share.source));
            if host.is_root {
                args.extend(["--rlimit-nofile".to_owned(), "1048576".to_owned()]);
            }
            let threads = match config.virtiofsd.thread_pool_size {
                ThreadPool::Nproc => u64::from(host.nproc),
                ThreadPool::Count(n) => n,
            };
            args.extend(["--thread-pool-size".to_owned(), threads.to_string()]);
            if share.posix_acl {
                args.extend(["--posix-acl".to_owned(), "--xattr".to_owned()]);
            }
            if let Some(ifh) = config.virtiofsd.inode_file_handles {
                args.push(format!("--inode-file-handles={}", ifh.name()));
            }
            if share.cache != ShareCache::Auto {
                args.push(format!("--cache={}", share.cache.name()));
            }
            if share.read_only {
                args.push("--readonly".to_owned());
            }
            if for_crosvm {
                args.push(format!("--tag={}", share.tag));
            }
            args.extend(config.virtiofsd.extra_args.iter().cloned());
            args.extend(share.extra_args.iter().cloned());
            Helper {
                name: format!("virtiofsd-{}", share.tag),
                kind: HelperKind::Virtiofsd {
                    tag: share.tag.clone(),
                },
                program: bin.clone(),
                args,
                socket: Some(socket),
            }
        })
        .collect()
}
