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
use tracing::{error, info, warn};

use mesh_core::agent_tls;
use mesh_core::connect::SecretPem;
use mesh_core::definitions::{
    AgentFileConfig, AutoEncryptConfig, ServiceDefinition, TlsFileConfig,
};

use super::auto_encrypt;
use super::checks::CheckSpec;
use super::reload::ReloadRequest;
use super::{Agent, AgentConfig, Role, ServiceWithChecks};
use crate::disk::Disk;
use crate::flags::{usage, Flags, Kind, Spec};
use crate::http::https::HttpsListener;
use crate::rpc_tls::{AutoEncrypt, RpcTls, RpcTlsConfig};
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

/// A signal from the OS or the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (`systemctl stop`): stop.
    Terminate,
    /// SIGINT (Ctrl-C): stop.
    Interrupt,
    /// SIGHUP (`systemctl reload`): read the configuration again.
    Hangup,
}

/// Applies a log level; `Ok(true)` when it changed.
pub type LogLevelHook = Box<dyn Fn(&str) -> Result<bool, String> + Send + Sync>;

/// How [`run`] reads the configuration again, on SIGHUP or `PUT
/// /v1/agent/reload`.
pub struct Reloader {
    /// Reads the configuration as at start (the binary parses its
    /// command line and the files it names again).
    pub read: Box<dyn Fn() -> Result<AgentLaunch, String> + Send + Sync>,
    /// Applies a log level; `Ok(true)` when it changed. Logging belongs
    /// to the process, so the binary passes this.
    pub set_log_level: LogLevelHook,
}

impl Reloader {
    /// Parses `args` again, as `mesh agent` parsed them at start;
    /// `set_log_level` as given.
    pub fn from_args(args: Vec<String>, set_log_level: LogLevelHook) -> Reloader {
        Reloader {
            read: Box::new(move || parse(&args).map_err(|e| e.to_string())),
            set_log_level,
        }
    }

    /// Reads the configuration and applies it to `agent`; the reason when
    /// the files cannot be used (nothing changes then).
    fn reload(&self, agent: &Agent) -> Result<(), String> {
        let launch = (self.read)().map_err(|e| {
            error!(error = %e, "reload refused: the agent keeps its configuration");
            format!("Failed to reload configs: {e}")
        })?;
        let changes = agent.reload(&launch.config);
        match (self.set_log_level)(&launch.log_level) {
            Ok(true) => info!(level = %launch.log_level, "log level changed"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "reload: the log level was not changed"),
        }
        // As Consul's: a definition the agent refuses fails the reload
        // (the rest of the files did apply, and the message says so).
        if !changes.refused.is_empty() {
            return Err(format!(
                "Failed reloading services: refused {:?}; the rest of the configuration was applied",
                changes.refused
            ));
        }
        Ok(())
    }
}

/// The flags of `mesh agent`.
pub const AGENT_FLAGS: &[Spec] = &[
    (
        "server",
        Kind::Bool,
        "Run in server mode; without it the agent is a client of the servers it -retry-joins.",
    ),
    (
        "config-file",
        Kind::Multi,
        "A configuration file (JSON or HCL) to load (repeatable; later files win).",
    ),
    (
        "config-dir",
        Kind::Multi,
        "A directory of .json/.hcl configuration files, loaded in name order (repeatable).",
    ),
    (
        "datacenter",
        Kind::Value,
        "Datacenter of the agent. Default: dc1.",
    ),
    (
        "encrypt",
        Kind::Value,
        "Consul's gossip key (base64, as `mesh keygen` makes): checked, and otherwise unused (there is no gossip; TLS protects RPC).",
    ),
    (
        "enable-script-checks",
        Kind::Bool,
        "Allow health checks that run scripts.",
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
        "https-port",
        Kind::Value,
        "HTTPS API port (needs cert_file and key_file). Default: -1 (off).",
    ),
    (
        "dns-port",
        Kind::Value,
        "DNS port (UDP and TCP, on -client). Default: 8600; -1 disables DNS.",
    ),
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

/// Reads `-config-file`s and the `.json`/`.hcl` files of `-config-dir`s,
/// merged in order (files in a directory by name).
fn load_config_files(flags: &Flags) -> Result<AgentFileConfig, String> {
    let mut paths: Vec<PathBuf> = flags
        .all("config-file")
        .into_iter()
        .map(PathBuf::from)
        .collect();
    for dir in flags.all("config-dir") {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("Error reading config directory {dir}: {e}"))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|x| x.to_str()), Some("json" | "hcl"))
            })
            .collect();
        files.sort();
        paths.extend(files);
    }
    let mut merged = AgentFileConfig::default();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("Error reading config file {name}: {e}"))?;
        let file = AgentFileConfig::parse(&name, &text)
            .map_err(|e| format!("Error parsing {name}: {e}"))?;
        merged = merged.merge(file);
    }
    Ok(merged)
}

/// Reads the files the `tls` settings name and builds the RPC port's TLS;
/// `None` when nothing about TLS is configured.
fn rpc_tls_from(
    tls: &TlsFileConfig,
    auto_encrypt: AutoEncrypt,
    datacenter: &str,
    domain: Option<&str>,
) -> Result<Option<Arc<RpcTls>>, String> {
    if *tls == TlsFileConfig::default() && auto_encrypt == AutoEncrypt::Off {
        return Ok(None);
    }
    let read = |key: &str, path: &Option<String>| -> Result<Option<String>, String> {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| format!("Error reading {key} {p}: {e}"))
            })
            .transpose()
    };
    let domain = domain
        .unwrap_or(agent_tls::DEFAULT_DOMAIN)
        .trim_end_matches('.');
    let config = RpcTlsConfig {
        ca_pem: read("ca_file", &tls.ca_file)?,
        cert_pem: read("cert_file", &tls.cert_file)?,
        key_pem: read("key_file", &tls.key_file)?.map(SecretPem::new),
        verify_incoming: tls.verify_incoming.unwrap_or(false),
        verify_outgoing: tls.verify_outgoing.unwrap_or(false),
        verify_server_hostname: tls.verify_server_hostname.unwrap_or(false),
        server_name: agent_tls::server_name(datacenter, domain),
        auto_encrypt,
    };
    let built = RpcTls::new(&config).map_err(|e| format!("TLS configuration: {e}"))?;
    Ok(Some(Arc::new(built)))
}

/// What a client agent with `auto_encrypt.tls` asks the servers for.
fn auto_encrypt_request(
    config: &AutoEncryptConfig,
) -> Result<Option<auto_encrypt::Request>, String> {
    if config.tls != Some(true) {
        return Ok(None);
    }
    let ip_san = config
        .ip_san
        .iter()
        .map(|ip| {
            ip.parse()
                .map_err(|_| format!("auto_encrypt.ip_san {ip:?} is not an IP address"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(auto_encrypt::Request {
        dns_san: config.dns_san.clone(),
        ip_san,
    }))
}

/// The HTTPS API's listener from the `tls.https` settings (over
/// `tls.defaults`): it needs a certificate and key.
fn https_from(tls: &TlsFileConfig, bind: SocketAddr) -> Result<HttpsListener, String> {
    let read = |key: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("Error reading {key} {path}: {e}"))
    };
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Err(
            "ports.https is set but no cert_file and key_file are given (tls.defaults or tls.https)"
                .into(),
        );
    };
    let ca = tls
        .ca_file
        .as_deref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let config = crate::http::https::server_config(
        ca.as_deref(),
        &read("cert_file", cert_file)?,
        &SecretPem::new(read("key_file", key_file)?),
        tls.verify_incoming.unwrap_or(false),
    )
    .map_err(|e| format!("HTTPS configuration: {e}"))?;
    Ok(HttpsListener {
        bind,
        tls: crate::swap::Swap::new(config),
    })
}

fn ip_of(name: &str, raw: &str) -> Result<IpAddr, String> {
    raw.parse().map_err(|_| {
        format!("invalid {name} address {raw:?}: expected an IP address such as 127.0.0.10")
    })
}

/// A service from a config file, with its checks and its sidecar.
fn services_from(
    def: &ServiceDefinition,
    node: &str,
    node_address: &str,
) -> Result<Vec<ServiceWithChecks>, String> {
    let mut out = Vec::new();
    let sidecar = def
        .sidecar()
        .map(|s| s.with_default_sidecar_check(node_address));
    for d in std::iter::once(def.clone()).chain(sidecar) {
        let checks = d
            .checks()
            .iter()
            .map(|c| {
                CheckSpec::from_definition(c)
                    .map(|spec| (c.to_health_check(node), spec))
                    .map_err(|e| format!("service {:?}: {e}", d.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push((d.to_node_service(), checks));
    }
    Ok(out)
}

fn launch_from(flags: &Flags) -> Result<AgentLaunch, String> {
    if !flags.positional.is_empty() {
        return Err(format!("unexpected arguments: {:?}", flags.positional));
    }
    let file = load_config_files(flags)?;
    let dev = flags.bool("dev");
    let is_server = dev || flags.bool("server") || file.server == Some(true);
    let expect = match flags.number::<u32>("bootstrap-expect")? {
        Some(n) => Some(n),
        None => file.bootstrap_expect,
    };
    let bootstrap_flag = dev || flags.bool("bootstrap") || file.bootstrap == Some(true);
    let bootstrap = match (bootstrap_flag, expect) {
        (true, Some(_)) => {
            return Err("-bootstrap and -bootstrap-expect are mutually exclusive".into())
        }
        (true, None) => BootstrapMode::Manual,
        (false, Some(0)) => return Err("-bootstrap-expect must be at least 1".into()),
        (false, Some(n)) => BootstrapMode::Expect(n),
        (false, None) => BootstrapMode::JoinOnly,
    };
    if !is_server && bootstrap != BootstrapMode::JoinOnly {
        return Err("-bootstrap and -bootstrap-expect need -server".into());
    }
    let bind = match flags.get("bind").or(file.bind_addr.as_deref()) {
        Some(raw) => ip_of("-bind", raw)?,
        None => ip_of("-bind", "127.0.0.1")?,
    };
    let advertise_raw = flags.get("advertise").or(file.advertise_addr.as_deref());
    let advertise = match advertise_raw {
        Some(raw) => ip_of("-advertise", raw)?,
        None => bind,
    };
    if bind.is_unspecified() && advertise_raw.is_none() {
        return Err("-bind 0.0.0.0 needs -advertise with an address other agents can reach".into());
    }
    let client = match flags.get("client").or(file.client_addr.as_deref()) {
        Some(raw) => ip_of("-client", raw)?,
        None => ip_of("-client", "127.0.0.1")?,
    };
    let server_port = match flags.number::<u16>("server-port")? {
        Some(p) => p,
        None => file.ports.server.unwrap_or(8300),
    };
    let http_port = match flags.number::<u16>("http-port")? {
        Some(p) => p,
        None => file.ports.http.unwrap_or(8500),
    };
    let dns_port: i32 = match flags.number::<i32>("dns-port")? {
        Some(p) => p,
        None => file.ports.dns.map_or(8600, i32::from),
    };
    let dns_bind = match dns_port {
        -1 => None,
        p => Some(SocketAddr::new(
            client,
            u16::try_from(p)
                .map_err(|_| format!("invalid -dns-port {p}: a port, or -1 to disable DNS"))?,
        )),
    };
    let node_name = match flags.get("node").or(file.node_name.as_deref()) {
        Some(n) if !n.is_empty() => n.to_string(),
        Some(_) => return Err("-node must not be empty".into()),
        None if dev => "dev".into(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or("cannot determine the hostname; pass -node")?,
    };
    let datacenter = flags
        .get("datacenter")
        .or(file.datacenter.as_deref())
        .unwrap_or("dc1")
        .to_string();
    let storage = match (dev, flags.get("data-dir").or(file.data_dir.as_deref())) {
        (true, _) => Storage::Memory,
        (false, Some(dir)) => Storage::Dir(dir.into()),
        (false, None) => return Err("-data-dir is required (or use -dev)".into()),
    };
    // A list given on the command line replaces the files' list (so one
    // config file serves with other addresses, as tests and demos do).
    let pick = |flag: &str, from_file: &[String]| {
        let given = flags.all(flag);
        if given.is_empty() {
            from_file.to_vec()
        } else {
            given
        }
    };
    let mut join = pick("retry-join", &file.retry_join);
    let retry_join = !join.is_empty();
    join.extend(pick("join", &file.start_join));
    let role = if is_server {
        if bootstrap == BootstrapMode::JoinOnly && join.is_empty() {
            return Err(
                "a server needs -bootstrap, -bootstrap-expect=N, or -join/-retry-join to find its cluster".into(),
            );
        }
        let rpc_addr = SocketAddr::new(advertise, server_port);
        Role::Server(ServerConfig {
            node_name: node_name.clone(),
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
        })
    } else {
        if join.is_empty() {
            return Err(
                "a client agent needs -retry-join (or -join) with the address of a server".into(),
            );
        }
        Role::Client {
            servers: join,
            auto_encrypt: auto_encrypt_request(&file.auto_encrypt)?,
        }
    };
    let mut services = Vec::new();
    for def in &file.services {
        services.extend(services_from(def, &node_name, &advertise.to_string())?);
    }
    let mut checks = Vec::new();
    for def in &file.checks {
        let spec =
            CheckSpec::from_definition(def).map_err(|e| format!("check {:?}: {e}", def.name))?;
        checks.push((def.to_health_check(&node_name), spec));
    }
    let config = AgentConfig {
        node_name,
        datacenter,
        role,
        advertise,
        http_bind: SocketAddr::new(client, http_port),
        dns_bind,
        services,
        checks,
        enable_script_checks: flags.bool("enable-script-checks")
            || file.enable_script_checks == Some(true),
        default_intention_allow: match file.acl_default_policy.as_deref() {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(other) => {
                return Err(format!(
                    "acl.default_policy {other:?}: must be \"allow\" or \"deny\""
                ))
            }
        },
        rpc_tls: None,
        https: None,
        gossip_key_given: false,
    };
    let encrypt = flags.get("encrypt").or(file.encrypt.as_deref());
    if let Some(key) = encrypt {
        mesh_core::gossip_key::check(key).map_err(|e| format!("encrypt: {e}"))?;
    }
    let auto_encrypt = match (&file.auto_encrypt, is_server) {
        (a, true) if a.tls == Some(true) => {
            return Err("auto_encrypt.tls is for client agents; servers sign their \
                        certificates (auto_encrypt.allow_tls)"
                .into())
        }
        (a, false) if a.allow_tls == Some(true) => {
            return Err(
                "auto_encrypt.allow_tls is for servers; a client agent asks for its \
                        certificate with auto_encrypt.tls"
                    .into(),
            )
        }
        (a, true) if a.allow_tls == Some(true) => AutoEncrypt::SignsCertificates,
        (a, false) if a.tls == Some(true) => AutoEncrypt::GetsCertificate,
        _ => AutoEncrypt::Off,
    };
    let rpc_tls = rpc_tls_from(
        &file.tls,
        auto_encrypt,
        &config.datacenter,
        file.domain.as_deref(),
    )?;
    let https_port = match flags.number::<i32>("https-port")? {
        Some(p) => Some(p),
        None => file.ports.https,
    };
    let https = match https_port {
        None | Some(-1) => None,
        Some(p) => {
            let port = u16::try_from(p)
                .map_err(|_| format!("invalid -https-port {p}: a port, or -1 to disable HTTPS"))?;
            Some(https_from(&file.tls_https, SocketAddr::new(client, port))?)
        }
    };
    let config = AgentConfig {
        rpc_tls,
        https,
        gossip_key_given: encrypt.is_some(),
        ..config
    };
    let log_level = flags
        .get("log-level")
        .or(file.log_level.as_deref())
        .unwrap_or("info")
        .to_string();
    if tracing_level(&log_level).is_none() {
        return Err(format!(
            "Invalid log level: {log_level}. Valid log levels are: [trace debug info warn err]"
        ));
    }
    Ok(AgentLaunch {
        config,
        storage,
        log_level,
        log_json: flags.bool("log-json"),
    })
}

/// A `log_level` (Consul's spellings, `err` and `warning` too, any case)
/// in tracing's spelling; `None` for one that is neither.
pub fn tracing_level(level: &str) -> Option<&'static str> {
    match level.to_ascii_lowercase().as_str() {
        "trace" => Some("trace"),
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" | "warning" => Some("warn"),
        "err" | "error" => Some("error"),
        _ => None,
    }
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
    reloader: Reloader,
    started: impl FnOnce(&Agent),
) -> Result<(), String> {
    let (must_join, join) = match config.server() {
        Some(s) => (!s.retry_join && !s.join.is_empty(), s.join.clone()),
        None => (false, Vec::new()),
    };
    let mut agent = match Agent::start(config, disk).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "agent refused to start");
            return Err(format!("Error starting agent: {e}"));
        }
    };
    started(&agent);
    // Consul: "If Consul is unable to join with any of the specified
    // addresses, agent startup will fail." (-retry-join keeps trying.)
    let joined = match agent.server() {
        Some(server) if must_join => server.wait_joined(JOIN_TIMEOUT).await,
        _ => true,
    };
    if !joined {
        error!(join = ?join, "could not join the cluster");
        agent.stop().await;
        return Err(format!(
            "Error starting agent: failed to join any of {join:?} within {JOIN_TIMEOUT:?}; \
             use -retry-join to keep trying"
        ));
    }
    let mut reloads = agent.take_reload_requests();
    loop {
        tokio::select! {
            biased;
            signal = signals.recv() => {
                match signal {
                    Some(Signal::Hangup) => {
                        info!("caught SIGHUP: reloading the configuration");
                        // The outcome is logged; there is no one to answer.
                        let _ = reloader.reload(&agent);
                        continue;
                    }
                    Some(s) => info!(signal = ?s, "caught a signal: handing off leadership and stopping"),
                    None => info!("signal source closed: handing off leadership and stopping"),
                }
                // A reload asked from now on is answered "stopping" at once.
                drop(reloads.take());
                agent.terminate().await;
            }
            request = next_reload(&mut reloads) => {
                match request {
                    // The caller may have given up waiting; the reload holds.
                    Some(reply) => drop(reply.send(reloader.reload(&agent))),
                    None => reloads = None,
                }
                continue;
            }
            () = agent.left() => {
                info!("left the cluster; stopping");
                drop(reloads.take());
                agent.stop().await;
            }
        }
        return Ok(());
    }
}

/// The next reload asked through the API; never, once there is no
/// channel.
async fn next_reload(reloads: &mut Option<mpsc::Receiver<ReloadRequest>>) -> Option<ReloadRequest> {
    match reloads {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
