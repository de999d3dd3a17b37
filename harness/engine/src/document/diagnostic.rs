//! What is wrong with an input file, and where: [`Diagnostic`]s, and serde_yaml's errors
//! turned into them.

use std::fmt;

use super::tree::Pos;

/// One thing wrong with an input file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The field's path in the document (`spec.processPolicy[0].children[1].names`); empty
    /// when the problem is the document as a whole or its YAML syntax.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// A diagnostic at `pos` of `file`.
    pub(crate) fn at(
        file: &str,
        pos: Pos,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// All the diagnostics of a file as one error, one per line, for callers that report with
/// `?` (e.g. `anyhow`): `parse_document(name, text).map_err(Diagnostics)?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(diagnostics: Vec<Diagnostic>) -> Self {
        Self(diagnostics)
    }
}

/// Turns a serde_yaml error into a diagnostic. serde_yaml writes its errors as
/// `<path>: <message> at line L column C`; the location is also available on its own, and the
/// path is split off so that it lands in the diagnostic's `field`.
pub(crate) fn diagnostic_from_serde(
    file: &str,
    document_start: Pos,
    err: &serde_yaml::Error,
) -> Diagnostic {
    let text = err.to_string();
    let (line, column, text) = match err.location() {
        Some(location) => {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            let text = text
                .strip_suffix(&suffix)
                .map(str::to_owned)
                .unwrap_or(text);
            (location.line(), location.column(), text)
        }
        None => (document_start.line, document_start.column, text),
    };
    let (field, message) = split_serde_path(&text);
    let field = if field.is_empty() {
        // At the top level serde_yaml gives no path; the field it complains about is the one
        // named in the message.
        named_field(message).unwrap_or_default()
    } else {
        field.to_owned()
    };
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        field,
        message: plain_words(message),
    }
}

/// serde names Rust types in its messages ("expected u32", "expected struct Spec"); say
/// what the YAML should hold instead, for people who write YAML, not Rust.
pub(crate) fn plain_words(message: &str) -> String {
    let mut message = message
        .replace("expected u32", "expected a whole number")
        .replace("expected u16", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected a list");
    if let Some(at) = message.find("expected struct ") {
        // "expected struct Spec" (the struct's name ends the message or a clause).
        let name_end = message[at + "expected struct ".len()..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(message.len(), |end| at + "expected struct ".len() + end);
        message.replace_range(at..name_end, "expected a mapping");
    }
    message
}

/// Splits `spec.processPolicy[0]: missing field `exe`` into its path and message. A path has
/// no spaces or backticks; serde's own messages ("invalid type: ...") always have a space
/// before their first `: `, so they are never taken for a path.
fn split_serde_path(text: &str) -> (&str, &str) {
    match text.split_once(": ") {
        Some((path, message)) if !path.is_empty() && !path.contains([' ', '`']) => (path, message),
        _ => ("", text),
    }
}

/// The field named by serde's "unknown field `x`", "missing field `x`" and "duplicate field
/// `x`" messages.
pub(crate) fn named_field(message: &str) -> Option<String> {
    let rest = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_paths_are_split_from_messages() {
        assert_eq!(
            split_serde_path("spec.processPolicy[0]: missing field `exe`"),
            ("spec.processPolicy[0]", "missing field `exe`")
        );
        assert_eq!(
            split_serde_path("invalid type: integer `3`, expected a sequence"),
            ("", "invalid type: integer `3`, expected a sequence")
        );
        assert_eq!(
            split_serde_path("missing field `spec`"),
            ("", "missing field `spec`")
        );
        assert_eq!(named_field("missing field `spec`").as_deref(), Some("spec"));
        assert_eq!(
            named_field("unknown field `a`, expected one of `apiVersion`").as_deref(),
            Some("a")
        );
        assert_eq!(
            named_field("duplicate field `kind`").as_deref(),
            Some("kind")
        );
        assert_eq!(named_field("invalid type"), None);
    }

    #[test]
    fn serde_type_names_become_yaml_words() {
        assert_eq!(
            plain_words("invalid type: string \"https\", expected u32"),
            "invalid type: string \"https\", expected a whole number"
        );
        assert_eq!(
            plain_words("invalid type: sequence, expected struct Spec"),
            "invalid type: sequence, expected a mapping"
        );
        assert_eq!(
            plain_words("invalid type: integer `3`, expected a sequence"),
            "invalid type: integer `3`, expected a list"
        );
        assert_eq!(
            plain_words("unknown field `names`"),
            "unknown field `names`"
        );
    }

    #[test]
    fn diagnostics_print_file_line_column_field_message() {
        let diagnostic = Diagnostic {
            file: "policy.yaml".into(),
            line: 57,
            column: 11,
            field: "spec.processPolicy[1]".into(),
            message: "unknown field `names`".into(),
        };
        assert_eq!(
            diagnostic.to_string(),
            "policy.yaml:57:11: spec.processPolicy[1]: unknown field `names`"
        );
        let whole = Diagnostic {
            field: String::new(),
            ..diagnostic
        };
        assert_eq!(
            whole.to_string(),
            "policy.yaml:57:11: unknown field `names`"
        );
    }
}
