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
        ("state_machine_apply", _) => {
            serde_json::from_slice::<Vec<mesh_core::state::Command>>(bytes)
                .is_ok_and(|c| !c.is_empty())
        }
        ("spiffe_parse", "uri") => std::str::from_utf8(&bytes[1..])
            .unwrap()
            .parse::<mesh_core::connect::spiffe::SpiffeId>()
            .is_ok(),
        ("spiffe_parse", _) => {
            use base64::Engine as _;
            let pem = format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64::engine::general_purpose::STANDARD.encode(&bytes[1..])
            );
            mesh_core::connect::ca::cert_info(&pem).is_ok_and(|i| !i.uri_sans.is_empty())
        }
        ("intention_decide", _) => std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .any(|l| l.split(' ').count() == 2),
        ("http_api", _) => {
            let answer = http_answer(bytes);
            let ok = answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.1 400");
            if !ok {
                eprintln!("{name}: {}", String::from_utf8_lossy(&answer));
            }
            ok
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
    state_machine_seeds();
    connect_seeds();
    http_seeds();

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

/// The answer `fuzz_targets::http_api` gets for `input`, asked again (a
/// seed must reach an endpoint, not die in routing).
fn http_answer(input: &[u8]) -> Vec<u8> {
    fuzz_targets::http_api(input);
    let (method, target, body) = fuzz_targets::http_request_parts(input).unwrap();
    fuzz_targets::ask_dev_agent(method, &target, body)
}

/// Log entries as the server decodes them: KV (with a transaction and a
/// batch), the catalog with sessions and locks, intentions.
fn state_machine_seeds() {
    use mesh_core::connect::intention::Action;
    use mesh_core::kv::txn::TxnOp;
    use mesh_core::state::catalog::{CatalogCommand, CheckStatus};
    use mesh_core::state::sessions::{Behavior, Session};
    use mesh_core::state::{Batch, Command, IntentionCommand, KvCommand, SessionCommand};
    let op = |verb: &str, key: &str, index: u64| TxnOp {
        verb: verb.into(),
        key: key.into(),
        value: b"v".to_vec(),
        flags: 0,
        index,
        session: String::new(),
        checked_at: 0,
    };
    let kv = vec![
        kv_set("a/b".into(), value(4, 1)),
        Command::Kv(KvCommand::Cas {
            key: "a/b".into(),
            value: value(3, 2),
            flags: 1,
            index: 1,
        }),
        Command::Kv(KvCommand::Txn {
            ops: vec![
                op("get", "a/b", 0),
                op("cas", "a/c", 0),
                op("delete-tree", "a", 0),
            ],
        }),
        Command::Batch(Batch::Batch(vec![
            kv_set("x".into(), value(2, 3)),
            Command::Kv(KvCommand::DeleteCas {
                key: "x".into(),
                index: 7,
            }),
        ])),
        Command::Kv(KvCommand::DeleteTree {
            prefix: String::new(),
        }),
    ];
    seed(
        "state_machine_apply",
        "kv",
        &serde_json::to_vec(&kv).unwrap(),
    );
    let session = Session {
        id: "s1".into(),
        node: "fcs00".into(),
        node_checks: vec!["serfHealth".into()],
        behavior: Behavior::Release,
        lock_delay_ns: 15_000_000_000,
        ..Session::default()
    };
    let locks = vec![
        mesh_benches::register("fcs00", 0, 0, CheckStatus::Passing),
        Command::Session(SessionCommand::Create(Box::new(session))),
        Command::Kv(KvCommand::Lock {
            key: "leader".into(),
            value: b"me".to_vec(),
            flags: 0,
            session: "s1".into(),
            checked_at: 1,
        }),
        mesh_benches::register("fcs00", 0, 1, CheckStatus::Critical),
        Command::Kv(KvCommand::Unlock {
            key: "leader".into(),
            value: Vec::new(),
            flags: 0,
            session: "s1".into(),
        }),
        Command::Catalog(CatalogCommand::Deregister {
            node: "fcs00".into(),
            service_id: None,
            check_id: None,
        }),
        Command::Session(SessionCommand::Destroy { id: "s1".into() }),
    ];
    seed(
        "state_machine_apply",
        "catalog-sessions-locks",
        &serde_json::to_vec(&locks).unwrap(),
    );
    let upsert = |s: &str, d: &str, action| {
        Command::Intentions(IntentionCommand::Upsert {
            source: s.into(),
            destination: d.into(),
            action,
            description: String::new(),
            meta: Default::default(),
            now_unix: 1_800_000_000,
        })
    };
    let intentions = vec![
        upsert("fcc", "fcs", Action::Allow),
        upsert("*", "fcs", Action::Deny),
        upsert("f*", "fcs", Action::Allow),
        Command::Intentions(IntentionCommand::Delete {
            source: "fcc".into(),
            destination: "fcs".into(),
        }),
    ];
    seed(
        "state_machine_apply",
        "intentions",
        &serde_json::to_vec(&intentions).unwrap(),
    );
}

/// A service's SPIFFE URI, a leaf certificate signed by a fresh root
/// (DER), and intention scripts with questions.
fn connect_seeds() {
    use mesh_core::connect::{ca, spiffe::SpiffeId};
    let id = SpiffeId::service("11111111-2222-3333-4444-555555555555.consul", "dc1", "fcs");
    seed(
        "spiffe_parse",
        "uri",
        &[b"\0".as_slice(), id.to_string().as_bytes()].concat(),
    );
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let root = ca::generate_root(
        "11111111-2222-3333-4444-555555555555.consul",
        1,
        now,
        365 * day,
    )
    .expect("a root");
    let key = ca::generate_leaf_key().expect("a leaf key");
    let leaf = ca::sign_leaf(&root, &id, &key.public_key_der, 2, now, 3 * day).expect("a leaf");
    let der = ca::pem_to_der(&leaf.cert_pem)
        .expect("the leaf's DER")
        .remove(0);
    seed(
        "spiffe_parse",
        "leaf-der",
        &[b"\x01".as_slice(), &der].concat(),
    );
    seed(
        "intention_decide",
        "exact-wildcard-deny",
        b"fcc fcs allow\n* fcs deny\nfcc * deny\n* * allow\nfcc fcs\nweb fcs\nfcc db\nweb db\n-",
    );
    seed(
        "intention_decide",
        "default-allow",
        b"fcc fcs deny\nfcc fcs\nweb fcs\n+",
    );
}

/// Requests to every endpoint family with well-formed bodies.
fn http_seeds() {
    let service = serde_json::json!({
        "Name": "fcs", "ID": "fcs", "Port": 8181, "Tags": ["v1"],
        "Check": {"TTL": "30s"},
        "Connect": {"SidecarService": {}}
    });
    let check = serde_json::json!({"Name": "ttl", "TTL": "15s", "ServiceID": "fcs"});
    let register = serde_json::json!({
        "Node": "ext1", "Address": "10.0.0.9",
        "Service": {"Service": "db", "Port": 5432}
    });
    let txn = serde_json::json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": "aGk="}},
        {"KV": {"Verb": "get", "Key": "t/a"}}
    ]);
    let session = serde_json::json!({"Name": "s", "TTL": "30s", "Behavior": "delete"});
    let intention =
        serde_json::json!({"SourceName": "fcc", "DestinationName": "fcs", "Action": "allow"});
    let authorize = serde_json::json!({"Target": "fcs", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/fcc"});
    for (name, method, target, body) in [
        (
            "kv-put",
            1u8,
            "/v1/kv/app/config?flags=3",
            b"hello".to_vec(),
        ),
        (
            "kv-get-recurse",
            0,
            "/v1/kv/app?recurse&consistent",
            Vec::new(),
        ),
        ("kv-cas-bad", 1, "/v1/kv/app/config?cas=zz", b"x".to_vec()),
        ("kv-delete-tree", 3, "/v1/kv/app?recurse", Vec::new()),
        ("txn", 1, "/v1/txn", txn.to_string().into_bytes()),
        (
            "service-register",
            1,
            "/v1/agent/service/register",
            service.to_string().into_bytes(),
        ),
        (
            "check-register",
            1,
            "/v1/agent/check/register",
            check.to_string().into_bytes(),
        ),
        (
            "check-pass",
            1,
            "/v1/agent/check/pass/service:fcs?note=ok",
            Vec::new(),
        ),
        (
            "catalog-register",
            1,
            "/v1/catalog/register",
            register.to_string().into_bytes(),
        ),
        (
            "catalog-service",
            0,
            "/v1/catalog/service/db?filter=ServicePort%20%3D%3D%205432",
            Vec::new(),
        ),
        (
            "health-service",
            0,
            "/v1/health/service/fcs?passing&stale",
            Vec::new(),
        ),
        (
            "session-create",
            1,
            "/v1/session/create",
            session.to_string().into_bytes(),
        ),
        ("session-list", 0, "/v1/session/list", Vec::new()),
        (
            "intention-put",
            1,
            "/v1/connect/intentions/exact?source=fcc&destination=fcs",
            intention.to_string().into_bytes(),
        ),
        (
            "intention-check",
            0,
            "/v1/connect/intentions/check?source=fcc&destination=fcs",
            Vec::new(),
        ),
        (
            "authorize",
            2,
            "/v1/agent/connect/authorize",
            authorize.to_string().into_bytes(),
        ),
        ("ca-roots", 0, "/v1/connect/ca/roots", Vec::new()),
        ("agent-self", 0, "/v1/agent/self", Vec::new()),
        ("members", 0, "/v1/agent/members", Vec::new()),
        (
            "raft-config",
            0,
            "/v1/operator/raft/configuration",
            Vec::new(),
        ),
        (
            "metrics",
            0,
            "/v1/agent/metrics?format=prometheus",
            Vec::new(),
        ),
        (
            "bad-json",
            1,
            "/v1/agent/service/register",
            b"{\"Name\": ".to_vec(),
        ),
    ] {
        let input = [&[method], target.as_bytes(), b"\n", &body[..]].concat();
        seed("http_api", name, &input);
    }
}
