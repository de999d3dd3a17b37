//! An investigation as a text tree for terminals.

use std::fmt::Write as _;

use super::tree::{ContainerTree, DeviationMark, Relation, TreeConnection, TreeItem, TreeProcess};
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
    /// A text tree for terminals: one tree per container from its root process down to every
    /// deviant process, connections under their process ([`Investigation::tree`]), then the
    /// flags and actions.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if self.deviations.is_empty() {
            out.push_str("No deviations.\n");
        }
        for t in &self.tree().containers {
            render_container(&mut out, t);
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

/// `  <== process deviation dev:… (policy …, seen 1x)`, one per deviation.
fn marks(marks: &[DeviationMark]) -> String {
    if marks.is_empty() {
        return String::new();
    }
    let each: Vec<String> = marks
        .iter()
        .map(|m| {
            format!(
                "{} deviation {} (policy {}, seen {}x{}{})",
                m.kind,
                m.uid,
                m.policy_name,
                m.count,
                if m.relevant {
                    ""
                } else {
                    ", no longer relevant"
                },
                match (m.prevented, m.kind) {
                    (false, _) => "",
                    (true, DeviationType::Process) => ", prevented: killed at exec",
                    (true, _) => ", prevented: the connection was refused",
                }
            )
        })
        .collect();
    format!("  <== {}", each.join("; "))
}

fn reasons(marks: &[DeviationMark]) -> impl Iterator<Item = &str> {
    marks.iter().filter_map(|m| m.reason.as_deref())
}

fn render_container(out: &mut String, t: &ContainerTree) {
    let c = &t.container;
    let _ = writeln!(
        out,
        "container {} ({}) image {} pod {} namespace {}",
        or_dash(&c.container_name),
        or_dash(&c.container_id),
        or_dash(&c.image),
        or_dash(&c.pod),
        or_dash(&c.namespace)
    );
    // Depth first with an explicit stack: (node, the prefix of its own lines, of its
    // children's lines, its branch).
    let mut stack: Vec<(usize, String, &str)> = Vec::new();
    for &r in t.roots.iter().rev() {
        stack.push((r, "  ".to_string(), ""));
    }
    while let Some((i, prefix, branch)) = stack.pop() {
        let n = &t.nodes[i];
        // What goes under this node's line: its details, connections and children.
        let below = match branch {
            "├─ " => format!("{prefix}│  "),
            "└─ " => format!("{prefix}   "),
            _ => prefix.clone(),
        };
        match &n.item {
            TreeItem::Omitted { count } => {
                let _ = writeln!(out, "{prefix}{branch}… {count} processes omitted …");
            }
            TreeItem::Process(p) => {
                let more = !n.children.is_empty() || !p.connections.is_empty();
                let detail = format!("{below}{}", if more { "│  " } else { "   " });
                process_lines(out, &prefix, branch, n.relation, p, &detail);
                let last_conn = p.connections.len();
                for (k, conn) in p.connections.iter().enumerate() {
                    let b = if k + 1 == last_conn && n.children.is_empty() {
                        "└─ "
                    } else {
                        "├─ "
                    };
                    connection_lines(out, &below, b, conn);
                }
            }
        }
        let count = n.children.len();
        for (k, &child) in n.children.iter().enumerate().rev() {
            let b = if k + 1 == count { "└─ " } else { "├─ " };
            stack.push((child, below.clone(), b));
        }
    }
    if !t.without_ancestry.is_empty() {
        let _ = writeln!(
            out,
            "  processes seen without their ancestry (running before the sensor saw them start):"
        );
        let count = t.without_ancestry.len();
        for (k, u) in t.without_ancestry.iter().enumerate() {
            let (b, below) = if k + 1 == count {
                ("└─ ", "     ")
            } else {
                ("├─ ", "  │  ")
            };
            let _ = writeln!(
                out,
                "  {b}process {}{}",
                u.process.pid(),
                marks(&process_marks(&u.deviations))
            );
            for why in reasons(&u.deviations) {
                let _ = writeln!(out, "{below}   why: {why}");
            }
            let last = u.connections.len();
            for (j, conn) in u.connections.iter().enumerate() {
                connection_lines(out, below, if j + 1 == last { "└─ " } else { "├─ " }, conn);
            }
        }
    }
}

/// The deviations of a process itself; its connections' are marked on them.
fn process_marks(all: &[DeviationMark]) -> Vec<DeviationMark> {
    all.iter()
        .filter(|m| m.kind == DeviationType::Process)
        .cloned()
        .collect()
}

fn process_lines(
    out: &mut String,
    prefix: &str,
    branch: &str,
    relation: Relation,
    tp: &TreeProcess,
    detail: &str,
) {
    let p = &tp.process;
    let own = process_marks(&tp.deviations);
    let node = match (&p.node, p.deviant) {
        (Some(id), false) => format!(" [{id}]"),
        (Some(id), true) => format!(" [NEW {id}]"),
        (None, _) => String::new(),
    };
    let exec = if relation == Relation::Exec {
        "⇢ exec "
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
        "{prefix}{branch}{exec}{} pid {} ({} in container) user {} at {}{ended}{node}{}",
        p.name,
        p.pid,
        p.ns_pid,
        p.euser,
        p.started,
        marks(&own)
    );
    // The command line, and the exe when the command line does not show it or it is not a
    // path the sensor could vouch for.
    let exe = match untrusted_exe_reason(p.exe_status) {
        Some(why) => format!("  (exe {}: {why})", p.exe),
        None if p.args.first() == Some(&p.exe) => String::new(),
        None => format!("  (exe {})", p.exe),
    };
    let _ = writeln!(out, "{detail}$ {}{exe}", quote_args(&p.args));
    for why in reasons(&own) {
        let _ = writeln!(out, "{detail}why: {why}");
    }
}

fn connection_lines(out: &mut String, prefix: &str, branch: &str, c: &TreeConnection) {
    let _ = writeln!(
        out,
        "{prefix}{branch}{}{}",
        connection_line(&c.connection),
        marks(&c.deviations)
    );
    let below = if branch == "└─ " { "   " } else { "│  " };
    for why in reasons(&c.deviations) {
        let _ = writeln!(out, "{prefix}{below}   why: {why}");
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
