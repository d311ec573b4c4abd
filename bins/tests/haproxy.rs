//! A real consumer of Consul's DNS, unchanged: HAProxy (Debian's
//! `haproxy`) fills a backend from `_web._tcp.service.consul` SRV records
//! served by an agent (`server-template ... resolvers consul`), the way
//! Consul users front services with HAProxy. Instances whose check fails
//! or that are deregistered must leave the backend, and new ones join it.
//!
//! Skipped when HAProxy is not installed, unless `MESH_REQUIRE_HAPROXY` is
//! set (`.ci/run` installs it and sets it).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_bins::process_cluster::{eventually, poll_until, test_dir, ProcessCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVER_IP: &str = "127.0.0.120";
const AGENT_IP: &str = "127.0.0.121";
const BACKEND_IPS: [&str; 3] = ["127.0.0.122", "127.0.0.123", "127.0.0.124"];
const FRONTEND: &str = "127.0.0.125:18080";
/// How long HAProxy may take to follow a change: its resolver asks every
/// second (`hold valid 1s`), our DNS TTL is 0, and its health checks run
/// every second.
const FOLLOW_BOUND: Duration = Duration::from_secs(15);

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend that answers every connection with its name.
async fn backend(ip: &str, name: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind backend");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Which backends `n` connections through HAProxy reached.
async fn reached(n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(FRONTEND)).await
        else {
            continue;
        };
        let mut buf = Vec::new();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await
        {
            if !buf.is_empty() {
                seen.insert(String::from_utf8_lossy(&buf).to_string());
            }
        }
    }
    seen
}

async fn put(c: &ProcessCluster, agent: usize, path: &str, body: &str) {
    let r = c
        .request(agent, "PUT", path, body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    assert_eq!(
        r.status,
        200,
        "PUT {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Waits until every one of 12 connections in a row reaches exactly
/// `expected` between them.
async fn backends_become(what: &str, expected: &[&str]) {
    let expected = set(expected);
    let took = poll_until(FOLLOW_BOUND, || async { reached(12).await == expected })
        .await
        .unwrap_or_else(|| {
            panic!("{what}: HAProxy did not reach exactly {expected:?} within {FOLLOW_BOUND:?}")
        });
    eprintln!("{what}: {expected:?} after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_the_catalog_through_dns_srv() {
    let installed = Command::new("sh")
        .args(["-c", "command -v haproxy"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("MESH_REQUIRE_HAPROXY").is_none(),
            "MESH_REQUIRE_HAPROXY is set but haproxy is missing (apt-get install haproxy)"
        );
        eprintln!("skipped: install haproxy to run it");
        return;
    }
    let dir = test_dir("haproxy");
    let mut c = ProcessCluster::new(
        Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &[SERVER_IP],
        18380,
        18580,
    )
    .expect("cluster dir");
    let agent = c.add_client("web00", AGENT_IP, &[]);
    c.start(0).expect("start server");
    c.start(agent).expect("start agent");
    c.wait_for_leader(Duration::from_secs(30))
        .await
        .expect("the server leads");
    // The client agent starts alongside; its API may not listen yet.
    eventually(
        "the client agent answers",
        Duration::from_secs(30),
        || async {
            c.request(agent, "GET", "/v1/agent/self", b"")
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;

    let names = ["a", "b", "c"];
    let mut ports = Vec::new();
    for (ip, name) in BACKEND_IPS.iter().zip(names) {
        ports.push(backend(ip, name).await);
    }
    let register = |i: usize| {
        format!(
            r#"{{"Name":"web","ID":"web-{}","Address":"{}","Port":{},"Check":{{"TTL":"60s","Status":"passing"}}}}"#,
            names[i], BACKEND_IPS[i], ports[i]
        )
    };
    for i in 0..2 {
        put(&c, agent, "/v1/agent/service/register", &register(i)).await;
    }

    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global
  log stderr format raw local0 warning
defaults
  mode tcp
  timeout connect 2s
  timeout client 5s
  timeout server 5s
resolvers consul
  nameserver mesh {AGENT_IP}:8600
  accepted_payload_size 8192
  timeout resolve 1s
  timeout retry 1s
  hold valid 1s
  hold obsolete 1s
frontend fe
  bind {FRONTEND}
  default_backend web
backend web
  balance roundrobin
  server-template web 5 _web._tcp.service.consul resolvers consul resolve-prefer ipv4 init-addr none check inter 1s
"
        ),
    )
    .expect("haproxy.cfg");
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
    let _haproxy = HaProxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy"),
    );

    backends_become("two registered instances", &["a", "b"]).await;

    // A failing check takes an instance out of DNS, so out of HAProxy.
    put(&c, agent, "/v1/agent/check/fail/service:web-b", "").await;
    backends_become("b's check critical", &["a"]).await;

    // A new instance joins; a deregistered one leaves.
    put(&c, agent, "/v1/agent/service/register", &register(2)).await;
    backends_become("c registered", &["a", "c"]).await;
    put(&c, agent, "/v1/agent/service/deregister/web-a", "").await;
    backends_become("a deregistered", &["c"]).await;

    // A passing check brings b back.
    put(&c, agent, "/v1/agent/check/pass/service:web-b", "").await;
    backends_become("b passing again", &["b", "c"]).await;
    c.stop_all();
}
