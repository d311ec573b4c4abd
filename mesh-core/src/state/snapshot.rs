//! Snapshot bytes: the version 2 binary writer and reader, and the version 1
//! JSON reader kept for upgrades. The layouts are in the module docs of
//! [`super`].

use serde::Deserialize;

use super::binary::{put_u64, put_u8, Reader};
use super::catalog::CatalogTable;
use super::kv::KvStore;
use super::{SnapshotError, StateMachine, Table, TableState, SNAPSHOT_MAGIC, SNAPSHOT_VERSION};

/// Magic, version byte, `last_applied`, section count.
const HEADER_LEN: usize = 4 + 1 + 8 + 1;
/// Table id and body length.
const SECTION_HEADER_LEN: usize = 1 + 8;

pub(super) fn encode(sm: &StateMachine) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + SECTION_HEADER_LEN);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    put_u8(&mut out, SNAPSHOT_VERSION);
    put_u64(&mut out, sm.last_applied);
    // An empty catalog has no section (a missing section reads as an
    // empty table), so KV-only states keep the bytes they had before the
    // catalog existed.
    let with_catalog = sm.catalog != CatalogTable::default();
    let with_intentions = !sm.intentions.is_pristine();
    let with_ca = !sm.ca.is_pristine();
    let with_sessions = !sm.sessions.is_pristine();
    put_u8(
        &mut out,
        1 + u8::from(with_catalog)
            + u8::from(with_intentions)
            + u8::from(with_ca)
            + u8::from(with_sessions),
    );
    encode_section(&sm.kv, &mut out);
    if with_catalog {
        encode_section(&sm.catalog, &mut out);
    }
    if with_intentions {
        encode_section(&sm.intentions, &mut out);
    }
    if with_ca {
        encode_section(&sm.ca, &mut out);
    }
    if with_sessions {
        encode_section(&sm.sessions, &mut out);
    }
    out
}

/// Appends `[table id][body length][body]`, writing the body in place and
/// filling in its length afterwards (no copy of a large table).
fn encode_section<T: TableState>(table: &T, out: &mut Vec<u8>) {
    put_u8(out, T::TABLE.id());
    let len_at = out.len();
    put_u64(out, 0);
    let body_at = out.len();
    table.encode(out);
    let body_len = (out.len() - body_at) as u64;
    out[len_at..body_at].copy_from_slice(&body_len.to_le_bytes());
}

pub(super) fn decode(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
    let rest = bytes
        .strip_prefix(SNAPSHOT_MAGIC.as_slice())
        .ok_or(SnapshotError::BadMagic)?;
    let (&version, body) = rest.split_first().ok_or_else(|| {
        SnapshotError::Malformed("truncated after the magic, no version byte".into())
    })?;
    let sm = match version {
        1 => decode_v1(body),
        // Version 3 adds optional parts to version 2's sections, which
        // the same reader knows how to miss.
        2 | 3 => decode_v2(body),
        _ => return Err(SnapshotError::UnsupportedVersion(version)),
    }
    .map_err(SnapshotError::Malformed)?;
    sm.validate().map_err(SnapshotError::Malformed)?;
    Ok(sm)
}

fn decode_v2(body: &[u8]) -> Result<StateMachine, String> {
    let mut r = Reader::new(body, SNAPSHOT_MAGIC.len() + 1);
    let mut sm = StateMachine {
        last_applied: r.u64(&|| "last applied index".into())?,
        ..StateMachine::default()
    };
    let sections = r.u8(&|| "section count".into())?;
    let mut previous: Option<u8> = None;
    for i in 0..sections {
        let id_at = r.offset();
        let id = r.u8(&|| format!("table id of section #{i}"))?;
        if previous.is_some_and(|p| p >= id) {
            return Err(format!(
                "at byte {id_at}: section #{i} is for table id {id}, not after the previous \
                 section's (table ids must be strictly increasing; a table appears once)"
            ));
        }
        previous = Some(id);
        let len = r.u64(&|| format!("body length of section #{i}"))?;
        // `take` compares with the bytes that remain; saturating keeps a
        // length above usize::MAX (32-bit targets) an ordinary overrun.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let mut section = r.sub(len, &|| format!("body of section #{i} (table id {id})"))?;
        match Table::from_id(id) {
            Some(Table::Kv) => sm.kv = decode_section(&mut section)?,
            Some(Table::Catalog) => sm.catalog = decode_section(&mut section)?,
            Some(Table::Intentions) => sm.intentions = decode_section(&mut section)?,
            Some(Table::Ca) => sm.ca = decode_section(&mut section)?,
            Some(Table::Sessions) => sm.sessions = decode_section(&mut section)?,
            None => {
                return Err(format!(
                    "at byte {id_at}: section #{i} is for table id {id}, which this build \
                     does not know: the snapshot was written by a newer release; upgrade \
                     this server to it"
                ))
            }
        }
    }
    r.finish("the last section")?;
    Ok(sm)
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
