//! The node's DNS for its tasks: every task with a namespace of its own (bridge, awsvpc) gets a
//! resolver at 127.0.0.11:53 inside it (UDP and TCP), served by the agent from the discovery
//! registry the control plane pushes — persisted in `agent.redb`, so names keep resolving with
//! the control plane gone and after an agent restart. Names of the cluster domain are answered
//! here (A, SRV; authoritative, short TTL, NXDOMAIN for unknown names); anything else is
//! forwarded to the node's own resolvers (from the agent's namespace, so a local stub resolver
//! on 127.0.0.53 works too).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_api::discovery::{DiscoveredService, Registry, DOMAIN, RESOLVER, TTL};
use flotilla_runtime::network::netns;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DISCOVERY: TableDefinition<&str, &[u8]> = TableDefinition::new("discovery");
const REGISTRY_KEY: &str = "registry";
/// How long the node's resolver list is trusted before `/etc/resolv.conf` is read again.
const UPSTREAMS_FOR: Duration = Duration::from_secs(5);
/// How long an upstream has to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest UDP answer without EDNS.
const UDP_MAX: usize = 512;

/// The node's DNS.
#[derive(Debug)]
pub struct Dns {
    db: Arc<Database>,
    registry: RwLock<Arc<Registry>>,
    changed: watch::Sender<u64>,
    upstreams: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
    listeners: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
    rt: tokio::runtime::Handle,
    /// Resolvers for other names, when configured (else the node's resolv.conf's).
    fixed_upstreams: Vec<SocketAddr>,
}

impl Dns {
    /// Opens the persisted registry in `db`; listeners run on `rt`; names outside the cluster
    /// domain go to `upstreams` (empty: the node's `/etc/resolv.conf`).
    pub fn open(
        db: Arc<Database>,
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
            db,
            registry: RwLock::new(Arc::new(registry)),
            changed,
            upstreams: Mutex::new(None),
            listeners: Mutex::new(HashMap::new()),
            rt,
            fixed_upstreams: upstreams,
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
        let held = self.registry().version;
        if registry.version <= held {
            return Ok(held);
        }
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(DISCOVERY)?;
            t.insert(REGISTRY_KEY, serde_json::to_vec(&registry)?.as_slice())?;
        }
        w.commit()?;
        let version = registry.version;
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        self.changed.send_replace(version);
        Ok(version)
    }

    /// Serves DNS inside the namespace at `ns` for `task` (replacing its earlier listeners).
    pub fn serve_in(self: &Arc<Self>, task: &str, ns: &Path) -> Result<()> {
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
            self.rt.spawn(self.clone().serve_udp(udp)),
            self.rt.spawn(self.clone().serve_tcp(tcp)),
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

    async fn serve_udp(self: Arc<Self>, socket: tokio::net::UdpSocket) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let query = buf[..n].to_vec();
            match self.local_answer(&query, true) {
                Some(reply) => {
                    let _ = socket.send_to(&reply, peer).await;
                }
                None => {
                    // Forwarded concurrently: a slow upstream holds up nobody else.
                    let me = self.clone();
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = me.forward(&query).await {
                            let _ = socket.send_to(&reply, peer).await;
                        }
                    });
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                // Several queries may come on one connection; each is length-prefixed.
                loop {
                    let read = tokio::time::timeout(Duration::from_secs(10), async {
                        let len = stream.read_u16().await?;
                        let mut q = vec![0u8; usize::from(len)];
                        stream.read_exact(&mut q).await?;
                        std::io::Result::Ok(q)
                    })
                    .await;
                    let Ok(Ok(query)) = read else { return };
                    let reply = match me.local_answer(&query, false) {
                        Some(r) => Some(r),
                        None => me.forward(&query).await,
                    };
                    let Some(reply) = reply else { return };
                    let Ok(len) = u16::try_from(reply.len()) else {
                        return;
                    };
                    if stream.write_u16(len).await.is_err()
                        || stream.write_all(&reply).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    }

    /// The answer to a query about the cluster domain (or a malformed query), encoded; `None`
    /// when the query is for the node's resolvers.
    pub fn local_answer(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
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
        let reply = answer(&self.registry(), &msg)?;
        let limit = match &msg.edns {
            Some(e) => usize::from(e.max_payload()).max(UDP_MAX),
            None => UDP_MAX,
        };
        let bytes = reply.to_vec().ok()?;
        if udp && bytes.len() > limit {
            return reply.truncate().to_vec().ok();
        }
        Some(bytes)
    }

    /// Relays a query to the node's resolvers; the first answer wins.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for upstream in self.upstreams() {
            let bind: SocketAddr = match upstream {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(query, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    // Only the upstream's answer to this query.
                    if from == upstream && n >= 2 && buf[..2] == query[..2] {
                        return std::io::Result::Ok(n);
                    }
                }
            })
            .await;
            if let Ok(Ok(n)) = got {
                return Some(buf[..n].to_vec());
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

/// The answer to `msg` from `registry`, or `None` when it is not about the cluster domain.
pub fn answer(registry: &Registry, msg: &Message) -> Option<Message> {
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return None;
    }
    let q = msg.queries.first()?;
    let domain = Name::from_ascii(DOMAIN).ok()?;
    let qname = q.name().to_lowercase();
    if !domain.zone_of(&qname) {
        return None;
    }
    let mut reply = Message::response(msg.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    let fqdn = qname.to_ascii();
    let relative = fqdn
        .trim_end_matches('.')
        .strip_suffix(DOMAIN)
        .unwrap_or_default()
        .trim_end_matches('.');
    let labels: Vec<String> = relative
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let a = |name: &Name, ip: Ipv4Addr| Record::from_rdata(name.clone(), TTL, RData::A(A(ip)));
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
    use super::*;
    use flotilla_api::discovery::Endpoint;
    use flotilla_api::taskdef::Protocol;
    use hickory_proto::op::Query;

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
                    },
                    Endpoint {
                        task: "t-2".into(),
                        node: "n-a".into(),
                        address: Ipv4Addr::new(10, 0, 0, 10),
                        port: Some(49154),
                        task_address: Some(Ipv4Addr::new(10, 42, 0, 3)),
                    },
                    Endpoint {
                        task: "t-3".into(),
                        node: "n-b".into(),
                        address: Ipv4Addr::new(10, 0, 0, 50),
                        port: Some(80),
                        task_address: Some(Ipv4Addr::new(10, 0, 0, 50)),
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
        answer(&registry(), &q)
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
        let m = answer(&r, &q).expect("ours");
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
}
