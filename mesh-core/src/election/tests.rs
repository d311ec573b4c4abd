//! Tests of [`Elections`], as stories with exact outputs: one server alone,
//! driven by hand.

use super::*;

const HEARTBEAT_MS: u64 = 50;
const MIN_MS: u64 = 200;
const MAX_MS: u64 = 400;
/// A follower refuses PreVotes for this long after hearing from a leader.
const LEASE_MS: u64 = MAX_MS;
const SPREAD_MS: u64 = MAX_MS - MIN_MS;
const TIMING: ElectionTiming = ElectionTiming {
    heartbeat_ms: HEARTBEAT_MS,
    election_timeout_min_ms: MIN_MS,
    election_timeout_max_ms: MAX_MS,
};

fn drain(e: &mut Elections) -> Vec<Output> {
    let mut outputs = Vec::new();
    while let Some(o) = e.poll_output() {
        outputs.push(o);
    }
    e.check_invariants();
    outputs
}

fn role(role: Role, voters: &[u64], term: u64) -> Input {
    Input::Role {
        role,
        voters: voters.to_vec(),
        term,
    }
}

/// Server 1 of `voters`, a follower at term 1 with last log (1, 3) that last
/// heard from its leader at `contact_ms`.
fn follower(voters: &[u64], contact_ms: u64) -> Elections {
    let mut e = Elections::new(1, TIMING, 7, 0);
    e.handle(0, role(Role::Follower, voters, 1));
    e.handle(0, Input::LastLog(Some((1, 3))));
    e.handle(contact_ms, Input::LeaderContact);
    assert_eq!(drain(&mut e), []);
    e
}

/// Jumps to `e`'s deadline and fires it: `(deadline, outputs)`.
fn fire(e: &mut Elections) -> (u64, Vec<Output>) {
    let at_ms = e.poll_timeout().expect("a deadline");
    e.handle_timeout(at_ms);
    (at_ms, drain(e))
}

fn ask(round: u64, to: &[u64]) -> Output {
    Output::AskPreVote {
        round,
        to: to.to_vec(),
        last_log: Some((1, 3)),
    }
}

fn reply(round: u64, from: u64, granted: bool) -> Input {
    Input::PreVoteReply {
        round,
        from,
        granted,
    }
}

// ---- one server ----------------------------------------------------------

#[test]
fn follower_hearing_its_leader_never_emits() {
    let mut e = follower(&[1, 2, 3], 0);
    for now_ms in (0..60_000).step_by(HEARTBEAT_MS as usize) {
        e.handle(now_ms, Input::LeaderContact);
        e.handle_timeout(now_ms);
        assert_eq!(drain(&mut e), []);
        let wait_ms = e.poll_timeout().expect("a voter may campaign") - now_ms;
        assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&wait_ms));
    }
}

#[test]
fn nothing_is_due_before_the_deadline() {
    let mut e = follower(&[1, 2, 3], 1_000);
    let deadline_ms = e.poll_timeout().unwrap();
    assert!((1_000 + LEASE_MS..=1_000 + LEASE_MS + SPREAD_MS).contains(&deadline_ms));
    e.handle_timeout(deadline_ms - 1);
    assert_eq!(drain(&mut e), []);
    assert_eq!(e.poll_timeout(), Some(deadline_ms));
    e.handle_timeout(deadline_ms);
    assert_eq!(drain(&mut e), [ask(1, &[2, 3])]);
    assert_eq!(
        e.poll_timeout(),
        Some(deadline_ms + MIN_MS),
        "round deadline"
    );
}

#[test]
fn majority_of_five_ends_the_round_at_the_third_grant() {
    let mut e = follower(&[1, 2, 3, 4, 5], 0);
    let (at_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3, 4, 5])]);
    e.handle(at_ms + 1, reply(1, 4, false));
    assert_eq!(drain(&mut e), []);
    e.handle(at_ms + 2, reply(1, 2, true));
    assert_eq!(drain(&mut e), [], "two of five (itself included)");
    e.handle(at_ms + 3, reply(1, 5, true));
    assert_eq!(drain(&mut e), [Output::StartElection { round: 1 }]);
    // The last answer belongs to a finished round.
    e.handle(at_ms + 4, reply(1, 3, true));
    assert_eq!(drain(&mut e), []);
}

#[test]
fn single_voter_elects_without_asking() {
    let mut e = follower(&[1], 0);
    let (at_ms, out) = fire(&mut e);
    assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&at_ms));
    assert_eq!(out, [Output::StartElection { round: 1 }]);
    // openraft makes it a candidate, then the leader.
    e.handle(at_ms, role(Role::Candidate, &[1], 2));
    let retry_ms = e.poll_timeout().unwrap() - at_ms;
    assert!((MIN_MS..=MAX_MS).contains(&retry_ms), "a candidate's wait");
    e.handle(at_ms + 1, role(Role::Leader, &[1], 2));
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn every_no_fails_the_round_and_the_next_wait_is_drawn_from_its_start() {
    let mut e = follower(&[1, 2, 3], 0);
    let (start_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3])]);
    e.handle(start_ms + 5, reply(1, 2, false));
    e.handle(start_ms + 9, Input::PreVoteFailed { round: 1, from: 3 });
    assert_eq!(drain(&mut e), []);
    let wait_ms = e.poll_timeout().unwrap() - start_ms;
    assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&wait_ms));
    let (_, out) = fire(&mut e);
    assert_eq!(out, [ask(2, &[2, 3])]);
}

#[test]
fn missing_answers_count_as_no_at_the_round_deadline() {
    let mut e = follower(&[1, 2, 3], 0);
    let (start_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3])]);
    e.handle(start_ms + 1, reply(1, 2, false));
    let deadline_ms = start_ms + MIN_MS;
    assert_eq!(e.poll_timeout(), Some(deadline_ms));
    // Peer 3's yes arrives at the deadline: too late, even before the
    // driver's timer fired.
    e.handle(deadline_ms, reply(1, 3, true));
    assert_eq!(drain(&mut e), []);
    e.handle_timeout(deadline_ms);
    assert_eq!(drain(&mut e), []);
    let wait_ms = e.poll_timeout().unwrap() - start_ms;
    assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&wait_ms));
    let (_, out) = fire(&mut e);
    assert_eq!(out, [ask(2, &[2, 3])]);
}

#[test]
fn answers_of_another_round_or_peer_are_ignored() {
    let mut e = follower(&[1, 2, 3, 4, 5], 0);
    let (at_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3, 4, 5])]);
    for input in [
        reply(0, 2, true),
        reply(2, 2, true),
        reply(1, 9, true),
        reply(1, 1, true),
        reply(1, 2, true),
        reply(1, 2, true),
        Input::PreVoteFailed { round: 7, from: 3 },
    ] {
        e.handle(at_ms + 1, input);
        assert_eq!(drain(&mut e), []);
    }
    assert_eq!(e.poll_timeout(), Some(at_ms + MIN_MS), "round still open");
    // 2's first yes counted once; 3's makes three of five.
    e.handle(at_ms + 2, reply(1, 3, true));
    assert_eq!(drain(&mut e), [Output::StartElection { round: 1 }]);
}

#[test]
fn answers_after_leader_contact_or_a_granted_vote_are_stale() {
    for signal in [Input::LeaderContact, Input::VoteGranted] {
        let mut e = follower(&[1, 2, 3], 0);
        let (at_ms, out) = fire(&mut e);
        assert_eq!(out, [ask(1, &[2, 3])]);
        e.handle(at_ms + 10, signal.clone());
        e.handle(at_ms + 11, reply(1, 2, true));
        e.handle(at_ms + 12, reply(1, 3, true));
        assert_eq!(drain(&mut e), [], "{signal:?}");
        // The wait restarted at the signal.
        let wait_ms = e.poll_timeout().unwrap() - (at_ms + 10);
        assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&wait_ms));
        let (_, out) = fire(&mut e);
        assert_eq!(out, [ask(2, &[2, 3])]);
    }
}

#[test]
fn an_undrained_start_election_is_withdrawn_by_leader_contact() {
    let mut e = follower(&[1, 2, 3], 0);
    let (at_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3])]);
    e.handle(at_ms + 1, reply(1, 2, true));
    // The driver breaks the contract and does not drain before the next
    // event; the decision predates the contact and must not survive it.
    e.handle(at_ms + 2, Input::LeaderContact);
    assert_eq!(drain(&mut e), []);
}

#[test]
fn a_voter_set_change_fails_the_round() {
    let mut e = follower(&[1, 2, 3], 0);
    let (at_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3])]);
    e.handle(at_ms + 1, role(Role::Follower, &[1, 2, 3, 4, 5], 1));
    e.handle(at_ms + 2, reply(1, 2, true));
    assert_eq!(drain(&mut e), [], "a majority of 3 is not one of 5");
    let (_, out) = fire(&mut e);
    assert_eq!(out, [ask(2, &[2, 3, 4, 5])]);
}

#[test]
fn would_vote_for_follows_the_lease_and_the_log() {
    let mut e = follower(&[1, 2, 3], 1_000);
    let ours = Some((1, 3));
    assert!(
        !e.would_vote_for(1_000 + LEASE_MS - 1, ours),
        "inside the lease"
    );
    assert!(
        e.would_vote_for(1_000 + LEASE_MS, ours),
        "lease over, equal log"
    );
    let after_ms = 1_000 + LEASE_MS;
    // §5.4.1: the later term wins, then the longer log.
    assert!(e.would_vote_for(after_ms, Some((2, 1))));
    assert!(e.would_vote_for(after_ms, Some((1, 4))));
    assert!(!e.would_vote_for(after_ms, Some((1, 2))));
    assert!(!e.would_vote_for(after_ms, Some((0, 9))));
    assert!(!e.would_vote_for(after_ms, None));
    // A clock reading before the contact counts as inside the lease.
    assert!(!e.would_vote_for(999, ours));
    // A candidate grants too (its election split; a real vote would as well).
    e.handle(after_ms, role(Role::Candidate, &[1, 2, 3], 2));
    assert!(e.would_vote_for(after_ms, ours));
    // A leader never does.
    e.handle(after_ms, role(Role::Leader, &[1, 2, 3], 2));
    assert!(!e.would_vote_for(after_ms + 10_000, Some((9, 9))));
    // An empty log grants anyone.
    let fresh = Elections::new(1, TIMING, 7, 0);
    assert!(fresh.would_vote_for(0, None));
}

#[test]
fn a_granted_vote_restarts_the_wait_but_is_no_lease() {
    let mut e = follower(&[1, 2, 3], 0);
    e.handle(1_000, Input::VoteGranted);
    assert!(e.poll_timeout().unwrap() >= 1_000 + LEASE_MS);
    assert!(e.would_vote_for(1_000, Some((1, 3))), "no leader was heard");
}

#[test]
fn stale_role_reports_are_ignored() {
    let mut e = follower(&[1, 2, 3], 0);
    e.handle(10, role(Role::Candidate, &[1, 2, 3], 5));
    let deadline_ms = e.poll_timeout();
    e.handle(20, role(Role::Leader, &[1, 2, 3], 4));
    assert_eq!(e.poll_timeout(), deadline_ms, "term 4 report after term 5");
}

#[test]
fn time_going_backwards_is_clamped() {
    let mut e = follower(&[1, 2, 3], 1_000);
    e.handle(500, Input::LeaderContact);
    // Counted at 1000: the wait and the lease run from there.
    let wait_ms = e.poll_timeout().unwrap() - 1_000;
    assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&wait_ms));
    assert!(!e.would_vote_for(1_000 + LEASE_MS - 1, Some((1, 3))));
    e.handle_timeout(0);
    assert_eq!(drain(&mut e), []);
}

// ---- hand-off ------------------------------------------------------------

#[test]
fn handing_off_silences_the_server() {
    let mut e = follower(&[1, 2, 3], 0);
    // Raft thesis §3.10: the leaving leader steps down when the target wins
    // and must not take leadership back.
    e.handle(0, role(Role::Leader, &[1, 2, 3], 1));
    e.handle(0, Input::HandingOff(true));
    e.handle(100, role(Role::Follower, &[1, 2, 3], 2));
    assert_eq!(e.poll_timeout(), None);
    e.handle_timeout(1_000_000);
    assert_eq!(drain(&mut e), []);
    // The hand-off failed: campaigning resumes, the wait starting now.
    e.handle(2_000_000, Input::HandingOff(false));
    let wait_ms = e.poll_timeout().unwrap() - 2_000_000;
    assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&wait_ms));
}

#[test]
fn handing_off_abandons_an_outstanding_round() {
    let mut e = follower(&[1, 2, 3], 0);
    let (at_ms, out) = fire(&mut e);
    assert_eq!(out, [ask(1, &[2, 3])]);
    e.handle(at_ms + 1, Input::HandingOff(true));
    e.handle(at_ms + 2, reply(1, 2, true));
    assert_eq!(drain(&mut e), []);
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn leaders_learners_and_non_voters_never_campaign() {
    for (r, voters) in [
        (Role::Leader, &[1, 2, 3][..]),
        (Role::Learner, &[2, 3][..]),
        (Role::Learner, &[1, 2, 3][..]),
        (Role::Follower, &[2, 3][..]),
        (Role::Candidate, &[][..]),
    ] {
        let mut e = Elections::new(1, TIMING, 7, 0);
        e.handle(0, role(r, voters, 1));
        assert_eq!(e.poll_timeout(), None, "{r:?} {voters:?}");
        e.handle_timeout(1_000_000);
        assert_eq!(drain(&mut e), []);
    }
    // Before the first role report too.
    assert_eq!(Elections::new(1, TIMING, 7, 0).poll_timeout(), None);
}

#[test]
fn hand_off_target_prefers_the_longest_log_then_the_lowest_id() {
    let voters = [1, 2, 3, 4];
    // Ties on the index: the lowest id.
    assert_eq!(
        hand_off_target(1, &voters, &[(1, Some(9)), (3, Some(5)), (2, Some(5))]),
        Some(2)
    );
    assert_eq!(
        hand_off_target(1, &voters, &[(4, Some(5)), (3, Some(5))]),
        Some(3)
    );
    // The longest matched log beats a lower id.
    assert_eq!(
        hand_off_target(1, &voters, &[(2, Some(4)), (4, Some(5))]),
        Some(4)
    );
    // Anything matched beats nothing matched.
    assert_eq!(
        hand_off_target(1, &voters, &[(2, None), (3, Some(0))]),
        Some(3)
    );
    assert_eq!(
        hand_off_target(1, &voters, &[(3, None), (2, None)]),
        Some(2)
    );
    // A learner (not a voter) is never chosen, however far ahead.
    assert_eq!(
        hand_off_target(1, &voters, &[(7, Some(100)), (2, Some(1))]),
        Some(2)
    );
    assert_eq!(hand_off_target(1, &voters, &[(7, Some(100))]), None);
    // Never itself; nobody else means no target.
    assert_eq!(hand_off_target(1, &voters, &[(1, Some(9))]), None);
    assert_eq!(hand_off_target(1, &[1], &[]), None);
    // A voter without a replication entry is not considered.
    assert_eq!(hand_off_target(1, &voters, &[]), None);
}

// ---- seeds -----------------------------------------------------------------

/// The deadlines of `n` failed rounds of a candidate nobody answers.
fn draws(seed: u64, my_id: u64, n: usize) -> Vec<u64> {
    let mut e = Elections::new(my_id, TIMING, seed, 0);
    e.handle(0, role(Role::Candidate, &[1, 2, 3], 1));
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&v| v != my_id).collect();
    let mut deadlines = Vec::new();
    let mut last_ms = 0;
    for round in 1..=n as u64 {
        let (at_ms, out) = fire(&mut e);
        assert_eq!(
            out,
            [Output::AskPreVote {
                round,
                to: others.clone(),
                last_log: None
            }]
        );
        assert!(
            (MIN_MS..=MAX_MS).contains(&(at_ms - last_ms)),
            "candidate wait"
        );
        for &from in &others {
            e.handle(at_ms, Input::PreVoteFailed { round, from });
        }
        assert_eq!(drain(&mut e), []);
        deadlines.push(at_ms);
        last_ms = at_ms;
    }
    deadlines
}

#[test]
fn same_seed_same_draws_other_seed_or_server_other_draws() {
    assert_eq!(draws(42, 1, 20), draws(42, 1, 20));
    assert_ne!(draws(42, 1, 20), draws(43, 1, 20));
    // One cluster seed, two servers: they must not draw in lockstep.
    assert_ne!(draws(42, 1, 20), draws(42, 2, 20));
}

#[test]
fn split_mix_64_matches_the_reference() {
    // First outputs for seed 0 of the reference implementation
    // (Vigna's splitmix64.c).
    let mut rng = SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    for _ in 0..1_000 {
        assert!((400..=600).contains(&rng.range_inclusive(400, 600)));
    }
    assert_eq!(rng.range_inclusive(7, 7), 7);
}
