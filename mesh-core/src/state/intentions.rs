//! The intentions table: at most one [`Intention`] per (source,
//! destination) pair, as Consul's exact-match API keeps them
//! (`/v1/connect/intentions/exact`).
//!
//! A write carries the proposing server's wall-clock time for `CreatedAt`
//! and `UpdatedAt`, so every server applies the same bytes; an intention's
//! ID is derived from the pair and the index that created it, so it is a
//! UUID that every replica computes alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::binary::{put_bytes32, Reader};
use super::{CommandResult, Table, TableState};
use crate::connect::intention::{self, Action, Intention};
use crate::hash::Fnv1a64;

/// A command that changes the intentions table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentionCommand {
    /// Create or replace the intention for the pair. Result: `Bool(true)`,
    /// or `Failed` naming a bad name (nothing changes).
    #[serde(rename = "IntentionUpsert")]
    Upsert {
        /// The calling service, or `*`.
        source: String,
        /// The called service, or `*`.
        destination: String,
        /// Allow or deny.
        action: Action,
        /// Free text.
        description: String,
        /// Operator metadata.
        meta: BTreeMap<String, String>,
        /// The proposing server's wall clock, seconds since the Unix epoch.
        now_unix: u64,
    },
    /// Delete the pair's intention. Result: `Bool(true)` whether or not it
    /// existed (as Consul's `DELETE .../exact`).
    #[serde(rename = "IntentionDelete")]
    Delete {
        /// The calling service, or `*`.
        source: String,
        /// The called service, or `*`.
        destination: String,
    },
    /// Make `sources` the whole set of intentions towards `destination`, in
    /// one step: Consul's `service-intentions` config entry written
    /// (`PUT /v1/config`) or, with no sources, deleted. Pairs that stay keep
    /// their ID and creation; pairs not listed go. Result: `Bool(false)`
    /// when `cas` does not match the entry's `ModifyIndex` (0: only if the
    /// destination has no intention), `Failed` naming a bad name or a
    /// source listed twice (nothing changes), `Bool(true)` otherwise.
    #[serde(rename = "IntentionReplace")]
    Replace {
        /// The called service, or `*`.
        destination: String,
        /// Every source, with its decision.
        sources: Vec<SourceRule>,
        /// The entry's operator metadata, kept on each of its intentions.
        meta: BTreeMap<String, String>,
        /// Check-and-set against [`IntentionTable::entry_indexes`].
        cas: Option<u64>,
        /// The proposing server's wall clock, seconds since the Unix epoch.
        now_unix: u64,
    },
}

/// One source of a `service-intentions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRule {
    /// The calling service, or `*`.
    pub name: String,
    /// Allow or deny.
    pub action: Action,
    /// Free text.
    pub description: String,
}

impl IntentionCommand {
    /// The JSON names of the variants, the keys `Command` dispatches on.
    pub const JSON_NAMES: &'static [&'static str] =
        &["IntentionUpsert", "IntentionDelete", "IntentionReplace"];

    /// An upper bound on the JSON encoding's length.
    pub fn encoded_len_bound(&self) -> usize {
        // Every character can take at most 6 bytes escaped (\u00XX).
        let text = |s: &str| 2 + 6 * s.len();
        match self {
            IntentionCommand::Upsert {
                source,
                destination,
                description,
                meta,
                ..
            } => {
                128 + text(source)
                    + text(destination)
                    + text(description)
                    + meta
                        .iter()
                        .map(|(k, v)| 2 + text(k) + text(v))
                        .sum::<usize>()
            }
            IntentionCommand::Delete {
                source,
                destination,
            } => 64 + text(source) + text(destination),
            IntentionCommand::Replace {
                destination,
                sources,
                meta,
                ..
            } => {
                160 + text(destination)
                    + sources
                        .iter()
                        .map(|r| 64 + text(&r.name) + text(&r.description))
                        .sum::<usize>()
                    + meta
                        .iter()
                        .map(|(k, v)| 2 + text(k) + text(v))
                        .sum::<usize>()
            }
        }
    }
}

/// The table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentionTable {
    by_pair: BTreeMap<(String, String), Intention>,
    table_index: u64,
    last_index: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    table_index: u64,
    last_index: u64,
    intentions: Vec<Intention>,
}

impl IntentionTable {
    /// Every intention, by (source, destination).
    pub fn all(&self) -> impl Iterator<Item = &Intention> {
        self.by_pair.values()
    }

    /// The intention for exactly this pair.
    pub fn get(&self, source: &str, destination: &str) -> Option<&Intention> {
        self.by_pair
            .get(&(source.to_owned(), destination.to_owned()))
    }

    /// The intention with this ID.
    pub fn by_id(&self, id: &str) -> Option<&Intention> {
        self.by_pair.values().find(|i| i.id == id)
    }

    /// Whether the table was ever written (an unwritten table has no
    /// snapshot section and feeds nothing to the digest).
    pub fn is_pristine(&self) -> bool {
        *self == IntentionTable::default()
    }

    /// The intentions towards `destination`, in source order: the
    /// `service-intentions` config entry named after it.
    pub fn towards<'a>(&'a self, destination: &'a str) -> impl Iterator<Item = &'a Intention> {
        self.by_pair
            .values()
            .filter(move |i| i.destination_name == destination)
    }

    /// The `CreateIndex` and `ModifyIndex` of `destination`'s config
    /// entry: the oldest creation and the latest change among its
    /// intentions; `None` when it has none. Every read of the entry and
    /// every `?cas=` against it use these.
    pub fn entry_indexes(&self, destination: &str) -> Option<(u64, u64)> {
        entry_indexes(self.towards(destination))
    }

    /// Removes one intention. The ones left towards its destination take
    /// this index as their `ModifyIndex`, as in Consul, whose intentions
    /// share their config entry's index: the entry changed, whichever API
    /// removed the source, so a `?cas=` write holding the entry's old index
    /// must not bring the source back.
    fn remove(&mut self, index: u64, source: &str, destination: &str) -> bool {
        let gone = self
            .by_pair
            .remove(&(source.to_owned(), destination.to_owned()))
            .is_some();
        if gone {
            for i in self.by_pair.values_mut() {
                if i.destination_name == destination {
                    i.modify_index = index;
                }
            }
        }
        gone
    }

    fn replace(&mut self, index: u64, cmd: &IntentionCommand) -> Result<(bool, bool), String> {
        let IntentionCommand::Replace {
            destination,
            sources,
            meta,
            cas,
            now_unix,
        } = cmd
        else {
            unreachable!("replace called with {cmd:?}");
        };
        intention::validate_name("DestinationName", destination)?;
        let mut listed = std::collections::BTreeSet::new();
        for rule in sources {
            intention::validate_name("Sources[].Name", &rule.name)?;
            if !listed.insert(rule.name.as_str()) {
                return Err(format!("Sources: {:?} is listed twice", rule.name));
            }
        }
        let current = self.entry_indexes(destination).map_or(0, |(_, m)| m);
        if cas.is_some_and(|expected| expected != current) {
            return Ok((false, false));
        }
        let gone: Vec<(String, String)> = self
            .towards(destination)
            .filter(|i| !listed.contains(i.source_name.as_str()))
            .map(|i| (i.source_name.clone(), i.destination_name.clone()))
            .collect();
        let changed = !gone.is_empty() || !sources.is_empty();
        for (source, destination) in gone {
            self.remove(index, &source, &destination);
        }
        for rule in sources {
            self.upsert(
                index,
                &IntentionCommand::Upsert {
                    source: rule.name.clone(),
                    destination: destination.clone(),
                    action: rule.action,
                    description: rule.description.clone(),
                    meta: meta.clone(),
                    now_unix: *now_unix,
                },
            )?;
        }
        Ok((changed, true))
    }

    fn upsert(&mut self, index: u64, cmd: &IntentionCommand) -> Result<bool, String> {
        let IntentionCommand::Upsert {
            source,
            destination,
            action,
            description,
            meta,
            now_unix,
        } = cmd
        else {
            unreachable!("upsert called with {cmd:?}");
        };
        intention::validate_name("SourceName", source)?;
        intention::validate_name("DestinationName", destination)?;
        let now = rfc3339(*now_unix);
        let key = (source.clone(), destination.clone());
        let row = self.by_pair.entry(key).or_insert_with(|| {
            let mut i = Intention::new(source, destination, *action);
            i.id = uuid_for(index, source, destination);
            i.create_index = index;
            i.created_at = now.clone();
            i
        });
        row.action = *action;
        row.description = description.clone();
        row.meta = meta.clone();
        row.updated_at = now;
        row.modify_index = index;
        Ok(true)
    }
}

/// The `CreateIndex` and `ModifyIndex` of a config entry made of
/// `intentions` (all towards one destination): the oldest creation, the
/// latest change; `None` for none.
pub fn entry_indexes<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
) -> Option<(u64, u64)> {
    intentions.into_iter().fold(None, |acc, i| {
        let (c, m) = acc.unwrap_or((u64::MAX, 0));
        Some((c.min(i.create_index), m.max(i.modify_index)))
    })
}

/// A UUID-shaped ID every replica derives alike from the creating write.
fn uuid_for(index: u64, source: &str, destination: &str) -> String {
    let half = |salt: &[u8]| {
        let mut h = Fnv1a64::new();
        h.bytes(salt);
        h.u64(index);
        h.bytes(source.as_bytes());
        h.bytes(destination.as_bytes());
        h.finish()
    };
    let (a, b) = (half(b"intention-id/1"), half(b"intention-id/2"));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (UTC; the
/// civil-from-days algorithm of Howard Hinnant's date library).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl TableState for IntentionTable {
    const TABLE: Table = Table::Intentions;
    type Command = IntentionCommand;

    fn apply(&mut self, index: u64, cmd: &IntentionCommand) -> CommandResult {
        super::advance(Self::TABLE, &mut self.last_index, index);
        let result = match cmd {
            IntentionCommand::Upsert { .. } => self.upsert(index, cmd).map(|c| (c, true)),
            IntentionCommand::Delete {
                source,
                destination,
            } => Ok((self.remove(index, source, destination), true)),
            IntentionCommand::Replace { .. } => self.replace(index, cmd),
        };
        let result = result.map(|(changed, ok)| (changed, CommandResult::Bool(ok)));
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

    /// `[JSON length u32][JSON of the indexes and every intention in pair
    /// order]`.
    fn encode(&self, out: &mut Vec<u8>) {
        let image = Image {
            table_index: self.table_index,
            last_index: self.last_index,
            intentions: self.by_pair.values().cloned().collect(),
        };
        let json = serde_json::to_vec(&image).expect("intentions serialize");
        put_bytes32(out, &json);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let json = r.bytes32(&|| "intentions JSON".into())?;
        let image: Image =
            serde_json::from_slice(json).map_err(|e| format!("intentions JSON: {e}"))?;
        let mut t = IntentionTable {
            table_index: image.table_index,
            last_index: image.last_index,
            ..IntentionTable::default()
        };
        for i in image.intentions {
            let key = (i.source_name.clone(), i.destination_name.clone());
            if t.by_pair.insert(key, i).is_some() {
                return Err("an intention appears twice".into());
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
        for ((source, destination), i) in &self.by_pair {
            if i.source_name != *source || i.destination_name != *destination {
                return Err(format!(
                    "intention {source} => {destination} is stored under another pair"
                ));
            }
            if i.precedence != intention::precedence(source, destination) {
                return Err(format!(
                    "intention {source} => {destination} has precedence {}",
                    i.precedence
                ));
            }
            if i.create_index == 0
                || i.create_index > i.modify_index
                || i.modify_index > self.table_index
            {
                return Err(format!(
                    "intention {source} => {destination} has indexes create {}, modify {} \
                     (table index {})",
                    i.create_index, i.modify_index, self.table_index
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(source: &str, destination: &str, action: Action, now_unix: u64) -> IntentionCommand {
        IntentionCommand::Upsert {
            source: source.into(),
            destination: destination.into(),
            action,
            description: String::new(),
            meta: BTreeMap::new(),
            now_unix,
        }
    }

    fn replace(
        destination: &str,
        sources: &[(&str, Action)],
        cas: Option<u64>,
    ) -> IntentionCommand {
        IntentionCommand::Replace {
            destination: destination.into(),
            sources: sources
                .iter()
                .map(|(name, action)| SourceRule {
                    name: (*name).into(),
                    action: *action,
                    description: String::new(),
                })
                .collect(),
            meta: BTreeMap::from([("owner".to_string(), "team-a".to_string())]),
            cas,
            now_unix: 1_700_000_000,
        }
    }

    fn sources_of(t: &IntentionTable, destination: &str) -> Vec<(String, Action)> {
        t.towards(destination)
            .map(|i| (i.source_name.clone(), i.action))
            .collect()
    }

    #[test]
    fn a_config_entry_replaces_the_destinations_intentions_in_one_step() {
        let mut t = IntentionTable::default();
        t.apply(2, &upsert("fcc", "fcs", Action::Allow, 1_700_000_000));
        t.apply(3, &upsert("web", "fcs", Action::Allow, 1_700_000_000));
        t.apply(4, &upsert("fcc", "db", Action::Allow, 1_700_000_000));
        let fcc_id = t.get("fcc", "fcs").unwrap().id.clone();
        assert_eq!(t.entry_indexes("fcs"), Some((2, 3)));

        // web goes, fcc stays (same ID, creation) with a new action, * comes.
        let entry = replace("fcs", &[("fcc", Action::Deny), ("*", Action::Allow)], None);
        assert_eq!(t.apply(6, &entry), CommandResult::Bool(true));
        assert_eq!(
            sources_of(&t, "fcs"),
            [
                ("*".to_string(), Action::Allow),
                ("fcc".to_string(), Action::Deny)
            ]
        );
        let fcc = t.get("fcc", "fcs").unwrap();
        assert_eq!((fcc.id.as_str(), fcc.create_index), (fcc_id.as_str(), 2));
        assert_eq!(fcc.meta["owner"], "team-a");
        assert_eq!(t.entry_indexes("fcs"), Some((2, 6)));
        assert!(t.get("fcc", "db").is_some(), "other destinations untouched");

        // Check-and-set against the entry's ModifyIndex.
        assert_eq!(
            t.apply(7, &replace("fcs", &[], Some(3))),
            CommandResult::Bool(false)
        );
        assert_eq!(sources_of(&t, "fcs").len(), 2);
        assert_eq!(
            t.apply(8, &replace("fcs", &[], Some(6))),
            CommandResult::Bool(true)
        );
        assert_eq!(
            t.entry_indexes("fcs"),
            None,
            "an empty entry deletes them all"
        );
        assert_eq!(t.table_index(), 8);
        // cas=0: only if the entry does not exist.
        let create = replace("fcs", &[("fcc", Action::Allow)], Some(0));
        assert_eq!(t.apply(9, &create), CommandResult::Bool(true));
        assert_eq!(t.apply(10, &create), CommandResult::Bool(false));
        assert_eq!(t.table_index(), 9, "a refused CAS changes nothing");
        assert!(t.validate().is_ok());
    }

    #[test]
    fn removing_a_source_by_the_older_api_moves_the_entrys_modify_index() {
        let mut t = IntentionTable::default();
        let entry = replace(
            "fcs",
            &[("fcc", Action::Allow), ("web", Action::Allow)],
            None,
        );
        t.apply(5, &entry);
        assert_eq!(t.entry_indexes("fcs"), Some((5, 5)));
        let delete = IntentionCommand::Delete {
            source: "web".into(),
            destination: "fcs".into(),
        };
        assert_eq!(t.apply(7, &delete), CommandResult::Bool(true));
        assert_eq!(t.entry_indexes("fcs"), Some((5, 7)));
        // A writer still holding index 5 must not bring web back.
        let stale = replace(
            "fcs",
            &[("fcc", Action::Allow), ("web", Action::Allow)],
            Some(5),
        );
        assert_eq!(t.apply(8, &stale), CommandResult::Bool(false));
        assert!(t.get("web", "fcs").is_none());
        // The removal survives a snapshot.
        let mut bytes = Vec::new();
        t.encode(&mut bytes);
        let back = IntentionTable::decode(&mut Reader::new(&bytes, 0)).unwrap();
        assert_eq!(back, t);
        assert!(t.validate().is_ok());
    }

    #[test]
    fn a_bad_config_entry_changes_nothing() {
        let mut t = IntentionTable::default();
        t.apply(2, &upsert("fcc", "fcs", Action::Allow, 1_700_000_000));
        let before = t.clone();
        for bad in [
            replace(
                "fcs",
                &[("web", Action::Allow), ("web", Action::Deny)],
                None,
            ),
            replace(
                "fcs",
                &[("web", Action::Allow), ("a/b", Action::Deny)],
                None,
            ),
            replace("", &[("web", Action::Allow)], None),
        ] {
            assert!(
                matches!(t.apply(3, &bad), CommandResult::Failed(_)),
                "{bad:?}"
            );
            let mut expected = before.clone();
            expected.last_index = 3;
            assert_eq!(t, expected);
        }
    }

    #[test]
    fn upsert_keeps_id_and_creation_and_moves_the_modify_index() {
        let mut t = IntentionTable::default();
        assert_eq!(
            t.apply(3, &upsert("fcc", "fcs", Action::Allow, 1_700_000_000)),
            CommandResult::Bool(true)
        );
        let first = t.get("fcc", "fcs").unwrap().clone();
        assert_eq!(first.created_at, "2023-11-14T22:13:20Z");
        assert_eq!((first.create_index, first.modify_index), (3, 3));
        assert_eq!(first.precedence, 9);
        assert_eq!(first.id.len(), 36);
        t.apply(5, &upsert("fcc", "fcs", Action::Deny, 1_700_000_060));
        let second = t.get("fcc", "fcs").unwrap();
        assert_eq!(second.id, first.id);
        assert_eq!(second.action, Action::Deny);
        assert_eq!((second.create_index, second.modify_index), (3, 5));
        assert_eq!(second.created_at, first.created_at);
        assert_eq!(second.updated_at, "2023-11-14T22:14:20Z");
        assert_eq!(t.table_index(), 5);
        assert!(t.validate().is_ok());
    }

    #[test]
    fn a_bad_name_fails_and_changes_nothing() {
        let mut t = IntentionTable::default();
        let r = t.apply(1, &upsert("fc*", "fcs", Action::Allow, 0));
        assert!(matches!(r, CommandResult::Failed(m) if m.contains("wildcard")));
        assert_eq!(t.all().count(), 0);
        assert_eq!(t.table_index(), 0);
    }

    #[test]
    fn delete_of_a_missing_pair_succeeds_without_moving_the_index() {
        let mut t = IntentionTable::default();
        t.apply(1, &upsert("*", "fcs", Action::Deny, 0));
        let del = |s: &str| IntentionCommand::Delete {
            source: s.into(),
            destination: "fcs".into(),
        };
        assert_eq!(t.apply(2, &del("fcc")), CommandResult::Bool(true));
        assert_eq!(t.table_index(), 1);
        assert_eq!(t.apply(3, &del("*")), CommandResult::Bool(true));
        assert_eq!(t.table_index(), 3);
        assert!(t.get("*", "fcs").is_none());
    }

    #[test]
    fn encode_decode_round_trips() {
        let mut t = IntentionTable::default();
        t.apply(1, &upsert("fcc", "fcs", Action::Allow, 10));
        t.apply(2, &upsert("*", "*", Action::Deny, 20));
        let mut out = Vec::new();
        t.encode(&mut out);
        let back = IntentionTable::decode(&mut Reader::new(&out, 0)).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
