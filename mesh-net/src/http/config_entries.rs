//! `/v1/config`: Consul's configuration entries, for the one kind a
//! layer-4 mesh has, `service-intentions` (Consul 1.9+ manages intentions
//! this way; `consul config write` and Terraform's `consul_config_entry`
//! use it).
//!
//! An entry named after a destination is the set of intentions towards it:
//! `PUT /v1/config` replaces that set in one Raft entry (sources listed
//! stay or come, others go; `?cas=` against the entry's `ModifyIndex`),
//! `DELETE /v1/config/service-intentions/:name` removes it, and the reads
//! group the intentions table by destination. The exact-match API
//! (`/v1/connect/intentions/exact`) and this one see the same intentions;
//! the entry's `ModifyIndex` moves when either changes or removes one (a
//! removal moves the remaining intentions' `ModifyIndex`, as Consul's
//! intentions share their entry's).
//!
//! Differences from Consul, by the model: the entry's `Meta` is stored on
//! each of its intentions and read back from one of them (an intention
//! given other `Meta` through the older API shows through); its
//! `CreateIndex` is its oldest intention's, so it moves when that one is
//! removed.
//!
//! Other kinds (`service-defaults`, `proxy-defaults`, routers, gateways)
//! configure Envoy features this mesh's sidecars do not have: they are
//! refused with a 400 that says so, never stored and ignored.

use hyper::{Method, StatusCode};
use mesh_core::connect::intention::{self, Intention};
use mesh_core::state::intentions::entry_indexes;
use mesh_core::state::{IntentionCommand, SourceRule};
use serde_json::{json, Value};

use mesh_core::definitions::normalize_key;

use super::intentions::{action_field, field, meta_field, refuse_permissions, string_field};
use super::params::Query;
use super::reply::{
    bad_request, json_reply, method_not_allowed, not_found, read_json, with_read_headers, Reply,
};
use super::routes::{Call, HttpApi};
use crate::clock;

/// The one supported kind.
pub const SERVICE_INTENTIONS: &str = "service-intentions";

fn unsupported_kind(kind: &str) -> Reply {
    bad_request(format!(
        "config entry kind {kind:?} is not supported: this mesh's sidecars are layer-4 \
         proxies, and only {SERVICE_INTENTIONS:?} applies to them"
    ))
}

/// The keys an entry may carry (any case, underscores ignored, as every
/// body's keys): what `GET` answers can be written back. Anything else is
/// refused, as Consul refuses unknown keys: a misspelled `Sources` must
/// not read as "no sources".
const ENTRY_KEYS: &[&str] = &[
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Meta",
    "Sources",
    "CreateIndex",
    "ModifyIndex",
];
const SOURCE_KEYS: &[&str] = &[
    "Name",
    "Action",
    "Description",
    "Precedence",
    "Type",
    "Namespace",
    "Partition",
    "Peer",
    "SamenessGroup",
    "Permissions",
    "LegacyID",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
];

fn unknown_key(object: &Value, known: &[&str]) -> Option<String> {
    let known: Vec<String> = known.iter().map(|k| normalize_key(k)).collect();
    object
        .as_object()?
        .keys()
        .find(|k| !known.contains(&normalize_key(k)))
        .cloned()
}

/// The entry's sources, from a `PUT /v1/config` body: required and not
/// empty (an entry without sources is removed with `DELETE`, never by a
/// body that lost them).
fn decode_sources(body: &Value) -> Result<Vec<SourceRule>, String> {
    if let Some(key) = unknown_key(body, ENTRY_KEYS) {
        return Err(format!("invalid config key {key:?}"));
    }
    let sources = match field(body, "Sources") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        None | Some(Value::Array(_)) => {
            return Err(
                "Sources is required and must not be empty (to remove the entry, DELETE \
                 /v1/config/service-intentions/NAME)"
                    .into(),
            )
        }
        Some(other) => return Err(format!("Sources: expected an array, got {other}")),
    };
    let mut names = std::collections::BTreeSet::new();
    sources
        .iter()
        .enumerate()
        .map(|(n, source)| {
            let at = |e: String| format!("Sources[{n}]: {e}");
            if !source.is_object() {
                return Err(at("expected an object".into()));
            }
            if let Some(key) = unknown_key(source, SOURCE_KEYS) {
                return Err(at(format!("invalid config key {key:?}")));
            }
            refuse_permissions(source).map_err(at)?;
            for scope in ["Peer", "SamenessGroup"] {
                if string_field(source, scope)
                    .map_err(at)?
                    .is_some_and(|s| !s.is_empty())
                {
                    return Err(at(format!("{scope} is not supported (one datacenter)")));
                }
            }
            for scope in ["Namespace", "Partition"] {
                if string_field(source, scope)
                    .map_err(at)?
                    .is_some_and(|s| !s.is_empty() && s != "default")
                {
                    return Err(at(format!("{scope} must be \"default\"")));
                }
            }
            if let Some(t) = string_field(source, "Type").map_err(at)? {
                if t != "consul" {
                    return Err(at(format!("Type must be \"consul\", got {t:?}")));
                }
            }
            let name = string_field(source, "Name")
                .map_err(at)?
                .ok_or_else(|| at("Name is required".into()))?;
            intention::validate_name("Name", &name).map_err(at)?;
            if !names.insert(name.clone()) {
                return Err(at(format!("{name:?} is listed twice")));
            }
            Ok(SourceRule {
                name,
                action: action_field(source).map_err(at)?,
                description: string_field(source, "Description")
                    .map_err(at)?
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The entry as Consul's API shows it, from its intentions (`None` when
/// there are none: the entry does not exist).
fn entry_json(destination: &str, intentions: &[&Intention]) -> Option<Value> {
    let first = intentions.first()?;
    // The same indexes `?cas=` is checked against when the entry is written.
    let (create, modify) = entry_indexes(intentions.iter().copied())?;
    // Intentions are listed by source; Consul lists the sources by
    // precedence, highest first (exact names before the wildcard).
    let mut ordered = intentions.to_vec();
    ordered.sort_by_key(|i| std::cmp::Reverse(i.precedence));
    let sources: Vec<Value> = ordered
        .iter()
        .map(|i| {
            json!({
                "Name": i.source_name,
                "Action": i.action,
                "Precedence": i.precedence,
                "Type": i.source_type,
                "Description": i.description,
                "LegacyID": i.id,
                "LegacyCreateTime": i.created_at,
                "LegacyUpdateTime": i.updated_at,
            })
        })
        .collect();
    Some(json!({
        "Kind": SERVICE_INTENTIONS,
        "Name": destination,
        "Sources": sources,
        "Meta": first.meta,
        "CreateIndex": create,
        "ModifyIndex": modify,
    }))
}

/// Every destination's entry, in name order.
fn entries_json(all: &[Intention]) -> Vec<Value> {
    let mut by_destination: std::collections::BTreeMap<&str, Vec<&Intention>> =
        std::collections::BTreeMap::new();
    for i in all {
        by_destination
            .entry(i.destination_name.as_str())
            .or_default()
            .push(i);
    }
    by_destination
        .iter()
        .filter_map(|(d, is)| entry_json(d, is))
        .collect()
}

impl HttpApi {
    /// `/v1/config...`; `rest` is the path after `/v1/config`.
    pub(super) async fn config_entries(&self, call: Call, rest: &str) -> Reply {
        let parts: Vec<String> = match rest
            .trim_start_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .map(super::routes::segment)
            .collect()
        {
            Ok(p) => p,
            Err(r) => return r,
        };
        match (&call.method, parts.as_slice()) {
            (&Method::PUT, []) => self.config_apply(call).await,
            (&Method::GET, [kind]) if kind == SERVICE_INTENTIONS => {
                match self.read_intentions(&call.query).await {
                    Ok((resp, all)) => with_read_headers(json_reply(&entries_json(&all)), &resp),
                    Err(r) => r,
                }
            }
            (&Method::GET, [kind, name]) if kind == SERVICE_INTENTIONS => {
                match self.read_intentions(&call.query).await {
                    Ok((resp, all)) => {
                        let towards: Vec<&Intention> =
                            all.iter().filter(|i| i.destination_name == *name).collect();
                        let body = match entry_json(name, &towards) {
                            Some(entry) => json_reply(&entry),
                            None => not_found(format!(
                                "Config entry not found for \"{SERVICE_INTENTIONS}\" / \"{name}\""
                            )),
                        };
                        with_read_headers(body, &resp)
                    }
                    Err(r) => r,
                }
            }
            (&Method::DELETE, [kind, name]) if kind == SERVICE_INTENTIONS => {
                self.config_delete(name, &call.query).await
            }
            (&Method::GET | &Method::DELETE, [kind, ..]) if kind != SERVICE_INTENTIONS => {
                unsupported_kind(kind)
            }
            (&Method::GET | &Method::PUT | &Method::DELETE, _) => bad_request(format!(
                "expected PUT /v1/config, GET /v1/config/:kind[/:name] or DELETE \
                 /v1/config/:kind/:name, got {} /v1/config{rest}",
                call.method
            )),
            _ => method_not_allowed(),
        }
    }

    async fn config_apply(&self, call: Call) -> Reply {
        let query = call.query;
        let body: Value = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        if !body.is_object() {
            return bad_request("Request decode failed: the body must be a JSON object");
        }
        let kind = match string_field(&body, "Kind") {
            Ok(Some(k)) => k,
            Ok(None) => return bad_request("Kind is required"),
            Err(e) => return bad_request(e),
        };
        if kind != SERVICE_INTENTIONS {
            return unsupported_kind(&kind);
        }
        let name = match string_field(&body, "Name") {
            Ok(Some(n)) => n,
            Ok(None) => return bad_request("Name is required"),
            Err(e) => return bad_request(e),
        };
        if let Err(e) = intention::validate_name("Name", &name) {
            return bad_request(e);
        }
        let (sources, meta) = match (decode_sources(&body), meta_field(&body)) {
            (Ok(s), Ok(m)) => (s, m),
            (Err(e), _) | (_, Err(e)) => return bad_request(e),
        };
        let cas = match query.u64("cas") {
            Ok(c) => c,
            Err(e) => return bad_request(e),
        };
        self.write_bool(
            IntentionCommand::Replace {
                destination: name,
                sources,
                meta,
                cas,
                now_unix: clock::wall_unix_secs(),
            }
            .into(),
        )
        .await
    }

    /// Deletes the entry: every intention towards `name`. With `?cas=`,
    /// only if it matches the entry's `ModifyIndex` (and, as in Consul, a
    /// `cas` of 0 deletes nothing).
    async fn config_delete(&self, name: &str, query: &Query) -> Reply {
        if let Err(e) = intention::validate_name("name", name) {
            return bad_request(e);
        }
        let cas = match query.u64("cas") {
            Ok(Some(0)) => return json_reply(&false),
            Ok(c) => c,
            Err(e) => return bad_request(e),
        };
        let reply = self
            .write_bool(
                IntentionCommand::Replace {
                    destination: name.to_string(),
                    sources: Vec::new(),
                    meta: Default::default(),
                    cas,
                    now_unix: clock::wall_unix_secs(),
                }
                .into(),
            )
            .await;
        if reply.status() != StatusCode::OK || cas.is_some() {
            return reply;
        }
        // Without ?cas Consul answers an empty object.
        let mut plain = json_reply(&json!({}));
        if let Some(index) = reply.headers().get("X-Consul-Index") {
            plain.headers_mut().insert("X-Consul-Index", index.clone());
        }
        plain
    }
}
