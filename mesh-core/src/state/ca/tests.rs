//! The CA table's rules, applied command by command.

use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::state::binary::Reader;

const DAY: u64 = 86_400;
const START: u64 = 1_800_000_000;

fn root(serial: u64) -> CaRoot {
    let now = UNIX_EPOCH + Duration::from_secs(START);
    crate::connect::ca::generate_root("c1.consul", serial, now, Duration::from_secs(3650 * DAY))
        .unwrap()
}

fn initialized() -> (CaTable, CaRoot) {
    let mut t = CaTable::default();
    let first = root(1);
    let cmd = CaCommand::Initialize {
        cluster_id: "c1".into(),
        root: Box::new(first.clone()),
    };
    assert_eq!(t.apply(1, &cmd), CommandResult::Bool(true));
    (t, first)
}

fn rotate(
    t: &mut CaTable,
    index: u64,
    new: &CaRoot,
    at: u64,
    config: Option<CaConfig>,
) -> CommandResult {
    let replaces = t.active_root().unwrap().id.clone();
    t.apply(
        index,
        &CaCommand::Rotate {
            root: Box::new(new.clone()),
            replaces,
            now_unix: at,
            config,
        },
    )
}

fn ids(t: &CaTable) -> Vec<u64> {
    t.roots().iter().map(|r| r.root.serial_number).collect()
}

fn hours(h: u64) -> CaConfig {
    CaConfig {
        leaf_cert_ttl_secs: h * 3600,
        ..CaConfig::default()
    }
}

#[test]
fn a_rotated_out_root_stays_trusted_for_two_of_its_longest_leaf_lifetimes() {
    let (mut t, _) = initialized();
    // 72 h leaves by default. Rotate at START: root 1 is rotated out.
    assert_eq!(
        rotate(&mut t, 2, &root(2), START, None),
        CommandResult::Bool(true)
    );
    // A day short of two lifetimes later root 1 is still there.
    assert_eq!(
        rotate(&mut t, 3, &root(3), START + 5 * DAY, None),
        CommandResult::Bool(true)
    );
    assert_eq!(ids(&t), [1, 2, 3]);
    // Past two lifetimes (6 days) it goes; root 2 (rotated out at +5 d) stays.
    assert_eq!(
        rotate(&mut t, 4, &root(4), START + 6 * DAY + 1, None),
        CommandResult::Bool(true)
    );
    assert_eq!(ids(&t), [2, 3, 4]);
}

#[test]
fn shortening_the_leaf_ttl_does_not_shorten_an_old_roots_trust() {
    let (mut t, _) = initialized();
    // Root 1 signs 72 h leaves, then the TTL drops to 1 h and it rotates out.
    assert_eq!(
        t.apply(2, &CaCommand::SetConfig { config: hours(1) }),
        CommandResult::Bool(true)
    );
    assert_eq!(
        rotate(&mut t, 3, &root(2), START, None),
        CommandResult::Bool(true)
    );
    // Three hours on (well past two of today's 1 h lifetimes), root 1's
    // 72 h leaves may still be out there: it stays.
    assert_eq!(
        rotate(&mut t, 4, &root(3), START + 3 * 3600, None),
        CommandResult::Bool(true)
    );
    assert_eq!(ids(&t), [1, 2, 3]);
    // Root 2 only ever signed 1 h leaves: gone two hours after its rotation.
    assert_eq!(
        rotate(&mut t, 5, &root(4), START + 3 * 3600 + 2 * 3600 + 1, None),
        CommandResult::Bool(true)
    );
    assert_eq!(ids(&t), [1, 3, 4]);
    assert_eq!(t.roots()[0].longest_leaf_ttl_secs, 72 * 3600);
}

#[test]
fn a_rotation_with_new_settings_is_one_change_or_none() {
    let (mut t, first) = initialized();
    assert_eq!(
        rotate(&mut t, 2, &root(2), START, Some(hours(24))),
        CommandResult::Bool(true)
    );
    assert_eq!(t.config().leaf_cert_ttl_secs, 24 * 3600);
    assert_eq!(t.active_root().unwrap().serial_number, 2);
    // Invalid settings refuse the whole rotation: no new root either.
    let before = t.clone();
    let bad = CaConfig {
        leaf_cert_ttl_secs: 1,
        ..CaConfig::default()
    };
    match rotate(&mut t, 3, &root(3), START, Some(bad)) {
        CommandResult::Failed(m) => assert!(m.contains("LeafCertTTL"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.roots(), before.roots());
    assert_eq!(t.config(), before.config());
    // A rotation prepared against a root that is no longer active loses.
    let stale = t.apply(
        4,
        &CaCommand::Rotate {
            root: Box::new(root(5)),
            replaces: first.id.clone(),
            now_unix: START,
            config: None,
        },
    );
    assert!(matches!(stale, CommandResult::Failed(m) if m.contains("another rotation")));
}

#[test]
fn the_table_round_trips_and_reads_state_from_before_leaf_lifetimes_were_kept() {
    let (mut t, _) = initialized();
    rotate(&mut t, 2, &root(2), START, Some(hours(24)));
    let mut bytes = Vec::new();
    t.encode(&mut bytes);
    let back = CaTable::decode(&mut Reader::new(&bytes, 0)).unwrap();
    assert_eq!(back, t);
    // Without the field (older state): it reads, as 0, and pruning falls
    // back to the current TTL.
    let mut json: serde_json::Value = serde_json::to_value(&t).unwrap();
    for r in json["roots"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("longest_leaf_ttl_secs");
    }
    let old: CaTable = serde_json::from_value(json).unwrap();
    assert!(old.roots().iter().all(|r| r.longest_leaf_ttl_secs == 0));
}
