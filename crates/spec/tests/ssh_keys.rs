//! `ssh.authorizedKeys` and `ssh.authorizedKeyFiles` (docs/network.md#ssh).

mod common;

use common::{loads, one_error, Dir};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVt0oMSO6i2i0P5VfJ3tq0M4mN9yqqbYkx2b0ZlB0Hn u@h";

#[test]
fn keys_and_key_files_resolve() {
    let dir = Dir::new();
    dir.write("id.pub", &format!("{KEY}\n"));
    let (loaded, warnings) = loads(&dir.write(
        "vm1.toml",
        &format!("[ssh]\nauthorizedKeys = [\"  {KEY} \"]\nauthorizedKeyFiles = [\"id.pub\"]\n"),
    ));
    assert!(warnings.is_empty(), "{warnings:#?}");
    let ssh = &loaded.config.guest.ssh;
    assert_eq!(ssh.authorized_keys, [KEY]);
    assert_eq!(ssh.authorized_key_files, [dir.path().join("id.pub")]);
}

#[test]
fn a_private_key_or_garbage_is_refused_where_it_is_written() {
    one_error(
        "[ssh]\nauthorizedKeys = [\n  \"-----BEGIN OPENSSH PRIVATE KEY-----\",\n]\n",
        "this is a private key; give the public key (the .pub file)",
        3,
    );
    one_error(
        "ssh.authorizedKeys = [\"hunter2\"]\n",
        "\"hunter2\" is not an OpenSSH public key line (TYPE BASE64 [COMMENT], e.g. ssh-ed25519 AAAA… user@host)",
        1,
    );
    one_error(
        "ssh.authorizedKey = []\n",
        "unknown key `authorizedKey`; did you mean `authorizedKeys`?",
        1,
    );
}

#[test]
fn a_missing_key_file_is_a_check_error() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "ssh.authorizedKeyFiles = [\"nope.pub\"]\n");
    let (loaded, _) = loads(&path);
    let missing = loaded.missing_inputs();
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert_eq!(
        missing[0].path.as_ref().map(ToString::to_string).as_deref(),
        Some("ssh.authorizedKeyFiles[0]")
    );
}
