//! The agent's metrics (`GET /v1/agent/metrics`), kept in a `prometheus`
//! registry of the agent's own (not a process-wide one: the simulator runs
//! five agents in one process).
//!
//! Names are Consul's (`consul.raft.apply`, `consul.raft.commitTime`,
//! `consul.rpc.request`, ...); the Prometheus format spells them with
//! underscores (`consul_raft_apply`), as Consul's does. Timings are in
//! milliseconds.
//!
//! Difference from Consul: its JSON reports the last 10-second interval;
//! ours reports totals since the agent started (`Rate` is per second over
//! that time), which needs no interval timer and loses nothing between
//! scrapes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::{json, Value};

use crate::clock;

/// Bucket bounds of every timing, in ms.
const BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// A counter by Consul name.
#[derive(Clone)]
pub struct Counter(IntCounterVec);

impl Counter {
    /// Adds one for these label values (in the order the counter names
    /// its labels).
    pub fn inc(&self, labels: &[&str]) {
        self.0.with_label_values(labels).inc();
    }
}

/// A gauge by Consul name.
#[derive(Clone)]
pub struct Gauge(IntGaugeVec);

impl Gauge {
    /// Sets the value for these label values.
    pub fn set(&self, labels: &[&str], v: i64) {
        self.0.with_label_values(labels).set(v);
    }
}

/// A timing by Consul name: a histogram, plus the extremes Consul's JSON
/// reports (a histogram has only buckets).
#[derive(Clone)]
pub struct Timing {
    hist: HistogramVec,
    extremes: Arc<Mutex<BTreeMap<Vec<String>, Extremes>>>,
}

#[derive(Clone, Copy)]
struct Extremes {
    min: f64,
    max: f64,
    sum_squares: f64,
}

impl Timing {
    /// Records one observation of `d`.
    pub fn observe(&self, labels: &[&str], d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        self.hist.with_label_values(labels).observe(ms);
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let mut all = self.extremes.lock().expect("timing lock");
        let e = all.entry(key).or_insert(Extremes {
            min: ms,
            max: ms,
            sum_squares: 0.0,
        });
        e.min = e.min.min(ms);
        e.max = e.max.max(ms);
        e.sum_squares += ms * ms;
    }
}

/// Every metric of one agent.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    started: clock::Instant,
    timings: Vec<Timing>,
    /// `consul.raft.apply`: writes this server committed as leader.
    pub raft_apply: Counter,
    /// `consul.raft.commitTime`: from proposing a write to its commit.
    pub raft_commit_time: Timing,
    /// `consul.raft.state.leader`: times this server became leader.
    pub raft_became_leader: Counter,
    /// `consul.fsm.apply`, by command: commands this server applied.
    pub fsm_apply: Counter,
    /// `consul.rpc.request`, by request kind: RPCs this server answered.
    pub rpc_request: Counter,
    /// `consul.rpc.request_error`, by request kind.
    pub rpc_request_error: Counter,
    /// `consul.api.http`, by method and path family: HTTP request times.
    pub http: Timing,
    /// `consul.api.http.errors`, by method, path family and status.
    pub http_errors: Counter,
    /// `consul.agent.check.transition`, by new status: local checks that
    /// changed status.
    pub check_transition: Counter,
    /// `consul.agent.anti_entropy.sync`: anti-entropy rounds that brought
    /// the catalog in line.
    pub anti_entropy_sync: Counter,
    /// `consul.agent.anti_entropy.error`: rounds that failed.
    pub anti_entropy_error: Counter,
    /// `consul.session_ttl.invalidate`: sessions the leader expired.
    pub session_ttl_invalidate: Counter,
    /// Gauges set from the state when metrics are read (see
    /// [`Telemetry::set_gauge`]).
    gauges: Arc<Mutex<BTreeMap<String, Gauge>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(Opts::new(prom_name(name), help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            Counter(c)
        };
        let mut timings = Vec::new();
        let mut timing = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(prom_name(name), help).buckets(BUCKETS_MS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            let t = Timing {
                hist: h,
                extremes: Default::default(),
            };
            timings.push(t.clone());
            t
        };
        let raft_commit_time = timing(
            "consul.raft.commitTime",
            "Time from proposing a write to its commit, on the leader (ms).",
            &[],
        );
        let http = timing(
            "consul.api.http",
            "HTTP API request time (ms).",
            &["method", "path"],
        );
        Telemetry {
            raft_apply: counter("consul.raft.apply", "Writes committed as leader.", &[]),
            raft_commit_time,
            raft_became_leader: counter(
                "consul.raft.state.leader",
                "Times this server became leader.",
                &[],
            ),
            fsm_apply: counter(
                "consul.fsm.apply",
                "Commands applied to the state machine.",
                &["command"],
            ),
            rpc_request: counter("consul.rpc.request", "RPC requests answered.", &["kind"]),
            rpc_request_error: counter(
                "consul.rpc.request_error",
                "RPC requests answered with an error.",
                &["kind"],
            ),
            http,
            http_errors: counter(
                "consul.api.http.errors",
                "HTTP API answers with status 400 or above.",
                &["method", "path", "code"],
            ),
            check_transition: counter(
                "consul.agent.check.transition",
                "Local health checks that changed status.",
                &["status"],
            ),
            anti_entropy_sync: counter(
                "consul.agent.anti_entropy.sync",
                "Anti-entropy rounds that synced the catalog.",
                &[],
            ),
            anti_entropy_error: counter(
                "consul.agent.anti_entropy.error",
                "Anti-entropy rounds that failed.",
                &[],
            ),
            session_ttl_invalidate: counter(
                "consul.session_ttl.invalidate",
                "Sessions invalidated because their TTL ran out.",
                &[],
            ),
            timings,
            gauges: Default::default(),
            registry,
            started: clock::Instant::now(),
        }
    }

    /// Sets gauge `name` (registered on first use) to `v`.
    pub fn set_gauge(&self, name: &str, help: &str, v: i64) {
        let mut gauges = self.gauges.lock().expect("gauges lock");
        let g = gauges.entry(name.to_string()).or_insert_with(|| {
            let g = IntGaugeVec::new(Opts::new(prom_name(name), help), &[]).expect("valid metric");
            // A name registered twice is a programming error caught by
            // the map above.
            let _ = self.registry.register(Box::new(g.clone()));
            Gauge(g)
        });
        g.set(&[], v);
    }

    /// The Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            out.push_str(&format!("# encoding failed: {e}\n"));
        }
        out
    }

    /// Consul's JSON (`Gauges`, `Points`, `Counters`, `Samples`).
    pub fn json(&self) -> Value {
        let uptime_s = self.started.elapsed().as_secs_f64().max(1e-3);
        let (mut gauges, mut counters, mut samples) = (Vec::new(), Vec::new(), Vec::new());
        for family in self.registry.gather() {
            let name = consul_name(family.name());
            for m in family.get_metric() {
                let labels: serde_json::Map<String, Value> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), json!(l.value())))
                    .collect();
                match family.get_field_type() {
                    MetricType::GAUGE => gauges.push(json!({
                        "Name": name, "Value": m.get_gauge().get_value(), "Labels": labels,
                    })),
                    MetricType::COUNTER => {
                        // Counters count whole events.
                        let n = m.get_counter().get_value() as u64;
                        counters.push(json!({
                            "Name": name, "Count": n, "Rate": n as f64 / uptime_s, "Sum": n,
                            "Min": 1, "Max": 1, "Mean": 1, "Stddev": 0, "Labels": labels,
                        }));
                    }
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        let (count, sum) = (h.get_sample_count(), h.get_sample_sum());
                        let key: Vec<String> = m
                            .get_label()
                            .iter()
                            .map(|l| l.value().to_string())
                            .collect();
                        let e = self.extremes(family.name(), &key);
                        let mean = if count > 0 { sum / count as f64 } else { 0.0 };
                        let stddev = e.map_or(0.0, |e| {
                            (e.sum_squares / count.max(1) as f64 - mean * mean)
                                .max(0.0)
                                .sqrt()
                        });
                        samples.push(json!({
                            "Name": name, "Count": count, "Rate": sum / uptime_s, "Sum": sum,
                            "Min": e.map_or(0.0, |e| e.min), "Max": e.map_or(0.0, |e| e.max),
                            "Mean": mean, "Stddev": stddev, "Labels": labels,
                        }));
                    }
                    _ => {}
                }
            }
        }
        json!({
            "Timestamp": timestamp(),
            "Gauges": gauges,
            "Points": [],
            "Counters": counters,
            "Samples": samples,
        })
    }

    fn extremes(&self, prom: &str, key: &[String]) -> Option<Extremes> {
        self.timings
            .iter()
            .find(|t| t.hist.desc().first().is_some_and(|d| d.fq_name == prom))
            .and_then(|t| t.extremes.lock().expect("timing lock").get(key).copied())
    }
}

/// `consul.raft.commitTime` → `consul_raft_commitTime`.
fn prom_name(consul: &str) -> String {
    consul.replace('.', "_")
}

/// The Consul name of a Prometheus name: the first three underscores of
/// names like `consul_raft_commitTime` are dots; multi-word parts keep
/// theirs (`consul_rpc_request_error` → `consul.rpc.request_error`).
fn consul_name(prom: &str) -> String {
    const KNOWN: &[&str] = &[
        "consul.raft.apply",
        "consul.raft.commitTime",
        "consul.raft.state.leader",
        "consul.fsm.apply",
        "consul.rpc.request",
        "consul.rpc.request_error",
        "consul.api.http",
        "consul.api.http.errors",
        "consul.agent.check.transition",
        "consul.agent.anti_entropy.sync",
        "consul.agent.anti_entropy.error",
        "consul.session_ttl.invalidate",
        "consul.session_ttl.active",
        "consul.catalog.nodes",
        "consul.catalog.services",
        "consul.kv.entries",
        "consul.raft.applied_index",
        "consul.server.isLeader",
    ];
    KNOWN
        .iter()
        .find(|k| prom_name(k) == prom)
        .map_or_else(|| prom.replace('_', "."), |k| k.to_string())
}

/// `2026-11-29 16:20:00 +0000 UTC`, as Go prints a UTC time.
fn timestamp() -> String {
    let secs = clock::wall_unix_secs();
    let iso = mesh_core::state::intentions::rfc3339(secs);
    format!("{} {} +0000 UTC", &iso[..10], &iso[11..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_prometheus_show_every_kind() {
        let t = Telemetry::new();
        t.raft_apply.inc(&[]);
        t.raft_apply.inc(&[]);
        t.rpc_request_error.inc(&["Write"]);
        t.http.observe(&["GET", "/v1/kv"], Duration::from_millis(4));
        t.http.observe(&["GET", "/v1/kv"], Duration::from_millis(8));
        t.set_gauge("consul.session_ttl.active", "Sessions with a TTL.", 3);
        let v = t.json();
        let find = |kind: &str, name: &str| {
            v[kind]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["Name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} in {kind}: {v}"))
        };
        assert_eq!(find("Counters", "consul.raft.apply")["Count"], 2);
        let e = find("Counters", "consul.rpc.request_error");
        assert_eq!(e["Labels"]["kind"], "Write");
        let s = find("Samples", "consul.api.http");
        assert_eq!(
            (s["Count"].as_u64(), s["Min"].as_f64(), s["Max"].as_f64()),
            (Some(2), Some(4.0), Some(8.0))
        );
        assert_eq!(s["Mean"], 6.0);
        assert_eq!(s["Stddev"], 2.0);
        assert_eq!(find("Gauges", "consul.session_ttl.active")["Value"], 3.0);
        assert!(v["Timestamp"].as_str().unwrap().ends_with("+0000 UTC"));
        let text = t.prometheus();
        assert!(text.contains("consul_raft_apply 2"), "{text}");
        assert!(
            text.contains("consul_api_http_count{method=\"GET\",path=\"/v1/kv\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE consul_session_ttl_active gauge"),
            "{text}"
        );
    }
}
