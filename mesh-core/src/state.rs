//! The replicated state machine every server applies from the Raft log.
//! Applying the same commands gives the same state and the same digest on
//! every server.

use serde::{Deserialize, Serialize};

use crate::kv::KvStore;

/// A replicated command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `PUT /v1/kv/<key>`.
    KvSet {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Flags.
        flags: u64,
    },
    /// `PUT /v1/kv/<key>?cas=<index>`.
    KvCas {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Flags.
        flags: u64,
        /// Expected ModifyIndex (0: only if absent).
        index: u64,
    },
    /// `DELETE /v1/kv/<key>`.
    KvDelete {
        /// Key.
        key: String,
    },
    /// `DELETE /v1/kv/<key>?cas=<index>`.
    KvDeleteCas {
        /// Key.
        key: String,
        /// Expected ModifyIndex.
        index: u64,
    },
    /// `DELETE /v1/kv/<prefix>?recurse`.
    KvDeleteTree {
        /// Prefix.
        prefix: String,
    },
}

/// What applying a command returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Consul's `true`/`false` answer to KV writes.
    Bool(bool),
}

/// Why snapshot bytes could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot of ours.
    #[error("not a mesh state snapshot (bad magic)")]
    BadMagic,
    /// Written by a newer version.
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u8),
    /// Damaged or inconsistent content.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"MSSM";
const SNAPSHOT_VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: u64,
    kv: KvStore,
}

/// The state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    kv: KvStore,
    last_applied: u64,
}

impl StateMachine {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the command at Raft index `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> CommandResult {
        assert!(index > self.last_applied, "apply {index} after {}", self.last_applied);
        self.last_applied = index;
        let ok = match cmd {
            Command::KvSet { key, value, flags } => {
                self.kv.set(index, key, value.clone(), *flags);
                true
            }
            Command::KvCas {
                key,
                value,
                flags,
                index: expected,
            } => self.kv.cas(index, key, value.clone(), *flags, *expected),
            Command::KvDelete { key } => self.kv.delete(index, key),
            Command::KvDeleteCas { key, index: expected } => self.kv.delete_cas(index, key, *expected),
            Command::KvDeleteTree { prefix } => self.kv.delete_tree(index, prefix),
        };
        CommandResult::Bool(ok)
    }

    /// A log entry that changes no state (Raft blank or membership entry).
    pub fn skip(&mut self, index: u64) {
        assert!(index > self.last_applied, "skip {index} after {}", self.last_applied);
        self.last_applied = index;
    }

    /// Index of the last applied entry.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The KV table.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&SnapshotBody {
            last_applied: self.last_applied,
            kv: self.kv.clone(),
        })
        .expect("state serializes")
    }

    /// A deterministic digest of the whole state (FNV-1a over the
    /// canonical serialization: BTreeMaps serialize in key order).
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.body_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    /// The state as self-describing bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = SNAPSHOT_MAGIC.to_vec();
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.body_bytes());
        out
    }

    /// Rebuilds a state from [`StateMachine::snapshot`] bytes; never panics.
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        if bytes.len() < 5 || &bytes[..4] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if bytes[4] != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(bytes[4]));
        }
        let body: SnapshotBody =
            serde_json::from_slice(&bytes[5..]).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        body.kv.validate().map_err(SnapshotError::Malformed)?;
        if body.kv.table_index() > body.last_applied {
            return Err(SnapshotError::Malformed("table index after last applied".into()));
        }
        Ok(StateMachine {
            kv: body.kv,
            last_applied: body.last_applied,
        })
    }

    /// Internal consistency; panics on a violation.
    pub fn check_invariants(&self) {
        self.kv.check_invariants();
        assert!(self.kv.table_index() <= self.last_applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = Command> {
        let key = "[ab]/[xyz]";
        prop_oneof![
            (key, any::<Vec<u8>>(), any::<u64>()).prop_map(|(key, value, flags)| Command::KvSet { key, value, flags }),
            (key, any::<Vec<u8>>(), 0u64..30).prop_map(|(key, value, index)| Command::KvCas {
                key,
                value,
                flags: 0,
                index
            }),
            key.prop_map(|key| Command::KvDelete { key }),
            (key, 0u64..30).prop_map(|(key, index)| Command::KvDeleteCas { key, index }),
            "[ab]?/?".prop_map(|prefix| Command::KvDeleteTree { prefix }),
        ]
    }

    proptest! {
        #[test]
        fn same_commands_same_digest_and_snapshots_round_trip(
            cmds in proptest::collection::vec((command(), 1u64..4), 0..50)
        ) {
            let (mut a, mut b) = (StateMachine::new(), StateMachine::new());
            let mut index = 0;
            for (cmd, gap) in &cmds {
                index += gap;
                prop_assert_eq!(a.apply(index, cmd), b.apply(index, cmd));
                a.check_invariants();
            }
            prop_assert_eq!(a.digest(), b.digest());
            let restored = StateMachine::restore(&a.snapshot()).unwrap();
            prop_assert_eq!(restored.digest(), a.digest());
            prop_assert_eq!(&restored, &a);
        }

        #[test]
        fn restore_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StateMachine::restore(&bytes);
            let mut framed = b"MSSM\x01".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = StateMachine::restore(&framed);
        }
    }

    #[test]
    fn restore_rejects_inconsistent_state() {
        let mut sm = StateMachine::new();
        sm.apply(5, &Command::KvSet { key: "k".into(), value: vec![1], flags: 0 });
        let mut bytes = sm.snapshot();
        let text = String::from_utf8(bytes.split_off(5)).unwrap();
        let tampered = text.replace("\"last_applied\":5", "\"last_applied\":1");
        let mut bad = b"MSSM\x01".to_vec();
        bad.extend_from_slice(tampered.as_bytes());
        assert!(matches!(StateMachine::restore(&bad), Err(SnapshotError::Malformed(_))));
        assert_eq!(StateMachine::restore(b"nope"), Err(SnapshotError::BadMagic));
    }
}
