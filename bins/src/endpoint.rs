//! How a CLI command or a sidecar finds its agent's HTTP API: the
//! `-http-addr` family of flags and their Consul environment variables,
//! and the runtime of long-running commands. Shared by `mesh` and
//! `mesh-sidecar`.

use std::time::Duration;

use mesh_net::http_client::HttpClient;

use crate::flags::{usage, Flags, Kind, Spec};

/// Flags every API command takes.
pub const HTTP_FLAGS: &[Spec] = &[
    (
        "http-addr",
        Kind::Value,
        "Agent HTTP address; https://host:port for the HTTPS API. Default: $MESH_HTTP_ADDR, $CONSUL_HTTP_ADDR, or 127.0.0.1:8500.",
    ),
    (
        "ca-file",
        Kind::Value,
        "CA certificate to verify the agent's HTTPS certificate. Default: $CONSUL_CACERT.",
    ),
    (
        "client-cert",
        Kind::Value,
        "Client certificate for an agent that requires one. Default: $CONSUL_CLIENT_CERT.",
    ),
    (
        "client-key",
        Kind::Value,
        "Key of -client-cert. Default: $CONSUL_CLIENT_KEY.",
    ),
    (
        "tls-server-name",
        Kind::Value,
        "Name to verify the agent's certificate for. Default: $CONSUL_TLS_SERVER_NAME, or the host of the address.",
    ),
];

/// Where the agent's API is and how to speak to it.
#[derive(Clone, Debug)]
pub struct AgentEndpoint {
    /// host:port.
    pub addr: String,
    /// TLS settings for `https://` addresses (or `CONSUL_HTTP_SSL=true`).
    pub tls: Option<mesh_net::http_client::HttpsTarget>,
}

impl AgentEndpoint {
    /// A client for this endpoint.
    pub fn client(&self, timeout: Duration) -> HttpClient {
        HttpClient::new(self.addr.clone(), timeout).with_tls(self.tls.clone())
    }
}

fn flag_or_env(flags: &Flags, flag: &str, env: &str) -> Option<String> {
    flags
        .get(flag)
        .map(str::to_string)
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

/// The agent address: flag, then MESH_HTTP_ADDR, then CONSUL_HTTP_ADDR; an
/// `https://` address (or `CONSUL_HTTP_SSL=true`) speaks TLS, verified
/// against `-ca-file` / `CONSUL_CACERT`, as Consul's CLI does.
pub fn agent(flags: &Flags) -> Result<AgentEndpoint, String> {
    let raw = flags
        .get("http-addr")
        .map(str::to_string)
        .or_else(|| std::env::var("MESH_HTTP_ADDR").ok())
        .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8500".into());
    let https = raw.starts_with("https://")
        || std::env::var("CONSUL_HTTP_SSL").is_ok_and(|v| v == "true" || v == "1");
    let addr = raw
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    if !https {
        return Ok(AgentEndpoint { addr, tls: None });
    }
    let read = |what: &str, path: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("Error reading {what} {path}: {e}"))
    };
    let ca_file = flag_or_env(flags, "ca-file", "CONSUL_CACERT").ok_or(
        "HTTPS needs the CA that signed the agent's certificate: -ca-file or CONSUL_CACERT",
    )?;
    let ca = read("-ca-file", &ca_file)?;
    let client = match (
        flag_or_env(flags, "client-cert", "CONSUL_CLIENT_CERT"),
        flag_or_env(flags, "client-key", "CONSUL_CLIENT_KEY"),
    ) {
        (Some(cert), Some(key)) => Some((
            read("-client-cert", &cert)?,
            mesh_core::connect::SecretPem::new(read("-client-key", &key)?),
        )),
        (None, None) => None,
        _ => return Err("-client-cert and -client-key go together".into()),
    };
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr.as_str(),
    };
    let name = flag_or_env(flags, "tls-server-name", "CONSUL_TLS_SERVER_NAME")
        .unwrap_or_else(|| host.to_string());
    let target = mesh_net::http_client::HttpsTarget::new(
        &ca,
        client.as_ref().map(|(c, k)| (c.as_str(), k)),
        &name,
    )?;
    Ok(AgentEndpoint {
        addr,
        tls: Some(target),
    })
}

fn specs(extra: &[Spec]) -> Vec<Spec> {
    HTTP_FLAGS.iter().chain(extra.iter()).copied().collect()
}

/// Parses `args` with the HTTP flags and `extra`; the error carries the
/// help text.
pub fn parse(args: &[String], extra: &[Spec], help: &str) -> Result<Flags, String> {
    Flags::parse(args, &specs(extra))
        .map_err(|e| format!("{e}\n\n{help}\n\nOptions:\n\n{}", usage(&specs(extra))))
}

/// The runtime of a long-running process (`mesh agent`, `mesh connect
/// proxy`): multi-threaded, timers and I/O on.
pub fn process_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
