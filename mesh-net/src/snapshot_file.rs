//! `snapshot.bin`: the latest snapshot of a server's state, and what the
//! process knows of it.
//!
//! The file is replaced atomically. It holds a first record
//! `[meta_len: u32 LE][meta JSON][state bytes, up to 64 MiB]` and one
//! record per further 64 MiB of state bytes. The bytes are not kept in
//! memory: a transfer reads them back (several transfers at once share one
//! read), so a server's memory is its state, not twice its state.
//!
//! Writes are serialized and an older snapshot never replaces a newer one
//! (a slow build finishing after an install of a later snapshot would
//! otherwise put the file back in time).

use std::sync::{Arc, Mutex, Weak};

use mesh_core::record;

use crate::disk::Disk;
use crate::log_store::{read_record_spans, FileKind, OpenError};
use crate::raft_types::{SnapshotBytes, SnapshotMeta};

pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";
const KIND_SNAPSHOT: u8 = 6;
/// The rest of a snapshot's bytes, after its first record.
const KIND_SNAPSHOT_MORE: u8 = 7;
/// Snapshot bytes per record: a state larger than one record may hold
/// (`record::MAX_RECORD_LEN`, 256 MiB) is stored as several. One record
/// made every server panic once its state passed 256 MiB (found by
/// `examples/join_large` at 1 GiB).
const SNAPSHOT_PART_LEN: usize = 64 << 20;

/// A snapshot read from the file: its meta and its state bytes.
pub(crate) type Found = (SnapshotMeta, Vec<u8>);

/// `snapshot.bin` of one server.
pub(crate) struct SnapshotFile {
    disk: Arc<dyn Disk>,
    state: Mutex<Stored>,
}

/// What the file holds, as this process last wrote or read it.
#[derive(Default)]
struct Stored {
    /// The meta of the snapshot in the file, if any.
    meta: Option<SnapshotMeta>,
    /// Its bytes, while some transfer still holds them.
    shared: Weak<Vec<u8>>,
}

impl SnapshotFile {
    /// The file on `disk` and the snapshot in it, if any.
    pub(crate) fn open(disk: Arc<dyn Disk>) -> Result<(SnapshotFile, Option<Found>), OpenError> {
        let found = read_snapshot(disk.as_ref())?;
        let stored = Stored {
            meta: found.as_ref().map(|(m, _)| m.clone()),
            shared: Weak::new(),
        };
        let file = SnapshotFile {
            disk,
            state: Mutex::new(stored),
        };
        Ok((file, found))
    }

    /// The disk the file lives on.
    pub(crate) fn disk(&self) -> &dyn Disk {
        self.disk.as_ref()
    }

    /// Replaces the file with this snapshot unless it holds a newer one;
    /// says whether it wrote. Not durable until `wait_durable`.
    pub(crate) fn store(&self, meta: &SnapshotMeta, data: &SnapshotBytes) -> std::io::Result<bool> {
        let mut stored = self.state.lock().expect("snapshot file lock poisoned");
        if stored
            .meta
            .as_ref()
            .is_some_and(|m| m.last_log_id > meta.last_log_id)
        {
            return Ok(false);
        }
        write_snapshot(self.disk.as_ref(), meta, data)?;
        stored.meta = Some(meta.clone());
        stored.shared = data.downgrade();
        Ok(true)
    }

    /// The stored snapshot for a transfer: the bytes another transfer
    /// holds, or read back from the file. An error says why the file does
    /// not hold what this process wrote there (read failure, removed,
    /// replaced by someone else).
    pub(crate) fn current(&self) -> Result<Option<(SnapshotMeta, SnapshotBytes)>, String> {
        let mut stored = self.state.lock().expect("snapshot file lock poisoned");
        let Some(meta) = stored.meta.clone() else {
            return Ok(None);
        };
        if let Some(bytes) = stored.shared.upgrade() {
            return Ok(Some((meta, SnapshotBytes::from_shared(bytes))));
        }
        match read_snapshot(self.disk.as_ref()) {
            Ok(Some((read, data))) if read == meta => {
                let data = SnapshotBytes::from(data);
                stored.shared = data.downgrade();
                Ok(Some((meta, data)))
            }
            Ok(Some((read, _))) => Err(format!(
                "{} holds snapshot {}, not {}",
                self.disk.describe(SNAPSHOT_FILE),
                read.snapshot_id,
                meta.snapshot_id
            )),
            Ok(None) => Err(format!("{} is gone", self.disk.describe(SNAPSHOT_FILE))),
            Err(e) => Err(e.to_string()),
        }
    }
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
fn read_snapshot(disk: &dyn Disk) -> Result<Option<Found>, OpenError> {
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

#[cfg(test)]
mod tests {
    use mesh_core::state::{KvCommand, StateMachine};
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::disk::MemDisk;
    use crate::raft_types::StoredMembership;
    use crate::state_store::StateStore;

    fn meta(id: &str, index: Option<u64>) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: index
                .map(|i| openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), i)),
            last_membership: StoredMembership::default(),
            snapshot_id: id.into(),
        }
    }

    fn state(keys: u64) -> StateMachine {
        let mut sm = StateMachine::new();
        for i in 1..=keys {
            let set = KvCommand::Set {
                key: format!("k{i}"),
                value: vec![1; 10],
                flags: 0,
            };
            sm.apply(i, &set.into());
        }
        sm
    }

    /// A slow build finishing after an install of a later snapshot does not
    /// put the file back in time; transfers share one read while they run.
    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one_and_transfers_share_bytes() {
        let disk: Arc<dyn Disk> = Arc::new(MemDisk::new());
        let (file, found) = SnapshotFile::open(disk.clone()).unwrap();
        assert!(found.is_none());
        assert_eq!(file.current(), Ok(None));
        let newer = SnapshotBytes::from(state(5).snapshot());
        assert!(file.store(&meta("new", Some(5)), &newer).unwrap());
        let older = SnapshotBytes::from(state(3).snapshot());
        assert!(!file.store(&meta("old", Some(3)), &older).unwrap());
        drop(newer);
        let (m, first) = file.current().unwrap().unwrap();
        assert_eq!(m.snapshot_id, "new");
        assert_eq!(
            StateMachine::restore(&first).unwrap().digest(),
            state(5).digest()
        );
        let (_, second) = file.current().unwrap().unwrap();
        assert!(
            std::ptr::eq(first.as_ptr(), second.as_ptr()),
            "one read, shared"
        );
        drop((first, second));

        // Someone else's file in its place is noticed, not sent.
        let (other, _) = SnapshotFile::open(disk.clone()).unwrap();
        other
            .store(
                &meta("theirs", Some(9)),
                &SnapshotBytes::from(state(9).snapshot()),
            )
            .unwrap();
        let e = file.current().unwrap_err();
        assert!(e.contains("holds snapshot theirs, not new"), "{e}");
    }

    /// A stored snapshot that cannot be read any more does not stop Raft:
    /// the applied state is sent instead, and stored again.
    #[tokio::test]
    async fn an_unreadable_snapshot_file_is_replaced_by_the_applied_state() {
        let disk: Arc<dyn Disk> = Arc::new(MemDisk::new());
        let sm = state(4);
        write_snapshot(disk.as_ref(), &meta("t-4", Some(4)), &sm.snapshot()).unwrap();
        let (mut store, _) = StateStore::open(disk.clone(), Default::default()).unwrap();
        disk.write_atomic(SNAPSHOT_FILE, b"damaged").unwrap();
        let sent = store.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(sent.meta.last_log_id.map(|l| l.index), Some(4));
        assert_eq!(
            StateMachine::restore(&sent.snapshot).unwrap().digest(),
            sm.digest()
        );
        let (stored, _) = read_snapshot(disk.as_ref()).unwrap().unwrap();
        assert_eq!(stored.snapshot_id, sent.meta.snapshot_id, "stored again");
    }

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
