//! The DNS interface's answers (Consul's `.consul` domain), as pure
//! functions: [`parse`] reads a query and says what to look up,
//! [`respond`] builds the answer from the catalog rows the caller read.
//! The caller (`mesh_net::dns`) does the sockets and the catalog read.
//!
//! Names answered, as Consul does (`<dc>` optional, matching is
//! case-insensitive):
//!
//! - `<service>.service[.<dc>].consul` and `<tag>.<service>.service...`:
//!   A/AAAA of every instance whose checks are passing or warning (none
//!   critical), SRV with target `<node>.node.<dc>.consul.` and the port,
//!   and the targets' addresses in the additional section;
//! - RFC 2782 `_<service>._<tag>.service[.<dc>].consul`, where the tag
//!   `_tcp` (or `_udp`) means any tag;
//! - `<node>.node[.<dc>].consul`: the node's address.
//!
//! A name under `consul.` that finds nothing is NXDOMAIN with the zone's
//! SOA (so negative answers can be cached for its minimum, 0 s); a name
//! outside it is REFUSED (no recursors). TTLs are 0, as Consul's defaults.
//! A UDP answer that does not fit the client's size (512 bytes, or its
//! EDNS size) drops answer records until it fits and sets TC, so the
//! client retries over TCP, which gets everything.
//!
//! Differences from Consul: instances are answered in catalog order, not
//! shuffled (every answer is reproducible; clients pick among records
//! themselves); prepared queries and `.addr.`/`.query.` names are not
//! supported (NXDOMAIN).

use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::state::catalog::{CatalogQuery, CatalogSlice, CheckStatus};

/// The DNS domain.
pub const DOMAIN: &str = "consul";
/// Largest UDP answer without EDNS (RFC 1035).
pub const UDP_LIMIT: usize = 512;

/// What a query asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Instances of a service, optionally with a tag.
    Service {
        /// The service name.
        name: String,
        /// Only instances with this tag.
        tag: Option<String>,
    },
    /// A node's address.
    Node {
        /// The node name.
        name: String,
    },
}

impl Lookup {
    /// The catalog read that answers it.
    pub fn catalog_query(&self) -> CatalogQuery {
        match self {
            Lookup::Service { name, .. } => CatalogQuery::Service { name: name.clone() },
            Lookup::Node { name } => CatalogQuery::Node { node: name.clone() },
        }
    }
}

/// A parsed query.
#[derive(Clone, Debug)]
pub struct Request {
    message: Message,
    query: Query,
    /// What to look up; `None` answers NXDOMAIN or REFUSED without a read.
    pub lookup: Option<Lookup>,
    in_domain: bool,
    /// Largest answer the client takes over UDP.
    pub udp_limit: usize,
}

/// Why no answer is possible: the bytes are not a DNS query. The caller
/// drops them (there is no id to answer to) or, for a readable header,
/// sends `answer`.
#[derive(Debug)]
pub struct BadQuery {
    /// A FORMERR answer, when the header was readable.
    pub answer: Option<Vec<u8>>,
}

/// Reads a query. Only standard queries with one question are answered;
/// anything else gets FORMERR or NOTIMP.
pub fn parse(bytes: &[u8], datacenter: &str) -> Result<Request, BadQuery> {
    let message = Message::from_vec(bytes).map_err(|_| BadQuery {
        answer: formerr(bytes),
    })?;
    if message.metadata.message_type != MessageType::Query {
        return Err(BadQuery { answer: None });
    }
    if message.metadata.op_code != OpCode::Query || message.queries.len() != 1 {
        let code = if message.metadata.op_code != OpCode::Query {
            ResponseCode::NotImp
        } else {
            ResponseCode::FormErr
        };
        let reply = Message::error_msg(message.metadata.id, message.metadata.op_code, code);
        return Err(BadQuery {
            answer: reply.to_vec().ok(),
        });
    }
    let query = message.queries[0].clone();
    let labels: Vec<String> = query
        .name()
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let (in_domain, lookup) = lookup_of(&labels, datacenter);
    let udp_limit = message
        .edns
        .as_ref()
        .map_or(UDP_LIMIT, |e| usize::from(e.max_payload()).max(UDP_LIMIT));
    Ok(Request {
        message,
        query,
        lookup,
        in_domain,
        udp_limit,
    })
}

/// FORMERR for bytes whose header (id) is readable.
fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// Whether the labels are under `consul.`, and what they name.
fn lookup_of(labels: &[String], datacenter: &str) -> (bool, Option<Lookup>) {
    let Some((last, rest)) = labels.split_last() else {
        return (false, None);
    };
    if last != DOMAIN {
        return (false, None);
    }
    // An optional datacenter label before the domain.
    let rest = match rest.split_last() {
        Some((dc, before)) if dc == datacenter && !before.is_empty() => before,
        _ => rest,
    };
    let lookup = match rest {
        [name, kind] if kind == "node" => Some(Lookup::Node { name: name.clone() }),
        [service, kind] if kind == "service" => Some(Lookup::Service {
            name: service.trim_start_matches('_').to_string(),
            tag: None,
        }),
        [first, second, kind] if kind == "service" => {
            if let (Some(service), Some(tag)) = (first.strip_prefix('_'), second.strip_prefix('_'))
            {
                // RFC 2782: _service._protocol-or-tag.
                let tag = (tag != "tcp" && tag != "udp").then(|| tag.to_string());
                Some(Lookup::Service {
                    name: service.to_string(),
                    tag,
                })
            } else {
                Some(Lookup::Service {
                    name: second.clone(),
                    tag: Some(first.clone()),
                })
            }
        }
        _ => None,
    };
    (true, lookup)
}

/// How the answer travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Bounded by the client's UDP size; truncated with TC if larger.
    Udp,
    /// Unbounded (64 KiB frames).
    Tcp,
}

/// The answer to `request` from the catalog rows its lookup read
/// (`slice`: `None` when the request had no lookup), at catalog index
/// `index` (the SOA serial).
pub fn respond(
    request: &Request,
    slice: Option<&CatalogSlice>,
    datacenter: &str,
    index: u64,
    transport: Transport,
) -> Vec<u8> {
    let mut reply = Message::response(request.message.metadata.id, OpCode::Query);
    reply.metadata.authoritative = request.in_domain;
    reply.metadata.recursion_desired = request.message.metadata.recursion_desired;
    reply.metadata.recursion_available = false;
    reply.add_query(request.query.clone());
    if request.message.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(request.udp_limit as u16);
        reply.edns = Some(edns);
    }
    if !request.in_domain {
        reply.metadata.response_code = ResponseCode::Refused;
        return encode(reply, request.udp_limit, transport);
    }
    let (answers, additionals) = match (&request.lookup, slice) {
        (Some(lookup), Some(slice)) => records(&request.query, lookup, slice, datacenter),
        _ => (Vec::new(), Vec::new()),
    };
    if answers.is_empty() {
        reply.metadata.response_code = ResponseCode::NXDomain;
        reply.add_authority(soa(index));
    } else {
        reply.add_answers(answers);
        reply.add_additionals(additionals);
    }
    encode(reply, request.udp_limit, transport)
}

/// A client's view of an answer, for tests and tools that ask the DNS
/// interface (`sim`'s DNS probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code was NXDOMAIN.
    pub nxdomain: bool,
    /// The A and AAAA records of the answer section, in order.
    pub addresses: Vec<IpAddr>,
    /// TC was set.
    pub truncated: bool,
}

/// An A query for `name` (absolute, e.g. `fcs.service.consul.`).
pub fn a_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut m = Message::query();
    m.metadata.id = id;
    let name = Name::from_ascii(name).map_err(|e| format!("bad name {name:?}: {e}"))?;
    m.add_query(Query::query(name, RecordType::A));
    m.to_vec().map_err(|e| e.to_string())
}

/// Reads an answer's code, addresses and TC bit.
pub fn read_answer(bytes: &[u8]) -> Result<Answer, String> {
    let m = Message::from_vec(bytes).map_err(|e| e.to_string())?;
    Ok(Answer {
        nxdomain: m.metadata.response_code == ResponseCode::NXDomain,
        addresses: m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect(),
        truncated: m.metadata.truncation,
    })
}

/// SERVFAIL for a request whose catalog read failed (the answer is
/// unknown, which is not "no such name").
pub fn servfail(request: &Request) -> Vec<u8> {
    let mut reply = Message::error_msg(
        request.message.metadata.id,
        OpCode::Query,
        ResponseCode::ServFail,
    );
    reply.add_query(request.query.clone());
    reply.to_vec().unwrap_or_default()
}

fn soa(index: u64) -> Record {
    let zone = Name::from_ascii("consul.").expect("static name");
    let soa = SOA::new(
        Name::from_ascii("ns.consul.").expect("static name"),
        Name::from_ascii("hostmaster.consul.").expect("static name"),
        index as u32,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(zone, 0, RData::SOA(soa))
}

/// Answer and additional records for a lookup.
fn records(
    query: &Query,
    lookup: &Lookup,
    slice: &CatalogSlice,
    datacenter: &str,
) -> (Vec<Record>, Vec<Record>) {
    let qname = query.name().clone();
    let qtype = query.query_type();
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    let address_record = |name: Name, addr: &str| -> Option<Record> {
        match IpAddr::from_str(addr).ok()? {
            IpAddr::V4(v4) => Some(Record::from_rdata(name, 0, RData::A(A(v4)))),
            IpAddr::V6(v6) => Some(Record::from_rdata(name, 0, RData::AAAA(AAAA(v6)))),
        }
    };
    let wants = |r: &Record| match qtype {
        RecordType::ANY => true,
        t => r.record_type() == t,
    };
    match lookup {
        Lookup::Node { name } => {
            if let Some(node) = slice.node(name) {
                if let Some(r) = address_record(qname, &node.address).filter(|r| wants(r)) {
                    answers.push(r);
                }
            }
        }
        Lookup::Service { tag, .. } => {
            for e in &slice.services {
                let Some(node) = slice.node(&e.node) else {
                    continue;
                };
                if tag
                    .as_ref()
                    .is_some_and(|t| !e.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
                {
                    continue;
                }
                let mut checks = slice.checks_for(&e.node, &e.service.id);
                let worst = checks.by_ref().map(|c| c.status).max();
                if worst == Some(CheckStatus::Critical) {
                    continue;
                }
                let addr = if e.service.address.is_empty() {
                    node.address.as_str()
                } else {
                    e.service.address.as_str()
                };
                if qtype == RecordType::SRV {
                    let Ok(target) =
                        Name::from_ascii(format!("{}.node.{datacenter}.{DOMAIN}.", e.node))
                    else {
                        continue;
                    };
                    let weight = if worst == Some(CheckStatus::Warning) {
                        e.service.weights.warning
                    } else {
                        e.service.weights.passing
                    };
                    let srv = SRV::new(
                        1,
                        weight.min(u16::MAX as u32) as u16,
                        e.service.port,
                        target.clone(),
                    );
                    answers.push(Record::from_rdata(qname.clone(), 0, RData::SRV(srv)));
                    if let Some(r) = address_record(target, addr) {
                        additionals.push(r);
                    }
                } else if let Some(r) = address_record(qname.clone(), addr).filter(|r| wants(r)) {
                    // One record per address, as Consul dedups.
                    if !answers.iter().any(|a: &Record| a.data == r.data) {
                        answers.push(r);
                    }
                }
            }
        }
    }
    (answers, additionals)
}

/// Encodes `reply`; over UDP, drops answers (and additionals) until it
/// fits `limit`, setting TC when anything was dropped.
fn encode(mut reply: Message, limit: usize, transport: Transport) -> Vec<u8> {
    let bytes = reply.to_vec().unwrap_or_default();
    if transport == Transport::Tcp || bytes.len() <= limit {
        return bytes;
    }
    reply.metadata.truncation = true;
    reply.additionals.clear();
    while !reply.answers.is_empty() {
        reply.answers.pop();
        let bytes = reply.to_vec().unwrap_or_default();
        if bytes.len() <= limit {
            return bytes;
        }
    }
    reply.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests;
