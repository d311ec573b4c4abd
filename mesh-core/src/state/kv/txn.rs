//! `PUT /v1/txn`: several KV operations applied atomically in one Raft
//! entry, with Consul's verbs, results and errors.
//!
//! The operations run in order against an overlay of the store (the keys
//! they touched, with their new state); only if every one succeeds is the
//! overlay written to the store, at the entry's index. A failed
//! transaction changes nothing (not even the table index) and reports each
//! failed operation by its position, as Consul's `Errors` do.
//!
//! The session verbs (`lock`, `unlock`, `check-session`) follow
//! `PUT /v1/kv/<key>?acquire=` and `?release=`. The leader's lock delay is
//! checked before the transaction is proposed, as for `?acquire`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{base64_bytes, KvEntry, KvStore};

/// Consul's limit on operations per transaction.
pub const MAX_TXN_OPS: usize = 64;

/// One KV operation (Consul's `KVTxnOp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOp {
    /// `set`, `cas`, `get`, `get-tree`, `check-index`, `check-not-exists`,
    /// `delete`, `delete-tree`, `delete-cas`, and the session verbs.
    pub verb: String,
    /// The key (the prefix for the tree verbs).
    pub key: String,
    /// The value for `set` and `cas` (base64 in JSON).
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// Flags for `set` and `cas`.
    pub flags: u64,
    /// The expected modify index for `cas`, `delete-cas`, `check-index`.
    pub index: u64,
    /// The session for `lock`, `unlock` and `check-session`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// For `lock`: the applied index at which the leader found the key
    /// outside any lock delay (0: not checked; see `KvCommand::Lock`).
    #[serde(default, skip_serializing_if = "super::is_zero")]
    pub checked_at: u64,
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    /// Every operation succeeded and was applied: one result list entry
    /// per operation that returns one (Consul's `Results`).
    Committed(Vec<TxnResult>),
    /// Nothing was applied; the failed operations (Consul's `Errors`).
    RolledBack(Vec<TxnError>),
}

/// One result: the entry an operation read or wrote. Writes report the
/// entry without its value, as Consul does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// The entry.
    pub entry: KvEntry,
    /// Whether its value is part of the result (reads only).
    pub with_value: bool,
}

/// One failed operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    /// Its position in the transaction.
    pub op_index: usize,
    /// Why, in Consul's words where it has them.
    pub what: String,
}

/// The keys a transaction touched: `None` for deleted.
struct Overlay<'a> {
    store: &'a KvStore,
    changes: BTreeMap<String, Option<KvEntry>>,
}

impl Overlay<'_> {
    fn get(&self, key: &str) -> Option<KvEntry> {
        match self.changes.get(key) {
            Some(change) => change.clone(),
            None => self.store.get(key).cloned(),
        }
    }

    /// Every live key under `prefix`, store and overlay merged, in order.
    fn under(&self, prefix: &str) -> Vec<KvEntry> {
        let mut merged: BTreeMap<String, KvEntry> = self
            .store
            .list(prefix)
            .into_iter()
            .map(|e| (e.key.clone(), e.clone()))
            .collect();
        for (k, change) in self.changes.range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        )) {
            if !k.starts_with(prefix) {
                break;
            }
            match change {
                Some(e) => merged.insert(k.clone(), e.clone()),
                None => merged.remove(k),
            };
        }
        merged.into_values().collect()
    }

    fn write(&mut self, index: u64, op: &TxnOp) -> KvEntry {
        let entry = match self.get(&op.key) {
            Some(mut e) => {
                e.value = op.value.clone();
                e.flags = op.flags;
                e.modify_index = index;
                e
            }
            None => KvEntry {
                key: op.key.clone(),
                value: op.value.clone(),
                flags: op.flags,
                create_index: index,
                modify_index: index,
                lock_index: 0,
                session: None,
            },
        };
        self.changes.insert(op.key.clone(), Some(entry.clone()));
        entry
    }

    /// Stores `entry` (already stamped) with the op's value and flags.
    fn put(&mut self, mut entry: KvEntry, op: &TxnOp) -> KvEntry {
        entry.value = op.value.clone();
        entry.flags = op.flags;
        self.changes.insert(op.key.clone(), Some(entry.clone()));
        entry
    }
}

/// Runs `ops` at `index`: the outcome, and the changes to write if it
/// committed.
pub(super) fn run(
    store: &KvStore,
    index: u64,
    ops: &[TxnOp],
    ctx: &dyn super::LockContext,
) -> (TxnOutcome, BTreeMap<String, Option<KvEntry>>) {
    let mut o = Overlay {
        store,
        changes: BTreeMap::new(),
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    if ops.len() > MAX_TXN_OPS {
        errors.push(TxnError {
            op_index: 0,
            what: format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        });
    }
    for (i, op) in ops.iter().enumerate() {
        let fail = |what: String| TxnError { op_index: i, what };
        let current = o.get(&op.key);
        let outcome: Result<Vec<TxnResult>, TxnError> = match op.verb.as_str() {
            "set" => Ok(vec![written(o.write(index, op))]),
            "cas" => {
                let ok = match &current {
                    None => op.index == 0,
                    Some(e) => e.modify_index == op.index,
                };
                if ok {
                    Ok(vec![written(o.write(index, op))])
                } else {
                    Err(fail(format!(
                        "failed to set key {:?}, index is stale",
                        op.key
                    )))
                }
            }
            "get" => match current {
                Some(e) => Ok(vec![TxnResult {
                    entry: e,
                    with_value: true,
                }]),
                None => Err(fail(format!("key {:?} doesn't exist", op.key))),
            },
            "get-tree" => Ok(o
                .under(&op.key)
                .into_iter()
                .map(|entry| TxnResult {
                    entry,
                    with_value: true,
                })
                .collect()),
            "check-index" => match current {
                Some(e) if e.modify_index == op.index => Ok(vec![written(e)]),
                Some(e) => Err(fail(format!(
                    "current modify index {} != {}",
                    e.modify_index, op.index
                ))),
                None => Err(fail(format!("key {:?} doesn't exist", op.key))),
            },
            "check-not-exists" => match current {
                Some(_) => Err(fail(format!("key {:?} exists", op.key))),
                None => Ok(Vec::new()),
            },
            "delete" => {
                o.changes.insert(op.key.clone(), None);
                Ok(Vec::new())
            }
            "delete-tree" => {
                for e in o.under(&op.key) {
                    o.changes.insert(e.key, None);
                }
                Ok(Vec::new())
            }
            "delete-cas" => match current {
                None => Ok(Vec::new()),
                Some(e) if e.modify_index == op.index => {
                    o.changes.insert(op.key.clone(), None);
                    Ok(Vec::new())
                }
                Some(_) => Err(fail(format!(
                    "failed to delete key {:?}, index is stale",
                    op.key
                ))),
            },
            "lock" if ctx.released_since(&op.key, op.checked_at) => Err(fail(format!(
                "failed to lock key {:?} due to lock delay",
                op.key
            ))),
            "lock"
                if ctx.session_exists(&op.session)
                    && super::unchanged_relock(
                        current.as_ref(),
                        &op.session,
                        &op.value,
                        op.flags,
                    ) =>
            {
                Ok(vec![written(current.clone().expect("a held key exists"))])
            }
            "lock" => {
                let exists = ctx.session_exists(&op.session);
                match super::lock_entry(current.as_ref(), index, &op.key, &op.session, exists) {
                    Ok(Some(entry)) => Ok(vec![written(o.put(entry, op))]),
                    Ok(None) => Err(fail(format!(
                        "failed to lock key {:?}, lock is already held",
                        op.key
                    ))),
                    Err(e) => Err(fail(e)),
                }
            }
            "unlock" => match super::unlock_entry(current.as_ref(), index, &op.session) {
                Ok(Some(entry)) => Ok(vec![written(o.put(entry, op))]),
                Err(e) => Err(fail(e)),
                Ok(None) => Err(fail(format!(
                    "failed to unlock key {:?}, lock isn't held, or is held by another session",
                    op.key
                ))),
            },
            // An empty session checks that the key is unlocked.
            "check-session" => match current {
                Some(e) if e.session.as_deref().unwrap_or("") == op.session => Ok(vec![written(e)]),
                Some(e) => Err(fail(format!(
                    "failed session check for key {:?}, current session {:?} != {:?}",
                    op.key,
                    e.session.unwrap_or_default(),
                    op.session
                ))),
                None => Err(fail(format!(
                    "failed to check session, key {:?} doesn't exist",
                    op.key
                ))),
            },
            other => Err(fail(format!("unknown KV verb {other:?}"))),
        };
        match outcome {
            Ok(r) => results.extend(r),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        (TxnOutcome::Committed(results), o.changes)
    } else {
        (TxnOutcome::RolledBack(errors), BTreeMap::new())
    }
}

fn written(entry: KvEntry) -> TxnResult {
    TxnResult {
        entry,
        with_value: false,
    }
}
