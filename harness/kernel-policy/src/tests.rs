use super::*;
use guardlab_engine::model::{ActionSelectors, EgressNode, IpBlock, NetworkPolicy, Response};

fn node(id: &str, exe: &[&str], children: Vec<ProcessNode>) -> ProcessNode {
    ProcessNode {
        name: id.split('_').next().unwrap().into(),
        exe: exe.iter().map(|e| e.to_string()).collect(),
        id: id.into(),
        children: (!children.is_empty()).then_some(children),
        ..Default::default()
    }
}

fn jupyter() -> Spec {
    Spec {
        mode: Some(Mode::Enforce),
        process_policy: vec![node(
            "tini_0",
            &["/usr/bin/tini"],
            vec![
                node(
                    "jupyter_0",
                    &["/opt/conda/bin/python3.11"],
                    vec![node("bash_0", &["/usr/bin/bash"], vec![])],
                ),
                node("sh_0", &["/home/jovyan/*", "/usr/bin/p?thon"], vec![]),
            ],
        )],
        network_policy: NetworkPolicy {
            egress: vec![EgressNode {
                to: vec![
                    Peer::IpBlock(IpBlock {
                        cidr: "198.18.0.0/15".into(),
                        except: vec![],
                    }),
                    Peer::DnsSelector(vec!["PyPI.org.".into(), "*.example.com".into()]),
                ],
                processes: vec![],
                ports: vec![PortSpec {
                    protocol: "TCP".into(),
                    port: 443,
                    end_port: None,
                }],
            }],
            ..Default::default()
        },
        response: Some(Response {
            default: vec![],
            actions: vec![ResponseAction::AgentKillProcess(ActionSelectors::default())],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn edges(p: &KernelPolicy) -> Vec<(u32, &str, u32)> {
    p.nodes
        .iter()
        .map(|n| (n.parent, n.exe.as_str(), n.node))
        .collect()
}

#[test]
fn nodes_are_numbered_depth_first_from_one_under_the_root_context() {
    let p = compile(&jupyter(), None).unwrap();
    assert_eq!(
        edges(&p),
        [
            (0, "/usr/bin/tini", 1),
            (1, "/opt/conda/bin/python3.11", 2),
            (2, "/usr/bin/bash", 3),
            (1, "/home/jovyan/*", 4),
            (1, "/usr/bin/p*", 4),
        ]
    );
    assert_eq!(p.nodes[4].policy_node, "sh_0");
    assert!(
        p.widened.iter().any(|w| w.contains("/usr/bin/p?thon")),
        "{:?}",
        p.widened
    );
}

#[test]
fn an_edit_keeps_the_numbers_of_the_nodes_it_keeps() {
    let before = compile(&jupyter(), None).unwrap();
    let mut spec = jupyter();
    // A new first child of tini, and jupyter's bash removed.
    let children = spec.process_policy[0].children.as_mut().unwrap();
    children.insert(0, node("curl_0", &["/usr/bin/curl"], vec![]));
    children[1].children = None;
    let after = compile(&spec, Some(&before)).unwrap();
    assert_eq!(
        edges(&after),
        [
            (0, "/usr/bin/tini", 1),
            (1, "/usr/bin/curl", 5),
            (1, "/opt/conda/bin/python3.11", 2),
            (1, "/home/jovyan/*", 4),
            (1, "/usr/bin/p*", 4),
        ]
    );
}

#[test]
fn egress_gives_networks_and_names_with_their_ports() {
    let p = compile(&jupyter(), None).unwrap();
    assert_eq!(
        p.destinations,
        [AllowedDestination {
            network: "198.18.0.0/15".into(),
            first_port: 443,
            last_port: 443
        }]
    );
    let names: Vec<_> = p.dns_names.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["pypi.org", "*.example.com"]);
    assert!(p.dns_names.iter().all(|n| n.first_port == 443));
    assert_eq!(p.resolver, None);
}

#[test]
fn patterns_the_kernel_cannot_match_are_widened_and_relative_ones_refused() {
    assert_eq!(
        kernel_pattern("/usr/bin/id").as_deref(),
        Some("/usr/bin/id")
    );
    assert_eq!(kernel_pattern("/opt/*/bin/x").as_deref(), Some("/opt/*"));
    assert_eq!(kernel_pattern("/a[bc]d").as_deref(), Some("/a*"));
    assert_eq!(kernel_pattern("python3"), None);
    assert_eq!(
        kernel_dns_name("*.Example.com."),
        ("*.example.com".into(), false)
    );
    assert_eq!(
        kernel_dns_name("a*.example.com"),
        ("*.example.com".into(), true)
    );
    assert_eq!(kernel_dns_name("pypi.*"), ("*".into(), true));
    let mut spec = jupyter();
    spec.process_policy[0].exe = vec!["tini".into()];
    let err = compile(&spec, None).unwrap_err();
    assert!(
        err.to_string().contains("tini_0") && err.to_string().contains("\"tini\""),
        "{err}"
    );
    let mut spec = jupyter();
    spec.network_policy.egress[0].ports[0].port = 70000;
    assert!(
        compile(&spec, None)
            .unwrap_err()
            .to_string()
            .contains("70000")
    );
}

#[test]
fn only_enforce_mode_with_a_kill_response_asks_for_the_kernel() {
    let spec = jupyter();
    assert!(enforces_in_kernel(&spec));
    let audit = Spec {
        mode: Some(Mode::Audit),
        ..jupyter()
    };
    assert!(!enforces_in_kernel(&audit));
    let disabled = Spec {
        enabled: Some(false),
        ..jupyter()
    };
    assert!(!enforces_in_kernel(&disabled));
    let flag_only = Spec {
        response: Some(Response::default()),
        ..jupyter()
    };
    assert!(!enforces_in_kernel(&flag_only));
}

#[test]
fn siblings_told_apart_by_name_only_are_one_kernel_node_with_the_children_of_both() {
    // jupyter-lab and python3 run the same exe under tini: the kernel keys its tree by
    // (parent node, exe) alone, so one of them must not hide the other's children.
    let mut spec = jupyter();
    let mut python3 = node("python3_0", &["/opt/conda/bin/python3.11"], vec![]);
    python3.children = Some(vec![node("curl_0", &["/usr/bin/curl"], vec![])]);
    spec.process_policy[0]
        .children
        .as_mut()
        .unwrap()
        .push(python3);
    let p = compile(&spec, None).unwrap();
    assert_eq!(
        edges(&p),
        [
            (0, "/usr/bin/tini", 1),
            (1, "/opt/conda/bin/python3.11", 2),
            (2, "/usr/bin/bash", 3),
            (1, "/home/jovyan/*", 4),
            (1, "/usr/bin/p*", 4),
            (2, "/usr/bin/curl", 5),
        ]
    );
    assert!(
        p.widened
            .iter()
            .any(|w| w.starts_with("process nodes jupyter_0 and python3_0: ")),
        "{:?}",
        p.widened
    );
    // Compiled again after the edit: the same numbers.
    assert_eq!(compile(&spec, Some(&p)).unwrap().nodes, p.nodes);
}
