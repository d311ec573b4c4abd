//! `snapshot.bin`: the latest snapshot of a server's state, written, sent,
//! received and restored a record at a time, so the snapshot's bytes are
//! never in memory beside the state (a few megabytes of them at a time).
//! Installing a snapshot still holds the old state until the new one is
//! restored.
//!
//! The file holds a first record `[meta_len: u32 LE][meta JSON][state
//! bytes]` and one record per further part of the state bytes, each
//! checksummed (`mesh_core::record`). This build writes parts of
//! [`SNAPSHOT_PART_LEN`]; files of older builds (parts of 64 MiB) read
//! alike.
//!
//! - A snapshot is built into `snapshot.building` while the state is
//!   written out a buffer at a time, synced, and renamed over
//!   `snapshot.bin`.
//! - A snapshot from the leader arrives in chunks, each appended to
//!   `snapshot.incoming` as a record of its own (with the meta in the
//!   first), so the file that arrives is a snapshot file like any other.
//!   Once whole it is synced and renamed to `snapshot.received`, restored
//!   from there a record at a time, and renamed over `snapshot.bin`.
//! - A transfer to a follower reads the stored file a part at a time and
//!   checks each part's checksum before sending it.
//!
//! An older snapshot never replaces a newer one (a slow build finishing
//! after an install of a later snapshot would otherwise put the file back
//! in time).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use mesh_core::record::{self, Header, MAX_RECORD_LEN, RECORD_HEADER_LEN};
use mesh_core::state::StateMachine;

use crate::disk::{wait_durable, Disk};
use crate::log_store::OpenError;
use crate::raft_types::SnapshotMeta;

pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";
/// A snapshot being built, until it replaces [`SNAPSHOT_FILE`].
const BUILDING_FILE: &str = "snapshot.building";
/// A snapshot arriving from the leader, chunk by chunk.
pub(crate) const INCOMING_FILE: &str = "snapshot.incoming";
/// A snapshot that arrived whole, while it is restored.
const RECEIVED_FILE: &str = "snapshot.received";
const KIND_SNAPSHOT: u8 = 6;
/// The rest of a snapshot's bytes, after its first record.
const KIND_SNAPSHOT_MORE: u8 = 7;
/// State bytes per record this build writes: the unit a transfer reads,
/// checks and sends, so also what a transfer holds in memory.
pub(crate) const SNAPSHOT_PART_LEN: usize = 4 << 20;

/// Where a snapshot's state bytes lie in its file: its records, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    parts: Vec<Part>,
}

/// One record of a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    /// Offset of the record's header in the file.
    at: u64,
    header: Header,
    /// Where the state bytes start in the payload (after the meta, in the
    /// first record).
    state_from: u32,
}

impl Part {
    fn state_len(&self) -> u64 {
        u64::from(self.header.len - self.state_from)
    }
}

impl Layout {
    /// Length of the state bytes.
    pub(crate) fn state_len(&self) -> u64 {
        self.parts.iter().map(Part::state_len).sum()
    }

    /// Length of the file its records make.
    fn file_len(&self) -> u64 {
        self.parts.last().map_or(0, |p| {
            p.at + (RECORD_HEADER_LEN as u64) + u64::from(p.header.len)
        })
    }

    /// The part holding state byte `offset`, and where that part's state
    /// bytes start.
    fn part_at(&self, offset: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (i, p) in self.parts.iter().enumerate() {
            if offset < start + p.state_len() {
                return Some((i, start));
            }
            start += p.state_len();
        }
        None
    }
}

/// Reads the record `part` of `name` and checks its checksum: the payload.
fn read_part(disk: &dyn Disk, name: &str, part: &Part) -> Result<Vec<u8>, String> {
    let len = part.header.len as usize;
    let bytes = disk
        .read_at(name, part.at, RECORD_HEADER_LEN + len)
        .map_err(|e| format!("{}: {e}", disk.describe(name)))?;
    let damaged = |why: &str| {
        format!(
            "{}: snapshot record at byte {}: {why}",
            disk.describe(name),
            part.at
        )
    };
    let (head, payload) = bytes
        .split_at_checked(RECORD_HEADER_LEN)
        .ok_or_else(|| damaged("truncated header"))?;
    let head: [u8; RECORD_HEADER_LEN] = head.try_into().expect("split at the header length");
    if Header::parse(head) != part.header {
        return Err(damaged("its header changed since the file was opened"));
    }
    if !part.header.matches(payload) {
        return Err(damaged("checksum mismatch (damaged on disk)"));
    }
    Ok(bytes[RECORD_HEADER_LEN..].to_vec())
}

/// The state bytes of a snapshot file as a stream, one checked record at a
/// time.
struct PartsReader<'a> {
    disk: &'a dyn Disk,
    name: &'a str,
    parts: &'a [Part],
    payload: Vec<u8>,
    pos: usize,
}

impl<'a> PartsReader<'a> {
    fn new(disk: &'a dyn Disk, name: &'a str, layout: &'a Layout) -> Self {
        PartsReader {
            disk,
            name,
            parts: &layout.parts,
            payload: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for PartsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.payload.len() {
            let Some((part, rest)) = self.parts.split_first() else {
                return Ok(0);
            };
            self.payload = read_part(self.disk, self.name, part).map_err(io::Error::other)?;
            self.pos = part.state_from as usize;
            self.parts = rest;
        }
        let n = buf.len().min(self.payload.len() - self.pos);
        buf[..n].copy_from_slice(&self.payload[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Restores the state a snapshot file holds, a record at a time.
fn restore_file(disk: &dyn Disk, name: &str, layout: &Layout) -> Result<StateMachine, String> {
    let mut parts = PartsReader::new(disk, name, layout);
    StateMachine::restore_from(&mut parts, layout.state_len()).map_err(|e| e.to_string())
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

/// The meta and the layout of the snapshot file `name`, from its record
/// headers (and the first record, checked): `None` if there is no file or
/// it is empty. Errors name the byte offset of the damage.
fn read_layout(
    disk: &dyn Disk,
    name: &str,
) -> Result<Option<(SnapshotMeta, Layout)>, (u64, String)> {
    let io_err = |e: io::Error| (0, format!("{e}"));
    let Some(file_len) = disk.len(name).map_err(io_err)? else {
        return Ok(None);
    };
    if file_len == 0 {
        return Ok(None);
    }
    let mut layout = Layout::default();
    let mut meta = None;
    let mut at = 0u64;
    while at < file_len {
        let head = disk.read_at(name, at, RECORD_HEADER_LEN).map_err(io_err)?;
        let head: [u8; RECORD_HEADER_LEN] = head
            .try_into()
            .map_err(|_| (at, "truncated record header (a torn write?)".to_string()))?;
        let header = Header::parse(head);
        let end = at + (RECORD_HEADER_LEN as u64) + u64::from(header.len);
        if header.len as usize > MAX_RECORD_LEN || end > file_len {
            return Err((
                at,
                format!(
                    "record length {} runs past the file's {file_len} bytes",
                    header.len
                ),
            ));
        }
        let expected = if meta.is_none() {
            KIND_SNAPSHOT
        } else {
            KIND_SNAPSHOT_MORE
        };
        if header.kind != expected {
            return Err((
                at,
                format!("record kind {} where {expected} belongs", header.kind),
            ));
        }
        let mut part = Part {
            at,
            header,
            state_from: 0,
        };
        if meta.is_none() {
            let payload = read_part(disk, name, &part).map_err(|e| (at, e))?;
            let (m, state_from) = decode_snapshot_head(&payload).map_err(|e| (at, e))?;
            meta = Some(m);
            part.state_from = u32::try_from(state_from).expect("within a record");
        }
        layout.parts.push(part);
        at = end;
    }
    Ok(meta.map(|m| (m, layout)))
}

/// Appends a snapshot's records to a file: the first carries the meta,
/// each holds up to [`SNAPSHOT_PART_LEN`] state bytes.
struct RecordWriter<'a> {
    disk: &'a dyn Disk,
    name: &'static str,
    /// The meta prefix while the first record is unwritten.
    first: Option<Vec<u8>>,
    buf: Vec<u8>,
    layout: Layout,
}

impl<'a> RecordWriter<'a> {
    /// A writer of a new `name` (whatever was there is removed).
    fn create(disk: &'a dyn Disk, name: &'static str, meta: &SnapshotMeta) -> io::Result<Self> {
        disk.remove(name)?;
        let meta_json = serde_json::to_vec(meta).expect("snapshot meta serializes");
        let mut first = Vec::with_capacity(4 + meta_json.len());
        first.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
        first.extend_from_slice(&meta_json);
        Ok(RecordWriter {
            disk,
            name,
            first: Some(first),
            buf: Vec::new(),
            layout: Layout::default(),
        })
    }

    /// A writer that goes on appending to a file it wrote before.
    fn resume(disk: &'a dyn Disk, name: &'static str, layout: Layout) -> Self {
        RecordWriter {
            disk,
            name,
            first: None,
            buf: Vec::new(),
            layout,
        }
    }

    /// Writes `state` (at most [`SNAPSHOT_PART_LEN`] bytes) as one record.
    fn write_record(&mut self, state: &[u8]) -> io::Result<()> {
        // The first record carries the meta before its state bytes.
        let first = self.first.take().map(|mut meta| {
            let state_from = meta.len();
            meta.extend_from_slice(state);
            (meta, state_from)
        });
        let (kind, payload, state_from) = match &first {
            Some((payload, state_from)) => (KIND_SNAPSHOT, payload.as_slice(), *state_from),
            None => (KIND_SNAPSHOT_MORE, state, 0),
        };
        let head = record::record_header(kind, payload);
        self.disk.append(self.name, &head)?;
        self.disk.append(self.name, payload)?;
        self.layout.parts.push(Part {
            at: self.layout.file_len(),
            header: Header::parse(head),
            state_from: u32::try_from(state_from).expect("the meta is small"),
        });
        Ok(())
    }

    /// Writes what is buffered (the first record even if empty) and
    /// returns where everything lies.
    fn finish(mut self) -> io::Result<Layout> {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() || self.first.is_some() {
            self.write_record(&rest)?;
        }
        Ok(self.layout)
    }
}

impl Write for RecordWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= SNAPSHOT_PART_LEN {
            let full = std::mem::take(&mut self.buf);
            let mut parts = full.chunks_exact(SNAPSHOT_PART_LEN);
            for part in parts.by_ref() {
                self.write_record(part)?;
            }
            self.buf = parts.remainder().to_vec();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A snapshot written to a staging file, not yet in place.
pub(crate) struct Staged {
    name: &'static str,
    meta: SnapshotMeta,
    layout: Layout,
}

/// `snapshot.bin` of one server.
pub(crate) struct SnapshotFile {
    disk: Arc<dyn Disk>,
    state: Mutex<Stored>,
    /// Held from a build's first byte to its commit: openraft's builds and
    /// the rebuild of `get_current_snapshot` would otherwise share
    /// [`BUILDING_FILE`].
    building: tokio::sync::Mutex<()>,
}

/// What the file holds, as this process last wrote or read it.
#[derive(Default)]
struct Stored {
    /// The snapshot in the file, if any.
    current: Option<(SnapshotMeta, Arc<Layout>)>,
    /// Why the file cannot be sent, once a transfer found out.
    damaged: Option<String>,
    /// The snapshot arriving in [`INCOMING_FILE`].
    incoming: Option<(SnapshotMeta, Layout)>,
}

impl SnapshotFile {
    /// The file on `disk` and the state restored from it, if any. Staging
    /// files a crash left behind are removed.
    pub(crate) fn open(
        disk: Arc<dyn Disk>,
    ) -> Result<(SnapshotFile, Option<(SnapshotMeta, StateMachine)>), OpenError> {
        let io = |name: &str, source: io::Error| OpenError::Io {
            file: disk.describe(name),
            source,
        };
        for stale in [BUILDING_FILE, INCOMING_FILE, RECEIVED_FILE] {
            disk.remove(stale).map_err(|e| io(stale, e))?;
        }
        let undecodable = |(offset, reason): (u64, String)| OpenError::Undecodable {
            file: disk.describe(SNAPSHOT_FILE),
            offset,
            reason,
        };
        let found = read_layout(disk.as_ref(), SNAPSHOT_FILE).map_err(undecodable)?;
        let restored = match &found {
            None => None,
            Some((meta, layout)) => {
                let sm = restore_file(disk.as_ref(), SNAPSHOT_FILE, layout)
                    .map_err(|e| undecodable((0, e)))?;
                Some((meta.clone(), sm))
            }
        };
        let stored = Stored {
            current: found.map(|(m, l)| (m, Arc::new(l))),
            ..Stored::default()
        };
        let file = SnapshotFile {
            disk,
            state: Mutex::new(stored),
            building: tokio::sync::Mutex::new(()),
        };
        Ok((file, restored))
    }

    /// The disk the file lives on.
    pub(crate) fn disk(&self) -> &dyn Disk {
        self.disk.as_ref()
    }

    /// Waits until no other build runs; hold the guard from
    /// [`Self::build`] to [`Self::commit`].
    pub(crate) async fn lock_build(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.building.lock().await
    }

    /// Writes a new snapshot to the staging file, `write` handing out the
    /// state bytes a piece at a time (call with [`Self::lock_build`]'s
    /// guard held). Not in place until [`Self::commit`].
    pub(crate) fn build(
        &self,
        meta: &SnapshotMeta,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<Staged> {
        let mut writer = RecordWriter::create(self.disk(), BUILDING_FILE, meta)?;
        write(&mut writer)?;
        let layout = writer.finish()?;
        Ok(Staged {
            name: BUILDING_FILE,
            meta: meta.clone(),
            layout,
        })
    }

    /// Makes a staged snapshot durable and puts it in place unless the file
    /// holds a newer one; says whether it did.
    pub(crate) async fn commit(&self, staged: Staged) -> io::Result<bool> {
        // What was staged must still be there, whole: never sync (which
        // creates) and rename an empty or foreign file over the snapshot.
        let expected = staged.layout.file_len();
        let found = self.disk.len(staged.name)?;
        if found != Some(expected) {
            return Err(io::Error::other(format!(
                "{} holds {found:?} bytes where {expected} were staged",
                self.disk.describe(staged.name)
            )));
        }
        self.disk.sync(staged.name)?;
        wait_durable(self.disk()).await;
        let placed = {
            let mut stored = self.state.lock().expect("snapshot file lock poisoned");
            let newer_stored = stored
                .current
                .as_ref()
                .is_some_and(|(m, _)| m.last_log_id > staged.meta.last_log_id);
            if newer_stored {
                self.disk.remove(staged.name)?;
            } else {
                self.disk.rename(staged.name, SNAPSHOT_FILE)?;
                stored.current = Some((staged.meta, Arc::new(staged.layout)));
                stored.damaged = None;
            }
            !newer_stored
        };
        wait_durable(self.disk()).await;
        Ok(placed)
    }

    /// The stored snapshot for a transfer, or why the file cannot serve
    /// one (damaged, removed, or replaced by someone else): the caller
    /// builds a new one then.
    pub(crate) fn current(self: &Arc<Self>) -> Result<Option<SnapshotData>, String> {
        let stored = self.state.lock().expect("snapshot file lock poisoned");
        let Some((meta, layout)) = stored.current.clone() else {
            return Ok(None);
        };
        if let Some(why) = &stored.damaged {
            return Err(why.clone());
        }
        match read_layout(self.disk(), SNAPSHOT_FILE) {
            Ok(Some((read, read_layout))) if read == meta && read_layout == *layout => {}
            Ok(Some((read, _))) => {
                return Err(format!(
                    "{} holds snapshot {}, not {}",
                    self.disk.describe(SNAPSHOT_FILE),
                    read.snapshot_id,
                    meta.snapshot_id
                ))
            }
            Ok(None) => return Err(format!("{} is gone", self.disk.describe(SNAPSHOT_FILE))),
            Err((offset, e)) => {
                return Err(format!(
                    "{} at byte {offset}: {e}",
                    self.disk.describe(SNAPSHOT_FILE)
                ))
            }
        }
        Ok(Some(SnapshotData {
            file: self.clone(),
            source: Source::Stored,
            meta,
            layout,
            cached: Mutex::new(None),
        }))
    }

    /// Starts receiving `meta` in [`INCOMING_FILE`], dropping any transfer
    /// that was arriving.
    pub(crate) fn begin_incoming(&self, meta: &SnapshotMeta) -> io::Result<()> {
        let mut stored = self.state.lock().expect("snapshot file lock poisoned");
        stored.incoming = None;
        self.disk.remove(INCOMING_FILE)?;
        stored.incoming = Some((meta.clone(), Layout::default()));
        Ok(())
    }

    /// Appends the next chunk of state bytes of the incoming snapshot as
    /// one record (the first with the meta).
    pub(crate) fn append_incoming(&self, chunk: &[u8]) -> io::Result<()> {
        let mut stored = self.state.lock().expect("snapshot file lock poisoned");
        let (meta, layout) = stored
            .incoming
            .take()
            .ok_or_else(|| io::Error::other("no incoming snapshot was begun"))?;
        let mut writer = if layout.parts.is_empty() {
            RecordWriter::create(self.disk(), INCOMING_FILE, &meta)?
        } else {
            RecordWriter::resume(self.disk(), INCOMING_FILE, layout)
        };
        writer.write_record(chunk)?;
        stored.incoming = Some((meta, writer.layout));
        Ok(())
    }

    /// The incoming snapshot, complete: synced and moved aside so that the
    /// next transfer can begin while this one is restored.
    pub(crate) fn received(self: &Arc<Self>) -> io::Result<SnapshotData> {
        let mut stored = self.state.lock().expect("snapshot file lock poisoned");
        let (meta, layout) = stored
            .incoming
            .take()
            .ok_or_else(|| io::Error::other("no incoming snapshot was begun"))?;
        let layout = if layout.parts.is_empty() {
            // An empty state in one empty chunk: write its meta record.
            RecordWriter::create(self.disk(), INCOMING_FILE, &meta)?.finish()?
        } else {
            layout
        };
        // No sync here (under the locks, a gigabyte's): the commit syncs
        // the received file before it puts it in place.
        self.disk.rename(INCOMING_FILE, RECEIVED_FILE)?;
        Ok(SnapshotData {
            file: self.clone(),
            source: Source::Received,
            meta,
            layout: Arc::new(layout),
            cached: Mutex::new(None),
        })
    }

    /// Notes that the stored file failed a check while being sent: later
    /// transfers get a new snapshot of the applied state instead.
    fn mark_damaged(&self, meta: &SnapshotMeta, why: String) {
        let mut stored = self.state.lock().expect("snapshot file lock poisoned");
        if stored.current.as_ref().is_some_and(|(m, _)| m == meta) {
            stored.damaged = Some(why);
        }
    }
}

/// Which file a [`SnapshotData`] lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// `snapshot.bin`, as long as it holds this snapshot.
    Stored,
    /// `snapshot.received`, a snapshot that arrived whole.
    Received,
}

/// A snapshot's state bytes where they lie on disk: what openraft hands
/// between building, sending and installing a snapshot. A transfer reads
/// them a part at a time; an install restores them a record at a time.
pub struct SnapshotData {
    file: Arc<SnapshotFile>,
    source: Source,
    meta: SnapshotMeta,
    layout: Arc<Layout>,
    /// The part a transfer read last (chunks are cut within one part).
    cached: Mutex<Option<(usize, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("source", &self.source)
            .field("snapshot_id", &self.meta.snapshot_id)
            .field("len", &self.len())
            .finish()
    }
}

impl SnapshotData {
    /// Which snapshot these are.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Length of the state bytes.
    pub fn len(&self) -> u64 {
        self.layout.state_len()
    }

    /// Whether there are no state bytes (never, for a real snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn file_name(&self) -> &'static str {
        match self.source {
            Source::Stored => SNAPSHOT_FILE,
            Source::Received => RECEIVED_FILE,
        }
    }

    /// Up to `max` state bytes from `offset`, never past the end of the
    /// record that holds `offset`, checked against the record's checksum.
    /// An error says why they cannot be read; a damaged stored file is
    /// not offered again.
    pub fn read(&self, offset: u64, max: usize) -> Result<Vec<u8>, String> {
        let (index, part_start) = self.layout.part_at(offset).ok_or_else(|| {
            format!(
                "offset {offset} is past the snapshot's {} bytes",
                self.len()
            )
        })?;
        let part = self.layout.parts[index];
        let mut cached = self.cached.lock().expect("snapshot cache lock poisoned");
        let payload = match cached.as_ref() {
            Some((i, payload)) if *i == index => payload.clone(),
            _ => {
                let payload = Arc::new(self.read_part(&part)?);
                *cached = Some((index, payload.clone()));
                payload
            }
        };
        let from =
            part.state_from as usize + usize::try_from(offset - part_start).unwrap_or(usize::MAX);
        let to = from.saturating_add(max).min(payload.len());
        Ok(payload[from..to].to_vec())
    }

    fn read_part(&self, part: &Part) -> Result<Vec<u8>, String> {
        // Under the file's lock: a commit renames over the stored file
        // only while holding it, so the bytes are this snapshot's.
        let read = {
            let stored = self.file.state.lock().expect("snapshot file lock poisoned");
            if self.source == Source::Stored
                && stored.current.as_ref().is_none_or(|(m, _)| *m != self.meta)
            {
                return Err(format!(
                    "snapshot {} was replaced by a newer one during the transfer",
                    self.meta.snapshot_id
                ));
            }
            read_part(self.file.disk(), self.file_name(), part)
        };
        if let (Err(why), Source::Stored) = (&read, self.source) {
            self.file.mark_damaged(&self.meta, why.clone());
        }
        read
    }

    /// The state these bytes restore, read a record at a time.
    pub fn restore(&self) -> Result<StateMachine, String> {
        restore_file(self.file.disk(), self.file_name(), &self.layout)
    }

    /// Puts a received snapshot in place of the stored one, unless that
    /// is newer (then it is dropped); says whether it did.
    pub(crate) async fn commit(self) -> io::Result<bool> {
        let staged = Staged {
            name: self.file_name(),
            meta: self.meta,
            layout: Arc::unwrap_or_clone(self.layout),
        };
        self.file.commit(staged).await
    }
}

#[cfg(test)]
mod tests;
