//! What a step waits for in the sensor's events ([`Condition`]) and for how long
//! ([`Timeout`]).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::NoArgs;

/// A duration written as `500ms`, `30s` or `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Timeout {
    pub fn parse(text: &str) -> Result<Timeout, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: write e.g. 500ms, 30s or 2m"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
        };
        Ok(Timeout(d))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is raised while the scalar is read and carries its
        // path and line.
        struct V;
        impl Visitor<'_> for V {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s or 2m")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timeout, E> {
                Timeout::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Timeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Something to wait for in the sensor's events. All conditions of a list must be met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Condition {
    /// A program with this process name (the kernel's `comm`, as fingerprints name it) or
    /// this executable basename started.
    Exec(String),
    /// A process with this name (as for `exec`) ended.
    Exit(String),
    /// An outbound connection to this host: a DNS name (an earlier DNS answer gave the
    /// address), an IP address, or `*` for any address, optionally with `:port` (`*:53`: a
    /// DNS query, wherever the pod's resolver is).
    Connect(String),
    /// A socket started listening on this port.
    Listen(u16),
    /// A container was introduced (its `container` event).
    Container(NoArgs),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Exec(n) => write!(f, "exec of {n}"),
            Condition::Exit(n) => write!(f, "exit of {n}"),
            Condition::Connect(h) => write!(f, "connection to {h}"),
            Condition::Listen(p) => write!(f, "listening socket on port {p}"),
            Condition::Container(_) => write!(f, "a container"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            Timeout::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(Timeout::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Timeout::parse("2h").is_err());
        assert_eq!(Timeout(Duration::from_secs(30)).to_string(), "30s");
    }
}
