//! `/v1/status` and `/v1/operator/raft`: who leads, who votes.

use hyper::Method;
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
    let servers: Vec<_> = st
        .peers
        .iter()
        .map(|p| {
            json!({
                "ID": p.info.node_id.to_string(),
                "Node": p.info.name,
                "Address": p.info.rpc_addr,
                "Leader": p.leader,
                "Voter": p.voter,
                "ProtocolVersion": "3",
                "LastIndex": p.last_index,
            })
        })
        .collect();
    json_reply(&json!({ "Servers": servers, "Index": st.config_index }))
}
