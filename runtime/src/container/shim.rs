//! The per-container supervisor (`flotilla-shim`), in the containerd-shim / conmon pattern.
//!
//! One shim owns one run of a container: it creates it through libcontainer (so the
//! container's init is its child and `waitpid` gives the real exit status), holds its stdout
//! and stderr and appends them to the log, and records the exit in `exit.json`. A restart
//! spawns a new shim for the same container directory. It runs in its
//! own session, so it outlives the agent or CLI that started it.
//!
//! The shim starts isolated (see [`super::isolate`]): its own session, a private mount
//! namespace, its binary on a read-only mount, and for `network: none` a fresh network
//! namespace whose `lo` it brings up. The container's rootfs is mounted in that mount
//! namespace, so it vanishes with the shim and the container, whatever happens.
//!
//! The shim talks to its launcher through its stdout, one line each: `started <pid>`,
//! `error <message>`, `exited <code>`. Its stdin brings the container's secret material for
//! this run (see [`super::secrets`]), read to its end before anything else: nothing of it is
//! written to disk, logged, or said in an error.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{pidfd_open, waitpid, Pid, PidfdFlags, WaitOptions};

use super::cgroup::CgroupHierarchy;
use super::devices;
use super::logs::{LineSplitter, LogWriter, Stream};
use super::process::ProcessIdentity;
use super::seccomp;
use super::secrets::{self, SecretMaterial};
use super::spec::{self, MountKind, ResolvedMount, SpecInput};
use super::workload;
use super::{now_rfc3339, rootfs, ContainerRecord, ExitInfo, NetworkMode, RuntimeState};

/// How long output is still drained after the container's init exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// A line of the shim's status channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    /// The container runs with this init pid.
    Started(i32),
    /// The container ended with this exit code.
    Exited(i32),
    /// It could not be started.
    Error(String),
    /// Its process cannot run in it (a command not found, not executable): the exit code
    /// Docker gives for that, and why.
    CannotRun(i32, String),
}

/// Parses a status line.
pub fn parse_status(line: &str) -> Option<StatusLine> {
    let line = line.trim_end_matches('\n');
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "started" => rest.parse().ok().map(StatusLine::Started),
        "exited" => rest.parse().ok().map(StatusLine::Exited),
        "error" => Some(StatusLine::Error(rest.replace("\\n", "\n"))),
        "cannotrun" => {
            let (code, message) = rest.split_once(' ')?;
            Some(StatusLine::CannotRun(
                code.parse().ok()?,
                message.replace("\\n", "\n"),
            ))
        }
        _ => None,
    }
}

fn report(line: &StatusLine) {
    let text = match line {
        StatusLine::Started(pid) => format!("started {pid}\n"),
        StatusLine::Exited(code) => format!("exited {code}\n"),
        StatusLine::Error(m) => format!("error {}\n", m.replace('\n', "\\n")),
        StatusLine::CannotRun(code, m) => format!("cannotrun {code} {}\n", m.replace('\n', "\\n")),
    };
    // The launcher may be gone (detached run, killed agent): nobody to tell, nothing lost.
    let _ = io::stdout().write_all(text.as_bytes());
    let _ = io::stdout().flush();
}

/// Runs the shim for container `id`, its secret material read from standard input first;
/// returns the shim's exit code.
pub fn main(data_dir: &Path, id: &str) -> i32 {
    // First thing: the launcher writes all of it, closes the pipe, and only then waits for
    // the status line.
    let material = match secrets::read_material(io::stdin().lock()) {
        Ok(m) => m,
        Err(e) => {
            report(&StatusLine::Error(e.to_string()));
            return 1;
        }
    };
    let problems = material.problems();
    if !problems.is_empty() {
        report(&StatusLine::Error(problems.join("; ")));
        return 1;
    }
    if !super::is_id(id) {
        report(&StatusLine::Error(format!("invalid container id '{id}'")));
        return 1;
    }
    let dir = data_dir.join("containers").join(id);
    let record: ContainerRecord = match fs::read(dir.join("container.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            report(&StatusLine::Error(format!(
                "reading {}: {e}",
                dir.join("container.json").display()
            )));
            return 1;
        }
    };
    if let Err(e) = record_fits(&record, id) {
        report(&StatusLine::Error(format!(
            "{}: {e}",
            dir.join("container.json").display()
        )));
        return 1;
    }
    tracing::debug!(container = %id, "shim running");
    // Nothing made for the container (mount points, the working directory, files) and no
    // process in it may depend on the umask of whoever started the agent.
    super::reset_umask();
    if !super::isolate::launched_isolated() {
        report(&StatusLine::Error(
            "the shim runs only as launched by nodeagent (in its own mount namespace)".into(),
        ));
        return 1;
    }
    let started = match create_and_start(data_dir, &dir, &record, &material) {
        Ok(s) => s,
        Err(Refusal {
            message,
            code: Some(code),
        }) => {
            report(&StatusLine::CannotRun(code, message));
            return 1;
        }
        Err(Refusal { message, .. }) => {
            report(&StatusLine::Error(message));
            return 1;
        }
    };
    drop(material);
    report(&StatusLine::Started(started.pid.as_raw_nonzero().get()));
    // The run's record goes to the disk while the container runs, off the start's path:
    // after a power cut the agent resumes a container in place only if it finds it (without
    // it the container reads as never started and is replaced). Not waited for: the process
    // ends with the shim, and a record a cut takes back costs a replacement, not a task.
    let state = dir.join("state.json");
    let _ = std::thread::Builder::new()
        .name("state-sync".into())
        .spawn(move || {
            if let Err(e) = super::sync_path(&state) {
                tracing::warn!("{e}");
            }
        });
    let exit = supervise(&dir, &record, started);
    report(&StatusLine::Exited(exit.exit_code));
    0
}

struct StartedContainer {
    pid: Pid,
    stdout: OwnedFd,
    stderr: OwnedFd,
    hierarchy: CgroupHierarchy,
}

/// Why the shim could not start a container: what it says, and for a process that cannot
/// run in it ([`super::exec::NotRunnable`]) the exit code `docker run` gives for that.
#[derive(Debug)]
struct Refusal {
    message: String,
    code: Option<i32>,
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self {
            message,
            code: None,
        }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

fn create_and_start(
    data_dir: &Path,
    dir: &Path,
    record: &ContainerRecord,
    material: &SecretMaterial,
) -> Result<StartedContainer, Refusal> {
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    if record.config.network == NetworkMode::None {
        let mut link = libcontainer::network::link::LinkClient::new(
            libcontainer::network::wrapper::create_network_client(),
        )
        .map_err(|e| format!("netlink: {e}"))?;
        // In a fresh namespace `lo` is always interface 1.
        link.set_up(1).map_err(|e| format!("bringing up lo: {e}"))?;
    }
    let hierarchy = CgroupHierarchy::detect().map_err(|e| e.to_string())?;
    tracing::debug!(container = %record.id, "namespaces ready");

    let rootfs_dir = dir.join("rootfs");
    let layers: Vec<PathBuf> = if record.image.layers.is_empty() {
        let empty = dir.join("empty");
        fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
        vec![empty]
    } else {
        let store = data_dir.join("images").join("layers");
        record.image.layers.iter().map(|l| store.join(l)).collect()
    };
    rootfs::mount_overlay(&layers, dir, &rootfs_dir).map_err(|e| e.to_string())?;
    tracing::debug!(container = %record.id, "rootfs mounted");
    let root =
        rootfs::open_root(&rootfs_dir).map_err(|e| format!("{}: {e}", rootfs_dir.display()))?;
    // The image's `Volumes`: their anonymous volumes start with the image's content there,
    // once: a restarted container finds them as its earlier runs left them.
    let anonymous = dir.join(super::ANONYMOUS_VOLUMES);
    let restarted = dir.join("restarts.json").exists();
    for m in record
        .mounts
        .iter()
        .filter(|m| !restarted && m.source.starts_with(&anonymous))
    {
        rootfs::copy_up(&root, &m.target, &m.source).map_err(|e| {
            format!(
                "filling the volume at {} from the image: {e}",
                m.target.display()
            )
        })?;
    }
    let user_spec = record
        .config
        .user
        .as_deref()
        .or(record.image_process.user.as_deref());
    let user = rootfs::resolve_user(&root, user_spec).map_err(|e| e.to_string())?;
    let cwd =
        spec::working_dir(&record.config, &record.image_process).map_err(|e| e.to_string())?;
    rootfs::ensure_dir(&root, &cwd)
        .map_err(|e| format!("working directory {}: {e}", cwd.display()))?;
    // A bind source can go while the container is not running (before a restart, say): name
    // it, rather than libcontainer's bare "failed to prepare rootfs".
    for m in record.mounts.iter().filter(|m| m.kind == MountKind::Bind) {
        if let Err(e) = fs::metadata(&m.source) {
            return Err(format!(
                "the source of its mount at {}, {}: {e}",
                m.target.display(),
                m.source.display()
            )
            .into());
        }
    }
    let mut mounts = record.mounts.clone();
    let config_targets = material.targets();
    mounts.extend(name_files(record, dir, &config_targets)?);
    if !material.files.is_empty() {
        if let Some(m) = secrets::clashing_mount(&record.mounts) {
            return Err(format!(
                "its mount at {} clashes with its secret files at {}",
                m.target.display(),
                secrets::SECRETS_TARGET
            )
            .into());
        }
        // Last: above any mount of `/run` it has.
        mounts.push(secrets::mount_files(dir, &material.files).map_err(|e| e.to_string())?);
        tracing::debug!(container = %record.id, files = material.files.len(), "secret files mounted");
    }
    if !material.configs.is_empty() {
        for c in &material.configs {
            if let Some(m) = secrets::clashing_config_mount(&c.target, &mounts) {
                return Err(format!(
                    "its mount at {} clashes with its config at {}",
                    m.target.display(),
                    c.target.escape_debug()
                )
                .into());
            }
            // A file cannot be bind-mounted over a directory: said here, rather than as
            // libcontainer's "failed to prepare rootfs".
            match rootfs::is_dir_in_root(&root, Path::new(&c.target)) {
                Ok(false) => {}
                Ok(true) => {
                    return Err(format!(
                        "its config at {} cannot be mounted: the image has a directory there",
                        c.target.escape_debug()
                    )
                    .into())
                }
                Err(e) => {
                    return Err(format!(
                        "its config at {} cannot be mounted: in the image, {e}",
                        c.target.escape_debug()
                    )
                    .into())
                }
            }
        }
        // Last, each at a path no other mount is at, under or above.
        mounts.extend(secrets::mount_configs(dir, &material.configs).map_err(|e| e.to_string())?);
        tracing::debug!(container = %record.id, configs = material.configs.len(), "configs mounted");
    }
    let bounding = bounding_set();
    let limit_problems = ulimits_beyond_own(&record.config.ulimits, &bounding);
    if !limit_problems.is_empty() {
        return Err(limit_problems.join("; ").into());
    }
    let spec = spec::build(&SpecInput {
        id: &record.id,
        config: &record.config,
        image: &record.image_process,
        user: &user,
        cwd: &cwd,
        rootfs: &rootfs_dir,
        cgroup_path: &record.cgroup_path,
        mounts: &mounts,
        cgroup_v2: hierarchy.is_v2(),
        swap_accounting: swap_accounting(&hierarchy),
        bounding: &bounding,
        nofile_hard: hard_limit(rustix::process::Resource::Nofile),
    })
    .map_err(|e| e.to_string())?;
    // The seccomp profile is compiled here and installed by the init (workload::Workload), so
    // libcontainer gets a spec without it; the profile is kept beside the spec.
    let mut spec = spec;
    let mut filter = None;
    if let Some(linux) = spec.linux().clone() {
        if let Some(profile) = linux.seccomp() {
            let cache = data_dir.join("containers").join(".seccomp");
            filter = Some(seccomp::compile_cached(profile, &cache).map_err(|e| e.to_string())?);
            let json = serde_json::to_vec_pretty(profile).map_err(|e| e.to_string())?;
            super::write_atomic(&dir.join("seccomp.json"), &json).map_err(|e| e.to_string())?;
            let mut linux = linux;
            linux.set_seccomp(None);
            spec.set_linux(Some(linux));
        }
    }
    save_spec(&spec, &dir.join("config.json"))?;

    // Pipes, never /dev/null: libcontainer reopens /dev/null read-only over fds 0-2, which
    // breaks writes to it. stdin is a pipe whose write end is closed: reads see EOF.
    tracing::debug!(container = %record.id, "spec written");
    let pipe = || pipe_with(PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (stdin_r, stdin_w) = pipe()?;
    drop(stdin_w);
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut container = ContainerBuilder::new(record.id.clone(), SyscallType::Linux)
        .with_root_path(data_dir.join("libcontainer"))
        .map_err(|e| crate::causes(&e))?
        .with_stdin(stdin_r)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .with_executor(
            workload::Workload::new(filter, record.config.init).with_env(material.env.clone()),
        )
        .as_init(dir)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| {
            // A command missing from the image, or not executable: said in the container's
            // terms rather than libcontainer's ("exec process failed with error error in
            // executing process …").
            match spec
                .process()
                .as_ref()
                .and_then(|p| super::exec::why_not_in(root.as_fd(), p))
            {
                Some(why) => Refusal {
                    message: why.message,
                    code: Some(why.code),
                },
                None => with_full_disk(crate::causes(&e), dir).into(),
            }
        })?;
    tracing::debug!(container = %record.id, "created");
    let fail = |container: &mut libcontainer::container::Container, msg: String| {
        let _ = container.delete(true);
        msg
    };
    // On v2 the device allowlist is an eBPF program on the container's cgroup, attached
    // while the init waits to be started: nothing of the image has run yet.
    if let (CgroupHierarchy::V2 { root }, false) = (&hierarchy, record.config.privileged) {
        let cgroup = root.join(record.cgroup_path.trim_start_matches('/'));
        if let Err(e) = devices::attach(&cgroup, devices::DEFAULT_ALLOW) {
            return Err(fail(&mut container, e.to_string()).into());
        }
    }
    let Some(pid) = container.pid() else {
        return Err(fail(&mut container, "libcontainer reported no init pid".into()).into());
    };
    let identity = |p: i32| ProcessIdentity::of(p).map_err(|e| format!("pid {p}: {e}"));
    let state = match (identity(std::process::id() as i32), identity(pid.as_raw())) {
        (Ok(shim), Ok(init)) => RuntimeState {
            shim,
            init,
            started_at: now_rfc3339(),
        },
        (Err(e), _) | (_, Err(e)) => return Err(fail(&mut container, e).into()),
    };
    let bytes = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
    if let Err(e) = super::write_atomic(&dir.join("state.json"), &bytes) {
        return Err(fail(&mut container, e.to_string()).into());
    }
    if let Err(e) = container.start() {
        let _ = fs::remove_file(dir.join("state.json"));
        return Err(fail(&mut container, with_full_disk(crate::causes(&e), dir)).into());
    }
    // A restart: the last run's exit goes only now that this run is on record and runs, so
    // the container never reads as anything but ended or running (see `ContainerStore::restart`).
    match fs::remove_file(dir.join("exit.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            let _ = fs::remove_file(dir.join("state.json"));
            return Err(fail(
                &mut container,
                format!("removing the last exit record: {e}"),
            )
            .into());
        }
        _ => {}
    }
    tracing::debug!(container = %record.id, "started");
    Ok(StartedContainer {
        pid: Pid::from_raw(pid.as_raw()).ok_or("invalid init pid")?,
        stdout: out_r,
        stderr: err_r,
        hierarchy,
    })
}

/// The shim's own capability bounding set (all capabilities if unreadable: the kernel then
/// refuses what it must).
fn bounding_set() -> std::collections::HashSet<oci_spec::runtime::Capability> {
    let mask = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    spec::capabilities_from_mask(mask)
}

/// Checks the record's fields that name places on the host against what the container store
/// writes: its own id, layers by their digest's hex, a cgroup path under a valid parent ending
/// in the id. A record edited by hand (or by anything that could write the data directory)
/// must not point libcontainer or the overlay elsewhere.
fn record_fits(record: &ContainerRecord, id: &str) -> Result<(), String> {
    if record.id != id {
        return Err(format!("records container '{}', not '{id}'", record.id));
    }
    if let Some(bad) = record
        .image
        .layers
        .iter()
        .find(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!("image.layers: '{bad}' is not a layer digest"));
    }
    let parent = record
        .cgroup_path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix(id))
        .and_then(|p| p.strip_suffix('/'))
        .ok_or_else(|| format!("cgroup_path '{}' is not /PARENT/{id}", record.cgroup_path))?;
    super::validate_cgroup_parent(parent).map_err(|e| format!("cgroup_path: {e}"))
}

/// This process's hard limit of `resource` (`None`: unlimited).
fn hard_limit(resource: rustix::process::Resource) -> Option<u64> {
    rustix::process::getrlimit(resource).maximum
}

/// The container's `ulimits` whose hard limit is above the shim's own while the shim may not
/// raise it (no `CAP_SYS_RESOURCE`, as in an unprivileged container or a unit that drops it):
/// setrlimit(2) would fail with a bare EPERM inside libcontainer.
fn ulimits_beyond_own(
    ulimits: &[super::config::Ulimit],
    bounding: &std::collections::HashSet<oci_spec::runtime::Capability>,
) -> Vec<String> {
    if bounding.contains(&oci_spec::runtime::Capability::SysResource) {
        return Vec::new();
    }
    ulimits
        .iter()
        .filter_map(|u| {
            let resource = rlimit_resource(&u.name)?;
            let own = hard_limit(resource)?;
            (u.hard > own).then(|| {
                let hard = if u.hard == u64::MAX {
                    "unlimited".to_string()
                } else {
                    u.hard.to_string()
                };
                format!(
                    "ulimit {}: hard limit {hard} is above the node's {own}, and the agent may \
                     not raise it (no CAP_SYS_RESOURCE): ask for at most {own}",
                    u.name
                )
            })
        })
        .collect()
}

/// The rustix resource of a ulimit name (`nofile` → `Resource::Nofile`).
pub(super) fn rlimit_resource(name: &str) -> Option<rustix::process::Resource> {
    use rustix::process::Resource as R;
    Some(match name {
        "cpu" => R::Cpu,
        "fsize" => R::Fsize,
        "data" => R::Data,
        "stack" => R::Stack,
        "core" => R::Core,
        "rss" => R::Rss,
        "nproc" => R::Nproc,
        "nofile" => R::Nofile,
        "memlock" => R::Memlock,
        "as" => R::As,
        "locks" => R::Locks,
        "sigpending" => R::Sigpending,
        "msgqueue" => R::Msgqueue,
        "nice" => R::Nice,
        "rtprio" => R::Rtprio,
        "rttime" => R::Rttime,
        _ => return None,
    })
}

fn swap_accounting(h: &CgroupHierarchy) -> bool {
    match h {
        CgroupHierarchy::V1 { mounts } => mounts
            .get("memory")
            .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists()),
        // The root has no memory.* files: look at a child's, and with none yet (a host
        // whose init makes no cgroups), at whether the kernel was told to turn it off.
        CgroupHierarchy::V2 { root } => {
            let mut children = fs::read_dir(root)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("cgroup.procs").exists())
                .peekable();
            if children.peek().is_some() {
                children.any(|e| e.path().join("memory.swap.max").exists())
            } else {
                // /proc/swaps exists only in kernels built with swap.
                Path::new("/proc/swaps").exists()
                    && fs::read_to_string("/proc/cmdline").is_ok_and(|c| {
                        !c.split_whitespace()
                            .any(|a| a == "swapaccount=0" || a == "cgroup.memory=noswap")
                    })
            }
        }
    }
}

/// Copies output to the log until the container ended and its pipes are drained; records
/// and returns the exit.
fn supervise(dir: &Path, record: &ContainerRecord, c: StartedContainer) -> ExitInfo {
    let mut log = match LogWriter::open(&dir.join("logs"), record.config.log) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(container = %record.id, "cannot open the log, output is discarded: {e}");
            None
        }
    };
    let mut log_failed = false;
    let mut split = [LineSplitter::default(), LineSplitter::default()];
    let streams = [Stream::Stdout, Stream::Stderr];
    let fds = [c.stdout, c.stderr];
    let mut open = [true, true];
    let pidfd = pidfd_open(c.pid, PidfdFlags::empty()).ok();
    let mut status = None;
    let mut deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];

    let mut write = |log: &mut Option<LogWriter>, stream: Stream, partial: bool, content: &[u8]| {
        if let Some(w) = log {
            if let Err(e) = w.write(stream, partial, content) {
                if !log_failed {
                    tracing::error!(container = %record.id, "writing the log: {e}");
                    log_failed = true;
                }
            }
        }
        Ok(())
    };

    loop {
        if status.is_some()
            && (!open[0] && !open[1] || deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(3);
        let mut which: Vec<usize> = Vec::with_capacity(3);
        for i in 0..2 {
            if open[i] {
                pfds.push(PollFd::new(&fds[i], PollFlags::IN));
                which.push(i);
            }
        }
        if status.is_none() {
            if let Some(p) = &pidfd {
                pfds.push(PollFd::new(p, PollFlags::IN));
                which.push(2);
            }
        }
        let timeout = match (status.is_some(), pidfd.is_some()) {
            (true, _) => Some(Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            }),
            // Without a pidfd, fall back to checking the child now and then.
            (false, false) => Some(Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            }),
            (false, true) => None,
        };
        match poll(&mut pfds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(container = %record.id, "poll: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let ready: Vec<(usize, PollFlags)> = pfds
            .iter()
            .zip(&which)
            .map(|(p, &w)| (w, p.revents()))
            .collect();
        drop(pfds);
        for (w, revents) in ready {
            if revents.is_empty() {
                continue;
            }
            if w == 2 {
                continue;
            }
            match rustix::io::read(fds[w].as_fd(), &mut buf) {
                Ok(0) => open[w] = false,
                Ok(n) => {
                    let stream = streams[w];
                    let _ = split[w].feed(&buf[..n], &mut |p, c| write(&mut log, stream, p, c));
                }
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                Err(_) => open[w] = false,
            }
        }
        if status.is_none() {
            if let Ok(Some((_, s))) = waitpid(Some(c.pid), WaitOptions::NOHANG) {
                status = Some(s);
                deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
    }
    for (i, s) in split.iter_mut().enumerate() {
        let stream = streams[i];
        let _ = s.finish(&mut |p, c| write(&mut log, stream, p, c));
    }
    tracing::debug!(container = %record.id, "exited and drained");
    let (exit_code, signal) = match status {
        Some(s) => match (s.exit_status(), s.terminating_signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (255, None),
        },
        None => (255, None),
    };
    let oom_killed = c
        .hierarchy
        .usage(&record.cgroup_path)
        .map(|u| u.oom_kills > 0)
        .unwrap_or(false);
    let exit = ExitInfo {
        exit_code,
        signal,
        oom_killed,
        finished_at: now_rfc3339(),
        unknown: false,
        error: None,
    };
    match serde_json::to_vec_pretty(&exit) {
        Ok(bytes) => {
            if let Err(e) = super::write_atomic(&dir.join("exit.json"), &bytes) {
                tracing::error!(container = %record.id, "recording the exit: {e}");
            }
        }
        Err(e) => tracing::error!(container = %record.id, "recording the exit: {e}"),
    }
    exit
}

/// The name files of a container — `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` —
/// as bind mounts of files in its directory, in every network mode, as Docker gives them (a
/// mount the caller asked for at one of those paths wins, and so does a config at one of
/// `config_targets`).
fn name_files(
    record: &ContainerRecord,
    dir: &Path,
    config_targets: &[&str],
) -> Result<Vec<ResolvedMount>, String> {
    use crate::network::names;
    let cfg = &record.config;
    let hostname = spec::hostname(cfg, &record.id);
    let host = cfg.network == NetworkMode::Host;
    let node_hosts = if host {
        Some(fs::read_to_string("/etc/hosts").unwrap_or_default())
    } else {
        None
    };
    let mut files = vec![
        (
            "hosts",
            names::hosts_file(&hostname, &cfg.addresses, node_hosts.as_deref()),
        ),
        ("hostname", names::hostname_file(&hostname)),
    ];
    let resolv = match &cfg.resolv_conf {
        Some(file) => Some(file.clone()),
        None => {
            let node = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let text = if host {
                node
            } else {
                names::namespaced_resolv_conf(&node)
            };
            files.push(("resolv.conf", text));
            None
        }
    };
    let mut mounts = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_name_file(&path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        mounts.push((path, name));
    }
    if let Some(file) = resolv {
        mounts.push((file, "resolv.conf"));
    }
    let asked: Vec<&Path> = record
        .mounts
        .iter()
        .map(|m| m.target.as_path())
        .chain(config_targets.iter().map(Path::new))
        .collect();
    Ok(mounts
        .into_iter()
        .map(|(source, name)| (source, PathBuf::from("/etc").join(name)))
        .filter(|(_, target)| !asked.contains(&target.as_path()))
        .map(|(source, target)| ResolvedMount {
            kind: MountKind::Bind,
            // The caller's file (the task's resolver) is shared: read-only. The container's
            // own copies are writable, as Docker's are, and go with the container.
            read_only: cfg.resolv_conf.as_ref() == Some(&source),
            source,
            target,
            size: None,
        })
        .collect())
}

/// Writes a name file readable by every user of the container, whatever the caller's umask.
fn write_name_file(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}

/// Writes the runtime spec libcontainer reads to `path`; a failure says why (oci-spec's own
/// message, `io operation failed`, leaves out the cause: `No space left on device` on a full
/// disk).
fn save_spec(spec: &oci_spec::runtime::Spec, path: &Path) -> Result<(), String> {
    spec.save(path)
        .map_err(|e| format!("writing the runtime spec: {}", crate::causes(&e)))
}

/// `msg`, a container's failure to be created or started, with a note when the filesystem of
/// `dir` (the container's directory, beside its root filesystem's upper layer) has no room
/// left: libcontainer's init reports some of its failures as text without their cause
/// (`failed to prepare rootfs`), which a full disk then explains.
fn with_full_disk(msg: String, dir: &Path) -> String {
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let bytes = s.f_bavail.saturating_mul(s.f_frsize);
            full_disk_note(msg, dir, bytes, s.f_favail)
        }
        Err(_) => msg,
    }
}

/// What [`with_full_disk`] says for a filesystem with `bytes` and `inodes` free: a note when
/// either is (nearly) gone — under 64 KiB, no inode — in the kernel's words for it.
fn full_disk_note(msg: String, dir: &Path, bytes: u64, inodes: u64) -> String {
    if bytes >= 64 << 10 && inodes > 0 || msg.contains("No space left on device") {
        return msg;
    }
    format!(
        "{msg} (the filesystem of {} is full: No space left on device; {bytes} bytes and \
         {inodes} inodes free)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_failure_on_a_full_filesystem_says_so_and_one_on_a_roomy_one_is_left_alone() {
        let dir = std::path::Path::new("/data/containers/c1");
        let rootfs = "failed to create container: failed to prepare rootfs".to_string();
        assert_eq!(
            super::full_disk_note(rootfs.clone(), dir, 0, 100),
            "failed to create container: failed to prepare rootfs (the filesystem of \
             /data/containers/c1 is full: No space left on device; 0 bytes and 100 inodes free)"
        );
        assert!(super::full_disk_note(rootfs.clone(), dir, 1 << 30, 0)
            .ends_with("1073741824 bytes and 0 inodes free)"));
        assert_eq!(
            super::full_disk_note(rootfs.clone(), dir, 1 << 30, 100),
            rootfs
        );
        // Said already: not twice.
        let said = "writing: No space left on device (os error 28)".to_string();
        assert_eq!(super::full_disk_note(said.clone(), dir, 0, 0), said);
    }
    use super::*;

    #[test]
    fn a_spec_written_to_a_full_disk_says_the_disk_is_full() {
        // `/dev/full` fails every write with ENOSPC, as a full filesystem does.
        let e = save_spec(&oci_spec::runtime::Spec::default(), Path::new("/dev/full"))
            .expect_err("a write to /dev/full succeeded");
        assert!(
            e.starts_with("writing the runtime spec: ") && e.contains("No space left on device"),
            "{e}"
        );
    }

    #[test]
    fn status_lines_round_trip() {
        assert_eq!(parse_status("started 42\n"), Some(StatusLine::Started(42)));
        assert_eq!(parse_status("exited 137"), Some(StatusLine::Exited(137)));
        assert_eq!(
            parse_status("error no such file\\nsecond line\n"),
            Some(StatusLine::Error("no such file\nsecond line".into()))
        );
        let line = StatusLine::CannotRun(127, "command 'x' not found\nhere".into());
        let text = match &line {
            StatusLine::CannotRun(code, m) => {
                format!("cannotrun {code} {}\n", m.replace('\n', "\\n"))
            }
            _ => unreachable!(),
        };
        assert_eq!(parse_status(&text), Some(line));
        assert_eq!(parse_status("cannotrun x why"), None);
        assert_eq!(parse_status("started x"), None);
        assert_eq!(parse_status(""), None);
    }

    fn record(id: &str, layers: &[&str], cgroup_path: &str) -> ContainerRecord {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "created_at": 0,
            "image": {"name": "x", "digest": "sha256:00", "layers": layers},
            "image_process": {},
            "cgroup_path": cgroup_path,
            "mounts": [],
            "config": {"image": "x"},
        }))
        .expect("record")
    }

    #[test]
    fn a_record_pointing_outside_its_place_is_refused() {
        let id = "0123456789abcdef0123456789abcdef";
        let good = record(id, &["ab12"], &format!("/flotilla/node-1/{id}"));
        assert_eq!(record_fits(&good, id), Ok(()));
        for (r, says) in [
            (
                record("../../x", &[], &format!("/f/{id}")),
                "records container",
            ),
            (
                record(id, &["../../etc"], &format!("/f/{id}")),
                "image.layers",
            ),
            (
                record(id, &["/tmp/victim"], &format!("/f/{id}")),
                "image.layers",
            ),
            (record(id, &[], "/f/../escape"), "cgroup_path"),
            (record(id, &[], &format!("/f/../x/{id}")), "cgroup_path"),
            (record(id, &[], &format!("f/{id}")), "cgroup_path"),
        ] {
            let e = record_fits(&r, id).expect_err(says);
            assert!(e.contains(says), "{e}");
        }
    }
}
