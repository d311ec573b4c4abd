//! `mesh intention create|delete|get|check|list`, as Consul's
//! `consul intention` verbs.

use serde_json::{json, Value};

use crate::cli::{call, encode_path, expect_ok, json, parse, print_table};
use mesh_bins::flags::Kind;

const USAGE: &str = "Usage: mesh intention <create|delete|get|check|list> [options] [SRC DST]";

/// `mesh intention ...`
pub fn intention(args: &[String]) -> Result<(), String> {
    let (verb, rest) = args.split_first().ok_or(USAGE)?;
    match verb.as_str() {
        "create" => create(rest),
        "delete" => {
            let flags = parse(rest, &[], "Usage: mesh intention delete SRC DST")?;
            let (src, dst) = pair(&flags.positional)?;
            expect_ok(
                call(&flags, "DELETE", &exact_path(src, dst), vec![])?,
                "deleting the intention",
            )?;
            println!("Intention deleted.");
            Ok(())
        }
        "get" => {
            let flags = parse(rest, &[], "Usage: mesh intention get SRC DST")?;
            let (src, dst) = pair(&flags.positional)?;
            let resp = call(&flags, "GET", &exact_path(src, dst), vec![])?;
            if resp.status == 404 {
                return Err(format!("Error: no intention {src} => {dst}"));
            }
            let v = json(&expect_ok(resp, "reading the intention")?)?;
            for key in [
                "ID",
                "SourceName",
                "DestinationName",
                "Action",
                "Precedence",
                "Description",
                "CreatedAt",
                "UpdatedAt",
            ] {
                println!("{key}:\t{}", plain(&v[key]));
            }
            Ok(())
        }
        "check" => {
            let flags = parse(rest, &[], "Usage: mesh intention check SRC DST")?;
            let (src, dst) = pair(&flags.positional)?;
            let resp = expect_ok(
                call(
                    &flags,
                    "GET",
                    &format!(
                        "/v1/connect/intentions/check?source={}&destination={}",
                        encode_path(src),
                        encode_path(dst)
                    ),
                    vec![],
                )?,
                "checking the intention",
            )?;
            if json(&resp)?["Allowed"] == json!(true) {
                println!("Allowed");
                Ok(())
            } else {
                // As `consul intention check`: the answer is the exit code.
                println!("Denied");
                std::process::exit(2);
            }
        }
        "list" => {
            let flags = parse(rest, &[], "Usage: mesh intention list")?;
            let resp = expect_ok(
                call(&flags, "GET", "/v1/connect/intentions", vec![])?,
                "listing intentions",
            )?;
            let rows: Vec<Vec<String>> = json(&resp)?
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    [
                        "ID",
                        "SourceName",
                        "Action",
                        "DestinationName",
                        "Precedence",
                    ]
                    .iter()
                    .map(|k| plain(&i[k]))
                    .collect()
                })
                .collect();
            let header = ["ID", "Source", "Action", "Destination", "Precedence"]
                .map(String::from)
                .to_vec();
            print_table(&std::iter::once(header).chain(rows).collect::<Vec<_>>());
            Ok(())
        }
        other => Err(format!("unknown intention command {other:?}\n\n{USAGE}")),
    }
}

fn create(args: &[String]) -> Result<(), String> {
    let flags = parse(
        args,
        &[
            (
                "allow",
                Kind::Bool,
                "Create an intention that allows (the default).",
            ),
            ("deny", Kind::Bool, "Create an intention that denies."),
            (
                "description",
                Kind::Value,
                "A description of the intention.",
            ),
            (
                "replace",
                Kind::Bool,
                "Replace an existing intention for the pair.",
            ),
            ("meta", Kind::Value, "key=value metadata (repeatable)."),
        ],
        "Usage: mesh intention create [options] SRC DST",
    )?;
    let (src, dst) = pair(&flags.positional)?;
    if flags.bool("allow") && flags.bool("deny") {
        return Err("Only one of -allow or -deny may be specified.".into());
    }
    let action = if flags.bool("deny") { "deny" } else { "allow" };
    let path = exact_path(src, dst);
    if !flags.bool("replace") {
        let existing = call(&flags, "GET", &path, vec![])?;
        if existing.status == 200 {
            return Err(format!(
                "Error creating intention: an intention {src} => {dst} already exists; use \
                 -replace to replace it"
            ));
        }
    }
    let mut meta = serde_json::Map::new();
    for kv in &flags.all("meta") {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("-meta {kv:?}: expected key=value"))?;
        meta.insert(k.into(), Value::String(v.into()));
    }
    let body = json!({
        "Action": action,
        "Description": flags.get("description").unwrap_or(""),
        "Meta": meta,
    });
    expect_ok(
        call(&flags, "PUT", &path, body.to_string().into_bytes())?,
        "creating the intention",
    )?;
    println!("Created: {src} => {dst} ({action})");
    Ok(())
}

fn pair(positional: &[String]) -> Result<(&str, &str), String> {
    match positional {
        [src, dst] => Ok((src, dst)),
        _ => Err(format!(
            "expected two arguments, the source and the destination service, got {}",
            positional.len()
        )),
    }
}

fn exact_path(src: &str, dst: &str) -> String {
    format!(
        "/v1/connect/intentions/exact?source={}&destination={}",
        encode_path(src),
        encode_path(dst)
    )
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
