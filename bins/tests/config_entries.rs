//! `service-intentions` config entries on a real server: `mesh config
//! write` of an HCL file as Consul's docs write them, the entry read back
//! in Consul's shape, its decisions through the intention check and the
//! exact-match API, check-and-set, delete, and the refusals (other kinds,
//! L7 permissions, malformed bodies) that change nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_bins::process_cluster::{test_dir, ProcessCluster};
use serde_json::Value;

const IP: &str = "127.0.0.126";

fn mesh(c: &ProcessCluster, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(&args[..1])
        .args(args.get(1..2).unwrap_or_default())
        .arg(format!("-http-addr={}", c.http_addr(0)))
        .args(args.get(2..).unwrap_or_default())
        .output()
        .expect("run mesh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn get(c: &ProcessCluster, path: &str) -> (u16, Value) {
    let r = c.request(0, "GET", path, b"").await.expect("GET");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// One request to the server: its status and trimmed body.
async fn call(c: &ProcessCluster, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = c
        .request(0, method, path, body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.text().trim().to_string())
}

async fn allowed(c: &ProcessCluster, source: &str) -> bool {
    let (status, v) = get(
        c,
        &format!("/v1/connect/intentions/check?source={source}&destination=fcs"),
    )
    .await;
    assert_eq!(status, 200);
    v["Allowed"] == Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_intentions_entries_are_the_intentions_of_a_destination() {
    let dir = test_dir("config-entries");
    let mut c = ProcessCluster::new(
        Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &[IP],
        18390,
        18590,
    )
    .expect("cluster dir");
    c.start(0).expect("start");
    c.wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader");

    // An intention made the old way, which the entry will replace.
    let (ok, out) = mesh(&c, &["intention", "create", "-allow", "web", "fcs"]);
    assert!(ok, "{out}");

    let file = dir.join("fcs-intentions.hcl");
    std::fs::write(
        &file,
        r#"Kind = "service-intentions"
Name = "fcs"
Meta {
  owner = "payments"
}
Sources = [
  {
    Name        = "fcc"
    Action      = "allow"
    Description = "the consumer"
  },
  {
    Name   = "*"
    Action = "deny"
  }
]
"#,
    )
    .unwrap();
    let (ok, out) = mesh(&c, &["config", "write", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Config entry written: service-intentions / fcs"),
        "{out}"
    );

    let (status, entry) = get(&c, "/v1/config/service-intentions/fcs").await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["Kind"], "service-intentions");
    assert_eq!(entry["Meta"]["owner"], "payments");
    let sources: Vec<(&str, &str, u64)> = entry["Sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["Name"].as_str().unwrap(),
                s["Action"].as_str().unwrap(),
                s["Precedence"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sources, [("fcc", "allow", 9), ("*", "deny", 8)]);
    let modify_index = entry["ModifyIndex"].as_u64().unwrap();
    assert!(allowed(&c, "fcc").await);
    assert!(!allowed(&c, "web").await, "web's old intention is gone");
    let (status, _) = get(
        &c,
        "/v1/connect/intentions/exact?source=web&destination=fcs",
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = get(&c, "/v1/config/service-intentions").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // Check-and-set: a stale index changes nothing; the current one applies.
    let (ok, out) = mesh(
        &c,
        &[
            "config",
            "write",
            "-cas",
            "-modify-index",
            "1",
            file.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("did not match"), "{out}");
    let json_entry =
        r#"{"Kind":"service-intentions","Name":"fcs","Sources":[{"Name":"web","Action":"allow"}]}"#;
    let written = call(
        &c,
        "PUT",
        &format!("/v1/config?cas={modify_index}"),
        json_entry,
    )
    .await;
    assert_eq!(written, (200, "true".into()));
    assert!(allowed(&c, "web").await);
    assert!(!allowed(&c, "fcc").await, "fcc was not listed any more");

    // A source removed through the older API changes the entry: its
    // ModifyIndex as read moves, a write holding the old one is refused,
    // and one holding the index read back applies.
    let two = r#"{"Kind":"service-intentions","Name":"fcs","Sources":[{"Name":"web","Action":"allow"},{"Name":"db","Action":"allow"}]}"#;
    assert_eq!(
        call(&c, "PUT", "/v1/config", two).await,
        (200, "true".into())
    );
    let (_, entry) = get(&c, "/v1/config/service-intentions/fcs").await;
    let before = entry["ModifyIndex"].as_u64().unwrap();
    let (status, _) = call(
        &c,
        "DELETE",
        "/v1/connect/intentions/exact?source=db&destination=fcs",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (_, entry) = get(&c, "/v1/config/service-intentions/fcs").await;
    let after = entry["ModifyIndex"].as_u64().unwrap();
    assert!(after > before, "ModifyIndex {before} -> {after}: {entry}");
    assert_eq!(
        call(&c, "PUT", &format!("/v1/config?cas={before}"), two).await,
        (200, "false".into()),
        "the stale write must not restore db"
    );
    let (status, _) = get(&c, "/v1/connect/intentions/exact?source=db&destination=fcs").await;
    assert_eq!(status, 404);
    assert_eq!(
        call(&c, "PUT", &format!("/v1/config?cas={after}"), json_entry).await,
        (200, "true".into()),
        "a read-modify-write round trip applies"
    );

    // Refused, and nothing changes.
    for (body, why) in [
        (
            r#"{"Kind":"service-defaults","Name":"fcs","Protocol":"http"}"#,
            "not supported",
        ),
        (
            r#"{"Kind":"service-intentions","Name":"fcs","Sources":[{"Name":"fcc","Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/"}}]}]}"#,
            "Permissions",
        ),
        (
            r#"{"Kind":"service-intentions","Name":"fcs","Sources":[{"Name":"fcc","Action":"maybe"}]}"#,
            "Action",
        ),
        (
            r#"{"Kind":"service-intentions","Name":"fcs","Sources":[{"Name":"a","Action":"allow"},{"Name":"a","Action":"deny"}]}"#,
            "twice",
        ),
        (r#"{"Kind":"service-intentions","Name":"fcs","#, "decode"),
        (
            r#"{"Kind":"service-intentions","Name":"fcs","Source":[{"Name":"fcc","Action":"allow"}]}"#,
            "invalid config key",
        ),
        (
            r#"{"Kind":"service-intentions","Name":"fcs"}"#,
            "Sources is required",
        ),
        (
            r#"{"Kind":"service-intentions","Name":"fcs","Sources":[{"Name":"fcc","Action":"allow","Acton":"deny"}]}"#,
            "invalid config key",
        ),
    ] {
        let (status, text) = call(&c, "PUT", "/v1/config", body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }
    assert!(allowed(&c, "web").await, "the refusals changed nothing");

    // Delete: the destination's intentions go; the default (deny) decides.
    let (ok, out) = mesh(
        &c,
        &[
            "config",
            "delete",
            "-kind",
            "service-intentions",
            "-name",
            "fcs",
        ],
    );
    assert!(ok, "{out}");
    let (status, _) = get(&c, "/v1/config/service-intentions/fcs").await;
    assert_eq!(status, 404);
    assert!(!allowed(&c, "web").await);
    c.stop_all();
}
