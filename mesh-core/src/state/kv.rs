//! Consul's key/value store semantics, as applied by every server from the
//! Raft log.
//!
//! Every mutation carries the Raft index of the command that caused it. The
//! indexes the store records follow Consul:
//!
//! * `create_index`: index of the write that created the key (kept across
//!   updates; a delete followed by a put creates the key anew).
//! * `modify_index`: index of the last write to the key. `?cas=N` compares
//!   against it.
//! * `lock_index`: how often the key's lock was acquired. Sessions do not
//!   exist yet, so it is always 0.
//! * [`KvStore::table_index`]: index of the last write that changed *any*
//!   key, deletes included. Blocking queries (`?index=`, `X-Consul-Index`)
//!   use it, so it must move whenever a read could return something new, and
//!   must not move otherwise (a failed CAS changes nothing).
//!
//! Differences from Consul, on purpose:
//!
//! * Consul skips a `set` whose value, flags and session equal the stored
//!   ones (the modify index does not move). Here every `set` advances
//!   `modify_index`: one rule instead of two, and a CAS client holding the
//!   old index merely retries once.
//! * Consul reports per-prefix indexes through tombstones; here every read
//!   uses the single table index. Blocking queries may wake more often, never
//!   less often.
//!
//! Keys are not validated here: any string, including the empty one, is a
//! key (the HTTP layer rejects bad keys with [`crate::api::validate_key`]).
//! Every method is total on its string inputs; the only panics are the
//! index-monotonicity assertion (a caller bug) and [`KvStore::check_invariants`].

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// One key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The full key.
    pub key: String,
    /// The value; serialized as base64 so snapshots and log entries stay
    /// compact (a JSON array of numbers is ~3.5 bytes per byte).
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// Opaque client flags (`?flags=`).
    pub flags: u64,
    /// Raft index of the write that created the key.
    pub create_index: u64,
    /// Raft index of the last write to the key.
    pub modify_index: u64,
    /// Number of lock acquisitions; always 0 until sessions exist.
    pub lock_index: u64,
}

/// The KV table: keys in byte order, plus the indexes blocking queries need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    entries: BTreeMap<String, KvEntry>,
    /// Index of the last mutation that changed some key.
    table_index: u64,
    /// Highest index passed to any mutation, changed something or not. Kept
    /// (and snapshotted) only so the monotonicity assertion is exact.
    last_index: u64,
}

impl KvStore {
    /// The entry stored under exactly `key`.
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.entries.get(key)
    }

    /// Every entry whose key starts with `prefix`, in key order
    /// (`GET /v1/kv/<prefix>?recurse`). The empty prefix lists everything.
    pub fn list(&self, prefix: &str) -> Vec<&KvEntry> {
        self.under(prefix).map(|(_, e)| e).collect()
    }

    /// The keys under `prefix` (`GET /v1/kv/<prefix>?keys&separator=<sep>`),
    /// sorted and deduplicated.
    ///
    /// With a separator, each key is cut after the first occurrence of the
    /// separator following the prefix, so a "directory" appears once: prefix
    /// `a/`, separator `/`, keys `a/b`, `a/c/d`, `a/c/e` give `["a/b", "a/c/"]`.
    /// `None` and `Some("")` both mean "no separator" (Consul ignores an empty
    /// one).
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> Vec<String> {
        let separator = separator.filter(|s| !s.is_empty());
        let mut out: Vec<String> = Vec::new();
        for (key, _) in self.under(prefix) {
            // `under` guarantees `key` starts with `prefix`, so this slice is
            // on a char boundary.
            let rest = &key[prefix.len()..];
            let rolled = match separator.and_then(|sep| rest.find(sep).map(|at| at + sep.len())) {
                Some(end) => &key[..prefix.len() + end],
                None => key.as_str(),
            };
            // Keys arrive sorted, and cutting every key at its first separator
            // keeps them sorted and makes equal results adjacent: all keys
            // between two keys sharing the cut prefix share it too. So
            // comparing with the last pushed key is a full dedup.
            if out.last().map(String::as_str) != Some(rolled) {
                out.push(rolled.to_string());
            }
        }
        out
    }

    /// Raft index of the last write that changed any key; 0 if none did.
    /// This is the `X-Consul-Index` of every KV read.
    pub fn table_index(&self) -> u64 {
        self.table_index
    }

    /// Highest Raft index passed to any mutation (successful or not); 0 if
    /// none. The next mutation must carry a larger index.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = &KvEntry> + '_ {
        self.entries.values()
    }

    /// `PUT /v1/kv/<key>`: creates or overwrites `key`. An overwrite keeps the
    /// key's `create_index` and `lock_index`.
    ///
    /// # Panics
    ///
    /// If `index` is not above every index seen before (a caller bug: Raft
    /// applies entries in log order exactly once).
    pub fn set(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) {
        self.advance(index);
        self.write(index, key, value, flags);
    }

    /// `PUT /v1/kv/<key>?cas=N`: like [`KvStore::set`], but only if `N` is 0
    /// and the key is absent, or `N` equals the key's current `modify_index`.
    /// Returns whether the write happened.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn cas(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        expected_modify_index: u64,
    ) -> bool {
        self.advance(index);
        let current = self.entries.get(key).map(|e| e.modify_index);
        let matches = match current {
            None => expected_modify_index == 0,
            Some(modify_index) => modify_index == expected_modify_index,
        };
        if matches {
            self.write(index, key, value, flags);
        }
        matches
    }

    /// `DELETE /v1/kv/<key>`: removes `key` if present. Always returns true,
    /// as Consul does for a missing key; the table index moves only if a key
    /// was removed.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn delete(&mut self, index: u64, key: &str) -> bool {
        self.advance(index);
        if self.entries.remove(key).is_some() {
            self.table_index = index;
        }
        true
    }

    /// `DELETE /v1/kv/<key>?cas=N`: removes `key` only if its `modify_index`
    /// equals `N`.
    ///
    /// A missing key returns **true for every `N`**, matching Consul's
    /// `kvsDeleteCASTxn` (`return entry == nil`): the caller wanted the key
    /// gone and it is gone. A present key whose `modify_index` differs from
    /// `N` (including `N == 0`, since indexes start at 1) returns false and
    /// changes nothing.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn delete_cas(&mut self, index: u64, key: &str, expected_modify_index: u64) -> bool {
        self.advance(index);
        match self.entries.get(key) {
            None => true,
            Some(entry) if entry.modify_index == expected_modify_index => {
                self.entries.remove(key);
                self.table_index = index;
                true
            }
            Some(_) => false,
        }
    }

    /// `DELETE /v1/kv/<prefix>?recurse`: removes every key starting with
    /// `prefix` (the empty prefix removes everything). Always returns true;
    /// the table index moves only if a key was removed.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn delete_tree(&mut self, index: u64, prefix: &str) -> bool {
        self.advance(index);
        let doomed: Vec<String> = self.under(prefix).map(|(k, _)| k.clone()).collect();
        for key in &doomed {
            let removed = self.entries.remove(key);
            assert!(removed.is_some(), "key {key:?} vanished during delete_tree");
        }
        if !doomed.is_empty() {
            self.table_index = index;
        }
        true
    }

    /// Panics if the store is inconsistent: for every entry
    /// `0 < create_index <= modify_index <= table_index <= last_index`, the
    /// entry's key equals its map key, and `lock_index` is 0.
    pub fn check_invariants(&self) {
        if let Err(violation) = self.validate() {
            panic!("KvStore invariant violated: {violation}");
        }
    }

    /// [`KvStore::check_invariants`] as a value, naming the first violation:
    /// for decoded data (a snapshot), where a violation is bad input, not a
    /// bug.
    pub fn validate(&self) -> Result<(), String> {
        if self.table_index > self.last_index {
            return Err(format!(
                "table index {} is above the last applied index {}",
                self.table_index, self.last_index
            ));
        }
        for (key, e) in &self.entries {
            if *key != e.key {
                return Err(format!("entry stored under {key:?} names key {:?}", e.key));
            }
            if e.create_index == 0 {
                return Err(format!("{key:?} has create index 0"));
            }
            if e.create_index > e.modify_index {
                return Err(format!(
                    "{key:?} was created at {} after its last modification at {}",
                    e.create_index, e.modify_index
                ));
            }
            if e.modify_index > self.table_index {
                return Err(format!(
                    "{key:?} was modified at {}, after the table index {}",
                    e.modify_index, self.table_index
                ));
            }
            // Sessions (the only source of locks) do not exist yet.
            if e.lock_index != 0 {
                return Err(format!(
                    "{key:?} has lock index {} without sessions",
                    e.lock_index
                ));
            }
        }
        Ok(())
    }

    /// Entries whose key starts with `prefix`, in key order.
    fn under<'a, 'p>(&'a self, prefix: &'p str) -> Under<'a, 'p> {
        Under {
            range: self
                .entries
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded)),
            prefix,
        }
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index > self.last_index,
            "KV mutation at index {index} after index {}: Raft indexes must increase",
            self.last_index
        );
        self.last_index = index;
    }

    /// The write half of `set` and `cas`; the caller has called `advance`.
    fn write(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.value = value;
                entry.flags = flags;
                entry.modify_index = index;
            }
            None => {
                let entry = KvEntry {
                    key: key.to_string(),
                    value,
                    flags,
                    create_index: index,
                    modify_index: index,
                    lock_index: 0,
                };
                self.entries.insert(key.to_string(), entry);
            }
        }
        self.table_index = index;
    }
}

/// Iterator behind [`KvStore::under`]. A named type rather than
/// `range(..).take_while(..)` so the items borrow the store only, not the
/// prefix.
struct Under<'a, 'p> {
    range: btree_map::Range<'a, String, KvEntry>,
    prefix: &'p str,
}

impl<'a> Iterator for Under<'a, '_> {
    type Item = (&'a String, &'a KvEntry);

    fn next(&mut self) -> Option<Self::Item> {
        // Keys with the prefix are contiguous in key order, starting at the
        // prefix itself; the first key without it ends the run for good.
        let (key, entry) = self.range.next()?;
        if key.starts_with(self.prefix) {
            Some((key, entry))
        } else {
            self.range = btree_map::Range::default();
            None
        }
    }
}

/// Serde adapter: `Vec<u8>` as a standard-alphabet, padded base64 string.
pub mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Deserializes from base64.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
