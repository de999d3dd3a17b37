//! An investigation as a text tree for terminals.

use std::fmt::Write as _;

use super::{Investigation, TraceConnection};
use crate::deviation::untrusted_exe_reason;
use crate::model::DeviationType;
use crate::tracker::Direction;

fn connection_line(c: &TraceConnection) -> String {
    let remote = match &c.dns {
        Some(name) => format!("{name} ({})", c.ip),
        None => c.ip.clone(),
    };
    let dir = match c.direction {
        Direction::Egress => "egress to",
        Direction::Ingress => "ingress from",
    };
    let port = match c.direction {
        Direction::Egress => format!("{}/{}", c.protocol, c.port),
        Direction::Ingress => format!("{}/{} (peer port {})", c.protocol, c.port, c.remote_port),
    };
    let refused = if c.refused { " refused" } else { "" };
    format!("{dir} {remote} {port}{refused}")
}

impl Investigation {
    /// A text tree for terminals.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if self.deviations.is_empty() {
            out.push_str("No deviations.\n");
        }
        for d in &self.deviations {
            let _ = writeln!(
                out,
                "{} deviation {} (policy {}, seen {}x{})",
                d.kind,
                d.deviation_uid,
                d.policy_name,
                d.count,
                if d.relevant {
                    ""
                } else {
                    ", no longer relevant"
                }
            );
            if let Some(reason) = &d.reason {
                let _ = writeln!(out, "  why: {reason}");
            }
            let c = &d.container;
            let _ = writeln!(
                out,
                "  container {} ({}) image {} pod {} namespace {}",
                or_dash(&c.container_name),
                or_dash(&c.container_id),
                or_dash(&c.image),
                or_dash(&c.pod),
                or_dash(&c.namespace)
            );
            if d.chain.is_empty() {
                let _ = writeln!(
                    out,
                    "  process {} (started before the sensor saw it)",
                    d.process.pid()
                );
            }
            let last = d.chain.len().saturating_sub(1);
            for (depth, p) in d.chain.iter().enumerate() {
                let indent = "   ".repeat(depth);
                let branch = if depth == 0 { "" } else { "└─ " };
                let node = match (&p.node, p.deviant) {
                    (Some(id), false) => format!(" [{id}]"),
                    (Some(id), true) => format!(" [NEW {id}]"),
                    (None, _) => String::new(),
                };
                let marker = if depth == last && d.kind == DeviationType::Process {
                    "  <== deviation"
                } else {
                    ""
                };
                let ended = p
                    .ended
                    .as_deref()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {indent}{branch}{} pid {} ({} in container) user {} at {}{ended}{node}{marker}",
                    p.name, p.pid, p.ns_pid, p.euser, p.started
                );
                // The command line, and the exe when the command line does not show it or it
                // is not a path the sensor could vouch for.
                let exe = match untrusted_exe_reason(p.exe_status) {
                    Some(why) => format!("  (exe {}: {why})", p.exe),
                    None if p.args.first() == Some(&p.exe) => String::new(),
                    None => format!("  (exe {})", p.exe),
                };
                let _ = writeln!(
                    out,
                    "  {indent}{}   $ {}{exe}",
                    if depth == 0 { "" } else { "   " },
                    quote_args(&p.args)
                );
                if depth + 1 == last && d.omitted > 0 {
                    let _ = writeln!(out, "  {indent}   ... {} processes left out ...", d.omitted);
                }
            }
            let indent = "   ".repeat(d.chain.len());
            if let Some(conn) = &d.connection {
                let _ = writeln!(out, "  {indent}{}  <== deviation", connection_line(conn));
            }
            for conn in d
                .connections
                .iter()
                .filter(|c| Some(*c) != d.connection.as_ref())
            {
                let _ = writeln!(out, "  {indent}{}", connection_line(conn));
            }
            out.push('\n');
        }
        if !self.flags.is_empty() {
            out.push_str("Flags:\n");
            for f in &self.flags {
                let why = f
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {} {} flag: {} deviation {} of policy {} ({} pid {}){why}",
                    f.severity,
                    f.class,
                    f.kind,
                    f.deviation_uid,
                    f.policy_name,
                    or_dash(&f.process),
                    f.pid
                );
            }
        }
        if !self.decisions.is_empty() {
            out.push_str("Actions:\n");
            for d in &self.decisions {
                let _ = writeln!(out, "  {} (pid {})", d.message, d.target.pid);
            }
        }
        out
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_with_spaces_are_quoted() {
        assert_eq!(
            quote_args(&["sh".into(), "-c".into(), "ls -la".into()]),
            "sh -c \"ls -la\""
        );
    }
}
