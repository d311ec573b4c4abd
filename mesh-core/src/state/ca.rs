//! The Connect CA table: the cluster's identity (its trust domain), the CA
//! configuration, and the root certificates with their signing keys.
//!
//! The first leader generates a root and proposes [`CaCommand::Initialize`];
//! a later leader finds it here and reuses it. A second `Initialize` (two
//! leaders racing across a term change) changes nothing, so the cluster has
//! exactly one trust domain for its life.
//!
//! Rotation ([`CaCommand::Rotate`]) makes a new root active and keeps the
//! old ones trusted until every leaf they signed has expired (one leaf TTL
//! after they were rotated out), so neither established nor new
//! connections break. The new root carries a cross-signed certificate (its
//! key, certified by the old root) among its intermediates, for peers that
//! still trust only the old root.
//!
//! The signing keys are replicated (Consul's built-in CA keeps them in its
//! Raft state too) but never leave the servers: [`CaTable::public_roots`]
//! is what reads return.

use serde::{Deserialize, Serialize};

use super::binary::{put_bytes32, Reader};
use super::intentions::rfc3339;
use super::{CommandResult, Table, TableState};
use crate::connect::ca::CaRoot;
use crate::hash::Fnv1a64;

/// Seconds in an hour.
const HOUR: u64 = 3600;

/// The CA's settings (`/v1/connect/ca/configuration`'s `Config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Lifetime of a leaf certificate, seconds (Consul's `LeafCertTTL`,
    /// default 72 h).
    pub leaf_cert_ttl_secs: u64,
    /// Lifetime of a root, seconds (`RootCertTTL`, default 10 years).
    pub root_cert_ttl_secs: u64,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            leaf_cert_ttl_secs: 72 * HOUR,
            root_cert_ttl_secs: 87_600 * HOUR,
        }
    }
}

impl CaConfig {
    /// Checks the bounds Consul enforces: leaves between 1 h and 1 year
    /// (shorter allowed here down to 1 minute, for tests and simulations).
    pub fn validate(&self) -> Result<(), String> {
        if !(60..=8_760 * HOUR).contains(&self.leaf_cert_ttl_secs) {
            return Err(format!(
                "LeafCertTTL must be between 1m and 8760h, got {} s",
                self.leaf_cert_ttl_secs
            ));
        }
        if self.root_cert_ttl_secs < 2 * self.leaf_cert_ttl_secs {
            return Err("RootCertTTL must be at least twice LeafCertTTL".into());
        }
        // A certificate cannot end after year 9999; a root that could not
        // be made would leave the cluster without a CA.
        if self.root_cert_ttl_secs > 100 * 8_760 * HOUR {
            return Err(format!(
                "RootCertTTL must be at most 876000h (100 years), got {} s",
                self.root_cert_ttl_secs
            ));
        }
        Ok(())
    }
}

/// A root as the table keeps it: the certificate, its key, and when it
/// was written and rotated out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRoot {
    /// The root and its signing key.
    pub root: CaRoot,
    /// Raft index of the write that added it.
    pub create_index: u64,
    /// Raft index of the write that last changed it (made it inactive).
    pub modify_index: u64,
    /// When it stopped being the active root (Unix seconds), if it has.
    pub rotated_out_at: Option<u64>,
    /// The longest leaf TTL in effect while it was active: none of its
    /// leaves outlives `rotated_out_at` by more. (0 in state written
    /// before this was kept; the current TTL stands in.)
    #[serde(default)]
    pub longest_leaf_ttl_secs: u64,
}

/// How many of a rotated-out root's longest leaf lifetimes it stays
/// trusted after the rotation. Its leaves expire within one lifetime; the
/// second covers the proposer's wall clock (which stamps the rotation and
/// judges the pruning) running up to one lifetime ahead of the hosts
/// still holding those leaves. Consul's leader keeps inactive roots for
/// the same two lifetimes.
pub const ROOT_RETENTION_LEAF_TTLS: u64 = 2;

/// A root as the API shows it (Consul's `CARoot` fields, no key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublicRoot {
    /// Fingerprint of the certificate.
    #[serde(rename = "ID")]
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The certificate's serial number.
    pub serial_number: u64,
    /// Identifier of the signing key.
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    /// Always empty (the built-in CA has no external trust domain).
    pub external_trust_domain: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// The certificate, PEM.
    pub root_cert: String,
    /// Intermediates (the cross-signed certificate after a rotation), PEM.
    pub intermediate_certs: Vec<String>,
    /// Whether leaves are signed by this root now.
    pub active: bool,
    /// Always `ec`.
    pub private_key_type: String,
    /// Always 256.
    pub private_key_bits: u32,
    /// Raft index of the write that added it.
    pub create_index: u64,
    /// Raft index of the write that last changed it.
    pub modify_index: u64,
}

/// What reads of the CA return: everything but the keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaView {
    /// `<cluster-id>.consul`; empty before the first leader initialized it.
    pub trust_domain: String,
    /// The cluster's ID.
    pub cluster_id: String,
    /// ID of the active root; empty before initialization.
    pub active_root_id: String,
    /// Every trusted root, the active one included, oldest first.
    pub roots: Vec<PublicRoot>,
    /// The settings.
    pub config: CaConfig,
}

/// A command that changes the CA table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaCommand {
    /// The first leader's root. Result: `Bool(true)` if it became the
    /// cluster's root, `Bool(false)` if a root already existed (nothing
    /// changes).
    #[serde(rename = "CaInitialize")]
    Initialize {
        /// The cluster's ID; the trust domain is `<cluster_id>.consul`.
        cluster_id: String,
        /// The root, generated by the proposing leader.
        root: Box<CaRoot>,
    },
    /// Make `root` the active root. Applied only if `replaces` is still
    /// the active root's ID (otherwise `Failed`: another rotation won).
    /// Roots rotated out more than [`ROOT_RETENTION_LEAF_TTLS`] of their
    /// longest leaf TTL before `now_unix` are dropped.
    #[serde(rename = "CaRotate")]
    Rotate {
        /// The new root, with the cross-signed certificate among its
        /// intermediates.
        root: Box<CaRoot>,
        /// The active root's ID the rotation was prepared against.
        replaces: String,
        /// The proposer's wall clock, Unix seconds.
        now_unix: u64,
        /// Settings that change with the rotation, in the same write.
        #[serde(default)]
        config: Option<CaConfig>,
    },
    /// New settings. Result: `Failed` if out of bounds.
    #[serde(rename = "CaSetConfig")]
    SetConfig {
        /// The settings.
        config: CaConfig,
    },
}

impl CaCommand {
    /// The JSON names of the variants, the keys `Command` dispatches on.
    pub const JSON_NAMES: &'static [&'static str] = &["CaInitialize", "CaRotate", "CaSetConfig"];

    /// An upper bound on the JSON encoding's length.
    pub fn encoded_len_bound(&self) -> usize {
        let root_len = |r: &CaRoot| {
            // PEM text is ASCII; escapes (\n) at most double it.
            1024 + 2
                * (r.root_cert_pem.len()
                    + r.signing_key.expose().len()
                    + r.intermediate_certs.iter().map(String::len).sum::<usize>()
                    + r.id.len()
                    + r.name.len()
                    + r.signing_key_id.len()
                    + r.trust_domain.len())
        };
        match self {
            CaCommand::Initialize { cluster_id, root } => {
                64 + 6 * cluster_id.len() + root_len(root)
            }
            CaCommand::Rotate { root, replaces, .. } => 192 + 6 * replaces.len() + root_len(root),
            CaCommand::SetConfig { .. } => 128,
        }
    }
}

/// The table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaTable {
    cluster_id: String,
    config: CaConfig,
    /// Oldest first; the last one is active.
    roots: Vec<StoredRoot>,
    table_index: u64,
    last_index: u64,
}

impl CaTable {
    /// Whether the table was ever written.
    pub fn is_pristine(&self) -> bool {
        *self == CaTable::default()
    }

    /// The cluster's ID; empty before initialization.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// `<cluster-id>.consul`, or `None` before initialization.
    pub fn trust_domain(&self) -> Option<String> {
        (!self.cluster_id.is_empty())
            .then(|| crate::connect::SpiffeId::trust_domain_of(&self.cluster_id))
    }

    /// The root that signs leaves now, with its key (servers only).
    pub fn active_root(&self) -> Option<&CaRoot> {
        self.roots.last().map(|r| &r.root)
    }

    /// Every stored root, oldest first (the last is active).
    pub fn roots(&self) -> &[StoredRoot] {
        &self.roots
    }

    /// The settings.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// What reads return: no keys.
    pub fn public_roots(&self) -> CaView {
        let active = self.roots.len().saturating_sub(1);
        CaView {
            trust_domain: self.trust_domain().unwrap_or_default(),
            cluster_id: self.cluster_id.clone(),
            active_root_id: self.active_root().map(|r| r.id.clone()).unwrap_or_default(),
            roots: self
                .roots
                .iter()
                .enumerate()
                .map(|(i, s)| PublicRoot {
                    id: s.root.id.clone(),
                    name: s.root.name.clone(),
                    serial_number: s.root.serial_number,
                    signing_key_id: s.root.signing_key_id.clone(),
                    external_trust_domain: String::new(),
                    not_before: rfc3339(s.root.not_before),
                    not_after: rfc3339(s.root.not_after),
                    root_cert: s.root.root_cert_pem.clone(),
                    intermediate_certs: s.root.intermediate_certs.clone(),
                    active: i == active,
                    private_key_type: "ec".into(),
                    private_key_bits: 256,
                    create_index: s.create_index,
                    modify_index: s.modify_index,
                })
                .collect(),
            config: self.config.clone(),
        }
    }

    fn initialize(&mut self, index: u64, cluster_id: &str, root: &CaRoot) -> Result<bool, String> {
        if !self.roots.is_empty() {
            return Ok(false);
        }
        if cluster_id.is_empty() || cluster_id.len() > 64 {
            return Err("the cluster ID must have 1 to 64 characters".into());
        }
        let domain = crate::connect::SpiffeId::trust_domain_of(cluster_id);
        if root.trust_domain != domain {
            return Err(format!(
                "the root is for trust domain {:?}, not the cluster's {domain:?}",
                root.trust_domain
            ));
        }
        self.cluster_id = cluster_id.to_owned();
        self.roots.push(StoredRoot {
            root: root.clone(),
            create_index: index,
            modify_index: index,
            rotated_out_at: None,
            longest_leaf_ttl_secs: self.config.leaf_cert_ttl_secs,
        });
        Ok(true)
    }

    /// New settings; the active root remembers the longest leaf TTL it
    /// has signed under.
    fn set_config(&mut self, config: &CaConfig) {
        self.config = config.clone();
        if let Some(active) = self.roots.last_mut() {
            active.longest_leaf_ttl_secs =
                active.longest_leaf_ttl_secs.max(config.leaf_cert_ttl_secs);
        }
    }

    fn rotate(
        &mut self,
        index: u64,
        root: &CaRoot,
        replaces: &str,
        now: u64,
        config: Option<&CaConfig>,
    ) -> Result<bool, String> {
        if self.roots.iter().any(|r| r.root.id == root.id) {
            return Err(format!("root {} is already known", root.id));
        }
        let Some(active) = self.roots.last_mut() else {
            return Err("the CA is not initialized yet: there is no root to rotate".into());
        };
        if active.root.id != replaces {
            return Err(format!(
                "the active root is {}, not {replaces}: another rotation happened first",
                active.root.id
            ));
        }
        if root.trust_domain != active.root.trust_domain {
            return Err("a rotated root must keep the cluster's trust domain".into());
        }
        active.rotated_out_at = Some(now);
        active.modify_index = index;
        let current_ttl = self.config.leaf_cert_ttl_secs;
        self.roots.retain(|r| {
            let lifetime = r.longest_leaf_ttl_secs.max(current_ttl);
            r.rotated_out_at.is_none_or(|at| {
                at.saturating_add(ROOT_RETENTION_LEAF_TTLS.saturating_mul(lifetime)) > now
            })
        });
        self.roots.push(StoredRoot {
            root: root.clone(),
            create_index: index,
            modify_index: index,
            rotated_out_at: None,
            longest_leaf_ttl_secs: current_ttl,
        });
        if let Some(config) = config {
            self.set_config(config);
        }
        Ok(true)
    }
}

impl TableState for CaTable {
    const TABLE: Table = Table::Ca;
    type Command = CaCommand;

    fn apply(&mut self, index: u64, cmd: &CaCommand) -> CommandResult {
        super::advance(Self::TABLE, &mut self.last_index, index);
        let result = match cmd {
            CaCommand::Initialize { cluster_id, root } => {
                self.initialize(index, cluster_id, root).map(|created| {
                    // `false` tells the proposer another root exists.
                    (created, CommandResult::Bool(created))
                })
            }
            CaCommand::Rotate {
                root,
                replaces,
                now_unix,
                config,
            } => match config.as_ref().map(CaConfig::validate) {
                Some(Err(e)) => Err(e),
                _ => self
                    .rotate(index, root, replaces, *now_unix, config.as_ref())
                    .map(|c| (c, CommandResult::Bool(true))),
            },
            CaCommand::SetConfig { config } => config.validate().map(|()| {
                let changed = self.config != *config;
                self.set_config(config);
                (changed, CommandResult::Bool(true))
            }),
        };
        super::outcome(&mut self.table_index, index, result)
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

    /// `[JSON length u32][JSON of the whole table]`.
    fn encode(&self, out: &mut Vec<u8>) {
        let json = serde_json::to_vec(self).expect("CA table serializes");
        put_bytes32(out, &json);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let json = r.bytes32(&|| "CA JSON".into())?;
        serde_json::from_slice(json).map_err(|e| format!("CA JSON: {e}"))
    }

    fn validate(&self) -> Result<(), String> {
        if self.table_index > self.last_index {
            return Err(format!(
                "table index {} is above the last applied index {}",
                self.table_index, self.last_index
            ));
        }
        if self.roots.is_empty() != self.cluster_id.is_empty() {
            return Err("a cluster ID without a root, or a root without a cluster ID".into());
        }
        for (i, r) in self.roots.iter().enumerate() {
            let last = i + 1 == self.roots.len();
            if last == r.rotated_out_at.is_some() {
                return Err(format!(
                    "root {} is {} but {} rotated out",
                    r.root.id,
                    if last { "active" } else { "inactive" },
                    if last { "was" } else { "was never" }
                ));
            }
            if r.create_index == 0
                || r.create_index > r.modify_index
                || r.modify_index > self.table_index
            {
                return Err(format!("root {} has inconsistent indexes", r.root.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
