//! Real processes: three servers and the client agents fcs00 and fcc00,
//! started from the checked-in `deploy/` config files with loopback
//! addresses of their own. Client agents register services, keep them in
//! the catalog through a leader failover and their own restart, and
//! unmodified Consul client libraries (py-consul from PyPI, `consul` from
//! npm) drive the API.

use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use mesh_bins::process_cluster::{eventually, test_dir, ProcessCluster};
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

fn cluster(name: &str, ips: &[&str; 5], rpc: u16, http: u16) -> (ProcessCluster, usize, usize) {
    let dir = test_dir(name);
    let mut c = ProcessCluster::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &ips[..3],
        rpc,
        http,
    )
    .expect("cluster dir");
    let fcs_file = format!("{DEPLOY}/fcs00.json");
    let fcc_file = format!("{DEPLOY}/fcc00.json");
    let fcs = c.add_client("fcs00", ips[3], &["-config-file", &fcs_file]);
    let fcc = c.add_client("fcc00", ips[4], &["-config-file", &fcc_file]);
    for i in 0..5 {
        c.start(i).expect("start");
    }
    (c, fcs, fcc)
}

async fn get_json(c: &ProcessCluster, i: usize, path: &str) -> Option<Value> {
    let r = c.request(i, "GET", path, b"").await.ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).ok())?
}

/// One DNS question to `ip:8600`, over UDP or (`tcp`) TCP.
fn dns(ip: &str, name: &str, qtype: RecordType, tcp: bool) -> Message {
    use std::io::{Read, Write};
    let mut m = Message::query();
    m.metadata.id = 77;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let q = m.to_vec().unwrap();
    let bytes = if tcp {
        let mut s = std::net::TcpStream::connect((ip, 8600)).expect("DNS over TCP");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&q).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).unwrap();
        buf
    } else {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&q, (ip, 8600)).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.recv(&mut buf).expect("a DNS answer over UDP");
        buf.truncate(n);
        buf
    };
    Message::from_vec(&bytes).expect("a DNS message")
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// The service names and instance ids a server's own (stale) catalog holds.
async fn catalog_of(c: &ProcessCluster, i: usize) -> Option<Vec<(String, String)>> {
    let services = get_json(c, i, "/v1/catalog/services?stale").await?;
    let mut out = Vec::new();
    for name in services.as_object()?.keys() {
        let rows = get_json(c, i, &format!("/v1/catalog/service/{name}?stale")).await?;
        for r in rows.as_array()? {
            out.push((
                r["Node"].as_str()?.to_string(),
                r["ServiceID"].as_str()?.to_string(),
            ));
        }
    }
    out.sort();
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_agents_keep_their_services_through_failover_and_restart() {
    let ips = [
        "127.0.0.50",
        "127.0.0.51",
        "127.0.0.52",
        "127.0.0.53",
        "127.0.0.54",
    ];
    let (mut c, fcs, fcc) = cluster("agents", &ips, 18350, 18550);
    let leader = c
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    // fcs's TCP check targets 127.0.0.13:8181 (from the file); nothing
    // listens there in this test, so it is critical, while fcc's TTL check
    // starts passing. Both are in the catalog.
    eventually(
        "both agents' services in the catalog",
        Duration::from_secs(20),
        || async {
            catalog_of(&c, leader).await.is_some_and(|cat| {
                cat.contains(&("fcs00".into(), "fcs".into()))
                    && cat.contains(&("fcc00".into(), "fcc".into()))
            })
        },
    )
    .await;

    // DNS on a server and on a client agent: fcc (its TTL check passes)
    // resolves to fcc00; fcs (its TCP check is critical) does not.
    for ip in [ips[0], ips[3]] {
        let m = dns(ip, "fcc.service.consul.", RecordType::A, false);
        assert_eq!(addresses(&m), [ips[4]], "{ip}: {m:?}");
        let m = dns(ip, "fcs.service.consul.", RecordType::A, false);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
        let m = dns(ip, "fcs00.node.dc1.consul.", RecordType::A, true);
        assert_eq!(addresses(&m), [ips[3]]);
        let m = dns(ip, "_fcc._tcp.service.consul.", RecordType::SRV, true);
        match &m.answers[..] {
            [r] => match &r.data {
                RData::SRV(srv) => assert_eq!(srv.target.to_ascii(), "fcc00.node.dc1.consul."),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    // Register a service through fcs00's API, then kill -9 the leader.
    let body =
        br#"{"Name":"api","ID":"api1","Port":9000,"Check":{"TTL":"60s","Status":"passing"}}"#;
    let r = c
        .request(fcs, "PUT", "/v1/agent/service/register", body)
        .await
        .expect("register");
    assert_eq!(r.status, 200, "{}", r.text());
    c.kill(leader);
    let new_leader = c
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    // A registration made during or after the failover reaches the catalog.
    let body = br#"{"name":"late","port":9001}"#;
    let t = Instant::now();
    loop {
        let r = c
            .request(fcc, "PUT", "/v1/agent/service/register", body)
            .await
            .expect("register");
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", r.text());
    }
    eventually(
        "registrations after failover reach the catalog",
        Duration::from_secs(15),
        || async {
            catalog_of(&c, new_leader).await.is_some_and(|cat| {
                cat.contains(&("fcs00".into(), "api1".into()))
                    && cat.contains(&("fcc00".into(), "late".into()))
            })
        },
    )
    .await;

    // Restart the old leader; every server's catalog converges.
    c.start(leader).expect("restart");
    eventually(
        "catalogs converge on every server",
        Duration::from_secs(20),
        || async {
            let mut views = Vec::new();
            for i in 0..3 {
                views.push(catalog_of(&c, i).await);
            }
            views[0].is_some() && views.iter().all(|v| *v == views[0])
        },
    )
    .await;

    // kill -9 fcs00: its node turns critical; its registrations persist
    // across the restart and it turns passing again.
    c.kill(fcs);
    let detected = eventually("fcs00 critical", Duration::from_secs(15), || async {
        get_json(&c, new_leader, "/v1/health/node/fcs00")
            .await
            .is_some_and(|checks| {
                checks.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|ch| ch["CheckID"] == "serfHealth" && ch["Status"] == "critical")
                })
            })
    })
    .await;
    assert!(
        detected < Duration::from_secs(6),
        "detected after {detected:?}"
    );
    c.start(fcs).expect("restart fcs00");
    eventually(
        "fcs00 alive with api1 again",
        Duration::from_secs(15),
        || async {
            let alive = get_json(&c, new_leader, "/v1/health/node/fcs00")
                .await
                .is_some_and(|checks| {
                    checks.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|ch| ch["CheckID"] == "serfHealth" && ch["Status"] == "passing")
                    })
                });
            let local = get_json(&c, fcs, "/v1/agent/services").await;
            alive && local.is_some_and(|s| s.get("api1").is_some())
        },
    )
    .await;
    // Deregistering through the agent removes it from the catalog.
    let r = c
        .request(fcs, "PUT", "/v1/agent/service/deregister/api1", b"")
        .await
        .expect("deregister");
    assert_eq!(r.status, 200);
    eventually(
        "api1 gone from the catalog",
        Duration::from_secs(10),
        || async {
            catalog_of(&c, new_leader)
                .await
                .is_some_and(|cat| !cat.contains(&("fcs00".into(), "api1".into())))
        },
    )
    .await;
    c.stop_all();
}

/// Runs one client library's check script (`clients/<lang>/...`) with
/// `program` against a client agent and a server of a fresh cluster, and
/// asserts it passed.
async fn client_library_check(
    name: &str,
    ips: &[&str; 5],
    rpc: u16,
    program: String,
    script: &str,
) {
    let (mut c, fcs, _fcc) = cluster(name, ips, rpc, rpc + 200);
    c.wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let script = format!("{}/../clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let agent = c.http_addr(fcs);
    let server = c.http_addr(0);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .arg(script)
            .arg(agent)
            .arg(server)
            .output()
    })
    .await
    .expect("join")
    .expect("run the client check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    c.stop_all();
    assert!(
        out.status.success() && stdout.contains("PASS"),
        "{name} check failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}

/// A client library is missing: a failure in CI (which sets
/// `MESH_REQUIRE_CONSUL_CLIENTS` after installing them), a skip elsewhere.
fn skip_missing(what: &str) {
    assert!(
        std::env::var_os("MESH_REQUIRE_CONSUL_CLIENTS").is_none(),
        "{what} is missing: run .ci/run, which installs it"
    );
    eprintln!("skipped: {what} is not installed (.ci/run installs it)");
}

/// py-consul 1.8.0 from PyPI, unmodified, against a client agent and a
/// server. `.ci/run` installs it into a virtualenv and sets
/// `MESH_CONSUL_PYTHON` to that interpreter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_consul_client_library_works() {
    let Ok(python) = std::env::var("MESH_CONSUL_PYTHON") else {
        skip_missing("MESH_CONSUL_PYTHON (a python with py-consul)");
        return;
    };
    let ips = [
        "127.0.0.60",
        "127.0.0.61",
        "127.0.0.62",
        "127.0.0.63",
        "127.0.0.64",
    ];
    client_library_check(
        "pyconsul",
        &ips,
        18360,
        python,
        "python/consul_client_check.py",
    )
    .await;
}

/// The `consul` package from npm (2.0.1, pinned in
/// `clients/node/package-lock.json`), unmodified, under Node.js: its Watch
/// helper, sessions and locks, transactions. `.ci/run` runs `npm ci` in
/// `clients/node`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_node_consul_client_works() {
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/node/node_modules/consul/package.json")
        .exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !installed {
        skip_missing("node, or clients/node/node_modules (npm ci --prefix clients/node)");
        return;
    }
    let ips = [
        "127.0.0.130",
        "127.0.0.131",
        "127.0.0.132",
        "127.0.0.133",
        "127.0.0.134",
    ];
    client_library_check(
        "nodeconsul",
        &ips,
        18366,
        "node".into(),
        "node/consul_client_check.js",
    )
    .await;
}
