//! Deserialises the typed schema from a [`Node`] tree. Errors carry the key path and
//! span of the offending value. Unknown keys do not stop the load: every one of them is
//! collected (with a "did you mean" suggestion from the struct's field list) so that a
//! user sees all typos at once.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Error as _, IntoDeserializer, Visitor};

use crate::node::{Entry, KeyPath, Node, Value};
use crate::source::Span;

/// An error found while deserialising: where, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub message: String,
    pub path: Option<KeyPath>,
    pub span: Option<Span>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            path: None,
            span: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::custom(unknown_key_message(field, expected))
    }
}

impl DeError {
    fn located(mut self, path: &KeyPath, span: &Span) -> Self {
        if self.span.is_none() {
            self.span = Some(span.clone());
            self.path = Some(path.clone());
        }
        self
    }
}

/// A key that no field of the schema matches.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownKey {
    pub path: KeyPath,
    pub span: Span,
    pub message: String,
}

/// The longest unknown key quoted in full and compared with the schema's keys.
const MAX_KEY_SHOWN: usize = 64;

/// The message for an unknown key, with the closest valid spelling when one is close.
pub fn unknown_key_message(field: &str, expected: &[&str]) -> String {
    // No schema key is this long: neither compare it (quadratic) nor echo it whole.
    if field.len() > MAX_KEY_SHOWN {
        let cut = (0..=MAX_KEY_SHOWN)
            .rev()
            .find(|&i| field.is_char_boundary(i))
            .unwrap_or(0);
        return format!(
            "unknown key `{}…` ({} bytes long)",
            &field[..cut],
            field.len()
        );
    }
    let best = expected
        .iter()
        .map(|cand| {
            (
                strsim::jaro_winkler(&field.to_lowercase(), &cand.to_lowercase()),
                *cand,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, cand)) => format!("unknown key `{field}`; did you mean `{cand}`?"),
        None if expected.is_empty() => format!("unknown key `{field}`"),
        None => format!("unknown key `{field}`; expected one of {}", list(expected)),
    }
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deserialises `T` from `node`, collecting unknown keys into the returned list.
pub fn from_node<T: de::DeserializeOwned>(node: &Node) -> (Result<T, DeError>, Vec<UnknownKey>) {
    let unknown = RefCell::new(Vec::new());
    let result = T::deserialize(NodeDe {
        node,
        path: KeyPath::root(),
        unknown: &unknown,
    });
    (result, unknown.into_inner())
}

struct NodeDe<'a> {
    node: &'a Node,
    path: KeyPath,
    unknown: &'a RefCell<Vec<UnknownKey>>,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, path: KeyPath) -> NodeDe<'a> {
        NodeDe {
            node,
            path,
            unknown: self.unknown,
        }
    }

    fn wrong_type(&self, expected: &str) -> DeError {
        DeError::custom(format!(
            "expected {expected}, found {}",
            self.node.value.kind()
        ))
        .located(&self.path, &self.node.span)
    }

    fn locate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.located(&self.path, &self.node.span))
    }

    fn int(&self) -> Result<i64, DeError> {
        match self.node.value {
            Value::Int(i) => Ok(i),
            _ => Err(self.wrong_type("an integer")),
        }
    }
}

macro_rules! unsigned {
    ($method:ident, $ty:ty, $visit:ident) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let i = self.int()?;
            let v = <$ty>::try_from(i).map_err(|_| {
                DeError::custom(if i < 0 {
                    format!("expected a non-negative integer, found {i}")
                } else {
                    format!("{i} is too large (at most {})", <$ty>::MAX)
                })
                .located(&self.path, &self.node.span)
            })?;
            self.locate(visitor.$visit(v))
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                de: &self,
                items,
                next: 0,
            }),
            Value::Table(entries) => visitor.visit_map(Map::new(&self, entries, None)),
        };
        self.locate(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Bool(b) => self.locate(visitor.visit_bool(b)),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    unsigned!(deserialize_u8, u8, visit_u8);
    unsigned!(deserialize_u16, u16, visit_u16);
    unsigned!(deserialize_u32, u32, visit_u32);
    unsigned!(deserialize_u64, u64, visit_u64);

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let i = self.int()?;
        self.locate(visitor.visit_i64(i))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Float(x) => self.locate(visitor.visit_f64(x)),
            Value::Int(i) => self.locate(visitor.visit_f64(i as f64)),
            _ => Err(self.wrong_type("a number")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => self.locate(visitor.visit_str(s)),
            _ => Err(self.wrong_type("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => self.locate(visitor.visit_none()),
            _ => {
                let (path, span) = (self.path.clone(), self.node.span.clone());
                visitor
                    .visit_some(self)
                    .map_err(|e| e.located(&path, &span))
            }
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => self.locate(visitor.visit_unit()),
            _ => Err(self.wrong_type("null")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (path, span) = (self.path.clone(), self.node.span.clone());
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.located(&path, &span))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Array(items) => self.locate(visitor.visit_seq(Seq {
                de: &self,
                items,
                next: 0,
            })),
            _ => Err(self.wrong_type("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Table(entries) => self.locate(visitor.visit_map(Map::new(&self, entries, None))),
            _ => Err(self.wrong_type("a table")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Table(entries) => {
                self.locate(visitor.visit_map(Map::new(&self, entries, Some(fields))))
            }
            _ => Err(self.wrong_type("a table")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Str(s) => {
                if !variants.contains(&s.as_str()) {
                    return Err(DeError::custom(format!(
                        "unknown value {s:?}; expected one of {}",
                        list(variants)
                    ))
                    .located(&self.path, &self.node.span));
                }
                let de: de::value::StrDeserializer<'_, DeError> = s.as_str().into_deserializer();
                self.locate(visitor.visit_enum(de))
            }
            _ => Err(self.wrong_type(&format!("one of {}", list(variants)))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u128 f32 char bytes byte_buf unit_struct tuple_struct identifier
    }
}

struct Seq<'s, 'a> {
    de: &'s NodeDe<'a>,
    items: &'a [Node],
    next: usize,
}

impl<'de, 's, 'a> de::SeqAccess<'de> for Seq<'s, 'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.get(self.next) else {
            return Ok(None);
        };
        let path = self.de.path.index(self.next);
        self.next += 1;
        seed.deserialize(self.de.child(item, path)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}

struct Map<'s, 'a> {
    de: &'s NodeDe<'a>,
    entries: Vec<&'a Entry>,
    next: usize,
}

impl<'s, 'a> Map<'s, 'a> {
    fn new(
        de: &'s NodeDe<'a>,
        entries: &'a [Entry],
        fields: Option<&'static [&'static str]>,
    ) -> Self {
        let mut kept = Vec::new();
        for entry in entries {
            match fields {
                Some(fields) if !fields.contains(&entry.key.as_str()) => {
                    de.unknown.borrow_mut().push(UnknownKey {
                        path: de.path.key(&entry.key),
                        span: entry.key_span.clone(),
                        message: unknown_key_message(&entry.key, fields),
                    });
                }
                _ => kept.push(entry),
            }
        }
        Map {
            de,
            entries: kept,
            next: 0,
        }
    }
}

impl<'de, 's, 'a> de::MapAccess<'de> for Map<'s, 'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let de: de::value::StrDeserializer<'_, DeError> = entry.key.as_str().into_deserializer();
        seed.deserialize(de)
            .map(Some)
            .map_err(|e| e.located(&self.de.path.key(&entry.key), &entry.key_span))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let entry = self.entries[self.next];
        self.next += 1;
        seed.deserialize(self.de.child(&entry.value, self.de.path.key(&entry.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::from_toml;
    use crate::source::FileId;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct T {
        vcpu: Option<u32>,
        mount_point: Option<String>,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        image: Option<String>,
    }

    #[test]
    fn collects_every_unknown_key_with_suggestions() {
        let text = "vpcu = 1\nmountpiont = \"x\"\n[[inner]]\nimgae = \"a\"\n";
        let node = from_toml(FileId(0), text).expect("parses");
        let (r, unknown) = from_node::<T>(&node);
        assert!(r.is_ok());
        let msgs: Vec<_> = unknown
            .iter()
            .map(|u| (u.path.to_string(), u.message.clone()))
            .collect();
        assert_eq!(
            msgs[0],
            (
                "vpcu".into(),
                "unknown key `vpcu`; did you mean `vcpu`?".into()
            )
        );
        assert_eq!(
            msgs[1].1,
            "unknown key `mountpiont`; did you mean `mountPoint`?"
        );
        assert_eq!(msgs[2].0, "inner[0].imgae");
    }

    #[test]
    fn type_errors_name_the_path() {
        let node = from_toml(FileId(0), "vcpu = -1\n").expect("parses");
        let err = from_node::<T>(&node).0.expect_err("negative");
        assert_eq!(err.path.map(|p| p.to_string()).as_deref(), Some("vcpu"));
        assert!(err.message.contains("non-negative"), "{}", err.message);
        let node = from_toml(FileId(0), "vcpu = 99999999999\n").expect("parses");
        assert!(from_node::<T>(&node)
            .0
            .expect_err("huge")
            .message
            .contains("too large"));
        let node = from_toml(FileId(0), "mountPoint = 3\n").expect("parses");
        assert_eq!(
            from_node::<T>(&node).0.expect_err("type").message,
            "expected a string, found an integer"
        );
    }
}
