//! Every committed vote any server saves, for the simulator's
//! election-safety checker. A leader saves its own committed vote before
//! it appends its first entry (openraft's `establish_leader`), and a
//! follower saves the committed vote of the leader it follows, so two
//! leaders in one term leave two committed votes naming different nodes
//! for that term, however briefly either led. Sampling who leads every few
//! milliseconds can miss a leader that lasts less than a sample; this
//! cannot. Only compiled under `--cfg madsim`; the production build pays
//! nothing.

use std::sync::Mutex;

use tokio::madsim::plugin::{self, Simulator};
use tokio::madsim::rand::GlobalRng;
use tokio::madsim::time::TimeHandle;
use tokio::madsim::Config;

use crate::raft_types::Vote;

/// A committed vote, as one server saved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedVote {
    /// The term.
    pub term: u64,
    /// The leader the vote names.
    pub leader: u64,
}

/// madsim plugin collecting committed votes; the simulation driver
/// registers it (`Runtime::add_simulator::<VoteLog>()`).
pub struct VoteLog {
    votes: Mutex<Vec<CommittedVote>>,
}

impl Simulator for VoteLog {
    fn new(_rand: &GlobalRng, _time: &TimeHandle, _config: &Config) -> Self {
        VoteLog {
            votes: Mutex::new(Vec::new()),
        }
    }
}

impl VoteLog {
    /// Takes the votes recorded since the last call, in the order saved.
    pub fn drain() -> Vec<CommittedVote> {
        match plugin::try_simulator::<VoteLog>() {
            Some(log) => std::mem::take(&mut *log.votes.lock().expect("vote log lock")),
            None => Vec::new(),
        }
    }
}

/// Records `vote` if it is committed (called by the log store as it saves
/// a vote); nothing when the driver did not register the plugin.
pub(crate) fn record(vote: &Vote) {
    if !vote.committed {
        return;
    }
    let Some(leader) = vote.leader_id.voted_for else {
        return;
    };
    if let Some(log) = plugin::try_simulator::<VoteLog>() {
        log.votes
            .lock()
            .expect("vote log lock")
            .push(CommittedVote {
                term: vote.leader_id.term,
                leader,
            });
    }
}
