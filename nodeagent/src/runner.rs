//! The node's task runner: holds the desired state (persisted in `<data-dir>/agent.redb` before
//! it is acknowledged), and converges the node to it on its own — with or without a session —
//! through the reconciler and the container runtime. Containers of a task are named
//! `<task id>-<index in the definition>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use flotilla_api::taskdef::{ContainerDefinition, NetworkMode as TaskNetwork, TaskDefinition};
use flotilla_api::tasks::{DesiredState, TaskState, TaskStatus, TaskUsage};
use flotilla_runtime::container::{
    ContainerConfig, ContainerStore, MountRequest, NetworkMode, Resources, Ulimit,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::{watch, Notify};

use crate::health::Health;
use crate::reconcile::{plan, Action, Observed, Restarts, World};
use crate::runtime::{task_volume, ContainerName, ContainerRuntime, RunState};
use crate::schedule::LocalTask;

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const DESIRED_KEY: &str = "desired";
/// Runs of this node's schedules, and each schedule's last firing.
const LOCAL_KEY: &str = "local";
const FIRED_KEY: &str = "fired";
/// How often the node re-checks its containers without being told.
const RESYNC: Duration = Duration::from_secs(1);

/// The runner shared by the session and the reconcile loop.
#[derive(Debug)]
pub struct Runner {
    db: Arc<Database>,
    /// Task networks.
    networks: Arc<crate::network::Networks>,
    /// The node's DNS and the discovery registry.
    dns: Arc<crate::dns::Dns>,
    desired: Mutex<DesiredState>,
    wake: Notify,
    /// The node's store: images (pulls), health checks and logs.
    store: ContainerStore,
    /// The containers of tasks: observed, run, stopped and removed through it.
    runtime: Arc<dyn ContainerRuntime>,
    /// Start failures: (task, container) → why and when, until the task leaves the desired
    /// state or the container is restarted.
    failures: Mutex<BTreeMap<(String, String), (String, Instant)>>,
    /// Health checks of running containers.
    checks: Arc<crate::health::Checks>,
    /// Restarts by restart policy so far (kept in memory: after an agent restart, backoff
    /// starts over).
    restarts: Mutex<Restarts>,
    status: watch::Sender<Vec<TaskStatus>>,
    /// When the last round ended (`None` before the first).
    rounds: watch::Sender<Option<std::time::Instant>>,
    /// This node's id (scheduled runs' ids derive from it).
    node_id: String,
    /// Tasks this node started by its schedules, and their last firings (persisted).
    local: Mutex<(Vec<LocalTask>, BTreeMap<String, u64>)>,
    /// Since when the node has no session (`None` while it has one).
    offline_since: Mutex<Option<Instant>>,
    /// Tasks the node stopped itself after `stopOnClientAfter`, and why: they stay stopped
    /// until the control plane has taken note (they leave the desired state).
    self_stopped: Mutex<BTreeMap<String, String>>,
    /// The last status of each stopped task that still had its containers: once they are
    /// removed, this is what is reported (exit codes and all).
    stopped: Mutex<BTreeMap<String, TaskStatus>>,
}

impl Runner {
    /// Opens the runner's state under `data_dir`; the desired state persisted there (if any)
    /// is what the node converges to until the control plane says otherwise.
    pub fn open(
        data_dir: &Path,
        store: ContainerStore,
        runtime: Arc<dyn ContainerRuntime>,
        node_id: &str,
        net: crate::network::Settings,
    ) -> Result<Arc<Self>> {
        let path = data_dir.join("agent.redb");
        let db = Arc::new(
            Database::create(&path).with_context(|| format!("opening {}", path.display()))?,
        );
        let dns = crate::dns::Dns::open(
            db.clone(),
            tokio::runtime::Handle::current(),
            net.dns_upstreams.clone(),
        )?;
        let networks = Arc::new(crate::network::Networks::open(
            db.clone(),
            data_dir,
            net,
            Some(dns.clone()),
            node_id,
        )?);
        let w = db.begin_write()?;
        w.open_table(STATE)?;
        w.commit()?;
        let desired = {
            let r = db.begin_read()?;
            let t = r.open_table(STATE)?;
            match t.get(DESIRED_KEY)? {
                Some(v) => {
                    serde_json::from_slice(v.value()).context("the persisted desired state")?
                }
                None => DesiredState::default(),
            }
        };
        let local = {
            let r = db.begin_read()?;
            let t = r.open_table(STATE)?;
            let tasks: Vec<LocalTask> = match t.get(LOCAL_KEY)? {
                Some(v) => {
                    serde_json::from_slice(v.value()).context("the persisted local tasks")?
                }
                None => Vec::new(),
            };
            let fired: BTreeMap<String, u64> = match t.get(FIRED_KEY)? {
                Some(v) => serde_json::from_slice(v.value()).context("the persisted firings")?,
                None => BTreeMap::new(),
            };
            (tasks, fired)
        };
        let (status, _) = watch::channel(Vec::new());
        let (rounds, _) = watch::channel(None);
        Ok(Arc::new(Self {
            db,
            networks,
            dns,
            desired: Mutex::new(desired),
            wake: Notify::new(),
            store,
            runtime,
            failures: Mutex::new(BTreeMap::new()),
            restarts: Mutex::new(Restarts::new()),
            checks: Arc::default(),
            status,
            rounds,
            node_id: node_id.to_string(),
            local: Mutex::new(local),
            // Until a first session, the node counts as offline from its start.
            offline_since: Mutex::new(Some(Instant::now())),
            self_stopped: Mutex::new(BTreeMap::new()),
            stopped: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The node's address in the cluster, when configured.
    pub fn address(&self) -> Option<std::net::Ipv4Addr> {
        self.networks.address()
    }

    /// The node's DNS (the session hands it new registries).
    pub fn dns(&self) -> &Arc<crate::dns::Dns> {
        &self.dns
    }

    /// The generation held.
    pub fn generation(&self) -> u64 {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// Persists a new desired state (committed before this returns) and wakes the loop. An
    /// older or equal generation changes nothing.
    pub fn set_desired(&self, state: DesiredState) -> Result<u64> {
        let current = self.generation();
        if state.generation <= current {
            return Ok(current);
        }
        let bytes = serde_json::to_vec(&state)?;
        let w = self.db.begin_write()?;
        w.open_table(STATE)?.insert(DESIRED_KEY, bytes.as_slice())?;
        w.commit()?;
        let generation = state.generation;
        *self.desired.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.wake.notify_one();
        Ok(generation)
    }

    /// The container names of a task in the desired state, in definition order.
    pub fn container_names(&self, task: &str) -> Option<Vec<String>> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tasks
            .iter()
            .find(|t| t.id == task)
            .map(|t| {
                t.definition
                    .container_definitions
                    .iter()
                    .map(|c| c.name.clone())
                    .collect()
            })
    }

    /// Usage of the running containers of desired tasks (cgroup counters; blocking reads).
    pub fn usage(&self) -> Vec<TaskUsage> {
        let desired = self
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out: BTreeMap<String, TaskUsage> = BTreeMap::new();
        for c in self.runtime.list().unwrap_or_default() {
            if c.state != RunState::Running {
                continue;
            }
            let cn = c.name;
            let Some(def) = desired.tasks.iter().find(|t| t.id == cn.task) else {
                continue;
            };
            let Some(name) = def
                .definition
                .container_definitions
                .get(cn.index)
                .map(|d| d.name.clone())
            else {
                continue;
            };
            let Ok(u) = self.runtime.stats(&cn) else {
                continue;
            };
            out.entry(cn.task.clone())
                .or_insert_with(|| TaskUsage {
                    id: cn.task.clone(),
                    containers: BTreeMap::new(),
                })
                .containers
                .insert(name, u);
        }
        out.into_values().collect()
    }

    /// The container store the runner acts on.
    pub fn store(&self) -> &ContainerStore {
        &self.store
    }

    /// When rounds end.
    pub fn rounds(&self) -> watch::Receiver<Option<std::time::Instant>> {
        self.rounds.subscribe()
    }

    /// Whether the runner's state answers: its desired state can be locked and its database
    /// read (what the systemd watchdog vouches for; a long image pull does not stop it).
    pub fn healthy(&self) -> bool {
        let locked = self.desired.lock().is_ok();
        let readable = self
            .db
            .begin_read()
            .ok()
            .and_then(|r| r.open_table(STATE).ok())
            .is_some();
        locked && readable
    }

    /// The latest task statuses, changing as the node converges.
    pub fn status(&self) -> watch::Receiver<Vec<TaskStatus>> {
        self.status.subscribe()
    }

    /// Converges forever: a round right after one that acted (to see and report its
    /// effect at once), otherwise when woken or every [`RESYNC`].
    pub async fn run(self: Arc<Self>) {
        // An action that keeps failing must not spin: at most a few rounds back to back.
        let mut back_to_back = 0;
        let net = self.networks.clone();
        match tokio::task::spawn_blocking(move || net.restore()).await {
            Ok(Err(e)) => tracing::warn!("restoring task networks: {e:#}"),
            Err(e) => tracing::warn!("restoring task networks: {e}"),
            Ok(Ok(())) => {}
        }
        // VIP rules follow the registry.
        let mut changes = self.dns.changes();
        let net = self.networks.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let n = net.clone();
                match tokio::task::spawn_blocking(move || n.refresh()).await {
                    Ok(Err(e)) => tracing::warn!("service VIP rules: {e:#}"),
                    Err(e) => tracing::warn!("service VIP rules: {e}"),
                    Ok(Ok(())) => {}
                }
            }
        });
        loop {
            let result = self.clone().round().await;
            self.rounds.send_replace(Some(std::time::Instant::now()));
            match result {
                Ok(true) if back_to_back < 10 => {
                    back_to_back += 1;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("reconcile: {e:#}"),
            }
            back_to_back = 0;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    fn observe(self: &Arc<Self>, desired: &DesiredState) -> Result<World> {
        let mut world = World::new();
        for c in self.runtime.list()? {
            let cn = c.name;
            let def = desired
                .tasks
                .iter()
                .find(|t| t.id == cn.task)
                .and_then(|t| t.definition.container_definitions.get(cn.index));
            let container = def
                .map(|d| d.name.clone())
                .unwrap_or_else(|| format!("container-{}", cn.index));
            let observed = match c.state {
                RunState::Created => Observed::Created,
                RunState::Running => {
                    let check = def.and_then(|d| d.health_check.as_ref());
                    if let Some(check) = check {
                        let me = self.clone();
                        self.checks
                            .ensure(&self.store, &c.id, check, move || me.wake.notify_one());
                    }
                    Observed::Running {
                        healthy: match self.checks.get(&c.id) {
                            Some(Health::Healthy) => Some(true),
                            Some(Health::Unhealthy) => Some(false),
                            _ => None,
                        },
                    }
                }
                RunState::Exited(exit) => {
                    let now = SystemTime::now();
                    let started = c.started_at;
                    let finished = exit.and_then(|e| e.finished_at);
                    let since = |t: Option<SystemTime>, until: SystemTime| {
                        t.and_then(|t| until.duration_since(t).ok())
                            .unwrap_or_default()
                    };
                    Observed::Exited {
                        code: exit.map_or(255, |e| e.code),
                        oom: exit.is_some_and(|e| e.oom),
                        ran: since(started, finished.unwrap_or(now)),
                        // unknown exit time: as if just now, so backoff still applies
                        ago: since(finished, now),
                    }
                }
            };
            world
                .entry(cn.task)
                .or_default()
                .insert(container, observed);
        }
        // A container that could not start counts as exited with 125.
        for ((task, container), (_, when)) in self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            world
                .entry(task.clone())
                .or_default()
                .entry(container.clone())
                .or_insert(Observed::Exited {
                    code: 125,
                    oom: false,
                    ran: Duration::ZERO,
                    ago: when.elapsed(),
                });
        }
        Ok(world)
    }

    /// One reconciliation; true when it acted.
    /// The session is up (`true`) or lost (`false`).
    pub fn set_online(&self, online: bool) {
        let mut since = self.offline_since.lock().unwrap_or_else(|p| p.into_inner());
        match (online, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// Fires due schedules, stops tasks whose service wants them stopped after this long
    /// offline, then the desired state with this node's own runs added (those the control plane
    /// already lists are its).
    fn merged(&self) -> Result<DesiredState> {
        let mut desired = self
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let offline = self
            .offline_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed());
        {
            let mut stopped = self.self_stopped.lock().unwrap_or_else(|p| p.into_inner());
            stopped.retain(|id, _| desired.tasks.iter().any(|t| &t.id == id));
            for t in &mut desired.tasks {
                if let (Some(limit), Some(off)) = (t.stop_on_client_after, offline) {
                    if off >= Duration::from_secs(limit.into()) && !stopped.contains_key(&t.id) {
                        tracing::info!(task = %t.id, "no control plane for {limit} s: stopping it (stopOnClientAfter)");
                        stopped.insert(
                            t.id.clone(),
                            format!(
                                "service: stopped by its node after {limit} s without the control plane (stopOnClientAfter)"
                            ),
                        );
                    }
                }
                if let Some(why) = stopped.get(&t.id) {
                    if t.desired == flotilla_api::tasks::DesiredStatus::Running {
                        t.desired = flotilla_api::tasks::DesiredStatus::Stopped;
                        t.stop_reason = Some(why.clone());
                    }
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let (tasks, fired) = &mut *local;
        if crate::schedule::fire_due(&desired.schedules, fired, tasks, &self.node_id, now) {
            self.persist_local(tasks, fired)?;
        }
        for l in tasks.iter() {
            if !desired.tasks.iter().any(|t| t.id == l.task.id) {
                desired.tasks.push(l.task.clone());
            }
        }
        Ok(desired)
    }

    fn persist_local(&self, tasks: &[LocalTask], fired: &BTreeMap<String, u64>) -> Result<()> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(STATE)?;
            t.insert(LOCAL_KEY, serde_json::to_vec(tasks)?.as_slice())?;
            t.insert(FIRED_KEY, serde_json::to_vec(fired)?.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    /// The control plane recorded these statuses: runs of schedules it now has stopped may
    /// have their containers removed.
    pub fn acknowledge(&self, reported: &[TaskStatus]) -> Result<()> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let (tasks, fired) = &mut *local;
        let mut changed = false;
        for l in tasks.iter_mut().filter(|l| !l.acknowledged) {
            let stopped = reported
                .iter()
                .any(|s| s.id == l.task.id && s.state == TaskState::Stopped);
            if stopped {
                l.acknowledged = true;
                l.task.desired = flotilla_api::tasks::DesiredStatus::Stopped;
                changed = true;
            }
        }
        if changed {
            self.persist_local(tasks, fired)?;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// A stopped task's status keeps its containers' exits after they are removed: a report
    /// that comes later (a slow session, a reconnect) still carries them.
    fn keep_exits(&self, desired: &DesiredState, status: &mut [TaskStatus]) {
        let mut kept = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|id, _| desired.tasks.iter().any(|t| &t.id == id));
        for s in status.iter_mut().filter(|s| s.state == TaskState::Stopped) {
            if s.containers.iter().any(|c| c.exit_code.is_some()) {
                kept.insert(s.id.clone(), s.clone());
            } else if let Some(k) = kept.get(&s.id) {
                s.containers = k.containers.clone();
                if s.stop_reason.is_none() {
                    s.stop_reason = k.stop_reason.clone();
                }
            }
        }
    }

    /// Marks runs of schedules that stopped (keeping why) and tags their statuses.
    fn note_local(&self, status: &mut [TaskStatus]) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let (tasks, fired) = &mut *local;
        let mut changed = false;
        for s in status.iter_mut() {
            let Some(l) = tasks.iter_mut().find(|l| l.task.id == s.id) else {
                continue;
            };
            s.scheduled = Some(l.run.clone());
            if s.state == TaskState::Stopped && l.finished_at.is_none() {
                l.finished_at = Some(now);
                // Kept as the reason once it is told to stop (after the acknowledgement).
                l.task.stop_reason = s.stop_reason.clone();
                changed = true;
            }
        }
        if changed {
            self.persist_local(tasks, fired)?;
        }
        Ok(())
    }

    async fn round(self: Arc<Self>) -> Result<bool> {
        let desired = self.merged()?;
        let me = self.clone();
        let d = desired.clone();
        let world = tokio::task::spawn_blocking(move || me.observe(&d)).await??;
        let restarts = self
            .restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut p = plan(&desired, &world, &restarts);
        {
            let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            for s in &mut p.status {
                if let Some((_, (why, _))) = failures.iter().find(|((t, _), _)| *t == s.id) {
                    if s.state >= TaskState::Stopping {
                        s.stop_reason = Some(why.clone());
                    }
                }
            }
        }
        self.note_local(&mut p.status)?;
        self.keep_exits(&desired, &mut p.status);
        let acted = !p.actions.is_empty();
        let mut jobs = Vec::new();
        for action in p.actions {
            let me = self.clone();
            let desired = desired.clone();
            jobs.push(tokio::spawn(
                async move { me.apply(&desired, action).await },
            ));
        }
        for j in jobs {
            if let Ok(Err(e)) = j.await {
                tracing::warn!("{e:#}");
            }
        }
        // A stopped task's network goes before its stop is reported (so an awsvpc address
        // is free when the control plane hears of it); so do networks of tasks that are
        // neither assigned nor have containers here.
        let release: Vec<String> = p
            .status
            .iter()
            .filter(|s| s.state == TaskState::Stopped)
            .map(|s| s.id.clone())
            .collect();
        let keep: BTreeSet<String> = desired
            .tasks
            .iter()
            .map(|t| t.id.clone())
            .chain(world.keys().cloned())
            .filter(|t| !release.contains(t))
            .collect();
        let net = self.networks.clone();
        let released = tokio::task::spawn_blocking(move || -> Result<()> {
            for t in &release {
                net.release(t)?;
            }
            net.retain(&keep.iter().map(String::as_str).collect())
        })
        .await?;
        if let Err(e) = released {
            tracing::warn!("removing task networks: {e:#}");
        }
        for s in &mut p.status {
            if s.state != TaskState::Stopped {
                s.network = self.networks.status(&s.id);
            }
        }
        // Forget failures and restarts of tasks that left the desired state.
        let assigned = |t: &String| desired.tasks.iter().any(|d| &d.id == t);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(t, _), _| assigned(t));
        self.restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(t, _), _| assigned(t));
        self.status.send_if_modified(|old| {
            if *old == p.status {
                false
            } else {
                *old = p.status.clone();
                true
            }
        });
        Ok(acted)
    }

    /// Creates and starts a container of a task; a failure is remembered (the container then
    /// counts as exited with 125).
    async fn start(&self, desired: &DesiredState, task: String, container: String) {
        let Some(t) = desired.tasks.iter().find(|t| t.id == task) else {
            return;
        };
        let Some((idx, def)) = t
            .definition
            .container_definitions
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == container)
        else {
            return;
        };
        let mut config = container_config(&task, &t.definition, def);
        let name = ContainerName::new(&task, idx);
        config
            .env
            .extend(t.env.iter().map(|kv| format!("{}={}", kv.name, kv.value)));
        let store = self.store.clone();
        if let Some(ns) = &t.namespace {
            // The services of its namespace, Kubernetes-style (the definition's own win).
            for (k, v) in flotilla_api::discovery::environment(&self.dns.registry(), ns) {
                if !config
                    .env
                    .iter()
                    .any(|e| e.split_once('=').is_some_and(|(n, _)| n == k))
                {
                    config.env.push(format!("{k}={v}"));
                }
            }
        }
        let (net, dt, node) = (self.networks.clone(), t.clone(), desired.network.clone());
        let result = async {
            let attachment = tokio::task::spawn_blocking(move || net.ensure(&dt, &node))
                .await?
                .context("its task network")?;
            config.network = attachment.network;
            config.resolv_conf = attachment.resolv_conf;
            if store.images().get(&config.image).is_err() {
                tracing::info!(task = %task, image = %config.image, "pulling");
                store
                    .images()
                    .pull(&config.image, &Default::default(), Arc::new(|_| {}))
                    .await
                    .with_context(|| format!("pulling {}", config.image))?;
            }
            let rt = self.runtime.clone();
            tokio::task::spawn_blocking(move || rt.run(&name, config)).await??;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(task = %task, container = %container, "started"),
            Err(e) => {
                let why = format!("container {container} could not start: {e:#}");
                tracing::warn!(task = %task, "{why}");
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((task, container), (why, Instant::now()));
                self.wake.notify_one();
            }
        }
    }

    async fn apply(self: Arc<Self>, desired: &DesiredState, action: Action) -> Result<()> {
        match action {
            Action::Start { task, container } => self.start(desired, task, container).await,
            Action::Stop {
                task,
                container,
                grace_secs,
            } => {
                let Some(name) = container_name(desired, &task, &container) else {
                    return Ok(());
                };
                let rt = self.runtime.clone();
                tokio::task::spawn_blocking(move || {
                    rt.stop(&name, Duration::from_secs(grace_secs.into()))
                })
                .await??;
                self.wake.notify_one();
            }
            Action::Restart {
                task,
                container,
                attempt,
            } => {
                let Some(name) = container_name(desired, &task, &container) else {
                    return Ok(());
                };
                let rt = self.runtime.clone();
                tokio::task::spawn_blocking(move || rt.remove(&name)).await??;
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(task.clone(), container.clone()));
                self.restarts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((task.clone(), container.clone()), attempt);
                tracing::info!(task = %task, container = %container, attempt, "restarting by restart policy");
                self.start(desired, task, container).await;
            }
            Action::Remove { task } => {
                let rt = self.runtime.clone();
                let net = self.networks.clone();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    // Its task-scoped volumes and its network go with it.
                    rt.remove_task(&task)?;
                    net.release(&task)
                })
                .await??;
            }
        }
        Ok(())
    }
}

/// The runtime name of `container` of `task`: by its index in the task's definition, or for a
/// task no longer assigned, by the index its placeholder name (`container-<index>`) carries.
fn container_name(desired: &DesiredState, task: &str, container: &str) -> Option<ContainerName> {
    let index = desired
        .tasks
        .iter()
        .find(|t| t.id == task)
        .and_then(|t| {
            t.definition
                .container_definitions
                .iter()
                .position(|c| c.name == container)
        })
        .or_else(|| container.strip_prefix("container-")?.parse().ok())?;
    Some(ContainerName::new(task, index))
}

/// The runtime settings of a container of task `task`. Task volumes become bind mounts
/// (`host.sourcePath`, below the node's allowed roots), named volumes shared across tasks
/// (`dockerVolumeConfiguration.scope: shared`, by the volume's name) or volumes that live as
/// long as the task (`<task>-<volume>`, removed with it).
pub fn container_config(
    task: &str,
    t: &TaskDefinition,
    c: &ContainerDefinition,
) -> ContainerConfig {
    let mut mounts = Vec::new();
    for m in &c.mount_points {
        // The definition was checked: every mount point names a task volume.
        let Some(v) = t.volumes.iter().find(|v| v.name == m.source_volume) else {
            continue;
        };
        mounts.push(match &v.host_source_path {
            Some(path) => MountRequest::Bind {
                source: path.into(),
                target: m.container_path.clone(),
                read_only: m.read_only,
            },
            None => MountRequest::Volume {
                name: if v.shared {
                    v.name.clone()
                } else {
                    task_volume(task, &v.name)
                },
                target: m.container_path.clone(),
                read_only: m.read_only,
            },
        });
    }
    for t in &c.tmpfs {
        mounts.push(MountRequest::Tmpfs {
            target: t.container_path.clone(),
            size: Some(t.size << 20),
        });
    }
    ContainerConfig {
        name: None,
        image: c.image.clone(),
        entrypoint: c.entry_point.clone(),
        command: c.command.clone(),
        env: c
            .environment
            .iter()
            .map(|kv| format!("{}={}", kv.name, kv.value))
            .collect(),
        workdir: c.working_directory.clone(),
        user: c.user.clone(),
        hostname: c.hostname.clone(),
        resources: Resources {
            cpu_units: (c.cpu > 0).then_some(u64::from(c.cpu)),
            cpu_limit_millis: None,
            memory: c.memory.map(|m| m << 20),
            memory_reservation: c.memory_reservation.map(|m| m << 20),
            pids: None,
        },
        read_only: c.readonly_root_filesystem,
        // The task's own namespace is filled in when it is set up (see `network`).
        network: match t.network_mode {
            TaskNetwork::Host => NetworkMode::Host,
            TaskNetwork::None | TaskNetwork::Bridge | TaskNetwork::Awsvpc => NetworkMode::None,
        },
        resolv_conf: None,
        cap_add: c.capabilities_add.clone(),
        cap_drop: c.capabilities_drop.clone(),
        privileged: c.privileged,
        mounts,
        log: Default::default(),
        ulimits: c
            .ulimits
            .iter()
            .map(|u| Ulimit {
                name: u.name.clone(),
                soft: u.soft_limit,
                hard: u.hard_limit,
            })
            .collect(),
    }
}
