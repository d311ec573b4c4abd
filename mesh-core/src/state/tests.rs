use super::*;

pub(super) fn set(key: &str, value: &[u8]) -> Command {
    Command::Kv(KvCommand::Set {
        key: key.into(),
        value: value.to_vec(),
        flags: 0,
    })
}

/// A small state touching every command, for the fixed-value tests.
pub(super) fn sample() -> StateMachine {
    let mut sm = StateMachine::new();
    sm.skip(1);
    sm.apply(2, &set("a/x", b"1"));
    sm.apply(3, &set("a/y", b""));
    sm.apply(
        4,
        &Command::Kv(KvCommand::Cas {
            key: "b".into(),
            value: vec![0, 255],
            flags: 42,
            index: 0,
        }),
    );
    sm.apply(
        5,
        &Command::Kv(KvCommand::DeleteCas {
            key: "a/x".into(),
            index: 2,
        }),
    );
    sm.apply(6, &KvCommand::Delete { key: "nope".into() }.into());
    sm.apply(
        7,
        &KvCommand::DeleteTree {
            prefix: "zz".into(),
        }
        .into(),
    );
    sm.check_invariants();
    sm
}

/// One command of each kind, with awkward keys and values.
fn every_command() -> Vec<Command> {
    vec![
        Command::Kv(KvCommand::Set {
            key: "k\u{0}\"\\é".into(),
            value: vec![0xff; 1000],
            flags: u64::MAX,
        }),
        Command::Kv(KvCommand::Cas {
            key: String::new(),
            value: Vec::new(),
            flags: 0,
            index: u64::MAX,
        }),
        Command::Kv(KvCommand::Delete {
            key: "\n".repeat(50),
        }),
        Command::Kv(KvCommand::DeleteCas {
            key: "a".into(),
            index: u64::MAX,
        }),
        Command::Kv(KvCommand::DeleteTree {
            prefix: "p/".into(),
        }),
        Command::Kv(KvCommand::Txn {
            ops: vec![
                crate::kv::txn::TxnOp {
                    verb: "set".into(),
                    key: "k\u{0}\"\\é".into(),
                    value: vec![0xff; 100],
                    flags: u64::MAX,
                    index: u64::MAX,
                    session: "s\u{0}é".into(),
                    checked_at: u64::MAX,
                };
                3
            ],
        }),
        Command::Kv(KvCommand::Lock {
            key: "l\u{0}\"".into(),
            value: vec![0xfe; 10],
            flags: 1,
            session: "s\"\u{1}".into(),
            checked_at: u64::MAX,
        }),
        Command::Kv(KvCommand::Unlock {
            key: "é".into(),
            value: Vec::new(),
            flags: u64::MAX,
            session: "\\".into(),
        }),
    ]
}

#[test]
fn encoded_len_bound_is_an_upper_bound() {
    for cmd in every_command() {
        let len = serde_json::to_vec(&cmd).unwrap().len();
        assert!(len <= cmd.encoded_len_bound(), "{cmd:?}: {len}");
    }
}

#[test]
fn apply_returns_consul_answers() {
    let mut sm = StateMachine::new();
    assert_eq!(sm.apply(1, &set("k", b"v")), CommandResult::Bool(true));
    let cas = |index| {
        Command::Kv(KvCommand::Cas {
            key: "k".into(),
            value: b"w".to_vec(),
            flags: 0,
            index,
        })
    };
    assert_eq!(sm.apply(2, &cas(0)), CommandResult::Bool(false));
    assert_eq!(sm.apply(3, &cas(1)), CommandResult::Bool(true));
    let del_cas = |index| {
        Command::Kv(KvCommand::DeleteCas {
            key: "k".into(),
            index,
        })
    };
    assert_eq!(sm.apply(4, &del_cas(1)), CommandResult::Bool(false));
    assert_eq!(sm.apply(5, &del_cas(3)), CommandResult::Bool(true));
    assert_eq!(
        sm.apply(6, &del_cas(3)),
        CommandResult::Bool(true),
        "absent key"
    );
    assert_eq!(sm.last_applied(), 6);
    assert_eq!(sm.kv().table_index(), 5);
    assert_eq!(sm.table_index(Table::Kv), 5);
    sm.check_invariants();
}

#[test]
fn skip_moves_only_last_applied() {
    let mut sm = sample();
    let kv_before = sm.kv().clone();
    sm.skip(10);
    assert_eq!(sm.last_applied(), 10);
    assert_eq!(sm.kv(), &kv_before);
    assert_eq!(sm.table_index(Table::Kv), 5, "a skip is no KV write");
    sm.check_invariants();
}

#[test]
#[should_panic(expected = "applied once, in order")]
fn applying_an_old_index_is_a_bug() {
    let mut sm = sample();
    sm.apply(7, &set("k", b"v"));
}

#[test]
fn table_ids_are_stable_and_unique() {
    assert_eq!(
        Table::Kv.id(),
        1,
        "ids are in snapshots on disk: never renumber"
    );
    for (i, t) in Table::ALL.into_iter().enumerate() {
        assert_eq!(Table::from_id(t.id()), Some(t));
        assert!(Table::ALL[..i].iter().all(|u| u.id() < t.id()), "id order");
    }
    assert_eq!(Table::from_id(0), None);
    assert_eq!(
        Command::from(KvCommand::Delete { key: "k".into() }).table(),
        Table::Kv
    );
}

/// Pins the digest so a change to the encoding (or to FNV constants) is a
/// deliberate, visible decision: replicas running different builds during
/// a rolling upgrade compare these values. The expected values were
/// computed independently (a 20-line Python FNV-1a over the documented
/// encoding), not copied from this implementation; they are unchanged
/// since the state machine had a single table.
#[test]
fn digest_is_pinned() {
    assert_eq!(StateMachine::new().digest(), 0x7be2_f90c_7d7a_8572);
    assert_eq!(sample().digest(), 0xcbee_b2df_6cc2_f6a7);
}

#[test]
fn digest_tells_apart_states_that_differ_in_one_field() {
    let with = |flags, value: &[u8], key: &str| {
        let mut sm = sample();
        sm.apply(
            8,
            &Command::Kv(KvCommand::Set {
                key: key.into(),
                value: value.to_vec(),
                flags,
            }),
        );
        sm.digest()
    };
    let base = with(0, b"v", "k");
    assert_ne!(base, with(1, b"v", "k"), "flags");
    assert_ne!(base, with(0, b"w", "k"), "value");
    assert_ne!(base, with(0, b"v", "j"), "key");
    // Same key/value bytes, split differently.
    assert_ne!(with(0, b"bc", "a"), with(0, b"c", "ab"), "length prefixes");
    let mut skipped = sample();
    skipped.skip(8);
    assert_ne!(sample().digest(), skipped.digest(), "last_applied");
}

/// The JSON the Raft log has always stored for each command, from before
/// commands were grouped by table: these must keep decoding to the same
/// commands, or an upgraded server could not read its own log.
#[test]
fn log_json_of_commands_is_unchanged() {
    let legacy = [
        (
            r#"{"KvSet":{"key":"k","value":"YmFy","flags":7}}"#,
            KvCommand::Set {
                key: "k".into(),
                value: b"bar".to_vec(),
                flags: 7,
            },
        ),
        (
            r#"{"KvCas":{"key":"k","value":"","flags":0,"index":3}}"#,
            KvCommand::Cas {
                key: "k".into(),
                value: vec![],
                flags: 0,
                index: 3,
            },
        ),
        (
            r#"{"KvDelete":{"key":"k"}}"#,
            KvCommand::Delete { key: "k".into() },
        ),
        (
            r#"{"KvDeleteCas":{"key":"k","index":4}}"#,
            KvCommand::DeleteCas {
                key: "k".into(),
                index: 4,
            },
        ),
        (
            r#"{"KvDeleteTree":{"prefix":"a/"}}"#,
            KvCommand::DeleteTree {
                prefix: "a/".into(),
            },
        ),
    ];
    for (json, kv) in legacy {
        let cmd = Command::Kv(kv);
        assert_eq!(serde_json::to_string(&cmd).unwrap(), json);
        assert_eq!(serde_json::from_str::<Command>(json).unwrap(), cmd);
    }
}

/// `Command` dispatches on `KvCommand::JSON_NAMES`; a variant missing from
/// the list would serialize but never decode.
#[test]
fn every_command_round_trips_through_json() {
    let mut names = Vec::new();
    for cmd in every_command() {
        let json = serde_json::to_value(&cmd).unwrap();
        let name = json.as_object().unwrap().keys().next().unwrap().clone();
        assert!(KvCommand::JSON_NAMES.contains(&name.as_str()), "{name}");
        assert_eq!(cmd.name(), name, "Command::name matches the log name");
        names.push(name);
        let text = serde_json::to_string(&cmd).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), cmd);
    }
    assert_eq!(names, KvCommand::JSON_NAMES);
}

#[test]
fn bad_command_json_says_what_is_wrong() {
    let err = |json: &str| {
        serde_json::from_str::<Command>(json)
            .unwrap_err()
            .to_string()
    };
    let e = err(r#"{"EventFire":{"name":"n"}}"#);
    assert!(e.contains("unknown command \"EventFire\""), "{e}");
    assert!(e.contains("newer release"), "{e}");
    let e = err(r#"{"KvSet":{"key":"k","value":"YmFy"}}"#);
    assert!(e.contains("missing field `flags`"), "{e}");
    let e = err(r#"{"KvSet":{"key":"k","value":"*","flags":0}}"#);
    assert!(e.contains("Invalid"), "bad base64: {e}");
    for not_one_key in [r#""KvSet""#, "{}", r#"{"KvSet":{},"KvDelete":{}}"#, "[]"] {
        let e = err(not_one_key);
        assert!(e.contains("an object with one key"), "{not_one_key}: {e}");
    }
}

/// A batch applies its commands in order at one index, each with its own
/// result: the second CAS of a key sees the first; commands that may not
/// be batched are refused one by one, changing nothing.
#[test]
fn a_batch_applies_in_order_at_one_index_with_a_result_each() {
    use crate::state::kv::KvCommand;
    let mut sm = StateMachine::new();
    let set = |k: &str| {
        Command::Kv(KvCommand::Set {
            key: k.into(),
            value: b"v".to_vec(),
            flags: 0,
        })
    };
    let cas0 = |k: &str| {
        Command::Kv(KvCommand::Cas {
            key: k.into(),
            value: b"w".to_vec(),
            flags: 0,
            index: 0,
        })
    };
    let batch = Command::Batch(Batch::Batch(vec![
        set("a"),
        cas0("b"),
        cas0("b"),
        Command::Session(crate::state::sessions::SessionCommand::Destroy { id: "s".into() }),
    ]));
    let result = sm.apply(7, &batch);
    assert_eq!(
        result,
        CommandResult::Batch(vec![
            CommandResult::Bool(true),
            CommandResult::Bool(true),
            CommandResult::Bool(false),
            CommandResult::Failed("SessionDestroy cannot be applied in a batch".into()),
        ])
    );
    assert_eq!(sm.kv().get("a").unwrap().modify_index, 7);
    assert_eq!(sm.kv().get("b").unwrap().value, b"w");
    assert_eq!(sm.table_index(Table::Kv), 7);
    assert_eq!(sm.table_index(Table::Sessions), 0);
    sm.check_invariants();
    // The log encoding round-trips, and a single command after the batch
    // takes the next index.
    let json = serde_json::to_string(&batch).unwrap();
    assert!(json.starts_with(r#"{"Batch":[{"KvSet""#), "{json}");
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), batch);
    assert_eq!(sm.apply(8, &set("c")), CommandResult::Bool(true));
    assert!(batch.encoded_len_bound() >= json.len());
}
