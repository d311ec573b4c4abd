//! The KV store with Consul's semantics: CreateIndex, ModifyIndex,
//! LockIndex, Flags; check-and-set where `cas=0` means "only if absent";
//! recursive reads and deletes; key listing rolled up at a separator.
//!
//! Every mutation carries the Raft index of its command, which becomes the
//! entry's ModifyIndex and the table index (`X-Consul-Index`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the last write to the key.
    pub modify_index: u64,
    /// Times a lock was acquired on the key (sessions; always 0 for now).
    pub lock_index: u64,
}

/// The KV table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    entries: BTreeMap<String, KvEntry>,
    table_index: u64,
    /// Highest command index seen, changing or not (monotonicity guard).
    last_index: u64,
}

impl KvStore {
    /// The entry at `key`.
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.entries.get(key)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<&KvEntry> {
        self.entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
            .collect()
    }

    /// Keys under `prefix`; with a separator, each key is cut after the
    /// first separator following the prefix, and duplicates are merged
    /// (Consul's `?keys&separator=/`).
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> Vec<String> {
        let mut out = BTreeSet::new();
        for e in self.list(prefix) {
            let rest = &e.key[prefix.len()..];
            match separator.filter(|s| !s.is_empty()).and_then(|s| rest.find(s).map(|i| i + s.len())) {
                Some(cut) => out.insert(format!("{prefix}{}", &rest[..cut])),
                None => out.insert(e.key.clone()),
            };
        }
        out.into_iter().collect()
    }

    /// Index of the last write that changed the table (0 if none).
    pub fn table_index(&self) -> u64 {
        self.table_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index > self.last_index,
            "command index {index} not after {}",
            self.last_index
        );
        self.last_index = index;
    }

    /// Sets `key` unconditionally.
    pub fn set(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) {
        self.advance(index);
        self.write(index, key, value, flags);
    }

    fn write(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) {
        let create_index = self.entries.get(key).map_or(index, |e| e.create_index);
        let lock_index = self.entries.get(key).map_or(0, |e| e.lock_index);
        self.entries.insert(
            key.to_string(),
            KvEntry {
                key: key.to_string(),
                value,
                flags,
                create_index,
                modify_index: index,
                lock_index,
            },
        );
        self.table_index = index;
    }

    /// Check-and-set: with `expected == 0` only creates; otherwise writes
    /// only if the key's ModifyIndex equals `expected`.
    pub fn cas(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64, expected: u64) -> bool {
        self.advance(index);
        let ok = match self.entries.get(key) {
            None => expected == 0,
            Some(e) => expected != 0 && e.modify_index == expected,
        };
        if ok {
            self.write(index, key, value, flags);
        }
        ok
    }

    /// Deletes `key`; true even if it was absent (as Consul).
    pub fn delete(&mut self, index: u64, key: &str) -> bool {
        self.advance(index);
        if self.entries.remove(key).is_some() {
            self.table_index = index;
        }
        true
    }

    /// Deletes `key` only if its ModifyIndex equals `expected`. A missing
    /// key with `expected == 0` counts as success (nothing to delete), as in
    /// Consul's `KVSDeleteCAS`; a missing key with another index fails.
    pub fn delete_cas(&mut self, index: u64, key: &str, expected: u64) -> bool {
        self.advance(index);
        match self.entries.get(key) {
            None => expected == 0,
            Some(e) if e.modify_index == expected => {
                self.entries.remove(key);
                self.table_index = index;
                true
            }
            Some(_) => false,
        }
    }

    /// Deletes every key under `prefix`.
    pub fn delete_tree(&mut self, index: u64, prefix: &str) -> bool {
        self.advance(index);
        let doomed: Vec<String> = self.list(prefix).into_iter().map(|e| e.key.clone()).collect();
        if !doomed.is_empty() {
            for k in doomed {
                self.entries.remove(&k);
            }
            self.table_index = index;
        }
        true
    }

    /// Internal consistency; panics on a violation (a bug, never input).
    pub fn check_invariants(&self) {
        assert!(self.table_index <= self.last_index);
        for (k, e) in &self.entries {
            assert_eq!(*k, e.key);
            assert!(e.create_index <= e.modify_index);
            assert!(e.modify_index <= self.table_index);
        }
    }

    /// Like [`KvStore::check_invariants`], but as a result for decoded input.
    pub fn validate(&self) -> Result<(), String> {
        if self.table_index > self.last_index {
            return Err("table index after last index".into());
        }
        for (k, e) in &self.entries {
            if *k != e.key || e.create_index > e.modify_index || e.modify_index > self.table_index {
                return Err(format!("inconsistent entry {k:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consul_semantics() {
        let mut kv = KvStore::default();
        kv.set(1, "a", b"1".to_vec(), 7);
        assert_eq!(kv.get("a").unwrap().create_index, 1);
        kv.set(2, "a", b"2".to_vec(), 0);
        let e = kv.get("a").unwrap();
        assert_eq!((e.create_index, e.modify_index, e.flags), (1, 2, 0));
        assert!(!kv.cas(3, "a", b"x".to_vec(), 0, 0), "cas=0 only creates");
        assert!(!kv.cas(4, "a", b"x".to_vec(), 0, 1), "stale index");
        assert!(kv.cas(5, "a", b"x".to_vec(), 0, 2));
        assert!(kv.cas(6, "b", b"y".to_vec(), 0, 0));
        assert_eq!(kv.table_index(), 6);
        assert!(!kv.delete_cas(7, "a", 2));
        assert!(kv.delete_cas(8, "a", 5));
        assert!(kv.delete(9, "nope"));
        assert_eq!(kv.table_index(), 8, "deleting nothing changes nothing");
        kv.check_invariants();
    }

    #[test]
    fn keys_roll_up_at_separator() {
        let mut kv = KvStore::default();
        for (i, k) in ["a/b", "a/c/d", "a/c/e", "ab", "b"].iter().enumerate() {
            kv.set(i as u64 + 1, k, vec![], 0);
        }
        assert_eq!(kv.keys("a/", Some("/")), vec!["a/b", "a/c/"]);
        assert_eq!(kv.keys("a", Some("/")), vec!["a/", "ab"]);
        assert_eq!(kv.keys("", None).len(), 5);
        assert_eq!(kv.list("a/").len(), 3);
        assert!(kv.delete_tree(10, "a/"));
        assert_eq!(kv.keys("", None), vec!["ab", "b"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8),
        Cas(u8, u8, Option<u8>),
        Delete(u8),
        DeleteTree(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Set(k, v)),
            (0u8..6, any::<u8>(), proptest::option::of(0u8..20)).prop_map(|(k, v, i)| Op::Cas(k, v, i)),
            (0u8..6).prop_map(Op::Delete),
            (0u8..3).prop_map(Op::DeleteTree),
        ]
    }

    fn key(k: u8) -> String {
        format!("{}/{}", k % 3, k)
    }

    proptest! {
        /// The store against a plain map model.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 0..60)) {
            let mut kv = KvStore::default();
            let mut model: BTreeMap<String, (Vec<u8>, u64, u64)> = BTreeMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                let index = i as u64 + 1;
                match op {
                    Op::Set(k, v) => {
                        kv.set(index, &key(k), vec![v], 0);
                        let create = model.get(&key(k)).map_or(index, |e| e.1);
                        model.insert(key(k), (vec![v], create, index));
                    }
                    Op::Cas(k, v, i) => {
                        // Half the time use the real modify index.
                        let expected = match i {
                            Some(i) => u64::from(i),
                            None => model.get(&key(k)).map_or(0, |e| e.2),
                        };
                        let ok = kv.cas(index, &key(k), vec![v], 0, expected);
                        let want = match model.get(&key(k)) {
                            None => expected == 0,
                            Some(e) => expected != 0 && e.2 == expected,
                        };
                        prop_assert_eq!(ok, want);
                        if want {
                            let create = model.get(&key(k)).map_or(index, |e| e.1);
                            model.insert(key(k), (vec![v], create, index));
                        }
                    }
                    Op::Delete(k) => {
                        kv.delete(index, &key(k));
                        model.remove(&key(k));
                    }
                    Op::DeleteTree(p) => {
                        kv.delete_tree(index, &format!("{p}/"));
                        model.retain(|k, _| !k.starts_with(&format!("{p}/")));
                    }
                }
                kv.check_invariants();
            }
            let got: BTreeMap<String, (Vec<u8>, u64, u64)> = kv
                .list("")
                .into_iter()
                .map(|e| (e.key.clone(), (e.value.clone(), e.create_index, e.modify_index)))
                .collect();
            prop_assert_eq!(got, model);
        }
    }
}
