//! State machine determinism and snapshot properties (Raft paper §5.4.3,
//! State Machine Safety; §7, log compaction): replicas that apply the same
//! entries agree, whether they applied every entry or restored a snapshot
//! partway, and no byte string handed to `restore` can crash a server.

use mesh_core::connect::intention::Action;
use mesh_core::kv::KvStore;
use mesh_core::state::catalog::{
    CatalogCommand, CheckStatus, HealthCheck, Node, NodeService, NodeSync, Registration,
};
use mesh_core::state::sessions::{Behavior, Session};
use mesh_core::state::{
    Batch, Command, CommandResult, IntentionCommand, KvCommand, SessionCommand, SnapshotError,
    StateMachine, Table, SNAPSHOT_MAGIC, SNAPSHOT_VERSION,
};
use mesh_core::wire::{changed_since, query_index, KvQuery, Query};
use proptest::prelude::*;
use serde::Serialize;

/// A log entry: a command, or an entry with no state change (blank or
/// membership), which the server passes to `skip`.
#[derive(Clone, Debug)]
enum Entry {
    Command(Command),
    Skip,
}

fn command() -> impl Strategy<Value = Command> {
    let batchable = plain_kv_command().prop_map(Command::Kv);
    plain_kv_command()
        .prop_map(Command::Kv)
        .boxed()
        .prop_union(catalog_command().prop_map(Command::Catalog).boxed())
        .or(intention_command().prop_map(Command::Intentions).boxed())
        .or(session_command().prop_map(Command::Session).boxed())
        .or(lock_command().prop_map(Command::Kv).boxed())
        .or(proptest::collection::vec(batchable, 1..5)
            .prop_map(|commands| Command::Batch(Batch::Batch(commands)))
            .boxed())
}

/// KV commands that do not take locks.
fn plain_kv_command() -> impl Strategy<Value = KvCommand> {
    // A non-ASCII letter so snapshots carry multi-byte UTF-8 keys.
    let key = "[ab/é]{0,2}";
    let value = proptest::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        3 => (key, value.clone(), 0u64..3).prop_map(|(key, value, flags)| KvCommand::Set { key, value, flags }),
        3 => (key, value, 0u64..3, 0u64..30).prop_map(|(key, value, flags, index)| KvCommand::Cas { key, value, flags, index }),
        1 => key.prop_map(|key| KvCommand::Delete { key }),
        2 => (key, 0u64..30).prop_map(|(key, index)| KvCommand::DeleteCas { key, index }),
        1 => "[ab/é]{0,1}".prop_map(|prefix| KvCommand::DeleteTree { prefix }),
        2 => proptest::collection::vec(txn_op(), 0..4).prop_map(|ops| KvCommand::Txn { ops }),
    ]
}

/// Sessions over two IDs on the catalog's two nodes, with and without the
/// catalog's checks (so creations fail on a missing node or a critical
/// check, and catalog writes invalidate sessions).
fn session_command() -> impl Strategy<Value = SessionCommand> {
    let id = "x[12]";
    prop_oneof![
        2 => (id, "n[12]", proptest::collection::vec("c[123]", 0..2), any::<bool>(), prop_oneof![Just(0u64), Just(15_000_000_000)])
            .prop_map(|(id, node, node_checks, delete, lock_delay_ns)| SessionCommand::Create(Box::new(Session {
                id,
                node,
                node_checks,
                behavior: if delete { Behavior::Delete } else { Behavior::Release },
                lock_delay_ns,
                ..Session::default()
            }))),
        1 => id.prop_map(|id| SessionCommand::Destroy { id }),
    ]
}

/// Acquires and releases of the KV keys by the two sessions (or one that
/// never exists).
fn lock_command() -> impl Strategy<Value = KvCommand> {
    let session = "x[123]";
    prop_oneof![
        (
            "[ab/é]{0,2}",
            session,
            proptest::collection::vec(any::<u8>(), 0..3)
        )
            .prop_map(|(key, session, value)| KvCommand::Lock {
                checked_at: key.len() as u64 * 7,
                key,
                value,
                flags: 0,
                session,
            }),
        ("[ab/é]{0,2}", session).prop_map(|(key, session)| KvCommand::Unlock {
            key,
            value: Vec::new(),
            flags: 1,
            session
        }),
    ]
}

/// Intention writes over a few names and the wildcard (some invalid, so
/// failed writes are in the mix too).
fn intention_command() -> impl Strategy<Value = IntentionCommand> {
    let name = prop_oneof![Just("fcc"), Just("fcs"), Just("*"), Just("f*")];
    prop_oneof![
        (
            name.clone(),
            name.clone(),
            any::<bool>(),
            0u64..2_000_000_000
        )
            .prop_map(|(s, d, allow, now_unix)| IntentionCommand::Upsert {
                source: s.into(),
                destination: d.into(),
                action: if allow { Action::Allow } else { Action::Deny },
                description: String::new(),
                meta: Default::default(),
                now_unix,
            }),
        (name.clone(), name).prop_map(|(s, d)| IntentionCommand::Delete {
            source: s.into(),
            destination: d.into(),
        }),
    ]
}

/// Transaction operations over the same small key space, so they meet the
/// other commands' keys and each other (and fail sometimes).
fn txn_op() -> impl Strategy<Value = mesh_core::kv::txn::TxnOp> {
    let verb = prop_oneof![
        Just("set"),
        Just("cas"),
        Just("get"),
        Just("get-tree"),
        Just("check-index"),
        Just("check-not-exists"),
        Just("delete"),
        Just("delete-tree"),
        Just("delete-cas"),
        Just("lock"),
        Just("unlock"),
        Just("check-session"),
    ];
    (
        verb,
        "[ab/é]{0,2}",
        proptest::collection::vec(any::<u8>(), 0..3),
        0u64..3,
        0u64..30,
        "(x[123])?",
    )
        .prop_map(
            |(verb, key, value, flags, index, session)| mesh_core::kv::txn::TxnOp {
                verb: verb.into(),
                key,
                value,
                flags,
                index,
                session,
                checked_at: 0,
            },
        )
}

/// Catalog commands over two nodes, two instances and three checks, so
/// registrations, failed registrations (a check for a missing instance),
/// syncs and removals meet each other.
fn catalog_command() -> impl Strategy<Value = CatalogCommand> {
    let node_name = "n[12]";
    let status = prop_oneof![
        Just(CheckStatus::Passing),
        Just(CheckStatus::Warning),
        Just(CheckStatus::Critical)
    ];
    let instance = ("s[12]", 0u16..3).prop_map(|(id, port)| NodeService {
        service: format!("svc-{id}"),
        id,
        port,
        ..NodeService::default()
    });
    let check =
        ("c[123]", "(s[12])?", status.clone()).prop_map(|(check_id, service_id, status)| {
            HealthCheck {
                name: check_id.clone(),
                check_id,
                service_id,
                status,
                ..HealthCheck::default()
            }
        });
    let node = (node_name, r"10\.0\.0\.[12]").prop_map(|(node, address)| Node {
        node,
        address,
        ..Node::default()
    });
    prop_oneof![
        3 => (node.clone(), proptest::option::of(instance.clone()), proptest::collection::vec(check.clone(), 0..2), any::<bool>())
            .prop_map(|(node, service, checks, skip_node_update)| CatalogCommand::Register(Box::new(Registration { node, skip_node_update, service, checks }))),
        1 => (node_name, proptest::option::of("s[12]"), proptest::option::of("c[123]"))
            .prop_map(|(node, service_id, check_id)| CatalogCommand::Deregister { node, service_id, check_id }),
        2 => (node, proptest::collection::vec(instance, 0..3), proptest::collection::vec(check, 0..3))
            .prop_map(|(node, services, checks)| CatalogCommand::SyncNode(Box::new(NodeSync { node, services, checks }))),
        1 => (node_name, status, "[a-z]{0,2}").prop_map(|(node, status, output)| CatalogCommand::NodeHealth { node, status, output }),
    ]
}

/// Entries with the Raft index each lands at (gaps stand for entries of
/// other kinds that were compacted away or never reach the state machine).
fn log() -> impl Strategy<Value = Vec<(u64, Entry)>> {
    let entry = prop_oneof![6 => command().prop_map(Entry::Command), 1 => Just(Entry::Skip)];
    proptest::collection::vec((entry, 1u64..3), 0..60).prop_map(|entries| {
        let mut index = 0;
        entries
            .into_iter()
            .map(|(e, gap)| {
                index += gap;
                (index, e)
            })
            .collect()
    })
}

/// The version 1 snapshot body (JSON), as builds before the binary format
/// wrote it.
#[derive(Serialize)]
struct SnapshotV1<'a> {
    last_applied: u64,
    kv: &'a KvStore,
}

fn snapshot_v1(sm: &StateMachine) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.push(1);
    let body = SnapshotV1 {
        last_applied: sm.last_applied(),
        kv: sm.kv(),
    };
    serde_json::to_writer(&mut out, &body).unwrap();
    out
}

fn run(sm: &mut StateMachine, entries: &[(u64, Entry)]) -> Vec<Option<CommandResult>> {
    entries
        .iter()
        .map(|(index, e)| {
            let result = match e {
                Entry::Command(cmd) => Some(sm.apply(*index, cmd)),
                Entry::Skip => {
                    sm.skip(*index);
                    None
                }
            };
            sm.check_invariants();
            blocking_prefix_reads_agree(sm, *index);
            result
        })
        .collect()
}

/// What a blocking prefix read asks after each write (`changed_since`,
/// from the recent changes) agrees with the prefix's index, through
/// sessions, locks and their releases too.
fn blocking_prefix_reads_agree(sm: &StateMachine, index: u64) {
    let mut prefixes: Vec<String> = vec![String::new()];
    for e in sm.kv().iter() {
        for cut in [1, 2] {
            if let Some(p) = e.key.get(..cut) {
                prefixes.push(p.to_string());
            }
        }
    }
    for prefix in prefixes {
        let query = Query::Kv(KvQuery::List {
            prefix: prefix.clone(),
        });
        for since in [1, index / 2, index.saturating_sub(1), index] {
            assert_eq!(
                changed_since(sm, &query, since),
                query_index(sm, &query) > since,
                "prefix {prefix:?} since {since} at {index}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Two replicas applying the same log agree on every answer, the state
    /// and the digest; and the state machine's KV table is exactly a
    /// `KvStore` fed the same mutations.
    #[test]
    fn same_log_same_state(entries in log()) {
        let (mut a, mut b) = (StateMachine::new(), StateMachine::new());
        prop_assert_eq!(run(&mut a, &entries), run(&mut b, &entries));
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.last_applied(), entries.last().map_or(0, |(i, _)| *i));

        // The plain store knows no sessions: compare only logs without them.
        let uses_sessions = entries.iter().any(|(_, e)| matches!(e, Entry::Command(Command::Session(_))));
        let mut kv = KvStore::default();
        // A batch is its commands applied one after another at its index;
        // a command no batch may hold is refused and changes nothing.
        let flat: Vec<(u64, Entry)> = entries
            .iter()
            .flat_map(|(index, e)| match e {
                Entry::Command(Command::Batch(b)) => b
                    .commands()
                    .iter()
                    .filter(|c| Batch::may_hold(c))
                    .map(|c| (*index, Entry::Command(c.clone())))
                    .collect::<Vec<_>>(),
                other => vec![(*index, other.clone())],
            })
            .collect();
        for (index, e) in flat.iter().filter(|_| !uses_sessions) {
            match e {
                Entry::Command(Command::Kv(KvCommand::Set { key, value, flags })) => kv.set(*index, key, value.clone(), *flags),
                Entry::Command(Command::Kv(KvCommand::Cas { key, value, flags, index: n })) => { kv.cas(*index, key, value.clone(), *flags, *n); }
                Entry::Command(Command::Kv(KvCommand::Delete { key })) => { kv.delete(*index, key); }
                Entry::Command(Command::Kv(KvCommand::DeleteCas { key, index: n })) => { kv.delete_cas(*index, key, *n); }
                Entry::Command(Command::Kv(KvCommand::DeleteTree { prefix })) => { kv.delete_tree(*index, prefix); }
                Entry::Command(Command::Kv(KvCommand::Txn { ops })) => { kv.txn(*index, ops); }
                Entry::Command(Command::Kv(KvCommand::Lock { key, value, flags, session, .. })) => {
                    let _ = kv.lock(*index, key, value.clone(), *flags, session, false);
                }
                Entry::Command(Command::Kv(KvCommand::Unlock { key, value, flags, session })) => {
                    let _ = kv.unlock(*index, key, value.clone(), *flags, session);
                }
                Entry::Command(Command::Catalog(_) | Command::Intentions(_) | Command::Ca(_) | Command::Session(_) | Command::Batch(_)) | Entry::Skip => {}
            }
        }
        if !uses_sessions {
            prop_assert_eq!(a.kv(), &kv);
            prop_assert_eq!(a.table_index(Table::Kv), kv.table_index());
        }
    }

    /// A replica that restores a snapshot taken after any prefix of the log
    /// and applies the rest ends equal to one that applied everything, with
    /// the same digest at every step.
    #[test]
    fn snapshot_then_rest_equals_full_replay(entries in log(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(entries.len() + 1);
        let mut full = StateMachine::new();
        run(&mut full, &entries[..cut]);

        let bytes = full.snapshot();
        let mut restored = StateMachine::restore(&bytes).expect("own snapshot restores");
        restored.check_invariants();
        prop_assert_eq!(&restored, &full);
        prop_assert_eq!(restored.digest(), full.digest());
        prop_assert_eq!(restored.snapshot(), bytes, "snapshot bytes are canonical");

        for (index, e) in &entries[cut..] {
            let (x, y) = match e {
                Entry::Command(cmd) => (Some(full.apply(*index, cmd)), Some(restored.apply(*index, cmd))),
                Entry::Skip => {
                    full.skip(*index);
                    restored.skip(*index);
                    (None, None)
                }
            };
            prop_assert_eq!(x, y);
            prop_assert_eq!(restored.digest(), full.digest());
        }
        prop_assert_eq!(&restored, &full);
    }

    /// A server upgraded from the JSON build restores the snapshot that
    /// build left to the same data (and digest) as today's binary one. It
    /// cannot know the deletes that build saw, so its prefix reads answer
    /// at least what they would have (never less: a blocking read must not
    /// sleep through a change).
    #[test]
    fn v1_and_current_snapshots_restore_to_the_same_data(entries in log()) {
        // Version 1 predates the catalog: it holds KV states only.
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|(_, e)| !matches!(e, Entry::Command(Command::Catalog(_) | Command::Intentions(_) | Command::Session(_))))
            .collect();
        let mut sm = StateMachine::new();
        run(&mut sm, &entries);
        let from_v1 = StateMachine::restore(&snapshot_v1(&sm)).expect("v1 restores");
        from_v1.check_invariants();
        prop_assert!(from_v1.kv().iter().eq(sm.kv().iter()));
        prop_assert_eq!(from_v1.last_applied(), sm.last_applied());
        prop_assert_eq!(from_v1.digest(), sm.digest());
        for e in sm.kv().iter() {
            for cut in 0..=e.key.len() {
                if let Some(prefix) = e.key.get(..cut) {
                    prop_assert!(from_v1.kv().prefix_index(prefix) >= sm.kv().prefix_index(prefix));
                }
            }
        }
        let again = StateMachine::restore(&from_v1.snapshot()).expect("restores");
        prop_assert_eq!(&again, &from_v1, "and from then on round-trips exactly");
    }

    /// Different states at the same applied index (the case the simulator's
    /// checker exists to catch) get different digests.
    #[test]
    fn diverging_replicas_are_told_apart(entries in log(), value in any::<u8>()) {
        let mut a = StateMachine::new();
        run(&mut a, &entries);
        let mut b = a.clone();
        let next = a.last_applied() + 1;
        a.apply(next, &Command::Kv(KvCommand::Set { key: "x".into(), value: vec![value], flags: 0 }));
        b.apply(next, &Command::Kv(KvCommand::Set { key: "x".into(), value: vec![value ^ 1], flags: 0 }));
        prop_assert_ne!(a.digest(), b.digest());
    }

    /// No input makes `restore` panic; whatever it accepts is consistent.
    #[test]
    fn restore_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let framed = |version: u8| {
            let mut out = SNAPSHOT_MAGIC.to_vec();
            out.push(version);
            out.extend_from_slice(&bytes);
            out
        };
        for input in [bytes.clone(), framed(1), framed(SNAPSHOT_VERSION)] {
            if let Ok(sm) = StateMachine::restore(&input) {
                sm.check_invariants();
            }
        }
    }

    /// Damage to a real snapshot (a flipped bit, a truncation, a splice) is
    /// either rejected or yields a consistent state; never a panic.
    #[test]
    fn restore_survives_damaged_snapshots(
        entries in log(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        splice in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut sm = StateMachine::new();
        run(&mut sm, &entries);
        let good = sm.snapshot();
        let at = at.index(good.len());

        let mut flipped = good.clone();
        flipped[at] ^= 1 << bit;
        let truncated = good[..at].to_vec();
        let mut spliced = good[..at].to_vec();
        spliced.extend_from_slice(&splice);
        spliced.extend_from_slice(&good[at..]);

        for damaged in [flipped, truncated, spliced] {
            match StateMachine::restore(&damaged) {
                Ok(back) => back.check_invariants(),
                Err(SnapshotError::BadMagic | SnapshotError::UnsupportedVersion(_) | SnapshotError::Malformed(_)) => {}
            }
        }
    }
}
