//! A YAML text checked for its nesting and its aliases before anything is built from it.
//!
//! Why a scan of its own: `serde_yaml` 0.9 (libyaml underneath) limits nesting to 128 while it
//! deserializes and stops alias replay after 100 jumps per event of the document, but the
//! `yaml-rust2` loader guardlab uses for line numbers recurses once per level (a deep enough
//! file overflows the stack and aborts the process) and a tree built from its events copies
//! what every alias names (a "billion laughs" file of a few hundred bytes becomes gigabytes).
//! This scan pulls the same events one at a time, keeping only a stack of open collections and
//! the size of each anchored node, and stops at the first limit crossed.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::ScanError;

/// How far a YAML text may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YamlLimits {
    /// Collections (mappings and lists) open at once. `serde_yaml` cannot deserialize more
    /// than 128 anyway; a spyctl policy's deepest process tree needs a few dozen.
    pub max_depth: usize,
    /// Aliases (`*name`) in the whole text. spyctl's own files use a few, where PyYAML writes
    /// one list in two places.
    pub max_aliases: usize,
    /// Nodes the aliases stand for, all together: what a tree of the text would copy.
    pub max_alias_nodes: usize,
}

impl Default for YamlLimits {
    fn default() -> Self {
        YamlLimits {
            max_depth: 128,
            max_aliases: 1_000,
            max_alias_nodes: 100_000,
        }
    }
}

/// Which of the [`YamlLimits`] a text crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YamlLimit {
    Depth,
    Aliases,
    AliasNodes,
}

impl fmt::Display for YamlLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            YamlLimit::Depth => "nesting depth",
            YamlLimit::Aliases => "number of aliases",
            YamlLimit::AliasNodes => "alias expansion",
        })
    }
}

/// Why a YAML text was refused, and where (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// Not YAML at all.
    #[error("invalid YAML: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// YAML, but beyond a limit.
    #[error("{}", limit_message(*limit, *max))]
    Limit {
        line: usize,
        column: usize,
        limit: YamlLimit,
        max: usize,
    },
}

fn limit_message(limit: YamlLimit, max: usize) -> String {
    match limit {
        YamlLimit::Depth => format!(
            "nested deeper than {max} levels of mappings and lists (guardlab's limit for YAML files)"
        ),
        YamlLimit::Aliases => {
            format!("more than {max} aliases (`*name`) (guardlab's limit for YAML files)")
        }
        YamlLimit::AliasNodes => format!(
            "the aliases stand for more than {max} nodes in all (guardlab's limit for YAML files: aliases of aliases grow exponentially, the \"billion laughs\")"
        ),
    }
}

impl YamlError {
    pub fn line(&self) -> usize {
        match self {
            YamlError::Syntax { line, .. } | YamlError::Limit { line, .. } => *line,
        }
    }

    pub fn column(&self) -> usize {
        match self {
            YamlError::Syntax { column, .. } | YamlError::Limit { column, .. } => *column,
        }
    }

    /// The limit crossed, for a text that is YAML.
    pub fn limit(&self) -> Option<YamlLimit> {
        match self {
            YamlError::Limit { limit, .. } => Some(*limit),
            YamlError::Syntax { .. } => None,
        }
    }
}

/// Checks that `text` is YAML (every document of the stream) within `limits`.
pub fn scan_yaml(text: &str, limits: &YamlLimits) -> Result<(), YamlError> {
    let mut parser = Parser::new_from_str(text);
    // The open collections: each one's anchor and the nodes in it so far (itself included,
    // aliases counted as what they stand for).
    let mut open: Vec<(usize, usize)> = Vec::new();
    // Each anchor's node size; anchors belong to one document.
    let mut anchored: HashMap<usize, usize> = HashMap::new();
    let mut aliases = 0usize;
    let mut alias_nodes = 0usize;
    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|e| scan_error(text, &e, limits))?;
        let at = |limit, max| YamlError::Limit {
            line: marker.line().max(1),
            column: marker.col() + 1,
            limit,
            max,
        };
        let size = match event {
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart => {
                anchored.clear();
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() >= limits.max_depth {
                    return Err(at(YamlLimit::Depth, limits.max_depth));
                }
                open.push((anchor, 1));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((anchor, size)) = open.pop() else {
                    continue;
                };
                if anchor > 0 {
                    anchored.insert(anchor, size);
                }
                size
            }
            Event::Scalar(_, _, anchor, _) => {
                if anchor > 0 {
                    anchored.insert(anchor, 1);
                }
                1
            }
            Event::Alias(anchor) => {
                let Some(&size) = anchored.get(&anchor) else {
                    return Err(YamlError::Syntax {
                        line: marker.line().max(1),
                        column: marker.col() + 1,
                        message: "an alias to an anchor that is not complete before it in this document (YAML anchors do not cross documents, and a node cannot contain itself)".into(),
                    });
                };
                aliases += 1;
                if aliases > limits.max_aliases {
                    return Err(at(YamlLimit::Aliases, limits.max_aliases));
                }
                alias_nodes = alias_nodes.saturating_add(size);
                if alias_nodes > limits.max_alias_nodes {
                    return Err(at(YamlLimit::AliasNodes, limits.max_alias_nodes));
                }
                size
            }
            Event::DocumentEnd | Event::StreamStart | Event::Nothing => continue,
        };
        if let Some((_, parent)) = open.last_mut() {
            *parent = parent.saturating_add(size);
        }
    }
}

/// A scanner error as a [`YamlError`]: the scanner's own stop at 255 open flow collections
/// (`[[[...`) is the depth limit, which it meets before the parser passes
/// [`YamlLimits::max_depth`] because it reads ahead.
fn scan_error(text: &str, error: &ScanError, limits: &YamlLimits) -> YamlError {
    if error.info() == "recursion limit exceeded" {
        return YamlError::Limit {
            line: error.marker().line().max(1),
            column: error.marker().col() + 1,
            limit: YamlLimit::Depth,
            max: limits.max_depth,
        };
    }
    syntax_error(text, error)
}

/// A scanner error where a person looks for it. yaml-rust2 reports a tab that breaks the
/// indentation at the end of the line *before* it (where the scanner stood when it looked
/// ahead): point at the tab itself.
pub fn syntax_error(text: &str, error: &ScanError) -> YamlError {
    let marker = error.marker();
    let (mut line, mut column) = (marker.line().max(1), marker.col() + 1);
    if error.info().contains("tab")
        && let Some(tab) = first_tab_from_line(text, line)
    {
        (line, column) = tab;
    }
    // At the end of a text cut short the scanner stands on the line after the last one: show
    // the end of the last line instead, which is where the text stops.
    let lines = text.lines().count();
    if lines > 0 && line > lines {
        let last = text.lines().last().unwrap_or_default();
        (line, column) = (lines, last.chars().count() + 1);
    }
    YamlError::Syntax {
        line,
        column,
        message: error.info().to_owned(),
    }
}

/// The first tab on line `line` or the line after it (1-based line and column).
fn first_tab_from_line(text: &str, line: usize) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .skip(line - 1)
        .take(2)
        .find_map(|(i, l)| {
            l.chars()
                .position(|c| c == '\t')
                .map(|col| (i + 1, col + 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(), YamlError> {
        scan_yaml(text, &YamlLimits::default())
    }

    /// The classic: each level names the one below it nine times.
    fn laughs(levels: usize) -> String {
        let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..levels {
            let prev = format!("*l{}", i - 1);
            let refs = [prev.as_str(); 9].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn ordinary_yaml_passes_with_its_aliases() {
        scan("a: 1\nb: [x, {c: d}]\n---\nother: doc\n").unwrap();
        scan("shared: &s [a, b]\nhere: *s\nthere: *s\n").unwrap();
        scan("").unwrap();
        scan(&laughs(3)).unwrap();
    }

    #[test]
    fn a_billion_laughs_is_stopped_at_the_expansion_limit() {
        let text = laughs(10);
        assert!(text.len() < 1000, "a few hundred bytes: {}", text.len());
        let err = scan(&text).unwrap_err();
        assert_eq!(err.limit(), Some(YamlLimit::AliasNodes), "{err}");
        // Level 5 is the first whose aliases stand for more than 100,000 nodes together.
        assert_eq!(err.line(), 6, "{err}");
        assert!(err.to_string().contains("billion laughs"), "{err}");
    }

    #[test]
    fn many_small_aliases_are_stopped_at_the_alias_limit() {
        let mut text = String::from("a: &a x\nlist:\n");
        for _ in 0..1_001 {
            text.push_str("- *a\n");
        }
        let err = scan(&text).unwrap_err();
        assert_eq!(err.limit(), Some(YamlLimit::Aliases), "{err}");
        assert_eq!(err.line(), 3 + 1_000, "{err}");
    }

    #[test]
    fn deep_nesting_is_stopped_at_the_depth_limit_without_recursion() {
        for (text, line) in [
            ("[".repeat(50_000), 1),
            ("{a: ".repeat(50_000), 1),
            (format!("{}x\n", "- ".repeat(50_000)), 1),
            (
                (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect(),
                129,
            ),
        ] {
            let err = scan(&text).unwrap_err();
            assert_eq!(err.limit(), Some(YamlLimit::Depth), "{err}");
            assert_eq!(err.line(), line, "{err}");
        }
        // Exactly at the limit is fine.
        scan(&format!("{}x{}", "[".repeat(128), "]".repeat(128))).unwrap();
    }

    #[test]
    fn aliases_do_not_reach_into_other_documents_or_themselves() {
        let err = scan("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert!(matches!(err, YamlError::Syntax { line: 3, .. }), "{err:?}");
        let err = scan("a: &x [*x]\n").unwrap_err();
        assert!(matches!(err, YamlError::Syntax { line: 1, .. }), "{err:?}");
    }

    #[test]
    fn a_tab_is_reported_on_its_own_line() {
        let text = "metadata:\n  name: x\n\ttype: container\n";
        let err = scan(text).unwrap_err();
        assert_eq!((err.line(), err.column()), (3, 1), "{err}");
        let text = "spec:\n\tenabled: true\n";
        let err = scan(text).unwrap_err();
        assert_eq!((err.line(), err.column()), (2, 1), "{err}");
    }

    #[test]
    fn a_text_cut_short_is_refused_at_its_end() {
        let err = scan("a: 1\nb: {c: d").unwrap_err();
        assert_eq!((err.line(), err.column()), (2, 9), "{err}");
        let err = scan("a: 1\nb: {c: d\n").unwrap_err();
        assert_eq!((err.line(), err.column()), (2, 9), "{err}");
    }

    #[test]
    fn syntax_errors_keep_their_place() {
        let err = scan("a: {b: 1\nc: d\n").unwrap_err();
        assert!(matches!(err, YamlError::Syntax { .. }), "{err:?}");
        assert_eq!(err.line(), 2, "{err}");
    }
}
