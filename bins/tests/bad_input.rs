//! Bad input gets a clear error and loses nothing: wrong flags, garbage on
//! the RPC port, malformed HTTP, corrupt storage.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_bins::process_cluster::test_dir;
use mesh_net::http_client::HttpClient;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

fn mesh(args: &[&str]) -> Output {
    Command::new(MESH).args(args).output().expect("run mesh")
}

#[test]
fn bad_flags_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["agent", "-server", "-bogus"],
            "flag provided but not defined: -bogus",
        ),
        (
            &[
                "agent",
                "-server",
                "-bootstrap-expect",
                "three",
                "-data-dir",
                "/tmp/x",
            ],
            "invalid value \"three\"",
        ),
        (&["agent", "-server", "-node", "a"], "-data-dir is required"),
        (
            &[
                "agent",
                "-server",
                "-bootstrap",
                "-bootstrap-expect=3",
                "-data-dir",
                "/tmp/x",
            ],
            "mutually exclusive",
        ),
        (
            &[
                "agent",
                "-server",
                "-bind",
                "not-an-ip",
                "-data-dir",
                "/tmp/x",
                "-bootstrap",
            ],
            "invalid -bind address",
        ),
        (&["kv", "put"], "Usage: mesh kv put"),
        (&["frobnicate"], "unknown command"),
        (
            &["agent", "-dev", "-encrypt", "not base64!"],
            "encrypt: Failed to decode encryption key",
        ),
        (
            &["agent", "-dev", "-encrypt", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="],
            "encrypt: Invalid encryption key: 20 bytes",
        ),
        (&["keygen", "extra"], "keygen takes no arguments"),
    ];
    for (args, expected) in cases {
        let out = mesh(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    let out = mesh(&["kv", "get", "x", "-http-addr", "127.0.0.1:1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent"));
    // `mesh keygen`, as `consul keygen`: a new 32-byte key each time, one
    // that `encrypt` takes.
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = mesh(&["keygen"]);
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert_ne!(keys[0], keys[1]);
    for key in &keys {
        assert_eq!(mesh_core::gossip_key::check(key), Ok(()), "{key}");
        assert_eq!(key.len(), 44, "{key}");
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mesh agent` for a single bootstrapping server on `ip`.
fn single_server(ip: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(MESH);
    cmd.args([
        "agent",
        "-server",
        "-bootstrap",
        "-node",
        "solo",
        "-bind",
        ip,
        "-client",
        ip,
    ])
    .args(["-server-port", "18301", "-http-port", "18501"])
    .arg(format!("-data-dir={}", dir.display()));
    cmd
}

fn start_single(ip: &str, dir: &Path) -> Agent {
    let log = std::fs::File::create(dir.with_extension("log")).expect("log file");
    let child = single_server(ip, dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agent");
    Agent(child)
}

async fn wait_leader(http: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = HttpClient::new(http, Duration::from_secs(1));
        if let Ok(r) = c.request("GET", "/v1/status/leader", vec![]).await {
            if r.status == 200 && r.text().contains(':') {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "single server never became leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn garbage_and_malformed_requests_hurt_nothing_and_corruption_stops_startup() {
    let ip = "127.0.0.20";
    let http = format!("{ip}:18501");
    let dir = test_dir("bad-input");
    let agent = start_single(ip, &dir);
    wait_leader(&http).await;
    let mut c = HttpClient::new(http.clone(), Duration::from_secs(5));
    let r = c
        .request("PUT", "/v1/kv/keep", b"safe".to_vec())
        .await
        .expect("put");
    assert_eq!(r.status, 200);

    // Garbage on the RPC port: that connection is closed, nothing else.
    let mut s = TcpStream::connect(format!("{ip}:18301")).expect("rpc port");
    s.write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        .expect("write garbage");
    assert_closed_by_server(s, "garbage on the RPC port");
    let mut s = TcpStream::connect(format!("{ip}:18301")).expect("rpc port");
    s.write_all(&[0, 0, 0, 9, 1, 0, 0, 0, 0, b'{', b'x', b'}', b'!'])
        .expect("bad checksum frame");
    assert_closed_by_server(s, "a frame with a bad checksum");

    // Malformed HTTP: clear 4xx answers.
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/v1/kv/keep?index=abc", 400),
        ("GET", "/v1/kv/keep?wait=forever", 400),
        ("GET", "/v1/kv/keep?stale&consistent", 400),
        ("PUT", "/v1/kv/keep?cas=-1", 400),
        ("PUT", "/v1/kv/%zz", 400),
        ("GET", "/v1/nope", 404),
        ("POST", "/v1/kv/keep", 405),
    ];
    for (method, path, status) in cases {
        let r = c.request(method, path, vec![]).await.expect("answer");
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
    }
    // Malformed registrations: 400 naming what is wrong; nothing registered.
    let bodies: &[(&str, &str, &str)] = &[
        (
            "/v1/agent/service/register",
            "{not json",
            "Request decode failed",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name":"x","Port":"abc"}"#,
            "Port",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Port":80}"#,
            "Missing service name",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name":"x","Check":{"TTL":"10s","Interval":"1s"}}"#,
            "Interval and TTL",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name":"x","Check":{"Args":["/bin/true"],"Interval":"1s"}}"#,
            "Scripts are disabled",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name":"c","TTL":"forever"}"#,
            "TTL",
        ),
        (
            "/v1/catalog/register",
            r#"{"Address":"10.0.0.1"}"#,
            "Must provide node",
        ),
        ("/v1/txn", r#"{"KV":{}}"#, "expected a list"),
        (
            "/v1/txn",
            r#"[{"Node":{"Verb":"set"}}]"#,
            "only KV operations",
        ),
        (
            "/v1/txn",
            r#"[{"KV":{"Verb":"set","Key":"k","Value":"***"}}]"#,
            "base64",
        ),
        (
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"a","Check":{"CheckID":"c","Name":"c","ServiceID":"ghost"}}"#,
            "Unknown service",
        ),
    ];
    for (path, body, expected) in bodies {
        let r = c
            .request("PUT", path, body.as_bytes().to_vec())
            .await
            .expect("answer");
        assert_eq!(r.status, 400, "PUT {path} {body}: {}", r.text());
        assert!(
            r.text().contains(expected),
            "PUT {path} {body}: expected {expected:?} in {}",
            r.text()
        );
    }
    let ops: Vec<String> = (0..65)
        .map(|i| format!(r#"{{"KV":{{"Verb":"set","Key":"t{i}"}}}}"#))
        .collect();
    let r = c
        .request(
            "PUT",
            "/v1/txn",
            format!("[{}]", ops.join(",")).into_bytes(),
        )
        .await
        .expect("answer");
    assert_eq!(r.status, 413, "{}", r.text());
    let r = c
        .request("GET", "/v1/agent/services", vec![])
        .await
        .expect("answer");
    let services: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let ids: Vec<&String> = services.as_object().expect("a map").keys().collect();
    assert_eq!(
        ids,
        ["consul"],
        "only the server's own consul service: {services}"
    );
    for (path, status) in [
        ("/v1/agent/check/pass/nope", 404),
        ("/v1/agent/service/deregister/nope", 404),
        ("/v1/health/state/sideways", 400),
        ("/v1/catalog/service/x?filter=Service%20%3D%3D", 400),
    ] {
        let method = if path.contains("/agent/") {
            "PUT"
        } else {
            "GET"
        };
        let r = c.request(method, path, vec![]).await.expect("answer");
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(
            r.header("x-consul-knownleader").is_some(),
            "{path}: headers on errors too"
        );
    }

    let big = vec![b'x'; 600 * 1024];
    let r = c.request("PUT", "/v1/kv/big", big).await.expect("answer");
    assert_eq!(r.status, 413);
    let mut raw = TcpStream::connect(&http).expect("http port");
    raw.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    match raw.read_to_string(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server kept a non-HTTP connection open: {e}"),
    }
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // Nothing was lost.
    let mut c = HttpClient::new(http.clone(), Duration::from_secs(5));
    let r = c
        .request("GET", "/v1/kv/keep?raw", vec![])
        .await
        .expect("get");
    assert_eq!((r.status, r.text()), (200, "safe".to_string()));
    for i in 0..5 {
        let r = c
            .request("PUT", &format!("/v1/kv/more{i}"), b"x".to_vec())
            .await
            .expect("put");
        assert_eq!(r.status, 200);
    }
    drop(agent);

    // A flipped byte in the middle of the Raft log: startup refuses with
    // the file and offset, and the file is left as it was.
    let log = dir.join("raft.log");
    let mut bytes = std::fs::read(&log).expect("raft.log exists");
    let mid = 12;
    bytes[mid] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let out = single_server(ip, &dir).output().expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("raft.log") && stderr.contains("offset"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&log).unwrap() == bytes,
        "corrupt file must be left exactly as it was"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server must close `s` (EOF or reset) within 5 s; a read timeout
/// means it kept the connection open.
fn assert_closed_by_server(mut s: TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: server answered {n} bytes instead of closing"),
        Err(e) => panic!("{what}: connection still open: {e}"),
    }
}
