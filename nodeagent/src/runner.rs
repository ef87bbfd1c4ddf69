//! The node's task runner: the thin driver around the node's state machine (`node.rs`). It
//! persists the desired state in `<data-dir>/agent.redb` before it is acknowledged, observes the
//! task containers through the container runtime, hands them to the machine with the time,
//! applies the commands it answers (task networks and image pulls here, containers through the
//! runtime) and persists the schedules' runs it changed — with or without a session.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use flotilla_api::taskdef::{ContainerDefinition, NetworkMode as TaskNetwork, TaskDefinition};
use flotilla_api::tasks::{DesiredState, TaskState, TaskStatus, TaskUsage};
use flotilla_runtime::container::{
    ContainerConfig, ContainerStore, MountRequest, NetworkMode, Resources, TaskCgroup, Ulimit,
};
use redb::TableDefinition;

use crate::db::AgentDb;
use tokio::sync::{watch, Notify};

use crate::health::Health;
use crate::node::{Command, LastContact, Node, Now};
use crate::pull::PullFailed;
use crate::runtime::{task_volume, ContainerName, ContainerRuntime, Resumed, RunState};
use crate::schedule::{LocalRuns, LocalTask};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const DESIRED_KEY: &str = "desired";
/// Runs of this node's schedules, and each schedule's last firing.
const LOCAL_KEY: &str = "local";
const FIRED_KEY: &str = "fired";
/// The wall-clock time of the last exchange with the control plane (seconds since the
/// epoch, as text), recorded when [`Node::contact_due`].
const CONTACT_KEY: &str = "contact";
/// How often the node re-checks its containers without being told.
const RESYNC: Duration = Duration::from_secs(1);
/// How often `net.bridge.bridge-nf-call-iptables` is read to follow a change of it made
/// outside the agent (its nftables table depends on it).
const BRIDGE_NETFILTER_POLL: Duration = Duration::from_secs(2);

/// What the node persisted in `agent.redb`: the control plane's desired state and its
/// schedules' runs (the table is made if it is not there yet).
pub fn load_state(db: &AgentDb) -> Result<(DesiredState, LocalRuns)> {
    let w = db.begin_write()?;
    w.open_table(STATE)?;
    w.commit()?;
    let r = db.begin_read()?;
    let t = r.open_table(STATE)?;
    let desired = match t.get(DESIRED_KEY)? {
        Some(v) => serde_json::from_slice(v.value()).context("the persisted desired state")?,
        None => DesiredState::default(),
    };
    let tasks: Vec<LocalTask> = match t.get(LOCAL_KEY)? {
        Some(v) => serde_json::from_slice(v.value()).context("the persisted local tasks")?,
        None => Vec::new(),
    };
    let fired: BTreeMap<String, u64> = match t.get(FIRED_KEY)? {
        Some(v) => serde_json::from_slice(v.value()).context("the persisted firings")?,
        None => BTreeMap::new(),
    };
    Ok((desired, LocalRuns { tasks, fired }))
}

/// Persists the control plane's desired state (committed when this returns).
pub fn save_desired(db: &AgentDb, state: &DesiredState) -> Result<()> {
    let bytes = serde_json::to_vec(state)?;
    let w = db.begin_write()?;
    w.open_table(STATE)?.insert(DESIRED_KEY, bytes.as_slice())?;
    w.commit()?;
    Ok(())
}

/// The last contact with the control plane an earlier run recorded: none, a time, or a
/// record that cannot be read (not digits, or a time past what the clock can hold) — which,
/// as a clock behind it, leaves the time offline unknown.
pub fn load_contact(db: &AgentDb) -> Result<LastContact> {
    let r = db.begin_read()?;
    let t = match r.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(LastContact::Never),
        Err(e) => return Err(e.into()),
    };
    let Some(v) = t.get(CONTACT_KEY)? else {
        return Ok(LastContact::Never);
    };
    Ok(std::str::from_utf8(v.value())
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .map_or(LastContact::Unreadable, LastContact::At))
}

/// Records `at` as the last contact with the control plane (committed when this returns).
pub fn save_contact(db: &AgentDb, at: SystemTime) -> Result<()> {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let w = db.begin_write()?;
    w.open_table(STATE)?
        .insert(CONTACT_KEY, secs.to_string().as_bytes())?;
    w.commit()?;
    Ok(())
}

/// Persists the schedules' runs and firings (committed when this returns).
pub fn save_runs(db: &AgentDb, runs: &LocalRuns) -> Result<()> {
    let w = db.begin_write()?;
    {
        let mut t = w.open_table(STATE)?;
        t.insert(LOCAL_KEY, serde_json::to_vec(&runs.tasks)?.as_slice())?;
        t.insert(FIRED_KEY, serde_json::to_vec(&runs.fired)?.as_slice())?;
    }
    w.commit()?;
    Ok(())
}

/// The clocks, read: the only place the runner's decisions get their time from.
fn now() -> Now {
    Now {
        wall: SystemTime::now(),
        mono: Instant::now(),
    }
}

/// How [`Runner::start`] starts a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartHow {
    /// Creates it and starts it.
    Create,
    /// Starts its exited container again in place (its restart policy).
    Restart,
    /// Starts its container lost with an earlier boot again in place.
    Resume,
}

/// A task's containers as [`Runner::task_containers`] finds them: the names its definition
/// gives, and `(index, name, container)` by index.
pub type TaskContainers = (
    Option<Vec<String>>,
    Vec<(usize, String, flotilla_runtime::container::ContainerInfo)>,
);

/// The runner shared by the session and the reconcile loop.
#[derive(Debug)]
pub struct Runner {
    db: Arc<AgentDb>,
    /// Task networks.
    networks: Arc<crate::network::Networks>,
    /// The node's DNS and the discovery registry.
    dns: Arc<crate::dns::Dns>,
    /// The node's state machine: everything decided is decided there.
    node: Mutex<Node>,
    wake: Notify,
    /// The node's store: images (pulls), health checks and logs.
    store: ContainerStore,
    /// The containers of tasks: observed, run, stopped and removed through it.
    runtime: Arc<dyn ContainerRuntime>,
    /// Health checks of running containers.
    checks: Arc<crate::health::Checks>,
    status: watch::Sender<Vec<TaskStatus>>,
    /// When the last round ended (`None` before the first).
    rounds: watch::Sender<Option<Instant>>,
    /// Where the logs of removed tasks' containers are kept (`<data-dir>/task-logs`).
    task_logs: std::path::PathBuf,
    /// What the agent measures of its own work (its metrics).
    meters: Arc<crate::meters::Meters>,
    /// The secrets its tasks' containers reference, kept sealed.
    secrets: Arc<crate::secrets::Secrets>,
    /// The session with the control plane, as secrets and images ask over it.
    session: Arc<crate::session::Session>,
    /// How images are pulled (mirrors) and collected.
    images: crate::images::ImageSettings,
    /// Wakes the image collection (after a pull).
    collect_images: Notify,
    /// The last contact with the control plane recorded in `agent.redb` (by this run or an
    /// earlier one), so that the next is recorded only when [`Node::contact_due`].
    recorded_contact: Mutex<Option<SystemTime>>,
}

impl Runner {
    /// Opens the runner's state under `data_dir`; the desired state persisted there (if any)
    /// is what the node converges to until the control plane says otherwise. Task containers
    /// are acted on through `runtime`.
    pub fn open(
        data_dir: &Path,
        store: ContainerStore,
        runtime: Arc<dyn ContainerRuntime>,
        node_id: &str,
        net: crate::network::Settings,
        images: crate::images::ImageSettings,
    ) -> Result<Arc<Self>> {
        let path = data_dir.join("agent.redb");
        let db = Arc::new(AgentDb::open(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "{} is held by another nodeagent: one agent per data directory (stop the other, \
                 or give this one its own --data-dir)",
                path.display()
            ),
            e => anyhow::Error::new(e).context(format!("opening {}", path.display())),
        })?);
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
        let (desired, runs) = load_state(&db)?;
        let contact = load_contact(&db)?;
        let session = Arc::new(crate::session::Session::default());
        let secrets = Arc::new(crate::secrets::Secrets::open(
            db.clone(),
            data_dir,
            session.clone(),
        )?);
        match secrets.retain(&desired) {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} secret values no desired task needs"),
            Err(e) => tracing::warn!("deleting secret values no desired task needs: {e:#}"),
        }
        let (status, _) = watch::channel(Vec::new());
        let (rounds, _) = watch::channel(None);
        Ok(Arc::new(Self {
            db,
            networks,
            dns,
            node: Mutex::new(Node::new(node_id, desired, runs, now(), contact)),
            wake: Notify::new(),
            store,
            runtime,
            checks: Arc::default(),
            status,
            rounds,
            task_logs: data_dir.join(crate::kept_logs::KEPT_DIR),
            meters: Arc::default(),
            secrets,
            session,
            images,
            collect_images: Notify::new(),
            recorded_contact: Mutex::new(match contact {
                LastContact::At(t) => Some(t),
                LastContact::Never | LastContact::Unreadable => None,
            }),
        }))
    }

    fn node(&self) -> MutexGuard<'_, Node> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Image garbage collection by disk pressure, every [`crate::images::GC_PERIOD`] and after
    /// each pull (the image just pulled is kept by the policy's minimum age until its
    /// container leases it). Runs until the agent ends.
    pub async fn collect_images(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(crate::images::GC_PERIOD) => {}
                _ = self.collect_images.notified() => {}
            }
            let (store, policy) = (self.store.images().clone(), self.images.gc);
            let _ =
                tokio::task::spawn_blocking(move || crate::images::collect(&store, &policy)).await;
        }
    }

    /// The node's address in the cluster, when configured.
    pub fn address(&self) -> Option<std::net::Ipv4Addr> {
        self.networks.address()
    }

    /// The session with the control plane (set by the session loop).
    pub fn session(&self) -> &Arc<crate::session::Session> {
        &self.session
    }

    /// The node's DNS (the session hands it new registries).
    pub fn dns(&self) -> &Arc<crate::dns::Dns> {
        &self.dns
    }

    /// The generation held.
    pub fn generation(&self) -> u64 {
        self.node().generation()
    }

    /// Persists a new desired state (committed before this returns) and wakes the loop. An
    /// older or equal generation changes nothing.
    pub fn set_desired(&self, state: DesiredState) -> Result<u64> {
        let current = self.generation();
        if state.generation <= current {
            return Ok(current);
        }
        save_desired(&self.db, &state)?;
        // What no desired task needs any more goes at once (the new state is committed).
        match self.secrets.retain(&state) {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} secret values no desired task needs"),
            Err(e) => tracing::warn!("deleting secret values no desired task needs: {e:#}"),
        }
        let generation = state.generation;
        self.node().set_desired(state);
        self.wake.notify_one();
        // A push is a contact too: a task with `stopOnClientAfter` just given counts from now.
        self.contact();
        Ok(generation)
    }

    /// The control plane answered just now: recorded while a task held has a
    /// `stopOnClientAfter`, so that the time offline counted after a restart (a power cut
    /// while cut off) goes on from about here rather than from the restart — the control
    /// plane counts its `lostAfter` from about then. Recorded only when the last record is
    /// older than [`Node::contact_lag`] (a quarter of the shortest limit, at most 10 min):
    /// one commit every few minutes rather than one per heartbeat. A failed write is logged
    /// (after a restart the count would then go on from the contact recorded before, or start
    /// over). Blocking.
    pub fn contact(&self) {
        let now = SystemTime::now();
        let mut recorded = self
            .recorded_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.node().contact_due(*recorded, now) {
            return;
        }
        match save_contact(&self.db, now) {
            Ok(()) => *recorded = Some(now),
            Err(e) => tracing::warn!("recording the contact with the control plane: {e:#}"),
        }
    }

    /// The container names of a task in the desired state, in definition order.
    pub fn container_names(&self, task: &str) -> Option<Vec<String>> {
        self.node().container_names(task)
    }

    /// The containers of `task` in the store, by index, each with its name in the task
    /// definition (`container-N` for a task that left the desired state), and the names the
    /// definition gives (`None`: the task is not desired). Blocking reads.
    pub fn task_containers(&self, task: &str) -> Result<TaskContainers> {
        let names = self.container_names(task);
        let mut found = Vec::new();
        for c in self.store.list()? {
            let Some(cn) = crate::runtime::task_container(&c) else {
                continue;
            };
            if cn.task == task {
                let name = names
                    .as_ref()
                    .and_then(|n| n.get(cn.index).cloned())
                    .unwrap_or_else(|| cn.placeholder());
                found.push((cn.index, name, c));
            }
        }
        found.sort_by_key(|f| f.0);
        Ok((names, found))
    }

    /// Usage of the running containers of desired tasks, and of those tasks' cgroups (cgroup
    /// counters; blocking reads).
    pub fn usage(&self) -> Vec<TaskUsage> {
        let desired = self.node().desired().clone();
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
                    task: None,
                })
                .containers
                .insert(name, u);
        }
        for u in out.values_mut() {
            u.task = self.runtime.task_stats(&u.id).ok();
        }
        out.into_values().collect()
    }

    /// Where the logs of removed tasks' containers are kept.
    pub fn task_logs(&self) -> &Path {
        &self.task_logs
    }

    /// The container store the runner acts on.
    pub fn store(&self) -> &ContainerStore {
        &self.store
    }

    /// When rounds end.
    pub fn rounds(&self) -> watch::Receiver<Option<Instant>> {
        self.rounds.subscribe()
    }

    /// Whether the runner's state answers: its state machine can be locked and its database
    /// read (what the systemd watchdog vouches for; a long image pull does not stop it).
    pub fn healthy(&self) -> bool {
        let locked = self.node.lock().is_ok();
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
        // Containers whose record is damaged: set aside once, named, instead of skipped on
        // every listing with their layers pinned.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.set_aside_damaged()).await {
            Ok(Ok(moved)) => {
                for (from, to, why) in moved {
                    tracing::warn!(container = %from.display(), to = %to.display(),
                        "{why}: set aside (its task, if any, runs in a new container)");
                }
            }
            Ok(Err(e)) => tracing::warn!("damaged containers: {e}"),
            Err(e) => tracing::warn!("damaged containers: {e}"),
        }
        // Task cgroups an agent killed half-way through a removal left behind.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.prune_task_cgroups()).await {
            Ok(Ok(failed)) => {
                for (task, e) in failed {
                    tracing::warn!(task = %task, "removing its cgroup: {e}");
                }
            }
            Ok(Err(e)) => tracing::warn!("task cgroups: {e}"),
            Err(e) => tracing::warn!("task cgroups: {e}"),
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
        // The table's masquerades follow `br_netfilter`, which can change under the agent.
        let net = self.networks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BRIDGE_NETFILTER_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let n = net.clone();
                match tokio::task::spawn_blocking(move || n.follow_bridge_netfilter()).await {
                    Ok(Err(e)) => tracing::warn!("following bridge-nf-call-iptables: {e:#}"),
                    Err(e) => tracing::warn!("following bridge-nf-call-iptables: {e}"),
                    Ok(Ok(_)) => {}
                }
            }
        });
        loop {
            let began = Instant::now();
            let result = self.clone().round().await;
            self.meters.round(began.elapsed());
            self.rounds.send_replace(Some(Instant::now()));
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

    /// The session is up (`true`) or lost (`false`).
    pub fn set_online(&self, online: bool) {
        self.meters.connected(online);
        self.node().set_online(online, Instant::now());
    }

    /// Pulls `image` as the agent pulls, for a task or a prefetch: from the control plane's
    /// content store when it holds the image (`cp_images.rs`), else — or when that fails —
    /// from its registry, anonymously, through the node's registry mirrors; counted in the
    /// meters; a successful pull wakes the collection by disk pressure. When both fail, the
    /// control plane's failure is answered (it held the image) and the registry's logged.
    pub async fn pull(
        &self,
        image: &str,
        progress: flotilla_runtime::image::ProgressFn,
    ) -> Result<flotilla_runtime::image::ImageRecord, flotilla_runtime::image::ImageStoreError>
    {
        let pulled = self.pull_from_anywhere(image, progress).await;
        self.meters.pulled(pulled.is_ok());
        if pulled.is_ok() {
            self.collect_images.notify_one();
        }
        pulled
    }

    async fn pull_from_anywhere(
        &self,
        image: &str,
        progress: flotilla_runtime::image::ProgressFn,
    ) -> Result<flotilla_runtime::image::ImageRecord, flotilla_runtime::image::ImageStoreError>
    {
        let cp = crate::cp_images::ControlPlane::new(self.session.clone());
        let mut from_cp = None;
        if let Some(held) = cp.held(image).await {
            let pulled = self
                .store
                .images()
                .pull_from_source(
                    &held.name,
                    &held.manifest,
                    Arc::new(cp.clone()),
                    progress.clone(),
                )
                .await;
            match pulled {
                Ok(rec) => {
                    tracing::info!(image, digest = %rec.digest, "fetched from the control plane");
                    return Ok(rec);
                }
                Err(e) => {
                    tracing::warn!(
                        image,
                        "fetching from the control plane failed, trying its registry: {}",
                        flotilla_api::errors::chain(&e)
                    );
                    from_cp = Some(e);
                }
            }
        }
        // `localhost/NAME` names an image of this node or of the control plane's store (as
        // podman names local images), never one of a registry on this host's port 443.
        let local = flotilla_runtime::image::ImageRef::parse(image)
            .is_ok_and(|r| r.registry == "localhost");
        if local && from_cp.is_none() {
            return Err(flotilla_runtime::image::ImageStoreError::Invalid {
                image: image.to_string(),
                reason: "neither this node nor the control plane holds it, and a localhost/ \
                         image is never pulled from a registry: push it with `flotilla image \
                         push`, or import it here with `nodeagent ctr image import`"
                    .into(),
            });
        }
        let options = flotilla_runtime::image::PullOptions {
            mirrors: self.images.mirrors.clone(),
            ..Default::default()
        };
        let pulled = self
            .store
            .images()
            .pull(image, &options, progress.clone())
            .await;
        // The registry is out of this node's reach (a site with no route beyond its LAN):
        // the control plane pulls it, and the node fetches it from there.
        if let Err(e) = &pulled {
            if e.pull_failure() == Some(flotilla_runtime::image::registry::Failure::Unreachable) {
                match cp.pull_through(image).await {
                    Ok(held) => {
                        let fetched = self
                            .store
                            .images()
                            .pull_from_source(&held.name, &held.manifest, Arc::new(cp), progress)
                            .await;
                        match fetched {
                            Ok(rec) => {
                                tracing::info!(image, digest = %rec.digest, "the control plane pulled it for this node: fetched from there");
                                return Ok(rec);
                            }
                            Err(f) => tracing::warn!(
                                image,
                                "the registry is out of reach and fetching the control plane's pull failed: {}",
                                flotilla_api::errors::chain(&f)
                            ),
                        }
                    }
                    Err(why) => tracing::warn!(
                        image,
                        "the registry is out of reach and the control plane did not pull it: {why}"
                    ),
                }
            }
        }
        match (pulled, from_cp) {
            (Err(registry), Some(cp)) => {
                tracing::warn!(
                    image,
                    "and from its registry: {}",
                    flotilla_api::errors::chain(&registry)
                );
                Err(cp)
            }
            (pulled, _) => pulled,
        }
    }

    /// What the agent measures of its own work.
    pub fn meters(&self) -> &crate::meters::Meters {
        &self.meters
    }

    /// The desired state the node converges to now.
    pub fn desired(&self) -> DesiredState {
        self.node().desired().clone()
    }

    /// Queries the node's resolver answered itself and forwarded, since the agent started.
    pub fn dns_queries(&self) -> (u64, u64) {
        self.dns.queries()
    }

    /// Saves the schedules' runs if the state machine changed them (under its lock, so saves
    /// land in the order the changes were made).
    fn save_runs(&self, node: &mut Node) -> Result<()> {
        if let Some(runs) = node.unsaved_runs() {
            save_runs(&self.db, runs)?;
            node.runs_saved();
        }
        Ok(())
    }

    /// The control plane recorded these statuses: runs of schedules it now has stopped may
    /// have their containers removed.
    pub fn acknowledge(&self, reported: &[TaskStatus]) -> Result<()> {
        let mut node = self.node();
        if node.acknowledge(reported) {
            self.save_runs(&mut node)?;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// One reconciliation; true when it acted.
    async fn round(self: Arc<Self>) -> Result<bool> {
        let rt = self.runtime.clone();
        let seen = tokio::task::spawn_blocking(move || rt.list()).await??;
        let health: BTreeMap<String, bool> = seen
            .iter()
            .filter(|c| c.state == RunState::Running)
            .filter_map(|c| match self.checks.get(&c.id, c.started_at) {
                Some(Health::Healthy) => Some((c.id.clone(), true)),
                Some(Health::Unhealthy) => Some((c.id.clone(), false)),
                _ => None,
            })
            .collect();
        let mut round = {
            let mut node = self.node();
            let round = node.round(&seen, &health, now());
            // A run that fired is on disk before its containers start.
            self.save_runs(&mut node)?;
            round
        };
        for (id, check) in &round.checks {
            let me = self.clone();
            // Of the run seen (a container restarted in place keeps its id).
            let started = seen.iter().find(|c| c.id == *id).and_then(|c| c.started_at);
            self.checks
                .ensure(&self.store, id, started, check, move || {
                    me.wake.notify_one()
                });
        }
        let acted = !round.commands.is_empty();
        let desired = Arc::new(round.desired);
        // Each command on its own: a stop waiting out its container's stopTimeout or a long
        // pull holds up nothing else; the machine holds it in flight until it is done.
        for command in round.commands {
            let me = self.clone();
            let desired = desired.clone();
            tokio::spawn(async move {
                let target = command.target();
                if let Err(e) = me.clone().apply(&desired, command).await {
                    tracing::warn!("{e:#}");
                }
                me.node().done(&target);
                me.wake.notify_one();
            });
        }
        // A stopped task's network goes before its stop is reported (so an awsvpc address
        // is free when the control plane hears of it); so do networks of tasks that are
        // neither assigned nor have containers here.
        let release: Vec<String> = round
            .status
            .iter()
            .filter(|s| s.state == TaskState::Stopped)
            .map(|s| s.id.clone())
            .collect();
        let keep: BTreeSet<String> = desired
            .tasks
            .iter()
            .map(|t| t.id.clone())
            .chain(seen.iter().map(|c| c.name.task.clone()))
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
        for s in &mut round.status {
            if s.state != TaskState::Stopped {
                s.network = self.networks.status(&s.id);
            }
        }
        self.status.send_if_modified(|old| {
            if *old == round.status {
                false
            } else {
                *old = round.status.clone();
                true
            }
        });
        Ok(acted)
    }

    /// Creates and starts a container of a task — or starts its container again in place, as
    /// `how` says: its network, its image, then the runtime. A failure is told to the state
    /// machine (the container then counts as exited with 125).
    async fn start(
        &self,
        desired: &DesiredState,
        name: ContainerName,
        container: String,
        how: StartHow,
    ) {
        let Some(t) = desired.tasks.iter().find(|t| t.id == name.task) else {
            return;
        };
        let Some(def) = t.definition.container_definitions.get(name.index) else {
            return;
        };
        let task = name.task.clone();
        let runtime_name = name.to_string();
        let mut config = container_config(&task, &t.definition, def);
        config
            .env
            .extend(t.env.iter().map(|kv| format!("{}={}", kv.name, kv.value)));
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
        let store = self.store.clone();
        let (secrets, task_def, container_def) = (self.secrets.clone(), t.clone(), def.clone());
        let result = async {
            let attachment = tokio::task::spawn_blocking(move || net.ensure(&dt, &node))
                .await?
                .context("its task network")?;
            config.network = attachment.network;
            config.resolv_conf = attachment.resolv_conf;
            config.addresses = attachment.addresses;
            if store.images().get(&config.image).is_err() {
                tracing::info!(task = %task, image = %config.image, "pulling");
                self.pull(&config.image, self.meters.pull_progress())
                    .await
                    .map_err(|e| {
                        let stored: Vec<String> = store
                            .images()
                            .list()
                            .map(|l| l.into_iter().map(|r| r.name).collect())
                            .unwrap_or_default();
                        PullFailed::for_task(&e, &config.image, &stored)
                    })?;
            }
            let material = secrets.material(&task_def, &container_def).await?;
            let rt = self.runtime.clone();
            let resumed = tokio::task::spawn_blocking(move || match how {
                StartHow::Create => rt.run(&name, config, &material).map(|()| None),
                StartHow::Restart => rt.restart(&name, config, &material).map(|()| None),
                StartHow::Resume => rt.resume(&name, config, &material).map(Some),
            })
            .await??;
            anyhow::Ok(resumed)
        }
        .await;
        match result {
            Ok(Some(Resumed::InPlace)) => tracing::info!(task = %task, container = %container,
                "started again in place after the machine stopped"),
            // A warning: what the container held is gone.
            Ok(Some(Resumed::Afresh(why))) => tracing::warn!(task = %task, container = %container,
                name = %runtime_name,
                "{why}: it starts again in a new container, without what the old one held"),
            Ok(None) if how == StartHow::Restart => {
                tracing::info!(task = %task, container = %container, "restarted")
            }
            Ok(None) => tracing::info!(task = %task, container = %container, "started"),
            Err(e) => {
                let error = flotilla_api::errors::chain(e.as_ref());
                {
                    let mut node = self.node();
                    let why = node.start_failed(&task, &container, &error, Instant::now());
                    tracing::warn!(task = %task, "{why}");
                }
                self.wake.notify_one();
            }
        }
    }

    async fn apply(self: Arc<Self>, desired: &DesiredState, command: Command) -> Result<()> {
        match command {
            Command::Start { name, container } => {
                self.start(desired, name, container, StartHow::Create).await
            }
            Command::Resume { name, container } => {
                // A warning: the machine lost power or rebooted under its tasks.
                tracing::warn!(task = %name.task, container = %name,
                    "the container was running or starting when the machine stopped (power cut \
                     or reboot); it starts again in place");
                self.start(desired, name, container, StartHow::Resume).await
            }
            Command::Stop {
                name,
                container,
                grace,
            } => {
                tracing::info!(task = %name.task, container = %container,
                    grace_secs = grace.as_secs(), "stopping");
                let rt = self.runtime.clone();
                tokio::task::spawn_blocking(move || rt.stop(&name, grace)).await??;
                self.wake.notify_one();
            }
            Command::Restart {
                name,
                container,
                attempt,
            } => {
                self.node().restarting(&name.task, &container, attempt);
                tracing::info!(task = %name.task, container = %container, attempt, "restarting by restart policy");
                self.start(desired, name, container, StartHow::Restart)
                    .await;
            }
            Command::Remove { task, containers } => {
                let rt = self.runtime.clone();
                let net = self.networks.clone();
                let kept = self.task_logs.clone();
                tokio::task::spawn_blocking(move || -> Result<()> {
                    // Its output stays readable for a while; a failure to keep it does not
                    // keep the task's containers.
                    if let Err(e) = crate::kept_logs::keep(&*rt, &kept, &task, &containers) {
                        tracing::warn!(task = %task, "keeping its logs: {e:#}");
                    }
                    // Its task-scoped volumes and its network go with it.
                    rt.remove_task(&task)?;
                    net.release(&task)?;
                    tracing::info!(task = %task, containers = containers.len(),
                        "removed, with its containers, volumes and network");
                    Ok(())
                })
                .await??;
            }
        }
        Ok(())
    }
}

/// The runtime settings of a container of task `task`. Task volumes become bind mounts
/// (`host.sourcePath`, below the node's allowed roots), named volumes shared across tasks
/// (`dockerVolumeConfiguration.scope: shared`, by the volume's name) or volumes that live as
/// long as the task (`<task>-<volume>`, removed with it). Every container of a task is in
/// the task's cgroup ([`task_cgroup`]); one without memory of its own is limited to the
/// task's memory, so that is what it reads in its cgroup too.
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
            memory: c.memory.or(t.memory).map(|m| m << 20),
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
        addresses: Vec::new(),
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
        init: c.init_process_enabled,
        task_cgroup: Some(task_cgroup(task, t)),
        // Their names only (what `ctr inspect` shows); the values come at each start.
        secrets: c.secrets.iter().map(|s| s.name.clone()).collect(),
        configs: c.configs.iter().map(|f| f.target.clone()).collect(),
    }
}

/// The cgroup of task `task`, around its containers: the task-level `cpu` (CPU units) is a
/// hard limit and the task's weight, the task-level `memory` (MiB) a hard limit on all its
/// containers together — as the ECS agent makes a task's cgroup on Linux. Without a
/// task-level `cpu`, the task weighs the sum of its containers' `cpu` (the ECS agent's rule),
/// or the kernel's default when none has any.
pub fn task_cgroup(task: &str, t: &TaskDefinition) -> TaskCgroup {
    let containers: u64 = t
        .container_definitions
        .iter()
        .map(|c| u64::from(c.cpu))
        .sum();
    TaskCgroup {
        task: task.to_string(),
        cpu_limit_units: t.cpu.map(u64::from),
        cpu_units: t
            .cpu
            .map(u64::from)
            .or((containers > 0).then_some(containers)),
        memory: t.memory.map(|m| m << 20),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(text: &str) -> TaskDefinition {
        flotilla_api::taskdef::parse(text)
            .expect("a valid definition")
            .definition
    }

    #[test]
    fn a_tasks_containers_are_in_its_cgroup_with_its_cpu_and_memory() {
        let t = definition(
            r#"{"family":"f","cpu":"0.5 vCPU","memory":"64","containerDefinitions":[
                {"name":"a","image":"x","cpu":128,"memory":32},
                {"name":"b","image":"x","essential":false}]}"#,
        );
        let a = container_config("t-1", &t, &t.container_definitions[0]);
        let b = container_config("t-1", &t, &t.container_definitions[1]);
        let want = TaskCgroup {
            task: "t-1".into(),
            cpu_limit_units: Some(512),
            cpu_units: Some(512),
            memory: Some(64 << 20),
        };
        assert_eq!(a.task_cgroup.as_ref(), Some(&want));
        assert_eq!(b.task_cgroup.as_ref(), Some(&want));
        // Its own limits inside the task's; none of its own: the task's memory.
        assert_eq!(
            (a.resources.memory, a.resources.cpu_units),
            (Some(32 << 20), Some(128))
        );
        assert_eq!(
            (b.resources.memory, b.resources.cpu_units),
            (Some(64 << 20), None)
        );
        assert!(a.validate().is_ok() && b.validate().is_ok());
    }

    #[test]
    fn without_task_cpu_a_task_weighs_its_containers_cpu_and_has_no_limit() {
        let t = definition(
            r#"{"family":"f","containerDefinitions":[
                {"name":"a","image":"x","cpu":128,"memory":32},
                {"name":"b","image":"x","cpu":256,"memory":32,"essential":false}]}"#,
        );
        assert_eq!(
            task_cgroup("t-1", &t),
            TaskCgroup {
                task: "t-1".into(),
                cpu_limit_units: None,
                cpu_units: Some(384),
                memory: None,
            }
        );
        let t = definition(
            r#"{"family":"f","containerDefinitions":[{"name":"a","image":"x","memory":32}]}"#,
        );
        assert_eq!(task_cgroup("t-1", &t).cpu_units, None);
    }
}
