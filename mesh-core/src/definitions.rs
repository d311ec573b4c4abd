//! Service and check definitions as users write them, decoded the way
//! Consul accepts them: the bodies of `PUT /v1/agent/service/register`,
//! `PUT /v1/agent/check/register`, `PUT /v1/catalog/register` and
//! `PUT /v1/catalog/deregister`, and agent configuration files (JSON, and
//! HCL through the `hcl-rs` crate). Pure: input is a parsed
//! [`serde_json::Value`] or file text, output is typed definitions or a
//! [`DefinitionError`] whose text is fit for an HTTP 400 body.
//!
//! # Field names
//!
//! Consul decodes JSON with Go's `encoding/json`, which matches field names
//! case-insensitively, and translates snake_case aliases first
//! (`lib.TranslateKeys`). Here every object key is normalized the same way
//! before decoding ([`normalize_keys`]): lowercased with underscores removed,
//! so `ServiceID`, `service_id` and `serviceid` are one field, as are
//! `DeregisterCriticalServiceAfter` and `deregister_critical_service_after`.
//! Aliases Consul keeps are accepted too: `Args`/`ScriptArgs`/`script_args`
//! for a script check's arguments, `ID`/`CheckID`/`check_id` for an agent
//! check's id. The keys of user maps are data and stay verbatim: `Meta`,
//! `NodeMeta`, `ServiceMeta`, `TaggedAddresses`, `Header` and proxy
//! `Config`. Unknown fields are ignored, as Go ignores them; `null` reads as
//! an absent field, as it does in Go.
//!
//! # Values
//!
//! Types are strict, as in Go: a port is a JSON number, not `"80"`, and a
//! wrong type names the field: `Request decode failed: Port: expected a
//! number, got "abc"`. Durations (`TTL`, `Interval`, `Timeout`,
//! `DeregisterCriticalServiceAfter`) are Go duration strings (`"10s"`,
//! `"1m30s"`, `"500ms"`, `"1.5h"`) or plain numbers of nanoseconds, as
//! Consul's `CheckType` decoding accepts; they are kept in milliseconds,
//! rounded up so a positive duration stays positive, and a duration of zero
//! or less reads as unset (Go treats `<= 0` as unset everywhere here).
//!
//! # Differences from Consul
//!
//! - Check kinds: TTL, HTTP, TCP and script (`Args`) only. A check using
//!   gRPC, Docker, alias, H2PING, UDP, OS-service or the old `Script` fields
//!   is rejected with a clear error instead of being registered and never
//!   run. Exactly one of `TTL`, `HTTP`, `TCP`, `Args` may be set (Consul
//!   picks the first by its own order).
//! - Service kinds: typical (`""`) and `connect-proxy` only; upstream
//!   destination type `service` only.
//! - `PUT /v1/catalog/register`: a check whose `Node` names another node
//!   is refused (Consul would write it to that node); a catalog check's id
//!   is `CheckID` only, as in Consul's `HealthCheck` (`ID` is ignored there),
//!   and its `Definition` is ignored.
//! - A service's `TaggedAddresses`, `Proxy.Config`, `Proxy.Expose`,
//!   `Proxy.Mode` and similar are not modelled and ignored.
//! - `Weights` with only one of `Passing`/`Warning` gives 1 for the other
//!   (Consul's config files do this; its HTTP API gives 0 for a missing
//!   `Warning`).
//! - When two keys of one object normalize to the same name (`Name` and
//!   `name`), the one sorting last in byte order wins (`name`); Go keeps the
//!   later one in the document. Do not send both.
//! - Sidecars: a sidecar listens on its own `port` if given, else on
//!   [`DEFAULT_SIDECAR_PORT`] (9191, this project's proxy port), where Consul
//!   allocates one from 21000-21255. No default sidecar checks are added.
//! - Config files: only the fields of [`AgentFileConfig`] are read; unknown
//!   keys are ignored (Consul rejects them). HCL is parsed as HCL 2 by
//!   `hcl-rs`; Consul uses HCL 1, which also allows several attributes on
//!   one line (`check { http = "x" interval = "10s" }`): write one per line.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::state::catalog::{
    CheckStatus, HealthCheck, Node, NodeService, ProxyConfig, Registration, Upstream, Weights,
};

/// The port a sidecar proxy listens on unless its definition names one
/// (Consul allocates from 21000; this project's sidecars use 9191).
pub const DEFAULT_SIDECAR_PORT: u16 = 9191;

/// Address a sidecar reaches its application on unless told otherwise.
pub const DEFAULT_LOCAL_SERVICE_ADDRESS: &str = "127.0.0.1";

/// Normalized keys whose values are user maps: their keys are data and are
/// kept verbatim.
const DATA_MAPS: &[&str] = &[
    "meta",
    "nodemeta",
    "servicemeta",
    "taggedaddresses",
    "header",
    "config",
];

/// Why a definition was refused. Every variant is a request the client must
/// fix (HTTP 400); the text says what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefinitionError {
    /// The text is not JSON or HCL.
    Syntax(String),
    /// A field has the wrong type or an unreadable value. `field` is the
    /// path in Consul's spelling (`Check.Interval`, `Checks[1].TTL`), empty
    /// for the whole document.
    Decode {
        /// Where.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// Well-formed but not valid (missing name, bad check); the text is
    /// Consul's where Consul has one.
    Invalid(String),
    /// A configuration file was refused.
    File {
        /// The file's name.
        file: String,
        /// Why, the text of the underlying error.
        message: String,
    },
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefinitionError::Syntax(m) => write!(f, "Request decode failed: {m}"),
            DefinitionError::Decode { field, message } if field.is_empty() => {
                write!(f, "Request decode failed: {message}")
            }
            DefinitionError::Decode { field, message } => {
                write!(f, "Request decode failed: {field}: {message}")
            }
            DefinitionError::Invalid(m) => f.write_str(m),
            DefinitionError::File { file, message } => write!(f, "{file}: {message}"),
        }
    }
}

impl std::error::Error for DefinitionError {}

fn invalid(m: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid(m.into())
}

// ---------------------------------------------------------------------------
// Key normalization

/// A key as Consul matches it: lowercase, underscores removed.
pub fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// `value` with every object key normalized ([`normalize_key`]), recursively,
/// except the keys inside user maps (`Meta`, `NodeMeta`, `ServiceMeta`,
/// `TaggedAddresses`, `Header`, `Config`), which are data and are kept
/// verbatim together with everything below them. Where two keys normalize
/// alike, the one last in byte order wins.
pub fn normalize_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = normalize_key(k);
                let v = if DATA_MAPS.contains(&key.as_str()) {
                    v.clone()
                } else {
                    normalize_keys(v)
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize_keys).collect()),
        other => other.clone(),
    }
}

/// Parses a request body as JSON (the HTTP layer's first step).
pub fn parse_body(body: &[u8]) -> Result<Value, DefinitionError> {
    serde_json::from_slice(body).map_err(|e| DefinitionError::Syntax(e.to_string()))
}

// ---------------------------------------------------------------------------
// Typed access to a normalized object

/// A short rendering of a JSON value for error messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let cut: String = s.chars().take(37).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn decode_err(field: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError::Decode {
        field: field.to_string(),
        message: message.into(),
    }
}

fn expected(field: &str, what: &str, got: &Value) -> DefinitionError {
    decode_err(field, format!("expected {what}, got {}", show(got)))
}

/// A normalized JSON object with the path it was found at.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// An object at `path`. A one-element list of objects also reads as
    /// that object: HCL writes a block as such a list (Consul's
    /// `HookWeakDecodeFromSlice`).
    fn new(v: &'a Value, path: &str) -> Result<Obj<'a>, DefinitionError> {
        match v {
            Value::Object(map) => Ok(Obj {
                map,
                path: path.to_string(),
            }),
            Value::Array(items) if items.len() == 1 && items[0].is_object() => {
                Obj::new(&items[0], path)
            }
            other => Err(expected(path, "an object", other)),
        }
    }

    /// The first non-null value among `names` (Consul spellings; matched
    /// normalized), with its field path.
    fn get(&self, names: &[&str]) -> Option<(String, &'a Value)> {
        names
            .iter()
            .find_map(|n| match self.map.get(&normalize_key(n)) {
                None | Some(Value::Null) => None,
                Some(v) => Some((join(&self.path, n), v)),
            })
    }

    fn string(&self, names: &[&str]) -> Result<Option<String>, DefinitionError> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((f, v)) => Err(expected(&f, "a string", v)),
        }
    }

    fn str_or_empty(&self, names: &[&str]) -> Result<String, DefinitionError> {
        Ok(self.string(names)?.unwrap_or_default())
    }

    fn bool(&self, names: &[&str]) -> Result<Option<bool>, DefinitionError> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((f, v)) => Err(expected(&f, "true or false", v)),
        }
    }

    fn uint(&self, names: &[&str], max: u64) -> Result<Option<u64>, DefinitionError> {
        match self.get(names) {
            None => Ok(None),
            Some((f, v)) => match integer(v) {
                Some(n) if (0..=max as i128).contains(&n) => Ok(Some(n as u64)),
                Some(_) => Err(decode_err(
                    &f,
                    format!("expected a number from 0 to {max}, got {}", show(v)),
                )),
                None => Err(expected(&f, "a number", v)),
            },
        }
    }

    fn port(&self, names: &[&str]) -> Result<Option<u16>, DefinitionError> {
        Ok(self.uint(names, u16::MAX as u64)?.map(|n| n as u16))
    }

    fn u32(&self, names: &[&str]) -> Result<Option<u32>, DefinitionError> {
        Ok(self.uint(names, u32::MAX as u64)?.map(|n| n as u32))
    }

    fn strings(&self, names: &[&str]) -> Result<Vec<String>, DefinitionError> {
        match self.get(names) {
            None => Ok(Vec::new()),
            Some((f, v)) => string_list(&f, v),
        }
    }

    fn string_map(&self, names: &[&str]) -> Result<BTreeMap<String, String>, DefinitionError> {
        let Some((f, v)) = self.get(names) else {
            return Ok(BTreeMap::new());
        };
        let map = Obj::new(v, &f)?.map;
        let mut out = BTreeMap::new();
        for (k, v) in map {
            match v {
                Value::String(s) => {
                    out.insert(k.clone(), s.clone());
                }
                other => return Err(expected(&format!("{f}[{k:?}]"), "a string", other)),
            }
        }
        Ok(out)
    }

    fn duration_ms(&self, names: &[&str]) -> Result<Option<u64>, DefinitionError> {
        match self.get(names) {
            None => Ok(None),
            Some((f, v)) => duration_value_ms(v).map_err(|m| decode_err(&f, m)),
        }
    }

    /// The objects under `names`: a list of objects, or one object.
    fn objects(&self, names: &[&str]) -> Result<Vec<Obj<'a>>, DefinitionError> {
        match self.get(names) {
            None => Ok(Vec::new()),
            Some((f, Value::Array(items))) => items
                .iter()
                .enumerate()
                .map(|(i, item)| Obj::new(item, &format!("{f}[{i}]")))
                .collect(),
            Some((f, v)) => Ok(vec![Obj::new(v, &f)?]),
        }
    }

    fn object(&self, names: &[&str]) -> Result<Option<Obj<'a>>, DefinitionError> {
        match self.get(names) {
            None => Ok(None),
            Some((f, v)) => Obj::new(v, &f).map(Some),
        }
    }
}

/// An integral JSON number (Go decodes `80.0` into an int, not `80.5`).
fn integer(v: &Value) -> Option<i128> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i as i128);
    }
    if let Some(u) = n.as_u64() {
        return Some(u as i128);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
}

fn string_list(field: &str, v: &Value) -> Result<Vec<String>, DefinitionError> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(expected(&format!("{field}[{i}]"), "a string", other)),
            })
            .collect(),
        other => Err(expected(field, "a list of strings", other)),
    }
}

// ---------------------------------------------------------------------------
// Durations

/// Parses a Go duration string (`time.ParseDuration`) into nanoseconds:
/// `"300ms"`, `"-1.5h"`, `"2h45m"`, `"0"`; units `ns`, `us` (`µs`, `μs`),
/// `ms`, `s`, `m`, `h`. Errors carry Go's text.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        let mut value: i128 = 0;
        for d in int_part.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add((d - b'0') as i128))
                .filter(|v| *v <= i64::MAX as i128)
                .ok_or_else(bad)?;
        }
        let mut part = value.checked_mul(scale).ok_or_else(bad)?;
        // Fraction digits beyond nanosecond precision add nothing.
        let mut div: i128 = 1;
        let mut frac: i128 = 0;
        for d in frac_part.bytes().take(18) {
            frac = frac * 10 + (d - b'0') as i128;
            div *= 10;
        }
        part += frac * scale / div;
        total = total.checked_add(part).ok_or_else(bad)?;
        if total > i64::MAX as i128 {
            return Err(bad());
        }
    }
    Ok(if negative { -total } else { total })
}

/// Nanoseconds to milliseconds, rounded up; `None` for zero or less.
fn ns_to_ms(ns: i128) -> Option<u64> {
    (ns > 0).then(|| ((ns + 999_999) / 1_000_000).min(u64::MAX as i128) as u64)
}

/// A duration field's value: a Go duration string, or a number of
/// nanoseconds (Consul's `CheckType` JSON decoding).
fn duration_value_ms(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::String(s) => parse_go_duration(s).map(ns_to_ms),
        Value::Number(n) => {
            let ns = if let Some(i) = n.as_i64() {
                i as i128
            } else if let Some(u) = n.as_u64() {
                u as i128
            } else {
                let f = n.as_f64().unwrap_or(0.0);
                if !f.is_finite() || f.abs() > 9.2e18 {
                    return Err(format!("duration out of range: {n}"));
                }
                f as i128
            };
            Ok(ns_to_ms(ns))
        }
        other => Err(format!(
            "expected a duration such as \"10s\", got {}",
            show(other)
        )),
    }
}

// ---------------------------------------------------------------------------
// Checks

/// What a check does, derived from which fields are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Passes while the application keeps reporting within `TTL`.
    Ttl,
    /// `GET`s (or `Method`s) `HTTP` every `Interval`: 2xx passing, 429
    /// warning, anything else critical.
    Http,
    /// Connects to `TCP` every `Interval`.
    Tcp,
    /// Runs `Args` every `Interval`: exit 0 passing, 1 warning, else
    /// critical (needs `enable_script_checks`).
    Script,
}

impl CheckKind {
    /// The `Type` Consul reports: `ttl`, `http`, `tcp`, `script`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Ttl => "ttl",
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Script => "script",
        }
    }
}

/// A check as written: in `PUT /v1/agent/check/register`, in a service's
/// `Check`/`Checks`, or in a config file's `check`/`checks`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckDefinition {
    /// `ID` or `CheckID`; see [`ServiceDefinition::checks`] and
    /// [`CheckDefinition::to_health_check`] for the defaults.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Operator notes.
    pub notes: String,
    /// Initial status (default critical).
    pub status: Option<CheckStatus>,
    /// The service instance the check is about; empty for a node check.
    pub service_id: String,
    /// TTL check: how long a report stays valid, in ms.
    pub ttl_ms: Option<u64>,
    /// How often HTTP, TCP and script checks run, in ms.
    pub interval_ms: Option<u64>,
    /// Per-run timeout, in ms (Consul's default: 10 s).
    pub timeout_ms: Option<u64>,
    /// HTTP check: the URL.
    pub http: Option<String>,
    /// HTTP check: the method (default `GET`).
    pub method: Option<String>,
    /// HTTP check: request headers, names verbatim.
    pub header: BTreeMap<String, Vec<String>>,
    /// HTTP check: request body.
    pub body: Option<String>,
    /// HTTP check: skip TLS certificate verification.
    pub tls_skip_verify: bool,
    /// TCP check: `host:port` to connect to.
    pub tcp: Option<String>,
    /// Script check: the command and its arguments (`Args`/`ScriptArgs`).
    pub args: Vec<String>,
    /// Deregister the service after the check has been critical this long,
    /// in ms.
    pub deregister_critical_service_after_ms: Option<u64>,
    /// Consecutive successes before the check turns passing.
    pub success_before_passing: u32,
    /// Consecutive failures before the check turns critical.
    pub failures_before_critical: u32,
}

impl CheckDefinition {
    /// What the check does, or why it is not a valid check. Exactly one of
    /// `TTL`, `HTTP`, `TCP`, `Args` must be set; HTTP, TCP and script checks
    /// need an `Interval`, TTL checks must not have one. Messages are
    /// Consul's `Invalid check: ...` texts where it has them.
    pub fn kind(&self) -> Result<CheckKind, DefinitionError> {
        let mut kinds = Vec::new();
        if self.ttl_ms.is_some() {
            kinds.push(CheckKind::Ttl);
        }
        if self.http.as_deref().is_some_and(|h| !h.is_empty()) {
            kinds.push(CheckKind::Http);
        }
        if self.tcp.as_deref().is_some_and(|t| !t.is_empty()) {
            kinds.push(CheckKind::Tcp);
        }
        if !self.args.is_empty() {
            kinds.push(CheckKind::Script);
        }
        let interval_check = kinds.iter().any(|k| *k != CheckKind::Ttl);
        if self.interval_ms.is_some() && self.ttl_ms.is_some() {
            return Err(invalid(
                "Invalid check: Interval and TTL cannot both be specified",
            ));
        }
        if kinds.len() > 1 {
            let names: Vec<&str> = kinds
                .iter()
                .map(|k| match k {
                    CheckKind::Ttl => "TTL",
                    CheckKind::Http => "HTTP",
                    CheckKind::Tcp => "TCP",
                    CheckKind::Script => "Args",
                })
                .collect();
            return Err(invalid(format!(
                "Invalid check: only one of TTL, HTTP, TCP or Args may be set, got {}",
                names.join(" and ")
            )));
        }
        if interval_check && self.interval_ms.is_none() {
            return Err(invalid(
                "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks",
            ));
        }
        match kinds.first() {
            Some(k) => Ok(*k),
            None => Err(invalid("Invalid check: TTL must be > 0 for TTL checks")),
        }
    }

    /// The catalog row for this check on `node`: status `status` if given,
    /// else critical; id defaulting to the name (Consul's
    /// `CheckDefinition.HealthCheck`); `Type` from [`CheckDefinition::kind`]
    /// (empty for an invalid check).
    pub fn to_health_check(&self, node: &str) -> HealthCheck {
        HealthCheck {
            node: node.to_string(),
            check_id: if self.id.is_empty() {
                self.name.clone()
            } else {
                self.id.clone()
            },
            name: self.name.clone(),
            status: self.status.unwrap_or(CheckStatus::Critical),
            notes: self.notes.clone(),
            service_id: self.service_id.clone(),
            r#type: self.kind().map_or("", |k| k.as_str()).to_string(),
            ..HealthCheck::default()
        }
    }
}

/// Check fields of kinds this project does not run.
const UNSUPPORTED_CHECK_FIELDS: &[&str] = &[
    "GRPC",
    "DockerContainerID",
    "AliasNode",
    "AliasService",
    "H2PING",
    "UDP",
    "OSService",
    "Script",
];

fn status_value(o: &Obj<'_>) -> Result<Option<CheckStatus>, DefinitionError> {
    match o.string(&["Status"])? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => CheckStatus::parse(&s).map(Some).ok_or_else(|| {
            invalid(format!(
                "Status for checks must 'passing', 'warning', 'critical', got {s:?}"
            ))
        }),
    }
}

fn header_map(o: &Obj<'_>) -> Result<BTreeMap<String, Vec<String>>, DefinitionError> {
    let Some((f, v)) = o.get(&["Header"]) else {
        return Ok(BTreeMap::new());
    };
    let map = Obj::new(v, &f)?.map;
    let mut out = BTreeMap::new();
    for (k, v) in map {
        out.insert(k.clone(), string_list(&format!("{f}[{k:?}]"), v)?);
    }
    Ok(out)
}

/// Decodes a normalized check object (no validation beyond types).
fn check_from(o: &Obj<'_>) -> Result<CheckDefinition, DefinitionError> {
    for name in UNSUPPORTED_CHECK_FIELDS {
        if let Some((f, v)) = o.get(&[name]) {
            let empty = v.as_str() == Some("") || v == &Value::Bool(false);
            if !empty {
                return Err(invalid(format!(
                    "Invalid check: {f} checks are not supported; use TTL, HTTP, TCP or Args"
                )));
            }
        }
    }
    Ok(CheckDefinition {
        id: o.str_or_empty(&["ID", "CheckID"])?,
        name: o.str_or_empty(&["Name"])?,
        notes: o.str_or_empty(&["Notes"])?,
        status: status_value(o)?,
        service_id: o.str_or_empty(&["ServiceID"])?,
        ttl_ms: o.duration_ms(&["TTL"])?,
        interval_ms: o.duration_ms(&["Interval"])?,
        timeout_ms: o.duration_ms(&["Timeout"])?,
        http: o.string(&["HTTP"])?.filter(|s| !s.is_empty()),
        method: o.string(&["Method"])?.filter(|s| !s.is_empty()),
        header: header_map(o)?,
        body: o.string(&["Body"])?.filter(|s| !s.is_empty()),
        tls_skip_verify: o.bool(&["TLSSkipVerify"])?.unwrap_or(false),
        tcp: o.string(&["TCP"])?.filter(|s| !s.is_empty()),
        args: o.strings(&["Args", "ScriptArgs"])?,
        deregister_critical_service_after_ms: o.duration_ms(&["DeregisterCriticalServiceAfter"])?,
        success_before_passing: o.u32(&["SuccessBeforePassing"])?.unwrap_or(0),
        failures_before_critical: o.u32(&["FailuresBeforeCritical"])?.unwrap_or(0),
    })
}

/// Decodes the body of `PUT /v1/agent/check/register` (or a config file's
/// `check`): requires `Name` (`Missing check name`), a valid kind
/// ([`CheckDefinition::kind`]) and a known `Status`; `ID` defaults to
/// `Name`.
pub fn decode_check(v: &Value) -> Result<CheckDefinition, DefinitionError> {
    let norm = normalize_keys(v);
    let mut check = check_from(&Obj::new(&norm, "")?)?;
    if check.name.is_empty() {
        return Err(invalid("Missing check name"));
    }
    check.kind()?;
    if check.id.is_empty() {
        check.id = check.name.clone();
    }
    Ok(check)
}

// ---------------------------------------------------------------------------
// Services

/// A service's `Connect` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectDefinition {
    /// The application speaks Connect itself (no sidecar).
    pub native: bool,
    /// A sidecar proxy to register with the service; every field optional,
    /// see [`ServiceDefinition::sidecar`].
    pub sidecar_service: Option<Box<ServiceDefinition>>,
}

/// A service as written: the body of `PUT /v1/agent/service/register`, or a
/// config file's `service`/`services`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceDefinition {
    /// `""` (typical) or `connect-proxy`.
    pub kind: String,
    /// Instance id (defaults to `name`).
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address, if not the node's.
    pub address: String,
    /// Operator metadata, keys verbatim.
    pub meta: BTreeMap<String, String>,
    /// Port (`None`: not given; 0 in the catalog).
    pub port: Option<u16>,
    /// DNS weights (`None`: `{1, 1}`).
    pub weights: Option<Weights>,
    /// Whether the catalog's tags may be changed by others.
    pub enable_tag_override: bool,
    /// The singular `Check` (an empty object counts as none, as in Consul).
    pub check: Option<CheckDefinition>,
    /// `Checks`.
    pub checks: Vec<CheckDefinition>,
    /// The `Connect` block.
    pub connect: Option<ConnectDefinition>,
    /// Proxy configuration of a `connect-proxy` service (for a sidecar
    /// written inside `sidecar_service`, the defaults are filled in by
    /// [`ServiceDefinition::sidecar`]).
    pub proxy: Option<ProxyConfig>,
}

fn upstream_from(o: &Obj<'_>) -> Result<Upstream, DefinitionError> {
    let mut u = Upstream {
        destination_type: o.str_or_empty(&["DestinationType"])?,
        destination_name: o.str_or_empty(&["DestinationName"])?,
        local_bind_address: o.str_or_empty(&["LocalBindAddress"])?,
        local_bind_port: o.port(&["LocalBindPort"])?.unwrap_or(0),
    };
    if u.destination_type.is_empty() {
        u.destination_type = "service".into();
    }
    Ok(u)
}

fn proxy_from(o: &Obj<'_>) -> Result<ProxyConfig, DefinitionError> {
    Ok(ProxyConfig {
        destination_service_name: o.str_or_empty(&["DestinationServiceName"])?,
        destination_service_id: o.str_or_empty(&["DestinationServiceID"])?,
        local_service_address: o.str_or_empty(&["LocalServiceAddress"])?,
        local_service_port: o.port(&["LocalServicePort"])?.unwrap_or(0),
        upstreams: o
            .objects(&["Upstreams"])?
            .iter()
            .map(upstream_from)
            .collect::<Result<_, _>>()?,
    })
}

fn weights_from(o: &Obj<'_>) -> Result<Weights, DefinitionError> {
    Ok(Weights {
        passing: o.u32(&["Passing"])?.unwrap_or(1),
        warning: o.u32(&["Warning"])?.unwrap_or(1),
    })
}

/// Decodes a normalized service object (types only).
fn service_from(o: &Obj<'_>) -> Result<ServiceDefinition, DefinitionError> {
    let check = match o.object(&["Check"])? {
        None => None,
        Some(c) => Some(check_from(&c)?).filter(|c| *c != CheckDefinition::default()),
    };
    let connect = match o.object(&["Connect"])? {
        None => None,
        Some(c) => Some(ConnectDefinition {
            native: c.bool(&["Native"])?.unwrap_or(false),
            sidecar_service: match c.object(&["SidecarService"])? {
                None => None,
                Some(s) => Some(Box::new(service_from(&s)?)),
            },
        }),
    };
    Ok(ServiceDefinition {
        kind: o.str_or_empty(&["Kind"])?,
        id: o.str_or_empty(&["ID"])?,
        name: o.str_or_empty(&["Name"])?,
        tags: o.strings(&["Tags"])?,
        address: o.str_or_empty(&["Address"])?,
        meta: o.string_map(&["Meta"])?,
        port: o.port(&["Port"])?,
        weights: o
            .object(&["Weights"])?
            .map(|w| weights_from(&w))
            .transpose()?,
        enable_tag_override: o.bool(&["EnableTagOverride"])?.unwrap_or(false),
        check,
        checks: o
            .objects(&["Checks"])?
            .iter()
            .map(check_from)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| *c != CheckDefinition::default())
            .collect(),
        connect,
        proxy: o.object(&["Proxy"])?.map(|p| proxy_from(&p)).transpose()?,
    })
}

/// Consul's `ValidateMetadata`: at most 64 pairs, keys of `[a-zA-Z0-9_-]`
/// up to 128 characters not starting with `consul-`, values up to 512.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".into());
    }
    for (key, value) in meta {
        let problem = if key.is_empty() {
            Some("Key cannot be blank".to_string())
        } else if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("Key contains invalid characters".to_string())
        } else if key.len() > 128 {
            Some("Key is too long (limit: 128 characters)".to_string())
        } else if key.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use".to_string())
        } else if value.len() > 512 {
            Some("Value is too long (limit: 512 characters)".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(format!(
                "Couldn't load metadata pair ('{key}', '{value}'): {p}"
            ));
        }
    }
    Ok(())
}

fn is_any_address(a: &str) -> bool {
    matches!(a, "0.0.0.0" | "::" | "[::]")
}

impl ServiceDefinition {
    /// The instance id: `id`, or `name` when empty (Consul's default).
    pub fn instance_id(&self) -> &str {
        if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        }
    }

    /// The catalog row for this instance: id defaulting to the name, weights
    /// to `{1, 1}`, port to 0. Indexes are 0 (the state machine sets them).
    pub fn to_node_service(&self) -> NodeService {
        NodeService {
            kind: self.kind.clone(),
            id: self.instance_id().to_string(),
            service: self.name.clone(),
            tags: self.tags.clone(),
            address: self.address.clone(),
            meta: self.meta.clone(),
            port: self.port.unwrap_or(0),
            weights: self.weights.unwrap_or_default(),
            enable_tag_override: self.enable_tag_override,
            proxy: self.proxy.clone(),
            create_index: 0,
            modify_index: 0,
        }
    }

    /// The service's checks (`Check`, then `Checks`) as Consul registers
    /// them: `ServiceID` set to this instance; an empty id becomes
    /// `service:<id>`, or `service:<id>:<n>` (n from 1, in order) when the
    /// service has more than one check; an empty name becomes
    /// `Service '<name>' check`.
    pub fn checks(&self) -> Vec<CheckDefinition> {
        let all: Vec<&CheckDefinition> = self.check.iter().chain(self.checks.iter()).collect();
        let sid = self.instance_id().to_string();
        let many = all.len() > 1;
        all.into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                if c.id.is_empty() {
                    c.id = if many {
                        format!("service:{sid}:{}", i + 1)
                    } else {
                        format!("service:{sid}")
                    };
                }
                if c.name.is_empty() {
                    c.name = format!("Service '{}' check", self.name);
                }
                c.service_id = sid.clone();
                c
            })
            .collect()
    }

    /// The sidecar proxy this service asks for in `connect.sidecar_service`,
    /// with Consul's defaults filled in: id always `<id>-sidecar-proxy`;
    /// name `<name>-sidecar-proxy`; kind `connect-proxy`; tags, meta and
    /// address the parent's unless given; port the sidecar's own `port` if
    /// given, else [`DEFAULT_SIDECAR_PORT`] (Consul allocates from 21000);
    /// proxy destination the parent's name and id, local service
    /// `127.0.0.1` at the parent's port, upstreams from
    /// `sidecar_service.proxy.upstreams`. Checks are the sidecar's own,
    /// without Consul's default TCP and alias checks. `None` without a
    /// `sidecar_service`.
    pub fn sidecar(&self) -> Option<ServiceDefinition> {
        let given = self.connect.as_ref()?.sidecar_service.as_deref()?;
        let mut s = given.clone();
        let parent_id = self.instance_id();
        s.id = format!("{parent_id}-sidecar-proxy");
        s.kind = "connect-proxy".into();
        if s.name.is_empty() {
            s.name = format!("{}-sidecar-proxy", self.name);
        }
        if s.tags.is_empty() {
            s.tags = self.tags.clone();
        }
        if s.meta.is_empty() {
            s.meta = self.meta.clone();
        }
        if s.address.is_empty() {
            s.address = self.address.clone();
        }
        if matches!(s.port, None | Some(0)) {
            s.port = Some(DEFAULT_SIDECAR_PORT);
        }
        let mut proxy = s.proxy.take().unwrap_or_default();
        if proxy.destination_service_name.is_empty() {
            proxy.destination_service_name = self.name.clone();
        }
        if proxy.destination_service_id.is_empty() {
            proxy.destination_service_id = parent_id.to_string();
        }
        if proxy.local_service_address.is_empty() {
            proxy.local_service_address = DEFAULT_LOCAL_SERVICE_ADDRESS.into();
        }
        if proxy.local_service_port == 0 {
            proxy.local_service_port = self.port.unwrap_or(0);
        }
        s.proxy = Some(proxy);
        s.connect = None;
        Some(s)
    }

    /// A sidecar registered without checks gets Consul's default one,
    /// "Connect Sidecar Listening": TCP to its public port on the address
    /// it listens on (its own `Address`, else the node's).
    pub fn with_default_sidecar_check(mut self, node_address: &str) -> ServiceDefinition {
        if self.kind != "connect-proxy" || self.check.is_some() || !self.checks.is_empty() {
            return self;
        }
        let host = if self.address.is_empty() {
            node_address
        } else {
            &self.address
        };
        let target = match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port.unwrap_or(0)),
            _ => format!("{host}:{}", self.port.unwrap_or(0)),
        };
        self.check = Some(CheckDefinition {
            name: "Connect Sidecar Listening".into(),
            tcp: Some(target),
            interval_ms: Some(10_000),
            ..CheckDefinition::default()
        });
        self
    }

    /// Checks what the agent endpoint checks before registering: a name
    /// (`Missing service name`), a usable address, weights, metadata, kind,
    /// proxy settings, every check's kind and the sidecar (validated after
    /// its defaults are applied).
    pub fn validate(&self) -> Result<(), DefinitionError> {
        self.validate_inner(false)
    }

    fn validate_inner(&self, is_sidecar: bool) -> Result<(), DefinitionError> {
        if self.name.is_empty() {
            return Err(invalid("Missing service name"));
        }
        if is_any_address(&self.address) {
            return Err(invalid("Invalid service address"));
        }
        if let Some(w) = self.weights {
            if w.passing < 1 {
                return Err(invalid("Invalid Weights: Passing must be greater than 0"));
            }
            if w.passing > 65536 || w.warning > 65536 {
                return Err(invalid(
                    "Invalid Weights: DNS Weight must be between 0 and 65536",
                ));
            }
        }
        validate_meta(&self.meta).map_err(|e| invalid(format!("Invalid Service Meta: {e}")))?;
        match self.kind.as_str() {
            "" => {}
            "connect-proxy" => {
                let proxy = self.proxy.clone().unwrap_or_default();
                if proxy.destination_service_name.is_empty() {
                    return Err(invalid(
                        "Invalid Service: Proxy.DestinationServiceName must be non-empty for Connect proxy services",
                    ));
                }
                if self.port.unwrap_or(0) == 0 {
                    return Err(invalid(
                        "Invalid Service: Port must be set for a Connect proxy",
                    ));
                }
            }
            other => {
                return Err(invalid(format!(
                    "Invalid Service: service kind {other:?} is not supported; use \"\" or \"connect-proxy\""
                )))
            }
        }
        if let Some(p) = &self.proxy {
            for u in &p.upstreams {
                if u.destination_type != "service" {
                    return Err(invalid(format!(
                        "Invalid Service: upstream destination type {:?} is not supported; use \"service\"",
                        u.destination_type
                    )));
                }
                if u.destination_name.is_empty() {
                    return Err(invalid(
                        "Invalid Service: upstream DestinationName must be set",
                    ));
                }
                if u.local_bind_port == 0 {
                    return Err(invalid(format!(
                        "Invalid Service: upstream {:?} needs a LocalBindPort",
                        u.destination_name
                    )));
                }
            }
        }
        for c in self.check.iter().chain(self.checks.iter()) {
            c.kind()?;
        }
        if let Some(connect) = &self.connect {
            if let Some(side) = &connect.sidecar_service {
                if is_sidecar {
                    return Err(invalid(
                        "Invalid SidecarService: a SidecarService cannot have a nested SidecarService",
                    ));
                }
                if connect.native {
                    return Err(invalid(
                        "Invalid Service: a Connect native service cannot also have a SidecarService",
                    ));
                }
                if !side.kind.is_empty() && side.kind != "connect-proxy" {
                    return Err(invalid(format!(
                        "Invalid SidecarService: Kind must be \"connect-proxy\", got {:?}",
                        side.kind
                    )));
                }
                if side
                    .connect
                    .as_ref()
                    .is_some_and(|c| c.sidecar_service.is_some())
                {
                    return Err(invalid(
                        "Invalid SidecarService: a SidecarService cannot have a nested SidecarService",
                    ));
                }
                if let Some(s) = self.sidecar() {
                    s.validate_inner(true)?;
                }
            }
        }
        Ok(())
    }
}

/// Decodes and validates the body of `PUT /v1/agent/service/register` (or
/// one config file service); see [`ServiceDefinition::validate`].
pub fn decode_service(v: &Value) -> Result<ServiceDefinition, DefinitionError> {
    let norm = normalize_keys(v);
    let s = service_from(&Obj::new(&norm, "")?)?;
    s.validate()?;
    Ok(s)
}

// ---------------------------------------------------------------------------
// Catalog register / deregister

fn catalog_service_from(o: &Obj<'_>) -> Result<NodeService, DefinitionError> {
    let mut s = NodeService {
        kind: o.str_or_empty(&["Kind"])?,
        id: o.str_or_empty(&["ID"])?,
        service: o.str_or_empty(&["Service"])?,
        tags: o.strings(&["Tags"])?,
        address: o.str_or_empty(&["Address"])?,
        meta: o.string_map(&["Meta"])?,
        port: o.port(&["Port"])?.unwrap_or(0),
        weights: o
            .object(&["Weights"])?
            .map(|w| weights_from(&w))
            .transpose()?
            .unwrap_or_default(),
        enable_tag_override: o.bool(&["EnableTagOverride"])?.unwrap_or(false),
        proxy: o.object(&["Proxy"])?.map(|p| proxy_from(&p)).transpose()?,
        create_index: 0,
        modify_index: 0,
    };
    if s.service.is_empty() {
        return Err(invalid(if s.id.is_empty() {
            "Must provide service name"
        } else {
            "Must provide service name with ID"
        }));
    }
    if s.id.is_empty() {
        s.id = s.service.clone();
    }
    if is_any_address(&s.address) {
        return Err(invalid("Invalid service address"));
    }
    validate_meta(&s.meta).map_err(|e| invalid(format!("Invalid Service Meta: {e}")))?;
    Ok(s)
}

fn catalog_check_from(o: &Obj<'_>, node: &str) -> Result<HealthCheck, DefinitionError> {
    let check_node = o.str_or_empty(&["Node"])?;
    if !check_node.is_empty() && check_node != node {
        return Err(invalid(format!(
            "Check node {check_node:?} does not match the registered node {node:?}"
        )));
    }
    let mut c = HealthCheck {
        node: node.to_string(),
        check_id: o.str_or_empty(&["CheckID"])?,
        name: o.str_or_empty(&["Name"])?,
        status: status_value(o)?.unwrap_or(CheckStatus::Critical),
        notes: o.str_or_empty(&["Notes"])?,
        output: o.str_or_empty(&["Output"])?,
        service_id: o.str_or_empty(&["ServiceID"])?,
        service_name: o.str_or_empty(&["ServiceName"])?,
        service_tags: o.strings(&["ServiceTags"])?,
        r#type: o.str_or_empty(&["Type"])?,
        create_index: 0,
        modify_index: 0,
    };
    if c.check_id.is_empty() {
        c.check_id = c.name.clone();
    }
    if c.check_id.is_empty() {
        return Err(invalid("Must provide check ID"));
    }
    Ok(c)
}

/// Decodes the body of `PUT /v1/catalog/register` (Consul's
/// `RegisterRequest`): `Node`, `ID`, `Address`, `Datacenter`,
/// `TaggedAddresses`, `NodeMeta`, `Service` (a catalog `NodeService`,
/// named by `Service`, id defaulting to it), `Check` and `Checks` (catalog
/// `HealthCheck`s: `CheckID` defaulting to `Name`, `Node` to the request's,
/// `Status` to critical), `SkipNodeUpdate`. Checks as Consul's
/// `Catalog.Register` does: `Must provide node`, `Must provide address if
/// SkipNodeUpdate is not set`, a service name.
pub fn decode_catalog_register(v: &Value) -> Result<Registration, DefinitionError> {
    let norm = normalize_keys(v);
    let o = Obj::new(&norm, "")?;
    let node = Node {
        id: o.str_or_empty(&["ID"])?,
        node: o.str_or_empty(&["Node"])?,
        address: o.str_or_empty(&["Address"])?,
        datacenter: o.str_or_empty(&["Datacenter"])?,
        tagged_addresses: o.string_map(&["TaggedAddresses"])?,
        meta: o.string_map(&["NodeMeta"])?,
        create_index: 0,
        modify_index: 0,
    };
    let skip_node_update = o.bool(&["SkipNodeUpdate"])?.unwrap_or(false);
    if node.node.is_empty() {
        return Err(invalid("Must provide node"));
    }
    if node.address.is_empty() && !skip_node_update {
        return Err(invalid("Must provide address if SkipNodeUpdate is not set"));
    }
    let service = o
        .object(&["Service"])?
        .map(|s| catalog_service_from(&s))
        .transpose()?;
    let mut checks = Vec::new();
    if let Some(c) = o.object(&["Check"])? {
        checks.push(catalog_check_from(&c, &node.node)?);
    }
    for c in o.objects(&["Checks"])? {
        checks.push(catalog_check_from(&c, &node.node)?);
    }
    Ok(Registration {
        node,
        skip_node_update,
        service,
        checks,
    })
}

/// Decodes the body of `PUT /v1/catalog/deregister`: `Node` (required:
/// `Must provide node`), optional `ServiceID` and `CheckID` (empty reads as
/// absent).
pub fn decode_catalog_deregister(
    v: &Value,
) -> Result<(String, Option<String>, Option<String>), DefinitionError> {
    let norm = normalize_keys(v);
    let o = Obj::new(&norm, "")?;
    let node = o.str_or_empty(&["Node"])?;
    if node.is_empty() {
        return Err(invalid("Must provide node"));
    }
    let service_id = o.string(&["ServiceID"])?.filter(|s| !s.is_empty());
    let check_id = o.string(&["CheckID"])?.filter(|s| !s.is_empty());
    Ok((node, service_id, check_id))
}

// ---------------------------------------------------------------------------
// Agent configuration files

/// The `ports` block. `None`: not set in this file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortsConfig {
    /// HTTP API (Consul's default 8500).
    pub http: Option<u16>,
    /// DNS (8600).
    pub dns: Option<u16>,
    /// Server RPC (8300).
    pub server: Option<u16>,
    /// LAN gossip (8301).
    pub serf_lan: Option<u16>,
    /// gRPC (8502).
    pub grpc: Option<u16>,
    /// HTTPS API (Consul's default -1: off; 8501 by convention).
    pub https: Option<i32>,
}

/// TLS for the RPC port, from `tls { defaults { ... } internal_rpc { ... } }`
/// (Consul 1.12+) or the older top-level keys (`ca_file`, `verify_incoming`,
/// ...). `internal_rpc` wins over `defaults`, which wins over the top level.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFileConfig {
    /// `ca_file`: the operator CA that signs agent certificates.
    pub ca_file: Option<String>,
    /// `cert_file`: this agent's certificate.
    pub cert_file: Option<String>,
    /// `key_file`: its private key.
    pub key_file: Option<String>,
    /// `verify_incoming`: refuse RPC connections without a certificate the CA signed.
    pub verify_incoming: Option<bool>,
    /// `verify_outgoing`: make RPC connections over TLS, verifying the server's chain.
    pub verify_outgoing: Option<bool>,
    /// `verify_server_hostname`: also require the server's certificate to
    /// name `server.<datacenter>.<domain>`.
    pub verify_server_hostname: Option<bool>,
}

impl TlsFileConfig {
    fn from_obj(o: &Obj) -> Result<TlsFileConfig, DefinitionError> {
        Ok(TlsFileConfig {
            ca_file: o.string(&["ca_file"])?,
            cert_file: o.string(&["cert_file"])?,
            key_file: o.string(&["key_file"])?,
            verify_incoming: o.bool(&["verify_incoming"])?,
            verify_outgoing: o.bool(&["verify_outgoing"])?,
            verify_server_hostname: o.bool(&["verify_server_hostname"])?,
        })
    }

    /// Each key from `over` where it is set, else from `self`.
    pub fn overridden_by(self, over: TlsFileConfig) -> TlsFileConfig {
        TlsFileConfig {
            ca_file: over.ca_file.or(self.ca_file),
            cert_file: over.cert_file.or(self.cert_file),
            key_file: over.key_file.or(self.key_file),
            verify_incoming: over.verify_incoming.or(self.verify_incoming),
            verify_outgoing: over.verify_outgoing.or(self.verify_outgoing),
            verify_server_hostname: over.verify_server_hostname.or(self.verify_server_hostname),
        }
    }

    /// The RPC port's settings and the HTTPS API's, from one file: each
    /// is the top level, overridden by `tls.defaults`, overridden by its
    /// own block (`tls.internal_rpc`, `tls.https`).
    fn from_file(o: &Obj) -> Result<(TlsFileConfig, TlsFileConfig), DefinitionError> {
        let mut base = TlsFileConfig::from_obj(o)?;
        let (mut rpc, mut https) = (TlsFileConfig::default(), TlsFileConfig::default());
        if let Some(block) = o.object(&["tls"])? {
            if let Some(defaults) = block.object(&["defaults"])? {
                base = base.overridden_by(TlsFileConfig::from_obj(&defaults)?);
            }
            if let Some(b) = block.object(&["internal_rpc"])? {
                rpc = TlsFileConfig::from_obj(&b)?;
            }
            if let Some(b) = block.object(&["https"])? {
                https = TlsFileConfig::from_obj(&b)?;
            }
        }
        Ok((base.clone().overridden_by(rpc), base.overridden_by(https)))
    }
}

/// `auto_encrypt { ... }`: client agents get their RPC certificates from
/// the servers instead of the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoEncryptConfig {
    /// `tls` (client agents): ask the servers for a certificate at start,
    /// and again before it expires.
    pub tls: Option<bool>,
    /// `allow_tls` (servers): sign such certificates, and accept them.
    pub allow_tls: Option<bool>,
    /// `dns_san`: extra DNS names in the certificate (appended across files).
    pub dns_san: Vec<String>,
    /// `ip_san`: extra IP addresses in the certificate (appended across files).
    pub ip_san: Vec<String>,
}

impl AutoEncryptConfig {
    fn from_file(o: &Obj) -> Result<AutoEncryptConfig, DefinitionError> {
        let Some(a) = o.object(&["auto_encrypt"])? else {
            return Ok(AutoEncryptConfig::default());
        };
        Ok(AutoEncryptConfig {
            tls: a.bool(&["tls"])?,
            allow_tls: a.bool(&["allow_tls"])?,
            dns_san: a.strings(&["dns_san"])?,
            ip_san: a.strings(&["ip_san"])?,
        })
    }

    fn merge(self, later: AutoEncryptConfig) -> AutoEncryptConfig {
        let mut dns_san = self.dns_san;
        dns_san.extend(later.dns_san);
        let mut ip_san = self.ip_san;
        ip_san.extend(later.ip_san);
        AutoEncryptConfig {
            tls: later.tls.or(self.tls),
            allow_tls: later.allow_tls.or(self.allow_tls),
            dns_san,
            ip_san,
        }
    }
}

/// The subset of Consul's agent configuration this project reads, from one
/// file or merged from several ([`AgentFileConfig::merge`]). Scalars are
/// `None` when no file set them, so merging can tell "unset" from a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFileConfig {
    /// `node_name`.
    pub node_name: Option<String>,
    /// `server`.
    pub server: Option<bool>,
    /// `bootstrap`.
    pub bootstrap: Option<bool>,
    /// `bootstrap_expect`.
    pub bootstrap_expect: Option<u32>,
    /// `retry_join` (appended across files).
    pub retry_join: Vec<String>,
    /// `start_join` (appended across files).
    pub start_join: Vec<String>,
    /// `data_dir`.
    pub data_dir: Option<String>,
    /// `bind_addr`.
    pub bind_addr: Option<String>,
    /// `client_addr`.
    pub client_addr: Option<String>,
    /// `advertise_addr`.
    pub advertise_addr: Option<String>,
    /// `datacenter`.
    pub datacenter: Option<String>,
    /// `log_level`.
    pub log_level: Option<String>,
    /// `ports { ... }`.
    pub ports: PortsConfig,
    /// `enable_script_checks`.
    pub enable_script_checks: Option<bool>,
    /// `leave_on_terminate`.
    pub leave_on_terminate: Option<bool>,
    /// `service` and `services`, in file order (appended across files).
    pub services: Vec<ServiceDefinition>,
    /// `check` and `checks`, in file order (appended across files).
    pub checks: Vec<CheckDefinition>,
    /// `connect { enabled }`.
    pub connect_enabled: Option<bool>,
    /// `acl { default_policy }`: `"allow"` or `"deny"`. Without ACLs it
    /// decides connections no intention matches (deny when unset).
    pub acl_default_policy: Option<String>,
    /// `domain` (Consul's DNS domain, `consul` when unset): the last label
    /// of the server name TLS verifies.
    pub domain: Option<String>,
    /// TLS on the RPC port.
    pub tls: TlsFileConfig,
    /// TLS of the HTTPS API (`tls.https`, over `tls.defaults`).
    pub tls_https: TlsFileConfig,
    /// `auto_encrypt { ... }`.
    pub auto_encrypt: AutoEncryptConfig,
    /// `encrypt`: Consul's gossip key (checked; there is no gossip here).
    pub encrypt: Option<String>,
}

fn file_value_to_config(v: &Value) -> Result<AgentFileConfig, DefinitionError> {
    let norm = normalize_keys(v);
    let o = Obj::new(&norm, "")?;
    let (tls, tls_https) = TlsFileConfig::from_file(&o)?;
    let ports = match o.object(&["ports"])? {
        None => PortsConfig::default(),
        Some(p) => PortsConfig {
            http: p.port(&["http"])?,
            dns: p.port(&["dns"])?,
            server: p.port(&["server"])?,
            serf_lan: p.port(&["serf_lan"])?,
            grpc: p.port(&["grpc"])?,
            https: match p.get(&["https"]) {
                None => None,
                Some((f, v)) => match integer(v) {
                    Some(n) if (-1..=u16::MAX as i128).contains(&n) => Some(n as i32),
                    _ => return Err(expected(&f, "a port, or -1 to disable HTTPS", v)),
                },
            },
        },
    };
    let mut services = Vec::new();
    for s in o
        .objects(&["service"])?
        .iter()
        .chain(&o.objects(&["services"])?)
    {
        let def = service_from(s)?;
        def.validate().map_err(|e| match e {
            DefinitionError::Invalid(m) if !s.path.is_empty() => {
                invalid(format!("{}: {m}", s.path))
            }
            e => e,
        })?;
        services.push(def);
    }
    let mut checks = Vec::new();
    for c in o
        .objects(&["check"])?
        .iter()
        .chain(&o.objects(&["checks"])?)
    {
        let mut def = check_from(c)?;
        let at = |m: String| invalid(format!("{}: {m}", c.path));
        if def.name.is_empty() {
            return Err(at("Missing check name".into()));
        }
        def.kind().map_err(|e| at(e.to_string()))?;
        if def.id.is_empty() {
            def.id = def.name.clone();
        }
        checks.push(def);
    }
    Ok(AgentFileConfig {
        node_name: o.string(&["node_name"])?,
        server: o.bool(&["server"])?,
        bootstrap: o.bool(&["bootstrap"])?,
        bootstrap_expect: o.u32(&["bootstrap_expect"])?,
        retry_join: o.strings(&["retry_join"])?,
        start_join: o.strings(&["start_join"])?,
        data_dir: o.string(&["data_dir"])?,
        bind_addr: o.string(&["bind_addr"])?,
        client_addr: o.string(&["client_addr"])?,
        advertise_addr: o.string(&["advertise_addr"])?,
        datacenter: o.string(&["datacenter"])?,
        log_level: o.string(&["log_level"])?,
        ports,
        enable_script_checks: o.bool(&["enable_script_checks"])?,
        leave_on_terminate: o.bool(&["leave_on_terminate"])?,
        services,
        checks,
        connect_enabled: match o.object(&["connect"])? {
            None => None,
            Some(c) => c.bool(&["enabled"])?,
        },
        acl_default_policy: match o.object(&["acl"])? {
            None => None,
            Some(a) => a.string(&["default_policy"])?,
        },
        domain: o.string(&["domain"])?,
        tls,
        tls_https,
        auto_encrypt: AutoEncryptConfig::from_file(&o)?,
        encrypt: o.string(&["encrypt"])?,
    })
}

impl AgentFileConfig {
    /// Reads one JSON configuration file's text. Field names as in
    /// Consul's docs (`node_name`, `retry_join`, ...), matched like every
    /// other key here (see the module docs).
    pub fn parse_json(text: &str) -> Result<AgentFileConfig, DefinitionError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| DefinitionError::Syntax(e.to_string()))?;
        file_value_to_config(&v)
    }

    /// Reads one HCL configuration file's text (HCL 2 syntax via `hcl-rs`;
    /// blocks such as `service { ... }` and `ports { ... }` and attributes
    /// such as `checks = [{ ... }]` both work; repeated blocks
    /// (`services { } services { }`) form a list).
    pub fn parse_hcl(text: &str) -> Result<AgentFileConfig, DefinitionError> {
        let v: Value = hcl::from_str(text)
            .map_err(|e| DefinitionError::Syntax(format!("invalid HCL: {e}")))?;
        file_value_to_config(&v)
    }

    /// Reads the file `name` (only its extension is used: `.json` or
    /// `.hcl`); errors name the file.
    pub fn parse(name: &str, text: &str) -> Result<AgentFileConfig, DefinitionError> {
        let result = if name.ends_with(".json") {
            AgentFileConfig::parse_json(text)
        } else if name.ends_with(".hcl") {
            AgentFileConfig::parse_hcl(text)
        } else {
            Err(invalid(
                "unsupported configuration file type; expected .json or .hcl",
            ))
        };
        result.map_err(|e| DefinitionError::File {
            file: name.to_string(),
            message: e.to_string(),
        })
    }

    /// `self` overlaid with `later` (the next file in lexical order, as
    /// Consul loads a directory): a scalar `later` sets wins; lists
    /// (`retry_join`, `start_join`, `services`, `checks`) append.
    pub fn merge(self, later: AgentFileConfig) -> AgentFileConfig {
        fn append<T>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
            a.extend(b);
            a
        }
        AgentFileConfig {
            node_name: later.node_name.or(self.node_name),
            server: later.server.or(self.server),
            bootstrap: later.bootstrap.or(self.bootstrap),
            bootstrap_expect: later.bootstrap_expect.or(self.bootstrap_expect),
            retry_join: append(self.retry_join, later.retry_join),
            start_join: append(self.start_join, later.start_join),
            data_dir: later.data_dir.or(self.data_dir),
            bind_addr: later.bind_addr.or(self.bind_addr),
            client_addr: later.client_addr.or(self.client_addr),
            advertise_addr: later.advertise_addr.or(self.advertise_addr),
            datacenter: later.datacenter.or(self.datacenter),
            log_level: later.log_level.or(self.log_level),
            ports: PortsConfig {
                http: later.ports.http.or(self.ports.http),
                dns: later.ports.dns.or(self.ports.dns),
                server: later.ports.server.or(self.ports.server),
                serf_lan: later.ports.serf_lan.or(self.ports.serf_lan),
                grpc: later.ports.grpc.or(self.ports.grpc),
                https: later.ports.https.or(self.ports.https),
            },
            enable_script_checks: later.enable_script_checks.or(self.enable_script_checks),
            leave_on_terminate: later.leave_on_terminate.or(self.leave_on_terminate),
            services: append(self.services, later.services),
            checks: append(self.checks, later.checks),
            connect_enabled: later.connect_enabled.or(self.connect_enabled),
            acl_default_policy: later.acl_default_policy.or(self.acl_default_policy),
            domain: later.domain.or(self.domain),
            tls: self.tls.overridden_by(later.tls),
            tls_https: self.tls_https.overridden_by(later.tls_https),
            auto_encrypt: self.auto_encrypt.merge(later.auto_encrypt),
            encrypt: later.encrypt.or(self.encrypt),
        }
    }
}

#[cfg(test)]
mod tests;
