use super::network::net_covers;
use super::process::unique_id;
use super::*;
use crate::canonical::NetNode;
use crate::model::{
    API_VERSION, ContainerSelector, DeviationMetadata, DeviationNetwork, DeviationProcess,
    DeviationSpec, DeviationType, EgressNode, IpBlock, KIND_DEVIATION, KIND_FINGERPRINT,
    KIND_POLICY, LabelSelector, Metadata, Peer, PolicyNodeRef, PortSpec, Spec,
};

fn node(name: &str, exe: &str, id: &str, kids: Vec<ProcessNode>) -> ProcessNode {
    ProcessNode {
        name: name.into(),
        exe: vec![exe.into()],
        id: id.into(),
        euser: None,
        listening_sockets: None,
        children: (!kids.is_empty()).then_some(kids),
    }
}

fn root(name: &str, exe: &str, id: &str, user: &str, kids: Vec<ProcessNode>) -> ProcessNode {
    ProcessNode {
        euser: Some(vec![user.into()]),
        ..node(name, exe, id, kids)
    }
}

fn doc(kind: &str, roots: Vec<ProcessNode>) -> GuardDocument {
    GuardDocument {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: Metadata {
            name: "app".into(),
            kind: "container".into(),
            ..Metadata::default()
        },
        spec: Spec {
            container_selector: Some(ContainerSelector {
                image: Some("app:1".into()),
                ..ContainerSelector::default()
            }),
            process_policy: roots,
            ..Spec::default()
        },
    }
}

fn tcp(port: u32) -> PortSpec {
    PortSpec {
        protocol: "TCP".into(),
        port,
        end_port: None,
    }
}

fn dns(name: &str) -> Peer {
    Peer::DnsSelector(vec![name.into()])
}

fn block(cidr: &str) -> Peer {
    Peer::IpBlock(IpBlock {
        cidr: cidr.into(),
        except: vec![],
    })
}

fn egress(to: Vec<Peer>, processes: &[&str], ports: Vec<PortSpec>) -> EgressNode {
    EgressNode {
        to,
        processes: processes.iter().map(|p| p.to_string()).collect(),
        ports,
    }
}

/// (name, id, depth) in document order.
fn outline(nodes: &[ProcessNode]) -> Vec<(String, String, usize)> {
    fn walk(nodes: &[ProcessNode], depth: usize, out: &mut Vec<(String, String, usize)>) {
        for n in nodes {
            out.push((n.name.clone(), n.id.clone(), depth));
            walk(n.children.as_deref().unwrap_or_default(), depth + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(nodes, 0, &mut out);
    out
}

fn o(name: &str, id: &str, depth: usize) -> (String, String, usize) {
    (name.into(), id.into(), depth)
}

#[test]
fn unique_ids_count_up() {
    let ids: HashSet<String> = ["sh_0", "sh_1", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(unique_id(&ids, "sh_0"), "sh_2");
    assert_eq!(unique_id(&ids, "ls_0"), "ls_0");
    assert_eq!(unique_id(&ids, "x"), "x_0");
}

#[test]
fn symmetric_merge_unions_matching_nodes_and_adds_the_rest() {
    let a = doc(
        KIND_FINGERPRINT,
        vec![root(
            "python3",
            "/opt/conda/bin/python3.11",
            "python3_0",
            "jovyan",
            vec![node(
                "sh",
                "/bin/dash",
                "sh_0",
                vec![node("uname", "/bin/uname", "uname_0", vec![])],
            )],
        )],
    );
    let b = doc(
        KIND_FINGERPRINT,
        vec![root(
            "python3",
            "/opt/conda/bin/python3.11",
            "python3_0",
            "root",
            vec![
                node(
                    "sh",
                    "/bin/dash",
                    "sh_1",
                    vec![node("ls", "/bin/ls", "ls_0", vec![])],
                ),
                node("sh", "/bin/bash", "sh_0", vec![]),
            ],
        )],
    );
    let m = symmetric_merge(&a, &b).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("python3", "python3_0", 0),
            o("sh", "sh_1", 1),
            o("sh", "sh_0", 1),
            o("ls", "ls_0", 2),
            o("uname", "uname_0", 2)
        ],
        "sh with another exe is another node; its clashing id is renumbered"
    );
    assert_eq!(
        m.spec.process_policy[0].euser,
        Some(vec!["jovyan".to_string(), "root".to_string()])
    );
}

#[test]
fn symmetric_merge_builds_a_common_wildcard_name() {
    let a = doc(
        KIND_FINGERPRINT,
        vec![root(
            "python3",
            "/usr/bin/python3.11",
            "python3_0",
            "app",
            vec![],
        )],
    );
    let b = doc(
        KIND_FINGERPRINT,
        vec![root(
            "python3.11",
            "/usr/bin/python3.11",
            "python3.11_0",
            "app",
            vec![],
        )],
    );
    let m = symmetric_merge(&a, &b).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [o("python3*", "python3_0", 0)]
    );
    // Names that share fewer than 3 characters stay apart even with the same exe.
    let c = doc(
        KIND_FINGERPRINT,
        vec![root("sh", "/bin/busybox", "sh_0", "app", vec![])],
    );
    let d = doc(
        KIND_FINGERPRINT,
        vec![root("ls", "/bin/busybox", "ls_0", "app", vec![])],
    );
    assert_eq!(
        symmetric_merge(&c, &d).unwrap().spec.process_policy.len(),
        2
    );
}

#[test]
fn symmetric_merge_translates_process_ids_in_network_nodes() {
    let mut a = doc(
        KIND_FINGERPRINT,
        vec![root(
            "app",
            "/bin/app",
            "app_0",
            "root",
            vec![node("curl", "/usr/bin/curl", "curl_0", vec![])],
        )],
    );
    a.spec.network_policy.egress =
        vec![egress(vec![dns("a.example")], &["curl_0"], vec![tcp(443)])];
    let mut b = doc(
        KIND_FINGERPRINT,
        vec![root(
            "app",
            "/bin/app",
            "app_0",
            "root",
            vec![node("wget", "/usr/bin/wget", "curl_0", vec![])],
        )],
    );
    b.spec.network_policy.egress = vec![
        egress(vec![dns("b.example")], &["curl_0"], vec![tcp(443)]),
        egress(vec![dns("a.example")], &["app_0"], vec![tcp(443)]),
    ];
    let m = symmetric_merge(&a, &b).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("app", "app_0", 0),
            o("curl", "curl_0", 1),
            o("wget", "curl_1", 1)
        ]
    );
    let e: Vec<(Vec<Peer>, Vec<String>)> = m
        .spec
        .network_policy
        .egress
        .iter()
        .map(|n| (n.to.clone(), n.processes.clone()))
        .collect();
    assert_eq!(
        e,
        [
            (
                vec![dns("a.example")],
                vec!["app_0".to_string(), "curl_0".to_string()]
            ),
            (vec![dns("b.example")], vec!["curl_1".to_string()]),
        ],
        "b's curl_0 is curl_1 here; the same remote and ports is one node"
    );
}

#[test]
fn symmetric_merge_keeps_common_selectors() {
    let mut a = doc(
        KIND_FINGERPRINT,
        vec![root("app", "/bin/app", "app_0", "root", vec![])],
    );
    let mut b = a.clone();
    a.spec.pod_selector = Some(LabelSelector {
        match_labels: [("app".into(), "x".into()), ("tier".into(), "web".into())].into(),
        ..LabelSelector::default()
    });
    b.spec.pod_selector = Some(LabelSelector {
        match_labels: [("app".into(), "x".into()), ("tier".into(), "db".into())].into(),
        ..LabelSelector::default()
    });
    a.spec.container_selector.as_mut().unwrap().image_id = Some("sha256:a".into());
    b.spec.container_selector.as_mut().unwrap().image_id = Some("sha256:b".into());
    a.metadata.first_timestamp = Some(5.0);
    b.metadata.first_timestamp = Some(3.0);
    a.metadata.container_id = Some("a".into());
    b.metadata.container_id = Some("b".into());
    let m = symmetric_merge(&a, &b).unwrap();
    assert_eq!(m.spec.pod_selector.unwrap().match_labels.len(), 1);
    assert_eq!(m.spec.container_selector.unwrap().image_id, None);
    assert_eq!(m.metadata.first_timestamp, Some(3.0));
    assert_eq!(m.metadata.container_id, None);
}

#[test]
fn asymmetric_merge_adds_uncovered_nodes_under_the_matched_parent() {
    let policy = doc(
        KIND_POLICY,
        vec![root(
            "python*",
            "/opt/conda/bin/*",
            "python_0",
            "jovyan",
            vec![node("sh", "/bin/dash", "sh_0", vec![])],
        )],
    );
    let fp = doc(
        KIND_FINGERPRINT,
        vec![root(
            "python3",
            "/opt/conda/bin/python3.11",
            "python3_0",
            "root",
            vec![
                node(
                    "sh",
                    "/bin/dash",
                    "sh_0",
                    vec![node("ls", "/bin/ls", "ls_0", vec![])],
                ),
                node("bash", "/bin/bash", "bash_0", vec![]),
            ],
        )],
    );
    let m = merge_policy(&policy, &fp).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("python*", "python_0", 0),
            o("bash", "bash_0", 1),
            o("sh", "sh_0", 1),
            o("ls", "ls_0", 2)
        ],
        "the policy's names and ids stay; new nodes are added where their parent matched"
    );
    assert_eq!(
        m.spec.process_policy[0].euser,
        Some(vec!["jovyan".to_string(), "root".to_string()]),
        "euser is an attribute"
    );
    // Merging again changes nothing.
    assert_eq!(merge_policy(&m, &fp).unwrap(), m);
}

#[test]
fn asymmetric_coverage_needs_every_exe() {
    let policy = doc(
        KIND_POLICY,
        vec![root("app", "/bin/app", "app_0", "root", vec![])],
    );
    let mut other = root("app", "/bin/app", "app_0", "root", vec![]);
    other.exe.push("/usr/bin/app".into());
    let m = merge_policy(&policy, &doc(KIND_FINGERPRINT, vec![other])).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [o("app", "app_0", 0), o("app", "app_1", 0)]
    );
}

#[test]
fn network_coverage_rules() {
    let policy = NetNode {
        peers: vec![dns("*.example.com"), block("198.18.0.0/16")],
        processes: vec![],
        ports: vec![PortSpec {
            protocol: "TCP".into(),
            port: 1000,
            end_port: Some(2000),
        }],
    };
    let n = |peers: Vec<Peer>, processes: &[&str], port: u32| NetNode {
        peers,
        processes: processes.iter().map(|s| s.to_string()).collect(),
        ports: vec![tcp(port)],
    };
    assert!(net_covers(
        &policy,
        &n(vec![dns("pool.example.com")], &["x_0"], 1500)
    ));
    assert!(net_covers(
        &policy,
        &n(vec![block("198.18.3.4/32")], &[], 1000)
    ));
    assert!(
        !net_covers(&policy, &n(vec![block("198.19.0.1/32")], &[], 1500)),
        "outside the block"
    );
    assert!(
        !net_covers(&policy, &n(vec![dns("example.org")], &[], 1500)),
        "name does not match"
    );
    assert!(
        !net_covers(&policy, &n(vec![dns("pool.example.com")], &[], 2001)),
        "port outside the range"
    );
    let udp = NetNode {
        ports: vec![PortSpec {
            protocol: "UDP".into(),
            port: 1500,
            end_port: None,
        }],
        ..n(vec![dns("a.example.com")], &[], 0)
    };
    assert!(!net_covers(&policy, &udp), "protocol differs");
    let only_x = NetNode {
        processes: vec!["x_0".into()],
        ..policy.clone()
    };
    assert!(net_covers(
        &only_x,
        &n(vec![dns("a.example.com")], &["x_0"], 1500)
    ));
    assert!(
        !net_covers(&only_x, &n(vec![dns("a.example.com")], &["y_0"], 1500)),
        "another process"
    );
    assert!(
        !net_covers(&only_x, &n(vec![dns("a.example.com")], &[], 1500)),
        "any process is more than x_0"
    );
}

#[test]
fn asymmetric_network_merge_joins_or_adds() {
    let mut policy = doc(
        KIND_POLICY,
        vec![root("app", "/bin/app", "app_0", "root", vec![])],
    );
    policy.spec.network_policy.egress =
        vec![egress(vec![dns("pypi.org")], &["app_0"], vec![tcp(443)])];
    let mut fp = doc(
        KIND_FINGERPRINT,
        vec![root("app", "/bin/app", "app_0", "root", vec![])],
    );
    fp.spec.network_policy.egress = vec![
        egress(
            vec![dns("files.pythonhosted.org")],
            &["app_0"],
            vec![tcp(443)],
        ),
        egress(vec![dns("pypi.org")], &["app_0"], vec![tcp(443)]),
        egress(
            vec![block("198.18.0.53/32")],
            &["app_0"],
            vec![PortSpec {
                protocol: "UDP".into(),
                port: 53,
                end_port: None,
            }],
        ),
    ];
    let m = merge_policy(&policy, &fp).unwrap();
    let e = &m.spec.network_policy.egress;
    assert_eq!(e.len(), 2);
    assert_eq!(
        e[0].to,
        [dns("files.pythonhosted.org"), dns("pypi.org")],
        "same ports and processes: joined, names sorted"
    );
    assert_eq!(e[1].to, [block("198.18.0.53/32")]);
}

#[test]
fn canonical_form_orders_everything() {
    let mut d = doc(
        KIND_POLICY,
        vec![root(
            "b",
            "/b",
            "b_0",
            "root",
            vec![
                node("z", "/z", "z_0", vec![]),
                node("a", "/a2", "a_1", vec![]),
                node("a", "/a1", "a_0", vec![]),
            ],
        )],
    );
    d.spec.process_policy[0].exe = vec!["/b2".into(), "/b".into(), "/b".into()];
    d.spec
        .process_policy
        .insert(0, root("c", "/c", "c_0", "root", vec![]));
    d.spec.process_policy[1].children.as_mut().unwrap()[0].euser = Some(vec!["root".into()]);
    d.spec.network_policy.egress = vec![
        egress(
            vec![
                block("2001:db8::1/128"),
                block("52.46.140.46/32"),
                Peer::DnsSelector(vec!["b.org".into(), "a.org".into()]),
                block("3.210.19.214/32"),
            ],
            &["z_0", "b_0"],
            vec![tcp(443), tcp(80)],
        ),
        egress(vec![dns("a.org")], &[], vec![tcp(80)]),
    ];
    canonicalize(&mut d);
    assert_eq!(
        outline(&d.spec.process_policy),
        [
            o("b", "b_0", 0),
            o("a", "a_0", 1),
            o("a", "a_1", 1),
            o("z", "z_0", 1),
            o("c", "c_0", 0)
        ]
    );
    assert_eq!(d.spec.process_policy[0].exe, ["/b", "/b2"]);
    assert_eq!(
        d.spec.process_policy[0].children.as_ref().unwrap()[2].euser,
        None,
        "equal to the inherited user"
    );
    let e = &d.spec.network_policy.egress;
    assert_eq!(e[0].to, [dns("a.org")]);
    assert_eq!(
        e[1].to,
        [
            dns("a.org"),
            dns("b.org"),
            block("3.210.19.214/32"),
            block("52.46.140.46/32"),
            block("2001:db8::1/128")
        ]
    );
    assert_eq!(e[1].ports, [tcp(80), tcp(443)]);
    assert_eq!(e[1].processes, ["b_0", "z_0"]);
}

fn deviation(
    policy: &GuardDocument,
    anchor: &str,
    kids: Vec<ProcessNode>,
    net: Option<DeviationNetwork>,
) -> Deviation {
    Deviation {
        api_version: API_VERSION.into(),
        kind: KIND_DEVIATION.into(),
        metadata: DeviationMetadata {
            kind: DeviationType::Process,
            policy_uid: policy_uid(policy),
            checksum: "x".into(),
            uid: None,
            extra: Default::default(),
        },
        spec: DeviationSpec {
            process_policy: vec![DeviationProcess {
                policy_node: PolicyNodeRef {
                    id: anchor.into(),
                    children: kids,
                },
            }],
            network_policy: net,
        },
    }
}

#[test]
fn merging_a_deviation_adds_exactly_its_fragment() {
    let policy = doc(
        KIND_POLICY,
        vec![root(
            "python3",
            "/opt/conda/bin/python3.11",
            "python3_0",
            "jovyan",
            vec![node("sh", "/bin/dash", "sh_0", vec![])],
        )],
    );
    let dev = deviation(
        &policy,
        "python3_0",
        vec![ProcessNode {
            euser: Some(vec!["jovyan".into()]),
            ..node(
                "bash",
                "/usr/bin/bash",
                "bash_0",
                vec![node("minerd", "/home/jovyan/minerd", "minerd_0", vec![])],
            )
        }],
        Some(DeviationNetwork {
            egress: vec![egress(
                vec![dns("fakeminingpool.example.com")],
                &["minerd_0"],
                vec![tcp(3333)],
            )],
            ingress: vec![],
            ..DeviationNetwork::default()
        }),
    );
    assert!(is_relevant(&policy, &dev));
    let m = merge_deviation(&policy, &dev).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("python3", "python3_0", 0),
            o("bash", "bash_0", 1),
            o("minerd", "minerd_0", 2),
            o("sh", "sh_0", 1)
        ]
    );
    assert_eq!(
        m.spec.process_policy[0].children.as_ref().unwrap()[0].euser,
        None,
        "inherits jovyan"
    );
    assert_eq!(
        m.spec.network_policy.egress,
        [egress(
            vec![dns("fakeminingpool.example.com")],
            &["minerd_0"],
            vec![tcp(3333)]
        )]
    );
    assert!(!is_relevant(&m, &dev), "merged: no longer relevant");
}

#[test]
fn deviation_ids_are_renumbered_when_they_clash() {
    let policy = doc(
        KIND_POLICY,
        vec![
            root(
                "a",
                "/a",
                "a_0",
                "root",
                vec![node("x", "/x", "x_0", vec![])],
            ),
            root("b", "/b", "b_0", "root", vec![]),
        ],
    );
    let dev = deviation(
        &policy,
        "b_0",
        vec![node("x", "/x", "x_0", vec![])],
        Some(DeviationNetwork {
            egress: vec![egress(
                vec![block("198.18.0.9/32")],
                &["x_0"],
                vec![tcp(80)],
            )],
            ingress: vec![],
            ..DeviationNetwork::default()
        }),
    );
    let m = merge_deviation(&policy, &dev).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("a", "a_0", 0),
            o("x", "x_0", 1),
            o("b", "b_0", 0),
            o("x", "x_1", 1)
        ]
    );
    assert_eq!(
        m.spec.network_policy.egress[0].processes,
        ["x_1"],
        "the network node follows the renumbered id"
    );
}

#[test]
fn a_deviation_under_a_missing_node_or_of_another_policy_is_refused() {
    let policy = doc(KIND_POLICY, vec![root("a", "/a", "a_0", "root", vec![])]);
    let dev = deviation(
        &policy,
        "nope_0",
        vec![node("x", "/x", "x_0", vec![])],
        None,
    );
    assert!(matches!(
        merge_deviation(&policy, &dev),
        Err(PolicyError::UnknownPolicyNode { .. })
    ));
    assert!(!is_relevant(&policy, &dev));
    let mut other = dev.clone();
    other.metadata.policy_uid = "pol:other".into();
    let err = merge_deviation(&policy, &other).unwrap_err();
    assert!(err.to_string().contains("pol:other"), "{err}");
}

#[test]
fn a_new_root_deviation_merges_as_a_root() {
    let policy = doc(KIND_POLICY, vec![root("a", "/a", "a_0", "root", vec![])]);
    let dev = deviation(
        &policy,
        ROOT_ANCHOR,
        vec![ProcessNode {
            euser: Some(vec!["root".into()]),
            ..node("sh", "/bin/sh", "sh_0", vec![])
        }],
        None,
    );
    let m = merge_deviation(&policy, &dev).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [o("a", "a_0", 0), o("sh", "sh_0", 0)]
    );
    assert_eq!(
        m.spec.process_policy[1].euser,
        Some(vec!["root".to_string()])
    );
}

#[test]
fn duplicate_ids_are_reported() {
    let d = doc(
        KIND_POLICY,
        vec![root(
            "a",
            "/a",
            "a_0",
            "root",
            vec![node("b", "/b", "a_0", vec![])],
        )],
    );
    let err = merge_policy(&d, &d).unwrap_err();
    assert!(err.to_string().contains("a_0"), "{err}");
}

/// Relevance is decided without merging; it must agree with "merging changes the policy".
#[test]
fn relevance_agrees_with_merging() {
    let mut policy = doc(
        KIND_POLICY,
        vec![root(
            "python3",
            "/opt/conda/bin/python3.11",
            "python3_0",
            "jovyan",
            vec![node(
                "sh",
                "/bin/dash",
                "sh_0",
                vec![node("ls", "/bin/ls", "ls_0", vec![])],
            )],
        )],
    );
    policy.spec.network_policy.egress = vec![egress(
        vec![dns("*.example.com"), block("198.18.0.0/24")],
        &["sh_0"],
        vec![tcp(443)],
    )];
    canonicalize(&mut policy);
    let user = |n: ProcessNode, u: &str| ProcessNode {
        euser: Some(vec![u.into()]),
        ..n
    };
    let net = |to: Vec<Peer>, procs: &[&str], port: u32| {
        Some(DeviationNetwork {
            egress: vec![egress(to, procs, vec![tcp(port)])],
            ingress: vec![],
            ..DeviationNetwork::default()
        })
    };
    let cases = [
        deviation(
            &policy,
            "python3_0",
            vec![user(node("sh", "/bin/dash", "sh_9", vec![]), "jovyan")],
            None,
        ),
        deviation(
            &policy,
            "python3_0",
            vec![user(node("sh", "/bin/dash", "sh_9", vec![]), "root")],
            None,
        ),
        deviation(
            &policy,
            "python3_0",
            vec![user(
                node(
                    "sh",
                    "/bin/dash",
                    "sh_9",
                    vec![node("ls", "/bin/ls", "ls_9", vec![])],
                ),
                "jovyan",
            )],
            None,
        ),
        deviation(
            &policy,
            "python3_0",
            vec![user(
                node(
                    "sh",
                    "/bin/dash",
                    "sh_9",
                    vec![node("cat", "/bin/cat", "cat_0", vec![])],
                ),
                "jovyan",
            )],
            None,
        ),
        deviation(
            &policy,
            "sh_0",
            vec![user(node("ls", "/bin/ls", "ls_7", vec![]), "jovyan")],
            net(vec![dns("a.example.com")], &["ls_7"], 443),
        ),
        deviation(
            &policy,
            "python3_0",
            vec![user(node("sh", "/bin/dash", "sh_9", vec![]), "jovyan")],
            net(vec![dns("a.example.com")], &["sh_9"], 443),
        ),
        deviation(
            &policy,
            "python3_0",
            vec![],
            net(vec![block("198.18.0.7/32")], &["sh_0"], 443),
        ),
        deviation(
            &policy,
            "python3_0",
            vec![],
            net(vec![block("198.18.1.7/32")], &["sh_0"], 443),
        ),
        deviation(
            &policy,
            "python3_0",
            vec![],
            net(vec![dns("a.example.com")], &["sh_0"], 80),
        ),
        deviation(
            &policy,
            ROOT_ANCHOR,
            vec![user(
                node("python3", "/opt/conda/bin/python3.11", "p_0", vec![]),
                "jovyan",
            )],
            None,
        ),
        deviation(
            &policy,
            ROOT_ANCHOR,
            vec![user(node("bash", "/bin/bash", "bash_0", vec![]), "jovyan")],
            None,
        ),
        deviation(
            &policy,
            "gone_0",
            vec![user(node("bash", "/bin/bash", "bash_0", vec![]), "jovyan")],
            None,
        ),
    ];
    let expected = [
        false, true, false, true, true, false, false, true, true, false, true, false,
    ];
    for (i, dev) in cases.iter().enumerate() {
        let by_merge = merge_deviation(&policy, dev)
            .map(|m| m != policy)
            .unwrap_or(false);
        assert_eq!(is_relevant(&policy, dev), by_merge, "case {i}");
        assert_eq!(by_merge, expected[i], "case {i}");
    }
}

#[test]
fn symmetric_merge_prefers_the_same_name_to_a_wildcard() {
    let kids = || {
        vec![
            node(
                "ip6tables",
                "/usr/sbin/xtables-legacy-multi",
                "ip6tables_0",
                vec![],
            ),
            node(
                "iptables",
                "/usr/sbin/xtables-legacy-multi",
                "iptables_0",
                vec![],
            ),
        ]
    };
    let a = doc(
        KIND_FINGERPRINT,
        vec![root("calico", "/bin/calico", "calico_0", "root", kids())],
    );
    let m = symmetric_merge(&a, &a).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("calico", "calico_0", 0),
            o("ip6tables", "ip6tables_0", 1),
            o("iptables", "iptables_0", 1)
        ]
    );
    // With no same-named node, the wildcard still merges.
    let legacy = node(
        "iptables-legacy",
        "/usr/sbin/xtables-legacy-multi",
        "iptables-legacy_0",
        vec![],
    );
    let nft = node(
        "iptables-nft",
        "/usr/sbin/xtables-legacy-multi",
        "iptables-nft_0",
        vec![],
    );
    let b = doc(
        KIND_FINGERPRINT,
        vec![root(
            "calico",
            "/bin/calico",
            "calico_0",
            "root",
            vec![legacy],
        )],
    );
    let c = doc(
        KIND_FINGERPRINT,
        vec![root("calico", "/bin/calico", "calico_0", "root", vec![nft])],
    );
    let m = symmetric_merge(&b, &c).unwrap();
    assert_eq!(
        outline(&m.spec.process_policy),
        [
            o("calico", "calico_0", 0),
            o("iptables-*", "iptables-legacy_0", 1)
        ]
    );
}

#[test]
fn nodes_for_the_same_remote_and_ports_join_their_processes() {
    let udp53 = || PortSpec {
        protocol: "UDP".into(),
        port: 53,
        end_port: None,
    };
    let resolver = || vec![block("198.18.0.53/32")];
    let mut policy = doc(
        KIND_POLICY,
        vec![root(
            "sh",
            "/bin/sh",
            "sh_0",
            "root",
            vec![
                node("pip", "/bin/pip", "pip_0", vec![]),
                node("curl", "/bin/curl", "curl_0", vec![]),
                node("wget", "/bin/wget", "wget_0", vec![]),
            ],
        )],
    );
    policy.spec.network_policy.egress = vec![egress(resolver(), &["pip_0"], vec![udp53()])];
    let mut fp = policy.clone();
    fp.kind = KIND_FINGERPRINT.into();
    fp.spec.network_policy.egress = vec![
        egress(resolver(), &["curl_0"], vec![udp53()]),
        egress(resolver(), &["wget_0"], vec![udp53()]),
    ];
    let m = merge_policy(&policy, &fp).unwrap();
    assert_eq!(
        m.spec.network_policy.egress,
        [egress(
            resolver(),
            &["curl_0", "pip_0", "wget_0"],
            vec![udp53()]
        )]
    );
    let sym = symmetric_merge(&policy, &fp).unwrap();
    assert_eq!(sym.spec.network_policy.egress, m.spec.network_policy.egress);

    // A node for any process absorbs the others.
    fp.spec.network_policy.egress = vec![egress(resolver(), &[], vec![udp53()])];
    let m = merge_policy(&policy, &fp).unwrap();
    assert_eq!(
        m.spec.network_policy.egress,
        [egress(resolver(), &[], vec![udp53()])]
    );
    // Other ports: another node.
    fp.spec.network_policy.egress = vec![egress(resolver(), &["curl_0"], vec![tcp(53)])];
    assert_eq!(
        merge_policy(&policy, &fp)
            .unwrap()
            .spec
            .network_policy
            .egress
            .len(),
        2
    );
}

#[test]
fn dns_names_are_canonical_in_normal_form() {
    let mut d = doc(
        KIND_POLICY,
        vec![root("app", "/bin/app", "app_0", "root", vec![])],
    );
    d.spec.network_policy.egress = vec![egress(
        vec![Peer::DnsSelector(vec![
            "PyPI.org.".into(),
            "pypi.org".into(),
            "*.Example.COM".into(),
        ])],
        &["app_0"],
        vec![tcp(443)],
    )];
    canonicalize(&mut d);
    assert_eq!(
        d.spec.network_policy.egress[0].to,
        [dns("*.example.com"), dns("pypi.org")]
    );
}

#[test]
fn relevance_is_judged_with_the_policys_nodes_prepared_once() {
    let mut policy = doc(
        KIND_POLICY,
        vec![root("app", "/bin/app", "app_0", "root", vec![])],
    );
    policy.spec.network_policy.egress =
        vec![egress(vec![dns("pypi.org")], &["app_0"], vec![tcp(443)])];
    canonicalize(&mut policy);
    let uid = policy_uid(&policy);
    let dev = |to: Peer| Deviation {
        api_version: API_VERSION.into(),
        kind: KIND_DEVIATION.into(),
        metadata: DeviationMetadata {
            kind: DeviationType::Egress,
            policy_uid: uid.clone(),
            checksum: "x".into(),
            uid: None,
            extra: Default::default(),
        },
        spec: DeviationSpec {
            process_policy: vec![],
            network_policy: Some(DeviationNetwork {
                egress: vec![egress(vec![to], &["app_0"], vec![tcp(443)])],
                ingress: vec![],
                ..DeviationNetwork::default()
            }),
        },
    };
    let nets = PolicyNets::new(&policy);
    for (peer, relevant) in [(dns("PYPI.org."), false), (dns("github.com"), true)] {
        let d = dev(peer);
        assert_eq!(is_relevant_to_canonical(&policy, &nets, &d), relevant);
        assert_eq!(is_relevant(&policy, &d), relevant);
    }
}
