//! POSIX shell quoting, for showing an argv to a human and for the `bin/` scripts written
//! for users. Nothing here is used to *run* a VM: the supervisor executes argvs directly.

use std::borrow::Cow;

/// Characters that need no quoting anywhere in a word (ASCII only; `=` is handled by
/// [`shell_join`] for the command word, where it would make an assignment).
fn is_safe(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-')
}

/// Quotes one word for a POSIX shell: unchanged when it needs no quoting, otherwise in
/// single quotes with each `'` written as `'\''`. The empty string becomes `''`.
pub fn shell_quote(word: &str) -> Cow<'_, str> {
    if !word.is_empty() && word.chars().all(is_safe) {
        return Cow::Borrowed(word);
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// A command line a POSIX shell splits back into exactly `program` and `args`.
pub fn shell_join<S: AsRef<str>>(program: &str, args: &[S]) -> String {
    let mut out = if program.contains('=') {
        // `A=b` as the first word would be an assignment, not a command.
        shell_quote_forced(program)
    } else {
        shell_quote(program).into_owned()
    };
    for arg in args {
        out.push(' ');
        out.push_str(&shell_quote(arg.as_ref()));
    }
    out
}

fn shell_quote_forced(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `NAME=value` as a shell assignment (the name is not quoted; it must be a valid name).
pub fn shell_assignment(name: &str, value: &str) -> String {
    format!("{name}={}", shell_quote(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(
            shell_quote("abc/d.e-f:g,h=i@j%k+l"),
            "abc/d.e-f:g,h=i@j%k+l"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
        assert_eq!(shell_quote("ünï"), "'ünï'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("#x"), "'#x'");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_join("A=b", &["c=d"]), "'A=b' c=d");
        assert_eq!(
            shell_join("qemu", &["-append", "console=ttyS0 x"]),
            "qemu -append 'console=ttyS0 x'"
        );
        assert_eq!(
            shell_assignment("HOME", "/var/lib/x y"),
            "HOME='/var/lib/x y'"
        );
    }

    /// Runs the joined line through `sh` and reads the words back NUL-separated.
    fn through_sh(args: &[String]) -> Vec<String> {
        let mut all = vec!["%s\\0".to_owned()];
        all.extend(args.iter().cloned());
        let line = shell_join("printf", &all);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut words: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|w| String::from_utf8(w.to_vec()).expect("utf-8"))
            .collect();
        words.pop(); // after the last NUL
        words
    }

    #[test]
    fn sh_reproduces_tricky_words() {
        let args: Vec<String> = [
            "", "'", "\"", "a b", "$x", "`id`", "\\", "\n", "ü", "*", "a'b\"c", "-n", "%d",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(through_sh(&args), args);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            #[test]
            fn sh_reproduces_argv(args in proptest::collection::vec("[^\\x00]{0,12}", 1..5)) {
                prop_assert_eq!(through_sh(&args), args);
            }
        }
    }
}
