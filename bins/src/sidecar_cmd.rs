//! The sidecar (`mesh connect proxy -sidecar-for SERVICE`, Consul's
//! built-in proxy), also built alone as `mesh-sidecar`: the same code
//! without the agent, the CLI and the server linked in, so each sidecar
//! maps a fraction of the pages (see BENCHMARKS.md, sidecar memory).

use std::time::Duration;

use mesh_net::sidecar::control::{self, ProxyOptions};
use mesh_net::sidecar::Limits;

use crate::endpoint::{agent, parse};
use crate::flags::Kind;

/// Runs the sidecar with `args` (the flags after `mesh connect proxy`, or
/// of `mesh-sidecar`); returns the exit code. `command` names it in the
/// usage line.
pub fn run(args: &[String], command: &str) -> i32 {
    let flags = match parse(
        args,
        &[
            (
                "sidecar-for",
                Kind::Value,
                "The ID of the local service this sidecar fronts (its connect-proxy \
                 registration gives the ports and upstreams).",
            ),
            (
                "log-level",
                Kind::Value,
                "Log level: trace, debug, info, warn, err.",
            ),
            (
                "metrics-addr",
                Kind::Value,
                "Serve the sidecar's counters at http://ADDR/metrics (Prometheus format).",
            ),
        ],
        &format!("Usage: {command} -sidecar-for SERVICE [options]"),
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let Some(service) = flags.get("sidecar-for").map(str::to_owned) else {
        eprintln!("-sidecar-for is required: the ID of the service this sidecar fronts");
        return 1;
    };
    // The sidecar has no reload: its hook is not kept.
    drop(crate::logging::init_logging(
        flags.get("log-level").unwrap_or("info"),
        false,
    ));
    let opts_service = service.clone();
    let opts = ProxyOptions {
        // The sidecar speaks plain HTTP to the agent on its own host.
        agent_http: match agent(&flags) {
            Ok(endpoint) if endpoint.tls.is_none() => endpoint.addr,
            Ok(_) => {
                eprintln!(
                    "{command} talks to its local agent over plain HTTP; give -http-addr host:port"
                );
                return 1;
            }
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        },
        sidecar_for: service,
        limits: Limits::default(),
    };
    let rt = match crate::endpoint::process_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    rt.block_on(async move {
        // The agent may still be starting (systemd starts both at once):
        // retry for a while before giving up.
        let mut tries = 0;
        let sidecar = loop {
            match control::start(opts.clone()).await {
                Ok(s) => break s,
                Err(e) if tries < 30 && matches!(e, control::SidecarError::Agent { .. }) => {
                    tries += 1;
                    tracing::warn!(error = %e, "agent not ready; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    eprintln!("==> {e}");
                    return 1;
                }
            }
        };
        if let Some(addr) = flags.get("metrics-addr") {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tokio::spawn(mesh_net::sidecar::metrics::serve(
                        l,
                        sidecar.metrics.clone(),
                        opts_service.clone(),
                    ));
                }
                Err(e) => {
                    eprintln!("==> cannot bind -metrics-addr {addr}: {e}");
                    return 1;
                }
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        let m = sidecar.metrics.snapshot();
        tracing::info!(?m, "sidecar stopping");
        0
    })
}
