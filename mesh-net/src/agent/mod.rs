//! An agent: the process-level unit that `mesh agent` runs and the
//! simulator starts on each host. Every agent has the local state
//! (services, checks, anti-entropy, heartbeats; [`local`]) and the HTTP
//! API; a server agent also runs a Raft server, which is its way to the
//! cluster, while a client agent reaches the servers over RPC
//! ([`crate::client`]). As in Consul, servers are agents too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::state::catalog::{HealthCheck, Node, NodeService};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::{Cluster, LocalServer};
use crate::client::RemoteServers;
use crate::disk::Disk;
use crate::http::{self, HttpApi};
pub mod auto_encrypt;
pub mod checks;
pub mod command;
pub mod connect;
pub mod local;
pub mod reload;

use crate::server::{load_or_create_node_id, Server, ServerConfig, StartError};
use checks::CheckSpec;
use local::LocalAgent;

/// Server or client.
#[derive(Debug, Clone)]
pub enum Role {
    /// A Raft server (`-server`, `-dev`).
    Server(ServerConfig),
    /// A client agent: reaches the servers over RPC.
    Client {
        /// Server addresses (`-retry-join`, `-join`).
        servers: Vec<String>,
        /// `auto_encrypt.tls`: the certificate to ask the servers for.
        auto_encrypt: Option<auto_encrypt::Request>,
    },
}

/// A service registered from a config file, with its checks.
pub type ServiceWithChecks = (NodeService, Vec<(HealthCheck, CheckSpec)>);

/// Everything `mesh agent ...` configures.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (`-node`, `node_name`).
    pub node_name: String,
    /// Datacenter (`-datacenter`, `datacenter`).
    pub datacenter: String,
    /// Server or client.
    pub role: Role,
    /// Address of this node in the catalog and source of its connections
    /// (`-bind`, or `-advertise` when given).
    pub advertise: IpAddr,
    /// Where the HTTP API listens (`-client` + `-http-port`).
    pub http_bind: SocketAddr,
    /// Where DNS listens, UDP and TCP (`-client` + `-dns-port`; `None`
    /// with `-dns-port=-1`).
    pub dns_bind: Option<SocketAddr>,
    /// Services from config files.
    pub services: Vec<ServiceWithChecks>,
    /// Node checks and service checks from config files.
    pub checks: Vec<(HealthCheck, CheckSpec)>,
    /// Allow script checks (`enable_script_checks`).
    pub enable_script_checks: bool,
    /// What a connection no intention matches gets (`acl { default_policy
    /// }`): deny unless set to `"allow"`.
    pub default_intention_allow: bool,
    /// TLS on the RPC port (`tls { defaults { ... } }`), if configured.
    pub rpc_tls: Option<Arc<crate::rpc_tls::RpcTls>>,
    /// The HTTPS API (`ports.https`), if configured.
    pub https: Option<crate::http::https::HttpsListener>,
    /// `encrypt` was given (checked; there is no gossip to encrypt).
    pub gossip_key_given: bool,
}

impl AgentConfig {
    /// The server configuration, on a server agent.
    pub fn server(&self) -> Option<&ServerConfig> {
        match &self.role {
            Role::Server(s) => Some(s),
            Role::Client { .. } => None,
        }
    }
}

/// Formats a node id as Consul's UUID-shaped `NodeID`.
pub fn node_uuid(id: u64) -> String {
    let hex = format!("{id:016x}");
    format!(
        "{}-{}-{}-0000-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        "000000000000"
    )
}

/// A running agent.
pub struct Agent {
    server: Option<Arc<Server>>,
    cluster: Arc<dyn Cluster>,
    local: Arc<LocalAgent>,
    http_task: JoinHandle<()>,
    https_task: Option<JoinHandle<()>>,
    /// Waits for the HTTP(S) connections to end once the servers stop.
    http_drain: crate::owned_tasks::Drain,
    dns_tasks: Vec<JoinHandle<()>>,
    connect_task: JoinHandle<()>,
    /// Renews the `auto_encrypt` certificate (client agents with
    /// `auto_encrypt.tls`).
    auto_encrypt_task: Option<JoinHandle<()>>,
    left: Arc<Notify>,
    /// What the agent runs with (a reload compares the files with it).
    config: std::sync::Mutex<AgentConfig>,
    /// Reloads asked through the HTTP API, for the run loop.
    reload_requests: Option<tokio::sync::mpsc::Receiver<reload::ReloadRequest>>,
}

impl Agent {
    /// Starts the server (or the link to the servers), the local state and
    /// the HTTP API.
    pub async fn start(config: AgentConfig, disk: Arc<dyn Disk>) -> Result<Self, StartError> {
        // Bind HTTP first so a port clash fails before any state is touched.
        let http_listener = TcpListener::bind(config.http_bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_bind,
                source,
            })?;
        let https_listener = match &config.https {
            Some(h) => {
                Some(
                    TcpListener::bind(h.bind)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr: h.bind,
                            source,
                        })?,
                )
            }
            None => None,
        };
        let dns_sockets = match config.dns_bind {
            Some(addr) => Some(
                crate::dns::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        if config.gossip_key_given {
            warn!("encrypt is set, but this build has no gossip layer (no Serf): the key is checked and otherwise unused; TLS on the RPC port (tls.*) protects what gossip would carry");
        }
        let telemetry = crate::telemetry::Telemetry::new();
        let mut renewal = None;
        let (server, cluster, node_id): (Option<Arc<Server>>, Arc<dyn Cluster>, u64) =
            match &config.role {
                Role::Server(s) => {
                    let server = Server::start(
                        s.clone(),
                        disk.clone(),
                        telemetry.clone(),
                        config.rpc_tls.clone(),
                    )
                    .await?;
                    let id = server.node_id();
                    (Some(server.clone()), Arc::new(LocalServer(server)), id)
                }
                Role::Client {
                    servers,
                    auto_encrypt,
                } => {
                    let id = load_or_create_node_id(disk.as_ref())?;
                    if let (Some(request), Some(tls)) = (auto_encrypt, &config.rpc_tls) {
                        let asker = auto_encrypt::Asker {
                            request: request.clone(),
                            node: config.node_name.clone(),
                            datacenter: config.datacenter.clone(),
                            servers: servers.clone(),
                            source_ip: config.advertise,
                            tls: tls.clone(),
                        };
                        let leaf = asker.provision().await;
                        renewal = Some(asker.spawn_renewal(leaf));
                    }
                    (
                        None,
                        RemoteServers::start(servers, config.advertise, config.rpc_tls.clone()),
                        id,
                    )
                }
            };
        let node = Node {
            id: node_uuid(node_id),
            node: config.node_name.clone(),
            address: config.advertise.to_string(),
            datacenter: config.datacenter.clone(),
            tagged_addresses: [
                ("lan".to_string(), config.advertise.to_string()),
                ("wan".to_string(), config.advertise.to_string()),
            ]
            .into_iter()
            .collect(),
            meta: [("consul-network-segment".to_string(), String::new())]
                .into_iter()
                .collect(),
            ..Node::default()
        };
        let local = LocalAgent::start(
            node,
            cluster.clone(),
            disk,
            node_id,
            config.enable_script_checks,
            telemetry.clone(),
        )?;
        if let Role::Server(s) = &config.role {
            // Consul lists every server as an instance of the `consul`
            // service (tools and DNS find the servers that way).
            let consul = NodeService {
                id: "consul".into(),
                service: "consul".into(),
                port: s.rpc_bind.port(),
                ..NodeService::default()
            };
            if let Err(e) = local.register_service(consul, Vec::new(), true) {
                warn!(error = %e, "could not register the consul service");
            }
            local.mark_builtin("consul");
        }
        let changes = local.apply_config(&config.services, &config.checks);
        for refused in &changes.refused {
            warn!(definition = %refused, "a definition from the configuration was refused");
        }
        local.start_syncing();
        let left = Arc::new(Notify::new());
        let connect = connect::ConnectCache::new(cluster.clone(), config.datacenter.clone());
        let connect_task = tokio::spawn(connect.clone().run());
        // One reload at a time; a caller finding the queue full waits.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let api = Arc::new(HttpApi::new(
            cluster.clone(),
            local.clone(),
            left.clone(),
            config.clone(),
            connect,
            telemetry,
            reload_tx,
        ));
        let drain = crate::owned_tasks::Drain::new();
        let https_task = match (https_listener, &config.https) {
            (Some(listener), Some(h)) => Some(tokio::spawn(http::serve(
                listener,
                Some(h.tls.clone()),
                api.clone(),
                drain.token(),
            ))),
            _ => None,
        };
        let http_task = tokio::spawn(http::serve(http_listener, None, api, drain.token()));
        let mut dns_tasks = Vec::new();
        if let Some((udp, tcp)) = dns_sockets {
            let dc = config.datacenter.clone();
            dns_tasks.push(tokio::spawn(crate::dns::serve_udp(
                udp,
                cluster.clone(),
                dc.clone(),
            )));
            dns_tasks.push(tokio::spawn(crate::dns::serve_tcp(
                tcp,
                cluster.clone(),
                dc,
            )));
        }
        info!(http = %config.http_bind, server = server.is_some(), "HTTP API listening");
        Ok(Self {
            server,
            cluster,
            local,
            http_task,
            https_task,
            http_drain: drain,
            dns_tasks,
            connect_task,
            auto_encrypt_task: renewal,
            left,
            config: std::sync::Mutex::new(config),
            reload_requests: Some(reload_rx),
        })
    }

    /// The Raft server of a server agent.
    pub fn server(&self) -> Option<&Arc<Server>> {
        self.server.as_ref()
    }

    /// The agent's way to the cluster.
    pub fn cluster(&self) -> &Arc<dyn Cluster> {
        &self.cluster
    }

    /// The local services and checks.
    pub fn local(&self) -> &Arc<LocalAgent> {
        &self.local
    }

    /// The reloads asked through the HTTP API (once: the run loop answers
    /// them).
    pub fn take_reload_requests(
        &mut self,
    ) -> Option<tokio::sync::mpsc::Receiver<reload::ReloadRequest>> {
        self.reload_requests.take()
    }

    /// Resolves when the agent left the cluster through the API and must exit.
    pub async fn left(&self) {
        self.left.notified().await;
    }

    /// SIGTERM: hand off leadership if this server leads, then stop. The
    /// server stays in the Raft configuration (Consul's default for
    /// servers: `leave_on_terminate = false`).
    pub async fn terminate(self) {
        if let Some(server) = &self.server {
            server.hand_off_leadership(Duration::from_secs(3)).await;
        }
        self.stop().await;
    }

    /// Stops: tasks end at once, and the API's connections within
    /// `http::SHUTDOWN_GRACE` (a crash is simulated by killing the node).
    pub async fn stop(self) {
        self.http_task.abort();
        if let Some(t) = &self.https_task {
            t.abort();
        }
        self.connect_task.abort();
        if let Some(t) = &self.auto_encrypt_task {
            t.abort();
        }
        for t in &self.dns_tasks {
            t.abort();
        }
        self.local.stop();
        if let Some(server) = &self.server {
            server.shutdown().await;
        }
        // The API's connections finish the answer they were writing (the
        // leave's own), then close: once this returns, the ports are free.
        if !self
            .http_drain
            .wait(http::SHUTDOWN_GRACE + Duration::from_millis(250))
            .await
        {
            warn!("HTTP connections were still open when the agent stopped");
        }
    }
}
