//! Three (or more) `mesh agent -server` processes on loopback addresses,
//! with real TCP and real files: the harness behind `mesh demo` and the
//! integration tests.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mesh_core::agent_tls::{
    self, create_ca, create_cert, CaRequest, CertAndKey, CertKind, CertRequest,
};

use mesh_net::http_client::{HttpClient, HttpResponse};

/// A fresh scratch directory for test `name` of this process.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One server process and where it lives.
#[derive(Debug)]
pub struct Node {
    /// Node name (`consul00`...).
    pub name: String,
    /// Loopback IP it binds.
    pub ip: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `None` for a server; a client agent's extra flags otherwise.
    client_args: Option<Vec<String>>,
    /// Flags for this node alone (e.g. its own `-config-file`).
    own_args: Vec<String>,
    child: Option<Child>,
}

/// A cluster of server processes.
#[derive(Debug)]
pub struct ProcessCluster {
    exe: PathBuf,
    dir: PathBuf,
    rpc_port: u16,
    http_port: u16,
    /// The servers, in order.
    pub nodes: Vec<Node>,
    extra_args: Vec<String>,
    /// The operator CA, when the RPC port runs TLS ([`ProcessCluster::with_rpc_tls`]).
    rpc_tls_ca: Option<CertAndKey>,
}

impl ProcessCluster {
    /// Plans servers `consul00..` on `ips`, storing data and logs under
    /// `dir` (created). Nothing starts until [`ProcessCluster::start`].
    pub fn new(
        exe: &Path,
        dir: &Path,
        ips: &[&str],
        rpc_port: u16,
        http_port: u16,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let nodes = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Node {
                name: format!("consul{i:02}"),
                ip: ip.to_string(),
                data_dir: dir.join(format!("consul{i:02}")),
                client_args: None,
                own_args: Vec::new(),
                child: None,
            })
            .collect();
        Ok(Self {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            rpc_port,
            http_port,
            nodes,
            extra_args: Vec::new(),
            rpc_tls_ca: None,
        })
    }

    /// Extra flags for every agent (e.g. `-log-level debug`).
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs every agent with TLS on the RPC port, as the bare-metal example
    /// does: an operator CA made here, a server or client certificate per
    /// node (made when the node first starts), and `verify_incoming`,
    /// `verify_outgoing` and `verify_server_hostname` on.
    pub fn with_rpc_tls(mut self) -> io::Result<Self> {
        let ca = create_ca(
            &CaRequest {
                domain: agent_tls::DEFAULT_DOMAIN.into(),
                days: 30,
                common_name: None,
                name_constraint: false,
                additional_constraints: Vec::new(),
            },
            SystemTime::now(),
        )
        .map_err(io::Error::other)?;
        fs::write(self.dir.join("consul-agent-ca.pem"), &ca.cert_pem)?;
        self.rpc_tls_ca = Some(ca);
        Ok(self)
    }

    /// Node `i`'s TLS config file (written on first use), if TLS is on.
    fn rpc_tls_config(&self, i: usize) -> io::Result<Option<PathBuf>> {
        let Some(ca) = &self.rpc_tls_ca else {
            return Ok(None);
        };
        let node = &self.nodes[i];
        let config = self.dir.join(format!("{}-tls.json", node.name));
        if config.exists() {
            return Ok(Some(config));
        }
        let request = CertRequest {
            kind: if self.is_server(i) {
                CertKind::Server
            } else {
                CertKind::Client
            },
            datacenter: "dc1".into(),
            domain: agent_tls::DEFAULT_DOMAIN.into(),
            node: self.is_server(i).then(|| node.name.clone()),
            additional_dns: Vec::new(),
            additional_ips: node.ip.parse().into_iter().collect(),
            days: 30,
        };
        let cert = create_cert(
            &ca.cert_pem,
            ca.key_pem.expose(),
            &request,
            SystemTime::now(),
        )
        .map_err(io::Error::other)?;
        let cert_file = self.dir.join(format!("{}.pem", node.name));
        let key_file = self.dir.join(format!("{}-key.pem", node.name));
        fs::write(&cert_file, &cert.cert_pem)?;
        fs::write(&key_file, cert.key_pem.expose())?;
        let body = serde_json::json!({
            "tls": {
                "defaults": {
                    "ca_file": self.dir.join("consul-agent-ca.pem"),
                    "cert_file": cert_file,
                    "key_file": key_file,
                    "verify_incoming": true,
                    "verify_outgoing": true
                },
                "internal_rpc": { "verify_server_hostname": true }
            }
        });
        fs::write(&config, body.to_string())?;
        Ok(Some(config))
    }

    /// Plans a client agent `name` on `ip` with extra flags (e.g.
    /// `-config-file`); it joins the servers. Returns its index.
    pub fn add_client(&mut self, name: &str, ip: &str, args: &[&str]) -> usize {
        self.nodes.push(Node {
            name: name.to_string(),
            ip: ip.to_string(),
            data_dir: self.dir.join(name),
            client_args: Some(args.iter().map(|s| s.to_string()).collect()),
            own_args: Vec::new(),
            child: None,
        });
        self.nodes.len() - 1
    }

    /// Extra flags for node `i` alone, after every other flag.
    pub fn set_node_args(&mut self, i: usize, args: &[&str]) {
        self.nodes[i].own_args = args.iter().map(|s| s.to_string()).collect();
    }

    fn is_server(&self, i: usize) -> bool {
        self.nodes[i].client_args.is_none()
    }

    /// The HTTP address of server `i`.
    pub fn http_addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.http_port)
    }

    /// The RPC address of server `i` (what `/v1/status/leader` reports).
    pub fn rpc_addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].ip, self.rpc_port)
    }

    /// The server whose RPC address is `addr`.
    pub fn index_of(&self, rpc_addr: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.rpc_addr(i) == rpc_addr)
    }

    /// Whether server `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The log file of server `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.nodes[i].name))
    }

    /// Starts node `i`: a server with `-bootstrap-expect N` and `-retry-join`
    /// to the other servers, or a client agent joining every server.
    pub fn start(&mut self, i: usize) -> io::Result<()> {
        assert!(self.nodes[i].child.is_none(), "server {i} already runs");
        let node = &self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let mut cmd = Command::new(&self.exe);
        let servers: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| self.is_server(j))
            .collect();
        cmd.arg("agent")
            .args(["-node", &node.name])
            .args(["-bind", &node.ip])
            .args(["-client", &node.ip])
            .arg(format!("-server-port={}", self.rpc_port))
            .arg(format!("-http-port={}", self.http_port))
            .arg(format!("-data-dir={}", node.data_dir.display()));
        if let Some(args) = &node.client_args {
            cmd.args(args);
        } else {
            cmd.arg("-server")
                .arg(format!("-bootstrap-expect={}", servers.len()));
        }
        for j in servers {
            if j != i {
                cmd.arg(format!(
                    "-retry-join={}:{}",
                    self.nodes[j].ip, self.rpc_port
                ));
            }
        }
        if let Some(config) = self.rpc_tls_config(i)? {
            cmd.arg(format!("-config-file={}", config.display()));
        }
        cmd.args(&self.extra_args)
            .args(&self.nodes[i].own_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// kill -9 server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP server `i`: it stays up but answers nothing (a hung host).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// SIGCONT server `i` after [`ProcessCluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(child) = &self.nodes[i].child {
            let status = Command::new("kill")
                .arg(sig)
                .arg(child.id().to_string())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "kill {sig} {} failed",
                self.nodes[i].name
            );
        }
    }

    /// SIGTERM server `i` and wait (up to 10 s, then kill -9) for it to exit.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One HTTP request to server `i`.
    pub async fn request(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        let mut c = HttpClient::new(self.http_addr(i), Duration::from_secs(10));
        c.request(method, path, body.to_vec())
            .await
            .map_err(|e| e.to_string())
    }

    /// The leader server `i` reports, as a server index.
    pub async fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let mut c = HttpClient::new(self.http_addr(i), Duration::from_millis(500));
        let resp = c.request("GET", "/v1/status/leader", vec![]).await.ok()?;
        let addr: String = serde_json::from_slice(&resp.body).ok()?;
        self.index_of(&addr)
    }

    /// Waits until every running server names the same running leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut seen = Vec::new();
            for i in 0..self.nodes.len() {
                if self.is_running(i) && self.is_server(i) {
                    seen.push(self.leader_seen_by(i).await);
                }
            }
            if let Some(Some(l)) = seen.first() {
                if self.is_running(*l) && seen.iter().all(|s| *s == Some(*l)) {
                    return Some(*l);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Stops every server with SIGTERM.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.terminate(i);
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Network partitions between loopback addresses with nftables: packets
/// from one address to another are dropped, so the peers see silence and
/// time out, as across a real partition (not the instant "connection
/// refused" of a dead process). Needs root and `nft`; the rules live in a
/// table of their own, removed on drop.
#[derive(Debug)]
pub struct Partitions {
    table: String,
}

impl Partitions {
    /// Creates an empty rule table, or says why it cannot.
    pub fn new() -> Result<Self, String> {
        let table = format!("mesh_test_{}", std::process::id());
        nft(&["add", "table", "inet", &table])?;
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        ])?;
        Ok(Self { table })
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            nft(&[
                "add",
                "rule",
                "inet",
                &self.table,
                "input",
                "ip",
                "saddr",
                from,
                "ip",
                "daddr",
                to,
                "drop",
            ])?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        nft(&["flush", "chain", "inet", &self.table, "input"])
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
    }
}

fn nft(args: &[&str]) -> Result<(), String> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nft (install nftables): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Polls `probe` every 50 ms until it holds (returning how long that took)
/// or `limit` passes (`None`).
pub async fn poll_until<F, Fut>(limit: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < limit {
        if probe().await {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Polls until `probe` holds, failing the test (a panic naming `what`)
/// after `limit`; how long it took.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_until(limit, probe)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}
