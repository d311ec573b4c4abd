//! The agent's Connect cache: the CA roots and one leaf certificate per
//! local service, kept fresh so sidecars get them from their own agent
//! (`/v1/agent/connect/ca/roots`, `/v1/agent/connect/ca/leaf/:service`).
//!
//! A leaf's key pair is generated here and never leaves the host; only the
//! public key goes to the leader, which signs it. A leaf is renewed at a
//! jittered point between 60 % and 90 % of its lifetime
//! ([`ca::renew_at`]), and at once when the active root changes (rotation).
//! Lifetimes are judged on this host's wall clock ([`clock::wall_now`]).
//! Every change bumps the cache's index, so blocking readers wake on
//! renewal and rotation alike.
//!
//! The roots are refreshed with blocking reads of the CA table; while no
//! server answers, the cache keeps serving what it has.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use mesh_core::connect::ca::{self, IssuedLeaf, LeafKey};
use mesh_core::state::ca::CaView;
use mesh_core::wire::{Consistency, Query, QueryResult, ReadRequest, RpcError};
use openraft::AsyncRuntime;
use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::{Cluster, LeafRequest};
use crate::clock;
use crate::log_limit::Repeats;

/// How long one blocking read of the roots waits on the server.
const ROOTS_WAIT_MS: u64 = 10_000;
/// Pause after a failed roots read or leaf signing before the next try.
const RETRY: Duration = Duration::from_millis(500);

/// A leaf and its key, as the agent serves it.
#[derive(Clone, Debug)]
pub struct CachedLeaf {
    /// The signed certificate.
    pub leaf: IssuedLeaf,
    /// Its private key (redacted in `Debug`).
    pub key: Arc<LeafKey>,
    /// The cache index at which this leaf was stored.
    pub index: u64,
    /// When to renew, Unix seconds.
    pub renew_at: u64,
}

#[derive(Default)]
struct State {
    roots: Option<(u64, CaView)>,
    leaves: BTreeMap<String, CachedLeaf>,
    /// Services a sidecar asked a leaf for: kept renewed.
    wanted: std::collections::BTreeSet<String>,
    index: u64,
}

/// Roots and leaves for one agent.
pub struct ConnectCache {
    cluster: Arc<dyn Cluster>,
    datacenter: String,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

fn unix_now() -> u64 {
    clock::wall_now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ConnectCache {
    /// A cache for an agent in `datacenter`; start [`ConnectCache::run`].
    pub fn new(cluster: Arc<dyn Cluster>, datacenter: String) -> Arc<Self> {
        Arc::new(ConnectCache {
            cluster,
            datacenter,
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        })
    }

    fn bump(&self, st: &mut State) -> u64 {
        st.index += 1;
        self.changed.send_replace(st.index);
        st.index
    }

    /// The roots, with the cache index they were stored at; `None` before
    /// the first successful read. Waits up to `wait` for an index above
    /// `min_index` (a blocking query).
    pub async fn roots(&self, min_index: u64, wait: Duration) -> Option<(u64, CaView)> {
        if self.state.lock().expect("connect cache").roots.is_none() {
            self.refresh_roots().await.ok();
        }
        // Wait for the roots' own index to pass `min_index`: leaf
        // signings bump the cache's index too, and waking on those would
        // answer the same roots again at once, forever.
        let deadline = clock::Instant::now() + wait;
        let mut rx = self.changed.subscribe();
        loop {
            let roots = self.state.lock().expect("connect cache").roots.clone();
            if min_index == 0 || roots.as_ref().is_some_and(|(i, _)| *i > min_index) {
                return roots;
            }
            let left = deadline.saturating_duration_since(clock::Instant::now());
            if left.is_zero() || clock::timeout(left, rx.changed()).await.is_err() {
                return roots;
            }
        }
    }

    /// The leaf for `service`, signing one if the cache has none valid;
    /// waits up to `wait` for a leaf newer than `min_index`.
    pub async fn leaf(
        &self,
        service: &str,
        min_index: u64,
        wait: Duration,
    ) -> Result<CachedLeaf, RpcError> {
        let current = self.valid_leaf(service);
        let leaf = match current {
            Some(l) => l,
            None => self.sign(service).await?,
        };
        if min_index == 0 || leaf.index > min_index {
            return Ok(leaf);
        }
        // A blocking query: wake on any cache change for this service.
        let deadline = clock::Instant::now() + wait;
        let mut rx = self.changed.subscribe();
        loop {
            if let Some(l) = self.valid_leaf(service) {
                if l.index > min_index {
                    return Ok(l);
                }
            }
            let left = deadline.saturating_duration_since(clock::Instant::now());
            if left.is_zero() || clock::timeout(left, rx.changed()).await.is_err() {
                return match self.valid_leaf(service) {
                    Some(l) => Ok(l),
                    None => self.sign(service).await,
                };
            }
        }
    }

    /// The cached leaf for `service` if it is still within its validity
    /// on this host's clock.
    fn valid_leaf(&self, service: &str) -> Option<CachedLeaf> {
        let now = unix_now();
        let st = self.state.lock().expect("connect cache");
        st.leaves
            .get(service)
            .filter(|l| l.leaf.valid_after <= now + 60 && now < l.leaf.valid_before)
            .cloned()
    }

    /// Generates a key, has the leader sign it, and stores the leaf.
    async fn sign(&self, service: &str) -> Result<CachedLeaf, RpcError> {
        let key = ca::generate_leaf_key()
            .map_err(|e| RpcError::Internal(format!("generating a leaf key: {e}")))?;
        let leaf = self
            .cluster
            .sign_leaf(LeafRequest {
                service: service.to_owned(),
                datacenter: self.datacenter.clone(),
                public_key_der: key.public_key_der.clone(),
            })
            .await?;
        let jitter: f64 = crate::runtime::MeshRuntime::thread_rng().gen_range(0.0..1.0);
        // At least a minute away: near the root's end a leaf's lifetime
        // is clamped short, and a renewal point already past would re-sign
        // every round.
        let renew_at =
            ca::renew_at(leaf.valid_after, leaf.valid_before, jitter).max(unix_now() + 60);
        let mut st = self.state.lock().expect("connect cache");
        let index = self.bump(&mut st);
        let cached = CachedLeaf {
            leaf,
            key: Arc::new(key),
            index,
            renew_at,
        };
        info!(
            %service,
            serial = cached.leaf.serial_number,
            valid_before = cached.leaf.valid_before,
            "Connect leaf certificate issued"
        );
        st.leaves.insert(service.to_owned(), cached.clone());
        // Kept renewed from now on. Only names the leader signed get here,
        // so a client asking for garbage names cannot grow this set.
        st.wanted.insert(service.to_owned());
        Ok(cached)
    }

    /// One read of the roots (no waiting); stores them if they changed.
    async fn refresh_roots(&self) -> Result<(), RpcError> {
        let resp = self
            .cluster
            .read(ReadRequest {
                query: Query::CaRoots,
                consistency: Consistency::Stale,
                min_index: 0,
                wait_ms: 0,
            })
            .await?;
        if let QueryResult::Ca(view) = resp.result {
            self.store_roots(view);
        }
        Ok(())
    }

    /// Runs for the agent's lifetime: follows the roots, renews leaves
    /// before they expire and after a rotation.
    pub async fn run(self: Arc<Self>) {
        let mut server_index = 0;
        // The last failure logged: a long outage is one line, not two a
        // second, and the return is logged once.
        let mut failing = Repeats::default();
        loop {
            // Roots: a blocking read from the last index seen.
            let request = ReadRequest {
                query: Query::CaRoots,
                consistency: Consistency::Stale,
                min_index: server_index,
                wait_ms: ROOTS_WAIT_MS.min(self.next_renewal_ms()),
            };
            match self.cluster.read(request).await {
                Ok(resp) => {
                    if failing.cleared() {
                        info!("reading the Connect CA roots again");
                    }
                    server_index = resp.index;
                    if let QueryResult::Ca(view) = resp.result {
                        self.store_roots(view);
                    }
                }
                Err(e) => {
                    let error = e.to_string();
                    if failing.changed(&error) {
                        warn!(%error, "could not read the Connect CA roots; serving the cached ones (logged again when the error changes or reads succeed)");
                    }
                    clock::sleep(RETRY).await;
                }
            }
            self.renew_due().await;
        }
    }

    fn store_roots(&self, view: CaView) {
        if view.roots.is_empty() {
            return;
        }
        let mut st = self.state.lock().expect("connect cache");
        if st.roots.as_ref().is_some_and(|(_, v)| *v == view) {
            return;
        }
        let index = self.bump(&mut st);
        st.roots = Some((index, view));
    }

    /// Milliseconds until the earliest renewal is due (at least 100).
    fn next_renewal_ms(&self) -> u64 {
        let now = unix_now();
        let st = self.state.lock().expect("connect cache");
        st.leaves
            .values()
            .map(|l| l.renew_at.saturating_sub(now).saturating_mul(1000))
            .min()
            .unwrap_or(u64::MAX)
            .max(100)
    }

    /// Re-signs every wanted leaf that is due, expired, missing, or signed
    /// by a root that is no longer active.
    async fn renew_due(&self) {
        let now = unix_now();
        let due: Vec<String> = {
            let st = self.state.lock().expect("connect cache");
            let active = st.roots.as_ref().map(|(_, v)| v.active_root_id.clone());
            st.wanted
                .iter()
                .filter(|s| match st.leaves.get(*s) {
                    None => true,
                    Some(l) => {
                        (now >= l.renew_at
                            && !crate::mutants::enabled(
                                crate::mutants::Mutant::LeafNotRenewedByAge,
                            ))
                            || now >= l.leaf.valid_before
                            || active.as_ref().is_some_and(|a| *a != l.leaf.root_id)
                    }
                })
                .cloned()
                .collect()
        };
        let mut failed = false;
        for service in due {
            if let Err(e) = self.sign(&service).await {
                warn!(%service, error = %e, "could not renew the Connect leaf; will retry");
                failed = true;
            }
        }
        // One pause per round, not per service: N services must not cost
        // N pauses while the leader is away.
        if failed {
            clock::sleep(RETRY).await;
        }
    }
}
