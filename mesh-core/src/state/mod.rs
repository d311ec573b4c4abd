//! The replicated state machine every server applies from the Raft log.
//!
//! Determinism is the whole contract: servers that applied the same log
//! prefix hold equal [`StateMachine`]s and report equal [`StateMachine::digest`]s
//! (Raft paper §5.4.3, State Machine Safety), whether they got there by
//! applying entries or by restoring a snapshot and applying the rest.
//!
//! # Snapshot format
//!
//! ```text
//! [magic: "MSSM"][version: u8 = 1][JSON: {"last_applied": u64, "kv": KvStore}]
//! ```
//!
//! The magic and version come first so a reader can tell "not ours" and "from
//! a newer build" apart from damage before parsing anything. Unknown JSON
//! fields are rejected rather than ignored: a field this build does not know
//! is state it would silently drop. Adding state therefore means bumping
//! [`SNAPSHOT_VERSION`].

use crate::hash::Fnv1a64;
use serde::{Deserialize, Serialize};

pub mod kv;

use kv::{base64_bytes, KvStore};

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"MSSM";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u8 = 1;

/// A replicated command: one Raft log entry's worth of state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `PUT /v1/kv/<key>`. Result: always `Bool(true)`.
    KvSet {
        /// The key.
        key: String,
        /// The value (base64 in JSON, to keep log entries compact).
        #[serde(with = "base64_bytes")]
        value: Vec<u8>,
        /// Opaque client flags.
        flags: u64,
    },
    /// `PUT /v1/kv/<key>?cas=<index>`. Result: whether the write happened.
    KvCas {
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
    KvDelete {
        /// The key.
        key: String,
    },
    /// `DELETE /v1/kv/<key>?cas=<index>`. Result: see [`KvStore::delete_cas`]
    /// (true if the key is gone afterwards for a matching or absent key).
    KvDeleteCas {
        /// The key.
        key: String,
        /// Expected ModifyIndex.
        index: u64,
    },
    /// `DELETE /v1/kv/<prefix>?recurse`. Result: always `Bool(true)`.
    KvDeleteTree {
        /// Every key starting with this is deleted; "" deletes all keys.
        prefix: String,
    },
}

impl Command {
    /// An upper bound on the size of this command in the wire's JSON
    /// encoding, computed without encoding it. Replication uses it to keep
    /// each AppendEntries batch within a byte budget.
    pub fn encoded_len_bound(&self) -> usize {
        // JSON may escape each key byte as `\u00XX` (6 bytes); base64 takes
        // 4 bytes per 3; the rest (field names, numbers, braces) is small.
        const OVERHEAD: usize = 160;
        let key_bound = |k: &str| k.len() * 6;
        let value_bound = |v: &[u8]| v.len().div_ceil(3) * 4;
        OVERHEAD
            + match self {
                Command::KvSet { key, value, .. } | Command::KvCas { key, value, .. } => {
                    key_bound(key) + value_bound(value)
                }
                Command::KvDelete { key } | Command::KvDeleteCas { key, .. } => key_bound(key),
                Command::KvDeleteTree { prefix } => key_bound(prefix),
            }
    }
}

/// What applying a command returned to the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Consul's `true`/`false` body for KV writes.
    Bool(bool),
}

/// Why [`StateMachine::restore`] rejected some bytes. Every variant means the
/// bytes cannot become this server's state; nothing already applied is
/// touched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes do not start with [`SNAPSHOT_MAGIC`].
    #[error("not a mesh state machine snapshot (bad magic): the data is from another program or damaged")]
    BadMagic,
    /// Written in a format version this build does not read.
    #[error(
        "snapshot format version {0} is not supported (this build reads version {SNAPSHOT_VERSION}); \
         run the same release on every server"
    )]
    UnsupportedVersion(u8),
    /// Right header, but the body does not parse or describes an
    /// inconsistent state.
    #[error("snapshot is damaged: {0}")]
    Malformed(String),
}

/// Snapshot body as written; borrows so `snapshot` does not clone the state.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    last_applied: u64,
    kv: &'a KvStore,
}

/// Snapshot body as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    last_applied: u64,
    kv: KvStore,
}

/// The replicated state: the KV table and how far into the log it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    kv: KvStore,
    last_applied: u64,
}

impl StateMachine {
    /// The empty state, before any log entry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the command of the log entry at `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not above [`StateMachine::last_applied`]: Raft applies
    /// each entry once, in order, so anything else is a bug in the caller.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> CommandResult {
        self.advance(index);
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
            Command::KvDeleteCas {
                key,
                index: expected,
            } => self.kv.delete_cas(index, key, *expected),
            Command::KvDeleteTree { prefix } => self.kv.delete_tree(index, prefix),
        };
        CommandResult::Bool(ok)
    }

    /// Records a log entry that changes no state (Raft blank or membership
    /// entries): only [`StateMachine::last_applied`] moves.
    ///
    /// # Panics
    ///
    /// As [`StateMachine::apply`].
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    /// Raft index of the last applied or skipped entry; 0 before any.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The KV table.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// A 64-bit digest of the whole state, equal for equal states on every
    /// machine, build and run.
    ///
    /// FNV-1a over a hand-written canonical encoding (fixed-width
    /// little-endian integers, length-prefixed strings and byte strings,
    /// entries in key order), not over the snapshot JSON: the digest must not
    /// change when a serde or serde_json upgrade changes formatting. It is a
    /// checksum for comparing replicas, not a cryptographic hash.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv1a64::new();
        h.bytes(b"mesh-core/state/v1");
        h.u64(self.last_applied);
        h.u64(self.kv.table_index());
        h.u64(self.kv.last_index());
        h.u64(self.kv.len() as u64);
        for e in self.kv.iter() {
            h.len_prefixed(e.key.as_bytes());
            h.len_prefixed(&e.value);
            h.u64(e.flags);
            h.u64(e.create_index);
            h.u64(e.modify_index);
            h.u64(e.lock_index);
        }
        h.finish()
    }

    /// The whole state as self-describing bytes (see the module docs);
    /// [`StateMachine::restore`] turns them back into an equal state.
    pub fn snapshot(&self) -> Vec<u8> {
        let body = SnapshotBodyRef {
            last_applied: self.last_applied,
            kv: &self.kv,
        };
        let mut out = SNAPSHOT_MAGIC.to_vec();
        out.push(SNAPSHOT_VERSION);
        // Strings, integers and string-keyed maps always serialize.
        serde_json::to_writer(&mut out, &body).expect("state machine serializes to JSON");
        out
    }

    /// Rebuilds a state from [`StateMachine::snapshot`] bytes.
    ///
    /// The bytes come from disk or from the leader, so they are input, not
    /// trusted state: this never panics, and a decoded state that breaks an
    /// invariant is [`SnapshotError::Malformed`] rather than an assertion.
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        let rest = bytes
            .strip_prefix(SNAPSHOT_MAGIC.as_slice())
            .ok_or(SnapshotError::BadMagic)?;
        let (&version, json) = rest.split_first().ok_or_else(|| {
            SnapshotError::Malformed("truncated after the magic, no version byte".into())
        })?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let body: SnapshotBody =
            serde_json::from_slice(json).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        let sm = StateMachine {
            kv: body.kv,
            last_applied: body.last_applied,
        };
        sm.validate().map_err(SnapshotError::Malformed)?;
        Ok(sm)
    }

    /// Panics if the state is inconsistent: the KV table's own invariants,
    /// and no KV write after [`StateMachine::last_applied`].
    pub fn check_invariants(&self) {
        if let Err(violation) = self.validate() {
            panic!("StateMachine invariant violated: {violation}");
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.kv.validate()?;
        if self.kv.last_index() > self.last_applied {
            return Err(format!(
                "KV table saw index {} but the state machine applied only up to {}",
                self.kv.last_index(),
                self.last_applied
            ));
        }
        Ok(())
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index > self.last_applied,
            "log entry {index} applied after entry {}: entries must be applied once, in order",
            self.last_applied
        );
        self.last_applied = index;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn encoded_len_bound_is_an_upper_bound() {
        let cmds = [
            Command::KvSet {
                key: "k\u{0}\"\\é".into(),
                value: vec![0xff; 1000],
                flags: u64::MAX,
            },
            Command::KvCas {
                key: String::new(),
                value: Vec::new(),
                flags: 0,
                index: u64::MAX,
            },
            Command::KvDelete {
                key: "\n".repeat(50),
            },
            Command::KvDeleteCas {
                key: "a".into(),
                index: u64::MAX,
            },
            Command::KvDeleteTree {
                prefix: "p/".into(),
            },
        ];
        for cmd in cmds {
            let len = serde_json::to_vec(&cmd).unwrap().len();
            assert!(len <= cmd.encoded_len_bound(), "{cmd:?}: {len}");
        }
    }

    use super::*;

    fn set(key: &str, value: &[u8]) -> Command {
        Command::KvSet {
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
        }
    }

    /// A small state touching every command, for the fixed-value tests.
    fn sample() -> StateMachine {
        let mut sm = StateMachine::new();
        sm.skip(1);
        sm.apply(2, &set("a/x", b"1"));
        sm.apply(3, &set("a/y", b""));
        sm.apply(
            4,
            &Command::KvCas {
                key: "b".into(),
                value: vec![0, 255],
                flags: 42,
                index: 0,
            },
        );
        sm.apply(
            5,
            &Command::KvDeleteCas {
                key: "a/x".into(),
                index: 2,
            },
        );
        sm.apply(6, &Command::KvDelete { key: "nope".into() });
        sm.apply(
            7,
            &Command::KvDeleteTree {
                prefix: "zz".into(),
            },
        );
        sm.check_invariants();
        sm
    }

    #[test]
    fn apply_returns_consul_answers() {
        let mut sm = StateMachine::new();
        assert_eq!(sm.apply(1, &set("k", b"v")), CommandResult::Bool(true));
        let cas = |index| Command::KvCas {
            key: "k".into(),
            value: b"w".to_vec(),
            flags: 0,
            index,
        };
        assert_eq!(sm.apply(2, &cas(0)), CommandResult::Bool(false));
        assert_eq!(sm.apply(3, &cas(1)), CommandResult::Bool(true));
        let del_cas = |index| Command::KvDeleteCas {
            key: "k".into(),
            index,
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
        sm.check_invariants();
    }

    #[test]
    fn skip_moves_only_last_applied() {
        let mut sm = sample();
        let kv_before = sm.kv().clone();
        sm.skip(10);
        assert_eq!(sm.last_applied(), 10);
        assert_eq!(sm.kv(), &kv_before);
        sm.check_invariants();
    }

    #[test]
    #[should_panic(expected = "applied once, in order")]
    fn applying_an_old_index_is_a_bug() {
        let mut sm = sample();
        sm.apply(7, &set("k", b"v"));
    }

    /// Pins the digest so a change to the encoding (or to FNV constants) is a
    /// deliberate, visible decision: replicas running different builds during
    /// a rolling upgrade compare these values. The expected values were
    /// computed independently (a 20-line Python FNV-1a over the documented
    /// encoding), not copied from this implementation.
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
                &Command::KvSet {
                    key: key.into(),
                    value: value.to_vec(),
                    flags,
                },
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

    #[test]
    fn snapshot_round_trips_and_is_self_describing() {
        let sm = sample();
        let bytes = sm.snapshot();
        assert!(bytes.starts_with(b"MSSM\x01{"));
        let back = StateMachine::restore(&bytes).unwrap();
        assert_eq!(back, sm);
        assert_eq!(back.digest(), sm.digest());
        assert_eq!(
            StateMachine::restore(&StateMachine::new().snapshot()),
            Ok(StateMachine::new())
        );
    }

    #[test]
    fn restore_classifies_bad_input() {
        assert_eq!(StateMachine::restore(b""), Err(SnapshotError::BadMagic));
        assert_eq!(StateMachine::restore(b"MSS"), Err(SnapshotError::BadMagic));
        assert_eq!(
            StateMachine::restore(b"{\"last_applied\":0}"),
            Err(SnapshotError::BadMagic)
        );
        assert!(matches!(
            StateMachine::restore(b"MSSM"),
            Err(SnapshotError::Malformed(_))
        ));
        assert_eq!(
            StateMachine::restore(b"MSSM\x02{}"),
            Err(SnapshotError::UnsupportedVersion(2))
        );
        assert!(matches!(
            StateMachine::restore(b"MSSM\x01{}"),
            Err(SnapshotError::Malformed(_))
        ));

        let good = sample().snapshot();
        let truncated = &good[..good.len() - 1];
        assert!(matches!(
            StateMachine::restore(truncated),
            Err(SnapshotError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"x");
        assert!(matches!(
            StateMachine::restore(&trailing),
            Err(SnapshotError::Malformed(_))
        ));
    }

    #[test]
    fn restore_rejects_unknown_fields() {
        let text = String::from_utf8(sample().snapshot()).unwrap();
        let extra = text.replacen("{\"last_applied\"", "{\"services\":[],\"last_applied\"", 1);
        let err = StateMachine::restore(extra.as_bytes()).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Malformed(ref m) if m.contains("services")),
            "{err}"
        );
    }

    /// Consistent JSON describing an impossible state must be refused, not
    /// asserted on: `last_applied` below the KV table's indexes.
    #[test]
    fn restore_rejects_inconsistent_state() {
        let text = String::from_utf8(sample().snapshot()).unwrap();
        let rewound = text.replace("\"last_applied\":7", "\"last_applied\":3");
        assert_ne!(rewound, text);
        let err = StateMachine::restore(rewound.as_bytes()).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Malformed(ref m) if m.contains("applied only up to 3")),
            "{err}"
        );

        let forged = text.replace("\"create_index\":4", "\"create_index\":5");
        assert_ne!(forged, text);
        assert!(matches!(
            StateMachine::restore(forged.as_bytes()),
            Err(SnapshotError::Malformed(_))
        ));
    }

    #[test]
    fn command_json_carries_values_as_base64() {
        let json = serde_json::to_string(&set("k", b"bar")).unwrap();
        assert_eq!(json, r#"{"KvSet":{"key":"k","value":"YmFy","flags":0}}"#);
        assert_eq!(
            serde_json::from_str::<Command>(&json).unwrap(),
            set("k", b"bar")
        );
    }
}
