//! `mesh agent`: run a server agent until SIGTERM/SIGINT or `mesh leave`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::formation::BootstrapMode;
use mesh_net::agent::{Agent, AgentConfig};
use mesh_net::disk::{Disk, FileDisk, MemDisk};
use mesh_net::server::{RaftTiming, ServerConfig};
use tracing::{error, info};

use mesh_bins::flags::{usage, Flags, Kind, Spec};

const SPECS: &[Spec] = &[
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
        usage(SPECS)
    )
}

fn ip(flags: &Flags, name: &str, default: &str) -> Result<IpAddr, String> {
    let raw = flags.get(name).unwrap_or(default);
    raw.parse().map_err(|_| {
        format!("invalid -{name} address {raw:?}: expected an IP address such as 127.0.0.10")
    })
}

/// Runs the agent; returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    let flags = match Flags::parse(args, SPECS) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}\n\n{}", help());
            return 1;
        }
    };
    match build(&flags) {
        Ok((config, disk)) => {
            crate::init_logging(
                flags.get("log-level").unwrap_or("info"),
                flags.bool("log-json"),
            );
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return 1;
                }
            };
            rt.block_on(serve(config, disk))
        }
        Err(e) => {
            eprintln!("==> {e}");
            1
        }
    }
}

fn build(flags: &Flags) -> Result<(AgentConfig, Arc<dyn Disk>), String> {
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
    let disk: Arc<dyn Disk> = match (dev, flags.get("data-dir")) {
        (true, _) => Arc::new(MemDisk::new()),
        (false, Some(dir)) => {
            Arc::new(FileDisk::open(dir).map_err(|e| format!("cannot use -data-dir {dir}: {e}"))?)
        }
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
    Ok((config, disk))
}

/// How long `-join` (without retry) may take before startup fails.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

async fn serve(config: AgentConfig, disk: Arc<dyn Disk>) -> i32 {
    let must_join = !config.server.retry_join && !config.server.join.is_empty();
    let join = config.server.join.clone();
    let agent = match Agent::start(config, disk).await {
        Ok(a) => a,
        Err(e) => {
            error!("{e}");
            eprintln!("==> Error starting agent: {e}");
            return 1;
        }
    };
    // Consul: "If Consul is unable to join with any of the specified
    // addresses, agent startup will fail." (-retry-join keeps trying.)
    if must_join && !agent.server().wait_joined(JOIN_TIMEOUT).await {
        error!(join = ?join, "could not join the cluster");
        eprintln!("==> Error starting agent: failed to join any of {join:?} within {JOIN_TIMEOUT:?}; use -retry-join to keep trying");
        agent.stop().await;
        return 1;
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install the SIGTERM handler: {e}");
            return 1;
        }
    };
    tokio::select! {
        biased;
        _ = term.recv() => {
            info!("caught SIGTERM: handing off leadership and stopping");
            agent.terminate().await;
        }
        _ = tokio::signal::ctrl_c() => {
            info!("caught interrupt: handing off leadership and stopping");
            agent.terminate().await;
        }
        _ = agent.left() => {
            info!("left the cluster; stopping");
            agent.stop().await;
        }
    }
    0
}
