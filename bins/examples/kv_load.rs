//! KV write throughput and failover time on loopback, with real processes.
//!
//! ```text
//! cargo run --release --example kv_load -- [clients=64] [seconds=10]
//! ```
//!
//! Starts consul00-02 on 127.0.0.10-12 (ports 38300/38500), runs `clients`
//! concurrent writers (one keep-alive HTTP connection each, spread over the
//! three servers) for `seconds`, prints writes/s and latency percentiles,
//! then kills the leader and reports how long the others took to agree on
//! a new one. A measurement, not a test: the numbers depend on the machine.

use std::time::{Duration, Instant};

use mesh_bins::process_cluster::ProcessCluster;
use mesh_net::http_client::HttpClient;

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clients = args.first().copied().unwrap_or(64) as usize;
    let seconds = args.get(1).copied().unwrap_or(10);
    let exe = std::env::current_exe().expect("own path");
    let mesh = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("mesh");
    let dir = std::env::temp_dir().join(format!("mesh-kv-load-{}", std::process::id()));
    let ips = ["127.0.0.10", "127.0.0.11", "127.0.0.12"];
    let mut c = ProcessCluster::new(&mesh, &dir, &ips, 38300, 38500)
        .expect("cluster dir")
        .with_args(&["-log-level", "warn"]);
    for i in 0..3 {
        c.start(i)
            .expect("start (build the mesh binary first: cargo build --release)");
    }
    let leader = c
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for id in 0..clients {
        let addr = c.http_addr(id % 3);
        tasks.push(tokio::spawn(async move {
            let mut http = HttpClient::new(addr, Duration::from_secs(10));
            let (mut lat, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = matches!(http.request("PUT", &format!("/v1/kv/load/{id}/{n}"), vec![b'x'; 64]).await,
                    Ok(r) if r.status == 200);
                if ok { lat.push(t.elapsed()); } else { errors += 1; }
                n += 1;
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("client task");
        lat.extend(l);
        errors += e;
    }
    lat.sort();
    let p = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "clients={clients} seconds={seconds} writes={} errors={errors} writes_per_s={:.0} latency_ms p50={:.2} p99={:.2} max={:.2}",
        lat.len(),
        lat.len() as f64 / seconds as f64,
        p(0.5),
        p(0.99),
        p(1.0)
    );
    c.kill(leader);
    let t = Instant::now();
    let new_leader = c
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("new leader");
    println!(
        "failover: {} -> {} in {} ms",
        c.nodes[leader].name,
        c.nodes[new_leader].name,
        t.elapsed().as_millis()
    );
    let mut http = HttpClient::new(c.http_addr(new_leader), Duration::from_secs(10));
    let r = http
        .request("PUT", "/v1/kv/after-failover", b"1".to_vec())
        .await
        .expect("write after failover");
    assert_eq!(r.status, 200);
    c.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}
