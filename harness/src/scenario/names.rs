//! What the runner knows of the pod's processes and of DNS, from the events so far: the names
//! a wait condition and a message use.

use std::collections::HashMap;
use std::net::IpAddr;

use guardlab_engine::fingerprint::process_name;
use guardlab_events::{Event, EventBody, ProcessKey};

use super::file::Condition;

/// What the runner knows about processes and names, for wait conditions and messages.
#[derive(Default)]
pub struct Names {
    /// Names a process answers to (its process name, its exe's and argv[0]'s basenames).
    processes: HashMap<ProcessKey, Vec<String>>,
    /// DNS names by address, from the answers seen.
    dns: HashMap<IpAddr, Vec<String>>,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Names {
    pub fn observe(&mut self, event: &Event) {
        match &event.body {
            EventBody::Exec(x) => {
                let mut names = vec![process_name(x).to_string(), basename(&x.exe).to_string()];
                if let Some(a) = x.argv.first() {
                    names.push(basename(a).to_string());
                }
                names.dedup();
                self.processes.insert(x.key, names);
            }
            EventBody::Dns(d) => {
                for a in &d.addresses {
                    let list = self.dns.entry(*a).or_default();
                    if !list.contains(&d.name) {
                        list.push(d.name.clone());
                    }
                }
            }
            _ => {}
        }
    }

    fn is(&self, key: &ProcessKey, name: &str) -> bool {
        self.processes
            .get(key)
            .is_some_and(|n| n.iter().any(|x| x == name))
    }

    pub fn name(&self, key: &ProcessKey) -> &str {
        self.processes
            .get(key)
            .and_then(|n| n.first())
            .map(String::as_str)
            .unwrap_or("?")
    }

    pub fn remote(&self, ip: &IpAddr) -> String {
        match self.dns.get(ip).and_then(|n| n.last()) {
            Some(name) => format!("{name} ({ip})"),
            None => ip.to_string(),
        }
    }

    pub fn matches(&self, condition: &Condition, event: &Event) -> bool {
        match (condition, &event.body) {
            (Condition::Exec(n), EventBody::Exec(x)) => self.is(&x.key, n),
            (Condition::Exit(n), EventBody::Exit(x)) => self.is(&x.key, n),
            (Condition::Connect(target), EventBody::Connect(c)) => {
                let (host, port) = split_host_port(target);
                let host_ok = host == "*"
                    || host
                        .parse::<IpAddr>()
                        .map(|ip| ip == c.remote_ip)
                        .unwrap_or(false)
                    || self
                        .dns
                        .get(&c.remote_ip)
                        .is_some_and(|names| names.iter().any(|n| n == host));
                host_ok && port.is_none_or(|p| p == c.remote_port)
            }
            (Condition::Listen(p), EventBody::Listen(l)) => l.port == *p,
            (Condition::Container(_), EventBody::Container(_)) => true,
            _ => false,
        }
    }
}

/// `host:port` -> (host, Some(port)); a bare host or IPv6 address has no port.
fn split_host_port(target: &str) -> (&str, Option<u16>) {
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (target, None),
        },
        _ => (target, None),
    }
}
