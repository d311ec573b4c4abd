//! When a server starts an election: Raft §5.2 with PreVote (Raft thesis
//! §9.6), as a sans-IO state machine. The driver owns the clock, the RPCs
//! and openraft; this module only decides.
//!
//! # Why not openraft's own election timer
//!
//! openraft 0.9 draws its election timeout once per server, so two
//! candidates can collide term after term (the simulator found such seeds),
//! and it campaigns without asking first, so a server that cannot win (cut
//! off, stale log, a racing clock) keeps raising its term and deposes a
//! healthy leader when it reconnects. The driver therefore runs openraft
//! with `enable_elect: false` and calls `elect` only when [`Elections`]
//! emits [`Output::StartElection`].
//!
//! # The rule
//!
//! A voter that is not leading and not handing off leadership waits a freshly
//! drawn timeout after the last *election signal*: hearing from a leader,
//! granting a real vote (§5.2: both restart the election timer), the start
//! of its last PreVote round, or the moment it became able to campaign. Then
//! it asks every other voter whether it would vote for it
//! ([`Output::AskPreVote`]; a peer answers with [`Elections::would_vote_for`]).
//! Only when a majority, itself included, says yes does it start a real
//! election ([`Output::StartElection`]).
//!
//! With `lease = election_timeout_max_ms` and `spread = max - min`:
//!
//! * a follower waits a draw from `[lease, lease + spread]`: its peers refuse
//!   PreVotes for a lease after hearing from the leader, so asking sooner
//!   only wastes a round;
//! * a candidate (its election split) waits a draw from `[min, max]`;
//! * a PreVote round gets `election_timeout_min_ms` for its answers; missing
//!   ones count as no, and no other round starts meanwhile.
//!
//! # A leader that is provably gone
//!
//! The lease exists so that a follower that merely missed some heartbeats
//! never disturbs a healthy leader. When the driver learns that the
//! leader's process is gone ([`Input::LeaderGone`]: its RPC port refused a
//! connection, which a live server never does), there is no leader to
//! protect: the lease ends at once, and the survivors ask in turn (by id,
//! a heartbeat apart, plus a draw from `[0, heartbeat / 2]`) once the
//! other voters stop refusing real votes ([`ElectionTiming::vote_lease_ms`]
//! after the last heartbeat), so a new leader is elected within about
//! 200 ms instead of 400-600, without split votes. Each survivor learns it on its own (every
//! connection from the dead process closes), and a PreVote still needs a
//! majority, so a wrong report costs one refused round, never a leader.
//!
//! # Driver contract (quinn-proto's)
//!
//! After every [`Elections::handle`] and [`Elections::handle_timeout`], drain
//! [`Elections::poll_output`] until it returns `None`, then call
//! `handle_timeout` once the clock reaches [`Elections::poll_timeout`]. Time
//! is `now_ms`, milliseconds on any monotonic clock of the driver's choosing;
//! randomness comes from the seed given to [`Elections::new`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};

#[cfg(test)]
mod tests;

/// Raft timing, in milliseconds (the same numbers openraft is configured
/// with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTiming {
    /// Leader heartbeat period. The machine has exact deadlines and never
    /// polls; this is only checked against the election timeout.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout; also how long a
    /// PreVote round waits for its answers.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout; also the leader lease
    /// during which a follower refuses PreVotes.
    pub election_timeout_max_ms: u64,
}

impl ElectionTiming {
    /// How long after hearing from a leader a follower refuses PreVotes.
    fn lease_ms(&self) -> u64 {
        self.election_timeout_max_ms
    }

    /// How long a voter refuses real votes after its last heartbeat:
    /// openraft's own leader lease, which the driver sets through
    /// [`ElectionTiming::openraft_timeouts`]. Shorter than the PreVote
    /// lease, which is what keeps healthy leaders in place; this one only
    /// decides how soon a survivor of a dead leader can be elected.
    pub fn vote_lease_ms(&self) -> u64 {
        (3 * self.heartbeat_ms + 1).min(self.election_timeout_max_ms)
    }

    /// openraft's `(election_timeout_min, election_timeout_max)`. openraft
    /// does not time elections here (the driver does, with this machine);
    /// it uses the maximum as the lease during which it refuses votes and
    /// the minimum as a vote request's timeout.
    pub fn openraft_timeouts(&self) -> (u64, u64) {
        let max = self.vote_lease_ms();
        (max.saturating_sub(1).max(self.heartbeat_ms + 1), max)
    }

    /// Width of the randomized range.
    fn spread_ms(&self) -> u64 {
        self.election_timeout_max_ms - self.election_timeout_min_ms
    }

    /// The range a wait is drawn from. A follower's peers refuse PreVotes for
    /// a lease after they heard from the leader, so a follower waits the
    /// lease plus a random spread: asking earlier only wastes a round. A
    /// candidate (its election split, §5.2) has no lease to wait out and
    /// retries after a plain randomized election timeout.
    fn wait_range_ms(&self, candidate: bool) -> (u64, u64) {
        if candidate {
            (self.election_timeout_min_ms, self.election_timeout_max_ms)
        } else {
            let lease_ms = self.lease_ms();
            (lease_ms, lease_ms.saturating_add(self.spread_ms()))
        }
    }

    fn assert_valid(&self) {
        assert!(
            self.election_timeout_min_ms <= self.election_timeout_max_ms,
            "election timeout range is empty: {self:?}"
        );
        // A follower must hear at least one heartbeat within the shortest
        // timeout, or it campaigns against a healthy leader. This also makes
        // the PreVote round deadline positive.
        assert!(
            self.heartbeat_ms < self.election_timeout_min_ms,
            "heartbeat must be shorter than the election timeout: {self:?}"
        );
    }
}

/// This server's Raft role, as openraft's metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Following (or looking for) a leader.
    Follower,
    /// Running an election.
    Candidate,
    /// Leading.
    Leader,
    /// Not a voter. A driver also reports openraft's `Shutdown` state as
    /// `Learner`: neither ever campaigns.
    Learner,
}

/// One event for [`Elections::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A leader's AppendEntries succeeded here.
    LeaderContact,
    /// This server granted a real (not Pre-) vote. Raft §5.2: this restarts
    /// the election timer, but it is not leader contact, so it does not
    /// start a PreVote lease.
    VoteGranted,
    /// openraft's metrics changed. Reports with a lower term than one
    /// already seen are stale (read before a newer one was applied) and are
    /// ignored: Raft terms never decrease.
    Role {
        /// This server's role.
        role: Role,
        /// The current voter ids (this server campaigns only if listed).
        voters: Vec<u64>,
        /// The current term.
        term: u64,
    },
    /// This server's last log entry as `(term, index)`, `None` if the log is
    /// empty. Sent with every PreVote question and compared with askers'.
    LastLog(Option<(u64, u64)>),
    /// A leadership hand-off is in progress (Raft thesis §3.10): the leader
    /// that is leaving must not win the election back, so it never
    /// campaigns while this is `true`.
    HandingOff(bool),
    /// A peer answered the PreVote question of round `round`.
    PreVoteReply {
        /// The round of the [`Output::AskPreVote`] answered.
        round: u64,
        /// The peer.
        from: u64,
        /// Whether it would vote for this server.
        granted: bool,
    },
    /// The leader's process is gone: its RPC port refused a connection
    /// (see the module docs; the driver sends it only about the leader it
    /// last knew). Ends the lease, and shortens a follower's wait.
    LeaderGone {
        /// The leader that is gone.
        leader: u64,
    },
    /// A peer could not be asked or did not answer (unreachable, RPC
    /// timeout): counts as a no.
    PreVoteFailed {
        /// The round of the [`Output::AskPreVote`].
        round: u64,
        /// The peer.
        from: u64,
    },
}

/// A command for the driver, from [`Elections::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Ask each of `to` whether it would vote for this server, sending
    /// `last_log`; feed each answer back as [`Input::PreVoteReply`] or
    /// [`Input::PreVoteFailed`] with this `round`. Answers are needed within
    /// `election_timeout_min_ms`; later ones are ignored.
    AskPreVote {
        /// Identifies the round; answers from other rounds are ignored.
        round: u64,
        /// Every other voter, ascending.
        to: Vec<u64>,
        /// This server's last log `(term, index)`.
        last_log: Option<(u64, u64)>,
    },
    /// A majority would vote for this server: call openraft's `elect` now.
    StartElection {
        /// The PreVote round that won the majority.
        round: u64,
    },
}

impl Output {
    fn round(&self) -> u64 {
        match self {
            Output::AskPreVote { round, .. } | Output::StartElection { round } => *round,
        }
    }
}

/// Bound on queued outputs: one round emits at most an `AskPreVote` and a
/// `StartElection`, and a driver that drains after every call never holds
/// more.
const OUTPUTS_MAX: usize = 2;

/// An outstanding PreVote round.
#[derive(Clone, Debug)]
struct Round {
    id: u64,
    started_ms: u64,
    /// Every other voter when the round started.
    asked: BTreeSet<u64>,
    granted: BTreeSet<u64>,
    /// Said no, failed, or did not answer.
    refused: BTreeSet<u64>,
    /// A majority of the voters, this server included.
    needed: usize,
}

/// The election watchdog of one server. See the module docs.
#[derive(Clone, Debug)]
pub struct Elections {
    my_id: u64,
    timing: ElectionTiming,
    rng: SplitMix64,
    /// Latest `now_ms` seen; earlier times are raised to it.
    now_ms: u64,
    role: Role,
    term: u64,
    voters: BTreeSet<u64>,
    last_log: Option<(u64, u64)>,
    handing_off: bool,
    last_leader_contact_ms: Option<u64>,
    /// The last election signal: the current wait runs from here.
    wait_start_ms: u64,
    /// The current wait's randomized length.
    wait_ms: u64,
    /// Id of the last round started; 0 before the first.
    last_round: u64,
    round: Option<Round>,
    outputs: VecDeque<Output>,
}

impl Elections {
    /// A server that has not yet reported its role: it campaigns only after
    /// an [`Input::Role`] lists it as a voter. `seed` and `my_id` together
    /// seed the timeout draws, so servers given one cluster seed still draw
    /// differently.
    ///
    /// # Panics
    ///
    /// If `timing` is unusable: `election_timeout_min_ms` above
    /// `election_timeout_max_ms`, or `heartbeat_ms` not below
    /// `election_timeout_min_ms` (openraft's config validation refuses both).
    pub fn new(my_id: u64, timing: ElectionTiming, seed: u64, now_ms: u64) -> Self {
        timing.assert_valid();
        let mut rng = SplitMix64::new(seed ^ mix64(my_id.wrapping_add(GOLDEN_GAMMA)));
        let (lo, hi) = timing.wait_range_ms(false);
        let wait_ms = rng.range_inclusive(lo, hi);
        Self {
            my_id,
            timing,
            rng,
            now_ms,
            role: Role::Learner,
            term: 0,
            voters: BTreeSet::new(),
            last_log: None,
            handing_off: false,
            last_leader_contact_ms: None,
            wait_start_ms: now_ms,
            wait_ms,
            last_round: 0,
            round: None,
            outputs: VecDeque::new(),
        }
    }

    /// Feeds one event in. Drain [`Elections::poll_output`] afterwards.
    /// `now_ms` earlier than a previous call's counts as that previous time
    /// (a driver task may read the clock before another one's call).
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        let now_ms = self.observe(now_ms);
        let could_campaign = self.may_campaign();
        match input {
            Input::LeaderContact => {
                self.last_leader_contact_ms = Some(now_ms);
                self.signal(now_ms);
            }
            Input::VoteGranted => self.signal(now_ms),
            Input::Role { role, voters, term } => self.observe_role(now_ms, role, voters, term),
            Input::LastLog(last_log) => self.last_log = last_log,
            Input::HandingOff(handing_off) => self.handing_off = handing_off,
            Input::PreVoteReply {
                round,
                from,
                granted,
            } => self.answer(now_ms, round, from, granted),
            Input::PreVoteFailed { round, from } => self.answer(now_ms, round, from, false),
            Input::LeaderGone { leader } => self.leader_gone(now_ms, leader),
        }
        match (could_campaign, self.may_campaign()) {
            (true, false) => {
                // Leading, leaving or no longer a voter: a round under way
                // would decide for a server that must not campaign.
                self.round = None;
                self.outputs.clear();
            }
            (false, true) => {
                // The original watchdog restarted its timer on every check
                // while it could not campaign: the wait starts now.
                self.wait_start_ms = now_ms;
                self.redraw();
            }
            _ => {}
        }
    }

    /// Acts on what is due at `now_ms`: ends an overdue PreVote round (missing
    /// answers count as no) and starts a round once the wait has run out.
    /// A no-op when nothing is due. Drain [`Elections::poll_output`]
    /// afterwards.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now_ms = self.observe(now_ms);
        if !self.may_campaign() {
            return;
        }
        if let Some(round) = &self.round {
            if now_ms
                < round
                    .started_ms
                    .saturating_add(self.timing.election_timeout_min_ms)
            {
                return;
            }
            self.fail_round();
        }
        // A failed round's next wait runs from the round's start and lasts at
        // least `election_timeout_min_ms`, so it is due no earlier than the
        // round's deadline; at most one round starts per call.
        if now_ms >= self.wait_start_ms.saturating_add(self.wait_ms) {
            self.start_round(now_ms);
        }
    }

    /// The next command for the driver. Call after every
    /// [`Elections::handle`] and [`Elections::handle_timeout`] until it
    /// returns `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When to call [`Elections::handle_timeout`] next: the end of the
    /// outstanding round, or of the current wait; `None` while this server
    /// cannot campaign. An absolute time on the `now_ms` clock. Read it again
    /// after every `handle`/`handle_timeout` (after draining the outputs).
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.may_campaign() {
            return None;
        }
        Some(match &self.round {
            Some(round) => round
                .started_ms
                .saturating_add(self.timing.election_timeout_min_ms),
            None => self.wait_start_ms.saturating_add(self.wait_ms),
        })
    }

    /// The answer to a peer's PreVote question (Raft thesis §9.6): grant only
    /// if this server is not leading, has not heard from a leader for a full
    /// lease (so a real vote would be granted too, and a healthy leader is
    /// never disturbed), and the asker's last log is at least as up to date
    /// as this server's (§5.4.1: `(term, index)` compared in that order).
    /// `now_ms` before the last contact counts as within the lease.
    pub fn would_vote_for(&self, now_ms: u64, their_last: Option<(u64, u64)>) -> bool {
        if self.role == Role::Leader {
            return false;
        }
        let heard = self
            .last_leader_contact_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.timing.lease_ms());
        !heard && their_last >= self.last_log
    }

    /// Panics if the state is inconsistent. Tests (and a simulating driver)
    /// call it after every `handle`/`handle_timeout`; it costs `O(voters)`.
    pub fn check_invariants(&self) {
        self.timing.assert_valid();
        // A wait after LeaderGone may be shorter than any other.
        let (lo, hi) = (0, self.timing.wait_range_ms(false).1);
        assert!(
            (lo..=hi).contains(&self.wait_ms),
            "wait {} outside [{lo}, {hi}]",
            self.wait_ms
        );
        assert!(
            self.wait_start_ms <= self.now_ms,
            "wait starts in the future"
        );
        assert!(
            self.last_leader_contact_ms
                .is_none_or(|t| t <= self.wait_start_ms),
            "leader contact after the last election signal"
        );
        assert!(self.outputs.len() <= OUTPUTS_MAX, "outputs not drained");
        for output in &self.outputs {
            assert!(
                self.may_campaign(),
                "queued {output:?} while unable to campaign"
            );
            assert_eq!(
                output.round(),
                self.last_round,
                "queued output of an old round"
            );
        }
        let Some(round) = &self.round else {
            return;
        };
        assert!(
            self.may_campaign(),
            "round outstanding while unable to campaign"
        );
        assert_eq!(round.id, self.last_round);
        assert!(round.id > 0);
        assert!(self.wait_start_ms <= round.started_ms && round.started_ms <= self.now_ms);
        let others: BTreeSet<u64> = self
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.my_id)
            .collect();
        assert_eq!(round.asked, others, "voters changed under a round");
        assert_eq!(round.needed, majority(self.voters.len()));
        assert!(round.granted.is_disjoint(&round.refused));
        assert!(round.granted.is_subset(&round.asked) && round.refused.is_subset(&round.asked));
        assert!(
            round.granted.len() + round.refused.len() < round.asked.len(),
            "every answer is in but the round is still outstanding"
        );
        assert!(
            round.granted.len() + 1 < round.needed,
            "a majority granted but the round is still outstanding"
        );
    }

    /// A voter that is not leading and not handing off.
    fn may_campaign(&self) -> bool {
        matches!(self.role, Role::Follower | Role::Candidate)
            && self.voters.contains(&self.my_id)
            && !self.handing_off
    }

    fn observe(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    /// Leader contact or a granted vote (§5.2): the wait restarts with a
    /// fresh draw, and a round under way is stale, since its answers may
    /// predate the signal (the original watchdog discarded them the same
    /// way). Drawing per wait, as hashicorp/raft redraws its heartbeat timer
    /// every cycle, keeps one unlucky draw from deciding a whole term: a
    /// follower with a fast clock still times out between some heartbeats
    /// and asks, and is refused, instead of never or always.
    fn signal(&mut self, now_ms: u64) {
        self.wait_start_ms = now_ms;
        self.round = None;
        self.redraw();
        // A queued StartElection predates the signal: a leader exists.
        self.outputs.clear();
    }

    /// The leader is gone: no lease to respect, and a follower's wait
    /// (not under way as a round, not a candidate's) restarts short.
    fn leader_gone(&mut self, now_ms: u64, leader: u64) {
        let last_contact_ms = self.last_leader_contact_ms.take();
        if self.role != Role::Follower || self.round.is_some() {
            return;
        }
        // The other voters heard the same last heartbeat; before their
        // vote lease ends they would refuse the election.
        let earliest_ms = last_contact_ms
            .map_or(now_ms, |t| t.saturating_add(self.timing.vote_lease_ms()))
            .max(now_ms);
        // Every survivor learns of the death at the same moment, and each
        // grants the others' PreVotes (no lease), so equal waits would
        // split the election. Survivors take turns a heartbeat apart, in
        // id order: the first one wins unless its log is behind, and then
        // the next one asks a heartbeat later.
        let turn = self
            .voters
            .iter()
            .filter(|&&v| v != leader)
            .position(|&v| v == self.my_id)
            .unwrap_or(0) as u64;
        let due_ms = earliest_ms
            .saturating_add(turn.saturating_mul(self.timing.heartbeat_ms))
            .saturating_add(self.rng.range_inclusive(0, self.timing.heartbeat_ms / 2));
        if due_ms < self.wait_start_ms.saturating_add(self.wait_ms) {
            self.wait_start_ms = now_ms;
            self.wait_ms = due_ms - now_ms;
        }
    }

    fn observe_role(&mut self, now_ms: u64, role: Role, voters: Vec<u64>, term: u64) {
        if term < self.term {
            return;
        }
        let voters: BTreeSet<u64> = voters.into_iter().collect();
        let epoch_changed = (role, term) != (self.role, self.term);
        if !epoch_changed && voters == self.voters {
            return;
        }
        // The round asked "would you vote for me in the next term" of a
        // configuration or term that is gone; a majority of the old voter
        // set says nothing about the new one.
        if self.round.is_some() {
            self.fail_round();
        }
        self.outputs.clear();
        if role == Role::Candidate && epoch_changed {
            // An election just started here (ours, or a hand-off target's
            // TimeoutNow): §5.2, a candidate restarts its randomized timer
            // at the start of each election.
            self.wait_start_ms = now_ms;
        }
        self.role = role;
        self.term = term;
        self.voters = voters;
        if epoch_changed {
            // The wait's range depends on the role.
            self.redraw();
        }
    }

    fn answer(&mut self, now_ms: u64, round_id: u64, from: u64, granted: bool) {
        let deadline_ms = self.poll_timeout();
        let Some(round) = &mut self.round else {
            return;
        };
        let fresh = round.id == round_id
            && round.asked.contains(&from)
            && !round.granted.contains(&from)
            && !round.refused.contains(&from)
            // Past the deadline the answer counts as missing (a no); the
            // next handle_timeout ends the round.
            && deadline_ms.is_some_and(|d| now_ms < d);
        if !fresh {
            return;
        }
        if granted {
            round.granted.insert(from);
        } else {
            round.refused.insert(from);
        }
        if round.granted.len() + 1 >= round.needed {
            let round = self.round.take().expect("checked above");
            self.elect(round.id, round.started_ms);
        } else if round.granted.len() + round.refused.len() == round.asked.len() {
            self.fail_round();
        }
    }

    /// Ends the outstanding round without a majority. The next wait runs
    /// from the round's start, so rounds keep their drawn period however
    /// long the answers took.
    fn fail_round(&mut self) {
        let round = self.round.take().expect("a round is outstanding");
        self.wait_start_ms = round.started_ms;
        self.redraw();
    }

    fn start_round(&mut self, now_ms: u64) {
        assert!(self.round.is_none(), "one round at a time");
        self.last_round += 1;
        let asked: BTreeSet<u64> = self
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.my_id)
            .collect();
        let needed = majority(self.voters.len());
        if needed <= 1 {
            // The only voter: its own vote is the majority, nobody to ask.
            self.elect(self.last_round, now_ms);
            return;
        }
        self.outputs.push_back(Output::AskPreVote {
            round: self.last_round,
            to: asked.iter().copied().collect(),
            last_log: self.last_log,
        });
        self.round = Some(Round {
            id: self.last_round,
            started_ms: now_ms,
            asked,
            granted: BTreeSet::new(),
            refused: BTreeSet::new(),
            needed,
        });
    }

    fn elect(&mut self, round_id: u64, started_ms: u64) {
        self.outputs
            .push_back(Output::StartElection { round: round_id });
        // This server is about to be a candidate: if the election splits it
        // retries after a candidate's wait (the Role report that follows
        // draws again from the same range).
        self.wait_start_ms = started_ms;
        let (lo, hi) = self.timing.wait_range_ms(true);
        self.wait_ms = self.rng.range_inclusive(lo, hi);
    }

    fn redraw(&mut self) {
        let (lo, hi) = self.timing.wait_range_ms(self.role == Role::Candidate);
        self.wait_ms = self.rng.range_inclusive(lo, hi);
    }
}

/// Votes needed to win among `voters` voters.
fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whom a leader that is leaving hands leadership to (Raft thesis §3.10):
/// the voter other than `my_id` whose log matches the leader's furthest
/// (`matched`: `(id, matched index)` from the leader's replication state,
/// `None` before anything matched), so it catches up soonest and wins the
/// election; among equals the lowest id. Learners and servers without a
/// replication entry are never chosen. `None` if there is no such voter.
pub fn hand_off_target(my_id: u64, voters: &[u64], matched: &[(u64, Option<u64>)]) -> Option<u64> {
    matched
        .iter()
        .filter(|(id, _)| *id != my_id && voters.contains(id))
        .max_by_key(|(id, idx)| (*idx, Reverse(*id)))
        .map(|(id, _)| *id)
}

/// Weyl increment of SplitMix64 (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function, a bijection on `u64`.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, and good enough to
/// spread election timeouts; mesh-core takes no `rand` dependency.
#[derive(Clone, Debug)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform enough in `[lo, hi]`: the modulo bias is below 2^-40 for
    /// ranges of milliseconds.
    fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.next_u64() % span,
            None => self.next_u64(),
        }
    }
}
