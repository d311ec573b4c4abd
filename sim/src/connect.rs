//! The Connect scenario: fcc on fcc00 calls fcs on fcs00 through both
//! sidecars, over mutual TLS with leaves from the cluster's CA, while the
//! cluster fails over, intentions flip, fcs00 restarts and an attacker
//! (evil00, 10.0.0.20) tries every way in.
//!
//! - fcs is an echo app listening on fcs00's loopback only (127.0.0.1:8181):
//!   the only way to it from another host is fcs's sidecar on :9191.
//! - fcc is a consumer on fcc00 that opens a connection to its upstream
//!   (127.0.0.1:8181 on fcc00, fcc's sidecar) for every request, sends a
//!   line with a unique nonce and checks the echo.
//! - Both sidecars run `mesh connect proxy`'s code (`sidecar::control`)
//!   against their host's agent, as on bare metal.
//!
//! Checkers (`checkers::wire_plaintext`): no byte of fcc's or fcs's
//! plaintext crosses between hosts, judged on what the simulated network
//! carries. (`checkers::sidecar_security`): every request fcs received was
//! sent by fcc (no attacker byte reached it); every answer fcc accepted
//! came from fcs (nothing else impersonated it); answers are intact; while
//! the intention denies, nothing reaches fcs; traffic resumes within
//! bounds after a leader kill, an allow, a restart of fcs's sidecar while
//! every server is down, and a restart of fcs00. Attacks:
//! plaintext to :9191, a direct connection to :8181, a certificate from
//! another CA claiming to be fcc, an expired leaf of the real CA for fcc,
//! and an impostor sidecar registered for fcs holding a real leaf for
//! another service.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::time::{sleep, Instant};
use mesh_core::connect::ca;
use mesh_core::connect::SpiffeId;
use mesh_net::sidecar::control::{self, ProxyOptions};
use mesh_net::sidecar::Limits;
use mesh_net::tls::{self, Identity, TrustBundle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tracing::info;

use crate::agent_hosts::BootTask;
use crate::agents::{http, http_ok};
use crate::checkers::sidecar_security::{self, Attack, Traffic};
use crate::checkers::wire_plaintext::Wire;
use crate::scenarios::{rand_ms, Report, Run, ELECTION_BOUND};

pub(crate) const FCS: usize = 0;
pub(crate) const FCC: usize = 1;
/// fcs's port on fcs00's loopback, and fcc's upstream port on fcc00's.
const APP_PORT: u16 = 8181;
/// The sidecars' public port.
const SIDECAR_PORT: u16 = 9191;
/// Each sidecar's Prometheus endpoint (`-metrics-addr`).
pub(crate) const SIDECAR_METRICS_PORT: u16 = 9102;
/// The attacker's address.
const EVIL_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
/// From the first registration to the first answer through both sidecars.
const FIRST_BOUND: Duration = Duration::from_secs(20);
/// Longest pause in fcc's answers while a leader dies and is replaced.
const FAILOVER_GAP_BOUND: Duration = Duration::from_secs(3);
/// From an intention change to the sidecar enforcing it.
pub const INTENTION_BOUND: Duration = Duration::from_secs(2);
/// From a root rotation to both agents serving leaves of the new root.
const ROTATION_BOUND: Duration = Duration::from_secs(5);
/// From fcs00 booting again to fcc's first answer.
const RESTART_BOUND: Duration = Duration::from_secs(20);
/// From fcs's sidecar restarting, while no server runs, to fcc's first
/// answer: its agent serves the leaf, the roots and the intentions from
/// its cache.
const OUTAGE_RESTART_BOUND: Duration = Duration::from_secs(5);

/// fcs's registration: the app on 8181 with a TCP check, and a sidecar.
const FCS_REGISTRATION: &str = r#"{"Name":"fcs","ID":"fcs","Port":8181,
    "Check":{"CheckID":"fcs-tcp","Name":"fcs TCP","TCP":"127.0.0.1:8181","Interval":"1s","Timeout":"1s"},
    "Connect":{"SidecarService":{}}}"#;
/// fcc's registration: a consumer whose sidecar binds fcs on 127.0.0.1:8181.
const FCC_REGISTRATION: &str = r#"{"Name":"fcc","ID":"fcc",
    "Connect":{"SidecarService":{"Proxy":{"Upstreams":[{"DestinationName":"fcs","LocalBindPort":8181}]}}}}"#;

/// Simulated ms since `base`.
fn ms_since(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

fn boot<F, Fut>(f: F) -> BootTask
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// The echo app: one line in, `ECHO <line>` out, every request's nonce
/// recorded. Listens on loopback only.
async fn fcs_echo(traffic: Arc<Mutex<Traffic>>, base: Instant) {
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", APP_PORT)).await {
            Ok(l) => break l,
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    };
    while let Ok((conn, _)) = listener.accept().await {
        let traffic = traffic.clone();
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(conn);
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let nonce = line.split(' ').nth(1).unwrap_or("").to_owned();
                traffic
                    .lock()
                    .expect("traffic")
                    .fcs_received(&nonce, ms_since(base));
                let sent = w.write_all(format!("ECHO {line}\n").as_bytes()).await;
                // Simulated TCP sends on flush.
                if sent.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The consumer: a new connection through fcc's upstream for every
/// request.
async fn fcc_client(traffic: Arc<Mutex<Traffic>>, seq: Arc<AtomicU64>, base: Instant) {
    loop {
        let n = seq.fetch_add(1, Ordering::SeqCst);
        let nonce = format!("fcc-{n}");
        let pad = "x".repeat((n as usize * 37) % 3000);
        let line = format!("REQ {nonce} {pad}");
        traffic.lock().expect("traffic").fcc_sent(&nonce);
        let exchange = async {
            let conn = tokio::net::TcpStream::connect(("127.0.0.1", APP_PORT))
                .await
                .ok()?;
            let (r, mut w) = tokio::io::split(conn);
            w.write_all(format!("{line}\n").as_bytes()).await.ok()?;
            w.flush().await.ok()?;
            let mut lines = BufReader::new(r).lines();
            lines.next_line().await.ok().flatten()
        };
        let answer = madsim::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()
            .flatten();
        traffic.lock().expect("traffic").fcc_answer(
            &nonce,
            &line,
            answer.as_deref(),
            ms_since(base),
        );
        sleep(Duration::from_millis(40)).await;
    }
}

/// `mesh connect proxy -sidecar-for <service>` against this host's agent,
/// started again whenever it fails to, or when `restart` is notified (the
/// sidecar alone restarts; the agent and the app go on).
async fn sidecar(agent: String, service: &'static str, restart: Arc<Notify>) {
    loop {
        let opts = ProxyOptions {
            agent_http: agent.clone(),
            sidecar_for: service.to_owned(),
            limits: Limits::default(),
        };
        match control::start(opts).await {
            Ok(running) => {
                // As `mesh connect proxy -metrics-addr` does.
                let metrics = async {
                    if let Ok(listener) =
                        tokio::net::TcpListener::bind(("0.0.0.0", SIDECAR_METRICS_PORT)).await
                    {
                        mesh_net::sidecar::metrics::serve(
                            listener,
                            running.metrics.clone(),
                            service.to_owned(),
                        )
                        .await;
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    biased;
                    _ = restart.notified() => info!(service, "sidecar restarts"),
                    () = metrics => {}
                }
                drop(running);
            }
            Err(e) => {
                info!(service, error = %e, "sidecar did not start; retrying");
                sleep(Duration::from_millis(500)).await
            }
        }
    }
}

async fn set_intention(run: &Run, action: &str) -> Result<(), String> {
    let addr = run.cluster.agents[FCC].http_addr();
    http_ok(
        run,
        addr,
        "PUT",
        "/v1/connect/intentions/exact?source=fcc&destination=fcs",
        format!(r#"{{"Action":"{action}"}}"#).as_bytes(),
    )
    .await
    .map(|_| ())
}

/// Waits until fcc has `more` answers beyond `after`; how long it took.
async fn wait_answers(
    run: &mut Run,
    traffic: &Arc<Mutex<Traffic>>,
    more: usize,
    bound: Duration,
    what: &str,
) -> Result<Duration, String> {
    let start = traffic.lock().expect("traffic").answered();
    let t = Instant::now();
    while traffic.lock().expect("traffic").answered() < start + more {
        if t.elapsed() > bound {
            return Err(format!(
                "{what}: fcc got {} answers through the sidecars within {bound:?}, wanted {more}",
                traffic.lock().expect("traffic").answered() - start
            ));
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    Ok(t.elapsed())
}

/// What only the application's plaintext contains: fcc's requests, and
/// fcs's echoes of them.
const APP_MARKER: &str = "REQ fcc-";
/// Sidecar traffic between hosts a passing run must show: at least a
/// handshake (over 1 KiB) for each of the answers it requires.
const MIN_SIDECAR_BYTES: u64 = sidecar_security::MIN_ANSWERS as u64 * 1024;

pub(crate) async fn connect() -> Result<Report, String> {
    let wire = Arc::new(Mutex::new(Wire::new(APP_MARKER, SIDECAR_PORT)));
    let tap = wire.clone();
    madsim::net::NetSim::current().tap_tcp(move |writer, reader, bytes| {
        tap.lock().expect("wire").flushed(writer, reader, bytes)
    });
    let result = connect_phases(&wire).await;
    // Plaintext on the wire is the cause of whatever else failed with it.
    wire.lock().expect("wire").leak()?;
    result
}

async fn connect_phases(wire: &Mutex<Wire>) -> Result<Report, String> {
    let (mut run, _) = Run::three_servers(256).await?;
    run.cluster.add_agent_hosts();
    wire.lock()
        .expect("wire")
        .set_app_hosts(run.cluster.agents[FCS].ip, run.cluster.agents[FCC].ip);
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let seq = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let fcs_sidecar_restart = Arc::new(Notify::new());
    {
        let fcs = &mut run.cluster.agents[FCS];
        fcs.has_app = false;
        let agent = fcs.http_addr();
        let t = traffic.clone();
        fcs.boot_tasks.push(boot(move || fcs_echo(t.clone(), base)));
        let restart = fcs_sidecar_restart.clone();
        fcs.boot_tasks
            .push(boot(move || sidecar(agent.clone(), "fcs", restart.clone())));
        let fcc = &mut run.cluster.agents[FCC];
        let agent = fcc.http_addr();
        let never = Arc::new(Notify::new());
        fcc.boot_tasks
            .push(boot(move || sidecar(agent.clone(), "fcc", never.clone())));
        let (t, s) = (traffic.clone(), seq.clone());
        fcc.boot_tasks
            .push(boot(move || fcc_client(t.clone(), s.clone(), base)));
    }
    run.cluster.start_agent(FCS);
    sleep(rand_ms(0, 300)).await;
    run.cluster.start_agent(FCC);
    run.start_workload(1);

    info!("phase: fcs and fcc register with sidecars; fcc -> fcs allowed");
    let t = Instant::now();
    http_ok(
        &run,
        run.cluster.agents[FCS].http_addr(),
        "PUT",
        "/v1/agent/service/register",
        FCS_REGISTRATION.as_bytes(),
    )
    .await?;
    http_ok(
        &run,
        run.cluster.agents[FCC].http_addr(),
        "PUT",
        "/v1/agent/service/register",
        FCC_REGISTRATION.as_bytes(),
    )
    .await?;
    // Out of the box nothing may connect (default deny): no answer yet.
    sleep(Duration::from_secs(2)).await;
    if traffic.lock().expect("traffic").answered() > 0 {
        return Err(
            "fcc reached fcs before any intention allowed it (the default must be deny)".into(),
        );
    }
    set_intention(&run, "allow").await?;
    wait_answers(&mut run, &traffic, 10, FIRST_BOUND, "first traffic").await?;
    run.report.connect_first_ms = t.elapsed().as_millis() as u64;

    info!("phase: the leader dies; traffic goes on");
    let all = [0, 1, 2];
    let leader = run.leader_among(&all, ELECTION_BOUND).await?;
    let t0 = ms_since(base);
    run.cluster.crash(leader, 0);
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    run.leader_among(&others, ELECTION_BOUND).await?;
    run.settle(Duration::from_secs(3)).await?;
    let gap = traffic
        .lock()
        .expect("traffic")
        .longest_gap(t0, ms_since(base));
    run.report.connect_failover_gap_ms = gap;
    if gap > FAILOVER_GAP_BOUND.as_millis() as u64 {
        return Err(format!(
            "fcc's traffic paused {gap} ms while the leader was replaced (bound {FAILOVER_GAP_BOUND:?})"
        ));
    }
    run.cluster.start(leader);

    info!("phase: the intention turns to deny, then back to allow");
    let t0 = ms_since(base);
    set_intention(&run, "deny").await?;
    run.settle(INTENTION_BOUND + Duration::from_secs(2)).await?;
    let enforced_from = t0 + INTENTION_BOUND.as_millis() as u64;
    traffic.lock().expect("traffic").forbid_between(
        enforced_from,
        ms_since(base),
        "fcc -> fcs is denied",
    );
    let t = Instant::now();
    set_intention(&run, "allow").await?;
    let acked = t.elapsed();
    let took = wait_answers(&mut run, &traffic, 1, INTENTION_BOUND, "allow again").await?;
    info!(
        put_ms = acked.as_millis() as u64,
        effect_ms = took.as_millis() as u64,
        "allow acknowledged, then in effect"
    );
    // From the write's acknowledgement to fcc's first answer.
    run.report.intention_ms.push(took.as_millis() as u64);

    info!("phase: attacks from evil00");
    let attacks = attack(&mut run).await?;
    traffic.lock().expect("traffic").attacks = attacks;
    wait_answers(
        &mut run,
        &traffic,
        5,
        Duration::from_secs(10),
        "traffic beside the impostor",
    )
    .await?;

    info!("phase: the CA root rotates during traffic");
    let took = rotate(&mut run, &traffic, base).await?;
    run.report.rotation_ms = took;

    info!("phase: fcs00's wall clock jumps past its leaf's renewal point");
    renew_by_age(&mut run, &traffic, base).await?;

    info!("phase: fcs00's wall clock jumps past the end of fcc's leaf: its sidecar refuses fcc");
    run.report.connect_skew_recovery_ms = skewed_verifier(&mut run, &traffic, base).await?;

    info!("phase: fcs00's agent restarts alone; fcs and its sidecar go on");
    let t0 = ms_since(base);
    run.cluster.restart_agent_process(FCS).await?;
    let t = Instant::now();
    wait_agent(&mut run, t, false, "stop after SIGTERM").await?;
    wait_agent(&mut run, t, true, "start again").await?;
    // The sidecar finds its agent again: its watches resume.
    run.settle(Duration::from_secs(3)).await?;
    wait_answers(
        &mut run,
        &traffic,
        3,
        Duration::from_secs(5),
        "after fcs00's agent restarted",
    )
    .await?;
    run.report.connect_agent_restart_gap_ms =
        no_pause_no_loss(&traffic, t0, base, "fcs00's agent restarting")?;

    info!(
        "phase: every server stops and fcs's sidecar restarts: the agents' caches (fcs00's filled since its restart) carry fcc -> fcs"
    );
    for i in all {
        run.cluster.crash(i, 0);
    }
    sleep(rand_ms(200, 1000)).await;
    fcs_sidecar_restart.notify_one();
    let took = wait_answers(
        &mut run,
        &traffic,
        3,
        OUTAGE_RESTART_BOUND,
        "after fcs's sidecar restarted with no server up",
    )
    .await?;
    info!(
        took_ms = took.as_millis() as u64,
        "a sidecar restarted during a full outage serves again"
    );
    for i in all {
        run.cluster.start(i);
    }
    run.leader_among(&all, ELECTION_BOUND).await?;
    run.settle(Duration::from_secs(2)).await?;

    info!("phase: fcs00 restarts (agent, app and sidecar)");
    run.cluster.crash_agent(FCS);
    sleep(rand_ms(200, 1500)).await;
    run.cluster.start_agent(FCS);
    let took = wait_answers(
        &mut run,
        &traffic,
        3,
        RESTART_BOUND,
        "after fcs00's restart",
    )
    .await?;
    run.report.connect_restart_ms = took.as_millis() as u64;

    info!("phase: a tour of the HTTP API through fcc00's agent and a server");
    let agent = run.cluster.agents[FCC].http_addr();
    let server = run.cluster.http_addr(rand_ms(0, 2).as_millis() as usize);
    let fcs_metrics = format!("{}:{SIDECAR_METRICS_PORT}", run.cluster.agents[FCS].ip);
    let fcs_received = traffic.lock().expect("traffic").received() as u64;
    let calls = crate::api_tour::tour(&run, &agent, &server, &fcs_metrics, fcs_received).await?;
    info!(calls, "api tour done");

    let verdict = traffic.lock().expect("traffic").clone();
    run.report.connect_answers = verdict.answered() as u64;
    sidecar_security::check(&verdict)?;
    wire.lock().expect("wire").check(MIN_SIDECAR_BYTES)?;
    run.finish().await
}

/// Waits until fcs00's agent runs (`up`) or not, at most
/// [`RESTART_BOUND`] from `since`.
async fn wait_agent(run: &mut Run, since: Instant, up: bool, what: &str) -> Result<(), String> {
    while run.cluster.agent(FCS).is_some() != up {
        if since.elapsed() > RESTART_BOUND {
            return Err(format!(
                "fcs00's agent did not {what} within {RESTART_BOUND:?}"
            ));
        }
        run.settle(Duration::from_millis(20)).await?;
    }
    Ok(())
}

/// Rotates the root through fcs00's agent (a new `Config.PrivateKey`, as
/// `consul connect ca set-config` does) while fcc calls fcs; both agents
/// must serve leaves of the new root (their chain carries the
/// cross-signed certificate) within [`ROTATION_BOUND`], and fcc's answers
/// may not pause for longer than [`FAILOVER_GAP_BOUND`]. Returns the
/// simulated ms until both leaves were re-signed.
async fn rotate(
    run: &mut Run,
    traffic: &Arc<Mutex<Traffic>>,
    base: Instant,
) -> Result<u64, String> {
    let key = ca::generate_leaf_key().map_err(|e| e.to_string())?;
    let body = serde_json::json!({
        "Provider": "consul",
        "Config": { "PrivateKey": key.key.expose() },
    })
    .to_string();
    let t0 = ms_since(base);
    let t = Instant::now();
    http_ok(
        run,
        run.cluster.agents[FCS].http_addr(),
        "PUT",
        "/v1/connect/ca/configuration",
        body.as_bytes(),
    )
    .await?;
    let mut renewed = [false; 2];
    while renewed != [true; 2] {
        if t.elapsed() > ROTATION_BOUND {
            return Err(format!(
                "after the root rotation, leaves of the new root on fcs00/fcc00: {renewed:?} within {ROTATION_BOUND:?}"
            ));
        }
        for (k, service) in [(FCS, "fcs"), (FCC, "fcc")] {
            let path = format!("/v1/agent/connect/ca/leaf/{service}");
            if let Ok((200, text)) =
                http(run, run.cluster.agents[k].http_addr(), "GET", &path, b"").await
            {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let chain = v["CertPEM"].as_str().unwrap_or_default();
                renewed[k] = ca::pem_to_der(chain).is_ok_and(|c| c.len() == 2);
            }
        }
        run.settle(Duration::from_millis(50)).await?;
    }
    let took = t.elapsed();
    run.settle(Duration::from_secs(2)).await?;
    no_pause_no_loss(traffic, t0, base, "the root rotation")?;
    Ok(took.as_millis() as u64)
}

/// fcc's answers may not pause longer than [`FAILOVER_GAP_BOUND`] between
/// `t0` (ms since `base`) and now, across `what`, and no request of that
/// window may go unanswered (the checker judges that at the end).
fn no_pause_no_loss(
    traffic: &Arc<Mutex<Traffic>>,
    t0: u64,
    base: Instant,
    what: &str,
) -> Result<u64, String> {
    let now = ms_since(base);
    let mut traffic = traffic.lock().expect("traffic");
    traffic.lossless_between(t0, now, what);
    let gap = traffic.longest_gap(t0, now);
    if gap > FAILOVER_GAP_BOUND.as_millis() as u64 {
        return Err(format!(
            "fcc's traffic paused {gap} ms across {what} (bound {FAILOVER_GAP_BOUND:?})"
        ));
    }
    Ok(gap)
}

/// The serial number of the leaf `service`'s agent serves, if any.
async fn leaf_serial(run: &Run, k: usize, service: &str) -> Option<String> {
    let path = format!("/v1/agent/connect/ca/leaf/{service}");
    match http(run, run.cluster.agents[k].http_addr(), "GET", &path, b"").await {
        Ok((200, text)) => serde_json::from_str::<serde_json::Value>(&text).ok()?["SerialNumber"]
            .as_str()
            .map(str::to_string),
        _ => None,
    }
}

/// Lifetime renewal: fcs00's wall clock steps 66 h ahead (an NTP step on
/// a host whose clock had stopped), past the point where a 72 h leaf is
/// renewed (60-90 % of its life), so its agent must sign a new leaf for
/// fcs within [`ROTATION_BOUND`] plus one roots poll (10 s), without a
/// rotation to prompt it, and fcc's traffic may not pause longer than
/// [`FAILOVER_GAP_BOUND`]. The clock is set right again afterwards.
async fn renew_by_age(
    run: &mut Run,
    traffic: &Arc<Mutex<Traffic>>,
    base: Instant,
) -> Result<(), String> {
    const AHEAD_MS: i64 = 66 * 3600 * 1000;
    let bound = ROTATION_BOUND + Duration::from_secs(10);
    let before = leaf_serial(run, FCS, "fcs")
        .await
        .ok_or("fcs00's agent serves no leaf for fcs")?;
    let t0 = ms_since(base);
    let t = Instant::now();
    run.cluster.set_agent_clock(FCS, 1_000_000, AHEAD_MS);
    loop {
        run.settle(Duration::from_millis(200)).await?;
        match leaf_serial(run, FCS, "fcs").await {
            Some(now) if now != before => break,
            _ if t.elapsed() > bound => {
                return Err(format!(
                    "fcs00's clock is 66 h ahead but its agent still serves leaf {before} after {bound:?}"
                ))
            }
            _ => {}
        }
    }
    run.report.leaf_renewal_ms = t.elapsed().as_millis() as u64;
    run.settle(Duration::from_secs(2)).await?;
    run.cluster.set_agent_clock(FCS, 1_000_000, 0);
    wait_answers(
        run,
        traffic,
        3,
        Duration::from_secs(10),
        "after the leaf renewal",
    )
    .await?;
    no_pause_no_loss(traffic, t0, base, "fcs's leaf renewal").map(|_| ())
}

/// A clock fault on the verifying side: fcs00's wall clock steps 80 h
/// ahead, past the end of fcc's 72 h leaf (and of every leaf the servers
/// sign meanwhile, on their own clocks). To fcs's sidecar fcc's leaf is
/// expired, and it must refuse fcc as it refuses evil00's expired leaf:
/// from 1 s after the step (a connection already past its handshake may
/// finish) nothing may reach fcs, while fcc keeps trying. Once the clock is
/// right again, traffic must resume within [`RESTART_BOUND`]; returns the
/// simulated ms it took.
async fn skewed_verifier(
    run: &mut Run,
    traffic: &Arc<Mutex<Traffic>>,
    base: Instant,
) -> Result<u64, String> {
    const AHEAD_MS: i64 = 80 * 3600 * 1000;
    let t0 = ms_since(base);
    run.cluster.set_agent_clock(FCS, 1_000_000, AHEAD_MS);
    run.settle(Duration::from_secs(4)).await?;
    let (from, to) = (t0 + 1000, ms_since(base));
    {
        let mut t = traffic.lock().expect("traffic");
        t.forbid_between(from, to, "fcc's leaf is expired on fcs00's clock");
        if t.attempts_between(from, to) == 0 {
            return Err(
                "fcc made no attempt while fcs00's clock was 80 h ahead: the refusal proved nothing"
                    .into(),
            );
        }
    }
    run.cluster.set_agent_clock(FCS, 1_000_000, 0);
    let took = wait_answers(
        run,
        traffic,
        3,
        RESTART_BOUND,
        "after fcs00's clock was set right",
    )
    .await?;
    Ok(took.as_millis() as u64)
}

/// Every attack from evil00; each must be refused before a byte reaches
/// fcs (the checker also compares what fcs received).
async fn attack(run: &mut Run) -> Result<Vec<Attack>, String> {
    let leader = run
        .leader_among(&run.cluster.running(), ELECTION_BOUND)
        .await?;
    let root = run
        .cluster
        .server(leader)
        .and_then(|s| s.view().read(|sm| sm.ca().active_root().cloned()))
        .ok_or("the leader has no CA root")?;
    let td = root.trust_domain.clone();
    let fcc_id = SpiffeId::service(&td, "dc1", "fcc");
    let now = mesh_net::clock::wall_now();
    let day = Duration::from_secs(86_400);
    let (key, pk) = leaf_key()?;
    // A real leaf for fcc, expired a week ago.
    let expired = ca::sign_leaf(
        &root,
        &fcc_id,
        &pk,
        7,
        now - 8 * day,
        Duration::from_secs(3600),
    )
    .map_err(|e| e.to_string())?;
    // A leaf for fcc from a CA the cluster never heard of.
    let other_ca = ca::generate_root(&td, 9, now, 10 * day).map_err(|e| e.to_string())?;
    let forged = ca::sign_leaf(&other_ca, &fcc_id, &pk, 11, now, day).map_err(|e| e.to_string())?;
    // A real leaf for another service, for the impostor sidecar.
    let (evil_key, evil_pk) = leaf_key()?;
    let evil_leaf = ca::sign_leaf(
        &root,
        &SpiffeId::service(&td, "dc1", "evil"),
        &evil_pk,
        13,
        now,
        day,
    )
    .map_err(|e| e.to_string())?;
    let root_pem = root.root_cert_pem.clone();
    let bundle =
        TrustBundle::from_pems(std::slice::from_ref(&root_pem), &td).map_err(|e| e.to_string())?;
    let evil_id = Identity::from_pem(&evil_leaf.cert_pem, &evil_key).map_err(|e| e.to_string())?;

    let evil = madsim::runtime::Handle::current()
        .create_node()
        .name("evil00")
        .ip(IpAddr::V4(EVIL_IP))
        .build();
    // The impostor: a sidecar for "evil" that echoes like fcs, registered
    // in the catalog as a sidecar of fcs.
    let server_cfg = tls::server_config(&evil_id, &bundle).map_err(|e| e.to_string())?;
    evil.spawn(async move {
        let Ok(l) = tokio::net::TcpListener::bind(("0.0.0.0", SIDECAR_PORT)).await else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        while let Ok((conn, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(conn).await else {
                    return;
                };
                let (r, mut w) = tokio::io::split(tls);
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let sent = w.write_all(format!("ECHO {line}\n").as_bytes()).await;
                    // Simulated TCP sends on flush.
                    if sent.is_err() || w.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = run.cluster.http_addr(leader);
    let impostor = format!(
        r#"{{"Node":"evil00","Address":"{EVIL_IP}","Service":{{"ID":"fcs-sidecar-proxy","Service":"fcs-sidecar-proxy","Kind":"connect-proxy","Port":{SIDECAR_PORT},"Address":"{EVIL_IP}","Proxy":{{"DestinationServiceName":"fcs","DestinationServiceID":"fcs","LocalServicePort":8181}}}}}}"#
    );
    http_ok(
        run,
        server.clone(),
        "PUT",
        "/v1/catalog/register",
        impostor.as_bytes(),
    )
    .await?;

    let fcs_sidecar = SocketAddr::new(run.cluster.agents[FCS].ip, SIDECAR_PORT);
    let fcs_direct = SocketAddr::new(run.cluster.agents[FCS].ip, APP_PORT);
    let counter = Arc::new(AtomicU64::new(0));
    let mut out = Vec::new();
    for round in 0..3 {
        for kind in ["plaintext", "direct", "forged-ca", "expired-leaf"] {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let nonce = format!("evil-{kind}-{round}-{n}");
            let cert = if kind == "forged-ca" {
                forged.cert_pem.clone()
            } else {
                expired.cert_pem.clone()
            };
            let (key, root_pem, td) = (key.clone(), root_pem.clone(), td.clone());
            let line = format!("REQ {nonce} attack\n");
            let answered = evil
                .spawn(async move {
                    let target = if kind == "direct" {
                        fcs_direct
                    } else {
                        fcs_sidecar
                    };
                    let try_it = async {
                        let conn = tokio::net::TcpStream::connect(target).await.ok()?;
                        match kind {
                            "plaintext" | "direct" => talk(conn, &line).await,
                            _ => {
                                let id = Identity::from_pem(&cert, &key).ok()?;
                                let bundle = TrustBundle::from_pems(&[root_pem], &td).ok()?;
                                let cfg = tls::client_config(&id, &bundle, "fcs").ok()?;
                                let tls = tokio_rustls::TlsConnector::from(cfg)
                                    .connect(tls::server_name("fcs"), conn)
                                    .await
                                    .ok()?;
                                talk(tls, &line).await
                            }
                        }
                    };
                    madsim::time::timeout(Duration::from_secs(3), try_it)
                        .await
                        .ok()
                        .flatten()
                })
                .await
                .map_err(|e| format!("attacker task failed: {e}"))?;
            out.push(Attack {
                kind: kind.to_owned(),
                nonce,
                answered: answered.is_some(),
            });
        }
        run.settle(Duration::from_millis(300)).await?;
    }
    out.extend(rpc_attacks(run, &evil, leader).await?);
    // Give fcc time to meet the impostor (it rotates through instances).
    run.settle(Duration::from_secs(2)).await?;
    http_ok(
        run,
        server,
        "PUT",
        "/v1/catalog/deregister",
        r#"{"Node":"evil00"}"#.as_bytes(),
    )
    .await?;
    Ok(out)
}

/// Attacks on the servers' RPC port from evil00: a KV write and a join as
/// a server in plaintext, a join with a genuine client certificate of the
/// operator CA, and one with a server certificate from a CA of its own. Each is answered only
/// if a server accepted it (a refusal or a closed connection is not an
/// answer); afterwards the Raft configuration must still be consul00-02.
async fn rpc_attacks(
    run: &mut Run,
    evil: &madsim::runtime::NodeHandle,
    leader: usize,
) -> Result<Vec<Attack>, String> {
    use mesh_core::agent_tls::CertKind;
    use mesh_core::formation::ServerInfo;
    use mesh_core::state::kv::KvCommand;
    use mesh_core::state::Command;
    use mesh_core::wire::{Request, Response};
    use mesh_net::rpc::RpcClient;

    let target = run.cluster.rpc_addr(leader);
    let client_cert = run.cluster.rpc_tls.cert(CertKind::Client, "evil00");
    let own_ca = crate::rpc_tls::new_ca();
    let forged_server = crate::rpc_tls::sign(&own_ca, CertKind::Server, "evil00");
    let mut out = Vec::new();
    for kind in [
        "rpc-plaintext-write",
        "rpc-plaintext-join",
        "rpc-client-cert-join",
        "rpc-forged-ca-join",
    ] {
        let tls = match kind {
            "rpc-plaintext-write" | "rpc-plaintext-join" => None,
            "rpc-client-cert-join" => Some(run.cluster.rpc_tls.agent(&client_cert)),
            _ => Some(crate::rpc_tls::agent_tls(&own_ca, &forged_server)),
        };
        let to = target.clone();
        let answered = evil
            .spawn(async move {
                let rpc = RpcClient::with_source_ip(IpAddr::V4(EVIL_IP), tls);
                let req = if kind == "rpc-plaintext-write" {
                    Request::Write(Command::Kv(KvCommand::Set {
                        key: "evil/injected".into(),
                        value: b"from evil00".to_vec(),
                        flags: 0,
                    }))
                } else {
                    Request::Join(ServerInfo {
                        node_id: 0xe71,
                        name: "evil00".into(),
                        rpc_addr: format!("{EVIL_IP}:8300"),
                        http_addr: format!("{EVIL_IP}:8500"),
                        bootstrap_expect: None,
                    })
                };
                match rpc.call(&to, &req, Duration::from_secs(3)).await {
                    Ok(Response::Error(_)) | Err(_) => false,
                    Ok(_) => true,
                }
            })
            .await
            .map_err(|e| format!("attacker task failed: {e}"))?;
        out.push(Attack {
            kind: kind.to_owned(),
            nonce: format!("{kind}-to-{target}"),
            answered,
        });
    }
    let members = run
        .cluster
        .server(leader)
        .map(|s| {
            let status = s.status();
            let peers = status.peers.into_iter().map(|p| p.info.name);
            peers
                .chain(status.known_servers.into_iter().map(|k| k.name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if members.iter().any(|m| m == "evil00") {
        return Err(format!(
            "evil00 joined the servers through the RPC port: {members:?}"
        ));
    }
    Ok(out)
}

/// Sends `line` and reads one line back.
async fn talk<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: S,
    line: &str,
) -> Option<String> {
    let (r, mut w) = tokio::io::split(conn);
    w.write_all(line.as_bytes()).await.ok()?;
    w.flush().await.ok()?;
    let mut lines = BufReader::new(r).lines();
    lines.next_line().await.ok().flatten()
}

fn leaf_key() -> Result<(String, Vec<u8>), String> {
    let k = ca::generate_leaf_key().map_err(|e| e.to_string())?;
    Ok((k.key.expose().to_owned(), k.public_key_der.clone()))
}
