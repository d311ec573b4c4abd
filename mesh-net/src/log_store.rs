//! Durable Raft log and vote on a [`Disk`].
//!
//! `raft.log` is an append-only file of checksummed records
//! (`mesh_core::record`): an entry, a truncation ("drop entries from index
//! N"), or a purge ("entries up to log id L are in a snapshot"). Every append
//! is synced before openraft is told it is durable, which is before the entry
//! can be acknowledged. On start the file is replayed; a torn last record
//! (a crash mid-append) is cut off, while a corrupt record in the middle stops
//! the server with the file and offset: dropping it silently could lose an
//! acknowledged write. A purge rewrites the file atomically with only the
//! live entries, which is how the log is compacted after a snapshot.
//!
//! `raft.vote` holds one record and is replaced atomically: a forgotten vote
//! could let a server vote twice in one term.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use mesh_core::hash::fnv1a64;
use mesh_core::record::{self, CorruptRecord};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

use crate::disk::{wait_durable, Disk};
use crate::mutants::{self, Mutant};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "raft.vote";

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;

/// Why stored Raft state could not be opened. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The disk failed.
    #[error("reading {file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: io::Error,
    },
    /// A record in the middle of a file is damaged.
    #[error("{file}: {source}")]
    Corrupt {
        /// The file.
        file: String,
        /// Where and what.
        source: CorruptRecord,
    },
    /// A record's checksum matched but its content did not decode: a bug or
    /// a file written by an incompatible version.
    #[error("{file}: undecodable record at byte offset {offset}: {reason}")]
    Undecodable {
        /// The file.
        file: String,
        /// Byte offset of the record.
        offset: u64,
        /// The decoder's complaint.
        reason: String,
    },
}

/// Encodes a record holding `value` as JSON.
pub(crate) fn json_record(kind: u8, value: &impl Serialize) -> Vec<u8> {
    let payload = serde_json::to_vec(value).expect("Raft types always serialize");
    let mut out = Vec::with_capacity(payload.len() + record::RECORD_HEADER_LEN);
    record::encode_record(kind, &payload, &mut out);
    out
}

/// One record read back from a file.
pub(crate) struct StoredRecord {
    pub kind: u8,
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// How a file is written, which decides what a damaged tail means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// Appended to: a crash can tear the last record, which is cut off.
    AppendOnly,
    /// Replaced whole with `Disk::write_atomic`: a crash leaves the old or
    /// the new content, never a torn one, so any damage is corruption.
    Atomic,
}

/// Torn tails cut off by recovery since the process started (a metric,
/// and how the simulator reports how often its crashes exercised recovery).
static TORN_TAILS_RECOVERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many torn tails recovery has cut off in this process.
pub fn torn_tails_recovered() -> u64 {
    TORN_TAILS_RECOVERED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reads all records of `name`, truncating a torn tail of an append-only
/// file. Unknown kinds are an error: they mean a newer or broken writer.
pub(crate) fn read_records(
    disk: &dyn Disk,
    name: &str,
    file_kind: FileKind,
    expected_kinds: &[u8],
) -> Result<Vec<StoredRecord>, OpenError> {
    let Some((bytes, spans)) = read_record_spans(disk, name, file_kind, expected_kinds)? else {
        return Ok(Vec::new());
    };
    Ok(spans
        .into_iter()
        .map(|s| StoredRecord {
            kind: s.kind,
            offset: s.offset,
            payload: bytes[s.payload].to_vec(),
        })
        .collect())
}

/// A file's bytes and where each record's payload lies in them.
pub(crate) type FileRecords = (Vec<u8>, Vec<RecordSpan>);

/// Where one record's payload lies in the file's bytes.
pub(crate) struct RecordSpan {
    pub kind: u8,
    pub offset: u64,
    pub payload: std::ops::Range<usize>,
}

/// [`read_records`] without copying the payloads: the file's bytes (`None`
/// if it does not exist) and where each record's payload lies in them,
/// for files too large to hold twice (a snapshot).
pub(crate) fn read_record_spans(
    disk: &dyn Disk,
    name: &str,
    file_kind: FileKind,
    expected_kinds: &[u8],
) -> Result<Option<FileRecords>, OpenError> {
    let file = disk.describe(name);
    let io_err = |source| OpenError::Io {
        file: file.clone(),
        source,
    };
    let Some(bytes) = disk.read(name).map_err(io_err)? else {
        return Ok(None);
    };
    let scan = record::scan(&bytes).map_err(|source| OpenError::Corrupt {
        file: file.clone(),
        source,
    })?;
    let mut out = Vec::with_capacity(scan.records.len());
    for rec in &scan.records {
        if !expected_kinds.contains(&rec.kind) {
            return Err(OpenError::Undecodable {
                file,
                offset: rec.offset,
                reason: format!("unknown record kind {}", rec.kind),
            });
        }
        let start = rec.offset as usize + record::RECORD_HEADER_LEN;
        out.push(RecordSpan {
            kind: rec.kind,
            offset: rec.offset,
            payload: start..start + rec.payload.len(),
        });
    }
    if let (Some(torn), FileKind::Atomic) = (&scan.torn_tail, file_kind) {
        // The simulator found this: a flipped length bit in the single vote
        // record looked like a torn write, and the vote was silently lost.
        return Err(OpenError::Corrupt {
            file,
            source: CorruptRecord {
                offset: torn.offset,
                reason: format!("{} in an atomically written file", torn.reason),
            },
        });
    }
    if let Some(torn) = &scan.torn_tail {
        warn!(
            file = %file,
            offset = torn.offset,
            discarded_bytes = torn.discarded_bytes,
            reason = torn.reason,
            "discarding torn tail left by a crash mid-write"
        );
        TORN_TAILS_RECOVERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !mutants::enabled(Mutant::TornTailKept) {
            disk.truncate(name, scan.valid_len).map_err(io_err)?;
        }
    }
    drop(scan);
    Ok(Some((bytes, out)))
}

/// Decodes a record's JSON payload.
pub(crate) fn decode_record<T: DeserializeOwned>(
    disk: &dyn Disk,
    name: &str,
    rec: &StoredRecord,
) -> Result<T, OpenError> {
    serde_json::from_slice(&rec.payload).map_err(|e| OpenError::Undecodable {
        file: disk.describe(name),
        offset: rec.offset,
        reason: e.to_string(),
    })
}

struct LogInner {
    disk: Arc<dyn Disk>,
    entries: BTreeMap<u64, Entry>,
    /// FNV-1a of each entry's stored encoding, by index, for the
    /// simulator's log-matching checker.
    fingerprints: BTreeMap<u64, u64>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    /// Where each held entry's record lies in the log file: `(offset, len)`.
    /// Compaction copies these bytes instead of encoding entries again.
    spans: BTreeMap<u64, (u64, u64)>,
    /// Length of the log file.
    file_len: u64,
}

/// Compact the log file once its dead records (purged or truncated) take
/// more than the live ones plus this much.
const COMPACT_SLACK_BYTES: u64 = 1 << 20;

/// The Raft log storage of one server. Clones share state: one is handed to
/// openraft, one serves as its reader.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens the log and vote stored on `disk`, recovering from a torn tail.
    pub fn open(disk: Arc<dyn Disk>) -> Result<Self, OpenError> {
        let mut entries = BTreeMap::new();
        let mut fingerprints = BTreeMap::new();
        let mut last_purged = None;
        let mut spans = BTreeMap::new();
        let mut file_len = 0;
        let d = disk.as_ref();
        for rec in read_records(
            d,
            LOG_FILE,
            FileKind::AppendOnly,
            &[KIND_ENTRY, KIND_TRUNCATE, KIND_PURGE],
        )? {
            let rec_len = (record::RECORD_HEADER_LEN + rec.payload.len()) as u64;
            file_len = rec.offset + rec_len;
            match rec.kind {
                KIND_ENTRY => {
                    let e: Entry = decode_record(d, LOG_FILE, &rec)?;
                    fingerprints.insert(e.log_id.index, fnv1a64(&rec.payload));
                    spans.insert(e.log_id.index, (rec.offset, rec_len));
                    entries.insert(e.log_id.index, e);
                }
                KIND_TRUNCATE => {
                    let since: u64 = decode_record(d, LOG_FILE, &rec)?;
                    entries.split_off(&since);
                    fingerprints.split_off(&since);
                    spans.split_off(&since);
                }
                _ => {
                    let upto: LogId = decode_record(d, LOG_FILE, &rec)?;
                    entries = entries.split_off(&(upto.index + 1));
                    fingerprints = fingerprints.split_off(&(upto.index + 1));
                    spans = spans.split_off(&(upto.index + 1));
                    last_purged = Some(upto);
                }
            }
        }
        if mutants::enabled(Mutant::DropLastLogEntry) {
            entries.pop_last();
            fingerprints.pop_last();
        }
        let vote = match read_records(d, VOTE_FILE, FileKind::Atomic, &[KIND_VOTE])?.pop() {
            Some(rec) => Some(decode_record::<Vote>(d, VOTE_FILE, &rec)?),
            None => None,
        };
        info!(
            entries = entries.len(),
            last_purged = ?last_purged.map(|l| l.index),
            vote = ?vote,
            "opened raft log"
        );
        let store = Self {
            inner: Arc::new(Mutex::new(LogInner {
                disk,
                entries,
                fingerprints,
                last_purged,
                vote,
                spans,
                file_len,
            })),
        };
        store.check_invariants();
        Ok(store)
    }

    /// Whether anything Raft-related was ever stored: such a server never
    /// bootstraps again.
    pub fn has_state(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_some() || !inner.entries.is_empty() || inner.last_purged.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("log store lock poisoned")
    }

    /// The stored vote: the term and leader this server last voted for or
    /// followed.
    pub fn vote(&self) -> Option<Vote> {
        self.lock().vote
    }

    /// The id of the last entry, held or purged.
    pub fn last_log_id(&self) -> Option<LogId> {
        Self::last_of(&self.lock())
    }

    fn last_of(inner: &LogInner) -> Option<LogId> {
        inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged)
    }

    /// `(index, term, fingerprint)` of every entry held, in index order:
    /// what a log-matching checker compares across servers. Entries with
    /// equal fingerprints have identical stored encodings.
    pub fn fingerprints(&self) -> Vec<(u64, u64, u64)> {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .zip(inner.fingerprints.values())
            .map(|((index, entry), fp)| (*index, entry.log_id.leader_id.term, *fp))
            .collect()
    }

    /// Entries are contiguous and follow the purge point.
    pub fn check_invariants(&self) {
        let inner = self.lock();
        assert!(
            inner.entries.keys().eq(inner.fingerprints.keys()),
            "raft log fingerprints out of step with its entries"
        );
        assert!(
            inner.entries.keys().eq(inner.spans.keys()),
            "raft log record spans out of step with its entries"
        );
        assert!(
            inner
                .spans
                .values()
                .all(|(offset, len)| offset + len <= inner.file_len),
            "a raft log record span ends past the file"
        );
        let mut expected = inner.last_purged.map(|l| l.index + 1);
        for (index, entry) in &inner.entries {
            assert_eq!(*index, entry.log_id.index);
            if let Some(e) = expected {
                assert_eq!(*index, e, "raft log has a gap");
            }
            expected = Some(index + 1);
        }
    }

    fn append_durably(inner: &mut LogInner, bytes: &[u8]) -> io::Result<()> {
        inner.disk.append(LOG_FILE, bytes)?;
        inner.file_len += bytes.len() as u64;
        if mutants::enabled(Mutant::SkipFsync) {
            return Ok(());
        }
        inner.disk.sync(LOG_FILE)
    }

    /// Rewrites the log file with only the live records (after a purge
    /// record), once dead records outweigh them: copies the live records'
    /// bytes rather than encoding the entries again, so compacting a log
    /// of large values stays cheap while the log lock is held.
    fn compact_if_worthwhile(inner: &mut LogInner) -> io::Result<()> {
        let live: u64 = inner.spans.values().map(|(_, len)| len).sum();
        if inner.file_len <= 2 * live + COMPACT_SLACK_BYTES {
            return Ok(());
        }
        let Some(purged) = inner.last_purged else {
            return Ok(());
        };
        let old = inner.disk.read(LOG_FILE)?.unwrap_or_default();
        let mut bytes = json_record(KIND_PURGE, &purged);
        let mut spans = BTreeMap::new();
        for (index, (offset, len)) in &inner.spans {
            let (start, end) = (*offset as usize, (*offset + *len) as usize);
            let Some(rec) = old.get(start..end) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("log record of entry {index} lies outside the file"),
                ));
            };
            spans.insert(*index, (bytes.len() as u64, *len));
            bytes.extend_from_slice(rec);
        }
        inner.disk.write_atomic(LOG_FILE, &bytes)?;
        inner.file_len = bytes.len() as u64;
        inner.spans = spans;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: Self::last_of(&inner),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        #[cfg(madsim)]
        crate::vote_log::record(vote);
        let disk = {
            let mut inner = self.lock();
            let bytes = json_record(KIND_VOTE, vote);
            if !mutants::enabled(Mutant::ForgetVote) {
                inner
                    .disk
                    .write_atomic(VOTE_FILE, &bytes)
                    .map_err(|e| StorageIOError::write_vote(&e))?;
            }
            inner.vote = Some(*vote);
            inner.disk.clone()
        };
        // A vote is cast once it is durable: a crash must not forget it.
        wait_durable(disk.as_ref()).await;
        Ok(())
    }

    /// openraft reads the vote once, at startup. A committed vote is
    /// reported as merely cast: with a committed vote for itself, openraft
    /// 0.9 resumes leadership in the same term without an election
    /// (`Engine::startup`). If the crash lost entries from the end of its
    /// log that followers already hold (they are sent before the leader's
    /// own fsync completes), the resumed leader reuses their indexes for
    /// new entries in the same term: two entries with one (index, term),
    /// and acknowledged writes overwritten (the simulator found it: swarm
    /// seed 1033, a stale read). Raft restarts every server as a follower;
    /// leading again takes a new election.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote.map(|mut vote| {
            vote.committed = false;
            vote
        }))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        let mut fingerprints = Vec::with_capacity(entries.len());
        // (offset within `bytes`, length) of each entry's record.
        let mut spans = Vec::with_capacity(entries.len());
        for e in &entries {
            let rec = json_record(KIND_ENTRY, e);
            fingerprints.push(fnv1a64(&rec[record::RECORD_HEADER_LEN..]));
            spans.push((bytes.len() as u64, rec.len() as u64));
            bytes.extend_from_slice(&rec);
        }
        // The lock guard must not live across the await below.
        let written = {
            let mut inner = self.lock();
            let base = inner.file_len;
            match Self::append_durably(&mut inner, &bytes) {
                Ok(()) => {
                    for ((e, fp), (offset, len)) in entries.into_iter().zip(fingerprints).zip(spans)
                    {
                        inner.fingerprints.insert(e.log_id.index, fp);
                        inner.spans.insert(e.log_id.index, (base + offset, len));
                        inner.entries.insert(e.log_id.index, e);
                    }
                    Ok(inner.disk.clone())
                }
                Err(e) => Err(e),
            }
        };
        let disk = match written {
            Ok(disk) => disk,
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                return Err(err.into());
            }
        };
        wait_durable(disk.as_ref()).await;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let disk = {
            let mut inner = self.lock();
            let bytes = json_record(KIND_TRUNCATE, &log_id.index);
            if !mutants::enabled(Mutant::TruncateNotPersisted) {
                Self::append_durably(&mut inner, &bytes)
                    .map_err(|e| StorageIOError::write_logs(&e))?;
            }
            inner.entries.split_off(&log_id.index);
            inner.fingerprints.split_off(&log_id.index);
            inner.spans.split_off(&log_id.index);
            inner.disk.clone()
        };
        wait_durable(disk.as_ref()).await;
        Ok(())
    }

    /// Purging appends a purge record; the file is rewritten only when
    /// dead records outweigh live ones. Rewriting on every purge encoded
    /// the whole live log again under the log lock: with 512 KiB values that
    /// stalled appends for over a second (`bins/tests/large_values.rs`).
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let disk = {
            let mut inner = self.lock();
            let bytes = json_record(KIND_PURGE, &log_id);
            Self::append_durably(&mut inner, &bytes).map_err(|e| StorageIOError::write_logs(&e))?;
            inner.entries = inner.entries.split_off(&(log_id.index + 1));
            inner.fingerprints = inner.fingerprints.split_off(&(log_id.index + 1));
            inner.spans = inner.spans.split_off(&(log_id.index + 1));
            inner.last_purged = Some(log_id);
            Self::compact_if_worthwhile(&mut inner).map_err(|e| StorageIOError::write_logs(&e))?;
            inner.disk.clone()
        };
        wait_durable(disk.as_ref()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(mesh_core::state::Command::Kv(
                mesh_core::state::KvCommand::Set {
                    key: format!("k{index}"),
                    value: vec![index as u8],
                    flags: 0,
                },
            )),
        }
    }

    fn write_direct(disk: &MemDisk, entries: &[Entry]) {
        for e in entries {
            disk.append(LOG_FILE, &json_record(KIND_ENTRY, e)).unwrap();
        }
        disk.sync(LOG_FILE).unwrap();
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn purge_appends_a_record_and_compacts_once_dead_records_outweigh_live_ones() {
        use openraft::storage::RaftLogStorage;
        let disk = MemDisk::new();
        let big = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(mesh_core::state::Command::Kv(
                mesh_core::state::KvCommand::Set {
                    key: format!("k{index}"),
                    value: vec![7; 1024],
                    flags: 0,
                },
            )),
        };
        write_direct(&disk, &(1..=3000).map(big).collect::<Vec<_>>());
        let mut store = LogStore::open(Arc::new(disk.clone())).unwrap();
        let full_len = disk.read(LOG_FILE).unwrap().unwrap().len();
        // A small purge only appends its record.
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 10))
            .await
            .unwrap();
        let after_small = disk.read(LOG_FILE).unwrap().unwrap().len();
        assert!(after_small > full_len && after_small < full_len + 100);
        store.check_invariants();
        // Purging almost everything rewrites the file with the live tail.
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 2990))
            .await
            .unwrap();
        store.check_invariants();
        let compacted = disk.read(LOG_FILE).unwrap().unwrap().len();
        assert!(
            compacted < full_len / 100,
            "{compacted} of {full_len} bytes"
        );
        let fingerprints = store.fingerprints();
        let reopened = LogStore::open(Arc::new(disk.clone())).unwrap();
        assert_eq!(indexes(&reopened), (2991..=3000).collect::<Vec<_>>());
        assert_eq!(reopened.lock().last_purged.map(|l| l.index), Some(2990));
        assert_eq!(reopened.fingerprints(), fingerprints);
    }

    #[test]
    fn reopen_replays_entries_truncations_and_purges() {
        let disk = MemDisk::new();
        write_direct(&disk, &(1..=5).map(|i| entry(1, i)).collect::<Vec<_>>());
        disk.append(LOG_FILE, &json_record(KIND_TRUNCATE, &4u64))
            .unwrap();
        write_direct(&disk, &[entry(2, 4)]);
        let store = LogStore::open(Arc::new(disk.clone())).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3, 4]);
        assert_eq!(store.lock().entries[&4].log_id.leader_id.term, 2);
    }

    #[test]
    fn fingerprints_follow_entries_through_truncation() {
        let disk = MemDisk::new();
        write_direct(&disk, &(1..=3).map(|i| entry(1, i)).collect::<Vec<_>>());
        disk.append(LOG_FILE, &json_record(KIND_TRUNCATE, &3u64))
            .unwrap();
        let replacement = entry(2, 3);
        write_direct(&disk, std::slice::from_ref(&replacement));
        let store = LogStore::open(Arc::new(disk)).unwrap();
        let fp = |e: &Entry| fnv1a64(&serde_json::to_vec(e).unwrap());
        assert_eq!(
            store.fingerprints(),
            vec![
                (1, 1, fp(&entry(1, 1))),
                (2, 1, fp(&entry(1, 2))),
                (3, 2, fp(&replacement)),
            ]
        );
        assert_ne!(fp(&entry(1, 3)), fp(&replacement));
    }

    #[tokio::test]
    async fn a_restarted_leader_does_not_resume_leadership() {
        let disk = MemDisk::new();
        let mut vote = Vote::new(3, 7);
        vote.commit();
        disk.write_atomic(VOTE_FILE, &json_record(KIND_VOTE, &vote))
            .unwrap();
        let mut store = LogStore::open(Arc::new(disk)).unwrap();
        let read = store.read_vote().await.unwrap().unwrap();
        assert_eq!(
            read,
            Vote::new(3, 7),
            "same term and candidate, not committed"
        );
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_entries_survive() {
        let disk = MemDisk::new();
        write_direct(&disk, &[entry(1, 1), entry(1, 2)]);
        disk.append(LOG_FILE, &json_record(KIND_ENTRY, &entry(1, 3)))
            .unwrap();
        disk.crash(7); // a few bytes of the third record reached the disk
        let store = LogStore::open(Arc::new(disk.clone())).unwrap();
        assert_eq!(indexes(&store), vec![1, 2]);
        // The file was cut back, so new appends land on a clean boundary.
        write_direct(&disk, &[entry(1, 3)]);
        let store = LogStore::open(Arc::new(disk)).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3]);
    }

    #[test]
    fn damaged_vote_is_corruption_never_a_torn_tail() {
        let disk = MemDisk::new();
        let vote = Vote::new(3, 7);
        disk.write_atomic(VOTE_FILE, &json_record(KIND_VOTE, &vote))
            .unwrap();
        assert!(LogStore::open(Arc::new(disk.clone())).is_ok());
        // A flipped high bit of the length makes the record overrun the
        // file: in an append-only file that reads as a torn write.
        assert!(disk.flip_bit(VOTE_FILE, 3, 7));
        let err = LogStore::open(Arc::new(disk)).err().expect("must refuse");
        assert!(err.to_string().contains("raft.vote"), "{err}");
    }

    #[test]
    fn corrupt_middle_record_is_a_startup_error_naming_file_and_offset() {
        let disk = MemDisk::new();
        write_direct(&disk, &[entry(1, 1), entry(1, 2), entry(1, 3)]);
        assert!(disk.flip_bit(LOG_FILE, 20, 3));
        let err = LogStore::open(Arc::new(disk)).err().expect("must refuse");
        let msg = err.to_string();
        assert!(
            msg.contains("raft.log") && msg.contains("offset 0"),
            "{msg}"
        );
    }
}
