//! KV clients on the client host, going through the production HTTP API.
//!
//! Each client writes keys of its own (`w/<client>/<n>`, each once) to
//! servers picked by the seeded RNG, then reads its last acknowledged key
//! back in the default (never stale) mode. It records what was
//! acknowledged, and checks two client-visible properties on the way:
//! a default-mode read sees every write acknowledged before it started
//! (linearizable reads; no stale read from a deposed leader), and the
//! `X-Consul-Index` of those reads never goes backwards.
//!
//! Every update's answer is classified (`crate::outcome`): applied,
//! definitely failed (recorded so `checkers::definite_failures` can prove
//! it never took effect, and left out of the linearizability history since
//! it did not happen), or unknown (it may take effect at any later time).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::checkers::definite_failures::FailedWrite;
use crate::checkers::linearizable::{Op, OpKind};
use crate::checkers::monotonic_index::MonotonicIndex;
use crate::checkers::work_done::WorkDone;
use crate::outcome::{classify, Outcome};
use crate::planted::{self, SimMutant};
use mesh_core::hash::Fnv1a64;
use mesh_net::http_client::{HttpClient, HttpClientError, HttpResponse};

use crate::checkers::write_gap::WriteAttempt;

/// What the workload observed.
#[derive(Default, Debug)]
pub struct History {
    /// Acknowledged writes: key → value.
    pub acked: BTreeMap<String, Vec<u8>>,
    /// Unique-key writes whose outcome is unknown.
    pub unacked: u64,
    /// Successful operations by kind.
    pub work: WorkDone,
    /// Reads that failed (no leader etc.), which is allowed.
    pub reads_failed: u64,
    /// Writes (unique-key, register, CAS) the client saw fail definitely.
    pub definite_failures: Vec<FailedWrite>,
    /// What the unique-key reads returned: (client, key, value).
    pub reads_seen: Vec<(usize, String, Vec<u8>)>,
    /// Violations seen by clients.
    pub violations: Vec<String>,
    /// Operations on the shared registers, per key, for the
    /// linearizability checker.
    pub registers: BTreeMap<String, Vec<Op>>,
    /// Every unique-key write with its timing (for `checkers::write_gap`).
    pub write_attempts: Vec<WriteAttempt>,
}

/// Servers the clients must not pick (the faulted one), as a load balancer
/// with health checks would skip a dead host.
pub type Avoid = Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>;

/// Moves a drawn server off the avoided ones (the draw itself is the same
/// either way, so runs that avoid nothing replay exactly as before).
/// Returns the server and whether it is avoided (every server is).
fn steer(drawn: usize, n: usize, avoid: &Avoid) -> (usize, bool) {
    let avoided = avoid.lock().expect("avoid lock");
    match (0..n)
        .map(|k| (drawn + k) % n)
        .find(|s| !avoided.contains(s))
    {
        Some(s) => (s, false),
        None => (drawn, true),
    }
}

/// Shared register keys every client reads and overwrites.
const REGISTERS: u64 = 3;

impl History {
    /// Records a write the client saw fail definitely: it must never take
    /// effect (`checkers::definite_failures`).
    fn definite_failure(&mut self, client: usize, key: String, value: Vec<u8>, why: String) {
        self.definite_failures.push(FailedWrite {
            client,
            key,
            value,
            why,
        });
    }

    /// A digest of everything the clients did and saw, with simulated
    /// times: the same seed must give the same digest (a second determinism
    /// check beside the trace hash, on what the checkers judge).
    pub fn digest(&self) -> u64 {
        let mut h = Fnv1a64::new();
        let text = |h: &mut Fnv1a64, s: &[u8]| h.len_prefixed(s);
        h.u64(self.acked.len() as u64);
        for (k, v) in &self.acked {
            text(&mut h, k.as_bytes());
            text(&mut h, v);
        }
        for n in [self.unacked, self.reads_failed] {
            h.u64(n);
        }
        text(&mut h, self.work.to_string().as_bytes());
        h.u64(self.definite_failures.len() as u64);
        for f in &self.definite_failures {
            h.u64(f.client as u64);
            text(&mut h, f.key.as_bytes());
            text(&mut h, &f.value);
            text(&mut h, f.why.as_bytes());
        }
        h.u64(self.reads_seen.len() as u64);
        for (c, k, v) in &self.reads_seen {
            h.u64(*c as u64);
            text(&mut h, k.as_bytes());
            text(&mut h, v);
        }
        h.u64(self.violations.len() as u64);
        for v in &self.violations {
            text(&mut h, v.as_bytes());
        }
        for (key, ops) in &self.registers {
            text(&mut h, key.as_bytes());
            h.u64(ops.len() as u64);
            for op in ops {
                h.u64(op.client as u64);
                h.u64(op.call);
                h.u64(op.ret);
                text(&mut h, format!("{:?}", op.kind).as_bytes());
            }
        }
        h.finish()
    }
}

/// Sends one request, through the planted bugs of `crate::planted`.
async fn send(
    client: &mut HttpClient,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<HttpResponse, HttpClientError> {
    let r = client.request(method, path, body).await;
    let planted = match method {
        "GET" => planted::enabled(SimMutant::GetFails),
        "PUT" => planted::enabled(SimMutant::PutFails),
        _ => false,
    };
    let applied = matches!(&r, Ok(r) if r.status == 200 && r.body.starts_with(b"true"));
    if method == "PUT" && applied && planted::enabled(SimMutant::AppliedPutSaysNoLeader) {
        return Ok(HttpResponse {
            status: 500,
            headers: vec![],
            body: format!("{}\n", crate::outcome::NO_LEADER_BODY).into_bytes(),
        });
    }
    match r {
        Ok(_) if planted => Ok(HttpResponse {
            status: 500,
            headers: vec![],
            body: format!("planted bug: every {method} fails; the outcome is unknown\n")
                .into_bytes(),
        }),
        r => r,
    }
}

/// Why a definitely failed request failed, for messages.
fn why(r: &Result<HttpResponse, HttpClientError>) -> String {
    match r {
        Ok(r) => format!("{} {}", r.status, r.text().trim()),
        Err(e) => e.to_string(),
    }
}

pub(crate) fn now_ns() -> u64 {
    madsim::time::TimeHandle::current().elapsed().as_nanos() as u64
}

/// A register operation's kind.
#[derive(Debug, Clone, Copy)]
enum RegisterOp {
    Read,
    Write,
    Cas,
    Delete,
}

/// The kinds of register operation in each deck a client deals from: two
/// reads, a write, a read-then-CAS and a delete, in a seeded order. Every
/// five register operations of a client hold each kind, so even a short
/// run exercises all of them (`checkers::work_done` requires it), where
/// independent draws left some short runs without a single delete.
const DECK: [RegisterOp; 5] = [
    RegisterOp::Read,
    RegisterOp::Read,
    RegisterOp::Write,
    RegisterOp::Cas,
    RegisterOp::Delete,
];

/// One operation on a shared register, recorded with its timing: a
/// default-mode read, a write, a read-then-CAS against the ModifyIndex just
/// read, or a delete.
async fn register_op(
    id: usize,
    n: u64,
    op: RegisterOp,
    rng: &mut StdRng,
    client: &mut HttpClient,
    history: &SharedHistory,
) {
    let key = format!("reg/{}", rng.gen_range(0..REGISTERS));
    let path = format!("/v1/kv/{key}");
    let value = format!("c{id}-{n}");
    let record = |call: u64, ret: u64, kind: OpKind| {
        let mut h = history.lock().expect("history");
        match &kind {
            OpKind::Read(_) => h.work.register_reads += 1,
            _ if ret == u64::MAX => {}
            OpKind::Write(_) => h.work.register_writes += 1,
            OpKind::Delete => h.work.register_deletes += 1,
            OpKind::Cas { swapped, .. } => {
                h.work.register_cas += u64::from(*swapped == Some(true));
            }
        }
        h.registers.entry(key.clone()).or_default().push(Op {
            client: id,
            call,
            ret,
            kind,
        });
    };
    // A definitely failed update did not happen: it stays out of the
    // linearizability history, and its value must never be seen.
    let failed = |r: &Result<HttpResponse, HttpClientError>, value: Option<&str>| {
        if let Some(value) = value {
            history.lock().expect("history").definite_failure(
                id,
                key.clone(),
                value.as_bytes().to_vec(),
                why(r),
            );
        }
    };
    let call = now_ns();
    match op {
        RegisterOp::Read => {
            if let Some(seen) = read_register(client, &path).await {
                record(call, now_ns(), OpKind::Read(seen.map(|(v, _)| v)));
            }
        }
        RegisterOp::Write => {
            let r = send(client, "PUT", &path, value.clone().into_bytes()).await;
            match classify(&r) {
                Outcome::DefiniteFailure => failed(&r, Some(&value)),
                Outcome::Applied => record(call, now_ns(), OpKind::Write(value)),
                Outcome::Refused | Outcome::Unknown => record(call, u64::MAX, OpKind::Write(value)),
            }
        }
        RegisterOp::Cas => {
            let Some(seen) = read_register(client, &path).await else {
                return;
            };
            record(call, now_ns(), OpKind::Read(seen.clone().map(|(v, _)| v)));
            let (expected, index) = match seen {
                Some((v, index)) => (Some(v), index),
                None => (None, 0),
            };
            let call = now_ns();
            let r = send(
                client,
                "PUT",
                &format!("{path}?cas={index}"),
                value.clone().into_bytes(),
            )
            .await;
            let (ret, swapped) = match classify(&r) {
                Outcome::DefiniteFailure => return failed(&r, Some(&value)),
                Outcome::Applied => (now_ns(), Some(true)),
                Outcome::Refused => (now_ns(), Some(false)),
                // It may still take effect later.
                Outcome::Unknown => (u64::MAX, None),
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
        RegisterOp::Delete => {
            let r = send(client, "DELETE", &path, vec![]).await;
            match classify(&r) {
                Outcome::DefiniteFailure => failed(&r, None),
                Outcome::Applied => record(call, now_ns(), OpKind::Delete),
                Outcome::Refused | Outcome::Unknown => record(call, u64::MAX, OpKind::Delete),
            }
        }
    }
}

/// A default-mode read of one register: `Some(None)` if absent,
/// `Some(Some((value, ModifyIndex)))` if present, `None` if the read failed
/// (which had no effect).
async fn read_register(client: &mut HttpClient, path: &str) -> Option<Option<(String, u64)>> {
    crate::outcome::register_read(&send(client, "GET", path, vec![]).await.ok()?)
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
    avoid: Avoid,
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
    let mut deck: Vec<RegisterOp> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let target = rng.gen_range(0..clients.len());
        if rng.gen_bool(0.5) {
            if deck.is_empty() {
                deck = DECK.to_vec();
                deck.shuffle(&mut rng);
            }
            let op = deck.pop().expect("refilled above");
            let (target, _) = steer(target, clients.len(), &avoid);
            register_op(id, n, op, &mut rng, &mut clients[target], &history).await;
            n += 1;
            madsim::time::sleep(pause).await;
            continue;
        }
        let key = format!("w/{id}/{n}");
        let mut value = format!("v{n}").into_bytes();
        value.resize(value.len().max(value_bytes), b'x');
        n += 1;
        let (target, avoided) = steer(target, clients.len(), &avoid);
        let call_ns = now_ns();
        let r = send(
            &mut clients[target],
            "PUT",
            &format!("/v1/kv/{key}"),
            value.clone(),
        )
        .await;
        history
            .lock()
            .expect("history")
            .write_attempts
            .push(WriteAttempt {
                server: target,
                call_ns,
                ret_ns: now_ns(),
                acked: classify(&r) == Outcome::Applied,
                avoided,
            });
        match classify(&r) {
            Outcome::Applied => {
                {
                    let mut h = history.lock().expect("history");
                    h.acked.insert(key.clone(), value.clone());
                    h.work.writes += 1;
                }
                // Check-and-set with index 0 means "only if absent": on a
                // key that exists it must fail and change nothing.
                if n.is_multiple_of(3) {
                    let (target, _) = steer(rng.gen_range(0..clients.len()), clients.len(), &avoid);
                    let path = format!("/v1/kv/{key}?cas=0");
                    if let Ok(r) =
                        send(&mut clients[target], "PUT", &path, b"clobbered".to_vec()).await
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
            Outcome::DefiniteFailure => {
                let why = why(&r);
                history
                    .lock()
                    .expect("history")
                    .definite_failure(id, key, value, why);
            }
            Outcome::Refused | Outcome::Unknown => history.lock().expect("history").unacked += 1,
        }
        if let Some((key, value)) = &last_acked {
            let (target, _) = steer(rng.gen_range(0..clients.len()), clients.len(), &avoid);
            match send(
                &mut clients[target],
                "GET",
                &format!("/v1/kv/{key}?raw"),
                vec![],
            )
            .await
            {
                Ok(r) if r.status == 200 => {
                    let mut h = history.lock().expect("history");
                    h.work.reads += 1;
                    h.reads_seen.push((id, key.clone(), r.body.clone()));
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
