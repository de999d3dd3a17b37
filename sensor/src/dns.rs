//! DNS answers copied by the kernel from UDP port 53, parsed with hickory.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// What a copied DNS message says.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A successful response: the name asked for and every address it resolved to, following
    /// CNAMEs from the question.
    Resolved {
        name: String,
        addresses: Vec<IpAddr>,
    },
    /// A well-formed message that resolves nothing: a query, an error response (NXDOMAIN...),
    /// or a response without address records.
    Nothing,
    /// Not a DNS message that can be read (garbled, or cut before its question ended).
    Unreadable,
}

/// Parses one message. `truncated` says the kernel copied only its first `DNS_MAX` bytes:
/// then the header, the question and the answer records that fit are read, and the addresses
/// among them are reported (a cut answer resolves to what was seen, not to nothing).
pub fn parse_answer(message: &[u8], truncated: bool) -> Parsed {
    let (header, queries, answers) = if truncated {
        match read_prefix(message) {
            Some(parts) => parts,
            None => return Parsed::Unreadable,
        }
    } else {
        match Message::from_vec(message) {
            Ok(msg) => (
                *msg.header(),
                msg.queries().to_vec(),
                msg.answers().to_vec(),
            ),
            Err(_) => return Parsed::Unreadable,
        }
    };
    if header.message_type() != MessageType::Response
        || header.response_code() != ResponseCode::NoError
    {
        return Parsed::Nothing;
    }
    let Some(question) = queries.first() else {
        return Parsed::Nothing;
    };
    match resolve(question.name(), &answers) {
        Some((name, addresses)) => Parsed::Resolved { name, addresses },
        None => Parsed::Nothing,
    }
}

/// The header, the questions and as many whole answer records as the bytes hold. `None` when
/// not even the header and questions are there.
fn read_prefix(message: &[u8]) -> Option<(Header, Vec<Query>, Vec<Record>)> {
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).ok()?;
    let queries = Message::read_queries(&mut decoder, usize::from(header.query_count())).ok()?;
    let mut answers = Vec::new();
    for _ in 0..header.answer_count() {
        match Record::read(&mut decoder) {
            Ok(record) => answers.push(record),
            Err(_) => break,
        }
    }
    Some((header, queries, answers))
}

/// The addresses `question` resolves to in `answers`, with the question's name lower case and
/// without its trailing dot. `None` when there is none.
fn resolve(question: &Name, answers: &[Record]) -> Option<(String, Vec<IpAddr>)> {
    // Names that stand for the question: itself and every CNAME target reached from it.
    let mut aliases: BTreeSet<Name> = BTreeSet::new();
    aliases.insert(lower(question));
    // Answers may list the chain in any order; iterate until no new alias appears.
    loop {
        let before = aliases.len();
        for record in answers {
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
    for record in answers {
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
    let mut name = lower(question).to_utf8();
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
        assert_eq!(
            parse_answer(&bytes, false),
            Parsed::Resolved {
                name: "sourceforge.net".into(),
                addresses: vec![
                    IpAddr::from_str("198.18.0.7").unwrap(),
                    IpAddr::from_str("2001:db8::7").unwrap()
                ]
            }
        );
    }

    #[test]
    fn a_cut_answer_resolves_to_the_records_that_fit() {
        let n = |s: &str| Name::from_str(s).unwrap();
        let answers: Vec<Record> = (1..=40u8)
            .map(|i| Record::from_rdata(n("big.example."), 60, RData::A(A::new(198, 18, 1, i))))
            .collect();
        let bytes = response("big.example.", answers);
        // Cut in the middle of the 11th record (each A record is 16 bytes here).
        let cut = &bytes[..bytes.len() - 29 * 16 - 5];
        assert!(matches!(parse_answer(cut, false), Parsed::Unreadable));
        let Parsed::Resolved { name, addresses } = parse_answer(cut, true) else {
            panic!("{:?}", parse_answer(cut, true))
        };
        assert_eq!(name, "big.example");
        assert_eq!(addresses.len(), 10, "{addresses:?}");
        assert_eq!(addresses[9], IpAddr::from_str("198.18.1.10").unwrap());
        // Cut inside the question: nothing can be read.
        assert_eq!(parse_answer(&bytes[..14], true), Parsed::Unreadable);
    }

    #[test]
    fn queries_and_empty_answers_resolve_nothing_and_garbage_is_unreadable() {
        let mut q = Message::new();
        q.add_query(Query::query(
            Name::from_str("a.example.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(parse_answer(&q.to_vec().unwrap(), false), Parsed::Nothing);
        assert_eq!(
            parse_answer(&response("a.example.", vec![]), false),
            Parsed::Nothing
        );
        assert_eq!(parse_answer(b"\x01\x02garbage", false), Parsed::Unreadable);
    }
}
