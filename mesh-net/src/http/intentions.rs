//! `/v1/connect/intentions` (exact-match and legacy ID forms, `check`,
//! `match`) and `/v1/agent/connect/authorize`.
//!
//! Reads go through the normal consistency modes and blocking parameters.
//! `authorize` is the sidecars' question and must keep being answered
//! when no server is reachable: it reads with `?stale` (any server) and
//! falls back to the agent's last copy of the intentions
//! ([`IntentionCache`]), as Consul's agent answers from its cache.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::{Method, StatusCode};
use mesh_core::connect::intention::{self, Action, Intention};
use mesh_core::connect::SpiffeId;
use mesh_core::definitions::normalize_key;
use mesh_core::state::IntentionCommand;
use mesh_core::wire::{Consistency, Query as ReadQuery, QueryResult, ReadRequest};
use serde_json::{json, Value};

use super::params::Query;
use super::reply::{
    bad_request, json_reply, method_not_allowed, not_found, read_json, text, with_read_headers,
    Reply,
};
use super::routes::{Call, HttpApi};
use crate::clock;
use crate::mutants::{self, Mutant};

/// How long `authorize` waits for a server before answering from the
/// cache: a sidecar holds a connection open while it asks.
const AUTHORIZE_READ_MS: u64 = 500;

/// The agent's last successful read of every intention, with its index.
#[derive(Default)]
pub struct IntentionCache {
    last: Mutex<Option<(u64, Vec<Intention>)>>,
}

impl IntentionCache {
    fn store(&self, index: u64, intentions: &[Intention]) {
        let mut last = self.last.lock().expect("intention cache lock");
        if last.as_ref().is_none_or(|(i, _)| *i <= index) {
            *last = Some((index, intentions.to_vec()));
        }
    }

    fn load(&self) -> Option<(u64, Vec<Intention>)> {
        self.last.lock().expect("intention cache lock").clone()
    }

    fn is_empty(&self) -> bool {
        self.last.lock().expect("intention cache lock").is_none()
    }
}

/// A value of a JSON object by Consul's rules for request bodies: the
/// field name matched as `mesh_core::definitions` matches every body's
/// keys (any case, underscores ignored).
pub(super) fn field<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    let wanted = normalize_key(name);
    body.as_object()?
        .iter()
        .find(|(k, _)| normalize_key(k) == wanted)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

pub(super) fn string_field(body: &Value, name: &str) -> Result<Option<String>, String> {
    match field(body, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{name}: expected a string, got {other}")),
    }
}

/// What an intention write carries besides its pair.
struct IntentionBody {
    action: Action,
    description: String,
    meta: BTreeMap<String, String>,
}

fn decode_body(body: &Value) -> Result<IntentionBody, String> {
    if !body.is_object() {
        return Err("Request decode failed: the body must be a JSON object".into());
    }
    refuse_permissions(body)?;
    if let Some(t) = string_field(body, "SourceType")? {
        if t != "consul" {
            return Err(format!("SourceType must be \"consul\", got {t:?}"));
        }
    }
    Ok(IntentionBody {
        action: action_field(body)?,
        description: string_field(body, "Description")?.unwrap_or_default(),
        meta: meta_field(body)?,
    })
}

/// Refuses non-empty `Permissions`: layer-7 intentions need an HTTP-aware
/// proxy, and the sidecars forward bytes.
pub(super) fn refuse_permissions(body: &Value) -> Result<(), String> {
    if field(body, "Permissions").is_some_and(|p| p.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(
            "Permissions (L7 intentions) are not supported: use Action allow or deny".into(),
        );
    }
    Ok(())
}

/// `Action`: `allow` or `deny` (any case), required.
pub(super) fn action_field(body: &Value) -> Result<Action, String> {
    match string_field(body, "Action")?.as_deref() {
        Some(a) if a.eq_ignore_ascii_case("allow") => Ok(Action::Allow),
        Some(a) if a.eq_ignore_ascii_case("deny") => Ok(Action::Deny),
        Some(a) => Err(format!("Action must be \"allow\" or \"deny\", got {a:?}")),
        None => Err("Action is required (\"allow\" or \"deny\")".into()),
    }
}

/// `Meta`: an object of strings, or absent.
pub(super) fn meta_field(body: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut meta = BTreeMap::new();
    match field(body, "Meta") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(format!("Meta[{k:?}]: expected a string, got {v}"));
                };
                meta.insert(k.clone(), v.clone());
            }
        }
        Some(other) => return Err(format!("Meta: expected an object, got {other}")),
    }
    Ok(meta)
}

/// `?source=&destination=`, both required.
fn pair(query: &Query) -> Result<(String, String), Reply> {
    let get = |k: &str| {
        query
            .get(k)
            .map(str::to_owned)
            .ok_or_else(|| bad_request(format!("required query parameter '{k}' not set")))
    };
    let (s, d) = (get("source")?, get("destination")?);
    intention::validate_name("source", &s).map_err(bad_request)?;
    intention::validate_name("destination", &d).map_err(bad_request)?;
    Ok((s, d))
}

impl HttpApi {
    /// `/v1/connect/intentions...`; `rest` is the path after
    /// `/v1/connect/intentions`.
    pub(super) async fn intentions(&self, call: Call, rest: &str) -> Reply {
        match (call.method.clone(), rest) {
            (Method::GET, "" | "/") => self.intention_list(&call.query).await,
            (Method::POST, "" | "/") => self.intention_create_legacy(call).await,
            (Method::GET, "/exact") => {
                let (s, d) = match pair(&call.query) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                self.intention_get(&call.query, |i| {
                    i.source_name == s && i.destination_name == d
                })
                .await
            }
            (Method::PUT, "/exact") => {
                let (s, d) = match pair(&call.query) {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                self.intention_put(call, s, d).await
            }
            (Method::DELETE, "/exact") => match pair(&call.query) {
                Ok((source, destination)) => {
                    self.write_bool(
                        IntentionCommand::Delete {
                            source,
                            destination,
                        }
                        .into(),
                    )
                    .await
                }
                Err(r) => r,
            },
            (Method::GET, "/check") => self.intention_check(&call.query).await,
            (Method::GET, "/match") => self.intention_match(&call.query).await,
            (m, id) if id.len() > 1 && !id[1..].contains('/') => {
                let id = id[1..].to_owned();
                match m {
                    Method::GET => self.intention_get(&call.query, |i| i.id == id).await,
                    Method::DELETE => self.intention_delete_by_id(&id).await,
                    Method::PUT => self.intention_update_by_id(call, &id).await,
                    _ => method_not_allowed(),
                }
            }
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }

    /// Every intention, with the request's consistency and blocking
    /// parameters; refreshes the agent's cache.
    pub(super) async fn read_intentions(
        &self,
        query: &Query,
    ) -> Result<(mesh_core::wire::ReadResponse, Vec<Intention>), Reply> {
        let resp = self.read(query, ReadQuery::Intentions).await?;
        let QueryResult::Intentions(all) = &resp.result else {
            return Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "an intentions read was answered with another table",
            ));
        };
        let all = all.clone();
        self.intention_cache.store(resp.index, &all);
        Ok((resp, all))
    }

    async fn intention_list(&self, query: &Query) -> Reply {
        match self.read_intentions(query).await {
            Ok((resp, all)) => {
                let rows: Vec<Value> = intention::sorted(all.iter())
                    .iter()
                    .map(|i| json!(i))
                    .collect();
                match super::catalog::filter_rows(query, rows) {
                    Ok(rows) => with_read_headers(json_reply(&rows), &resp),
                    Err(r) => r,
                }
            }
            Err(r) => r,
        }
    }

    async fn intention_get(&self, query: &Query, pick: impl Fn(&Intention) -> bool) -> Reply {
        match self.read_intentions(query).await {
            Ok((resp, all)) => match all.iter().find(|i| pick(i)) {
                Some(i) => with_read_headers(json_reply(i), &resp),
                None => with_read_headers(not_found("Intention not found"), &resp),
            },
            Err(r) => r,
        }
    }

    async fn intention_put(&self, call: Call, source: String, destination: String) -> Reply {
        let body = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        match decode_body(&body) {
            Ok(b) => self.write_intention(source, destination, b).await,
            Err(e) => bad_request(e),
        }
    }

    async fn write_intention(
        &self,
        source: String,
        destination: String,
        b: IntentionBody,
    ) -> Reply {
        let now_unix = clock::wall_unix_secs();
        self.write_bool(
            IntentionCommand::Upsert {
                source,
                destination,
                action: b.action,
                description: b.description,
                meta: b.meta,
                now_unix,
            }
            .into(),
        )
        .await
    }

    /// `POST /v1/connect/intentions` (Consul's deprecated create): the
    /// pair in the body; answers `{"ID": ...}`. Refuses a pair that
    /// already has an intention, as Consul does.
    async fn intention_create_legacy(&self, call: Call) -> Reply {
        let body = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (source, destination) = match names_in_body(&body) {
            Ok(p) => p,
            Err(e) => return bad_request(e),
        };
        let b = match decode_body(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(e),
        };
        match self.read_intentions(&consistent()).await {
            Ok((_, all)) => {
                if all
                    .iter()
                    .any(|i| i.source_name == source && i.destination_name == destination)
                {
                    return text(
                        StatusCode::CONFLICT,
                        format!(
                            "duplicate intention found: {source} => {destination} already \
                             has an intention; update it with PUT \
                             /v1/connect/intentions/exact"
                        ),
                    );
                }
            }
            Err(r) => return r,
        }
        let written = self
            .write_intention(source.clone(), destination.clone(), b)
            .await;
        if written.status() != StatusCode::OK {
            return written;
        }
        match self.read_intentions(&consistent()).await {
            Ok((_, all)) => match all
                .iter()
                .find(|i| i.source_name == source && i.destination_name == destination)
            {
                Some(i) => json_reply(&json!({ "ID": i.id })),
                None => text(
                    StatusCode::CONFLICT,
                    "the intention was written and removed again before it could be read",
                ),
            },
            Err(r) => r,
        }
    }

    async fn intention_update_by_id(&self, call: Call, id: &str) -> Reply {
        let body = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let b = match decode_body(&body) {
            Ok(b) => b,
            Err(e) => return bad_request(e),
        };
        let existing = match self.read_intentions(&consistent()).await {
            Ok((_, all)) => all.into_iter().find(|i| i.id == id),
            Err(r) => return r,
        };
        let Some(existing) = existing else {
            return not_found("Intention not found");
        };
        if let Ok((s, d)) = names_in_body(&body) {
            if (s.as_str(), d.as_str())
                != (
                    existing.source_name.as_str(),
                    existing.destination_name.as_str(),
                )
            {
                return bad_request(
                    "changing an intention's source or destination is not supported: delete \
                     it and create the new pair",
                );
            }
        }
        self.write_intention(existing.source_name, existing.destination_name, b)
            .await
    }

    async fn intention_delete_by_id(&self, id: &str) -> Reply {
        let existing = match self.read_intentions(&consistent()).await {
            Ok((_, all)) => all.into_iter().find(|i| i.id == id),
            Err(r) => return r,
        };
        match existing {
            Some(i) => {
                self.write_bool(
                    IntentionCommand::Delete {
                        source: i.source_name,
                        destination: i.destination_name,
                    }
                    .into(),
                )
                .await
            }
            None => not_found("Intention not found"),
        }
    }

    async fn intention_check(&self, query: &Query) -> Reply {
        let (s, d) = match pair(query) {
            Ok(p) => p,
            Err(r) => return r,
        };
        match self.read_intentions(query).await {
            Ok((resp, all)) => {
                let decision = intention::decide(&all, &s, &d, self.config.default_intention_allow);
                with_read_headers(json_reply(&json!({ "Allowed": decision.allowed })), &resp)
            }
            Err(r) => r,
        }
    }

    async fn intention_match(&self, query: &Query) -> Reply {
        let by = query.get("by").unwrap_or_default().to_owned();
        if by != "source" && by != "destination" {
            return bad_request("required query parameter 'by' must be 'source' or 'destination'");
        }
        let names = query.all("name").to_vec();
        if names.is_empty() {
            return bad_request("required query parameter 'name' not set");
        }
        let matches = |all: &[Intention]| {
            let mut out = serde_json::Map::new();
            for name in &names {
                let matches = if by == "source" {
                    intention::match_source(all, name)
                } else {
                    intention::match_destination(all, name)
                };
                out.insert(name.clone(), json!(matches));
            }
            json_reply(&Value::Object(out))
        };
        // `?cached` (Consul's agent cache): a question without an index is
        // answered from the agent's copy when it has one, and a blocking
        // one from the copy when no server answers and the copy is newer
        // than the caller's. A sidecar started while no server answers
        // then decides as the agent last knew (it refused everyone).
        let cached = query.has("cached") && !mutants::enabled(Mutant::IntentionCacheIgnored);
        let min_index = query.u64("index").ok().flatten().unwrap_or(0);
        let from_cache = |hit: (u64, Vec<Intention>)| {
            let mut reply = matches(&hit.1);
            let h = reply.headers_mut();
            h.insert("X-Cache", hyper::header::HeaderValue::from_static("HIT"));
            h.insert("X-Consul-Index", hyper::header::HeaderValue::from(hit.0));
            h.insert(
                "X-Consul-KnownLeader",
                hyper::header::HeaderValue::from_static("false"),
            );
            reply
        };
        if cached && min_index == 0 {
            if let Some(hit) = self.intention_cache.load() {
                return from_cache(hit);
            }
        }
        if cached && min_index > 0 && self.intention_cache.is_empty() {
            // A watcher that outlived this agent (a sidecar across the
            // agent's restart) blocks on an index it already has: fill the
            // copy now (same consistency, no waiting), not when the
            // intentions next change, so that a server outage after the
            // restart finds one.
            let _ = self.read_intentions(&query.without_blocking()).await;
        }
        match self.read_intentions(query).await {
            Ok((resp, all)) => {
                let mut reply = with_read_headers(matches(&all), &resp);
                if cached {
                    let miss = hyper::header::HeaderValue::from_static("MISS");
                    reply.headers_mut().insert("X-Cache", miss);
                }
                reply
            }
            Err(r) if cached => match self.intention_cache.load() {
                Some(hit) if hit.0 > min_index => from_cache(hit),
                _ => r,
            },
            Err(r) => r,
        }
    }

    /// `POST /v1/agent/connect/authorize`: may a client presenting
    /// `ClientCertURI` connect to `Target`?
    pub(super) async fn agent_authorize(&self, call: Call) -> Reply {
        let body = match read_json(call.req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let target = match string_field(&body, "Target") {
            Ok(Some(t)) if !t.is_empty() => t,
            Ok(_) => return bad_request("Target service must be specified"),
            Err(e) => return bad_request(e),
        };
        let uri = match string_field(&body, "ClientCertURI") {
            Ok(Some(u)) if !u.is_empty() => u,
            Ok(_) => return bad_request("ClientCertURI must be specified"),
            Err(e) => return bad_request(e),
        };
        let source = match uri.parse::<SpiffeId>() {
            Ok(id) => id,
            Err(e) => return bad_request(format!("ClientCertURI: {e}")),
        };
        let all = match self.intentions_for_authorize().await {
            Some(all) => all,
            None => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no server answered and this agent has no cached intentions yet: cannot \
                     decide",
                )
            }
        };
        let d = intention::decide(
            &all,
            &source.service,
            &target,
            self.config.default_intention_allow,
        );
        json_reply(&json!({ "Authorized": d.allowed, "Reason": d.reason }))
    }

    /// Every intention from any server (stale is fine: the sidecar's own
    /// cache is refreshed by blocking queries), or the agent's cache when
    /// no server answers in time.
    async fn intentions_for_authorize(&self) -> Option<Vec<Intention>> {
        let request = ReadRequest {
            query: ReadQuery::Intentions,
            consistency: Consistency::Stale,
            min_index: 0,
            wait_ms: 0,
        };
        let read = clock::timeout(
            std::time::Duration::from_millis(AUTHORIZE_READ_MS),
            self.cluster.read(request),
        )
        .await;
        if let Ok(Ok(resp)) = read {
            if let QueryResult::Intentions(all) = resp.result {
                self.intention_cache.store(resp.index, &all);
                return Some(all);
            }
        }
        self.intention_cache.load().map(|(_, all)| all)
    }
}

/// The request's parameters with `?consistent`: a read-modify-write must
/// see the latest state.
fn consistent() -> Query {
    Query::parse(Some("consistent")).expect("a constant query string parses")
}

fn names_in_body(body: &Value) -> Result<(String, String), String> {
    let source =
        string_field(body, "SourceName")?.ok_or_else(|| "SourceName is required".to_owned())?;
    let destination = string_field(body, "DestinationName")?
        .ok_or_else(|| "DestinationName is required".to_owned())?;
    intention::validate_name("SourceName", &source)?;
    intention::validate_name("DestinationName", &destination)?;
    Ok((source, destination))
}
