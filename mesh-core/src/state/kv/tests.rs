use super::*;

fn store_with(keys: &[&str]) -> KvStore {
    let mut kv = KvStore::default();
    for (i, k) in keys.iter().enumerate() {
        kv.set(i as u64 + 1, k, k.as_bytes().to_vec(), 0);
    }
    kv.check_invariants();
    kv
}

#[test]
fn set_creates_then_updates_keeping_create_index() {
    let mut kv = KvStore::default();
    assert_eq!(kv.table_index(), 0);
    kv.set(3, "foo", b"bar".to_vec(), 7);
    let e = kv.get("foo").unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, e.flags, e.lock_index),
        (3, 3, 7, 0)
    );
    kv.set(5, "foo", b"baz".to_vec(), 0);
    let e = kv.get("foo").unwrap();
    assert_eq!((e.create_index, e.modify_index, e.flags), (3, 5, 0));
    assert_eq!(e.value, b"baz");
    assert_eq!(kv.table_index(), 5);
    kv.check_invariants();
}

#[test]
fn cas_zero_creates_only_if_absent() {
    let mut kv = KvStore::default();
    assert!(kv.cas(1, "k", b"a".to_vec(), 0, 0));
    assert!(!kv.cas(2, "k", b"b".to_vec(), 0, 0));
    assert_eq!(kv.get("k").unwrap().value, b"a");
    // The failed CAS changed nothing, so blocking readers must not wake.
    assert_eq!(kv.table_index(), 1);
    assert_eq!(kv.last_index(), 2);
    kv.check_invariants();
}

#[test]
fn cas_nonzero_needs_matching_modify_index() {
    let mut kv = KvStore::default();
    assert!(
        !kv.cas(1, "k", b"a".to_vec(), 0, 1),
        "absent key with cas!=0"
    );
    assert!(kv.is_empty());
    kv.set(2, "k", b"a".to_vec(), 0);
    assert!(!kv.cas(3, "k", b"b".to_vec(), 0, 1));
    assert!(kv.cas(4, "k", b"b".to_vec(), 9, 2));
    let e = kv.get("k").unwrap();
    assert_eq!((e.create_index, e.modify_index, e.flags), (2, 4, 9));
    kv.check_invariants();
}

#[test]
fn delete_returns_true_and_moves_index_only_on_removal() {
    let mut kv = store_with(&["a"]);
    assert!(kv.delete(5, "missing"));
    assert_eq!(kv.table_index(), 1);
    assert!(kv.delete(6, "a"));
    assert_eq!(kv.table_index(), 6);
    assert!(kv.is_empty());
    kv.check_invariants();
}

#[test]
fn delete_cas_follows_consul() {
    let mut kv = store_with(&["a"]);
    assert!(kv.delete_cas(2, "missing", 0));
    assert!(
        kv.delete_cas(3, "missing", 42),
        "Consul: absent key is a successful CAS delete"
    );
    assert!(!kv.delete_cas(4, "a", 0));
    assert!(!kv.delete_cas(5, "a", 2));
    assert_eq!(kv.table_index(), 1);
    assert!(kv.delete_cas(6, "a", 1));
    assert!(kv.get("a").is_none());
    assert_eq!(kv.table_index(), 6);
    kv.check_invariants();
}

#[test]
fn delete_tree_removes_prefix_only() {
    let mut kv = store_with(&["a", "a/b", "a/c/d", "ab", "b"]);
    assert!(kv.delete_tree(10, "a/"));
    assert_eq!(kv.keys("", None), ["a", "ab", "b"]);
    assert_eq!(kv.table_index(), 10);
    assert!(kv.delete_tree(11, "zzz"));
    assert_eq!(kv.table_index(), 10);
    assert!(kv.delete_tree(12, ""));
    assert!(kv.is_empty());
    assert_eq!(kv.table_index(), 12);
    kv.check_invariants();
}

#[test]
fn recreated_key_gets_new_create_index() {
    let mut kv = store_with(&["k"]);
    kv.delete(2, "k");
    kv.set(3, "k", vec![], 0);
    assert_eq!(kv.get("k").unwrap().create_index, 3);
}

#[test]
fn list_is_prefix_match_in_key_order() {
    let kv = store_with(&["b", "a/2", "a/1", "a", "a0"]);
    let listed: Vec<_> = kv.list("a/").iter().map(|e| e.key.as_str()).collect();
    assert_eq!(listed, ["a/1", "a/2"]);
    assert_eq!(kv.list("").len(), 5);
    assert!(kv.list("c").is_empty());
}

#[test]
fn keys_rolls_up_at_first_separator_after_prefix() {
    let kv = store_with(&["a/b", "a/c/d", "a/c/e", "x"]);
    assert_eq!(kv.keys("a/", Some("/")), ["a/b", "a/c/"]);
    assert_eq!(kv.keys("", Some("/")), ["a/", "x"]);
    assert_eq!(kv.keys("a/", None), ["a/b", "a/c/d", "a/c/e"]);
    assert_eq!(kv.keys("a/", Some("")), ["a/b", "a/c/d", "a/c/e"]);
    // A multi-char separator, and the prefix itself containing it.
    let kv = store_with(&["p::q::r", "p::s"]);
    assert_eq!(kv.keys("p::", Some("::")), ["p::q::", "p::s"]);
    assert_eq!(kv.keys("", Some("::")), ["p::"]);
}

#[test]
fn keys_handle_non_ascii_and_empty_keys() {
    let kv = store_with(&["", "é/ü", "é/ü/ß"]);
    assert_eq!(kv.keys("", Some("/")), ["", "é/"]);
    assert_eq!(kv.keys("é", Some("ü")), ["é/ü"]);
    assert!(kv.get("").is_some());
}

#[test]
#[should_panic(expected = "Raft indexes must increase")]
fn index_must_not_go_back_even_after_a_failed_cas() {
    let mut kv = KvStore::default();
    assert!(!kv.cas(5, "k", vec![], 0, 3));
    kv.set(4, "k", vec![], 0);
}

#[test]
fn entry_value_serializes_as_base64() {
    let kv = store_with(&["k"]);
    let json = serde_json::to_string(kv.get("k").unwrap()).unwrap();
    assert!(json.contains(r#""value":"aw==""#), "{json}");
    let back: KvEntry = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, kv.get("k").unwrap());
    let bad = json.replace("aw==", "a*==");
    assert!(serde_json::from_str::<KvEntry>(&bad).is_err());
}

#[test]
fn validate_reports_each_broken_invariant() {
    let good = store_with(&["a", "b"]);
    assert_eq!(good.validate(), Ok(()));

    let mut bad = good.clone();
    bad.entries.get_mut("a").unwrap().key = "z".into();
    assert!(bad.validate().unwrap_err().contains("names key"));

    let mut bad = good.clone();
    bad.entries.get_mut("a").unwrap().create_index = 2;
    assert!(bad.validate().is_err());

    let mut bad = good.clone();
    bad.entries.get_mut("b").unwrap().modify_index = 3;
    assert!(bad.validate().is_err());

    let mut bad = good.clone();
    bad.table_index = 9;
    assert!(bad.validate().unwrap_err().contains("last applied"));

    let mut bad = good;
    bad.entries.get_mut("a").unwrap().session = Some("s".into());
    assert!(bad.validate().unwrap_err().contains("lock index 0"));
}

mod txn_tests {
    use super::super::txn::{TxnOp, TxnOutcome, MAX_TXN_OPS};
    use super::super::KvStore;

    fn op(verb: &str, key: &str, value: &[u8], index: u64) -> TxnOp {
        TxnOp {
            verb: verb.into(),
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
            index,
            session: String::new(),
            checked_at: 0,
        }
    }

    #[test]
    fn a_transaction_applies_all_or_nothing() {
        let mut kv = KvStore::default();
        kv.set(1, "a", b"1".to_vec(), 0);
        // check-index fails: nothing of the transaction happens.
        let out = kv.txn(
            2,
            &[
                op("set", "b", b"2", 0),
                op("check-index", "a", b"", 99),
                op("delete", "a", b"", 0),
            ],
        );
        let TxnOutcome::RolledBack(errors) = out else {
            panic!("{out:?}")
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].op_index, 1);
        assert!(
            errors[0].what.contains("current modify index 1 != 99"),
            "{}",
            errors[0].what
        );
        assert!(kv.get("b").is_none());
        assert!(kv.get("a").is_some());
        assert_eq!(
            kv.table_index(),
            1,
            "a rolled-back transaction changes no index"
        );
        // Now it commits: operations see each other's effects in order.
        let out = kv.txn(
            3,
            &[
                op("set", "b", b"2", 0),
                op("get", "b", b"", 0),
                op("cas", "a", b"x", 1),
                op("check-not-exists", "c", b"", 0),
                op("get-tree", "", b"", 0),
                op("delete", "a", b"", 0),
            ],
        );
        let TxnOutcome::Committed(results) = out else {
            panic!("{out:?}")
        };
        // set b, get b, cas a, get-tree (a, b).
        assert_eq!(results.len(), 5);
        assert!(!results[0].with_value && results[1].with_value);
        assert_eq!(results[1].entry.value, b"2");
        assert_eq!(results[2].entry.modify_index, 3);
        assert!(kv.get("a").is_none());
        assert_eq!(kv.get("b").unwrap().create_index, 3);
        assert_eq!(kv.table_index(), 3);
        kv.check_invariants();
    }

    #[test]
    fn every_failure_is_reported_and_unknown_or_session_verbs_fail() {
        let mut kv = KvStore::default();
        let out = kv.txn(
            1,
            &[
                op("get", "nope", b"", 0),
                op("lock", "k", b"", 0),
                op("frob", "k", b"", 0),
                op("cas", "k", b"", 5),
            ],
        );
        let TxnOutcome::RolledBack(errors) = out else {
            panic!("{out:?}")
        };
        let at: Vec<usize> = errors.iter().map(|e| e.op_index).collect();
        assert_eq!(at, [0, 1, 2, 3]);
        assert!(
            errors[1].what.contains("missing session"),
            "{}",
            errors[1].what
        );
        let many: Vec<TxnOp> = (0..MAX_TXN_OPS + 1)
            .map(|i| op("set", &format!("k{i}"), b"", 0))
            .collect();
        let TxnOutcome::RolledBack(errors) = kv.txn(2, &many) else {
            panic!()
        };
        assert!(errors[0].what.contains("too many operations (65 > 64)"));
        assert!(kv.is_empty());
    }
}
