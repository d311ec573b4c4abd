//! The fuzz targets' corpora, replayed on stable Rust as part of `cargo
//! test`: every file under `fuzz/corpus/<target>/` goes through the same
//! function the fuzzer calls (`fuzz/src/lib.rs`, included here), so a
//! regression on an input the fuzzer once found interesting fails CI
//! without nightly or libFuzzer.
//!
//! `write_seeds` (ignored) regenerates the committed `seed-*` inputs:
//! `cargo test -p mesh-benches --test fuzz_corpus -- --ignored`.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_targets;

use mesh_benches::{kv_set, kv_state, populate_catalog, value};
use mesh_core::codec::encode_frame;
use mesh_core::record::encode_record;
use mesh_core::state::SNAPSHOT_MAGIC;
use mesh_core::wire::Request;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_passes_its_target() {
    let mut replayed = 0;
    for (target, run) in fuzz_targets::TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("readable directory entry").path())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "{target} has no corpus in {}",
            dir.display()
        );
        for file in files {
            let bytes = fs::read(&file).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target} panicked on {}", file.display());
            replayed += 1;
        }
    }
    println!("replayed {replayed} corpus files");
}

/// Writes `fuzz/corpus/<target>/seed-<name>`.
fn seed(target: &str, name: &str, bytes: &[u8]) {
    accepted(target, name, bytes);
    let dir = corpus_dir(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

/// Each seed must reach its decoder's success path (or, for the damaged
/// ones, the error it was damaged to show), or it teaches the fuzzer
/// nothing.
fn accepted(target: &str, name: &str, bytes: &[u8]) {
    use mesh_core::{definitions, filter::Filter, record, state::StateMachine, wire};
    let ok = match (target, name) {
        ("frame_decode", "bad-checksum") => mesh_core::codec::decode_body(&bytes[5..]).is_err(),
        ("frame_decode", _) => mesh_core::codec::decode_body(&bytes[5..15]).is_ok(),
        ("wire_decode", _) => wire::decode::<Request<serde_json::Value>>(bytes).is_ok(),
        ("snapshot_restore", _) => StateMachine::restore(&bytes[1..]).is_ok(),
        ("record_recovery", "corrupt-middle") => record::scan(bytes).is_err(),
        ("record_recovery", "torn-tail") => {
            record::scan(bytes).is_ok_and(|s| s.torn_tail.is_some())
        }
        ("record_recovery", _) => record::scan(bytes).is_ok_and(|s| s.records.len() == 2),
        ("filter_parse", _) => Filter::parse(std::str::from_utf8(bytes).unwrap()).is_ok(),
        ("definitions_decode", "service") => {
            definitions::decode_service(&definitions::parse_body(bytes).unwrap()).is_ok()
        }
        ("definitions_decode", "check") => {
            definitions::decode_check(&definitions::parse_body(bytes).unwrap()).is_ok()
        }
        ("definitions_decode", "catalog-register") => {
            definitions::decode_catalog_register(&definitions::parse_body(bytes).unwrap()).is_ok()
        }
        ("definitions_decode", _) => {
            definitions::AgentFileConfig::parse_json(std::str::from_utf8(bytes).unwrap()).is_ok()
        }
        _ => unreachable!("no such target {target}"),
    };
    assert!(ok, "seed {target}/{name} does not do what it is for");
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run by hand"]
fn write_seeds() {
    // frame_decode: first byte picks the chunk size.
    let mut two = vec![7u8];
    encode_frame(b"hello", &mut two);
    encode_frame(b"", &mut two);
    seed("frame_decode", "two-frames", &two);
    let mut bad = vec![0u8];
    encode_frame(b"payload", &mut bad);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    seed("frame_decode", "bad-checksum", &bad);

    // wire_decode: frame payloads (JSON).
    let write: Request<serde_json::Value> =
        Request::Write(kv_set("app/config".into(), value(16, 1)));
    seed("wire_decode", "write", &serde_json::to_vec(&write).unwrap());
    let status: Request<serde_json::Value> = Request::Status;
    seed(
        "wire_decode",
        "status",
        &serde_json::to_vec(&status).unwrap(),
    );
    let raft: Request<serde_json::Value> =
        Request::Raft(serde_json::json!({"Vote": {"term": 3, "granted": true}}));
    seed("wire_decode", "raft", &serde_json::to_vec(&raft).unwrap());

    // snapshot_restore: first byte 0 = bytes as they are.
    let mut sm = kv_state(5, 8);
    populate_catalog(&mut sm, 2, 2);
    seed(
        "snapshot_restore",
        "v2-kv-catalog",
        &[&[0], &sm.snapshot()[..]].concat(),
    );
    let kv_only = kv_state(3, 4);
    seed(
        "snapshot_restore",
        "v2-kv",
        &[&[0], &kv_only.snapshot()[..]].concat(),
    );
    let mut v1 = vec![0u8];
    v1.extend_from_slice(SNAPSHOT_MAGIC);
    v1.push(1);
    serde_json::to_writer(
        &mut v1,
        &serde_json::json!({"last_applied": kv_only.last_applied(), "kv": kv_only.kv()}),
    )
    .unwrap();
    seed("snapshot_restore", "v1-kv", &v1);

    // record_recovery: two records, then the same with a torn tail.
    let mut file = Vec::new();
    encode_record(1, b"{\"entry\":1}", &mut file);
    encode_record(2, b"vote", &mut file);
    seed("record_recovery", "two-records", &file);
    let mut torn = file.clone();
    encode_record(1, b"{\"entry\":2}", &mut torn);
    torn.truncate(torn.len() - 3);
    seed("record_recovery", "torn-tail", &torn);
    let mut corrupt = file.clone();
    corrupt[12] ^= 0x40;
    seed("record_recovery", "corrupt-middle", &corrupt);

    // filter_parse: expressions from Consul's filtering docs and ours.
    for (name, expr) in [
        (
            "tags-and-status",
            "Service.Tags contains v1 and Checks.Status == passing",
        ),
        (
            "meta-not",
            "not (Node.Meta.env == prod) or Node.Meta[\"some key\"] is empty",
        ),
        (
            "matches",
            "Node.Node matches \"^fcs[0-9]+$\" and Service.Port != 8080",
        ),
        ("in-pointer", "\"v1\" in \"/Service/Tags\""),
        (
            "list-index",
            "`critical` not in Checks.1.Status and Service.Meta is not empty",
        ),
    ] {
        seed("filter_parse", name, expr.as_bytes());
    }

    // definitions_decode: an agent service definition, a check, a catalog
    // register body and an agent config file.
    let service = serde_json::json!({
        "Name": "fcs", "ID": "fcs", "Port": 8181, "Tags": ["v1"],
        "Meta": {"version": "1.2"},
        "Check": {"TCP": "127.0.0.1:8181", "Interval": "10s", "Timeout": "1s"},
        "Checks": [{"Name": "ttl", "TTL": "30s", "DeregisterCriticalServiceAfter": "90m"}],
        "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
            {"DestinationName": "fcc", "LocalBindPort": 9000}]}}}
    });
    seed(
        "definitions_decode",
        "service",
        service.to_string().as_bytes(),
    );
    let check = serde_json::json!({
        "name": "web", "http": "http://127.0.0.1:8181/health", "interval": "5s",
        "service_id": "fcs"
    });
    seed("definitions_decode", "check", check.to_string().as_bytes());
    let register = serde_json::json!({
        "Node": "ext1", "Address": "10.0.0.9", "NodeMeta": {"env": "prod"},
        "Service": {"Service": "db", "Port": 5432},
        "Checks": [{"CheckID": "db", "Name": "db", "ServiceID": "db", "Status": "passing"}]
    });
    seed(
        "definitions_decode",
        "catalog-register",
        register.to_string().as_bytes(),
    );
    let config = serde_json::json!({
        "node_name": "fcs00", "datacenter": "dc1", "data_dir": "/var/lib/mesh",
        "retry_join": ["127.0.0.10"], "ports": {"http": 8500},
        "services": [{"name": "fcs", "port": 8181}]
    });
    seed(
        "definitions_decode",
        "agent-config",
        config.to_string().as_bytes(),
    );
}
