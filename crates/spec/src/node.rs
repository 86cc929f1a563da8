//! A format-neutral, spanned tree of the values in a definition file. TOML and JSON are
//! both read into it; imports are merged on it; the typed schema is deserialised from it.

use std::fmt;

use crate::source::{FileId, Span};

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Array(_) => "a list",
            Value::Table(_) => "a table",
        }
    }
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Table(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The span of the value at a key path such as `volumes[1].image`, or of the nearest
    /// ancestor that exists. `key_span` selects the key rather than the value when the
    /// last segment is a table key.
    pub fn span_of(&self, path: &KeyPath) -> &Span {
        let mut node = self;
        for seg in &path.0 {
            let next = match (seg, &node.value) {
                (Seg::Key(k), Value::Table(entries)) => {
                    entries.iter().find(|e| &e.key == k).map(|e| &e.value)
                }
                (Seg::Index(i), Value::Array(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        &node.span
    }

    /// The span of the key (not the value) that ends `path`, if it is a table key.
    pub fn key_span_of(&self, path: &KeyPath) -> Option<&Span> {
        let (last, parent) = path.0.split_last()?;
        let Seg::Key(k) = last else { return None };
        let parent_path = KeyPath(parent.to_vec());
        let mut node = self;
        for seg in &parent_path.0 {
            node = match (seg, &node.value) {
                (Seg::Key(k), Value::Table(entries)) => {
                    &entries.iter().find(|e| &e.key == k)?.value
                }
                (Seg::Index(i), Value::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        node.get(k).map(|e| &e.key_span)
    }
}

/// A key path like `volumes[0].mountPoint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// Parses `a.b[2].c` (keys without dots or brackets, like every schema key).
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                out.push(Seg::Key(rest[..open].to_owned()));
                rest = &rest[open..];
                while let Some(close) = rest.find(']') {
                    if let Ok(i) = rest[1..close].parse() {
                        out.push(Seg::Index(i));
                    }
                    rest = &rest[close + 1..];
                }
            } else {
                out.push(Seg::Key(rest.to_owned()));
            }
        }
        KeyPath(out)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A parse error of one file, with the byte range the parser blamed.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub span: Span,
}

/// Reads a TOML document into a [`Node`].
pub fn from_toml(file: FileId, text: &str) -> Result<Node, SyntaxError> {
    let doc = toml_edit::Document::parse(text).map_err(|e| SyntaxError {
        message: e.message().trim().to_owned(),
        span: Span {
            file,
            range: e.span().unwrap_or(0..0),
        },
    })?;
    let whole = Span {
        file,
        range: 0..text.len(),
    };
    Ok(toml_table(file, doc.as_table(), whole))
}

fn span_or(file: FileId, range: Option<std::ops::Range<usize>>, fallback: &Span) -> Span {
    range.map_or_else(|| fallback.clone(), |range| Span { file, range })
}

fn toml_table(file: FileId, table: &toml_edit::Table, span: Span) -> Node {
    let mut entries = Vec::new();
    for (key, item) in table.iter() {
        let key_span = table
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .map_or_else(|| span.clone(), |range| Span { file, range });
        if let Some(value) = toml_item(file, item, &key_span) {
            entries.push(Entry {
                key: key.to_owned(),
                key_span,
                value,
            });
        }
    }
    Node {
        span,
        value: Value::Table(entries),
    }
}

fn toml_item(file: FileId, item: &toml_edit::Item, key_span: &Span) -> Option<Node> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(v) => Some(toml_value(file, v, key_span)),
        toml_edit::Item::Table(t) => Some(toml_table(file, t, span_or(file, t.span(), key_span))),
        toml_edit::Item::ArrayOfTables(a) => {
            let items = a
                .iter()
                .map(|t| toml_table(file, t, span_or(file, t.span(), key_span)))
                .collect();
            Some(Node {
                span: span_or(file, a.span(), key_span),
                value: Value::Array(items),
            })
        }
    }
}

fn toml_value(file: FileId, v: &toml_edit::Value, key_span: &Span) -> Node {
    use toml_edit::Value as V;
    let span = span_or(file, v.span(), key_span);
    let value = match v {
        V::String(s) => Value::Str(s.value().clone()),
        V::Integer(i) => Value::Int(*i.value()),
        V::Float(x) => Value::Float(*x.value()),
        V::Boolean(b) => Value::Bool(*b.value()),
        V::Datetime(d) => Value::Str(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(|x| toml_value(file, x, &span)).collect()),
        V::InlineTable(t) => {
            let mut entries = Vec::new();
            for (key, value) in t.iter() {
                let key_span = t
                    .key(key)
                    .and_then(|k| k.span())
                    .map_or_else(|| span.clone(), |range| Span { file, range });
                entries.push(Entry {
                    key: key.to_owned(),
                    value: toml_value(file, value, &key_span),
                    key_span,
                });
            }
            Value::Table(entries)
        }
    };
    Node { span, value }
}

/// Reads a strict JSON document into a [`Node`]. Duplicate keys are errors.
pub fn from_json(file: FileId, text: &str) -> Result<Node, SyntaxError> {
    let options = jsonc_parser::ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let parsed = jsonc_parser::parse_to_ast(text, &Default::default(), &options).map_err(|e| {
        let range = e.range();
        SyntaxError {
            message: e.kind().to_string(),
            span: Span {
                file,
                range: range.start..range.end,
            },
        }
    })?;
    match parsed.value {
        Some(v) => json_value(file, &v),
        None => Err(SyntaxError {
            message: "the file holds no JSON value".into(),
            span: Span { file, range: 0..0 },
        }),
    }
}

fn json_value(file: FileId, v: &jsonc_parser::ast::Value<'_>) -> Result<Node, SyntaxError> {
    use jsonc_parser::ast::Value as V;
    use jsonc_parser::common::Ranged;
    let r = v.range();
    let span = Span {
        file,
        range: r.start..r.end,
    };
    let value = match v {
        V::StringLit(s) => Value::Str(s.value.to_string()),
        V::NumberLit(n) => match n.value.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => match n.value.parse::<f64>() {
                Ok(x) if x.fract() == 0.0 && n.value.contains(['e', 'E']) && x.abs() < 9.0e15 => {
                    Value::Int(x as i64)
                }
                Ok(x) => Value::Float(x),
                Err(_) => {
                    return Err(SyntaxError {
                        message: format!("invalid number {}", n.value),
                        span,
                    })
                }
            },
        },
        V::BooleanLit(b) => Value::Bool(b.value),
        V::NullKeyword(_) => Value::Null,
        V::Array(a) => Value::Array(
            a.elements
                .iter()
                .map(|e| json_value(file, e))
                .collect::<Result<_, _>>()?,
        ),
        V::Object(o) => {
            let mut entries: Vec<Entry> = Vec::new();
            for prop in &o.properties {
                let key = prop.name.as_str().to_owned();
                let kr = prop.name.range();
                let key_span = Span {
                    file,
                    range: kr.start..kr.end,
                };
                if entries.iter().any(|e| e.key == key) {
                    return Err(SyntaxError {
                        message: format!("duplicate key {key:?}"),
                        span: key_span,
                    });
                }
                entries.push(Entry {
                    key,
                    key_span,
                    value: json_value(file, &prop.value)?,
                });
            }
            Value::Table(entries)
        }
    };
    Ok(Node { span, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_round_trip() {
        let p = KeyPath::parse("volumes[1].mountPoint");
        assert_eq!(p.to_string(), "volumes[1].mountPoint");
        assert_eq!(
            KeyPath::root().key("a").index(0).key("b").to_string(),
            "a[0].b"
        );
    }

    #[test]
    fn toml_and_json_agree() {
        let t = from_toml(FileId(0), "vcpu = 2\n[[volumes]]\nimage = \"a\"\n").expect("toml");
        let j = from_json(FileId(0), r#"{"vcpu": 2, "volumes": [{"image": "a"}]}"#).expect("json");
        let strip = |n: &Node| {
            format!(
                "{:?}",
                n.get("volumes").map(|e| match &e.value.value {
                    Value::Array(a) => a.len(),
                    _ => 0,
                })
            )
        };
        assert_eq!(strip(&t), strip(&j));
        let span = t.span_of(&KeyPath::parse("volumes[0].image"));
        assert_eq!(
            &"vcpu = 2\n[[volumes]]\nimage = \"a\"\n"[span.range.clone()],
            "\"a\""
        );
    }

    #[test]
    fn json_duplicates_and_syntax() {
        assert!(from_json(FileId(0), r#"{"a": 1, "a": 2}"#).is_err());
        assert!(from_json(FileId(0), r#"{"a": 1,}"#).is_err());
        assert!(from_json(FileId(0), "").is_err());
    }
}
