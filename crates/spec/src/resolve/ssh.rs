//! `ssh`: the guest root's authorized keys for `microvm ssh` (docs/network.md#ssh).

use super::{InputKind, Resolver};
use crate::config::Ssh;
use crate::node::KeyPath;
use crate::schema::Spec;
use crate::ssh_key::{check_line, MAX_KEYS};

pub(crate) fn resolve(r: &mut Resolver<'_>, spec: &Spec) -> Ssh {
    let key = KeyPath::root().key("ssh");
    let s = &spec.ssh;
    let mut keys = Vec::new();
    for (i, line) in s.authorized_keys.iter().enumerate() {
        let line = line.trim();
        match check_line(line) {
            Ok(()) => keys.push(line.to_owned()),
            Err(e) => r.error(key.key("authorizedKeys").index(i), e),
        }
    }
    if s.authorized_keys.len() + s.authorized_key_files.len() > MAX_KEYS {
        r.error(
            key.clone(),
            format!("at most {MAX_KEYS} authorized keys and key files together"),
        );
    }
    let files = s
        .authorized_key_files
        .iter()
        .enumerate()
        .map(|(i, f)| r.input(&key.key("authorizedKeyFiles").index(i), f, InputKind::File))
        .collect();
    Ssh {
        authorized_keys: keys,
        authorized_key_files: files,
    }
}
