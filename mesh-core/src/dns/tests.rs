use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;
use crate::state::catalog::{CatalogSlice, HealthCheck, Node, NodeService, ServiceEntry};

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn instance(node: &str, addr: &str, id: &str, tags: &[&str], status: CheckStatus) -> CatalogSlice {
    CatalogSlice {
        nodes: vec![Node {
            node: node.into(),
            address: addr.into(),
            ..Node::default()
        }],
        services: vec![ServiceEntry {
            node: node.into(),
            service: NodeService {
                id: id.into(),
                service: "fcs".into(),
                port: 8181,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..NodeService::default()
            },
        }],
        checks: vec![HealthCheck {
            node: node.into(),
            check_id: format!("{id}-tcp"),
            service_id: id.into(),
            status,
            ..HealthCheck::default()
        }],
    }
}

fn merge(slices: Vec<CatalogSlice>) -> CatalogSlice {
    let mut out = CatalogSlice::default();
    for s in slices {
        out.nodes.extend(s.nodes);
        out.services.extend(s.services);
        out.checks.extend(s.checks);
    }
    out
}

fn ask(name: &str, qtype: RecordType, slice: &CatalogSlice, transport: Transport) -> Message {
    let req = parse(&query(name, qtype), "dc1").expect("a query");
    let bytes = respond(
        &req,
        req.lookup.as_ref().map(|_| slice),
        "dc1",
        7,
        transport,
    );
    Message::from_vec(&bytes).expect("an answer")
}

fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn names_map_to_lookups() {
    let l = |name: &str| {
        lookup_of(
            &name.split('.').map(String::from).collect::<Vec<_>>(),
            "dc1",
        )
    };
    let svc = |name: &str, tag: Option<&str>| {
        Some(Lookup::Service {
            name: name.into(),
            tag: tag.map(String::from),
        })
    };
    assert_eq!(l("fcs.service.consul"), (true, svc("fcs", None)));
    assert_eq!(l("fcs.service.dc1.consul"), (true, svc("fcs", None)));
    assert_eq!(l("v1.fcs.service.consul"), (true, svc("fcs", Some("v1"))));
    assert_eq!(l("_fcs._tcp.service.consul"), (true, svc("fcs", None)));
    assert_eq!(l("_fcs._v1.service.consul"), (true, svc("fcs", Some("v1"))));
    assert_eq!(
        l("fcs00.node.consul"),
        (
            true,
            Some(Lookup::Node {
                name: "fcs00".into()
            })
        )
    );
    assert_eq!(l("nothing.consul"), (true, None));
    assert_eq!(l("example.com"), (false, None));
}

#[test]
fn a_passing_instance_is_answered_and_a_critical_one_is_not() {
    let slice = merge(vec![
        instance("fcs00", "10.0.0.13", "fcs", &["v1"], CheckStatus::Passing),
        instance("fcs01", "10.0.0.23", "fcs2", &[], CheckStatus::Critical),
        instance("fcs02", "10.0.0.33", "fcs3", &[], CheckStatus::Warning),
    ]);
    let m = ask("fcs.service.consul.", RecordType::A, &slice, Transport::Udp);
    assert_eq!(m.metadata.id, 4242);
    assert!(m.metadata.authoritative);
    assert_eq!(
        a_records(&m),
        ["10.0.0.13", "10.0.0.33"],
        "warning is still served"
    );
    let m = ask(
        "v1.fcs.service.consul.",
        RecordType::A,
        &slice,
        Transport::Udp,
    );
    assert_eq!(a_records(&m), ["10.0.0.13"]);
    let m = ask("FCS00.node.consul.", RecordType::A, &slice, Transport::Udp);
    assert_eq!(a_records(&m), ["10.0.0.13"], "case-insensitive");
}

#[test]
fn srv_answers_carry_port_target_and_its_address() {
    let slice = instance("fcs00", "10.0.0.13", "fcs", &[], CheckStatus::Passing);
    let m = ask(
        "_fcs._tcp.service.consul.",
        RecordType::SRV,
        &slice,
        Transport::Udp,
    );
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(srv.port, 8181);
    assert_eq!(srv.target.to_ascii(), "fcs00.node.dc1.consul.");
    assert!(matches!(&m.additionals[0].data, RData::A(a) if a.0.to_string() == "10.0.0.13"));
}

#[test]
fn nothing_found_is_nxdomain_with_soa_and_other_domains_are_refused() {
    let slice = instance("fcs00", "10.0.0.13", "fcs", &[], CheckStatus::Critical);
    let m = ask("fcs.service.consul.", RecordType::A, &slice, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
    let m = ask("example.com.", RecordType::A, &slice, Transport::Udp);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn large_udp_answers_are_truncated_and_tcp_gets_everything() {
    let slice = merge(
        (0..100)
            .map(|i| {
                instance(
                    &format!("n{i}"),
                    &format!("10.1.{}.{}", i / 200, i % 200 + 1),
                    &format!("fcs{i}"),
                    &[],
                    CheckStatus::Passing,
                )
            })
            .collect(),
    );
    let m = ask("fcs.service.consul.", RecordType::A, &slice, Transport::Udp);
    assert!(m.metadata.truncation);
    assert!(!m.answers.is_empty() && m.answers.len() < 100);
    assert!(m.to_vec().unwrap().len() <= UDP_LIMIT);
    let m = ask("fcs.service.consul.", RecordType::A, &slice, Transport::Tcp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
}

#[test]
fn garbage_is_refused_without_panicking() {
    assert!(parse(&[], "dc1").is_err());
    assert!(parse(&[1, 2, 3], "dc1").unwrap_err().answer.is_some());
    for len in 0..64 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = parse(&junk, "dc1");
    }
}
