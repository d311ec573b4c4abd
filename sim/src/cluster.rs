//! The simulated topology: consul00-02 as madsim nodes running the
//! production agent (`mesh_net::agent::Agent`), each with a [`MemDisk`]
//! that outlives crashes, plus a client host for workloads.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};
use mesh_core::agent_tls::CertKind;
use mesh_net::agent::command::{self, Signal};
use mesh_net::clock::ClockSim;
use mesh_net::disk::MemDisk;
use mesh_net::server::Server;
use tokio::sync::mpsc;
use tracing::info;

use crate::agent_files::AgentFiles;

/// Server RPC port (Consul's 8300).
pub const RPC_PORT: u16 = 8300;
/// HTTP port (Consul's 8500).
pub const HTTP_PORT: u16 = 8500;

/// How a server finds its cluster.
#[derive(Debug, Clone)]
pub enum Formation {
    /// `-bootstrap` on this one.
    Bootstrap,
    /// `-bootstrap-expect=N` plus `-retry-join` to all others.
    Expect(u32),
    /// `-retry-join` to the given servers only.
    Join(Vec<usize>),
}

/// One simulated server host.
pub struct SimServer {
    /// `consul00`...
    pub name: String,
    /// Its IP.
    pub ip: IpAddr,
    /// Its disk, kept across restarts.
    pub disk: MemDisk,
    /// The running server, published by the node's init task.
    pub live: Arc<Mutex<Option<Arc<Server>>>>,
    /// Why the agent refused to start (e.g. corrupt storage), if it did.
    pub start_error: Arc<Mutex<Option<String>>>,
    /// Delivers signals (SIGTERM) to the running agent.
    pub signals: Arc<Mutex<Option<mpsc::Sender<Signal>>>>,
    /// The madsim node, once created.
    pub node: Option<NodeHandle>,
    /// Whether it is up.
    pub running: bool,
    /// Its formation flags.
    pub formation: Formation,
}

/// The simulated cluster.
pub struct SimCluster {
    /// The servers.
    pub servers: Vec<SimServer>,
    /// The host that runs workloads and checkers' HTTP calls.
    pub client: NodeHandle,
    /// Client agent hosts (fcs00, fcc00), once added
    /// (`SimCluster::add_agent_hosts`).
    pub agents: Vec<crate::agent_hosts::SimAgentHost>,
    /// The operator CA every agent's RPC TLS comes from.
    pub rpc_tls: crate::rpc_tls::SimRpcTls,
    snapshot_threshold: u64,
    /// How many injected faults currently cut each directed link: a link
    /// carries traffic again only when the last of them heals, so
    /// overlapping faults on one link cannot heal each other early.
    link_cuts: BTreeMap<(usize, usize), u32>,
}

fn server_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8))
}

impl SimCluster {
    /// Plans `n` servers with the given formation flags; starts none.
    pub fn new(formations: Vec<Formation>, snapshot_threshold: u64) -> Self {
        let handle = Handle::current();
        let client = handle
            .create_node()
            .name("client")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
            .build();
        let servers = formations
            .into_iter()
            .enumerate()
            .map(|(i, formation)| SimServer {
                name: format!("consul{i:02}"),
                ip: server_ip(i),
                // Each disk's own fsync time, drawn by the seed (0.5–8 ms,
                // SSDs to spinning or cloud disks): a crash can fall inside
                // any sync, losing or tearing its bytes. Shorter windows
                // fell between the simulator's timer ticks and were never hit.
                disk: MemDisk::with_sync_latency(Duration::from_micros(
                    madsim::rand::thread_rng().gen_range(500..8000),
                )),
                live: Arc::new(Mutex::new(None)),
                start_error: Arc::new(Mutex::new(None)),
                signals: Arc::new(Mutex::new(None)),
                node: None,
                running: false,
                formation,
            })
            .collect();
        Self {
            servers,
            client,
            agents: Vec::new(),
            rpc_tls: crate::rpc_tls::SimRpcTls::new(),
            snapshot_threshold,
            link_cuts: BTreeMap::new(),
        }
    }

    /// The HTTP address of server `i`.
    pub fn http_addr(&self, i: usize) -> String {
        SocketAddr::new(self.servers[i].ip, HTTP_PORT).to_string()
    }

    /// The RPC address of server `i`.
    pub fn rpc_addr(&self, i: usize) -> String {
        SocketAddr::new(self.servers[i].ip, RPC_PORT).to_string()
    }

    /// The `mesh agent` flags of server `i`, as an operator would pass them
    /// (README "Deploying consul00–02 on bare metal").
    fn agent_args(&self, i: usize) -> Vec<String> {
        let s = &self.servers[i];
        let ip = s.ip.to_string();
        let mut args: Vec<String> = [
            "-server",
            "-node",
            &s.name,
            "-bind",
            &ip,
            "-client",
            &ip,
            "-data-dir",
            "/var/lib/mesh",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!("-server-port={RPC_PORT}"));
        args.push(format!("-http-port={HTTP_PORT}"));
        // No DNS scenario yet: DNS stays off so traces do not move.
        args.push("-dns-port=-1".into());
        args.push(format!("-snapshot-threshold={}", self.snapshot_threshold));
        let n = self.servers.len();
        match &s.formation {
            Formation::Bootstrap => args.push("-bootstrap".into()),
            Formation::Expect(e) => {
                args.push(format!("-bootstrap-expect={e}"));
                for j in (0..n).filter(|j| *j != i) {
                    args.push(format!("-retry-join={}", self.rpc_addr(j)));
                }
            }
            Formation::Join(targets) => {
                for j in targets {
                    args.push(format!("-retry-join={}", self.rpc_addr(*j)));
                }
            }
        }
        args
    }

    /// Starts server `i` (first boot or after [`SimCluster::crash`]).
    pub fn start(&mut self, i: usize) {
        let s = &mut self.servers[i];
        assert!(!s.running, "{} already runs", s.name);
        s.running = true;
        if let Some(node) = &s.node {
            info!(server = %s.name, "restarting");
            Handle::current().restart(node.id());
            return;
        }
        // What `mesh agent -server ... -config-dir /etc/mesh.d` with
        // `deploy/tls.json` and a server certificate gives on bare metal.
        let files = AgentFiles {
            name: self.servers[i].name.clone(),
            flags: self.agent_args(i),
            cert: CertKind::Server,
            https: false,
            auto_encrypt: true,
            agent_json: None,
            rpc_tls: self.rpc_tls.clone(),
            extra_services: Default::default(),
        };
        let launch = files
            .launch()
            .unwrap_or_else(|e| panic!("the harness passed bad agent flags: {e}"));
        let read = move || files.launch();
        let read = Arc::new(read);
        let s = &mut self.servers[i];
        let disk = s.disk.clone();
        let live = s.live.clone();
        let start_error = s.start_error.clone();
        let signals = s.signals.clone();
        let node = Handle::current()
            .create_node()
            .name(&s.name)
            .ip(s.ip)
            .init(move || {
                let config = launch.config.clone();
                let disk = disk.clone();
                let live = live.clone();
                let start_error = start_error.clone();
                let (tx, rx) = mpsc::channel(4);
                *signals.lock().expect("signals lock") = Some(tx);
                let read = read.clone();
                let reloader = command::Reloader {
                    read: Box::new(move || read()),
                    set_log_level: Box::new(|_| Ok(false)),
                };
                // No span of our own: one created here would take the
                // caller's (the supervisor's) span as parent, and every line
                // logged on this node would be labelled with node 0. madsim
                // labels the node's tasks itself.
                async move {
                    // The same entry point as `mesh agent`, with simulated
                    // signals.
                    let result = command::run(config, Arc::new(disk), rx, reloader, |agent| {
                        *live.lock().expect("live lock") = agent.server().cloned();
                    })
                    .await;
                    if let Err(e) = result {
                        // As `mesh agent` exits: refuse to serve.
                        *start_error.lock().expect("start error lock") = Some(e);
                    }
                    *live.lock().expect("live lock") = None;
                }
            })
            .build();
        s.node = Some(node);
    }

    /// SIGTERM to server `i`: the agent hands off leadership (if it leads)
    /// and stops, as `systemctl stop` does to `mesh agent`. The node stays
    /// up but serves nothing; [`SimCluster::finish_stop`] marks it down.
    pub fn terminate(&self, i: usize) {
        let s = &self.servers[i];
        info!(server = %s.name, "SIGTERM");
        if let Some(tx) = s.signals.lock().expect("signals lock").as_ref() {
            // A full queue means a signal is already pending.
            let _ = tx.try_send(Signal::Terminate);
        }
    }

    /// Whether server `i`'s agent has stopped (after a signal or a leave).
    pub fn agent_stopped(&self, i: usize) -> bool {
        self.servers[i].live.lock().expect("live lock").is_none()
    }

    /// Whether server `i`'s disk has a write in flight right now.
    pub fn write_in_flight(&self, i: usize) -> bool {
        self.servers[i].disk.write_in_flight()
    }

    /// Power loss on server `i`: the node dies, unsynced bytes are lost
    /// (with `torn_bytes` of the unsynced tail surviving, as a torn write).
    pub fn crash(&mut self, i: usize, torn_bytes: usize) {
        let s = &mut self.servers[i];
        assert!(s.running, "{} is not running", s.name);
        info!(server = %s.name, torn_bytes, "crash");
        if let Some(node) = &s.node {
            Handle::current().kill(node.id());
        }
        *s.live.lock().expect("live lock") = None;
        let damaged_files = s.disk.crash(torn_bytes);
        if damaged_files > 0 {
            info!(server = %s.name, damaged_files, "crash cut writes in flight");
        }
        s.running = false;
    }

    /// Why server `i` refused to start, if it did.
    pub fn start_error(&self, i: usize) -> Option<String> {
        self.servers[i]
            .start_error
            .lock()
            .expect("start error lock")
            .clone()
    }

    /// Flips one seed-chosen bit in the first three quarters of one of
    /// server `i`'s files (a media fault). The tail is spared: a damaged
    /// last record is indistinguishable from a torn write by design.
    pub fn flip_bit(&self, i: usize) -> Option<(String, usize)> {
        let files: Vec<(String, usize)> = self.servers[i]
            .disk
            .listing()
            .into_iter()
            .filter(|(_, len)| *len >= 16)
            .collect();
        if files.is_empty() {
            return None;
        }
        let mut rng = madsim::rand::thread_rng();
        let (name, len) = files[rng.gen_range(0..files.len())].clone();
        let byte = rng.gen_range(0..len * 3 / 4);
        let bit = rng.gen_range(0..8u8);
        self.servers[i].disk.flip_bit(&name, byte, bit);
        Some((name, byte))
    }

    /// The operator's answer to a server that refuses to start on corrupt
    /// storage: wipe its data dir and start it fresh; it rejoins under a new
    /// id and replaces its stale entry.
    pub fn wipe_and_restart(&mut self, i: usize) {
        info!(server = %self.servers[i].name, "wiping data dir and restarting");
        if self.servers[i].running {
            self.crash(i, 0);
        }
        self.servers[i].disk.wipe();
        *self.servers[i]
            .start_error
            .lock()
            .expect("start error lock") = None;
        self.start(i);
    }

    /// Makes server `i`'s fsyncs take `latency` longer.
    pub fn set_sync_latency(&self, i: usize, latency: Duration) {
        self.servers[i].disk.set_sync_latency(latency);
    }

    /// Makes server `i`'s clock run at `rate_ppm` millionths of true time
    /// (1_000_000 is exact) and its wall clock `wall_offset_ms` off.
    pub fn set_clock(&self, i: usize, rate_ppm: u64, wall_offset_ms: i64) {
        if let Some(node) = &self.servers[i].node {
            let clocks = madsim::plugin::simulator::<ClockSim>();
            clocks.set_rate(node.id(), rate_ppm);
            clocks.set_wall_offset(node.id(), wall_offset_ms * 1_000_000);
        }
    }

    /// Fills (or frees) server `i`'s disk.
    pub fn set_disk_full(&self, i: usize, full: bool) {
        self.servers[i].disk.set_full(full);
    }

    /// The live server `i`, if it runs and finished starting.
    pub fn server(&self, i: usize) -> Option<Arc<Server>> {
        if !self.servers[i].running {
            return None;
        }
        self.servers[i].live.lock().expect("live lock").clone()
    }

    /// Indexes of running servers.
    pub fn running(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|i| self.servers[*i].running)
            .collect()
    }

    /// Isolates server `i` from everyone (both directions).
    pub fn isolate(&self, i: usize) {
        if let Some(node) = &self.servers[i].node {
            madsim::net::NetSim::current().clog_node(node.id());
        }
    }

    /// Freezes server `i` (a long GC-like stall): its connections stay open
    /// but nothing it sends or answers moves until [`SimCluster::resume`].
    pub fn pause(&self, i: usize) {
        if let Some(node) = &self.servers[i].node {
            Handle::current().pause(node.id());
        }
    }

    /// Undoes [`SimCluster::pause`].
    pub fn resume(&self, i: usize) {
        if let Some(node) = &self.servers[i].node {
            Handle::current().resume(node.id());
        }
    }

    /// Drops everything server `from` sends to server `to` (one direction)
    /// until every fault that cut this link has called
    /// [`SimCluster::unclog_link`].
    pub fn clog_link(&mut self, from: usize, to: usize) {
        let cuts = self.link_cuts.entry((from, to)).or_default();
        *cuts += 1;
        if *cuts == 1 {
            self.set_link(from, to, false);
        }
    }

    /// Cuts server `i` off from the other servers in both directions;
    /// clients can still reach it (the partition that lets a deposed leader
    /// keep answering clients).
    pub fn cut_from_peers(&mut self, i: usize) {
        for j in (0..self.servers.len()).filter(|j| *j != i) {
            self.clog_link(i, j);
            self.clog_link(j, i);
        }
    }

    /// Undoes [`SimCluster::cut_from_peers`].
    pub fn reconnect_to_peers(&mut self, i: usize) {
        for j in (0..self.servers.len()).filter(|j| *j != i) {
            self.unclog_link(i, j);
            self.unclog_link(j, i);
        }
    }

    /// Undoes one [`SimCluster::clog_link`].
    pub fn unclog_link(&mut self, from: usize, to: usize) {
        let Some(cuts) = self.link_cuts.get_mut(&(from, to)) else {
            return;
        };
        *cuts -= 1;
        if *cuts == 0 {
            self.link_cuts.remove(&(from, to));
            self.set_link(from, to, true);
        }
    }

    fn set_link(&self, from: usize, to: usize, up: bool) {
        if let (Some(a), Some(b)) = (&self.servers[from].node, &self.servers[to].node) {
            let net = madsim::net::NetSim::current();
            if up {
                net.unclog_link(a.id(), b.id());
            } else {
                net.clog_link(a.id(), b.id());
            }
        }
    }

    /// Undoes [`SimCluster::isolate`].
    pub fn heal(&self, i: usize) {
        if let Some(node) = &self.servers[i].node {
            madsim::net::NetSim::current().unclog_node(node.id());
        }
    }
}
