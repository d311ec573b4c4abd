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
//! * `lock_index`: how often the key's lock was acquired (by a session
//!   that did not hold it already); kept across releases.
//! * `session`: the session holding the key's lock, if any.
//! * [`KvStore::table_index`]: index of the last write that changed *any*
//!   key, deletes included. Blocking queries (`?index=`, `X-Consul-Index`)
//!   on a key that does not exist, or on everything, use it, so it must
//!   move whenever a read could return something new, and must not move
//!   otherwise (a failed CAS changes nothing). A key that exists answers
//!   with its own `modify_index`, a prefix with [`KvStore::prefix_index`],
//!   as in Consul ([`crate::wire::query_index`]).
//!
//! Differences from Consul, on purpose:
//!
//! * Consul skips a `set` whose value, flags and session equal the stored
//!   ones (the modify index does not move). Here every `set` advances
//!   `modify_index`: one rule instead of two, and a CAS client holding the
//!   old index merely retries once.
//! * A prefix read (`?recurse`, `?keys`) answers with the highest index
//!   under its prefix, as Consul's: its entries' `modify_index` and the
//!   tombstones its deletes left ([`KvStore::prefix_index`]). Consul reaps
//!   tombstones on a timer through the log; here the table keeps the newest
//!   [`MAX_TOMBSTONES`] and folds older ones into one floor that every
//!   prefix index is at least, so memory stays bounded and every server
//!   keeps the same ones. The price: once more than that many keys were
//!   deleted, each further delete raises the floor and wakes every prefix
//!   read (a `DELETE ?recurse` of more keys than that, at once), where
//!   Consul's would sleep on.
//!
//! Keys are not validated here: any string, including the empty one, is a
//! key (the HTTP layer rejects bad keys with [`crate::api::validate_key`]).
//! Every method is total on its string inputs; the only panics are the
//! index-monotonicity assertion (a caller bug) and [`KvStore::check_invariants`].
//!
//! As a table of the state machine (see [`super`]), the store is changed by
//! [`KvCommand`]s, and snapshots carry it as the binary section whose layout
//! is documented on its `encode`.

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::binary::{put_bytes32, put_u64, Input, Reader};
use super::{CommandResult, Table, TableState};
use crate::hash::Fnv1a64;

/// A command that changes the KV table; one Raft log entry's worth.
///
/// The JSON names are the ones the log has always stored (`{"KvSet":{..}}`),
/// so entries written before the state machine had tables decode unchanged;
/// [`super::Command`] dispatches on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// `PUT /v1/kv/<key>`. Result: always `Bool(true)`.
    #[serde(rename = "KvSet")]
    Set {
        /// The key.
        key: String,
        /// The value (base64 in JSON, to keep log entries compact).
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
    },
    /// `PUT /v1/kv/<key>?cas=<index>`. Result: whether the write happened.
    #[serde(rename = "KvCas")]
    Cas {
        /// The key.
        key: String,
        /// The value (base64 in JSON).
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
        /// Expected ModifyIndex; 0 means "only if absent".
        index: u64,
    },
    /// `DELETE /v1/kv/<key>`. Result: always `Bool(true)`.
    #[serde(rename = "KvDelete")]
    Delete {
        /// The key.
        key: String,
    },
    /// `DELETE /v1/kv/<key>?cas=<index>`. Result: see [`KvStore::delete_cas`]
    /// (true if the key is gone afterwards for a matching or absent key).
    #[serde(rename = "KvDeleteCas")]
    DeleteCas {
        /// The key.
        key: String,
        /// Expected ModifyIndex.
        index: u64,
    },
    /// `DELETE /v1/kv/<prefix>?recurse`. Result: always `Bool(true)`.
    #[serde(rename = "KvDeleteTree")]
    DeleteTree {
        /// Every key starting with this is deleted; "" deletes all keys.
        prefix: String,
    },
    /// `PUT /v1/txn`: KV operations applied atomically. Result:
    /// `CommandResult::Txn`.
    #[serde(rename = "KvTxn")]
    Txn {
        /// The operations, in order.
        ops: Vec<txn::TxnOp>,
    },
    /// `PUT /v1/kv/<key>?acquire=<session>`: writes the key and takes its
    /// lock for the session. Result: `Bool(false)` if another session holds
    /// it, `Failed` if the session does not exist (see [`KvStore::lock`]).
    #[serde(rename = "KvLock")]
    Lock {
        /// The key.
        key: String,
        /// The value (base64 in JSON).
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
        /// The session taking the lock.
        session: String,
        /// The applied index at which the leader found the key outside
        /// any lock delay (0: not checked). Applying refuses the lock if an
        /// invalidation released the key after that index: the check ran
        /// before the release, whose delay must still apply.
        #[serde(default, skip_serializing_if = "is_zero")]
        checked_at: u64,
    },
    /// `PUT /v1/kv/<key>?release=<session>`: writes the key and releases
    /// its lock, if the session holds it. Result: whether it did.
    #[serde(rename = "KvUnlock")]
    Unlock {
        /// The key.
        key: String,
        /// The value (base64 in JSON).
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
        /// The session releasing the lock.
        session: String,
    },
}

impl KvCommand {
    /// The JSON names of the variants, the keys `Command` dispatches on.
    /// Must list exactly the `rename`s above (a unit test checks).
    pub const JSON_NAMES: &'static [&'static str] = &[
        "KvSet",
        "KvCas",
        "KvDelete",
        "KvDeleteCas",
        "KvDeleteTree",
        "KvTxn",
        "KvLock",
        "KvUnlock",
    ];

    /// An upper bound on this command's JSON size, computed without
    /// encoding it (see `Command::encoded_len_bound`).
    pub fn encoded_len_bound(&self) -> usize {
        // JSON may escape each key byte as `\u00XX` (6 bytes); base64 takes
        // 4 bytes per 3; the rest (field names, numbers, braces) is small.
        const OVERHEAD: usize = 160;
        let key_bound = |k: &str| k.len() * 6;
        let value_bound = |v: &[u8]| v.len().div_ceil(3) * 4;
        OVERHEAD
            + match self {
                KvCommand::Set { key, value, .. } | KvCommand::Cas { key, value, .. } => {
                    key_bound(key) + value_bound(value)
                }
                KvCommand::Lock {
                    key,
                    value,
                    session,
                    ..
                }
                | KvCommand::Unlock {
                    key,
                    value,
                    session,
                    ..
                } => key_bound(key) + value_bound(value) + key_bound(session),
                KvCommand::Delete { key } | KvCommand::DeleteCas { key, .. } => key_bound(key),
                KvCommand::DeleteTree { prefix } => key_bound(prefix),
                KvCommand::Txn { ops } => ops
                    .iter()
                    .map(|op| {
                        OVERHEAD
                            + key_bound(&op.key)
                            + value_bound(&op.value)
                            + key_bound(&op.verb)
                            + key_bound(&op.session)
                    })
                    .sum(),
            }
    }
}

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
    /// Number of lock acquisitions.
    pub lock_index: u64,
    /// The session holding the key's lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
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
    /// Deleted keys and the index that deleted them, at most
    /// [`MAX_TOMBSTONES`] (the newest).
    #[serde(skip)]
    tombstones: BTreeMap<String, u64>,
    /// The highest index of a tombstone dropped to keep that bound.
    #[serde(skip)]
    tombstone_floor: u64,
    /// The keys the latest writes changed, so a blocking prefix read can
    /// tell whether anything under its prefix changed without walking it.
    #[serde(skip)]
    recent: RecentChanges,
}

/// How many changed keys [`RecentChanges`] remembers.
const MAX_RECENT: usize = 4096;

/// The keys changed (written or deleted) by the latest writes, oldest
/// first. A cache, not state: it starts empty however the store was made
/// (restored, decoded, new) and covers only what was applied since, so it
/// takes no part in equality, digests or snapshots.
#[derive(Clone, Debug, Default)]
struct RecentChanges {
    /// `Some(i)`: every change at an index above `i` is in `keys`. `None`
    /// until the first change this cache saw.
    complete_after: Option<u64>,
    keys: std::collections::VecDeque<(u64, String)>,
}

impl PartialEq for RecentChanges {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RecentChanges {}

impl RecentChanges {
    /// Records that the write at `index` changed `key`; `table_index` is
    /// the store's index before that write.
    fn note(&mut self, table_index: u64, index: u64, key: &str) {
        self.complete_after.get_or_insert(table_index);
        self.keys.push_back((index, key.to_string()));
        if self.keys.len() > MAX_RECENT {
            if let Some((dropped, _)) = self.keys.pop_front() {
                self.complete_after = Some(dropped);
            }
        }
    }

    /// Whether a key starting with `prefix` changed after `since`, if this
    /// cache knows every change after it.
    fn changed_under(&self, prefix: &str, since: u64) -> Option<bool> {
        if self.complete_after.is_none_or(|after| since < after) {
            return None;
        }
        Some(
            self.keys
                .iter()
                .rev()
                .take_while(|(i, _)| *i > since)
                .any(|(_, k)| k.starts_with(prefix)),
        )
    }
}

/// How many deleted keys the table remembers for prefix indexes.
pub const MAX_TOMBSTONES: usize = 1024;

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
    /// The `X-Consul-Index` of a read of a key that does not exist, and of
    /// a prefix read of everything.
    pub fn table_index(&self) -> u64 {
        self.table_index
    }

    /// The `X-Consul-Index` of a prefix read: the last write that changed
    /// a key under `prefix` (a tombstone remembers a delete), or the
    /// tombstone floor if higher. Every write that changes what the read
    /// returns moves it; writes elsewhere do not.
    pub fn prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.table_index;
        }
        let live = self.under(prefix).map(|(_, e)| e.modify_index);
        let dead = self
            .tombstones
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, &i)| i);
        live.chain(dead).fold(self.tombstone_floor, u64::max)
    }

    /// Whether [`KvStore::prefix_index`] of `prefix` is above `since`, what
    /// a blocking prefix read waits for, asked after every write: from the
    /// recent changes when they reach back that far, instead of walking
    /// every key under the prefix each time.
    pub fn prefix_changed_since(&self, prefix: &str, since: u64) -> bool {
        if self.table_index <= since {
            return false;
        }
        if prefix.is_empty() || self.tombstone_floor > since {
            return true;
        }
        self.recent
            .changed_under(prefix, since)
            .unwrap_or_else(|| self.prefix_index(prefix) > since)
    }

    /// A store read from a format without tombstones: deletes it cannot
    /// see may have happened up to its table index.
    pub(super) fn assume_unseen_deletes(&mut self) {
        self.tombstone_floor = self.table_index;
    }

    /// This store as a build without tombstones would restore it.
    #[cfg(test)]
    pub(crate) fn restored_without_tombstones(mut self) -> KvStore {
        self.tombstones.clear();
        self.assume_unseen_deletes();
        self
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
        if self.remove(index, key) {
            self.table_index = index;
            self.prune_tombstones();
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
                self.remove(index, key);
                self.table_index = index;
                self.prune_tombstones();
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
            let removed = self.remove(index, key);
            assert!(removed, "key {key:?} vanished during delete_tree");
        }
        if !doomed.is_empty() {
            self.table_index = index;
            self.prune_tombstones();
        }
        true
    }

    /// `PUT /v1/txn`: runs `ops` atomically at `index` (see [`txn`]).
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn txn(&mut self, index: u64, ops: &[txn::TxnOp]) -> txn::TxnOutcome {
        self.txn_with_sessions(index, ops, &NoSessions)
    }

    /// [`KvStore::txn`] with `session_exists` answering for the session
    /// verbs.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn txn_with_sessions(
        &mut self,
        index: u64,
        ops: &[txn::TxnOp],
        ctx: &dyn LockContext,
    ) -> txn::TxnOutcome {
        self.advance(index);
        let (outcome, changes) = txn::run(self, index, ops, ctx);
        let mut changed = false;
        for (key, change) in changes {
            match change {
                Some(entry) => {
                    self.recent.note(self.table_index, index, &key);
                    self.entries.insert(key, entry);
                    changed = true;
                }
                // Deleting an absent key changes nothing.
                None => changed |= self.remove(index, &key),
            }
        }
        if changed {
            self.table_index = index;
            self.prune_tombstones();
        }
        outcome
    }

    /// `PUT /v1/kv/<key>?acquire=<session>` (Consul's `kvsLockTxn`): writes
    /// the key and takes its lock for `session`. A key the session holds
    /// already is just written (its `lock_index` stays); a free key's
    /// `lock_index` goes up by one; a key another session holds is not
    /// touched (`Ok(false)`). `session_exists` is the sessions table's
    /// answer: a lock for a session that does not exist is an error.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn lock(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        session_exists: bool,
    ) -> Result<bool, String> {
        self.advance(index);
        if session_exists && unchanged_relock(self.entries.get(key), session, &value, flags) {
            return Ok(true);
        }
        let locked = lock_entry(self.entries.get(key), index, key, session, session_exists)?;
        Ok(self.store_stamped(index, locked, value, flags))
    }

    /// `PUT /v1/kv/<key>?release=<session>` (Consul's `kvsUnlockTxn`):
    /// writes the key and frees its lock if `session` holds it; otherwise
    /// touches nothing and returns false.
    ///
    /// # Panics
    ///
    /// As [`KvStore::set`].
    pub fn unlock(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<bool, String> {
        self.advance(index);
        let released = unlock_entry(self.entries.get(key), index, session)?;
        Ok(self.store_stamped(index, released, value, flags))
    }

    /// Stores an entry a lock verb stamped (session and indexes set) with
    /// the request's value and flags; false if the verb declined.
    fn store_stamped(
        &mut self,
        index: u64,
        stamped: Option<KvEntry>,
        value: Vec<u8>,
        flags: u64,
    ) -> bool {
        let Some(mut entry) = stamped else {
            return false;
        };
        entry.value = value;
        entry.flags = flags;
        self.recent.note(self.table_index, index, &entry.key);
        self.entries.insert(entry.key.clone(), entry);
        self.table_index = index;
        true
    }

    /// The keys `session` holds, in key order.
    pub fn held_by<'a>(&'a self, session: &'a str) -> impl Iterator<Item = &'a KvEntry> {
        self.entries
            .values()
            .filter(move |e| e.session.as_deref() == Some(session))
    }

    /// The session was invalidated at `index`: its keys are released
    /// (their `modify_index` moves, `lock_index` stays) or, with `delete`,
    /// removed. Returns the keys, for the lock delay. Several sessions can
    /// be invalidated by one command, so `index` may equal the last one.
    pub(super) fn drop_session(&mut self, index: u64, session: &str, delete: bool) -> Vec<String> {
        assert!(
            index >= self.last_index,
            "KV mutation at index {index} after index {}: Raft indexes must increase",
            self.last_index
        );
        let keys: Vec<String> = self.held_by(session).map(|e| e.key.clone()).collect();
        if keys.is_empty() {
            return keys;
        }
        self.last_index = index;
        for key in &keys {
            if delete {
                self.remove(index, key);
            } else if let Some(e) = self.entries.get_mut(key) {
                e.session = None;
                e.modify_index = index;
                self.recent.note(self.table_index, index, key);
            }
        }
        self.table_index = index;
        self.prune_tombstones();
        keys
    }

    /// Applies `cmd` at `index`, with `session_exists` telling whether a
    /// session is in the sessions table (for the lock verbs).
    pub(super) fn apply_with_sessions(
        &mut self,
        index: u64,
        cmd: &KvCommand,
        ctx: &dyn LockContext,
    ) -> CommandResult {
        let ok = match cmd {
            KvCommand::Set { key, value, flags } => {
                self.set(index, key, value.clone(), *flags);
                true
            }
            KvCommand::Cas {
                key,
                value,
                flags,
                index: expected,
            } => self.cas(index, key, value.clone(), *flags, *expected),
            KvCommand::Delete { key } => self.delete(index, key),
            KvCommand::DeleteCas {
                key,
                index: expected,
            } => self.delete_cas(index, key, *expected),
            KvCommand::DeleteTree { prefix } => self.delete_tree(index, prefix),
            KvCommand::Txn { ops } => {
                return CommandResult::Txn(self.txn_with_sessions(index, ops, ctx))
            }
            KvCommand::Lock {
                key,
                value,
                flags,
                session,
                checked_at,
            } => {
                if ctx.released_since(key, *checked_at) {
                    // An invalidation released the key after the leader
                    // checked its lock delay: the delay applies.
                    self.advance(index);
                    return CommandResult::Bool(false);
                }
                let exists = ctx.session_exists(session);
                match self.lock(index, key, value.clone(), *flags, session, exists) {
                    Ok(ok) => ok,
                    Err(e) => return CommandResult::Failed(e),
                }
            }
            KvCommand::Unlock {
                key,
                value,
                flags,
                session,
            } => match self.unlock(index, key, value.clone(), *flags, session) {
                Ok(ok) => ok,
                Err(e) => return CommandResult::Failed(e),
            },
        };
        CommandResult::Bool(ok)
    }

    /// Panics if the store is inconsistent: for every entry
    /// `0 < create_index <= modify_index <= table_index <= last_index`, the
    /// entry's key equals its map key, and a locked entry has a lock index.
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
            if e.session.is_some() && e.lock_index == 0 {
                return Err(format!("{key:?} is locked but has lock index 0"));
            }
        }
        if self.tombstones.len() > MAX_TOMBSTONES {
            return Err(format!(
                "{} tombstones, more than the {MAX_TOMBSTONES} kept",
                self.tombstones.len()
            ));
        }
        let newest = self.tombstones.values().copied().max().unwrap_or(0);
        if newest.max(self.tombstone_floor) > self.table_index {
            return Err(format!(
                "a tombstone at {} is after the table index {}",
                newest.max(self.tombstone_floor),
                self.table_index
            ));
        }
        if self.tombstones.values().any(|&i| i == 0) {
            return Err("a tombstone has index 0".into());
        }
        Ok(())
    }

    /// Removes `key`, leaving a tombstone at `index`; whether it was
    /// there. The caller moves the table index and then prunes.
    fn remove(&mut self, index: u64, key: &str) -> bool {
        if self.entries.remove(key).is_none() {
            return false;
        }
        self.recent.note(self.table_index, index, key);
        self.tombstones.insert(key.to_string(), index);
        true
    }

    /// Keeps the newest [`MAX_TOMBSTONES`] tombstones (by index, then key)
    /// and raises the floor to the highest one dropped.
    fn prune_tombstones(&mut self) {
        let excess = self.tombstones.len().saturating_sub(MAX_TOMBSTONES);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, &String)> =
            self.tombstones.iter().map(|(k, &i)| (i, k)).collect();
        by_age.sort_unstable();
        let dropped: Vec<(u64, String)> = by_age
            .into_iter()
            .take(excess)
            .map(|(i, k)| (i, k.clone()))
            .collect();
        for (i, key) in dropped {
            self.tombstones.remove(&key);
            self.tombstone_floor = self.tombstone_floor.max(i);
        }
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

    /// The commands of one batch share its index, so `index` may equal
    /// the last one; it never goes back.
    fn advance(&mut self, index: u64) {
        assert!(
            index >= self.last_index,
            "KV mutation at index {index} after index {}: Raft indexes must increase",
            self.last_index
        );
        self.last_index = index;
    }

    /// The write half of `set` and `cas`; the caller has called `advance`.
    fn write(&mut self, index: u64, key: &str, value: Vec<u8>, flags: u64) {
        self.recent.note(self.table_index, index, key);
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
                    session: None,
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

/// Smallest encoded entry: two empty strings' lengths and four `u64`s. An
/// entry count above `remaining / MIN_ENTRY_LEN` is refused before the
/// entries are read.
const MIN_ENTRY_LEN: usize = 4 + 4 + 4 * 8;

/// Bytes the KV section body is written out in: large enough that a
/// writer sees few calls, small enough that a gigabyte of state is never
/// a second gigabyte in memory.
const WRITE_BUFFER_LEN: usize = 1 << 20;

impl KvStore {
    /// The length [`KvStore::write_body`] writes, known before it writes
    /// (a section's header carries its body's length).
    pub(super) fn body_len(&self) -> u64 {
        let str32 = |s: &[u8]| 4 + s.len() as u64;
        let mut len = 3 * 8;
        for e in self.entries.values() {
            len += str32(e.key.as_bytes()) + str32(&e.value) + 4 * 8;
        }
        len += 8;
        for e in self.entries.values() {
            if let Some(session) = &e.session {
                len += str32(e.key.as_bytes()) + str32(session.as_bytes());
            }
        }
        len += 2 * 8;
        for key in self.tombstones.keys() {
            len += str32(key.as_bytes()) + 8;
        }
        len
    }

    /// Writes the section body to `out` a buffer at a time:
    ///
    /// ```text
    /// [table_index u64][last_index u64][entry count u64]
    /// entry × count, keys strictly increasing:
    ///   [key len u32][key UTF-8][value len u32][value]
    ///   [flags u64][create_index u64][modify_index u64][lock_index u64]
    /// [lock count u64] lock × count, keys strictly increasing:
    ///   [key len u32][key UTF-8][session len u32][session UTF-8]
    /// [tombstone floor u64][tombstone count u64] tombstone × count, keys
    /// strictly increasing:
    ///   [key len u32][key UTF-8][delete index u64]
    /// ```
    ///
    /// Older builds wrote no tombstones, and wrote the lock list only if
    /// some key was locked; both are read, and such a store is taken to
    /// have had deletes up to its table index.
    pub(super) fn write_body(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(WRITE_BUFFER_LEN);
        let spill = |buf: &mut Vec<u8>, out: &mut dyn std::io::Write| {
            if buf.len() < WRITE_BUFFER_LEN {
                return Ok(());
            }
            out.write_all(buf)?;
            buf.clear();
            Ok::<(), std::io::Error>(())
        };
        put_u64(&mut buf, self.table_index);
        put_u64(&mut buf, self.last_index);
        put_u64(&mut buf, self.entries.len() as u64);
        for e in self.entries.values() {
            put_bytes32(&mut buf, e.key.as_bytes());
            put_bytes32(&mut buf, &e.value);
            put_u64(&mut buf, e.flags);
            put_u64(&mut buf, e.create_index);
            put_u64(&mut buf, e.modify_index);
            put_u64(&mut buf, e.lock_index);
            spill(&mut buf, out)?;
        }
        let locked = self.entries.values().filter(|e| e.session.is_some());
        put_u64(&mut buf, locked.clone().count() as u64);
        for e in locked {
            put_bytes32(&mut buf, e.key.as_bytes());
            put_bytes32(
                &mut buf,
                e.session.as_deref().unwrap_or_default().as_bytes(),
            );
            spill(&mut buf, out)?;
        }
        put_u64(&mut buf, self.tombstone_floor);
        put_u64(&mut buf, self.tombstones.len() as u64);
        for (key, &i) in &self.tombstones {
            put_bytes32(&mut buf, key.as_bytes());
            put_u64(&mut buf, i);
        }
        out.write_all(&buf)
    }

    /// Reads a section body written by [`KvStore::write_body`] (or by an
    /// older build), from a slice or a stream alike.
    pub(super) fn read_body(r: &mut impl Input) -> Result<KvStore, String> {
        let table_index = r.u64_le(&|| "KV table index".into())?;
        let last_index = r.u64_le(&|| "KV last index".into())?;
        let count_at = r.offset();
        let count = r.u64_le(&|| "KV entry count".into())?;
        let max_count = r.remaining() / MIN_ENTRY_LEN;
        if count > max_count as u64 {
            return Err(format!(
                "at byte {count_at}: KV entry count {count} cannot fit in the {} bytes that \
                 remain (at most {max_count} entries)",
                r.remaining()
            ));
        }
        // Bounded by the input length just above.
        let mut entries: Vec<(String, KvEntry)> = Vec::with_capacity(count as usize);
        for i in 0..count {
            let key = r.string32(&|| format!("key of KV entry #{i}"))?;
            if let Some((prev, _)) = entries.last() {
                if *prev >= key {
                    return Err(format!(
                        "KV entry #{i}: key {key:?} does not follow {prev:?} (keys must be \
                         strictly increasing)"
                    ));
                }
            }
            let what = |field: &str| format!("{field} of KV key {key:?}");
            let value = r.vec32(&|| what("value"))?;
            let flags = r.u64_le(&|| what("flags"))?;
            let create_index = r.u64_le(&|| what("create index"))?;
            let modify_index = r.u64_le(&|| what("modify index"))?;
            let lock_index = r.u64_le(&|| what("lock index"))?;
            let entry = KvEntry {
                key: key.clone(),
                value,
                flags,
                create_index,
                modify_index,
                lock_index,
                session: None,
            };
            entries.push((key, entry));
        }
        let mut store = KvStore {
            // Sorted and unique (checked above), so `collect` builds the
            // tree in one pass.
            entries: entries.into_iter().collect(),
            table_index,
            last_index,
            tombstones: BTreeMap::new(),
            tombstone_floor: 0,
            recent: RecentChanges::default(),
        };
        if !r.is_empty() {
            let count_at = r.offset();
            let count = r.u64_le(&|| "KV lock count".into())?;
            if count > (r.remaining() / 8) as u64 || (count == 0 && r.is_empty()) {
                return Err(format!(
                    "at byte {count_at}: KV lock count {count} does not fit the {} bytes that \
                     remain (or is 0 with no tombstones after it, which older builds wrote \
                     as no lock list)",
                    r.remaining()
                ));
            }
            let mut previous = None;
            for i in 0..count {
                let key = next_key(r, &mut previous, &|| format!("KV lock #{i}"))?;
                let session = r.string32(&|| format!("session of KV lock #{i}"))?;
                let Some(entry) = store.entries.get_mut(&key) else {
                    return Err(format!(
                        "KV lock #{i} is for key {key:?}, which is not stored"
                    ));
                };
                entry.session = Some(session);
            }
        }
        if r.is_empty() {
            store.assume_unseen_deletes();
            return Ok(store);
        }
        store.tombstone_floor = r.u64_le(&|| "KV tombstone floor".into())?;
        let count_at = r.offset();
        let count = r.u64_le(&|| "KV tombstone count".into())?;
        if count > MAX_TOMBSTONES as u64 || count > (r.remaining() / 12) as u64 {
            return Err(format!(
                "at byte {count_at}: KV tombstone count {count} is above {MAX_TOMBSTONES} or \
                 does not fit the {} bytes that remain",
                r.remaining()
            ));
        }
        let mut previous = None;
        for i in 0..count {
            let key = next_key(r, &mut previous, &|| format!("KV tombstone #{i}"))?;
            let index = r.u64_le(&|| format!("index of KV tombstone {key:?}"))?;
            store.tombstones.insert(key, index);
        }
        Ok(store)
    }
}

impl TableState for KvStore {
    const TABLE: Table = Table::Kv;
    type Command = KvCommand;

    /// A KV store alone knows no sessions: every lock verb meets a
    /// session that does not exist. The state machine applies through
    /// [`KvStore::apply_with_sessions`].
    fn apply(&mut self, index: u64, cmd: &KvCommand) -> CommandResult {
        self.apply_with_sessions(index, cmd, &NoSessions)
    }

    fn table_index(&self) -> u64 {
        self.table_index
    }

    fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The same bytes the single-table state machine hashed, so digests of
    /// KV-only states did not change when tables arrived.
    fn digest(&self, h: &mut Fnv1a64) {
        h.u64(self.table_index);
        h.u64(self.last_index);
        h.u64(self.entries.len() as u64);
        for e in self.entries.values() {
            h.len_prefixed(e.key.as_bytes());
            h.len_prefixed(&e.value);
            h.u64(e.flags);
            h.u64(e.create_index);
            h.u64(e.modify_index);
            h.u64(e.lock_index);
            // Only locked entries add bytes, so digests of states without
            // locks are what they were before sessions existed.
            if let Some(session) = &e.session {
                h.bytes(b"locked-by");
                h.len_prefixed(session.as_bytes());
            }
        }
        // Tombstones are not hashed: they only shape the indexes reads
        // answer with, and replicas of builds from before them must keep
        // agreeing on the data.
    }

    /// The layout is on [`KvStore::write_body`].
    fn encode(&self, out: &mut Vec<u8>) {
        self.write_body(out)
            .expect("writing to a vector cannot fail");
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        KvStore::read_body(r)
    }

    fn validate(&self) -> Result<(), String> {
        KvStore::validate(self)
    }
}

/// Reads the key of the list item `what`, which must sort after the one
/// before it (`previous`).
fn next_key(
    r: &mut impl Input,
    previous: &mut Option<String>,
    what: &dyn Fn() -> String,
) -> Result<String, String> {
    let key = r.string32(&|| format!("key of {}", what()))?;
    if previous.as_ref().is_some_and(|p| *p >= key) {
        return Err(format!(
            "{}: key {key:?} does not follow {previous:?} (keys must be strictly increasing)",
            what()
        ));
    }
    *previous = Some(key.clone());
    Ok(key)
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

/// What the lock verbs need from the sessions table.
pub trait LockContext {
    /// Whether the session exists.
    fn session_exists(&self, id: &str) -> bool;
    /// Whether an invalidated session released `key` after the leader
    /// checked its lock delay at applied index `checked_at` (0: never
    /// checked, nothing to compare).
    fn released_since(&self, key: &str, checked_at: u64) -> bool;
}

/// No sessions at all: a KV store on its own.
pub struct NoSessions;

impl LockContext for NoSessions {
    fn session_exists(&self, _: &str) -> bool {
        false
    }

    fn released_since(&self, _: &str, _: u64) -> bool {
        false
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Consul's `kvsLockTxn` on one entry: the entry as locked by `session`
/// at `index` (value and flags still the old ones), `None` if another
/// session holds it, an error if the session does not exist.
pub(super) fn lock_entry(
    existing: Option<&KvEntry>,
    index: u64,
    key: &str,
    session: &str,
    session_exists: bool,
) -> Result<Option<KvEntry>, String> {
    if session.is_empty() {
        return Err("missing session".into());
    }
    if !session_exists {
        return Err(format!("invalid session {session:?}"));
    }
    let mut entry = match existing {
        Some(e) => {
            let mut e = e.clone();
            match e.session.as_deref() {
                Some(holder) if holder == session => {}
                Some(_) => return Ok(None),
                None => e.lock_index += 1,
            }
            e
        }
        None => KvEntry {
            key: key.to_string(),
            value: Vec::new(),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 1,
            session: None,
        },
    };
    entry.session = Some(session.to_string());
    entry.modify_index = index;
    Ok(Some(entry))
}

/// Consul's `kvsSetTxn` short-circuit for a lock: the holder re-acquiring
/// with the same value and flags changes nothing (no index moves, so
/// watchers of a leader key renewed in a loop are not woken).
pub(super) fn unchanged_relock(
    existing: Option<&KvEntry>,
    session: &str,
    value: &[u8],
    flags: u64,
) -> bool {
    existing.is_some_and(|e| {
        e.session.as_deref() == Some(session) && e.value == value && e.flags == flags
    })
}

/// Consul's `kvsUnlockTxn` on one entry: the entry as released at
/// `index`, `None` if it is absent or `session` does not hold it, an
/// error for an empty session.
pub(super) fn unlock_entry(
    existing: Option<&KvEntry>,
    index: u64,
    session: &str,
) -> Result<Option<KvEntry>, String> {
    if session.is_empty() {
        return Err("missing session".into());
    }
    let Some(e) = existing else {
        return Ok(None);
    };
    if e.session.as_deref() != Some(session) {
        return Ok(None);
    }
    let mut e = e.clone();
    e.session = None;
    e.modify_index = index;
    Ok(Some(e))
}

pub mod txn;

#[cfg(test)]
mod prefix_index_tests;
#[cfg(test)]
mod tests;
