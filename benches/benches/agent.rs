//! Client-agent work that scales with the size of a node or a listing.
//!
//! - Anti-entropy (`mesh_core::anti_entropy`): every minute (plus stagger)
//!   each agent reads the catalog's rows for its node and compares them
//!   with its local services and checks before deciding whether to write.
//!   With thousands of agents this comparison runs on every agent every
//!   round, so it must stay far below the read that feeds it.
//! - `?filter=` (`mesh_core::filter`): parsed once per request, evaluated
//!   on every row of a listing such as `/v1/health/service/:name`, inside
//!   the HTTP handler. Baseline in the same run: the same predicate written
//!   by hand in Rust over the same JSON rows, so `matches / native` is the
//!   price of interpreting the expression.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mesh_benches::{check, health_rows, node, service};
use mesh_core::anti_entropy::{AntiEntropy, Output, SyncTiming};
use mesh_core::filter::Filter;
use mesh_core::state::catalog::{CatalogCommand, CatalogQuery, CatalogSlice, CheckStatus};
use mesh_core::state::{Command, StateMachine};
use serde_json::Value;

const SERVICES: usize = 50;

/// An agent for `fcs00` with 50 services, each with a check, synced once
/// to a catalog and now waiting for the catalog's view of its node (the
/// periodic round's `Fetch` is in flight); that view; and the time.
fn agent_awaiting_view() -> (AntiEntropy, CatalogSlice, u64) {
    let mut ae = AntiEntropy::new(SyncTiming::default(), node("fcs00", 0), 7, 0);
    // Registered through the API, not loaded at start: no read first.
    ae.loaded();
    for i in 0..SERVICES {
        ae.add_service(0, service(i));
        ae.add_check(0, check("fcs00", i, CheckStatus::Passing));
    }
    ae.handle_timeout(0);
    let Some(Output::Sync { generation, sync }) = ae.poll_output() else {
        panic!("a new agent syncs at once");
    };
    let mut sm = StateMachine::new();
    sm.apply(1, &Command::Catalog(CatalogCommand::SyncNode(sync)));
    ae.sync_done(0, generation);
    let now = ae.poll_timeout().expect("the next round is scheduled");
    ae.handle_timeout(now);
    assert_eq!(ae.poll_output(), Some(Output::Fetch));
    let view = sm.catalog().select(&CatalogQuery::Node {
        node: "fcs00".into(),
    });
    assert_eq!(view.services.len(), SERVICES);
    (ae, view, now)
}

/// `catalog_view` on a 50-service, 50-check node: `in_sync` when the
/// catalog holds exactly the local state (the common case: no write), and
/// `one_service_differs` when one instance's port changed behind the
/// agent's back (the comparison then queues a full sync, included).
fn anti_entropy(c: &mut Criterion) {
    let (ae, view, now) = agent_awaiting_view();
    {
        let mut probe = ae.clone();
        probe.catalog_view(now, &view);
        assert!(probe.in_sync() && probe.poll_output().is_none());
    }
    let mut changed = view.clone();
    changed.services[SERVICES / 2].service.port += 1;

    let mut g = c.benchmark_group("anti_entropy/compare_50_services");
    g.throughput(Throughput::Elements(SERVICES as u64));
    g.bench_function("in_sync", |b| {
        b.iter_batched(
            || ae.clone(),
            |mut ae| {
                ae.catalog_view(now, &view);
                ae
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("one_service_differs", |b| {
        b.iter_batched(
            || ae.clone(),
            |mut ae| {
                ae.catalog_view(now, &changed);
                ae
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A typical health filter: a tag, the checks' status and node metadata.
const EXPR: &str =
    "Service.Tags contains v2 and Checks.Status == passing and Node.Meta.env == prod";

/// `EXPR` written by hand over the same rows: the baseline.
fn native(row: &Value) -> bool {
    // Short-circuits left to right, as the filter's `and` does.
    row["Service"]["Tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "v2"))
        && row["Checks"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["Status"] == "passing"))
        && row["Node"]["Meta"]["env"] == "prod"
}

/// `Filter::parse` of `EXPR`, and `matches` over 1,000 health rows
/// against the hand-written predicate.
fn filter(c: &mut Criterion) {
    let rows = health_rows(1_000);
    let f = Filter::parse(EXPR).expect("valid filter");
    let kept = rows
        .iter()
        .filter(|r| f.matches(r).expect("evaluates"))
        .count();
    assert_eq!(kept, rows.iter().filter(|r| native(r)).count());
    assert!(kept > 0 && kept < rows.len(), "the filter must select");

    let mut g = c.benchmark_group("filter");
    g.bench_function("parse", |b| b.iter(|| Filter::parse(EXPR).expect("valid")));
    g.finish();

    let mut g = c.benchmark_group("filter/1000_health_rows");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("matches", |b| {
        b.iter(|| {
            rows.iter()
                .filter(|r| f.matches(r).expect("evaluates"))
                .count()
        })
    });
    g.bench_function("native", |b| {
        b.iter(|| rows.iter().filter(|r| native(r)).count())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = anti_entropy, filter
}
criterion_main!(benches);
