//! The client hosts of the simulated topology: fcs00 (runs the service
//! `fcs`, a TCP listener on 8181) and fcc00 (runs the consumer `fcc`), each
//! with a client agent started through the same entry point as
//! `mesh agent` (`-retry-join` to consul00-02), on its own simulated disk.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use mesh_core::agent_tls::CertKind;
use mesh_net::agent::command::{self, Signal};
use mesh_net::agent::local::LocalAgent;
use mesh_net::disk::MemDisk;
use tokio::sync::mpsc;
use tracing::info;

use crate::agent_files::AgentFiles;
use crate::cluster::{SimCluster, HTTP_PORT};

/// The port fcs listens on.
pub const FCS_PORT: u16 = 8181;
/// The client agents' DNS port (Consul's 8600).
pub const DNS_PORT: u16 = 8600;
/// Client agents' HTTPS API port (Consul's 8501).
pub const HTTPS_PORT: u16 = 8501;

/// A task a client host runs beside its agent, started again at every
/// boot (the Connect scenario's app, sidecar and consumer).
pub type BootTask =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// One client host.
pub struct SimAgentHost {
    /// `fcs00` or `fcc00`.
    pub name: String,
    /// Its IP.
    pub ip: IpAddr,
    /// Its disk, kept across restarts.
    pub disk: MemDisk,
    /// The running agent's local state, published by the node's init task.
    pub live: Arc<Mutex<Option<Arc<LocalAgent>>>>,
    /// Whether the host's application (fcs on 8181) accepts connections.
    pub app_up: Arc<AtomicBool>,
    /// Whether the host runs an application at all.
    pub has_app: bool,
    /// Tasks started beside the agent at every boot.
    pub boot_tasks: Vec<BootTask>,
    /// The madsim node, once created.
    pub node: Option<NodeHandle>,
    /// Whether it is up.
    pub running: bool,
    /// The running agent's signal channel: SIGTERM through it stops the
    /// agent alone, and the host starts it again (`systemctl restart`).
    pub agent_signals: Arc<Mutex<Option<mpsc::Sender<Signal>>>>,
    /// Service definitions (JSON, Consul's shape) written to the agent's
    /// config dir beside the harness's files: a test adds one and calls
    /// `PUT /v1/agent/reload`.
    pub extra_services: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl SimAgentHost {
    /// The agent's HTTP address.
    pub fn http_addr(&self) -> String {
        SocketAddr::new(self.ip, HTTP_PORT).to_string()
    }

    /// The agent's DNS address.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, DNS_PORT)
    }

    /// fcs's address.
    pub fn app_addr(&self) -> String {
        SocketAddr::new(self.ip, FCS_PORT).to_string()
    }
}

/// The fcs stand-in: accepts (and closes) connections on 8181 while `up`;
/// while down, nothing listens, so connecting is refused.
async fn fcs_app(up: Arc<AtomicBool>) {
    let mut listener: Option<tokio::net::TcpListener> = None;
    loop {
        if !up.load(Ordering::SeqCst) {
            listener = None;
            madsim::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if listener.is_none() {
            listener = tokio::net::TcpListener::bind(("0.0.0.0", FCS_PORT))
                .await
                .ok();
        }
        match &listener {
            Some(l) => {
                if let Ok(Ok((conn, _))) =
                    madsim::time::timeout(Duration::from_millis(50), l.accept()).await
                {
                    drop(conn);
                }
            }
            None => madsim::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl SimCluster {
    /// Plans fcs00 (10.0.0.13, with the fcs app) and fcc00 (10.0.0.14);
    /// starts neither.
    pub fn add_agent_hosts(&mut self) {
        for (k, name) in ["fcs00", "fcc00"].into_iter().enumerate() {
            self.agents.push(SimAgentHost {
                name: name.into(),
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 13 + k as u8)),
                disk: MemDisk::new(),
                live: Arc::new(Mutex::new(None)),
                app_up: Arc::new(AtomicBool::new(k == 0)),
                has_app: k == 0,
                boot_tasks: Vec::new(),
                node: None,
                running: false,
                agent_signals: Arc::new(Mutex::new(None)),
                extra_services: Arc::new(Mutex::new(Vec::new())),
            });
        }
    }

    /// The flags and configuration files of client host `k`'s agent: the
    /// data dir, the servers to join and the ports in `agent.json`, a
    /// client certificate, and the HTTPS API open to any caller that
    /// trusts the CA.
    fn client_agent_files(&self, k: usize) -> AgentFiles {
        let a = &self.agents[k];
        let ip = a.ip.to_string();
        let servers: Vec<String> = (0..self.servers.len()).map(|i| self.rpc_addr(i)).collect();
        AgentFiles {
            name: a.name.clone(),
            flags: ["-node", &a.name, "-bind", &ip, "-client", &ip]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cert: CertKind::Client,
            https: true,
            // fcs00 gets its RPC certificate from the servers, fcc00 from
            // the operator: every run exercises both.
            auto_encrypt: a.name == "fcs00",
            agent_json: Some(serde_json::json!({
                "data_dir": "/var/lib/mesh",
                "retry_join": servers,
                "ports": { "http": HTTP_PORT, "dns": DNS_PORT, "https": HTTPS_PORT },
            })),
            rpc_tls: self.rpc_tls.clone(),
            extra_services: a.extra_services.clone(),
        }
    }
    /// Starts client host `k` (first boot, or after [`SimCluster::crash_agent`]).
    pub fn start_agent(&mut self, k: usize) {
        assert!(
            !self.agents[k].running,
            "{} already runs",
            self.agents[k].name
        );
        self.agents[k].running = true;
        if let Some(node) = &self.agents[k].node {
            info!(agent = %self.agents[k].name, "restarting");
            Handle::current().restart(node.id());
            return;
        }
        let files = self.client_agent_files(k);
        let launch = files
            .launch()
            .unwrap_or_else(|e| panic!("the harness wrote a bad agent config: {e}"));
        assert!(
            launch.config.rpc_tls.is_some(),
            "the config files set up TLS on the RPC port"
        );
        let a = &mut self.agents[k];
        let (disk, live, app_up, has_app) =
            (a.disk.clone(), a.live.clone(), a.app_up.clone(), a.has_app);
        let boot_tasks = a.boot_tasks.clone();
        let signals = a.agent_signals.clone();
        let node = Handle::current()
            .create_node()
            .name(&a.name)
            .ip(a.ip)
            .init(move || {
                let config = launch.config.clone();
                let files = files.clone();
                let (disk, live, app_up) = (disk.clone(), live.clone(), app_up.clone());
                let boot_tasks = boot_tasks.clone();
                let signals = signals.clone();
                async move {
                    if has_app {
                        tokio::spawn(fcs_app(app_up));
                    }
                    for task in &boot_tasks {
                        tokio::spawn(task());
                    }
                    // The agent is this host's service: whenever it stops (a
                    // signal, a refused start, `PUT /v1/agent/leave`), it is
                    // started again after a pause, as systemd's
                    // `Restart=always` does; the app and the boot tasks go on.
                    loop {
                        let (tx, rx) = mpsc::channel::<Signal>(1);
                        *signals.lock().expect("signals lock") = Some(tx);
                        // `PUT /v1/agent/reload` writes and reads the files again.
                        let files = files.clone();
                        let reloader = command::Reloader {
                            read: Box::new(move || files.launch()),
                            set_log_level: Box::new(|_| Ok(false)),
                        };
                        let live_now = live.clone();
                        let _ = command::run(
                            config.clone(),
                            Arc::new(disk.clone()),
                            rx,
                            reloader,
                            |agent| {
                                *live_now.lock().expect("live lock") = Some(agent.local().clone());
                            },
                        )
                        .await;
                        *live.lock().expect("live lock") = None;
                        madsim::time::sleep(crate::scenarios::rand_ms(100, 1000)).await;
                        info!("the agent starts again");
                    }
                }
            })
            .build();
        a.node = Some(node);
    }

    /// Power loss on client host `k` (its agent and app die).
    pub fn crash_agent(&mut self, k: usize) {
        let a = &mut self.agents[k];
        info!(agent = %a.name, "crash");
        if let Some(node) = &a.node {
            Handle::current().kill(node.id());
        }
        *a.live.lock().expect("live lock") = None;
        a.disk.crash(0);
        a.running = false;
    }

    /// `systemctl restart` of client host `k`'s agent alone: SIGTERM, and
    /// the host starts it again after a pause (its app, sidecar and
    /// consumer go on).
    pub async fn restart_agent_process(&self, k: usize) -> Result<(), String> {
        let a = &self.agents[k];
        let tx = a.agent_signals.lock().expect("signals lock").take();
        let tx = tx.ok_or_else(|| format!("{}'s agent is not running", a.name))?;
        info!(agent = %a.name, "SIGTERM to the agent (the host starts it again)");
        tx.send(Signal::Terminate)
            .await
            .map_err(|_| format!("{}'s agent stopped reading its signals", a.name))
    }

    /// Makes client host `k`'s clock run at `rate_ppm` millionths of true
    /// time and its wall clock `wall_offset_ms` off.
    pub fn set_agent_clock(&self, k: usize, rate_ppm: u64, wall_offset_ms: i64) {
        if let Some(node) = &self.agents[k].node {
            let clocks = madsim::plugin::simulator::<mesh_net::clock::ClockSim>();
            clocks.set_rate(node.id(), rate_ppm);
            clocks.set_wall_offset(node.id(), wall_offset_ms * 1_000_000);
        }
    }

    /// Cuts client host `k` off from everyone.
    pub fn isolate_agent(&self, k: usize) {
        if let Some(node) = &self.agents[k].node {
            madsim::net::NetSim::current().clog_node(node.id());
        }
    }

    /// Undoes [`SimCluster::isolate_agent`].
    pub fn heal_agent(&self, k: usize) {
        if let Some(node) = &self.agents[k].node {
            madsim::net::NetSim::current().unclog_node(node.id());
        }
    }

    /// The running agent of client host `k`.
    pub fn agent(&self, k: usize) -> Option<Arc<LocalAgent>> {
        if !self.agents[k].running {
            return None;
        }
        self.agents[k].live.lock().expect("live lock").clone()
    }
}
