//! CLI verbs over the catalog and the local agent's services, as Consul's:
//! `catalog services|nodes`, `services register|deregister`, `watch`.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{call, encode_path, expect_ok, json, parse, print_table};
use mesh_bins::flags::Kind;

/// `mesh catalog services|nodes`
pub fn catalog(args: &[String]) -> Result<(), String> {
    let (verb, rest) = args
        .split_first()
        .ok_or("Usage: mesh catalog <services|nodes> [options]")?;
    match verb.as_str() {
        "services" => {
            let flags = parse(
                rest,
                &[
                    ("tags", Kind::Bool, "Show each service's tags."),
                    ("node", Kind::Value, "Only services on this node."),
                ],
                "Usage: mesh catalog services [options]",
            )?;
            let services: Vec<(String, Vec<String>)> = match flags.get("node") {
                Some(node) => {
                    let resp = expect_ok(
                        call(
                            &flags,
                            "GET",
                            &format!("/v1/catalog/node/{}", encode_path(node)),
                            vec![],
                        )?,
                        "listing services",
                    )?;
                    let v = json(&resp)?;
                    if v.is_null() {
                        return Err(format!("Error listing services: no node named {node:?}"));
                    }
                    let mut out: Vec<(String, Vec<String>)> = Vec::new();
                    for s in v["Services"]
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.values())
                    {
                        out.push((
                            s["Service"].as_str().unwrap_or("").into(),
                            strings(&s["Tags"]),
                        ));
                    }
                    out.sort();
                    out.dedup();
                    out
                }
                None => {
                    let resp = expect_ok(
                        call(&flags, "GET", "/v1/catalog/services", vec![])?,
                        "listing services",
                    )?;
                    json(&resp)?
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), strings(v)))
                        .collect()
                }
            };
            if flags.bool("tags") {
                let rows: Vec<Vec<String>> = services
                    .into_iter()
                    .map(|(name, tags)| vec![name, tags.join(",")])
                    .collect();
                print_table(&rows);
            } else {
                for (name, _) in services {
                    println!("{name}");
                }
            }
            Ok(())
        }
        "nodes" => {
            let flags = parse(
                rest,
                &[
                    ("service", Kind::Value, "Only nodes running this service."),
                    (
                        "detailed",
                        Kind::Bool,
                        "Show tagged addresses and metadata too.",
                    ),
                ],
                "Usage: mesh catalog nodes [options]",
            )?;
            let nodes: Vec<Value> = match flags.get("service") {
                Some(svc) => {
                    let resp = expect_ok(
                        call(
                            &flags,
                            "GET",
                            &format!("/v1/catalog/service/{}", encode_path(svc)),
                            vec![],
                        )?,
                        "listing nodes",
                    )?;
                    let mut rows: Vec<Value> = json(&resp)?.as_array().cloned().unwrap_or_default();
                    for r in &mut rows {
                        r["Meta"] = r["NodeMeta"].clone();
                    }
                    rows.dedup_by(|a, b| a["Node"] == b["Node"]);
                    rows
                }
                None => {
                    let resp = expect_ok(
                        call(&flags, "GET", "/v1/catalog/nodes", vec![])?,
                        "listing nodes",
                    )?;
                    json(&resp)?.as_array().cloned().unwrap_or_default()
                }
            };
            let mut header = vec!["Node", "ID", "Address", "DC"];
            if flags.bool("detailed") {
                header.extend(["TaggedAddresses", "Meta"]);
            }
            let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
            for n in nodes {
                let id = n["ID"].as_str().unwrap_or("");
                let mut row = vec![
                    n["Node"].as_str().unwrap_or("").to_string(),
                    if flags.bool("detailed") {
                        id.to_string()
                    } else {
                        id.chars().take(8).collect()
                    },
                    n["Address"].as_str().unwrap_or("").to_string(),
                    n["Datacenter"].as_str().unwrap_or("").to_string(),
                ];
                if flags.bool("detailed") {
                    row.push(pairs(&n["TaggedAddresses"]));
                    row.push(pairs(&n["Meta"]));
                }
                rows.push(row);
            }
            print_table(&rows);
            Ok(())
        }
        _ => Err("Usage: mesh catalog <services|nodes> [options]".into()),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(String::from))
        .collect()
}

fn pairs(v: &Value) -> String {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The service definitions in a JSON file, as Consul's `services register`
/// reads them: `{"service": {...}}`, `{"services": [...]}`, or a bare
/// definition.
fn definitions(file: &str) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("Error reading {file}: {e}"))?;
    if file.ends_with(".hcl") {
        return Err(format!(
            "{file}: `mesh services register` reads JSON files; put HCL definitions in the agent's -config-dir"
        ));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("Error parsing {file}: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{file}: expected a JSON object"))?;
    let key = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    Ok(match (key("service"), key("services")) {
        (Some(s), _) => vec![s.clone()],
        (None, Some(Value::Array(list))) => list.clone(),
        (None, Some(_)) => return Err(format!("{file}: \"services\" must be a list")),
        (None, None) => vec![v.clone()],
    })
}

fn field(def: &Value, names: &[&str]) -> Option<String> {
    def.as_object()?.iter().find_map(|(k, v)| {
        names
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n))
            .then(|| v.as_str().map(String::from))
            .flatten()
    })
}

/// `mesh services register FILE...` and `mesh services deregister FILE...|-id ID`
pub fn services(args: &[String]) -> Result<(), String> {
    let (verb, rest) = args
        .split_first()
        .ok_or("Usage: mesh services <register|deregister> [options] [FILE...]")?;
    match verb.as_str() {
        "register" => {
            let flags = parse(rest, &[], "Usage: mesh services register [options] FILE...")?;
            if flags.positional.is_empty() {
                return Err("Usage: mesh services register [options] FILE...".into());
            }
            for file in &flags.positional {
                for def in definitions(file)? {
                    let body = serde_json::to_vec(&def).map_err(|e| e.to_string())?;
                    expect_ok(
                        call(&flags, "PUT", "/v1/agent/service/register", body)?,
                        "registering service",
                    )?;
                    let name = field(&def, &["name"]).unwrap_or_default();
                    println!("Registered service: {name}");
                }
            }
            Ok(())
        }
        "deregister" => {
            let flags = parse(
                rest,
                &[("id", Kind::Value, "ID of the service instance to remove.")],
                "Usage: mesh services deregister [options] [FILE...]",
            )?;
            let mut ids: Vec<String> = flags.get("id").map(String::from).into_iter().collect();
            for file in &flags.positional {
                for def in definitions(file)? {
                    let id = field(&def, &["id"])
                        .or_else(|| field(&def, &["name"]))
                        .ok_or_else(|| format!("{file}: a service without ID or Name"))?;
                    ids.push(id);
                }
            }
            if ids.is_empty() {
                return Err(
                    "Usage: mesh services deregister [options] [FILE...] (or -id ID)".into(),
                );
            }
            for id in ids {
                expect_ok(
                    call(
                        &flags,
                        "PUT",
                        &format!("/v1/agent/service/deregister/{}", encode_path(&id)),
                        vec![],
                    )?,
                    "deregistering service",
                )?;
                println!("Deregistered service: {id}");
            }
            Ok(())
        }
        _ => Err("Usage: mesh services <register|deregister> [options] [FILE...]".into()),
    }
}

/// `mesh watch -type TYPE [...] [HANDLER]`: blocks on an endpoint and
/// prints its JSON (or pipes it to HANDLER's stdin) every time it changes,
/// as `consul watch` does.
pub fn watch(args: &[String]) -> Result<(), String> {
    let flags = parse(
        args,
        &[
            (
                "type",
                Kind::Value,
                "key, keyprefix, services, nodes, service or checks.",
            ),
            ("key", Kind::Value, "The key (type key)."),
            ("prefix", Kind::Value, "The prefix (type keyprefix)."),
            (
                "service",
                Kind::Value,
                "The service (types service and checks).",
            ),
            ("state", Kind::Value, "A check state (type checks)."),
            (
                "passingonly",
                Kind::Bool,
                "Only passing instances (type service).",
            ),
            (
                "tag",
                Kind::Multi,
                "Only instances with this tag (type service).",
            ),
            ("stale", Kind::Bool, "Let any server answer."),
        ],
        "Usage: mesh watch -type TYPE [options] [handler]",
    )?;
    let need = |name: &str| {
        flags
            .get(name)
            .map(String::from)
            .ok_or_else(|| format!("Must specify -{name} for this watch type"))
    };
    let mut query: Vec<String> = Vec::new();
    let path = match flags.get("type").ok_or("Must specify watch type")? {
        "key" => format!("/v1/kv/{}", encode_path(&need("key")?)),
        "keyprefix" => {
            query.push("recurse".into());
            format!("/v1/kv/{}", encode_path(&need("prefix")?))
        }
        "services" => "/v1/catalog/services".into(),
        "nodes" => "/v1/catalog/nodes".into(),
        "service" => {
            if flags.bool("passingonly") {
                query.push("passing".into());
            }
            for t in flags.all("tag") {
                query.push(format!("tag={}", encode_path(&t)));
            }
            format!("/v1/health/service/{}", encode_path(&need("service")?))
        }
        "checks" => match (flags.get("service"), flags.get("state")) {
            (Some(s), _) => format!("/v1/health/checks/{}", encode_path(s)),
            (None, s) => format!("/v1/health/state/{}", s.unwrap_or("any")),
        },
        other => return Err(format!("Unsupported watch type: {other}")),
    };
    if flags.bool("stale") {
        query.push("stale".into());
    }
    let handler = (!flags.positional.is_empty()).then(|| flags.positional.join(" "));
    let endpoint = crate::cli::agent(&flags)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut index = 0u64;
        let mut last_body: Option<Vec<u8>> = None;
        loop {
            let mut q = query.clone();
            q.push(format!("index={index}"));
            q.push("wait=5m".into());
            let url = format!("{path}?{}", q.join("&"));
            let mut client = endpoint.client(Duration::from_secs(330));
            let resp = match client.request("GET", &url, Vec::new()).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("Error querying agent: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let new_index = resp
                .header("x-consul-index")
                .and_then(|h| h.parse::<u64>().ok())
                .unwrap_or(0);
            // An index that went backwards resets the watch, as Consul's
            // client guidance says.
            index = if new_index < index { 0 } else { new_index };
            let body = match resp.status {
                200 => resp.body.clone(),
                404 => b"null".to_vec(),
                s => {
                    eprintln!("Error querying agent: {s} {}", resp.text().trim());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if last_body.as_ref() == Some(&body) {
                continue;
            }
            last_body = Some(body.clone());
            match &handler {
                None => {
                    let pretty = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| serde_json::to_string_pretty(&v).ok())
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    println!("{pretty}");
                    let _ = std::io::stdout().flush();
                }
                Some(cmd) => {
                    let mut child = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(cmd)
                        .stdin(std::process::Stdio::piped())
                        .spawn()
                        .map_err(|e| format!("Error running handler {cmd:?}: {e}"))?;
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(&body);
                    }
                    let _ = child.wait();
                }
            }
        }
    })
}
