//! The resolver's pure part: a query's bytes to its answer's bytes, from the registry, with no
//! I/O, no clock and no lock. `dns.rs` serves it on the tasks' sockets.
//!
//! Every byte here comes from a task (a query) or from an upstream resolver (an answer cut to
//! the client's size), so nothing may panic on any input. The fuzz harness
//! (`fuzz/harness`) compiles this file in by its path, since the agent is a binary: it uses
//! only `std`, `hickory_proto` and `flotilla_api`.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use flotilla_api::discovery::{DiscoveredService, Registry, DOMAIN, TTL};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Largest UDP answer without EDNS (RFC 1035 §2.3.4).
pub(crate) const UDP_MAX: usize = 512;
/// The UDP payload this resolver offers in its own OPT record: the size DNS Flag Day 2020
/// settled on to avoid IP fragmentation.
const EDNS_PAYLOAD: u16 = 1232;

/// Encoded answers a UDP loop keeps before it starts again from empty.
const CACHE_ENTRIES: usize = 1024;

/// Encoded answers of one UDP loop, by the query's bytes after its id. An answer of the
/// cluster's names depends only on those bytes (flags, question, OPT), the registry and the
/// asker (one per socket), so a repeated query is answered by copying the answer and putting the
/// query's id in — no decoding, no encoding, no lock. Emptied when the registry changes. A query
/// that may hold a name compressed to a pointer into its id (RFC 1035 §4.1.4: any earlier
/// offset) reads differently under another id, so it is never kept; no resolver sends one.
#[derive(Debug, Default)]
pub(crate) struct AnswerCache {
    version: u64,
    answers: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl AnswerCache {
    /// Puts the answer to `query` into `out` when it is known for registry `version`.
    pub(crate) fn answer(&mut self, version: u64, query: &[u8], out: &mut Vec<u8>) -> bool {
        if version != self.version {
            self.answers.clear();
            self.version = version;
            return false;
        }
        let (Some(id), Some(key)) = (query.get(..2), query.get(2..)) else {
            return false;
        };
        let Some(answer) = self.answers.get(key) else {
            return false;
        };
        out.clear();
        out.extend_from_slice(id);
        out.extend_from_slice(&answer[2..]);
        true
    }

    pub(crate) fn insert(&mut self, version: u64, query: &[u8], answer: Vec<u8>) {
        // A header's worth at least: the id is replaced, the rest kept.
        if version != self.version || query.len() < 12 || answer.len() < 12 {
            return;
        }
        // A pointer to offset 0 or 1 is one of these two byte pairs; any other place they
        // appear (a type, a class, an option) only costs a decode.
        if query[12..]
            .windows(2)
            .any(|w| w == [0xc0, 0x00] || w == [0xc0, 0x01])
        {
            return;
        }
        if self.answers.len() >= CACHE_ENTRIES {
            self.answers.clear();
        }
        self.answers
            .insert(query[2..].into(), answer.into_boxed_slice());
    }
}

/// How a query reached the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: its answer must fit the client's payload size (512 bytes without EDNS).
    Udp,
    /// A stream: any answer fits.
    Tcp,
}

/// The largest UDP answer the sender of `query` takes: its EDNS payload size, never below 512
/// (RFC 6891 §6.2.5), else 512 (RFC 1035 §4.2.1).
pub(crate) fn udp_limit(query: &Message) -> usize {
    match &query.edns {
        Some(e) => usize::from(e.max_payload()).max(UDP_MAX),
        None => UDP_MAX,
    }
}

/// An upstream's UDP `reply` as the client of `query` can take it (see [`fit`]).
pub(crate) fn fit_udp(query: &[u8], reply: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(query).map_or(UDP_MAX, |q| udp_limit(&q));
    if reply.len() <= limit {
        return reply;
    }
    match Message::from_vec(&reply).ok().and_then(|m| fit(m, limit)) {
        Some(cut) => cut,
        None => {
            let id = u16::from_be_bytes([reply[0], reply[1]]);
            Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
                .to_vec()
                .unwrap_or_default()
        }
    }
}

/// `reply` encoded in at most `limit` bytes: whole when it fits; else without its additional
/// records (no TC for those, RFC 2181 §9), then with as many whole answer and authority records
/// as fit and TC set (RFC 1035 §4.2.1). A client that retries over TCP (glibc, Go, musl 1.2.4+)
/// gets the whole answer there; one that asks only over UDP (busybox's nslookup, musl before
/// 1.2.4) still has the records that fit, as a server truncating its own answer gives them,
/// instead of none.
fn fit(mut reply: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    reply.additionals.clear();
    reply.signature = None;
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // The most records, answers first, that fit: found by halving (each try encodes once).
    let answers = std::mem::take(&mut reply.answers);
    let authorities = std::mem::take(&mut reply.authorities);
    let records: Vec<Record> = answers.iter().chain(&authorities).cloned().collect();
    reply.metadata.truncation = true;
    let with = |n: usize| -> Option<Vec<u8>> {
        let mut m = reply.clone();
        m.answers = records[..n.min(answers.len())].to_vec();
        m.authorities = records[answers.len().min(n)..n].to_vec();
        m.to_vec().ok()
    };
    let (mut lo, mut hi) = (0, records.len());
    let mut best = with(0)?;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        match with(mid) {
            Some(b) if b.len() <= limit => {
                best = b;
                lo = mid;
            }
            _ => hi = mid - 1,
        }
    }
    Some(best)
}

/// What a name of the cluster domain is.
enum Target<'a> {
    /// `NAME.NS.DOMAIN` or `_x._proto.NAME.NS.DOMAIN`.
    Service(&'a DiscoveredService),
    /// `TASK.NAME.NS.DOMAIN`.
    Task(&'a flotilla_api::discovery::Endpoint),
    /// A name of the domain with nothing behind it.
    Nothing,
}

fn resolve<'a>(registry: &'a Registry, labels: &[String]) -> Target<'a> {
    // labels: the name's labels before the domain, lowercase, most specific first.
    let service = |name: &str, ns: &str| registry.service(ns, name);
    match labels {
        [name, ns] => service(name, ns).map_or(Target::Nothing, Target::Service),
        [first, second, name, ns] if first.starts_with('_') && second.starts_with('_') => {
            service(name, ns).map_or(Target::Nothing, Target::Service)
        }
        [task, name, ns] => match service(name, ns) {
            Some(s) => s
                .endpoints
                .iter()
                .find(|e| e.task == *task)
                .map_or(Target::Nothing, Target::Task),
            None => Target::Nothing,
        },
        _ => Target::Nothing,
    }
}

/// Where a query comes from, for answers reachable from there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asker {
    /// This node's address as the asking task reaches it (a bridge task: its bridge's
    /// gateway). An endpoint the registry lists at a loopback address — a node whose address
    /// is `127.0.0.1`, as in `flotilla dev` — is answered with it: loopback inside the task's
    /// namespace is the task itself.
    pub node_seen_as: Option<Ipv4Addr>,
}

impl Asker {
    fn reach(&self, address: Ipv4Addr) -> Ipv4Addr {
        match self.node_seen_as {
            Some(node) if address.is_loopback() => node,
            _ => address,
        }
    }
}

/// The labels of `fqdn` (lowercase, without the root), most specific first.
fn labels_of(fqdn: &str) -> Vec<String> {
    fqdn.trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The answer to `msg` from `registry`, or `None` when it is not about the cluster: names of
/// the cluster domain, and the short `SERVICE.NAMESPACE` (and `TASK.SERVICE.NAMESPACE`,
/// `_x._proto.SERVICE.NAMESPACE`) of a namespace the registry has — as Kubernetes' `svc.ns` —
/// which resolvers that try a dotted name as it is before the search list (busybox, musl, glibc
/// with `ndots:1`) ask for first.
pub fn answer(registry: &Registry, msg: &Message, asker: Asker) -> Option<Message> {
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return None;
    }
    let q = msg.queries.first()?;
    let domain = Name::from_ascii(DOMAIN).ok()?;
    let qname = q.name().to_lowercase();
    if !domain.zone_of(&qname) {
        let labels = labels_of(&qname.to_ascii());
        let known = labels.len() >= 2
            && labels
                .last()
                .is_some_and(|ns| registry.services.iter().any(|s| s.namespace == *ns))
            && !matches!(resolve(registry, &labels), Target::Nothing);
        if !known {
            return None;
        }
    }
    let mut reply = Message::response(msg.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    if msg.edns.is_some() {
        // A responder that understands EDNS answers an OPT with one (RFC 6891 §6.1.1).
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    let fqdn = qname.to_ascii();
    let labels = if domain.zone_of(&qname) {
        labels_of(
            fqdn.trim_end_matches('.')
                .strip_suffix(DOMAIN)
                .unwrap_or_default(),
        )
    } else {
        labels_of(&fqdn)
    };
    let a = |name: &Name, ip: Ipv4Addr| {
        Record::from_rdata(name.clone(), TTL, RData::A(A(asker.reach(ip))))
    };
    match (resolve(registry, &labels), q.query_type()) {
        (Target::Nothing, _) => {
            // The domain itself and the namespaces exist (no data); anything else does not.
            let namespace =
                labels.len() == 1 && registry.services.iter().any(|s| s.namespace == labels[0]);
            if !(labels.is_empty() || namespace) {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        (Target::Service(s), RecordType::A) => {
            let addrs: BTreeSet<Ipv4Addr> = match s.vip {
                Some(v) => BTreeSet::from([v]),
                None => s.endpoints.iter().map(|e| e.address).collect(),
            };
            for ip in addrs {
                reply.add_answer(a(q.name(), ip));
            }
        }
        (Target::Service(s), RecordType::SRV) => {
            for e in &s.endpoints {
                let Some(port) = e.port else { continue };
                let Ok(target) = Name::from_ascii(format!("{}.", s.task_fqdn(&e.task))) else {
                    continue;
                };
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    TTL,
                    RData::SRV(SRV::new(0, 10, port, target.clone())),
                ));
                reply.additionals.push(a(&target, e.address));
            }
        }
        (Target::Task(e), RecordType::A) => {
            reply.add_answer(a(q.name(), e.address));
        }
        // Names that exist, other types: no data.
        _ => {}
    }
    Some(reply)
}

/// The answer to `query` (a message's bytes, as a task sent it) about the cluster domain, or
/// to a malformed query (`FORMERR`), encoded for `transport`; `None` when the query is for the
/// node's resolvers.
pub fn reply(
    registry: &Registry,
    query: &[u8],
    transport: Transport,
    asker: Asker,
) -> Option<Vec<u8>> {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // The id is the first two bytes when there are two.
            let id = query
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    let reply = answer(registry, &msg, asker)?;
    match transport {
        Transport::Udp => fit(reply, udp_limit(&msg)),
        Transport::Tcp => reply.to_vec().ok(),
    }
}
