//! The JSON of `/v1/agent/self`, `/v1/agent/members` and
//! `/v1/operator/raft/configuration` as typed structs, in Consul's shape:
//! the HTTP API writes them, the CLI and the sidecar read them. Readers
//! take missing fields as their defaults and ignore unknown ones, so a
//! Consul agent's answer reads too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One row of `GET /v1/agent/members` (Consul's `AgentMember`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Member {
    /// The node name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Its gossip port (Consul's LAN Serf port).
    pub port: u16,
    /// `role` (`consul` for a server, `node` for a client), `dc`, `id`.
    pub tags: BTreeMap<String, String>,
    /// Serf's status: [`Member::ALIVE`], [`Member::LEFT`] or
    /// [`Member::FAILED`].
    pub status: u8,
    /// Protocol versions, as a Consul 1.x agent reports them.
    pub protocol_min: u8,
    /// See `protocol_min`.
    pub protocol_max: u8,
    /// See `protocol_min`.
    pub protocol_cur: u8,
    /// See `protocol_min`.
    pub delegate_min: u8,
    /// See `protocol_min`.
    pub delegate_max: u8,
    /// See `protocol_min`.
    pub delegate_cur: u8,
}

impl Member {
    /// Serf status of a live member.
    pub const ALIVE: u8 = 1;
    /// Serf status of a member that left.
    pub const LEFT: u8 = 3;
    /// Serf status of a member declared failed.
    pub const FAILED: u8 = 4;
    /// The port Consul's LAN gossip listens on, reported for every member.
    pub const SERF_LAN_PORT: u16 = 8301;

    /// A member row as this build reports it.
    pub fn new(
        name: &str,
        addr: &str,
        server: bool,
        status: u8,
        datacenter: &str,
        id: &str,
    ) -> Self {
        let role = if server { "consul" } else { "node" };
        Member {
            name: name.into(),
            addr: addr.into(),
            port: Self::SERF_LAN_PORT,
            tags: [("role", role), ("dc", datacenter), ("id", id)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status,
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        }
    }

    /// Consul's word for the status, as `consul members` prints it.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            Self::ALIVE => "alive",
            Self::LEFT => "left",
            Self::FAILED => "failed",
            _ => "unknown",
        }
    }

    /// Whether the member is a server.
    pub fn is_server(&self) -> bool {
        self.tags.get("role").map(String::as_str) == Some("consul")
    }
}

/// `GET /v1/operator/raft/configuration`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftConfiguration {
    /// Every server in the configuration.
    pub servers: Vec<RaftServer>,
    /// The Raft index of the configuration.
    pub index: u64,
}

/// One server of a [`RaftConfiguration`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftServer {
    /// The server's Raft id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its node name.
    pub node: String,
    /// Its RPC address.
    pub address: String,
    /// Whether it leads.
    pub leader: bool,
    /// Whether it votes.
    pub voter: bool,
    /// Consul's Raft protocol version (`"3"`).
    pub protocol_version: String,
    /// The last log index the leader knows it holds.
    pub last_index: u64,
}

/// `GET /v1/agent/self`: the parts this build fills in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    /// The agent's identity.
    pub config: SelfConfig,
    /// Counters by subsystem (`consul`, `raft`), strings as in Consul.
    pub stats: SelfStats,
    /// Resolved settings.
    pub debug_config: DebugConfig,
    /// The agent as a member.
    pub member: Member,
    /// Node metadata.
    pub meta: BTreeMap<String, String>,
}

/// `Config` of [`AgentSelf`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SelfConfig {
    /// The datacenter.
    pub datacenter: String,
    /// The node name.
    pub node_name: String,
    /// The node's UUID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Whether the agent is a server.
    pub server: bool,
    /// This build's version.
    pub version: String,
    /// Source revision (empty).
    pub revision: String,
}

/// `Stats` of [`AgentSelf`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelfStats {
    /// `server`, `leader`, `leader_addr`, `known_servers`.
    pub consul: BTreeMap<String, String>,
    /// `term`, `last_log_index`, `applied_index`, `state` (servers only).
    pub raft: BTreeMap<String, String>,
    /// Why this server could not form or join a cluster, if it could not.
    pub formation_error: Option<String>,
}

/// `DebugConfig` of [`AgentSelf`]: what sidecars need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DebugConfig {
    /// Where Consul 1.10+ reports the default policy.
    #[serde(rename = "ACLResolverSettings")]
    pub acl_resolver_settings: AclResolverSettings,
}

/// `DebugConfig.ACLResolverSettings` of [`AgentSelf`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AclResolverSettings {
    /// `allow` or `deny`: what a connection no intention matches gets.
    #[serde(rename = "ACLDefaultPolicy")]
    pub acl_default_policy: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON keys are Consul's, and a Consul agent's longer answer
    /// (extra fields, missing ones) still reads.
    #[test]
    fn the_shapes_are_consuls() {
        let m = Member::new("fcs00", "10.0.0.5", false, Member::ALIVE, "dc1", "abc");
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["Name"], "fcs00");
        assert_eq!(v["Port"], 8301);
        assert_eq!(v["Tags"]["role"], "node");
        assert_eq!(v["Status"], 1);
        assert_eq!(v["DelegateCur"], 4);
        let consul: Member = serde_json::from_str(
            r#"{"Name":"c1","Addr":"10.0.0.1","Port":8301,"Tags":{"role":"consul","dc":"dc1","vsn":"2"},"Status":4,"ProtocolMin":1}"#,
        )
        .unwrap();
        assert!(consul.is_server());
        assert_eq!(consul.status_name(), "failed");

        let c = RaftConfiguration {
            servers: vec![RaftServer {
                id: "1".into(),
                node: "consul00".into(),
                leader: true,
                ..RaftServer::default()
            }],
            index: 9,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["Servers"][0]["ID"], "1");
        assert_eq!(v["Servers"][0]["LastIndex"], 0);
        assert_eq!(v["Index"], 9);

        let me: AgentSelf = serde_json::from_str(
            r#"{"Config":{"NodeName":"n","NodeID":"u","Datacenter":"dc1","Server":true,"Extra":1},
                "DebugConfig":{"ACLResolverSettings":{"ACLDefaultPolicy":"allow"}},
                "Stats":{"consul":{"leader":"true"},"runtime":{"arch":"amd64"}}}"#,
        )
        .unwrap();
        assert_eq!(me.config.node_id, "u");
        assert_eq!(
            me.debug_config.acl_resolver_settings.acl_default_policy,
            "allow"
        );
        assert_eq!(me.stats.consul["leader"], "true");
        let v = serde_json::to_value(AgentSelf::default()).unwrap();
        assert!(v["DebugConfig"]["ACLResolverSettings"]["ACLDefaultPolicy"].is_string());
        assert!(v["Stats"]["formation_error"].is_null());
    }
}
