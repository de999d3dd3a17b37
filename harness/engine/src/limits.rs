//! The engine's limits. The engine watches pods an attacker may control, so everything it keeps
//! that grows with what a pod does has a limit ([`Limits`]), each with a default far above what
//! a real workload reaches: the depth of the process tree, the programs under one process, the
//! program nodes, running processes, DNS names and connections of a pod, the events a pod may
//! send in a second, the unique deviations of a policy, what a report and a trace keep, and
//! the memory of a pod's state in all.
//!
//! **Past a limit the engine never stops.** It raises one [`LimitFlag`] per limit and pod (its
//! `count` says how often the limit was met afterwards), leaves out or folds in what is over the
//! limit as each limit says, and keeps guarding the rest: every exec is still checked against
//! the policy, every deviation still decided on. What each limit does past it:
//!
//! | limit | past it |
//! | --- | --- |
//! | `process-depth` | a program deeper than this is taken as a child of its ancestor one level above the limit, so it sits on the last level with its siblings (a chain of 10,000 shells is 32 nodes deep, the deepest standing for all below) |
//! | `children` | a new program under a process node that has this many is checked against the policy, but has no node of its own: the process runs as its parent's program (fingerprints leave it out, so a policy made from them does not allow it) |
//! | `processes` | the same, for a pod with this many program nodes in all |
//! | `live-processes` | a new process of a pod with this many running is not followed: its connections name no process (any) |
//! | `dns-names`, `names-per-address`, `dns-addresses` | a name past them is not kept: a connection to its address is named by the address alone |
//! | `connections` | a fingerprint leaves out new connections (a policy made from it does not allow them) |
//! | `events-per-second` | events of a pod past this many in one second of their own timestamps are dropped, counted (exits are never dropped: they only free state) |
//! | `deviations` | a new unique deviation of a policy with this many is still found, flagged and decided on, but not kept in the report (nor its flags and decisions) |
//! | `deviations-per-process` | the same, for a new network deviation of a process (a policy node, or a deviant program) that has this many: a flood of connections from one process cannot fill the report and push out what others did |
//! | `log-entries` | flags, decisions and audit-log lines past this many are returned with their finding but not kept for the report |
//! | `trace-processes`, `trace-connections`, `trace-args-bytes` | a trace shows the root and the processes nearest the deviant one (`omitted` says how many between), the first connections, the first bytes of each command line |
//! | `state-mb` | a pod whose state reaches this many megabytes gets nothing new kept, as each limit above says for its own part |
//!
//! Time is never read: `events-per-second` counts by the events' own timestamps.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The deepest `process-depth` the engine takes: the documents it writes nest two levels per
/// process node, and must stay within what YAML readers take (serde_yaml's 128 levels).
pub const MAX_PROCESS_DEPTH: u32 = 48;

/// The limits the engine keeps (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Program nodes from a root of a pod's process tree to a leaf.
    pub process_depth: u32,
    /// Distinct programs (name, exe) under one program node.
    pub children: u32,
    /// Program nodes (distinct paths of programs) of one pod.
    pub processes: u32,
    /// Processes of one pod followed at once.
    pub live_processes: u32,
    /// Distinct DNS names of one pod.
    pub dns_names: u32,
    /// Names kept for one address.
    pub names_per_address: u32,
    /// Addresses of one pod that DNS answers named.
    pub dns_addresses: u32,
    /// Distinct connections (process, remote, port) a fingerprint keeps per pod.
    pub connections: u32,
    /// Events of one pod in one second of their timestamps.
    pub events_per_second: u32,
    /// Unique deviations kept per policy.
    pub deviations: u32,
    /// Unique network deviations kept per process (policy node or deviant program) and policy.
    pub deviations_per_process: u32,
    /// Flags, decisions and audit-log lines kept for a report.
    pub log_entries: u32,
    /// Processes a trace shows.
    pub trace_processes: u32,
    /// Connections a trace shows per process.
    pub trace_connections: u32,
    /// Bytes of a command line a trace keeps.
    pub trace_args_bytes: u32,
    /// Megabytes of a pod's state (all of the above) in all.
    pub state_mb: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            process_depth: 32,
            children: 512,
            processes: 20_000,
            live_processes: 32_768,
            dns_names: 8_192,
            names_per_address: 16,
            dns_addresses: 16_384,
            connections: 8_192,
            events_per_second: 100_000,
            deviations: 10_000,
            deviations_per_process: 256,
            log_entries: 10_000,
            trace_processes: 32,
            trace_connections: 16,
            trace_args_bytes: 1_024,
            state_mb: 256,
        }
    }
}

/// One limit: its name on the command line (`--limit NAME=VALUE`), what it bounds, and where in
/// [`Limits`] it lives.
pub struct LimitInfo {
    pub name: &'static str,
    pub what: &'static str,
    get: fn(&Limits) -> u32,
    set: fn(&mut Limits, u32),
}

impl LimitInfo {
    /// Its value in `limits`.
    pub fn value(&self, limits: &Limits) -> u32 {
        (self.get)(limits)
    }
}

macro_rules! limit {
    ($name:literal, $field:ident, $what:literal) => {
        LimitInfo {
            name: $name,
            what: $what,
            get: |l| l.$field,
            set: |l, v| l.$field = v,
        }
    };
}

/// Every limit, in the order `--help` lists them.
pub const ALL: &[LimitInfo] = &[
    limit!(
        "process-depth",
        process_depth,
        "program nodes from a root of a pod's process tree to a leaf"
    ),
    limit!(
        "children",
        children,
        "distinct programs under one program node"
    ),
    limit!("processes", processes, "program nodes of one pod"),
    limit!(
        "live-processes",
        live_processes,
        "processes of one pod followed at once"
    ),
    limit!("dns-names", dns_names, "distinct DNS names of one pod"),
    limit!(
        "names-per-address",
        names_per_address,
        "DNS names kept for one address"
    ),
    limit!(
        "dns-addresses",
        dns_addresses,
        "addresses of one pod named by DNS answers"
    ),
    limit!(
        "connections",
        connections,
        "distinct connections a fingerprint keeps per pod"
    ),
    limit!(
        "events-per-second",
        events_per_second,
        "events of one pod per second of their timestamps"
    ),
    limit!(
        "deviations",
        deviations,
        "unique deviations kept per policy"
    ),
    limit!(
        "deviations-per-process",
        deviations_per_process,
        "unique network deviations kept per process and policy"
    ),
    limit!(
        "log-entries",
        log_entries,
        "flags, decisions and audit-log lines kept for a report"
    ),
    limit!(
        "trace-processes",
        trace_processes,
        "processes a trace shows"
    ),
    limit!(
        "trace-connections",
        trace_connections,
        "connections a trace shows per process"
    ),
    limit!(
        "trace-args-bytes",
        trace_args_bytes,
        "bytes of a command line a trace keeps"
    ),
    limit!("state-mb", state_mb, "megabytes of one pod's state in all"),
];

/// Which limit, by its name.
pub fn info(name: &str) -> Option<&'static LimitInfo> {
    ALL.iter().find(|l| l.name == name)
}

/// A `--limit NAME=VALUE` that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("{0:?} is not NAME=VALUE (e.g. process-depth=64)")]
    Shape(String),
    #[error("unknown limit {name:?}; the limits are: {known}")]
    Unknown { name: String, known: String },
    #[error("limit {name}: {value:?} is not a whole number from 1 to {max}")]
    Value {
        name: String,
        value: String,
        max: u32,
    },
}

/// One `NAME=VALUE` of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSetting {
    pub limit: &'static str,
    pub value: u32,
}

impl FromStr for LimitSetting {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, LimitError> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| LimitError::Shape(s.to_string()))?;
        let (name, value) = (name.trim(), value.trim());
        let limit = info(name).ok_or_else(|| LimitError::Unknown {
            name: name.to_string(),
            known: ALL.iter().map(|l| l.name).collect::<Vec<_>>().join(", "),
        })?;
        let max = if limit.name == "process-depth" {
            MAX_PROCESS_DEPTH
        } else {
            u32::MAX
        };
        let value = value
            .replace('_', "")
            .parse::<u32>()
            .ok()
            .filter(|v| (1..=max).contains(v))
            .ok_or_else(|| LimitError::Value {
                name: name.to_string(),
                value: value.to_string(),
                max,
            })?;
        Ok(LimitSetting {
            limit: limit.name,
            value,
        })
    }
}

impl fmt::Display for LimitSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.limit, self.value)
    }
}

impl Limits {
    /// The defaults with `settings` applied, later ones winning.
    pub fn with(settings: &[LimitSetting]) -> Limits {
        let mut limits = Limits::default();
        for s in settings {
            if let Some(l) = info(s.limit) {
                (l.set)(&mut limits, s.value);
            }
        }
        limits
    }

    /// The pod state budget in bytes.
    pub(crate) fn state_bytes(&self) -> u64 {
        u64::from(self.state_mb) * 1_000_000
    }

    /// One line per limit, `name=default  what`, for `--help`.
    pub fn help() -> String {
        let defaults = Limits::default();
        ALL.iter()
            .map(|l| format!("  {}={}  {}", l.name, l.value(&defaults), l.what))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A limit was met in a pod: raised once per limit and pod, then counted.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitFlag {
    /// The limit's name (`process-depth`).
    pub limit: &'static str,
    /// Its value.
    pub value: u64,
    pub container_id: String,
    pub container_name: String,
    pub namespace: String,
    pub pod: String,
    /// The time of the event that first met it, in epoch seconds.
    pub timestamp: f64,
    /// How many times it was met (what it left out or folded in).
    pub count: u64,
    /// What was exceeded and what the engine does past it.
    pub message: String,
}

impl LimitFlag {
    /// One line for a person: what was exceeded, how often, and how to change the limit.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} time(s); --limit {}=N changes it)",
            self.message, self.count, self.limit
        )
    }
}

/// How much state a part of the engine keeps: entries of its tables, and their bytes (the
/// tables' sizes and the heap their entries own, as the engine counts them; not the process's
/// memory). Deterministic: the same events give the same size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct StateSize {
    pub entries: u64,
    pub bytes: u64,
}

impl StateSize {
    /// `entries` entries of `each` bytes, plus `heap` bytes they own.
    pub(crate) fn table(entries: usize, each: usize, heap: usize) -> StateSize {
        StateSize {
            entries: entries as u64,
            bytes: (entries * each + heap) as u64,
        }
    }
}

impl std::ops::Add for StateSize {
    type Output = StateSize;

    fn add(self, other: StateSize) -> StateSize {
        StateSize {
            entries: self.entries + other.entries,
            bytes: self.bytes + other.bytes,
        }
    }
}

impl std::iter::Sum for StateSize {
    fn sum<I: Iterator<Item = StateSize>>(iter: I) -> StateSize {
        iter.fold(StateSize::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_name_equals_value_and_apply_in_order() {
        let a: LimitSetting = "process-depth=40".parse().unwrap();
        let b: LimitSetting = " events-per-second = 1_000_000 ".parse().unwrap();
        let c: LimitSetting = "process-depth=8".parse().unwrap();
        let limits = Limits::with(&[a, b, c]);
        assert_eq!(limits.process_depth, 8, "the later one wins");
        assert_eq!(limits.events_per_second, 1_000_000);
        assert_eq!(limits.children, Limits::default().children);
        assert_eq!(a.to_string(), "process-depth=40");
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        assert_eq!(
            "depth".parse::<LimitSetting>().unwrap_err(),
            LimitError::Shape("depth".into())
        );
        let unknown = "depth=3".parse::<LimitSetting>().unwrap_err().to_string();
        assert!(
            unknown.contains("unknown limit \"depth\"") && unknown.contains("process-depth"),
            "{unknown}"
        );
        for bad in [
            "children=0",
            "children=-1",
            "children=lots",
            "children=99999999999",
        ] {
            let e = bad.parse::<LimitSetting>().unwrap_err();
            assert!(
                matches!(e, LimitError::Value { ref name, .. } if name == "children"),
                "{bad}: {e}"
            );
        }
        let deep = "process-depth=49".parse::<LimitSetting>().unwrap_err();
        assert!(deep.to_string().contains("from 1 to 48"), "{deep}");
        assert!("process-depth=48".parse::<LimitSetting>().is_ok());
    }

    #[test]
    fn every_limit_has_a_name_help_and_a_field_of_its_own() {
        let mut names: Vec<&str> = ALL.iter().map(|l| l.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
        // Setting each to a value of its own changes exactly its own field.
        for (i, l) in ALL.iter().enumerate() {
            let value = if l.name == "process-depth" {
                40
            } else {
                7_000_000 + i as u32
            };
            let limits = Limits::with(&[LimitSetting {
                limit: l.name,
                value,
            }]);
            assert_eq!(l.value(&limits), value, "{}", l.name);
            let changed = ALL
                .iter()
                .filter(|o| o.value(&limits) != o.value(&Limits::default()))
                .count();
            assert_eq!(changed, 1, "{} changes only itself", l.name);
        }
        let help = Limits::help();
        assert_eq!(help.lines().count(), ALL.len());
        assert!(help.contains("process-depth=32"), "{help}");
    }
}
