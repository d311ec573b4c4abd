//! `/v1/status` and `/v1/operator/raft`: who leads, who votes.

use hyper::Method;
use mesh_core::api::agent::{RaftConfiguration, RaftServer};
use mesh_core::wire::ClusterStatus;
use serde_json::json;

use super::reply::{bad_request, json_reply, not_found, ok, rpc_error, Reply};
use super::routes::{Call, HttpApi};

impl HttpApi {
    pub(super) async fn operator(&self, call: Call) -> Reply {
        let q = &call.query;
        match (call.method.clone(), call.path.as_str()) {
            (Method::GET, "/v1/status/leader") => {
                // Consul answers "" when no leader is known.
                let st = self.cluster.status().await;
                let leader = st
                    .ok()
                    .and_then(|st| st.leader)
                    .map(|l| l.rpc_addr)
                    .unwrap_or_default();
                json_reply(&leader)
            }
            (Method::GET, "/v1/status/peers") => match self.cluster.status().await {
                Ok(st) => {
                    let peers: Vec<String> = st
                        .peers
                        .iter()
                        .filter(|p| p.voter)
                        .map(|p| p.info.rpc_addr.clone())
                        .collect();
                    json_reply(&peers)
                }
                Err(e) => rpc_error(e),
            },
            (Method::GET, "/v1/operator/raft/configuration") => {
                // Served by the leader (it knows every peer's index) unless ?stale.
                let st = if q.has("stale") {
                    self.cluster.status().await
                } else {
                    self.cluster.leader_status().await
                };
                match st {
                    Ok(st) => raft_configuration(&st),
                    Err(e) => rpc_error(e),
                }
            }
            (Method::DELETE, "/v1/operator/raft/peer") => self.remove_peer(&call).await,
            (Method::GET, "/v1/operator/autopilot/configuration") => {
                json_reply(&autopilot_configuration())
            }
            (Method::PUT, "/v1/operator/autopilot/configuration") => bad_request(
                "autopilot settings are fixed in this build (dead servers are removed with \
                 `mesh operator raft remove-peer` or `mesh leave`, never automatically); \
                 GET shows them",
            ),
            (Method::GET, "/v1/operator/autopilot/health") => {
                let st = match self.cluster.leader_status().await {
                    Ok(st) => st,
                    Err(e) => return rpc_error(e),
                };
                // Nodes whose agent the leader declared failed.
                let critical = mesh_core::state::catalog::CatalogQuery::ChecksInState {
                    state: Some(mesh_core::state::catalog::CheckStatus::Critical),
                };
                let failed: Vec<String> = match self.read(q, critical).await {
                    Ok(r) => match r.result {
                        mesh_core::wire::QueryResult::Catalog(slice) => slice
                            .checks
                            .into_iter()
                            .filter(|c| c.check_id == mesh_core::state::catalog::SERF_HEALTH_CHECK)
                            .map(|c| c.node)
                            .collect(),
                        _ => Vec::new(),
                    },
                    Err(r) => return r,
                };
                autopilot_health(&st, &failed)
            }
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }

    async fn remove_peer(&self, call: &Call) -> Reply {
        let Some(server) = self.cluster.server() else {
            return bad_request("removing a Raft peer must be sent to a server agent's HTTP API");
        };
        let st = server.status();
        let q = &call.query;
        let target = match (q.get("id"), q.get("address")) {
            (Some(id), _) => st
                .peers
                .iter()
                .find(|p| p.info.node_id.to_string() == id || p.info.name == id),
            (None, Some(addr)) => st.peers.iter().find(|p| p.info.rpc_addr == addr),
            (None, None) => {
                return bad_request(
                    "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove",
                )
            }
        };
        let Some(target) = target else {
            return bad_request("no such server in the Raft configuration");
        };
        match server.remove_peer(target.info.node_id).await {
            Ok(()) => ok(),
            Err(e) => rpc_error(e),
        }
    }
}

fn raft_configuration(st: &ClusterStatus) -> Reply {
    let servers = st
        .peers
        .iter()
        .map(|p| RaftServer {
            id: p.info.node_id.to_string(),
            node: p.info.name.clone(),
            address: p.info.rpc_addr.clone(),
            leader: p.leader,
            voter: p.voter,
            protocol_version: "3".into(),
            last_index: p.last_index,
        })
        .collect();
    json_reply(&RaftConfiguration {
        servers,
        index: st.config_index,
    })
}

/// How far behind the leader's log a server may be and still count as
/// healthy (Consul's `MaxTrailingLogs` default).
const MAX_TRAILING_LOGS: u64 = 250;

/// The autopilot settings as they are: what this build does, in Consul's
/// shape.
fn autopilot_configuration() -> serde_json::Value {
    json!({
        "CleanupDeadServers": false,
        "LastContactThreshold": "200ms",
        "MaxTrailingLogs": MAX_TRAILING_LOGS,
        "MinQuorum": 0,
        "ServerStabilizationTime": "10s",
        "RedundancyZoneTag": "",
        "DisableUpgradeMigration": false,
        "UpgradeVersionTag": "",
        "CreateIndex": 0,
        "ModifyIndex": 0,
    })
}

/// `GET /v1/operator/autopilot/health` from the leader's view: a server is
/// healthy if its agent is alive (the leader has not declared its node
/// failed: no heartbeat for 2.5 s) and its log is within `MaxTrailingLogs`
/// of the leader's; the cluster is healthy if every voter is, and
/// tolerates as many failures as healthy voters beyond a quorum. 429 when
/// unhealthy, as Consul.
fn autopilot_health(st: &ClusterStatus, failed_nodes: &[String]) -> Reply {
    let leader_index = st.last_log_index;
    let servers: Vec<_> = st
        .peers
        .iter()
        .map(|p| {
            let alive = !failed_nodes.contains(&p.info.name);
            let healthy = alive && p.last_index + MAX_TRAILING_LOGS >= leader_index;
            json!({
                "ID": p.info.node_id.to_string(),
                "Name": p.info.name,
                "Address": p.info.rpc_addr,
                "SerfStatus": if alive { "alive" } else { "failed" },
                "Version": env!("CARGO_PKG_VERSION"),
                "Leader": p.leader,
                "LastContact": "0s",
                "LastTerm": st.term,
                "LastIndex": p.last_index,
                "Healthy": healthy,
                "Voter": p.voter,
                // Go's zero time: not tracked (and a Go client must be
                // able to decode it).
                "StableSince": "0001-01-01T00:00:00Z",
            })
        })
        .collect();
    let voters = st.peers.iter().filter(|p| p.voter).count();
    let healthy_voters = servers
        .iter()
        .filter(|s| s["Voter"] == true && s["Healthy"] == true)
        .count();
    let quorum = voters / 2 + 1;
    let healthy = voters > 0 && healthy_voters == voters && st.leader.is_some();
    let body = json!({
        "Healthy": healthy,
        "FailureTolerance": healthy_voters.saturating_sub(quorum),
        "Servers": servers,
    });
    let mut resp = json_reply(&body);
    if !healthy {
        *resp.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
    }
    resp
}

impl HttpApi {
    /// `/v1/coordinate`: Consul's network coordinates come from Serf's
    /// Vivaldi probes, which this mesh does not run, so no node has one:
    /// the lists are empty (as Consul's are before any probe), a node's
    /// coordinate is 404, and updates are refused.
    pub(super) fn coordinates(&self, call: Call, rest: &str) -> Reply {
        match (call.method.clone(), rest) {
            (Method::GET, "datacenters") => json_reply(&json!([{
                "Datacenter": self.config.datacenter,
                "AreaID": "wan",
                "Coordinates": [],
            }])),
            (Method::GET, "nodes") => json_reply(&json!([])),
            (Method::GET, r) if r.starts_with("node/") => {
                not_found("no network coordinates: this mesh does not run Serf's probes")
            }
            (Method::PUT, "update") => super::reply::text(
                hyper::StatusCode::NOT_IMPLEMENTED,
                "network coordinates are not supported (no Serf probes)",
            ),
            _ => not_found(format!("unknown endpoint {}", call.path)),
        }
    }
}
