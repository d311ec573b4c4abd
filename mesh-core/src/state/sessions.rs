//! The sessions table: Consul's sessions, the owners of KV locks.
//!
//! A session belongs to a node and names health checks (by default the
//! node's `serfHealth`); it is invalidated when it is destroyed, when its
//! node leaves the catalog, when one of its checks turns critical or is
//! removed, or when its TTL runs out without a renewal (decided by the
//! leader, see [`crate::session_ttl`]). Invalidating a session releases
//! (or, with `Behavior: delete`, deletes) every key it locked; those
//! cross-table effects live in [`super::locks`], this file keeps the rows.
//!
//! A session's ID is chosen by the agent that created it (a random UUID)
//! and travels in the command, so every replica stores the same one and a
//! replay of the log gives the same IDs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::binary::{put_bytes32, Reader};
use super::{CommandResult, Table, TableState};
use crate::hash::Fnv1a64;

/// Consul's default `LockDelay`.
pub const DEFAULT_LOCK_DELAY_NS: u64 = 15_000_000_000;
/// Consul's largest effective `LockDelay` (`MaxLockDelay`, 60 s): a
/// longer one is stored as given and capped when it takes effect.
pub const MAX_LOCK_DELAY_NS: u64 = 60_000_000_000;
/// Consul's shortest session TTL (`SessionTTLMin`, 10 s).
pub const TTL_MIN_MS: u64 = 10_000;
/// Consul's longest session TTL (`SessionTTLMax`, 24 h).
pub const TTL_MAX_MS: u64 = 86_400_000;
/// The leader invalidates a session this many TTLs after its last renewal
/// (Consul's `SessionTTLMultiplier`): the grace that makes a client that
/// renews once per TTL safe against delays and clock drift.
pub const TTL_MULTIPLIER: u64 = 2;

/// What invalidating a session does to the keys it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behavior {
    /// Unlock them (Consul's default).
    #[default]
    Release,
    /// Delete them.
    Delete,
}

impl Behavior {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }

    /// Consul's spelling back; `None` for anything else.
    pub fn parse(s: &str) -> Option<Behavior> {
        match s {
            "release" => Some(Behavior::Release),
            "delete" => Some(Behavior::Delete),
            _ => None,
        }
    }
}

/// One session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// A UUID, chosen by the creating agent.
    pub id: String,
    /// Free text.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// How long the keys it held stay unlockable after it is invalidated
    /// (at most [`MAX_LOCK_DELAY_NS`] takes effect), in nanoseconds as
    /// Consul keeps it.
    pub lock_delay_ns: u64,
    /// What invalidation does to its keys.
    pub behavior: Behavior,
    /// The TTL as the client wrote it (a Go duration, `"30s"`; Consul
    /// echoes it verbatim); empty or zero: no TTL. Otherwise the client
    /// promises a renewal at least this often.
    pub ttl: String,
    /// Checks of its node that must not turn critical.
    pub node_checks: Vec<String>,
    /// Service checks of its node that must not turn critical.
    pub service_checks: Vec<String>,
    /// Raft index of its creation.
    pub create_index: u64,
    /// Raft index of its last change (equal to `create_index`: sessions
    /// never change, they are created and destroyed).
    pub modify_index: u64,
}

impl Session {
    /// The TTL in milliseconds; 0 for none (or for a TTL that does not
    /// parse, which the create refuses).
    pub fn ttl_ms(&self) -> u64 {
        ttl_ms(&self.ttl).unwrap_or(0)
    }

    /// Every check the session depends on, node checks first.
    pub fn checks(&self) -> impl Iterator<Item = &str> {
        self.node_checks
            .iter()
            .chain(&self.service_checks)
            .map(String::as_str)
    }
}

/// A command that changes the sessions table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCommand {
    /// `PUT /v1/session/create`. Result: `Bool(true)`, or `Failed` naming
    /// why (an unknown node, a missing or critical check, an ID in use);
    /// the indexes in the session are set by the apply.
    #[serde(rename = "SessionCreate")]
    Create(Box<Session>),
    /// `PUT /v1/session/destroy/:id`, or the leader's TTL verdict. Result:
    /// `Bool(true)`, whether or not the session existed (as Consul).
    #[serde(rename = "SessionDestroy")]
    Destroy {
        /// The session.
        id: String,
    },
}

impl SessionCommand {
    /// The JSON names of the variants, the keys `Command` dispatches on.
    pub const JSON_NAMES: &'static [&'static str] = &["SessionCreate", "SessionDestroy"];

    /// An upper bound on the JSON encoding's length (sessions are small).
    pub fn encoded_len_bound(&self) -> usize {
        serde_json::to_vec(self).map_or(usize::MAX, |v| v.len())
    }
}

/// How many log entries back the table remembers which keys invalidated
/// sessions released (see [`SessionTable::released_since`]). A lock whose
/// delay check is older than that is refused: the leader checks right
/// before proposing, so a check this stale means a badly stuck proposal.
pub const RELEASE_MEMORY: u64 = 100_000;

/// Every session, by ID, and the keys invalidated sessions released
/// lately.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    sessions: BTreeMap<String, Session>,
    /// Key → index of the latest invalidation that released it, for
    /// entries within [`RELEASE_MEMORY`] of the newest.
    released: BTreeMap<String, u64>,
    /// Releases below this index were forgotten.
    forgotten_below: u64,
    table_index: u64,
    last_index: u64,
}

/// The snapshot image: indexes, every session in ID order, and the
/// remembered releases.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    table_index: u64,
    last_index: u64,
    sessions: Vec<Session>,
    #[serde(default)]
    released: BTreeMap<String, u64>,
    #[serde(default)]
    forgotten_below: u64,
}

impl SessionTable {
    /// The session with this ID.
    pub fn get(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// Every session, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// The sessions of `node`, in ID order.
    pub fn of_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Session> {
        self.sessions.values().filter(move |s| s.node == node)
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True if there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether the table was ever written (an unwritten table has no
    /// snapshot section and feeds nothing to the digest).
    pub fn is_pristine(&self) -> bool {
        *self == SessionTable::default()
    }

    /// Records the command at `index`. Cascades (a catalog write that
    /// invalidates several sessions) reach the table more than once at one
    /// index, so equal indexes are allowed here.
    pub(super) fn touch(&mut self, index: u64) {
        assert!(
            index >= self.last_index,
            "Sessions write at index {index} after index {}: Raft indexes must increase",
            self.last_index
        );
        self.last_index = index;
    }

    /// Inserts `session` as created at `index`; the caller validated it
    /// against the catalog.
    pub(super) fn insert(&mut self, index: u64, session: &Session) -> Result<(), String> {
        self.touch(index);
        if self.sessions.contains_key(&session.id) {
            return Err(format!("Session ID {:?} is already in use", session.id));
        }
        let mut s = session.clone();
        s.create_index = index;
        s.modify_index = index;
        self.sessions.insert(s.id.clone(), s);
        self.table_index = index;
        Ok(())
    }

    /// An invalidated session released (or deleted) `key` at `index`.
    pub(super) fn record_release(&mut self, index: u64, key: &str) {
        self.released.insert(key.to_string(), index);
    }

    /// Forgets releases older than [`RELEASE_MEMORY`] entries once the
    /// record grows, so it stays small without a clock. Called once per
    /// invalidation (not per key: a session holding many keys would make
    /// it quadratic).
    pub(super) fn forget_old_releases(&mut self, index: u64) {
        if self.released.len() > 1024 {
            let horizon = index.saturating_sub(RELEASE_MEMORY);
            self.released.retain(|_, at| *at >= horizon);
            self.forgotten_below = self.forgotten_below.max(horizon);
        }
    }

    /// Whether an invalidation released `key` after a lock-delay check at
    /// applied index `checked_at`, or the check is too old to tell (both
    /// refuse the lock). An unchecked lock (0) is never refused here.
    pub fn released_since(&self, key: &str, checked_at: u64) -> bool {
        checked_at != 0
            && (checked_at < self.forgotten_below
                || self.released.get(key).is_some_and(|at| *at > checked_at))
    }

    /// Removes the session; what it was, if it existed.
    pub(super) fn remove(&mut self, index: u64, id: &str) -> Option<Session> {
        self.touch(index);
        let gone = self.sessions.remove(id);
        if gone.is_some() {
            self.table_index = index;
        }
        gone
    }
}

impl TableState for SessionTable {
    const TABLE: Table = Table::Sessions;
    type Command = SessionCommand;

    /// The table's own half of a command: the row. The state machine
    /// routes session commands through [`super::locks`] instead, which
    /// checks the catalog first and releases the keys afterwards.
    fn apply(&mut self, index: u64, cmd: &SessionCommand) -> CommandResult {
        assert!(
            index > self.last_index,
            "Sessions write at index {index} after index {}: Raft indexes must increase",
            self.last_index
        );
        match cmd {
            SessionCommand::Create(s) => match self.insert(index, s) {
                Ok(()) => CommandResult::Bool(true),
                Err(e) => CommandResult::Failed(e),
            },
            SessionCommand::Destroy { id } => {
                self.remove(index, id);
                CommandResult::Bool(true)
            }
        }
    }

    fn table_index(&self) -> u64 {
        self.table_index
    }

    fn last_index(&self) -> u64 {
        self.last_index
    }

    fn digest(&self, h: &mut Fnv1a64) {
        super::digest_encoded(self, h);
    }

    /// `[JSON length u32][JSON of the indexes and every session in ID
    /// order]`.
    fn encode(&self, out: &mut Vec<u8>) {
        let image = Image {
            table_index: self.table_index,
            last_index: self.last_index,
            sessions: self.sessions.values().cloned().collect(),
            released: self.released.clone(),
            forgotten_below: self.forgotten_below,
        };
        let json = serde_json::to_vec(&image).expect("sessions serialize");
        put_bytes32(out, &json);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let json = r.bytes32(&|| "sessions JSON".into())?;
        let image: Image =
            serde_json::from_slice(json).map_err(|e| format!("sessions JSON: {e}"))?;
        let mut t = SessionTable {
            table_index: image.table_index,
            last_index: image.last_index,
            released: image.released,
            forgotten_below: image.forgotten_below,
            ..SessionTable::default()
        };
        for s in image.sessions {
            if t.sessions.insert(s.id.clone(), s).is_some() {
                return Err("a session appears twice".into());
            }
        }
        Ok(t)
    }

    fn validate(&self) -> Result<(), String> {
        if self.table_index > self.last_index {
            return Err(format!(
                "table index {} is above the last applied index {}",
                self.table_index, self.last_index
            ));
        }
        if let Some((key, at)) = self.released.iter().find(|(_, at)| **at > self.last_index) {
            return Err(format!(
                "key {key:?} was released at index {at}, after the last applied index {}",
                self.last_index
            ));
        }
        for (id, s) in &self.sessions {
            if s.id != *id {
                return Err(format!("session {:?} is stored under {id:?}", s.id));
            }
            if s.create_index == 0 || s.create_index > s.modify_index {
                return Err(format!(
                    "session {id:?} has create index {} and modify index {}",
                    s.create_index, s.modify_index
                ));
            }
            if s.modify_index > self.table_index {
                return Err(format!(
                    "session {id:?} was modified at {}, after the table index {}",
                    s.modify_index, self.table_index
                ));
            }
            ttl_ms(&s.ttl).map_err(|e| format!("session {id:?}: {e}"))?;
        }
        Ok(())
    }
}

/// A session TTL in milliseconds (0: none), or Consul's error for it:
/// `"Session TTL '5x' invalid: .."`, or `"Invalid Session TTL
/// '5000000000', must be between [10s=24h0m0s]"` (nanoseconds, as Consul
/// prints it; Patroni matches the prefix).
pub fn ttl_ms(ttl: &str) -> Result<u64, String> {
    if ttl.is_empty() {
        return Ok(0);
    }
    let ns = crate::definitions::parse_go_duration(ttl)
        .map_err(|e| format!("Session TTL '{ttl}' invalid: {e}"))?;
    if ns == 0 {
        return Ok(0);
    }
    let (min, max) = (
        i128::from(TTL_MIN_MS) * 1_000_000,
        i128::from(TTL_MAX_MS) * 1_000_000,
    );
    if !(min..=max).contains(&ns) {
        return Err(format!(
            "Invalid Session TTL '{ns}', must be between [10s=24h0m0s]"
        ));
    }
    // Within 24 h, so it fits.
    let ms = (ns / 1_000_000) as u64;
    Ok(ms)
}

impl super::kv::LockContext for SessionTable {
    fn session_exists(&self, id: &str) -> bool {
        self.sessions.contains_key(id)
    }

    fn released_since(&self, key: &str, checked_at: u64) -> bool {
        SessionTable::released_since(self, key, checked_at)
    }
}
