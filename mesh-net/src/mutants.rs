//! Planted bugs, to prove the simulator's checkers can fail.
//!
//! Each mutant is a deliberate bug at a place where real systems break. They
//! exist only in simulation builds (`--cfg madsim`) and are switched on by
//! name at run time (`sim run --mutant NAME`); in production builds
//! [`enabled`] is a constant `false` and the bug code is compiled out.

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutant {
    /// The leader answers default-mode reads without confirming its
    /// leadership with a quorum (stale reads after a partition).
    SkipReadQuorum,
    /// The leader acknowledges a write as soon as it is proposed, before it
    /// is committed.
    AckBeforeCommit,
    /// Log appends are not fsynced before they are acknowledged.
    SkipFsync,
    /// The vote is not persisted: a restarted server forgets whom it voted for.
    ForgetVote,
    /// Check-and-set writes without comparing the index.
    CasWithoutCompare,
    /// On restart, the last log entry is dropped even though it was synced
    /// (and may have been acknowledged).
    DropLastLogEntry,
    /// Default-mode reads are served on a time-based leader lease, as
    /// Consul's default mode does: after a quorum round the leader answers
    /// reads locally for one minimum election timeout, measured on its own
    /// clock. Safe while clocks agree; stale when the leader's clock runs
    /// slow and it is cut off.
    LeaseRead,
    /// A conflict truncation drops the entries in memory but never writes
    /// its record: after a restart the conflicting entries come back.
    TruncateNotPersisted,
    /// A follower takes a snapshot from the leader (stores it, reports its
    /// last log id as applied) but keeps its old state machine.
    SkipSnapshotInstall,
    /// A follower answers default-mode reads from its own applied state
    /// instead of routing them to the leader.
    StaleFollowerRead,
    /// Routing sends a write or CAS again after an attempt that may have
    /// run (the connection failed after sending, or the leader moved).
    RetryMaybeRan,
    /// Recovery finds a torn tail in the log but leaves it in the file:
    /// the next appends land behind the garbage.
    TornTailKept,
    /// PreVote is granted without comparing logs (only the leader lease
    /// is checked).
    PrevoteIgnoresLog,
    /// Leadership hand-off sends `TimeoutNow` without waiting for the
    /// target to match the leader's log.
    HandoffWithoutCatchup,
    /// Routing never notices that the leader of a request in flight changed
    /// or fell silent: the request waits out the RPC timeout (5 s), as
    /// before routing followed the leader.
    IgnoreLeaderChange,
    /// The server accepts Raft messages and PreVotes addressed to another
    /// node id (a wiped server answering in its predecessor's name).
    NoAddresseeCheck,
    /// Anti-entropy only upserts: instances and checks the agent removed
    /// stay in the catalog (a missed deregistration).
    SyncKeepsRemoved,
    /// The agent drops a check's status change from passing to critical
    /// (a lost status update): the catalog keeps showing it passing.
    DropCriticalStatus,
    /// The leader never declares a silent node failed.
    LivenessNeverFails,
    /// A sidecar's client side accepts a server of any SPIFFE ID from the
    /// trust domain, not only the service it dialled (traffic for fcs can
    /// land on whoever answers the address).
    SkipSpiffeCheck,
    /// Both TLS verifiers check the peer chain at a time inside the leaf's
    /// validity (its `not_before` plus one second) instead of the host's
    /// wall clock: expired leaves are accepted.
    AcceptExpiredLeaf,
    /// The inbound sidecar never asks the intentions: any peer with a
    /// valid leaf reaches the local app.
    SkipIntentionCheck,
    /// The inbound sidecar dials the local app and forwards the first bytes
    /// read off the raw TCP connection before the TLS handshake (every
    /// connection's ClientHello reaches the app), and pipes a peer that
    /// does not speak TLS straight through, unauthenticated.
    ForwardBeforeHandshake,
    /// The leader proposes locks of keys still in their lock delay.
    LockDelayIgnored,
    /// The leader measures session TTLs on its wall clock, which steps
    /// when NTP corrects it, instead of its monotonic clock.
    SessionTtlOnWallClock,
    /// `?release=` frees a key whoever asks, not only its holder.
    ReleaseByAnyone,
    /// A transaction of several operations applies only its first half.
    TxnAppliedHalf,
    /// A server with `verify_incoming` still serves peers without a
    /// certificate: plaintext RPC connections (the first-byte sniff lets a
    /// frame through), and, with `auto_encrypt.allow_tls`, TLS peers
    /// without one beyond asking for one.
    RpcPlaintextAccepted,
    /// A server answers server-only requests (join, Raft, PreVote) from a
    /// peer whose certificate does not name a server (CVE-2021-37219).
    RpcServerRequestsFromAgents,
    /// The leader hands the results of a batched entry to its writers in
    /// reverse order (each writer gets another's answer).
    BatchResultsMisrouted,
    /// The agent renews a Connect leaf only when it expired or its root
    /// rotated, never at its renewal point (60-90 % of its life).
    LeafNotRenewedByAge,
    /// A follower never tells its election machine that the leader's port
    /// refused a connection: a killed leader is replaced only after the
    /// PreVote lease.
    LeaderGoneIgnored,
    /// A deposed leader's replication task keeps sending entries under its
    /// old vote after this server's log was overwritten by a newer leader.
    StaleVoteReplication,
    /// The upstream side of a sidecar carries the app's bytes to the
    /// destination's sidecar over plain TCP, without TLS.
    UpstreamPlaintext,
    /// The agent ignores `?cached` on `/v1/connect/intentions/match`: a
    /// sidecar started while no server answers refuses everyone.
    IntentionCacheIgnored,
    /// A restarted agent writes its loaded checks' initial `critical` over
    /// the catalog's statuses before they run (Consul's behaviour): the
    /// node's instances drop out of service while its agent restarts.
    RestartOverwritesStatus,
}

impl Mutant {
    /// Every mutant, with its command-line name.
    pub const ALL: &'static [(&'static str, Mutant)] = &[
        ("skip_read_quorum", Mutant::SkipReadQuorum),
        ("ack_before_commit", Mutant::AckBeforeCommit),
        ("skip_fsync", Mutant::SkipFsync),
        ("forget_vote", Mutant::ForgetVote),
        ("cas_without_compare", Mutant::CasWithoutCompare),
        ("drop_last_log_entry", Mutant::DropLastLogEntry),
        ("lease_read", Mutant::LeaseRead),
        ("truncate_not_persisted", Mutant::TruncateNotPersisted),
        ("skip_snapshot_install", Mutant::SkipSnapshotInstall),
        ("stale_follower_read", Mutant::StaleFollowerRead),
        ("retry_maybe_ran", Mutant::RetryMaybeRan),
        ("torn_tail_kept", Mutant::TornTailKept),
        ("prevote_ignores_log", Mutant::PrevoteIgnoresLog),
        ("handoff_without_catchup", Mutant::HandoffWithoutCatchup),
        ("ignore_leader_change", Mutant::IgnoreLeaderChange),
        ("no_addressee_check", Mutant::NoAddresseeCheck),
        ("sync_keeps_removed", Mutant::SyncKeepsRemoved),
        ("drop_critical_status", Mutant::DropCriticalStatus),
        ("liveness_never_fails", Mutant::LivenessNeverFails),
        ("skip_spiffe_check", Mutant::SkipSpiffeCheck),
        ("accept_expired_leaf", Mutant::AcceptExpiredLeaf),
        ("skip_intention_check", Mutant::SkipIntentionCheck),
        ("forward_before_handshake", Mutant::ForwardBeforeHandshake),
        ("lock_delay_ignored", Mutant::LockDelayIgnored),
        ("session_ttl_on_wall_clock", Mutant::SessionTtlOnWallClock),
        ("release_by_anyone", Mutant::ReleaseByAnyone),
        ("txn_applied_half", Mutant::TxnAppliedHalf),
        ("rpc_plaintext_accepted", Mutant::RpcPlaintextAccepted),
        (
            "rpc_server_requests_from_agents",
            Mutant::RpcServerRequestsFromAgents,
        ),
        ("batch_results_misrouted", Mutant::BatchResultsMisrouted),
        ("leaf_not_renewed_by_age", Mutant::LeafNotRenewedByAge),
        ("leader_gone_ignored", Mutant::LeaderGoneIgnored),
        ("stale_vote_replication", Mutant::StaleVoteReplication),
        ("upstream_plaintext", Mutant::UpstreamPlaintext),
        ("intention_cache_ignored", Mutant::IntentionCacheIgnored),
        ("restart_overwrites_status", Mutant::RestartOverwritesStatus),
    ];

    /// The mutant called `name`.
    pub fn by_name(name: &str) -> Option<Mutant> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }
}

#[cfg(madsim)]
static ACTIVE: std::sync::Mutex<Option<Mutant>> = std::sync::Mutex::new(None);

/// Switches `mutant` on for this process (simulation builds only).
#[cfg(madsim)]
pub fn activate(mutant: Mutant) {
    *ACTIVE.lock().expect("mutant lock") = Some(mutant);
}

/// Whether `mutant` is switched on.
#[cfg(madsim)]
pub fn enabled(mutant: Mutant) -> bool {
    *ACTIVE.lock().expect("mutant lock") == Some(mutant)
}

/// Whether `mutant` is switched on: never, outside the simulator.
#[cfg(not(madsim))]
#[inline(always)]
pub const fn enabled(_mutant: Mutant) -> bool {
    false
}

/// The read lease of [`Mutant::LeaseRead`], per server: when it ends on
/// that server's clock.
#[cfg(madsim)]
static LEASES: std::sync::Mutex<std::collections::BTreeMap<u64, crate::clock::Instant>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Whether server `node`'s read lease still runs ([`Mutant::LeaseRead`]).
#[cfg(madsim)]
pub fn lease_valid(node: u64) -> bool {
    let leases = LEASES.lock().expect("lease lock");
    leases
        .get(&node)
        .is_some_and(|until| crate::clock::Instant::now() < *until)
}

/// Extends server `node`'s read lease to `until` ([`Mutant::LeaseRead`]).
#[cfg(madsim)]
pub fn extend_lease(node: u64, until: crate::clock::Instant) {
    LEASES.lock().expect("lease lock").insert(node, until);
}

/// Never valid outside the simulator.
#[cfg(not(madsim))]
pub fn lease_valid(_node: u64) -> bool {
    false
}

/// A no-op outside the simulator.
#[cfg(not(madsim))]
pub fn extend_lease(_node: u64, _until: crate::clock::Instant) {}
