//! Consul's KV HTTP API against a real single-server agent: shapes,
//! parameters, headers, check-and-set, recursive operations and blocking
//! queries.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_net::http_client::{HttpClient, HttpResponse};
use serde_json::Value;

const IP: &str = "127.0.0.30";
const HTTP: &str = "127.0.0.30:18502";

struct Agent(Child, PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start() -> Agent {
    let dir = std::env::temp_dir().join(format!("mesh-it-kv-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "agent",
            "-server",
            "-bootstrap",
            "-node",
            "kvtest",
            "-bind",
            IP,
            "-client",
            IP,
        ])
        .args(["-server-port", "18302", "-http-port", "18502"])
        .arg(format!("-data-dir={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    Agent(child, dir)
}

async fn call(method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let mut c = HttpClient::new(HTTP, Duration::from_secs(30));
    c.request(method, path, body.to_vec())
        .await
        .expect("agent answers")
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("bad JSON {e}: {}", r.text()))
}

fn index(r: &HttpResponse) -> u64 {
    r.header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .expect("X-Consul-Index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_api_behaves_like_consul() {
    let _agent = start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(HttpClient::new(HTTP, Duration::from_secs(1)).request("GET", "/v1/status/leader", vec![]).await,
        Ok(r) if r.text().contains(':'))
    {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // phase: put, get, JSON shape and headers
    let r = call("PUT", "/v1/kv/app/config?flags=42", b"hello").await;
    assert_eq!((r.status, r.text()), (200, "true".to_string()));
    let r = call("GET", "/v1/kv/app/config", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-consul-knownleader"), Some("true"));
    assert!(r.header("x-consul-lastcontact").is_some());
    let v = json(&r);
    assert_eq!(v[0]["Key"], "app/config");
    assert_eq!(v[0]["Value"], "aGVsbG8=");
    assert_eq!(v[0]["Flags"], 42);
    let modify = v[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(v[0]["CreateIndex"].as_u64().unwrap(), modify);
    assert_eq!(index(&r), modify);
    assert_eq!(
        call("GET", "/v1/kv/app/config?raw", b"").await.text(),
        "hello"
    );
    assert_eq!(call("GET", "/v1/kv/missing", b"").await.status, 404);

    // phase: check-and-set
    assert_eq!(
        call("PUT", "/v1/kv/app/config?cas=0", b"x").await.text(),
        "false"
    );
    assert_eq!(
        call(
            "PUT",
            &format!("/v1/kv/app/config?cas={}", modify + 100),
            b"x"
        )
        .await
        .text(),
        "false"
    );
    assert_eq!(
        call("PUT", &format!("/v1/kv/app/config?cas={modify}"), b"v2")
            .await
            .text(),
        "true"
    );
    let v = json(&call("GET", "/v1/kv/app/config", b"").await);
    assert_eq!(v[0]["CreateIndex"].as_u64().unwrap(), modify);
    assert!(v[0]["ModifyIndex"].as_u64().unwrap() > modify);

    // phase: recurse, keys, separator
    for k in ["app/db/url", "app/db/user", "app/web", "other"] {
        assert_eq!(call("PUT", &format!("/v1/kv/{k}"), b"1").await.status, 200);
    }
    let all = json(&call("GET", "/v1/kv/app/?recurse", b"").await);
    assert_eq!(all.as_array().unwrap().len(), 4);
    let keys = json(&call("GET", "/v1/kv/app/?keys&separator=/", b"").await);
    assert_eq!(
        keys,
        serde_json::json!(["app/config", "app/db/", "app/web"])
    );
    assert_eq!(
        call("DELETE", "/v1/kv/app/db/?recurse", b"").await.text(),
        "true"
    );
    assert_eq!(call("GET", "/v1/kv/app/db/?recurse", b"").await.status, 404);
    assert_eq!(call("GET", "/v1/kv/other?stale&raw", b"").await.text(), "1");

    // phase: blocking query wakes on a write
    let r = call("GET", "/v1/kv/app/web", b"").await;
    let idx = index(&r);
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = call(
            "GET",
            &format!("/v1/kv/app/web?index={idx}&wait=20s&raw"),
            b"",
        )
        .await;
        (r, t.elapsed())
    });
    // Give the query time to reach the server; it must still be blocked
    // then (an immediate answer would be a blocking query that does not block).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "blocking query returned before any write"
    );
    assert_eq!(call("PUT", "/v1/kv/app/web", b"changed").await.status, 200);
    let (r, waited) = waiter.await.unwrap();
    assert_eq!(r.text(), "changed");
    assert!(index(&r) > idx);
    assert!(
        waited < Duration::from_secs(15),
        "blocking query did not wake: {waited:?}"
    );
    // ... and times out with the same index when nothing changes.
    let idx = index(&r);
    let r = call(
        "GET",
        &format!("/v1/kv/app/web?index={idx}&wait=300ms"),
        b"",
    )
    .await;
    assert_eq!((r.status, index(&r)), (200, idx));

    // phase: delete with cas
    let m = json(&call("GET", "/v1/kv/app/web", b"").await)[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        call("DELETE", &format!("/v1/kv/app/web?cas={}", m + 1), b"")
            .await
            .text(),
        "false"
    );
    assert_eq!(
        call("DELETE", &format!("/v1/kv/app/web?cas={m}"), b"")
            .await
            .text(),
        "true"
    );
    assert_eq!(call("GET", "/v1/kv/app/web", b"").await.status, 404);

    // phase: status and operator endpoints
    assert_eq!(
        json(&call("GET", "/v1/status/leader", b"").await),
        "127.0.0.30:18302"
    );
    assert_eq!(
        json(&call("GET", "/v1/status/peers", b"").await),
        serde_json::json!(["127.0.0.30:18302"])
    );
    let cfg = json(&call("GET", "/v1/operator/raft/configuration", b"").await);
    assert_eq!(cfg["Servers"][0]["Node"], "kvtest");
    assert_eq!(cfg["Servers"][0]["Leader"], true);

    // phase: metrics count what this test did, in both formats
    let m = json(&call("GET", "/v1/agent/metrics", b"").await);
    let named = |kind: &str, name: &str| -> Vec<Value> {
        m[kind]
            .as_array()
            .expect("metric list")
            .iter()
            .filter(|x| x["Name"] == name)
            .cloned()
            .collect()
    };
    let applied = named("Counters", "consul.raft.apply");
    assert!(
        applied[0]["Count"].as_u64().unwrap() >= 10,
        "raft applies counted: {applied:?}"
    );
    let kv_puts = named("Samples", "consul.api.http")
        .into_iter()
        .find(|x| x["Labels"]["method"] == "PUT" && x["Labels"]["path"] == "/v1/kv")
        .expect("PUT /v1/kv timed");
    assert!(kv_puts["Count"].as_u64().unwrap() >= 5, "{kv_puts}");
    assert!(kv_puts["Max"].as_f64().unwrap() >= kv_puts["Min"].as_f64().unwrap());
    assert_eq!(named("Gauges", "consul.server.isLeader")[0]["Value"], 1.0);
    let text = call("GET", "/v1/agent/metrics?format=prometheus", b"").await;
    assert_eq!(text.status, 200);
    assert!(text
        .text()
        .contains("# TYPE consul_raft_commitTime histogram"));
    assert!(text.text().contains("consul_kv_entries "));
    assert_eq!(
        call("GET", "/v1/agent/metrics?format=xml", b"")
            .await
            .status,
        400
    );
}
