//! `mesh connect proxy -sidecar-for SERVICE` (the sidecar, as Consul's
//! built-in proxy) and `mesh connect ca get-config|set-config|roots`.

use std::time::Duration;

use mesh_net::sidecar::control::{self, ProxyOptions};
use mesh_net::sidecar::Limits;

use crate::cli::{agent, call, expect_ok, json, parse};
use mesh_bins::flags::Kind;

const USAGE: &str = "Usage: mesh connect <proxy|ca> [options]";

/// `mesh connect ...`; returns the exit code.
pub fn connect(args: &[String]) -> i32 {
    let Some((verb, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return 1;
    };
    match verb.as_str() {
        "proxy" => proxy(rest),
        "ca" => crate::report(ca(rest)),
        other => {
            eprintln!("unknown connect command {other:?}\n\n{USAGE}");
            1
        }
    }
}

fn proxy(args: &[String]) -> i32 {
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
        "Usage: mesh connect proxy -sidecar-for SERVICE [options]",
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
    drop(crate::init_logging(
        flags.get("log-level").unwrap_or("info"),
        false,
    ));
    let opts_service = service.clone();
    let opts = ProxyOptions {
        // The sidecar speaks plain HTTP to the agent on its own host.
        agent_http: match agent(&flags) {
            Ok(endpoint) if endpoint.tls.is_none() => endpoint.addr,
            Ok(_) => {
                eprintln!("mesh connect proxy talks to its local agent over plain HTTP; give -http-addr host:port");
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
    let rt = match crate::cli::process_runtime() {
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

fn ca(args: &[String]) -> Result<(), String> {
    let (verb, rest) = args
        .split_first()
        .ok_or("Usage: mesh connect ca <get-config|set-config|rotate|roots> [options]")?;
    match verb.as_str() {
        "get-config" => {
            let flags = parse(rest, &[], "Usage: mesh connect ca get-config")?;
            let resp = expect_ok(
                call(&flags, "GET", "/v1/connect/ca/configuration", vec![])?,
                "reading the CA configuration",
            )?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json(&resp)?).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        "set-config" => {
            let flags = parse(
                rest,
                &[(
                    "config-file",
                    Kind::Value,
                    "JSON file with the new configuration.",
                )],
                "Usage: mesh connect ca set-config -config-file FILE",
            )?;
            let file = flags.get("config-file").ok_or("-config-file is required")?;
            let body = std::fs::read(file).map_err(|e| format!("reading {file}: {e}"))?;
            expect_ok(
                call(&flags, "PUT", "/v1/connect/ca/configuration", body)?,
                "setting the CA configuration",
            )?;
            println!("Configuration updated!");
            Ok(())
        }
        "rotate" => {
            // `consul connect ca set-config` with a new PrivateKey: the
            // servers make a root of it, cross-signed by the current one.
            let flags = parse(rest, &[], "Usage: mesh connect ca rotate")?;
            let current = json(&expect_ok(
                call(&flags, "GET", "/v1/connect/ca/configuration", vec![])?,
                "reading the CA configuration",
            )?)?;
            let key = mesh_core::connect::ca::generate_leaf_key().map_err(|e| e.to_string())?;
            let mut config = current["Config"].clone();
            config["PrivateKey"] = serde_json::Value::String(key.key.expose().to_owned());
            let body = serde_json::json!({ "Provider": "consul", "Config": config });
            expect_ok(
                call(
                    &flags,
                    "PUT",
                    "/v1/connect/ca/configuration",
                    body.to_string().into_bytes(),
                )?,
                "rotating the CA root",
            )?;
            println!("Root rotated: new leaves are signed by the new root; the old one stays trusted until its leaves expire.");
            Ok(())
        }
        "roots" => {
            let flags = parse(rest, &[], "Usage: mesh connect ca roots")?;
            let resp = expect_ok(
                call(&flags, "GET", "/v1/connect/ca/roots", vec![])?,
                "reading the CA roots",
            )?;
            let v = json(&resp)?;
            println!("TrustDomain: {}", v["TrustDomain"].as_str().unwrap_or(""));
            for r in v["Roots"].as_array().into_iter().flatten() {
                println!(
                    "{} {} active={} not_after={}",
                    r["ID"].as_str().unwrap_or(""),
                    r["Name"].as_str().unwrap_or(""),
                    r["Active"],
                    r["NotAfter"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        other => Err(format!("unknown connect ca command {other:?}")),
    }
}
