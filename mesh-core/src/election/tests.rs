//! Tests of [`Elections`], as stories with exact outputs.
//!
//! First one server alone, driven by hand. Then [`Cluster`], a runtime-free
//! harness in the style of quinn's `Pair`: it jumps to the earliest
//! deadline, delivers PreVote questions to the other servers'
//! `would_vote_for` with zero latency, and plays out real elections and
//! heartbeats with a minimal Raft model (term, vote, log, role). Last, a
//! property test feeding random inputs to one server.

use std::collections::BTreeMap;

use proptest::prelude::*;

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
fn a_gone_leader_ends_the_lease_and_the_follower_asks_soon() {
    let mut e = follower(&[1, 2, 3], 1_000);
    assert!(!e.would_vote_for(1_010, Some((1, 3))), "inside the lease");
    e.handle(1_010, Input::LeaderGone { leader: 3 });
    assert_eq!(drain(&mut e), []);
    assert!(
        e.would_vote_for(1_010, Some((1, 3))),
        "no lease for a dead leader"
    );
    let (at_ms, outputs) = fire(&mut e);
    // Server 1 goes first among the survivors (1, 2): after the voters'
    // vote lease (3 heartbeats + 1 ms), within half a heartbeat.
    assert!(
        (1_151..=1_151 + HEARTBEAT_MS / 2).contains(&at_ms),
        "asked at {at_ms}"
    );
    assert_eq!(outputs, [ask(1, &[2, 3])]);
    // The other survivor grants: the election starts at once.
    e.handle(at_ms + 1, reply(1, 2, true));
    assert_eq!(drain(&mut e), [Output::StartElection { round: 1 }]);
}

#[test]
fn openraft_refuses_votes_for_three_heartbeats_and_never_longer_than_the_lease() {
    assert_eq!(TIMING.vote_lease_ms(), 151);
    assert_eq!(TIMING.openraft_timeouts(), (150, 151));
    let slow = ElectionTiming {
        heartbeat_ms: 150,
        election_timeout_min_ms: 200,
        election_timeout_max_ms: 400,
    };
    assert_eq!(slow.openraft_timeouts(), (399, 400));
}

#[test]
fn survivors_of_a_gone_leader_take_turns_by_id() {
    // Server 1 of voters 1..=5; leader 2 died: survivors 1, 3, 4, 5.
    let mut first = follower(&[1, 2, 3, 4, 5], 1_000);
    first.handle(1_010, Input::LeaderGone { leader: 2 });
    let due = first.poll_timeout().unwrap();
    assert!((1_151..=1_151 + HEARTBEAT_MS / 2).contains(&due), "{due}");
    // Leader 1 died: server 1 is not a survivor's turn 0 any more, but it
    // is also the dead one; a survivor's turn follows its rank.
    let mut e = Elections::new(4, TIMING, 7, 0);
    e.handle(0, role(Role::Follower, &[1, 2, 3, 4, 5], 1));
    e.handle(1_000, Input::LeaderContact);
    e.handle(1_010, Input::LeaderGone { leader: 1 });
    let due = e.poll_timeout().unwrap();
    let turn_2 = 1_151 + 2 * HEARTBEAT_MS;
    assert!((turn_2..=turn_2 + HEARTBEAT_MS / 2).contains(&due), "{due}");
}

#[test]
fn a_wrong_leader_gone_report_is_undone_by_the_next_heartbeat() {
    let mut e = follower(&[1, 2, 3], 1_000);
    e.handle(1_010, Input::LeaderGone { leader: 3 });
    e.handle(1_020, Input::LeaderContact);
    assert_eq!(drain(&mut e), []);
    assert!(!e.would_vote_for(1_030, Some((1, 3))), "the lease is back");
    assert!(e.poll_timeout().unwrap() >= 1_020 + LEASE_MS);
}

#[test]
fn leader_gone_never_postpones_a_wait_or_makes_a_leader_campaign() {
    // A follower whose wait is nearly over keeps it.
    let mut e = follower(&[1, 2, 3], 0);
    let due = e.poll_timeout().unwrap();
    e.handle(due - 1, Input::LeaderGone { leader: 3 });
    assert_eq!(e.poll_timeout(), Some(due));
    // A leader only forgets a lease it does not use.
    let mut leader = follower(&[1, 2, 3], 0);
    leader.handle(10, role(Role::Leader, &[1, 2, 3], 2));
    leader.handle(20, Input::LeaderGone { leader: 3 });
    assert_eq!(drain(&mut leader), []);
    assert_eq!(leader.poll_timeout(), None);
    assert!(!leader.would_vote_for(20, Some((9, 9))));
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

// ---- a cluster -------------------------------------------------------------

/// An output, at the cluster's true time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Emitted {
    at_ms: u64,
    node: u64,
    output: Output,
}

/// A PreVote answer the harness delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    at_ms: u64,
    asker: u64,
    round: u64,
    from: u64,
    /// `None`: the question could not be delivered.
    granted: Option<bool>,
}

/// One server: its [`Elections`] and the bits of Raft needed to play out
/// elections and heartbeats.
struct Server {
    elections: Elections,
    up: bool,
    /// Its clock reads true time × `.0 / .1`.
    clock_rate: (u64, u64),
    role: Role,
    term: u64,
    /// The vote cast in `term`.
    voted_for: Option<u64>,
    last_log: Option<(u64, u64)>,
}

/// A few servers with zero-latency links (quinn's `Pair`, for more than
/// two). Server 1 starts as the leader of term 1; every log is `(1, 1)`.
struct Cluster {
    now_ms: u64,
    servers: BTreeMap<u64, Server>,
    voters: Vec<u64>,
    /// `(from, to)`: requests from `from` do not reach `to`.
    blocked: BTreeSet<(u64, u64)>,
    next_heartbeat_ms: u64,
    pending: VecDeque<(u64, Output)>,
    emitted: Vec<Emitted>,
    answers: Vec<Answer>,
}

impl Cluster {
    fn new(n: u64, seed: u64) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        let servers = voters
            .iter()
            .map(|&id| {
                let server = Server {
                    elections: Elections::new(id, TIMING, seed, 0),
                    up: true,
                    clock_rate: (1, 1),
                    role: Role::Follower,
                    term: 1,
                    voted_for: Some(1),
                    last_log: Some((1, 1)),
                };
                (id, server)
            })
            .collect();
        let mut c = Self {
            now_ms: 0,
            servers,
            voters,
            blocked: BTreeSet::new(),
            next_heartbeat_ms: 0,
            pending: VecDeque::new(),
            emitted: Vec::new(),
            answers: Vec::new(),
        };
        for id in c.voters.clone() {
            let r = if id == 1 {
                Role::Leader
            } else {
                Role::Follower
            };
            c.set_role(id, r, 1);
            c.feed(id, Input::LastLog(Some((1, 1))));
        }
        c.settle();
        c
    }

    fn local_ms(&self, id: u64) -> u64 {
        let (num, den) = self.servers[&id].clock_rate;
        self.now_ms * num / den
    }

    /// The first true time at which `id`'s clock reads `local_ms`.
    fn true_ms(&self, id: u64, local_ms: u64) -> u64 {
        let (num, den) = self.servers[&id].clock_rate;
        (local_ms * den).div_ceil(num)
    }

    fn reachable(&self, from: u64, to: u64) -> bool {
        self.servers[&to].up && !self.blocked.contains(&(from, to))
    }

    fn feed(&mut self, id: u64, input: Input) {
        let now_ms = self.local_ms(id);
        let s = self.servers.get_mut(&id).expect("server");
        s.elections.handle(now_ms, input);
        s.elections.check_invariants();
        while let Some(o) = s.elections.poll_output() {
            self.pending.push_back((id, o));
        }
    }

    fn set_role(&mut self, id: u64, role: Role, term: u64) {
        let s = self.servers.get_mut(&id).expect("server");
        if term > s.term {
            s.voted_for = None;
        }
        s.role = role;
        s.term = term;
        let voters = self.voters.clone();
        self.feed(id, Input::Role { role, voters, term });
    }

    /// Carries out every pending output, and whatever that causes.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let Some((id, output)) = self.pending.pop_front() else {
                return;
            };
            self.emitted.push(Emitted {
                at_ms: self.now_ms,
                node: id,
                output: output.clone(),
            });
            match output {
                Output::AskPreVote {
                    round,
                    to,
                    last_log,
                } => {
                    // Every peer answers before any answer is handled, as
                    // concurrent RPCs would.
                    let answers: Vec<(u64, Option<bool>)> = to
                        .iter()
                        .map(|&p| {
                            let granted = self.reachable(id, p).then(|| {
                                self.servers[&p]
                                    .elections
                                    .would_vote_for(self.local_ms(p), last_log)
                            });
                            (p, granted)
                        })
                        .collect();
                    for (from, granted) in answers {
                        self.answers.push(Answer {
                            at_ms: self.now_ms,
                            asker: id,
                            round,
                            from,
                            granted,
                        });
                        let input = match granted {
                            Some(granted) => reply(round, from, granted),
                            None => Input::PreVoteFailed { round, from },
                        };
                        self.feed(id, input);
                    }
                }
                Output::StartElection { .. } => self.elect(id),
            }
        }
        panic!("outputs keep causing outputs");
    }

    /// openraft's `elect`: a new term, a vote for itself, RequestVote to
    /// every reachable voter (§5.2, with §5.4.1's log check); a majority
    /// makes it the leader, which heartbeats at once.
    fn elect(&mut self, x: u64) {
        let term = self.servers[&x].term + 1;
        self.set_role(x, Role::Candidate, term);
        self.servers.get_mut(&x).unwrap().voted_for = Some(x);
        let their_log = self.servers[&x].last_log;
        let mut votes = 1;
        for v in self.voters.clone() {
            if v == x || !self.reachable(x, v) {
                continue;
            }
            if term > self.servers[&v].term {
                self.set_role(v, Role::Follower, term);
            }
            let s = self.servers.get_mut(&v).unwrap();
            if s.term == term && s.voted_for.is_none() && their_log >= s.last_log {
                s.voted_for = Some(x);
                votes += 1;
                self.feed(v, Input::VoteGranted);
            }
        }
        if votes >= majority(self.voters.len()) {
            self.set_role(x, Role::Leader, term);
            self.heartbeat_from(x);
            self.next_heartbeat_ms = self.now_ms + HEARTBEAT_MS;
        }
    }

    /// AppendEntries from `l` to every reachable server: it steps down on
    /// a higher term; otherwise followers adopt its term and log.
    fn heartbeat_from(&mut self, l: u64) {
        for v in self.voters.clone() {
            let (term, log) = (self.servers[&l].term, self.servers[&l].last_log);
            if v == l || !self.reachable(l, v) || self.servers[&l].role != Role::Leader {
                continue;
            }
            let theirs = &self.servers[&v];
            if theirs.term > term {
                let t = theirs.term;
                self.set_role(l, Role::Follower, t);
                continue;
            }
            if theirs.term < term || theirs.role != Role::Follower {
                self.set_role(v, Role::Follower, term);
            }
            if self.servers[&v].last_log != log {
                self.servers.get_mut(&v).unwrap().last_log = log;
                self.feed(v, Input::LastLog(log));
            }
            self.feed(v, Input::LeaderContact);
        }
    }

    fn leaders_up(&self) -> Vec<u64> {
        (self.servers.iter())
            .filter(|(_, s)| s.up && s.role == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Jumps from deadline to deadline (and heartbeat to heartbeat) until
    /// `end_ms`.
    fn run_until(&mut self, end_ms: u64) {
        for _ in 0..1_000_000 {
            self.settle();
            let leaders = self.leaders_up();
            let mut next_ms = (!leaders.is_empty()).then_some(self.next_heartbeat_ms);
            for (&id, s) in &self.servers {
                if let Some(d) = s.elections.poll_timeout().filter(|_| s.up) {
                    let t = self.true_ms(id, d);
                    next_ms = Some(next_ms.map_or(t, |n| n.min(t)));
                }
            }
            let Some(next_ms) = next_ms.filter(|&t| t <= end_ms) else {
                self.now_ms = self.now_ms.max(end_ms);
                return;
            };
            self.now_ms = self.now_ms.max(next_ms);
            if !leaders.is_empty() && self.next_heartbeat_ms <= self.now_ms {
                for l in leaders {
                    self.heartbeat_from(l);
                }
                self.settle();
                self.next_heartbeat_ms += HEARTBEAT_MS;
            }
            for id in self.voters.clone() {
                let now_ms = self.local_ms(id);
                let s = self.servers.get_mut(&id).unwrap();
                if !s.up || s.elections.poll_timeout().is_none_or(|d| d > now_ms) {
                    continue;
                }
                s.elections.handle_timeout(now_ms);
                s.elections.check_invariants();
                while let Some(o) = s.elections.poll_output() {
                    self.pending.push_back((id, o));
                }
                self.settle();
                let s = &self.servers[&id];
                assert!(
                    s.elections.poll_timeout().is_none_or(|d| d > now_ms),
                    "server {id}: the deadline did not move past {now_ms}"
                );
            }
        }
        panic!("run_until({end_ms}) did not reach its end");
    }

    fn crash(&mut self, id: u64) {
        self.servers.get_mut(&id).unwrap().up = false;
    }

    fn isolate(&mut self, id: u64) {
        for &other in &self.voters {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// The leader appends entries (replicated by its heartbeats).
    fn append(&mut self, leader: u64, last_log: (u64, u64)) {
        self.servers.get_mut(&leader).unwrap().last_log = Some(last_log);
        self.feed(leader, Input::LastLog(Some(last_log)));
        self.settle();
    }

    fn asks_by(&self, node: u64) -> Vec<&Emitted> {
        (self.emitted.iter())
            .filter(|e| e.node == node && matches!(e.output, Output::AskPreVote { .. }))
            .collect()
    }

    fn elections_started(&self) -> Vec<&Emitted> {
        (self.emitted.iter())
            .filter(|e| matches!(e.output, Output::StartElection { .. }))
            .collect()
    }

    fn assert_leader(&self, leader: u64, term: u64) {
        for (&id, s) in self.servers.iter().filter(|(_, s)| s.up) {
            let expected = if id == leader {
                Role::Leader
            } else {
                Role::Follower
            };
            assert_eq!((s.role, s.term), (expected, term), "server {id}");
        }
    }
}

/// Gaps between consecutive times, starting from `from_ms`.
fn gaps(from_ms: u64, asks: &[&Emitted]) -> Vec<u64> {
    let mut last_ms = from_ms;
    (asks.iter())
        .map(|e| {
            let gap = e.at_ms - last_ms;
            last_ms = e.at_ms;
            gap
        })
        .collect()
}

#[test]
fn cluster_with_a_live_leader_is_silent() {
    let mut c = Cluster::new(3, 1);
    c.run_until(60_000);
    assert_eq!(c.emitted, []);
    c.assert_leader(1, 1);
}

#[test]
fn leader_crash_exactly_one_follower_takes_over() {
    let mut c = Cluster::new(3, 2);
    c.run_until(1_000);
    // The last heartbeat went out at 1000.
    c.crash(1);
    let d2 = c.servers[&2].elections.poll_timeout().unwrap();
    let d3 = c.servers[&3].elections.poll_timeout().unwrap();
    let (winner, other, at_ms) = if d2 <= d3 { (2, 3, d2) } else { (3, 2, d3) };
    assert!((1_000 + LEASE_MS..=1_000 + LEASE_MS + SPREAD_MS).contains(&at_ms));
    c.run_until(20_000);
    assert_eq!(
        c.emitted,
        [
            Emitted {
                at_ms,
                node: winner,
                output: Output::AskPreVote {
                    round: 1,
                    to: vec![1, other],
                    last_log: Some((1, 1)),
                },
            },
            Emitted {
                at_ms,
                node: winner,
                output: Output::StartElection { round: 1 },
            },
        ]
    );
    assert_eq!(
        c.answers,
        [
            Answer {
                at_ms,
                asker: winner,
                round: 1,
                from: 1,
                granted: None
            },
            Answer {
                at_ms,
                asker: winner,
                round: 1,
                from: other,
                granted: Some(true)
            },
        ]
    );
    c.assert_leader(winner, 2);
}

#[test]
fn split_vote_candidates_retry_from_min_max_and_one_wins() {
    let mut c = Cluster::new(3, 3);
    c.run_until(1_000);
    c.crash(1);
    // The harness delivers instantly, so it cannot interleave two
    // elections: set up the split by hand. Both started an election for
    // term 2 at 1000 and each voted for itself.
    for id in [2, 3] {
        c.set_role(id, Role::Candidate, 2);
        c.servers.get_mut(&id).unwrap().voted_for = Some(id);
        let wait_ms = c.servers[&id].elections.poll_timeout().unwrap() - 1_000;
        assert!((MIN_MS..=MAX_MS).contains(&wait_ms), "candidate {id}");
    }
    c.settle();
    c.run_until(20_000);
    let started = c.elections_started();
    assert_eq!(started.len(), 1, "{:?}", c.emitted);
    let (winner, won_ms) = (started[0].node, started[0].at_ms);
    // The other candidate refused while it had heard from leader 1 within
    // a lease.
    assert!(won_ms >= 1_000 + LEASE_MS);
    let loser = 5 - winner;
    for id in [2, 3] {
        let asks = c.asks_by(id);
        let other = 5 - id;
        // Every retry of a candidate came after a plain election timeout.
        for gap in gaps(1_000, &asks) {
            assert!((MIN_MS..=MAX_MS).contains(&gap), "candidate {id}: {gap}");
        }
        for (i, e) in asks.iter().enumerate() {
            let round = i as u64 + 1;
            let expected = Output::AskPreVote {
                round,
                to: vec![1, other],
                last_log: Some((1, 1)),
            };
            assert_eq!(e.output, expected);
            assert!(e.at_ms <= won_ms, "nobody asked after the election");
        }
    }
    let winner_asks = c.asks_by(winner);
    let last = winner_asks.last().unwrap();
    assert_eq!(last.at_ms, won_ms);
    assert_eq!(
        started[0].output,
        Output::StartElection {
            round: winner_asks.len() as u64
        }
    );
    assert_eq!(c.emitted.last().unwrap(), started[0], "silence afterwards");
    c.assert_leader(winner, 3);
    assert_eq!(c.servers[&loser].voted_for, Some(winner));
}

#[test]
fn stale_candidate_gets_no_grants() {
    let mut c = Cluster::new(3, 4);
    c.run_until(500);
    // Server 3 stops hearing the leader, and misses its new entries.
    c.blocked.insert((1, 3));
    c.append(1, (1, 7));
    c.run_until(1_000);
    assert_eq!(c.servers[&2].last_log, Some((1, 7)));
    assert_eq!(c.servers[&3].last_log, Some((1, 1)));
    c.crash(1);
    // One-way fault: 2 cannot reach 3, so 2 cannot win either; 3 keeps
    // asking 2, whose lease has long run out.
    c.blocked.insert((2, 3));
    c.run_until(20_000);
    assert_eq!(c.elections_started(), Vec::<&Emitted>::new());
    let asks = c.asks_by(3);
    assert!(asks.len() >= 20, "server 3 asked {} times", asks.len());
    for e in &asks {
        assert!(matches!(
            e.output,
            Output::AskPreVote {
                last_log: Some((1, 1)),
                ..
            }
        ));
    }
    let to_3: Vec<&Answer> = c.answers.iter().filter(|a| a.asker == 3).collect();
    assert!(to_3.iter().all(|a| a.granted != Some(true)), "{to_3:?}");
    // Server 2 answered after its lease, so only the log made it refuse
    // (§5.4.1): it would grant an up-to-date asker.
    let late_refusals = (to_3.iter())
        .filter(|a| a.from == 2 && a.at_ms >= 1_000 + LEASE_MS && a.granted == Some(false))
        .count();
    assert!(late_refusals >= 20);
    assert!(c.servers[&2].elections.would_vote_for(20_000, Some((1, 7))));

    // Heal: the up-to-date server wins; the stale one never starts one.
    c.blocked.clear();
    c.run_until(40_000);
    let started = c.elections_started();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].node, 2);
    c.assert_leader(2, 2);
    assert_eq!(c.servers[&3].last_log, Some((1, 7)), "caught up");
}

#[test]
fn isolated_follower_never_starts_an_election_and_rejoins_quietly() {
    let mut c = Cluster::new(3, 5);
    c.run_until(1_000);
    c.isolate(3);
    c.run_until(31_000);
    assert_eq!(c.elections_started(), Vec::<&Emitted>::new());
    let asks = c.asks_by(3);
    assert_eq!(asks.len(), c.emitted.len(), "only server 3 spoke");
    assert!(asks.len() >= 30_000 / (LEASE_MS + SPREAD_MS) as usize);
    for (i, e) in asks.iter().enumerate() {
        let expected = Output::AskPreVote {
            round: i as u64 + 1,
            to: vec![1, 2],
            last_log: Some((1, 1)),
        };
        assert_eq!(e.output, expected);
    }
    // A follower's wait, from its last contact (1000) and then round to
    // round.
    for gap in gaps(1_000, &asks) {
        assert!((LEASE_MS..=LEASE_MS + SPREAD_MS).contains(&gap), "{gap}");
    }
    assert!(c.answers.iter().all(|a| a.granted.is_none()));
    c.assert_leader(1, 1);

    c.blocked.clear();
    let emitted_before = c.emitted.len();
    c.run_until(61_000);
    let after_heal: Vec<&Emitted> = (c.emitted[emitted_before..].iter())
        .filter(|e| e.at_ms > 31_000 + HEARTBEAT_MS)
        .collect();
    assert_eq!(after_heal, Vec::<&Emitted>::new());
    assert_eq!(c.elections_started(), Vec::<&Emitted>::new());
    c.assert_leader(1, 1);
}

#[test]
fn racing_clock_cannot_depose_a_live_leader() {
    let mut c = Cluster::new(3, 6);
    // Server 2's clock runs 10x fast: a heartbeat every 50 ms of true time
    // is every 500 ms of its time, longer than many of its waits.
    c.servers.get_mut(&2).unwrap().clock_rate = (10, 1);
    c.run_until(60_000);
    let asks = c.asks_by(2);
    assert!(
        asks.len() >= 10,
        "the fast timer fired {} times",
        asks.len()
    );
    assert_eq!(asks.len(), c.emitted.len(), "only server 2 spoke");
    // The leader refuses; server 3 heard from it within a lease.
    assert!(c.answers.iter().all(|a| a.granted == Some(false)));
    assert!(c.answers.iter().any(|a| a.from == 3));
    c.assert_leader(1, 1);
}

// ---- properties --------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Rewind(u64),
    Timeout,
    ToDeadline,
    Contact,
    VoteGranted,
    Gone(u64),
    Role {
        role: Role,
        voters: Vec<u64>,
        term_step: i64,
    },
    LastLog(Option<(u64, u64)>),
    HandingOff(bool),
    Reply {
        back: u64,
        from: u64,
        granted: bool,
    },
    Failed {
        back: u64,
        from: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let role = prop_oneof![
        Just(Role::Follower),
        Just(Role::Candidate),
        Just(Role::Leader),
        Just(Role::Learner)
    ];
    // Voters among 1..=5; server 1 is listed three times in four.
    let voters = (0u8..32, 0u8..4).prop_map(|(mask, k)| {
        let mask = if k > 0 { mask | 1 } else { mask };
        (1..=5)
            .filter(|i| mask & (1 << (i - 1)) != 0)
            .collect::<Vec<u64>>()
    });
    prop_oneof![
        3 => (0u64..700).prop_map(Op::Advance),
        1 => (0u64..100).prop_map(Op::Rewind),
        2 => Just(Op::Timeout),
        3 => Just(Op::ToDeadline),
        2 => Just(Op::Contact),
        1 => Just(Op::VoteGranted),
        1 => (1u64..=6).prop_map(Op::Gone),
        2 => (role, voters, -1i64..=2).prop_map(|(role, voters, term_step)| Op::Role { role, voters, term_step }),
        1 => proptest::option::of((0u64..3, 0u64..4)).prop_map(Op::LastLog),
        1 => any::<bool>().prop_map(Op::HandingOff),
        4 => (0u64..3, 1u64..=6, any::<bool>()).prop_map(|(back, from, granted)| Op::Reply { back, from, granted }),
        2 => (0u64..3, 1u64..=6).prop_map(|(back, from)| Op::Failed { back, from }),
    ]
}

/// What the inputs so far allow, from the outside.
struct Model {
    now_ms: u64,
    role: Role,
    term: u64,
    voters: BTreeSet<u64>,
    handing_off: bool,
    last_log: Option<(u64, u64)>,
    last_round: u64,
    /// Per asked round: who was asked, who ever said yes, and whether a
    /// later event made its answers stale.
    asks: BTreeMap<u64, (Vec<u64>, BTreeSet<u64>, bool)>,
    elected: BTreeSet<u64>,
}

impl Model {
    fn may_campaign(&self) -> bool {
        matches!(self.role, Role::Follower | Role::Candidate)
            && self.voters.contains(&1)
            && !self.handing_off
    }

    fn spoil(&mut self) {
        for ask in self.asks.values_mut() {
            ask.2 = true;
        }
    }

    fn check(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            assert!(self.may_campaign(), "{output:?} while unable to campaign");
            match output {
                Output::AskPreVote {
                    round,
                    to,
                    last_log,
                } => {
                    assert_eq!(round, self.last_round + 1);
                    self.last_round = round;
                    let others: Vec<u64> =
                        self.voters.iter().copied().filter(|&v| v != 1).collect();
                    assert!(!others.is_empty());
                    assert_eq!(to, others);
                    assert_eq!(last_log, self.last_log);
                    self.asks.insert(round, (to, BTreeSet::new(), false));
                }
                Output::StartElection { round } => {
                    assert!(self.elected.insert(round), "round {round} elected twice");
                    match self.asks.get(&round) {
                        Some((_, granted, stale)) => {
                            assert!(!stale, "round {round}: answers were stale");
                            assert!(granted.len() + 1 >= majority(self.voters.len()));
                        }
                        None => {
                            assert_eq!(self.voters, BTreeSet::from([1]));
                            assert_eq!(round, self.last_round + 1);
                            self.last_round = round;
                        }
                    }
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn random_inputs_keep_the_invariants(seed in any::<u64>(), ops in proptest::collection::vec(op(), 0..200)) {
        let mut e = Elections::new(1, TIMING, seed, 0);
        let mut m = Model {
            now_ms: 0,
            role: Role::Learner,
            term: 0,
            voters: BTreeSet::new(),
            handing_off: false,
            last_log: None,
            last_round: 0,
            asks: BTreeMap::new(),
            elected: BTreeSet::new(),
        };
        for op in ops {
            let mut timed_out = false;
            match op {
                Op::Advance(ms) => m.now_ms += ms,
                Op::Rewind(ms) => e.handle_timeout(m.now_ms.saturating_sub(ms)),
                Op::Timeout => {
                    e.handle_timeout(m.now_ms);
                    timed_out = true;
                }
                Op::ToDeadline => {
                    if let Some(d) = e.poll_timeout() {
                        m.now_ms = m.now_ms.max(d);
                    }
                    e.handle_timeout(m.now_ms);
                    timed_out = true;
                }
                Op::Contact => {
                    e.handle(m.now_ms, Input::LeaderContact);
                    m.spoil();
                }
                Op::VoteGranted => {
                    e.handle(m.now_ms, Input::VoteGranted);
                    m.spoil();
                }
                Op::Gone(leader) => e.handle(m.now_ms, Input::LeaderGone { leader }),
                Op::Role { role, voters, term_step } => {
                    let term = m.term.saturating_add_signed(term_step);
                    e.handle(m.now_ms, Input::Role { role, voters: voters.clone(), term });
                    let voters: BTreeSet<u64> = voters.into_iter().collect();
                    if term >= m.term && (role, term, &voters) != (m.role, m.term, &m.voters) {
                        (m.role, m.term, m.voters) = (role, term, voters);
                        m.spoil();
                    }
                }
                Op::LastLog(last_log) => {
                    e.handle(m.now_ms, Input::LastLog(last_log));
                    m.last_log = last_log;
                }
                Op::HandingOff(on) => {
                    e.handle(m.now_ms, Input::HandingOff(on));
                    if on != m.handing_off {
                        m.handing_off = on;
                        m.spoil();
                    }
                }
                Op::Reply { back, from, granted } => {
                    let round = m.last_round.saturating_sub(back);
                    e.handle(m.now_ms, Input::PreVoteReply { round, from, granted });
                    if let Some((to, yes, _)) = m.asks.get_mut(&round) {
                        if granted && to.contains(&from) {
                            yes.insert(from);
                        }
                    }
                }
                Op::Failed { back, from } => {
                    let round = m.last_round.saturating_sub(back);
                    e.handle(m.now_ms, Input::PreVoteFailed { round, from });
                }
            }
            e.check_invariants();
            m.check(drain(&mut e));
            prop_assert_eq!(e.poll_timeout().is_some(), m.may_campaign());
            if timed_out {
                prop_assert!(e.poll_timeout().is_none_or(|d| d > m.now_ms), "deadline did not move");
            }
        }
    }

    #[test]
    fn hand_off_target_is_the_best_eligible_voter(
        my_id in 1u64..6,
        voters in proptest::collection::btree_set(1u64..8, 0..6),
        matched in proptest::collection::btree_map(1u64..8, proptest::option::of(0u64..4), 0..7),
    ) {
        let voters: Vec<u64> = voters.into_iter().collect();
        let matched: Vec<(u64, Option<u64>)> = matched.into_iter().collect();
        let target = hand_off_target(my_id, &voters, &matched);
        let eligible: Vec<(u64, Option<u64>)> = (matched.iter().copied())
            .filter(|(id, _)| *id != my_id && voters.contains(id))
            .collect();
        match target {
            None => prop_assert!(eligible.is_empty()),
            Some(t) => {
                let (_, t_idx) = *eligible.iter().find(|(id, _)| *id == t).expect("eligible");
                for (id, idx) in &eligible {
                    prop_assert!((*idx, Reverse(*id)) <= (t_idx, Reverse(t)));
                }
            }
        }
        let mut reversed = matched.clone();
        reversed.reverse();
        prop_assert_eq!(hand_off_target(my_id, &voters, &reversed), target);
    }
}
