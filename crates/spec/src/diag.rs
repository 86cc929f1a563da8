//! Diagnostics: every problem found in a definition, with the file, line and key path it
//! concerns, rendered like a compiler's.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use serde::Serialize;

use crate::node::KeyPath;
use crate::source::{display_path, SourceMap, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// The key path the problem is about (`volumes[0].image`).
    pub path: Option<KeyPath>,
    pub span: Option<Span>,
    /// Other places involved (e.g. the first definition in a merge conflict).
    pub related: Vec<(Span, String)>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            path: None,
            span: None,
            related: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, path: KeyPath, span: Span) -> Self {
        self.path = Some(path);
        self.span = Some(span);
        self
    }

    pub fn related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A diagnostic flattened for `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct DiagnosticJson {
    pub severity: Severity,
    pub message: String,
    pub path: Option<String>,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub notes: Vec<String>,
}

/// The longest source line (bytes) quoted under a message.
const MAX_QUOTED_LINE: usize = 1000;

impl SourceMap {
    /// Renders diagnostics as a compiler would: message, `--> file:line:col`, the
    /// source line with the key underlined, related places and notes.
    /// Whether the lines `span` touches are too long to quote in a message.
    fn too_long(&self, span: &Span) -> bool {
        let text = self.file(span.file).text.as_bytes();
        let end = span.range.end.min(text.len());
        let start = span.range.start.min(end);
        let line_start = text[..start]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line_end = text[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| end + i);
        line_end - line_start > MAX_QUOTED_LINE
    }

    pub fn render(&self, diagnostics: &[Diagnostic]) -> String {
        let mut files = SimpleFiles::new();
        let ids: Vec<usize> = self
            .files()
            .map(|(_, f)| files.add(display_path(&f.path), f.text.clone()))
            .collect();
        let config = term::Config::default();
        let mut out = String::new();
        for d in diagnostics {
            let mut cs = match d.severity {
                Severity::Error => CsDiagnostic::error(),
                Severity::Warning => CsDiagnostic::warning(),
            }
            .with_message(&d.message);
            let mut labels = Vec::new();
            let mut notes = Vec::new();
            // A line too long to show is named by its place only (a 2 MB key once
            // printed 21 MB of diagnostics).
            if let Some(span) = d.span.as_ref().filter(|s| self.too_long(s)) {
                notes.push(format!(
                    "at {} (the line is too long to show)",
                    self.location(span)
                ));
            } else if let Some(span) = &d.span {
                let label = Label::primary(ids[span.file.0], span.range.clone());
                labels.push(match &d.path {
                    Some(p) if !p.0.is_empty() => label.with_message(shortened(p.to_string())),
                    _ => label,
                });
            }
            for (span, msg) in d.related.iter().filter(|(s, _)| !self.too_long(s)) {
                labels
                    .push(Label::secondary(ids[span.file.0], span.range.clone()).with_message(msg));
            }
            notes.extend(d.notes.iter().cloned());
            cs = cs.with_labels(labels).with_notes(notes);
            match term::emit_into_string(&config, &files, &cs) {
                Ok(s) => out.push_str(&s),
                Err(_) => out.push_str(&format!("{}: {}\n", severity_word(d.severity), d.message)),
            }
        }
        out
    }

    pub fn to_json(&self, d: &Diagnostic) -> DiagnosticJson {
        let (file, line, column) = match &d.span {
            Some(span) => {
                let (l, c) = self.line_col(span);
                (
                    Some(display_path(&self.file(span.file).path)),
                    Some(l),
                    Some(c),
                )
            }
            None => (None, None, None),
        };
        DiagnosticJson {
            severity: d.severity,
            message: d.message.clone(),
            path: d.path.as_ref().map(|p| shortened(p.to_string())),
            file,
            line,
            column,
            notes: d.notes.clone(),
        }
    }
}

/// `text` cut to [`MAX_QUOTED_LINE`] bytes (at a character boundary), marked with `…`.
fn shortened(mut text: String) -> String {
    if text.len() > MAX_QUOTED_LINE {
        let cut = (0..=MAX_QUOTED_LINE)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}
