//! KV clients on the client host, going through the production HTTP API.
//!
//! Each client writes keys of its own (`w/<client>/<n>`, each once) to
//! servers picked by the seeded RNG, then reads its last acknowledged key
//! back in the default (never stale) mode. It records what was
//! acknowledged, and checks two client-visible properties on the way:
//! a default-mode read sees every write acknowledged before it started
//! (linearizable reads; no stale read from a deposed leader), and the
//! `X-Consul-Index` of those reads never goes backwards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::checkers::linearizable::{Op, OpKind};
use crate::checkers::monotonic_index::MonotonicIndex;
use mesh_core::api::KvPair;
use mesh_net::http_client::{HttpClient, HttpClientError, HttpResponse};

/// What the workload observed.
#[derive(Default, Debug)]
pub struct History {
    /// Acknowledged writes: key → value.
    pub acked: BTreeMap<String, Vec<u8>>,
    /// Writes that failed or whose outcome is unknown.
    pub unacked: u64,
    /// Reads that returned data.
    pub reads_ok: u64,
    /// Reads that failed (no leader etc.), which is allowed.
    pub reads_failed: u64,
    /// Violations seen by clients.
    pub violations: Vec<String>,
    /// Operations on the shared registers, per key, for the
    /// linearizability checker.
    pub registers: BTreeMap<String, Vec<Op>>,
}

/// Shared register keys every client reads and overwrites.
const REGISTERS: u64 = 3;

fn now_ns() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_nanos() as u64
}

/// One operation on a shared register, recorded with its timing: a
/// default-mode read (40%), a write (25%), a read-then-CAS against the
/// ModifyIndex just read (20%), or a delete (15%).
async fn register_op(
    id: usize,
    n: u64,
    rng: &mut StdRng,
    client: &mut HttpClient,
    history: &SharedHistory,
) {
    let key = format!("reg/{}", rng.gen_range(0..REGISTERS));
    let pick = rng.gen_range(0..100u32);
    let path = format!("/v1/kv/{key}");
    let value = format!("c{id}-{n}");
    let record = |call: u64, ret: u64, kind: OpKind| {
        let mut h = history.lock().expect("history");
        h.registers.entry(key.clone()).or_default().push(Op {
            client: id,
            call,
            ret,
            kind,
        });
    };
    let call = now_ns();
    match pick {
        0..40 => {
            if let Some(seen) = read_register(client, &path).await {
                record(call, now_ns(), OpKind::Read(seen.map(|(v, _)| v)));
            }
        }
        40..65 => {
            let r = client
                .request("PUT", &path, value.clone().into_bytes())
                .await;
            record(call, acked_at(&r), OpKind::Write(value));
        }
        65..85 => {
            let Some(seen) = read_register(client, &path).await else {
                return;
            };
            record(call, now_ns(), OpKind::Read(seen.clone().map(|(v, _)| v)));
            let (expected, index) = match seen {
                Some((v, index)) => (Some(v), index),
                None => (None, 0),
            };
            let call = now_ns();
            let r = client
                .request(
                    "PUT",
                    &format!("{path}?cas={index}"),
                    value.clone().into_bytes(),
                )
                .await;
            let swapped = match &r {
                Ok(r) if r.status == 200 => Some(r.body.starts_with(b"true")),
                // Failed or timed out: it may still take effect later.
                _ => None,
            };
            let ret = if swapped.is_some() {
                now_ns()
            } else {
                u64::MAX
            };
            record(
                call,
                ret,
                OpKind::Cas {
                    expected,
                    new: value,
                    swapped,
                },
            );
        }
        _ => {
            let r = client.request("DELETE", &path, vec![]).await;
            record(call, acked_at(&r), OpKind::Delete);
        }
    }
}

/// When an update was acknowledged: now if the server said `true`, else
/// never (it failed or timed out, and may still take effect later).
fn acked_at(r: &Result<HttpResponse, HttpClientError>) -> u64 {
    match r {
        Ok(r) if r.status == 200 && r.body.starts_with(b"true") => now_ns(),
        _ => u64::MAX,
    }
}

/// A default-mode read of one register: `Some(None)` if absent,
/// `Some(Some((value, ModifyIndex)))` if present, `None` if the read failed
/// (which had no effect).
async fn read_register(client: &mut HttpClient, path: &str) -> Option<Option<(String, u64)>> {
    let r = client.request("GET", path, vec![]).await.ok()?;
    match r.status {
        404 => Some(None),
        200 => {
            let pairs: Vec<KvPair> = serde_json::from_slice(&r.body).ok()?;
            let pair = pairs.first()?;
            let value = String::from_utf8(pair.decoded_value().ok()?).ok()?;
            Some(Some((value, pair.modify_index)))
        }
        _ => None,
    }
}

/// Shared history.
pub type SharedHistory = Arc<Mutex<History>>;

/// How a workload client behaves.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Pause between operations.
    pub pause: Duration,
    /// Minimum size of the values of unique-key writes.
    pub value_bytes: usize,
    /// How long a request may take before the client gives up on it
    /// (a write's outcome is then unknown).
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            pause: Duration::from_millis(20),
            value_bytes: 0,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs one client against `servers` (HTTP addresses) until `stop` is set.
pub async fn run_client(
    id: usize,
    servers: Vec<String>,
    history: SharedHistory,
    stop: Arc<std::sync::atomic::AtomicBool>,
    options: ClientOptions,
) {
    let ClientOptions {
        pause,
        value_bytes,
        request_timeout,
    } = options;
    let mut n = 0u64;
    let mut index_check = MonotonicIndex::default();
    let mut clients: Vec<HttpClient> = servers
        .iter()
        .map(|a| HttpClient::new(a.clone(), request_timeout))
        .collect();
    let mut last_acked: Option<(String, Vec<u8>)> = None;
    let mut rng = crate::seeds::rng("client", id as u64);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let target = rng.gen_range(0..clients.len());
        if rng.gen_bool(0.5) {
            register_op(id, n, &mut rng, &mut clients[target], &history).await;
            n += 1;
            madsim::time::sleep(pause).await;
            continue;
        }
        let key = format!("w/{id}/{n}");
        let mut value = format!("v{n}").into_bytes();
        value.resize(value.len().max(value_bytes), b'x');
        n += 1;
        match clients[target]
            .request("PUT", &format!("/v1/kv/{key}"), value.clone())
            .await
        {
            Ok(r) if r.status == 200 && r.body.starts_with(b"true") => {
                history
                    .lock()
                    .expect("history")
                    .acked
                    .insert(key.clone(), value.clone());
                // Check-and-set with index 0 means "only if absent": on a
                // key that exists it must fail and change nothing.
                if n.is_multiple_of(3) {
                    let target = rng.gen_range(0..clients.len());
                    let path = format!("/v1/kv/{key}?cas=0");
                    if let Ok(r) = clients[target]
                        .request("PUT", &path, b"clobbered".to_vec())
                        .await
                    {
                        if r.status == 200 && r.body.starts_with(b"true") {
                            history.lock().expect("history").violations.push(format!(
                                "client {id}: PUT {key}?cas=0 overwrote an existing key"
                            ));
                        }
                    }
                }
                last_acked = Some((key, value));
            }
            _ => history.lock().expect("history").unacked += 1,
        }
        if let Some((key, value)) = &last_acked {
            let target = rng.gen_range(0..clients.len());
            match clients[target]
                .request("GET", &format!("/v1/kv/{key}?raw"), vec![])
                .await
            {
                Ok(r) if r.status == 200 => {
                    let mut h = history.lock().expect("history");
                    h.reads_ok += 1;
                    if r.body != *value {
                        h.violations.push(format!(
                            "client {id}: read of {key} returned {:?}",
                            r.text()
                        ));
                    }
                    if let Some(idx) = r
                        .header("x-consul-index")
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        if let Err(e) = index_check.observe(id, idx) {
                            h.violations.push(e);
                        }
                    }
                }
                Ok(r) if r.status == 404 => {
                    history.lock().expect("history").violations.push(format!(
                        "client {id}: stale read: acknowledged key {key} not found via {}",
                        servers[target]
                    ))
                }
                _ => history.lock().expect("history").reads_failed += 1,
            }
        }
        madsim::time::sleep(pause).await;
    }
}
