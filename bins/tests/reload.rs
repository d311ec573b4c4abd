//! `mesh reload` on a real process: an agent started from a config dir is
//! sent SIGHUP, `mesh reload` and `PUT /v1/agent/reload` after its files
//! change. Services and checks from the files are added, changed and
//! removed; what the API registered and the state of unchanged checks
//! survive; the HTTPS API presents the new certificate on new
//! connections; a broken file fails the reload with its name and changes
//! nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_bins::process_cluster::{poll_until, test_dir};
use mesh_net::http_client::HttpClient;
use serde_json::{json, Value};

const IP: &str = "127.0.0.70";
const HTTP: u16 = 18770;
const HTTPS: u16 = 18771;
const SERVER: u16 = 18772;

fn mesh(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .current_dir(dir)
        .env("MESH_HTTP_ADDR", format!("{IP}:{HTTP}"))
        .output()
        .expect("run mesh")
}

/// Kills the agent when the test ends, passed or not.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn call(method: &str, path: &str, body: Value) -> (u16, String) {
    let mut c = HttpClient::new(format!("{IP}:{HTTP}"), Duration::from_secs(10));
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = c
        .request(method, path, body)
        .await
        .expect("the agent answers");
    (r.status, r.text())
}

async fn get(path: &str) -> Value {
    let (status, body) = call("GET", path, Value::Null).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn service_ids() -> Vec<String> {
    let v = get("/v1/agent/services").await;
    v.as_object().expect("an object").keys().cloned().collect()
}

async fn check_status(id: &str) -> String {
    let v = get("/v1/agent/checks").await;
    v[id]["Status"].as_str().unwrap_or("absent").to_string()
}

/// The base64 of the certificate the HTTPS API presents to a new
/// connection (Python's TLS stack, trusting the CA).
fn presented_cert(ca: &Path) -> String {
    let script = r#"
import base64, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.check_hostname = False
with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5) as s:
    with ctx.wrap_socket(s) as t:
        print(base64.b64encode(t.getpeercert(True)).decode())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(ca)
        .args([IP, &HTTPS.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "HTTPS handshake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The base64 body of a PEM certificate file.
fn pem_body(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("a PEM file")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

fn write_json(path: PathBuf, v: Value) {
    std::fs::write(path, v.to_string()).expect("write a config file");
}

fn web(tags: &[&str], ttl: &str) -> Value {
    json!({ "service": {
        "name": "web", "port": 8080, "tags": tags,
        "check": { "id": "web-ttl", "name": "web alive", "ttl": ttl }
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_changed_files_and_keeps_the_agent_running_on_a_bad_one() {
    let dir = test_dir("reload");
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).expect("config dir");
    assert!(mesh(&dir, &["tls", "ca", "create"]).status.success());
    for _ in 0..2 {
        assert!(mesh(&dir, &["tls", "cert", "create", "-server"])
            .status
            .success());
    }
    let ca = dir.join("consul-agent-ca.pem");
    let (cert0, cert1) = (
        dir.join("dc1-server-consul-0.pem"),
        dir.join("dc1-server-consul-1.pem"),
    );
    let install = |i: usize| {
        for (from, to) in [
            (format!("dc1-server-consul-{i}.pem"), "agent.pem"),
            (format!("dc1-server-consul-{i}-key.pem"), "agent-key.pem"),
        ] {
            std::fs::copy(dir.join(from), dir.join(to)).expect("install a certificate");
        }
    };
    install(0);
    write_json(
        conf.join("tls.json"),
        json!({
            "ports": { "https": HTTPS },
            "tls": { "https": {
                "ca_file": ca, "cert_file": dir.join("agent.pem"),
                "key_file": dir.join("agent-key.pem"), "verify_incoming": false
            }}
        }),
    );
    write_json(conf.join("web.json"), web(&["v1"], "10m"));

    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let conf_arg = conf.display().to_string();
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args([
                "agent", "-dev", "-node", "reload0", "-bind", IP, "-client", IP,
            ])
            .args([
                "-http-port",
                &HTTP.to_string(),
                "-server-port",
                &SERVER.to_string(),
            ])
            .args(["-dns-port", "-1", "-config-dir", &conf_arg])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn the agent"),
    );
    let pid = agent.0.id().to_string();
    poll_until(Duration::from_secs(30), || async {
        let mut c = HttpClient::new(format!("{IP}:{HTTP}"), Duration::from_secs(2));
        c.request("GET", "/v1/agent/services", Vec::new())
            .await
            .is_ok_and(|r| r.text().contains("\"web\""))
    })
    .await
    .expect("the agent serves web from its files");
    assert_eq!(
        call("PUT", "/v1/agent/check/pass/web-ttl", Value::Null)
            .await
            .0,
        200
    );
    assert_eq!(check_status("web-ttl").await, "passing");
    assert_eq!(presented_cert(&ca), pem_body(&cert0));
    let manual = json!({ "Name": "manual", "Port": 7000 });
    assert_eq!(
        call("PUT", "/v1/agent/service/register", manual).await.0,
        200
    );

    // SIGHUP: a new service file and a renewed certificate.
    write_json(
        conf.join("api.json"),
        json!({ "service": { "name": "api", "port": 9000 } }),
    );
    install(1);
    write_json(conf.join("log.json"), json!({ "log_level": "debug" }));
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    poll_until(Duration::from_secs(10), || async {
        service_ids().await.contains(&"api".to_string())
    })
    .await
    .expect("SIGHUP registers api");
    assert_eq!(service_ids().await, ["api", "consul", "manual", "web"]);
    assert_eq!(
        check_status("web-ttl").await,
        "passing",
        "an unchanged check keeps its state"
    );
    assert_eq!(
        presented_cert(&ca),
        pem_body(&cert1),
        "new connections get the new certificate"
    );
    // The level changes right after the services, in the same reload.
    let log = dir.join("agent.log");
    poll_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("log level changed"))
    })
    .await
    .expect("SIGHUP applies log_level");
    poll_until(Duration::from_secs(10), || async {
        get("/v1/catalog/service/api")
            .await
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await
    .expect("api reaches the catalog");

    // `mesh reload`: the file is gone, so is the service (from the catalog too).
    std::fs::remove_file(conf.join("api.json")).expect("remove api.json");
    let out = mesh(&dir, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Configuration reload triggered"
    );
    assert_eq!(service_ids().await, ["consul", "manual", "web"]);
    poll_until(Duration::from_secs(10), || async {
        get("/v1/catalog/service/api")
            .await
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await
    .expect("api leaves the catalog");

    // A broken file: the reload fails with its name and nothing changes.
    std::fs::write(conf.join("zz-broken.json"), "{ \"service\": ").expect("write");
    write_json(conf.join("web.json"), web(&["v2"], "15m"));
    let (status, body) = call("PUT", "/v1/agent/reload", Value::Null).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("zz-broken.json"), "{body}");
    let out = mesh(&dir, &["reload"]);
    assert!(!out.status.success(), "mesh reload reports the failure");
    assert_eq!(get("/v1/agent/service/web").await["Tags"], json!(["v1"]));

    // A definition the agent refuses (a script check without
    // enable_script_checks): the reload fails and says which.
    std::fs::remove_file(conf.join("zz-broken.json")).expect("remove");
    write_json(
        conf.join("script.json"),
        json!({ "check": { "id": "probe", "name": "probe", "args": ["/bin/true"], "interval": "10s" } }),
    );
    let (status, body) = call("PUT", "/v1/agent/reload", Value::Null).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("probe") && body.contains("Scripts are disabled"),
        "{body}"
    );
    std::fs::remove_file(conf.join("script.json")).expect("remove");
    // An unknown log level is refused like a file that does not parse.
    write_json(conf.join("log.json"), json!({ "log_level": "loud" }));
    let (status, body) = call("PUT", "/v1/agent/reload", Value::Null).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("Invalid log level: loud"), "{body}");
    write_json(conf.join("log.json"), json!({ "log_level": "debug" }));

    // Fixed: the changed definition applies and the check keeps its status.
    assert_eq!(call("PUT", "/v1/agent/reload", Value::Null).await.0, 200);
    assert_eq!(get("/v1/agent/service/web").await["Tags"], json!(["v2"]));
    assert_eq!(
        check_status("web-ttl").await,
        "passing",
        "a changed check keeps its last status"
    );
    assert_eq!(service_ids().await, ["consul", "manual", "web"]);
    drop(agent);
}
