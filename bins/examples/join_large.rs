//! A new server joins a cluster that holds a large state: the snapshot
//! travels in chunks, and both sides' peak memory is reported.
//!
//! ```text
//! cargo build --release && cargo run --release --example join_large -- [mib=1024]
//! ```
//!
//! Starts consul00 alone (`-bootstrap`) on 127.0.0.30, writes `mib` MiB of
//! KV (512 KiB values), then starts consul01 on 127.0.0.31 with `-retry-join` and
//! waits until it holds every key. Prints the load time, the catch-up time
//! and the peak RSS (`VmHWM`) of the sender and the receiver. Too heavy for
//! `cargo test` at 1 GiB; a measurement, not a test.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_net::http_client::HttpClient;

const VALUE_LEN: usize = 512 * 1024;

fn spawn(mesh: &Path, dir: &Path, name: &str, ip: &str, extra: &[&str]) -> Child {
    let log = File::create(dir.join(format!("{name}.log"))).expect("log file");
    Command::new(mesh)
        .args([
            "agent", "-server", "-node", name, "-bind", ip, "-client", ip,
        ])
        .args(["-server-port=38400", "-http-port=38600", "-log-level=warn"])
        .arg(format!("-data-dir={}", dir.join(name).display()))
        .args(["-snapshot-threshold", "256"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start mesh (build it first: cargo build --release)")
}

fn peak_rss_mib(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

async fn key_count(http: &mut HttpClient) -> usize {
    match http.request("GET", "/v1/kv/big/?keys&stale", vec![]).await {
        Ok(r) if r.status == 200 => {
            serde_json::from_slice::<Vec<String>>(&r.body).map_or(0, |k| k.len())
        }
        _ => 0,
    }
}

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let count = mib * 1024 * 1024 / VALUE_LEN;
    let exe = std::env::current_exe().expect("own path");
    let mesh = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("mesh");
    let dir = std::env::temp_dir().join(format!("mesh-join-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");

    let mut leader = spawn(&mesh, &dir, "consul00", "127.0.0.30", &["-bootstrap"]);
    let mut http = HttpClient::new("127.0.0.30:38600", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(http.request("PUT", "/v1/kv/ready", b"1".to_vec()).await, Ok(r) if r.status == 200)
    {
        assert!(Instant::now() < deadline, "consul00 did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let t = Instant::now();
    for i in 0..count {
        let mut value = vec![b'a' + (i % 26) as u8; VALUE_LEN];
        value[..8].copy_from_slice(format!("{i:08}").as_bytes());
        let r = http
            .request("PUT", &format!("/v1/kv/big/{i:06}"), value)
            .await
            .expect("write");
        assert_eq!(r.status, 200, "write {i}: {}", r.text());
    }
    println!(
        "loaded {count} values of {VALUE_LEN} bytes ({mib} MiB) in {:.1} s; sender's peak RSS so far {} MiB",
        t.elapsed().as_secs_f64(),
        peak_rss_mib(&leader)
    );

    let t = Instant::now();
    let mut joiner = spawn(
        &mesh,
        &dir,
        "consul01",
        "127.0.0.31",
        &["-retry-join", "127.0.0.30:38400"],
    );
    let mut http1 = HttpClient::new("127.0.0.31:38600", Duration::from_secs(30));
    let deadline = t + Duration::from_secs(1800);
    loop {
        let held = key_count(&mut http1).await;
        if held == count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consul01 holds {held} of {count} keys after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "consul01 joined and caught up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "peak RSS: sender (consul00) {} MiB, receiver (consul01) {} MiB",
        peak_rss_mib(&leader),
        peak_rss_mib(&joiner)
    );
    for child in [&mut leader, &mut joiner] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
