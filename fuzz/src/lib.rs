//! The bodies of the fuzz targets, one function per target, each taking
//! the fuzzer's bytes. They panic only when mesh-core breaks a property it
//! promises (never panic on input; never accept a record or frame with a bad
//! checksum; round trips are exact), so a crash is a bug either way.
//!
//! Nothing here needs nightly or libFuzzer: `fuzz_targets/*.rs` wrap these
//! functions for cargo-fuzz, and the same functions can replay a corpus on
//! stable Rust.

use mesh_core::codec::{self, FrameDecoder};
use mesh_core::definitions::{self, AgentFileConfig};
use mesh_core::filter::Filter;
use mesh_core::record;
use mesh_core::state::{StateMachine, SNAPSHOT_MAGIC};
use mesh_core::wire::{self, Request, Response};

/// A target's body: it takes the fuzzer's bytes and panics on a bug.
pub type Target = fn(&[u8]);

/// Every fuzz target, by name (the names of `fuzz_targets/*.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decode", frame_decode),
    ("wire_decode", wire_decode),
    ("snapshot_restore", snapshot_restore),
    ("record_recovery", record_recovery),
    ("filter_parse", filter_parse),
    ("definitions_decode", definitions_decode),
];

/// The frame codec over arbitrary bytes: the direct API on the whole
/// input, then a [`FrameDecoder`] fed the input in chunks whose size the
/// first byte picks. Every frame it yields must be exactly one frame of
/// the input, in order (so no damaged frame is ever accepted), and once
/// it fails it must stay failed.
pub fn frame_decode(data: &[u8]) {
    if let Some(prefix) = data.first_chunk::<{ codec::LEN_PREFIX }>() {
        let _ = codec::decode_len(*prefix);
    }
    let _ = codec::decode_body(data);

    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    let mut dec = FrameDecoder::new();
    let mut reencoded = Vec::new();
    let mut error = None;
    'feed: for piece in stream.chunks(chunk) {
        dec.push(piece);
        // Bounded: each frame consumes at least 9 bytes.
        for _ in 0..=stream.len() {
            match dec.next_frame() {
                Ok(Some(payload)) => codec::encode_frame(&payload, &mut reencoded),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert!(
        stream.starts_with(&reencoded),
        "the decoder yielded a frame that is not in the input"
    );
    if let Some(e) = error {
        dec.push(stream);
        assert_eq!(
            dec.next_frame(),
            Err(e),
            "a failed decoder must stay failed"
        );
        assert_eq!(dec.buffered(), 0);
    } else {
        assert_eq!(dec.buffered(), stream.len() - reencoded.len());
    }
}

/// RPC message decoding over arbitrary bytes, as a server reads a frame's
/// payload: requests and responses, with JSON values standing in for the
/// runtime's Raft messages. A decoded request without a Raft payload must
/// survive encode and decode unchanged (a Raft payload is left out: JSON
/// floats need not round-trip exactly through `serde_json::Value`).
pub fn wire_decode(data: &[u8]) {
    if let Ok(req) = wire::decode::<Request<serde_json::Value>>(data) {
        if !matches!(req, Request::Raft(_)) {
            let mut framed = Vec::new();
            if wire::encode(&req, &mut framed).is_ok() {
                let payload = codec::decode_body(&framed[codec::LEN_PREFIX..])
                    .expect("a frame we encoded decodes");
                let again: Request<serde_json::Value> =
                    wire::decode(payload).expect("a message we encoded decodes");
                assert_eq!(again, req, "request changed through encode and decode");
            }
        }
    }
    let _ = wire::decode::<Response<serde_json::Value>>(data);
}

/// Snapshot restore over arbitrary bytes, as a server reads them from disk
/// or from the leader. The first byte picks a header to prepend (none,
/// version 2 or version 1) so the fuzzer spends its time in the bodies. A
/// snapshot that restores must hold the state machine's invariants, and
/// snapshot and restore again to an equal state with an equal digest.
pub fn snapshot_restore(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        v => [SNAPSHOT_MAGIC.as_slice(), &[3 - v], rest].concat(),
    };
    if let Ok(sm) = StateMachine::restore(&bytes) {
        sm.check_invariants();
        let again = StateMachine::restore(&sm.snapshot()).expect("our own snapshot restores");
        assert_eq!(again, sm, "state changed through snapshot and restore");
        assert_eq!(again.digest(), sm.digest());
    }
}

/// Storage recovery over arbitrary file contents (`record::scan`): the
/// records it keeps are contiguous from offset 0 and each re-encodes to
/// exactly the bytes it came from (so a record with a bad checksum is
/// never accepted and none before the damage is dropped), the length to
/// keep ends at the last of them, and a torn tail accounts for every byte
/// after it.
pub fn record_recovery(data: &[u8]) {
    match record::scan(data) {
        Ok(scan) => {
            let mut end = 0usize;
            for r in &scan.records {
                assert_eq!(r.offset, end as u64, "records must be contiguous from 0");
                let mut bytes = Vec::new();
                record::encode_record(r.kind, r.payload, &mut bytes);
                assert_eq!(
                    &data[end..end + bytes.len()],
                    &bytes[..],
                    "a kept record is not the bytes it came from"
                );
                end += bytes.len();
            }
            assert_eq!(scan.valid_len, end as u64);
            match &scan.torn_tail {
                Some(t) => {
                    assert_eq!(t.offset, scan.valid_len);
                    assert_eq!(t.discarded_bytes, data.len() as u64 - scan.valid_len);
                    assert!(t.discarded_bytes > 0);
                }
                None => assert_eq!(scan.valid_len, data.len() as u64),
            }
        }
        Err(corrupt) => assert!(corrupt.offset < data.len() as u64),
    }
}

/// The row filters are evaluated against in `filter_parse`: a
/// `/v1/health/service` entry with maps, lists, strings, numbers and
/// booleans.
fn filter_row() -> serde_json::Value {
    serde_json::json!({
        "Node": {
            "ID": "", "Node": "fcs00", "Address": "127.0.0.13", "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.13"}, "Meta": {"env": "prod", "some key": ""},
            "CreateIndex": 5, "ModifyIndex": 7
        },
        "Service": {
            "Kind": "", "ID": "fcs", "Service": "fcs", "Tags": ["v1", "primary"],
            "Address": "", "Meta": {"version": "1.2"}, "Port": 8181,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
            "CreateIndex": 6, "ModifyIndex": 6
        },
        "Checks": [
            {"Node": "fcs00", "CheckID": "serfHealth", "Name": "Serf Health Status",
             "Status": "passing", "Notes": "", "Output": "", "ServiceID": "",
             "ServiceName": "", "ServiceTags": [], "Type": "", "CreateIndex": 5,
             "ModifyIndex": 5},
            {"Node": "fcs00", "CheckID": "service:fcs", "Name": "fcs tcp",
             "Status": "critical", "Notes": "", "Output": "dial tcp: refused",
             "ServiceID": "fcs", "ServiceName": "fcs", "ServiceTags": ["v1", "primary"],
             "Type": "tcp", "CreateIndex": 6, "ModifyIndex": 9}
        ]
    })
}

/// `?filter=` over arbitrary UTF-8: parse, then evaluate on a fixed row
/// (errors are fine, panics and hangs are not).
pub fn filter_parse(data: &[u8]) {
    let Ok(expr) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Filter::parse(expr) {
        let _ = f.matches(&filter_row());
    }
}

/// Service definitions and catalog bodies over arbitrary JSON: the body
/// decoders of `PUT /v1/agent/service/register`, `.../check/register`,
/// `/v1/catalog/register` and `/v1/catalog/deregister`, and the JSON agent
/// config file parser. A service that decodes is also converted to its
/// catalog rows, checks and sidecar, as the agent does next.
pub fn definitions_decode(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentFileConfig::parse_json(text);
    }
    let Ok(v) = definitions::parse_body(data) else {
        return;
    };
    if let Ok(s) = definitions::decode_service(&v) {
        let _ = s.to_node_service();
        for c in s.checks() {
            if c.kind().is_ok() {
                let _ = c.to_health_check("fcs00");
            }
        }
        if let Some(sidecar) = s.sidecar() {
            let _ = sidecar.to_node_service();
        }
    }
    if let Ok(c) = definitions::decode_check(&v) {
        if c.kind().is_ok() {
            let _ = c.to_health_check("fcs00");
        }
    }
    let _ = definitions::decode_catalog_register(&v);
    let _ = definitions::decode_catalog_deregister(&v);
}
