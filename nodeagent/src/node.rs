//! The node as a deterministic state machine: everything the node decides about its tasks, with
//! the time an input. It holds what lives only in memory — start failures and when they
//! happened, restart attempts in a row (for backoff), tasks it stopped itself, exits kept after
//! their containers went, since when it is offline — and the schedules' runs, which the runner
//! persists for it. A container's restart count is its own: the runtime keeps it with the
//! container, which a restart runs again in place.
//!
//! No I/O and no clock: the runner (`runner.rs`) observes the task containers, calls
//! [`Node::round`] with [`Now`], applies the [`Command`]s through the container runtime, feeds
//! back what happened ([`Node::start_failed`], [`Node::restarting`], [`Node::set_online`],
//! [`Node::acknowledge`]) and persists what must survive a restart (the desired state, and the
//! runs when [`Node::unsaved_runs`] says so). A node built from what was persisted (a power
//! cut: nothing in memory) starts every task again, each container that was running starting
//! again in place ([`Command::Resume`]). Tests drive it with a fake runtime and simulated time.
//!
//! Commands run concurrently and may take long (a stop waits out its container's
//! `stopTimeout`, a start may pull an image): the runner applies each on its own and says when
//! it is over ([`Node::done`]). Until then the machine holds it in flight and decides nothing
//! more about what it acts on ([`Target`]), while it goes on deciding about everything else —
//! one slow container never delays the node's other tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_api::taskdef::HealthCheck;
use flotilla_api::tasks::{
    ContainerState, DesiredState, DesiredStatus, StopCode, TaskState, TaskStatus,
};

use crate::reconcile::{plan, Action, Observed, Restarts, World};
use crate::runtime::{ContainerName, RunState, TaskContainer};
use crate::schedule::LocalRuns;

/// The exit code a container that could not be created or started counts as (Docker's and
/// ECS's for a container the runtime could not run).
pub const START_FAILED_EXIT: i32 = 125;

/// The exit code of a container whose exit nobody recorded (its shim died with it).
const UNKNOWN_EXIT: i32 = 255;

/// When a decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The wall clock: compared with containers' start and exit times (they outlive the agent)
    /// and with schedules' minutes.
    pub wall: SystemTime,
    /// The monotonic clock: for what the node measures itself (time offline, since a failed
    /// start), which a wall clock set by NTP after a cold boot must not shorten.
    pub mono: Instant,
}

impl Now {
    /// The wall clock in whole seconds since the epoch.
    pub fn unix_secs(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The last contact with the control plane an earlier run of the agent recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastContact {
    /// None recorded (no task with `stopOnClientAfter` ever held, or a first start).
    Never,
    /// At this wall-clock time.
    At(SystemTime),
    /// A record that cannot be read (torn, or a time no clock reaches): as with a clock behind
    /// it, the time offline is unknown.
    Unreadable,
}

/// The time offline taken when it cannot be known: past any `stopOnClientAfter` (seconds
/// in a `u32`).
const OFFLINE_UNKNOWN: Duration = Duration::from_secs(u32::MAX as u64 + 1);

/// The recorded last contact may lag the real one by at most this fraction of the shortest
/// `stopOnClientAfter` held (a quarter: a task is then stopped after a power cut at most a
/// quarter of its limit early, never late) ...
const CONTACT_LAG_SHARE: u32 = 4;
/// ... and by at most this much whatever the limits (10 min).
const CONTACT_LAG_MAX: Duration = Duration::from_secs(600);

/// What the runner is to do to the node's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create and start a container (its task's network set up and image pulled first).
    Start {
        /// Its runtime name.
        name: ContainerName,
        /// Its name in the task definition.
        container: String,
    },
    /// Stop a container: SIGTERM, SIGKILL after `grace`.
    Stop {
        /// Its runtime name.
        name: ContainerName,
        /// Its name in the task definition (a placeholder for a task no longer assigned).
        container: String,
        /// Time between the two signals.
        grace: Duration,
    },
    /// Start an exited container again in place by its restart policy (the same container:
    /// its writable layer, volumes, log and restart count): say so with
    /// [`Node::restarting`], then restart it through the runtime, its task network and image
    /// made sure of as [`Command::Start`] does (one that never started is created).
    Restart {
        /// Its runtime name.
        name: ContainerName,
        /// Its name in the task definition.
        container: String,
        /// Restart attempts in a row of this container once this one is done.
        attempt: u32,
    },
    /// Start a container lost with an earlier boot of the machine ([`RunState::Lost`]: it was
    /// running or starting when the power went or the machine rebooted) again in place, its
    /// task network and image made sure of as [`Command::Start`] does: the same container, as
    /// Docker starts a container of restart policy `always` again after a reboot, its restart
    /// count starting over. The runtime makes a new one when it cannot (see
    /// `ContainerRuntime::resume`).
    Resume {
        /// Its runtime name.
        name: ContainerName,
        /// Its name in the task definition.
        container: String,
    },
    /// Remove every container of a task, its own volumes and its network; its containers'
    /// logs are kept (see `logs::KEEP`).
    Remove {
        /// The task's id.
        task: String,
        /// Its containers' names in definition order (empty when the node never knew them).
        containers: Vec<String>,
    },
}

/// What a [`Command`] acts on: while it is in flight nothing else is decided about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// One container of a task.
    Container(ContainerName),
    /// A whole task (its removal).
    Task(String),
}

impl Target {
    /// The task it belongs to.
    pub fn task(&self) -> &str {
        match self {
            Self::Container(name) => &name.task,
            Self::Task(task) => task,
        }
    }
}

impl Command {
    /// What it acts on.
    pub fn target(&self) -> Target {
        match self {
            Self::Start { name, .. }
            | Self::Stop { name, .. }
            | Self::Restart { name, .. }
            | Self::Resume { name, .. } => Target::Container(name.clone()),
            Self::Remove { task, .. } => Target::Task(task.clone()),
        }
    }
}

/// What one round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The tasks this round converges: the control plane's (those the node stopped itself
    /// marked so) and the runs of the node's schedules.
    pub desired: DesiredState,
    /// What to do; each stands on its own, so they may be applied at once, and each is in
    /// flight until the runner calls [`Node::done`] with its target.
    pub commands: Vec<Command>,
    /// The status of every task the node knows.
    pub status: Vec<TaskStatus>,
    /// Running containers to check the health of: runtime id, and the check.
    pub checks: Vec<(String, HealthCheck)>,
}

/// A container that could not start.
#[derive(Debug, Clone)]
struct Failure {
    /// The stop reason it gives its task.
    why: String,
    /// When it happened.
    at: Instant,
}

/// An exit as first seen: what its age is counted from.
#[derive(Debug, Clone, Copy)]
struct SeenExit {
    /// The exit time its record gave (the wall clock of the shim that saw it).
    finished: Option<SystemTime>,
    /// When it was first seen, on the monotonic clock.
    seen: Instant,
    /// How long ago it was then, by the wall clock.
    ago: Duration,
}

/// The node's state machine; see the module.
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's id (its schedules' runs' ids derive from it).
    node_id: String,
    /// The control plane's desired state, as persisted.
    desired: DesiredState,
    /// Runs of the node's schedules and their firings.
    runs: LocalRuns,
    /// The runs changed since the runner last saved them.
    runs_dirty: bool,
    /// When this run of the agent first held each acknowledged run, on the monotonic clock:
    /// a run is forgotten only once held a day by it too (`schedule::forget_old`).
    acknowledged_at: BTreeMap<String, Instant>,
    /// Start failures by (task, container), until the task leaves the desired state or the
    /// container is restarted.
    failures: BTreeMap<(String, String), Failure>,
    /// Restart attempts by restart policy in a row, for backoff (in memory: after an agent
    /// restart, backoff starts over; the restart count reported is the container's own).
    restarts: Restarts,
    /// The exits of containers seen exited, by container: their backoff counts from the
    /// first sight on the monotonic clock (the wall clock only says how old an exit was when
    /// first seen: one that happened while the agent was down).
    exits: BTreeMap<ContainerName, SeenExit>,
    /// Since when the node has no session (`None` while it has one).
    offline_since: Option<Instant>,
    /// Time offline before `offline_since`: from the last contact an earlier run of the agent
    /// recorded to this start (a power cut while offline does not start the count over).
    offline_before: Duration,
    /// The tasks that `offline_before` counts for: those none of whose containers ran when
    /// this start first looked (`None` until then). Starting one of them again past its
    /// `stopOnClientAfter` would run it twice; one that kept running (the agent alone
    /// restarted, an upgrade) was never down, and counts from this start.
    carried_for: Option<BTreeSet<String>>,
    /// Tasks the node stopped itself after `stopOnClientAfter`, and why: they stay stopped
    /// until the control plane has taken note (they leave its desired state).
    self_stopped: BTreeMap<String, String>,
    /// The last status of each stopped task that still had its containers: once they are
    /// removed, this is what is reported (exit codes, stop code and reason).
    kept: BTreeMap<String, TaskStatus>,
    /// What the commands handed out and not yet [`Node::done`] act on.
    in_flight: BTreeSet<Target>,
    /// The container names of tasks assigned here, kept while their containers are: a task
    /// that left the desired state is removed with its logs under their names.
    names: BTreeMap<String, Vec<String>>,
}

impl Node {
    /// The node as it starts (a cold boot, an agent restart, a power cut): nothing but what was
    /// persisted, and offline until a first session — offline since `last_contact`, the last
    /// exchange with the control plane an earlier run recorded (see [`Node::contact_due`]),
    /// when there is one. A wall clock now behind it (a board without a real-time clock that
    /// has not found NTP yet) cannot say for how long: then every `stopOnClientAfter` counts as
    /// passed, as a task stopped once too often is replaced, and one run twice is not undone.
    pub fn new(
        node_id: &str,
        desired: DesiredState,
        runs: LocalRuns,
        now: Now,
        last_contact: LastContact,
    ) -> Self {
        let unknown = |why: &str| {
            if desired
                .tasks
                .iter()
                .any(|t| t.stop_on_client_after.is_some())
            {
                tracing::warn!(
                    "{why}: the time offline is unknown and taken as past every stopOnClientAfter \
                     for the tasks not running"
                );
            }
            OFFLINE_UNKNOWN
        };
        let offline_before = match last_contact {
            LastContact::Never => Duration::ZERO,
            LastContact::At(t) => match now.wall.duration_since(t) {
                Ok(d) => d,
                Err(_) => unknown("the clock is behind the last contact with the control plane"),
            },
            LastContact::Unreadable => {
                unknown("the record of the last contact with the control plane is unreadable")
            }
        };
        Self {
            node_id: node_id.to_string(),
            desired,
            runs,
            runs_dirty: false,
            acknowledged_at: BTreeMap::new(),
            failures: BTreeMap::new(),
            restarts: Restarts::new(),
            exits: BTreeMap::new(),
            offline_since: Some(now.mono),
            offline_before,
            carried_for: None,
            self_stopped: BTreeMap::new(),
            kept: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            names: BTreeMap::new(),
        }
    }

    /// The command on `target` is over (done or failed: the next round sees which).
    pub fn done(&mut self, target: &Target) {
        self.in_flight.remove(target);
    }

    /// Whether a command on `target` must wait: one on it, on its task as a whole, or (for a
    /// task) on one of its containers is still in flight.
    fn busy(&self, target: &Target) -> bool {
        self.in_flight.iter().any(|t| match (t, target) {
            (Target::Container(a), Target::Container(b)) => a == b,
            _ => t.task() == target.task(),
        })
    }

    /// The control plane's desired state held.
    pub fn desired(&self) -> &DesiredState {
        &self.desired
    }

    /// The generation of the desired state held.
    pub fn generation(&self) -> u64 {
        self.desired.generation
    }

    /// Takes a newer desired state (the runner persisted it first); an older or equal
    /// generation changes nothing. Whether it was taken.
    pub fn set_desired(&mut self, state: DesiredState) -> bool {
        if state.generation <= self.desired.generation {
            return false;
        }
        self.desired = state;
        true
    }

    /// The runs of the node's schedules, when they changed since last saved.
    pub fn unsaved_runs(&self) -> Option<&LocalRuns> {
        self.runs_dirty.then_some(&self.runs)
    }

    /// The runner saved the runs [`Node::unsaved_runs`] gave.
    pub fn runs_saved(&mut self) {
        self.runs_dirty = false;
    }

    /// How far the recorded last contact may lag the real one: a quarter of the shortest
    /// `stopOnClientAfter` held, at most 10 min; `None` while no task has one. Each record is
    /// a store commit (pages and an `fsync`), so the contact is not recorded at every
    /// heartbeat but once this much has passed since the last record (an idle node's disk
    /// writes, an SD card's wear). A record older than the real contact only makes the time
    /// offline counted after a power cut longer than it was, by at most this lag plus one
    /// heartbeat: a task is stopped that much early, never run past its limit.
    pub fn contact_lag(&self) -> Option<Duration> {
        self.desired
            .tasks
            .iter()
            .filter_map(|t| t.stop_on_client_after)
            .min()
            .map(|limit| {
                (Duration::from_secs(limit.into()) / CONTACT_LAG_SHARE).min(CONTACT_LAG_MAX)
            })
    }

    /// Whether a contact with the control plane at `now` is to be recorded, `recorded` being
    /// the last one recorded (by this run or an earlier one): while a task keeps contact, when
    /// none is recorded, when the record is [`Node::contact_lag`] old or older, or when it is
    /// ahead of the clock (the clock was set back: a record ahead of it would make the time
    /// offline unknown after a restart).
    pub fn contact_due(&self, recorded: Option<SystemTime>, now: SystemTime) -> bool {
        let Some(lag) = self.contact_lag() else {
            return false;
        };
        match recorded.map(|r| now.duration_since(r)) {
            None | Some(Err(_)) => true,
            Some(Ok(age)) => age >= lag,
        }
    }

    /// The session is up (`true`) or lost (`false`) as of `now`.
    pub fn set_online(&mut self, online: bool, now: Instant) {
        match (online, self.offline_since) {
            (true, _) => {
                self.offline_since = None;
                self.offline_before = Duration::ZERO;
                self.carried_for = Some(BTreeSet::new());
            }
            (false, None) => self.offline_since = Some(now),
            (false, Some(_)) => {}
        }
    }

    /// The control plane recorded these statuses: runs of schedules it now has stopped may
    /// have their containers removed. Whether the runs changed (then save them).
    pub fn acknowledge(&mut self, reported: &[TaskStatus]) -> bool {
        let mut changed = false;
        for l in self.runs.tasks.iter_mut().filter(|l| !l.acknowledged) {
            let stopped = reported
                .iter()
                .any(|s| s.id == l.task.id && s.state == TaskState::Stopped);
            if stopped {
                l.acknowledged = true;
                l.task.desired = DesiredStatus::Stopped;
                changed = true;
            }
        }
        self.runs_dirty |= changed;
        changed
    }

    /// Container `container` of `task` could not be created or started (`error` says why):
    /// it counts as exited with [`START_FAILED_EXIT`], which ends its task
    /// (`TaskFailedToStart`) unless its restart policy restarts it. Returns the stop reason.
    pub fn start_failed(&mut self, task: &str, container: &str, error: &str, now: Instant) -> &str {
        let why = format!("container {container} could not start: {error}");
        let key = (task.to_string(), container.to_string());
        &self
            .failures
            .entry(key)
            .and_modify(|f| {
                f.why.clone_from(&why);
                f.at = now;
            })
            .or_insert(Failure { why, at: now })
            .why
    }

    /// Container `container` of `task` exited and starts again as restart attempt number
    /// `attempt`.
    pub fn restarting(&mut self, task: &str, container: &str, attempt: u32) {
        let key = (task.to_string(), container.to_string());
        self.failures.remove(&key);
        self.restarts.insert(key, attempt);
    }

    /// The container names of a task in the desired state, in definition order.
    pub fn container_names(&self, task: &str) -> Option<Vec<String>> {
        self.desired.tasks.iter().find(|t| t.id == task).map(|t| {
            t.definition
                .container_definitions
                .iter()
                .map(|c| c.name.clone())
                .collect()
        })
    }

    /// One round at `now`: fires due schedules, stops tasks the node must stop itself, and
    /// from the containers `seen` (and the health verdicts by runtime id) decides what to do
    /// and what to report.
    pub fn round(
        &mut self,
        seen: &[TaskContainer],
        health: &BTreeMap<String, bool>,
        now: Now,
    ) -> Round {
        if self.carried_for.is_none() {
            let running: BTreeSet<&str> = seen
                .iter()
                .filter(|c| c.state == RunState::Running)
                .map(|c| c.name.task.as_str())
                .collect();
            self.carried_for = Some(
                self.desired
                    .tasks
                    .iter()
                    .filter(|t| !running.contains(t.id.as_str()))
                    .map(|t| t.id.clone())
                    .collect(),
            );
        }
        let desired = self.merged(now);
        // A container lost with the machine's last boot, of a task meant to run, is planned as
        // if it had not started yet: its start (in its task's order) starts it again in place
        // ([`Command::Resume`]). One of a task meant to stop, or no longer assigned, counts as
        // ended without a known code, so the task is removed (with its volumes) the usual way.
        let runs = |task: &str| {
            desired
                .tasks
                .iter()
                .any(|t| t.id == task && t.desired == DesiredStatus::Running)
        };
        let (lost, seen): (Vec<&TaskContainer>, Vec<TaskContainer>) = {
            let (lost, kept): (Vec<_>, Vec<_>) = seen
                .iter()
                .partition(|c| c.state == RunState::Lost && runs(&c.name.task));
            (lost, kept.into_iter().cloned().collect())
        };
        let lost: BTreeSet<ContainerName> = lost.iter().map(|c| c.name.clone()).collect();
        let seen = &seen[..];
        let (world, names) = self.world(&desired, seen, health, now);
        let planned = plan(&desired, &world, &self.restarts);
        let mut status = planned.status;
        // A container's restarts are counted with it, so the count survives an agent restart
        // and goes on after a run long enough to start backoff over.
        for s in &mut status {
            for c in &mut s.containers {
                let seen_as = names
                    .get(&(s.id.clone(), c.name.clone()))
                    .and_then(|n| seen.iter().find(|t| t.name == *n));
                if let Some(t) = seen_as {
                    c.restarts = t.restarts;
                }
            }
        }
        for s in &mut status {
            for c in &mut s.containers {
                let key = (s.id.clone(), c.name.clone());
                // A container that could not start never ran: it has no exit code (as ECS
                // reports one), its failure is its reason.
                if let Some(f) = self.failures.get(&key) {
                    if matches!(c.state, ContainerState::Exited | ContainerState::Restarting) {
                        c.exit_code = None;
                        c.reason = Some(f.why.clone());
                    }
                }
                // A pending restart says when: its exit plus its backoff, on the wall clock
                // (the same every round, so it is reported once).
                let exited = world.get(&s.id).and_then(|w| w.get(&c.name));
                if let (Some(wait), Some(Observed::Exited { ago, .. })) =
                    (planned.restart_backoff.get(&key), exited)
                {
                    c.restart_at = now
                        .wall
                        .checked_sub(*ago)
                        .map(|exit| exit + *wait)
                        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
                }
            }
        }
        for s in &mut status {
            // A task that ended because a container could not start says so.
            if s.stop_code != Some(StopCode::EssentialContainerExited) {
                continue;
            }
            if let Some((_, f)) = self.failures.iter().find(|((t, _), _)| *t == s.id) {
                s.stop_code = Some(StopCode::TaskFailedToStart);
                s.stop_reason = Some(f.why.clone());
            }
        }
        // A task with a container still being started or stopped has not stopped yet: the
        // start may yet make a container that must be stopped.
        for s in status.iter_mut().filter(|s| s.state == TaskState::Stopped) {
            let acting = self
                .in_flight
                .iter()
                .any(|t| matches!(t, Target::Container(n) if n.task == s.id));
            if acting {
                s.state = TaskState::Stopping;
            }
        }
        self.note_runs(&mut status, now.unix_secs());
        self.keep_exits(&desired, &mut status);
        for t in &desired.tasks {
            let defs = &t.definition.container_definitions;
            self.names
                .insert(t.id.clone(), defs.iter().map(|c| c.name.clone()).collect());
        }
        self.names.retain(|task, _| {
            desired.tasks.iter().any(|t| &t.id == task) || seen.iter().any(|c| &c.name.task == task)
        });
        let commands: Vec<Command> = planned
            .actions
            .into_iter()
            .filter_map(|a| command(&desired, &names, &self.names, a))
            .map(|c| match c {
                Command::Start { name, container } if lost.contains(&name) => {
                    Command::Resume { name, container }
                }
                other => other,
            })
            .filter(|c| !self.busy(&c.target()))
            .collect();
        self.in_flight.extend(commands.iter().map(Command::target));

        let checks = seen
            .iter()
            .filter(|c| c.state == RunState::Running)
            .filter_map(|c| {
                let check = definition(&desired, &c.name)?.health_check.as_ref()?;
                Some((c.id.clone(), check.clone()))
            })
            .collect();
        // Failures and restarts of tasks that left the desired state are forgotten.
        let assigned = |t: &String| desired.tasks.iter().any(|d| &d.id == t);
        self.failures.retain(|(t, _), _| assigned(t));
        self.restarts.retain(|(t, _), _| assigned(t));
        Round {
            desired,
            commands,
            status,
            checks,
        }
    }

    /// Fires due schedules and stops tasks whose service wants them stopped after this long
    /// offline; then the desired state with this node's own runs added (those the control
    /// plane already lists are its).
    fn merged(&mut self, now: Now) -> DesiredState {
        let mut desired = self.desired.clone();
        let offline = self
            .offline_since
            .map(|t| now.mono.saturating_duration_since(t));
        self.self_stopped
            .retain(|id, _| desired.tasks.iter().any(|t| &t.id == id));
        for t in &mut desired.tasks {
            let carried = self.carried_for.as_ref().is_some_and(|c| c.contains(&t.id));
            let offline = offline.map(|off| {
                if carried {
                    self.offline_before.saturating_add(off)
                } else {
                    off
                }
            });
            if let (Some(limit), Some(off)) = (t.stop_on_client_after, offline) {
                if off >= Duration::from_secs(limit.into())
                    && !self.self_stopped.contains_key(&t.id)
                {
                    tracing::info!(task = %t.id, "no control plane for {limit} s: stopping it (stopOnClientAfter)");
                    self.self_stopped.insert(
                        t.id.clone(),
                        format!(
                            "service: stopped by its node after {limit} s without the control plane (stopOnClientAfter)"
                        ),
                    );
                }
            }
            if let Some(why) = self.self_stopped.get(&t.id) {
                if t.desired == DesiredStatus::Running {
                    t.desired = DesiredStatus::Stopped;
                    t.stop_code = Some(StopCode::StopOnClientAfter);
                    t.stop_reason = Some(why.clone());
                }
            }
        }
        let runs = &mut self.runs;
        if crate::schedule::fire_due(
            &desired.schedules,
            &mut runs.fired,
            &mut runs.tasks,
            &self.node_id,
            now.unix_secs(),
        ) {
            self.runs_dirty = true;
        }
        for l in runs.tasks.iter().filter(|l| l.acknowledged) {
            self.acknowledged_at
                .entry(l.task.id.clone())
                .or_insert(now.mono);
        }
        let held = |id: &str| {
            self.acknowledged_at
                .get(id)
                .map_or(0, |at| now.mono.saturating_duration_since(*at).as_secs())
        };
        if crate::schedule::forget_old(&mut runs.tasks, now.unix_secs(), held) {
            self.runs_dirty = true;
        }
        self.acknowledged_at
            .retain(|id, _| runs.tasks.iter().any(|l| &l.task.id == id));
        for l in &self.runs.tasks {
            if !desired.tasks.iter().any(|t| t.id == l.task.id) {
                desired.tasks.push(l.task.clone());
            }
        }
        desired
    }

    /// The containers seen, by task and container name (a placeholder for those of tasks no
    /// longer assigned), with the containers that could not start as exited
    /// with [`START_FAILED_EXIT`]; and the runtime name of each container seen.
    fn world(
        &mut self,
        desired: &DesiredState,
        seen: &[TaskContainer],
        health: &BTreeMap<String, bool>,
        now: Now,
    ) -> (World, BTreeMap<(String, String), ContainerName>) {
        let mut world = World::new();
        let mut names = BTreeMap::new();
        let mut exited = BTreeSet::new();
        for c in seen {
            let container = definition(desired, &c.name)
                .map(|d| d.name.clone())
                .unwrap_or_else(|| c.name.placeholder());
            let since = |t: Option<SystemTime>, until: SystemTime| {
                t.and_then(|t| until.duration_since(t).ok())
                    .unwrap_or_default()
            };
            let observed = match c.state {
                RunState::Created => Observed::Created,
                RunState::Running => Observed::Running {
                    healthy: health.get(&c.id).copied(),
                },
                // Lost ones of tasks meant to run were set aside before; the rest ended, how
                // unknown.
                RunState::Exited(_) | RunState::Lost => {
                    let exit = match c.state {
                        RunState::Exited(exit) => exit,
                        _ => None,
                    };
                    let finished = exit.and_then(|e| e.finished_at);
                    // An unknown exit time counts as just now, so backoff still applies. Once
                    // seen, an exit ages by the monotonic clock: a wall clock set a year ahead
                    // must not end its backoff early, nor one set back from it (the exit then
                    // reads as a year in the future) hold its restart for a year.
                    let ago = match self.exits.get(&c.name) {
                        Some(e) if e.finished == finished => e
                            .ago
                            .saturating_add(now.mono.saturating_duration_since(e.seen)),
                        _ => {
                            let ago = since(finished, now.wall);
                            self.exits.insert(
                                c.name.clone(),
                                SeenExit {
                                    finished,
                                    seen: now.mono,
                                    ago,
                                },
                            );
                            ago
                        }
                    };
                    exited.insert(c.name.clone());
                    Observed::Exited {
                        code: exit.map_or(UNKNOWN_EXIT, |e| e.code),
                        oom: exit.is_some_and(|e| e.oom),
                        ran: since(c.started_at, finished.unwrap_or(now.wall)),
                        ago,
                    }
                }
            };
            world
                .entry(c.name.task.clone())
                .or_default()
                .insert(container.clone(), observed);
            names.insert((c.name.task.clone(), container), c.name.clone());
        }
        self.exits.retain(|name, _| exited.contains(name));
        for ((task, container), f) in &self.failures {
            let failed = Observed::Exited {
                code: START_FAILED_EXIT,
                oom: false,
                ran: Duration::ZERO,
                ago: now.mono.saturating_duration_since(f.at),
            };
            // A failure is newer than the exit a container shows (a restart clears it): a
            // restart that could not start counts from its own failure, so its backoff grows
            // instead of being measured from the exit before it, again and again.
            world
                .entry(task.clone())
                .or_default()
                .entry(container.clone())
                .and_modify(|o| {
                    if matches!(o, Observed::Exited { .. }) {
                        *o = failed;
                    }
                })
                .or_insert(failed);
        }
        (world, names)
    }

    /// Tags the statuses of the node's schedule runs, and marks the runs that stopped (when, and
    /// why: kept as their stop code and reason once they are told to stop after the
    /// acknowledgement).
    fn note_runs(&mut self, status: &mut [TaskStatus], now: u64) {
        for s in status.iter_mut() {
            let Some(l) = self.runs.tasks.iter_mut().find(|l| l.task.id == s.id) else {
                continue;
            };
            s.scheduled = Some(l.run.clone());
            if s.state == TaskState::Stopped && l.finished_at.is_none() {
                l.finished_at = Some(now);
                l.task.stop_reason.clone_from(&s.stop_reason);
                l.task.stop_code = s.stop_code;
                self.runs_dirty = true;
            }
        }
    }

    /// A stopped task's status keeps its containers' exits, its stop code and reason after the
    /// containers are removed: a report that comes later (a slow session, a reconnect) still
    /// carries them. Its containers are removed one after the other, so a round in between
    /// sees some of them exited and the others gone: each gone one keeps its exit too.
    fn keep_exits(&mut self, desired: &DesiredState, status: &mut [TaskStatus]) {
        self.kept
            .retain(|id, _| desired.tasks.iter().any(|t| &t.id == id));
        for s in status.iter_mut().filter(|s| s.state == TaskState::Stopped) {
            let exited =
                |c: &flotilla_api::tasks::ContainerStatus| c.state == ContainerState::Exited;
            if let Some(k) = self.kept.get(&s.id) {
                if !s.containers.iter().any(exited) {
                    s.containers.clone_from(&k.containers);
                    s.stop_code = k.stop_code;
                    s.stop_reason.clone_from(&k.stop_reason);
                } else {
                    for c in s.containers.iter_mut().filter(|c| !exited(c)) {
                        if let Some(was) =
                            k.containers.iter().find(|w| w.name == c.name && exited(w))
                        {
                            c.clone_from(was);
                        }
                    }
                    if s.stop_code.is_none() {
                        s.stop_code = k.stop_code;
                        s.stop_reason.clone_from(&k.stop_reason);
                    }
                }
            }
            if s.containers.iter().any(exited) {
                self.kept.insert(s.id.clone(), s.clone());
            }
        }
    }
}

/// The definition of container `name`, when its task is desired.
fn definition<'a>(
    desired: &'a DesiredState,
    name: &ContainerName,
) -> Option<&'a flotilla_api::taskdef::ContainerDefinition> {
    desired
        .tasks
        .iter()
        .find(|t| t.id == name.task)?
        .definition
        .container_definitions
        .get(name.index)
}

/// The reconciler's action as a command on runtime names: those of the containers seen, else
/// by the container's index in its task's definition.
fn command(
    desired: &DesiredState,
    names: &BTreeMap<(String, String), ContainerName>,
    known: &BTreeMap<String, Vec<String>>,
    action: Action,
) -> Option<Command> {
    let name = |task: &str, container: &str| {
        names
            .get(&(task.to_string(), container.to_string()))
            .cloned()
            .or_else(|| {
                let t = desired.tasks.iter().find(|t| t.id == task)?;
                let index = t
                    .definition
                    .container_definitions
                    .iter()
                    .position(|c| c.name == container)?;
                Some(ContainerName::new(task, index))
            })
    };
    Some(match action {
        Action::Start { task, container } => Command::Start {
            name: name(&task, &container)?,
            container,
        },
        Action::Stop {
            task,
            container,
            grace_secs,
        } => Command::Stop {
            name: name(&task, &container)?,
            container,
            grace: Duration::from_secs(grace_secs.into()),
        },
        Action::Restart {
            task,
            container,
            attempt,
        } => Command::Restart {
            name: name(&task, &container)?,
            container,
            attempt,
        },
        Action::Remove { task } => Command::Remove {
            containers: known.get(&task).cloned().unwrap_or_default(),
            task,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::ContainerRuntime;
    use flotilla_api::tasks::{DesiredTask, NodeSchedule};

    /// 2026-11-26T00:00:00Z: the simulated wall clock starts there.
    const MIDNIGHT: u64 = 1_795_651_200;

    const SERVE: &str = r#"{"family":"serve","containerDefinitions":[
        {"name":"main","image":"x","memory":64}]}"#;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn task(id: &str, json: &str) -> DesiredTask {
        DesiredTask {
            id: id.into(),
            task_definition: "f:1".into(),
            definition: flotilla_api::taskdef::parse(json)
                .expect("valid")
                .definition,
            env: Vec::new(),
            desired: DesiredStatus::Running,
            stop_reason: None,
            stop_code: None,
            stop_on_client_after: None,
            address: None,
            namespace: None,
            service: None,
            secret_versions: Default::default(),
            config_versions: Default::default(),
        }
    }

    fn state(generation: u64, tasks: Vec<DesiredTask>) -> DesiredState {
        DesiredState {
            generation,
            tasks,
            schedules: Vec::new(),
            network: Default::default(),
        }
    }

    fn of<'a>(status: &'a [TaskStatus], id: &str) -> &'a TaskStatus {
        status
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no status of {id} in {status:?}"))
    }

    /// A node and a fake runtime in simulated time; commands are applied as the runner
    /// applies them.
    /// The configuration container `name` of `desired` is made from, as the runner makes it.
    fn config_of(
        desired: &DesiredState,
        name: &ContainerName,
    ) -> flotilla_runtime::container::ContainerConfig {
        let t = desired
            .tasks
            .iter()
            .find(|t| t.id == name.task)
            .expect("a desired task");
        let def = &t.definition.container_definitions[name.index];
        crate::runner::container_config(&name.task, &t.definition, def)
    }

    struct Sim {
        node: Node,
        rt: FakeRuntime,
        mono0: Instant,
        /// Simulated time since the start.
        t: Duration,
        /// Every container started, and when.
        starts: Vec<(Duration, ContainerName)>,
        /// Kinds of command the runner is slow at: they stay in flight in `held` until
        /// [`Sim::release`].
        slow: Slow,
        /// Commands in flight, with the desired state of the round that gave them.
        held: Vec<(DesiredState, Command)>,
        /// Every container lost with a power cut started again, and how.
        resumes: Vec<(ContainerName, crate::runtime::Resumed)>,
        /// How far the wall clock reads ahead of the simulated time (a clock set wrong).
        ahead: Duration,
    }

    /// Which commands take long (a stop waiting out its timeout, a start pulling an image).
    #[derive(Default, Clone, Copy)]
    struct Slow {
        stops: bool,
        starts: bool,
    }

    impl Sim {
        fn new(desired: DesiredState) -> Self {
            Self::with(FakeRuntime::default(), desired, LocalRuns::default())
        }

        fn with(rt: FakeRuntime, desired: DesiredState, runs: LocalRuns) -> Self {
            Self::with_contact(rt, desired, runs, LastContact::Never)
        }

        /// A node started with a last contact with the control plane an earlier run
        /// recorded (its wall clock at the start: midnight).
        fn with_contact(
            rt: FakeRuntime,
            desired: DesiredState,
            runs: LocalRuns,
            last_contact: LastContact,
        ) -> Self {
            let mono0 = Instant::now();
            let start = Now {
                wall: UNIX_EPOCH + secs(MIDNIGHT),
                mono: mono0,
            };
            let mut sim = Self {
                node: Node::new("n-1", desired, runs, start, last_contact),
                rt,
                mono0,
                t: Duration::ZERO,
                starts: Vec::new(),
                slow: Slow::default(),
                held: Vec::new(),
                resumes: Vec::new(),
                ahead: Duration::ZERO,
            };
            sim.at(Duration::ZERO);
            sim
        }

        fn now(&self) -> Now {
            Now {
                wall: UNIX_EPOCH + secs(MIDNIGHT) + self.t + self.ahead,
                mono: self.mono0 + self.t,
            }
        }

        /// Moves the clock to `t` after the start.
        fn at(&mut self, t: Duration) {
            assert!(t >= self.t, "time goes forward");
            self.t = t;
            self.rt.set_time(self.now().wall);
        }

        fn after(&mut self, d: Duration) {
            self.at(self.t + d);
        }

        /// The wall clock (the node's and its containers') jumps to `ahead` of the real time.
        fn clock_ahead(&mut self, ahead: Duration) {
            self.ahead = ahead;
            self.at(self.t);
        }

        fn online(&mut self, online: bool) {
            let mono = self.now().mono;
            self.node.set_online(online, mono);
        }

        /// One round, its commands applied.
        fn round(&mut self) -> Round {
            let seen = self.rt.list().expect("list");
            let round = self.node.round(&seen, &BTreeMap::new(), self.now());
            for c in &round.commands {
                let slow = match c {
                    Command::Stop { .. } => self.slow.stops,
                    Command::Start { .. } => self.slow.starts,
                    _ => false,
                };
                if slow {
                    self.held.push((round.desired.clone(), c.clone()));
                } else {
                    self.apply(&round.desired, c.clone());
                    self.node.done(&c.target());
                }
            }
            round
        }

        /// The commands in flight are done.
        fn release(&mut self) {
            for (desired, c) in std::mem::take(&mut self.held) {
                self.apply(&desired, c.clone());
                self.node.done(&c.target());
            }
        }

        /// Rounds back to back until one does nothing, as the runner does; its status.
        fn settle(&mut self) -> Vec<TaskStatus> {
            for _ in 0..10 {
                let round = self.round();
                if round.commands.is_empty() {
                    return round.status;
                }
            }
            panic!("still acting after 10 rounds back to back");
        }

        fn apply(&mut self, desired: &DesiredState, command: Command) {
            match command {
                Command::Start { name, container } => self.start(desired, name, &container, false),
                Command::Resume { name, container } => {
                    let config = config_of(desired, &name);
                    match self.rt.resume(&name, config, &Default::default()) {
                        Ok(how) => {
                            self.resumes.push((name.clone(), how));
                            self.starts.push((self.t, name));
                        }
                        Err(e) => {
                            let mono = self.now().mono;
                            self.node
                                .start_failed(&name.task, &container, &e.to_string(), mono);
                        }
                    }
                }
                Command::Stop { name, grace, .. } => self.rt.stop(&name, grace).expect("stop"),
                Command::Restart {
                    name,
                    container,
                    attempt,
                } => {
                    self.node.restarting(&name.task, &container, attempt);
                    self.start(desired, name, &container, true);
                }
                Command::Remove { task, .. } => self.rt.remove_task(&task).expect("remove task"),
            }
        }

        fn start(
            &mut self,
            desired: &DesiredState,
            name: ContainerName,
            container: &str,
            restart: bool,
        ) {
            let config = config_of(desired, &name);
            let done = if restart {
                self.rt.restart(&name, config, &Default::default())
            } else {
                self.rt.run(&name, config, &Default::default())
            };
            match done {
                Ok(()) => self.starts.push((self.t, name)),
                Err(e) => {
                    let mono = self.now().mono;
                    self.node
                        .start_failed(&name.task, container, &e.to_string(), mono);
                }
            }
        }

        /// Containers started so far.
        fn started(&self) -> usize {
            self.starts.len()
        }
    }

    #[test]
    fn a_wall_clock_jump_neither_ends_a_restart_backoff_early_nor_holds_it() {
        const CRASHY: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"web","image":"x","memory":64,
             "restartPolicy":{"enabled":true,"restartAttemptPeriod":60}}]}"#;
        const YEAR: Duration = Duration::from_secs(365 * 86_400);
        let mut sim = Sim::new(state(1, vec![task("t-1", CRASHY)]));
        let web = ContainerName::new("t-1", 0);
        sim.settle();
        // A year ahead, it crashes twice: restarted at once, then due 1 s after its exit.
        sim.after(secs(5));
        sim.clock_ahead(YEAR);
        sim.rt.exit(&web, 2);
        sim.settle();
        assert_eq!(sim.started(), 2);
        sim.after(secs(1));
        sim.rt.exit(&web, 2);
        sim.settle();
        assert_eq!(sim.started(), 2, "backoff");
        // The clock goes back a year: its exit reads a year in the future, and still the
        // restart comes 1 s after it, not a year later.
        sim.after(Duration::from_millis(500));
        sim.clock_ahead(Duration::ZERO);
        sim.settle();
        assert_eq!(sim.started(), 2, "backoff");
        sim.after(Duration::from_millis(600));
        sim.settle();
        assert_eq!(sim.started(), 3, "held by a clock set back");
        // It crashes again (2 s of backoff) and the clock jumps a year ahead: its exit now
        // reads a year old, and still it waits its 2 s.
        sim.after(secs(1));
        sim.rt.exit(&web, 2);
        sim.settle();
        sim.after(secs(1));
        sim.clock_ahead(YEAR);
        sim.settle();
        assert_eq!(sim.started(), 3, "backoff ended early by a clock set ahead");
        sim.after(Duration::from_millis(1100));
        sim.settle();
        assert_eq!(sim.started(), 4);
    }

    #[test]
    fn restarts_back_off_from_at_once_doubling_from_one_second_to_five_minutes() {
        const CRASHY: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"web","image":"x","memory":64,
             "restartPolicy":{"enabled":true,"restartAttemptPeriod":60}}]}"#;
        let mut sim = Sim::new(state(1, vec![task("t-1", CRASHY)]));
        let web = ContainerName::new("t-1", 0);
        sim.settle();
        assert_eq!(sim.started(), 1);
        let id = sim.rt.get(&web).expect("running").id;
        // It ran 5 s and crashed: the first restart is at once, in place, and the task keeps
        // running.
        sim.after(secs(5));
        sim.rt.exit(&web, 2);
        let s = sim.settle();
        assert_eq!(sim.started(), 2);
        assert_eq!(of(&s, "t-1").state, TaskState::Running);
        assert_eq!(of(&s, "t-1").containers[0].restarts, 1);
        assert_eq!(sim.rt.get(&web).map(|c| c.id), Some(id.clone()));
        // From then on it crashes as it starts: each restart waits 1 s, doubling, up to 5 min;
        // meanwhile it is reported restarting, with its exit code and when the next try is —
        // the same moment every round, so a report goes out once.
        let mut waits = Vec::new();
        for _ in 2..=12 {
            sim.rt.exit(&web, 2);
            let crashed = sim.t;
            let before = sim.started();
            let mut restart_at = None;
            while sim.started() == before {
                sim.after(Duration::from_millis(250));
                let s = sim.settle();
                assert_eq!(of(&s, "t-1").state, TaskState::Running);
                assert_eq!(of(&s, "t-1").stop_code, None);
                let c = &of(&s, "t-1").containers[0];
                if sim.started() == before {
                    assert_eq!(
                        (c.state, c.exit_code),
                        (ContainerState::Restarting, Some(2))
                    );
                    assert!(
                        restart_at.is_none_or(|at| c.restart_at == Some(at)),
                        "{c:?}"
                    );
                    restart_at = c.restart_at;
                }
            }
            let waited = (sim.t - crashed).as_secs_f64();
            let exit = MIDNIGHT as f64 + crashed.as_secs_f64();
            assert_eq!(
                restart_at.map(|at| at as f64),
                Some((exit + waited).ceil()),
                "{waited}"
            );
            waits.push(waited);
        }
        assert_eq!(
            waits,
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
        );
        // One that ran its restartAttemptPeriod before it crashed is restarted at once again;
        // its count goes on (it is the same container).
        sim.after(secs(60));
        sim.rt.exit(&web, 2);
        let before = sim.started();
        let s = sim.settle();
        assert_eq!(sim.started(), before + 1);
        assert_eq!(of(&s, "t-1").containers[0].restarts, 13);
        assert_eq!(sim.rt.get(&web).map(|c| c.id), Some(id));
    }

    #[test]
    fn a_restart_that_cannot_start_backs_off_from_its_own_failure_not_the_exit_before_it() {
        const CRASHY: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"web","image":"flaky","memory":64,
             "restartPolicy":{"enabled":true,"restartAttemptPeriod":60}}]}"#;
        let mut sim = Sim::new(state(1, vec![task("t-1", CRASHY)]));
        let web = ContainerName::new("t-1", 0);
        sim.settle();
        sim.after(secs(5));
        // It exits, and from then on its restarts cannot start (a secret gone, say): an hour
        // later it has been tried about as often as backoff allows, not at every round.
        sim.rt.break_image("flaky");
        sim.rt.exit(&web, 2);
        let before = sim.rt.attempts();
        for _ in 0..3600 {
            sim.after(secs(1));
            sim.settle();
        }
        let tried = sim.rt.attempts() - before;
        assert!((5..=25).contains(&tried), "{tried} attempts in an hour");
    }

    #[test]
    fn a_restart_count_is_the_containers_and_survives_an_agent_restart() {
        const CRASHY: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"web","image":"x","memory":64,
             "restartPolicy":{"enabled":true,"restartAttemptPeriod":60}}]}"#;
        let desired = state(1, vec![task("t-1", CRASHY)]);
        let mut sim = Sim::new(desired.clone());
        let web = ContainerName::new("t-1", 0);
        sim.settle();
        for _ in 0..2 {
            sim.after(secs(5));
            sim.rt.exit(&web, 2);
            sim.after(secs(5));
            sim.settle();
        }
        assert_eq!(sim.rt.get(&web).map(|c| c.restarts), Some(2));
        // The agent restarts: nothing in memory, the same count reported, nothing restarted.
        let rt = std::mem::take(&mut sim.rt);
        let mut sim = Sim::with(rt, desired, LocalRuns::default());
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").containers[0].restarts, 2);
        assert_eq!(sim.started(), 0);
        // It crashes again: restarted in place, counted on.
        sim.after(secs(5));
        sim.rt.exit(&web, 2);
        let s = sim.settle();
        assert_eq!(sim.started(), 1);
        assert_eq!(of(&s, "t-1").containers[0].restarts, 3);
        assert_eq!(of(&s, "t-1").state, TaskState::Running);
    }

    #[test]
    fn a_container_that_cannot_start_stops_its_task_once_with_its_reason_and_no_exit_code() {
        const BROKEN: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"main","image":"registry.example/nope","memory":64},
            {"name":"side","image":"x","memory":64,"essential":false}]}"#;
        let mut sim = Sim::new(state(1, vec![task("t-1", BROKEN)]));
        sim.rt.break_image("registry.example/nope");
        let s = sim.settle();
        let t = of(&s, "t-1");
        assert_eq!(t.state, TaskState::Stopped);
        assert_eq!(t.stop_code, Some(StopCode::TaskFailedToStart));
        let reason = t.stop_reason.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("container main could not start: ")
                && reason.contains("registry.example/nope"),
            "{reason}"
        );
        // It never ran: no exit code, its failure as its reason (as ECS reports it).
        assert_eq!(t.containers[0].state, ContainerState::Exited);
        assert_eq!(t.containers[0].exit_code, None);
        assert_eq!(t.containers[0].reason.as_deref(), Some(reason));
        assert!(t.containers[0].never_ran());
        // the other container was stopped with it
        assert_eq!(t.containers[1].exit_code, Some(143));
        assert!(!t.containers[1].never_ran());
        // An hour later, nothing was tried again and the report is the same.
        let attempts = sim.rt.attempts();
        for _ in 0..3600 {
            sim.after(secs(1));
            assert_eq!(&sim.settle(), &s);
        }
        assert_eq!(sim.rt.attempts(), attempts);
        // The control plane recorded it and drops it: its containers go, and so does it.
        sim.node.set_desired(state(2, Vec::new()));
        let s = sim.settle();
        assert!(sim.rt.list().expect("list").is_empty());
        sim.after(secs(1));
        assert!(sim.settle().is_empty(), "{s:?}");
    }

    #[test]
    fn time_offline_counts_from_the_last_contact_an_earlier_run_recorded() {
        let mut cut_off = task("t-1", SERVE);
        cut_off.stop_on_client_after = Some(30);
        let desired = state(1, vec![cut_off, task("t-2", SERVE)]);
        let midnight = UNIX_EPOCH + secs(MIDNIGHT);
        // (last contact before this start, seconds after the start until t-1 stops)
        let cases = [
            (LastContact::At(midnight - secs(20)), 10),
            (LastContact::At(midnight - secs(30)), 0),
            (LastContact::At(midnight - secs(3600)), 0),
            // Never recorded: from the start.
            (LastContact::Never, 30),
            // The clock is behind the contact, or the record is torn: unknown, so past the
            // limit.
            (LastContact::At(midnight + secs(600)), 0),
            (LastContact::Unreadable, 0),
        ];
        for (contact, stops_after) in cases {
            let mut sim = Sim::with_contact(
                FakeRuntime::default(),
                desired.clone(),
                LocalRuns::default(),
                contact,
            );
            if stops_after > 0 {
                sim.after(secs(stops_after) - Duration::from_millis(1));
                let s = sim.settle();
                assert_eq!(of(&s, "t-1").state, TaskState::Running, "{contact:?}");
                sim.after(Duration::from_millis(1));
            }
            let s = sim.settle();
            let t = of(&s, "t-1");
            assert_eq!(t.state, TaskState::Stopped, "{contact:?}");
            assert_eq!(t.stop_code, Some(StopCode::StopOnClientAfter));
            // It never ran in this start.
            if stops_after == 0 {
                assert!(
                    !sim.starts.iter().any(|(_, n)| n.task == "t-1"),
                    "{contact:?}: {:?}",
                    sim.starts
                );
            }
            assert_eq!(of(&s, "t-2").state, TaskState::Running);
        }
        // A session resets the count: lost again later, it starts from then.
        let mut sim = Sim::with_contact(
            FakeRuntime::default(),
            desired.clone(),
            LocalRuns::default(),
            LastContact::At(midnight - secs(20)),
        );
        sim.online(true);
        sim.after(secs(5));
        sim.online(false);
        sim.after(secs(29));
        assert_eq!(of(&sim.settle(), "t-1").state, TaskState::Running);
        sim.after(secs(1));
        assert_eq!(of(&sim.settle(), "t-1").state, TaskState::Stopped);
    }

    #[test]
    fn a_task_still_running_when_the_agent_restarts_counts_from_the_restart() {
        // The agent alone restarts (an upgrade, a crash): its containers kept running, the
        // node was never down. A contact recorded long ago (a heartbeat is up to 30 s old)
        // must not stop them at once.
        let mut cut_off = task("t-1", SERVE);
        cut_off.stop_on_client_after = Some(30);
        let desired = state(1, vec![cut_off]);
        let mut first = Sim::new(desired.clone());
        first.settle();
        let rt = std::mem::take(&mut first.rt);
        let midnight = UNIX_EPOCH + secs(MIDNIGHT);
        let mut sim = Sim::with_contact(
            rt,
            desired,
            LocalRuns::default(),
            LastContact::At(midnight - secs(3600)),
        );
        sim.after(secs(29));
        assert_eq!(of(&sim.settle(), "t-1").state, TaskState::Running);
        sim.after(secs(1));
        assert_eq!(of(&sim.settle(), "t-1").state, TaskState::Stopped);
    }

    #[test]
    fn stop_on_client_after_stops_a_task_after_exactly_that_long_offline_until_it_is_dropped() {
        let mut cut_off = task("t-1", SERVE);
        cut_off.stop_on_client_after = Some(30);
        let desired = state(1, vec![cut_off, task("t-2", SERVE)]);
        let mut sim = Sim::new(desired.clone());
        sim.online(true);
        sim.settle();
        sim.after(secs(100));
        sim.online(false);
        sim.after(secs(30) - Duration::from_millis(1));
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").state, TaskState::Running, "not before");
        sim.after(Duration::from_millis(1));
        let s = sim.settle();
        let t = of(&s, "t-1");
        assert_eq!(t.state, TaskState::Stopped);
        assert_eq!(t.stop_code, Some(StopCode::StopOnClientAfter));
        assert!(
            t.stop_reason
                .as_deref()
                .unwrap_or_default()
                .contains("after 30 s without the control plane (stopOnClientAfter)"),
            "{t:?}"
        );
        assert_eq!(t.containers[0].exit_code, Some(143));
        assert!(sim.rt.get(&ContainerName::new("t-1", 0)).is_none());
        assert_eq!(of(&s, "t-2").state, TaskState::Running);
        // The session comes back, and with it the same desired state (the control plane had
        // not heard of the stop yet): the task stays stopped, as it was reported.
        sim.after(secs(60));
        sim.online(true);
        let mut again = desired.clone();
        again.generation = 2;
        sim.node.set_desired(again);
        let started = sim.started();
        for _ in 0..60 {
            sim.after(secs(1));
            assert_eq!(of(&sim.settle(), "t-1"), t);
        }
        assert_eq!(sim.started(), started);
        // The control plane drops it: the node forgets it.
        sim.node.set_desired(state(3, vec![task("t-2", SERVE)]));
        let s = sim.settle();
        assert!(s.iter().all(|s| s.id != "t-1"), "{s:?}");

        // A node that boots without a session counts as offline from its start.
        let mut sim = Sim::new(desired);
        sim.settle();
        sim.after(secs(29));
        assert_eq!(of(&sim.settle(), "t-1").state, TaskState::Running);
        sim.after(secs(1));
        assert_eq!(of(&sim.settle(), "t-1").state, TaskState::Stopped);
    }

    #[test]
    fn exit_and_stop_codes_survive_the_removal_of_the_containers() {
        let mut sim = Sim::new(state(1, vec![task("t-1", SERVE), task("t-2", SERVE)]));
        sim.settle();
        sim.after(secs(10));
        // The control plane stops one as its service scaled down, the other as an operator
        // (no code given).
        let mut d = state(2, vec![task("t-1", SERVE), task("t-2", SERVE)]);
        d.tasks[0].desired = DesiredStatus::Stopped;
        d.tasks[0].stop_code = Some(StopCode::ServiceScaledDown);
        d.tasks[1].desired = DesiredStatus::Stopped;
        sim.node.set_desired(d);
        let s = sim.settle();
        assert!(
            sim.rt.list().expect("list").is_empty(),
            "containers removed"
        );
        for _ in 0..5 {
            sim.after(secs(1));
            assert_eq!(sim.settle(), s);
        }
        let (a, b) = (of(&s, "t-1"), of(&s, "t-2"));
        assert_eq!(
            (a.state, a.stop_code, a.stop_reason.as_deref()),
            (
                TaskState::Stopped,
                Some(StopCode::ServiceScaledDown),
                Some("service: scaled down")
            )
        );
        assert_eq!(
            (b.state, b.stop_code, b.stop_reason.as_deref()),
            (
                TaskState::Stopped,
                Some(StopCode::UserInitiated),
                Some("stopped by an operator")
            )
        );
        assert_eq!(a.containers[0].exit_code, Some(143));
        assert_eq!(b.containers[0].exit_code, Some(143));
    }

    #[test]
    fn containers_lost_with_the_machine_run_again_only_for_tasks_meant_to_run() {
        let mut sim = Sim::new(state(1, vec![task("t-1", SERVE), task("t-2", SERVE)]));
        sim.settle();
        let first: Vec<String> = sim
            .rt
            .list()
            .expect("list")
            .iter()
            .map(|c| c.id.clone())
            .collect();
        // The power goes while t-2 was being stopped (its stop reached the node's disk, not
        // yet its containers).
        let mut d = state(2, vec![task("t-1", SERVE), task("t-2", SERVE)]);
        d.tasks[1].desired = DesiredStatus::Stopped;
        let rt = std::mem::take(&mut sim.rt);
        rt.power_cut();
        let mut sim = Sim::with(rt, d, LocalRuns::default());
        // t-1's container is asked to start again in place, not removed and created anew.
        let r = sim.round();
        let t1 = ContainerName::new("t-1", 0);
        assert!(
            r.commands.contains(&Command::Resume {
                name: t1.clone(),
                container: "main".into()
            }),
            "{:?}",
            r.commands
        );
        assert!(
            !r.commands
                .iter()
                .any(|c| matches!(c, Command::Start { .. } | Command::Restart { .. })),
            "{:?}",
            r.commands
        );
        let s = sim.settle();
        let now = sim.rt.list().expect("list");
        // t-1 runs again in the same container, its count starting over; t-2 is gone with its
        // container, stopped (its code unknown), not started again.
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0].name.task, "t-1");
        assert_eq!(now[0].state, RunState::Running);
        assert!(first.contains(&now[0].id), "{now:?} {first:?}");
        assert_eq!(sim.resumes, [(t1, crate::runtime::Resumed::InPlace)]);
        assert_eq!(of(&s, "t-1").state, TaskState::Running);
        assert_eq!(of(&s, "t-1").containers[0].restarts, 0);
        assert_eq!(of(&s, "t-2").state, TaskState::Stopped);
        assert_eq!(
            sim.starts.iter().filter(|(_, n)| n.task == "t-2").count(),
            0,
            "t-2 started again"
        );
    }

    #[test]
    fn a_pinned_schedule_fires_offline_at_its_minute_once_by_its_overlap_policy() {
        let schedule = |overlap: &str| NodeSchedule {
            name: "tick".into(),
            cron: "* * * * *".into(),
            timezone: "UTC".into(),
            overlap: overlap.parse().expect("overlap"),
            task_definition: "serve:1".into(),
            definition: flotilla_api::taskdef::parse(SERVE)
                .expect("valid")
                .definition,
            env: Vec::new(),
        };
        let with = |generation, overlap| DesiredState {
            schedules: vec![schedule(overlap)],
            ..state(generation, Vec::new())
        };
        let run = |minute: u64| {
            flotilla_api::tasks::scheduled_task_id("n-1", "tick", MIDNIGHT + minute * 60)
        };
        // Never online; a round every second.
        let mut sim = Sim::new(with(1, "allow"));
        let until = |sim: &mut Sim, t: u64| {
            let mut last = Vec::new();
            while sim.t < secs(t) {
                sim.after(secs(1));
                last = sim.settle();
            }
            last
        };
        // allow: one run at each minute, overlapping
        until(&mut sim, 190);
        let started: Vec<(Duration, String)> = sim
            .starts
            .iter()
            .map(|(t, n)| (*t, n.task.clone()))
            .collect();
        assert_eq!(
            started,
            [(secs(60), run(1)), (secs(120), run(2)), (secs(180), run(3))]
        );
        assert!(
            sim.node.unsaved_runs().is_some(),
            "the runs are to be saved"
        );
        // forbid: at minute 4 the earlier runs still run, so it is skipped; at minute 5 (they
        // ended) it fires
        sim.node.set_desired(with(2, "forbid"));
        until(&mut sim, 250);
        assert_eq!(sim.started(), 3);
        for m in 1..=3 {
            sim.rt.exit(&ContainerName::new(&run(m), 0), 0);
        }
        until(&mut sim, 310);
        assert_eq!(sim.starts[3], (secs(300), ContainerName::new(&run(5), 0)));
        // replace: at minute 6 the run of minute 5 is stopped for the new one
        sim.node.set_desired(with(3, "replace"));
        let s = until(&mut sim, 370);
        assert_eq!(sim.starts[4], (secs(360), ContainerName::new(&run(6), 0)));
        assert_eq!(sim.started(), 5);
        let replaced = of(&s, &run(5));
        assert_eq!(
            (replaced.state, replaced.stop_code),
            (TaskState::Stopped, Some(StopCode::ScheduleReplaced))
        );
        assert_eq!(replaced.containers[0].exit_code, Some(143));
        assert_eq!(
            replaced.scheduled.as_ref().map(|r| r.fired_at),
            Some(MIDNIGHT + 300)
        );
        let ended = of(&s, &run(1));
        assert_eq!(
            (ended.state, ended.stop_code),
            (TaskState::Stopped, Some(StopCode::EssentialContainerExited))
        );
        assert_eq!(of(&s, &run(6)).state, TaskState::Running);
    }

    #[test]
    fn the_contact_is_recorded_once_a_quarter_of_the_shortest_limit_has_passed() {
        let midnight = UNIX_EPOCH + secs(MIDNIGHT);
        let with_limits = |limits: &[Option<u32>]| {
            let tasks = limits
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let mut t = task(&format!("t-{i}"), SERVE);
                    t.stop_on_client_after = *l;
                    t
                })
                .collect();
            Sim::new(state(1, tasks)).node
        };
        // No task with a limit: nothing is recorded.
        let node = with_limits(&[None, None]);
        assert_eq!(node.contact_lag(), None);
        assert!(!node.contact_due(None, midnight));
        // The shortest limit counts: 1800 s and 120 s give 30 s.
        let node = with_limits(&[Some(1800), None, Some(120)]);
        assert_eq!(node.contact_lag(), Some(secs(30)));
        // (recorded, now, due)
        let cases = [
            (None, midnight, true),
            (Some(midnight), midnight, false),
            (Some(midnight - secs(29)), midnight, false),
            (Some(midnight - secs(30)), midnight, true),
            (Some(midnight - secs(3600)), midnight, true),
            // The clock was set back behind the record.
            (Some(midnight + secs(1)), midnight, true),
        ];
        for (recorded, now, due) in cases {
            assert_eq!(node.contact_due(recorded, now), due, "{recorded:?}");
        }
        // A long limit: at most 10 min.
        let node = with_limits(&[Some(86_400)]);
        assert_eq!(node.contact_lag(), Some(secs(600)));
        assert!(!node.contact_due(Some(midnight - secs(599)), midnight));
        assert!(node.contact_due(Some(midnight - secs(600)), midnight));
        // A short one: every contact (a heartbeat is 5 s or more apart).
        let node = with_limits(&[Some(2)]);
        assert_eq!(node.contact_lag(), Some(Duration::from_millis(500)));
        assert!(node.contact_due(Some(midnight - secs(5)), midnight));
    }

    #[test]
    fn a_record_lagging_the_contact_by_its_bound_stops_a_task_early_never_late() {
        // The last real contact was 10 s before the power cut ended by this start; the record
        // lags it by up to a quarter of the limit (30 s of 120 s): the task is stopped up to
        // that much early, and never after its limit counted from the real contact.
        let mut cut_off = task("t-1", SERVE);
        cut_off.stop_on_client_after = Some(120);
        let desired = state(1, vec![cut_off]);
        let midnight = UNIX_EPOCH + secs(MIDNIGHT);
        let real = midnight - secs(10);
        for lag in [0, 15, 30] {
            let mut sim = Sim::with_contact(
                FakeRuntime::default(),
                desired.clone(),
                LocalRuns::default(),
                LastContact::At(real - secs(lag)),
            );
            // The limit counted from the real contact ends 110 s after this start.
            sim.after(secs(110 - lag) - Duration::from_millis(1));
            assert_eq!(
                of(&sim.settle(), "t-1").state,
                TaskState::Running,
                "lag {lag}"
            );
            sim.after(Duration::from_millis(1));
            assert_eq!(
                of(&sim.settle(), "t-1").state,
                TaskState::Stopped,
                "lag {lag}"
            );
        }
    }

    #[test]
    fn the_recorded_contact_reads_back_and_a_torn_one_is_unreadable() {
        use crate::runner::{load_contact, load_state, save_contact};
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::AgentDb::open(&dir.path().join("agent.redb")).expect("db");
        assert_eq!(load_contact(&db).expect("load"), LastContact::Never);
        load_state(&db).expect("the table");
        assert_eq!(load_contact(&db).expect("load"), LastContact::Never);
        let at = UNIX_EPOCH + secs(1_900_000_000);
        save_contact(&db, at).expect("save");
        assert_eq!(load_contact(&db).expect("load"), LastContact::At(at));
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("state");
        for torn in [
            "",
            "17e8",
            "-5",
            "18446744073709551615",
            "9223372036854775808",
            "\u{0}",
        ] {
            let w = db.begin_write().expect("write");
            w.open_table(table)
                .expect("table")
                .insert("contact", torn.as_bytes())
                .expect("insert");
            w.commit().expect("commit");
            assert_eq!(
                load_contact(&db).expect("load"),
                LastContact::Unreadable,
                "{torn:?}"
            );
        }
    }

    #[test]
    fn after_a_power_cut_a_node_built_from_what_it_persisted_runs_every_task_again() {
        use crate::runner::{load_state, save_desired, save_runs};
        const PAIR: &str = r#"{"family":"pair","containerDefinitions":[
            {"name":"a","image":"x","memory":64},{"name":"b","image":"x","memory":64}]}"#;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.redb");
        let db = crate::db::AgentDb::open(&path).expect("db");
        load_state(&db).expect("fresh state");
        let mut desired = state(5, vec![task("t-1", PAIR), task("t-2", SERVE)]);
        desired.schedules = vec![NodeSchedule {
            name: "daily".into(),
            cron: "0 0 * * *".into(),
            timezone: "UTC".into(),
            overlap: flotilla_api::schedule::Overlap::Allow,
            task_definition: "serve:1".into(),
            definition: flotilla_api::taskdef::parse(SERVE)
                .expect("valid")
                .definition,
            env: Vec::new(),
        }];
        save_desired(&db, &desired).expect("save");
        // The node runs its tasks and its schedule fires a run at midnight (saved as the
        // runner saves runs).
        let (d, runs) = load_state(&db).expect("load");
        let rt = FakeRuntime::default();
        let mut sim = Sim::with(rt, d, runs);
        sim.at(secs(86_400 - 30));
        sim.settle();
        sim.at(secs(86_400));
        let s = sim.settle();
        if let Some(runs) = sim.node.unsaved_runs() {
            save_runs(&db, runs).expect("save runs");
            sim.node.runs_saved();
        }
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().all(|t| t.state == TaskState::Running));
        // Power cut: containers gone, nothing in memory.
        let Sim { rt, t, .. } = sim;
        let mut before: Vec<(String, String)> = rt
            .list()
            .expect("list")
            .into_iter()
            .map(|c| (c.name.to_string(), c.id))
            .collect();
        before.sort();
        let attempts = rt.attempts();
        rt.power_cut();
        drop(db);
        let db = crate::db::AgentDb::open(&path).expect("db");
        let (d, runs) = load_state(&db).expect("load");
        assert_eq!(d.generation, 5);
        let mut sim = Sim::with(rt, d, runs);
        sim.at(t + secs(60));
        let s = sim.settle();
        let mut started: Vec<String> = sim.starts.iter().map(|(_, n)| n.to_string()).collect();
        started.sort();
        let mut want = vec!["t-1-0".to_string(), "t-1-1".into(), "t-2-0".into()];
        want.push(format!(
            "{}-0",
            flotilla_api::tasks::scheduled_task_id("n-1", "daily", MIDNIGHT + 86_400)
        ));
        want.sort();
        assert_eq!(started, want);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|t| t.state == TaskState::Running), "{s:?}");
        // Each started again in place: the same containers, nothing created.
        assert_eq!(sim.resumes.len(), 4, "{:?}", sim.resumes);
        assert!(sim
            .resumes
            .iter()
            .all(|(_, how)| *how == crate::runtime::Resumed::InPlace));
        let mut after: Vec<(String, String)> = sim
            .rt
            .list()
            .expect("list")
            .into_iter()
            .map(|c| (c.name.to_string(), c.id))
            .collect();
        after.sort();
        assert_eq!(after, before);
        assert_eq!(sim.rt.attempts(), attempts + 4);
    }

    #[test]
    fn after_a_power_cut_a_container_starts_again_in_place_or_afresh_when_it_cannot() {
        const CRASHY: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"web","image":"x","memory":64,
             "restartPolicy":{"enabled":true,"restartAttemptPeriod":60}}]}"#;
        let desired = state(
            1,
            vec![task("t-1", CRASHY), task("t-2", SERVE), task("t-3", SERVE)],
        );
        let mut sim = Sim::new(desired.clone());
        sim.settle();
        let (web, fresh, broken) = (
            ContainerName::new("t-1", 0),
            ContainerName::new("t-2", 0),
            ContainerName::new("t-3", 0),
        );
        // t-1's container was restarted twice by its policy.
        for _ in 0..2 {
            sim.after(secs(5));
            sim.rt.exit(&web, 2);
            sim.after(secs(5));
            sim.settle();
        }
        assert_eq!(sim.rt.get(&web).map(|c| c.restarts), Some(2));
        let id = |sim: &Sim, n: &ContainerName| sim.rt.get(n).expect("there").id;
        let (web_id, fresh_id, broken_id) = (id(&sim, &web), id(&sim, &fresh), id(&sim, &broken));
        // t-2's container had been created and not started yet; t-3's layer is damaged.
        sim.rt.never_started(&fresh);
        sim.rt.damage(&broken);
        let rt = std::mem::take(&mut sim.rt);
        rt.power_cut();
        let mut sim = Sim::with(rt, desired, LocalRuns::default());
        let s = sim.settle();
        // Every task runs again; t-1 in its own container, its count starting over (as Docker's
        // RestartCount after a reboot).
        assert!(s.iter().all(|t| t.state == TaskState::Running), "{s:?}");
        assert_eq!(id(&sim, &web), web_id);
        assert_eq!(of(&s, "t-1").containers[0].restarts, 0);
        // The others in new containers, each saying why.
        assert_ne!(id(&sim, &fresh), fresh_id);
        assert_ne!(id(&sim, &broken), broken_id);
        let how = |n: &ContainerName| {
            sim.resumes
                .iter()
                .find(|(r, _)| r == n)
                .map(|(_, how)| how.clone())
        };
        assert_eq!(how(&web), Some(crate::runtime::Resumed::InPlace));
        assert!(
            matches!(how(&fresh), Some(crate::runtime::Resumed::Afresh(why)) if why.contains("not started")),
            "{:?}",
            how(&fresh)
        );
        assert!(
            matches!(how(&broken), Some(crate::runtime::Resumed::Afresh(why)) if why.contains("damaged")),
            "{:?}",
            how(&broken)
        );
        // Its next crash is its first restart since.
        sim.after(secs(5));
        sim.rt.exit(&web, 2);
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").containers[0].restarts, 1);
        assert_eq!(id(&sim, &web), web_id);
    }

    #[test]
    fn a_container_waiting_out_its_stop_timeout_delays_nothing_else_on_the_node() {
        const SLOW: &str = r#"{"family":"slow","containerDefinitions":[
            {"name":"main","image":"x","memory":64,"stopTimeout":30}]}"#;
        let mut sim = Sim::new(state(1, vec![task("t-1", SLOW)]));
        sim.settle();
        sim.slow.stops = true;
        // The operator stops t-1 and a new task is placed here in the same breath.
        let mut d = state(2, vec![task("t-1", SLOW), task("t-2", SERVE)]);
        d.tasks[0].desired = DesiredStatus::Stopped;
        sim.node.set_desired(d.clone());
        let r = sim.round();
        assert!(
            r.commands
                .iter()
                .any(|c| matches!(c, Command::Stop { name, grace, .. }
                if name.task == "t-1" && *grace == secs(30))),
            "{:?}",
            r.commands
        );
        assert_eq!(
            sim.starts.last(),
            Some(&(secs(0), ContainerName::new("t-2", 0)))
        );
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").state, TaskState::Stopping);
        assert_eq!(of(&s, "t-2").state, TaskState::Running);
        // While the stop is in flight it is not asked again, and a task placed later starts
        // in the round it arrives in.
        sim.after(secs(10));
        d.generation = 3;
        d.tasks.push(task("t-3", SERVE));
        sim.node.set_desired(d);
        let r = sim.round();
        assert!(
            r.commands
                .iter()
                .all(|c| matches!(c, Command::Start { name, .. } if name.task == "t-3")),
            "{:?}",
            r.commands
        );
        assert_eq!(
            sim.starts.last(),
            Some(&(secs(10), ContainerName::new("t-3", 0)))
        );
        for _ in 0..19 {
            sim.after(secs(1));
            assert!(sim.round().commands.is_empty());
        }
        assert_eq!(sim.held.len(), 1);
        // The stop ends (its container exited): t-1 is removed and reported stopped.
        sim.release();
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").state, TaskState::Stopped);
        assert_eq!(of(&s, "t-1").containers[0].exit_code, Some(143));
        assert!(sim.rt.get(&ContainerName::new("t-1", 0)).is_none());
        assert_eq!(of(&s, "t-3").state, TaskState::Running);
    }

    #[test]
    fn a_stopped_tasks_exits_are_kept_while_its_containers_are_removed_one_by_one() {
        const TWO: &str = r#"{"family":"f","containerDefinitions":[
            {"name":"db","image":"x","memory":64},
            {"name":"app","image":"x","memory":64}]}"#;
        let mut sim = Sim::new(state(1, vec![task("t-1", TWO)]));
        sim.settle();
        let mut d = state(2, vec![task("t-1", TWO)]);
        d.tasks[0].desired = DesiredStatus::Stopped;
        sim.node.set_desired(d);
        // The stops, applied; then the rounds the runner's removal overlaps, not applied.
        let r = sim.round();
        assert!(
            r.commands.iter().all(|c| matches!(c, Command::Stop { .. })),
            "{:?}",
            r.commands
        );
        let seen = sim.rt.list().expect("list");
        let codes = |status: &[TaskStatus]| {
            let t = of(status, "t-1");
            assert_eq!(t.state, TaskState::Stopped, "{t:?}");
            t.containers.iter().map(|c| c.exit_code).collect::<Vec<_>>()
        };
        let r = sim.node.round(&seen, &BTreeMap::new(), sim.now());
        assert_eq!(codes(&r.status), [Some(143), Some(143)]);
        // db's container gone first, then app's: both exits stay.
        let app_only: Vec<_> = seen.iter().filter(|c| c.name.index == 1).cloned().collect();
        let r = sim.node.round(&app_only, &BTreeMap::new(), sim.now());
        assert_eq!(codes(&r.status), [Some(143), Some(143)]);
        let r = sim.node.round(&[], &BTreeMap::new(), sim.now());
        assert_eq!(codes(&r.status), [Some(143), Some(143)]);
    }

    #[test]
    fn a_task_stopped_while_its_container_is_still_starting_stops_that_container_after() {
        let mut sim = Sim::new(state(1, Vec::new()));
        sim.slow.starts = true;
        sim.node.set_desired(state(2, vec![task("t-1", SERVE)]));
        let r = sim.round();
        assert_eq!(r.commands.len(), 1);
        // A slow pull: the start is asked once, however many rounds pass.
        for _ in 0..5 {
            sim.after(secs(1));
            let r = sim.round();
            assert!(r.commands.is_empty(), "{:?}", r.commands);
            assert_eq!(of(&r.status, "t-1").state, TaskState::Pending);
        }
        // Stopped while its start is in flight: not stopped yet, the start may still run it.
        let mut d = state(3, vec![task("t-1", SERVE)]);
        d.tasks[0].desired = DesiredStatus::Stopped;
        sim.node.set_desired(d);
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").state, TaskState::Stopping);
        sim.release();
        assert_eq!(sim.started(), 1);
        let s = sim.settle();
        assert_eq!(of(&s, "t-1").state, TaskState::Stopped);
        assert!(sim.rt.list().expect("list").is_empty());
    }
}
