//! Connect on real processes over loopback (127.0.0.10-14): three
//! servers, the client agents fcs00 and fcc00, and a sidecar for each
//! service (`mesh connect proxy` for fcs, the `mesh-sidecar` binary for
//! fcc).
//! fcc's requests reach an echo app behind fcs's sidecar through both
//! sidecars; a tap between the sidecars sees TLS records only; a client
//! with a self-signed certificate and a plaintext client are refused;
//! a deny intention stops new connections and an allow lets them through
//! again; traffic survives a kill -9 of fcs00's agent and of the leader.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_bins::process_cluster::{poll_until, test_dir, ProcessCluster};
use mesh_net::http_client::HttpClient;

const IPS: [&str; 5] = [
    "127.0.0.10",
    "127.0.0.11",
    "127.0.0.12",
    "127.0.0.13",
    "127.0.0.14",
];
const RPC: u16 = 18380;
const HTTP: u16 = 18580;
const FCS_IP: &str = "127.0.0.13";
const FCC_IP: &str = "127.0.0.14";
const TAP: &str = "127.0.0.15:9192";
/// Where the sidecars serve their counters.
const FCS_METRICS: &str = "127.0.0.13:19100";
const FCC_METRICS: &str = "127.0.0.14:19100";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The echo app: `ECHO <line>` for every line, on fcs00's address.
fn echo_app(stop: Arc<AtomicBool>) {
    let l = TcpListener::bind((FCS_IP, 8181)).expect("bind the echo app");
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((conn, _)) => {
                    std::thread::spawn(move || {
                        conn.set_nonblocking(false).ok();
                        let mut w = conn.try_clone().expect("clone");
                        for line in BufReader::new(conn).lines() {
                            let Ok(line) = line else { return };
                            if writeln!(w, "ECHO {line}").is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

/// A tap: a TCP relay from `TAP` to fcs's sidecar that keeps every byte
/// fcc's sidecar sent through it.
fn tap(seen: Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind(TAP).expect("bind the tap");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut down) = conn else { return };
            let Ok(mut up) = TcpStream::connect((FCS_IP, 9191)) else {
                continue;
            };
            let (mut down2, mut up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = down.read(&mut buf) {
                    if n == 0 || up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up2, &mut down2);
                let _ = down2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// One request through fcc's upstream (fcc00:8181); the echo if it came.
fn request(nonce: &str) -> Option<String> {
    let mut c = TcpStream::connect((FCC_IP, 8181)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    writeln!(c, "REQ {nonce}").ok()?;
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

fn works(nonce: &str) -> bool {
    request(nonce).as_deref() == Some(&format!("ECHO REQ {nonce}"))
}

fn mesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("run mesh")
}

/// fcs's sidecar runs as `mesh connect proxy`, fcc's as the small
/// `mesh-sidecar` binary: both entry points carry the traffic.
fn proxy(service: &str, agent: &str, log: &std::path::Path) -> Proc {
    let log = std::fs::File::create(log).expect("log");
    let metrics = if service == "fcs" {
        FCS_METRICS
    } else {
        FCC_METRICS
    };
    let mut command = if service == "fcs" {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mesh"));
        c.args(["connect", "proxy"]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_mesh-sidecar"))
    };
    Proc(
        command
            .args([
                "-sidecar-for",
                service,
                "-http-addr",
                agent,
                "-metrics-addr",
                metrics,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the sidecar"),
    )
}

/// `mesh intention create -allow [flags] fcc fcs` through fcc00's agent,
/// then waits until fcc's requests get through.
async fn allow(fcc_http: &str, flags: &[&str], nonce: &str) {
    let mut args = vec!["intention", "create", "-http-addr", fcc_http, "-allow"];
    args.extend_from_slice(flags);
    args.extend(["fcc", "fcs"]);
    let out = mesh(&args);
    assert!(out.status.success(), "{out:?}");
    poll_until(Duration::from_secs(10), || async { works(nonce) })
        .await
        .unwrap_or_else(|| panic!("{nonce}: the allow did not take effect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcc_reaches_fcs_through_both_sidecars_over_mutual_tls() {
    let dir = test_dir("connect");
    let fcs_cfg = dir.join("fcs00.json");
    let fcc_cfg = dir.join("fcc00.json");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &fcs_cfg,
        format!(
            r#"{{"service":{{"name":"fcs","port":8181,
                "check":{{"tcp":"{FCS_IP}:8181","interval":"1s"}},
                "connect":{{"sidecar_service":{{"proxy":{{"local_service_address":"{FCS_IP}"}}}}}}}}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        &fcc_cfg,
        format!(
            r#"{{"service":{{"name":"fcc","connect":{{"sidecar_service":{{"proxy":{{"upstreams":[
                {{"destination_name":"fcs","local_bind_address":"{FCC_IP}","local_bind_port":8181}}]}}}}}}}}}}"#
        ),
    )
    .unwrap();
    let mut c = ProcessCluster::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &IPS[..3],
        RPC,
        HTTP,
    )
    .expect("cluster dir");
    let fcs = c.add_client(
        "fcs00",
        FCS_IP,
        &["-config-file", fcs_cfg.to_str().unwrap()],
    );
    let fcc = c.add_client(
        "fcc00",
        FCC_IP,
        &["-config-file", fcc_cfg.to_str().unwrap()],
    );
    for i in 0..5 {
        c.start(i).expect("start");
    }
    let stop = Arc::new(AtomicBool::new(false));
    echo_app(stop.clone());
    let leader = c
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let _fcs_proxy = proxy("fcs", &c.http_addr(fcs), &dir.join("fcs-proxy.log"));
    let _fcc_proxy = proxy("fcc", &c.http_addr(fcc), &dir.join("fcc-proxy.log"));
    let fcc_http = c.http_addr(fcc);

    // Out of the box, nothing may connect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!works("before-any-intention"), "default must be deny");
    let out = mesh(&["intention", "create", "-http-addr", &fcc_http, "fcc", "fcs"]);
    assert!(out.status.success(), "{out:?}");
    let took = poll_until(Duration::from_secs(30), || async { works("first") })
        .await
        .expect("fcc reaches fcs through both sidecars");
    println!("first request through both sidecars {took:?} after the allow");
    // Until a check first passes it retries within a second, so the
    // sidecar's "listening" check (every 10 s) does not hold traffic back
    // for an interval.
    assert!(
        took < Duration::from_secs(5),
        "fcc waited {took:?} for fcs's sidecar to count as healthy"
    );

    // The Connect-capable instances of fcs are its sidecar, as Consul's
    // catalog lists them.
    let r = c
        .request(leader, "GET", "/v1/catalog/connect/fcs", b"")
        .await
        .expect("catalog connect");
    let rows: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ServiceKind"], "connect-proxy");
    assert_eq!(rows[0]["ServiceProxy"]["DestinationServiceName"], "fcs");
    assert_eq!(rows[0]["Node"], "fcs00");

    // A tap registered as another instance of fcs's sidecar: fcc's sidecar
    // rotates through instances, so some connections cross it.
    let seen = Arc::new(Mutex::new(Vec::new()));
    tap(seen.clone());
    let tap_node = r#"{"Node":"tap00","Address":"127.0.0.15","Service":{"ID":"fcs-sidecar-proxy","Service":"fcs-sidecar-proxy","Kind":"connect-proxy","Port":9192,"Proxy":{"DestinationServiceName":"fcs","DestinationServiceID":"fcs","LocalServicePort":8181}}}"#;
    let r = c
        .request(leader, "PUT", "/v1/catalog/register", tap_node.as_bytes())
        .await
        .expect("register the tap");
    assert_eq!(r.status, 200, "{}", r.text());
    poll_until(Duration::from_secs(20), || async {
        for i in 0..4 {
            assert!(works(&format!("secret-{i}")));
        }
        seen.lock().unwrap().len() > 200
    })
    .await
    .expect("traffic through the tap");
    {
        let bytes = seen.lock().unwrap();
        assert_eq!(
            &bytes[..3],
            &[0x16, 0x03, 0x01],
            "a TLS handshake record first"
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("REQ secret"),
            "plaintext request on the wire"
        );
        println!("tap saw {} bytes, TLS records only", bytes.len());
    }

    // Plaintext to the public port: refused, nothing echoed.
    let mut raw = TcpStream::connect((FCS_IP, 9191)).expect("connect 9191");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"REQ plaintext\n").unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("ECHO"),
        "plaintext got through: {buf:?}"
    );
    // Both sidecars count what they did, at /metrics.
    let metrics = |addr: &'static str| async move {
        HttpClient::new(addr, Duration::from_secs(5))
            .request("GET", "/metrics", Vec::new())
            .await
            .expect("sidecar metrics")
            .text()
    };
    let value = |text: &str, series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    let fcs_text = metrics(FCS_METRICS).await;
    assert!(
        value(
            &fcs_text,
            "mesh_sidecar_inbound_accepted_total{service=\"fcs\"}"
        ) > 0
    );
    assert!(
        value(
            &fcs_text,
            "mesh_sidecar_inbound_refused_total{reason=\"handshake\",service=\"fcs\"}"
        ) >= 1
    );
    let fcc_text = metrics(FCC_METRICS).await;
    assert!(
        value(
            &fcc_text,
            "mesh_sidecar_outbound_opened_total{service=\"fcc\"}"
        ) > 0
    );

    // A client certificate from another CA claiming to be fcc: refused.
    let other = mesh_core::connect::ca::generate_root(
        "11111111-2222-4333-8444-555555555555.consul",
        1,
        std::time::SystemTime::now(),
        Duration::from_secs(86_400),
    )
    .unwrap();
    let key = mesh_core::connect::ca::generate_leaf_key().unwrap();
    let roots: serde_json::Value = serde_json::from_slice(
        &c.request(fcc, "GET", "/v1/agent/connect/ca/roots", b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    let td = roots["TrustDomain"].as_str().unwrap().to_owned();
    let forged = mesh_core::connect::ca::sign_leaf(
        &other,
        &mesh_core::connect::SpiffeId::service(&td, "dc1", "fcc"),
        &key.public_key_der,
        2,
        std::time::SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let id = mesh_net::tls::Identity::from_pem(&forged.cert_pem, key.key.expose()).unwrap();
    let bundle = mesh_net::tls::TrustBundle::from_pems(
        &[roots["Roots"][0]["RootCert"].as_str().unwrap().to_owned()],
        &td,
    )
    .unwrap();
    let cfg = mesh_net::tls::client_config(&id, &bundle, "fcs").unwrap();
    let tcp = tokio::net::TcpStream::connect((FCS_IP, 9191))
        .await
        .unwrap();
    let refused = match tokio_rustls::TlsConnector::from(cfg)
        .connect(mesh_net::tls::server_name("fcs"), tcp)
        .await
    {
        Err(_) => true,
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"REQ forged\n").await;
            let mut b = [0u8; 64];
            !matches!(
                tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await,
                Ok(Ok(n)) if n > 0
            )
        }
    };
    assert!(refused, "a certificate from another CA was accepted");

    // Deny, then allow again.
    let out = mesh(&[
        "intention",
        "create",
        "-http-addr",
        &fcc_http,
        "-deny",
        "-replace",
        "fcc",
        "fcs",
    ]);
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    poll_until(Duration::from_secs(10), || async { !works("after-deny") })
        .await
        .expect("deny takes effect");
    println!("deny took effect within {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..5 {
        assert!(
            !works(&format!("denied-{i}")),
            "a request got through a deny"
        );
    }
    allow(&fcc_http, &["-replace"], "allowed-again").await;

    // The intention CLI as Consul's: check (the answer is also the exit
    // code), list, get, delete.
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let out = mesh(&["intention", "check", "-http-addr", &fcc_http, "fcc", "fcs"]);
    assert!(
        out.status.success() && stdout(&out).trim() == "Allowed",
        "{out:?}"
    );
    let out = mesh(&["intention", "check", "-http-addr", &fcc_http, "fcs", "fcc"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stdout(&out).trim(), "Denied");
    let out = mesh(&["intention", "list", "-http-addr", &fcc_http]);
    let listed = stdout(&out);
    assert!(
        out.status.success()
            && listed
                .lines()
                .any(|l| l.contains("fcc") && l.contains("allow") && l.contains("fcs")),
        "{listed}"
    );
    let out = mesh(&["intention", "get", "-http-addr", &fcc_http, "fcc", "fcs"]);
    assert!(stdout(&out).contains("Action:\tallow"), "{out:?}");

    // Root rotation during traffic (`mesh connect ca rotate`): a
    // connection opened before keeps working, no new connection fails,
    // and the sidecars move to leaves of the new root.
    let mut held = TcpStream::connect((FCC_IP, 8181)).expect("a held connection");
    held.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut held_reader = BufReader::new(held.try_clone().unwrap());
    let mut echo = |w: &mut TcpStream, nonce: &str| {
        writeln!(w, "REQ {nonce}").ok()?;
        let mut line = String::new();
        held_reader.read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    };
    assert_eq!(
        echo(&mut held, "held-0").as_deref(),
        Some("ECHO REQ held-0")
    );
    let roots_before: serde_json::Value = serde_json::from_slice(
        &c.request(fcc, "GET", "/v1/connect/ca/roots", b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    let out = mesh(&["connect", "ca", "rotate", "-http-addr", &fcc_http]);
    assert!(
        out.status.success() && stdout(&out).contains("Root rotated"),
        "{out:?}"
    );
    let t = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while t.elapsed() < Duration::from_secs(5) {
        if works(&format!("rotation-{ok}")) {
            ok += 1;
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failed == 0 && ok >= 20,
        "{failed} of {} new connections failed during the rotation",
        ok + failed
    );
    assert_eq!(
        echo(&mut held, "held-1").as_deref(),
        Some("ECHO REQ held-1"),
        "the connection opened before the rotation was dropped"
    );
    let roots: serde_json::Value = serde_json::from_slice(
        &c.request(fcc, "GET", "/v1/connect/ca/roots", b"")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    let active = roots["ActiveRootID"].as_str().unwrap().to_owned();
    assert_ne!(active, roots_before["ActiveRootID"].as_str().unwrap());
    assert_eq!(roots["Roots"].as_array().map(Vec::len), Some(2), "{roots}");
    let out = mesh(&["connect", "ca", "roots", "-http-addr", &fcc_http]);
    assert_eq!(
        stdout(&out).matches("active=true").count(),
        1,
        "{}",
        stdout(&out)
    );
    // A leaf of the new root comes with the new root cross-signed by the
    // old one (the first root had no such certificate).
    let cross_signed = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == active.as_str())
        .and_then(|r| r["IntermediateCerts"][0].as_str())
        .expect("the new root's cross-signed certificate")
        .trim()
        .to_owned();
    for (agent, service) in [(fcs, "fcs"), (fcc, "fcc")] {
        let path = format!("/v1/agent/connect/ca/leaf/{service}");
        let moved = poll_until(Duration::from_secs(20), || {
            let c = &c;
            let path = path.clone();
            let cross_signed = cross_signed.clone();
            async move {
                let leaf = c.request(agent, "GET", &path, b"").await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&leaf.body).unwrap();
                v["CertPEM"]
                    .as_str()
                    .is_some_and(|chain| chain.contains(&cross_signed))
            }
        })
        .await;
        assert!(moved.is_some(), "{service}'s leaf is not of the new root");
    }
    assert!(works("after-rotation"));

    // Deleting the intention brings back the default (deny).
    let out = mesh(&["intention", "delete", "-http-addr", &fcc_http, "fcc", "fcs"]);
    assert!(stdout(&out).contains("Intention deleted."), "{out:?}");
    poll_until(Duration::from_secs(10), || async { !works("deleted") })
        .await
        .expect("the delete takes effect");
    allow(&fcc_http, &[], "recreated").await;

    // fcs00's agent dies (kill -9) and systemd starts it again: the
    // sidecars go on from what they hold, and the new agent reads the
    // catalog before it writes, so its checks' initial `critical` never
    // takes fcs's sidecar out of fcc's healthy instances. No request may
    // fail.
    c.kill(fcs);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.start(fcs).expect("start fcs00's agent again");
    let t = Instant::now();
    let mut answered = 0;
    while t.elapsed() < Duration::from_secs(6) {
        let nonce = format!("agent-restart-{answered}");
        assert!(
            works(&nonce),
            "request {nonce} failed while fcs00's agent restarted ({:?} after the restart)",
            t.elapsed()
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered >= 20,
        "only {answered} requests across the agent restart"
    );

    // kill -9 the leader: the data plane does not depend on it.
    c.kill(leader);
    let t = Instant::now();
    let mut ok = 0;
    while t.elapsed() < Duration::from_secs(5) {
        if works(&format!("failover-{ok}")) {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok >= 20,
        "only {ok} requests through the sidecars during the failover"
    );

    // Every server down, and fcs's sidecar restarted: its agent answers
    // the leaf, the roots and the intentions from its cache (Consul's
    // `?cached`), so the new sidecar lets fcc in as the old one did.
    for i in 0..3 {
        if i != leader {
            c.kill(i);
        }
    }
    drop(_fcs_proxy);
    let _fcs_proxy = proxy("fcs", &c.http_addr(fcs), &dir.join("fcs-proxy-2.log"));
    let back = poll_until(Duration::from_secs(15), || async { works("no-servers") }).await;
    assert!(
        back.is_some(),
        "a sidecar restarted while no server answers refused fcc: {}",
        std::fs::read_to_string(dir.join("fcs-proxy-2.log")).unwrap_or_default()
    );
    stop.store(true, Ordering::SeqCst);
    c.stop_all();
}
