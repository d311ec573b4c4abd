//! Snapshots of a 10,000-key state of 128 B values (about 1.4 MB of data):
//! building one (`StateMachine::snapshot`: log compaction, and a leader
//! sending a new or lagging server its state) and restoring one
//! (`StateMachine::restore`: a server starting from its data dir or
//! installing the leader's snapshot). Both run on the server's executor,
//! so they bound how long a join or a restart stalls that server.
//!
//! Baseline in the same run: the version 1 format (JSON of the KV table,
//! which this build still restores for upgrades) is built the way the old
//! build wrote it, and restored through the same public entry point, so
//! `v1_json / v2_binary` is the gain of the binary format.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_benches::{kv_state, KEYS, VALUE_LEN};
use mesh_core::state::{StateMachine, SNAPSHOT_MAGIC};

/// The version 1 snapshot of `sm`: `MSSM`, version byte 1, then
/// `{"last_applied":..,"kv":<KvStore as JSON>}` (the layout in
/// `mesh_core::state`'s module docs).
fn snapshot_v1(sm: &StateMachine) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.push(1);
    serde_json::to_writer(
        &mut out,
        &serde_json::json!({ "last_applied": sm.last_applied(), "kv": sm.kv() }),
    )
    .expect("a KV store serializes");
    out
}

fn snapshot(c: &mut Criterion) {
    let sm = kv_state(KEYS, VALUE_LEN);
    let v2 = sm.snapshot();
    let v1 = snapshot_v1(&sm);
    // The baseline must be a snapshot this build accepts, of the same state.
    assert_eq!(StateMachine::restore(&v1).expect("v1 restores"), sm);
    assert_eq!(StateMachine::restore(&v2).expect("v2 restores"), sm);

    let mut g = c.benchmark_group("snapshot/build_10k_keys_128B");
    g.throughput(Throughput::Elements(KEYS as u64));
    g.bench_function("v2_binary", |b| b.iter(|| sm.snapshot()));
    g.bench_function("v1_json", |b| b.iter(|| snapshot_v1(&sm)));
    g.finish();

    let mut g = c.benchmark_group("snapshot/restore_10k_keys_128B");
    g.throughput(Throughput::Elements(KEYS as u64));
    g.bench_function("v2_binary", |b| {
        b.iter(|| StateMachine::restore(&v2).expect("valid snapshot"))
    });
    g.bench_function("v1_json", |b| {
        b.iter(|| StateMachine::restore(&v1).expect("valid snapshot"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = snapshot
}
criterion_main!(benches);
