//! RPC messages between agents and servers.
//!
//! Messages are generic over the Raft payloads `R`, which belong to the
//! runtime's Raft library; everything else is defined here so the protocol
//! can be read (and fuzzed) without a runtime. A message travels as the
//! payload of one `codec` frame, encoded as JSON.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::connect::ca::IssuedLeaf;
use crate::connect::intention::Intention;
use crate::formation::ServerInfo;
use crate::kv::KvEntry;
use crate::state::ca::CaView;
use crate::state::catalog::{CatalogQuery, CatalogSlice};
use crate::state::sessions::Session;
use crate::state::{Command, CommandResult, StateMachine, Table};

/// A request from an agent or server to a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request<R> {
    /// A Raft protocol message.
    Raft(R),
    /// Discovery: "this is me"; answered with [`Response::Status`].
    Hello(ServerInfo),
    /// Add the sender to the cluster as a voter (idempotent).
    Join(ServerInfo),
    /// Remove a server from the peer set (`mesh leave`, `DELETE /v1/operator/raft/peer`).
    RemovePeer {
        /// The server's Raft id.
        node_id: u64,
    },
    /// A replicated write; must reach the leader.
    Write(Command),
    /// A KV read in a given consistency mode.
    Read(ReadRequest),
    /// Leadership hand-off: the leader is leaving, start an election now.
    TimeoutNow {
        /// The Raft id of the server meant to campaign.
        to: u64,
    },
    /// PreVote (Raft thesis §9.6): "would you vote for me in the next
    /// term?" Answered with [`Response::PreVote`]; changes nothing.
    PreVote {
        /// The Raft id of the voter asked. A server refuses questions for
        /// another id: after a data dir is wiped, the server at a voter's
        /// address is a new member with an empty log, and its yes would
        /// count as the old voter's (swarm seed 177: a server with a stale
        /// log passed every PreVote this way and kept deposing candidates
        /// that could win, so no leader was elected for 10 s).
        to: u64,
        /// The asker's last log entry as `(term, index)`.
        last_log: Option<(u64, u64)>,
    },
    /// Cluster status as the receiver sees it.
    Status,
    /// An agent's periodic "I am alive", for the leader's node-liveness
    /// verdicts (see [`crate::liveness`]). Answered [`Response::Done`] by
    /// the leader, [`RpcError::NotLeader`] by others.
    Heartbeat {
        /// The agent's node name.
        node: String,
    },
    /// Sign a Connect leaf certificate for `service` over the agent's
    /// public key, with the active root. Answered [`Response::Leaf`] by
    /// the leader (whose CA state is current), [`RpcError::NotLeader`] by
    /// others. The private key never travels.
    SignLeaf {
        /// The service the leaf identifies.
        service: String,
        /// The agent's datacenter, for the SPIFFE ID.
        datacenter: String,
        /// The agent's P-256 public key, SubjectPublicKeyInfo DER.
        #[serde(with = "crate::kv::base64_bytes")]
        public_key_der: Vec<u8>,
    },
    /// Sign a client agent's RPC certificate (Consul's `auto_encrypt`)
    /// for `node` over its public key, with the active Connect root.
    /// Answered [`Response::Leaf`] by the leader; servers forward it there.
    /// The only request a server with `auto_encrypt.allow_tls` takes from
    /// a TLS peer without a certificate.
    SignAgentCert {
        /// The agent's node name.
        node: String,
        /// The agent's datacenter, for the SPIFFE ID.
        datacenter: String,
        /// `auto_encrypt.dns_san`.
        dns_san: Vec<String>,
        /// `auto_encrypt.ip_san`.
        ip_san: Vec<std::net::IpAddr>,
        /// The agent's P-256 public key, SubjectPublicKeyInfo DER.
        #[serde(with = "crate::kv::base64_bytes")]
        public_key_der: Vec<u8>,
    },
    /// Rotate the Connect CA to a new root made from this private key
    /// (Consul's `Config.PrivateKey`), cross-signed by the current root.
    /// Leader only; answered [`Response::Done`].
    RotateRoot {
        /// The new root's P-256 private key, PEM (redacted in `Debug`).
        private_key: crate::connect::ca::SecretPem,
        /// New CA settings taking effect in the same write as the new
        /// root (one `PUT /v1/connect/ca/configuration` is one change).
        #[serde(default)]
        config: Option<crate::state::ca::CaConfig>,
    },
    /// `PUT /v1/session/renew/:id`: restart the session's TTL on the
    /// leader, whose timers decide expiry. Answered
    /// [`Response::Renewed`]; writes nothing.
    RenewSession {
        /// The session.
        id: String,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response<R> {
    /// Answer to [`Request::Raft`].
    Raft(R),
    /// Answer to [`Request::Hello`] and [`Request::Status`].
    Status(ClusterStatus),
    /// A write was committed and applied at `index`.
    Written {
        /// Raft index of the write.
        index: u64,
        /// What applying it returned.
        result: CommandResult,
    },
    /// Answer to [`Request::Read`].
    Read(ReadResponse),
    /// Answer to [`Request::PreVote`]: yes if the receiver has not heard
    /// from a leader for a full election timeout and the asker's log is at
    /// least as up to date as its own.
    PreVote {
        /// Whether the receiver would grant its vote.
        granted: bool,
    },
    /// The request was carried out.
    Done,
    /// Answer to [`Request::SignLeaf`] and [`Request::SignAgentCert`].
    Leaf(IssuedLeaf),
    /// Answer to [`Request::RenewSession`]: the session, or `None` if the
    /// leader has no such session (it expired or was destroyed).
    Renewed(Option<Session>),
    /// The request failed.
    Error(RpcError),
}

/// Each request's own reply type: the one place that turns the shared
/// [`Response`] into what the caller of that request gets. An error reply
/// is its error; a reply meant for another request is
/// [`RpcError::UnexpectedReply`].
impl<R: fmt::Debug> Response<R> {
    /// The answer to [`Request::Read`].
    pub fn into_read(self) -> Result<ReadResponse, RpcError> {
        match self {
            Response::Read(r) => Ok(r),
            other => Err(other.unexpected("a read")),
        }
    }

    /// The answer to [`Request::Write`]: the index it was applied at and
    /// what applying it returned.
    pub fn into_written(self) -> Result<(u64, CommandResult), RpcError> {
        match self {
            Response::Written { index, result } => Ok((index, result)),
            other => Err(other.unexpected("a write")),
        }
    }

    /// The answer to [`Request::Status`] and [`Request::Hello`].
    pub fn into_status(self) -> Result<ClusterStatus, RpcError> {
        match self {
            Response::Status(s) => Ok(s),
            other => Err(other.unexpected("a status request")),
        }
    }

    /// The answer to [`Request::SignLeaf`].
    pub fn into_leaf(self) -> Result<IssuedLeaf, RpcError> {
        match self {
            Response::Leaf(l) => Ok(l),
            other => Err(other.unexpected("a leaf signing request")),
        }
    }

    /// The answer to [`Request::RenewSession`].
    pub fn into_renewed(self) -> Result<Option<Session>, RpcError> {
        match self {
            Response::Renewed(s) => Ok(s),
            other => Err(other.unexpected("a session renewal")),
        }
    }

    /// The answer to requests that only succeed or fail ([`Request::Join`],
    /// [`Request::RemovePeer`], [`Request::Heartbeat`], ...).
    pub fn into_done(self) -> Result<(), RpcError> {
        match self {
            Response::Done => Ok(()),
            other => Err(other.unexpected("a request answered with done")),
        }
    }

    fn unexpected(self, request: &str) -> RpcError {
        match self {
            Response::Error(e) => e,
            other => {
                // A reply can be a whole catalog: keep what identifies it.
                let reply: String = format!("{other:?}").chars().take(160).collect();
                RpcError::UnexpectedReply {
                    request: request.to_string(),
                    reply,
                }
            }
        }
    }
}

/// Consul's read consistency modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Served by the leader after it confirmed leadership with a quorum
    /// (no lease: a deposed leader cannot answer). Consul's default mode is
    /// lease-based; ours is never stale.
    #[default]
    Default,
    /// Same as `Default` here: both confirm leadership with a quorum.
    Consistent,
    /// Served by any server from its local state.
    Stale,
}

/// A KV query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    /// One key.
    Get {
        /// The key.
        key: String,
    },
    /// Every entry under a prefix (`?recurse`).
    List {
        /// The prefix.
        prefix: String,
    },
    /// Key names under a prefix (`?keys`, `?separator=`).
    Keys {
        /// The prefix.
        prefix: String,
        /// Roll keys up to the first separator after the prefix.
        separator: Option<String>,
    },
}

/// What a read asks for, in one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Keys and values.
    Kv(KvQuery),
    /// Catalog rows.
    Catalog(CatalogQuery),
    /// Every intention (the API filters them).
    Intentions,
    /// The CA's roots and settings, without keys.
    CaRoots,
    /// Sessions.
    Sessions(SessionQuery),
}

/// Which sessions to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionQuery {
    /// `GET /v1/session/info/:id`.
    Info(String),
    /// `GET /v1/session/node/:node`.
    Node(String),
    /// `GET /v1/session/list`.
    List,
}

impl Query {
    /// The table the query reads; its index is the answer's index.
    pub fn table(&self) -> Table {
        match self {
            Query::Kv(_) => Table::Kv,
            Query::Catalog(_) => Table::Catalog,
            Query::Intentions => Table::Intentions,
            Query::CaRoots => Table::Ca,
            Query::Sessions(_) => Table::Sessions,
        }
    }
}

impl From<KvQuery> for Query {
    fn from(q: KvQuery) -> Self {
        Query::Kv(q)
    }
}

impl From<SessionQuery> for Query {
    fn from(q: SessionQuery) -> Self {
        Query::Sessions(q)
    }
}

impl From<CatalogQuery> for Query {
    fn from(q: CatalogQuery) -> Self {
        Query::Catalog(q)
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// Answer to a [`KvQuery`].
    Kv {
        /// Matching entries (`Get`, `List`).
        entries: Vec<KvEntry>,
        /// Matching key names (`Keys`).
        keys: Vec<String>,
    },
    /// Answer to a [`CatalogQuery`].
    Catalog(CatalogSlice),
    /// Answer to [`Query::Intentions`], in (source, destination) order.
    Intentions(Vec<Intention>),
    /// Answer to [`Query::CaRoots`].
    Ca(CaView),
    /// Answer to [`Query::Sessions`], in ID order.
    Sessions(Vec<Session>),
}

/// A read with its consistency mode and blocking parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// What to read.
    pub query: Query,
    /// Consistency mode.
    pub consistency: Consistency,
    /// Blocking query: wait until the result index exceeds this (0: don't).
    pub min_index: u64,
    /// Blocking query: give up waiting after this long.
    pub wait_ms: u64,
}

/// The result of a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    /// `X-Consul-Index`: the index the result is current as of.
    pub index: u64,
    /// What was found.
    pub result: QueryResult,
    /// Whether the serving server knew a leader.
    pub known_leader: bool,
    /// Milliseconds since the serving server last heard from the leader (0 on the leader).
    pub last_contact_ms: u64,
}

/// One server in the Raft configuration, as `/v1/operator/raft/configuration` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Identity and addresses.
    pub info: ServerInfo,
    /// Whether it votes.
    pub voter: bool,
    /// Whether it is the leader.
    pub leader: bool,
    /// Its last log index as the answering server knows it (the leader
    /// knows every peer's matched index; others know only their own).
    pub last_index: u64,
}

/// Cluster status as one server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering server.
    pub me: ServerInfo,
    /// Whether it has Raft state (it belongs to a formed cluster).
    pub initialized: bool,
    /// The leader it knows of.
    pub leader: Option<ServerInfo>,
    /// Its current term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: u64,
    /// Its commit index as known locally (the applied index).
    pub applied_index: u64,
    /// The Raft configuration it holds (empty before formation).
    pub peers: Vec<PeerStatus>,
    /// Servers it has discovered (for bootstrap-expect).
    pub known_servers: Vec<ServerInfo>,
    /// The Raft index of the configuration.
    pub config_index: u64,
}

/// Why a request failed, and what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    /// This server is not the leader; retry at `leader` if known.
    #[error("not the leader (leader: {})", leader.as_ref().map_or("unknown", |l| l.rpc_addr.as_str()))]
    NotLeader {
        /// The leader, if known.
        leader: Option<ServerInfo>,
    },
    /// No leader is known; retry later.
    #[error("No cluster leader")]
    NoLeader,
    /// The request was malformed or not allowed; do not retry.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The request reached a leader that then lost its leadership or fell
    /// silent: it may or may not have been carried out. Read before
    /// retrying a write that must not apply twice.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The server failed; the outcome of a write is unknown.
    #[error("server error: {0}")]
    Internal(String),
    /// The peer answered with a reply of another request: it is broken or
    /// speaks another protocol version. The outcome of a write is unknown.
    #[error("{request} was answered with {reply}")]
    UnexpectedReply {
        /// The request sent.
        request: String,
        /// The start of the reply received.
        reply: String,
    },
}

/// Why a received message could not be decoded: the peer is broken or not
/// speaking our protocol; drop its connection.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct WireError(String);

/// Why a message could not be encoded: it is larger than one frame may
/// carry. Nothing was sent; the sender must split the message (Raft log
/// batches, snapshot chunks) or refuse the request that produced it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "message of {len} bytes exceeds the {max}-byte frame limit; it was not sent \
     (narrow the request, or split it)"
)]
pub struct TooLarge {
    /// Encoded size of the message.
    pub len: usize,
    /// The limit, [`codec::MAX_PAYLOAD_LEN`].
    pub max: usize,
}

/// Encodes `msg` as one frame appended to `out`, or says it is too large
/// for a frame (then `out` is unchanged).
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let payload = serde_json::to_vec(msg).expect("wire messages always serialize");
    if payload.len() > codec::MAX_PAYLOAD_LEN {
        return Err(TooLarge {
            len: payload.len(),
            max: codec::MAX_PAYLOAD_LEN,
        });
    }
    codec::encode_frame(&payload, out);
    Ok(())
}

/// Decodes a frame payload.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(payload).map_err(|e| WireError(e.to_string()))
}

/// The index a query's answer carries (`X-Consul-Index`), and the one a
/// blocking query waits to pass. It follows Consul: a single key that
/// exists answers with its own `ModifyIndex` (clients such as Patroni block
/// on an entry's `ModifyIndex`, and with the table's index they would be
/// woken at once, over and over); a prefix read answers with the highest
/// index under its prefix, deletes included
/// ([`crate::state::kv::KvStore::prefix_index`]); a catalog read answers with the last
/// write that changed what it returns (see
/// [`crate::state::catalog::CatalogTable::query_index`]); every other query
/// answers with the queried table's last-modified index. Never 0: blocking
/// clients treat 0 as "no index".
///
/// Whatever could change an answer moves its index past the old one: a
/// write, lock or release of the key moves its `ModifyIndex`; deleting it
/// falls back to the table's index, which that delete moved past the key's.
pub fn query_index(sm: &StateMachine, query: &Query) -> u64 {
    let index = match query {
        Query::Kv(KvQuery::Get { key }) => match sm.kv().get(key) {
            Some(entry) => entry.modify_index,
            None => sm.table_index(query.table()),
        },
        Query::Kv(KvQuery::List { prefix } | KvQuery::Keys { prefix, .. }) => {
            sm.kv().prefix_index(prefix)
        }
        Query::Catalog(q) => sm.catalog().query_index(q),
        _ => sm.table_index(query.table()),
    };
    index.max(1)
}

/// Whether [`query_index`] of `query` is above `since`: what a blocking
/// query waits for, asked after every applied write, so cheaper than the
/// index itself where that walks rows (a prefix read asks the recent
/// changes instead of every key under the prefix; a connect read first
/// asks whether anything it could return changed at all).
pub fn changed_since(sm: &StateMachine, query: &Query, since: u64) -> bool {
    match query {
        Query::Kv(KvQuery::List { prefix } | KvQuery::Keys { prefix, .. }) => {
            since == 0 || sm.kv().prefix_changed_since(prefix, since)
        }
        Query::Catalog(q) => since == 0 || sm.catalog().changed_since(q, since),
        _ => query_index(sm, query) > since,
    }
}

/// Evaluates a query against the applied state, with its
/// [`query_index`].
pub fn evaluate(sm: &StateMachine, query: &Query) -> (u64, QueryResult) {
    let index = query_index(sm, query);
    let result = match query {
        Query::Kv(q) => {
            let kv = sm.kv();
            let (entries, keys) = match q {
                KvQuery::Get { key } => (kv.get(key).cloned().into_iter().collect(), Vec::new()),
                KvQuery::List { prefix } => {
                    (kv.list(prefix).into_iter().cloned().collect(), Vec::new())
                }
                KvQuery::Keys { prefix, separator } => {
                    (Vec::new(), kv.keys(prefix, separator.as_deref()))
                }
            };
            QueryResult::Kv { entries, keys }
        }
        Query::Catalog(q) => QueryResult::Catalog(sm.catalog().select(q)),
        Query::Intentions => QueryResult::Intentions(sm.intentions().all().cloned().collect()),
        Query::CaRoots => QueryResult::Ca(sm.ca().public_roots()),
        Query::Sessions(q) => {
            let t = sm.sessions();
            QueryResult::Sessions(match q {
                SessionQuery::Info(id) => t.get(id).cloned().into_iter().collect(),
                SessionQuery::Node(node) => t.of_node(node).cloned().collect(),
                SessionQuery::List => t.iter().cloned().collect(),
            })
        }
    };
    (index, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::KvCommand;

    fn set(key: &str) -> Command {
        KvCommand::Set {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
        }
        .into()
    }

    fn get(key: &str) -> Query {
        KvQuery::Get { key: key.into() }.into()
    }

    /// Patroni blocks on the leader key with `?index=<its ModifyIndex>`:
    /// writes to other keys must not wake it, a change to the key must.
    #[test]
    fn a_key_answers_with_its_modify_index_and_only_its_own_changes_move_it() {
        let mut sm = StateMachine::new();
        assert_eq!(query_index(&sm, &get("leader")), 1, "never 0");
        sm.apply(1, &set("leader"));
        sm.apply(2, &set("members/a"));
        sm.apply(3, &set("members/b"));
        assert_eq!(query_index(&sm, &get("leader")), 1);
        assert_eq!(evaluate(&sm, &get("leader")).0, 1);
        let list = Query::from(KvQuery::List {
            prefix: String::new(),
        });
        assert_eq!(query_index(&sm, &list), 3, "a prefix read: the table's");
        sm.apply(4, &set("leader"));
        assert_eq!(query_index(&sm, &get("leader")), 4);
        sm.apply(5, &set("members/a"));
        sm.apply(
            6,
            &KvCommand::Delete {
                key: "leader".into(),
            }
            .into(),
        );
        assert_eq!(
            query_index(&sm, &get("leader")),
            6,
            "a deleted key answers with the table's index, past its last ModifyIndex"
        );
        sm.apply(7, &set("other"));
        assert_eq!(query_index(&sm, &get("leader")), 7, "absent: the table's");
        assert_eq!(query_index(&sm, &get("other")), 7);
    }

    /// Each request's reply accessor: its own reply is its value, an error
    /// reply is that error, and another request's reply is a peer fault
    /// naming both (cut short: a reply can be a whole catalog).
    #[test]
    fn each_request_gets_its_own_reply_type() {
        type R = Response<()>;
        let written = R::Written {
            index: 7,
            result: CommandResult::Bool(true),
        };
        assert_eq!(
            written.clone().into_written(),
            Ok((7, CommandResult::Bool(true)))
        );
        assert_eq!(R::Done.into_done(), Ok(()));
        assert_eq!(R::Renewed(None).into_renewed(), Ok(None));
        assert_eq!(
            R::Error(RpcError::NoLeader).into_read(),
            Err(RpcError::NoLeader)
        );
        let Err(RpcError::UnexpectedReply { request, reply }) = written.into_read() else {
            panic!("a write's reply is not a read's");
        };
        assert_eq!(request, "a read");
        assert!(reply.starts_with("Written"), "{reply}");
        let huge = R::Error(RpcError::Rejected("x".repeat(10_000)));
        assert!(matches!(huge.into_done(), Err(RpcError::Rejected(_))));
        let big = R::Renewed(Some(Session {
            name: "y".repeat(10_000),
            ..Session::default()
        }));
        let Err(RpcError::UnexpectedReply { reply, .. }) = big.into_status() else {
            panic!("a renewal is not a status");
        };
        assert_eq!(reply.chars().count(), 160);
    }
}
