//! A typed builder for the `k=v,k=v` option strings that qemu and cloud-hypervisor parse,
//! with each parser's escaping rules. Values are never glued together with `format!`:
//! a value the target parser cannot read back unchanged is a [`KvError`].
//!
//! - **qemu** (`QemuOpts` / `keyval`): options are split at `,`; a `,` inside a value
//!   (or inside the leading implied value, e.g. a driver or backend name) is written
//!   doubled, `,,`. A key cannot contain `,` or `=`; an implied value cannot contain `=`.
//! - **cloud-hypervisor** (`option_parser::split_commas`): options are split at `,`
//!   outside `[...]` and outside `"..."`. Double quotes are removed and cannot be escaped,
//!   brackets are counted even inside quotes and must balance, and every value is
//!   trimmed. So a value with a `,` outside brackets is wrapped in `"..."`; a value with
//!   a `"`, unbalanced brackets or surrounding whitespace cannot be expressed. List
//!   values (`oem_strings=[a,b]`) are split at every `,`, so list items cannot hold one.
//!
//! Keys keep insertion order unless [`KvList::sorted`] is asked for (qemu machine
//! options are emitted sorted, as microvm.nix does).

use std::fmt;

use microvm_spec::types::Hypervisor;

use crate::PlanError;

/// Whose parser reads the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Qemu,
    CloudHypervisor,
}

impl Dialect {
    fn name(self) -> &'static str {
        match self {
            Dialect::Qemu => "qemu",
            Dialect::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

/// A value that the target parser cannot read back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot pass {what} {value:?} to {dialect}: {reason}", dialect = .dialect.name())]
pub struct KvError {
    pub dialect: Dialect,
    /// `key`, `value of key` or `implied value`.
    pub what: String,
    pub value: String,
    pub reason: &'static str,
}

impl KvError {
    /// The error as a planning error of `hypervisor`.
    pub fn into_plan(self, hypervisor: Hypervisor) -> PlanError {
        PlanError::Invalid {
            hypervisor,
            message: self.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Scalar(String),
    /// cloud-hypervisor `[a,b]`.
    List(Vec<String>),
    /// A key without `=` (qemu's short boolean form is deprecated; only for extra args).
    Bare,
}

/// An ordered `k=v,k=v` list for one dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvList {
    dialect: Dialect,
    head: Option<String>,
    pairs: Vec<(String, Value)>,
    sorted: bool,
}

impl KvList {
    pub fn new(dialect: Dialect) -> Self {
        KvList {
            dialect,
            head: None,
            pairs: Vec::new(),
            sorted: false,
        }
    }

    /// A qemu option list with an implied first value (`virtio-net-pci`, `tap`, `socket`…).
    pub fn qemu(head: impl Into<String>) -> Self {
        KvList {
            head: Some(head.into()),
            ..KvList::new(Dialect::Qemu)
        }
    }

    /// A qemu option list without an implied value (`-drive`, `-smbios` after `type=`…).
    pub fn qemu_plain() -> Self {
        KvList::new(Dialect::Qemu)
    }

    pub fn cloud_hypervisor() -> Self {
        KvList::new(Dialect::CloudHypervisor)
    }

    /// Emit keys sorted by name (the implied value stays first).
    pub fn sorted(mut self) -> Self {
        self.sorted = true;
        self
    }

    /// Appends `key=value`.
    pub fn set(mut self, key: impl Into<String>, value: impl fmt::Display) -> Self {
        self.push(key, value);
        self
    }

    /// Appends `key=value` when `value` is `Some`.
    pub fn set_opt<V: fmt::Display>(self, key: impl Into<String>, value: Option<V>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// Appends `key=on` or `key=off`.
    pub fn on_off(self, key: impl Into<String>, value: bool) -> Self {
        self.set(key, if value { "on" } else { "off" })
    }

    /// Appends `key=true` or `key=false`.
    pub fn bool(self, key: impl Into<String>, value: bool) -> Self {
        self.set(key, value)
    }

    /// Appends `key=value` when `cond`.
    pub fn set_if(self, cond: bool, key: impl Into<String>, value: impl fmt::Display) -> Self {
        if cond {
            self.set(key, value)
        } else {
            self
        }
    }

    /// Appends a key without a value.
    pub fn bare(mut self, key: impl Into<String>) -> Self {
        self.pairs.push((key.into(), Value::Bare));
        self
    }

    /// Appends a cloud-hypervisor list value, `key=[a,b]`.
    pub fn list<I, S>(mut self, key: impl Into<String>, items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pairs.push((
            key.into(),
            Value::List(items.into_iter().map(Into::into).collect()),
        ));
        self
    }

    /// Appends `key=value` in place.
    pub fn push(&mut self, key: impl Into<String>, value: impl fmt::Display) {
        self.pairs
            .push((key.into(), Value::Scalar(value.to_string())));
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none() && self.pairs.is_empty()
    }

    /// The option string, or why a part of it cannot be expressed.
    pub fn build(&self) -> Result<String, KvError> {
        let mut parts: Vec<String> = Vec::with_capacity(self.pairs.len() + 1);
        if let Some(head) = &self.head {
            parts.push(self.head_text(head)?);
        }
        let mut pairs: Vec<&(String, Value)> = self.pairs.iter().collect();
        if self.sorted {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
        }
        for (key, value) in pairs {
            self.check_key(key)?;
            let text = match value {
                Value::Bare => key.clone(),
                Value::Scalar(v) => format!("{key}={}", self.value_text(key, v)?),
                Value::List(items) => format!("{key}={}", self.list_text(key, items)?),
            };
            parts.push(text);
        }
        Ok(parts.join(","))
    }

    fn err(&self, what: String, value: &str, reason: &'static str) -> KvError {
        KvError {
            dialect: self.dialect,
            what,
            value: value.to_owned(),
            reason,
        }
    }

    fn head_text(&self, head: &str) -> Result<String, KvError> {
        if head.contains('\0') {
            return Err(self.err("implied value".into(), head, "it contains a NUL byte"));
        }
        if head.contains('=') {
            return Err(self.err(
                "implied value".into(),
                head,
                "it would be read as key=value",
            ));
        }
        if head.is_empty() {
            return Err(self.err("implied value".into(), head, "it is empty"));
        }
        Ok(head.replace(',', ",,"))
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        let bad = |reason| Err(self.err("key".into(), key, reason));
        if key.is_empty() {
            return bad("a key cannot be empty");
        }
        if key.contains([',', '=', '\0']) {
            return bad("a key cannot contain ',', '=' or NUL");
        }
        if self.dialect == Dialect::CloudHypervisor {
            if key.contains(['"', '[', ']']) {
                return bad("a key cannot contain '\"', '[' or ']'");
            }
            if key.trim() != key {
                return bad("a key cannot start or end with whitespace");
            }
        }
        Ok(())
    }

    fn value_text(&self, key: &str, value: &str) -> Result<String, KvError> {
        let what = || format!("value of {key}");
        if value.contains('\0') {
            return Err(self.err(what(), value, "it contains a NUL byte"));
        }
        match self.dialect {
            Dialect::Qemu => Ok(value.replace(',', ",,")),
            Dialect::CloudHypervisor => {
                if value.contains('"') {
                    return Err(self.err(what(), value, "its parser drops '\"' and has no escape"));
                }
                if value.trim() != value {
                    return Err(self.err(what(), value, "its parser trims surrounding whitespace"));
                }
                let mut depth = 0i32;
                let mut comma_outside = false;
                for c in value.chars() {
                    match c {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            if depth < 0 {
                                break;
                            }
                        }
                        ',' if depth == 0 => comma_outside = true,
                        _ => {}
                    }
                }
                if depth != 0 {
                    return Err(self.err(what(), value, "its parser needs balanced '[' and ']'"));
                }
                Ok(if comma_outside {
                    format!("\"{value}\"")
                } else {
                    value.to_owned()
                })
            }
        }
    }

    fn list_text(&self, key: &str, items: &[String]) -> Result<String, KvError> {
        if self.dialect != Dialect::CloudHypervisor {
            return Err(self.err(
                format!("value of {key}"),
                "[…]",
                "lists are cloud-hypervisor syntax",
            ));
        }
        for item in items {
            if item.contains([',', '[', ']', '"', '\0']) {
                return Err(self.err(
                    format!("list item of {key}"),
                    item,
                    "list items cannot contain ',', '[', ']' or '\"'",
                ));
            }
            if item.trim() != item {
                return Err(self.err(
                    format!("list item of {key}"),
                    item,
                    "its parser trims surrounding whitespace",
                ));
            }
        }
        Ok(format!("[{}]", items.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_doubles_commas() {
        let s = KvList::qemu("socket")
            .set("id", "fs0")
            .set("path", "a,b.sock")
            .build()
            .expect("valid");
        assert_eq!(s, "socket,id=fs0,path=a,,b.sock");
        assert_eq!(KvList::qemu("x,y").build().expect("valid"), "x,,y");
        assert_eq!(
            KvList::qemu_plain()
                .set("romfile", "")
                .build()
                .expect("valid"),
            "romfile="
        );
    }

    #[test]
    fn qemu_sorted_keys_keep_head_first() {
        let s = KvList::qemu("microvm")
            .set("usb", "off")
            .set("accel", "kvm:tcg")
            .set("pic", "off")
            .sorted()
            .build()
            .expect("valid");
        assert_eq!(s, "microvm,accel=kvm:tcg,pic=off,usb=off");
    }

    #[test]
    fn qemu_refuses() {
        assert!(KvList::qemu("a=b").build().is_err());
        assert!(KvList::qemu_plain().set("a,b", "x").build().is_err());
        assert!(KvList::qemu_plain().set("a=b", "x").build().is_err());
        assert!(KvList::qemu_plain().set("", "x").build().is_err());
        assert!(KvList::qemu_plain().set("k", "a\0b").build().is_err());
        assert!(KvList::qemu_plain().list("k", ["a"]).build().is_err());
    }

    #[test]
    fn cloud_hypervisor_quotes_commas_outside_brackets() {
        let s = KvList::cloud_hypervisor()
            .set("path", "a,b.img")
            .set("topology", "[1,2]")
            .set("x", "[1,2],3")
            .build()
            .expect("valid");
        assert_eq!(s, "path=\"a,b.img\",topology=[1,2],x=\"[1,2],3\"");
    }

    #[test]
    fn cloud_hypervisor_lists() {
        let s = KvList::cloud_hypervisor()
            .list("oem_strings", ["io.systemd.credential:a=b", "c"])
            .build()
            .expect("valid");
        assert_eq!(s, "oem_strings=[io.systemd.credential:a=b,c]");
        assert!(KvList::cloud_hypervisor()
            .list("k", ["a,b"])
            .build()
            .is_err());
        assert!(KvList::cloud_hypervisor()
            .list("k", ["a]"])
            .build()
            .is_err());
    }

    #[test]
    fn cloud_hypervisor_refuses() {
        for bad in ["a\"b", " a", "a ", "a[b", "a]b", "]["] {
            let e = KvList::cloud_hypervisor().set("path", bad).build();
            assert!(e.is_err(), "{bad:?}");
        }
        assert!(KvList::cloud_hypervisor().set("a[", "x").build().is_err());
        let e = KvList::cloud_hypervisor()
            .set("path", "a\"b")
            .build()
            .expect_err("quote");
        assert_eq!(
            e.to_string(),
            "cannot pass value of path \"a\\\"b\" to cloud-hypervisor: its parser drops '\"' and has no escape"
        );
    }

    /// A model of cloud-hypervisor's `split_commas` + `splitn(2, '=')` + `trim`.
    fn ch_parse(s: &str) -> Vec<(String, String)> {
        let mut list = Vec::new();
        let (mut depth, mut quoted, mut cur) = (0, false, String::new());
        for c in s.trim().chars() {
            match c {
                '[' => {
                    depth += 1;
                    cur.push(c)
                }
                ']' => {
                    depth -= 1;
                    cur.push(c)
                }
                '"' => quoted = !quoted,
                ',' if depth == 0 && !quoted => list.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        list.push(cur);
        list.into_iter()
            .map(|o| {
                let (k, v) = o.split_once('=').unwrap_or((&o, ""));
                (k.to_owned(), v.trim().to_owned())
            })
            .collect()
    }

    /// A model of qemu's option splitting with `,,` escapes.
    fn qemu_parse(s: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    out.last_mut().expect("non-empty").push(',');
                } else {
                    out.push(String::new());
                }
            } else {
                out.last_mut().expect("non-empty").push(c);
            }
        }
        out
    }

    #[test]
    fn round_trips_through_parser_models() {
        let values = [
            "plain", "a,b", ",", ",,", "x=y", "[1,2]", "[a],b", "", "ü,ñ", "a b",
        ];
        for v in values {
            let s = KvList::qemu_plain()
                .set("k", v)
                .set("z", "1")
                .build()
                .expect("qemu");
            assert_eq!(
                qemu_parse(&s),
                vec![format!("k={v}"), "z=1".to_owned()],
                "{v:?}"
            );
            if let Ok(s) = KvList::cloud_hypervisor().set("k", v).set("z", "1").build() {
                assert_eq!(
                    ch_parse(&s),
                    vec![
                        ("k".to_owned(), v.to_owned()),
                        ("z".to_owned(), "1".to_owned())
                    ],
                    "{v:?} as {s:?}"
                );
            }
        }
    }
}
