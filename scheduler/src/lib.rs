//! Flotilla's scheduler: pure functions from a snapshot of the cluster and a request to a plan.
//! No I/O, no clock, no unseeded randomness: the same snapshot and request give the same plan,
//! so tests feed snapshots and assert on plans, and the control plane applies a plan only after
//! checking it against fresh state.
//!
//! Placement follows Amazon ECS. Nodes are **filtered**: ready (not draining, connected), the
//! request's `memberOf` constraints, then — as tasks are placed — free CPU units, memory and host
//! ports, and `distinctInstance`. The survivors are ordered by the **strategies**, chained in
//! order (each breaks the ties of the previous): `spread` over an attribute (or `instanceId`),
//! `binpack` on CPU or memory (the least room left first), `random` (seeded); the node id breaks
//! the last ties. A request that cannot be placed in full is refused with, for every node, the
//! filter that stopped it, counted per reason.
//!
//! Leading `spread` strategies over attributes partition the nodes by value (fewest tasks of the
//! group first, then the value's name); the rest is a per-node key in a heap, so a placement
//! costs O(log n) after an O(n log n) set-up.

#![forbid(unsafe_code)]

pub mod cron;
pub mod expr;
pub mod scaling;
pub mod service;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;

/// CPU units (1024 per core) and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU units.
    pub cpu_units: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
}

/// A host port with its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// Port number.
    pub port: u16,
    /// UDP (else TCP).
    pub udp: bool,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, if self.udp { "udp" } else { "tcp" })
    }
}

/// Whether a node takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Connected and active.
    Ready,
    /// Active but not connected.
    Disconnected,
    /// Draining.
    Draining,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Node id (`instanceId`).
    pub id: String,
    /// Attributes (labels).
    pub attributes: BTreeMap<String, String>,
    /// What it has (`None`: not reported yet; such a node takes no task, since nothing could
    /// be checked against its room).
    pub capacity: Option<Resources>,
    /// What its live tasks reserve.
    pub used: Resources,
    /// Host ports its live tasks hold.
    pub ports: BTreeSet<HostPort>,
    /// Live tasks per placement group (a task definition family, a service …).
    pub groups: BTreeMap<String, u64>,
    /// Whether it takes tasks.
    pub state: NodeState,
}

/// The cluster at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Its nodes.
    pub nodes: Vec<NodeView>,
}

/// A placement constraint.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// At most one task of the group per node.
    DistinctInstance,
    /// Only nodes matching the expression.
    MemberOf {
        /// As written.
        text: String,
        /// Parsed.
        expr: expr::Expr,
    },
}

impl Constraint {
    /// `memberOf(EXPR)`.
    pub fn member_of(text: &str) -> Result<Self, expr::ParseError> {
        Ok(Self::MemberOf {
            text: text.to_string(),
            expr: expr::parse(text)?,
        })
    }
}

/// What `binpack` packs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinpackField {
    /// CPU units.
    Cpu,
    /// Memory.
    Memory,
}

/// A placement strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Fewest tasks of the group first: per node (`instanceId`) or per attribute value.
    Spread(String),
    /// Least room left first.
    Binpack(BinpackField),
    /// Seeded random.
    Random,
}

impl Strategy {
    /// ECS's `{type, field}`: `spread` + `instanceId`/`attribute:NAME`, `binpack` + `cpu`/`memory`,
    /// `random`.
    pub fn parse(kind: &str, field: Option<&str>) -> Result<Self, String> {
        match (kind, field) {
            ("spread", Some("instanceId")) => Ok(Self::Spread("instanceId".into())),
            ("spread", Some(f)) => match f.strip_prefix("attribute:") {
                Some(a) if !a.is_empty() => Ok(Self::Spread(a.to_string())),
                _ => Err(format!("spread field '{f}': instanceId or attribute:NAME")),
            },
            ("binpack", Some("cpu")) => Ok(Self::Binpack(BinpackField::Cpu)),
            ("binpack", Some("memory")) => Ok(Self::Binpack(BinpackField::Memory)),
            ("binpack", f) => Err(format!("binpack field {f:?}: cpu or memory")),
            ("random", _) => Ok(Self::Random),
            ("spread", None) => Err("spread needs a field (instanceId or attribute:NAME)".into()),
            (k, _) => Err(format!("'{k}': spread, binpack or random")),
        }
    }

    fn attribute(&self) -> Option<&str> {
        match self {
            Self::Spread(a) if a != "instanceId" => Some(a),
            _ => None,
        }
    }
}

/// What to place.
#[derive(Debug, Clone)]
pub struct Request {
    /// Placement group the tasks count in (spread, distinctInstance).
    pub group: String,
    /// How many tasks.
    pub count: usize,
    /// What each task reserves.
    pub need: Resources,
    /// Host ports each task takes.
    pub ports: Vec<HostPort>,
    /// Constraints.
    pub constraints: Vec<Constraint>,
    /// Strategies, in order.
    pub strategy: Vec<Strategy>,
    /// Seed of `random`.
    pub seed: u64,
}

/// Why a request could not be placed in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    /// Tasks that would have fit.
    pub placed: usize,
    /// Tasks asked for.
    pub requested: usize,
    /// Reason → nodes that stopped there.
    pub reasons: BTreeMap<String, usize>,
    /// The nodes that stopped at a host port taken (their reason `had port … taken`), by id,
    /// in the snapshot's order: where to look for the tasks that hold it.
    pub port_taken_on: Vec<String>,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.placed == 0 {
            write!(f, "no node can take a task")?;
        } else {
            write!(f, "room for {} of {} tasks", self.placed, self.requested)?;
        }
        if self.reasons.is_empty() {
            return write!(f, ": the cluster has no node");
        }
        let parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(why, n)| {
                let why = if *n == 1 { singular(why) } else { why.clone() };
                format!("{n} node{} {why}", if *n == 1 { "" } else { "s" })
            })
            .collect();
        write!(f, ": {}", parts.join(", "))
    }
}

impl Unplaceable {
    /// Why the one node a task was asked for (a DAEMON's, `--node`) cannot take it:
    /// `node N cannot take the task: it lacked memory`.
    pub fn on_node(&self, node: &str) -> String {
        let whys: Vec<String> = self.reasons.keys().map(|w| singular(w)).collect();
        if whys.is_empty() {
            return format!("node {node} cannot take the task: it is not in the cluster");
        }
        format!(
            "node {node} cannot take the task: it {}",
            whys.join(", and ")
        )
    }
}

/// A reason, written for several nodes ("were draining"), for one ("was draining").
fn singular(why: &str) -> String {
    match why.strip_prefix("were ") {
        Some(rest) => format!("was {rest}"),
        None => why.to_string(),
    }
}

/// A node during one placement.
struct Slot<'a> {
    view: &'a NodeView,
    used: Resources,
    ports: BTreeSet<HostPort>,
    group: u64,
    placed: u64,
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How the reason of a node refused for a host port taken begins (`had port 8080/tcp taken`).
pub const PORT_TAKEN: &str = "had port ";

/// Why a slot cannot take one more task, if it cannot.
fn lacks(s: &Slot<'_>, req: &Request) -> Option<String> {
    if req
        .constraints
        .iter()
        .any(|c| matches!(c, Constraint::DistinctInstance))
        && s.group > 0
    {
        return Some("already had a task of the group (distinctInstance)".into());
    }
    let Some(cap) = s.view.capacity else {
        return Some("had not reported resources yet".into());
    };
    if s.used.cpu_units + req.need.cpu_units > cap.cpu_units {
        return Some("lacked CPU".into());
    }
    if s.used.memory_mib + req.need.memory_mib > cap.memory_mib {
        return Some("lacked memory".into());
    }
    if let Some(p) = req.ports.iter().find(|p| s.ports.contains(p)) {
        return Some(format!("{PORT_TAKEN}{p} taken"));
    }
    None
}

/// The static filters: state and `memberOf`.
fn excluded(n: &NodeView, req: &Request) -> Option<String> {
    match n.state {
        NodeState::Ready => {}
        NodeState::Disconnected => return Some("were disconnected".into()),
        NodeState::Draining => return Some("were draining".into()),
    }
    if n.capacity.is_none() {
        return Some("had not reported resources yet".into());
    }
    for c in &req.constraints {
        if let Constraint::MemberOf { text, expr } = c {
            if !expr.eval(&n.attributes) {
                return Some(format!("failed memberOf({text})"));
            }
        }
    }
    None
}

/// Tasks of the group per value of each spread attribute, shared by every level.
type Counts = BTreeMap<(usize, String), u64>;

/// The per-node key of the strategies from `from` on (attribute spreads read `counts`).
fn key(s: &Slot<'_>, req: &Request, from: usize, counts: &Counts, seed: u64) -> Vec<u64> {
    let mut k = Vec::with_capacity(req.strategy.len() - from + 1);
    for (i, st) in req.strategy.iter().enumerate().skip(from) {
        k.push(match st {
            Strategy::Spread(a) if a == "instanceId" => s.group,
            Strategy::Spread(a) => {
                let v = s.view.attributes.get(a).cloned().unwrap_or_default();
                counts.get(&(i, v)).copied().unwrap_or(0)
            }
            Strategy::Binpack(BinpackField::Memory) => s
                .view
                .capacity
                .map_or(u64::MAX, |c| c.memory_mib.saturating_sub(s.used.memory_mib)),
            Strategy::Binpack(BinpackField::Cpu) => s
                .view
                .capacity
                .map_or(u64::MAX, |c| c.cpu_units.saturating_sub(s.used.cpu_units)),
            Strategy::Random => mix(seed ^ fnv(&s.view.id) ^ mix(s.placed)),
        });
    }
    k
}

/// Nodes under one partition of the leading attribute spreads.
enum Level {
    /// Partitioned by the value of strategy `index`'s attribute.
    Split {
        index: usize,
        order: BTreeSet<(u64, String)>,
        children: BTreeMap<String, Level>,
    },
    /// A heap of (key, node id, slot index), smallest first.
    Leaf(BinaryHeap<Reverse<(Vec<u64>, String, usize)>>),
}

struct Placer<'a> {
    req: &'a Request,
    slots: Vec<Slot<'a>>,
    counts: Counts,
    /// Strategies before this index are attribute partitions.
    leaf_from: usize,
    /// Why nodes dropped out, by node.
    dropped: BTreeMap<usize, String>,
}

impl<'a> Placer<'a> {
    fn build(&mut self, members: Vec<usize>, depth: usize) -> Level {
        if depth == self.leaf_from {
            let heap = members
                .into_iter()
                .map(|i| {
                    let s = &self.slots[i];
                    Reverse((
                        key(s, self.req, self.leaf_from, &self.counts, self.req.seed),
                        s.view.id.clone(),
                        i,
                    ))
                })
                .collect();
            return Level::Leaf(heap);
        }
        let attr = self.req.strategy[depth].attribute().unwrap_or_default();
        let mut by_value: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in members {
            let v = self.slots[i]
                .view
                .attributes
                .get(attr)
                .cloned()
                .unwrap_or_default();
            by_value.entry(v).or_default().push(i);
        }
        let mut order = BTreeSet::new();
        let mut children = BTreeMap::new();
        for (v, members) in by_value {
            let count = self.counts.get(&(depth, v.clone())).copied().unwrap_or(0);
            order.insert((count, v.clone()));
            children.insert(v, self.build(members, depth + 1));
        }
        Level::Split {
            index: depth,
            order,
            children,
        }
    }

    /// Picks and books a node under `level`; `None` when none can take the task.
    fn pick(&mut self, level: &mut Level) -> Option<usize> {
        match level {
            Level::Leaf(heap) => {
                while let Some(Reverse((k, id, i))) = heap.pop() {
                    if let Some(why) = lacks(&self.slots[i], self.req) {
                        self.dropped.insert(i, why);
                        continue;
                    }
                    let now = key(
                        &self.slots[i],
                        self.req,
                        self.leaf_from,
                        &self.counts,
                        self.req.seed,
                    );
                    if now != k {
                        // A later attribute spread moved on: its count changed elsewhere.
                        heap.push(Reverse((now, id, i)));
                        continue;
                    }
                    self.book(i);
                    let s = &self.slots[i];
                    let next = key(s, self.req, self.leaf_from, &self.counts, self.req.seed);
                    heap.push(Reverse((next, id, i)));
                    return Some(i);
                }
                None
            }
            Level::Split {
                index,
                order,
                children,
            } => {
                let index = *index;
                loop {
                    let (count, value) = order.iter().next().cloned()?;
                    order.remove(&(count, value.clone()));
                    // Counts are per value over the whole cluster: a value met in another
                    // partition may have moved on since this entry was made.
                    let now = self.count(index, &value);
                    if now != count {
                        order.insert((now, value));
                        continue;
                    }
                    let child = children.get_mut(&value)?;
                    if let Some(i) = self.pick(child) {
                        let now = self.count(index, &value);
                        order.insert((now, value));
                        return Some(i);
                    }
                    // Exhausted: this value takes no more tasks.
                }
            }
        }
    }

    fn count(&self, index: usize, value: &str) -> u64 {
        self.counts
            .get(&(index, value.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn book(&mut self, i: usize) {
        let req = self.req;
        let s = &mut self.slots[i];
        s.used.cpu_units += req.need.cpu_units;
        s.used.memory_mib += req.need.memory_mib;
        s.ports.extend(req.ports.iter().copied());
        s.group += 1;
        s.placed += 1;
        for (idx, st) in req.strategy.iter().enumerate() {
            if let Some(a) = st.attribute() {
                let v = s.view.attributes.get(a).cloned().unwrap_or_default();
                *self.counts.entry((idx, v)).or_default() += 1;
            }
        }
    }
}

fn slots<'a>(snap: &'a Snapshot, req: &Request) -> Vec<Slot<'a>> {
    snap.nodes
        .iter()
        .map(|n| Slot {
            view: n,
            used: n.used,
            ports: n.ports.clone(),
            group: n.groups.get(&req.group).copied().unwrap_or(0),
            placed: 0,
        })
        .collect()
}

fn initial_counts(snap: &Snapshot, req: &Request) -> Counts {
    let mut counts = Counts::new();
    for (idx, st) in req.strategy.iter().enumerate() {
        if let Some(a) = st.attribute() {
            for n in &snap.nodes {
                let v = n.attributes.get(a).cloned().unwrap_or_default();
                *counts.entry((idx, v)).or_default() +=
                    n.groups.get(&req.group).copied().unwrap_or(0);
            }
        }
    }
    counts
}

/// Why `node` cannot take one more task of `req` — a static filter (state, `memberOf`) or its
/// room (CPU, memory, host ports, `distinctInstance`) — if it cannot. The plan applier asks this
/// of every node a plan touches, against the state at commit time.
pub fn refusal(node: &NodeView, req: &Request) -> Option<String> {
    excluded(node, req).or_else(|| {
        let slot = Slot {
            view: node,
            used: node.used,
            ports: node.ports.clone(),
            group: node.groups.get(&req.group).copied().unwrap_or(0),
            placed: 0,
        };
        lacks(&slot, req)
    })
}

/// The nodes that pass the static filters (ready, `memberOf`): where a daemon service runs.
pub fn eligible(snap: &Snapshot, req: &Request) -> Vec<String> {
    snap.nodes
        .iter()
        .filter(|n| excluded(n, req).is_none())
        .map(|n| n.id.clone())
        .collect()
}

/// The nodes that are only disconnected and would otherwise be [`eligible`]: a daemon
/// service's task stays on such a node — its loss is decided by the service's `lostAfter`
/// (the control plane's node-loss check), as for any other task — and none starts there.
pub fn disconnected_but_eligible(snap: &Snapshot, req: &Request) -> Vec<String> {
    snap.nodes
        .iter()
        .filter(|n| n.state == NodeState::Disconnected)
        .filter(|n| {
            let connected = NodeView {
                state: NodeState::Ready,
                ..(*n).clone()
            };
            excluded(&connected, req).is_none()
        })
        .map(|n| n.id.clone())
        .collect()
}

/// Places `req.count` tasks: the node of each, in order, or why they do not all fit.
pub fn place(snap: &Snapshot, req: &Request) -> Result<Vec<String>, Unplaceable> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut members = Vec::new();
    for (i, n) in snap.nodes.iter().enumerate() {
        match excluded(n, req) {
            Some(why) => *reasons.entry(why).or_default() += 1,
            None => members.push(i),
        }
    }
    let leaf_from = req
        .strategy
        .iter()
        .take_while(|s| s.attribute().is_some())
        .count();
    let mut placer = Placer {
        req,
        slots: slots(snap, req),
        counts: initial_counts(snap, req),
        leaf_from,
        dropped: BTreeMap::new(),
    };
    let mut root = placer.build(members.clone(), 0);
    let mut out = Vec::with_capacity(req.count);
    while out.len() < req.count {
        match placer.pick(&mut root) {
            Some(i) => out.push(snap.nodes[i].id.clone()),
            None => break,
        }
    }
    if out.len() == req.count {
        return Ok(out);
    }
    // Every candidate is full by now; say what each lacked for one more task.
    let mut port_taken_on = Vec::new();
    for i in members {
        let why = placer
            .dropped
            .get(&i)
            .cloned()
            .or_else(|| lacks(&placer.slots[i], req))
            .unwrap_or_else(|| "could not be reached".into());
        if why.starts_with(PORT_TAKEN) {
            port_taken_on.push(snap.nodes[i].id.clone());
        }
        *reasons.entry(why).or_default() += 1;
    }
    Err(Unplaceable {
        placed: out.len(),
        requested: req.count,
        reasons,
        port_taken_on,
    })
}

/// The same placement by scanning every node for every task: the baseline of the benchmark and
/// the oracle of the tests (same order: attribute spreads by count then value, then the per-node
/// key, then the node id).
pub fn place_naive(snap: &Snapshot, req: &Request) -> Result<Vec<String>, Unplaceable> {
    let mut slots = slots(snap, req);
    let mut counts = initial_counts(snap, req);
    let candidates: Vec<usize> = (0..snap.nodes.len())
        .filter(|i| excluded(&snap.nodes[*i], req).is_none())
        .collect();
    let leaf_from = req
        .strategy
        .iter()
        .take_while(|s| s.attribute().is_some())
        .count();
    let mut out = Vec::new();
    while out.len() < req.count {
        let best = candidates
            .iter()
            .filter(|i| lacks(&slots[**i], req).is_none())
            .map(|i| {
                let s = &slots[*i];
                let mut k: Vec<(u64, String)> = Vec::new();
                for (idx, st) in req.strategy.iter().enumerate().take(leaf_from) {
                    let a = st.attribute().unwrap_or_default();
                    let v = s.view.attributes.get(a).cloned().unwrap_or_default();
                    k.push((counts.get(&(idx, v.clone())).copied().unwrap_or(0), v));
                }
                let rest = key(s, req, leaf_from, &counts, req.seed);
                ((k, rest, s.view.id.clone()), *i)
            })
            .min();
        let Some((_, i)) = best else { break };
        let s = &mut slots[i];
        s.used.cpu_units += req.need.cpu_units;
        s.used.memory_mib += req.need.memory_mib;
        s.ports.extend(req.ports.iter().copied());
        s.group += 1;
        s.placed += 1;
        for (idx, st) in req.strategy.iter().enumerate() {
            if let Some(a) = st.attribute() {
                let v = s.view.attributes.get(a).cloned().unwrap_or_default();
                *counts.entry((idx, v)).or_default() += 1;
            }
        }
        out.push(snap.nodes[i].id.clone());
    }
    if out.len() == req.count {
        Ok(out)
    } else {
        Err(Unplaceable {
            placed: out.len(),
            requested: req.count,
            reasons: BTreeMap::new(),
            port_taken_on: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;
