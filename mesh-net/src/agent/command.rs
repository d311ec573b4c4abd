//! `mesh agent`: one entry point for the binary and the simulator, from
//! flags to a running agent to a graceful stop on a signal. The binary
//! feeds it the process's arguments and OS signals; the simulator feeds it
//! the same flags and simulated signals, so flag handling, `-join`
//! waiting and the SIGTERM hand-off run in simulation too.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::formation::BootstrapMode;
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{Agent, AgentConfig};
use crate::disk::Disk;
use crate::flags::{usage, Flags, Kind, Spec};
use crate::server::{RaftTiming, ServerConfig};

/// What `mesh agent` was asked to run.
#[derive(Debug, Clone)]
pub struct AgentLaunch {
    /// The agent.
    pub config: AgentConfig,
    /// Where its state lives.
    pub storage: Storage,
    /// `-log-level`.
    pub log_level: String,
    /// `-log-json`.
    pub log_json: bool,
}

/// Where an agent keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory (`-dev`): gone when the process ends.
    Memory,
    /// Files under `-data-dir`.
    Dir(PathBuf),
}

/// A request to stop, from the OS or the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (`systemctl stop`).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// The flags of `mesh agent`.
pub const AGENT_FLAGS: &[Spec] = &[
    (
        "server",
        Kind::Bool,
        "Run in server mode (client agents arrive with the service catalog).",
    ),
    (
        "dev",
        Kind::Bool,
        "Single-node in-memory server on 127.0.0.1 for trying things out.",
    ),
    (
        "node",
        Kind::Value,
        "Node name; must be unique in the cluster. Default: the hostname.",
    ),
    (
        "bind",
        Kind::Value,
        "Address for server RPC. Default: 127.0.0.1.",
    ),
    (
        "advertise",
        Kind::Value,
        "Address other servers use to reach this one. Default: -bind.",
    ),
    (
        "client",
        Kind::Value,
        "Address the HTTP API binds. Default: 127.0.0.1.",
    ),
    (
        "data-dir",
        Kind::Value,
        "Directory for Raft state (required unless -dev).",
    ),
    (
        "bootstrap",
        Kind::Bool,
        "This server alone bootstraps the cluster (then others join it).",
    ),
    (
        "bootstrap-expect",
        Kind::Value,
        "Bootstrap once this many servers have found each other.",
    ),
    (
        "join",
        Kind::Multi,
        "Address of a server to join at startup (repeatable).",
    ),
    (
        "retry-join",
        Kind::Multi,
        "Like -join, but keep retrying until it succeeds (repeatable).",
    ),
    (
        "server-port",
        Kind::Value,
        "Server RPC port. Default: 8300.",
    ),
    ("http-port", Kind::Value, "HTTP API port. Default: 8500."),
    (
        "log-level",
        Kind::Value,
        "trace, debug, info, warn or err. Default: info.",
    ),
    ("log-json", Kind::Bool, "Log as JSON lines."),
    (
        "snapshot-threshold",
        Kind::Value,
        "Raft entries between snapshots. Default: 8192.",
    ),
];

/// Help text for `mesh agent -h`.
pub fn help() -> String {
    format!(
        "Usage: mesh agent [options]\n\n  Starts a mesh agent.\n\nOptions:\n\n{}",
        usage(AGENT_FLAGS)
    )
}

/// Why `mesh agent` arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The flags do not parse (unknown flag, missing value): show the help.
    #[error("{0}")]
    Flags(String),
    /// The flags parse but do not describe an agent that can run.
    #[error("{0}")]
    Config(String),
}

/// Parses `mesh agent` arguments into what to run. Errors are messages
/// for the operator (Consul's wording where Consul has one).
pub fn parse(args: &[String]) -> Result<AgentLaunch, LaunchError> {
    let flags = Flags::parse(args, AGENT_FLAGS).map_err(LaunchError::Flags)?;
    launch_from(&flags).map_err(LaunchError::Config)
}

fn ip(flags: &Flags, name: &str, default: &str) -> Result<IpAddr, String> {
    let raw = flags.get(name).unwrap_or(default);
    raw.parse().map_err(|_| {
        format!("invalid -{name} address {raw:?}: expected an IP address such as 127.0.0.10")
    })
}

fn launch_from(flags: &Flags) -> Result<AgentLaunch, String> {
    if !flags.positional.is_empty() {
        return Err(format!("unexpected arguments: {:?}", flags.positional));
    }
    let dev = flags.bool("dev");
    if !dev && !flags.bool("server") {
        return Err("client agents are not supported yet: pass -server (or -dev)".into());
    }
    let expect = flags.number::<u32>("bootstrap-expect")?;
    let bootstrap = match (dev || flags.bool("bootstrap"), expect) {
        (true, Some(_)) => {
            return Err("-bootstrap and -bootstrap-expect are mutually exclusive".into())
        }
        (true, None) => BootstrapMode::Manual,
        (false, Some(0)) => return Err("-bootstrap-expect must be at least 1".into()),
        (false, Some(n)) => BootstrapMode::Expect(n),
        (false, None) => BootstrapMode::JoinOnly,
    };
    let bind = ip(flags, "bind", "127.0.0.1")?;
    let advertise = match flags.get("advertise") {
        Some(_) => ip(flags, "advertise", "")?,
        None => bind,
    };
    if bind.is_unspecified() && flags.get("advertise").is_none() {
        return Err(
            "-bind 0.0.0.0 needs -advertise with an address other servers can reach".into(),
        );
    }
    let client = ip(flags, "client", "127.0.0.1")?;
    let server_port = flags.number::<u16>("server-port")?.unwrap_or(8300);
    let http_port = flags.number::<u16>("http-port")?.unwrap_or(8500);
    let node_name = match flags.get("node") {
        Some(n) if !n.is_empty() => n.to_string(),
        Some(_) => return Err("-node must not be empty".into()),
        None if dev => "dev".into(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or("cannot determine the hostname; pass -node")?,
    };
    let storage = match (dev, flags.get("data-dir")) {
        (true, _) => Storage::Memory,
        (false, Some(dir)) => Storage::Dir(dir.into()),
        (false, None) => return Err("-data-dir is required for a server (or use -dev)".into()),
    };
    let mut join = flags.all("retry-join");
    let retry_join = !join.is_empty();
    join.extend(flags.all("join"));
    if bootstrap == BootstrapMode::JoinOnly && join.is_empty() {
        return Err(
            "a server needs -bootstrap, -bootstrap-expect=N, or -join/-retry-join to find its cluster".into(),
        );
    }
    let rpc_addr = SocketAddr::new(advertise, server_port);
    let config = AgentConfig {
        server: ServerConfig {
            node_name,
            rpc_bind: SocketAddr::new(bind, server_port),
            rpc_advertise: rpc_addr.to_string(),
            http_addr: SocketAddr::new(client, http_port).to_string(),
            bootstrap,
            join,
            retry_join,
            timing: RaftTiming::default(),
            snapshot_threshold: flags
                .number::<u64>("snapshot-threshold")?
                .unwrap_or(8192)
                .max(16),
        },
        http_bind: SocketAddr::new(client, http_port),
    };
    Ok(AgentLaunch {
        config,
        storage,
        log_level: flags.get("log-level").unwrap_or("info").to_string(),
        log_json: flags.bool("log-json"),
    })
}

/// How long `-join` (without retry) may take before startup fails.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs an agent until a signal (hand off leadership, then stop) or until
/// it left the cluster. `started` sees the agent as soon as it runs (before
/// a `-join` completes). An `Err` says why the agent could not start; the
/// binary prints it and exits with status 1.
pub async fn run(
    config: AgentConfig,
    disk: Arc<dyn Disk>,
    mut signals: mpsc::Receiver<Signal>,
    started: impl FnOnce(&Agent),
) -> Result<(), String> {
    let must_join = !config.server.retry_join && !config.server.join.is_empty();
    let join = config.server.join.clone();
    let agent = match Agent::start(config, disk).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "agent refused to start");
            return Err(format!("Error starting agent: {e}"));
        }
    };
    started(&agent);
    // Consul: "If Consul is unable to join with any of the specified
    // addresses, agent startup will fail." (-retry-join keeps trying.)
    if must_join && !agent.server().wait_joined(JOIN_TIMEOUT).await {
        error!(join = ?join, "could not join the cluster");
        agent.stop().await;
        return Err(format!(
            "Error starting agent: failed to join any of {join:?} within {JOIN_TIMEOUT:?}; \
             use -retry-join to keep trying"
        ));
    }
    tokio::select! {
        biased;
        signal = signals.recv() => {
            match signal {
                Some(s) => info!(signal = ?s, "caught a signal: handing off leadership and stopping"),
                None => info!("signal source closed: handing off leadership and stopping"),
            }
            agent.terminate().await;
        }
        () = agent.left() => {
            info!("left the cluster; stopping");
            agent.stop().await;
        }
    }
    Ok(())
}
