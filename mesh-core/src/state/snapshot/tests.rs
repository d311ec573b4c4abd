use super::super::tests::{sample, set};
use super::super::*;

/// `sample()` as the version 1 build wrote it (captured from that build's
/// `StateMachine::snapshot` before the binary format existed): the snapshot
/// an upgraded server finds on disk.
const SAMPLE_V1_JSON: &str = concat!(
    r#"{"last_applied":7,"kv":{"entries":{"#,
    r#""a/y":{"key":"a/y","value":"","flags":0,"create_index":3,"modify_index":3,"lock_index":0},"#,
    r#""b":{"key":"b","value":"AP8=","flags":42,"create_index":4,"modify_index":4,"lock_index":0}"#,
    r#"},"table_index":5,"last_index":7}}"#
);

fn v1(json: &str) -> Vec<u8> {
    let mut out = b"MSSM\x01".to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

fn le(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// One KV entry in the section layout: key, value, flags, create, modify, lock.
fn entry(out: &mut Vec<u8>, key: &[u8], value: &[u8], idx: [u64; 4]) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    for i in idx {
        out.extend_from_slice(&le(i));
    }
}

/// A version 2 snapshot from parts: `sections` are `(table id, body)`.
fn v2(last_applied: u64, sections: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = b"MSSM\x02".to_vec();
    out.extend_from_slice(&le(last_applied));
    out.push(sections.len() as u8);
    for (id, body) in sections {
        out.push(*id);
        out.extend_from_slice(&le(body.len() as u64));
        out.extend_from_slice(body);
    }
    out
}

/// A KV section body: table index, last index, then the entries as given.
fn kv_body(table_index: u64, last_index: u64, entries: &[(&str, &[u8], [u64; 4])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&le(table_index));
    out.extend_from_slice(&le(last_index));
    out.extend_from_slice(&le(entries.len() as u64));
    for (k, v, idx) in entries {
        entry(&mut out, k.as_bytes(), v, *idx);
    }
    out
}

/// What this build writes after the KV entries when no key is locked and
/// nothing was deleted: lock count 0, tombstone floor 0, tombstone count 0.
fn empty_trailer(mut body: Vec<u8>) -> Vec<u8> {
    for _ in 0..3 {
        body.extend_from_slice(&le(0));
    }
    body
}

/// `sample()` as a build from before tombstones restores it: its delete is
/// not remembered, so prefix reads answer at least its table index.
fn sample_without_tombstones() -> StateMachine {
    let mut sm = sample();
    sm.kv = sm.kv.restored_without_tombstones();
    sm
}

fn malformed(bytes: &[u8]) -> String {
    match StateMachine::restore(bytes) {
        Err(SnapshotError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// The layout documented in the module docs, written out by hand: a change
/// to the writer that is not a deliberate format change fails here.
#[test]
fn v2_layout_is_pinned() {
    let mut sm = StateMachine::new();
    sm.skip(1);
    sm.apply(
        2,
        &Command::Kv(KvCommand::Set {
            key: "k".into(),
            value: b"v".to_vec(),
            flags: 9,
        }),
    );
    sm.skip(3);
    let body = empty_trailer(kv_body(2, 2, &[("k", b"v", [9, 2, 2, 0])]));
    let mut expected = v2(3, &[(1, &body)]);
    expected[4] = 3;
    assert_eq!(sm.snapshot(), expected);
    assert_eq!(expected.len(), 14 + 9 + 66 + 24);
    assert_eq!(StateMachine::restore(&expected), Ok(sm));
}

#[test]
fn v2_round_trips() {
    for sm in [StateMachine::new(), sample()] {
        let bytes = sm.snapshot();
        assert!(bytes.starts_with(b"MSSM\x03"));
        let back = StateMachine::restore(&bytes).unwrap();
        back.check_invariants();
        assert_eq!(back, sm);
        assert_eq!(back.digest(), sm.digest());
        assert_eq!(back.snapshot(), bytes, "canonical");
    }
}

/// Values are raw bytes: a 1,000-byte value costs 1,000 bytes plus a fixed
/// per-entry overhead (base64 in JSON cost 1,336 plus field names).
#[test]
fn v2_carries_values_raw() {
    let mut sm = StateMachine::new();
    sm.apply(1, &set("key", &[0xAB; 1000]));
    let header_and_section = 14 + 9 + 24 + 24;
    let per_entry = 4 + 4 + 32;
    assert_eq!(
        sm.snapshot().len(),
        header_and_section + per_entry + "key".len() + 1000
    );
}

/// Cutting a valid snapshot anywhere is refused: the section count and
/// lengths leave no prefix that reads as a complete snapshot.
#[test]
fn every_truncation_point_is_refused() {
    let good = sample().snapshot();
    for n in 0..good.len() {
        match StateMachine::restore(&good[..n]) {
            Err(SnapshotError::BadMagic) => assert!(n < 4, "cut at {n}"),
            Err(SnapshotError::Malformed(_)) => assert!(n >= 4, "cut at {n}"),
            other => panic!("cut at {n} of {}: {other:?}", good.len()),
        }
    }
}

/// Every single-bit flip of a valid snapshot is refused or gives a
/// consistent state (a flipped flag or value byte is undetectable here: the
/// record CRC around the snapshot catches those). Never a panic.
#[test]
fn every_bit_flip_is_survived() {
    let good = sample().snapshot();
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            if let Ok(sm) = StateMachine::restore(&bad) {
                sm.check_invariants();
            }
        }
    }
}

/// Length fields off by one either way, or forged huge, are refused with a
/// message naming the field (and without allocating what they claim).
#[test]
fn damaged_length_fields_are_refused() {
    let entries: &[(&str, &[u8], [u64; 4])] = &[
        ("a/y", b"", [0, 3, 3, 0]),
        ("b", b"\x00\xff", [42, 4, 4, 0]),
    ];
    let body = kv_body(5, 7, entries);
    assert_eq!(
        StateMachine::restore(&v2(7, &[(1, &body)])),
        Ok(sample_without_tombstones()),
        "the hand-built snapshot (of an older build) is the sample"
    );
    // Offsets inside the file: header 14, section header 9, KV header 24.
    const SECTION_LEN_AT: usize = 15;
    const COUNT_AT: usize = 23 + 16;
    const KEY_LEN_AT: usize = 23 + 24;
    const VALUE_LEN_AT: usize = KEY_LEN_AT + 4 + 3;
    let good = v2(7, &[(1, &body)]);
    let with_u64 = |at: usize, v: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&le(v));
        b
    };
    let with_u32 = |at: usize, v: u32| {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b
    };
    let section_len = body.len() as u64;
    let m = malformed(&with_u64(SECTION_LEN_AT, section_len + 1));
    assert!(m.contains("body of section #0 (table id 1) needs"), "{m}");
    let m = malformed(&with_u64(SECTION_LEN_AT, section_len - 1));
    assert!(m.contains("Kv table"), "{m}");
    let m = malformed(&with_u64(SECTION_LEN_AT, u64::MAX));
    assert!(m.contains("only"), "{m}");

    let m = malformed(&with_u64(COUNT_AT, 3));
    assert!(m.contains("KV entry count 3 cannot fit"), "{m}");
    let m = malformed(&with_u64(COUNT_AT, u64::MAX));
    assert!(m.contains("cannot fit"), "{m}");
    // The bytes after one entry read as a lock list, whose count is wrong.
    let m = malformed(&with_u64(COUNT_AT, 1));
    assert!(m.contains("KV lock count"), "{m}");

    let m = malformed(&with_u32(KEY_LEN_AT, u32::MAX));
    assert!(
        m.contains("key of KV entry #0 needs 4294967295 bytes"),
        "{m}"
    );
    let m = malformed(&with_u32(KEY_LEN_AT, 4));
    assert!(m.contains("Kv table"), "{m}");
    let m = malformed(&with_u32(VALUE_LEN_AT, 1));
    assert!(m.contains("Kv table"), "{m}");
}

#[test]
fn bad_utf8_key_is_refused() {
    let body = kv_body(1, 1, &[("\u{e9}", b"", [0, 1, 1, 0])]);
    let mut bytes = v2(1, &[(1, &body)]);
    let at = bytes.len() - 32 - 4 - 2;
    assert_eq!(&bytes[at..at + 2], "\u{e9}".as_bytes());
    bytes[at + 1] = 0xff;
    let m = malformed(&bytes);
    assert!(m.contains("key of KV entry #0 is not UTF-8"), "{m}");
}

#[test]
fn keys_out_of_order_or_repeated_are_refused() {
    for keys in [["b", "a"], ["a", "a"]] {
        let body = kv_body(
            2,
            2,
            &[(keys[0], b"", [0, 1, 1, 0]), (keys[1], b"", [0, 2, 2, 0])],
        );
        let m = malformed(&v2(2, &[(1, &body)]));
        assert!(m.contains("strictly increasing"), "{keys:?}: {m}");
    }
}

#[test]
fn trailing_garbage_is_refused() {
    let mut bytes = sample().snapshot();
    bytes.push(0);
    let m = malformed(&bytes);
    assert!(
        m.contains("1 unexpected trailing bytes after the last section"),
        "{m}"
    );
}

#[test]
fn sections_must_be_known_and_in_order() {
    let body = sample().snapshot()[23..].to_vec();
    assert_eq!(StateMachine::restore(&v2(7, &[(1, &body)])), Ok(sample()));
    for id in [0, 9, 255] {
        let m = malformed(&v2(7, &[(id, &body)]));
        assert!(
            m.contains(&format!("table id {id}, which this build does not know")),
            "{m}"
        );
        assert!(m.contains("newer release"), "{m}");
    }
    let m = malformed(&v2(7, &[(1, &body), (1, &body)]));
    assert!(m.contains("strictly increasing"), "{m}");
}

/// A table without a section is empty, so a snapshot of a build with fewer
/// tables still reads.
#[test]
fn missing_section_is_an_empty_table() {
    let sm = StateMachine::restore(&v2(9, &[])).unwrap();
    sm.check_invariants();
    assert_eq!(sm.last_applied(), 9);
    assert!(sm.kv().is_empty());
    let mut expected = StateMachine::new();
    expected.skip(9);
    assert_eq!(sm, expected);
}

/// Well-formed bytes describing an impossible state are refused, not
/// asserted on.
#[test]
fn inconsistent_state_is_refused() {
    let body = kv_body(5, 7, &[("b", b"", [0, 4, 4, 0])]);
    let m = malformed(&v2(3, &[(1, &body)]));
    assert!(m.contains("applied only up to 3"), "{m}");
    let forged = kv_body(5, 7, &[("b", b"", [0, 5, 4, 0])]);
    let m = malformed(&v2(7, &[(1, &forged)]));
    assert!(
        m.contains("created at 5 after its last modification at 4"),
        "{m}"
    );
}

#[test]
fn v1_snapshot_still_restores() {
    let sm = StateMachine::restore(&v1(SAMPLE_V1_JSON)).unwrap();
    sm.check_invariants();
    assert_eq!(sm, sample_without_tombstones());
    assert_eq!(sm.digest(), sample().digest(), "the same data");
    assert!(sm.snapshot().starts_with(b"MSSM\x03"), "rewritten as v3");
}

#[test]
fn v1_unknown_fields_and_inconsistent_state_are_refused() {
    let extra =
        SAMPLE_V1_JSON.replacen("{\"last_applied\"", "{\"services\":[],\"last_applied\"", 1);
    let m = malformed(&v1(&extra));
    assert!(m.contains("services"), "{m}");

    let rewound = SAMPLE_V1_JSON.replace("\"last_applied\":7", "\"last_applied\":3");
    assert_ne!(rewound, SAMPLE_V1_JSON);
    let m = malformed(&v1(&rewound));
    assert!(m.contains("applied only up to 3"), "{m}");

    let forged = SAMPLE_V1_JSON.replace("\"create_index\":4", "\"create_index\":5");
    assert_ne!(forged, SAMPLE_V1_JSON);
    malformed(&v1(&forged));
    malformed(&v1("{}"));
    malformed(&v1(&SAMPLE_V1_JSON[..SAMPLE_V1_JSON.len() - 1]));
}

#[test]
fn header_errors_are_classified() {
    assert_eq!(StateMachine::restore(b""), Err(SnapshotError::BadMagic));
    assert_eq!(StateMachine::restore(b"MSS"), Err(SnapshotError::BadMagic));
    assert_eq!(
        StateMachine::restore(b"{\"last_applied\":0}"),
        Err(SnapshotError::BadMagic)
    );
    let m = malformed(b"MSSM");
    assert!(m.contains("no version byte"), "{m}");
    for version in [0, 4, 255] {
        let mut bytes = sample().snapshot();
        bytes[4] = version;
        assert_eq!(
            StateMachine::restore(&bytes),
            Err(SnapshotError::UnsupportedVersion(version))
        );
    }
    let text = SnapshotError::UnsupportedVersion(4).to_string();
    assert!(text.contains("version 4 is not supported"), "{text}");
    assert!(text.contains("reads versions 1 to 3"), "{text}");
    assert!(text.contains("upgrade this server"), "{text}");
}

/// A JSON-encoded table section (intentions, CA, sessions) holding a
/// field this build does not know is refused, naming it: a snapshot from a
/// newer release must not restore with part of its state silently dropped.
#[test]
fn json_sections_with_unknown_fields_are_refused() {
    fn section(json: &serde_json::Value) -> Vec<u8> {
        let text = serde_json::to_vec(json).unwrap();
        let mut out = (text.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out
    }
    let intentions = serde_json::json!({"table_index": 0, "last_index": 0, "intentions": []});
    let ca = serde_json::to_value(ca::CaTable::default()).unwrap();
    let sessions = serde_json::json!({"table_index": 0, "last_index": 0, "sessions": []});
    // The sections as they are restore.
    for (id, json) in [(3u8, &intentions), (4, &ca), (5, &sessions)] {
        let sm = StateMachine::restore(&v2(0, &[(id, &section(json))]));
        assert!(sm.is_ok(), "table {id}: {sm:?}");
    }
    let with_extra = |json: &serde_json::Value| {
        let mut v = json.clone();
        v.as_object_mut()
            .unwrap()
            .insert("from_the_future".into(), 1.into());
        v
    };
    for (id, json) in [(3u8, &intentions), (4, &ca), (5, &sessions)] {
        let m = malformed(&v2(0, &[(id, &section(&with_extra(json)))]));
        assert!(
            m.contains("unknown field `from_the_future`"),
            "table {id}: {m}"
        );
    }
    // Nested records too: an intention with a field this build lacks.
    let real = crate::connect::intention::Intention::new(
        "a",
        "b",
        crate::connect::intention::Action::Allow,
    );
    let mut record = serde_json::to_value(&real).unwrap();
    record["CreateIndex"] = 1.into();
    record["ModifyIndex"] = 1.into();
    let fine =
        serde_json::json!({"table_index": 1, "last_index": 1, "intentions": [record.clone()]});
    let restored = StateMachine::restore(&v2(1, &[(3, &section(&fine))]));
    assert!(restored.is_ok(), "{restored:?}");
    record
        .as_object_mut()
        .unwrap()
        .insert("FromTheFuture".into(), true.into());
    let nested = serde_json::json!({"table_index": 1, "last_index": 1, "intentions": [record]});
    let m = malformed(&v2(1, &[(3, &section(&nested))]));
    assert!(m.contains("unknown field `FromTheFuture`"), "{m}");
}

/// A writer that keeps what it is given and the size of each piece.
#[derive(Default)]
struct Pieces {
    bytes: Vec<u8>,
    largest: usize,
    calls: usize,
}

impl std::io::Write for Pieces {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        self.largest = self.largest.max(buf.len());
        self.calls += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that hands out at most `step` bytes per call, then fails with
/// `error` once `fail_at` bytes were read (if set).
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
    fail_at: Option<usize>,
    read: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.fail_at.is_some_and(|at| self.read >= at) {
            return Err(std::io::Error::other(
                "record at offset 9 fails its checksum",
            ));
        }
        let n = buf.len().min(self.step).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        self.read += n;
        Ok(n)
    }
}

/// Three megabytes of values: the writer hands them out in pieces of about
/// a megabyte (never the whole state), their concatenation is exactly
/// `snapshot()`, and a reader fed a few bytes at a time restores an equal
/// state.
#[test]
fn large_states_stream_in_pieces_both_ways() {
    let mut sm = sample();
    for i in 0..3_000u64 {
        sm.apply(8 + i, &set(&format!("big/{i:05}"), &[i as u8; 1024]));
    }
    let whole = sm.snapshot();
    assert!(whole.len() > 3 << 20);
    let mut pieces = Pieces::default();
    sm.write_snapshot(&mut pieces).unwrap();
    assert_eq!(pieces.bytes, whole);
    assert!(pieces.calls >= 4, "{} writes", pieces.calls);
    assert!(
        pieces.largest <= (1 << 20) + 2048,
        "largest write {}",
        pieces.largest
    );

    let mut trickle = Trickle {
        bytes: &whole,
        step: 7,
        fail_at: None,
        read: 0,
    };
    let back = StateMachine::restore_from(&mut trickle, whole.len() as u64).unwrap();
    assert_eq!(back, sm);
    assert_eq!(back.digest(), sm.digest());
}

/// A source that fails (a record on disk fails its checksum) or ends
/// early, or a length that does not match the bytes, is an error naming
/// the cause: never a panic, never a partial state.
#[test]
fn streamed_restore_reports_source_errors_and_wrong_lengths() {
    let mut sm = sample();
    for i in 0..100u64 {
        sm.apply(8 + i, &set(&format!("k/{i:03}"), &[1; 100]));
    }
    let whole = sm.snapshot();
    let mut failing = Trickle {
        bytes: &whole,
        step: 64,
        fail_at: Some(5_000),
        read: 0,
    };
    match StateMachine::restore_from(&mut failing, whole.len() as u64) {
        Err(SnapshotError::Malformed(m)) => {
            assert!(m.contains("fails its checksum"), "{m}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    let len = whole.len() as u64;
    for wrong in [len - 1, len + 1, len + 1_000_000] {
        let result = StateMachine::restore_from(&mut &whole[..], wrong);
        assert!(
            matches!(result, Err(SnapshotError::Malformed(_))),
            "length {wrong} of {len}: {result:?}"
        );
    }
}
