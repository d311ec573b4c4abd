//! `mesh`: the agent and its CLI, with Consul's verbs and flag spellings.

mod agent_cmd;
mod catalog_cli;
mod cli;
mod config_cli;
mod connect_cli;
mod demo;
mod intention_cli;
mod lock_cli;
mod tls_cli;

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
    config     Config entries (service-intentions): write, read, list, delete
    connect    Connect: run a sidecar (proxy -sidecar-for SERVICE), CA settings (ca)
    tls        The operator CA and agent certificates for TLS on the RPC port (ca create, cert create)
    keygen     Prints a new gossip encryption key (for `encrypt`, as consul keygen)
    version    Prints the version";

fn report(result: Result<(), String>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `mesh keygen`: 32 random bytes from the operating system, base64, as
/// `consul keygen` prints them.
fn keygen(args: &[String]) -> i32 {
    if !args.is_empty() {
        eprintln!("keygen takes no arguments");
        return 1;
    }
    let mut random = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut random) {
        eprintln!("Error reading random data: {e}");
        return 1;
    }
    println!("{}", mesh_core::gossip_key::encode(&random));
    0
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
        Some("config") => report(config_cli::config(rest)),
        Some("connect") => connect_cli::connect(rest),
        Some("tls") => tls_cli::tls(rest),
        Some("keygen") => keygen(rest),
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
