//! The lock scenario: clients on fcs00 and fcc00 take the same locks
//! through sessions, as leader-election libraries do, while the leader
//! dies, a holder's host is cut off, clocks drift and step, and a host
//! crashes; a writer and a reader on the two hosts exchange transactions.
//!
//! Two locks, each contended by four clients (two per host):
//! - `locks/guarded`: health-checked sessions (TTL 10 s, the node's
//!   `serfHealth`, and on fcs00 also fcs's TCP check) with a 20 s lock
//!   delay, so a failed node or check invalidates them and the lock delay
//!   covers the holder's TTL twice over (clock drift);
//! - `locks/patroni`: sessions as Patroni makes them (TTL 10 s, no
//!   checks, lock delay 0), so only the TTL protects the holder.
//!
//! Each client follows the rule of `checkers::lock_safety`: it renews every
//! TTL/2 and stops using its lock once a TTL has passed on its own clock
//! since it sent its last successful renewal. Most holds are short;
//! before each fault the harness asks for long ones (12-20 s), so losing
//! the lock (its host cut off, its check failing) happens while the
//! client still wants it. A client that
//! loses or gives up a lock still sends its release, and sometimes sends
//! it twice (a retried request), as real clients do.
//!
//! Phases: contention; the leader dies; fcs's check fails under a holder
//! on fcs00 (its session is invalidated while the holder is connected);
//! a long holder's host is cut off; clocks drift and the leader's wall
//! clock steps; fcc00 crashes.
//!
//! Checkers: lock safety (no two holders at any moment of true time),
//! transaction atomicity (`checkers::txn_atomicity`), and the sessions of a
//! node cut off are invalidated within [`INVALIDATE_BOUND`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::Rng;
use madsim::time::Instant;
use mesh_net::clock;
use mesh_net::http_client::HttpClient;
use tracing::info;

use std::sync::atomic::Ordering;

use crate::agent_hosts::BootTask;
use crate::agents::http_ok;
use crate::checkers::lock_safety::{self, LockHistory};
use crate::checkers::txn_atomicity::{self, TxnReads};
use crate::scenarios::{rand_ms, Report, Run, ELECTION_BOUND};

const FCS: usize = 0;
const FCC: usize = 1;
/// Every session's TTL.
const TTL: Duration = Duration::from_secs(10);
/// From cutting a node off to its health-checked sessions being gone from
/// the leader's state: the liveness timeout (2.5 s) and one commit.
pub const INVALIDATE_BOUND: Duration = Duration::from_secs(6);
/// The locks and whether their sessions are health-checked.
const LOCKS: [(&str, bool); 2] = [("locks/guarded", true), ("locks/patroni", false)];
/// fcs on fcs00, with the TCP check fcs00's guarded sessions name.
const FCS_REGISTRATION: &str = r#"{"Name":"fcs","ID":"fcs","Port":8181,
    "Check":{"CheckID":"fcs-tcp","Name":"fcs TCP","TCP":"127.0.0.1:8181","Interval":"1s","Timeout":"1s"}}"#;

fn boot<F, Fut>(f: F) -> BootTask
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// True µs since `base`.
fn us_since(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

enum Renewal {
    /// Renewed; the moment (this host's clock) the request was sent.
    Renewed(clock::Instant),
    /// The session is gone.
    Gone,
    /// No answer worth trusting; try again.
    Failed,
}

async fn renew(http: &mut HttpClient, session: &str) -> Renewal {
    let sent = clock::Instant::now();
    match http
        .request("PUT", &format!("/v1/session/renew/{session}"), Vec::new())
        .await
    {
        Ok(r) if r.status == 200 => Renewal::Renewed(sent),
        Ok(r) if r.status == 404 => Renewal::Gone,
        _ => Renewal::Failed,
    }
}

/// A session for `client`: its ID and when (this host's clock) the create
/// was sent.
async fn create_session(
    http: &mut HttpClient,
    client: &str,
    guarded: bool,
) -> Option<(String, clock::Instant)> {
    let body = if guarded && client.starts_with("fcs00/") {
        format!(
            r#"{{"Name":"{client}","TTL":"10s","LockDelay":"20s","NodeChecks":["serfHealth"],"ServiceChecks":[{{"ID":"fcs-tcp"}}]}}"#
        )
    } else if guarded {
        format!(r#"{{"Name":"{client}","TTL":"10s","LockDelay":"20s"}}"#)
    } else {
        format!(r#"{{"Name":"{client}","TTL":"10s","LockDelay":"0s","Checks":[]}}"#)
    };
    let sent = clock::Instant::now();
    let r = http
        .request("PUT", "/v1/session/create", body.into_bytes())
        .await
        .ok()
        .filter(|r| r.status == 200)?;
    let v: serde_json::Value = serde_json::from_str(&r.text()).ok()?;
    Some((v["ID"].as_str()?.to_string(), sent))
}

fn jitter(lo: u64, hi: u64) -> Duration {
    Duration::from_millis(madsim::rand::thread_rng().gen_range(lo..=hi))
}

/// One lock client, for ever: a session, the lock, a hold, a release.
async fn lock_client(
    agent: String,
    client: String,
    key: &'static str,
    guarded: bool,
    history: Arc<Mutex<LockHistory>>,
    base: Instant,
    hold_long: Arc<Mutex<Option<&'static str>>>,
) {
    let mut http = HttpClient::new(agent, Duration::from_secs(2));
    let mut kept: Option<(String, clock::Instant)> = None;
    'session: loop {
        let (session, mut alive) = match kept.take() {
            Some(s) => s,
            None => match create_session(&mut http, &client, guarded).await {
                Some(s) => {
                    history.lock().expect("locks").sessions += 1;
                    s
                }
                None => {
                    clock::sleep(jitter(200, 500)).await;
                    continue;
                }
            },
        };
        // Acquire, renewing while waiting.
        loop {
            if alive.elapsed() >= TTL / 2 {
                match renew(&mut http, &session).await {
                    Renewal::Renewed(sent) => alive = sent,
                    Renewal::Gone => continue 'session,
                    Renewal::Failed if alive.elapsed() >= TTL => continue 'session,
                    Renewal::Failed => {}
                }
            }
            let path = format!("/v1/kv/{key}?acquire={session}");
            match http
                .request("PUT", &path, client.clone().into_bytes())
                .await
            {
                Ok(r) if r.status == 200 && r.text() == "true" => break,
                Ok(r) if r.status == 200 => {
                    history.lock().expect("locks").refused += 1;
                    clock::sleep(jitter(50, 300)).await;
                }
                Ok(r) if r.text().starts_with("invalid session") => continue 'session,
                _ => clock::sleep(jitter(100, 300)).await,
            }
        }
        // The harness asks for long holds before a fault; a few come
        // unasked.
        let asked = hold_long
            .lock()
            .expect("hold_long")
            .is_some_and(|prefix| client.starts_with(prefix));
        let long = asked || madsim::rand::thread_rng().gen_bool(0.05);
        history
            .lock()
            .expect("locks")
            .acquired(&client, key, &session, us_since(base), long);
        let hold_for = if long {
            jitter(12_000, 20_000)
        } else {
            jitter(300, 3_000)
        };
        let hold_until = clock::Instant::now() + hold_for;
        let lost = loop {
            let now = clock::Instant::now();
            let deadline = alive + TTL;
            if now >= deadline {
                break true;
            }
            if now >= hold_until {
                break false;
            }
            let renew_at = alive + TTL / 2;
            if now >= renew_at {
                // Never past the deadline, even with a request in flight.
                match clock::timeout(deadline - now, renew(&mut http, &session)).await {
                    Ok(Renewal::Renewed(sent)) => alive = sent,
                    Ok(Renewal::Gone) => break true,
                    Err(_) => break true,
                    Ok(Renewal::Failed) => {
                        clock::sleep(Duration::from_millis(200).min(deadline - now)).await
                    }
                }
                continue;
            }
            clock::sleep_until(renew_at.min(hold_until).min(deadline)).await;
        };
        history.lock().expect("locks").released(
            &client,
            us_since(base),
            if lost { lock_safety::LOST } else { "released" },
        );
        let path = format!("/v1/kv/{key}?release={session}");
        let _ = http.request("PUT", &path, Vec::new()).await;
        if madsim::rand::thread_rng().gen_bool(0.5) {
            // The same release again, as a client whose answer was lost.
            clock::sleep(jitter(0, 500)).await;
            let _ = http.request("PUT", &path, Vec::new()).await;
        }
        if !lost && madsim::rand::thread_rng().gen_bool(0.7) {
            kept = Some((session, alive));
        } else {
            let _ = http
                .request("PUT", &format!("/v1/session/destroy/{session}"), Vec::new())
                .await;
        }
        clock::sleep(jitter(0, 500)).await;
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Sets `txn/a` and `txn/b` to one fresh value per transaction.
async fn txn_writer(agent: String, reads: Arc<Mutex<TxnReads>>) {
    let mut http = HttpClient::new(agent, Duration::from_secs(2));
    for n in 0u64.. {
        let v = b64(&format!("v{n}"));
        let body = format!(
            r#"[{{"KV":{{"Verb":"set","Key":"txn/a","Value":"{v}"}}}},{{"KV":{{"Verb":"set","Key":"txn/b","Value":"{v}"}}}}]"#
        );
        if let Ok(r) = http.request("PUT", "/v1/txn", body.into_bytes()).await {
            if r.status == 200 {
                reads.lock().expect("txn").commits += 1;
            }
        }
        clock::sleep(jitter(100, 300)).await;
    }
}

/// Reads both keys in one transaction.
async fn txn_reader(agent: String, reads: Arc<Mutex<TxnReads>>) {
    let mut http = HttpClient::new(agent, Duration::from_secs(2));
    let body = br#"[{"KV":{"Verb":"get-tree","Key":"txn/"}}]"#.to_vec();
    loop {
        if let Ok(r) = http.request("PUT", "/v1/txn", body.clone()).await {
            if r.status == 200 {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.text()) {
                    let value = |key: &str| {
                        v["Results"].as_array().and_then(|rs| {
                            rs.iter()
                                .find(|x| x["KV"]["Key"] == key)
                                .and_then(|x| x["KV"]["Value"].as_str().map(String::from))
                        })
                    };
                    let pair = (value("txn/a"), value("txn/b"));
                    reads.lock().expect("txn").reads.push(pair);
                }
            }
        }
        clock::sleep(jitter(50, 200)).await;
    }
}

/// A client (of `host_prefix`) in a long hold of `key` now, waiting for
/// one (bounded): the holder to fault while it wants the lock.
async fn long_holder(
    run: &mut Run,
    history: &Arc<Mutex<LockHistory>>,
    host_prefix: &str,
    key: &str,
) -> Result<String, String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let holder = history.lock().expect("locks").long_holder(host_prefix, key);
        if let Some(client) = holder {
            return Ok(client);
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    Err(format!(
        "no client of {host_prefix:?} held {key:?} for long within 60 s: nothing to fault"
    ))
}

/// The health-checked sessions of `node` in the leader's state.
fn checked_sessions(run: &Run, leader: usize, node: &str) -> Option<Vec<String>> {
    let s = run.cluster.server(leader)?;
    Some(s.view().read(|sm| {
        sm.sessions()
            .of_node(node)
            .filter(|s| !s.node_checks.is_empty())
            .map(|s| s.id.clone())
            .collect()
    }))
}

pub(crate) async fn locks() -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(256).await?;
    run.cluster.add_agent_hosts();
    let base = Instant::now();
    let history = Arc::new(Mutex::new(LockHistory::default()));
    // Clients whose name starts with this make their holds long.
    let hold_long: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let reads = Arc::new(Mutex::new(TxnReads::default()));
    for k in [FCS, FCC] {
        let host = &mut run.cluster.agents[k];
        let agent = host.http_addr();
        for (key, guarded) in LOCKS {
            for n in 0..2 {
                let client = format!("{}/{}-{n}", host.name, key.trim_start_matches("locks/"));
                let (agent, h, long) = (agent.clone(), history.clone(), hold_long.clone());
                host.boot_tasks.push(boot(move || {
                    lock_client(
                        agent.clone(),
                        client.clone(),
                        key,
                        guarded,
                        h.clone(),
                        base,
                        long.clone(),
                    )
                }));
            }
        }
        let r = reads.clone();
        if k == FCS {
            host.boot_tasks
                .push(boot(move || txn_writer(agent.clone(), r.clone())));
        } else {
            host.boot_tasks
                .push(boot(move || txn_reader(agent.clone(), r.clone())));
        }
    }
    run.cluster.start_agent(FCS);
    madsim::time::sleep(rand_ms(0, 300)).await;
    run.cluster.start_agent(FCC);
    run.start_workload(1);
    http_ok(
        &run,
        run.cluster.agents[FCS].http_addr(),
        "PUT",
        "/v1/agent/service/register",
        FCS_REGISTRATION.as_bytes(),
    )
    .await?;
    run.settle(rand_ms(5_000, 10_000)).await?;

    info!("phase: the leader dies under lock traffic");
    let all = [0, 1, 2];
    let leader = run.kill_leader().await?;
    run.settle(rand_ms(1_000, 3_000)).await?;
    run.cluster.start(leader);
    run.settle(rand_ms(3_000, 6_000)).await?;

    info!("phase: fcs's check fails under a guarded holder on fcs00");
    *hold_long.lock().expect("hold_long") = Some("fcs00/");
    let holder = long_holder(&mut run, &history, "fcs00/", "locks/guarded").await?;
    *hold_long.lock().expect("hold_long") = None;
    info!(%holder, "stopping the fcs app");
    run.cluster.agents[FCS]
        .app_up
        .store(false, Ordering::SeqCst);
    let t = Instant::now();
    while history.lock().expect("locks").holder("locks/guarded") == Some(holder.clone()) {
        if t.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "{holder} kept locks/guarded for 15 s after the check its session names failed"
            ));
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    run.settle(rand_ms(2_000, 5_000)).await?;
    run.cluster.agents[FCS].app_up.store(true, Ordering::SeqCst);
    run.settle(rand_ms(3_000, 6_000)).await?;

    info!("phase: a long holder's host is cut off");
    let key = if madsim::rand::thread_rng().gen_bool(0.5) {
        "locks/guarded"
    } else {
        "locks/patroni"
    };
    *hold_long.lock().expect("hold_long") = Some("");
    let holder = long_holder(&mut run, &history, "", key).await?;
    *hold_long.lock().expect("hold_long") = None;
    let victim = if holder.starts_with("fcs00/") {
        FCS
    } else {
        FCC
    };
    let node = run.cluster.agents[victim].name.clone();
    let leader = run.leader_among(&all, ELECTION_BOUND).await?;
    let doomed = checked_sessions(&run, leader, &node).unwrap_or_default();
    run.cluster.isolate_agent(victim);
    let t = Instant::now();
    loop {
        let leader = run.leader_among(&all, ELECTION_BOUND).await?;
        let left = checked_sessions(&run, leader, &node).unwrap_or_default();
        if doomed.iter().all(|s| !left.contains(s)) {
            break;
        }
        if t.elapsed() > INVALIDATE_BOUND {
            return Err(format!(
                "{node} was cut off but its sessions {left:?} were still valid after {INVALIDATE_BOUND:?}"
            ));
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    run.report
        .session_invalidate_ms
        .push(t.elapsed().as_millis() as u64);
    run.settle(rand_ms(12_000, 20_000)).await?;
    run.cluster.heal_agent(victim);
    run.settle(rand_ms(3_000, 6_000)).await?;

    info!("phase: clocks drift and the leader's wall clock steps forward");
    let leader = run.leader_among(&all, ELECTION_BOUND).await?;
    let (rates, step) = {
        let mut rng = madsim::rand::thread_rng();
        let rate = |rng: &mut madsim::rand::GlobalRng| rng.gen_range(800_000..=1_250_000);
        (
            [rate(&mut rng), rate(&mut rng), rate(&mut rng)],
            rng.gen_range(60_000..=3_600_000),
        )
    };
    info!(?rates, step_ms = step, "clock phase");
    run.cluster.set_clock(leader, rates[0], step);
    run.cluster.set_agent_clock(FCS, rates[1], 0);
    run.cluster.set_agent_clock(FCC, rates[2], 0);
    run.settle(rand_ms(15_000, 25_000)).await?;
    run.cluster.set_clock(leader, 1_000_000, 0);
    run.cluster.set_agent_clock(FCS, 1_000_000, 0);
    run.cluster.set_agent_clock(FCC, 1_000_000, 0);

    info!("phase: fcc00 crashes and comes back");
    run.cluster.crash_agent(FCC);
    history
        .lock()
        .expect("locks")
        .crashed("fcc00/", us_since(base));
    run.settle(rand_ms(1_000, 3_000)).await?;
    run.cluster.start_agent(FCC);
    run.settle(rand_ms(10_000, 15_000)).await?;

    let mut verdict = history.lock().expect("locks").clone();
    verdict.close_all(us_since(base));
    run.report.lock_holds = verdict.holds().len() as u64;
    run.report.lost_holds = verdict.lost() as u64;
    lock_safety::check(&verdict)?;
    let txn = reads.lock().expect("txn").clone();
    run.report.txn_reads = txn.reads.len() as u64;
    txn_atomicity::check(&txn)?;
    run.finish().await
}
