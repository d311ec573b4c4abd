//! `mesh config write|read|list|delete`, as Consul's `consul config`
//! verbs, for `service-intentions` entries (the one kind the mesh has;
//! the agent refuses others with the reason).

use serde_json::Value;

use crate::cli::{call, encode_path, expect_ok, json, parse};
use mesh_bins::flags::{Flags, Kind};

const USAGE: &str = "Usage: mesh config <write|read|list|delete> [options]";

/// `mesh config ...`
pub fn config(args: &[String]) -> Result<(), String> {
    let (verb, rest) = args.split_first().ok_or(USAGE)?;
    let kind_flag = ("kind", Kind::Value, "The kind of the config entry.");
    let name_flag = ("name", Kind::Value, "The name of the config entry.");
    match verb.as_str() {
        "write" => {
            let flags = parse(
                rest,
                &[
                    (
                        "cas",
                        Kind::Bool,
                        "Write only if the entry's ModifyIndex is -modify-index.",
                    ),
                    (
                        "modify-index",
                        Kind::Value,
                        "The ModifyIndex for -cas (0: only if the entry does not exist).",
                    ),
                ],
                "Usage: mesh config write [options] FILE (JSON or HCL; - reads stdin)",
            )?;
            let [file] = flags.positional.as_slice() else {
                return Err("Usage: mesh config write [options] FILE".into());
            };
            let entry = read_entry(file)?;
            let path = match (flags.bool("cas"), flags.get("modify-index")) {
                (true, Some(index)) => format!("/v1/config?cas={}", encode_path(index)),
                (true, None) => return Err("-cas needs -modify-index".into()),
                (false, _) => "/v1/config".to_string(),
            };
            let body = serde_json::to_vec(&entry).expect("JSON value serializes");
            let resp = expect_ok(call(&flags, "PUT", &path, body)?, "writing config entry")?;
            let (kind, name) = (&entry["Kind"], &entry["Name"]);
            if json(&resp)? != Value::Bool(true) {
                return Err(format!(
                    "Config entry not updated: {} / {} (the ModifyIndex did not match)",
                    plain(kind),
                    plain(name)
                ));
            }
            println!("Config entry written: {} / {}", plain(kind), plain(name));
            Ok(())
        }
        "read" => {
            let flags = parse(
                rest,
                &[kind_flag, name_flag],
                "Usage: mesh config read -kind K -name N",
            )?;
            let (kind, name) = kind_and_name(&flags)?;
            let path = format!("/v1/config/{}/{}", encode_path(kind), encode_path(name));
            let resp = expect_ok(call(&flags, "GET", &path, vec![])?, "reading config entry")?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json(&resp)?).expect("JSON value serializes")
            );
            Ok(())
        }
        "list" => {
            let flags = parse(rest, &[kind_flag], "Usage: mesh config list -kind K")?;
            let kind = flags
                .get("kind")
                .ok_or("Must specify the -kind parameter")?;
            let path = format!("/v1/config/{}", encode_path(kind));
            let resp = expect_ok(
                call(&flags, "GET", &path, vec![])?,
                "listing config entries",
            )?;
            for entry in json(&resp)?.as_array().into_iter().flatten() {
                println!("{}", plain(&entry["Name"]));
            }
            Ok(())
        }
        "delete" => {
            let flags = parse(
                rest,
                &[
                    kind_flag,
                    name_flag,
                    (
                        "cas",
                        Kind::Bool,
                        "Delete only if the entry's ModifyIndex is -modify-index.",
                    ),
                    ("modify-index", Kind::Value, "The ModifyIndex for -cas."),
                ],
                "Usage: mesh config delete -kind K -name N",
            )?;
            let (kind, name) = kind_and_name(&flags)?;
            let mut path = format!("/v1/config/{}/{}", encode_path(kind), encode_path(name));
            if flags.bool("cas") {
                let index = flags
                    .get("modify-index")
                    .ok_or("-cas needs -modify-index")?;
                path.push_str(&format!("?cas={}", encode_path(index)));
            }
            let resp = expect_ok(
                call(&flags, "DELETE", &path, vec![])?,
                "deleting config entry",
            )?;
            if flags.bool("cas") && json(&resp)? != Value::Bool(true) {
                return Err(format!(
                    "Config entry not deleted: {kind} / {name} (the ModifyIndex did not match)"
                ));
            }
            println!("Config entry deleted: {kind} / {name}");
            Ok(())
        }
        other => Err(format!("unknown config command {other:?}\n\n{USAGE}")),
    }
}

fn kind_and_name(flags: &Flags) -> Result<(&str, &str), String> {
    match (flags.get("kind"), flags.get("name")) {
        (Some(k), Some(n)) => Ok((k, n)),
        (None, _) => Err("Must specify the -kind parameter".into()),
        (_, None) => Err("Must specify the -name parameter".into()),
    }
}

/// A config entry file, JSON or HCL (as `consul config write` reads them).
fn read_entry(file: &str) -> Result<Value, String> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("Error reading stdin: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("Error reading {file}: {e}"))?
    };
    let entry: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(json_error) => hcl::from_str(&text).map_err(|hcl_error| {
            format!(
                "Failed to decode config entry input: {file} is neither JSON ({json_error}) nor \
                 HCL ({hcl_error})"
            )
        })?,
    };
    if !entry.is_object() {
        return Err(format!("{file}: a config entry is an object"));
    }
    // Consul's files may spell the keys in snake case (`kind`, `sources`);
    // the agent matches them either way, but the messages name them.
    let mut entry = entry;
    for key in ["Kind", "Name"] {
        if entry.get(key).is_none() {
            let found = entry
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
                .map(|(_, v)| v.clone());
            if let Some(v) = found {
                entry[key] = v;
            }
        }
    }
    Ok(entry)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
