//! The checker: a Python value against spyctl's models, as pydantic 2 validates it.
//!
//! Pydantic validates in lax mode: a field of type `int` takes `True`, `4.0` and `" 443 "`, a
//! `bool` takes `1` and `"yes"`. A `Union` takes the value when one of its members does.
//! Process ids are a side effect: every `id` a node validates is added to its document's set,
//! also in a union member's attempt that then fails.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::py::{Py, PyNode, describe};
use super::schema::{After, Extra, Model, Ty};
use crate::document::tree::Pos;
use crate::validate::FieldPath;

/// One thing spyctl would refuse, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub pos: Pos,
    pub path: FieldPath,
    pub message: String,
}

#[derive(Default)]
pub(super) struct Checker {
    pub refusals: Vec<Refusal>,
    /// The process ids of the document being checked, once a spec model has begun.
    ids: Option<HashSet<String>>,
    /// The key whose value is checked next: a mapping's missing fields and failed checks are
    /// shown there, where a person looks for the mapping.
    key_pos: Option<Pos>,
}

impl Checker {
    fn refuse(&mut self, pos: Pos, path: FieldPath, message: impl Into<String>) {
        self.refusals.push(Refusal {
            pos,
            path,
            message: message.into(),
        });
    }

    /// Checks `node` as a `model`; the validated value (a dict of the fields it set), or
    /// `None` when spyctl refuses it.
    pub fn model(&mut self, node: &PyNode, model: &'static Model, path: &FieldPath) -> Option<Py> {
        let at = self.key_pos.take().unwrap_or(node.pos);
        let Py::Dict(entries) = &node.value else {
            self.refuse(
                node.pos,
                path.clone(),
                format!(
                    "expected a mapping ({}), found {}",
                    model.name,
                    describe(&node.value)
                ),
            );
            return None;
        };
        let outer_ids = model.id_scope.then(|| self.ids.replace(HashSet::new()));
        let mut valid = true;
        let mut set = Vec::new();
        for field in model.fields {
            let here = path.key(field.key);
            let entry = entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Py::Str(s) if s == field.key));
            match entry {
                None if field.required => {
                    self.refuse(at, here, "field required");
                    valid = false;
                }
                None => {}
                Some((key, value)) if !field.required && value.value == Py::None => {
                    set.push((key.clone(), value.clone()));
                }
                Some((key, value)) => {
                    self.key_pos = Some(key.pos);
                    match self.value(value, field.ty, &here) {
                        Some(checked) => set.push((
                            key.clone(),
                            PyNode {
                                pos: value.pos,
                                value: checked,
                            },
                        )),
                        None => valid = false,
                    }
                }
            }
        }
        if model.extra == Extra::Forbid {
            for (key, _) in entries {
                let declared = matches!(&key.value, Py::Str(s) if model.field(s).is_some());
                if !declared {
                    let name = match &key.value {
                        Py::Str(s) => s.clone(),
                        other => describe(other),
                    };
                    self.refuse(
                        key.pos,
                        path.key(&name),
                        format!("extra field `{name}`: {} does not allow it", model.name),
                    );
                    valid = false;
                }
            }
        }
        if let Some(outer) = outer_ids {
            self.ids = outer;
        }
        if !valid {
            return None;
        }
        let set = Py::Dict(set);
        for after in model.after {
            if let Err(message) = after_check(*after, &set) {
                self.refuse(at, path.clone(), message);
                return None;
            }
        }
        Some(set)
    }

    fn value(&mut self, node: &PyNode, ty: Ty, path: &FieldPath) -> Option<Py> {
        if !matches!(ty, Ty::Model(_) | Ty::Union(_)) {
            self.key_pos = None;
        }
        let result = match ty {
            Ty::Model(model) => return self.model(node, model, path),
            Ty::Union(members) => return self.union(node, members, path),
            Ty::List { item, min, max } => return self.list(node, *item, min, max, path),
            Ty::Str { max_len } => match &node.value {
                Py::Str(s) if max_len.is_some_and(|max| s.chars().count() > max) => Err(format!(
                    "at most {} characters, found {}",
                    max_len.unwrap_or_default(),
                    s.chars().count()
                )),
                Py::Str(_) => Ok(node.value.clone()),
                other => Err(format!("expected a string, found {}", describe(other))),
            },
            Ty::Int { min, max } => self.int(&node.value).and_then(|i| match i {
                Some(i) if i >= i128::from(min) && i <= i128::from(max) => Ok(Py::Int(Some(i))),
                _ => Err(format!("expected a whole number from {min} to {max}")),
            }),
            Ty::Bool => self.bool(&node.value).map(Py::Bool),
            Ty::Number => self.number(&node.value),
            Ty::Stamp => match &node.value {
                Py::Int(_) | Py::Float(_) | Py::Str(_) => Ok(node.value.clone()),
                Py::Bool(b) => Ok(Py::Int(Some(i128::from(*b)))),
                other => Err(format!(
                    "expected a number or a string, found {}",
                    describe(other)
                )),
            },
            Ty::Lit(words) => match &node.value {
                Py::Str(s) if words.contains(&s.as_str()) => Ok(node.value.clone()),
                other => Err(format!(
                    "expected {}, found {}",
                    words
                        .iter()
                        .map(|w| format!("'{w}'"))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    describe(other)
                )),
            },
            Ty::Network => network(&node.value).map(|n| Py::Str(n.to_string())),
            Ty::AnyDict => match &node.value {
                Py::Dict(_) => Ok(node.value.clone()),
                other => Err(format!("expected a mapping, found {}", describe(other))),
            },
            Ty::StrDict => str_dict(&node.value),
            Ty::StrOrStrList => match &node.value {
                Py::Str(_) => Ok(node.value.clone()),
                Py::List(items) if items.iter().all(|i| matches!(i.value, Py::Str(_))) => {
                    Ok(node.value.clone())
                }
                other => Err(format!(
                    "expected a string or a list of strings, found {}",
                    describe(other)
                )),
            },
            Ty::ProcessId => match &node.value {
                Py::Str(id) => {
                    let fresh = self.ids.as_mut().is_none_or(|ids| ids.insert(id.clone()));
                    if fresh {
                        Ok(node.value.clone())
                    } else {
                        Err(format!("duplicate process id '{id}'"))
                    }
                }
                other => Err(format!("expected a string, found {}", describe(other))),
            },
            Ty::ProcessRefs => {
                let list = self.list(node, Ty::Str { max_len: None }, 1, None, path)?;
                let Py::List(refs) = &list else {
                    return None;
                };
                let missing: Vec<&str> = refs
                    .iter()
                    .filter_map(|r| match &r.value {
                        Py::Str(id) if self.ids.as_ref().is_some_and(|ids| !ids.contains(id)) => {
                            Some(id.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                if missing.is_empty() {
                    Ok(list.clone())
                } else {
                    Err(format!("no process with id {missing:?}"))
                }
            }
            Ty::MatchFields(valid) => str_dict(&node.value).and_then(|dict| {
                let Py::Dict(entries) = &dict else {
                    return Ok(dict);
                };
                match entries
                    .iter()
                    .find(|(k, _)| !matches!(&k.value, Py::Str(s) if valid.contains(&s.as_str())))
                {
                    Some((k, _)) => Err(format!(
                        "invalid field {}: the fields are {valid:?}",
                        describe(&k.value)
                    )),
                    None => Ok(dict),
                }
            }),
            Ty::MatchFieldsExpressions(valid) => {
                let expressions = self.list(
                    node,
                    Ty::Model(&super::schema::SELECTOR_EXPRESSION),
                    1,
                    None,
                    path,
                )?;
                let Py::List(items) = &expressions else {
                    return None;
                };
                match items.iter().find_map(|item| match item.value.get("key") {
                    Some(PyNode {
                        value: Py::Str(key),
                        ..
                    }) if !valid.contains(&key.as_str()) => Some(key.clone()),
                    _ => None,
                }) {
                    Some(key) => Err(format!(
                        "invalid key in an expression '{key}': the fields are {valid:?}"
                    )),
                    None => Ok(expressions.clone()),
                }
            }
        };
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.refuse(node.pos, path.clone(), message);
                None
            }
        }
    }

    fn list(
        &mut self,
        node: &PyNode,
        item: Ty,
        min: usize,
        max: Option<usize>,
        path: &FieldPath,
    ) -> Option<Py> {
        let Py::List(items) = &node.value else {
            self.refuse(
                node.pos,
                path.clone(),
                format!("expected a list, found {}", describe(&node.value)),
            );
            return None;
        };
        let mut valid = true;
        let mut checked = Vec::with_capacity(items.len());
        self.key_pos = None;
        for (i, element) in items.iter().enumerate() {
            self.key_pos = None;
            match self.value(element, item, &path.index(i)) {
                Some(value) => checked.push(PyNode {
                    pos: element.pos,
                    value,
                }),
                None => valid = false,
            }
        }
        if !valid {
            return None;
        }
        if items.len() < min {
            self.refuse(
                node.pos,
                path.clone(),
                format!("needs at least {min} item(s), found {}", items.len()),
            );
            return None;
        }
        if let Some(max) = max
            && items.len() > max
        {
            self.refuse(
                node.pos,
                path.clone(),
                format!("holds at most {max} items, found {}", items.len()),
            );
            return None;
        }
        Some(Py::List(checked))
    }

    /// A union: its members in order, the first that accepts wins.
    fn union(&mut self, node: &PyNode, members: &[Ty], path: &FieldPath) -> Option<Py> {
        let key_pos = self.key_pos.take();
        let mut reasons = Vec::new();
        for member in members {
            let mut attempt = Checker {
                refusals: Vec::new(),
                ids: self.ids.take(),
                key_pos,
            };
            let value = attempt.value(node, *member, path);
            // Ids added by an attempt stay added, also when it fails (as in spyctl).
            self.ids = attempt.ids;
            if value.is_some() {
                return value;
            }
            reasons.extend(
                attempt
                    .refusals
                    .into_iter()
                    .take(1)
                    .map(|r| format!("{}: {}", r.path, r.message)),
            );
        }
        self.refuse(
            node.pos,
            path.clone(),
            format!(
                "matches none of its possible shapes ({})",
                reasons.join("; ")
            ),
        );
        None
    }

    /// Pydantic's `int`: also a bool, an integral float and a numeric string.
    fn int(&self, value: &Py) -> Result<Option<i128>, String> {
        let refuse = || {
            Err(format!(
                "expected a whole number, found {}",
                describe(value)
            ))
        };
        match value {
            Py::Int(i) => Ok(*i),
            Py::Bool(b) => Ok(Some(i128::from(*b))),
            Py::Float(f) if f.is_finite() && f.fract() == 0.0 => Ok(Some(*f as i128)),
            Py::Str(s) => int_text(s.trim()).map_or_else(refuse, |i| Ok(Some(i))),
            _ => refuse(),
        }
    }

    /// Pydantic's `bool`: also 0 and 1, and words such as `yes`, `off`, `t`.
    fn bool(&self, value: &Py) -> Result<bool, String> {
        let refuse = || Err(format!("expected a boolean, found {}", describe(value)));
        match value {
            Py::Bool(b) => Ok(*b),
            Py::Int(Some(0)) => Ok(false),
            Py::Int(Some(1)) => Ok(true),
            Py::Float(f) if *f == 0.0 || *f == 1.0 => Ok(*f == 1.0),
            Py::Str(s) => match s.to_lowercase().as_str() {
                "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
                "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
                _ => refuse(),
            },
            _ => refuse(),
        }
    }

    /// `Union[int, float]`.
    fn number(&self, value: &Py) -> Result<Py, String> {
        match value {
            Py::Int(_) | Py::Float(_) => Ok(value.clone()),
            Py::Bool(b) => Ok(Py::Int(Some(i128::from(*b)))),
            Py::Str(s) => float_text(s.trim())
                .map(Py::Float)
                .ok_or_else(|| format!("expected a number, found {}", describe(value))),
            other => Err(format!("expected a number, found {}", describe(other))),
        }
    }
}

/// A string as pydantic reads an integer: digits with single `_` between them, or a decimal
/// number with no fraction (`4.00`).
fn int_text(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let whole = |d: &str| -> Option<String> {
        let ok = !d.is_empty()
            && d.split('_')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
        ok.then(|| d.replace('_', ""))
    };
    let magnitude: i128 = match digits.split_once('.') {
        None => whole(digits)?.parse().ok()?,
        Some((int, fraction)) => {
            if !fraction.chars().all(|c| c == '0') {
                return None;
            }
            whole(int)?.parse().ok()?
        }
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// A string as pydantic reads a float (underscores between digits, `inf`, `nan`).
fn float_text(text: &str) -> Option<f64> {
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    if text.starts_with('_') || text.ends_with('_') || text.contains("__") {
        return None;
    }
    cleaned.parse().ok()
}

fn str_dict(value: &Py) -> Result<Py, String> {
    match value {
        Py::Dict(entries) => {
            for (k, v) in entries {
                if !matches!(k.value, Py::Str(_)) {
                    return Err(format!(
                        "expected string keys, found {}",
                        describe(&k.value)
                    ));
                }
                if !matches!(v.value, Py::Str(_)) {
                    return Err(format!(
                        "expected string values, found {} under {}",
                        describe(&v.value),
                        describe(&k.value)
                    ));
                }
            }
            Ok(value.clone())
        }
        other => Err(format!(
            "expected a mapping of strings, found {}",
            describe(other)
        )),
    }
}

/// An IP network as Python's `ipaddress` reads one (with `strict=True`: no host bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn network(value: &Py) -> Result<Network, String> {
    let refuse = || Err(format!("expected an IP network, found {}", describe(value)));
    let text = match value {
        Py::Int(Some(i)) if *i >= 0 && *i <= i128::from(u32::MAX) => {
            return Ok(Network {
                addr: IpAddr::V4(Ipv4Addr::from(*i as u32)),
                prefix: 32,
            });
        }
        Py::Int(Some(i)) if *i >= 0 => {
            return Ok(Network {
                addr: IpAddr::V6(Ipv6Addr::from(*i as u128)),
                prefix: 128,
            });
        }
        Py::Str(text) => text,
        _ => return refuse(),
    };
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text.as_str(), None),
    };
    let addr: IpAddr = match address.parse() {
        Ok(addr) => addr,
        Err(_) => return refuse(),
    };
    let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => bits,
        Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            match p.parse::<u8>() {
                Ok(n) if n <= bits => n,
                _ => return refuse(),
            }
        }
        Some(mask) => match (addr, mask.parse::<Ipv4Addr>()) {
            (IpAddr::V4(_), Ok(mask)) => match mask_prefix(u32::from(mask)) {
                Some(n) => n,
                None => return refuse(),
            },
            _ => return refuse(),
        },
    };
    let host_bits = match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) & (u128::from(u32::MAX) >> prefix.min(32)),
        IpAddr::V6(a) => {
            if prefix == 128 {
                0
            } else {
                u128::from(a) & (u128::MAX >> prefix)
            }
        }
    };
    if host_bits != 0 {
        return Err(format!("{text:?} has host bits set"));
    }
    Ok(Network { addr, prefix })
}

/// The prefix length of a netmask (`255.255.0.0`) or a host mask (`0.0.255.255`).
fn mask_prefix(mask: u32) -> Option<u8> {
    let ones = mask.leading_ones();
    if mask.checked_shl(ones).unwrap_or(0) == 0 {
        return u8::try_from(ones).ok();
    }
    let host = !mask;
    let ones = host.leading_ones();
    (host.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).ok())?
}

/// A model's checks after its fields, on the fields it set.
fn after_check(after: After, set: &Py) -> Result<(), String> {
    let field = |key: &str| set.get(key).map(|n| &n.value);
    let entries: &[(PyNode, PyNode)] = match set {
        Py::Dict(entries) => entries,
        _ => &[],
    };
    match after {
        After::ExpressionValues => {
            let operator = match field("operator") {
                Some(Py::Str(op)) => op.as_str(),
                _ => "",
            };
            let has_values = field("values").is_some_and(Py::truthy);
            match operator {
                "Exists" | "DoesNotExist" if has_values => {
                    Err(format!("'{operator}' takes no values"))
                }
                "In" | "NotIn" if !has_values => Err(format!("'{operator}' needs values")),
                _ => Ok(()),
            }
        }
        After::NeedsLabels => {
            if entries.iter().any(|(_, v)| v.value.truthy()) {
                Ok(())
            } else {
                Err("needs matchLabels or matchExpressions".into())
            }
        }
        After::NeedsOneField => {
            if entries.iter().any(|(_, v)| v.value != Py::None) {
                Ok(())
            } else {
                Err("needs at least one field".into())
            }
        }
        After::ActionSelectors => {
            let selectors = entries
                .iter()
                .filter(|(k, _)| matches!(&k.value, Py::Str(s) if s.ends_with("Selector")))
                .count();
            let with_values = entries
                .iter()
                .filter(|(_, v)| {
                    matches!(&v.value, Py::Dict(inner) if inner.iter().any(|(_, x)| x.value.truthy()))
                })
                .count();
            if selectors == 0 {
                Err("an item of `actions` needs at least one selector".into())
            } else if with_values != selectors {
                Err("every selector of an action needs a value".into())
            } else {
                Ok(())
            }
        }
        After::OneAction => {
            if entries.len() > 1 {
                Err("one action per item: each action is an item of its own".into())
            } else {
                Ok(())
            }
        }
        After::NonNullAction => match entries.first() {
            None => Err("an empty action (spyctl fails on it)".into()),
            Some((_, v)) if v.value == Py::None => {
                Err("an item of `actions` needs its action's selectors".into())
            }
            Some(_) => Ok(()),
        },
        After::SelectorForType => {
            let doc_type = field("metadata").and_then(|m| match m.get("type") {
                Some(PyNode {
                    value: Py::Str(t), ..
                }) => Some(t.as_str()),
                _ => None,
            });
            let wanted = match doc_type {
                Some("container") => "containerSelector",
                Some("linux-service") => "serviceSelector",
                Some("cluster") => "clusterSelector",
                _ => return Ok(()),
            };
            let present = field("spec")
                .and_then(|spec| spec.get(wanted))
                .is_some_and(|s| s.value.truthy());
            if present {
                Ok(())
            } else {
                Err(format!(
                    "type is '{}' and spec has no {wanted}",
                    doc_type.unwrap_or_default()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_from_text_as_pydantic_reads_them() {
        for (text, value) in [
            ("443", Some(443)),
            ("-3", Some(-3)),
            ("+5", Some(5)),
            ("1_000", Some(1000)),
            ("00", Some(0)),
            ("4.00", Some(4)),
            ("4.5", None),
            ("1e3", None),
            ("_1", None),
            ("1__0", None),
            ("0x10", None),
            ("", None),
        ] {
            assert_eq!(int_text(text), value, "{text:?}");
        }
    }

    #[test]
    fn networks_as_python_reads_them() {
        let net = |s: &str| network(&Py::Str(s.into()));
        assert_eq!(net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(net("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(net("10.0.0.0/255.0.0.0").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(net("::/0").unwrap().to_string(), "::/0");
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            " 10.0.0.0/8",
            "10.0.0.0/",
            "x",
        ] {
            assert!(net(bad).is_err(), "{bad}");
        }
        assert_eq!(
            network(&Py::Int(Some(167_772_160))).unwrap().to_string(),
            "10.0.0.0/32"
        );
    }
}
