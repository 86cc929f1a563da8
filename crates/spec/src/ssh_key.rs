//! Lines of an OpenSSH `authorized_keys` file, as `ssh.authorizedKeys` and the files of
//! `ssh.authorizedKeyFiles` give them: checked before they reach the guest, so that a
//! private key, a multi-line paste or a stray file is refused instead of written.

/// The longest line accepted (an RSA 16384-bit key with options fits).
pub const MAX_LINE: usize = 16 * 1024;
/// The most keys one VM takes, inline and from files together.
pub const MAX_KEYS: usize = 256;
/// The largest key file read.
pub const MAX_FILE: u64 = 256 * 1024;

/// Key types OpenSSH's `sshd` accepts in `authorized_keys`.
const TYPES: [&str; 4] = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"];

/// Checks one `authorized_keys` line (`[OPTIONS] TYPE BASE64 [COMMENT]`).
pub fn check_line(line: &str) -> Result<(), String> {
    if line.len() > MAX_LINE {
        return Err(format!(
            "an authorized key is {} bytes long (at most {MAX_LINE})",
            line.len()
        ));
    }
    if line.contains("PRIVATE KEY") {
        return Err("this is a private key; give the public key (the .pub file)".into());
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("an authorized key must be one line without control characters".into());
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let typed = words
        .iter()
        .position(|w| TYPES.iter().any(|t| w.starts_with(t)));
    match typed.and_then(|i| words.get(i + 1)) {
        Some(blob) if is_base64(blob) => Ok(()),
        _ => Err(format!(
            "{:?} is not an OpenSSH public key line (TYPE BASE64 [COMMENT], e.g. ssh-ed25519 AAAA… user@host)",
            shorten(line)
        )),
    }
}

/// The key lines of a file's text: blank lines and `#` comments are left out.
pub fn file_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn is_base64(s: &str) -> bool {
    s.len() >= 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn shorten(line: &str) -> String {
    match line.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVt0oMSO6i2i0P5VfJ3tq0M4mN9yqqbYkx2b0ZlB0Hn u@h";

    #[test]
    fn public_key_lines_pass_and_others_are_refused() {
        check_line(KEY).expect("a plain key");
        check_line(&format!("no-pty,command=\"uptime\" {KEY}")).expect("with options");
        check_line("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAI").expect("ecdsa");
        for (bad, says) in [
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
            ("ssh-ed25519", "not an OpenSSH public key"),
            (
                "ssh-ed25519 not*base64*at*all!!",
                "not an OpenSSH public key",
            ),
            ("hello world", "not an OpenSSH public key"),
            (&format!("{KEY}\nssh-rsa AAAA"), "one line"),
        ] {
            let e = check_line(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("{KEY}{}", "A".repeat(MAX_LINE));
        assert!(check_line(&long).expect_err("long").contains("bytes long"));
    }

    #[test]
    fn files_skip_blank_lines_and_comments() {
        let text = format!("# mine\n\n  {KEY}  \n");
        assert_eq!(file_lines(&text).collect::<Vec<_>>(), vec![KEY]);
    }
}
