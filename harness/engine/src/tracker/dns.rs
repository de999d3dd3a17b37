//! DNS answers: the names of each address a pod's answers gave, within the DNS limits.

use std::net::IpAddr;

use super::budget::cost;
use super::{ContainerId, Tracker};
use crate::net::normalize_dns_name;

impl Tracker {
    /// A DNS answer: its name joins the names of each of its addresses, within the limits.
    pub(super) fn observe_answer(
        &mut self,
        container: ContainerId,
        name: &str,
        addrs: &[IpAddr],
        ts: u64,
    ) {
        let name = normalize_dns_name(name);
        if name.is_empty() {
            return;
        }
        let known = self.syms.find(&name);
        // The addresses that take the name: new to them, and with room for it.
        let mut taking = Vec::new();
        for addr in addrs {
            let key = (container, addr.to_canonical());
            match self.dns.get(&key) {
                Some(&set) => {
                    let names = self.name_sets.get(set);
                    if known.is_some_and(|k| names.contains(&k)) {
                        continue;
                    }
                    let limit = self.limits.names_per_address;
                    if names.len() >= limit as usize {
                        self.limit_met(
                            "names-per-address",
                            u64::from(limit),
                            container,
                            ts,
                            "further names of an address are not kept: its connections are named by the names kept",
                        );
                        continue;
                    }
                    taking.push((key, Some(set)));
                }
                None => {
                    let limit = self.limits.dns_addresses;
                    let pending = taking.iter().filter(|(_, s)| s.is_none()).count() as u32;
                    if self.containers[container.index()].pod.dns_addresses + pending >= limit {
                        self.limit_met(
                            "dns-addresses",
                            u64::from(limit),
                            container,
                            ts,
                            "names of further addresses are not kept: connections to them are named by address",
                        );
                        continue;
                    }
                    taking.push((key, None));
                }
            }
        }
        if taking.is_empty() {
            return;
        }
        let counted = known.is_some_and(|s| {
            self.containers[container.index()]
                .pod
                .dns_names
                .contains(&s)
        });
        let name = if counted {
            known.expect("counted names are interned")
        } else {
            let limit = self.limits.dns_names;
            if self.containers[container.index()].pod.dns_names.len() >= limit as usize {
                self.limit_met(
                    "dns-names",
                    u64::from(limit),
                    container,
                    ts,
                    "new names are not kept: connections to their addresses are named by address",
                );
                return;
            }
            let Some(sym) = self.intern_for(container, &name, ts) else {
                return;
            };
            if !self.charge(container, 16, ts) {
                return;
            }
            self.containers[container.index()].pod.dns_names.insert(sym);
            sym
        };
        for (key, set) in taking {
            let bytes = match set {
                Some(set) => cost::SYM + 8 * self.name_sets.get(set).len() as u64,
                None => cost::DNS_ADDRESS,
            };
            if !self.charge(container, bytes, ts) {
                continue;
            }
            if set.is_none() {
                self.containers[container.index()].pod.dns_addresses += 1;
            }
            let set = self.name_sets.with(&self.syms, set, name);
            self.dns.insert(key, set);
        }
    }
}
