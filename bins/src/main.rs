//! `mesh`: the agent and its CLI, with Consul's verbs and flag spellings.

mod agent_cmd;
mod catalog_cli;
mod cli;
mod connect_cli;
mod demo;
mod intention_cli;
mod lock_cli;
mod tls_cli;

use tracing_subscriber::EnvFilter;

const USAGE: &str = "Usage: mesh <command> [args]

Commands:
    agent      Runs a mesh agent (server with -server, else a client agent)
    demo       Starts consul00-02, fcs00 and fcc00 on 127.0.0.10-14: election, writes, failover, service health, fcc -> fcs through the sidecars
    join       Tell the local agent to join a cluster
    leave      Gracefully leave the cluster and shut down the local agent
    members    Lists the members of the cluster
    reload     Tells the local agent to read its configuration files again (as SIGHUP)
    operator   Operator tools (raft list-peers, raft remove-peer)
    kv         Key/value store: put, get, delete
    lock       Runs a command while holding a lock (or one of -n N slots)
    catalog    Lists the catalog's services and nodes
    services   Registers or deregisters services with the local agent
    watch      Watches a key, prefix, service, nodes or checks for changes
    intention  Connect intentions: create, delete, get, check, list
    connect    Connect: run a sidecar (proxy -sidecar-for SERVICE), CA settings (ca)
    tls        The operator CA and agent certificates for TLS on the RPC port (ca create, cert create)
    version    Prints the version";

/// Sets up logging: `-log-level` (Consul spellings) and `-log-json`.
/// Returns the hook `mesh reload` uses to change the level.
pub(crate) fn init_logging(level: &str, json: bool) -> LogLevelHook {
    // openraft's replication tasks log every failed attempt to reach a peer
    // (five lines per peer every 500 ms while it is down); the mesh's
    // network layer logs a peer going down once and its return once, so
    // those two targets are off unless MESH_LOG asks for them.
    let filter_for = |level: &str| {
        EnvFilter::new(format!(
            "{},openraft=warn,openraft::replication=off,\
             openraft::engine::handler::replication_handler=off,hyper=warn",
            level_name(level)
        ))
    };
    let from_env = EnvFilter::try_from_env("MESH_LOG").ok();
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| filter_for(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let current = std::sync::Mutex::new(level_name(level));
    // The handle's type names the formatter, so each branch makes its own hook.
    macro_rules! hook {
        ($handle:expr) => {{
            let handle = $handle;
            let hook: LogLevelHook = Box::new(move |level: &str| {
                let wanted = level_name(level);
                let mut now = current
                    .lock()
                    .map_err(|_| "logging lock poisoned".to_string())?;
                // MESH_LOG chose the filter at start and keeps it.
                if env_wins || *now == wanted {
                    return Ok(false);
                }
                handle
                    .reload(filter_for(level))
                    .map_err(|e| format!("cannot change the log level: {e}"))?;
                *now = wanted;
                Ok(true)
            });
            hook
        }};
    }
    if json {
        let builder = builder.json().with_filter_reloading();
        let h = builder.reload_handle();
        builder.init();
        hook!(h)
    } else {
        let builder = builder.with_filter_reloading();
        let h = builder.reload_handle();
        builder.init();
        hook!(h)
    }
}

use mesh_net::agent::command::LogLevelHook;

/// A `-log-level` in tracing's spelling (Consul's `err` and `warning` too).
fn level_name(level: &str) -> &'static str {
    match level.to_ascii_lowercase().as_str() {
        "err" | "error" => "error",
        "warn" | "warning" => "warn",
        "debug" => "debug",
        "trace" => "trace",
        _ => "info",
    }
}

fn report(result: Result<(), String>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let code = match args.first().map(String::as_str) {
        Some("agent") => agent_cmd::run(rest),
        Some("demo") => demo::run(rest),
        Some("join") => report(cli::join(rest)),
        Some("leave") => report(cli::leave(rest)),
        Some("members") => report(cli::members(rest)),
        Some("reload") => report(cli::reload(rest)),
        Some("operator") => report(cli::operator(rest)),
        Some("kv") => report(cli::kv(rest)),
        Some("lock") => lock_cli::lock(rest),
        Some("catalog") => report(catalog_cli::catalog(rest)),
        Some("services") => report(catalog_cli::services(rest)),
        Some("watch") => report(catalog_cli::watch(rest)),
        Some("intention") => report(intention_cli::intention(rest)),
        Some("connect") => connect_cli::connect(rest),
        Some("tls") => tls_cli::tls(rest),
        Some("version" | "-version" | "--version") => {
            println!("mesh v{}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("unknown command {other:?}\n\n{USAGE}");
            1
        }
        None => {
            eprintln!("{USAGE}");
            1
        }
    };
    std::process::exit(code);
}
