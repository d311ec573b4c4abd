use super::*;
use crate::state::catalog::{CatalogTable, ServiceEntry};

fn timing() -> SyncTiming {
    SyncTiming {
        interval_ms: 1_000,
        min_gap_ms: 100,
        first_backoff_ms: 50,
        max_backoff_ms: 400,
    }
}

fn node() -> Node {
    Node {
        node: "fcs00".into(),
        address: "10.0.0.3".into(),
        ..Node::default()
    }
}

fn fcs() -> NodeService {
    NodeService {
        id: "fcs".into(),
        service: "fcs".into(),
        port: 8181,
        ..NodeService::default()
    }
}

fn tcp_check() -> HealthCheck {
    HealthCheck {
        check_id: "service:fcs".into(),
        name: "fcs tcp".into(),
        service_id: "fcs".into(),
        r#type: "tcp".into(),
        ..HealthCheck::default()
    }
}

fn drain(ae: &mut AntiEntropy) -> Vec<Output> {
    std::iter::from_fn(|| ae.poll_output()).collect()
}

/// Applies the one sync it expects in `outs` to `table` and reports it done.
fn commit(
    ae: &mut AntiEntropy,
    table: &mut CatalogTable,
    index: &mut u64,
    now: u64,
    outs: Vec<Output>,
) {
    use crate::state::catalog::CatalogCommand;
    use crate::state::TableState;
    let [Output::Sync { generation, sync }] = outs.as_slice() else {
        panic!("expected one sync, got {outs:?}");
    };
    *index += 1;
    table.apply(*index, &CatalogCommand::SyncNode(sync.clone()));
    ae.sync_done(now, *generation);
}

#[test]
fn the_first_round_syncs_at_once_then_changes_sync_after_the_gap() {
    let mut ae = AntiEntropy::new(timing(), node(), 7, 0);
    ae.add_service(0, fcs());
    ae.handle_timeout(0);
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { generation: 2, sync }] if sync.services.len() == 1)
    );
    // A change while the sync is in flight waits for it.
    ae.add_check(10, tcp_check());
    ae.handle_timeout(10);
    assert!(drain(&mut ae).is_empty());
    assert_eq!(ae.poll_timeout(), None, "in flight");
    ae.sync_done(20, 2);
    // The gap since the last sync (at 0) is not over yet.
    assert!(drain(&mut ae).is_empty());
    assert_eq!(ae.poll_timeout(), Some(100));
    ae.handle_timeout(100);
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { generation: 3, sync }] if sync.checks.len() == 1)
    );
    ae.sync_done(110, 3);
    assert!(ae.in_sync());
    assert_eq!(ae.sync_count(), 2);
}

#[test]
fn a_flapping_check_costs_at_most_one_write_per_gap() {
    let mut ae = AntiEntropy::new(timing(), node(), 1, 0);
    let (mut table, mut index) = (CatalogTable::default(), 0);
    ae.add_service(0, fcs());
    ae.handle_timeout(0);
    ae.add_check(0, tcp_check());
    ae.handle_timeout(0);
    let outs = drain(&mut ae);
    commit(&mut ae, &mut table, &mut index, 0, outs);
    let mut writes = 0;
    for now in 1..1_000u64 {
        let status = if now % 2 == 0 {
            CheckStatus::Passing
        } else {
            CheckStatus::Critical
        };
        ae.update_check(now, "service:fcs", status, "");
        ae.handle_timeout(now);
        if ae.poll_timeout().is_some_and(|t| t <= now) {
            ae.handle_timeout(now);
        }
        for o in drain(&mut ae) {
            match o {
                Output::Sync { .. } => {
                    writes += 1;
                    commit(&mut ae, &mut table, &mut index, now, vec![o]);
                }
                Output::Fetch => {
                    ae.catalog_view(
                        now,
                        &table.select(&crate::state::catalog::CatalogQuery::Node {
                            node: "fcs00".into(),
                        }),
                    );
                }
            }
        }
    }
    assert!(writes <= 10, "{writes} writes in 1 s with a 100 ms gap");
    assert!(writes >= 9, "{writes}: changes must still get through");
}

#[test]
fn output_only_changes_wait_for_the_periodic_round() {
    let mut ae = AntiEntropy::new(timing(), node(), 3, 0);
    let (mut table, mut index) = (CatalogTable::default(), 0);
    ae.add_check(
        0,
        HealthCheck {
            service_id: String::new(),
            ..tcp_check()
        },
    );
    ae.handle_timeout(0);
    // A check present at start: the catalog is read first (it is empty).
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.catalog_view(0, &node_view(&table));
    let outs = drain(&mut ae);
    commit(&mut ae, &mut table, &mut index, 0, outs);
    ae.update_check(
        200,
        "service:fcs",
        CheckStatus::Critical,
        "connection refused",
    );
    assert!(drain(&mut ae).is_empty());
    assert!(ae.in_sync());
    let round = ae.poll_timeout().unwrap();
    assert!((1_000..=1_125).contains(&round), "{round}");
    ae.handle_timeout(round);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    let view = table.select(&crate::state::catalog::CatalogQuery::Node {
        node: "fcs00".into(),
    });
    ae.catalog_view(round, &view);
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.checks[0].output == "connection refused")
    );
}

#[test]
fn the_periodic_round_repairs_the_catalog_and_writes_nothing_when_equal() {
    let mut ae = AntiEntropy::new(timing(), node(), 3, 0);
    let (mut table, mut index) = (CatalogTable::default(), 0);
    ae.add_service(0, fcs());
    ae.handle_timeout(0);
    let outs = drain(&mut ae);
    commit(&mut ae, &mut table, &mut index, 0, outs);
    // Equal: a fetch, no write.
    let round = ae.poll_timeout().unwrap();
    ae.handle_timeout(round);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    let mut view = table.select(&crate::state::catalog::CatalogQuery::Node {
        node: "fcs00".into(),
    });
    // The servers' own check does not count as a difference.
    view.checks.push(HealthCheck {
        check_id: SERF_HEALTH_CHECK.into(),
        node: "fcs00".into(),
        ..HealthCheck::default()
    });
    ae.catalog_view(round, &view);
    assert!(drain(&mut ae).is_empty());
    // Someone removed the service through the catalog API: the next round restores it.
    view.services.clear();
    let round = ae.poll_timeout().unwrap();
    ae.handle_timeout(round);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.catalog_view(round, &view);
    let outs = drain(&mut ae);
    assert!(matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.services.len() == 1));
    // And a row the agent does not know is a difference too.
    let mut extra = view.clone();
    extra.services = vec![
        ServiceEntry {
            node: "fcs00".into(),
            service: fcs(),
        },
        ServiceEntry {
            node: "fcs00".into(),
            service: NodeService {
                id: "ghost".into(),
                service: "ghost".into(),
                ..NodeService::default()
            },
        },
    ];
    assert!(ae.differs(&extra));
}

#[test]
fn failures_back_off_with_jitter_up_to_the_limit() {
    let mut ae = AntiEntropy::new(timing(), node(), 9, 0);
    ae.add_service(0, fcs());
    ae.handle_timeout(0);
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let outs = drain(&mut ae);
        assert_eq!(outs.len(), 1, "{outs:?}");
        ae.sync_failed(now);
        let at = ae.poll_timeout().unwrap();
        delays.push(at - now);
        now = at;
        ae.handle_timeout(now);
    }
    assert!(delays[0] >= 50 && delays[0] <= 62, "{delays:?}");
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0] || w[1] >= 400),
        "{delays:?}"
    );
    assert!(delays.iter().all(|d| *d <= 500), "{delays:?}");
    // Success resets the backoff.
    let outs = drain(&mut ae);
    let [Output::Sync { generation, .. }] = outs.as_slice() else {
        panic!()
    };
    ae.sync_done(now, *generation);
    assert!(ae.in_sync());
}

#[test]
fn removing_a_service_removes_its_checks_and_syncs() {
    let mut ae = AntiEntropy::new(timing(), node(), 3, 0);
    ae.add_service(0, fcs());
    ae.handle_timeout(0);
    ae.add_check(0, tcp_check());
    ae.handle_timeout(0);
    assert_eq!(ae.checks()["service:fcs"].service_name, "fcs");
    drain(&mut ae);
    ae.sync_done(0, 2);
    ae.handle_timeout(100);
    assert_eq!(drain(&mut ae).len(), 1);
    ae.sync_done(100, 3);
    assert!(ae.remove_service(200, "fcs"));
    ae.handle_timeout(200);
    assert!(ae.checks().is_empty());
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.services.is_empty() && sync.checks.is_empty())
    );
    assert!(!ae.remove_service(300, "fcs"));
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let run = |seed| {
        let mut ae = AntiEntropy::new(timing(), node(), seed, 0);
        let mut times = Vec::new();
        for _ in 0..5 {
            drain(&mut ae);
            ae.sync_failed(0);
            times.push(ae.poll_timeout().unwrap());
            ae.handle_timeout(times[times.len() - 1]);
        }
        times
    };
    assert_eq!(run(5), run(5));
}

#[test]
fn a_reachable_cluster_cuts_a_pending_backoff_short() {
    let mut ae = AntiEntropy::new(timing(), node(), 9, 0);
    ae.add_service(0, fcs());
    let mut now = 0;
    for _ in 0..4 {
        ae.handle_timeout(now);
        assert_eq!(drain(&mut ae).len(), 1);
        ae.sync_failed(now);
        now = ae.poll_timeout().unwrap();
    }
    // A retry is pending well in the future; the cluster comes back.
    let pending = ae.poll_timeout().unwrap();
    let back = pending - 300;
    ae.handle_timeout(back);
    assert!(drain(&mut ae).is_empty(), "still backing off");
    ae.reachable(back);
    assert_eq!(ae.poll_timeout(), Some(back));
    ae.handle_timeout(back);
    assert!(matches!(drain(&mut ae).as_slice(), [Output::Sync { .. }]));
    // Without a pending retry it changes nothing.
    let mut quiet = AntiEntropy::new(timing(), node(), 9, 0);
    quiet.reachable(5);
    assert_eq!(quiet.poll_timeout(), Some(0));
}

/// A restarted agent: its service and check come back from the data dir
/// with the check's initial status (critical).
fn restarted(now: u64) -> AntiEntropy {
    let mut ae = AntiEntropy::new(timing(), node(), 5, now);
    ae.add_service(now, fcs());
    ae.add_check(
        now,
        HealthCheck {
            status: CheckStatus::Critical,
            ..tcp_check()
        },
    );
    ae
}

/// The catalog as the agent left it before its restart: the check passing.
fn catalog_before_restart() -> (CatalogTable, u64) {
    let (mut table, mut index) = (CatalogTable::default(), 0);
    let mut before = AntiEntropy::new(timing(), node(), 5, 0);
    before.add_service(0, fcs());
    before.handle_timeout(0);
    let outs = drain(&mut before);
    commit(&mut before, &mut table, &mut index, 0, outs);
    before.add_check(
        200,
        HealthCheck {
            status: CheckStatus::Passing,
            output: "TCP connect ok".into(),
            ..tcp_check()
        },
    );
    before.handle_timeout(200);
    let outs = drain(&mut before);
    commit(&mut before, &mut table, &mut index, 200, outs);
    (table, index)
}

fn node_view(table: &CatalogTable) -> CatalogSlice {
    table.select(&crate::state::catalog::CatalogQuery::Node {
        node: "fcs00".into(),
    })
}

#[test]
fn a_restarted_agent_keeps_the_catalogs_status_for_checks_that_have_not_run() {
    let (table, _) = catalog_before_restart();
    let mut ae = restarted(1_000);
    ae.handle_timeout(1_000);
    // It reads before it writes.
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.catalog_view(1_005, &node_view(&table));
    // The catalog already holds everything, the passing status included:
    // nothing to write, and the agent reports the status it adopted.
    assert!(drain(&mut ae).is_empty(), "no write carrying 'critical'");
    assert!(ae.in_sync());
    assert_eq!(ae.checks()["service:fcs"].status, CheckStatus::Passing);
    assert!(ae.awaiting_catalog().is_empty());
    // The check's first run decides from then on.
    ae.update_check(1_400, "service:fcs", CheckStatus::Critical, "refused");
    ae.handle_timeout(1_400);
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.checks[0].status == CheckStatus::Critical),
        "{outs:?}"
    );
}

#[test]
fn a_check_that_ran_before_the_catalog_answered_keeps_its_own_status() {
    let (table, _) = catalog_before_restart();
    let mut ae = restarted(1_000);
    ae.handle_timeout(1_000);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.update_check(1_002, "service:fcs", CheckStatus::Critical, "refused");
    ae.catalog_view(1_005, &node_view(&table));
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.checks[0].status == CheckStatus::Critical && sync.checks[0].output == "refused"),
        "{outs:?}"
    );
}

#[test]
fn loaded_checks_the_catalog_does_not_know_sync_their_initial_status() {
    let mut ae = restarted(0);
    ae.handle_timeout(0);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.catalog_view(5, &node_view(&CatalogTable::default()));
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.checks[0].status == CheckStatus::Critical),
        "{outs:?}"
    );
    // Checks registered later are never held back for a read.
    ae.add_check(
        50,
        HealthCheck {
            check_id: "late".into(),
            name: "late".into(),
            ..HealthCheck::default()
        },
    );
    assert!(ae.awaiting_catalog().is_empty());
}

#[test]
fn a_failed_first_read_is_retried_before_any_write() {
    let mut ae = restarted(0);
    ae.handle_timeout(0);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.sync_failed(3);
    let retry = ae.poll_timeout().expect("a retry");
    ae.handle_timeout(retry);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
}

#[test]
fn a_check_registered_again_during_the_first_read_keeps_its_own_status() {
    let (table, _) = catalog_before_restart();
    let mut ae = restarted(1_000);
    ae.loaded();
    ae.handle_timeout(1_000);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    // A tool registers everything again while the read is in flight,
    // this time with an explicit status.
    ae.add_check(
        1_002,
        HealthCheck {
            status: CheckStatus::Warning,
            ..tcp_check()
        },
    );
    ae.catalog_view(1_005, &node_view(&table));
    assert_eq!(ae.checks()["service:fcs"].status, CheckStatus::Warning);
    let outs = drain(&mut ae);
    assert!(
        matches!(outs.as_slice(), [Output::Sync { sync, .. }] if sync.checks[0].status == CheckStatus::Warning),
        "{outs:?}"
    );
}

#[test]
fn a_service_removed_and_registered_again_does_not_adopt_old_statuses() {
    let (table, _) = catalog_before_restart();
    let mut ae = restarted(1_000);
    ae.loaded();
    ae.handle_timeout(1_000);
    assert_eq!(drain(&mut ae), [Output::Fetch]);
    ae.remove_service(1_001, "fcs");
    assert!(ae.awaiting_catalog().is_empty());
    ae.add_service(1_002, fcs());
    ae.add_check(1_002, tcp_check());
    ae.catalog_view(1_005, &node_view(&table));
    assert_eq!(ae.checks()["service:fcs"].status, CheckStatus::Critical);
}
