//! The one glibc entry point the static guest init defines itself, to keep glibc's
//! message-translation machinery out of the binary (docs/benchmarks.md, "Sizes").
//!
//! glibc's own code translates its messages (`strerror`, which std's `io::Error` display
//! uses, the assertion and fatal-error texts) through `__dcgettext`. In a static link, its
//! definition brings in the whole gettext runtime: catalog lookup and loading, the plural
//! expression parser, locale alias files, about 25 KB. This process never calls
//! `setlocale`, so its locale is "C", and there glibc's `__dcgettext` returns `msgid`
//! itself without looking for a catalog (the `LANGUAGE` variable is ignored in the C
//! locale). The definition below does exactly that, so every message stays the same.
//!
//! Only the static init (built with `+crt-static`, crates/image/build.rs) defines it; a
//! host build (the unit tests) uses glibc's. The link stays honest: the member of libc.a
//! that defines glibc's `__dcgettext` (dcgettext.o) holds nothing else but the public
//! alias `dcgettext`, and should anything in the link ask for that alias, the linker
//! pulls the member in and fails on the duplicate strong `__dcgettext` instead of
//! picking one silently.

use std::ffi::{c_char, c_int};

/// What glibc's `__dcgettext(domain, msgid, category)` returns in the C locale: `msgid`.
///
/// The symbol's signature is glibc's (`char *__dcgettext (const char *, const char *,
/// int)`); its callers never write through the result.
#[cfg_attr(target_feature = "crt-static", no_mangle)]
pub extern "C" fn __dcgettext(
    _domain: *const c_char,
    msgid: *const c_char,
    _category: c_int,
) -> *mut c_char {
    msgid.cast_mut()
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_int, CStr};

    extern "C" {
        // glibc's, in this dynamically linked test binary (ours is not exported here).
        fn dcgettext(domain: *const c_char, msgid: *const c_char, category: c_int) -> *mut c_char;
    }

    const MSGID: &CStr = c"No such file or directory";

    #[test]
    fn returns_the_message_it_was_given() {
        let out = super::__dcgettext(c"libc".as_ptr(), MSGID.as_ptr(), libc::LC_MESSAGES);
        assert_eq!(out.cast_const(), MSGID.as_ptr());
    }

    #[test]
    fn glibc_does_the_same_in_the_c_locale() {
        // The premise of the replacement: a process that never called setlocale is in
        // the C locale, where glibc hands back msgid itself, whatever LANGUAGE says.
        // SAFETY: both arguments are NUL-terminated strings that outlive the call.
        let out = unsafe { dcgettext(c"libc".as_ptr(), MSGID.as_ptr(), libc::LC_MESSAGES) };
        assert_eq!(out.cast_const(), MSGID.as_ptr());
    }

    #[test]
    fn an_os_error_still_reads_as_before() {
        // std's io::Error display goes through glibc's strerror, whose text passes
        // through __dcgettext.
        let error = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(error.to_string(), "No such file or directory (os error 2)");
        let unknown = std::io::Error::from_raw_os_error(4242);
        assert_eq!(unknown.to_string(), "Unknown error 4242 (os error 4242)");
    }
}
