//! The Raft state machine store: applies committed entries to
//! `mesh_core::state::StateMachine`, builds and installs snapshots, and keeps
//! the latest snapshot on disk so a restarted server starts from it.
//!
//! `snapshot.bin` is replaced atomically and holds one record:
//! `[meta_len: u32 LE][meta JSON][state machine bytes]`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use mesh_core::record;
use mesh_core::state::{Command, CommandResult, KvCommand, StateMachine};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;
use tracing::info;

use crate::clock::Instant;
use crate::disk::{wait_durable, Disk};
use crate::log_store::{read_record_spans, FileKind, OpenError};
use crate::mutants::{self, Mutant};
use crate::raft_types::{
    Entry, LogId, SnapshotBytes, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const SNAPSHOT_FILE: &str = "snapshot.bin";
const KIND_SNAPSHOT: u8 = 6;
/// The rest of a snapshot's bytes, after its first record.
const KIND_SNAPSHOT_MORE: u8 = 7;
/// Snapshot bytes per record: a state larger than one record may hold
/// (`record::MAX_RECORD_LEN`, 256 MiB) is stored as several. One record
/// made every server panic once its state passed 256 MiB (found by
/// `examples/join_large` at 1 GiB).
const SNAPSHOT_PART_LEN: usize = 64 << 20;

struct Inner {
    sm: StateMachine,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Whether `snapshot.bin` holds a snapshot. Its bytes stay on disk,
    /// read back only to send them to a follower: holding them in memory
    /// too made a server's memory twice its state, for good.
    has_snapshot: bool,
    snapshots_built: u64,
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
    disk: Arc<dyn Disk>,
    telemetry: crate::telemetry::Telemetry,
    inner: Arc<RwLock<Inner>>,
    applied_tx: watch::Sender<u64>,
}

/// Replaces the snapshot file with `meta` and `data`: a first record of
/// the meta and up to [`SNAPSHOT_PART_LEN`] bytes, then one record per
/// further part. Only the first record is built in memory; the other parts
/// are written from `data` itself.
fn write_snapshot(disk: &dyn Disk, meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<()> {
    let meta_json = serde_json::to_vec(meta).expect("snapshot meta serializes");
    let (first, rest) = data.split_at(data.len().min(SNAPSHOT_PART_LEN));
    let mut payload = Vec::with_capacity(4 + meta_json.len() + first.len());
    payload.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    payload.extend_from_slice(&meta_json);
    payload.extend_from_slice(first);
    let mut head = Vec::with_capacity(record::RECORD_HEADER_LEN + payload.len());
    record::encode_record(KIND_SNAPSHOT, &payload, &mut head);
    let headers: Vec<[u8; record::RECORD_HEADER_LEN]> = rest
        .chunks(SNAPSHOT_PART_LEN)
        .map(|part| record::record_header(KIND_SNAPSHOT_MORE, part))
        .collect();
    let mut parts: Vec<&[u8]> = vec![&head];
    for (header, part) in headers.iter().zip(rest.chunks(SNAPSHOT_PART_LEN)) {
        parts.push(header);
        parts.push(part);
    }
    disk.write_atomic_parts(SNAPSHOT_FILE, &parts)
}

/// The meta of a snapshot's first record, and where its state bytes start
/// in that record.
fn decode_snapshot_head(payload: &[u8]) -> Result<(SnapshotMeta, usize), String> {
    let len_bytes: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("snapshot record too short")?;
    let meta_len = u32::from_le_bytes(len_bytes) as usize;
    let meta_end = 4usize.checked_add(meta_len).ok_or("bad meta length")?;
    let meta_json = payload
        .get(4..meta_end)
        .ok_or("snapshot meta overruns record")?;
    let meta = serde_json::from_slice(meta_json).map_err(|e| e.to_string())?;
    Ok((meta, meta_end))
}

/// The snapshot in `snapshot.bin`, if there is one: its meta and the state
/// bytes. The state bytes are the file's own buffer with the record
/// headers and the meta squeezed out in place, so the file is held once.
fn read_snapshot(disk: &dyn Disk) -> Result<Option<(SnapshotMeta, Vec<u8>)>, OpenError> {
    let Some((mut bytes, spans)) = read_record_spans(
        disk,
        SNAPSHOT_FILE,
        FileKind::Atomic,
        &[KIND_SNAPSHOT, KIND_SNAPSHOT_MORE],
    )?
    else {
        return Ok(None);
    };
    let undecodable = |offset: u64, reason: String| OpenError::Undecodable {
        file: disk.describe(SNAPSHOT_FILE),
        offset,
        reason,
    };
    let Some((first, more)) = spans.split_first() else {
        return Ok(None);
    };
    if first.kind != KIND_SNAPSHOT {
        return Err(undecodable(
            first.offset,
            "snapshot file does not start with its header record".into(),
        ));
    }
    let (meta, data_start) = decode_snapshot_head(&bytes[first.payload.clone()])
        .map_err(|e| undecodable(first.offset, e))?;
    let mut end = 0;
    let mut keep = |bytes: &mut Vec<u8>, range: std::ops::Range<usize>| {
        let len = range.len();
        bytes.copy_within(range, end);
        end += len;
    };
    keep(
        &mut bytes,
        first.payload.start + data_start..first.payload.end,
    );
    for part in more {
        if part.kind != KIND_SNAPSHOT_MORE {
            return Err(undecodable(
                part.offset,
                "a second snapshot header in one file".into(),
            ));
        }
        keep(&mut bytes, part.payload.clone());
    }
    bytes.truncate(end);
    Ok(Some((meta, bytes)))
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
            has_snapshot: false,
            snapshots_built: 0,
            digest_cache: std::sync::Mutex::new(None),
            lock_delays: BTreeMap::new(),
        };
        if let Some((meta, data)) = read_snapshot(disk.as_ref())? {
            let undecodable = |reason: String| OpenError::Undecodable {
                file: disk.describe(SNAPSHOT_FILE),
                offset: 0,
                reason,
            };
            inner.sm = StateMachine::restore(&data).map_err(|e| undecodable(e.to_string()))?;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            info!(last_applied = ?meta.last_log_id.map(|l| l.index), "restored state from snapshot");
            inner.has_snapshot = true;
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
                disk,
                telemetry,
                inner,
                applied_tx,
            },
            view,
        ))
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        write_snapshot(self.disk.as_ref(), meta, data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }
}

/// Builds snapshots from a point-in-time copy of the state.
pub struct SnapshotBuilder {
    store: StateStoreRef,
}

/// What a [`SnapshotBuilder`] needs from its store.
struct StateStoreRef {
    disk: Arc<dyn Disk>,
    inner: Arc<RwLock<Inner>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let mut inner = self.store.inner.write().expect("state lock poisoned");
            inner.snapshots_built += 1;
            let data = SnapshotBytes::from(inner.sm.snapshot());
            let last = inner.last_applied;
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, inner.snapshots_built),
                None => format!("0-0-{}", inner.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: inner.membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        write_snapshot(self.store.disk.as_ref(), &meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        wait_durable(self.store.disk.as_ref()).await;
        self.store
            .inner
            .write()
            .expect("state lock poisoned")
            .has_snapshot = true;
        info!(last_log_id = ?meta.last_log_id.map(|l| l.index), bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
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
                disk: self.disk.clone(),
                inner: self.inner.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBytes>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), StorageError> {
        let sm = StateMachine::restore(&snapshot)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.save_snapshot(meta, &snapshot)?;
        wait_durable(self.disk.as_ref()).await;
        let applied = {
            let mut inner = self.inner.write().expect("state lock poisoned");
            if !mutants::enabled(Mutant::SkipSnapshotInstall) {
                inner.sm = sm;
            }
            *inner.digest_cache.lock().expect("digest cache poisoned") = None;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.has_snapshot = true;
            inner.last_applied.map_or(0, |l| l.index)
        };
        info!(last_log_id = ?meta.last_log_id.map(|l| l.index), "installed snapshot from leader");
        self.applied_tx.send_replace(applied);
        Ok(())
    }

    /// The snapshot as stored (meta and bytes from the same file, which a
    /// newer snapshot replaces atomically), read for a transfer and dropped
    /// when it ends.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        if !self.inner.read().expect("state lock poisoned").has_snapshot {
            return Ok(None);
        }
        let stored = read_snapshot(self.disk.as_ref())
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(data.into()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use mesh_core::state::KvCommand;

    use super::*;
    use crate::disk::MemDisk;

    /// A state larger than one snapshot record is written as several
    /// records straight from its bytes, in the layout the joined encoder
    /// wrote before (so older files and newer files read alike), and a
    /// restarted store rebuilds the same state from them.
    #[test]
    fn a_snapshot_of_several_records_is_written_in_place_and_read_back() {
        let mut sm = StateMachine::new();
        let value = vec![0xA5u8; 1 << 20];
        for i in 0..(SNAPSHOT_PART_LEN >> 20) as u64 + 2 {
            let set = KvCommand::Set {
                key: format!("big/{i:03}"),
                value: value.clone(),
                flags: i,
            };
            sm.apply(i + 1, &set.into());
        }
        let data = sm.snapshot();
        assert!(data.len() > SNAPSHOT_PART_LEN + (1 << 20));
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "t-1".into(),
        };
        let disk = Arc::new(MemDisk::new());
        write_snapshot(disk.as_ref(), &meta, &data).unwrap();

        let meta_json = serde_json::to_vec(&meta).unwrap();
        let mut joined = (meta_json.len() as u32).to_le_bytes().to_vec();
        joined.extend_from_slice(&meta_json);
        joined.extend_from_slice(&data[..SNAPSHOT_PART_LEN]);
        let mut expected = Vec::new();
        record::encode_record(KIND_SNAPSHOT, &joined, &mut expected);
        record::encode_record(
            KIND_SNAPSHOT_MORE,
            &data[SNAPSHOT_PART_LEN..],
            &mut expected,
        );
        assert!(
            disk.read(SNAPSHOT_FILE).unwrap().unwrap() == expected,
            "the layout of the joined encoder"
        );

        let (_, view) = StateStore::open(disk, Default::default()).unwrap();
        assert_eq!(view.read(|restored| restored.digest()), sm.digest());
    }
}
