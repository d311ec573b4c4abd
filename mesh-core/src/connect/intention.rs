//! Intentions: which service may open connections to which, and how a
//! sidecar decides for one connection.
//!
//! An intention names a source and a destination service, each either a
//! name or the wildcard `*`, and an action (allow or deny). For a
//! connection from `S` to `D`, the matching intention with the highest
//! [`precedence`] decides; with none, the configured default does (deny out
//! of the box, as Consul with ACLs in default-deny). Precedence is Consul's
//! table for one namespace:
//!
//! | destination | source | precedence |
//! |---|---|---|
//! | exact | exact | 9 |
//! | exact | `*` | 8 |
//! | `*` | exact | 6 |
//! | `*` | `*` | 5 |
//!
//! At most one intention exists per (source, destination) pair, so two
//! matches never share a precedence; if they ever did (a state built by
//! hand), deny wins.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::spiffe::DEFAULT_NAMESPACE;

/// The wildcard that matches every service.
pub const WILDCARD: &str = "*";

/// What an intention does to a matching connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The connection may proceed.
    Allow,
    /// The connection is refused.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// An intention as the catalog stores it and the API returns it (Consul's
/// field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "PascalCase")]
pub struct Intention {
    /// A UUID, assigned when the intention is created; kept on updates.
    #[serde(rename = "ID")]
    pub id: String,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// Always `default`.
    #[serde(rename = "SourceNS")]
    pub source_ns: String,
    /// The calling service, or `*`.
    pub source_name: String,
    /// Always `default`.
    #[serde(rename = "DestinationNS")]
    pub destination_ns: String,
    /// The called service, or `*`.
    pub destination_name: String,
    /// Always `consul` (Consul's only source type).
    pub source_type: String,
    /// Allow or deny.
    pub action: Action,
    /// See the module docs.
    pub precedence: u32,
    /// Operator metadata, kept verbatim.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// When it was created, RFC 3339 (the leader's wall clock).
    pub created_at: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
    /// Raft index of the write that created it.
    pub create_index: u64,
    /// Raft index of the write that last changed it.
    pub modify_index: u64,
}

/// Consul's precedence of an intention from `source` to `destination`
/// (see the module docs).
pub fn precedence(source: &str, destination: &str) -> u32 {
    match (destination == WILDCARD, source == WILDCARD) {
        (false, false) => 9,
        (false, true) => 8,
        (true, false) => 6,
        (true, true) => 5,
    }
}

/// Checks a source or destination name as the API receives it: a service
/// name or the wildcard, nothing in between (Consul refuses `web*`).
pub fn validate_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{field} is required"));
    }
    if name != WILDCARD && name.contains('*') {
        return Err(format!(
            "{field} {name:?}: the wildcard '*' must be the whole name, not a part of it"
        ));
    }
    if name.len() > 256 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!(
            "{field} {:?}: not a valid service name (at most 256 characters, no '/' or \
             control characters)",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

impl Intention {
    /// Whether this intention applies to a connection from `source` to
    /// `destination`.
    pub fn matches(&self, source: &str, destination: &str) -> bool {
        (self.source_name == WILDCARD || self.source_name == source)
            && (self.destination_name == WILDCARD || self.destination_name == destination)
    }

    /// Consul's one-line description: `ALLOW default/fcc => default/fcs`.
    pub fn summary(&self) -> String {
        format!(
            "{} {}/{} => {}/{}",
            self.action.to_string().to_uppercase(),
            self.source_ns,
            self.source_name,
            self.destination_ns,
            self.destination_name
        )
    }

    /// A new intention's fields before indexes and times are known; the
    /// table fills those in.
    pub fn new(source: &str, destination: &str, action: Action) -> Intention {
        Intention {
            id: String::new(),
            description: String::new(),
            source_ns: DEFAULT_NAMESPACE.to_owned(),
            source_name: source.to_owned(),
            destination_ns: DEFAULT_NAMESPACE.to_owned(),
            destination_name: destination.to_owned(),
            source_type: "consul".to_owned(),
            action,
            precedence: precedence(source, destination),
            meta: BTreeMap::new(),
            created_at: String::new(),
            updated_at: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// The decision for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// The intention that decided, if one matched.
    pub matched: Option<Intention>,
    /// Consul's `Reason` text for `/v1/agent/connect/authorize`.
    pub reason: String,
}

/// Decides a connection from `source` to `destination` under `intentions`
/// (any order), falling back to `default_allow` when none matches.
pub fn decide<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    source: &str,
    destination: &str,
    default_allow: bool,
) -> Decision {
    let best = intentions
        .into_iter()
        .filter(|i| i.matches(source, destination))
        // Highest precedence first; at equal precedence deny first.
        .min_by_key(|i| (std::cmp::Reverse(i.precedence), i.action == Action::Allow));
    match best {
        Some(i) => Decision {
            allowed: i.action == Action::Allow,
            reason: format!(
                "Matched L4 intention: {} (ID: {}, Precedence: {})",
                i.summary(),
                i.id,
                i.precedence
            ),
            matched: Some(i.clone()),
        },
        None => Decision {
            allowed: default_allow,
            matched: None,
            reason: format!(
                "Default behavior configured by ACLs: {}",
                if default_allow { "allow" } else { "deny" }
            ),
        },
    }
}

/// The intentions that apply to `name` as a destination (Consul's
/// `/v1/connect/intentions/match?by=destination`), highest precedence
/// first.
pub fn match_destination<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    name: &str,
) -> Vec<Intention> {
    matching(intentions, name, |i| &i.destination_name)
}

/// The intentions that apply to `name` as a source (`by=source`), highest
/// precedence first.
pub fn match_source<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    name: &str,
) -> Vec<Intention> {
    matching(intentions, name, |i| &i.source_name)
}

fn matching<'a>(
    intentions: impl IntoIterator<Item = &'a Intention>,
    name: &str,
    side: impl Fn(&Intention) -> &String,
) -> Vec<Intention> {
    sorted(
        intentions
            .into_iter()
            .filter(|i| side(i) == WILDCARD || side(i) == name),
    )
}

/// Intentions in the order Consul lists them: highest precedence first,
/// deny before allow, then by source and destination name.
pub fn sorted<'a>(matches: impl Iterator<Item = &'a Intention>) -> Vec<Intention> {
    let mut v: Vec<Intention> = matches.cloned().collect();
    v.sort_by(|a, b| {
        b.precedence
            .cmp(&a.precedence)
            .then_with(|| (a.action == Action::Allow).cmp(&(b.action == Action::Allow)))
            .then_with(|| a.source_name.cmp(&b.source_name))
            .then_with(|| a.destination_name.cmp(&b.destination_name))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ixn(source: &str, destination: &str, action: Action) -> Intention {
        let mut i = Intention::new(source, destination, action);
        i.id = format!("{source}->{destination}");
        i
    }

    #[test]
    fn precedence_is_consuls_table() {
        assert_eq!(precedence("fcc", "fcs"), 9);
        assert_eq!(precedence("*", "fcs"), 8);
        assert_eq!(precedence("fcc", "*"), 6);
        assert_eq!(precedence("*", "*"), 5);
    }

    #[test]
    fn no_intention_falls_back_to_the_default() {
        let d = decide([], "fcc", "fcs", false);
        assert!(!d.allowed);
        assert_eq!(d.matched, None);
        assert_eq!(d.reason, "Default behavior configured by ACLs: deny");
        assert!(decide([], "fcc", "fcs", true).allowed);
    }

    #[test]
    fn exact_beats_wildcard_in_both_directions() {
        let all = [
            ixn("*", "*", Action::Deny),
            ixn("fcc", "*", Action::Allow),
            ixn("*", "fcs", Action::Deny),
            ixn("fcc", "fcs", Action::Allow),
        ];
        let d = decide(&all, "fcc", "fcs", false);
        assert!(d.allowed);
        assert_eq!(d.matched.unwrap().id, "fcc->fcs");
        assert_eq!(
            d.reason,
            "Matched L4 intention: ALLOW default/fcc => default/fcs (ID: fcc->fcs, Precedence: 9)"
        );
        // Without the exact pair, the exact destination (8) beats the exact
        // source (6).
        let d = decide(&all[..3], "fcc", "fcs", true);
        assert!(!d.allowed);
        assert_eq!(d.matched.unwrap().id, "*->fcs");
        // Another destination: the exact source rule applies.
        assert!(decide(&all, "fcc", "db", false).allowed);
        // Another source and destination: the wildcard pair.
        assert!(!decide(&all, "web", "db", true).allowed);
    }

    #[test]
    fn deny_wins_a_tie() {
        let all = [
            ixn("fcc", "fcs", Action::Allow),
            ixn("fcc", "fcs", Action::Deny),
        ];
        assert!(!decide(&all, "fcc", "fcs", true).allowed);
        let reversed = [all[1].clone(), all[0].clone()];
        assert!(!decide(&reversed, "fcc", "fcs", true).allowed);
    }

    #[test]
    fn match_lists_highest_precedence_first() {
        let all = [
            ixn("*", "*", Action::Deny),
            ixn("fcc", "fcs", Action::Allow),
            ixn("*", "fcs", Action::Deny),
            ixn("fcc", "db", Action::Allow),
        ];
        let ids = |v: Vec<Intention>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(
            ids(match_destination(&all, "fcs")),
            ["fcc->fcs", "*->fcs", "*->*"]
        );
        assert_eq!(
            ids(match_source(&all, "fcc")),
            ["fcc->db", "fcc->fcs", "*->fcs", "*->*"]
        );
    }

    #[test]
    fn names_are_a_service_or_the_wildcard() {
        assert!(validate_name("SourceName", "fcc").is_ok());
        assert!(validate_name("SourceName", "*").is_ok());
        assert_eq!(
            validate_name("SourceName", "fc*").unwrap_err(),
            "SourceName \"fc*\": the wildcard '*' must be the whole name, not a part of it"
        );
        assert_eq!(
            validate_name("DestinationName", "").unwrap_err(),
            "DestinationName is required"
        );
        assert!(validate_name("SourceName", "a/b").is_err());
    }

    #[test]
    fn serializes_with_consuls_field_names() {
        let v = serde_json::to_value(ixn("fcc", "fcs", Action::Allow)).unwrap();
        for key in [
            "ID",
            "SourceNS",
            "SourceName",
            "DestinationNS",
            "DestinationName",
            "SourceType",
            "Action",
            "Precedence",
            "Meta",
            "CreatedAt",
            "UpdatedAt",
            "CreateIndex",
            "ModifyIndex",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["Action"], "allow");
    }
}
