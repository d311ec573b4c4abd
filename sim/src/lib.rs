//! Deterministic simulation of the mesh: consul00-02 (fcs00 and fcc00 join
//! with the service catalog) as madsim nodes running the production
//! `mesh-net` agent, each on its own simulated disk, under seeded faults.
//!
//! Everything here needs `--cfg madsim`; in a normal build this crate only
//! carries the launcher that builds and runs the simulations (see
//! `tests/simulations.rs`).

#[cfg(madsim)]
pub mod agent_files;
#[cfg(madsim)]
pub mod agent_hosts;
#[cfg(madsim)]
pub mod agents;
#[cfg(madsim)]
pub mod api_tour;
pub mod checkers;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod connect;
#[cfg(madsim)]
pub mod locks;
#[cfg(madsim)]
pub mod observers;
pub mod outcome;
pub mod planted;
pub mod rpc_tls;
#[cfg(madsim)]
pub mod scenarios;
pub mod seeds;
#[cfg(madsim)]
pub mod swarm;
#[cfg(madsim)]
pub mod trace;
#[cfg(madsim)]
pub mod workload;

/// The scenarios, by name.
pub const SCENARIOS: &[&str] = &[
    "manual_bootstrap",
    "bootstrap_expect",
    "failover",
    "full_restart",
    "leave_rejoin",
    "clock_drift",
    "slow_clients",
    "isolated_follower",
    "swarm",
    "scale",
    "agents",
    "agent_liveness",
    "connect",
    "locks",
    "group_commit",
];
