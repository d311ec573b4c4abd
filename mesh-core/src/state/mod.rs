//! The replicated state machine every server applies from the Raft log.
//!
//! Determinism is the whole contract: servers that applied the same log
//! prefix hold equal [`StateMachine`]s and report equal [`StateMachine::digest`]s
//! (Raft paper §5.4.3, State Machine Safety), whether they got there by
//! applying entries or by restoring a snapshot and applying the rest.
//!
//! # Tables
//!
//! The state is a set of tables, one file each, named by [`Table`]: the KV
//! store ([`kv`]), the service catalog ([`catalog`]), Connect's
//! intentions ([`intentions`]) and its CA ([`ca`]), and sessions
//! ([`sessions`]), whose effects on the other tables live in [`locks`]. Each table has its own command enum
//! (wrapped by one [`Command`] variant), its own modify index
//! ([`StateMachine::table_index`]; Consul's per-table index that blocking
//! queries watch), and implements the crate-private `TableState` trait:
//! apply a command, feed the digest, encode and decode its snapshot
//! section, validate decoded data. The state machine itself only routes.
//!
//! Adding a table: a new file with its command enum and `TableState` impl, a
//! [`Table`] variant with a new id, a [`Command`] variant, a field here and
//! one line in each of `apply`, `digest`, `snapshot` and `restore`.
//!
//! # Log encoding of commands
//!
//! Commands are stored in the Raft log, and sent between servers, as JSON.
//! [`Command`] serializes as its table's command, whose variants keep the
//! names the log has always used (`{"KvSet":{"key":..,"value":<base64>,..}}`),
//! so logs written before tables existed decode unchanged. Command names must
//! therefore be unique across tables (each table's names start with its
//! own prefix: `Kv…`).
//!
//! # Snapshot format
//!
//! Version 3, written by this build (integers little-endian):
//!
//! ```text
//! [magic "MSSM"][version u8 = 3][last_applied u64][section count u8]
//! section × count, table ids strictly increasing:
//!   [table id u8][body length u64][body]
//! ```
//!
//! Each body is the table's own binary encoding (the KV layout is on its
//! `encode`); values are raw bytes, so a snapshot is about the size of the
//! data. A table without a section is empty; a table id this build does not
//! know is refused (the snapshot holds state it would silently drop). Every
//! length is checked against the bytes that remain before anything is
//! allocated, and trailing bytes are refused, so damage is
//! [`SnapshotError::Malformed`], never a panic.
//!
//! Version 2 is the same layout without what reads need for their indexes
//! (the KV tombstones, the catalog's read indexes); it is still read, as a
//! state whose every read index may have moved up to its table index.
//! Version 3 got its own number so that a build that knows only version 2
//! refuses it as "from a newer release" rather than as damage.
//!
//! Version 1, still read so an upgraded server can load the snapshot an
//! older build left on disk (or a leader still on that build sends):
//!
//! ```text
//! [magic "MSSM"][version u8 = 1][JSON: {"last_applied": u64, "kv": KvStore}]
//! ```
//!
//! The magic and version come first so a reader can tell "not ours" and "from
//! a newer build" apart from damage before parsing anything.

use serde::{Deserialize, Deserializer, Serialize};

use crate::hash::Fnv1a64;

mod binary;
pub mod ca;
pub mod catalog;
pub mod intentions;
pub mod kv;
pub mod locks;
pub mod sessions;
mod snapshot;
#[cfg(test)]
mod tests;

pub use ca::CaCommand;
use ca::CaTable;
pub use catalog::CatalogCommand;
use catalog::CatalogTable;
use intentions::IntentionTable;
pub use intentions::{IntentionCommand, SourceRule};
pub use kv::KvCommand;
use kv::KvStore;
pub use locks::LockDelay;
pub use sessions::SessionCommand;
use sessions::SessionTable;

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"MSSM";
/// The snapshot format version this build writes. It also reads every
/// older version (1, JSON).
pub const SNAPSHOT_VERSION: u8 = 3;

/// The tables of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Keys and values (`/v1/kv`).
    Kv,
    /// Nodes, services and health checks (`/v1/catalog`, `/v1/health`).
    Catalog,
    /// Who may connect to whom (`/v1/connect/intentions`).
    Intentions,
    /// The Connect CA's roots and settings (`/v1/connect/ca`).
    Ca,
    /// Sessions, the owners of KV locks (`/v1/session`).
    Sessions,
}

impl Table {
    /// Every table, in id order.
    pub const ALL: [Table; 5] = [
        Table::Kv,
        Table::Catalog,
        Table::Intentions,
        Table::Ca,
        Table::Sessions,
    ];

    /// The table's id in snapshot sections. Never reuse an id: an old
    /// snapshot's section would be read as the wrong table. 0 is reserved
    /// so zeroed bytes are not a table.
    pub fn id(self) -> u8 {
        match self {
            Table::Kv => 1,
            Table::Catalog => 2,
            Table::Intentions => 3,
            Table::Ca => 4,
            Table::Sessions => 5,
        }
    }

    /// The table with this snapshot id, if this build has it.
    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.id() == id)
    }
}

/// What every table is, for the state machine that routes to it.
pub(crate) trait TableState: Default + Sized {
    /// Which table this is.
    const TABLE: Table;
    /// The commands that change this table.
    type Command;

    /// Applies `cmd`, the command of the log entry at `index`.
    ///
    /// Panics if `index` is not above [`TableState::last_index`].
    fn apply(&mut self, index: u64, cmd: &Self::Command) -> CommandResult;
    /// Index of the last command that changed this table; 0 if none did.
    fn table_index(&self) -> u64;
    /// Index of the last command applied to this table, whether it changed
    /// anything or not; 0 if none was.
    fn last_index(&self) -> u64;
    /// Feeds the table's canonical encoding: equal tables feed equal bytes,
    /// and the encoding is self-delimiting, so tables can follow each other.
    fn digest(&self, h: &mut Fnv1a64);
    /// Appends the table's snapshot section body.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a section body written by `encode`. The caller refuses bytes
    /// left over.
    fn decode(r: &mut binary::Reader<'_>) -> Result<Self, String>;
    /// The table's invariants as a value, naming the first violation.
    fn validate(&self) -> Result<(), String>;
}

/// A replicated command: one Raft log entry's worth of state change, for
/// one table.
///
/// JSON: the table's command itself (`{"KvSet":{..}}`), see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// A change to the KV table.
    Kv(KvCommand),
    /// A change to the catalog.
    Catalog(CatalogCommand),
    /// A change to the intentions.
    Intentions(IntentionCommand),
    /// A change to the CA.
    Ca(CaCommand),
    /// A change to the sessions.
    Session(SessionCommand),
    /// Several independent KV writes from different clients, applied in
    /// order at one index: the leader groups writes that arrive together
    /// into one entry, so they share one fsync and one replication round
    /// (see [`Batch`]).
    Batch(Batch),
}

/// The commands of one batched entry. JSON: `{"Batch":[{"KvSet":..},..]}`.
///
/// Only plain KV writes are batched ([`Batch::may_hold`]): each is applied
/// as if it were its own entry at the batch's index, in order, so one
/// command's effect is visible to the next (two CAS writes of one key: the
/// second sees the first), and each gets its own result. Commands whose
/// meaning depends on their own index being unique (locks, sessions, the
/// catalog's session invalidation) are never batched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    /// The commands, in the order they are applied.
    Batch(Vec<Command>),
}

impl Batch {
    /// Whether `cmd` may go in a batch.
    pub fn may_hold(cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::Kv(
                KvCommand::Set { .. }
                    | KvCommand::Cas { .. }
                    | KvCommand::Delete { .. }
                    | KvCommand::DeleteCas { .. }
                    | KvCommand::DeleteTree { .. }
            )
        )
    }

    /// The commands.
    pub fn commands(&self) -> &[Command] {
        let Batch::Batch(commands) = self;
        commands
    }
}

impl Command {
    /// The table this command changes.
    pub fn table(&self) -> Table {
        match self {
            Command::Kv(_) => Table::Kv,
            Command::Catalog(_) => Table::Catalog,
            Command::Intentions(_) => Table::Intentions,
            Command::Ca(_) => Table::Ca,
            Command::Session(_) => Table::Sessions,
            // Batches hold KV writes only.
            Command::Batch(_) => Table::Kv,
        }
    }

    /// The command's log name (`KvSet`, `CatalogRegister`, ...), without
    /// encoding it (for metrics and logs).
    pub fn name(&self) -> &'static str {
        use catalog::CatalogCommand as C;
        match self {
            Command::Kv(c) => match c {
                KvCommand::Set { .. } => "KvSet",
                KvCommand::Cas { .. } => "KvCas",
                KvCommand::Delete { .. } => "KvDelete",
                KvCommand::DeleteCas { .. } => "KvDeleteCas",
                KvCommand::DeleteTree { .. } => "KvDeleteTree",
                KvCommand::Txn { .. } => "KvTxn",
                KvCommand::Lock { .. } => "KvLock",
                KvCommand::Unlock { .. } => "KvUnlock",
            },
            Command::Catalog(c) => match c {
                C::Register(_) => "CatalogRegister",
                C::Deregister { .. } => "CatalogDeregister",
                C::SyncNode(_) => "CatalogSyncNode",
                C::NodeHealth { .. } => "CatalogNodeHealth",
            },
            Command::Intentions(c) => match c {
                IntentionCommand::Upsert { .. } => "IntentionUpsert",
                IntentionCommand::Delete { .. } => "IntentionDelete",
                IntentionCommand::Replace { .. } => "IntentionReplace",
            },
            Command::Ca(c) => match c {
                CaCommand::Initialize { .. } => "CaInitialize",
                CaCommand::Rotate { .. } => "CaRotate",
                CaCommand::SetConfig { .. } => "CaSetConfig",
            },
            Command::Session(c) => match c {
                SessionCommand::Create(_) => "SessionCreate",
                SessionCommand::Destroy { .. } => "SessionDestroy",
            },
            Command::Batch(_) => "Batch",
        }
    }

    /// An upper bound on the size of this command in the wire's JSON
    /// encoding, computed without encoding it. Replication uses it to keep
    /// each AppendEntries batch within a byte budget.
    pub fn encoded_len_bound(&self) -> usize {
        match self {
            Command::Kv(c) => c.encoded_len_bound(),
            Command::Catalog(c) => c.encoded_len_bound(),
            Command::Intentions(c) => c.encoded_len_bound(),
            Command::Ca(c) => c.encoded_len_bound(),
            Command::Session(c) => c.encoded_len_bound(),
            Command::Batch(b) => {
                16 + b
                    .commands()
                    .iter()
                    .map(|c| c.encoded_len_bound() + 1)
                    .sum::<usize>()
            }
        }
    }
}

impl From<KvCommand> for Command {
    fn from(c: KvCommand) -> Self {
        Command::Kv(c)
    }
}

impl From<CatalogCommand> for Command {
    fn from(c: CatalogCommand) -> Self {
        Command::Catalog(c)
    }
}

impl From<IntentionCommand> for Command {
    fn from(c: IntentionCommand) -> Self {
        Command::Intentions(c)
    }
}

impl From<CaCommand> for Command {
    fn from(c: CaCommand) -> Self {
        Command::Ca(c)
    }
}

impl From<SessionCommand> for Command {
    fn from(c: SessionCommand) -> Self {
        Command::Session(c)
    }
}

/// Reads the single key naming the command, then lets that table's derived
/// decoder read the whole value, so a table's field errors come through
/// unchanged ("missing field `flags`") and an unknown name says it is
/// unknown rather than "did not match any variant".
impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(d)?;
        let name = match &value {
            serde_json::Value::Object(m) if m.len() == 1 => {
                m.keys().next().expect("one key").clone()
            }
            _ => {
                return Err(D::Error::custom(
                    "a command is an object with one key naming it, like {\"KvSet\":{..}}",
                ))
            }
        };
        if KvCommand::JSON_NAMES.contains(&name.as_str()) {
            return KvCommand::deserialize(value)
                .map(Command::Kv)
                .map_err(D::Error::custom);
        }
        if CatalogCommand::JSON_NAMES.contains(&name.as_str()) {
            return CatalogCommand::deserialize(value)
                .map(Command::Catalog)
                .map_err(D::Error::custom);
        }
        if IntentionCommand::JSON_NAMES.contains(&name.as_str()) {
            return IntentionCommand::deserialize(value)
                .map(Command::Intentions)
                .map_err(D::Error::custom);
        }
        if CaCommand::JSON_NAMES.contains(&name.as_str()) {
            return CaCommand::deserialize(value)
                .map(Command::Ca)
                .map_err(D::Error::custom);
        }
        if SessionCommand::JSON_NAMES.contains(&name.as_str()) {
            return SessionCommand::deserialize(value)
                .map(Command::Session)
                .map_err(D::Error::custom);
        }
        if name == "Batch" {
            return Batch::deserialize(value)
                .map(Command::Batch)
                .map_err(D::Error::custom);
        }
        Err(D::Error::custom(format!(
            "unknown command {name:?} (written by a newer release? run the same release on \
             every server)"
        )))
    }
}

/// What applying a command returned to the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Consul's `true`/`false` body for KV writes; `true` for catalog
    /// writes that succeeded.
    Bool(bool),
    /// The command was refused by the state it met (a check for an
    /// unknown service) and changed nothing; the message says why.
    Failed(String),
    /// What a transaction did.
    Txn(kv::txn::TxnOutcome),
    /// Each batched command's result, in order.
    Batch(Vec<CommandResult>),
}

/// Why [`StateMachine::restore`] rejected some bytes. Every variant means the
/// bytes cannot become this server's state; nothing already applied is
/// touched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes do not start with [`SNAPSHOT_MAGIC`].
    #[error("not a mesh state machine snapshot (bad magic): the data is from another program or damaged")]
    BadMagic,
    /// Written in a format version this build does not read: by a newer
    /// release (or damaged in the version byte).
    #[error(
        "snapshot format version {0} is not supported: this build reads versions 1 to \
         {SNAPSHOT_VERSION}. A higher version was written by a newer release: upgrade this \
         server to the release the others run (every server must run the same release)"
    )]
    UnsupportedVersion(u8),
    /// Right header, but the body does not parse or describes an
    /// inconsistent state.
    #[error("snapshot is damaged: {0}")]
    Malformed(String),
}

/// The replicated state: its tables and how far into the log it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    last_applied: u64,
    kv: KvStore,
    catalog: CatalogTable,
    intentions: IntentionTable,
    ca: CaTable,
    sessions: SessionTable,
    effects: Effects,
}

/// What applying entries left for the server that applied them, outside
/// the replicated state (never compared, digested or snapshotted).
#[derive(Clone, Debug, Default)]
struct Effects {
    lock_delays: Vec<LockDelay>,
}

/// Effects are not state: two machines with equal tables are equal.
impl PartialEq for Effects {
    fn eq(&self, _: &Effects) -> bool {
        true
    }
}

impl Eq for Effects {}

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
        self.apply_at(index, cmd)
    }

    fn apply_at(&mut self, index: u64, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Batch(batch) => CommandResult::Batch(
                batch
                    .commands()
                    .iter()
                    .map(|c| {
                        if Batch::may_hold(c) {
                            self.apply_at(index, c)
                        } else {
                            CommandResult::Failed(format!(
                                "{} cannot be applied in a batch",
                                c.name()
                            ))
                        }
                    })
                    .collect(),
            ),
            Command::Kv(c) => self.kv.apply_with_sessions(index, c, &self.sessions),
            Command::Catalog(c) => {
                let result = self.catalog.apply(index, c);
                if !self.sessions.is_empty() {
                    locks::after_catalog_change(self, index);
                }
                result
            }
            Command::Intentions(c) => self.intentions.apply(index, c),
            Command::Ca(c) => self.ca.apply(index, c),
            Command::Session(c) => locks::apply(self, index, c),
        }
    }

    /// The lock delays that the entries applied since the last call
    /// started, oldest first. The server enforces them on its own clock
    /// (see [`locks`]).
    pub fn take_lock_delays(&mut self) -> Vec<LockDelay> {
        std::mem::take(&mut self.effects.lock_delays)
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

    /// The catalog.
    pub fn catalog(&self) -> &CatalogTable {
        &self.catalog
    }

    /// The intentions.
    pub fn intentions(&self) -> &IntentionTable {
        &self.intentions
    }

    /// The CA.
    pub fn ca(&self) -> &CaTable {
        &self.ca
    }

    /// The sessions.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Index of the last command that changed `table` (0 if none did): the
    /// `X-Consul-Index` of reads from it. Commands that changed nothing (a
    /// failed CAS, deleting a missing key) and other tables' commands do not
    /// move it.
    pub fn table_index(&self, table: Table) -> u64 {
        match table {
            Table::Kv => TableState::table_index(&self.kv),
            Table::Catalog => TableState::table_index(&self.catalog),
            Table::Intentions => TableState::table_index(&self.intentions),
            Table::Ca => TableState::table_index(&self.ca),
            Table::Sessions => TableState::table_index(&self.sessions),
        }
    }

    /// A 64-bit digest of the whole state, equal for equal states on every
    /// machine, build and run.
    ///
    /// FNV-1a over a hand-written canonical encoding (fixed-width
    /// little-endian integers, length-prefixed strings and byte strings,
    /// entries in key order, tables in [`Table`] order), not over the
    /// snapshot bytes: the digest must not change when the snapshot format
    /// does. It is a checksum for comparing replicas, not a cryptographic
    /// hash.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv1a64::new();
        h.bytes(b"mesh-core/state/v1");
        h.u64(self.last_applied);
        self.kv.digest(&mut h);
        // Only a catalog that was ever written feeds the digest, so digests
        // of KV-only states stayed what they were before the catalog.
        if self.catalog != CatalogTable::default() {
            self.catalog.digest(&mut h);
        }
        if !self.intentions.is_pristine() {
            self.intentions.digest(&mut h);
        }
        if !self.ca.is_pristine() {
            self.ca.digest(&mut h);
        }
        if !self.sessions.is_pristine() {
            self.sessions.digest(&mut h);
        }
        h.finish()
    }

    /// The whole state as self-describing bytes (format version
    /// [`SNAPSHOT_VERSION`], see the module docs);
    /// [`StateMachine::restore`] turns them back into an equal state.
    pub fn snapshot(&self) -> Vec<u8> {
        snapshot::encode(self)
    }

    /// Rebuilds a state from [`StateMachine::snapshot`] bytes of this build
    /// or of an older one (format versions 1 to [`SNAPSHOT_VERSION`]).
    ///
    /// The bytes come from disk or from the leader, so they are input, not
    /// trusted state: this never panics, and a decoded state that breaks an
    /// invariant is [`SnapshotError::Malformed`] rather than an assertion.
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        snapshot::decode(bytes)
    }

    /// Writes the bytes of [`StateMachine::snapshot`] to `out` a piece at a
    /// time (at most about a megabyte in memory beyond the state itself),
    /// so a gigabyte of state is written to a file without a second
    /// gigabyte in memory. The caller owns the I/O; `out` errors pass
    /// through.
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        snapshot::write(self, out)
    }

    /// [`StateMachine::restore`] from the next `len` bytes of `source`,
    /// read a piece at a time: the KV table straight into the state, so
    /// restoring costs the restored state, not the snapshot bytes too. An
    /// error reading `source` is [`SnapshotError::Malformed`] naming it.
    pub fn restore_from(
        source: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<StateMachine, SnapshotError> {
        snapshot::decode_from(source, len)
    }

    /// Panics if the state is inconsistent: each table's own invariants,
    /// and no table write after [`StateMachine::last_applied`].
    pub fn check_invariants(&self) {
        if let Err(violation) = self.validate() {
            panic!("StateMachine invariant violated: {violation}");
        }
    }

    fn validate(&self) -> Result<(), String> {
        check_table(&self.kv, self.last_applied)?;
        check_table(&self.catalog, self.last_applied)?;
        check_table(&self.intentions, self.last_applied)?;
        check_table(&self.ca, self.last_applied)?;
        check_table(&self.sessions, self.last_applied)?;
        locks::validate(self)
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

/// Records that the command at `index` reaches a table whose last applied
/// command was at `*last`. Panics if `index` is below it: Raft applies
/// each entry once, in order (the commands of one [`Batch`] share its index).
pub(crate) fn advance(table: Table, last: &mut u64, index: u64) {
    assert!(
        index >= *last,
        "{table:?} write at index {index} after index {last}: Raft indexes must increase",
    );
    *last = index;
}

/// A table's answer to the command at `index`: on success, whether it
/// changed the table (which then moves the table's index, waking blocking
/// queries) and what the proposer gets back; a refusal changes nothing.
pub(crate) fn outcome(
    table_index: &mut u64,
    index: u64,
    result: Result<(bool, CommandResult), String>,
) -> CommandResult {
    match result {
        Ok((changed, answer)) => {
            if changed {
                *table_index = index;
            }
            answer
        }
        Err(e) => CommandResult::Failed(e),
    }
}

/// The digest of a table through its snapshot encoding (for tables whose
/// encoding is canonical: JSON of rows in key order).
pub(crate) fn digest_encoded<T: TableState>(table: &T, h: &mut Fnv1a64) {
    let mut out = Vec::new();
    table.encode(&mut out);
    h.len_prefixed(&out);
}

/// A table's own invariants, and none of its writes after `last_applied`.
fn check_table<T: TableState>(table: &T, last_applied: u64) -> Result<(), String> {
    table
        .validate()
        .map_err(|e| format!("{:?} table: {e}", T::TABLE))?;
    if table.last_index() > last_applied {
        return Err(format!(
            "{:?} table saw index {} but the state machine applied only up to {last_applied}",
            T::TABLE,
            table.last_index(),
        ));
    }
    Ok(())
}
