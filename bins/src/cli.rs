//! CLI verbs that talk to a local agent's HTTP API, as Consul's do:
//! `join`, `leave`, `members`, `operator raft list-peers`, `kv put|get|delete`
//! (the catalog verbs are in `catalog_cli`).

use std::time::Duration;

use base64::Engine;
use mesh_core::api::agent::{Member, RaftConfiguration};
use mesh_core::api::KvPair;
use mesh_net::http_client::HttpResponse;
use serde_json::Value;

use mesh_bins::flags::{Flags, Kind};

pub(crate) use mesh_bins::endpoint::{agent, parse, process_runtime, AgentEndpoint, HTTP_FLAGS};

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// One API call; a non-2xx answer becomes an error with the agent's message.
pub(crate) fn call(
    flags: &Flags,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<HttpResponse, String> {
    let endpoint = agent(flags)?;
    runtime()?.block_on(async {
        let mut client = endpoint.client(Duration::from_secs(30));
        client
            .request(method, path, body)
            .await
            .map_err(|e| e.to_string())
    })
}

pub(crate) fn expect_ok(resp: HttpResponse, what: &str) -> Result<HttpResponse, String> {
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        Err(format!(
            "Error {what}: Unexpected response code: {} ({})",
            resp.status,
            resp.text().trim()
        ))
    }
}

pub(crate) fn json(resp: &HttpResponse) -> Result<Value, String> {
    serde_json::from_slice(&resp.body).map_err(|e| format!("agent sent malformed JSON: {e}"))
}

pub(crate) fn encode_path(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `path.Clean`: slashes collapsed, `.` and `..` resolved, no
/// trailing slash; `""` for an empty path (Go gives `.`; keys have no
/// current directory).
pub(crate) fn go_path_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Go's `path.Join(a, b)`, as Consul's tools build keys.
pub(crate) fn go_path_join(a: &str, b: &str) -> String {
    if a.is_empty() {
        return go_path_clean(b);
    }
    go_path_clean(&format!("{a}/{b}"))
}

/// `mesh join ADDR...`
pub fn join(args: &[String]) -> Result<(), String> {
    let flags = parse(args, &[], "Usage: mesh join [options] address ...")?;
    if flags.positional.is_empty() {
        return Err("At least one address to join must be specified.".into());
    }
    for addr in &flags.positional {
        expect_ok(
            call(
                &flags,
                "PUT",
                &format!("/v1/agent/join/{}", encode_path(addr)),
                vec![],
            )?,
            "joining the cluster",
        )?;
    }
    println!(
        "Successfully joined cluster by contacting {} nodes.",
        flags.positional.len()
    );
    Ok(())
}

/// `mesh leave`
pub fn leave(args: &[String]) -> Result<(), String> {
    let flags = parse(args, &[], "Usage: mesh leave [options]")?;
    expect_ok(call(&flags, "PUT", "/v1/agent/leave", vec![])?, "leaving")?;
    println!("Graceful leave complete");
    Ok(())
}

/// `mesh reload`: the local agent reads its configuration files again.
pub fn reload(args: &[String]) -> Result<(), String> {
    let flags = parse(args, &[], "Usage: mesh reload [options]")?;
    expect_ok(
        call(&flags, "PUT", "/v1/agent/reload", vec![])?,
        "reloading",
    )?;
    println!("Configuration reload triggered");
    Ok(())
}

/// `mesh members`
pub fn members(args: &[String]) -> Result<(), String> {
    let flags = parse(args, &[], "Usage: mesh members [options]")?;
    let resp = expect_ok(
        call(&flags, "GET", "/v1/agent/members", vec![])?,
        "retrieving members",
    )?;
    let members: Vec<Member> =
        serde_json::from_slice(&resp.body).map_err(|e| format!("Error decoding members: {e}"))?;
    let mut rows = vec![vec![
        "Node".to_string(),
        "Address".into(),
        "Status".into(),
        "Type".into(),
        "DC".into(),
    ]];
    for m in &members {
        rows.push(vec![
            m.name.clone(),
            format!("{}:{}", m.addr, m.port),
            m.status_name().into(),
            if m.is_server() { "server" } else { "client" }.into(),
            m.tags.get("dc").map_or("dc1", String::as_str).to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// `mesh operator raft list-peers`
pub fn operator(args: &[String]) -> Result<(), String> {
    match (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
    ) {
        (Some("raft"), Some("list-peers")) => {
            let flags = parse(
                &args[2..],
                &[("stale", Kind::Bool, "Read from any server.")],
                "Usage: mesh operator raft list-peers [options]",
            )?;
            let path = if flags.bool("stale") {
                "/v1/operator/raft/configuration?stale"
            } else {
                "/v1/operator/raft/configuration"
            };
            let resp = expect_ok(
                call(&flags, "GET", path, vec![])?,
                "retrieving the Raft configuration",
            )?;
            let config: RaftConfiguration = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("Error decoding the Raft configuration: {e}"))?;
            let mut rows = vec![vec![
                "Node".to_string(),
                "ID".into(),
                "Address".into(),
                "State".into(),
                "Voter".into(),
                "Commit Index".into(),
            ]];
            for s in &config.servers {
                rows.push(vec![
                    s.node.clone(),
                    s.id.clone(),
                    s.address.clone(),
                    if s.leader { "leader" } else { "follower" }.into(),
                    s.voter.to_string(),
                    s.last_index.to_string(),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        (Some("raft"), Some("remove-peer")) => {
            let flags = parse(
                &args[2..],
                &[
                    ("id", Kind::Value, "Raft ID of the server."),
                    ("address", Kind::Value, "RPC address of the server."),
                ],
                "Usage: mesh operator raft remove-peer -id=ID | -address=IP:port",
            )?;
            let path = match (flags.get("id"), flags.get("address")) {
                (Some(id), _) => format!("/v1/operator/raft/peer?id={}", encode_path(id)),
                (None, Some(a)) => format!("/v1/operator/raft/peer?address={}", encode_path(a)),
                (None, None) => return Err("Must specify either -id or -address".into()),
            };
            expect_ok(call(&flags, "DELETE", &path, vec![])?, "removing peer")?;
            println!("Removed peer");
            Ok(())
        }
        _ => Err("Usage: mesh operator raft <list-peers|remove-peer> [options]".into()),
    }
}

/// `mesh kv put|get|delete`
pub fn kv(args: &[String]) -> Result<(), String> {
    let verb = args.first().map(String::as_str).unwrap_or("");
    let rest = args.get(1..).unwrap_or_default();
    match verb {
        "put" => {
            let flags = parse(
                rest,
                &[
                    (
                        "cas",
                        Kind::Bool,
                        "Check-and-set: write only if -modify-index matches (0: only if absent).",
                    ),
                    (
                        "modify-index",
                        Kind::Value,
                        "Expected ModifyIndex for -cas.",
                    ),
                    (
                        "flags",
                        Kind::Value,
                        "Unsigned integer flags stored with the key.",
                    ),
                    ("base64", Kind::Bool, "The value is base64-encoded."),
                ],
                "Usage: mesh kv put [options] KEY [DATA]",
            )?;
            let (key, value) = match flags.positional.as_slice() {
                [k] => (k.clone(), String::new()),
                [k, v] => (k.clone(), v.clone()),
                _ => return Err("Usage: mesh kv put [options] KEY [DATA]".into()),
            };
            let value = if flags.bool("base64") {
                base64::engine::general_purpose::STANDARD
                    .decode(value.as_bytes())
                    .map_err(|e| format!("Error! Cannot base 64 decode data: {e}"))?
            } else {
                value.into_bytes()
            };
            let mut query = Vec::new();
            if let Some(f) = flags.number::<u64>("flags")? {
                query.push(format!("flags={f}"));
            }
            query.extend(cas_param(&flags)?);
            let path = with_query(&format!("/v1/kv/{}", encode_path(&key)), &query);
            let resp = expect_ok(
                call(&flags, "PUT", &path, value)?,
                &format!("writing {key}"),
            )?;
            if resp.body.starts_with(b"true") {
                println!("Success! Data written to: {key}");
                Ok(())
            } else {
                Err(format!("Error! Did not write to {key}: CAS failed"))
            }
        }
        "get" => {
            let flags = parse(
                rest,
                &[
                    ("recurse", Kind::Bool, "Get every key under the prefix."),
                    ("keys", Kind::Bool, "List keys only."),
                    (
                        "separator",
                        Kind::Value,
                        "With -keys, roll keys up to this separator.",
                    ),
                    ("detailed", Kind::Bool, "Show the metadata of each entry."),
                    ("stale", Kind::Bool, "Read from any server."),
                ],
                "Usage: mesh kv get [options] [KEY_OR_PREFIX]",
            )?;
            let key = flags.positional.first().cloned().unwrap_or_default();
            let mut query = Vec::new();
            if flags.bool("stale") {
                query.push("stale".to_string());
            }
            if flags.bool("keys") {
                query.push("keys".into());
                if let Some(sep) = flags.get("separator") {
                    query.push(format!("separator={}", encode_path(sep)));
                }
            } else if flags.bool("recurse") {
                query.push("recurse".into());
            }
            let path = with_query(&format!("/v1/kv/{}", encode_path(&key)), &query);
            let resp = call(&flags, "GET", &path, vec![])?;
            if resp.status == 404 {
                return Err(format!("Error! No key exists at: {key}"));
            }
            let resp = expect_ok(resp, &format!("querying {key}"))?;
            if flags.bool("keys") {
                let keys: Vec<String> =
                    serde_json::from_slice(&resp.body).map_err(|e| e.to_string())?;
                for k in keys {
                    println!("{k}");
                }
                return Ok(());
            }
            let pairs: Vec<KvPair> = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("agent sent malformed JSON: {e}"))?;
            for p in &pairs {
                let value = p.decoded_value().map_err(|e| e.to_string())?;
                let value = String::from_utf8_lossy(&value);
                if flags.bool("detailed") {
                    println!("CreateIndex      {}\nFlags            {}\nKey              {}\nLockIndex        {}\nModifyIndex      {}\nValue            {}\n", p.create_index, p.flags, p.key, p.lock_index, p.modify_index, value);
                } else if flags.bool("recurse") {
                    println!("{}:{}", p.key, value);
                } else {
                    println!("{value}");
                }
            }
            Ok(())
        }
        "delete" => {
            let flags = parse(
                rest,
                &[
                    ("recurse", Kind::Bool, "Delete every key under the prefix."),
                    ("cas", Kind::Bool, "Delete only if -modify-index matches."),
                    (
                        "modify-index",
                        Kind::Value,
                        "Expected ModifyIndex for -cas.",
                    ),
                ],
                "Usage: mesh kv delete [options] KEY_OR_PREFIX",
            )?;
            let key = flags.positional.first().cloned().unwrap_or_default();
            if key.is_empty() && !flags.bool("recurse") {
                return Err("Error! Missing KEY argument".into());
            }
            let mut query = Vec::new();
            if flags.bool("recurse") {
                query.push("recurse".to_string());
            }
            query.extend(cas_param(&flags)?);
            let path = with_query(&format!("/v1/kv/{}", encode_path(&key)), &query);
            let resp = expect_ok(
                call(&flags, "DELETE", &path, vec![])?,
                &format!("deleting {key}"),
            )?;
            if resp.body.starts_with(b"true") {
                println!("Success! Deleted key: {key}");
                Ok(())
            } else {
                Err(format!("Error! Did not delete key {key}: CAS failed"))
            }
        }
        "export" => {
            let flags = parse(rest, &[], "Usage: mesh kv export [PREFIX]")?;
            let prefix = flags.positional.first().cloned().unwrap_or_default();
            let path = format!("/v1/kv/{}?recurse", encode_path(&prefix));
            let resp = call(&flags, "GET", &path, vec![])?;
            let pairs: Vec<KvPair> = if resp.status == 404 {
                Vec::new()
            } else {
                serde_json::from_slice(&expect_ok(resp, "exporting")?.body)
                    .map_err(|e| format!("agent sent malformed JSON: {e}"))?
            };
            // Consul's export format: key, flags, base64 value.
            let entries: Vec<Value> = pairs
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "key": p.key,
                        "flags": p.flags,
                        "value": p.value.clone().unwrap_or_default(),
                    })
                })
                .collect();
            let text = serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?;
            println!("{text}");
            Ok(())
        }
        "import" => {
            let usage = "Usage: mesh kv import [-prefix PREFIX] [DATA | @FILE | -]";
            let flags = parse(
                rest,
                &[(
                    "prefix",
                    Kind::Value,
                    "Key prefix to prepend to every imported key.",
                )],
                usage,
            )?;
            let text = match flags.positional.first().map(String::as_str) {
                None | Some("-") => {
                    let mut buf = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
                        .map_err(|e| format!("Error! Failed to read stdin: {e}"))?;
                    buf
                }
                Some(arg) => match arg.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file)
                        .map_err(|e| format!("Error! Failed to read file {file}: {e}"))?,
                    None => arg.to_string(),
                },
            };
            let entries: Vec<Value> = serde_json::from_str(&text)
                .map_err(|e| format!("Error! Cannot unmarshal data: {e}"))?;
            // Check every entry before writing any, so bad input writes
            // nothing.
            let mut writes = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let key = e["key"]
                    .as_str()
                    .ok_or_else(|| format!("Error! Entry {i} has no string \"key\""))?;
                let flags_value = match &e["flags"] {
                    Value::Null => 0,
                    v => v
                        .as_u64()
                        .ok_or_else(|| format!("Error! Entry {i} ({key}): bad \"flags\""))?,
                };
                let value = match &e["value"] {
                    Value::Null => Vec::new(),
                    Value::String(b64) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|err| format!("Error! Entry {i} ({key}): base64: {err}"))?,
                    _ => return Err(format!("Error! Entry {i} ({key}): bad \"value\"")),
                };
                if key.is_empty() {
                    return Err(format!("Error! Entry {i} has an empty \"key\""));
                }
                let full = match flags.get("prefix") {
                    Some(prefix) if !prefix.is_empty() => go_path_join(prefix, key),
                    _ => key.to_string(),
                };
                writes.push((full, flags_value, value));
            }
            for (key, f, value) in writes {
                let path = format!("/v1/kv/{}?flags={f}", encode_path(&key));
                expect_ok(
                    call(&flags, "PUT", &path, value)?,
                    &format!("importing {key}"),
                )?;
                println!("Imported: {key}");
            }
            Ok(())
        }
        _ => Err("Usage: mesh kv <put|get|delete|export|import> [options] KEY".into()),
    }
}

/// `-cas -modify-index N` as Consul's `?cas=N`.
fn cas_param(flags: &Flags) -> Result<Option<String>, String> {
    if !flags.bool("cas") {
        return Ok(None);
    }
    let idx = flags
        .number::<u64>("modify-index")?
        .ok_or("Must specify -modify-index with -cas!")?;
    Ok(Some(format!("cas={idx}")))
}

fn with_query(path: &str, query: &[String]) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_as_go_does() {
        assert_eq!(go_path_clean("svc/"), "svc");
        assert_eq!(go_path_clean("svc//a/./b/../c"), "svc/a/c");
        assert_eq!(go_path_clean(""), "");
        assert_eq!(go_path_join("svc/", ".lock"), "svc/.lock");
        assert_eq!(go_path_join("", ".lock"), ".lock");
        assert_eq!(go_path_join("copy", "cfg/a"), "copy/cfg/a");
    }
}
