//! `mesh demo`: three servers as child processes on 127.0.0.10-12, an
//! election, writes, kill -9 of the leader, failover, the old leader's
//! restart and catch-up, then a clean stop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_bins::flags::{Flags, Kind, Spec};
use mesh_bins::process_cluster::{poll_until, ProcessCluster};

const SPECS: &[Spec] = &[
    (
        "server-port",
        Kind::Value,
        "RPC port of the demo servers. Default: 8300.",
    ),
    (
        "http-port",
        Kind::Value,
        "HTTP port of the demo servers. Default: 8500.",
    ),
    (
        "data-dir",
        Kind::Value,
        "Where the demo keeps data and logs. Default: a fresh temp dir.",
    ),
    ("keep", Kind::Bool, "Keep the data dir afterwards."),
];

const IPS: [&str; 3] = ["127.0.0.10", "127.0.0.11", "127.0.0.12"];

/// Runs the demo; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let result = Flags::parse(args, SPECS).and_then(|flags| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(demo(&flags))
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

fn step(msg: &str) {
    println!("==> {msg}");
}

async fn put(c: &ProcessCluster, i: usize, key: &str, value: &str) -> Result<(), String> {
    let resp = c
        .request(i, "PUT", &format!("/v1/kv/{key}"), value.as_bytes())
        .await?;
    if resp.status == 200 && resp.body.starts_with(b"true") {
        Ok(())
    } else {
        Err(format!(
            "write of {key} via {} failed: {} {}",
            c.nodes[i].name,
            resp.status,
            resp.text()
        ))
    }
}

async fn get_raw(c: &ProcessCluster, i: usize, key: &str, stale: bool) -> Result<String, String> {
    let q = if stale { "raw&stale" } else { "raw" };
    let resp = c
        .request(i, "GET", &format!("/v1/kv/{key}?{q}"), b"")
        .await?;
    if resp.status == 200 {
        Ok(resp.text())
    } else {
        Err(format!(
            "read of {key} via {} failed: {} {}",
            c.nodes[i].name,
            resp.status,
            resp.text()
        ))
    }
}

async fn demo(flags: &Flags) -> Result<(), String> {
    let rpc_port = flags.number::<u16>("server-port")?.unwrap_or(8300);
    let http_port = flags.number::<u16>("http-port")?.unwrap_or(8500);
    let dir = match flags.get("data-dir") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id())),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the mesh binary: {e}"))?;
    let mut c = ProcessCluster::new(&exe, &dir, &IPS, rpc_port, http_port)
        .and_then(ProcessCluster::with_rpc_tls)
        .map_err(|e| e.to_string())?;
    step("TLS on the RPC port: an operator CA and a certificate per agent, verify_incoming, verify_outgoing and verify_server_hostname on");
    let mut outcome = story(&mut c).await;
    if outcome.is_ok() {
        outcome = agents_story(&mut c).await;
    }
    step("stopping every agent (SIGTERM)");
    c.stop_all();
    if !flags.bool("keep") && flags.get("data-dir").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("    data and logs kept in {}", dir.display());
    }
    if outcome.is_err() {
        eprintln!("    agent logs: {}/*.log", dir.display());
    }
    outcome
}

async fn story(c: &mut ProcessCluster) -> Result<(), String> {
    step("starting consul00-02 on 127.0.0.10-12 with -bootstrap-expect=3");
    for i in 0..3 {
        c.start(i)
            .map_err(|e| format!("starting {}: {e}", c.nodes[i].name))?;
    }
    let t0 = Instant::now();
    let leader = c
        .wait_for_leader(Duration::from_secs(15))
        .await
        .ok_or("no leader elected within 15 s (are 127.0.0.10-12 and the ports free?)")?;
    println!(
        "    {} is leader after {} ms",
        c.nodes[leader].name,
        t0.elapsed().as_millis()
    );

    let follower = (leader + 1) % 3;
    step(&format!(
        "writing 10 keys through follower {}",
        c.nodes[follower].name
    ));
    for n in 0..10 {
        put(c, follower, &format!("demo/key{n}"), &format!("value{n}")).await?;
    }
    println!(
        "    demo/key9 = {}",
        get_raw(c, leader, "demo/key9", false).await?
    );

    step(&format!("kill -9 the leader {}", c.nodes[leader].name));
    c.kill(leader);
    let t1 = Instant::now();
    let new_leader = c
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or("no new leader within 10 s")?;
    println!(
        "    {} took over after {} ms",
        c.nodes[new_leader].name,
        t1.elapsed().as_millis()
    );

    step("writing 10 more keys with the old leader down");
    for n in 10..20 {
        put(c, new_leader, &format!("demo/key{n}"), &format!("value{n}")).await?;
    }

    step(&format!(
        "restarting {} from its data dir",
        c.nodes[leader].name
    ));
    c.start(leader).map_err(|e| e.to_string())?;
    let t2 = Instant::now();
    loop {
        if let Ok(v) = get_raw(c, leader, "demo/key19", true).await {
            println!(
                "    caught up after {} ms: demo/key19 = {v} (stale read on the restarted server)",
                t2.elapsed().as_millis()
            );
            break;
        }
        if t2.elapsed() > Duration::from_secs(15) {
            return Err("restarted server did not catch up within 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    step("checking every acknowledged write on every server");
    for i in 0..3 {
        for n in 0..20 {
            let v = get_raw(c, i, &format!("demo/key{n}"), true).await?;
            if v != format!("value{n}") {
                return Err(format!("{} has demo/key{n} = {v}", c.nodes[i].name));
            }
        }
    }
    println!("    all 20 keys present on all 3 servers");
    Ok(())
}

/// The example configuration files (`deploy/`), which the demo starts the
/// client agents from.
const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// The stand-in for the fcs application on 127.0.0.13:8181: answers each
/// line with `fcs: <line>`, until dropped.
struct FcsApp(tokio::task::JoinHandle<()>);

impl FcsApp {
    async fn start() -> Result<FcsApp, String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        // A previous FcsApp's task may still be unwinding (abort is not
        // immediate): retry the bind for a moment.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind("127.0.0.13:8181").await {
                Ok(l) => break l,
                Err(e) if tries < 40 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("cannot listen on 127.0.0.13:8181 for fcs: {e}")),
            }
        };
        Ok(FcsApp(tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if w.write_all(format!("fcs: {line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        })))
    }
}

/// What fcc does: one line to its upstream for fcs (127.0.0.1:8181, fcc's
/// sidecar) and the answer, if one came within 2 s.
async fn fcc_request(line: &str) -> Option<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let exchange = async {
        let conn = tokio::net::TcpStream::connect("127.0.0.1:8181")
            .await
            .ok()?;
        let (r, mut w) = conn.into_split();
        w.write_all(format!("{line}\n").as_bytes()).await.ok()?;
        tokio::io::BufReader::new(r)
            .lines()
            .next_line()
            .await
            .ok()
            .flatten()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// A `mesh connect proxy` process, killed when dropped.
struct Sidecar(std::process::Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sidecar(c: &ProcessCluster, i: usize, service: &str) -> Result<Sidecar, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(c.log_path(i).with_extension(format!("{service}-proxy.log")))
        .map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .args(["connect", "proxy", "-sidecar-for", service, "-http-addr"])
        .arg(c.http_addr(i))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the {service} sidecar: {e}"))?;
    Ok(Sidecar(child))
}

/// `mesh intention create` through fcc00's agent.
fn intention(c: &ProcessCluster, i: usize, action: &str) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args(["intention", "create", "-replace", action, "-http-addr"])
        .arg(c.http_addr(i))
        .args(["fcc", "fcs"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "mesh intention create {action} fcc fcs: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!("    $ mesh intention create {action} fcc fcs");
    Ok(())
}

async fn connect_story(c: &mut ProcessCluster, fcs: usize, fcc: usize) -> Result<(), String> {
    step("starting the sidecars: mesh connect proxy -sidecar-for fcs (127.0.0.13:9191) and -sidecar-for fcc (upstream fcs on 127.0.0.1:8181)");
    let _app = FcsApp::start().await?;
    let _fcs_proxy = sidecar(c, fcs, "fcs")?;
    let _fcc_proxy = sidecar(c, fcc, "fcc")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    match fcc_request("hello from fcc").await {
        None => println!("    fcc -> fcs refused: no intention allows it yet (default deny)"),
        Some(a) => return Err(format!("fcc reached fcs with no intention: {a:?}")),
    }

    step("allowing fcc -> fcs");
    intention(c, fcc, "-allow")?;
    let t = Instant::now();
    until(
        "fcc reaches fcs through both sidecars",
        Duration::from_secs(20),
        || async { fcc_request("hello from fcc").await.is_some() },
    )
    .await?;
    let answer = fcc_request("hello from fcc").await.unwrap_or_default();
    println!(
        "    fcc -> fcc-sidecar -> mTLS -> fcs-sidecar -> fcs answered {answer:?} ({} ms after the allow)",
        t.elapsed().as_millis()
    );

    step("denying fcc -> fcs");
    intention(c, fcc, "-deny")?;
    let t = Instant::now();
    until("the deny takes effect", Duration::from_secs(10), || async {
        fcc_request("are you there?").await.is_none()
    })
    .await?;
    println!("    refused {} ms after the deny", t.elapsed().as_millis());
    intention(c, fcc, "-allow")?;
    until(
        "the allow takes effect",
        Duration::from_secs(10),
        || async { fcc_request("back?").await.is_some() },
    )
    .await?;
    println!("    allowed again");

    let leader = c
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or("no leader")?;
    step(&format!(
        "kill -9 the leader {} while fcc keeps calling fcs",
        c.nodes[leader].name
    ));
    c.kill(leader);
    let t = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while t.elapsed() < Duration::from_secs(3) {
        match fcc_request(&format!("request {}", ok + failed)).await {
            Some(_) => ok += 1,
            None => failed += 1,
        }
    }
    println!("    {ok} requests answered, {failed} failed in the 3 s after the kill");
    if ok == 0 {
        return Err("no request got through after the leader was killed".into());
    }
    c.start(leader).map_err(|e| e.to_string())?;
    Ok(())
}

impl Drop for FcsApp {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `probe` until it holds; the time it took, or an error naming `what`.
async fn until<F, Fut>(what: &str, limit: Duration, probe: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(limit, probe)
        .await
        .ok_or_else(|| format!("{what}: not within {limit:?}"))
}

/// Instances of `service` that `/v1/health/service/<service>?passing` lists, as seen by node `i`.
async fn passing(c: &ProcessCluster, i: usize, service: &str) -> usize {
    match c
        .request(
            i,
            "GET",
            &format!("/v1/health/service/{service}?passing"),
            b"",
        )
        .await
    {
        Ok(r) if r.status == 200 => {
            serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).map_or(0, |v| v.len())
        }
        _ => 0,
    }
}

/// The `serfHealth` status of `node`, as server `i` sees it.
async fn liveness(c: &ProcessCluster, i: usize, node: &str) -> String {
    let Ok(r) = c
        .request(i, "GET", &format!("/v1/health/node/{node}"), b"")
        .await
    else {
        return String::new();
    };
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap_or_default();
    checks
        .iter()
        .find(|ch| ch["CheckID"] == "serfHealth")
        .and_then(|ch| ch["Status"].as_str())
        .unwrap_or("")
        .to_string()
}

async fn agents_story(c: &mut ProcessCluster) -> Result<(), String> {
    let deploy = std::path::Path::new(DEPLOY_DIR);
    let fcs_file = deploy.join("fcs00.json").display().to_string();
    let fcc_file = deploy.join("fcc00.json").display().to_string();
    step("starting the fcs app on 127.0.0.13:8181, and client agents fcs00 and fcc00 from deploy/fcs00.json and deploy/fcc00.json");
    let mut app = Some(FcsApp::start().await?);
    let fcs = c.add_client("fcs00", "127.0.0.13", &["-config-file", &fcs_file]);
    let fcc = c.add_client("fcc00", "127.0.0.14", &["-config-file", &fcc_file]);
    for i in [fcs, fcc] {
        c.start(i)
            .map_err(|e| format!("starting {}: {e}", c.nodes[i].name))?;
    }
    let server = c
        .wait_for_leader(Duration::from_secs(10))
        .await
        .ok_or("no leader")?;
    let took = until(
        "fcs registered and passing",
        Duration::from_secs(15),
        || async { passing(c, server, "fcs").await == 1 },
    )
    .await?;
    println!(
        "    fcs is in the catalog and passing its TCP check after {} ms",
        took.as_millis()
    );
    let members = c
        .request(fcc, "GET", "/v1/agent/members", b"")
        .await
        .map(|r| r.text())?;
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&members)
        .unwrap_or_default()
        .iter()
        .map(|m| format!("{}({})", m["Name"].as_str().unwrap_or("?"), m["Status"]))
        .collect();
    println!("    members seen by fcc00: {}", names.join(" "));

    step("stopping the fcs app: its check turns critical and ?passing drops it");
    drop(app.take());
    let took = until("fcs critical", Duration::from_secs(10), || async {
        passing(c, server, "fcs").await == 0
    })
    .await?;
    println!("    excluded after {} ms", took.as_millis());

    step("starting the fcs app again");
    app = Some(FcsApp::start().await?);
    let took = until("fcs passing again", Duration::from_secs(10), || async {
        passing(c, server, "fcs").await == 1
    })
    .await?;
    println!("    passing again after {} ms", took.as_millis());

    step("kill -9 the fcs00 agent: its node turns critical (serfHealth)");
    c.kill(fcs);
    let took = until("fcs00 critical", Duration::from_secs(15), || async {
        liveness(c, server, "fcs00").await == "critical"
    })
    .await?;
    println!("    fcs00 critical after {} ms", took.as_millis());

    step("restarting fcs00 from its data dir: alive again");
    c.start(fcs).map_err(|e| e.to_string())?;
    let took = until("fcs00 passing", Duration::from_secs(15), || async {
        liveness(c, server, "fcs00").await == "passing" && passing(c, server, "fcs").await == 1
    })
    .await?;
    println!(
        "    fcs00 alive and fcs passing after {} ms",
        took.as_millis()
    );
    drop(app);
    connect_story(c, fcs, fcc).await
}
