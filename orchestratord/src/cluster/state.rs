//! The cluster's records in memory, and the transaction a command runs in.
//!
//! [`State`] holds every record of the store (loaded once when the core starts) with the
//! indexes the core asks by: live tasks per node, every task per node and per `startedBy`
//! group, every task by `(created_at, id)`. A command never
//! changes it directly: it reads and writes through a [`Txn`], an overlay of its own writes on
//! the state. When the command succeeds its writes are committed to the store in one
//! transaction and only then applied to the state; when it fails (a refusal, a store error)
//! they are dropped and the state is as it was.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ipnet::Ipv4Net;

use flotilla_api::images::StoredImage;
use flotilla_api::ops::{Event, EventFilter, TaskDefRevision, TaskDefStatus};

use super::records::{
    ConfigRecord, NodeRecord, Origin, Record, RegistryMark, ScalingRecord, ScheduleRecord,
    SecretRecord, ServiceRecord, TaskRecord, TokenRecord,
};
use super::store::{Changes, Loaded, Writes};

/// Events kept; older ones are dropped as new ones come.
pub const MAX_EVENTS: u64 = 10_000;

/// Every record, with indexes.
#[derive(Debug, Default)]
pub struct State {
    tokens: BTreeMap<String, TokenRecord>,
    nodes: BTreeMap<String, NodeRecord>,
    taskdefs: BTreeMap<(String, u32), TaskDefRevision>,
    tasks: BTreeMap<String, TaskRecord>,
    services: BTreeMap<String, ServiceRecord>,
    schedules: BTreeMap<String, ScheduleRecord>,
    scaling: BTreeMap<String, ScalingRecord>,
    secrets: BTreeMap<String, SecretRecord>,
    configs: BTreeMap<String, ConfigRecord>,
    images: BTreeMap<String, StoredImage>,
    registry: BTreeMap<String, RegistryMark>,
    events: VecDeque<Event>,
    last_event: u64,
    max_events: u64,
    /// Node → its tasks that are not `STOPPED`.
    live_by_node: HashMap<String, BTreeSet<String>>,
    /// `startedBy` → every task it started.
    by_group: HashMap<String, BTreeSet<String>>,
    /// Node → every task placed on it, stopped ones too (`GET /v1/tasks?node=`).
    placed_on: HashMap<String, BTreeSet<String>>,
    /// Every task by `(created_at, id)`: the order `GET /v1/tasks` lists and pages in.
    by_created: BTreeSet<(u64, String)>,
    /// Bridge subnet → how many node records hold it (one: allocation keeps them unique).
    bridge_subnets: BTreeMap<Ipv4Net, u32>,
    /// `(pool, prefix, i)`: every subnet of `pool` in `/prefix`s below the `i`-th is held in
    /// the state — where the search for the lowest free one starts (forgotten when a subnet is
    /// given back).
    bridge_held_below: Cell<Option<(Ipv4Net, u8, u32)>>,
}

fn keyed<R: Record>(rows: Vec<R>) -> BTreeMap<R::Key, R> {
    rows.into_iter().map(|r| (r.key(), r)).collect()
}

impl State {
    /// The state of a loaded store.
    pub fn new(loaded: Loaded) -> Self {
        let mut s = Self {
            tokens: keyed(loaded.tokens),
            nodes: keyed(loaded.nodes),
            taskdefs: keyed(loaded.taskdefs),
            services: keyed(loaded.services),
            schedules: keyed(loaded.schedules),
            scaling: keyed(loaded.scaling),
            secrets: keyed(loaded.secrets),
            configs: keyed(loaded.configs),
            images: keyed(loaded.images),
            registry: keyed(loaded.registry),
            last_event: loaded.events.last().map_or(0, |e| e.seq),
            events: loaded.events.into(),
            max_events: MAX_EVENTS,
            ..Self::default()
        };
        for n in s.nodes.values() {
            if let Some(b) = n.bridge_subnet {
                *s.bridge_subnets.entry(b).or_default() += 1;
            }
        }
        for mut t in loaded.tasks {
            t.upgrade();
            s.index_task(None, Some(&t));
            s.tasks.insert(t.info.id.clone(), t);
        }
        s
    }

    /// Keeps only the last `n` events (tests of the event window).
    #[cfg(test)]
    pub fn set_max_events(&mut self, n: u64) {
        self.max_events = n;
    }

    fn index_task(&mut self, old: Option<&TaskRecord>, new: Option<&TaskRecord>) {
        if let Some(o) = old {
            self.by_created
                .remove(&(o.info.created_at, o.info.id.clone()));
            if let Some(n) = &o.info.node {
                if let Some(set) = self.placed_on.get_mut(n) {
                    set.remove(&o.info.id);
                    if set.is_empty() {
                        self.placed_on.remove(n);
                    }
                }
            }
            if let Some(n) = o.node() {
                if let Some(set) = self.live_by_node.get_mut(n) {
                    set.remove(&o.info.id);
                    if set.is_empty() {
                        self.live_by_node.remove(n);
                    }
                }
            }
            if let Some(g) = &o.info.started_by {
                if let Some(set) = self.by_group.get_mut(g) {
                    set.remove(&o.info.id);
                    if set.is_empty() {
                        self.by_group.remove(g);
                    }
                }
            }
        }
        if let Some(t) = new {
            self.by_created
                .insert((t.info.created_at, t.info.id.clone()));
            if let Some(n) = &t.info.node {
                self.placed_on
                    .entry(n.clone())
                    .or_default()
                    .insert(t.info.id.clone());
            }
            if let (Some(n), true) = (t.node(), t.is_live()) {
                self.live_by_node
                    .entry(n.to_string())
                    .or_default()
                    .insert(t.info.id.clone());
            }
            if let Some(g) = &t.info.started_by {
                self.by_group
                    .entry(g.clone())
                    .or_default()
                    .insert(t.info.id.clone());
            }
        }
    }

    /// Applies committed writes.
    pub fn apply(&mut self, w: Writes) {
        fn put<R: Record>(rows: &mut BTreeMap<R::Key, R>, changes: Changes<R>) {
            for (k, v) in changes {
                match v {
                    Some(r) => rows.insert(k, r),
                    None => rows.remove(&k),
                };
            }
        }
        put(&mut self.tokens, w.tokens);
        for (id, new) in &w.nodes {
            let old = self.nodes.get(id).and_then(|n| n.bridge_subnet);
            let new = new.as_ref().and_then(|n| n.bridge_subnet);
            if old == new {
                continue;
            }
            if let Some(o) = old {
                if let Some(c) = self.bridge_subnets.get_mut(&o) {
                    *c -= 1;
                    if *c == 0 {
                        self.bridge_subnets.remove(&o);
                        self.bridge_held_below.set(None);
                    }
                }
            }
            if let Some(n) = new {
                *self.bridge_subnets.entry(n).or_default() += 1;
            }
        }
        put(&mut self.nodes, w.nodes);
        put(&mut self.taskdefs, w.taskdefs);
        put(&mut self.services, w.services);
        put(&mut self.schedules, w.schedules);
        put(&mut self.scaling, w.scaling);
        put(&mut self.secrets, w.secrets);
        put(&mut self.configs, w.configs);
        put(&mut self.images, w.images);
        put(&mut self.registry, w.registry);
        for (id, new) in w.tasks {
            let old = self.tasks.remove(&id);
            self.index_task(old.as_ref(), new.as_ref());
            if let Some(t) = new {
                self.tasks.insert(id, t);
            }
        }
        for e in w.events {
            self.last_event = e.seq;
            self.events.push_back(e);
        }
        if let Some(from) = w.events_from {
            while self.events.front().is_some_and(|e| e.seq < from) {
                self.events.pop_front();
            }
        }
    }
}

/// Reads a table through an overlay: the overlay's entry (a record or a removal) wins.
fn get<'a, K, V, Q>(base: &'a BTreeMap<K, V>, w: &'a BTreeMap<K, Option<V>>, k: &Q) -> Option<&'a V>
where
    K: Ord + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
{
    match w.get(k) {
        Some(v) => v.as_ref(),
        None => base.get(k),
    }
}

/// The ids of an index of the state and of its overlay's part (`Txn::w_by_node`,
/// `Txn::w_by_group`), each once, in order: a merge of the two sorted sets, nothing collected.
/// The overlay's part only grows (a task written away from a node or removed stays in it), so
/// a caller reads each id's record and filters.
fn union<'a>(
    base: Option<&'a BTreeSet<String>>,
    written: Option<&'a BTreeSet<String>>,
) -> impl Iterator<Item = &'a String> + 'a {
    let mut base = base.into_iter().flatten().peekable();
    let mut written = written.into_iter().flatten().peekable();
    std::iter::from_fn(move || match (base.peek(), written.peek()) {
        (Some(b), Some(w)) if w < b => written.next(),
        (Some(b), Some(w)) if w == b => {
            written.next();
            base.next()
        }
        (Some(_), _) => base.next(),
        (None, _) => written.next(),
    })
}

/// Every record of a table through an overlay, in key order.
fn merged<'a, K: Ord + 'a, V: 'a>(
    base: impl Iterator<Item = (&'a K, &'a V)>,
    w: impl Iterator<Item = (&'a K, &'a Option<V>)>,
) -> Vec<&'a V> {
    let mut base = base.peekable();
    let mut w = w.peekable();
    let mut out = Vec::new();
    loop {
        match (base.peek(), w.peek()) {
            (None, None) => return out,
            (Some(_), None) => out.extend(base.by_ref().map(|(_, v)| v)),
            (None, Some(_)) => out.extend(w.by_ref().filter_map(|(_, v)| v.as_ref())),
            (Some((bk, _)), Some((wk, _))) => match bk.cmp(wk) {
                std::cmp::Ordering::Less => out.extend(base.next().map(|(_, v)| v)),
                std::cmp::Ordering::Greater => out.extend(w.next().and_then(|(_, v)| v.as_ref())),
                std::cmp::Ordering::Equal => {
                    base.next();
                    out.extend(w.next().and_then(|(_, v)| v.as_ref()))
                }
            },
        }
    }
}

/// One command's view of the state: its own writes over the state.
#[derive(Debug)]
pub struct Txn<'s> {
    base: &'s State,
    w: Writes,
    next_event: u64,
    /// Tasks written, by node and by `startedBy` (the overlay's part of the indexes).
    w_by_node: HashMap<String, BTreeSet<String>>,
    w_by_group: HashMap<String, BTreeSet<String>>,
    /// Writes so far touching each node (its record, or a task on it): what a view of the node
    /// computed earlier in the command is still good for.
    node_writes: HashMap<String, u64>,
}

impl<'s> Txn<'s> {
    /// A transaction over `base`, with nothing written yet.
    pub fn new(base: &'s State) -> Self {
        Self {
            base,
            w: Writes::default(),
            next_event: base.last_event + 1,
            w_by_node: HashMap::new(),
            w_by_group: HashMap::new(),
            node_writes: HashMap::new(),
        }
    }

    /// The state under this transaction (what it was before the command).
    pub fn base(&self) -> &'s State {
        self.base
    }

    /// Its writes, to commit.
    pub fn into_writes(self) -> Writes {
        self.w
    }

    // ---- tokens

    /// A token.
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        get(&self.base.tokens, &self.w.tokens, id)
    }

    /// Every token, by id.
    pub fn tokens(&self) -> Vec<&TokenRecord> {
        merged(self.base.tokens.iter(), self.w.tokens.iter())
    }

    /// Stores a token.
    pub fn put_token(&mut self, t: TokenRecord) {
        self.w.tokens.insert(t.id.clone(), Some(t));
    }

    /// Removes a token.
    pub fn remove_token(&mut self, id: &str) {
        self.w.tokens.insert(id.to_string(), None);
    }

    // ---- nodes

    /// A node.
    pub fn node(&self, id: &str) -> Option<&NodeRecord> {
        get(&self.base.nodes, &self.w.nodes, id)
    }

    /// Every node, by id.
    pub fn nodes(&self) -> Vec<&NodeRecord> {
        merged(self.base.nodes.iter(), self.w.nodes.iter())
    }

    /// Stores a node.
    pub fn put_node(&mut self, n: NodeRecord) {
        *self.node_writes.entry(n.id.clone()).or_default() += 1;
        self.w.nodes.insert(n.id.clone(), Some(n));
    }

    /// How many writes of this command touched node `id` so far (its record or a task on it).
    pub fn node_writes(&self, id: &str) -> u64 {
        self.node_writes.get(id).copied().unwrap_or(0)
    }

    /// The lowest subnet of `pool` in `/prefix`s that no node holds (in this transaction
    /// too), or `None` when every one is held. Logarithmic in the number of nodes (amortized):
    /// the state indexes the held subnets and remembers below which all are held.
    pub fn lowest_free_bridge_subnet(&self, pool: Ipv4Net, prefix: u8) -> Option<Ipv4Net> {
        let base = self.base;
        let nth = |i: u32| flotilla_api::ipam::nth_subnet(pool, prefix, i);
        let mut i = match base.bridge_held_below.get() {
            Some((p, l, i)) if p == pool && l == prefix => i,
            _ => 0,
        };
        while nth(i).is_some_and(|s| base.bridge_subnets.contains_key(&s)) {
            i += 1;
        }
        base.bridge_held_below.set(Some((pool, prefix, i)));
        // This command's own writes: subnets it gave nodes, and subnets of the state it took
        // back (which may lie below `i`).
        let mut given = BTreeSet::new();
        let mut taken_back: BTreeMap<Ipv4Net, u32> = BTreeMap::new();
        for (id, new) in &self.w.nodes {
            let old = base.nodes.get(id).and_then(|n| n.bridge_subnet);
            let new = new.as_ref().and_then(|n| n.bridge_subnet);
            if old != new {
                given.extend(new);
                if let Some(o) = old {
                    *taken_back.entry(o).or_default() += 1;
                }
            }
        }
        let held = |s: &Ipv4Net| {
            given.contains(s)
                || base
                    .bridge_subnets
                    .get(s)
                    .is_some_and(|c| *c > taken_back.get(s).copied().unwrap_or(0))
        };
        let in_pool = |s: &Ipv4Net| s.prefix_len() == prefix && pool.contains(s);
        let freed = taken_back.keys().filter(|s| in_pool(s) && !held(s)).min();
        let scanned = (i..).map_while(nth).find(|s| !held(s));
        match (freed, scanned) {
            (Some(f), Some(s)) => Some((*f).min(s)),
            (f, s) => f.copied().or(s),
        }
    }

    /// Removes a node.
    pub fn remove_node(&mut self, id: &str) {
        *self.node_writes.entry(id.to_string()).or_default() += 1;
        self.w.nodes.insert(id.to_string(), None);
    }

    // ---- task definitions

    /// One revision, or the newest active one of a family when `revision` is `None`.
    pub fn taskdef(&self, family: &str, revision: Option<u32>) -> Option<&TaskDefRevision> {
        match revision {
            Some(r) => get(
                &self.base.taskdefs,
                &self.w.taskdefs,
                &(family.to_string(), r),
            ),
            None => self
                .revisions(family)
                .into_iter()
                .rfind(|t| t.status == TaskDefStatus::Active),
        }
    }

    /// Every revision of a family, oldest first.
    pub fn revisions(&self, family: &str) -> Vec<&TaskDefRevision> {
        let range = (family.to_string(), 0)..=(family.to_string(), u32::MAX);
        merged(
            self.base.taskdefs.range(range.clone()),
            self.w.taskdefs.range(range),
        )
    }

    /// Every revision of every family, in order.
    pub fn taskdefs(&self) -> Vec<&TaskDefRevision> {
        merged(self.base.taskdefs.iter(), self.w.taskdefs.iter())
    }

    /// Stores a revision.
    pub fn put_taskdef(&mut self, t: TaskDefRevision) {
        self.w.taskdefs.insert(t.key(), Some(t));
    }

    // ---- tasks

    /// A task.
    pub fn task(&self, id: &str) -> Option<&TaskRecord> {
        get(&self.base.tasks, &self.w.tasks, id)
    }

    /// Every task, by id.
    pub fn tasks(&self) -> Vec<&TaskRecord> {
        merged(self.base.tasks.iter(), self.w.tasks.iter())
    }

    /// Every task after `after` in the order of `(created_at, id)` (from the first when
    /// `None`), read from the state's index as it is needed (merged with this command's own
    /// writes): a page of k costs O(log n + k) when every task read matches.
    pub fn tasks_by_created(
        &self,
        after: Option<(u64, &str)>,
    ) -> impl Iterator<Item = &TaskRecord> + '_ {
        let key = |t: &TaskRecord| (t.info.created_at, t.info.id.clone());
        let from = match after {
            Some((at, id)) => std::ops::Bound::Excluded((at, id.to_string())),
            None => std::ops::Bound::Unbounded,
        };
        let w = &self.w.tasks;
        let base = self
            .base
            .by_created
            .range((from.clone(), std::ops::Bound::Unbounded))
            .filter(move |(_, id)| !w.contains_key(id))
            .filter_map(|(_, id)| self.base.tasks.get(id));
        let mut written: Vec<&TaskRecord> = w
            .values()
            .flatten()
            .filter(|t| match &from {
                std::ops::Bound::Excluded(a) => key(t) > *a,
                _ => true,
            })
            .collect();
        written.sort_by_key(|t| key(t));
        let mut base = base.peekable();
        let mut written = written.into_iter().peekable();
        std::iter::from_fn(move || match (base.peek(), written.peek()) {
            (Some(b), Some(w)) if key(w) < key(b) => written.next(),
            (Some(_), _) => base.next(),
            (None, _) => written.next(),
        })
    }

    /// The tasks of node `node` that are not `STOPPED`, by id.
    pub fn live_tasks_on(&self, node: &str) -> Vec<&TaskRecord> {
        union(self.base.live_by_node.get(node), self.w_by_node.get(node))
            .filter_map(|id| self.task(id))
            .filter(|t| t.is_live() && t.node() == Some(node))
            .collect()
    }

    /// Every task placed on node `node`, stopped ones too, by id.
    pub fn tasks_placed_on(&self, node: &str) -> Vec<&TaskRecord> {
        union(self.base.placed_on.get(node), self.w_by_node.get(node))
            .filter_map(|id| self.task(id))
            .filter(|t| t.info.node.as_deref() == Some(node))
            .collect()
    }

    /// Every task `started_by` started, by id.
    pub fn tasks_of(&self, started_by: &str) -> Vec<&TaskRecord> {
        union(
            self.base.by_group.get(started_by),
            self.w_by_group.get(started_by),
        )
        .filter_map(|id| self.task(id))
        .filter(|t| t.info.started_by.as_deref() == Some(started_by))
        .collect()
    }

    /// Stores a task.
    pub fn put_task(&mut self, t: TaskRecord) {
        let old = self.task(&t.info.id).and_then(|o| o.info.node.clone());
        for n in old.iter().map(String::as_str).chain(t.node()) {
            *self.node_writes.entry(n.to_string()).or_default() += 1;
        }
        if let Some(n) = t.node() {
            self.w_by_node
                .entry(n.to_string())
                .or_default()
                .insert(t.info.id.clone());
        }
        if let Some(g) = &t.info.started_by {
            self.w_by_group
                .entry(g.clone())
                .or_default()
                .insert(t.info.id.clone());
        }
        self.w.tasks.insert(t.info.id.clone(), Some(t));
    }

    /// Removes a task's record (a `STOPPED` one past its retention).
    pub fn remove_task(&mut self, id: &str) {
        if let Some(n) = self.task(id).and_then(|t| t.info.node.clone()) {
            *self.node_writes.entry(n).or_default() += 1;
        }
        self.w.tasks.insert(id.to_string(), None);
    }

    /// Gives every task this transaction wrote `STOPPED` without a time of stopping `now`
    /// (seconds since the epoch): what its retention counts from. Once per command, before
    /// the commit, so that every path that stops a task is covered.
    pub fn stamp_stopped(&mut self, now: u64) {
        for t in self.w.tasks.values_mut().flatten() {
            if t.info.state == flotilla_api::tasks::TaskState::Stopped && t.stopped_at.is_none() {
                t.stopped_at = Some(now);
            }
        }
    }

    // ---- services

    /// A service.
    pub fn service(&self, name: &str) -> Option<&ServiceRecord> {
        get(&self.base.services, &self.w.services, name)
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<&ServiceRecord> {
        merged(self.base.services.iter(), self.w.services.iter())
    }

    /// Stores a service.
    pub fn put_service(&mut self, s: ServiceRecord) {
        self.w.services.insert(s.key(), Some(s));
    }

    /// Removes a service.
    pub fn remove_service(&mut self, name: &str) {
        self.w.services.insert(name.to_string(), None);
    }

    // ---- schedules

    /// A schedule.
    pub fn schedule(&self, name: &str) -> Option<&ScheduleRecord> {
        get(&self.base.schedules, &self.w.schedules, name)
    }

    /// Every schedule, by name.
    pub fn schedules(&self) -> Vec<&ScheduleRecord> {
        merged(self.base.schedules.iter(), self.w.schedules.iter())
    }

    /// Stores a schedule.
    pub fn put_schedule(&mut self, s: ScheduleRecord) {
        self.w.schedules.insert(s.key(), Some(s));
    }

    /// Removes a schedule.
    pub fn remove_schedule(&mut self, name: &str) {
        self.w.schedules.insert(name.to_string(), None);
    }

    // ---- auto scaling

    /// A service's auto scaling.
    pub fn scaling(&self, service: &str) -> Option<&ScalingRecord> {
        get(&self.base.scaling, &self.w.scaling, service)
    }

    /// Every service's auto scaling, by service.
    pub fn scalings(&self) -> Vec<&ScalingRecord> {
        merged(self.base.scaling.iter(), self.w.scaling.iter())
    }

    /// Stores a service's auto scaling.
    pub fn put_scaling(&mut self, s: ScalingRecord) {
        self.w.scaling.insert(s.key(), Some(s));
    }

    /// Removes a service's auto scaling.
    pub fn remove_scaling(&mut self, service: &str) {
        self.w.scaling.insert(service.to_string(), None);
    }

    // ---- secrets

    /// A secret.
    pub fn secret(&self, name: &str) -> Option<&SecretRecord> {
        get(&self.base.secrets, &self.w.secrets, name)
    }

    /// Every secret, by name.
    pub fn secrets(&self) -> Vec<&SecretRecord> {
        merged(self.base.secrets.iter(), self.w.secrets.iter())
    }

    /// Stores a secret.
    pub fn put_secret(&mut self, s: SecretRecord) {
        self.w.secrets.insert(s.key(), Some(s));
    }

    // ---- the discovery registry's mark

    /// The discovery registry's version and digest, as last numbered.
    pub fn registry_mark(&self) -> Option<&RegistryMark> {
        get(&self.base.registry, &self.w.registry, RegistryMark::KEY)
    }

    /// Keeps the discovery registry's version and digest.
    pub fn put_registry_mark(&mut self, m: RegistryMark) {
        self.w.registry.insert(m.key(), Some(m));
    }

    // ---- configs

    /// A config.
    pub fn config(&self, name: &str) -> Option<&ConfigRecord> {
        get(&self.base.configs, &self.w.configs, name)
    }

    /// Every config, by name.
    pub fn configs(&self) -> Vec<&ConfigRecord> {
        merged(self.base.configs.iter(), self.w.configs.iter())
    }

    /// Stores a config.
    pub fn put_config(&mut self, c: ConfigRecord) {
        self.w.configs.insert(c.key(), Some(c));
    }

    // ---- images

    /// An image of the content store, by canonical name.
    pub fn image(&self, name: &str) -> Option<&StoredImage> {
        get(&self.base.images, &self.w.images, name)
    }

    /// Every image of the content store, by name.
    pub fn images(&self) -> Vec<&StoredImage> {
        merged(self.base.images.iter(), self.w.images.iter())
    }

    /// Stores an image (replacing one of the same name).
    pub fn put_image(&mut self, i: StoredImage) {
        self.w.images.insert(i.key(), Some(i));
    }

    /// Removes an image.
    pub fn remove_image(&mut self, name: &str) {
        self.w.images.insert(name.to_string(), None);
    }

    // ---- events

    /// Appends an event, committed with the change it describes.
    pub fn event(&mut self, time: u64, kind: &str, subject: &str, message: String) {
        let seq = self.next_event;
        self.next_event += 1;
        self.w.events.push(Event {
            seq,
            time,
            kind: kind.to_string(),
            subject: subject.to_string(),
            message,
        });
        if seq > self.base.max_events {
            self.w.events_from = Some(seq + 1 - self.base.max_events);
        }
    }

    /// Events after `since`, oldest first, at most `limit`.
    pub fn events(&self, since: u64, limit: usize, filter: &EventFilter) -> Vec<Event> {
        self.base
            .events
            .iter()
            .chain(&self.w.events)
            .filter(|e| e.seq > since && filter.matches(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Nodes whose desired state this transaction may have changed: the nodes of tasks and
    /// pinned schedules it wrote (before and after), nodes it wrote, and the nodes running
    /// tasks of services it wrote.
    pub fn touched_nodes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (id, new) in &self.w.tasks {
            out.extend(self.base.tasks.get(id).and_then(|t| t.info.node.clone()));
            out.extend(new.as_ref().and_then(|t| t.info.node.clone()));
        }
        for (name, new) in &self.w.schedules {
            out.extend(
                self.base
                    .schedules
                    .get(name)
                    .and_then(|s| s.spec.node.clone()),
            );
            out.extend(new.as_ref().and_then(|s| s.spec.node.clone()));
        }
        out.extend(self.w.nodes.keys().cloned());
        for name in self.w.services.keys() {
            let group = Origin::Service(name.clone()).started_by();
            for t in self.tasks_of(&group) {
                if t.is_live() {
                    out.extend(t.info.node.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: id.into(),
            labels: Default::default(),
            joined_at: 0,
            token_id: "t".into(),
            cert_not_after: 0,
            revoked: false,
            generation: 0,
            draining: false,
            bridge_subnet: None,
            address: None,
            capacity: None,
        }
    }

    #[test]
    fn a_transaction_reads_its_own_writes_over_the_state_and_changes_nothing_until_applied() {
        let mut state = State::new(Loaded {
            nodes: vec![node("a"), node("b"), node("d")],
            ..Loaded::default()
        });
        let mut txn = Txn::new(&state);
        txn.put_node(node("c"));
        txn.remove_node("b");
        let mut d = node("d");
        d.draining = true;
        txn.put_node(d);
        let ids: Vec<&str> = txn.nodes().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "d"]);
        assert!(txn.node("d").is_some_and(|n| n.draining));
        assert!(txn.node("b").is_none());
        assert_eq!(Txn::new(&state).nodes().len(), 3, "the state is untouched");
        let w = txn.into_writes();
        state.apply(w);
        let txn = Txn::new(&state);
        let ids: Vec<&str> = txn.nodes().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "d"]);
    }

    #[test]
    fn events_are_numbered_and_only_the_window_is_kept() {
        let mut state = State::new(Loaded::default());
        state.set_max_events(5);
        for i in 0..8 {
            let mut txn = Txn::new(&state);
            txn.event(100 + i, "k", "s", format!("m{i}"));
            let w = txn.into_writes();
            assert_eq!(w.events[0].seq, i + 1);
            state.apply(w);
        }
        let txn = Txn::new(&state);
        let all: Vec<u64> = txn
            .events(0, 100, &EventFilter::default())
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(all, [4, 5, 6, 7, 8]);
        let page: Vec<String> = txn
            .events(5, 2, &EventFilter::default())
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(page, ["m5", "m6"]);
    }

    /// Task `id` of `group` on `node`, `STOPPED` or not.
    fn task(id: &str, group: Option<&str>, node: Option<&str>, live: bool) -> TaskRecord {
        let definition = flotilla_api::taskdef::parse(
            r#"{"family": "f", "containerDefinitions": [{"name": "c", "image": "i", "memory": 8}]}"#,
        )
        .expect("valid")
        .definition;
        let mut t = TaskRecord::placed(id.into(), "f:1".into(), definition, "", 0);
        t.info.node = node.map(Into::into);
        t.info.started_by = group.map(Into::into);
        t.info.state = if live {
            flotilla_api::tasks::TaskState::Running
        } else {
            flotilla_api::tasks::TaskState::Stopped
        };
        t
    }

    #[test]
    fn a_group_s_and_a_node_s_tasks_are_those_a_scan_of_every_task_finds() {
        let groups = [None, Some("service:a"), Some("service:b")];
        let nodes = [None, Some("n-1"), Some("n-2"), Some("n-3")];
        let mut rng = 11u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize
        };
        let mut state = State::new(Loaded::default());
        for step in 0..200 {
            let mut txn = Txn::new(&state);
            // A few writes: new tasks, tasks moved or stopped, tasks removed (in any order of
            // ids, so that the two indexes interleave).
            for _ in 0..1 + next() % 6 {
                let id = format!("t-{:02}", next() % 40);
                match next() % 4 {
                    0 => txn.remove_task(&id),
                    _ => txn.put_task(task(
                        &id,
                        groups[next() % groups.len()],
                        nodes[next() % nodes.len()],
                        next() % 3 != 0,
                    )),
                }
                let ids = |ts: Vec<&TaskRecord>| -> Vec<String> {
                    ts.iter().map(|t| t.info.id.clone()).collect()
                };
                for g in groups.iter().flatten() {
                    let scanned = txn
                        .tasks()
                        .into_iter()
                        .filter(|t| t.info.started_by.as_deref() == Some(g))
                        .collect();
                    assert_eq!(ids(txn.tasks_of(g)), ids(scanned), "step {step}, {g}");
                }
                for n in nodes.iter().flatten() {
                    let on = |t: &&TaskRecord| t.info.node.as_deref() == Some(n);
                    let placed = txn.tasks().into_iter().filter(on).collect();
                    assert_eq!(ids(txn.tasks_placed_on(n)), ids(placed), "step {step}, {n}");
                    let live = txn.tasks().into_iter().filter(on).filter(|t| t.is_live());
                    assert_eq!(
                        ids(txn.live_tasks_on(n)),
                        ids(live.collect()),
                        "step {step}, {n}"
                    );
                }
            }
            if next() % 5 != 0 {
                state.apply(txn.into_writes());
            }
        }
    }

    /// The lowest free subnet as the scan over every node found it before the index.
    fn scanned(txn: &Txn<'_>, pool: Ipv4Net, prefix: u8) -> Option<Ipv4Net> {
        let used: BTreeSet<Ipv4Net> = txn.nodes().iter().filter_map(|n| n.bridge_subnet).collect();
        (0u32..)
            .map_while(|i| flotilla_api::ipam::nth_subnet(pool, prefix, i))
            .find(|s| !used.contains(s))
    }

    #[test]
    fn the_lowest_free_bridge_subnet_is_the_one_a_scan_of_every_node_finds() {
        let pool: Ipv4Net = "10.42.0.0/22".parse().expect("pool");
        let with = |id: &str, s: Option<&str>| {
            let mut n = node(id);
            n.bridge_subnet = s.map(|s| s.parse().expect("subnet"));
            n
        };
        // Loaded with a hole (10.42.1.0/24 is free) and a subnet of another pool.
        let mut state = State::new(Loaded {
            nodes: vec![
                with("a", Some("10.42.0.0/24")),
                with("b", Some("10.42.2.0/24")),
                with("x", Some("192.168.9.0/24")),
                with("y", None),
            ],
            ..Loaded::default()
        });
        // A deterministic sequence of joins, removals and changes, each in its own command
        // (some with several writes), compared with the scan at every step.
        let mut rng = 7u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        for step in 0..300 {
            let mut txn = Txn::new(&state);
            for _ in 0..1 + next() % 3 {
                let ids: Vec<String> = txn.nodes().iter().map(|n| n.id.clone()).collect();
                match next() % 4 {
                    0 if !ids.is_empty() => {
                        let id = &ids[next() as usize % ids.len()];
                        txn.remove_node(id);
                    }
                    1 if !ids.is_empty() => {
                        let id = ids[next() as usize % ids.len()].clone();
                        let mut n = txn.node(&id).cloned().expect("node");
                        n.bridge_subnet = None;
                        txn.put_node(n);
                    }
                    _ => {
                        let expected = scanned(&txn, pool, 24);
                        let got = txn.lowest_free_bridge_subnet(pool, 24);
                        assert_eq!(got, expected, "step {step}");
                        txn.put_node(with(&format!("n{step}-{}", next()), None));
                        if let Some(s) = got {
                            let mut n = node(&format!("m{step}-{}", next()));
                            n.bridge_subnet = Some(s);
                            txn.put_node(n);
                        }
                    }
                }
                assert_eq!(
                    txn.lowest_free_bridge_subnet(pool, 24),
                    scanned(&txn, pool, 24),
                    "step {step}"
                );
            }
            // A failed command's writes are dropped; the others are applied.
            if next() % 5 != 0 {
                state.apply(txn.into_writes());
            }
            let txn = Txn::new(&state);
            assert_eq!(
                txn.lowest_free_bridge_subnet(pool, 24),
                scanned(&txn, pool, 24),
                "step {step}"
            );
            // Another pool or prefix (the settings changed) starts its own search.
            assert_eq!(
                txn.lowest_free_bridge_subnet(pool, 25),
                scanned(&txn, pool, 25),
                "step {step}"
            );
        }
    }
}
