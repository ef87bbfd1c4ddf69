//! The node's containers as the runner sees them: the runtime name of a task's container, and
//! the narrow trait the runner acts through ([`ContainerRuntime`]) — over the node's
//! [`ContainerStore`] ([`StoreRuntime`]) or, in tests, a fake the test drives.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use flotilla_api::tasks::{ContainerUsage, TaskCgroupUsage};
use flotilla_runtime::container::{
    ContainerConfig, ContainerError, ContainerInfo, ContainerStore, NetworkSettings,
    SecretMaterial, Status,
};

/// A task's container as the container runtime names it: `<task id>-<index in the task's
/// definition>` (task ids start with `t-`). The one place that name is built or read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerName {
    /// The task's id.
    pub task: String,
    /// The container's index in the task's `containerDefinitions`.
    pub index: usize,
}

impl ContainerName {
    /// Container `index` of task `task`.
    pub fn new(task: &str, index: usize) -> Self {
        Self {
            task: task.to_string(),
            index,
        }
    }

    /// What the container is called when its task's definition is not known (the task left
    /// the desired state): `container-<index>`.
    pub fn placeholder(&self) -> String {
        format!("container-{}", self.index)
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.task, self.index)
    }
}

/// A runtime name that is not one of a task's containers (an operator's `ctr run`, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not the name of a task's container (<task id>-<index>)")]
pub struct NotTaskContainer(pub String);

impl FromStr for ContainerName {
    type Err = NotTaskContainer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NotTaskContainer(s.to_string());
        let (task, index) = s.rsplit_once('-').ok_or_else(bad)?;
        if !task.starts_with("t-") || task.len() == 2 || task.ends_with('-') {
            return Err(bad());
        }
        // Only the canonical spelling: the name read back must be the name the runtime holds.
        let canonical = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'));
        if !canonical {
            return Err(bad());
        }
        let index = index.parse().map_err(|_| bad())?;
        Ok(Self {
            task: task.to_string(),
            index,
        })
    }
}

/// The name of task `task`'s own volume `volume` (one not shared across tasks): it lives as
/// long as the task and is removed with it.
pub fn task_volume(task: &str, volume: &str) -> String {
    format!("{task}-{volume}")
}

/// Whether `name` is one of task `task`'s own volumes (see [`task_volume`]).
pub fn is_task_volume(task: &str, name: &str) -> bool {
    name.strip_prefix(task)
        .is_some_and(|rest| rest.starts_with('-'))
}

/// A task's container as the runtime last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskContainer {
    /// Its name.
    pub name: ContainerName,
    /// The runtime's id for it (health checks follow it).
    pub id: String,
    /// Where it is.
    pub state: RunState,
    /// When its process started, once it did (its last run's, for a restarted one).
    pub started_at: Option<SystemTime>,
    /// Times it was restarted in place; kept with the container, so also across agent
    /// restarts.
    pub restarts: u32,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, not (yet) running.
    Created,
    /// Its process runs.
    Running,
    /// It ended; `None` when nothing recorded how (its supervisor died with it).
    Exited(Option<Exit>),
    /// It was running or starting when the machine stopped (a power cut, a reboot, a kernel
    /// panic): it was started (or created) in an earlier boot and nothing recorded an exit.
    /// Its task did not end; the node starts it again in place ([`ContainerRuntime::resume`]).
    Lost,
}

/// How a container lost with an earlier boot started again ([`ContainerRuntime::resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// In place: the same container.
    InPlace,
    /// In a new container, for this reason (what the old one held is gone).
    Afresh(String),
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by one).
    pub code: i32,
    /// The kernel's OOM killer killed a process of it.
    pub oom: bool,
    /// When, if known.
    pub finished_at: Option<SystemTime>,
}

/// What the runtime failed to do, and to which container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container store refused or failed.
    #[error("{op} {target}: {source}")]
    Store {
        /// What was being done (`creating`, `stopping` …).
        op: &'static str,
        /// The container (or task, or volume).
        target: String,
        /// Why.
        #[source]
        source: ContainerError,
    },
}

/// The node's container runtime as the runner uses it: blocking calls (the runner makes them
/// off its async threads). Only task containers are seen or touched.
pub trait ContainerRuntime: fmt::Debug + Send + Sync {
    /// Every task container on the node.
    fn list(&self) -> Result<Vec<TaskContainer>, RuntimeError>;
    /// Creates container `name` from `config` (its image already in the store) and starts it
    /// with `secrets` (held in memory only; see `flotilla_runtime::container::SecretMaterial`).
    fn run(
        &self,
        name: &ContainerName,
        config: ContainerConfig,
        secrets: &SecretMaterial,
    ) -> Result<(), RuntimeError>;
    /// Stops a container: SIGTERM, SIGKILL after `grace`; one that is not running is left as
    /// it is.
    fn stop(&self, name: &ContainerName, grace: Duration) -> Result<(), RuntimeError>;
    /// Starts exited container `name` again in place: the same container — its writable
    /// layer, its volumes, its log — with a new process, its restart count one higher. `config`
    /// is what it would be created from now: its network settings replace the recorded ones
    /// (a task network made again), and a container that is not there (it never started) is
    /// created from it and started. Each start gets `secrets` again.
    fn restart(
        &self,
        name: &ContainerName,
        config: ContainerConfig,
        secrets: &SecretMaterial,
    ) -> Result<(), RuntimeError>;
    /// Starts container `name`, lost with an earlier boot of the machine ([`RunState::Lost`]),
    /// again in place: the same container — its writable layer, its volumes, its log — with a
    /// new process, joining the network `config` names (its task network made again in this
    /// boot), its restart count starting over (as Docker's after a reboot). One that cannot be
    /// (it never started before the machine stopped, or its record or writable layer is
    /// damaged) is removed and created afresh from `config`, and the answer says why: its task
    /// runs either way. A new run that fails for any other reason (a bind source not there
    /// yet) is an error, recorded as the container's exit (125) as a failed restart is: the
    /// container stays, with all it holds.
    fn resume(
        &self,
        name: &ContainerName,
        config: ContainerConfig,
        secrets: &SecretMaterial,
    ) -> Result<Resumed, RuntimeError>;
    /// Removes every container of task `task` (killing what still runs) and its own volumes.
    fn remove_task(&self, task: &str) -> Result<(), RuntimeError>;
    /// Moves the log directory of ended container `name` to `dest`, so its output outlives
    /// its removal.
    fn take_logs(&self, name: &ContainerName, dest: &Path) -> Result<(), RuntimeError>;
    /// What a running container uses.
    fn stats(&self, name: &ContainerName) -> Result<ContainerUsage, RuntimeError>;
    /// What task `task`'s cgroup uses (its containers together) and its memory limit.
    fn task_stats(&self, task: &str) -> Result<TaskCgroupUsage, RuntimeError>;
}

/// The real runtime: the node's [`ContainerStore`].
#[derive(Debug, Clone)]
pub struct StoreRuntime {
    store: ContainerStore,
}

impl StoreRuntime {
    /// The runtime over `store`.
    pub fn new(store: ContainerStore) -> Self {
        Self { store }
    }
}

fn store_error(
    op: &'static str,
    target: impl fmt::Display,
) -> impl FnOnce(ContainerError) -> RuntimeError {
    move |source| RuntimeError::Store {
        op,
        target: target.to_string(),
        source,
    }
}

/// The task container `c` is, if it is one.
pub fn task_container(c: &ContainerInfo) -> Option<ContainerName> {
    c.record.config.name.as_deref()?.parse().ok()
}

/// An RFC 3339 time as the runtime records it.
fn time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// Whether container `c` was started (or, never started, created) in an earlier boot of this
/// machine: its init's recorded boot id, else its record's, is not this boot's. `false` when
/// either is unknown.
fn earlier_boot(c: &ContainerInfo) -> bool {
    let then = match &c.state {
        Some(state) => Some(&state.init.boot_id),
        None => c.record.boot_id.as_ref(),
    };
    match (then, flotilla_runtime::container::process::boot_id()) {
        (Some(then), Ok(now)) => *then != now,
        _ => false,
    }
}

impl ContainerRuntime for StoreRuntime {
    fn list(&self) -> Result<Vec<TaskContainer>, RuntimeError> {
        let all = self
            .store
            .list()
            .map_err(store_error("listing", "containers"))?;
        Ok(all
            .into_iter()
            .filter_map(|c| {
                let name = task_container(&c)?;
                let state = match c.status {
                    Status::Created if earlier_boot(&c) => RunState::Lost,
                    Status::Created => RunState::Created,
                    Status::Running => RunState::Running,
                    Status::Exited if c.exit.is_none() && earlier_boot(&c) => RunState::Lost,
                    Status::Exited => RunState::Exited(c.exit.as_ref().map(|e| Exit {
                        code: e.exit_code,
                        oom: e.oom_killed,
                        finished_at: time(&e.finished_at),
                    })),
                };
                Some(TaskContainer {
                    name,
                    started_at: c.state.as_ref().and_then(|s| time(&s.started_at)),
                    id: c.record.id,
                    state,
                    restarts: c.restart_count,
                })
            })
            .collect())
    }

    fn run(
        &self,
        name: &ContainerName,
        mut config: ContainerConfig,
        secrets: &SecretMaterial,
    ) -> Result<(), RuntimeError> {
        config.name = Some(name.to_string());
        let record = self
            .store
            .create(config)
            .map_err(store_error("creating", name))?;
        self.store
            .start_with(&record.id, secrets)
            .map_err(store_error("starting", name))?
            .detach();
        Ok(())
    }

    fn restart(
        &self,
        name: &ContainerName,
        config: ContainerConfig,
        secrets: &SecretMaterial,
    ) -> Result<(), RuntimeError> {
        let network = NetworkSettings::of(&config);
        match self
            .store
            .restart_with(&name.to_string(), Some(network), secrets)
        {
            Ok(started) => {
                started.detach();
                Ok(())
            }
            Err(ContainerError::NotFound(_)) => self.run(name, config, secrets),
            Err(e) => Err(store_error("restarting", name)(e)),
        }
    }

    fn resume(
        &self,
        name: &ContainerName,
        config: ContainerConfig,
        secrets: &SecretMaterial,
    ) -> Result<Resumed, RuntimeError> {
        // Material the store would refuse is no reason to give up the container's layer.
        let problems = secrets.problems();
        if !problems.is_empty() {
            return Err(store_error("starting again", name)(
                ContainerError::Invalid(problems),
            ));
        }
        let key = name.to_string();
        let why = match self.store.get(&key) {
            // Its record unreadable (skipped, with a warning, by the store) or gone.
            Err(ContainerError::NotFound(_)) => "its record is not there or unreadable".to_string(),
            Err(e) => format!("it could not be read: {e}"),
            // No state at all: never started (a start writes it first).
            Ok(info)
                if info.state.is_none() && !self.store.paths(&info.record.id).state().exists() =>
            {
                "it was created but had not started when the machine stopped".to_string()
            }
            Ok(_) => {
                let network = NetworkSettings::of(&config);
                match self.store.resume_with(&key, Some(network), secrets) {
                    Ok(started) => {
                        started.detach();
                        return Ok(Resumed::InPlace);
                    }
                    // Nothing to start from: a new container is all there is.
                    Err(e @ (ContainerError::Damaged { .. } | ContainerError::Invalid(_))) => {
                        format!("it could not start again in place: {e}")
                    }
                    // Started meanwhile (not by the node), or its new run failed (a bind
                    // source not there yet, say — recorded as its exit): the container stays
                    // with all it holds, for its restart policy or its task to decide.
                    Err(e) => return Err(store_error("starting again", name)(e)),
                }
            }
        };
        match self.store.remove(&key, true) {
            Ok(()) | Err(ContainerError::NotFound(_)) => {}
            Err(e) => return Err(store_error("removing", name)(e)),
        }
        self.run(name, config, secrets)?;
        Ok(Resumed::Afresh(why))
    }

    fn stop(&self, name: &ContainerName, grace: Duration) -> Result<(), RuntimeError> {
        self.store
            .stop(&name.to_string(), grace)
            .map(drop)
            .map_err(store_error("stopping", name))
    }

    fn remove_task(&self, task: &str) -> Result<(), RuntimeError> {
        let all = self
            .store
            .list()
            .map_err(store_error("listing", "containers"))?;
        for c in all {
            if task_container(&c).is_some_and(|n| n.task == task) {
                self.store
                    .remove(&c.record.id, true)
                    .map_err(store_error("removing", c.record.display_name()))?;
            }
        }
        let volumes = self
            .store
            .volumes()
            .list()
            .map_err(|e| store_error("listing", "volumes")(e.into()))?;
        for v in volumes {
            if is_task_volume(task, &v.name) {
                self.store
                    .remove_volume(&v.name)
                    .map_err(store_error("removing volume", &v.name))?;
            }
        }
        Ok(())
    }

    fn take_logs(&self, name: &ContainerName, dest: &Path) -> Result<(), RuntimeError> {
        self.store
            .take_logs(&name.to_string(), dest)
            .map_err(store_error("keeping the logs of", name))
    }

    fn stats(&self, name: &ContainerName) -> Result<ContainerUsage, RuntimeError> {
        let u = self
            .store
            .stats(&name.to_string())
            .map_err(store_error("measuring", name))?;
        Ok(ContainerUsage {
            cpu_usec: u.cpu_ns / 1000,
            memory_bytes: u.memory_bytes,
            pids: u.pids,
        })
    }

    fn task_stats(&self, task: &str) -> Result<TaskCgroupUsage, RuntimeError> {
        let u = self
            .store
            .task_stats(task)
            .map_err(store_error("measuring the cgroup of", task))?;
        Ok(TaskCgroupUsage {
            cpu_usec: u.cpu_ns / 1000,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u.memory_limit,
            pids: u.pids,
            memory_working_set_bytes: Some(u.memory_working_set_bytes),
        })
    }
}

/// A runtime in memory for tests: the test sets its clock, makes containers exit and images
/// fail; nothing touches the kernel.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use super::*;

    /// See the module.
    #[derive(Debug, Default)]
    pub struct FakeRuntime {
        state: Mutex<State>,
    }

    #[derive(Debug, Default)]
    struct State {
        /// The runtime's wall clock (start and exit times); the epoch until set.
        now: Option<SystemTime>,
        containers: BTreeMap<ContainerName, TaskContainer>,
        next_id: u64,
        /// Images that cannot be run (as if missing from the registry).
        broken: BTreeSet<String>,
        /// Every attempt to run one, successful or not.
        attempts: usize,
        /// Containers whose writable layer is damaged.
        damaged: BTreeSet<ContainerName>,
    }

    impl FakeRuntime {
        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Sets the runtime's clock.
        pub fn set_time(&self, now: SystemTime) {
            self.state().now = Some(now);
        }

        /// From now on, containers of `image` cannot be created.
        pub fn break_image(&self, image: &str) {
            self.state().broken.insert(image.to_string());
        }

        /// Container `name`'s process exits with `code`, now.
        pub fn exit(&self, name: &ContainerName, code: i32) {
            let mut s = self.state();
            let now = s.now.unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(c) = s.containers.get_mut(name) {
                if c.state == RunState::Running {
                    c.state = RunState::Exited(Some(Exit {
                        code,
                        oom: false,
                        finished_at: Some(now),
                    }));
                }
            }
        }

        /// Container `name`, if it is there.
        pub fn get(&self, name: &ContainerName) -> Option<TaskContainer> {
            self.state().containers.get(name).cloned()
        }

        /// Attempts to run a container so far.
        pub fn attempts(&self) -> usize {
            self.state().attempts
        }

        /// Container `name`'s writable layer is damaged: it cannot start again in place.
        pub fn damage(&self, name: &ContainerName) {
            self.state().damaged.insert(name.clone());
        }

        /// Container `name` was created and has not started yet.
        pub fn never_started(&self, name: &ContainerName) {
            if let Some(c) = self.state().containers.get_mut(name) {
                c.state = RunState::Created;
                c.started_at = None;
            }
        }

        /// The node lost power: every container that ran or was about to is lost with the
        /// boot (its files stay).
        pub fn power_cut(&self) {
            for c in self.state().containers.values_mut() {
                if matches!(c.state, RunState::Running | RunState::Created) {
                    c.state = RunState::Lost;
                }
            }
        }
    }

    fn refused(op: &'static str, name: &ContainerName, e: ContainerError) -> RuntimeError {
        RuntimeError::Store {
            op,
            target: name.to_string(),
            source: e,
        }
    }

    impl ContainerRuntime for FakeRuntime {
        fn list(&self) -> Result<Vec<TaskContainer>, RuntimeError> {
            Ok(self.state().containers.values().cloned().collect())
        }

        fn run(
            &self,
            name: &ContainerName,
            config: ContainerConfig,
            _secrets: &SecretMaterial,
        ) -> Result<(), RuntimeError> {
            let mut s = self.state();
            s.attempts += 1;
            if s.broken.contains(&config.image) {
                let e = ContainerError::Invalid(vec![format!(
                    "image {}: not in the store",
                    config.image
                )]);
                return Err(refused("creating", name, e));
            }
            if s.containers.contains_key(name) {
                let e = ContainerError::NameInUse(name.to_string(), "?".into());
                return Err(refused("creating", name, e));
            }
            s.next_id += 1;
            let c = TaskContainer {
                name: name.clone(),
                id: format!("{:032x}", s.next_id),
                state: RunState::Running,
                started_at: Some(s.now.unwrap_or(SystemTime::UNIX_EPOCH)),
                restarts: 0,
            };
            s.containers.insert(name.clone(), c);
            Ok(())
        }

        fn restart(
            &self,
            name: &ContainerName,
            config: ContainerConfig,
            secrets: &SecretMaterial,
        ) -> Result<(), RuntimeError> {
            let mut s = self.state();
            let now = Some(s.now.unwrap_or(SystemTime::UNIX_EPOCH));
            if s.broken.contains(&config.image) {
                s.attempts += 1;
                let e = ContainerError::Invalid(vec![format!("image {}: broken", config.image)]);
                return Err(refused("restarting", name, e));
            }
            let Some(c) = s.containers.get_mut(name) else {
                drop(s);
                return self.run(name, config, secrets);
            };
            if c.state == RunState::Running {
                let e = ContainerError::Running(name.to_string());
                return Err(refused("restarting", name, e));
            }
            c.state = RunState::Running;
            c.started_at = now;
            c.restarts += 1;
            s.attempts += 1;
            Ok(())
        }

        fn resume(
            &self,
            name: &ContainerName,
            config: ContainerConfig,
            secrets: &SecretMaterial,
        ) -> Result<Resumed, RuntimeError> {
            let mut s = self.state();
            let now = Some(s.now.unwrap_or(SystemTime::UNIX_EPOCH));
            let damaged = s.damaged.contains(name);
            let why = match s.containers.get_mut(name) {
                None => "its record is not there".to_string(),
                Some(c) if c.state != RunState::Lost => {
                    let e = ContainerError::Invalid(vec![format!("{name} is not lost")]);
                    return Err(refused("resuming", name, e));
                }
                Some(c) if c.started_at.is_none() => {
                    "it was created but had not started when the machine stopped".into()
                }
                Some(_) if damaged => "its writable layer is damaged".into(),
                Some(c) => {
                    c.state = RunState::Running;
                    c.started_at = now;
                    // As Docker's after a reboot: the count starts over.
                    c.restarts = 0;
                    s.attempts += 1;
                    return Ok(Resumed::InPlace);
                }
            };
            s.containers.remove(name);
            s.damaged.remove(name);
            drop(s);
            self.run(name, config, secrets)?;
            Ok(Resumed::Afresh(why))
        }

        fn stop(&self, name: &ContainerName, _grace: Duration) -> Result<(), RuntimeError> {
            // It honours SIGTERM at once.
            self.exit(name, 143);
            Ok(())
        }

        fn remove_task(&self, task: &str) -> Result<(), RuntimeError> {
            self.state().containers.retain(|n, _| n.task != task);
            Ok(())
        }

        fn take_logs(&self, _name: &ContainerName, _dest: &Path) -> Result<(), RuntimeError> {
            Ok(())
        }

        fn stats(&self, name: &ContainerName) -> Result<ContainerUsage, RuntimeError> {
            match self.get(name) {
                Some(c) if c.state == RunState::Running => Ok(ContainerUsage {
                    cpu_usec: 1_000,
                    memory_bytes: 1 << 20,
                    pids: 1,
                }),
                _ => Err(refused(
                    "measuring",
                    name,
                    ContainerError::NotRunning(name.to_string()),
                )),
            }
        }

        fn task_stats(&self, task: &str) -> Result<TaskCgroupUsage, RuntimeError> {
            let s = self.state();
            let running = s
                .containers
                .values()
                .filter(|c| c.name.task == task && c.state == RunState::Running)
                .count() as u64;
            Ok(TaskCgroupUsage {
                cpu_usec: running * 1_000,
                memory_bytes: running << 20,
                memory_limit_bytes: None,
                pids: running,
                memory_working_set_bytes: Some(running << 20),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_name_reads_back_as_written_and_nothing_else_is_one() {
        let name = ContainerName::new("t-0a1b2c", 12);
        assert_eq!(name.to_string(), "t-0a1b2c-12");
        assert_eq!("t-0a1b2c-12".parse::<ContainerName>(), Ok(name));
        assert_eq!(
            "t-0a1b2c-0".parse::<ContainerName>(),
            Ok(ContainerName::new("t-0a1b2c", 0))
        );
        for bad in [
            "web-1",
            "t-0a1b2c",
            "t--1",
            "t-0a1b2c-",
            "t-0a1b2c-x",
            "t-0a1b2c-01",
            "t-0a1b2c-+1",
            "t-0a1b2c--1",
            "0a1b2c-1",
        ] {
            assert!(bad.parse::<ContainerName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_task_owns_only_its_own_volumes() {
        assert_eq!(task_volume("t-1", "data"), "t-1-data");
        assert!(is_task_volume("t-1", "t-1-data"));
        assert!(!is_task_volume("t-1", "t-10-data"));
        assert!(!is_task_volume("t-1", "data"));
    }
}
