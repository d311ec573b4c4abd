//! The session API's JSON: the body of `PUT /v1/session/create` as
//! Consul's clients send it, and the session object as Consul returns it.
//!
//! Consul's decoding has quirks clients depend on, kept here on purpose:
//! field names in any casing (py-consul sends `lockdelay`, the Go client
//! `LockDelay`); `LockDelay` as a Go duration string or a number of
//! nanoseconds, where anything below 1000 is taken as seconds (`15` is
//! 15 s); the legacy `Checks` list adds to the default `serfHealth` node
//! check, while an explicitly empty `Checks` removes every check (what
//! Patroni sends); the TTL is echoed back exactly as written.

use serde::Serialize;
use serde_json::Value;

use crate::definitions::{normalize_keys, parse_go_duration};
use crate::state::catalog::SERF_HEALTH_CHECK;
use crate::state::sessions::{ttl_ms, Behavior, Session, DEFAULT_LOCK_DELAY_NS};

/// The longest session ID the API takes (IDs are 36-byte UUIDs): longer
/// ones are refused before they reach the log.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Why a create body was refused, with the status Consul answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// 400: the body is not what the API takes.
    Decode(String),
    /// 500: the body parsed but the session is invalid (Consul's text,
    /// which Patroni matches by prefix).
    Invalid(String),
}

/// The session `PUT /v1/session/create` asks for, with ID `id`, on
/// `agent_node` unless the body names a node.
pub fn decode_create(body: &Value, agent_node: &str, id: &str) -> Result<Session, CreateError> {
    let body = normalize_keys(body);
    let fields = match &body {
        Value::Null => serde_json::Map::new(),
        Value::Object(m) => m.clone(),
        other => {
            return Err(CreateError::Decode(format!(
                "Request decode failed: expected a JSON object, got {other}"
            )))
        }
    };
    let decode = |m: String| CreateError::Decode(format!("Request decode failed: {m}"));
    let string = |k: &str| -> Result<Option<String>, CreateError> {
        match fields.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(decode(format!("{k}: expected a string, got {other}"))),
        }
    };
    let strings = |k: &str| -> Result<Option<Vec<String>>, CreateError> {
        match fields.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(decode(format!("{k}: expected strings, got {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(decode(format!("{k}: expected a list, got {other}"))),
        }
    };
    let lock_delay_ns = match fields.get("lockdelay") {
        None | Some(Value::Null) => DEFAULT_LOCK_DELAY_NS,
        Some(v) => {
            let ns: i128 = match v {
                Value::String(s) => parse_go_duration(s).map_err(decode)?,
                Value::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_f64().map(|f| f as i128))
                    .ok_or_else(|| decode(format!("LockDelay: {n} is not a duration")))?,
                other => {
                    return Err(decode(format!(
                        "LockDelay: expected a duration, got {other}"
                    )))
                }
            };
            // Consul: "Use the nanosecond value if it is large enough,
            // else assume seconds".
            let ns = if ns < 1_000 { ns * 1_000_000_000 } else { ns };
            u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
        }
    };
    let behavior = match string("behavior")?.as_deref() {
        None | Some("") => Behavior::Release,
        Some(b) => Behavior::parse(b)
            .ok_or_else(|| CreateError::Invalid(format!("Invalid Behavior setting '{b}'")))?,
    };
    let ttl = string("ttl")?.unwrap_or_default();
    ttl_ms(&ttl).map_err(CreateError::Invalid)?;
    let node = string("node")?.unwrap_or_else(|| agent_node.to_string());
    if node.is_empty() {
        return Err(CreateError::Invalid("Must provide Node".into()));
    }
    let service_checks = match fields.get("servicechecks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v.get("id") {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(decode(format!("ServiceChecks: {v} has no string ID"))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(decode(format!(
                "ServiceChecks: expected a list, got {other}"
            )))
        }
    };
    // Consul's `fixupEmptySessionChecks`, on its defaults.
    let default = vec![SERF_HEALTH_CHECK.to_string()];
    // Go decodes `"Checks": null` into a nil slice: no checks at all.
    let checks = match fields.get("checks") {
        Some(Value::Null) => Some(Vec::new()),
        _ => strings("checks")?,
    };
    let mut node_checks = strings("nodechecks")?.unwrap_or_else(|| default.clone());
    let legacy = match checks {
        Some(c) if c.is_empty() => {
            node_checks.clear();
            Vec::new()
        }
        Some(c) if c == default || node_checks.is_empty() => Vec::new(),
        Some(c) => c,
        None => Vec::new(),
    };
    for c in legacy {
        if !node_checks.contains(&c) {
            node_checks.push(c);
        }
    }
    Ok(Session {
        id: id.to_string(),
        name: string("name")?.unwrap_or_default(),
        node,
        lock_delay_ns,
        behavior,
        ttl,
        node_checks,
        service_checks,
        create_index: 0,
        modify_index: 0,
    })
}

/// A session as Consul's API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionJson {
    /// `ID`.
    #[serde(rename = "ID")]
    pub id: String,
    /// `Name`.
    pub name: String,
    /// `Node`.
    pub node: String,
    /// `LockDelay`, in nanoseconds.
    pub lock_delay: u64,
    /// `release` or `delete`.
    pub behavior: &'static str,
    /// As the client wrote it.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// `null` when empty, as Go encodes a nil slice.
    pub node_checks: Option<Vec<String>>,
    /// `null` when empty.
    pub service_checks: Option<Vec<ServiceCheckJson>>,
    /// `CreateIndex`.
    pub create_index: u64,
    /// `ModifyIndex`.
    pub modify_index: u64,
}

/// One entry of `ServiceChecks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheckJson {
    /// The check's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Always empty (no namespaces here, as in Consul CE).
    pub namespace: String,
}

impl From<&Session> for SessionJson {
    fn from(s: &Session) -> Self {
        SessionJson {
            id: s.id.clone(),
            name: s.name.clone(),
            node: s.node.clone(),
            lock_delay: s.lock_delay_ns,
            behavior: s.behavior.as_str(),
            ttl: s.ttl.clone(),
            node_checks: (!s.node_checks.is_empty()).then(|| s.node_checks.clone()),
            service_checks: (!s.service_checks.is_empty()).then(|| {
                s.service_checks
                    .iter()
                    .map(|id| ServiceCheckJson {
                        id: id.clone(),
                        namespace: String::new(),
                    })
                    .collect()
            }),
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(body: Value) -> Result<Session, CreateError> {
        decode_create(&body, "fcs00", "id-1")
    }

    #[test]
    fn an_empty_body_gives_consuls_defaults() {
        let s = create(Value::Null).unwrap();
        assert_eq!(s.node, "fcs00");
        assert_eq!(s.lock_delay_ns, 15_000_000_000);
        assert_eq!(s.behavior, Behavior::Release);
        assert_eq!(s.ttl, "");
        assert_eq!(s.node_checks, ["serfHealth"]);
        assert!(s.service_checks.is_empty());
    }

    #[test]
    fn every_casing_and_lock_delay_form_is_read() {
        let s =
            create(json!({"name": "n", "lockdelay": "0.001s", "behavior": "delete", "ttl": "30s"}))
                .unwrap();
        assert_eq!(
            (s.name.as_str(), s.lock_delay_ns, s.behavior),
            ("n", 1_000_000, Behavior::Delete)
        );
        assert_eq!(s.ttl, "30s");
        assert_eq!(
            create(json!({"LockDelay": 15})).unwrap().lock_delay_ns,
            15_000_000_000
        );
        assert_eq!(
            create(json!({"LockDelay": 2_000_000_000u64}))
                .unwrap()
                .lock_delay_ns,
            2_000_000_000
        );
        assert_eq!(
            create(json!({"LockDelay": "500us"})).unwrap().lock_delay_ns,
            500_000
        );
        assert_eq!(create(json!({"LockDelay": 0})).unwrap().lock_delay_ns, 0);
    }

    #[test]
    fn checks_follow_consuls_fixup() {
        let node_checks = |b: Value| create(b).unwrap().node_checks;
        assert!(
            node_checks(json!({"checks": []})).is_empty(),
            "Patroni's form"
        );
        assert!(node_checks(json!({"Checks": null})).is_empty());
        assert!(node_checks(json!({"NodeChecks": []})).is_empty());
        assert_eq!(node_checks(json!({"Checks": ["a"]})), ["serfHealth", "a"]);
        assert_eq!(node_checks(json!({"NodeChecks": ["a"]})), ["a"]);
        assert_eq!(
            node_checks(json!({"Checks": ["serfHealth"]})),
            ["serfHealth"]
        );
        let s = create(json!({"ServiceChecks": [{"ID": "service:fcs", "Namespace": ""}]})).unwrap();
        assert_eq!(s.service_checks, ["service:fcs"]);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong_with_consuls_status() {
        let err = |b: Value| create(b).unwrap_err();
        assert!(
            matches!(err(json!({"TTL": 30})), CreateError::Decode(m) if m.contains("ttl: expected a string"))
        );
        assert!(
            matches!(err(json!({"LockDelay": "5"})), CreateError::Decode(m) if m.contains("missing unit in duration"))
        );
        assert!(matches!(err(json!([1])), CreateError::Decode(_)));
        assert_eq!(
            err(json!({"TTL": "5s"})),
            CreateError::Invalid(
                "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]".into()
            )
        );
        assert_eq!(
            err(json!({"Behavior": "Release"})),
            CreateError::Invalid("Invalid Behavior setting 'Release'".into())
        );
        assert_eq!(
            err(json!({"Node": ""})),
            CreateError::Invalid("Must provide Node".into())
        );
    }

    #[test]
    fn the_json_is_consuls() {
        let mut s = create(json!({"Name": "test-session", "TTL": "30s"})).unwrap();
        s.create_index = 7;
        s.modify_index = 7;
        assert_eq!(
            serde_json::to_string(&SessionJson::from(&s)).unwrap(),
            r#"{"ID":"id-1","Name":"test-session","Node":"fcs00","LockDelay":15000000000,"Behavior":"release","TTL":"30s","NodeChecks":["serfHealth"],"ServiceChecks":null,"CreateIndex":7,"ModifyIndex":7}"#
        );
    }
}
