//! The node's DNS for its tasks: every task with a namespace of its own (bridge, awsvpc) gets a
//! resolver at 127.0.0.11:53 inside it (UDP and TCP), served by the agent from the discovery
//! registry the control plane pushes — persisted in `agent.redb`, so names keep resolving with
//! the control plane gone and after an agent restart. Names of the cluster domain are answered
//! here (A, SRV; authoritative, short TTL, NXDOMAIN for unknown names); anything else is
//! forwarded to the node's own resolvers (from the agent's namespace, so a local stub resolver
//! on 127.0.0.53 works too) over the transport the client used: a TCP query goes upstream over
//! TCP (RFC 7766 §6.2.1: TCP clients expect full answers), a UDP answer larger than the client
//! can take is cut to the whole records that fit with TC set (RFC 1035 §4.2.1, RFC 6891 §7), and
//! the client retries over TCP, which this resolver serves too — or, asking only over UDP
//! (busybox's nslookup, musl before 1.2.4), uses the records it got.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_api::discovery::{Registry, RegistryDelta, DOMAIN, RESOLVER};
use flotilla_runtime::network::netns;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use redb::TableDefinition;

use crate::db::AgentDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod answer;

use answer::{fit_udp, AnswerCache, UDP_MAX};
pub use answer::{reply, Asker, Transport};

const DISCOVERY: TableDefinition<&str, &[u8]> = TableDefinition::new("discovery");
const REGISTRY_KEY: &str = "registry";
/// How long the node's resolver list is trusted before `/etc/resolv.conf` is read again.
const UPSTREAMS_FOR: Duration = Duration::from_secs(5);
/// How long an upstream has to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest DNS message (the TCP length prefix is 16 bits, RFC 1035 §4.2.2).
const MESSAGE_MAX: usize = 65_535;

/// TCP connections one task's resolver serves at once; past them, new connections wait in the
/// listener's backlog until one ends (as dnsmasq, which serves at most 20 TCP connections at a
/// time, `MAX_PROCS`). A task cannot take the agent's descriptors or memory with connections.
const TCP_CONNECTIONS: usize = 20;
/// How long a TCP connection may sit without a whole query before it is closed: RFC 7766
/// §6.2.3 leaves the idle timeout to servers and advises one "of the order of a few seconds"
/// under load. Each query must arrive whole within it, so one slow client cannot hold a
/// connection (and a slot of [`TCP_CONNECTIONS`]) by trickling bytes.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of descriptors: EMFILE, ENFILE; out of memory): the
/// connection stays in the backlog, so trying again at once would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Loops answering each task's UDP socket (the agent's runtime has a worker per core).
const UDP_LOOPS: usize = 2;
/// Aborts a spawned task when dropped (the loops of a listener end with it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The node's DNS.
#[derive(Debug)]
pub struct Dns {
    db: Arc<AgentDb>,
    registry: RwLock<Arc<Registry>>,
    /// Held while a registry is persisted: one change at a time.
    writing: Mutex<()>,
    /// The registry's version, read by every UDP answer without a lock.
    version: AtomicU64,
    changed: watch::Sender<u64>,
    upstreams: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
    listeners: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    rt: tokio::runtime::Handle,
    /// Resolvers for other names, when configured (else the node's resolv.conf's).
    fixed_upstreams: Vec<SocketAddr>,
    /// Queries answered here (cluster names; cached answers too) and forwarded, for metrics.
    answered: AtomicU64,
    forwarded: AtomicU64,
}

impl Dns {
    /// Opens the persisted registry in `db`; listeners run on `rt`; names outside the cluster
    /// domain go to `upstreams` (empty: the node's `/etc/resolv.conf`).
    pub fn open(
        db: Arc<AgentDb>,
        rt: tokio::runtime::Handle,
        upstreams: Vec<SocketAddr>,
    ) -> Result<Arc<Self>> {
        let w = db.begin_write()?;
        w.open_table(DISCOVERY)?;
        w.commit()?;
        let registry: Registry = {
            let r = db.begin_read()?;
            let t = r.open_table(DISCOVERY)?;
            match t.get(REGISTRY_KEY)? {
                Some(v) => serde_json::from_slice(v.value()).context("the persisted registry")?,
                None => Registry::default(),
            }
        };
        let (changed, _) = watch::channel(registry.version);
        Ok(Arc::new(Self {
            version: AtomicU64::new(registry.version),
            db,
            registry: RwLock::new(Arc::new(registry)),
            writing: Mutex::new(()),
            changed,
            upstreams: Mutex::new(None),
            listeners: Mutex::new(HashMap::new()),
            rt,
            fixed_upstreams: upstreams,
            answered: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        }))
    }

    /// The registry held.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wakes on every new registry.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Persists a newer registry (committed before this returns) and answers from it; an older
    /// one changes nothing. Returns the version held.
    pub fn set(&self, registry: Registry) -> Result<u64> {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.registry().version;
        if registry.version <= held {
            return Ok(held);
        }
        self.keep(registry)
    }

    /// Applies what changed in the registry since the version held, one delta or several in a
    /// row (protocol 4, each following the one before it): the registry they make is
    /// persisted whole in one commit (what DNS and the VIPs are served from, offline too),
    /// then answered from. A delta that does not follow what the ones before it made changes
    /// nothing, and the deltas after it are not looked at. Returns the version held: the last
    /// delta's `to`, or — out of sequence — the version the control plane is to send what
    /// changed since (0, for the whole registry, when a delta changes the endpoints of a
    /// service not held).
    pub fn apply(&self, deltas: &[RegistryDelta]) -> Result<u64> {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.registry();
        let mut made: Option<Registry> = None;
        let mut answer = None;
        for delta in deltas {
            match made.as_ref().unwrap_or(&held).apply(delta) {
                Ok(next) => made = Some(next),
                Err(e) => {
                    tracing::info!("{e}: asking for what changed since {}", e.held());
                    answer = Some(e.held());
                    break;
                }
            }
        }
        let version = match made {
            Some(registry) => self.keep(registry)?,
            None => held.version,
        };
        Ok(answer.unwrap_or(version))
    }

    fn keep(&self, registry: Registry) -> Result<u64> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(DISCOVERY)?;
            t.insert(REGISTRY_KEY, serde_json::to_vec(&registry)?.as_slice())?;
        }
        w.commit()?;
        let version = registry.version;
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        self.version.store(version, Ordering::Release);
        self.changed.send_replace(version);
        Ok(version)
    }

    /// Serves DNS inside the namespace at `ns` for `task` (replacing its earlier listeners);
    /// `node_seen_as` is this node's address as the task reaches it (see [`Asker`]).
    pub fn serve_in(
        self: &Arc<Self>,
        task: &str,
        ns: &Path,
        node_seen_as: Option<Ipv4Addr>,
    ) -> Result<()> {
        let asker = Asker { node_seen_as };
        self.stop(task);
        let addr = SocketAddr::from((RESOLVER, 53));
        let (udp, tcp) = netns::run_in(Some(ns), move || {
            let udp = std::net::UdpSocket::bind(addr)?;
            udp.set_nonblocking(true)?;
            let tcp = std::net::TcpListener::bind(addr)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })
        .with_context(|| format!("the task's resolver at {addr}"))?;
        let _entered = self.rt.enter();
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let handles = vec![
            self.rt.spawn(self.clone().serve_udp(udp, asker)),
            self.rt.spawn(self.clone().serve_tcp(tcp, asker)),
        ];
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.to_string(), handles);
        Ok(())
    }

    /// Stops serving `task` (its sockets close, so they no longer hold its namespace).
    pub fn stop(&self, task: &str) {
        if let Some(hs) = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task)
        {
            for h in hs {
                h.abort();
            }
        }
    }

    async fn serve_udp(self: Arc<Self>, socket: tokio::net::UdpSocket, asker: Asker) {
        let socket = Arc::new(socket);
        // A second loop on the same socket: answers come from both cores.
        let mut _loops = Vec::new();
        for _ in 1..UDP_LOOPS {
            _loops.push(AbortOnDrop(tokio::spawn(
                self.clone().udp_loop(socket.clone(), asker),
            )));
        }
        self.udp_loop(socket, asker).await;
    }

    /// Answers the datagrams of `socket`: the cluster's names from a cache of encoded answers
    /// (see [`AnswerCache`]), the others forwarded.
    async fn udp_loop(self: Arc<Self>, socket: Arc<tokio::net::UdpSocket>, asker: Asker) {
        let mut buf = vec![0u8; 4096];
        let mut cache = AnswerCache::default();
        let mut out = Vec::with_capacity(UDP_MAX);
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let query = &buf[..n];
            let version = self.version.load(Ordering::Acquire);
            if cache.answer(version, query, &mut out) {
                self.answered.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&out, peer).await;
                continue;
            }
            match self.local_answer(query, Transport::Udp, asker) {
                Some(reply) => {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&reply, peer).await;
                    cache.insert(version, query, reply);
                }
                None => {
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                    // Forwarded concurrently: a slow upstream holds up nobody else.
                    let query = query.to_vec();
                    let me = self.clone();
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = me.forward(&query, Transport::Udp).await {
                            let _ = socket.send_to(&reply, peer).await;
                        }
                    });
                }
            }
        }
    }

    /// Answers TCP connections of `listener`: at most [`TCP_CONNECTIONS`] at a time, each
    /// closed after [`TCP_IDLE`] without a whole query; a failed `accept` is retried after
    /// [`ACCEPT_BACKOFF`]. The connections end with this task (aborting it drops them), so none
    /// holds the task's namespace after [`Dns::stop`].
    async fn serve_tcp(self: Arc<Self>, listener: tokio::net::TcpListener, asker: Asker) {
        let slots = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // Reap the connections that ended, so the set does not grow.
            while connections.try_join_next().is_some() {}
            // A slot first: past the cap, connections wait in the backlog, unaccepted.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("the resolver's accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            connections.spawn(self.clone().tcp_connection(stream, asker, slot));
        }
    }

    /// One TCP connection: length-prefixed queries, answered in turn, until the client closes
    /// it, sends nothing whole for [`TCP_IDLE`], or an answer cannot be written.
    async fn tcp_connection(
        self: Arc<Self>,
        mut stream: tokio::net::TcpStream,
        asker: Asker,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        loop {
            let read = tokio::time::timeout(TCP_IDLE, async {
                let len = stream.read_u16().await?;
                let mut q = vec![0u8; usize::from(len)];
                stream.read_exact(&mut q).await?;
                std::io::Result::Ok(q)
            })
            .await;
            let Ok(Ok(query)) = read else { return };
            let reply = match self.local_answer(&query, Transport::Tcp, asker) {
                Some(r) => {
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    Some(r)
                }
                None => {
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                    self.forward(&query, Transport::Tcp).await
                }
            };
            let Some(reply) = reply else { return };
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }

    /// Queries answered here and forwarded, since the agent started.
    pub fn queries(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.forwarded.load(Ordering::Relaxed),
        )
    }

    /// The answer to a query about the cluster domain (or a malformed query), encoded; `None`
    /// when the query is for the node's resolvers.
    pub fn local_answer(
        &self,
        query: &[u8],
        transport: Transport,
        asker: Asker,
    ) -> Option<Vec<u8>> {
        reply(&self.registry(), query, transport, asker)
    }

    /// Relays a query to the node's resolvers (the first answer wins) over the client's
    /// transport; a TCP client whose upstreams answer no TCP gets their UDP answer.
    async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let upstreams = self.upstreams();
        if transport == Transport::Tcp {
            for upstream in &upstreams {
                if let Some(reply) = forward_tcp(query, *upstream).await {
                    return Some(reply);
                }
            }
        }
        for upstream in &upstreams {
            if let Some(reply) = forward_udp(query, *upstream).await {
                return Some(match transport {
                    Transport::Udp => fit_udp(query, reply),
                    Transport::Tcp => reply,
                });
            }
        }
        let id = query
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
            .to_vec()
            .ok()
    }

    fn upstreams(&self) -> Vec<SocketAddr> {
        if !self.fixed_upstreams.is_empty() {
            return self.fixed_upstreams.clone();
        }
        let mut held = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, list)) = held.as_ref() {
            if at.elapsed() < UPSTREAMS_FOR {
                return list.clone();
            }
        }
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let list = name_servers(&text);
        *held = Some((Instant::now(), list.clone()));
        list
    }
}

/// One query to `upstream` over UDP: its answer (any size a datagram holds), or `None`.
async fn forward_udp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    sock.connect(upstream).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0u8; MESSAGE_MAX];
    let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        loop {
            // A connected socket only receives from the upstream; only its answer to this query.
            let n = sock.recv(&mut buf).await?;
            if n >= 12 && query.len() >= 2 && buf[..2] == query[..2] {
                return std::io::Result::Ok(n);
            }
        }
    })
    .await;
    let n = got.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

/// One query to `upstream` over TCP (RFC 1035 §4.2.2 framing): its answer, or `None`.
async fn forward_tcp(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let len = u16::try_from(query.len()).ok()?;
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(upstream).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(n)];
        stream.read_exact(&mut reply).await?;
        std::io::Result::Ok(reply)
    })
    .await
    .ok()?
    .ok()
    .filter(|r| r.len() >= 12 && query.len() >= 2 && r[..2] == query[..2])
}

/// The name servers of a resolv.conf (port 53), without ours.
fn name_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next())?
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| *a != IpAddr::V4(RESOLVER))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// The resolv.conf of a task of `namespace` (or none) using the node's DNS.
pub fn resolv_conf(namespace: Option<&str>) -> String {
    let search = match namespace {
        Some(ns) => format!("search {ns}.{DOMAIN} {DOMAIN}\n"),
        None => format!("search {DOMAIN}\n"),
    };
    format!("nameserver {RESOLVER}\n{search}options ndots:1\n")
}

#[cfg(test)]
mod tests {
    use super::answer::{answer, udp_limit};
    use super::*;
    use flotilla_api::discovery::{DiscoveredService, Endpoint, TTL};
    use flotilla_api::taskdef::Protocol;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn registry() -> Registry {
        Registry {
            version: 7,
            services: vec![DiscoveredService {
                namespace: "shop".into(),
                name: "api".into(),
                service: "api".into(),
                vip: None,
                port: Some(80),
                fixed_port: None,
                protocol: Protocol::Tcp,
                endpoints: vec![
                    Endpoint {
                        task: "t-1".into(),
                        node: "n-a".into(),
                        address: Ipv4Addr::new(10, 0, 0, 10),
                        port: Some(49153),
                        task_address: Some(Ipv4Addr::new(10, 42, 0, 2)),
                        task_port: Some(80),
                    },
                    Endpoint {
                        task: "t-2".into(),
                        node: "n-a".into(),
                        address: Ipv4Addr::new(10, 0, 0, 10),
                        port: Some(49154),
                        task_address: Some(Ipv4Addr::new(10, 42, 0, 3)),
                        task_port: Some(80),
                    },
                    Endpoint {
                        task: "t-3".into(),
                        node: "n-b".into(),
                        address: Ipv4Addr::new(10, 0, 0, 50),
                        port: Some(80),
                        task_address: Some(Ipv4Addr::new(10, 0, 0, 50)),
                        task_port: Some(80),
                    },
                ],
            }],
        }
    }

    fn ask(name: &str, t: RecordType) -> Option<Message> {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        // Through the wire format, as a client sends it.
        let q = Message::from_vec(&q.to_vec().expect("encode")).expect("decode");
        answer(&registry(), &q, Asker::default())
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    /// Found by the `dns_query` fuzz target (fuzz/regressions/dns_query/): the UDP loop's cache
    /// keys answers by the bytes after the id, but a name compressed to a pointer into the id
    /// reads as another name — or as none — under another id.
    #[test]
    fn a_query_whose_name_points_into_its_id_is_not_answered_from_the_cache() {
        // `api.shop` and then a pointer to offset 0: the id's first byte is the next label's
        // length. Under id 00 07 the name ends there (`api.shop.`, a service); under be ef it
        // is malformed (a label of 190 bytes).
        let query = |id: [u8; 2]| -> Vec<u8> {
            let mut q = id.to_vec();
            q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            q.extend_from_slice(b"\x03api\x04shop\xc0\x00\x00\x01\x00\x01");
            q
        };
        let (named, malformed) = (query([0x00, 0x07]), query([0xbe, 0xef]));
        let registry = registry();
        let asker = Asker::default();
        for (first, then) in [(&named, &malformed), (&malformed, &named)] {
            let mut cache = AnswerCache::default();
            let mut out = Vec::new();
            cache.answer(registry.version, first, &mut out);
            let answer = reply(&registry, first, Transport::Udp, asker).expect("answered here");
            cache.insert(registry.version, first, answer);
            let fresh = reply(&registry, then, Transport::Udp, asker).expect("answered here");
            if cache.answer(registry.version, then, &mut out) {
                assert_eq!(out, fresh, "a cached answer that is not the answer");
            }
        }
        let named =
            Message::from_vec(&reply(&registry, &named, Transport::Udp, asker).expect("ours"))
                .expect("an answer");
        assert_eq!(named.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&named).len(), 2);
    }

    #[test]
    fn a_records_list_each_reachable_address_once() {
        let m = ask("API.shop.flotilla.internal.", RecordType::A).expect("ours");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            a_records(&m),
            [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 50)]
        );
        assert!(m.answers.iter().all(|r| r.ttl == TTL));
        let t = ask("t-3.api.shop.flotilla.internal.", RecordType::A).expect("ours");
        assert_eq!(a_records(&t), [Ipv4Addr::new(10, 0, 0, 50)]);
    }

    #[test]
    fn srv_records_give_the_reachable_port_and_target() {
        for name in [
            "api.shop.flotilla.internal.",
            "_http._tcp.api.shop.flotilla.internal.",
        ] {
            let m = ask(name, RecordType::SRV).expect("ours");
            let srv: Vec<(u16, String)> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect();
            assert_eq!(
                srv,
                [
                    (49153, "t-1.api.shop.flotilla.internal.".to_string()),
                    (49154, "t-2.api.shop.flotilla.internal.".to_string()),
                    (80, "t-3.api.shop.flotilla.internal.".to_string()),
                ]
            );
            assert_eq!(m.additionals.len(), 3);
        }
    }

    #[test]
    fn unknown_names_are_nxdomain_and_others_are_forwarded() {
        let m = ask("nope.shop.flotilla.internal.", RecordType::A).expect("ours");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let ns = ask("shop.flotilla.internal.", RecordType::A).expect("ours");
        assert_eq!(ns.metadata.response_code, ResponseCode::NoError);
        assert!(ns.answers.is_empty());
        let aaaa = ask("api.shop.flotilla.internal.", RecordType::AAAA).expect("ours");
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        assert!(ask("example.com.", RecordType::A).is_none());
        assert!(ask("flotilla.internal.example.com.", RecordType::A).is_none());
    }

    #[test]
    fn a_vip_is_the_only_a_record() {
        let mut r = registry();
        r.services[0].vip = Some(Ipv4Addr::new(10, 43, 0, 1));
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("api.shop.flotilla.internal.").expect("name"),
            RecordType::A,
        ));
        let m = answer(&r, &q, Asker::default()).expect("ours");
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 43, 0, 1)]);
    }

    #[test]
    fn name_servers_are_read_without_ours() {
        let text = "nameserver 127.0.0.53\nnameserver 127.0.0.11\n# x\nnameserver ::1\nnameserver bogus\nsearch lan\n";
        assert_eq!(
            name_servers(text),
            [
                "127.0.0.53:53".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
    }

    /// A well-behaved upstream on loopback (UDP and TCP) whose answer to any query is 60 A
    /// records (about 1 KB): over UDP it sends only what the query's payload size allows,
    /// else the header and question with TC set, as a real server does.
    async fn big_upstream() -> SocketAddr {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let addr = udp.local_addr().expect("addr");
        let tcp = tokio::net::TcpListener::bind(addr).await.expect("tcp");
        fn big(query: &[u8]) -> Message {
            let q = Message::from_vec(query).expect("query");
            let mut m = Message::response(q.metadata.id, OpCode::Query);
            m.add_query(q.queries[0].clone());
            for i in 0..60u8 {
                m.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(10, 9, 0, i))),
                ));
            }
            m
        }
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).expect("query");
                let m = big(&buf[..n]);
                let bytes = m.to_vec().expect("encode");
                let out = if bytes.len() > udp_limit(&q) {
                    m.truncate().to_vec().expect("encode")
                } else {
                    bytes
                };
                let _ = udp.send_to(&out, peer).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let len = s.read_u16().await.expect("len");
                let mut q = vec![0u8; usize::from(len)];
                s.read_exact(&mut q).await.expect("query");
                let bytes = big(&q).to_vec().expect("encode");
                s.write_u16(u16::try_from(bytes.len()).expect("fits"))
                    .await
                    .expect("len");
                s.write_all(&bytes).await.expect("answer");
            }
        });
        addr
    }

    /// The node's resolver on loopback (UDP and TCP) with `upstream`; its address.
    async fn resolver(upstream: SocketAddr, dir: &Path) -> SocketAddr {
        resolver_with(upstream, dir).await.0
    }

    async fn resolver_with(upstream: SocketAddr, dir: &Path) -> (SocketAddr, Arc<Dns>) {
        let db = Arc::new(AgentDb::open(&dir.join("agent.redb")).expect("db"));
        let dns = Dns::open(db, tokio::runtime::Handle::current(), vec![upstream]).expect("dns");
        dns.set(registry()).expect("registry");
        let held = dns.clone();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let addr = udp.local_addr().expect("addr");
        let tcp = tokio::net::TcpListener::bind(addr).await.expect("tcp");
        tokio::spawn(dns.clone().serve_udp(udp, Asker::default()));
        tokio::spawn(dns.serve_tcp(tcp, Asker::default()));
        (addr, held)
    }

    /// A task opening more TCP connections than [`TCP_CONNECTIONS`] gets no more served: the
    /// extra one waits, unaccepted, while UDP answers as before; connections that send nothing
    /// are closed after [`TCP_IDLE`], and then the waiting one is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_connections_are_capped_and_idle_ones_closed() {
        let dir = tempfile::tempdir().expect("tmp");
        let at = resolver(big_upstream().await, dir.path()).await;
        let q = query("t-3.api.shop.flotilla.internal.", RecordType::A, None);
        let opened = Instant::now();
        let mut idle = Vec::new();
        for _ in 0..TCP_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(at).await.expect("connect"));
        }
        // The handshake completes in the kernel's backlog; the query is sent, not answered.
        let mut extra = tokio::net::TcpStream::connect(at).await.expect("connect");
        extra
            .write_u16(u16::try_from(q.len()).expect("fits"))
            .await
            .expect("len");
        extra.write_all(&q).await.expect("query");
        let mut len = [0u8; 2];
        assert!(
            tokio::time::timeout(Duration::from_secs(1), extra.read_exact(&mut len))
                .await
                .is_err(),
            "a connection past the cap was served"
        );
        // UDP is not held up by TCP clients.
        let m = over_udp(at, &q).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 50)]);
        // The idle connections are closed after TCP_IDLE (EOF), not before.
        let mut buf = [0u8; 16];
        for s in &mut idle {
            let n = tokio::time::timeout(TCP_IDLE + Duration::from_secs(3), s.read(&mut buf))
                .await
                .expect("an idle connection is closed")
                .unwrap_or(0);
            assert_eq!(n, 0, "an idle connection got data");
        }
        assert!(opened.elapsed() >= TCP_IDLE, "closed before {TCP_IDLE:?}");
        // Their slots free, the waiting connection is served.
        tokio::time::timeout(Duration::from_secs(5), extra.read_exact(&mut len))
            .await
            .expect("served once a slot is free")
            .expect("len");
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        extra.read_exact(&mut answer).await.expect("answer");
        let m = Message::from_vec(&answer).expect("answer");
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 50)]);
    }

    fn with_id(mut q: Vec<u8>, id: u16) -> Vec<u8> {
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// Repeated queries are answered from the loop's cache: each with its own id, and a new
    /// registry is seen at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_answers_carry_each_query_id_and_follow_the_registry() {
        let dir = tempfile::tempdir().expect("tmp");
        let (at, dns) = resolver_with(big_upstream().await, dir.path()).await;
        let q = query("t-3.api.shop.flotilla.internal.", RecordType::A, None);
        for id in [1u16, 2, 3, 0xfffe] {
            let m = over_udp(at, &with_id(q.clone(), id)).await;
            assert_eq!(m.metadata.id, id);
            assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 50)]);
        }
        let mut r = registry();
        r.version += 1;
        r.services[0].endpoints[2].address = Ipv4Addr::new(10, 0, 0, 51);
        dns.set(r).expect("registry");
        for id in [4u16, 5, 6] {
            let m = over_udp(at, &with_id(q.clone(), id)).await;
            assert_eq!(m.metadata.id, id);
            assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 51)]);
        }
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut q = Message::query();
        q.metadata.id = 4242;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        if let Some(size) = edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(size);
            q.set_edns(e);
        }
        q.to_vec().expect("encode")
    }

    async fn over_udp(at: SocketAddr, q: &[u8]) -> Message {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        s.send_to(q, at).await.expect("send");
        let mut buf = vec![0u8; MESSAGE_MAX];
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        Message::from_vec(&buf[..n]).expect("answer")
    }

    async fn over_tcp(at: SocketAddr, q: &[u8]) -> Message {
        let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
        s.write_u16(u16::try_from(q.len()).expect("fits"))
            .await
            .expect("len");
        s.write_all(q).await.expect("query");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
            .await
            .expect("an answer within 5 s")
            .expect("len");
        let mut buf = vec![0u8; usize::from(n)];
        s.read_exact(&mut buf).await.expect("answer");
        Message::from_vec(&buf).expect("answer")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_outside_answers_reach_tcp_udp_and_edns_clients_whole_or_truncated() {
        let dir = tempfile::tempdir().expect("tmp");
        let at = resolver(big_upstream().await, dir.path()).await;
        // TCP: forwarded over TCP, the whole answer.
        let m = over_tcp(at, &query("big.example.", RecordType::A, None)).await;
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
        // UDP without EDNS: TC and no records, so the client retries over TCP.
        let m = over_udp(at, &query("big.example.", RecordType::A, None)).await;
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.metadata.id, 4242);
        // UDP with EDNS 4096: the whole answer in one datagram.
        let m = over_udp(at, &query("big.example.", RecordType::A, Some(4096))).await;
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_cluster_answers_truncate_over_udp_and_come_whole_over_tcp() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Arc::new(AgentDb::open(&dir.path().join("agent.redb")).expect("db"));
        let dns = Dns::open(db, tokio::runtime::Handle::current(), Vec::new()).expect("dns");
        let mut r = registry();
        let template = r.services[0].endpoints[0].clone();
        r.services[0].endpoints = (0..40u8)
            .map(|i| Endpoint {
                task: format!("t-{i:02}"),
                address: Ipv4Addr::new(10, 0, 1, i),
                ..template.clone()
            })
            .collect();
        dns.set(r).expect("registry");
        let name = "api.shop.flotilla.internal.";
        let udp = dns
            .local_answer(
                &query(name, RecordType::SRV, None),
                Transport::Udp,
                Asker::default(),
            )
            .expect("ours");
        assert!(udp.len() <= UDP_MAX);
        let udp = Message::from_vec(&udp).expect("answer");
        // TC, the SRV records that fit (in registry order), no additional records.
        assert!(udp.metadata.truncation);
        assert!(udp.additionals.is_empty());
        let fitted = udp.answers.len();
        assert!((1..40).contains(&fitted), "{fitted}");
        let tcp = dns
            .local_answer(
                &query(name, RecordType::SRV, None),
                Transport::Tcp,
                Asker::default(),
            )
            .expect("ours");
        let tcp = Message::from_vec(&tcp).expect("answer");
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 40);
        assert!(tcp.edns.is_none());
        assert_eq!(udp.answers, tcp.answers[..fitted]);
        // One more would not have fitted.
        let mut more = udp.clone();
        more.answers.push(tcp.answers[fitted].clone());
        assert!(more.to_vec().expect("encode").len() > UDP_MAX);
        // With EDNS: an OPT in the answer (RFC 6891), the whole answer when it fits.
        let edns = dns
            .local_answer(
                &query(name, RecordType::SRV, Some(8192)),
                Transport::Udp,
                Asker::default(),
            )
            .expect("ours");
        let edns = Message::from_vec(&edns).expect("answer");
        assert!(edns.edns.is_some());
        assert_eq!(edns.answers.len(), 40);
    }

    #[test]
    fn an_upstream_answer_too_large_for_the_client_is_cut_to_the_records_that_fit() {
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("big.example.").expect("name"),
            RecordType::A,
        ));
        for i in 0..60u8 {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.").expect("name"),
                60,
                RData::A(A(Ipv4Addr::new(10, 9, 0, i))),
            ));
        }
        let big = m.to_vec().expect("encode");
        let cut = fit_udp(&query("big.example.", RecordType::A, None), big.clone());
        assert!(cut.len() <= UDP_MAX, "{}", cut.len());
        let cut = Message::from_vec(&cut).expect("answer");
        // The records that fit (12 + 17 + 30 × 16 = 509 bytes), TC set: a client asking only
        // over UDP has them, one that can retries over TCP.
        assert!(cut.metadata.truncation);
        assert_eq!(cut.answers, m.answers[..30]);
        let whole = fit_udp(
            &query("big.example.", RecordType::A, Some(4096)),
            big.clone(),
        );
        assert_eq!(whole, big);
        // Garbage from an upstream is never passed on, and nothing panics.
        let junk = fit_udp(&query("big.example.", RecordType::A, None), vec![0xff; 600]);
        assert!(Message::from_vec(&junk).is_ok());
    }

    /// `flotilla dev`: the node's address is 127.0.0.1, loopback inside a task's namespace.
    #[test]
    fn loopback_endpoints_are_answered_with_the_node_as_the_task_reaches_it() {
        let mut r = registry();
        for e in &mut r.services[0].endpoints {
            e.address = Ipv4Addr::LOCALHOST;
        }
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("api.shop.flotilla.internal.").expect("name"),
            RecordType::A,
        ));
        let bridge = Asker {
            node_seen_as: Some(Ipv4Addr::new(10, 42, 0, 1)),
        };
        let m = answer(&r, &q, bridge).expect("ours");
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 42, 0, 1)]);
        // SRV targets' addresses too.
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("api.shop.flotilla.internal.").expect("name"),
            RecordType::SRV,
        ));
        let m = answer(&r, &q, bridge).expect("ours");
        assert!(m
            .additionals
            .iter()
            .all(|rec| rec.data == RData::A(A(Ipv4Addr::new(10, 42, 0, 1)))));
        // A node address that is not loopback is kept.
        let m = ask("api.shop.flotilla.internal.", RecordType::A).expect("ours");
        assert!(a_records(&m).iter().all(|a| !a.is_loopback()));
    }

    /// busybox's resolver asks for `api.shop.` as it is first (`ndots:1`); it is the service.
    #[test]
    fn service_dot_namespace_resolves_as_it_is() {
        let m = ask("api.shop.", RecordType::A).expect("ours");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers[0].name.to_ascii(), "api.shop.");
        assert_eq!(
            a_records(&m),
            [Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 50)]
        );
        let t = ask("t-3.api.shop.", RecordType::A).expect("ours");
        assert_eq!(a_records(&t), [Ipv4Addr::new(10, 0, 0, 50)]);
        assert!(ask("_http._tcp.api.shop.", RecordType::SRV).is_some());
        // Names of no service of a known namespace, and other namespaces, go out.
        assert!(ask("www.shop.", RecordType::A).is_none());
        assert!(ask("api.example.", RecordType::A).is_none());
        assert!(ask("shop.", RecordType::A).is_none());
    }

    /// A delta applied to the held registry is persisted whole: a restarted agent (offline)
    /// answers from the registry it made; one out of sequence changes nothing and says what
    /// is held.
    #[tokio::test]
    async fn a_registry_delta_is_applied_to_the_persisted_registry() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.redb");
        let db = Arc::new(AgentDb::open(&path).expect("db"));
        let dns = Dns::open(db, tokio::runtime::Handle::current(), Vec::new()).expect("dns");
        assert_eq!(dns.set(registry()).expect("registry"), 7);
        let mut next = registry();
        next.version = 9;
        next.services[0].endpoints.truncate(1);
        let mut web = next.services[0].clone();
        web.name = "web".into();
        next.services.push(web);
        let delta = RegistryDelta::between(&registry(), &next);
        // From a version it does not hold (a lost push): nothing changes.
        let gap = RegistryDelta {
            from: 8,
            ..delta.clone()
        };
        assert_eq!(dns.apply(&[gap]).expect("apply"), 7);
        assert_eq!(*dns.registry(), registry());
        let changes = dns.changes();
        assert_eq!(dns.apply(std::slice::from_ref(&delta)).expect("apply"), 9);
        assert_eq!(*dns.registry(), next);
        assert!(changes.has_changed().expect("watch"));
        // Again: it is not its version any more.
        assert_eq!(dns.apply(std::slice::from_ref(&delta)).expect("apply"), 9);
        drop(dns);
        let db = Arc::new(AgentDb::open(&path).expect("db"));
        let dns = Dns::open(db, tokio::runtime::Handle::current(), Vec::new()).expect("dns");
        assert_eq!(*dns.registry(), next, "persisted whole");
        let m = answer(
            &dns.registry(),
            &Message::from_vec(&query("web.shop.flotilla.internal.", RecordType::A, None))
                .expect("query"),
            Asker::default(),
        )
        .expect("ours");
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 10)]);
    }

    /// Several deltas in a row (protocol 4) are applied in order and kept in one commit; the
    /// first that does not follow what the ones before it made ends the row: what those made
    /// is kept and the node answers with its version, so the control plane sends the rest.
    #[tokio::test]
    async fn deltas_in_a_row_are_applied_in_order_until_one_does_not_follow() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Arc::new(AgentDb::open(&dir.path().join("agent.redb")).expect("db"));
        let dns = Dns::open(db, tokio::runtime::Handle::current(), Vec::new()).expect("dns");
        assert_eq!(dns.set(registry()).expect("registry"), 7);
        let at = |version: u64, keep: usize| {
            let mut r = registry();
            r.version = version;
            r.services[0].endpoints.truncate(keep);
            r
        };
        let (v8, v9, v10) = (at(8, 1), at(9, 0), at(10, 2));
        let row = [
            RegistryDelta::between(&registry(), &v8),
            RegistryDelta::between(&v8, &v9),
            RegistryDelta::between(&v9, &v10),
        ];
        assert_eq!(dns.apply(&row).expect("apply"), 10);
        assert_eq!(*dns.registry(), v10);
        // A row whose second delta skips a version: the first is kept, the rest are not.
        let v11 = at(11, 1);
        let v13 = at(13, 0);
        let broken = [
            RegistryDelta::between(&v10, &v11),
            RegistryDelta::between(&at(12, 2), &v13),
            RegistryDelta::between(&v13, &at(14, 2)),
        ];
        assert_eq!(dns.apply(&broken).expect("apply"), 11);
        assert_eq!(*dns.registry(), v11);
    }
}
