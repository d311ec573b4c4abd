//! An agent: the process-level unit that `mesh agent` runs and the
//! simulator starts on each host. For now every agent is a server (its
//! Raft node plus the HTTP API); client agents arrive with the service
//! catalog.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::info;

use crate::disk::Disk;
use crate::http::{self, HttpApi};
pub mod command;

use crate::server::{Server, ServerConfig, StartError};

/// Everything `mesh agent -server ...` configures.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Raft server.
    pub server: ServerConfig,
    /// Where the HTTP API listens (`-client` + `-http-port`).
    pub http_bind: SocketAddr,
}

/// A running agent.
pub struct Agent {
    server: Arc<Server>,
    http_task: JoinHandle<()>,
    left: Arc<Notify>,
}

impl Agent {
    /// Starts the server and the HTTP API.
    pub async fn start(config: AgentConfig, disk: Arc<dyn Disk>) -> Result<Self, StartError> {
        // Bind HTTP first so a port clash fails before Raft state is touched.
        let http_listener = TcpListener::bind(config.http_bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_bind,
                source,
            })?;
        let server = Server::start(config.server, disk).await?;
        let left = Arc::new(Notify::new());
        let api = Arc::new(HttpApi::new(server.clone(), left.clone()));
        let http_task = tokio::spawn(http::serve(http_listener, api));
        info!(http = %config.http_bind, "HTTP API listening");
        Ok(Self {
            server,
            http_task,
            left,
        })
    }

    /// The server of this agent.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Resolves when the agent left the cluster through the API and must exit.
    pub async fn left(&self) {
        self.left.notified().await;
    }

    /// SIGTERM: hand off leadership if this server leads, then stop. The
    /// server stays in the Raft configuration (Consul's default for
    /// servers: `leave_on_terminate = false`).
    pub async fn terminate(self) {
        self.server
            .hand_off_leadership(Duration::from_secs(3))
            .await;
        self.stop().await;
    }

    /// Stops at once (tests; a crash is simulated by killing the node).
    pub async fn stop(self) {
        self.http_task.abort();
        self.server.shutdown().await;
    }
}
