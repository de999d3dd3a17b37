//! The lab DNS answers the lab names (A and AAAA, UDP and TCP) and NXDOMAIN for the rest,
//! and logs every query.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use guardlab_services::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

fn addresses(message: &hickory_proto::op::Message) -> Vec<IpAddr> {
    message
        .answers()
        .iter()
        .map(|record| match record.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            other => panic!("unexpected answer {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn lab_names_resolve_and_everything_else_is_nxdomain() {
    within(30, async {
        let ca_dir = tempfile::tempdir().unwrap();
        let udp = udp_socket();
        let tcp = tcp_listener();
        let (udp_address, tcp_address) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let web: IpAddr = "198.18.0.10".parse().unwrap();
        let pool: IpAddr = "198.18.0.11".parse().unwrap();
        let pool_v6: IpAddr = "2001:db8::11".parse().unwrap();
        let spec = InternetSpec {
            zone: Zone::new(vec![
                (SOURCEFORGE_HOST.to_string(), web),
                ("fakeminingpool.example.com".to_string(), pool),
                ("fakeminingpool.example.com.".to_string(), pool_v6),
            ]),
            sites: Vec::new(),
            ca: Arc::new(LabCa::load_or_create(ca_dir.path()).unwrap()),
        };
        let sockets = InternetSockets {
            dns_udp: vec![udp],
            dns_tcp: vec![tcp],
            ..Default::default()
        };
        let internet = LabInternet::start(spec, sockets).await.unwrap();
        assert!(
            internet
                .addresses()
                .contains(&ServiceAddress::DnsUdp(udp_address))
        );

        for tcp in [false, true] {
            let server = if tcp { tcp_address } else { udp_address };

            let answer = dns_query(server, "sourceforge.net.", RecordType::A, tcp).await;
            assert_eq!(answer.response_code(), ResponseCode::NoError);
            assert!(answer.authoritative());
            assert_eq!(addresses(&answer), vec![web]);
            assert_eq!(answer.answers()[0].name().to_ascii(), "sourceforge.net.");

            // Case is preserved in the answer (0x20 clients) and ignored for matching.
            let mixed = dns_query(server, "FakeMiningPool.Example.COM.", RecordType::A, tcp).await;
            assert_eq!(addresses(&mixed), vec![pool]);
            assert_eq!(
                mixed.answers()[0].name().to_ascii(),
                "FakeMiningPool.Example.COM."
            );
            let v6 = dns_query(server, "fakeminingpool.example.com.", RecordType::AAAA, tcp).await;
            assert_eq!(addresses(&v6), vec![pool_v6]);

            // A lab name without IPv6: NOERROR with no answer (NODATA), as glibc expects.
            let nodata = dns_query(server, "sourceforge.net.", RecordType::AAAA, tcp).await;
            assert_eq!(nodata.response_code(), ResponseCode::NoError);
            assert!(nodata.answers().is_empty());
            assert_eq!(nodata.name_servers().len(), 1, "NODATA carries the SOA");

            for outside in ["example.org.", "www.sourceforge.net.", "pypi.org."] {
                let nx = dns_query(server, outside, RecordType::A, tcp).await;
                assert_eq!(nx.response_code(), ResponseCode::NXDomain, "{outside}");
                assert!(nx.answers().is_empty());
                assert_eq!(nx.name_servers()[0].record_type(), RecordType::SOA);
            }
        }

        let log = internet.dns_queries();
        assert_eq!(log.len(), 14, "{log:#?}");
        assert_eq!(log[0].name, "sourceforge.net");
        assert_eq!(log[0].record_type, "A");
        assert_eq!(log[0].outcome, DnsOutcome::Answer);
        assert_eq!(log[0].answers, vec![web]);
        assert_eq!(log[0].transport, DnsTransport::Udp);
        assert!(log[0].peer.ip().is_loopback());
        assert_eq!(log[1].name, "fakeminingpool.example.com");
        assert_eq!(log[3].outcome, DnsOutcome::NoData);
        assert_eq!(log[4].name, "example.org");
        assert_eq!(log[4].outcome, DnsOutcome::NxDomain);
        assert_eq!(log[6].transport, DnsTransport::Udp);
        assert_eq!(log[7].transport, DnsTransport::Tcp);
        assert_eq!(log[13].name, "pypi.org");

        internet.shutdown().await;
        // The sockets are closed: they can be bound again.
        std::net::UdpSocket::bind(udp_address).expect("the DNS UDP socket is released");
        assert_tcp_released(tcp_address, "the DNS TCP socket").await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_zone_name_is_refused_at_start_with_its_index() {
    within(30, async {
        let ca_dir = tempfile::tempdir().unwrap();
        let spec = InternetSpec {
            zone: Zone::new(vec![
                ("ok.test".to_string(), "198.18.0.1".parse().unwrap()),
                ("198.18.0.2".to_string(), "198.18.0.2".parse().unwrap()),
            ]),
            sites: Vec::new(),
            ca: Arc::new(LabCa::load_or_create(ca_dir.path()).unwrap()),
        };
        let sockets = InternetSockets {
            dns_udp: vec![udp_socket()],
            ..Default::default()
        };
        let error = LabInternet::start(spec, sockets)
            .await
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            error,
            "zone record 1 (\"198.18.0.2\"): the name is an IP address"
        );
    })
    .await;
}
