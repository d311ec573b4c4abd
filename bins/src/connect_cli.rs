//! `mesh connect proxy -sidecar-for SERVICE` (the sidecar, as Consul's
//! built-in proxy) and `mesh connect ca get-config|set-config|roots`.

use crate::cli::{call, expect_ok, json, parse};
use mesh_bins::flags::Kind;

const USAGE: &str = "Usage: mesh connect <proxy|ca> [options]";

/// `mesh connect ...`; returns the exit code.
pub fn connect(args: &[String]) -> i32 {
    let Some((verb, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return 1;
    };
    match verb.as_str() {
        "proxy" => mesh_bins::sidecar_cmd::run(rest, "mesh connect proxy"),
        "ca" => crate::report(ca(rest)),
        other => {
            eprintln!("unknown connect command {other:?}\n\n{USAGE}");
            1
        }
    }
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
