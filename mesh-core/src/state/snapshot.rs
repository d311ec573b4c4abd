//! Snapshot bytes: the version 2 binary writer and reader, and the version 1
//! JSON reader kept for upgrades. The layouts are in the module docs of
//! [`super`].

use std::io::{self, Read, Write};

use serde::Deserialize;

use super::binary::{put_u64, put_u8, Input, Reader, StreamReader};
use super::catalog::CatalogTable;
use super::kv::KvStore;
use super::{SnapshotError, StateMachine, Table, TableState, SNAPSHOT_MAGIC, SNAPSHOT_VERSION};

/// Magic, version byte, `last_applied`, section count.
const HEADER_LEN: usize = 4 + 1 + 8 + 1;
/// Table id and body length.
const SECTION_HEADER_LEN: usize = 1 + 8;

pub(super) fn encode(sm: &StateMachine) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + SECTION_HEADER_LEN);
    write(sm, &mut out).expect("writing to a vector cannot fail");
    out
}

/// Writes the snapshot to `out` piece by piece: the KV table, where the
/// bulk of a large state lives, a buffer at a time, so writing a gigabyte
/// of state costs a buffer, not a second gigabyte.
pub(super) fn write(sm: &StateMachine, out: &mut dyn Write) -> io::Result<()> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    put_u8(&mut header, SNAPSHOT_VERSION);
    put_u64(&mut header, sm.last_applied);
    // An empty catalog has no section (a missing section reads as an
    // empty table), so KV-only states keep the bytes they had before the
    // catalog existed.
    let with_catalog = sm.catalog != CatalogTable::default();
    let with_intentions = !sm.intentions.is_pristine();
    let with_ca = !sm.ca.is_pristine();
    let with_sessions = !sm.sessions.is_pristine();
    put_u8(
        &mut header,
        1 + u8::from(with_catalog)
            + u8::from(with_intentions)
            + u8::from(with_ca)
            + u8::from(with_sessions),
    );
    out.write_all(&header)?;
    let kv_len = sm.kv.body_len();
    out.write_all(&section_header(Table::Kv, kv_len))?;
    let mut counted = Counted { out, written: 0 };
    sm.kv.write_body(&mut counted)?;
    // A miscount would make every later section unreadable: a bug, found
    // here rather than by the server that restores the snapshot.
    assert_eq!(counted.written, kv_len, "KV body length miscounted");
    if with_catalog {
        write_section(&sm.catalog, out)?;
    }
    if with_intentions {
        write_section(&sm.intentions, out)?;
    }
    if with_ca {
        write_section(&sm.ca, out)?;
    }
    if with_sessions {
        write_section(&sm.sessions, out)?;
    }
    Ok(())
}

/// `[table id][body length]`.
fn section_header(table: Table, body_len: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SECTION_HEADER_LEN);
    put_u8(&mut header, table.id());
    put_u64(&mut header, body_len);
    header
}

/// Writes `[table id][body length][body]` of a table small enough to be
/// encoded in memory first.
fn write_section<T: TableState>(table: &T, out: &mut dyn Write) -> io::Result<()> {
    let mut body = Vec::new();
    table.encode(&mut body);
    out.write_all(&section_header(T::TABLE, body.len() as u64))?;
    out.write_all(&body)
}

/// A writer that counts what passes through it.
struct Counted<'w> {
    out: &'w mut dyn Write,
    written: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub(super) fn decode(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
    decode_from(&mut { bytes }, bytes.len() as u64)
}

/// Reads a snapshot of `len` bytes from `source`, a piece at a time: the
/// KV section straight into the table it restores, the other (small)
/// sections through a buffer each.
pub(super) fn decode_from(source: &mut dyn Read, len: u64) -> Result<StateMachine, SnapshotError> {
    let mut magic = [0u8; 4];
    let mut head = StreamReader::new(source, usize::try_from(len).unwrap_or(usize::MAX), 0);
    head.fill(&mut magic, &|| "magic".into())
        .map_err(|_| SnapshotError::BadMagic)?;
    if magic != *SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut version = [0u8; 1];
    head.fill(&mut version, &|| "version".into()).map_err(|_| {
        SnapshotError::Malformed("truncated after the magic, no version byte".into())
    })?;
    let sm = match version[0] {
        1 => head
            .vec(head.remaining(), &|| "version 1 body".into())
            .and_then(|json| decode_v1(&json)),
        // Version 3 adds optional parts to version 2's sections, which
        // the same reader knows how to miss.
        2 | 3 => decode_v2(&mut head),
        v => return Err(SnapshotError::UnsupportedVersion(v)),
    }
    .map_err(SnapshotError::Malformed)?;
    sm.validate().map_err(SnapshotError::Malformed)?;
    Ok(sm)
}

fn decode_v2(r: &mut StreamReader<'_>) -> Result<StateMachine, String> {
    let mut sm = StateMachine {
        last_applied: r.u64_le(&|| "last applied index".into())?,
        ..StateMachine::default()
    };
    let mut count = [0u8; 1];
    r.fill(&mut count, &|| "section count".into())?;
    let mut previous: Option<u8> = None;
    for i in 0..count[0] {
        let id_at = r.offset();
        let mut id = [0u8; 1];
        r.fill(&mut id, &|| format!("table id of section #{i}"))?;
        let id = id[0];
        if previous.is_some_and(|p| p >= id) {
            return Err(format!(
                "at byte {id_at}: section #{i} is for table id {id}, not after the previous \
                 section's (table ids must be strictly increasing; a table appears once)"
            ));
        }
        previous = Some(id);
        let len = r.u64_le(&|| format!("body length of section #{i}"))?;
        // `section` compares with the bytes that remain; saturating keeps
        // a length above usize::MAX (32-bit targets) an ordinary overrun.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let what = || format!("body of section #{i} (table id {id})");
        let table = Table::from_id(id).ok_or_else(|| {
            format!(
                "at byte {id_at}: section #{i} is for table id {id}, which this build does \
                 not know: the snapshot was written by a newer release; upgrade this server \
                 to it"
            )
        })?;
        match table {
            Table::Kv => {
                let mut section = r.section(len, &what)?;
                sm.kv = KvStore::read_body(&mut section).map_err(|e| format!("Kv table: {e}"))?;
                section.finish_input("the Kv table")?;
            }
            Table::Catalog => sm.catalog = read_section(r, len, &what)?,
            Table::Intentions => sm.intentions = read_section(r, len, &what)?,
            Table::Ca => sm.ca = read_section(r, len, &what)?,
            Table::Sessions => sm.sessions = read_section(r, len, &what)?,
        }
    }
    r.finish_input("the last section")?;
    Ok(sm)
}

/// Reads a section body of `len` bytes into memory and decodes it.
fn read_section<T: TableState>(
    r: &mut StreamReader<'_>,
    len: usize,
    what: &dyn Fn() -> String,
) -> Result<T, String> {
    let base = r.offset();
    let body = r.vec(len, what)?;
    decode_section(&mut Reader::new(&body, base))
}

fn decode_section<T: TableState>(r: &mut Reader<'_>) -> Result<T, String> {
    let table = T::decode(r).map_err(|e| format!("{:?} table: {e}", T::TABLE))?;
    r.finish(&format!("the {:?} table", T::TABLE))?;
    Ok(table)
}

/// Version 1 body: JSON. Unknown fields are refused: a field this build
/// does not know is state it would silently drop.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyV1 {
    last_applied: u64,
    kv: KvStore,
}

fn decode_v1(json: &[u8]) -> Result<StateMachine, String> {
    let mut body: BodyV1 =
        serde_json::from_slice(json).map_err(|e| format!("version 1 JSON: {e}"))?;
    body.kv.assume_unseen_deletes();
    Ok(StateMachine {
        last_applied: body.last_applied,
        kv: body.kv,
        ..StateMachine::default()
    })
}

#[cfg(test)]
mod tests;
