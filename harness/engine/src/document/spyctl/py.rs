//! A YAML tree as spyctl sees it: PyYAML's `SafeLoader` (YAML 1.1) turns plain scalars into
//! Python values by their look, so `yes` is `True`, `0x1F` is `31`, `1:30` is `90` and `1e5`
//! is the string "1e5" (a 1.1 float needs a dot); a quoted or block scalar is always a string.
//! spyctl's `UniqueKeyLoader` refuses a mapping with the same key twice (Python equality:
//! `1`, `1.0` and `true` are one key); a tag PyYAML has no constructor for (`!custom`, and
//! the merge key `<<`) makes the whole file unreadable.
//!
//! Sources read: PyYAML 6.0 `yaml/resolver.py` (the implicit resolvers) and
//! `yaml/constructor.py` (`SafeConstructor`), spyctl 0.24.2 `spyctl/spyctl_lib.py`
//! (`UniqueKeyLoader`, `load_resource_file`).

use std::sync::LazyLock;

use regex::Regex;

use super::super::tree::{Pos, PosKind, PosNode, ScalarStyle};

/// A Python value, as PyYAML constructs it and pydantic then sees it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Py {
    None,
    Bool(bool),
    /// `None` for an integer beyond 128 bits (Python has no limit).
    Int(Option<i128>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// A `datetime.date` or `datetime.datetime`, by its text.
    Date(String),
    List(Vec<PyNode>),
    Dict(Vec<(PyNode, PyNode)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct PyNode {
    pub pos: Pos,
    pub value: Py,
}

impl Py {
    /// Python's truth value.
    pub fn truthy(&self) -> bool {
        match self {
            Py::None => false,
            Py::Bool(b) => *b,
            Py::Int(i) => *i != Some(0),
            Py::Float(f) => *f != 0.0,
            Py::Str(s) => !s.is_empty(),
            Py::Bytes(b) => !b.is_empty(),
            Py::Date(_) => true,
            Py::List(items) => !items.is_empty(),
            Py::Dict(entries) => !entries.is_empty(),
        }
    }

    /// The value of dict key `key` (a string key).
    pub fn get(&self, key: &str) -> Option<&PyNode> {
        match self {
            Py::Dict(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Py::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's `==` for values that can be dict keys; `None` when the value cannot be one
    /// (a list or a dict: "unhashable type").
    fn key_eq(&self, other: &Py) -> Option<bool> {
        let number = |p: &Py| match p {
            Py::Bool(b) => Some(f64::from(u8::from(*b))),
            Py::Int(Some(i)) => Some(*i as f64),
            Py::Float(f) => Some(*f),
            _ => None,
        };
        Some(match (self, other) {
            (Py::List(_) | Py::Dict(_), _) | (_, Py::List(_) | Py::Dict(_)) => return None,
            (Py::Int(Some(a)), Py::Int(Some(b))) => a == b,
            _ if number(self).is_some() && number(other).is_some() => number(self) == number(other),
            (a, b) => a == b,
        })
    }
}

/// Why PyYAML cannot load a file spyctl is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LoadError {
    pub pos: Pos,
    pub message: String,
}

/// The Python value of a YAML tree, or why PyYAML would not load it.
pub(super) fn to_python(node: &PosNode) -> Result<PyNode, LoadError> {
    let value = match &node.kind {
        PosKind::Scalar { value, style, tag } => {
            scalar(value, *style, tag.as_deref()).map_err(|message| LoadError {
                pos: node.pos,
                message,
            })?
        }
        PosKind::Sequence(items) => {
            Py::List(items.iter().map(to_python).collect::<Result<_, _>>()?)
        }
        PosKind::Mapping(entries) => {
            let mut dict: Vec<(PyNode, PyNode)> = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key = to_python(key)?;
                for (seen, _) in &dict {
                    match seen.value.key_eq(&key.value) {
                        None => {
                            return Err(LoadError {
                                pos: key.pos,
                                message: "a list or a mapping as a mapping key: Python cannot use it as a dict key (unhashable type)".into(),
                            });
                        }
                        Some(true) => {
                            return Err(LoadError {
                                pos: key.pos,
                                message: format!(
                                    "duplicate key {} (spyctl refuses a mapping with the same key twice)",
                                    describe(&key.value)
                                ),
                            });
                        }
                        Some(false) => {}
                    }
                }
                if matches!(key.value, Py::List(_) | Py::Dict(_)) {
                    return Err(LoadError {
                        pos: key.pos,
                        message: "a list or a mapping as a mapping key: Python cannot use it as a dict key (unhashable type)".into(),
                    });
                }
                let value = to_python(value)?;
                dict.push((key, value));
            }
            Py::Dict(dict)
        }
    };
    Ok(PyNode {
        pos: node.pos,
        value,
    })
}

/// A value as a message shows it.
pub(super) fn describe(value: &Py) -> String {
    match value {
        Py::None => "None".into(),
        Py::Bool(b) => if *b { "True" } else { "False" }.into(),
        Py::Int(Some(i)) => i.to_string(),
        Py::Int(None) => "a very large integer".into(),
        Py::Float(f) => format!("{f:?}"),
        Py::Str(s) => format!("'{s}'"),
        Py::Bytes(_) => "bytes".into(),
        Py::Date(d) => format!("the date {d}"),
        Py::List(_) => "a list".into(),
        Py::Dict(_) => "a mapping".into(),
    }
}

const YAML_TAG: &str = "tag:yaml.org,2002:";

static BOOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
        .expect("a valid pattern")
});
static FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    )
    .expect("a valid pattern")
});
static INT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
    )
    .expect("a valid pattern")
});
static NULL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:~|null|Null|NULL|)$").expect("a valid pattern"));
static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:(?P<year>[0-9]{4})-(?P<month>[0-9]{1,2})-(?P<day>[0-9]{1,2})(?:(?:[Tt]|[ \t]+)(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?)$",
    )
    .expect("a valid pattern")
});
/// A date alone must have two-digit month and day to be resolved as one (YAML 1.1).
static DATE_ONLY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$").expect("a valid pattern"));

/// The Python value of a scalar: by its tag when it has one, else (plain only) by its look.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Result<Py, String> {
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain {
            resolve_plain(text)?
        } else {
            Py::Str(text.to_owned())
        });
    };
    let no_constructor =
        || format!("PyYAML has no constructor for the tag '{tag}', so spyctl cannot read the file");
    match tag.strip_prefix(YAML_TAG) {
        Some("str") => Ok(Py::Str(text.to_owned())),
        Some("null") => Ok(Py::None),
        // Its bytes only matter as a key, so the base64 text stands for them.
        Some("binary") => Ok(Py::Bytes(text.as_bytes().to_vec())),
        Some("bool") => match text.to_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(Py::Bool(true)),
            "no" | "false" | "off" => Ok(Py::Bool(false)),
            _ => Err(format!("!!bool {text:?} is not a YAML 1.1 boolean")),
        },
        Some("int") => int_value(text)
            .map(Py::Int)
            .ok_or_else(|| format!("!!int {text:?} is not an integer")),
        Some("float") => float_value(text)
            .map(Py::Float)
            .ok_or_else(|| format!("!!float {text:?} is not a number")),
        Some("timestamp") => timestamp(text)?
            .map(Py::Date)
            .ok_or_else(|| format!("!!timestamp {text:?} is not a timestamp")),
        _ if tag == "!" => Ok(Py::Str(text.to_owned())),
        _ => Err(no_constructor()),
    }
}

/// PyYAML's implicit resolution of a plain scalar, then its construction.
fn resolve_plain(text: &str) -> Result<Py, String> {
    if NULL.is_match(text) {
        return Ok(Py::None);
    }
    if BOOL.is_match(text) {
        return Ok(Py::Bool(matches!(
            text.to_lowercase().as_str(),
            "yes" | "true" | "on"
        )));
    }
    if INT.is_match(text) {
        // The pattern guarantees an integer; `None` inside is one beyond 128 bits.
        return Ok(Py::Int(int_value(text).flatten()));
    }
    if FLOAT.is_match(text) {
        return Ok(Py::Float(float_value(text).unwrap_or(f64::NAN)));
    }
    if text == "<<" {
        return Err("the merge key `<<`: spyctl's loader has no constructor for it, so spyctl cannot read the file".into());
    }
    if text == "=" {
        return Err("a plain `=`: PyYAML reads it as a `value` tag it has no constructor for, so spyctl cannot read the file".into());
    }
    if let Some(date) = timestamp(text)? {
        return Ok(Py::Date(date));
    }
    Ok(Py::Str(text.to_owned()))
}

/// PyYAML's integer construction (`_` ignored; `0b`, `0x`, a leading `0` for octal, and
/// base 60 with `:`): `Some(None)` for an integer too big for 128 bits, `None` for no integer.
fn int_value(text: &str) -> Option<Option<i128>> {
    let digits: String = text.chars().filter(|c| *c != '_').collect();
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest.to_owned()),
        None => (
            false,
            digits.strip_prefix('+').unwrap_or(&digits).to_owned(),
        ),
    };
    let parse = |digits: &str, radix: u32| -> Option<Option<i128>> {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        Some(i128::from_str_radix(digits, radix).ok())
    };
    let magnitude = if digits == "0" {
        Some(Some(0))
    } else if let Some(bin) = digits.strip_prefix("0b") {
        parse(bin, 2)
    } else if let Some(hex) = digits.strip_prefix("0x") {
        parse(hex, 16)
    } else if let Some(octal) = digits.strip_prefix('0') {
        parse(octal, 8)
    } else if digits.contains(':') {
        let mut total: Option<i128> = Some(0);
        for part in digits.split(':') {
            let part = parse(part, 10)?;
            total = total
                .zip(part)
                .and_then(|(t, p)| t.checked_mul(60)?.checked_add(p));
        }
        Some(total)
    } else {
        parse(&digits, 10)
    }?;
    Some(magnitude.map(|m| if negative { -m } else { m }))
}

/// PyYAML's float construction.
fn float_value(text: &str) -> Option<f64> {
    let lowered: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let (sign, rest) = match lowered.strip_prefix('-') {
        Some(rest) => (-1.0, rest.to_owned()),
        None => (
            1.0,
            lowered.strip_prefix('+').unwrap_or(&lowered).to_owned(),
        ),
    };
    let magnitude = match rest.as_str() {
        ".inf" => f64::INFINITY,
        ".nan" => return Some(f64::NAN),
        r if r.contains(':') => {
            let mut total = 0.0;
            for part in r.split(':') {
                total = total * 60.0 + part.parse::<f64>().ok()?;
            }
            total
        }
        r => r.parse::<f64>().ok()?,
    };
    Some(sign * magnitude)
}

/// A YAML 1.1 timestamp, checked as Python's `datetime` checks it: `Ok(None)` when the text
/// is not one, an error when it looks like one but names no real date.
fn timestamp(text: &str) -> Result<Option<String>, String> {
    let Some(parts) = TIMESTAMP.captures(text) else {
        return Ok(None);
    };
    if parts.name("hour").is_none() && !DATE_ONLY.is_match(text) {
        return Ok(None);
    }
    let number = |name: &str| -> u32 {
        parts
            .name(name)
            .and_then(|m| m.as_str().parse().ok())
            .unwrap_or(0)
    };
    let (year, month, day) = (number("year"), number("month"), number("day"));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => {
            return Err(format!(
                "{text:?} looks like a date but its month is not 1-12"
            ));
        }
    };
    if year == 0 || day == 0 || day > days {
        return Err(format!("{text:?} looks like a date but names no such day"));
    }
    if number("hour") > 23 || number("minute") > 59 || number("second") > 59 {
        return Err(format!("{text:?} looks like a time but names no such time"));
    }
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::tree::PositionTree;

    fn load(text: &str) -> Result<Py, String> {
        let tree = PositionTree::parse(text).unwrap().remove(0).unwrap();
        to_python(&tree).map(|n| n.value).map_err(|e| e.message)
    }

    fn value_of(yaml: &str) -> Py {
        load(&format!("v: {yaml}\n"))
            .unwrap()
            .get("v")
            .unwrap()
            .value
            .clone()
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1() {
        assert_eq!(value_of("yes"), Py::Bool(true));
        assert_eq!(value_of("Off"), Py::Bool(false));
        assert_eq!(value_of("y"), Py::Str("y".into()));
        assert_eq!(value_of("0x1F"), Py::Int(Some(31)));
        assert_eq!(value_of("017"), Py::Int(Some(15)));
        assert_eq!(value_of("09"), Py::Str("09".into()));
        assert_eq!(value_of("1_000"), Py::Int(Some(1000)));
        assert_eq!(value_of("-1:30"), Py::Int(Some(-90)));
        assert_eq!(value_of("1e5"), Py::Str("1e5".into()));
        assert_eq!(value_of("1.5e+3"), Py::Float(1500.0));
        assert_eq!(value_of("1."), Py::Float(1.0));
        assert_eq!(value_of("~"), Py::None);
        assert_eq!(value_of(""), Py::None);
        assert_eq!(value_of("2024-02-29"), Py::Date("2024-02-29".into()));
        assert_eq!(value_of("2024-2-9"), Py::Str("2024-2-9".into()));
        assert_eq!(value_of("'yes'"), Py::Str("yes".into()));
        assert_eq!(value_of("!!str 12"), Py::Str("12".into()));
        assert_eq!(value_of("!!int '12'"), Py::Int(Some(12)));
    }

    #[test]
    fn what_pyyaml_cannot_load() {
        for (text, words) in [
            ("a: 2023-13-01\n", "month"),
            ("a: 2023-02-30\n", "no such day"),
            ("a: !custom x\n", "no constructor"),
            ("base: &b {x: 1}\nc:\n  <<: *b\n", "merge key"),
            ("a: =\n", "`value` tag"),
            ("a: 1\nb: 2\na: 3\n", "duplicate key 'a'"),
            ("1: a\n1.0: b\n", "duplicate key 1.0"),
            ("true: a\n1: b\n", "duplicate key 1"),
            ("? [1]\n: 2\n", "unhashable"),
            ("a: !!bool maybe\n", "not a YAML 1.1 boolean"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.contains(words), "{text:?}: {err}");
        }
        // Different keys in Python are fine.
        load("'1': a\n1: b\n").unwrap();
    }
}
