//! `KvStore` against a plain-map model of Consul's KV semantics
//! (https://developer.hashicorp.com/consul/api-docs/kv, and Consul's
//! `agent/consul/state/kvs.go` for the CAS corner cases), over random
//! operation sequences. Keys come from a tiny alphabet so that sequences hit
//! the same keys, nest prefixes and collide on separators.

use std::collections::{BTreeMap, BTreeSet};

use mesh_core::kv::KvStore;
use proptest::prelude::*;

/// How a CAS operation picks its expected index.
#[derive(Clone, Debug)]
enum CasIndex {
    /// A literal, usually wrong, sometimes right by accident.
    Literal(u64),
    /// The operation's own key's real modify index (0 if absent): the
    /// read-modify-write a well-behaved client does.
    Current,
    /// Another key's real modify index (0 if absent).
    CurrentOf(String),
    /// The index of the previous operation.
    Previous,
}

#[derive(Clone, Debug)]
enum Op {
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        cas: CasIndex,
    },
    Delete {
        key: String,
    },
    DeleteCas {
        key: String,
        cas: CasIndex,
    },
    DeleteTree {
        prefix: String,
    },
    List {
        prefix: String,
    },
    Keys {
        prefix: String,
        separator: Option<String>,
    },
}

fn key() -> impl Strategy<Value = String> {
    "[ab/]{0,2}"
}

fn cas_index() -> impl Strategy<Value = CasIndex> {
    prop_oneof![
        1 => (0u64..40).prop_map(CasIndex::Literal),
        1 => Just(CasIndex::Literal(0)),
        3 => Just(CasIndex::Current),
        1 => key().prop_map(CasIndex::CurrentOf),
        1 => Just(CasIndex::Previous),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let value = proptest::collection::vec(any::<u8>(), 0..3);
    let flags = prop_oneof![Just(0u64), any::<u64>()];
    prop_oneof![
        4 => (key(), value.clone(), flags.clone()).prop_map(|(key, value, flags)| Op::Set { key, value, flags }),
        4 => (key(), value, flags, cas_index()).prop_map(|(key, value, flags, cas)| Op::Cas { key, value, flags, cas }),
        2 => key().prop_map(|key| Op::Delete { key }),
        3 => (key(), cas_index()).prop_map(|(key, cas)| Op::DeleteCas { key, cas }),
        1 => "[ab/]{0,2}".prop_map(|prefix| Op::DeleteTree { prefix }),
        1 => "[ab/]{0,2}".prop_map(|prefix| Op::List { prefix }),
        2 => ("[ab/]{0,2}", proptest::option::of("[ab/]{0,2}"))
            .prop_map(|(prefix, separator)| Op::Keys { prefix, separator }),
    ]
}

/// What the model stores per key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
}

#[derive(Default)]
struct Model {
    rows: BTreeMap<String, Row>,
    table_index: u64,
}

impl Model {
    fn write(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) {
        let create_index = self.rows.get(key).map_or(index, |r| r.create_index);
        let row = Row {
            value,
            flags,
            create_index,
            modify_index: index,
        };
        self.rows.insert(key.to_string(), row);
        self.table_index = index;
    }

    fn remove(&mut self, index: u64, key: &str) {
        if self.rows.remove(key).is_some() {
            self.table_index = index;
        }
    }

    fn modify_index(&self, key: &str) -> Option<u64> {
        self.rows.get(key).map(|r| r.modify_index)
    }

    fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.rows
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// Consul's `?keys&separator=` spelled out the slow way: cut each key after
/// the first separator past the prefix, collect into a set.
fn model_keys(all: &[String], prefix: &str, separator: Option<&str>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for k in all.iter().filter(|k| k.starts_with(prefix)) {
        let rest = &k[prefix.len()..];
        match separator
            .filter(|s| !s.is_empty())
            .and_then(|s| rest.find(s).map(|at| (at, s)))
        {
            Some((at, s)) => out.insert(format!("{prefix}{}{s}", &rest[..at])),
            None => out.insert(k.clone()),
        };
    }
    out.into_iter().collect()
}

fn contents(kv: &KvStore) -> BTreeMap<String, Row> {
    kv.iter()
        .map(|e| {
            let row = Row {
                value: e.value.clone(),
                flags: e.flags,
                create_index: e.create_index,
                modify_index: e.modify_index,
            };
            (e.key.clone(), row)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec((op(), 1u64..4), 0..80)) {
        let mut kv = KvStore::default();
        let mut model = Model::default();
        let mut index = 0;
        for (op, gap) in ops {
            let previous = index;
            let expected = |cas: &CasIndex, key: &str, model: &Model| match cas {
                CasIndex::Literal(n) => *n,
                CasIndex::Current => model.modify_index(key).unwrap_or(0),
                CasIndex::CurrentOf(k) => model.modify_index(k).unwrap_or(0),
                CasIndex::Previous => previous,
            };
            index += gap;
            match &op {
                Op::Set { key, value, flags } => {
                    kv.set(index, key, value.clone(), *flags);
                    model.write(index, key, value.clone(), *flags);
                }
                Op::Cas { key, value, flags, cas } => {
                    let n = expected(cas, key, &model);
                    let want = match model.modify_index(key) {
                        None => n == 0,
                        Some(m) => m == n,
                    };
                    prop_assert_eq!(kv.cas(index, key, value.clone(), *flags, n), want, "{:?} with cas={}", op, n);
                    if want {
                        model.write(index, key, value.clone(), *flags);
                    }
                }
                Op::Delete { key } => {
                    prop_assert!(kv.delete(index, key));
                    model.remove(index, key);
                }
                Op::DeleteCas { key, cas } => {
                    let n = expected(cas, key, &model);
                    let want = match model.modify_index(key) {
                        // Consul: an absent key is a successful CAS delete.
                        None => true,
                        Some(m) => m == n,
                    };
                    prop_assert_eq!(kv.delete_cas(index, key, n), want, "{:?} with cas={}", op, n);
                    if want {
                        model.remove(index, key);
                    }
                }
                Op::DeleteTree { prefix } => {
                    prop_assert!(kv.delete_tree(index, prefix));
                    for k in model.keys_under(prefix) {
                        model.remove(index, &k);
                    }
                }
                Op::List { prefix } => {
                    let got: Vec<String> = kv.list(prefix).iter().map(|e| e.key.clone()).collect();
                    prop_assert_eq!(got, model.keys_under(prefix));
                }
                Op::Keys { prefix, separator } => {
                    let all: Vec<String> = model.rows.keys().cloned().collect();
                    let want = model_keys(&all, prefix, separator.as_deref());
                    prop_assert_eq!(kv.keys(prefix, separator.as_deref()), want);
                }
            }
            let reads_only = matches!(op, Op::List { .. } | Op::Keys { .. });
            if !reads_only {
                prop_assert_eq!(kv.last_index(), index);
            }
            kv.check_invariants();
            prop_assert_eq!(kv.table_index(), model.table_index);
            prop_assert_eq!(kv.len(), model.rows.len());
            prop_assert_eq!(kv.is_empty(), model.rows.is_empty());
            prop_assert_eq!(contents(&kv), model.rows.clone());
        }
    }

    /// `keys()` against the model on key sets with multi-byte characters and
    /// multi-character separators.
    #[test]
    fn keys_match_model(
        keys in proptest::collection::btree_set("[aé/:]{0,5}", 0..20),
        prefix in "[aé/:]{0,2}",
        separator in proptest::option::of("[aé/:]{0,2}"),
    ) {
        let mut kv = KvStore::default();
        for (i, k) in keys.iter().enumerate() {
            kv.set(i as u64 + 1, k, vec![], 0);
        }
        let all: Vec<String> = keys.into_iter().collect();
        let got = kv.keys(&prefix, separator.as_deref());
        prop_assert_eq!(&got, &model_keys(&all, &prefix, separator.as_deref()));
        // Sorted and free of duplicates, as Consul returns them.
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    /// Every method is total on arbitrary strings.
    #[test]
    fn total_on_arbitrary_strings(
        strings in proptest::collection::vec(any::<String>(), 1..8),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..5), 0..30),
    ) {
        let mut kv = KvStore::default();
        for (i, (a, b, what)) in picks.into_iter().enumerate() {
            let index = i as u64 + 1;
            let (s, t) = (a.get(&strings), b.get(&strings));
            match what {
                0 => kv.set(index, s, t.as_bytes().to_vec(), 0),
                1 => { kv.cas(index, s, vec![], 0, index - 1); }
                2 => { kv.delete_cas(index, s, index - 1); }
                3 => { kv.delete_tree(index, s); }
                _ => { kv.delete(index, s); }
            }
            let _ = kv.get(s);
            let _ = kv.list(s);
            let _ = kv.keys(s, Some(t));
            let _ = kv.keys(t, None);
            kv.check_invariants();
        }
    }
}
