//! [`KvStore::prefix_index`]: what a blocking `?recurse` or `?keys` read
//! answers with.

use proptest::prelude::*;

use super::*;
use crate::state::binary::{put_u64, Reader};

#[test]
fn a_prefix_moves_for_its_own_writes_and_deletes_only() {
    let mut kv = KvStore::default();
    kv.set(1, "app/a", b"1".to_vec(), 0);
    kv.set(2, "other/x", b"1".to_vec(), 0);
    assert_eq!(kv.prefix_index("app/"), 1);
    kv.set(3, "other/y", b"1".to_vec(), 0);
    kv.delete(4, "other/x");
    kv.delete_tree(5, "other/");
    assert_eq!(kv.prefix_index("app/"), 1, "writes and deletes elsewhere");
    assert_eq!(kv.prefix_index("other/"), 5, "its tombstones");
    assert_eq!(kv.prefix_index(""), 5, "everything: the table index");
    kv.set(6, "app/b", b"1".to_vec(), 0);
    assert_eq!(kv.prefix_index("app/"), 6);
    kv.delete(7, "app/b");
    assert_eq!(kv.prefix_index("app/"), 7, "a delete under the prefix");
    assert_eq!(kv.prefix_index("app/a"), 1, "app/b is not under app/a");
    assert_eq!(kv.prefix_index("nothing/"), 0);
    kv.check_invariants();
}

/// The recent changes reach back only so far: older indexes are answered
/// by walking the prefix, and a restored store (no recent changes) too.
#[test]
fn blocking_prefix_reads_agree_with_the_index_beyond_the_recent_changes() {
    let mut kv = KvStore::default();
    kv.set(1, "app/a", b"1".to_vec(), 0);
    for i in 0..MAX_RECENT as u64 + 10 {
        kv.set(2 + i, &format!("other/{}", i % 7), Vec::new(), 0);
    }
    let last = kv.table_index();
    assert!(!kv.prefix_changed_since("app/", 1));
    assert!(kv.prefix_changed_since("app/", 0));
    assert!(kv.prefix_changed_since("other/", last - 1));
    assert!(!kv.prefix_changed_since("other/", last));
    kv.set(last + 1, "app/b", Vec::new(), 0);
    assert!(kv.prefix_changed_since("app/", last));
    let mut bytes = Vec::new();
    kv.encode(&mut bytes);
    let restored = KvStore::decode(&mut Reader::new(&bytes, 0)).unwrap();
    for since in [0, 1, last, last + 1] {
        assert_eq!(
            restored.prefix_changed_since("app/", since),
            kv.prefix_changed_since("app/", since),
            "since {since}"
        );
    }
}

#[test]
fn old_tombstones_fold_into_the_floor() {
    let mut kv = KvStore::default();
    kv.set(1, "app/a", b"1".to_vec(), 0);
    let n = MAX_TOMBSTONES as u64 + 2;
    for i in 0..n {
        kv.set(10 + 2 * i, &format!("tmp/{i:05}"), Vec::new(), 0);
        kv.delete(11 + 2 * i, &format!("tmp/{i:05}"));
    }
    kv.check_invariants();
    assert_eq!(kv.tombstones.len(), MAX_TOMBSTONES);
    // The two oldest deletes (at 11 and 13) were dropped into the floor.
    assert_eq!(kv.tombstone_floor, 13);
    assert_eq!(kv.prefix_index("app/"), 13, "raised once, by the floor");
    assert_eq!(kv.prefix_index("tmp/"), 11 + 2 * (n - 1));
}

fn encoded(kv: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    kv.encode(&mut out);
    out
}

#[test]
fn tombstones_survive_a_snapshot_and_an_older_one_assumes_deletes() {
    let mut kv = KvStore::default();
    kv.set(1, "app/a", b"1".to_vec(), 0);
    kv.set(2, "app/b", b"1".to_vec(), 0);
    kv.delete(3, "app/b");
    kv.set(4, "other/x", b"1".to_vec(), 0);
    let bytes = encoded(&kv);
    let back = KvStore::decode(&mut Reader::new(&bytes, 0)).unwrap();
    assert_eq!(back, kv);
    assert_eq!(back.prefix_index("app/"), 3);

    // What a build without tombstones wrote: entries only (no lock was
    // held, so no lock list either).
    let mut old = KvStore::default();
    old.set(1, "app/a", b"1".to_vec(), 0);
    old.set(4, "other/x", b"1".to_vec(), 0);
    let mut bytes = encoded(&old);
    let without = bytes.len() - 8 - 8 - 8; // lock count 0, floor 0, no tombstones
    bytes.truncate(without);
    let back = KvStore::decode(&mut Reader::new(&bytes, 0)).unwrap();
    back.validate().unwrap();
    assert_eq!(back.prefix_index("app/"), 4, "a delete may have happened");

    // A lock count of 0 with nothing after it was never written.
    put_u64(&mut bytes, 0);
    let e = KvStore::decode(&mut Reader::new(&bytes, 0)).unwrap_err();
    assert!(e.contains("lock count 0"), "{e}");
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "a/1", "a/2", "a/b/1", "b", "b/1", "ab"]).prop_map(String::from)
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        (key(), 0u8..3).prop_map(|(key, v)| KvCommand::Set {
            key,
            value: vec![v],
            flags: 0
        }),
        (key(), 0u64..12).prop_map(|(key, index)| KvCommand::Cas {
            key,
            value: vec![9],
            flags: 0,
            index
        }),
        key().prop_map(|key| KvCommand::Delete { key }),
        (key(), 0u64..12).prop_map(|(key, index)| KvCommand::DeleteCas { key, index }),
        prop::sample::select(vec!["a", "a/", "b", ""])
            .prop_map(|p| KvCommand::DeleteTree { prefix: p.into() }),
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "set",
                    "delete",
                    "delete-tree",
                    "cas",
                    "check-not-exists"
                ]),
                key(),
                0u64..12
            ),
            1..4
        )
        .prop_map(|ops| KvCommand::Txn {
            ops: ops
                .into_iter()
                .map(|(verb, key, index)| txn::TxnOp {
                    verb: verb.into(),
                    key,
                    value: vec![7],
                    flags: 0,
                    index,
                    session: String::new(),
                    checked_at: 0,
                })
                .collect()
        }),
    ]
}

proptest! {
    /// A change to what a prefix lists moves its index to the change's;
    /// the index never goes back; and it moves only when the list changed
    /// (the tombstone bound is not reached here).
    #[test]
    fn a_prefix_index_moves_exactly_when_its_list_changes(
        commands in prop::collection::vec(command(), 1..40)
    ) {
        let prefixes = ["a", "a/", "a/b/", "b", "c"];
        let mut kv = KvStore::default();
        for (i, cmd) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            let before: Vec<(Vec<KvEntry>, u64)> = prefixes
                .iter()
                .map(|p| (kv.list(p).into_iter().cloned().collect(), kv.prefix_index(p)))
                .collect();
            kv.apply(index, cmd);
            kv.validate().map_err(TestCaseError::fail)?;
            for (p, (list, was)) in prefixes.iter().zip(before) {
                let now = kv.prefix_index(p);
                let changed = kv.list(p).into_iter().cloned().collect::<Vec<_>>() != list;
                prop_assert!(now >= was, "{p:?} went back from {was} to {now}");
                if changed {
                    prop_assert_eq!(now, index, "{:?} changed by {:?}", p, cmd);
                } else {
                    prop_assert_eq!(now, was, "{:?} moved though {:?} changed nothing under it", p, cmd);
                }
                // What blocking reads ask after every write agrees with
                // the index, for every index a client could hold.
                for since in 0..=index {
                    prop_assert_eq!(
                        kv.prefix_changed_since(p, since),
                        now > since,
                        "{:?} since {} after {:?}", p, since, cmd
                    );
                }
            }
        }
    }
}
