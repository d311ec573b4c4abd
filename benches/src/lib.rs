//! Fixtures shared by the criterion benchmarks in `benches/benches/`: states,
//! nodes and rows built only through mesh-core's public API, deterministic
//! (no randomness), so two runs measure the same work.
//!
//! Run the benchmarks with `cargo bench -p mesh-benches` (README: "Benchmarks
//! and fuzzing").

use std::collections::BTreeMap;

use mesh_core::state::catalog::{
    CatalogCommand, CheckStatus, HealthCheck, Node, NodeService, NodeSync, Registration,
};
use mesh_core::state::{Command, KvCommand, StateMachine};
use serde_json::{json, Value};

/// Keys in the KV states the benchmarks use (the end-to-end load
/// writes 10,000 keys of 128 B).
pub const KEYS: usize = 10_000;
/// Value size of those keys.
pub const VALUE_LEN: usize = 128;

/// The name of key `i`: `bench/kNNNNN`, so keys share a prefix as a
/// service's configuration tree would.
pub fn key(i: usize) -> String {
    format!("bench/k{i:05}")
}

/// A value of `len` bytes that is not all one byte (so nothing can treat it
/// as trivially compressible or zero).
pub fn value(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

/// A `KvSet` command.
pub fn kv_set(key: String, value: Vec<u8>) -> Command {
    Command::Kv(KvCommand::Set {
        key,
        value,
        flags: 0,
    })
}

/// A state holding `n` keys of `value_len` bytes, written at indexes
/// `1..=n`; its `last_applied` is `n`.
pub fn kv_state(n: usize, value_len: usize) -> StateMachine {
    let mut sm = StateMachine::new();
    for i in 0..n {
        let r = sm.apply(i as u64 + 1, &kv_set(key(i), value(value_len, i)));
        assert_eq!(r, mesh_core::state::CommandResult::Bool(true));
    }
    sm
}

/// A node row like a client agent's (`fcs00`-style), named `name`.
pub fn node(name: &str, i: usize) -> Node {
    Node {
        id: format!("00000000-0000-0000-0000-{i:012}"),
        node: name.to_string(),
        address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
        datacenter: "dc1".into(),
        tagged_addresses: BTreeMap::new(),
        // Alternating in pairs, so it is independent of `service(i)`'s tags.
        meta: BTreeMap::from([(
            "env".to_string(),
            ["prod", "staging"][i / 2 % 2].to_string(),
        )]),
        create_index: 0,
        modify_index: 0,
    }
}

/// Service instance `i`: a few tags and a meta entry, as a config file
/// would give.
pub fn service(i: usize) -> NodeService {
    NodeService {
        id: format!("svc{i}"),
        service: format!("svc{}", i % 10),
        tags: vec![["v1", "v2"][i % 2].to_string(), "primary".to_string()],
        port: 8000 + (i % 1000) as u16,
        meta: BTreeMap::from([("version".to_string(), format!("1.{}", i % 7))]),
        ..NodeService::default()
    }
}

/// The TCP check of service instance `i` on `node`.
pub fn check(node: &str, i: usize, status: CheckStatus) -> HealthCheck {
    HealthCheck {
        node: node.to_string(),
        check_id: format!("service:svc{i}"),
        name: format!("svc{i} tcp"),
        status,
        service_id: format!("svc{i}"),
        service_name: format!("svc{}", i % 10),
        service_tags: service(i).tags,
        r#type: "tcp".into(),
        ..HealthCheck::default()
    }
}

/// A `CatalogRegister` of node `node_name`'s instance `i` with its check.
pub fn register(node_name: &str, node_i: usize, i: usize, status: CheckStatus) -> Command {
    Command::Catalog(CatalogCommand::Register(Box::new(Registration {
        node: node(node_name, node_i),
        skip_node_update: false,
        service: Some(service(i)),
        checks: vec![check(node_name, i, status)],
    })))
}

/// The whole agent-owned state of a node with `services` instances, each
/// with one check, all in `status`.
pub fn node_sync(node_name: &str, node_i: usize, services: usize, status: CheckStatus) -> NodeSync {
    NodeSync {
        node: node(node_name, node_i),
        services: (0..services).map(service).collect(),
        checks: (0..services).map(|i| check(node_name, i, status)).collect(),
    }
}

/// A catalog of `nodes` nodes (`node000`...) with `services` instances
/// each, applied as `CatalogSyncNode` commands after `sm`'s last entry.
pub fn populate_catalog(sm: &mut StateMachine, nodes: usize, services: usize) {
    for n in 0..nodes {
        let name = format!("node{n:03}");
        let cmd = Command::Catalog(CatalogCommand::SyncNode(Box::new(node_sync(
            &name,
            n,
            services,
            CheckStatus::Passing,
        ))));
        let index = sm.last_applied() + 1;
        sm.apply(index, &cmd);
    }
}

/// `n` rows shaped as `/v1/health/service/:name` answers them
/// (`{"Node":..,"Service":..,"Checks":[..]}`, as mesh-net's
/// `health_service_row` builds them): the input of `?filter=`. One node
/// per row; every third row has a critical check.
pub fn health_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let name = format!("node{i:04}");
            let status = if i % 3 == 0 {
                CheckStatus::Critical
            } else {
                CheckStatus::Passing
            };
            json!({
                "Node": node(&name, i),
                "Service": service(i),
                "Checks": [check(&name, i, status)],
            })
        })
        .collect()
}
