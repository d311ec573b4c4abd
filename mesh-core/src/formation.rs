//! Cluster formation: when may a server initialize Raft, and with which
//! voters? Sans-IO: the driver feeds in what discovery and join replies
//! report and acts on [`Formation::decide`].
//!
//! Semantics follow Consul's server flags:
//!
//! * `-bootstrap` ([`BootstrapMode::Manual`]): this server alone bootstraps a
//!   single-voter cluster; the others join it.
//! * `-bootstrap-expect=N` ([`BootstrapMode::Expect`]): bootstrap automatically
//!   once N servers are known. Every server must be started with the same N;
//!   a peer advertising a different N is an [`FormationError::ExpectMismatch`]
//!   and blocks bootstrapping, because servers that disagree on N could form
//!   two clusters.
//! * no flag ([`BootstrapMode::JoinOnly`]): never bootstrap; wait until an
//!   existing cluster is found and join it.
//! * A server that restarts with Raft state never bootstraps again, whatever
//!   its flags: initializing a second time would fork the cluster's history.
//!
//! # Why every `Expect` server computes the same voter set
//!
//! The voter set is the first N known servers ordered by `node_id`, so servers
//! that know the same servers pick the same set regardless of the order in
//! which they learned of them. A server that is not among those N waits for
//! the others to form the cluster and then joins it, because Raft cannot be
//! initialized with a configuration that leaves the initializing node out.
//! Starting more servers than N with `-bootstrap-expect=N` is still a
//! misconfiguration (as in Consul): servers that saw different subsets could
//! choose different sets. Any error from [`Formation::observe_server`] blocks
//! automatic bootstrapping for the same reason: servers that saw conflicting
//! reports could disagree on the set. The operator fixes the configuration and
//! restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a server advertises about itself during discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Raft node id; unique in the cluster.
    pub node_id: u64,
    /// Server name; unique in the cluster, the identity operators see.
    pub name: String,
    /// Address of the server's RPC listener (Raft and forwarding).
    pub rpc_addr: String,
    /// Address of the server's HTTP API.
    pub http_addr: String,
    /// The server's `-bootstrap-expect` value, if it was started with one.
    pub bootstrap_expect: Option<u32>,
}

/// How this server was told to form a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapMode {
    /// `-bootstrap`: bootstrap alone, immediately.
    Manual,
    /// `-bootstrap-expect=N`: bootstrap once N servers are known.
    Expect(u32),
    /// No flag: only join an existing cluster.
    JoinOnly,
}

/// What the driver should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// keep discovering peers
    Wait,
    /// initialize Raft with exactly these voters (sorted by node_id; identical on every server that sees the same set)
    ///
    /// After initializing Raft the driver calls
    /// [`Formation::observe_formed_cluster`] (its own cluster now exists), so
    /// later calls to `decide` say [`Decision::AlreadyFormed`] even if more
    /// servers show up.
    Bootstrap(Vec<ServerInfo>),
    /// Raft state exists or a cluster with a leader was found: never bootstrap; join instead
    AlreadyFormed,
}

/// Why a configuration or a peer's report was rejected.
#[derive(thiserror::Error, Debug, PartialEq, Eq, Clone)]
pub enum FormationError {
    /// A peer was started with a different `-bootstrap-expect`.
    #[error(
        "server {peer} was started with bootstrap-expect={theirs} but this server with \
         bootstrap-expect={ours}; refusing to bootstrap: start every server with the same value"
    )]
    ExpectMismatch {
        /// Our expected server count.
        ours: u32,
        /// The peer's name.
        peer: String,
        /// The peer's expected server count.
        theirs: u32,
    },
    /// `-bootstrap-expect` must be at least 1.
    #[error("bootstrap-expect={0} is invalid: it must be at least 1 (use 1 for a single-server cluster)")]
    InvalidExpect(u32),
    /// Two servers claim the same node id.
    #[error(
        "servers {a} and {b} both claim node id {id}; refusing to bootstrap: give each \
         server its own data directory (node ids are generated per data directory)"
    )]
    DuplicateNodeId {
        /// The contested node id.
        id: u64,
        /// The server we knew first.
        a: String,
        /// The server reported now.
        b: String,
    },
    /// Two node ids claim the same server name.
    #[error(
        "node ids {a} and {b} both claim server name {name}; refusing to bootstrap: give \
         each server a unique name, or remove the stale server before restarting"
    )]
    NameConflict {
        /// The contested name.
        name: String,
        /// The node id we knew first.
        a: u64,
        /// The node id reported now.
        b: u64,
    },
}

/// Formation state of one server. See the module docs.
#[derive(Clone, Debug)]
pub struct Formation {
    me: ServerInfo,
    mode: BootstrapMode,
    has_raft_state: bool,
    formed: bool,
    /// Every known server, including `me`, keyed by node id so the voter set
    /// comes out sorted.
    servers: BTreeMap<u64, ServerInfo>,
    /// First error seen from a peer report; blocks `Expect` bootstrapping.
    blocker: Option<FormationError>,
}

impl Formation {
    /// Starts formation for `me`. `has_raft_state` is whether this server
    /// found Raft state (log, vote or snapshot) on disk.
    ///
    /// # Panics
    ///
    /// If `me.bootstrap_expect` does not match `mode` (both come from the
    /// same configuration, so a mismatch is a bug in the caller).
    pub fn new(
        me: ServerInfo,
        mode: BootstrapMode,
        has_raft_state: bool,
    ) -> Result<Self, FormationError> {
        let advertised = match mode {
            BootstrapMode::Expect(0) => return Err(FormationError::InvalidExpect(0)),
            BootstrapMode::Expect(n) => Some(n),
            BootstrapMode::Manual | BootstrapMode::JoinOnly => None,
        };
        assert_eq!(
            me.bootstrap_expect, advertised,
            "ServerInfo::bootstrap_expect must advertise the mode {mode:?}"
        );
        let servers = BTreeMap::from([(me.node_id, me.clone())]);
        let formation = Self {
            me,
            mode,
            has_raft_state,
            formed: false,
            servers,
            blocker: None,
        };
        formation.check_invariants();
        Ok(formation)
    }

    /// Records a server reported by discovery or a join reply.
    ///
    /// A known server reported with new addresses is updated. Reports about
    /// ourselves are ignored (our own info is authoritative) unless they
    /// conflict with our identity. On error the report is not recorded, and
    /// the error is remembered: an `Expect` server then never bootstraps
    /// (see the module docs); the caller logs the error.
    pub fn observe_server(&mut self, peer: ServerInfo) -> Result<(), FormationError> {
        let result = self.try_observe(peer);
        if let Err(err) = &result {
            self.blocker.get_or_insert_with(|| err.clone());
        }
        self.check_invariants();
        result
    }

    /// A peer reported that it already has a leader or a Raft configuration
    /// (or we just bootstrapped): from now on, join instead of bootstrapping.
    pub fn observe_formed_cluster(&mut self) {
        self.formed = true;
    }

    /// What to do now; a pure function of everything observed so far. Call it
    /// after `new` and after every `observe_*`.
    pub fn decide(&self) -> Decision {
        if self.has_raft_state || self.formed {
            return Decision::AlreadyFormed;
        }
        match self.mode {
            BootstrapMode::Manual => Decision::Bootstrap(vec![self.me.clone()]),
            BootstrapMode::JoinOnly => Decision::Wait,
            BootstrapMode::Expect(n) => {
                if self.blocker.is_some() {
                    return Decision::Wait;
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if self.servers.len() < n {
                    return Decision::Wait;
                }
                let voters: Vec<ServerInfo> = self.servers.values().take(n).cloned().collect();
                if !voters.iter().any(|s| s.node_id == self.me.node_id) {
                    // Raft cannot be initialized without ourselves in the
                    // configuration; the servers that are in it bootstrap and
                    // we join them.
                    return Decision::Wait;
                }
                assert!(voters.windows(2).all(|w| w[0].node_id < w[1].node_id));
                Decision::Bootstrap(voters)
            }
        }
    }

    /// Every known server, including this one, sorted by node id.
    pub fn known_servers(&self) -> Vec<ServerInfo> {
        self.servers.values().cloned().collect()
    }

    /// The error that is blocking automatic bootstrapping, if any, for
    /// status reports.
    pub fn blocker(&self) -> Option<&FormationError> {
        self.blocker.as_ref()
    }

    /// Asserts the internal invariants; run after every handler in tests and
    /// simulation.
    pub fn check_invariants(&self) {
        assert_eq!(self.servers.get(&self.me.node_id), Some(&self.me));
        for (id, server) in &self.servers {
            assert_eq!(*id, server.node_id);
        }
        let names: std::collections::BTreeSet<&str> =
            self.servers.values().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), self.servers.len(), "server names are unique");
        if let Some(blocker) = &self.blocker {
            assert!(!matches!(blocker, FormationError::InvalidExpect(_)));
        }
    }

    fn try_observe(&mut self, peer: ServerInfo) -> Result<(), FormationError> {
        if let Some(known) = self.servers.get(&peer.node_id) {
            if known.name != peer.name {
                return Err(FormationError::DuplicateNodeId {
                    id: peer.node_id,
                    a: known.name.clone(),
                    b: peer.name,
                });
            }
        }
        if let Some(known) = self
            .servers
            .values()
            .find(|s| s.name == peer.name && s.node_id != peer.node_id)
        {
            return Err(FormationError::NameConflict {
                name: peer.name,
                a: known.node_id,
                b: peer.node_id,
            });
        }
        if let (BootstrapMode::Expect(ours), Some(theirs)) = (self.mode, peer.bootstrap_expect) {
            if ours != theirs {
                return Err(FormationError::ExpectMismatch {
                    ours,
                    peer: peer.name,
                    theirs,
                });
            }
        }
        if peer.node_id == self.me.node_id {
            return Ok(());
        }
        self.servers.insert(peer.node_id, peer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(node_id: u64, name: &str, expect: Option<u32>) -> ServerInfo {
        ServerInfo {
            node_id,
            name: name.to_string(),
            rpc_addr: format!("10.0.0.{node_id}:8300"),
            http_addr: format!("10.0.0.{node_id}:8500"),
            bootstrap_expect: expect,
        }
    }

    fn ids(decision: &Decision) -> Vec<u64> {
        match decision {
            Decision::Bootstrap(voters) => voters.iter().map(|s| s.node_id).collect(),
            other => panic!("expected Bootstrap, got {other:?}"),
        }
    }

    /// Tiny deterministic RNG so the story needs no `rand`.
    struct XorShift(u64);

    impl XorShift {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                items.swap(i, self.below(i + 1));
            }
        }
    }

    #[test]
    fn story_three_expect_servers_agree_in_any_delivery_order() {
        // Node ids deliberately out of name order.
        let infos = [
            server(30, "consul00", Some(3)),
            server(10, "consul01", Some(3)),
            server(20, "consul02", Some(3)),
        ];
        for seed in 0..500u64 {
            let mut rng = XorShift::new(seed);

            // phase: every server starts knowing only itself
            let mut nodes: Vec<Formation> = infos
                .iter()
                .map(|i| Formation::new(i.clone(), BootstrapMode::Expect(3), false).unwrap())
                .collect();
            for node in &nodes {
                assert_eq!(node.decide(), Decision::Wait, "seed {seed}");
            }

            // phase: deliver every (from, to) report, some twice and some
            // to the sender itself (discovery echoes), in a seed-chosen order
            let mut deliveries: Vec<(usize, usize)> = Vec::new();
            for from in 0..3 {
                for to in 0..3 {
                    for _ in 0..=rng.below(2) {
                        deliveries.push((from, to));
                    }
                }
            }
            rng.shuffle(&mut deliveries);
            let mut first_bootstrap: Vec<Option<Decision>> = vec![None; 3];
            for (from, to) in deliveries {
                nodes[to].observe_server(infos[from].clone()).unwrap();
                nodes[to].check_invariants();
                let decision = nodes[to].decide();
                if nodes[to].known_servers().len() < 3 {
                    assert_eq!(decision, Decision::Wait, "seed {seed}");
                } else {
                    // Once a server may bootstrap its decision never changes.
                    let first = first_bootstrap[to].get_or_insert_with(|| decision.clone());
                    assert_eq!(*first, decision, "seed {seed}");
                }
            }

            // phase: all three chose the identical voter set
            let decisions: Vec<Decision> = nodes.iter().map(Formation::decide).collect();
            assert_eq!(ids(&decisions[0]), vec![10, 20, 30], "seed {seed}");
            assert!(decisions.iter().all(|d| *d == decisions[0]), "seed {seed}");

            // phase: after bootstrapping, nobody bootstraps again
            for node in &mut nodes {
                node.observe_formed_cluster();
                assert_eq!(node.decide(), Decision::AlreadyFormed);
            }
        }
    }

    #[test]
    fn expect_mismatch_is_reported_and_blocks_bootstrap() {
        let mut f =
            Formation::new(server(1, "a", Some(3)), BootstrapMode::Expect(3), false).unwrap();
        let err = f.observe_server(server(2, "b", Some(5))).unwrap_err();
        assert_eq!(
            err,
            FormationError::ExpectMismatch {
                ours: 3,
                peer: "b".into(),
                theirs: 5
            }
        );
        assert!(err.to_string().contains("bootstrap-expect=5"));
        assert_eq!(
            f.known_servers().len(),
            1,
            "the mismatched peer is not counted"
        );

        // Enough agreeing servers show up, but the disagreement was seen.
        f.observe_server(server(3, "c", Some(3))).unwrap();
        f.observe_server(server(4, "d", None)).unwrap();
        assert_eq!(f.known_servers().len(), 3);
        assert_eq!(f.decide(), Decision::Wait);
        assert_eq!(f.blocker(), Some(&err));
    }

    #[test]
    fn servers_without_expect_are_counted() {
        let mut f =
            Formation::new(server(1, "a", Some(2)), BootstrapMode::Expect(2), false).unwrap();
        f.observe_server(server(2, "b", None)).unwrap();
        assert_eq!(ids(&f.decide()), vec![1, 2]);
    }

    #[test]
    fn restart_with_raft_state_never_bootstraps() {
        let f = Formation::new(server(1, "a", None), BootstrapMode::Manual, true).unwrap();
        assert_eq!(f.decide(), Decision::AlreadyFormed);

        let mut f =
            Formation::new(server(1, "a", Some(3)), BootstrapMode::Expect(3), true).unwrap();
        f.observe_server(server(2, "b", Some(3))).unwrap();
        f.observe_server(server(3, "c", Some(3))).unwrap();
        assert_eq!(f.decide(), Decision::AlreadyFormed);

        let f = Formation::new(server(1, "a", None), BootstrapMode::JoinOnly, true).unwrap();
        assert_eq!(f.decide(), Decision::AlreadyFormed);
    }

    #[test]
    fn manual_bootstraps_alone_until_formed() {
        let mut f = Formation::new(server(7, "a", None), BootstrapMode::Manual, false).unwrap();
        f.observe_server(server(2, "b", Some(3))).unwrap();
        assert_eq!(f.decide(), Decision::Bootstrap(vec![server(7, "a", None)]));
        f.observe_formed_cluster();
        assert_eq!(f.decide(), Decision::AlreadyFormed);
    }

    #[test]
    fn join_only_waits_for_a_formed_cluster() {
        let mut f = Formation::new(server(1, "a", None), BootstrapMode::JoinOnly, false).unwrap();
        f.observe_server(server(2, "b", Some(2))).unwrap();
        f.observe_server(server(3, "c", Some(2))).unwrap();
        assert_eq!(f.decide(), Decision::Wait);
        f.observe_formed_cluster();
        assert_eq!(f.decide(), Decision::AlreadyFormed);
    }

    #[test]
    fn expect_zero_is_invalid() {
        assert_eq!(
            Formation::new(server(1, "a", Some(0)), BootstrapMode::Expect(0), false).unwrap_err(),
            FormationError::InvalidExpect(0)
        );
    }

    #[test]
    fn expect_one_bootstraps_alone() {
        let f = Formation::new(server(1, "a", Some(1)), BootstrapMode::Expect(1), false).unwrap();
        assert_eq!(ids(&f.decide()), vec![1]);
    }

    #[test]
    #[should_panic(expected = "must advertise the mode")]
    fn self_info_must_advertise_the_mode() {
        let _ = Formation::new(server(1, "a", None), BootstrapMode::Expect(3), false);
    }

    #[test]
    fn extra_servers_beyond_expect_are_left_out_and_the_excluded_one_waits() {
        let all = [
            server(40, "d", Some(3)),
            server(10, "a", Some(3)),
            server(30, "c", Some(3)),
            server(20, "b", Some(3)),
        ];
        let mut decisions = Vec::new();
        for me in &all {
            let mut f = Formation::new(me.clone(), BootstrapMode::Expect(3), false).unwrap();
            for peer in &all {
                f.observe_server(peer.clone()).unwrap();
            }
            decisions.push((me.node_id, f.decide()));
        }
        for (id, decision) in decisions {
            if id == 40 {
                assert_eq!(decision, Decision::Wait);
            } else {
                assert_eq!(ids(&decision), vec![10, 20, 30]);
            }
        }
    }

    #[test]
    fn same_name_new_address_updates_the_server() {
        let mut f =
            Formation::new(server(1, "a", Some(2)), BootstrapMode::Expect(2), false).unwrap();
        f.observe_server(server(2, "b", Some(2))).unwrap();
        let mut moved = server(2, "b", Some(2));
        moved.rpc_addr = "10.9.9.9:8300".into();
        moved.http_addr = "10.9.9.9:8500".into();
        f.observe_server(moved.clone()).unwrap();
        assert_eq!(
            f.known_servers(),
            vec![server(1, "a", Some(2)), moved.clone()]
        );
        assert_eq!(
            f.decide(),
            Decision::Bootstrap(vec![server(1, "a", Some(2)), moved])
        );
    }

    #[test]
    fn reports_about_ourselves_do_not_override_our_info() {
        let me = server(1, "a", Some(2));
        let mut f = Formation::new(me.clone(), BootstrapMode::Expect(2), false).unwrap();
        let mut echo = me.clone();
        echo.rpc_addr = "192.168.0.1:8300".into();
        f.observe_server(echo).unwrap();
        assert_eq!(f.known_servers(), vec![me]);
        assert_eq!(f.decide(), Decision::Wait);
    }

    #[test]
    fn duplicate_node_id_is_rejected_and_blocks_bootstrap() {
        let mut f =
            Formation::new(server(1, "a", Some(2)), BootstrapMode::Expect(2), false).unwrap();
        f.observe_server(server(2, "b", Some(2))).unwrap();
        let err = f.observe_server(server(2, "c", Some(2))).unwrap_err();
        assert_eq!(
            err,
            FormationError::DuplicateNodeId {
                id: 2,
                a: "b".into(),
                b: "c".into()
            }
        );
        assert_eq!(f.decide(), Decision::Wait);

        // A peer claiming our own id under another name.
        let mut f = Formation::new(server(1, "a", None), BootstrapMode::Manual, false).unwrap();
        assert_eq!(
            f.observe_server(server(1, "imposter", None)),
            Err(FormationError::DuplicateNodeId {
                id: 1,
                a: "a".into(),
                b: "imposter".into()
            })
        );
        // Manual mode bootstraps alone regardless of what peers report.
        assert_eq!(ids(&f.decide()), vec![1]);
    }

    #[test]
    fn same_name_with_another_node_id_is_rejected() {
        let mut f =
            Formation::new(server(1, "a", Some(2)), BootstrapMode::Expect(2), false).unwrap();
        f.observe_server(server(2, "b", Some(2))).unwrap();
        assert_eq!(
            f.observe_server(server(3, "b", Some(2))),
            Err(FormationError::NameConflict {
                name: "b".into(),
                a: 2,
                b: 3
            })
        );
        assert_eq!(f.known_servers().len(), 2);
        assert_eq!(f.decide(), Decision::Wait);
    }

    #[test]
    fn server_info_round_trips_through_json() {
        let info = server(5, "consul00", Some(3));
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<ServerInfo>(&json).unwrap(), info);
    }
}
