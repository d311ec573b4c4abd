//! TLS on the RPC port with real processes on loopback: certificates from
//! `mesh tls ca create` / `mesh tls cert create`, three servers and a
//! client agent with `verify_incoming`, `verify_outgoing` and
//! `verify_server_hostname` form a cluster and serve writes; a server
//! process without a certificate, and one holding only a client
//! certificate, can reach port 8300 but can neither join nor inject a
//! join or a write.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_bins::process_cluster::{test_dir, ProcessCluster};
use mesh_core::connect::SecretPem;
use mesh_core::formation::ServerInfo;
use mesh_core::wire::{Request, Response, RpcError};
use mesh_net::http_client::HttpClient;
use mesh_net::rpc::{RpcClient, RpcRequest};
use mesh_net::rpc_tls::{RpcTls, RpcTlsConfig};

const IPS: [&str; 6] = [
    "127.0.0.100",
    "127.0.0.101",
    "127.0.0.102",
    "127.0.0.103",
    "127.0.0.104",
    "127.0.0.105",
];
const RPC_PORT: u16 = 18300;
const HTTP_PORT: u16 = 18500;

/// Runs `mesh tls ...` in `dir`; its stdout, or a panic with its stderr.
fn mesh_tls(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("tls")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run mesh tls");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A config file with the three TLS checks on and this certificate, and
/// the HTTPS API on `https` (port, whether it requires client certificates).
fn tls_config(dir: &Path, name: &str, cert: &str, https: Option<(u16, bool)>) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let mut body = serde_json::json!({
        "tls": {
            "defaults": {
                "ca_file": dir.join("consul-agent-ca.pem"),
                "cert_file": dir.join(format!("{cert}.pem")),
                "key_file": dir.join(format!("{cert}-key.pem")),
                "verify_incoming": true,
                "verify_outgoing": true
            },
            "internal_rpc": { "verify_server_hostname": true }
        }
    });
    if let Some((port, verify_incoming)) = https {
        body["ports"] = serde_json::json!({ "https": port });
        body["tls"]["https"] = serde_json::json!({ "verify_incoming": verify_incoming });
    }
    std::fs::write(&path, body.to_string()).expect("write config");
    path
}

/// A GET over HTTPS with Python's own TLS stack (what Consul's Python
/// clients use), trusting `ca` and presenting `client` (cert, key) if
/// given: the body, or the error text.
fn https_get(
    url: &str,
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<String, String> {
    let script = r#"
import ssl, sys, urllib.request
url, ca, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca or None)
if cert:
    ctx.load_cert_chain(cert, key)
try:
    print(urllib.request.urlopen(url, context=ctx, timeout=5).read().decode(), end="")
except Exception as e:
    print(type(e).__name__, e, file=sys.stderr)
    sys.exit(1)
"#;
    let path = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
    let out = Command::new("python3")
        .args(["-c", script, url])
        .arg(path(ca))
        .arg(path(client.map(|c| c.0)))
        .arg(path(client.map(|c| c.1)))
        .output()
        .expect("python3 runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn rogue_server(dir: &Path, name: &str, ip: &str, config: Option<&Path>) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.arg("agent")
        .arg("-server")
        .args(["-node", name, "-bind", ip, "-client", ip])
        .arg(format!("-server-port={RPC_PORT}"))
        .arg(format!("-http-port={HTTP_PORT}"))
        .arg(format!("-data-dir={}", dir.join(name).display()));
    for server in &IPS[..3] {
        cmd.arg(format!("-retry-join={server}:{RPC_PORT}"));
    }
    if let Some(config) = config {
        cmd.arg(format!("-config-file={}", config.display()));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn rogue")
}

async fn raft_servers(c: &ProcessCluster, i: usize) -> Vec<String> {
    let resp = c
        .request(i, "GET", "/v1/operator/raft/configuration", b"")
        .await
        .expect("raft configuration");
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON");
    v["Servers"]
        .as_array()
        .expect("Servers")
        .iter()
        .map(|s| s["Node"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn join_request(name: &str, ip: &str) -> RpcRequest {
    Request::Join(ServerInfo {
        node_id: 0xbad,
        name: name.into(),
        rpc_addr: format!("{ip}:{RPC_PORT}"),
        http_addr: format!("{ip}:{HTTP_PORT}"),
        bootstrap_expect: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_forms_and_refuses_peers_without_a_server_certificate() {
    let dir = test_dir("rpc-tls");
    std::fs::create_dir_all(&dir).expect("dir");

    // The operator CA and the certificates, as a Consul operator makes them.
    let out = mesh_tls(&dir, &["ca", "create"]).expect("ca create");
    assert!(out.contains("Saved consul-agent-ca.pem"), "{out}");
    assert!(out.contains("Saved consul-agent-ca-key.pem"), "{out}");
    let again = mesh_tls(&dir, &["ca", "create"]).expect_err("a second CA over the first");
    assert!(again.contains("already exists"), "{again}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("consul-agent-ca-key.pem"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key must be private");
    for (i, ip) in IPS[..3].iter().enumerate() {
        let out = mesh_tls(
            &dir,
            &[
                "cert",
                "create",
                "-server",
                "-node",
                &format!("consul{i:02}"),
                "-additional-ipaddress",
                ip,
            ],
        )
        .expect("server cert");
        assert!(
            out.contains(&format!("Saved dc1-server-consul-{i}.pem")),
            "{out}"
        );
    }
    let out = mesh_tls(&dir, &["cert", "create", "-client"]).expect("client cert");
    assert!(out.contains("Saved dc1-client-consul-0.pem"), "{out}");
    let none = mesh_tls(&dir, &["cert", "create"]).expect_err("no kind");
    assert!(none.contains("-server, -client, or -cli"), "{none}");

    let mut c = ProcessCluster::new(
        Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &IPS[..3],
        RPC_PORT,
        HTTP_PORT,
    )
    .expect("cluster dir");
    for i in 0..3 {
        // consul00 serves HTTPS to anyone who trusts the CA, consul01 only
        // to holders of a certificate the CA signed (tls.defaults'
        // verify_incoming applies to HTTPS too, as in Consul).
        let https = match i {
            0 => Some((18501, false)),
            1 => Some((18501, true)),
            _ => None,
        };
        let config = tls_config(
            &dir,
            &format!("consul{i:02}"),
            &format!("dc1-server-consul-{i}"),
            https,
        );
        c.set_node_args(i, &["-config-file", config.to_str().expect("utf-8")]);
    }
    let client_config = tls_config(&dir, "fcs00", "dc1-client-consul-0", None);
    let client = c.add_client(
        "fcs00",
        IPS[3],
        &["-config-file", client_config.to_str().expect("utf-8")],
    );
    for i in 0..4 {
        c.start(i).expect("start");
    }
    let leader = c
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("three TLS servers elect a leader");

    // A write through the client agent (agent -> server RPC over TLS),
    // read back from every server (replication over TLS).
    let agent = c.http_addr(client);
    let t = Instant::now();
    loop {
        let put = HttpClient::new(agent.clone(), Duration::from_secs(3))
            .request("PUT", "/v1/kv/tls/probe", b"over-tls".to_vec())
            .await;
        if matches!(&put, Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the client agent never wrote through the TLS servers: {put:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        let got = c
            .request(i, "GET", "/v1/kv/tls/probe?raw&stale", b"")
            .await
            .expect("read");
        let t = Instant::now();
        let mut body = got.body;
        while body != b"over-tls" && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            body = c
                .request(i, "GET", "/v1/kv/tls/probe?raw&stale", b"")
                .await
                .expect("read")
                .body;
        }
        assert_eq!(body, b"over-tls", "server {i} has the write");
    }

    // The HTTPS API, as Consul's clients use it.
    let ca = dir.join("consul-agent-ca.pem");
    let url = |i: usize| format!("https://{}:18501/v1/kv/tls/probe?raw&stale", IPS[i]);
    assert_eq!(
        https_get(&url(0), Some(&ca), None).as_deref(),
        Ok("over-tls")
    );
    let untrusted = https_get(&url(0), None, None).expect_err("a CA the client does not trust");
    assert!(
        untrusted.contains("CERTIFICATE_VERIFY_FAILED"),
        "{untrusted}"
    );
    let no_cert = https_get(&url(1), Some(&ca), None);
    assert!(
        no_cert.is_err(),
        "consul01 requires a client certificate: {no_cert:?}"
    );
    let client_pair = (
        dir.join("dc1-client-consul-0.pem"),
        dir.join("dc1-client-consul-0-key.pem"),
    );
    assert_eq!(
        https_get(&url(1), Some(&ca), Some((&client_pair.0, &client_pair.1))).as_deref(),
        Ok("over-tls")
    );
    // The mesh CLI over HTTPS, with flags and with Consul's variables.
    let mesh_kv_get = |args: &[&str], env: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
        cmd.args(["kv", "get"]).args(args).arg("tls/probe");
        for var in [
            "MESH_HTTP_ADDR",
            "CONSUL_HTTP_ADDR",
            "CONSUL_CACERT",
            "CONSUL_CLIENT_CERT",
            "CONSUL_CLIENT_KEY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("mesh kv get");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let https0 = format!("-http-addr=https://{}:18501", IPS[0]);
    let ca_flag = format!("-ca-file={}", ca.display());
    let (ok, out, err) = mesh_kv_get(&[&https0, &ca_flag], &[]);
    assert!(ok && out == "over-tls", "{out} {err}");
    let (ok, _, err) = mesh_kv_get(&[&https0], &[]);
    assert!(!ok && err.contains("-ca-file or CONSUL_CACERT"), "{err}");
    let https1 = PathBuf::from(format!("https://{}:18501", IPS[1]));
    let mut consul_env = vec![
        ("CONSUL_HTTP_ADDR", https1.as_path()),
        ("CONSUL_CACERT", ca.as_path()),
    ];
    let (ok, _, err) = mesh_kv_get(&[], &consul_env);
    assert!(!ok, "consul01 requires a client certificate: {err}");
    consul_env.push(("CONSUL_CLIENT_CERT", client_pair.0.as_path()));
    consul_env.push(("CONSUL_CLIENT_KEY", client_pair.1.as_path()));
    let (ok, out, err) = mesh_kv_get(&[], &consul_env);
    assert!(ok && out == "over-tls", "{out} {err}");
    if let Ok(python) = std::env::var("MESH_CONSUL_PYTHON") {
        // py-consul, unmodified, over HTTPS.
        let out = Command::new(python)
            .args([
                "-c",
                "import consul, sys; c = consul.Consul(host=sys.argv[1], port=18501, scheme='https', verify=sys.argv[2]); print(c.kv.get('tls/probe')[1]['Value'].decode(), end='')",
                IPS[0],
            ])
            .arg(&ca)
            .output()
            .expect("py-consul runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "over-tls",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Two would-be servers reach port 8300: one without any certificate
    // (plaintext), one with a genuine client certificate.
    let mut plain = rogue_server(&dir, "rogue-plain", IPS[4], None);
    let rogue_config = tls_config(&dir, "rogue-client-cert", "dc1-client-consul-0", None);
    let mut with_client_cert = rogue_server(&dir, "rogue-client-cert", IPS[5], Some(&rogue_config));

    // Injection by hand: a join and a write in plaintext, and a join over
    // TLS with the client certificate.
    let leader_rpc = c.rpc_addr(leader);
    let plaintext = RpcClient::new();
    let injected = plaintext
        .call(
            &leader_rpc,
            &join_request("intruder", IPS[4]),
            Duration::from_secs(3),
        )
        .await;
    assert!(
        injected.is_err(),
        "a plaintext join was answered: {injected:?}"
    );
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read");
    let client_tls = RpcTls::new(&RpcTlsConfig {
        ca_pem: Some(read("consul-agent-ca.pem")),
        cert_pem: Some(read("dc1-client-consul-0.pem")),
        key_pem: Some(SecretPem::new(read("dc1-client-consul-0-key.pem"))),
        verify_incoming: true,
        verify_outgoing: true,
        verify_server_hostname: true,
        server_name: "server.dc1.consul".into(),
        auto_encrypt: mesh_net::rpc_tls::AutoEncrypt::Off,
    })
    .expect("client TLS");
    let as_client =
        RpcClient::with_source_ip(IPS[5].parse().expect("ip"), Some(Arc::new(client_tls)));
    match as_client
        .call(
            &leader_rpc,
            &join_request("intruder", IPS[5]),
            Duration::from_secs(3),
        )
        .await
    {
        Ok(Response::Error(RpcError::Rejected(why))) => {
            assert!(why.contains("server.dc1.consul"), "{why}")
        }
        other => panic!("a client certificate sent a join: {other:?}"),
    }
    // The same client certificate still does what agents do.
    assert!(
        matches!(
            as_client
                .call(&leader_rpc, &Request::Status, Duration::from_secs(3))
                .await,
            Ok(Response::Status(_))
        ),
        "an agent's certificate must still reach the servers"
    );

    // Give the rogues time for many join attempts; the Raft configuration
    // holds the three servers only.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..3 {
        let mut servers = raft_servers(&c, i).await;
        servers.sort();
        assert_eq!(
            servers,
            ["consul00", "consul01", "consul02"],
            "seen by server {i}"
        );
    }
    let leader_log = std::fs::read_to_string(c.log_path(leader)).expect("leader log");
    assert!(
        leader_log.contains("plaintext RPC refused"),
        "the leader says why it closed plaintext connections"
    );
    assert!(
        leader_log.contains("rpc request refused"),
        "the leader says why it refused a client certificate's server-only requests"
    );
    // The cluster still serves.
    let put = c
        .request(leader, "PUT", "/v1/kv/tls/after", b"still")
        .await
        .expect("write after the rogues");
    assert_eq!(put.status, 200);

    for rogue in [&mut plain, &mut with_client_cert] {
        let _ = rogue.kill();
        let _ = rogue.wait();
    }
    c.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Addresses of the auto_encrypt test (its own, so it can run beside the
/// test above).
const AE_IPS: [&str; 5] = [
    "127.0.0.140",
    "127.0.0.141",
    "127.0.0.142",
    "127.0.0.143",
    "127.0.0.144",
];
const AE_RPC_PORT: u16 = 18310;
const AE_HTTP_PORT: u16 = 18510;

/// `auto_encrypt` with real processes: three servers with
/// `verify_incoming` and `allow_tls`; fcs00 holds only the operator CA and
/// `auto_encrypt.tls`, gets its certificate from the servers and writes
/// through them; fcc00, with neither a certificate nor `auto_encrypt`,
/// cannot. By hand, a peer without a certificate may ask for one and do
/// nothing else, cannot have the servers' name put in it, and the
/// certificate it gets does not make it a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_encrypt_gives_a_client_agent_its_certificate() {
    use mesh_core::connect::ca::{cert_info, generate_leaf_key};
    use mesh_net::rpc_tls::AutoEncrypt;

    let dir = test_dir("auto-encrypt");
    std::fs::create_dir_all(&dir).expect("dir");
    mesh_tls(&dir, &["ca", "create"]).expect("ca create");
    for (i, ip) in AE_IPS[..3].iter().enumerate() {
        let node = format!("consul{i:02}");
        mesh_tls(
            &dir,
            &[
                "cert",
                "create",
                "-server",
                "-node",
                &node,
                "-additional-ipaddress",
                ip,
            ],
        )
        .expect("server cert");
    }
    let mut c = ProcessCluster::new(
        Path::new(env!("CARGO_BIN_EXE_mesh")),
        &dir,
        &AE_IPS[..3],
        AE_RPC_PORT,
        AE_HTTP_PORT,
    )
    .expect("cluster dir");
    for i in 0..3 {
        let path = tls_config(
            &dir,
            &format!("consul{i:02}"),
            &format!("dc1-server-consul-{i}"),
            None,
        );
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        config["auto_encrypt"] = serde_json::json!({ "allow_tls": true });
        std::fs::write(&path, config.to_string()).expect("write");
        c.set_node_args(i, &["-config-file", path.to_str().expect("utf-8")]);
    }
    // Consul's client configuration for auto_encrypt: the CA, the checks,
    // no certificate.
    let client_config = |name: &str, auto_encrypt: bool| {
        let path = dir.join(format!("{name}.json"));
        // Consul refuses verify_incoming without a certificate unless
        // auto_encrypt brings one; so does mesh.
        let mut body = serde_json::json!({
            "tls": {
                "defaults": {
                    "ca_file": dir.join("consul-agent-ca.pem"),
                    "verify_incoming": auto_encrypt,
                    "verify_outgoing": true
                },
                "internal_rpc": { "verify_server_hostname": true }
            }
        });
        if auto_encrypt {
            body["auto_encrypt"] = serde_json::json!({ "tls": true, "dns_san": ["fcs00.example"] });
        }
        std::fs::write(&path, body.to_string()).expect("write config");
        path
    };
    let fcs_config = client_config("fcs00", true);
    let fcs = c.add_client(
        "fcs00",
        AE_IPS[3],
        &["-config-file", fcs_config.to_str().expect("utf-8")],
    );
    let fcc_config = client_config("fcc00", false);
    let fcc = c.add_client(
        "fcc00",
        AE_IPS[4],
        &["-config-file", fcc_config.to_str().expect("utf-8")],
    );
    for i in 0..5 {
        c.start(i).expect("start");
    }
    let leader = c
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("three TLS servers elect a leader");

    // fcs00 writes through the servers with the certificate they signed.
    let t = Instant::now();
    loop {
        let put = HttpClient::new(c.http_addr(fcs), Duration::from_secs(3))
            .request("PUT", "/v1/kv/ae/probe", b"signed".to_vec())
            .await;
        if matches!(&put, Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "fcs00 never wrote with its auto_encrypt certificate: {put:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fcs_log = std::fs::read_to_string(c.log_path(fcs)).expect("fcs00 log");
    assert!(
        fcs_log.contains("the servers signed this agent's RPC certificate")
            && fcs_log.contains("/agent/client/dc/dc1/id/fcs00"),
        "{fcs_log}"
    );
    // fcc00 has no certificate: the servers refuse everything it sends.
    let put = HttpClient::new(c.http_addr(fcc), Duration::from_secs(10))
        .request("PUT", "/v1/kv/ae/fcc", b"refused".to_vec())
        .await;
    match &put {
        Ok(r) => assert!(
            r.status != 200,
            "fcc00 wrote without a certificate: {}",
            r.status
        ),
        Err(e) => panic!("fcc00's agent did not answer: {e}"),
    }
    // It says why, once.
    let fcc_log = std::fs::read_to_string(c.log_path(fcc)).expect("fcc00 log");
    let refusals = fcc_log
        .lines()
        .filter(|l| l.contains("a server refuses this agent") && l.contains("may only ask for one"))
        .count();
    assert!(
        (1..=3).contains(&refusals),
        "{refusals} refusal lines (one per distinct reason expected): {fcc_log}"
    );

    // By hand: a TLS peer without a certificate.
    let ca_pem = std::fs::read_to_string(dir.join("consul-agent-ca.pem")).expect("ca");
    let asking = RpcTls::new(&RpcTlsConfig {
        ca_pem: Some(ca_pem),
        cert_pem: None,
        key_pem: None,
        verify_incoming: false,
        verify_outgoing: true,
        verify_server_hostname: true,
        server_name: "server.dc1.consul".into(),
        auto_encrypt: AutoEncrypt::GetsCertificate,
    })
    .expect("asking TLS");
    let asking = Arc::new(asking);
    let leader_rpc = c.rpc_addr(leader);
    let key = generate_leaf_key().expect("key");
    let sign = |dns_san: Vec<String>| Request::SignAgentCert {
        node: "probe".into(),
        datacenter: "dc1".into(),
        dns_san,
        ip_san: Vec::new(),
        public_key_der: key.public_key_der.clone(),
    };
    let anonymous = RpcClient::with_source_ip(AE_IPS[4].parse().expect("ip"), Some(asking.clone()));
    match anonymous
        .call(&leader_rpc, &Request::Status, Duration::from_secs(3))
        .await
    {
        Ok(Response::Error(RpcError::Rejected(why))) => {
            assert!(why.contains("may only ask for one"), "{why}")
        }
        other => panic!("a peer without a certificate asked for status: {other:?}"),
    }
    match anonymous
        .call(
            &leader_rpc,
            &sign(vec!["server.dc1.consul".into()]),
            Duration::from_secs(3),
        )
        .await
    {
        Ok(Response::Error(RpcError::Rejected(why))) => {
            assert!(why.contains("the servers' name"), "{why}")
        }
        other => panic!("the servers' name was signed for an agent: {other:?}"),
    }
    // Through a follower, which forwards it to the leader.
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let leaf = match anonymous
        .call(
            &c.rpc_addr(follower),
            &sign(Vec::new()),
            Duration::from_secs(5),
        )
        .await
    {
        Ok(Response::Leaf(leaf)) => leaf,
        other => panic!("no certificate for a peer without one: {other:?}"),
    };
    let info = cert_info(&leaf.cert_pem).expect("certificate");
    assert!(
        info.uri_sans
            .iter()
            .any(|u| u.ends_with("/agent/client/dc/dc1/id/probe")),
        "{:?}",
        info.uri_sans
    );
    asking
        .use_identity(leaf.cert_pem, key.key)
        .expect("the certificate loads");
    let signed = RpcClient::with_source_ip(AE_IPS[4].parse().expect("ip"), Some(asking));
    assert!(
        matches!(
            signed
                .call(&leader_rpc, &Request::Status, Duration::from_secs(3))
                .await,
            Ok(Response::Status(_))
        ),
        "the signed certificate reaches the servers"
    );
    match signed
        .call(
            &leader_rpc,
            &join_request("intruder", AE_IPS[4]),
            Duration::from_secs(3),
        )
        .await
    {
        Ok(Response::Error(RpcError::Rejected(why))) => {
            assert!(why.contains("for servers only"), "{why}")
        }
        other => panic!("an agent certificate sent a join: {other:?}"),
    }
    c.stop_all();
    let _ = std::fs::remove_dir_all(&dir);
}
