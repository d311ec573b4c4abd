use proptest::prelude::*;

use super::super::tests::check;
use super::super::*;
use crate::state::TableState;

fn node(name: &str, address: &str) -> Node {
    Node {
        node: name.into(),
        address: address.into(),
        ..Node::default()
    }
}

fn svc(id: &str, name: &str) -> NodeService {
    NodeService {
        id: id.into(),
        service: name.into(),
        port: 8181,
        ..NodeService::default()
    }
}

fn proxy(id: &str, name: &str, fronts: &str) -> NodeService {
    NodeService {
        kind: "connect-proxy".into(),
        proxy: Some(ProxyConfig {
            destination_service_name: fronts.into(),
            ..ProxyConfig::default()
        }),
        ..svc(id, name)
    }
}

fn register(
    t: &mut CatalogTable,
    index: u64,
    on: &str,
    service: Option<NodeService>,
    checks: Vec<HealthCheck>,
) {
    let r = Registration {
        node: node(on, "10.0.0.1"),
        service,
        checks,
        ..Registration::default()
    };
    let result = t.apply(index, &CatalogCommand::Register(Box::new(r)));
    assert_eq!(result, CommandResult::Bool(true));
    t.validate().unwrap();
}

fn service(name: &str) -> CatalogQuery {
    CatalogQuery::Service { name: name.into() }
}

/// fcs on fcs00 with a TTL check and a sidecar, fcc on fcc00 (indexes 1-3).
fn mesh() -> CatalogTable {
    let mut t = CatalogTable::default();
    register(
        &mut t,
        1,
        "fcs00",
        Some(svc("fcs", "fcs")),
        vec![check("fcs-ttl", "fcs", CheckStatus::Passing)],
    );
    register(
        &mut t,
        2,
        "fcs00",
        Some(proxy("fcs-sidecar-proxy", "fcs-sidecar-proxy", "fcs")),
        vec![],
    );
    register(&mut t, 3, "fcc00", Some(svc("fcc", "fcc")), vec![]);
    t
}

/// (fcs, fcs-sidecar-proxy, fcc, connect/fcs, nodes, services, checks,
/// node fcc00) indexes.
fn indexes(t: &CatalogTable) -> [u64; 8] {
    [
        t.query_index(&service("fcs")),
        t.query_index(&service("fcs-sidecar-proxy")),
        t.query_index(&service("fcc")),
        t.query_index(&CatalogQuery::Connect { name: "fcs".into() }),
        t.query_index(&CatalogQuery::Nodes),
        t.query_index(&CatalogQuery::Services),
        t.query_index(&CatalogQuery::ChecksInState { state: None }),
        t.query_index(&CatalogQuery::Node {
            node: "fcc00".into(),
        }),
    ]
}

/// fcs's TTL check turns critical at `index`.
fn fcs_fails(t: &mut CatalogTable, index: u64) {
    let failing = vec![check("fcs-ttl", "fcs", CheckStatus::Critical)];
    register(t, index, "fcs00", None, failing);
}

#[test]
fn a_check_of_one_service_moves_that_service_and_the_checks_only() {
    let mut t = mesh();
    // connect/fcs: at least the services index (fcc's registration).
    assert_eq!(indexes(&t), [1, 2, 3, 3, 3, 3, 1, 3]);
    fcs_fails(&mut t, 4);
    // fcc's watchers, the sidecar's and /v1/catalog/services sleep on.
    assert_eq!(indexes(&t), [4, 2, 3, 3, 3, 3, 4, 4]);
    // Re-sending the same status changes nothing at all.
    fcs_fails(&mut t, 5);
    assert_eq!(indexes(&t), [4, 2, 3, 3, 3, 3, 4, 4]);
}

#[test]
fn a_node_check_or_a_node_change_moves_every_service_on_that_node() {
    let mut t = mesh();
    t.apply(
        4,
        &CatalogCommand::NodeHealth {
            node: "fcs00".into(),
            status: CheckStatus::Critical,
            output: "gone".into(),
        },
    );
    assert_eq!(indexes(&t), [4, 4, 3, 4, 3, 3, 4, 4]);
    let moved = Registration {
        node: node("fcc00", "10.0.0.9"),
        skip_node_update: false,
        ..Registration::default()
    };
    t.apply(5, &CatalogCommand::Register(Box::new(moved)));
    assert_eq!(indexes(&t), [4, 4, 5, 5, 5, 5, 4, 5]);
    t.validate().unwrap();
}

#[test]
fn the_last_instance_leaving_moves_the_extinction_index_and_a_return_moves_past_it() {
    let mut t = mesh();
    register(&mut t, 4, "fcc00", Some(svc("fcs-2", "fcs")), vec![]);
    assert_eq!(t.query_index(&service("fcs")), 4);
    let dereg = |node: &str, id: &str| CatalogCommand::Deregister {
        node: node.into(),
        service_id: Some(id.into()),
        check_id: None,
    };
    t.apply(5, &dereg("fcs00", "fcs"));
    assert_eq!(t.query_index(&service("fcs")), 5, "one of two left");
    assert_eq!(t.query_index(&service("fcc")), 3, "fcc00's other service");
    t.apply(6, &dereg("fcc00", "fcs-2"));
    assert_eq!(t.query_index(&service("fcs")), 6, "extinct");
    assert_eq!(t.query_index(&service("never-was")), 6);
    assert!(!t.indexes.per_service.contains_key("fcs"));
    assert_eq!(t.query_index(&service("fcc")), 3);
    register(&mut t, 7, "fcc00", Some(svc("fcs-3", "fcs")), vec![]);
    assert_eq!(t.query_index(&service("fcs")), 7);
}

#[test]
fn renaming_an_instance_moves_both_names() {
    let mut t = mesh();
    register(&mut t, 4, "fcc00", Some(svc("x", "a")), vec![]);
    register(&mut t, 5, "fcc00", Some(svc("x", "b")), vec![]);
    assert_eq!(t.query_index(&service("a")), 5, "a lost its instance");
    assert_eq!(t.query_index(&service("b")), 5);
    assert_eq!(t.query_index(&service("fcc")), 3);
}

#[test]
fn indexes_survive_a_snapshot_and_an_old_snapshot_gets_the_table_index() {
    let mut t = mesh();
    fcs_fails(&mut t, 4);
    let mut bytes = Vec::new();
    t.encode(&mut bytes);
    let back = CatalogTable::decode(&mut crate::state::binary::Reader::new(&bytes, 0)).unwrap();
    assert_eq!(back, t);
    back.validate().unwrap();

    // The same image without the read indexes (written before they existed).
    let mut image: serde_json::Value = serde_json::from_slice(&bytes[4..]).unwrap();
    image
        .as_object_mut()
        .unwrap()
        .remove("read_indexes")
        .unwrap();
    let json = serde_json::to_vec(&image).unwrap();
    let mut old = Vec::new();
    crate::state::binary::put_bytes32(&mut old, &json);
    let back = CatalogTable::decode(&mut crate::state::binary::Reader::new(&old, 0)).unwrap();
    back.validate().unwrap();
    assert_eq!(
        indexes(&back),
        [4; 8],
        "every read wakes once, none stays asleep"
    );
}

#[test]
fn validation_catches_an_index_that_a_change_did_not_move() {
    let mut t = mesh();
    fcs_fails(&mut t, 4);
    t.indexes.per_service.insert("fcs".into(), 1);
    let e = t.validate().unwrap_err();
    assert!(e.contains("service \"fcs\" has index 1"), "{e}");
}

/// A command over a small universe: two nodes, a few ids and names, a
/// proxy, node and instance checks.
fn command() -> impl Strategy<Value = CatalogCommand> {
    let node_name = prop::sample::select(vec!["n1", "n2"]);
    let address = prop::sample::select(vec!["10.0.0.1", "10.0.0.2"]);
    let instance = (
        prop::sample::select(vec!["i1", "i2", "i3"]),
        prop::sample::select(vec!["web", "db", "web-proxy"]),
        prop::sample::select(vec![80u16, 81]),
    )
        .prop_map(|(id, name, port)| {
            let mut s = if name == "web-proxy" {
                proxy(id, name, "web")
            } else {
                svc(id, name)
            };
            s.port = port;
            s
        });
    let status = prop::sample::select(vec![
        CheckStatus::Passing,
        CheckStatus::Warning,
        CheckStatus::Critical,
    ]);
    let a_check = (
        prop::sample::select(vec!["c1", "c2", "c3"]),
        prop::sample::select(vec!["", "i1", "i2", "i3"]),
        status.clone(),
    )
        .prop_map(|(id, on, st)| check(id, on, st));
    prop_oneof![
        (
            node_name.clone(),
            address.clone(),
            prop::option::of(instance.clone()),
            prop::collection::vec(a_check.clone(), 0..2)
        )
            .prop_map(|(n, a, service, checks)| CatalogCommand::Register(Box::new(
                Registration {
                    node: node(n, a),
                    service,
                    checks,
                    ..Registration::default()
                }
            ))),
        (
            node_name.clone(),
            prop::option::of(prop::sample::select(vec!["i1", "i2", "i3"])),
            prop::option::of(prop::sample::select(vec!["c1", "c2", "c3"]))
        )
            .prop_map(|(n, s, c)| CatalogCommand::Deregister {
                node: n.into(),
                service_id: s.map(Into::into),
                check_id: c.map(Into::into),
            }),
        (
            node_name.clone(),
            address,
            prop::collection::vec(instance, 0..3),
            prop::collection::vec(a_check, 0..3)
        )
            .prop_map(
                |(n, a, services, checks)| CatalogCommand::SyncNode(Box::new(NodeSync {
                    node: node(n, a),
                    services,
                    checks,
                }))
            ),
        (node_name, status).prop_map(|(n, status)| CatalogCommand::NodeHealth {
            node: n.into(),
            status,
            output: String::new(),
        }),
    ]
}

fn queries() -> Vec<CatalogQuery> {
    let mut q = vec![
        CatalogQuery::Nodes,
        CatalogQuery::Services,
        CatalogQuery::ChecksInState { state: None },
        CatalogQuery::Connect { name: "web".into() },
        CatalogQuery::Node { node: "n1".into() },
    ];
    q.extend(["web", "db", "web-proxy"].map(service));
    q
}

proptest! {
    /// Whatever a command changes in a read's answer moves that read's
    /// index past the one it had (a blocking read never sleeps through a
    /// change); no index ever goes back; and for one service, the nodes
    /// and the checks the index moves only when the answer changed.
    #[test]
    fn a_read_index_moves_exactly_when_its_answer_changes(
        commands in prop::collection::vec(command(), 1..40)
    ) {
        let mut t = CatalogTable::default();
        for (i, cmd) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            let before: Vec<(CatalogSlice, u64)> = queries()
                .iter()
                .map(|q| (t.select(q), t.query_index(q)))
                .collect();
            t.apply(index, cmd);
            t.validate().map_err(|e| TestCaseError::fail(format!("after {cmd:?}: {e}")))?;
            for (q, (answer, was)) in queries().iter().zip(before) {
                let now = t.query_index(q);
                let changed = t.select(q) != answer;
                prop_assert!(now >= was, "{q:?} went back from {was} to {now}");
                if changed {
                    prop_assert_eq!(now, index, "{:?} changed by {:?}", q, cmd);
                }
                // A name without instances shares the extinction index
                // with every other such name, as in Consul.
                let absent = |s: &CatalogSlice| s.services.is_empty();
                let exact = match q {
                    CatalogQuery::Service { .. } => !(absent(&answer) && absent(&t.select(q))),
                    CatalogQuery::Nodes | CatalogQuery::ChecksInState { .. } => true,
                    _ => false,
                };
                if exact && !changed {
                    prop_assert_eq!(now, was, "{:?} moved though {:?} changed nothing it returns", q, cmd);
                }
                // What blocking reads ask after every write agrees with
                // the index, for every index a client could hold.
                for since in 0..=index {
                    prop_assert_eq!(t.changed_since(q, since), now > since, "{:?} since {}", q, since);
                }
            }
        }
    }
}
