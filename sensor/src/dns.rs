//! DNS answers copied by the kernel from UDP port 53, parsed with hickory.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RData};

/// The name asked for and every address it resolved to, following CNAMEs from the question.
/// `None` for anything that is not a successful response carrying at least one address
/// (queries, NXDOMAIN, truncated or garbled messages): those resolve nothing.
pub fn parse_answer(message: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    let msg = Message::from_vec(message).ok()?;
    if msg.message_type() != MessageType::Response || msg.response_code() != ResponseCode::NoError {
        return None;
    }
    let question = msg.queries().first()?.name().clone();
    // Names that stand for the question: itself and every CNAME target reached from it.
    let mut aliases: BTreeSet<Name> = BTreeSet::new();
    aliases.insert(lower(&question));
    // Answers may list the chain in any order; iterate until no new alias appears.
    loop {
        let before = aliases.len();
        for record in msg.answers() {
            if let RData::CNAME(target) = record.data()
                && aliases.contains(&lower(record.name()))
            {
                aliases.insert(lower(&target.0));
            }
        }
        if aliases.len() == before {
            break;
        }
    }
    let mut addresses = Vec::new();
    for record in msg.answers() {
        if !aliases.contains(&lower(record.name())) {
            continue;
        }
        let ip = match record.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    if addresses.is_empty() {
        return None;
    }
    let mut name = lower(&question).to_utf8();
    if name.ends_with('.') && name.len() > 1 {
        name.pop();
    }
    Some((name, addresses))
}

fn lower(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Record, RecordType};
    use std::str::FromStr;

    fn response(question: &str, answers: Vec<Record>) -> Vec<u8> {
        let mut msg = Message::new();
        msg.set_id(7).set_message_type(MessageType::Response);
        msg.add_query(Query::query(
            Name::from_str(question).unwrap(),
            RecordType::A,
        ));
        for a in answers {
            msg.add_answer(a);
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn follows_cnames_and_lowercases() {
        let n = |s: &str| Name::from_str(s).unwrap();
        let bytes = response(
            "SourceForge.NET.",
            vec![
                Record::from_rdata(
                    n("sourceforge.net."),
                    60,
                    RData::CNAME(CNAME(n("edge.example."))),
                ),
                Record::from_rdata(n("edge.example."), 60, RData::A(A::new(198, 18, 0, 7))),
                Record::from_rdata(
                    n("edge.example."),
                    60,
                    RData::AAAA(AAAA::from_str("2001:db8::7").unwrap()),
                ),
                Record::from_rdata(n("unrelated.example."), 60, RData::A(A::new(198, 18, 0, 9))),
            ],
        );
        let (name, addrs) = parse_answer(&bytes).unwrap();
        assert_eq!(name, "sourceforge.net");
        assert_eq!(
            addrs,
            vec![
                IpAddr::from_str("198.18.0.7").unwrap(),
                IpAddr::from_str("2001:db8::7").unwrap()
            ]
        );
    }

    #[test]
    fn queries_and_garbage_resolve_nothing() {
        let mut q = Message::new();
        q.add_query(Query::query(
            Name::from_str("a.example.").unwrap(),
            RecordType::A,
        ));
        assert!(parse_answer(&q.to_vec().unwrap()).is_none());
        assert!(parse_answer(b"\x01\x02garbage").is_none());
        assert!(parse_answer(&response("a.example.", vec![])).is_none());
    }
}
