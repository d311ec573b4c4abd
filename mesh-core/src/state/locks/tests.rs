//! Sessions and locks through the whole state machine: exact answers,
//! exact rows, exact lock delays.

use super::super::catalog::{
    CatalogCommand, CheckStatus, HealthCheck, Node, Registration, SERF_HEALTH_CHECK,
};
use super::super::sessions::{Behavior, Session, SessionCommand};
use super::super::{CommandResult, KvCommand, StateMachine, Table};
use super::LockDelay;

fn node_with_health(sm: &mut StateMachine, index: u64, node: &str, status: CheckStatus) {
    let r = Registration {
        node: Node {
            node: node.into(),
            address: "10.0.0.1".into(),
            ..Node::default()
        },
        checks: vec![HealthCheck {
            check_id: SERF_HEALTH_CHECK.into(),
            name: "Serf Health Status".into(),
            status,
            ..HealthCheck::default()
        }],
        ..Registration::default()
    };
    sm.apply(index, &CatalogCommand::Register(Box::new(r)).into());
}

fn session(id: &str, node: &str, behavior: Behavior) -> Session {
    Session {
        id: id.into(),
        node: node.into(),
        behavior,
        lock_delay_ns: 15_000_000_000,
        node_checks: vec![SERF_HEALTH_CHECK.into()],
        ..Session::default()
    }
}

fn create(sm: &mut StateMachine, index: u64, s: Session) -> CommandResult {
    sm.apply(index, &SessionCommand::Create(Box::new(s)).into())
}

fn lock(sm: &mut StateMachine, index: u64, key: &str, value: &[u8], id: &str) -> CommandResult {
    let cmd = KvCommand::Lock {
        key: key.into(),
        value: value.to_vec(),
        flags: 0,
        session: id.into(),
        checked_at: 0,
    };
    sm.apply(index, &cmd.into())
}

fn unlock(sm: &mut StateMachine, index: u64, key: &str, id: &str) -> CommandResult {
    let cmd = KvCommand::Unlock {
        key: key.into(),
        value: b"released".to_vec(),
        flags: 0,
        session: id.into(),
    };
    sm.apply(index, &cmd.into())
}

/// A machine with node n1 alive and session s1 on it.
fn with_session(behavior: Behavior) -> StateMachine {
    let mut sm = StateMachine::new();
    node_with_health(&mut sm, 1, "n1", CheckStatus::Passing);
    assert_eq!(
        create(&mut sm, 2, session("s1", "n1", behavior)),
        CommandResult::Bool(true)
    );
    sm
}

#[test]
fn create_needs_the_node_and_healthy_checks() {
    let mut sm = StateMachine::new();
    assert_eq!(
        create(&mut sm, 1, session("s1", "n1", Behavior::Release)),
        CommandResult::Failed("Missing node registration".into())
    );
    node_with_health(&mut sm, 2, "n1", CheckStatus::Critical);
    assert_eq!(
        create(&mut sm, 3, session("s1", "n1", Behavior::Release)),
        CommandResult::Failed("Check 'serfHealth' is in critical state".into())
    );
    let mut other = session("s1", "n1", Behavior::Release);
    other.node_checks = vec!["mem".into()];
    assert_eq!(
        create(&mut sm, 4, other),
        CommandResult::Failed("Missing check 'mem' registration".into())
    );
    assert!(sm.sessions().is_empty());
    assert_eq!(
        sm.table_index(Table::Sessions),
        0,
        "failures change nothing"
    );

    node_with_health(&mut sm, 5, "n1", CheckStatus::Passing);
    assert_eq!(
        create(&mut sm, 6, session("s1", "n1", Behavior::Release)),
        CommandResult::Bool(true)
    );
    let s = sm.sessions().get("s1").unwrap();
    assert_eq!((s.create_index, s.modify_index), (6, 6));
    assert_eq!(
        create(&mut sm, 7, session("s1", "n1", Behavior::Release)),
        CommandResult::Failed("Session ID \"s1\" is already in use".into())
    );
    assert_eq!(sm.table_index(Table::Sessions), 6);
    sm.check_invariants();
}

#[test]
fn lock_and_unlock_follow_consul() {
    let mut sm = with_session(Behavior::Release);
    create(&mut sm, 3, session("s2", "n1", Behavior::Release));
    assert_eq!(lock(&mut sm, 4, "k", b"a", "s1"), CommandResult::Bool(true));
    let e = sm.kv().get("k").unwrap().clone();
    assert_eq!(
        (e.lock_index, e.session.as_deref(), e.value.as_slice()),
        (1, Some("s1"), &b"a"[..])
    );
    // The holder re-acquiring writes the value; the lock index stays.
    assert_eq!(lock(&mut sm, 5, "k", b"b", "s1"), CommandResult::Bool(true));
    let e = sm.kv().get("k").unwrap().clone();
    assert_eq!(
        (e.lock_index, e.modify_index, e.value.as_slice()),
        (1, 5, &b"b"[..])
    );
    // Re-acquiring with the same value and flags changes nothing at all,
    // so watchers of a leader key renewed in a loop sleep on.
    assert_eq!(lock(&mut sm, 6, "k", b"b", "s1"), CommandResult::Bool(true));
    assert_eq!(sm.kv().get("k").unwrap(), &e);
    assert_eq!(sm.table_index(Table::Kv), 5);
    // An empty session is an error, for a release too.
    assert_eq!(
        unlock(&mut sm, 7, "k", ""),
        CommandResult::Failed("missing session".into())
    );
    // Another session is refused and nothing changes.
    assert_eq!(
        lock(&mut sm, 8, "k", b"c", "s2"),
        CommandResult::Bool(false)
    );
    assert_eq!(sm.kv().get("k").unwrap(), &e);
    assert_eq!(sm.table_index(Table::Kv), 5);
    // A session that does not exist is an error.
    assert_eq!(
        lock(&mut sm, 9, "k", b"c", "nope"),
        CommandResult::Failed("invalid session \"nope\"".into())
    );
    // Only the holder releases.
    assert_eq!(unlock(&mut sm, 10, "k", "s2"), CommandResult::Bool(false));
    assert_eq!(unlock(&mut sm, 11, "k", "s1"), CommandResult::Bool(true));
    let e = sm.kv().get("k").unwrap().clone();
    assert_eq!(
        (e.lock_index, e.session, e.modify_index, e.value.as_slice()),
        (1, None, 11, &b"released"[..])
    );
    // The next holder bumps the lock index.
    assert_eq!(
        lock(&mut sm, 12, "k", b"d", "s2"),
        CommandResult::Bool(true)
    );
    assert_eq!(sm.kv().get("k").unwrap().lock_index, 2);
    assert_eq!(
        unlock(&mut sm, 13, "missing", "s2"),
        CommandResult::Bool(false)
    );
    // A plain write keeps the lock.
    sm.apply(
        14,
        &KvCommand::Set {
            key: "k".into(),
            value: b"e".to_vec(),
            flags: 0,
        }
        .into(),
    );
    assert_eq!(sm.kv().get("k").unwrap().session.as_deref(), Some("s2"));
    sm.check_invariants();
    let restored = StateMachine::restore(&sm.snapshot()).unwrap();
    assert_eq!(restored, sm);
    assert_eq!(restored.digest(), sm.digest());
}

#[test]
fn destroy_releases_keys_and_leaves_lock_delays() {
    let mut sm = with_session(Behavior::Release);
    lock(&mut sm, 3, "a", b"1", "s1");
    lock(&mut sm, 4, "b", b"2", "s1");
    sm.apply(5, &SessionCommand::Destroy { id: "s1".into() }.into());
    assert!(sm.sessions().get("s1").is_none());
    for key in ["a", "b"] {
        let e = sm.kv().get(key).unwrap();
        assert_eq!(
            (e.session.as_deref(), e.modify_index, e.lock_index),
            (None, 5, 1)
        );
    }
    assert_eq!(sm.table_index(Table::Kv), 5);
    assert_eq!(
        sm.take_lock_delays(),
        [
            LockDelay {
                key: "a".into(),
                delay_ms: 15_000
            },
            LockDelay {
                key: "b".into(),
                delay_ms: 15_000
            }
        ]
    );
    assert!(sm.take_lock_delays().is_empty(), "drained");
    // Destroying again is not an error and changes nothing.
    assert_eq!(
        sm.apply(6, &SessionCommand::Destroy { id: "s1".into() }.into()),
        CommandResult::Bool(true)
    );
    assert_eq!(sm.table_index(Table::Sessions), 5);
}

#[test]
fn delete_behavior_deletes_the_keys() {
    let mut sm = with_session(Behavior::Delete);
    lock(&mut sm, 3, "a", b"1", "s1");
    sm.apply(4, &SessionCommand::Destroy { id: "s1".into() }.into());
    assert!(sm.kv().get("a").is_none());
    assert_eq!(sm.take_lock_delays().len(), 1);
}

#[test]
fn a_critical_check_or_a_departed_node_invalidates_at_the_same_index() {
    let mut sm = with_session(Behavior::Release);
    create(&mut sm, 3, session("s2", "n2", Behavior::Release));
    node_with_health(&mut sm, 4, "n2", CheckStatus::Passing);
    assert_eq!(
        create(&mut sm, 5, session("s2", "n2", Behavior::Release)),
        CommandResult::Bool(true)
    );
    lock(&mut sm, 6, "a", b"1", "s1");
    lock(&mut sm, 7, "b", b"1", "s2");
    // n1's serfHealth turns critical: s1 goes, s2 stays.
    sm.apply(
        8,
        &CatalogCommand::NodeHealth {
            node: "n1".into(),
            status: CheckStatus::Critical,
            output: "gone".into(),
        }
        .into(),
    );
    assert!(sm.sessions().get("s1").is_none());
    assert!(sm.sessions().get("s2").is_some());
    assert_eq!(sm.kv().get("a").unwrap().session, None);
    assert_eq!(sm.kv().get("a").unwrap().modify_index, 8);
    // n2 is deregistered: s2 goes.
    sm.apply(
        9,
        &CatalogCommand::Deregister {
            node: "n2".into(),
            service_id: None,
            check_id: None,
        }
        .into(),
    );
    assert!(sm.sessions().is_empty());
    assert_eq!(sm.kv().get("b").unwrap().session, None);
    assert_eq!(sm.take_lock_delays().len(), 2);
    sm.check_invariants();
}

#[test]
fn sessions_without_checks_survive_their_node_failing() {
    let mut sm = StateMachine::new();
    node_with_health(&mut sm, 1, "n1", CheckStatus::Passing);
    let mut s = session("s1", "n1", Behavior::Release);
    s.node_checks.clear();
    create(&mut sm, 2, s);
    node_with_health(&mut sm, 3, "n1", CheckStatus::Critical);
    assert!(sm.sessions().get("s1").is_some());
}

#[test]
fn ttls_are_checked_as_consul_does() {
    use super::super::sessions::ttl_ms;
    assert_eq!(ttl_ms(""), Ok(0));
    assert_eq!(ttl_ms("0s"), Ok(0));
    assert_eq!(ttl_ms("30s"), Ok(30_000));
    assert_eq!(ttl_ms("24h"), Ok(86_400_000));
    assert_eq!(
        ttl_ms("5s"),
        Err("Invalid Session TTL '5000000000', must be between [10s=24h0m0s]".into())
    );
    assert!(ttl_ms("25h")
        .unwrap_err()
        .starts_with("Invalid Session TTL"));
    assert!(ttl_ms("5")
        .unwrap_err()
        .starts_with("Session TTL '5' invalid"));
    let mut sm = StateMachine::new();
    node_with_health(&mut sm, 1, "n1", CheckStatus::Passing);
    let mut s = session("s1", "n1", Behavior::Release);
    s.ttl = "1s".into();
    assert!(
        matches!(create(&mut sm, 2, s), CommandResult::Failed(e) if e.starts_with("Invalid Session TTL"))
    );
}

#[test]
fn a_lock_checked_before_a_release_is_refused() {
    let mut sm = with_session(Behavior::Release);
    create(&mut sm, 3, session("s2", "n1", Behavior::Release));
    lock(&mut sm, 4, "k", b"a", "s1");
    sm.apply(5, &SessionCommand::Destroy { id: "s1".into() }.into());
    let at = |checked_at: u64| KvCommand::Lock {
        key: "k".into(),
        value: b"b".to_vec(),
        flags: 0,
        session: "s2".into(),
        checked_at,
    };
    // The leader checked the delay at index 4, before the release at 5:
    // the delay it did not see still applies.
    assert_eq!(sm.apply(6, &at(4).into()), CommandResult::Bool(false));
    assert_eq!(sm.kv().get("k").unwrap().session, None);
    // A check after the release saw it (and its delay): the lock is
    // the leader's to judge.
    assert_eq!(sm.apply(7, &at(5).into()), CommandResult::Bool(true));
    let restored = StateMachine::restore(&sm.snapshot()).unwrap();
    assert_eq!(restored, sm, "remembered releases survive a snapshot");
    assert!(restored.sessions().released_since("k", 4));
    assert!(!restored.sessions().released_since("k", 0), "unchecked");
}
