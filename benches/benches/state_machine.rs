//! State machine apply: the work every server does for every committed Raft
//! entry, on the executor that also answers reads. Its cost bounds the
//! write throughput of a cluster whatever the disk and network do, so a
//! regression here shows up directly in the KV write targets of issue 11
//! (≥ 2× etcd at 64 clients).
//!
//! States are built once per group; each iteration applies one entry at the
//! next Raft index to the same state, as a server does.

mod common;

use std::cell::RefCell;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mesh_benches::{
    kv_set, kv_state, node_sync, populate_catalog, register, value, KEYS, VALUE_LEN,
};
use mesh_core::state::catalog::{CatalogCommand, CheckStatus};
use mesh_core::state::{Command, CommandResult, KvCommand, StateMachine};

/// KV writes into a 10,000-key state of 128 B values (the issue's
/// end-to-end load): a `KvSet` overwriting an existing key (`PUT
/// /v1/kv/<key>`), a `KvCas` that succeeds (`?cas=<ModifyIndex>`: the
/// read-modify-write of locks and leader election clients), and a `KvCas`
/// refused for a stale index (must cost no more than a lookup).
fn kv(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply/kv_10k_keys");
    g.throughput(Throughput::Elements(1));

    // Prebuilt commands: the iteration measures apply, not command building.
    let sets: Vec<Command> = (0..KEYS)
        .map(|i| kv_set(mesh_benches::key(i), value(VALUE_LEN, i + 1)))
        .collect();
    let mut sm = kv_state(KEYS, VALUE_LEN);
    let mut i = 0usize;
    g.bench_function("put_overwrite_128B", |b| {
        b.iter(|| {
            let cmd = &sets[i % KEYS];
            i += 1;
            let index = sm.last_applied() + 1;
            sm.apply(index, cmd)
        })
    });

    // A successful CAS needs the key's current ModifyIndex, so the command
    // is built per iteration (outside the timed part, by iter_batched).
    // Setup and routine both reach the state, hence the RefCell.
    let sm = RefCell::new(kv_state(KEYS, VALUE_LEN));
    let v = value(VALUE_LEN, 7);
    let mut i = 0usize;
    g.bench_function("cas_success_128B", |b| {
        b.iter_batched(
            || {
                let key = mesh_benches::key(i % KEYS);
                i += 1;
                let index = sm.borrow().kv().get(&key).expect("key exists").modify_index;
                Command::Kv(KvCommand::Cas {
                    key,
                    value: v.clone(),
                    flags: 0,
                    index,
                })
            },
            |cmd| {
                let mut sm = sm.borrow_mut();
                let index = sm.last_applied() + 1;
                let r = sm.apply(index, &cmd);
                debug_assert_eq!(r, CommandResult::Bool(true));
                r
            },
            BatchSize::SmallInput,
        )
    });

    let mut sm = kv_state(KEYS, VALUE_LEN);
    let stale: Vec<Command> = (0..KEYS)
        .map(|i| {
            Command::Kv(KvCommand::Cas {
                key: mesh_benches::key(i),
                value: value(VALUE_LEN, i),
                flags: 0,
                // Every key was written at an index ≥ 1 and 0 means "only
                // if absent": refused.
                index: 0,
            })
        })
        .collect();
    let mut i = 0usize;
    g.bench_function("cas_refused_128B", |b| {
        b.iter(|| {
            let cmd = &stale[i % KEYS];
            i += 1;
            let index = sm.last_applied() + 1;
            sm.apply(index, cmd)
        })
    });
    g.finish();
}

/// Catalog writes into a catalog of 100 nodes × 10 services (1,000
/// instances, 1,000 checks): a `CatalogRegister` of one instance with its
/// check (`PUT /v1/catalog/register`, `mesh services register`), and a
/// `CatalogSyncNode` of a whole 10-service node (what anti-entropy sends
/// on every change of a client agent). Both alternate a check between
/// passing and critical, so every apply changes a row (the path that
/// writes, not the no-op comparison).
fn catalog(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply/catalog_100_nodes");
    g.throughput(Throughput::Elements(1));

    let mut sm = StateMachine::new();
    populate_catalog(&mut sm, 100, 10);
    let flips: Vec<Command> = [CheckStatus::Passing, CheckStatus::Critical]
        .into_iter()
        .flat_map(|s| (0..10).map(move |i| register("node050", 50, i, s)))
        .collect();
    let mut i = 0usize;
    g.bench_function("register_1_service", |b| {
        b.iter(|| {
            // Services 0..10 passing, then 0..10 critical, and around.
            let cmd = &flips[i % flips.len()];
            i += 1;
            let index = sm.last_applied() + 1;
            sm.apply(index, cmd)
        })
    });

    let mut sm = StateMachine::new();
    populate_catalog(&mut sm, 100, 10);
    let syncs: Vec<Command> = [CheckStatus::Critical, CheckStatus::Passing]
        .into_iter()
        .map(|s| {
            let mut sync = node_sync("node050", 50, 10, CheckStatus::Passing);
            sync.checks[3].status = s;
            Command::Catalog(CatalogCommand::SyncNode(Box::new(sync)))
        })
        .collect();
    let mut i = 0usize;
    g.bench_function("sync_node_10_services", |b| {
        b.iter(|| {
            let cmd = &syncs[i % 2];
            i += 1;
            let index = sm.last_applied() + 1;
            sm.apply(index, cmd)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = kv, catalog
}
criterion_main!(benches);
