use mesh_core::state::{KvCommand, StateMachine};
use openraft::storage::RaftStateMachine;

use super::*;
use crate::disk::MemDisk;
use crate::raft_types::StoredMembership;
use crate::state_store::StateStore;

fn meta(id: &str, index: Option<u64>) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: index.map(|i| openraft::LogId::new(openraft::CommittedLeaderId::new(1, 0), i)),
        last_membership: StoredMembership::default(),
        snapshot_id: id.into(),
    }
}

/// `keys` keys of `value_len` bytes each.
fn state_of(keys: u64, value_len: usize) -> StateMachine {
    let mut sm = StateMachine::new();
    for i in 1..=keys {
        let set = KvCommand::Set {
            key: format!("k{i:05}"),
            value: vec![i as u8; value_len],
            flags: i,
        };
        sm.apply(i, &set.into());
    }
    sm
}

fn state(keys: u64) -> StateMachine {
    state_of(keys, 10)
}

async fn store(file: &SnapshotFile, meta: &SnapshotMeta, sm: &StateMachine) -> bool {
    let staged = file.build(meta, |out| sm.write_snapshot(out)).unwrap();
    file.commit(staged).await.unwrap()
}

/// Every state byte of `data`, read the way a transfer reads them.
fn read_all(data: &SnapshotData) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < data.len() {
        let chunk = data.read(out.len() as u64, 3 << 20).unwrap();
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

/// A slow build finishing after an install of a later snapshot does not
/// put the file back in time; a file someone else wrote is noticed, not
/// sent.
#[tokio::test]
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let disk: Arc<dyn Disk> = Arc::new(MemDisk::new());
    let (file, found) = SnapshotFile::open(disk.clone()).unwrap();
    let file = Arc::new(file);
    assert!(found.is_none());
    assert!(file.current().unwrap().is_none());
    assert!(store(&file, &meta("new", Some(5)), &state(5)).await);
    assert!(!store(&file, &meta("old", Some(3)), &state(3)).await);
    let unread = file.current().unwrap().unwrap();
    let data = file.current().unwrap().unwrap();
    assert_eq!(data.meta().snapshot_id, "new");
    assert_eq!(data.restore().unwrap(), state(5));
    assert_eq!(read_all(&data), state(5).snapshot());
    assert_eq!(
        disk.len(BUILDING_FILE).unwrap(),
        None,
        "the staged file is gone"
    );

    let (other, _) = SnapshotFile::open(disk.clone()).unwrap();
    assert!(store(&other, &meta("theirs", Some(9)), &state(9)).await);
    let e = file.current().unwrap_err();
    assert!(e.contains("holds snapshot theirs, not new"), "{e}");
    let e = unread.read(0, 10).unwrap_err();
    assert!(e.contains("its header changed"), "{e}");
}

/// A state of several parts is written a part at a time, each record
/// within the part size, read back by a transfer a record at a time, and
/// restored by a restarted server; a transfer's chunks never cross a
/// record.
#[tokio::test]
async fn a_large_state_is_written_and_read_a_part_at_a_time() {
    let sm = state_of(12, 1 << 20);
    let bytes = sm.snapshot();
    assert!(bytes.len() > 2 * SNAPSHOT_PART_LEN);
    let disk = Arc::new(MemDisk::new());
    let (file, _) = SnapshotFile::open(disk.clone()).unwrap();
    let file = Arc::new(file);
    assert!(store(&file, &meta("t-12", Some(12)), &sm).await);
    let data = file.current().unwrap().unwrap();
    assert_eq!(data.len(), bytes.len() as u64);
    assert_eq!(
        data.layout.parts.len(),
        bytes.len().div_ceil(SNAPSHOT_PART_LEN)
    );
    for part in &data.layout.parts {
        assert!(part.state_len() <= SNAPSHOT_PART_LEN as u64);
    }
    let first_part = data.layout.parts[0].state_len();
    let chunk = data.read(first_part - 10, 1 << 20).unwrap();
    assert_eq!(chunk.len(), 10, "a chunk ends where its record ends");
    assert_eq!(read_all(&data), bytes);
    assert!(data.read(data.len(), 1).is_err());

    drop(file);
    let (_, view) = StateStore::open(disk, Default::default()).unwrap();
    assert_eq!(view.read(|restored| restored.digest()), sm.digest());
}

/// Files of older builds hold up to 64 MiB of state bytes per record:
/// they restore, and transfers read them, alike.
#[tokio::test]
async fn a_file_of_an_older_build_reads_alike() {
    let sm = state_of(6, 1 << 20);
    let bytes = sm.snapshot();
    let m = meta("old-build", Some(6));
    let meta_json = serde_json::to_vec(&m).unwrap();
    let mut first = (meta_json.len() as u32).to_le_bytes().to_vec();
    first.extend_from_slice(&meta_json);
    first.extend_from_slice(&bytes);
    let mut file_bytes = Vec::new();
    record::encode_record(KIND_SNAPSHOT, &first, &mut file_bytes);
    let disk = Arc::new(MemDisk::new());
    disk.write_atomic(SNAPSHOT_FILE, &file_bytes).unwrap();

    let (file, found) = SnapshotFile::open(disk.clone()).unwrap();
    let (found_meta, restored) = found.unwrap();
    assert_eq!(found_meta, m);
    assert_eq!(restored, sm);
    let data = Arc::new(file).current().unwrap().unwrap();
    assert_eq!(data.layout.parts.len(), 1);
    assert_eq!(read_all(&data), bytes);
}

/// A bit flipped on disk in a later record is caught by the checksum when
/// a transfer reads that record: nothing damaged is sent, and the next
/// transfer gets a new snapshot of the applied state.
#[tokio::test]
async fn a_damaged_record_is_never_sent() {
    let sm = state_of(10, 1 << 20);
    let disk = Arc::new(MemDisk::new());
    let (file, _) = SnapshotFile::open(disk.clone()).unwrap();
    assert!(store(&file, &meta("t-10", Some(10)), &sm).await);
    drop(file);
    let (mut store_, _) = StateStore::open(disk.clone(), Default::default()).unwrap();
    let file = store_.snapshot_file();
    let data = file.current().unwrap().unwrap();
    let second = data.layout.parts[1];
    assert!(disk.flip_bit(
        SNAPSHOT_FILE,
        second.at as usize + RECORD_HEADER_LEN + 100,
        3
    ));
    let offset = data.layout.parts[0].state_len();
    assert!(data.read(0, 10).is_ok(), "the first record is intact");
    let e = data.read(offset, 10).unwrap_err();
    assert!(e.contains("checksum mismatch"), "{e}");
    let e = file.current().unwrap_err();
    assert!(e.contains("checksum mismatch"), "{e}");

    // The store answers with a new snapshot of what it applied, stored
    // in place of the damaged one.
    let sent = store_.get_current_snapshot().await.unwrap().unwrap();
    assert_ne!(sent.meta.snapshot_id, "t-10");
    assert_eq!(sent.meta.last_log_id.map(|l| l.index), Some(10));
    assert_eq!(sent.snapshot.restore().unwrap(), sm);
    assert_eq!(read_all(&sent.snapshot), sm.snapshot());
}

/// Chunks of any size arrive into the incoming file as records, restore
/// to the sender's state, and become the stored snapshot; a restart
/// removes a transfer it did not finish.
#[tokio::test]
async fn incoming_chunks_become_the_stored_snapshot() {
    let sm = state_of(9, 1 << 20);
    let bytes = sm.snapshot();
    let disk = Arc::new(MemDisk::new());
    let (file, _) = SnapshotFile::open(disk.clone()).unwrap();
    let file = Arc::new(file);
    let m = meta("leader-9", Some(9));

    // A transfer that is replaced by a newer one mid-way.
    file.begin_incoming(&meta("stale", Some(2))).unwrap();
    file.append_incoming(b"junk that is dropped").unwrap();

    file.begin_incoming(&m).unwrap();
    let mut at = 0;
    for len in [1, 1000, 3 << 20, 4 << 20, usize::MAX] {
        let end = at + len.min(bytes.len() - at);
        file.append_incoming(&bytes[at..end]).unwrap();
        at = end;
    }
    assert_eq!(at, bytes.len());
    let data = file.received().unwrap();
    assert_eq!(disk.len(INCOMING_FILE).unwrap(), None);
    assert_eq!(data.restore().unwrap(), sm);
    assert!(data.commit().await.unwrap());
    let stored = file.current().unwrap().unwrap();
    assert_eq!(*stored.meta(), m);
    assert_eq!(read_all(&stored), bytes);

    file.begin_incoming(&meta("cut", Some(10))).unwrap();
    file.append_incoming(&bytes[..100]).unwrap();
    drop((file, stored));
    let (_, found) = SnapshotFile::open(disk.clone()).unwrap();
    assert_eq!(found.unwrap().0, m);
    assert_eq!(disk.len(INCOMING_FILE).unwrap(), None, "removed at open");
}

/// A damaged stored file stops the server at open with the offset of the
/// damage, as before.
#[tokio::test]
async fn a_damaged_file_is_refused_at_open_with_its_offset() {
    let disk = Arc::new(MemDisk::new());
    let (file, _) = SnapshotFile::open(disk.clone()).unwrap();
    assert!(store(&file, &meta("t", Some(3)), &state_of(3, 5 << 20)).await);
    drop(file);
    let second = (RECORD_HEADER_LEN + SNAPSHOT_PART_LEN) as u64;
    let len = disk.len(SNAPSHOT_FILE).unwrap().unwrap() as usize;
    assert!(disk.flip_bit(SNAPSHOT_FILE, len - 1, 0));
    let e = SnapshotFile::open(disk.clone()).err().unwrap().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    assert!(
        e.contains(&format!("{second}")) || e.contains("record at byte"),
        "{e}"
    );
}

/// A commit whose staged file is gone or was cut (another build took the
/// staging name) fails instead of putting an empty or foreign file in
/// place; builds that hold the build lock never share the staging file.
#[tokio::test]
async fn a_commit_never_places_a_file_it_did_not_stage() {
    let disk: Arc<dyn Disk> = Arc::new(MemDisk::new());
    let (file, _) = SnapshotFile::open(disk.clone()).unwrap();
    assert!(store(&file, &meta("first", Some(2)), &state(2)).await);
    let staged = file
        .build(&meta("second", Some(4)), |out| state(4).write_snapshot(out))
        .unwrap();
    disk.remove(BUILDING_FILE).unwrap();
    let e = file.commit(staged).await.unwrap_err().to_string();
    assert!(e.contains("were staged"), "{e}");
    let staged = file
        .build(&meta("third", Some(5)), |out| state(5).write_snapshot(out))
        .unwrap();
    disk.truncate(BUILDING_FILE, 3).unwrap();
    assert!(file.commit(staged).await.is_err());
    let (_, found) = SnapshotFile::open(disk.clone()).unwrap();
    assert_eq!(
        found.unwrap().0.snapshot_id,
        "first",
        "the stored snapshot stays"
    );

    let file = Arc::new(file);
    let guard = file.lock_build().await;
    let second = file.clone();
    let waiting = tokio::spawn(async move {
        let _g = second.lock_build().await;
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "a second build waits for the first");
    drop(guard);
    waiting.await.unwrap();
}
