//! The five-host scenarios: consul00-02 plus the client agents fcs00 and
//! fcc00, which register `fcs` (with a TCP check on its app) and `fcc`
//! through their HTTP APIs, as users do, while a KV workload runs.
//!
//! `agents`: the leader is killed and agents keep serving and syncing; the
//! fcs app stops and its check turns critical in the catalog (and
//! `?passing` drops it), then passing; fcs00 is cut off and its node turns
//! critical, then passing after the heal; fcs00 crashes and restarts and
//! its registrations come back from its disk; a deregistration sticks.
//! Checkers: every server's catalog converges (state digests, in
//! `converge`), no acknowledged registration is lost and no acknowledged
//! deregistration returns (`checkers::registrations`), status changes
//! reach the catalog within `checkers::check_propagation::BOUND`, and
//! `X-Consul-Index` of stale catalog reads never goes back on one server.
//!
//! `agent_liveness`: fcs00's links flap (outages shorter than the failure
//! timeout) for a minute, then it is cut off for good several times:
//! counts false verdicts (live node declared critical) and measures
//! detection times.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::time::{sleep, Instant};
use mesh_core::state::catalog::{CheckStatus, SERF_HEALTH_CHECK};
use mesh_net::http_client::HttpClient;
use tracing::info;

use crate::checkers::check_propagation;
use crate::checkers::monotonic_index::MonotonicIndex;
use crate::checkers::registrations::Acknowledged;
use crate::scenarios::{rand_ms, Report, Run};

const FCS: usize = 0;
const FCC: usize = 1;

/// fcs with a TCP check on its app every second.
fn fcs_registration(app: &str) -> Vec<u8> {
    format!(
        r#"{{"Name":"fcs","ID":"fcs","Port":8181,"Tags":["v1"],
            "Check":{{"CheckID":"fcs-tcp","Name":"fcs TCP","TCP":"{app}","Interval":"1s","Timeout":"1s"}}}}"#
    )
    .into_bytes()
}

/// `fcs.service.consul` A, asked of client host `k`'s DNS from the client
/// host: `Some(addresses)` (empty for NXDOMAIN), `None` if no answer came.
async fn dns_fcs(run: &Run, k: usize) -> Option<Vec<std::net::IpAddr>> {
    let dns = run.cluster.agents[k].dns_addr();
    run.cluster
        .client
        .spawn(async move {
            let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
            let query = mesh_core::dns::a_query(7, "fcs.service.consul.").ok()?;
            sock.send_to(dns, &query).await.ok()?;
            let mut buf = vec![0u8; 1500];
            let (n, _) = madsim::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let answer = mesh_core::dns::read_answer(&buf[..n]).ok()?;
            Some(if answer.nxdomain {
                Vec::new()
            } else {
                answer.addresses
            })
        })
        .await
        .ok()
        .flatten()
}

/// Waits until fcs00's DNS answers `expected` for fcs; errors after
/// [`DNS_BOUND`] (answers must follow the catalog).
async fn wait_dns(run: &mut Run, expected: &[std::net::IpAddr], what: &str) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let got = dns_fcs(run, FCS).await;
        if got.as_deref() == Some(expected) {
            run.report.dns_ms.push(t.elapsed().as_millis() as u64);
            return Ok(());
        }
        if t.elapsed() > DNS_BOUND {
            return Err(format!(
                "DNS did not follow the catalog ({what}) within {DNS_BOUND:?}: answered {got:?}, expected {expected:?}"
            ));
        }
        run.settle(Duration::from_millis(50)).await?;
    }
}

/// How long DNS answers may lag the leader's catalog (stale reads:
/// replication to the server the agent reads from).
const DNS_BOUND: Duration = Duration::from_secs(2);

/// `PUT` through client host `k`'s agent until it answers 200 (bounded).
async fn put_agent(run: &Run, k: usize, path: &str, body: Vec<u8>) -> Result<(), String> {
    http_ok(run, run.cluster.agents[k].http_addr(), "PUT", path, &body)
        .await
        .map(|_| ())
}

/// One HTTP call from the harness's client node: status and body text.
pub(crate) async fn http(
    run: &Run,
    addr: String,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let (m, p, b) = (method.to_owned(), path.to_owned(), body.to_vec());
    let resp = run
        .cluster
        .client
        .spawn(async move {
            HttpClient::new(addr, Duration::from_secs(5))
                .request(&m, &p, b)
                .await
        })
        .await
        .map_err(|e| format!("client task failed: {e}"))?
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((resp.status, resp.text()))
}

/// An HTTP call retried until it answers 200 (bounded: 15 s); a 4xx is
/// final. Returns the body text.
pub(crate) async fn http_ok(
    run: &Run,
    addr: String,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match http(run, addr.clone(), method, path, body).await {
            Ok((200, text)) => return Ok(text),
            Ok((s, text)) if (400..500).contains(&s) => {
                return Err(format!("{method} {path} refused: {s} {text}"))
            }
            _ if Instant::now() > deadline => return Err(format!("{method} {path} kept failing")),
            _ => sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The (node, instance) pairs server `i`'s own catalog holds.
fn instances(run: &Run, i: usize) -> Option<BTreeSet<(String, String)>> {
    let s = run.cluster.server(i)?;
    Some(s.view().read(|sm| {
        sm.catalog()
            .select(&mesh_core::state::catalog::CatalogQuery::Services)
            .services
            .into_iter()
            .map(|e| (e.node, e.service.id))
            .collect()
    }))
}

/// A check's status in the current leader's catalog.
fn status_at_leader(run: &Run, node: &str, check: &str) -> Option<CheckStatus> {
    let all: Vec<usize> = run.cluster.running();
    let l = run.agreed(&all).or_else(|| {
        all.iter()
            .copied()
            .find(|i| run.cluster.server(*i).is_some_and(|s| s.is_leader()))
    })?;
    let s = run.cluster.server(l)?;
    s.view().read(|sm| {
        sm.catalog()
            .node_checks(node)
            .find(|c| c.check_id == check)
            .map(|c| c.status)
    })
}

/// Waits until `check` on `node` has `status` in the leader's catalog;
/// returns how long that took (None after `limit`).
async fn wait_status(
    run: &mut Run,
    node: &str,
    check: &str,
    status: CheckStatus,
    limit: Duration,
) -> Result<Option<Duration>, String> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if status_at_leader(run, node, check) == Some(status) {
            return Ok(Some(t.elapsed()));
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    Ok(None)
}

/// Waits for `check` on fcs00 to show `status` in the leader's catalog and
/// judges the time against `checkers::check_propagation`'s bound.
async fn propagated(
    run: &mut Run,
    check: &str,
    status: CheckStatus,
    what: &str,
) -> Result<Duration, String> {
    let took = wait_status(run, "fcs00", check, status, Duration::from_secs(10)).await?;
    check_propagation::check(what, took)
}

/// Stale blocking reads of fcs's health through every server in turn,
/// recording each server's `X-Consul-Index` sequence.
fn start_index_watch(
    run: &Run,
) -> (
    Arc<Mutex<Result<u64, String>>>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let verdict = Arc::new(Mutex::new(Ok(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let servers: Vec<String> = (0..run.cluster.servers.len())
        .map(|i| run.cluster.http_addr(i))
        .collect();
    let (v, s) = (verdict.clone(), stop.clone());
    run.cluster.client.spawn(async move {
        let mut seen: Vec<MonotonicIndex> =
            servers.iter().map(|_| MonotonicIndex::default()).collect();
        let mut last = vec![0u64; servers.len()];
        let mut round = 0usize;
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            let i = round % servers.len();
            round += 1;
            let mut c = HttpClient::new(servers[i].clone(), Duration::from_secs(3));
            let path = format!("/v1/health/service/fcs?stale&index={}&wait=500ms", last[i]);
            if let Ok(r) = c.request("GET", &path, Vec::new()).await {
                if r.status == 200 {
                    if let Some(index) = r
                        .header("x-consul-index")
                        .and_then(|h| h.parse::<u64>().ok())
                    {
                        if let Err(e) = seen[i].observe(i, index) {
                            *v.lock().expect("verdict") = Err(format!("server {i}: {e}"));
                            return;
                        }
                        last[i] = index;
                        if let Ok(n) = v.lock().expect("verdict").as_mut() {
                            *n += 1;
                        }
                    }
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
    });
    (verdict, stop)
}

pub(crate) async fn agents() -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(256).await?;
    run.cluster.add_agent_hosts();
    run.cluster.start_agent(FCS);
    sleep(rand_ms(0, 300)).await;
    run.cluster.start_agent(FCC);
    run.start_workload(2);
    let (index_verdict, index_stop) = start_index_watch(&run);
    let mut acks = Acknowledged::default();

    info!("phase: agents register fcs and fcc");
    let app = run.cluster.agents[FCS].app_addr();
    put_agent(
        &run,
        FCS,
        "/v1/agent/service/register",
        fcs_registration(&app),
    )
    .await?;
    acks.registered("fcs00", "fcs");
    let fcc = br#"{"name":"fcc","check":{"check_id":"fcc-ttl","name":"fcc reports","ttl":"10m","status":"passing"}}"#;
    put_agent(&run, FCC, "/v1/agent/service/register", fcc.to_vec()).await?;
    acks.registered("fcc00", "fcc");
    let t = Instant::now();
    loop {
        let all_have = (0..3).all(|i| {
            instances(&run, i).is_some_and(|c| {
                c.contains(&("fcs00".into(), "fcs".into()))
                    && c.contains(&("fcc00".into(), "fcc".into()))
            })
        });
        if all_have && status_at_leader(&run, "fcs00", "fcs-tcp") == Some(CheckStatus::Passing) {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err("agents' registrations did not reach every server within 10 s".into());
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    run.report
        .agent_sync_ms
        .push(t.elapsed().as_millis() as u64);
    let fcs_ip = run.cluster.agents[FCS].ip;
    wait_dns(&mut run, &[fcs_ip], "fcs registered and passing").await?;

    info!("phase: the leader dies; agents keep syncing");
    let leader = run.kill_leader().await?;
    put_agent(
        &run,
        FCC,
        "/v1/agent/service/register",
        br#"{"Name":"late","Port":9001}"#.to_vec(),
    )
    .await?;
    acks.registered("fcc00", "late");
    sleep(rand_ms(0, 1000)).await;
    run.cluster.start(leader);

    info!("phase: the fcs app stops; its check turns critical");
    run.cluster.agents[FCS]
        .app_up
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let took = propagated(
        &mut run,
        "fcs-tcp",
        CheckStatus::Critical,
        "fcs's critical status",
    )
    .await?;
    run.report.check_ms.push(took.as_millis() as u64);
    wait_dns(&mut run, &[], "fcs critical: NXDOMAIN").await?;
    run.cluster.agents[FCS]
        .app_up
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let took = propagated(
        &mut run,
        "fcs-tcp",
        CheckStatus::Passing,
        "fcs's passing status",
    )
    .await?;
    run.report.check_ms.push(took.as_millis() as u64);
    wait_dns(&mut run, &[fcs_ip], "fcs passing again").await?;

    info!("phase: fcs00 is cut off; its node turns critical, then passing");
    run.cluster.isolate_agent(FCS);
    let took = wait_status(
        &mut run,
        "fcs00",
        SERF_HEALTH_CHECK,
        CheckStatus::Critical,
        Duration::from_secs(15),
    )
    .await?;
    let took = took.ok_or("fcs00 was cut off but its node never turned critical")?;
    if took > LIVENESS_BOUND {
        return Err(format!(
            "fcs00's failure detected after {took:?}, over {LIVENESS_BOUND:?}"
        ));
    }
    run.report.detect_ms.push(took.as_millis() as u64);
    // While cut off, fcs stops: the agent sees its check fail but cannot
    // tell the catalog. After the heal, anti-entropy must carry it over.
    run.cluster.agents[FCS]
        .app_up
        .store(false, std::sync::atomic::Ordering::SeqCst);
    sleep(rand_ms(1500, 3000)).await;
    run.cluster.heal_agent(FCS);
    let took = propagated(
        &mut run,
        "fcs-tcp",
        CheckStatus::Critical,
        "a check change made while cut off, after the heal",
    )
    .await?;
    run.report.heal_sync_ms.push(took.as_millis() as u64);
    let took = wait_status(
        &mut run,
        "fcs00",
        SERF_HEALTH_CHECK,
        CheckStatus::Passing,
        Duration::from_secs(15),
    )
    .await?;
    took.ok_or("fcs00 returned but its node never turned passing")?;
    run.cluster.agents[FCS]
        .app_up
        .store(true, std::sync::atomic::Ordering::SeqCst);
    propagated(
        &mut run,
        "fcs-tcp",
        CheckStatus::Passing,
        "fcs's passing status after the heal",
    )
    .await?;

    info!("phase: fcs00 crashes and restarts; its registrations come back from disk");
    run.cluster.crash_agent(FCS);
    sleep(rand_ms(100, 3000)).await;
    run.cluster.start_agent(FCS);
    let t = Instant::now();
    loop {
        let restored = run
            .cluster
            .agent(FCS)
            .is_some_and(|a| a.services().iter().any(|s| s.id == "fcs"));
        if restored {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err("fcs00 restarted without its registrations".into());
        }
        run.settle(Duration::from_millis(20)).await?;
    }

    info!("phase: a deregistration through fcc00");
    put_agent(&run, FCC, "/v1/agent/service/deregister/late", Vec::new()).await?;
    acks.deregistered("fcc00", "late");

    index_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut report = run
        .finish_with(|run| {
            // After convergence every server holds the same catalog; it must
            // be what the agents acknowledged. Anti-entropy may still be
            // carrying the last change: allow it a round.
            Box::pin(async move {
                let t = Instant::now();
                loop {
                    let mut failure = None;
                    for i in 0..3 {
                        let cat = instances(run, i).ok_or("server vanished")?;
                        if let Err(e) = acks.check(&run.cluster.servers[i].name, &cat) {
                            failure = Some(e);
                        }
                    }
                    match failure {
                        None => return Ok(()),
                        Some(e) if t.elapsed() > Duration::from_secs(10) => return Err(e),
                        Some(_) => run.settle(Duration::from_millis(50)).await?,
                    }
                }
            })
        })
        .await?;
    let watched = index_verdict.lock().expect("verdict").clone()?;
    if watched == 0 {
        return Err("the X-Consul-Index watch never got an answer".into());
    }
    report.catalog_reads = watched;
    report.registrations = 3;
    Ok(report)
}

/// Longest time from cutting an agent off to its node's critical status:
/// the failure timeout (2.5 s) plus a Raft commit, with room for an
/// election.
const LIVENESS_BOUND: Duration = Duration::from_secs(6);

pub(crate) async fn agent_liveness() -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(256).await?;
    run.cluster.add_agent_hosts();
    run.cluster.start_agent(FCS);
    run.cluster.start_agent(FCC);
    run.start_workload(1);
    let t = Instant::now();
    while status_at_leader(&run, "fcs00", SERF_HEALTH_CHECK) != Some(CheckStatus::Passing) {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("fcs00 never turned alive".into());
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    info!("phase: flapping link (outages shorter than the failure timeout)");
    let mut false_verdicts = 0u64;
    let flap_until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < flap_until {
        // Up 1-4 s, down 100-1500 ms: about 25 % loss in bursts, none long
        // enough (2.5 s) to be a failure.
        let up_until = Instant::now() + rand_ms(1000, 4000);
        while Instant::now() < up_until {
            if status_at_leader(&run, "fcs00", SERF_HEALTH_CHECK) == Some(CheckStatus::Critical) {
                false_verdicts += 1;
                // Count a verdict once: wait for it to clear.
                while status_at_leader(&run, "fcs00", SERF_HEALTH_CHECK)
                    == Some(CheckStatus::Critical)
                {
                    run.settle(Duration::from_millis(20)).await?;
                }
            }
            run.settle(Duration::from_millis(20)).await?;
        }
        run.cluster.isolate_agent(FCS);
        run.settle(rand_ms(100, 1500)).await?;
        run.cluster.heal_agent(FCS);
    }
    run.report.false_verdicts = false_verdicts;
    // Every outage was shorter than the failure timeout minus one
    // heartbeat interval: any verdict is a false one.
    if false_verdicts > 0 {
        return Err(format!(
            "fcs00 was declared failed {false_verdicts} times during outages shorter than the failure timeout"
        ));
    }
    info!("phase: real failures");
    for _ in 0..3 {
        run.settle(rand_ms(1000, 3000)).await?;
        run.cluster.isolate_agent(FCS);
        let took = wait_status(
            &mut run,
            "fcs00",
            SERF_HEALTH_CHECK,
            CheckStatus::Critical,
            Duration::from_secs(15),
        )
        .await?;
        let took = took.ok_or("fcs00 was cut off but its node never turned critical")?;
        run.report.detect_ms.push(took.as_millis() as u64);
        run.cluster.heal_agent(FCS);
        wait_status(
            &mut run,
            "fcs00",
            SERF_HEALTH_CHECK,
            CheckStatus::Passing,
            Duration::from_secs(15),
        )
        .await?
        .ok_or("fcs00 returned but never turned passing")?;
    }
    if let Some(slow) = run
        .report
        .detect_ms
        .iter()
        .find(|d| **d > LIVENESS_BOUND.as_millis() as u64)
    {
        return Err(format!(
            "a failure was detected after {slow} ms, over {LIVENESS_BOUND:?}"
        ));
    }
    run.finish().await
}
