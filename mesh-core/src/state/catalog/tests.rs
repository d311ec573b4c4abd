use super::*;

fn node(name: &str) -> Node {
    Node {
        node: name.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        ..Node::default()
    }
}

fn svc(id: &str, name: &str, port: u16) -> NodeService {
    NodeService {
        id: id.into(),
        service: name.into(),
        port,
        ..NodeService::default()
    }
}

/// A check on instance `service_id` (a node check if empty).
pub(super) fn check(id: &str, service_id: &str, status: CheckStatus) -> HealthCheck {
    HealthCheck {
        check_id: id.into(),
        name: id.into(),
        service_id: service_id.into(),
        status,
        ..HealthCheck::default()
    }
}

fn register(t: &mut CatalogTable, index: u64, r: Registration) -> CommandResult {
    t.apply(index, &CatalogCommand::Register(Box::new(r)))
}

fn fcs(t: &mut CatalogTable, index: u64) {
    let r = Registration {
        node: node("fcs00"),
        service: Some(svc("fcs", "fcs", 8181)),
        checks: vec![check("service:fcs", "fcs", CheckStatus::Passing)],
        ..Registration::default()
    };
    assert_eq!(register(t, index, r), CommandResult::Bool(true));
    t.validate().unwrap();
}

#[test]
fn register_stores_node_instance_and_check_with_indexes() {
    let mut t = CatalogTable::default();
    fcs(&mut t, 5);
    assert_eq!(t.table_index(), 5);
    let n = t.node("fcs00").unwrap();
    assert_eq!((n.create_index, n.modify_index), (5, 5));
    let s: Vec<_> = t.node_services("fcs00").collect();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].port, 8181);
    let c: Vec<_> = t.node_checks("fcs00").collect();
    assert_eq!(c[0].service_name, "fcs", "filled in from the instance");
    assert_eq!(c[0].node, "fcs00");
}

#[test]
fn repeating_a_registration_changes_no_index() {
    let mut t = CatalogTable::default();
    fcs(&mut t, 5);
    fcs(&mut t, 9);
    assert_eq!(
        t.table_index(),
        5,
        "nothing changed, blocking queries must not wake"
    );
    assert_eq!(t.node("fcs00").unwrap().modify_index, 5);
    // A changed status moves the check's modify index and the table's.
    let r = Registration {
        node: node("fcs00"),
        checks: vec![check("service:fcs", "fcs", CheckStatus::Critical)],
        ..Registration::default()
    };
    register(&mut t, 10, r);
    assert_eq!(t.table_index(), 10);
    let c = t.node_checks("fcs00").next().unwrap();
    assert_eq!((c.create_index, c.modify_index), (5, 10));
    assert_eq!(t.node("fcs00").unwrap().modify_index, 5, "node unchanged");
}

#[test]
fn a_check_for_an_unknown_instance_fails_and_changes_nothing() {
    let mut t = CatalogTable::default();
    let r = Registration {
        node: node("fcc00"),
        checks: vec![check("c", "nope", CheckStatus::Passing)],
        ..Registration::default()
    };
    let res = register(&mut t, 3, r);
    assert!(
        matches!(res, CommandResult::Failed(ref m) if m.contains("Unknown service ID")),
        "{res:?}"
    );
    assert!(t.node("fcc00").is_none(), "the node was not stored either");
    assert_eq!(t.table_index(), 0);
    assert_eq!(t.last_index, 3);
}

#[test]
fn deregistering_an_instance_removes_its_checks_but_not_node_checks() {
    let mut t = CatalogTable::default();
    fcs(&mut t, 1);
    register(
        &mut t,
        2,
        Registration {
            node: node("fcs00"),
            checks: vec![check("disk", "", CheckStatus::Passing)],
            ..Registration::default()
        },
    );
    let d = CatalogCommand::Deregister {
        node: "fcs00".into(),
        service_id: Some("fcs".into()),
        check_id: None,
    };
    assert_eq!(t.apply(3, &d), CommandResult::Bool(true));
    let ids: Vec<_> = t.node_checks("fcs00").map(|c| c.check_id.clone()).collect();
    assert_eq!(ids, ["disk"]);
    assert_eq!(t.node_services("fcs00").count(), 0);
    assert_eq!(t.table_index(), 3);
    // Removing it again changes nothing.
    t.apply(4, &d);
    assert_eq!(t.table_index(), 3);
    // The whole node.
    let all = CatalogCommand::Deregister {
        node: "fcs00".into(),
        service_id: None,
        check_id: None,
    };
    t.apply(5, &all);
    assert_eq!(t.nodes().count(), 0);
    assert_eq!(t.node_checks("fcs00").count(), 0);
    t.validate().unwrap();
}

#[test]
fn sync_node_replaces_agent_rows_and_keeps_serf_health() {
    let mut t = CatalogTable::default();
    fcs(&mut t, 1);
    t.apply(
        2,
        &CatalogCommand::NodeHealth {
            node: "fcs00".into(),
            status: CheckStatus::Passing,
            output: "alive".into(),
        },
    );
    // The agent now knows only "web", with its own check.
    let sync = NodeSync {
        node: node("fcs00"),
        services: vec![svc("web", "web", 80)],
        checks: vec![check("service:web", "web", CheckStatus::Warning)],
    };
    t.apply(3, &CatalogCommand::SyncNode(Box::new(sync.clone())));
    let services: Vec<_> = t.node_services("fcs00").map(|s| s.id.clone()).collect();
    assert_eq!(services, ["web"]);
    let checks: Vec<_> = t.node_checks("fcs00").map(|c| c.check_id.clone()).collect();
    assert_eq!(checks, [SERF_HEALTH_CHECK, "service:web"]);
    assert_eq!(t.table_index(), 3);
    // The same sync again changes nothing.
    t.apply(4, &CatalogCommand::SyncNode(Box::new(sync)));
    assert_eq!(t.table_index(), 3);
    t.validate().unwrap();
}

#[test]
fn node_health_ignores_unknown_nodes_and_sets_serf_health() {
    let mut t = CatalogTable::default();
    let h = |status| CatalogCommand::NodeHealth {
        node: "fcs00".into(),
        status,
        output: String::new(),
    };
    t.apply(1, &h(CheckStatus::Critical));
    assert_eq!(t.table_index(), 0);
    fcs(&mut t, 2);
    t.apply(3, &h(CheckStatus::Critical));
    let serf = t
        .node_checks("fcs00")
        .find(|c| c.check_id == SERF_HEALTH_CHECK)
        .unwrap();
    assert_eq!(serf.status, CheckStatus::Critical);
    assert_eq!(serf.r#type, "serf");
}

#[test]
fn select_service_returns_its_nodes_and_relevant_checks() {
    let mut t = CatalogTable::default();
    fcs(&mut t, 1);
    register(
        &mut t,
        2,
        Registration {
            node: node("fcs00"),
            service: Some(svc("other", "other", 1)),
            checks: vec![
                check("other-check", "other", CheckStatus::Critical),
                check("node-check", "", CheckStatus::Passing),
            ],
            ..Registration::default()
        },
    );
    register(
        &mut t,
        3,
        Registration {
            node: node("fcc00"),
            ..Registration::default()
        },
    );
    let slice = t.select(&CatalogQuery::Service { name: "fcs".into() });
    assert_eq!(slice.nodes.len(), 1);
    assert_eq!(slice.services.len(), 1);
    let checks: Vec<_> = slice
        .checks_for("fcs00", "fcs")
        .map(|c| c.check_id.as_str())
        .collect();
    assert_eq!(checks, ["node-check", "service:fcs"]);
    assert_eq!(t.select(&CatalogQuery::Nodes).nodes.len(), 2);
    let critical = t.select(&CatalogQuery::ChecksInState {
        state: Some(CheckStatus::Critical),
    });
    assert_eq!(critical.checks.len(), 1);
    assert!(t
        .select(&CatalogQuery::Node {
            node: "nope".into()
        })
        .nodes
        .is_empty());
}

#[test]
fn snapshot_round_trips_through_the_state_machine() {
    use crate::state::{Command, StateMachine};
    let mut sm = StateMachine::new();
    sm.apply(
        1,
        &Command::Catalog(CatalogCommand::Register(Box::new(Registration {
            node: node("fcs00"),
            service: Some(svc("fcs", "fcs", 8181)),
            ..Registration::default()
        }))),
    );
    let bytes = sm.snapshot();
    let back = StateMachine::restore(&bytes).unwrap();
    assert_eq!(back, sm);
    assert_eq!(back.digest(), sm.digest());
    assert_ne!(sm.digest(), StateMachine::new().digest());
}

#[test]
fn commands_round_trip_through_the_log_encoding() {
    use crate::state::Command;
    let cmds = [
        Command::Catalog(CatalogCommand::Register(Box::new(Registration {
            node: node("a"),
            ..Registration::default()
        }))),
        Command::Catalog(CatalogCommand::Deregister {
            node: "a".into(),
            service_id: None,
            check_id: Some("c".into()),
        }),
        Command::Catalog(CatalogCommand::SyncNode(Box::default())),
        Command::Catalog(CatalogCommand::NodeHealth {
            node: "a".into(),
            status: CheckStatus::Warning,
            output: "x".into(),
        }),
    ];
    for c in cmds {
        let json = serde_json::to_string(&c).unwrap();
        let back: Command = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c, "{json}");
        assert!(c.encoded_len_bound() >= json.len());
    }
}

#[test]
fn validate_finds_damage() {
    let mut t = CatalogTable::default();
    fcs(&mut t, 1);
    let mut bad = t.clone();
    bad.nodes.clear();
    assert!(bad.validate().unwrap_err().contains("unknown node"));
    let mut bad = t.clone();
    bad.table_index = 0;
    assert!(bad.validate().is_err());
}
