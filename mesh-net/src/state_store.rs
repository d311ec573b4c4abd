//! The Raft state machine store: applies committed entries to
//! `mesh_core::state::StateMachine`, builds and installs snapshots, and keeps
//! the latest snapshot on disk (`snapshot_file`) so a restarted server
//! starts from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use mesh_core::state::{Command, CommandResult, KvCommand, StateMachine};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::Instant;
use crate::disk::Disk;
use crate::log_store::OpenError;
use crate::mutants::{self, Mutant};
use crate::raft_types::{
    Entry, LogId, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::snapshot_file::SnapshotFile;

struct Inner {
    sm: StateMachine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Counts the snapshots this process built, to name them: atomic, so
    /// a build needs only the read lock.
    snapshots_built: AtomicU64,
    /// `(applied index, digest)` computed last; the digest walks the whole
    /// state, and checkers ask for it often.
    digest_cache: std::sync::Mutex<Option<(u64, u64)>>,
    /// Keys nobody may lock before the instant (on this host's clock)
    /// because the session that held them was invalidated: set as entries
    /// are applied, enforced by this server while it leads. Not state: a
    /// restarted server or a snapshot install starts without, as in Consul.
    lock_delays: BTreeMap<String, Instant>,
}

/// Shared, read-only access to the applied state for the HTTP API and the
/// simulator's checkers.
#[derive(Clone)]
pub struct StateView {
    inner: Arc<RwLock<Inner>>,
    applied: watch::Receiver<u64>,
}

impl StateView {
    /// Runs `f` on the current state machine.
    pub fn read<T>(&self, f: impl FnOnce(&StateMachine) -> T) -> T {
        f(&self.inner.read().expect("state lock poisoned").sm)
    }

    /// The Raft index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Until when `key` may not be locked (its holder's session was
    /// invalidated less than a lock delay ago), if it is delayed now.
    pub fn lock_delayed_until(&self, key: &str) -> Option<Instant> {
        let inner = self.inner.read().expect("state lock poisoned");
        inner
            .lock_delays
            .get(key)
            .copied()
            .filter(|until| *until > Instant::now())
    }

    /// The applied index and the state digest at that index, read atomically.
    pub fn digest(&self) -> (u64, u64) {
        let inner = self.inner.read().expect("state lock poisoned");
        let applied = inner.sm.last_applied();
        let mut cache = inner.digest_cache.lock().expect("digest cache poisoned");
        match *cache {
            // The state changes only by applying (which advances the index)
            // or by installing a snapshot (which clears the cache).
            Some((index, digest)) if index == applied => (index, digest),
            _ => {
                let digest = inner.sm.digest();
                *cache = Some((applied, digest));
                (applied, digest)
            }
        }
    }

    /// Resolves once the applied index changes (or immediately if it changed
    /// since the last call on this view); never, once the store is gone.
    pub async fn changed(&mut self) {
        // An error means the store is gone (the server shut down): nothing
        // will change again, so wait forever and let the caller's timeout
        // end the wait. Returning at once made every `while !ready {
        // changed().await }` loop spin: a blocking read against a server
        // that had left (the agent's CA-roots watch in `leave_rejoin`)
        // kept a simulation busy without time passing.
        if self.applied.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The state machine half of a server's Raft storage.
pub struct StateStore {
    file: Arc<SnapshotFile>,
    telemetry: crate::telemetry::Telemetry,
    inner: Arc<RwLock<Inner>>,
    applied_tx: watch::Sender<u64>,
}

/// The meta of a new snapshot of the applied state, named after the last
/// applied entry and the count of snapshots this process made.
fn next_snapshot_meta(inner: &Inner) -> SnapshotMeta {
    let built = inner.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
    let last = inner.last_applied;
    let snapshot_id = match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, built),
        None => format!("0-0-{built}"),
    };
    SnapshotMeta {
        last_log_id: last,
        last_membership: inner.membership.clone(),
        snapshot_id,
    }
}

/// Writes a snapshot of the applied state to the staging file and puts it
/// in place after the state's lock is released (the sync can take a
/// while). The write holds the state's read lock: applies wait for it, and
/// so do reads that come after a waiting apply (std's lock lets writers
/// go first), for as long as writing the state to the page cache takes.
async fn build_snapshot(
    file: &Arc<SnapshotFile>,
    inner: &RwLock<Inner>,
) -> std::io::Result<(SnapshotMeta, bool)> {
    let _building = file.lock_build().await;
    let (meta, staged) = {
        let inner = inner.read().expect("state lock poisoned");
        let meta = next_snapshot_meta(&inner);
        let staged = file.build(&meta, |out| inner.sm.write_snapshot(out))?;
        (meta, staged)
    };
    let placed = file.commit(staged).await?;
    Ok((meta, placed))
}

/// Notes an entry without state change. openraft's `initialize` writes the
/// first membership at index 0, which the state machine's "strictly after"
/// rule would reject: nothing precedes it, so there is nothing to record.
fn skip(sm: &mut StateMachine, index: u64) {
    if index > 0 {
        sm.skip(index);
    }
}

impl StateStore {
    /// Opens the state store, starting from the stored snapshot if any.
    pub fn open(
        disk: Arc<dyn Disk>,
        telemetry: crate::telemetry::Telemetry,
    ) -> Result<(Self, StateView), OpenError> {
        let mut inner = Inner {
            sm: StateMachine::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshots_built: AtomicU64::new(0),
            digest_cache: std::sync::Mutex::new(None),
            lock_delays: BTreeMap::new(),
        };
        let (file, found) = SnapshotFile::open(disk)?;
        if let Some((meta, sm)) = found {
            inner.sm = sm;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            info!(last_applied = ?meta.last_log_id.map(|l| l.index), "restored state from snapshot");
        }
        let applied = inner.last_applied.map_or(0, |l| l.index);
        let (applied_tx, applied_rx) = watch::channel(applied);
        let inner = Arc::new(RwLock::new(inner));
        let view = StateView {
            inner: inner.clone(),
            applied: applied_rx,
        };
        Ok((
            Self {
                file: Arc::new(file),
                telemetry,
                inner,
                applied_tx,
            },
            view,
        ))
    }

    /// The snapshot file, where snapshots from the leader arrive.
    pub(crate) fn snapshot_file(&self) -> Arc<SnapshotFile> {
        self.file.clone()
    }

    /// Builds a snapshot of the applied state and returns it as stored.
    async fn snapshot_now(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        snapshot_now(&self.file, &self.inner).await
    }
}

/// [`build_snapshot`], then the snapshot as the file now holds it.
async fn snapshot_now(
    file: &Arc<SnapshotFile>,
    inner: &RwLock<Inner>,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let (meta, placed) = build_snapshot(file, inner)
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
    if !placed {
        // A snapshot installed while this one was built is newer.
        info!(snapshot = %meta.snapshot_id, "kept the newer snapshot already stored");
    }
    let (meta, data) = match file.current() {
        Ok(Some(data)) => (data.meta().clone(), data),
        Ok(None) => {
            let e = std::io::Error::other("no snapshot stored after building one");
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into());
        }
        Err(why) => {
            let e = std::io::Error::other(why);
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into());
        }
    };
    info!(last_log_id = ?meta.last_log_id.map(|l| l.index), bytes = data.len(), "built snapshot");
    Ok(Snapshot {
        meta,
        snapshot: Box::new(data),
    })
}

/// Builds snapshots from a point-in-time copy of the state.
pub struct SnapshotBuilder {
    store: StateStoreRef,
}

/// What a [`SnapshotBuilder`] needs from its store.
struct StateStoreRef {
    file: Arc<SnapshotFile>,
    inner: Arc<RwLock<Inner>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        snapshot_now(&self.store.file, &self.store.inner).await
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.inner.read().expect("state lock poisoned");
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let applied = {
            let mut inner = self.inner.write().expect("state lock poisoned");
            for entry in entries {
                let index = entry.log_id.index;
                match entry.payload {
                    EntryPayload::Normal(cmd) => {
                        let cmd = match cmd {
                            Command::Kv(KvCommand::Cas {
                                key, value, flags, ..
                            }) if mutants::enabled(Mutant::CasWithoutCompare) => {
                                Command::Kv(KvCommand::Set { key, value, flags })
                            }
                            Command::Kv(KvCommand::Unlock {
                                key, value, flags, ..
                            }) if mutants::enabled(Mutant::ReleaseByAnyone) => {
                                let holder =
                                    inner.sm.kv().get(&key).and_then(|e| e.session.clone());
                                let session = holder.unwrap_or_default();
                                Command::Kv(KvCommand::Unlock {
                                    key,
                                    value,
                                    flags,
                                    session,
                                })
                            }
                            Command::Kv(KvCommand::Txn { mut ops })
                                if mutants::enabled(Mutant::TxnAppliedHalf) && ops.len() > 1 =>
                            {
                                ops.truncate(ops.len().div_ceil(2));
                                Command::Kv(KvCommand::Txn { ops })
                            }
                            cmd => cmd,
                        };
                        self.telemetry.fsm_apply.inc(&[cmd.name()]);
                        results.push(inner.sm.apply(index, &cmd))
                    }
                    EntryPayload::Blank => {
                        skip(&mut inner.sm, index);
                        results.push(CommandResult::Bool(true));
                    }
                    EntryPayload::Membership(m) => {
                        skip(&mut inner.sm, index);
                        inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        results.push(CommandResult::Bool(true));
                    }
                }
                inner.last_applied = Some(entry.log_id);
            }
            let delays = inner.sm.take_lock_delays();
            if !delays.is_empty() {
                let now = Instant::now();
                inner.lock_delays.retain(|_, until| *until > now);
                for d in delays {
                    let until = now + std::time::Duration::from_millis(d.delay_ms);
                    let slot = inner.lock_delays.entry(d.key).or_insert(until);
                    *slot = (*slot).max(until);
                }
            }
            inner.last_applied.map_or(0, |l| l.index)
        };
        self.applied_tx.send_replace(applied);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: StateStoreRef {
                file: self.file.clone(),
                inner: self.inner.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        // Snapshots arrive through `Server::receive_chunk` into the
        // snapshot file; openraft's chunked API, which would call this,
        // is not used.
        let e = std::io::Error::other("snapshots are received through the snapshot file");
        Err(StorageIOError::read_snapshot(None, &e).into())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let sm = snapshot.restore().map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e))
        })?;
        snapshot
            .commit()
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let applied = {
            let mut inner = self.inner.write().expect("state lock poisoned");
            if !mutants::enabled(Mutant::SkipSnapshotInstall) {
                inner.sm = sm;
            }
            *inner.digest_cache.lock().expect("digest cache poisoned") = None;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.last_applied.map_or(0, |l| l.index)
        };
        info!(last_log_id = ?meta.last_log_id.map(|l| l.index), "installed snapshot from leader");
        self.applied_tx.send_replace(applied);
        Ok(())
    }

    /// The stored snapshot, for a transfer that reads it a part at a
    /// time. If the file does not hold what this process wrote (a read
    /// error, a damaged part found by an earlier transfer, an operator
    /// removed it), a new snapshot of the applied state takes its place:
    /// an error here would stop Raft.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match self.file.current() {
            Ok(Some(data)) => Ok(Some(Snapshot {
                meta: data.meta().clone(),
                snapshot: Box::new(data),
            })),
            Ok(None) => Ok(None),
            Err(reason) => {
                warn!(%reason, "the stored snapshot cannot be read; sending the applied state");
                self.snapshot_now().await.map(Some)
            }
        }
    }
}
