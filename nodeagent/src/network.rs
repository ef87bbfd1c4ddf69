//! Task networks on the node: a network namespace per task shared by its containers, set up
//! before its first container starts and removed once it has stopped.
//!
//! - `none`: a namespace with `lo` only; `host`: the node's namespace.
//! - `bridge`: a veth pair from the task's namespace to the node's task bridge, an address from
//!   the node's bridge subnet (assigned by the control plane), outbound NAT and host-port
//!   forwards in the node's nftables table.
//! - `awsvpc`: a macvlan of the node's uplink inside the task's namespace, with the LAN address
//!   the control plane gave the task.
//!
//! Every task network is recorded in `agent.redb` before anything is made, so an agent that
//! stops halfway finds and finishes or removes it; the nftables table is always rendered from
//! the records as a whole.
//!
//! The bridge and the table are the network namespace's, not the agent's: the agent makes,
//! renders or removes them only while it holds the namespace's [`Claim`], which it lets go once
//! it has neither.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::ipam;
use flotilla_api::taskdef::{NetworkMode as Mode, Protocol};
use flotilla_api::tasks::{DesiredTask, NetworkBinding, NodeNetwork, TaskNetwork};
use flotilla_runtime::container::NetworkMode;
use flotilla_runtime::network::hostport::{self, HeldPort};
use flotilla_runtime::network::{conntrack, link, names, netns, nft};
use ipnet::Ipv4Net;
use redb::{ReadableTable, TableDefinition};

use crate::db::AgentDb;
use serde::{Deserialize, Serialize};

use crate::claim::{self, Claim};

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");

/// How the node's task networks are made.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name of the task bridge.
    pub bridge: String,
    /// Name of the node's nftables table (family `ip`).
    pub table: String,
    /// Host ports given to mappings that ask for none.
    pub dynamic_ports: RangeInclusive<u16>,
    /// The LAN interface `awsvpc` tasks get their macvlan on (default: the interface of the
    /// node's default route).
    pub uplink: Option<String>,
    /// The node's address in the cluster (default: the one it reaches the control plane from).
    pub address: Option<Ipv4Addr>,
    /// Where tasks' queries for names outside the cluster domain go (default: the node's
    /// resolvers).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bridge: "flotilla0".into(),
            table: "flotilla".into(),
            dynamic_ports: 49153..=65535,
            uplink: None,
            address: None,
            dns_upstreams: Vec::new(),
        }
    }
}

/// A task's network as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    mode: Mode,
    /// Its namespace (all but `host`).
    netns: Option<PathBuf>,
    /// The host end of its veth pair (`bridge`).
    host_if: Option<String>,
    /// The bridge it is on (`bridge`).
    #[serde(default)]
    bridge: Option<String>,
    /// Its address with the subnet's prefix length (`bridge`, `awsvpc`).
    address: Option<Ipv4Net>,
    bindings: Vec<NetworkBinding>,
    /// Set once everything is made.
    ready: bool,
}

/// What a task's containers are given.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Their network namespace.
    pub network: NetworkMode,
    /// Their `/etc/resolv.conf`.
    pub resolv_conf: Option<PathBuf>,
    /// The task's own addresses, named by each container's hostname in its `/etc/hosts`.
    pub addresses: Vec<std::net::IpAddr>,
}

/// The node's task networks.
#[derive(Debug)]
pub struct Networks {
    db: Arc<AgentDb>,
    /// Where task namespaces are mounted.
    netns_dir: PathBuf,
    /// Per-task files (resolv.conf).
    files_dir: PathBuf,
    settings: Settings,
    /// The records (the table's content), and the last address and port handed out.
    state: Mutex<State>,
    /// Bridges of records removed since the last sync (a bridge whose name changed in the
    /// settings is still removed with its last task).
    bridges_seen: Mutex<Vec<String>>,
    /// The VIPs last rendered (their removed backends' connections are forgotten).
    vips_rendered: Mutex<Vec<nft::Vip>>,
    /// `net.bridge.bridge-nf-call-iptables` as read for the table last applied (none while
    /// there is no table): a change of it outside the agent rebuilds the table
    /// ([`Networks::follow_bridge_netfilter`]).
    netfilter_rendered: Mutex<Option<BridgeNetfilter>>,
    /// The node's DNS (tasks' resolvers, VIPs); none for `ctr network`.
    dns: Option<Arc<crate::dns::Dns>>,
    /// This node's id (its own endpoints are reached directly).
    node_id: String,
    /// The agent's data directory, named in the claim.
    data_dir: PathBuf,
    /// Where the claim of the namespace's bridge and table is.
    claim_path: PathBuf,
    /// The claim, while this agent has a bridge or a table in the namespace.
    claim: Mutex<Option<Claim>>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<String, Record>,
    last_address: Option<Ipv4Addr>,
    last_port: Option<u16>,
    /// The published host ports of bridge tasks, held by the agent while their networks live
    /// (as Docker's proxy holds them), so nothing else on the node takes them.
    held: BTreeMap<String, Vec<HeldPort>>,
}

impl Networks {
    /// Opens the records in `db`; namespaces live under `<data_dir>/netns`.
    pub fn open(
        db: Arc<AgentDb>,
        data_dir: &Path,
        settings: Settings,
        dns: Option<Arc<crate::dns::Dns>>,
        node_id: &str,
    ) -> Result<Self> {
        let w = db.begin_write()?;
        w.open_table(NETWORKS)?;
        w.commit()?;
        let mut records = BTreeMap::new();
        {
            let r = db.begin_read()?;
            let t = r.open_table(NETWORKS)?;
            for row in t.iter()? {
                let (k, v) = row?;
                let rec: Record = serde_json::from_slice(v.value())
                    .with_context(|| format!("the network record of task {}", k.value()))?;
                records.insert(k.value().to_string(), rec);
            }
        }
        let mut held = BTreeMap::new();
        for (task, rec) in records.iter().filter(|(_, r)| r.mode == Mode::Bridge) {
            let mut ports = Vec::new();
            for b in &rec.bindings {
                match hostport::hold(b.host_port, nft_proto(b.protocol)) {
                    Ok(h) => ports.push(h),
                    Err(e) => tracing::warn!(task = %task, "{e}; its traffic may go elsewhere"),
                }
            }
            held.insert(task.clone(), ports);
        }
        Ok(Self {
            db,
            netns_dir: data_dir.join("netns"),
            files_dir: data_dir.join("networks"),
            settings,
            state: Mutex::new(State {
                records,
                held,
                ..State::default()
            }),
            bridges_seen: Mutex::new(Vec::new()),
            vips_rendered: Mutex::new(Vec::new()),
            netfilter_rendered: Mutex::new(None),
            dns,
            node_id: node_id.to_string(),
            data_dir: data_dir.to_path_buf(),
            claim_path: crate::claim::path_for_this_namespace()?,
            claim: Mutex::new(None),
        })
    }

    /// Takes the namespace's claim unless this agent holds it: refused, naming the holder,
    /// while another agent has a bridge or a table here.
    fn claim(&self) -> Result<()> {
        let mut held = self.claim.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_none() {
            *held = Some(Claim::take(&self.claim_path, &self.data_dir)?);
        }
        Ok(())
    }

    /// Whether this agent may remove the namespace's table and bridges, now that it has no
    /// use for them: it holds the claim or takes it (they are leftovers of an agent that
    /// stopped); not while another agent holds it (they are that agent's).
    fn may_remove(&self) -> Result<bool> {
        match self.claim() {
            Ok(()) => Ok(true),
            Err(e) => match e.downcast_ref::<claim::Refused>() {
                Some(claim::Refused::Held { holder }) => {
                    tracing::debug!(%holder, "leaving the bridge and table to their holder");
                    Ok(false)
                }
                _ => Err(e),
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, task: &str, rec: Option<&Record>) -> Result<()> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(NETWORKS)?;
            match rec {
                Some(r) => {
                    t.insert(task, serde_json::to_vec(r)?.as_slice())?;
                }
                None => {
                    t.remove(task)?;
                }
            }
        }
        w.commit()?;
        Ok(())
    }

    /// After an agent start: task networks whose namespace is gone (the node rebooted) or
    /// that were never finished are removed (their tasks set them up again when they start),
    /// and the nftables table is rendered anew from what is left.
    pub fn restore(&self) -> Result<()> {
        let mut st = self.lock();
        let broken: Vec<String> = st
            .records
            .iter()
            .filter(|(_, r)| {
                !r.ready || r.netns.as_deref().is_some_and(|p| !netns::is_namespace(p))
            })
            .map(|(t, _)| t.clone())
            .collect();
        for task in broken {
            tracing::info!(task = %task, "removing an unfinished or stale task network");
            self.teardown(&mut st, &task)?;
        }
        if let Some(dns) = &self.dns {
            for (task, r) in &st.records {
                if let (Some(ns), Mode::Bridge | Mode::Awsvpc) = (&r.netns, r.mode) {
                    if let Err(e) = dns.serve_in(task, ns, node_seen_from(r)) {
                        tracing::warn!(task = %task, "resolver: {e:#}");
                    }
                }
            }
        }
        self.sync_node(&st)
    }

    /// The node's address as configured.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.settings.address
    }

    /// Renders the node's table again (the registry's VIPs changed).
    pub fn refresh(&self) -> Result<()> {
        let st = self.lock();
        self.sync_node(&st)
    }

    /// Renders the node's table again if `net.bridge.bridge-nf-call-iptables` changed since
    /// it was last rendered (`br_netfilter` loaded or `sysctl.d` applied after the agent
    /// started, another tool turning it off or on): which translated connections within a
    /// bridge are masqueraded depends on it. One small procfs read when nothing changed.
    /// Whether the table was rendered again.
    pub fn follow_bridge_netfilter(&self) -> Result<bool> {
        let now = BridgeNetfilter::read();
        {
            let mut rendered = self
                .netfilter_rendered
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match *rendered {
                Some(_) if BridgeNetfilter::changes_the_table(*rendered, now) => {}
                Some(before) if before != now => {
                    // Off and absent render the same table.
                    tracing::debug!(%before, %now, "net.bridge.bridge-nf-call-iptables changed");
                    *rendered = Some(now);
                    return Ok(false);
                }
                _ => return Ok(false),
            }
        }
        let st = self.lock();
        // Read again under the lock: a sync in between may have rendered it already.
        let rendered = *self
            .netfilter_rendered
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = BridgeNetfilter::read();
        let Some(before) = rendered.filter(|_| BridgeNetfilter::changes_the_table(rendered, now))
        else {
            return Ok(false);
        };
        tracing::info!(
            %before,
            %now,
            "net.bridge.bridge-nf-call-iptables changed: rendering the nftables table again"
        );
        self.sync_node(&st)?;
        Ok(true)
    }

    /// The network of `task`, made if it is not there yet.
    pub fn ensure(&self, task: &DesiredTask, node: &NodeNetwork) -> Result<Attachment> {
        let mode = task.definition.network_mode;
        let mut st = self.lock();
        if let Some(rec) = st.records.get(&task.id) {
            if rec.ready && self.intact(rec) {
                return Ok(self.attachment(&task.id, rec));
            }
            tracing::info!(task = %task.id, "task network incomplete; making it again");
            self.teardown(&mut st, &task.id)?;
        }
        if mode == Mode::Host {
            // The task's own process binds them: only checked here.
            for m in task
                .definition
                .container_definitions
                .iter()
                .flat_map(|c| &c.port_mappings)
            {
                hostport::check_free(m.container_port, nft_proto(m.protocol))?;
            }
        }
        let rec = match mode {
            Mode::Host => Record {
                mode,
                netns: None,
                host_if: None,
                bridge: None,
                address: None,
                bindings: direct_bindings(task),
                ready: true,
            },
            Mode::None => {
                let rec = Record {
                    mode,
                    netns: Some(self.netns_dir.join(&task.id)),
                    host_if: None,
                    bridge: None,
                    address: None,
                    bindings: Vec::new(),
                    ready: false,
                };
                self.record(&mut st, &task.id, rec.clone())?;
                let ns = netns::create(&self.netns_dir, &task.id)?;
                link::loopback_up(&ns)?;
                Record { ready: true, ..rec }
            }
            Mode::Bridge => self.make_bridged(&mut st, task, node)?,
            Mode::Awsvpc => self.make_awsvpc(&mut st, task)?,
        };
        self.record(&mut st, &task.id, rec.clone())?;
        if let (Some(ns), Mode::Bridge | Mode::Awsvpc) = (&rec.netns, mode) {
            if let Some(dns) = &self.dns {
                dns.serve_in(&task.id, ns, node_seen_from(&rec))?;
            }
            self.write_resolv_conf(&task.id, task.namespace.as_deref())?;
        }
        Ok(self.attachment(&task.id, &rec))
    }

    fn make_bridged(
        &self,
        st: &mut State,
        task: &DesiredTask,
        node: &NodeNetwork,
    ) -> Result<Record> {
        let subnet = node.bridge_subnet.ok_or_else(|| {
            anyhow!("this node has no bridge subnet yet (the control plane assigns one when the node connects)")
        })?;
        self.claim()?;
        let taken: BTreeSet<Ipv4Addr> = st
            .records
            .values()
            .filter(|r| r.mode == Mode::Bridge)
            .filter_map(|r| r.address.map(|a| a.addr()))
            .collect();
        let addr = ipam::next_address(subnet, &taken, st.last_address)
            .ok_or_else(|| anyhow!("the bridge subnet {subnet} has no free address left"))?;
        let address = Ipv4Net::new(addr, subnet.prefix_len())?;
        let bindings = self.bridge_bindings(st, task)?;
        let ns = self.netns_dir.join(&task.id);
        let host_if = host_ifname(&task.id);
        let rec = Record {
            mode: Mode::Bridge,
            netns: Some(ns.clone()),
            host_if: Some(host_if.clone()),
            bridge: Some(self.settings.bridge.clone()),
            address: Some(address),
            bindings,
            ready: false,
        };
        // Recorded first: an agent stopped halfway finds what to remove.
        self.record(st, &task.id, rec.clone())?;
        st.last_address = Some(addr);
        let gateway = Ipv4Net::new(ipam::gateway(subnet), subnet.prefix_len())?;
        link::ensure_bridge(&self.settings.bridge, gateway)
            .with_context(|| format!("bridge {}", self.settings.bridge))?;
        enable_forwarding(&self.settings.bridge)?;
        netns::create(&self.netns_dir, &task.id)
            .with_context(|| format!("network namespace {}", ns.display()))?;
        link::attach_veth(
            &self.settings.bridge,
            &host_if,
            &ns,
            link::Inside {
                address,
                gateway: Some(gateway.addr()),
            },
        )
        .with_context(|| format!("veth {host_if}"))?;
        let rec = Record { ready: true, ..rec };
        st.records.insert(task.id.clone(), rec.clone());
        self.sync_node(st)?;
        Ok(rec)
    }

    /// Host ports of a bridge task: static ones checked against the node's other tasks and
    /// held (refused when anything on the node holds them or the node needs them), dynamic
    /// ones picked from the free part of the range, skipping ports in use. The holds are kept
    /// in `st.held` once all are taken.
    fn bridge_bindings(&self, st: &mut State, task: &DesiredTask) -> Result<Vec<NetworkBinding>> {
        let mut taken: BTreeMap<(Protocol, u16), String> = BTreeMap::new();
        for (id, r) in &st.records {
            for b in &r.bindings {
                if matches!(r.mode, Mode::Bridge | Mode::Host) {
                    taken.insert((b.protocol, b.host_port), id.clone());
                }
            }
        }
        let mut out = Vec::new();
        let mut held = Vec::new();
        for c in &task.definition.container_definitions {
            for m in &c.port_mappings {
                if let Some(hp) = m.host_port {
                    if let Some(owner) = taken.get(&(m.protocol, hp)) {
                        bail!(
                            "host port {hp}/{} is already published by task {owner}",
                            proto_name(m.protocol)
                        );
                    }
                    held.push(hostport::hold(hp, nft_proto(m.protocol))?);
                    taken.insert((m.protocol, hp), task.id.clone());
                    out.push(binding(&c.name, m.container_port, hp, m.protocol));
                }
            }
        }
        for c in &task.definition.container_definitions {
            for m in c.port_mappings.iter().filter(|m| m.host_port.is_none()) {
                let mut used: BTreeSet<u16> = taken
                    .keys()
                    .filter(|(p, _)| *p == m.protocol)
                    .map(|(_, port)| *port)
                    .collect();
                let (hp, hold) = loop {
                    let hp = ipam::next_port(&self.settings.dynamic_ports, &used, st.last_port)
                        .ok_or_else(|| {
                            anyhow!(
                                "no free host port left in {:?}",
                                self.settings.dynamic_ports
                            )
                        })?;
                    match hostport::hold(hp, nft_proto(m.protocol)) {
                        Ok(h) => break (hp, h),
                        Err(e) => {
                            tracing::debug!(task = %task.id, "skipping a dynamic port: {e}");
                            used.insert(hp);
                        }
                    }
                };
                held.push(hold);
                st.last_port = Some(hp);
                taken.insert((m.protocol, hp), task.id.clone());
                out.push(binding(&c.name, m.container_port, hp, m.protocol));
            }
        }
        st.held.insert(task.id.clone(), held);
        Ok(out)
    }

    fn make_awsvpc(&self, st: &mut State, task: &DesiredTask) -> Result<Record> {
        let lan = task.address.ok_or_else(|| {
            anyhow!("no LAN address was given for this awsvpc task (the control plane's awsvpc pool is not configured)")
        })?;
        let uplink = match &self.settings.uplink {
            Some(u) => u.clone(),
            None => default_route_interface()?,
        };
        let ns = self.netns_dir.join(&task.id);
        let rec = Record {
            mode: Mode::Awsvpc,
            netns: Some(ns.clone()),
            host_if: None,
            bridge: None,
            address: Some(lan.address),
            bindings: direct_bindings(task),
            ready: false,
        };
        self.record(st, &task.id, rec.clone())?;
        netns::create(&self.netns_dir, &task.id)
            .with_context(|| format!("network namespace {}", ns.display()))?;
        link::attach_macvlan(
            &uplink,
            &ns,
            link::Inside {
                address: lan.address,
                gateway: lan.gateway,
            },
        )?;
        Ok(Record { ready: true, ..rec })
    }

    fn record(&self, st: &mut State, task: &str, rec: Record) -> Result<()> {
        self.persist(task, Some(&rec))?;
        st.records.insert(task.to_string(), rec);
        Ok(())
    }

    /// True when what the record says exists still does.
    fn intact(&self, rec: &Record) -> bool {
        let ns_ok = rec.netns.as_deref().is_none_or(netns::is_namespace);
        let if_ok = rec
            .host_if
            .as_deref()
            .is_none_or(|i| link::exists(i).unwrap_or(false));
        ns_ok && if_ok
    }

    fn attachment(&self, task: &str, rec: &Record) -> Attachment {
        match (&rec.netns, rec.mode) {
            (None, _) => Attachment {
                network: NetworkMode::Host,
                resolv_conf: None,
                addresses: Vec::new(),
            },
            (Some(ns), Mode::None) => Attachment {
                network: NetworkMode::Join(ns.clone()),
                resolv_conf: None,
                addresses: Vec::new(),
            },
            (Some(ns), _) => Attachment {
                network: NetworkMode::Join(ns.clone()),
                resolv_conf: Some(self.resolv_conf_path(task)),
                addresses: rec.address.iter().map(|a| a.addr().into()).collect(),
            },
        }
    }

    fn resolv_conf_path(&self, task: &str) -> PathBuf {
        self.files_dir.join(format!("{task}.resolv.conf"))
    }

    fn write_resolv_conf(&self, task: &str, namespace: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(&self.files_dir)?;
        let text = match &self.dns {
            Some(_) => crate::dns::resolv_conf(namespace),
            None => {
                let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                names::namespaced_resolv_conf(&node)
            }
        };
        let path = self.resolv_conf_path(task);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        // Readable by every user of the containers that mount it, whatever the agent's umask.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
        Ok(())
    }

    /// Removes the network of `task` (nothing happens when it has none).
    pub fn release(&self, task: &str) -> Result<()> {
        let mut st = self.lock();
        if !st.records.contains_key(task) {
            return Ok(());
        }
        self.teardown(&mut st, task)?;
        self.sync_node(&st)
    }

    /// Removes every task network but those of `keep`.
    pub fn retain(&self, keep: &BTreeSet<&str>) -> Result<()> {
        let mut st = self.lock();
        let gone: Vec<String> = st
            .records
            .keys()
            .filter(|t| !keep.contains(t.as_str()))
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for t in gone {
            tracing::info!(task = %t, "removing the network of a task no longer on this node");
            self.teardown(&mut st, &t)?;
        }
        self.sync_node(&st)
    }

    fn teardown(&self, st: &mut State, task: &str) -> Result<()> {
        let Some(rec) = st.records.get(task).cloned() else {
            return Ok(());
        };
        if let Some(dns) = &self.dns {
            // Its resolver's sockets would hold the namespace.
            dns.stop(task);
        }
        if let Some(i) = &rec.host_if {
            link::delete(None, i).with_context(|| format!("deleting {i}"))?;
        }
        if let (Mode::Bridge, Some(a)) = (rec.mode, rec.address) {
            // Connections once forwarded to it must not carry new ones there.
            if let Err(e) = conntrack::forget(a.addr(), None) {
                tracing::warn!(task = %task, "{e}");
            }
        }
        if let Some(ns) = &rec.netns {
            if rec.mode == Mode::Awsvpc && netns::is_namespace(ns) {
                // A namespace still held by a leftover process must not keep the address.
                link::delete(Some(ns), link::TASK_IFNAME)
                    .with_context(|| format!("deleting the macvlan of task {task}"))?;
            }
            netns::remove(ns).with_context(|| format!("removing {}", ns.display()))?;
        }
        match std::fs::remove_file(self.resolv_conf_path(task)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.persist(task, None)?;
        st.records.remove(task);
        st.held.remove(task);
        if let Some(b) = rec.bridge {
            self.bridges_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(b);
        }
        Ok(())
    }

    /// Brings the nftables table and the bridge in line with the records: both exist only
    /// while a bridge task does.
    fn sync_node(&self, st: &State) -> Result<()> {
        let bridged: Vec<&Record> = st
            .records
            .values()
            .filter(|r| r.mode == Mode::Bridge)
            .collect();
        if st.records.values().all(|r| r.netns.is_none()) {
            netns::release_dir(&self.netns_dir)
                .with_context(|| format!("unmounting {}", self.netns_dir.display()))?;
        }
        let mut table = nft::NatTable::default();
        for r in &bridged {
            let (Some(name), Some(addr)) = (&r.bridge, r.address) else {
                continue;
            };
            let b = nft::BridgeNat {
                name: name.clone(),
                subnet: addr.trunc(),
            };
            if !table.bridges.contains(&b) {
                table.bridges.push(b);
            }
        }
        for r in &bridged {
            let Some(addr) = r.address else { continue };
            for b in &r.bindings {
                table.forwards.push(nft::PortForward {
                    proto: match b.protocol {
                        Protocol::Tcp => nft::Proto::Tcp,
                        Protocol::Udp => nft::Proto::Udp,
                    },
                    host_port: b.host_port,
                    address: addr.addr(),
                    port: b.container_port,
                });
            }
        }
        table.vips = self.vips(st);
        let netfilter = BridgeNetfilter::read();
        table.bridge_netfilter = netfilter.hooks();
        // With nothing to render, what is there is removed only if it is not another agent's.
        let remove = if table.is_empty() {
            let bridges_seen = self
                .bridges_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let anything = nft::exists(&self.settings.table).unwrap_or(true)
                || std::iter::once(&self.settings.bridge)
                    .chain(&bridges_seen)
                    .any(|b| link::exists(b).unwrap_or(true));
            let remove = anything && self.may_remove()?;
            if remove && nft::exists(&self.settings.table).unwrap_or(true) {
                nft::apply(&self.settings.table, &table)?;
            }
            remove
        } else {
            self.claim()?;
            nft::apply(&self.settings.table, &table)?;
            true
        };
        *self
            .netfilter_rendered
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (!table.is_empty()).then_some(netfilter);
        // A backend that left a VIP gets no new connection through an old translation.
        let before = std::mem::replace(
            &mut *self.vips_rendered.lock().unwrap_or_else(|p| p.into_inner()),
            table.vips.clone(),
        );
        for old in &before {
            let now = table
                .vips
                .iter()
                .find(|v| v.address == old.address && v.port == old.port && v.proto == old.proto);
            for b in &old.backends {
                if now.is_none_or(|v| !v.backends.contains(b)) {
                    if let Err(e) = conntrack::forget(b.0, Some((old.proto, b.1))) {
                        tracing::warn!(vip = %old.address, "{e}");
                    }
                }
            }
        }
        // A bridge goes with its last task.
        let mut gone = vec![self.settings.bridge.clone()];
        gone.extend(
            self.bridges_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
        for b in gone {
            if remove && !table.bridges.iter().any(|t| t.name == b) {
                link::delete(None, &b).with_context(|| format!("deleting bridge {b}"))?;
            }
        }
        if table.is_empty() {
            // Neither a bridge nor a table of this agent's is left: another agent may have them.
            *self.claim.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(())
    }

    /// The VIPs of the registry, each endpoint reached where it can be from this node: its
    /// own bridge tasks directly on their address and their own container port (during a
    /// deployment that changes it, old and new tasks differ), others where the cluster
    /// reaches them.
    fn vips(&self, st: &State) -> Vec<nft::Vip> {
        let Some(dns) = &self.dns else {
            return Vec::new();
        };
        let registry = dns.registry();
        let mut out = Vec::new();
        for s in &registry.services {
            let (Some(vip), Some(port)) = (s.vip, s.port) else {
                continue;
            };
            let backends: Vec<(Ipv4Addr, u16)> = s
                .endpoints
                .iter()
                .filter_map(|e| {
                    let local = e.node == self.node_id
                        && st
                            .records
                            .get(&e.task)
                            .is_some_and(|r| r.mode == Mode::Bridge && r.ready);
                    match (local, e.task_address) {
                        (true, Some(a)) => Some((a, e.task_port.unwrap_or(port))),
                        _ => Some((e.address, e.port?)),
                    }
                })
                .collect();
            // Without a backend a VIP has nothing to translate to: no rule (nor a table for it).
            if backends.is_empty() {
                continue;
            }
            out.push(nft::Vip {
                address: vip,
                proto: match s.protocol {
                    Protocol::Tcp => nft::Proto::Tcp,
                    Protocol::Udp => nft::Proto::Udp,
                },
                port,
                backends,
            });
        }
        out
    }

    /// Every task network: (task, what is reported of it, whether it is complete).
    pub fn list(&self) -> Vec<(String, TaskNetwork, bool)> {
        self.lock()
            .records
            .iter()
            .map(|(t, r)| {
                (
                    t.clone(),
                    TaskNetwork {
                        mode: r.mode,
                        address: r.address.map(|a| a.addr()),
                        bindings: r.bindings.clone(),
                    },
                    r.ready,
                )
            })
            .collect()
    }

    /// Removes every task network (the agent is not running: `ctr network prune`).
    pub fn prune(&self) -> Result<usize> {
        let n = self.lock().records.len();
        self.retain(&BTreeSet::new())?;
        let st = self.lock();
        self.sync_node(&st)?;
        Ok(n)
    }

    /// The network of `task` as it is reported.
    pub fn status(&self, task: &str) -> Option<TaskNetwork> {
        let st = self.lock();
        let r = st.records.get(task).filter(|r| r.ready)?;
        Some(TaskNetwork {
            mode: r.mode,
            address: r.address.map(|a| a.addr()),
            bindings: r.bindings.clone(),
        })
    }
}

fn binding(
    container: &str,
    container_port: u16,
    host_port: u16,
    protocol: Protocol,
) -> NetworkBinding {
    NetworkBinding {
        container: container.to_string(),
        container_port,
        host_port,
        protocol,
    }
}

/// `host` and `awsvpc` tasks are reached on their container ports directly.
fn direct_bindings(task: &DesiredTask) -> Vec<NetworkBinding> {
    task.definition
        .container_definitions
        .iter()
        .flat_map(|c| {
            c.port_mappings
                .iter()
                .map(|m| binding(&c.name, m.container_port, m.container_port, m.protocol))
        })
        .collect()
}

/// The node's own address as a task reaches it: the bridge's gateway for a bridge task (the
/// node's published ports answer there too); none for others.
fn node_seen_from(rec: &Record) -> Option<Ipv4Addr> {
    match (rec.mode, rec.address) {
        (Mode::Bridge, Some(a)) => Some(ipam::gateway(a.trunc())),
        _ => None,
    }
}

fn nft_proto(p: Protocol) -> nft::Proto {
    match p {
        Protocol::Tcp => nft::Proto::Tcp,
        Protocol::Udp => nft::Proto::Udp,
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The host end of a task's veth pair: `fl` and 12 hex digits of a hash of the task id
/// (interface names are at most 15 bytes).
fn host_ifname(task: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, task.as_bytes());
    let hex: String = d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("fl{hex}")
}

/// Routing between the bridge and the node's other interfaces, and the node's own
/// 127.0.0.1:HOSTPORT reaching a task (its packets leave through the bridge).
fn enable_forwarding(bridge: &str) -> Result<()> {
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
        (
            format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"),
            "1",
        ),
    ] {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() != value {
            std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
        }
    }
    Ok(())
}

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Whether frames crossing a bridge go through this namespace's IPv4 netfilter hooks
/// (`br_netfilter`, on in new namespaces once the module is in; Docker and Kubernetes turn it
/// on too): then a translated connection between two tasks of a bridge is translated back on
/// the bridge and needs no masquerade. Read at every change of the table and followed by
/// [`Networks::follow_bridge_netfilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BridgeNetfilter {
    /// `net.bridge.bridge-nf-call-iptables` = 1.
    On,
    /// Set to anything else.
    Off,
    /// No such setting: `br_netfilter` is not loaded, bridged frames skip netfilter.
    Absent,
}

impl BridgeNetfilter {
    fn read() -> Self {
        Self::parse(
            std::fs::read_to_string(BRIDGE_NF_CALL_IPTABLES)
                .ok()
                .as_deref(),
        )
    }

    /// The setting from the file's content, `None` when it could not be read.
    fn parse(content: Option<&str>) -> Self {
        match content.map(str::trim) {
            None => Self::Absent,
            Some("1") => Self::On,
            Some(_) => Self::Off,
        }
    }

    /// Bridged frames go through the IPv4 hooks.
    fn hooks(self) -> bool {
        self == Self::On
    }

    /// Whether a table rendered with `rendered` (none: no table) must be rendered again now
    /// that the setting reads `now`.
    fn changes_the_table(rendered: Option<Self>, now: Self) -> bool {
        rendered.is_some_and(|r| r.hooks() != now.hooks())
    }
}

impl std::fmt::Display for BridgeNetfilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::On => "1",
            Self::Off => "0",
            Self::Absent => "absent (br_netfilter not loaded)",
        })
    }
}

/// The interface of the node's IPv4 default route.
fn default_route_interface() -> Result<String> {
    let routes = std::fs::read_to_string("/proc/net/route").context("/proc/net/route")?;
    default_route_in(&routes).ok_or_else(|| {
        anyhow!("the node has no default route; set the awsvpc uplink interface (--uplink)")
    })
}

/// The interface of the default route in a `/proc/net/route` table.
fn default_route_in(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| f[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = host_ifname("t-0123456789ab");
        assert_eq!(a.len(), 14);
        assert_ne!(a, host_ifname("t-0123456789ac"));
    }

    #[test]
    fn default_route_is_read_from_the_route_table() {
        let head =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let table = format!(
            "{head}eth1\t0014A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t0114A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        assert_eq!(default_route_in(&table).as_deref(), Some("eth0"));
        assert_eq!(default_route_in(head), None);
    }

    #[test]
    fn bridge_netfilter_is_on_only_at_1_and_absent_without_the_module() {
        use BridgeNetfilter::*;
        assert_eq!(BridgeNetfilter::parse(Some("1\n")), On);
        assert_eq!(BridgeNetfilter::parse(Some("0\n")), Off);
        assert_eq!(BridgeNetfilter::parse(None), Absent);
        assert!(On.hooks());
        assert!(!Off.hooks() && !Absent.hooks());
        assert_eq!(Absent.to_string(), "absent (br_netfilter not loaded)");
        // A rendered table follows a change of the hooks, not one between off and absent.
        for (rendered, now, again) in [
            (Some(On), Off, true),
            (Some(On), Absent, true),
            (Some(Off), On, true),
            (Some(Absent), On, true),
            (Some(Off), Absent, false),
            (Some(Absent), Off, false),
            (Some(On), On, false),
            (None, On, false),
            (None, Off, false),
        ] {
            assert_eq!(
                BridgeNetfilter::changes_the_table(rendered, now),
                again,
                "{rendered:?} -> {now:?}"
            );
        }
    }
}
