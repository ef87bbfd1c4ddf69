//! Containers on this node, run through youki's libcontainer.
//!
//! Each container has a directory `<data>/containers/<id>/` holding its record
//! (`container.json`), what its shim recorded of its last run (`state.json`: shim and init
//! process identities; `exit.json`: exit code, time, OOM kill), its restart count
//! (`restarts.json`), its logs, and the overlay upper/work directories. A restart
//! ([`ContainerStore::restart`]) runs the same container again: the directory, and with it the
//! writable layer, the anonymous volumes and the log, stays.
//! Each start may give the container secret material ([`SecretMaterial`], see [`secrets`]:
//! environment entries, secret files and config files), which never reaches the disk: only
//! its names and config targets are in the record.
//! A container is owned by one shim process (see [`shim`]) that outlives whoever started it, so
//! everything here works from those files alone: a fresh process (a restarted agent, or
//! `nodeagent ctr`) finds every container, its pid, and its real exit code.

pub mod accounts;
pub mod cgroup;
pub mod config;
pub mod console;
pub mod devices;
pub mod exec;
pub mod isolate;
pub mod logs;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod secrets;
pub mod shim;
pub mod signal;
pub mod spec;
pub mod volume;
pub mod workload;

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupHierarchy, CgroupUsage};
pub use config::{ContainerConfig, MountRequest, NetworkMode, Resources, TaskCgroup, Ulimit};
pub use process::ProcessIdentity;
pub use secrets::{ConfigFile, SecretEnv, SecretFile, SecretMaterial};
pub use signal::{parse_signal, signal_name, UnknownSignal};
pub use spec::{ImageProcess, ResolvedMount};
pub use volume::{Volume, VolumeError, VolumeStore};

use crate::image::{ImageStore, ImageStoreError};
use spec::MountKind;

/// How long a launcher waits for the shim to report the container started (image layers are
/// local; this covers a slow disk, not a download).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `stop` waits for the shim to record the exit after the process died.
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(10);

/// A container's record: what it was created from. Written once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 32 hex characters.
    pub id: String,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// The settings it was created with.
    pub config: ContainerConfig,
    /// The image it runs.
    pub image: ImageUse,
    /// The image's runtime defaults.
    pub image_process: ImageProcess,
    /// `cgroupsPath` in the hierarchy, e.g. `/flotilla/node-1/<id>`.
    pub cgroup_path: String,
    /// Mounts with their host side resolved.
    pub mounts: Vec<ResolvedMount>,
    /// The machine's boot id (`/proc/sys/kernel/random/boot_id`) when it was created: a
    /// container created in an earlier boot and never started was cut off by a reboot.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl ContainerRecord {
    /// The signal a stop asks the container with: its image's `StopSignal`, else SIGTERM —
    /// as `docker stop` does ("SIGTERM, or the signal specified with STOPSIGNAL in the
    /// image", Docker CLI reference). One that names no signal was warned about when the
    /// container was created and counts as unset.
    pub fn stop_signal(&self) -> Signal {
        self.image_process
            .stop_signal
            .as_deref()
            .and_then(|s| parse_signal(s).ok())
            .unwrap_or(Signal::TERM)
    }

    /// The name if it has one, else the short id.
    pub fn display_name(&self) -> String {
        self.config
            .name
            .clone()
            .unwrap_or_else(|| self.id.chars().take(12).collect())
    }
}

/// The image a container was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUse {
    /// Image name at creation.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Unpacked layer directory names (diffID hex), lowest first.
    pub layers: Vec<String>,
}

/// What the shim recorded once the container ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// The shim.
    pub shim: ProcessIdentity,
    /// The container's init process.
    pub init: ProcessIdentity,
    /// Start time, RFC 3339.
    pub started_at: String,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code; 128 + signal number when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// RFC 3339.
    pub finished_at: String,
    /// Nothing saw the container end: its supervisor died with it, and `exit_code` (255) and
    /// `finished_at` (when it was first found ended) are not the container's own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
    /// Why a restart could not start the run (its `exit_code` is then
    /// [`RESTART_FAILED_EXIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, its shim not (yet) running it.
    Created,
    /// Its init process runs.
    Running,
    /// It ended; see [`ContainerInfo::exit`].
    Exited,
}

/// A container as found on disk now (`nodeagent ctr inspect` and `ps -o json` print it, with
/// its [`ContainerInfo::pid`] added as `pid`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The record.
    #[serde(flatten)]
    pub record: ContainerRecord,
    /// Current status.
    pub status: Status,
    /// Shim and init identities of its last run, once started.
    pub state: Option<RuntimeState>,
    /// How its last run ended, when it did and the shim could record it (absent when the
    /// shim died before the container: the exit code is then unknown).
    pub exit: Option<ExitInfo>,
    /// Times it was started again in place ([`ContainerStore::restart`]), as Docker's
    /// `RestartCount`.
    #[serde(default)]
    pub restart_count: u32,
}

/// A container's restarts (`restarts.json`), written before each restart begins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// Restarts so far, the one under way included.
    pub count: u32,
    /// `finished_at` of the exit the last counted restart followed: a restart cut short (its
    /// launcher killed) and begun again after the same exit counts once.
    #[serde(default)]
    pub after: Option<String>,
}

impl RestartRecord {
    /// The record of a restart that follows `exit` (the last run's, if recorded).
    pub fn next(&self, exit: Option<&ExitInfo>) -> Self {
        let after = exit.map(|e| e.finished_at.clone());
        if after.is_some() && self.after == after {
            return self.clone();
        }
        Self {
            count: self.count.saturating_add(1),
            after,
        }
    }
}

/// The exit code recorded for a restart whose new run could not start (Docker's and ECS's
/// for a container the runtime could not run); [`ExitInfo::error`] says why.
pub const RESTART_FAILED_EXIT: i32 = 125;

/// What a container's network is: all a restart may change (its task network was made again,
/// say after a reboot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Its network namespace.
    pub network: NetworkMode,
    /// The host file mounted at `/etc/resolv.conf`, if any.
    pub resolv_conf: Option<PathBuf>,
    /// Its own addresses, named in its `/etc/hosts`.
    pub addresses: Vec<std::net::IpAddr>,
}

impl NetworkSettings {
    /// The network settings of `config`.
    pub fn of(config: &ContainerConfig) -> Self {
        Self {
            network: config.network.clone(),
            resolv_conf: config.resolv_conf.clone(),
            addresses: config.addresses.clone(),
        }
    }
}

/// One container's resource usage as `nodeagent ctr stats -o json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Container id.
    pub id: String,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// CPU used over the sampling window, percent of one core.
    pub cpu_percent: f64,
    /// Its cgroup's usage at the end of the window.
    pub usage: CgroupUsage,
}

impl ContainerInfo {
    /// The init pid while running.
    pub fn pid(&self) -> Option<i32> {
        (self.status == Status::Running).then(|| self.state.as_ref().map(|s| s.init.pid))?
    }
}

/// Errors of the container store.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The settings are invalid (every problem listed).
    #[error("invalid container settings:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// No container by that name or id.
    #[error("container '{0}' not found")]
    NotFound(String),
    /// An id prefix matches several containers.
    #[error("'{0}' matches several containers; give more of the id")]
    Ambiguous(String),
    /// The name is taken.
    #[error("the name '{0}' is already used by container {1}")]
    NameInUse(String, String),
    /// The operation needs a stopped container.
    #[error("container '{0}' is running; stop it first or force")]
    Running(String),
    /// The operation needs a running container.
    #[error("container '{0}' is not running")]
    NotRunning(String),
    /// A bind mount source is outside the allowed roots.
    #[error("bind mount source '{}' is not below an allowed host root ({allowed}); the operator allows roots with --bind-root", .path.display())]
    BindNotAllowed {
        /// The source as given.
        path: PathBuf,
        /// The roots allowed.
        allowed: String,
    },
    /// The shim reported an error before the container ran.
    #[error("container {id}: {message}")]
    Start {
        /// Container id.
        id: String,
        /// What the shim said.
        message: String,
    },
    /// The container's process cannot run in it: its command is not in the image, or not an
    /// executable file. Like [`ContainerError::Start`], with the exit code `docker run` gives
    /// for it (127: not found, 126: cannot be run).
    #[error("container {id}: {message}")]
    CannotRun {
        /// Container id.
        id: String,
        /// Why.
        message: String,
        /// 127 or 126.
        code: i32,
    },
    /// A container cut off by a power cut cannot start again in place: what it held is not
    /// there to start from ([`ContainerStore::resume`]).
    #[error("container {id}: {what}; it cannot start again in place")]
    Damaged {
        /// Container id.
        id: String,
        /// What is missing or wrong.
        what: String,
    },
    /// Image problem.
    #[error(transparent)]
    Image(Box<ImageStoreError>),
    /// Volume problem.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// cgroup problem.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// libcontainer refused an operation.
    #[error("container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// libcontainer's error.
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// Filesystem or process error.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
}

impl From<ImageStoreError> for ContainerError {
    fn from(e: ImageStoreError) -> Self {
        Self::Image(Box::new(e))
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Node-level settings of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// cgroup parent of every container, e.g. `flotilla/node-1`.
    pub cgroup_parent: String,
    /// Host directories bind mounts may come from.
    pub bind_roots: Vec<PathBuf>,
    /// The shim binary (`flotilla-shim`): it supervises each container, and runs exec
    /// commands and network probes inside running ones.
    pub shim: PathBuf,
}

impl StoreOptions {
    /// Default cgroup parent: `flotilla/<hostname>`.
    pub fn default_cgroup_parent() -> String {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("flotilla/{}", if host.is_empty() { "node" } else { &host })
    }
}

/// Validates a cgroup parent: relative, components of `[A-Za-z0-9_.-]`, no `.`/`..`.
pub fn validate_cgroup_parent(parent: &str) -> Result<(), String> {
    let ok = !parent.is_empty()
        && parent.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid cgroup parent '{parent}': use a relative path like flotilla/node-1"
        ))
    }
}

/// The node's containers.
#[derive(Debug, Clone)]
pub struct ContainerStore {
    data_dir: PathBuf,
    dir: PathBuf,
    images: ImageStore,
    volumes: VolumeStore,
    hierarchy: CgroupHierarchy,
    options: StoreOptions,
}

/// Paths of one container's directory.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    /// The directory (also the OCI bundle).
    pub dir: PathBuf,
}

impl ContainerPaths {
    /// `container.json`.
    pub fn record(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// `exit.json`.
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// `restarts.json`.
    pub fn restarts(&self) -> PathBuf {
        self.dir.join("restarts.json")
    }
    /// The log directory.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// Mount point of the root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

/// Refuses `secrets` for `record`'s container ([`ContainerError::Invalid`]) when they have
/// problems of their own, name a secret or a config target its settings do not, bring files
/// while it mounts something at `/run/secrets`, or bring a config at, under or above one of
/// its mounts. No message holds a value.
fn check_secrets(record: &ContainerRecord, secrets: &SecretMaterial) -> Result<(), ContainerError> {
    if secrets.is_empty() {
        return Ok(());
    }
    let mut problems = secrets.problems();
    if problems.is_empty() {
        for name in secrets.names() {
            if !record.config.secrets.iter().any(|n| n == name) {
                problems.push(format!(
                    "secret '{}' is not among the container's secrets ({})",
                    name.escape_debug(),
                    if record.config.secrets.is_empty() {
                        "it has none".to_string()
                    } else {
                        record.config.secrets.join(", ")
                    }
                ));
            }
        }
        for target in secrets.targets() {
            if !record.config.configs.iter().any(|t| t == target) {
                problems.push(format!(
                    "config '{}' is not among the container's configs ({})",
                    target.escape_debug(),
                    if record.config.configs.is_empty() {
                        "it has none".to_string()
                    } else {
                        record.config.configs.join(", ")
                    }
                ));
            }
        }
    }
    for c in &secrets.configs {
        if let Some(m) = secrets::clashing_config_mount(&c.target, &record.mounts) {
            problems.push(format!(
                "its mount at {} (asked for, or a volume of its image) clashes with its config \
                 at {}",
                m.target.display(),
                c.target.escape_debug()
            ));
        }
    }
    if !secrets.files.is_empty() {
        if let Some(m) = secrets::clashing_mount(&record.mounts) {
            problems.push(format!(
                "its mount at {} (asked for, or a volume of its image) clashes with its secret \
                 files at {}",
                m.target.display(),
                secrets::SECRETS_TARGET
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ContainerError::Invalid(problems))
    }
}

/// Writes `bytes` to a shim's standard input and closes it, giving up at `deadline`
/// ([`io::ErrorKind::TimedOut`]); a shim that is gone makes it fail with `EPIPE`.
fn hand_over(stdin: ChildStdin, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let flags = rustix::fs::fcntl_getfl(&stdin)?;
    rustix::fs::fcntl_setfl(&stdin, flags | rustix::fs::OFlags::NONBLOCK)?;
    let mut left = bytes;
    while !left.is_empty() {
        match rustix::io::write(&stdin, left) {
            Ok(n) => left = &left[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the shim did not read it within {START_TIMEOUT:?}"),
                    ));
                }
                let ts = Timespec {
                    tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(wait.subsec_nanos()),
                };
                let mut fds = [PollFd::new(&stdin, PollFlags::OUT)];
                match poll(&mut fds, Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes a container's directory, its record last: a removal cut short (a crash, an error,
/// a file appearing meanwhile) leaves the record, so the container is still listed and is
/// removed again, never left as a directory nothing lists. A file that appears while the
/// directory empties is removed too (three rounds at most).
fn remove_container_dir(paths: &ContainerPaths) -> Result<(), ContainerError> {
    let record = paths.record();
    let gone_ok = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    for round in 0..3 {
        let entries = match fs::read_dir(&paths.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(&paths.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_at(&paths.dir))?;
            let p = entry.path();
            if p == record {
                continue;
            }
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&p),
                _ => fs::remove_file(&p),
            };
            gone_ok(removed).map_err(io_at(&p))?;
        }
        gone_ok(fs::remove_file(&record)).map_err(io_at(&record))?;
        match gone_ok(fs::remove_dir(&paths.dir)) {
            Ok(()) => return Ok(()),
            Err(e) if round < 2 && e.kind() == io::ErrorKind::DirectoryNotEmpty => continue,
            Err(e) => return Err(io_at(&paths.dir)(e)),
        }
    }
    Ok(())
}

impl ContainerStore {
    /// Opens the store under `data_dir/containers` (images and volumes beside it).
    pub fn open(data_dir: &Path, options: StoreOptions) -> Result<Self, ContainerError> {
        validate_cgroup_parent(&options.cgroup_parent)
            .map_err(|e| ContainerError::Invalid(vec![e]))?;
        fs::create_dir_all(data_dir).map_err(io_at(data_dir))?;
        // Absolute from here on: the shim changes its working directory.
        let data_dir = &fs::canonicalize(data_dir).map_err(io_at(data_dir))?;
        let dir = data_dir.join("containers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_at(&dir))?;
        let lc = data_dir.join("libcontainer");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&lc)
            .map_err(io_at(&lc))?;
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            images: ImageStore::open(data_dir)?,
            volumes: VolumeStore::open(data_dir)?,
            hierarchy: CgroupHierarchy::detect()?,
            dir,
            options,
        })
    }

    /// The image store beside the containers.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The volume store beside the containers.
    pub fn volumes(&self) -> &VolumeStore {
        &self.volumes
    }

    /// The node's cgroup hierarchy.
    pub fn hierarchy(&self) -> &CgroupHierarchy {
        &self.hierarchy
    }

    /// libcontainer's state root.
    pub fn libcontainer_root(&self) -> PathBuf {
        self.data_dir.join("libcontainer")
    }

    /// Paths of a container.
    pub fn paths(&self, id: &str) -> ContainerPaths {
        ContainerPaths {
            dir: self.dir.join(id),
        }
    }

    fn lock(&self) -> Result<fs::File, ContainerError> {
        let path = self.dir.join(".lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        flock(&f, FlockOperation::LockExclusive).map_err(|e| io_at(&path)(e.into()))?;
        Ok(f)
    }

    /// Creates a container (record, directories, image lease); it does not run yet.
    pub fn create(&self, config: ContainerConfig) -> Result<ContainerRecord, ContainerError> {
        if !rustix::process::geteuid().is_root() {
            return Err(ContainerError::Invalid(vec![
                "running containers needs root (namespaces, mounts, cgroups); run nodeagent as root".into(),
            ]));
        }
        config.validate().map_err(ContainerError::Invalid)?;
        // A container start is expected next: let the kernel's cgroup migration slow path
        // run in parallel with the preparations (see `prime_migration`).
        let hierarchy = self.hierarchy.clone();
        std::thread::spawn(move || hierarchy.prime_migration());
        tracing::debug!("creating");
        let _lock = self.lock()?;
        if let Some(name) = &config.name {
            if let Some(other) = self
                .records()?
                .into_iter()
                .find(|r| r.config.name.as_ref() == Some(name))
            {
                return Err(ContainerError::NameInUse(name.clone(), other.id));
            }
        }
        let details = self.images.inspect(&config.image)?;
        let image_process = ImageProcess::from_image_config(&details.image_config);
        if let Some(Err(e)) = image_process.stop_signal.as_deref().map(parse_signal) {
            tracing::warn!(
                "image {}: StopSignal: {e}; it is stopped with SIGTERM",
                details.record.name
            );
        }
        // Fail early on a missing command rather than in the shim.
        spec::process_args(&config, &image_process)
            .map_err(|e| ContainerError::Invalid(vec![e.to_string()]))?;
        spec::working_dir(&config, &image_process)
            .map_err(|e| ContainerError::Invalid(vec![e.to_string()]))?;
        spec::capabilities(&config).map_err(|e| ContainerError::Invalid(vec![e.to_string()]))?;
        let mut mounts = self.resolve_mounts(&config)?;
        let id = new_id()?;
        let paths = self.paths(&id);
        let anonymous = anonymous_volumes(&image_process.volumes, &mounts, &paths.dir);
        mounts.extend(anonymous.iter().cloned());
        let record = ContainerRecord {
            created_at: now_secs(),
            image: ImageUse {
                name: details.record.name.clone(),
                digest: details.record.digest.to_string(),
                layers: details
                    .record
                    .layers
                    .iter()
                    .map(|l| l.diff_id.hex().to_string())
                    .collect(),
            },
            image_process,
            cgroup_path: match &config.task_cgroup {
                Some(t) => format!("/{}/{}/{}", self.options.cgroup_parent, t.task, id),
                None => format!("/{}/{}", self.options.cgroup_parent, id),
            },
            mounts,
            config,
            id: id.clone(),
            boot_id: process::boot_id().ok(),
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&paths.dir)
            .map_err(io_at(&paths.dir))?;
        let result = (|| {
            // The upper directory is the container's `/`: its mode is the root's, so it is
            // set, not left to the caller's umask.
            for (sub, mode) in [
                ("upper", 0o755),
                ("work", 0o700),
                ("rootfs", 0o755),
                ("logs", 0o755),
            ] {
                let p = paths.dir.join(sub);
                fs::create_dir(&p).map_err(io_at(&p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_at(&p))?;
            }
            for m in &anonymous {
                fs::create_dir_all(&m.source).map_err(io_at(&m.source))?;
                fs::set_permissions(&m.source, fs::Permissions::from_mode(0o755))
                    .map_err(io_at(&m.source))?;
            }
            self.images.lease(&id, &details.record)?;
            let bytes = serde_json::to_vec_pretty(&record)
                .map_err(|e| io_at(&paths.record())(io::Error::other(e)))?;
            // Durable: a container may run for a while before anything else of it is synced,
            // and one whose record a power cut left empty cannot be started again in place.
            write_durable(&paths.record(), &bytes)
        })();
        if let Err(e) = result {
            let _ = self.images.release(&id);
            let _ = fs::remove_dir_all(&paths.dir);
            return Err(e);
        }
        Ok(record)
    }

    fn resolve_mounts(
        &self,
        config: &ContainerConfig,
    ) -> Result<Vec<ResolvedMount>, ContainerError> {
        let mut out = Vec::new();
        for m in &config.mounts {
            let target = config::container_path("mount target", m.target())
                .map_err(|e| ContainerError::Invalid(vec![e]))?;
            out.push(match m {
                MountRequest::Volume {
                    name, read_only, ..
                } => ResolvedMount {
                    kind: MountKind::Bind,
                    source: self.volumes.create(name)?.mountpoint,
                    target,
                    read_only: *read_only,
                    size: None,
                },
                MountRequest::Bind {
                    source, read_only, ..
                } => ResolvedMount {
                    kind: MountKind::Bind,
                    source: self.check_bind_source(source)?,
                    target,
                    read_only: *read_only,
                    size: None,
                },
                MountRequest::Tmpfs { size, .. } => ResolvedMount {
                    kind: MountKind::Tmpfs,
                    source: PathBuf::from("tmpfs"),
                    target,
                    read_only: false,
                    size: *size,
                },
            });
        }
        Ok(out)
    }

    /// A bind source, symlinks resolved, must lie below one of the allowed roots.
    pub fn check_bind_source(&self, source: &Path) -> Result<PathBuf, ContainerError> {
        let allowed = || {
            if self.options.bind_roots.is_empty() {
                "none allowed".to_string()
            } else {
                self.options
                    .bind_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let real = fs::canonicalize(source).map_err(|e| {
            ContainerError::Invalid(vec![format!("bind mount source {}: {e}", source.display())])
        })?;
        let ok = self
            .options
            .bind_roots
            .iter()
            .any(|root| fs::canonicalize(root).is_ok_and(|r| real.starts_with(&r)));
        if ok {
            Ok(real)
        } else {
            Err(ContainerError::BindNotAllowed {
                path: source.to_path_buf(),
                allowed: allowed(),
            })
        }
    }

    /// Launches the container's shim and waits until the container runs (or failed to).
    /// On failure the container is removed: nothing is left behind.
    pub fn start(&self, id: &str) -> Result<Started, ContainerError> {
        self.start_with(id, &SecretMaterial::default())
    }

    /// [`ContainerStore::start`], giving the container `secrets` (see [`secrets`]): its
    /// environment entries in the process's environment, its files in `/run/secrets`, its
    /// configs each read-only at its target, none ever on disk. Refused
    /// ([`ContainerError::Invalid`], the container left as it is) when
    /// [`SecretMaterial::problems`] finds any, when it names a secret the container's
    /// [`ContainerConfig::secrets`] does not or a config target its
    /// [`ContainerConfig::configs`] does not, when it has files and the container mounts
    /// something at `/run/secrets` (or inside it), or when one of its configs is at, under
    /// or above one of the container's mounts.
    pub fn start_with(
        &self,
        id: &str,
        secrets: &SecretMaterial,
    ) -> Result<Started, ContainerError> {
        if !is_id(id) {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        let paths = self.paths(id);
        if paths.state().exists() {
            return Err(ContainerError::Start {
                id: id.to_string(),
                message: "already started (an ended container runs again with a restart)".into(),
            });
        }
        let record: ContainerRecord =
            read_json(&paths.record()).ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        check_secrets(&record, secrets)?;
        match self.launch(&record, secrets) {
            Err(e @ (ContainerError::Start { .. } | ContainerError::CannotRun { .. })) => {
                let _ = self.remove(id, true);
                Err(e)
            }
            other => other,
        }
    }

    /// Starts an ended container again in place, as Docker's restart policy does: the same
    /// container — its writable layer, its anonymous volumes, its log (the new run's output is
    /// appended) — with a fresh process, namespaces and cgroup, and its restart count one
    /// higher. `network`, when given and not the recorded one, replaces it (its task network
    /// was made again, say after a reboot). A running container is refused; one never
    /// started is started. When the new run cannot start, that is recorded as its exit
    /// ([`RESTART_FAILED_EXIT`], with the error) and the container stays, ended.
    ///
    /// Until the new run has started the container reads as ended with its last exit: the
    /// restart count is written first, with the exit it follows (a restart begun again after
    /// its launcher died counts once), and the shim replaces the last run's `state.json` in
    /// one rename before it removes the last exit record.
    pub fn restart(
        &self,
        key: &str,
        network: Option<NetworkSettings>,
    ) -> Result<Started, ContainerError> {
        self.restart_with(key, network, &SecretMaterial::default())
    }

    /// [`ContainerStore::restart`], giving the new run `secrets`, refused before anything
    /// changes as [`ContainerStore::start_with`] refuses them.
    pub fn restart_with(
        &self,
        key: &str,
        network: Option<NetworkSettings>,
        secrets: &SecretMaterial,
    ) -> Result<Started, ContainerError> {
        let info = self.get(key)?;
        let id = info.record.id.clone();
        match info.status {
            Status::Running => return Err(ContainerError::Running(info.record.display_name())),
            Status::Created => return self.start_with(&id, secrets),
            Status::Exited => {}
        }
        check_secrets(&info.record, secrets)?;
        if let Some(s) = &info.state {
            // Let the last run's shim finish recording; then it has nothing left to do.
            s.shim.wait_exit(EXIT_RECORD_WAIT);
        }
        tracing::debug!(container = %id, "restarting");
        let counted: RestartRecord = read_json(&self.paths(&id).restarts()).unwrap_or_default();
        let next = counted.next(info.exit.as_ref());
        self.run_again(&info, network, next, secrets)
    }

    /// Starts again in place a container that was running (or starting) when the machine
    /// stopped — a power cut, a reboot: its run began in an earlier boot and nothing recorded
    /// its end. As Docker starts a container of restart policy `always` again when its daemon
    /// starts after a reboot: the same container — its writable layer, its anonymous volumes,
    /// its log (appended to) — with a fresh process, namespaces, cgroup and overlay mount (all
    /// went with that boot), and `network`, when given, replacing the recorded one (its task
    /// network was made again in this boot). Its restart count starts over at 0, as Docker's
    /// `RestartCount` does when its daemon starts a container again after a reboot (the
    /// daemon's restore starts it with its restart manager reset): the count is of restarts by
    /// the restart policy since the container was last started on purpose.
    ///
    /// Refused ([`ContainerError::Invalid`]) for a container that was not cut off so (running,
    /// never started, or one whose end was recorded), and ([`ContainerError::Damaged`]) for one
    /// whose writable layer is damaged (its upper or work directory is gone or not a
    /// directory): the caller makes a new container instead. Any other failure is the new
    /// run's, recorded as its exit ([`RESTART_FAILED_EXIT`], with the error) as a restart's is:
    /// the container stays, with all it holds, for its restart policy or its task to decide —
    /// a bind source not there yet (a network mount not up) never costs a container its layer.
    /// A container whose runtime state is unreadable started in the boot its record was made
    /// in (the state is written at its start) and is judged by that boot.
    pub fn resume(
        &self,
        key: &str,
        network: Option<NetworkSettings>,
    ) -> Result<Started, ContainerError> {
        self.resume_with(key, network, &SecretMaterial::default())
    }

    /// [`ContainerStore::resume`], giving the new run `secrets`, refused before anything
    /// changes as [`ContainerStore::start_with`] refuses them — with
    /// [`ContainerError::Invalid`], which `resume` also gives for a container that cannot
    /// start again in place: check [`SecretMaterial::problems`] first to tell them apart.
    pub fn resume_with(
        &self,
        key: &str,
        network: Option<NetworkSettings>,
        secrets: &SecretMaterial,
    ) -> Result<Started, ContainerError> {
        let info = self.get(key)?;
        let id = info.record.id.clone();
        if info.status == Status::Running {
            return Err(ContainerError::Running(info.record.display_name()));
        }
        check_secrets(&info.record, secrets)?;
        let paths = self.paths(&id);
        // Its state names the boot it ran in; unreadable (but there: it did start), its
        // record names the boot it was made in, no later one.
        let ran_in = match &info.state {
            Some(s) => Some(&s.init.boot_id),
            None if paths.state().exists() => info.record.boot_id.as_ref(),
            None => None,
        };
        let cut_off = info.exit.is_none()
            && ran_in.is_some_and(|then| process::boot_id().is_ok_and(|now| now != *then));
        if !cut_off {
            return Err(ContainerError::Invalid(vec![format!(
                "container {} was not running when the machine stopped (never started, or its \
                 end was recorded): it is not started again in place",
                info.record.display_name()
            )]));
        }
        for sub in ["upper", "work"] {
            let dir = paths.dir.join(sub);
            // Not followed: a link there is no layer of this container's.
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                return Err(ContainerError::Damaged {
                    id,
                    what: format!(
                        "its writable layer is damaged: {} is missing or not a directory",
                        dir.display()
                    ),
                });
            }
        }
        tracing::debug!(container = %id, "starting again after the machine stopped");
        // What the last boot left behind that is made anew at every start.
        let prepared = [paths.logs(), paths.rootfs()]
            .into_iter()
            .try_for_each(|dir| match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(io_at(&dir)(io::Error::other(
                    "not a directory; move it away and the container starts again",
                ))),
                Err(_) => fs::create_dir_all(&dir).map_err(io_at(&dir)),
            });
        if let Err(e) = prepared {
            record_failed_run(&paths, &e);
            return Err(e);
        }
        self.run_again(&info, network, RestartRecord::default(), secrets)
    }

    /// Runs ended container `info` again in place, its restarts recorded as `counted` first
    /// and its network replaced by `network` when given and not the recorded one.
    fn run_again(
        &self,
        info: &ContainerInfo,
        network: Option<NetworkSettings>,
        counted: RestartRecord,
        secrets: &SecretMaterial,
    ) -> Result<Started, ContainerError> {
        let id = info.record.id.clone();
        let paths = self.paths(&id);
        let mut record = info.record.clone();
        if let Some(n) = network.filter(|n| *n != NetworkSettings::of(&record.config)) {
            record.config.network = n.network;
            record.config.resolv_conf = n.resolv_conf;
            record.config.addresses = n.addresses;
            record.config.validate().map_err(ContainerError::Invalid)?;
            let bytes = serde_json::to_vec_pretty(&record)
                .map_err(|e| io_at(&paths.record())(io::Error::other(e)))?;
            write_durable(&paths.record(), &bytes)?;
        }
        let recorded: Option<RestartRecord> = read_json(&paths.restarts());
        if recorded.as_ref() != Some(&counted) {
            let bytes = serde_json::to_vec_pretty(&counted)
                .map_err(|e| io_at(&paths.restarts())(io::Error::other(e)))?;
            write_durable(&paths.restarts(), &bytes)?;
        }
        let result = self
            .delete_runtime_state(info)
            .and_then(|()| self.launch(&record, secrets));
        if let Err(e) = &result {
            record_failed_run(&paths, e);
        }
        result
    }

    /// Spawns the shim of `record`'s container, hands it `secrets` over its standard input,
    /// and waits until it reports the container running, or why it could not run it
    /// ([`ContainerError::Start`]).
    fn launch(
        &self,
        record: &ContainerRecord,
        secrets: &SecretMaterial,
    ) -> Result<Started, ContainerError> {
        check_secrets(record, secrets)?;
        let id = record.id.as_str();
        let paths = self.paths(id);
        // A bind source was checked (and its symlinks resolved) when the container was made;
        // a restart comes minutes later. Each must still be the very path that was checked —
        // a symlink swapped in on the way would mount what lies outside the allowed roots.
        for m in record.mounts.iter().filter(|m| m.kind == MountKind::Bind) {
            match fs::canonicalize(&m.source) {
                Ok(real) if real == m.source => {}
                Ok(real) => {
                    return Err(ContainerError::Start {
                        id: id.to_string(),
                        message: format!(
                            "bind source {} now leads to {}: refused (a bind source must be the \
                             directory that was checked when the container was made)",
                            m.source.display(),
                            real.display()
                        ),
                    })
                }
                Err(e) => {
                    return Err(ContainerError::Start {
                        id: id.to_string(),
                        message: format!("bind source {}: {e}", m.source.display()),
                    })
                }
            }
        }
        let shim_log = paths.dir.join("shim.log");
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shim_log)
            .map_err(io_at(&shim_log))?;
        if let Some(task) = &record.config.task_cgroup {
            // Before every start and restart: the task's cgroup may have gone with a reboot,
            // and its limits must hold before any of its containers runs.
            let path = task_cgroup_path(&record.cgroup_path);
            if let Err(e) = self.hierarchy.ensure_task(path, task) {
                return Err(ContainerError::Start {
                    id: id.to_string(),
                    message: format!("the cgroup of its task {}: {e}", task.task),
                });
            }
        } else if let Err(e) = self.hierarchy.ensure_parents(&record.cgroup_path) {
            return Err(ContainerError::Start {
                id: id.to_string(),
                message: format!("the cgroups above its own: {e}"),
            });
        }
        tracing::debug!(container = %id, "spawning shim");
        let program = &self.options.shim;
        let mut cmd = Command::new(program);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--id")
            .arg(id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let network = match &record.config.network {
            NetworkMode::None => isolate::Network::New,
            NetworkMode::Host => isolate::Network::Keep,
            NetworkMode::Join(path) => {
                isolate::Network::Join(crate::network::netns::open(path).map_err(|e| {
                    ContainerError::Start {
                        id: id.to_string(),
                        message: format!("its network namespace: {e}"),
                    }
                })?)
            }
        };
        isolate::isolate_before_exec(&mut cmd, program, network).map_err(io_at(program))?;
        let wire = secrets.encode();
        let mut child = cmd.spawn().map_err(io_at(program))?;
        // A shim stuck before the container runs must not hang its launcher forever.
        let deadline = Instant::now() + START_TIMEOUT;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io_at(&self.options.shim)(io::Error::other(
                "no status or secrets pipe",
            )));
        };
        tracing::debug!(container = %id, "shim spawned");
        // The shim reads all of it first thing, so this ends however large it is; a shim that
        // died meanwhile makes it fail (EPIPE), and its status line, if any, says why.
        let handed = hand_over(stdin, &wire, deadline);
        drop(wire);
        if handed
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            let _ = child.kill();
        }
        let mut status = BufReader::new(stdout);
        let mut line = String::new();
        let left = deadline.saturating_duration_since(Instant::now());
        let read = if process::wait_readable_fd(status.get_ref().as_fd(), Some(left)) {
            status.read_line(&mut line)
        } else {
            let _ = child.kill();
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the shim did not start the container within {START_TIMEOUT:?}"),
            ))
        };
        if let Err(e) = &read {
            if line.is_empty() {
                line = format!("error {e}\n");
            }
        }
        match (read, shim::parse_status(&line)) {
            (Ok(_), Some(shim::StatusLine::Started(pid))) => Ok(Started {
                id: id.to_string(),
                pid,
                status,
                child: Some(child),
            }),
            (_, parsed) => {
                let _ = child.wait();
                if let Some(shim::StatusLine::CannotRun(code, message)) = parsed {
                    return Err(ContainerError::CannotRun {
                        id: id.to_string(),
                        message,
                        code,
                    });
                }
                let message = match (parsed, handed) {
                    (Some(shim::StatusLine::Error(m)), _) => m,
                    (_, Err(e)) => format!(
                        "handing its secret material to the shim: {e} (see {})",
                        shim_log.display()
                    ),
                    _ => format!(
                        "the shim ended without starting the container (see {})",
                        shim_log.display()
                    ),
                };
                Err(ContainerError::Start {
                    id: id.to_string(),
                    message,
                })
            }
        }
    }

    /// All container records, oldest first.
    fn records(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only container directories (named by their id) count: anything else put here
            // (by hand, by a tool) must not stop the node from seeing its containers.
            if !is_id(&name) {
                tracing::debug!(entry = %entry.path().display(), "not a container directory; skipped");
                continue;
            }
            let path = entry.path().join("container.json");
            match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<ContainerRecord>(&bytes) {
                    Ok(r) if r.id == name => out.push(r),
                    Ok(r) => tracing::warn!(
                        path = %path.display(),
                        "container record names another container ({}); skipped",
                        r.id
                    ),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "unreadable container record: {e}")
                    }
                },
                // A directory being created or removed right now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), "unreadable container record: {e}")
                }
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    fn info(&self, record: ContainerRecord) -> ContainerInfo {
        let paths = self.paths(&record.id);
        let (state, exit, status) = observe(&paths);
        // Ended in this boot without a record (its shim died with it): say so on disk, so
        // that after a reboot it is not taken for a container the power cut stopped.
        let exit = match (&state, exit, status) {
            (Some(s), None, Status::Exited)
                if process::boot_id().is_ok_and(|b| b == s.init.boot_id) =>
            {
                record_unknown_exit(&paths.exit())
            }
            (_, exit, _) => exit,
        };
        let restart_count = read_json::<RestartRecord>(&paths.restarts()).map_or(0, |r| r.count);
        ContainerInfo {
            record,
            status,
            state,
            exit,
            restart_count,
        }
    }

    /// Every container with its current status: what a restarted agent re-adopts.
    pub fn list(&self) -> Result<Vec<ContainerInfo>, ContainerError> {
        Ok(self.records()?.into_iter().map(|r| self.info(r)).collect())
    }

    /// Finds a container by id, name, or unique id prefix.
    pub fn get(&self, key: &str) -> Result<ContainerInfo, ContainerError> {
        let records = self.records()?;
        if let Some(r) = records
            .iter()
            .find(|r| r.id == key || r.config.name.as_deref() == Some(key))
        {
            return Ok(self.info(r.clone()));
        }
        let matches: Vec<&ContainerRecord> = records
            .iter()
            .filter(|r| key.len() >= 3 && r.id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [r] => Ok(self.info((*r).clone())),
            [] => Err(ContainerError::NotFound(key.to_string())),
            _ => Err(ContainerError::Ambiguous(key.to_string())),
        }
    }

    /// Sends a signal to the container's init process.
    pub fn kill(&self, key: &str, signal: Signal) -> Result<(), ContainerError> {
        let info = self.get(key)?;
        let state = running_state(&info)?;
        let path = self.paths(&info.record.id).dir;
        match state.init.signal(signal) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ContainerError::NotRunning(info.record.display_name())),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Stops a container: its stop signal ([`ContainerRecord::stop_signal`]: the image's
    /// `StopSignal`, else SIGTERM), then SIGKILL after `grace`; returns how it ended.
    pub fn stop(&self, key: &str, grace: Duration) -> Result<Option<ExitInfo>, ContainerError> {
        let info = self.get(key)?;
        let id = info.record.id.clone();
        if info.status != Status::Running {
            return Ok(info.exit);
        }
        let state = running_state(&info)?;
        let path = self.paths(&id).dir;
        state
            .init
            .signal(info.record.stop_signal())
            .map_err(io_at(&path))?;
        if !state.init.wait_exit(grace) {
            tracing::info!(container = %id, "did not stop within {grace:?}; killing");
            state.init.signal(Signal::KILL).map_err(io_at(&path))?;
            state.init.wait_exit(EXIT_RECORD_WAIT);
        }
        state.shim.wait_exit(EXIT_RECORD_WAIT);
        Ok(self.get(&id)?.exit)
    }

    /// Moves the log directory of a container that has ended to `dest` (which must not exist
    /// yet; on the data directory's filesystem), so its output outlives its removal. A running
    /// container is refused.
    pub fn take_logs(&self, key: &str, dest: &Path) -> Result<(), ContainerError> {
        let info = self.get(key)?;
        if info.status == Status::Running {
            return Err(ContainerError::Running(info.record.display_name()));
        }
        if let Some(s) = &info.state {
            // Its shim may still be writing the last lines and the exit record.
            s.shim.wait_exit(EXIT_RECORD_WAIT);
        }
        let from = self.paths(&info.record.id).logs();
        fs::rename(&from, dest).map_err(io_at(&from))
    }

    /// Removes a container: its libcontainer state, cgroup, directories and image lease.
    /// A running container is refused unless `force` (then it is killed first).
    pub fn remove(&self, key: &str, force: bool) -> Result<(), ContainerError> {
        let info = match self.get(key) {
            Ok(i) => i,
            // A start that failed before the record landed.
            Err(ContainerError::NotFound(_)) if is_id(key) && self.paths(key).dir.exists() => {
                ContainerInfo {
                    record: ContainerRecord {
                        id: key.to_string(),
                        created_at: 0,
                        config: ContainerConfig::default(),
                        image: ImageUse {
                            name: String::new(),
                            digest: String::new(),
                            layers: Vec::new(),
                        },
                        image_process: ImageProcess::default(),
                        cgroup_path: format!("/{}/{}", self.options.cgroup_parent, key),
                        mounts: Vec::new(),
                        boot_id: None,
                    },
                    status: Status::Created,
                    state: None,
                    exit: None,
                    restart_count: 0,
                }
            }
            Err(e) => return Err(e),
        };
        let id = info.record.id.clone();
        let paths = self.paths(&id);
        if info.status == Status::Running {
            if !force {
                return Err(ContainerError::Running(info.record.display_name()));
            }
            if let Some(s) = &info.state {
                let _ = s.init.signal(Signal::KILL);
                s.init.wait_exit(EXIT_RECORD_WAIT);
            }
        }
        if let Some(s) = &info.state {
            // Let the shim finish: it records the exit, then drains and closes what it holds in
            // the container's directory; a removal racing it would leave files behind.
            s.shim.wait_exit(EXIT_RECORD_WAIT);
        }
        tracing::debug!(container = %id, "removing");
        self.delete_runtime_state(&info)?;
        // The container's own cgroup (if libcontainer did not get to it); a task's cgroup goes
        // only with its last container, and our parents only with the last record (below).
        let cgroup = info.record.cgroup_path.trim_start_matches('/');
        let _ = self.hierarchy.remove(cgroup);
        self.images.release(&id)?;
        // The rootfs is mounted only inside the shim's mount namespace; refuse to recurse
        // into it should it ever be mounted here.
        let rootfs = paths.rootfs();
        if let (Ok(a), Ok(b)) = (fs::metadata(&paths.dir), fs::metadata(&rootfs)) {
            if a.dev() != b.dev() {
                return Err(io_at(&rootfs)(io::Error::other(
                    "still mounted; unmount it before removing the container",
                )));
            }
        }
        if let Some(task) = &info.record.config.task_cgroup {
            // Before the record goes: whoever sees the container gone sees its task's cgroup
            // gone with it (when it was the last of the task's). A cgroup left (an agent killed
            // right here) is pruned when the agent starts.
            if let Err(e) = self.remove_task_cgroup_if_unused(&task.task, Some(&id)) {
                tracing::warn!(task = %task.task, "the task's cgroup stays for now: {e}");
            }
        }
        remove_container_dir(&paths)?;
        // The container is gone; parents left now are taken by the next removal or prune.
        if let Err(e) = self.remove_parents_if_unused(cgroup) {
            tracing::warn!(container = %id, "the cgroups above it stay for now: {e}");
        }
        tracing::debug!(container = %id, "removed");
        Ok(())
    }

    /// Removes `cgroup` (relative to the hierarchy roots) and the cgroups above it, where
    /// empty, when no container record is left. Under the store lock, as records are written, and only once
    /// the leaving container's record is gone: a container being made has its record before
    /// it starts, so its parents never go between its start making them and libcontainer
    /// making its own cgroup under them; of containers removed at once, the last one to get
    /// here sees no record left and takes the parents.
    fn remove_parents_if_unused(&self, cgroup: &str) -> Result<(), ContainerError> {
        let _lock = self.lock()?;
        if self.records()?.is_empty() {
            self.hierarchy.remove_empty_parents(cgroup);
        }
        Ok(())
    }

    /// Removes task `task`'s cgroup unless a container record
    /// — other than that of container `leaving`, being removed — still names it. Under the store lock, as records are written: a container of the task
    /// being created now either has its record (and the cgroup stays) or makes the cgroup
    /// again when it starts — the cgroup never goes from under a container that starts.
    fn remove_task_cgroup_if_unused(
        &self,
        task: &str,
        leaving: Option<&str>,
    ) -> Result<(), ContainerError> {
        let _lock = self.lock()?;
        let used = self.records()?.iter().any(|r| {
            Some(r.id.as_str()) != leaving
                && r.config
                    .task_cgroup
                    .as_ref()
                    .is_some_and(|t| t.task == task)
        });
        if used {
            return Ok(());
        }
        let path = format!("{}/{task}", self.options.cgroup_parent);
        self.hierarchy.remove(&path)?;
        tracing::debug!(task, "task cgroup removed");
        Ok(())
    }

    /// Directory of `containers/` where container directories whose record is damaged are set
    /// aside ([`ContainerStore::set_aside_damaged`]); not a container id, so never listed.
    pub const DAMAGED_DIR: &'static str = ".damaged";

    /// Sets aside every container directory whose record (`container.json`) is there but
    /// cannot be read (not JSON of a record, or naming another container) and that no live
    /// shim holds: moved to `containers/.damaged/<id>` as it is, for an operator to look at
    /// (nothing in it is deleted), and its image lease released, so that its layers do not
    /// stay pinned by a container that can never run again. Without this, such a directory is
    /// skipped with a warning on every listing, for ever. Called when the agent starts;
    /// returns each directory set aside, where it went and why.
    pub fn set_aside_damaged(&self) -> Result<Vec<(PathBuf, PathBuf, String)>, ContainerError> {
        let _lock = self.lock()?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let entry = entry.map_err(io_at(&self.dir))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if !is_id(&id) {
                continue;
            }
            let record = entry.path().join("container.json");
            // A missing record is a directory being made or removed right now: left alone.
            let Ok(bytes) = fs::read(&record) else {
                continue;
            };
            let why = match serde_json::from_slice::<ContainerRecord>(&bytes) {
                Ok(r) if r.id == id => continue,
                Ok(r) => format!("its record names another container ({})", r.id),
                Err(e) => format!("its record is unreadable: {e}"),
            };
            let state: Option<RuntimeState> = read_json(&self.paths(&id).state());
            if state.is_some_and(|s| s.shim.is_alive()) {
                tracing::warn!(path = %record.display(), "{why}; its shim still runs, so it stays");
                continue;
            }
            let aside = self.dir.join(Self::DAMAGED_DIR);
            fs::create_dir_all(&aside).map_err(io_at(&aside))?;
            let to = aside.join(&id);
            fs::rename(entry.path(), &to).map_err(io_at(&to))?;
            self.images.release(&id)?;
            // What it had beside its directory, its processes gone: libcontainer's state and
            // its cgroup — below the node's parent, or below its task's there (which task,
            // its record no longer says), so that the task's can go with the task.
            let lc_dir = self.libcontainer_root().join(&id);
            if lc_dir.exists() {
                fs::remove_dir_all(&lc_dir).map_err(io_at(&lc_dir))?;
            }
            let parent = &self.options.cgroup_parent;
            let _ = self.hierarchy.remove(&format!("{parent}/{id}"));
            for task in self.hierarchy.children(parent) {
                let _ = self.hierarchy.remove(&format!("{parent}/{task}/{id}"));
            }
            out.push((entry.path(), to, why));
        }
        Ok(out)
    }

    /// Removes the cgroups of tasks no container names any more, and our parents when no
    /// container is left (left by a removal that was cut short: an agent killed half-way). Returns the tasks whose cgroup could not be
    /// removed, with why.
    pub fn prune_task_cgroups(&self) -> Result<Vec<(String, ContainerError)>, ContainerError> {
        let mut failed = Vec::new();
        for name in self.hierarchy.children(&self.options.cgroup_parent) {
            // Containers of no task sit there by their id.
            if config::validate_task_cgroup_name(&name).is_err() {
                continue;
            }
            if let Err(e) = self.remove_task_cgroup_if_unused(&name, None) {
                failed.push((name, e));
            }
        }
        // A removal cut short after its record went left our parents; no removal may follow.
        self.remove_parents_if_unused(&self.options.cgroup_parent)?;
        Ok(failed)
    }

    /// cgroup usage of task `task`'s cgroup: all its containers together, with the task's
    /// memory limit.
    pub fn task_stats(&self, task: &str) -> Result<CgroupUsage, ContainerError> {
        config::validate_task_cgroup_name(task).map_err(|e| ContainerError::Invalid(vec![e]))?;
        Ok(self
            .hierarchy
            .usage(&format!("/{}/{task}", self.options.cgroup_parent))?)
    }

    /// Deletes the libcontainer state of an ended container, and with it its cgroup.
    fn delete_runtime_state(&self, info: &ContainerInfo) -> Result<(), ContainerError> {
        let id = &info.record.id;
        let lc_dir = self.libcontainer_root().join(id);
        // Started (or created) in an earlier boot: its processes and cgroup went with that
        // boot, and libcontainer would judge it by a pid another process may hold now.
        let earlier_boot = info
            .state
            .as_ref()
            .map(|s| &s.init.boot_id)
            .or(info.record.boot_id.as_ref())
            .is_some_and(|then| process::boot_id().is_ok_and(|now| now != *then));
        if earlier_boot {
            if lc_dir.exists() {
                fs::remove_dir_all(&lc_dir).map_err(io_at(&lc_dir))?;
            }
            // Its cgroup, should that boot's have outlived it (empty: its processes are gone).
            let _ = self
                .hierarchy
                .remove(info.record.cgroup_path.trim_start_matches('/'));
        } else if lc_dir.exists() {
            match libcontainer::container::Container::load(lc_dir.clone()) {
                Ok(mut c) => {
                    if let Err(e) = c.delete(true) {
                        return Err(ContainerError::Runtime {
                            id: id.clone(),
                            source: Box::new(e),
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(container = %id, "unreadable libcontainer state, removing it: {e}");
                    fs::remove_dir_all(&lc_dir).map_err(io_at(&lc_dir))?;
                }
            }
        }
        tracing::debug!(container = %id, "runtime state deleted");
        Ok(())
    }

    /// Names of containers (existing, in any state) that use volume `name`.
    pub fn volume_users(&self, name: &str) -> Result<Vec<String>, ContainerError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| {
                r.config
                    .mounts
                    .iter()
                    .any(|m| matches!(m, MountRequest::Volume { name: n, .. } if n == name))
            })
            .map(|r| r.display_name())
            .collect())
    }

    /// Removes a volume unless a container uses it.
    pub fn remove_volume(&self, name: &str) -> Result<(), ContainerError> {
        let _lock = self.lock()?;
        let users = self.volume_users(name)?;
        Ok(self.volumes.remove(name, &users)?)
    }

    /// The command that runs `args` inside running container `key` (see [`exec`]): the
    /// caller sets its stdio, spawns it and gets the command's exit code as the child's.
    /// `timeout` bounds the command (it is killed after it). With `console`, the command runs
    /// on a terminal of its own whose master is sent (`SCM_RIGHTS`) to the Unix socket
    /// listening at that path; the caller's stdio then carries only the helper's own errors.
    pub fn exec_command(
        &self,
        key: &str,
        args: &[String],
        timeout: Option<Duration>,
        console: Option<&Path>,
    ) -> Result<Command, ContainerError> {
        let info = self.get(key)?;
        if info.status != Status::Running {
            return Err(ContainerError::Start {
                id: info.record.id,
                message: "not running: exec needs a running container".into(),
            });
        }
        if args.is_empty() {
            return Err(ContainerError::Invalid(vec![
                "exec: a command is required".into()
            ]));
        }
        let program = &self.options.shim;
        let mut cmd = Command::new(program);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--id")
            .arg(&info.record.id);
        if let Some(t) = timeout {
            cmd.arg("--timeout").arg(t.as_millis().max(1).to_string());
        }
        if let Some(c) = console {
            cmd.arg("--console-socket").arg(c);
        }
        cmd.arg("--").args(args);
        isolate::isolate_before_exec(&mut cmd, program, isolate::Network::Keep)
            .map_err(io_at(program))?;
        Ok(cmd)
    }

    /// The command that runs a network probe from inside running container `key`'s network
    /// namespace (see [`exec::probe_main`]); it exits 0 when the probe passes.
    pub fn probe_command(
        &self,
        key: &str,
        probe: &exec::Probe,
        timeout: Duration,
    ) -> Result<Command, ContainerError> {
        let info = self.get(key)?;
        if info.status != Status::Running {
            return Err(ContainerError::Start {
                id: info.record.id,
                message: "not running: a probe needs a running container".into(),
            });
        }
        let program = &self.options.shim;
        let mut cmd = Command::new(program);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--id")
            .arg(&info.record.id)
            .arg("--timeout")
            .arg(timeout.as_millis().max(1).to_string())
            .arg("--probe")
            .arg(probe.arg());
        Ok(cmd)
    }

    /// cgroup usage of a running container.
    pub fn stats(&self, key: &str) -> Result<CgroupUsage, ContainerError> {
        self.stats_of(&self.get(key)?)
    }

    /// cgroup usage of running container `info`, as [`ContainerStore::list`] found it (no
    /// record read again: a pass over every container stays linear).
    pub fn stats_of(&self, info: &ContainerInfo) -> Result<CgroupUsage, ContainerError> {
        running_state(info)?;
        Ok(self.hierarchy.usage(&info.record.cgroup_path)?)
    }

    /// Volume names in use by any container.
    pub fn volumes_in_use(&self) -> Result<HashSet<String>, ContainerError> {
        let mut out = HashSet::new();
        for r in self.records()? {
            for m in &r.config.mounts {
                if let MountRequest::Volume { name, .. } = m {
                    out.insert(name.clone());
                }
            }
        }
        Ok(out)
    }
}

/// The task cgroup a task container's `cgroup_path` lies in (its parent directory).
fn task_cgroup_path(cgroup_path: &str) -> &str {
    cgroup_path
        .trim_start_matches('/')
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent)
}

fn running_state(info: &ContainerInfo) -> Result<&RuntimeState, ContainerError> {
    match (&info.state, info.status) {
        (Some(s), Status::Running) => Ok(s),
        _ => Err(ContainerError::NotRunning(info.record.display_name())),
    }
}

/// A container that runs, with the channel its shim reports the exit on.
#[derive(Debug)]
pub struct Started {
    /// Container id.
    pub id: String,
    /// Init pid.
    pub pid: i32,
    status: BufReader<ChildStdout>,
    child: Option<Child>,
}

impl Started {
    /// Blocks until the shim reports the exit; `None` if the shim ended without saying
    /// (the store's `get` then tells what is known).
    pub fn wait(mut self) -> Option<i32> {
        let mut line = String::new();
        let code = loop {
            line.clear();
            match self.status.read_line(&mut line) {
                Ok(0) | Err(_) => break None,
                Ok(_) => {
                    if let Some(shim::StatusLine::Exited(code)) = shim::parse_status(&line) {
                        break Some(code);
                    }
                }
            }
        };
        tracing::debug!(container = %self.id, "exit reported");
        // The shim exits right after reporting; reap it without waiting here.
        self.reap_in_background();
        code
    }

    /// The raw status pipe, for callers that multiplex it with other waits.
    pub fn status_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.status.get_ref().as_fd()
    }

    /// Lets the container run on its own. The shim is reaped in the background if this
    /// process lives on; if it exits first, the shim is re-parented and keeps running.
    pub fn detach(mut self) {
        self.reap_in_background();
    }

    fn reap_in_background(&mut self) {
        if let Some(mut c) = self.child.take() {
            std::thread::spawn(move || {
                let _ = c.wait();
            });
        }
    }
}

/// The anonymous volumes of a container: one for each path of the image's `Volumes` that no
/// mount of the container covers, as Docker gives them, in `<container dir>/volumes/<n>`
/// (removed with the container). A path that is not absolute, contains `..`, or lies in `/`,
/// `/proc`, `/sys` or `/dev` is skipped with a warning naming it.
fn anonymous_volumes(
    image_volumes: &[String],
    mounts: &[ResolvedMount],
    dir: &Path,
) -> Vec<ResolvedMount> {
    let mut out: Vec<ResolvedMount> = Vec::new();
    for path in image_volumes {
        let target = match config::container_path("image config Volumes path", path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("{e}; no volume is made for it");
                continue;
            }
        };
        let system = ["/proc", "/sys", "/dev"]
            .iter()
            .any(|p| target.starts_with(p));
        if target == Path::new("/") || system {
            tracing::warn!(
                "image config Volumes path '{path}' is not a place for a volume; no volume is made for it"
            );
            continue;
        }
        if mounts.iter().chain(&out).any(|m| m.target == target) {
            continue;
        }
        out.push(ResolvedMount {
            kind: MountKind::Bind,
            source: dir.join(ANONYMOUS_VOLUMES).join(out.len().to_string()),
            target,
            read_only: false,
            size: None,
        });
    }
    out
}

/// Directory of a container's anonymous volumes, inside its own directory.
pub(crate) const ANONYMOUS_VOLUMES: &str = "volumes";

/// Sets this process's umask to the one containers get ([`spec::CONTAINER_UMASK`]): the
/// runtime's own processes (shim, exec) must not pass on the caller's.
pub(crate) fn reset_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(spec::CONTAINER_UMASK));
}

pub(crate) fn is_id(key: &str) -> bool {
    key.len() == 32
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn new_id() -> Result<String, ContainerError> {
    let mut buf = [0u8; 16];
    rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| io_at(Path::new("getrandom"))(e.into()))?;
    Ok(hex::encode(buf))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 now.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), "unreadable: {e}");
            None
        }
    }
}

/// Records run attempt `e` of the container at `paths` as the run: it ended at once
/// ([`RESTART_FAILED_EXIT`]) and says why, as `ctr inspect` and the restart policy read it.
fn record_failed_run(paths: &ContainerPaths, e: &ContainerError) {
    let _ = fs::remove_file(paths.state());
    let failed = ExitInfo {
        exit_code: RESTART_FAILED_EXIT,
        signal: None,
        oom_killed: false,
        finished_at: now_rfc3339(),
        unknown: false,
        error: Some(e.to_string()),
    };
    if let Ok(bytes) = serde_json::to_vec_pretty(&failed) {
        let _ = write_atomic(&paths.exit(), &bytes);
    }
}

/// Writes a file by rename so readers see all or nothing. Not fsynced: for what a power cut
/// may take back (an exit the next boot records as `unknown`; a run's state, which the shim
/// syncs after the start with [`sync_path`]), never for the record a container is started
/// again from (see [`write_durable`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ContainerError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(bytes).map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))
}

/// Puts a file written by [`write_atomic`] on disk: its content, then its directory (the
/// rename).
pub(crate) fn sync_path(path: &Path) -> Result<(), ContainerError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_at(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// The run state, exit record and status of the container at `paths`, read so that no
/// record written meanwhile is missed. Its shim writes the exit record just before it exits,
/// so a shim found gone may have written it since it was looked for: it is looked for again.
/// A restart writes the new run's state, then removes the last exit record: a state read
/// before that is not the run whose record is gone, so the state is read again, and the
/// container looked at anew while it changes (three times at most; then it reads as running,
/// never as ended unseen).
fn observe(paths: &ContainerPaths) -> (Option<RuntimeState>, Option<ExitInfo>, Status) {
    let mut state: Option<RuntimeState> = read_json(&paths.state());
    for _ in 0..3 {
        let exit: Option<ExitInfo> = read_json(&paths.exit());
        match (&state, exit) {
            (_, Some(exit)) => return (state, Some(exit), Status::Exited),
            (None, None) => return (None, None, Status::Created),
            (Some(s), None) if s.init.is_alive() || s.shim.is_alive() => {
                return (state, None, Status::Running)
            }
            (Some(_), None) => {
                if let Some(exit) = read_json(&paths.exit()) {
                    return (state, Some(exit), Status::Exited);
                }
                let now: Option<RuntimeState> = read_json(&paths.state());
                if now == state {
                    // Both gone without a record: the exit code is lost.
                    return (state, None, Status::Exited);
                }
                state = now;
            }
        }
    }
    (state, None, Status::Running)
}

/// Records at `path` that a container ended unseen (exit code 255, `unknown`), unless a
/// record is there already (the shim's, or another reader's of the same end): it is put in
/// place only where nothing is, never over a record (see [`write_new`]). Returns what ends up
/// there.
fn record_unknown_exit(path: &Path) -> Option<ExitInfo> {
    let unknown = ExitInfo {
        exit_code: 255,
        signal: None,
        oom_killed: false,
        finished_at: now_rfc3339(),
        unknown: true,
        error: None,
    };
    let bytes = serde_json::to_vec_pretty(&unknown).ok()?;
    match write_new(path, &bytes) {
        Ok(()) => Some(unknown),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_json(path),
        // A data directory that cannot be written is reported where it matters (a start, a
        // pull); here, on every listing, it would only repeat.
        Err(e) => {
            tracing::debug!(path = %path.display(), "recording an unseen exit: {e}");
            None
        }
    }
}

/// Writes `bytes` to `path` all at once, only if nothing is there: a file of its own (named by
/// 64 random bits, made new) renamed to `path` with `RENAME_NOREPLACE`, which fails with
/// `AlreadyExists` rather than replace what is there (renameat2(2)); where the filesystem
/// cannot do that, hard-linked to it, which fails the same way (link(2)).
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", hex::encode(random)));
    let tmp = PathBuf::from(tmp);
    let placed = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| {
            use rustix::fs::{renameat_with, RenameFlags, CWD};
            match renameat_with(CWD, &tmp, CWD, path, RenameFlags::NOREPLACE) {
                Err(rustix::io::Errno::INVAL) => fs::hard_link(&tmp, path),
                r => r.map_err(io::Error::from),
            }
        });
    let _ = fs::remove_file(&tmp);
    placed
}

/// Writes a file by rename, its content and the rename on disk before this returns: what an
/// ended container keeps across a power cut (it may run again after it) is never left empty
/// or half-written.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), ContainerError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(bytes).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_directory_goes_whole_also_when_gone_already() {
        let root = tempfile::tempdir().expect("tempdir");
        let paths = ContainerPaths {
            dir: root.path().join("c1"),
        };
        fs::create_dir_all(paths.logs()).expect("logs");
        fs::write(paths.logs().join("container.log"), b"x").expect("log");
        fs::write(paths.record(), b"{}").expect("record");
        fs::write(paths.exit(), b"{}").expect("exit");
        remove_container_dir(&paths).expect("removed");
        assert!(!paths.dir.exists());
        // Already gone: nothing to do.
        remove_container_dir(&paths).expect("again");
    }

    #[test]
    fn an_unseen_exit_never_replaces_the_shims_record() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("exit.json");
        // Nothing there: the unseen exit is recorded.
        let first = record_unknown_exit(&path).expect("recorded");
        assert!(first.unknown && first.exit_code == 255);
        // The shim's record came first: it is what is read back and what stays.
        let shims = ExitInfo {
            exit_code: 0,
            signal: None,
            oom_killed: false,
            finished_at: now_rfc3339(),
            unknown: false,
            error: None,
        };
        fs::write(&path, serde_json::to_vec(&shims).expect("json")).expect("write");
        assert_eq!(record_unknown_exit(&path), Some(shims.clone()));
        assert_eq!(read_json::<ExitInfo>(&path), Some(shims));
        // No file of its own is left behind.
        let left: Vec<_> = fs::read_dir(root.path()).expect("dir").collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn cgroup_parents() {
        assert!(validate_cgroup_parent("flotilla/node-1").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "a b", "."] {
            assert!(validate_cgroup_parent(bad).is_err(), "{bad}");
        }
        assert!(StoreOptions::default_cgroup_parent().starts_with("flotilla/"));
    }

    #[test]
    fn a_container_is_asked_to_stop_with_its_images_stop_signal() {
        let record = |stop: Option<&str>| ContainerRecord {
            id: "0".repeat(32),
            created_at: 0,
            config: ContainerConfig::default(),
            image: ImageUse {
                name: String::new(),
                digest: String::new(),
                layers: Vec::new(),
            },
            image_process: ImageProcess::from_image_config(&match stop {
                Some(s) => serde_json::json!({"config": {"StopSignal": s}}),
                None => serde_json::json!({"config": {}}),
            }),
            cgroup_path: String::new(),
            mounts: Vec::new(),
            boot_id: None,
        };
        assert_eq!(record(Some("SIGUSR1")).stop_signal(), Signal::USR1);
        assert_eq!(record(Some("QUIT")).stop_signal(), Signal::QUIT);
        assert_eq!(record(Some("2")).stop_signal(), Signal::INT);
        assert_eq!(record(None).stop_signal(), Signal::TERM);
        assert_eq!(record(Some("")).stop_signal(), Signal::TERM);
        assert_eq!(record(Some("SIGNOPE")).stop_signal(), Signal::TERM);
        // A record written before StopSignal was kept reads as SIGTERM.
        let mut old = serde_json::to_value(record(None)).expect("json");
        assert!(old["image_process"].get("stop_signal").is_none());
        old["image_process"]
            .as_object_mut()
            .expect("object")
            .remove("stop_signal");
        let old: ContainerRecord = serde_json::from_value(old).expect("old record");
        assert_eq!(old.stop_signal(), Signal::TERM);
    }

    #[test]
    fn a_restart_counts_once_after_each_exit_even_when_begun_again() {
        let exit = |at: &str| ExitInfo {
            exit_code: 1,
            signal: None,
            oom_killed: false,
            finished_at: at.to_string(),
            unknown: false,
            error: None,
        };
        let first = RestartRecord::default().next(Some(&exit("t1")));
        assert_eq!((first.count, first.after.as_deref()), (1, Some("t1")));
        // Its launcher died before the new run started: begun again after the same exit.
        assert_eq!(first.next(Some(&exit("t1"))), first);
        let second = first.next(Some(&exit("t2")));
        assert_eq!((second.count, second.after.as_deref()), (2, Some("t2")));
        // Without an exit record (its shim died with it) every restart counts.
        let blind = second.next(None);
        assert_eq!((blind.count, blind.after.as_deref()), (3, None));
        assert_eq!(blind.next(None).count, 4);
        // A record written before the field existed reads as never restarted after an exit.
        let old: RestartRecord = serde_json::from_str(r#"{"count": 2}"#).expect("record");
        assert_eq!(old.next(Some(&exit("t3"))).count, 3);
    }

    #[test]
    fn image_volumes_not_covered_by_a_mount_get_anonymous_ones() {
        let paths: Vec<String> = [
            "/cache", "/data/", "/data", "rel", "/", "/proc/x", "/a/../b", "/tmp",
        ]
        .map(str::to_string)
        .to_vec();
        let given = [ResolvedMount {
            kind: MountKind::Tmpfs,
            source: PathBuf::new(),
            target: PathBuf::from("/tmp"),
            read_only: false,
            size: None,
        }];
        let dir = Path::new("/c/id");
        let made: Vec<(String, String)> = anonymous_volumes(&paths, &given, dir)
            .into_iter()
            .map(|m| {
                (
                    m.target.display().to_string(),
                    m.source.display().to_string(),
                )
            })
            .collect();
        assert_eq!(
            made,
            [
                ("/cache".to_string(), "/c/id/volumes/0".to_string()),
                ("/data".to_string(), "/c/id/volumes/1".to_string()),
            ]
        );
    }
}
