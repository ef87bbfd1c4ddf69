//! The OCI runtime spec of a container: the image's defaults, overridden by the container's
//! settings, over a hardened baseline (Docker's defaults). Pure: no I/O.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use serde::{Deserialize, Serialize};

pub use super::accounts::ResolvedUser;
use super::config::{container_path, ContainerConfig};

/// Errors building a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the image nor the container names a command.
    #[error("no command: the image has no entrypoint or cmd and none was given")]
    NoCommand,
    /// A capability name is unknown.
    #[error("unknown capability '{0}'")]
    Capability(String),
    /// The image's working directory is unusable.
    #[error("working directory: {0}")]
    Workdir(String),
    /// The spec library refused a value.
    #[error("building the runtime spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::AuditWrite,
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Mknod,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// Paths of `/proc` and `/sys` a container cannot read.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths of `/proc` a container can read but not write.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Default `PATH` when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The runtime defaults of an image (`config` of the image configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProcess {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Volumes`: paths that get an anonymous volume, sorted.
    pub volumes: Vec<String>,
    /// `StopSignal`, as written (`SIGUSR1`, `USR1`, `10`): what a stop asks the container
    /// with before SIGKILL (see [`super::ContainerStore::stop`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl ImageProcess {
    /// Reads the defaults from an image configuration document; absent or malformed fields
    /// count as unset.
    pub fn from_image_config(doc: &serde_json::Value) -> Self {
        let c = &doc["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        Self {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            workdir: text(&c["WorkingDir"]),
            user: text(&c["User"]),
            volumes: c["Volumes"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
            stop_signal: text(&c["StopSignal"]),
        }
    }
}

/// A mount with its host side resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedMount {
    /// `bind` or `tmpfs`.
    pub kind: MountKind,
    /// Host path (bind) or unused (tmpfs).
    pub source: PathBuf,
    /// Path in the container.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// tmpfs size bound.
    pub size: Option<u64>,
}

/// How a resolved mount is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A bind mount of a host directory (volumes and binds).
    Bind,
    /// A tmpfs.
    Tmpfs,
}

/// Everything the spec is made from.
#[derive(Debug)]
pub struct SpecInput<'a> {
    /// Container id.
    pub id: &'a str,
    /// The container's settings.
    pub config: &'a ContainerConfig,
    /// The image's defaults.
    pub image: &'a ImageProcess,
    /// The resolved user.
    pub user: &'a ResolvedUser,
    /// The working directory, already checked against the root filesystem.
    pub cwd: &'a Path,
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    /// `cgroupsPath`.
    pub cgroup_path: &'a str,
    /// Resolved mounts.
    pub mounts: &'a [ResolvedMount],
    /// The node runs cgroup v2 (the device allowlist needs eBPF there, see `capabilities`).
    pub cgroup_v2: bool,
    /// The memory controller accounts swap (so swap can be capped to zero).
    pub swap_accounting: bool,
    /// Capabilities the shim itself may pass on (its bounding set); a container never
    /// gets more, even privileged.
    pub bounding: &'a HashSet<Capability>,
    /// The shim's own hard `RLIMIT_NOFILE` (`None`: unlimited): the default never exceeds it.
    pub nofile_hard: Option<u64>,
}

/// Command line: the image's entrypoint + cmd, with Docker's override rules.
pub fn process_args(
    config: &ContainerConfig,
    image: &ImageProcess,
) -> Result<Vec<String>, SpecError> {
    let (entrypoint, cmd) = match (&config.entrypoint, &config.command) {
        // A new entrypoint drops the image's cmd.
        (Some(e), c) => (e.clone(), c.clone().unwrap_or_default()),
        (None, Some(c)) => (image.entrypoint.clone(), c.clone()),
        (None, None) => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() || args[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// The working directory: the container's, else the image's, else `/`; never inside the
/// kernel filesystems mounted over the image (`/proc`, `/sys`, `/dev`).
pub fn working_dir(config: &ContainerConfig, image: &ImageProcess) -> Result<PathBuf, SpecError> {
    let raw = config
        .workdir
        .as_deref()
        .or(image.workdir.as_deref())
        .unwrap_or("/");
    let cwd = container_path("working directory", raw).map_err(SpecError::Workdir)?;
    for kernel_fs in ["/proc", "/sys", "/dev"] {
        if cwd.starts_with(kernel_fs) {
            return Err(SpecError::Workdir(format!(
                "'{raw}' is inside {kernel_fs}, which the container does not get from its image"
            )));
        }
    }
    Ok(cwd)
}

/// Environment: image's, then the container's (same key wins), plus PATH, HOSTNAME and HOME.
pub fn environment(
    config: &ContainerConfig,
    image: &ImageProcess,
    hostname: &str,
    home: Option<&str>,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: &str| {
        let key = entry.split_once('=').map_or(entry, |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(entry.to_string());
    };
    set(&format!("PATH={DEFAULT_PATH}"));
    set(&format!("HOSTNAME={hostname}"));
    set(&format!("HOME={}", home.unwrap_or("/")));
    for e in image.env.iter().chain(&config.env) {
        if e.contains('=') {
            set(e);
        }
    }
    env
}

/// Capabilities: Docker's default set with the container's additions and removals, or all
/// of them when privileged. `MKNOD` is in it on v1 and v2 alike: what a container may open
/// is the device allowlist's to say (the `devices` controller on v1, an eBPF program on v2,
/// see [`super::devices`]).
pub fn capabilities(config: &ContainerConfig) -> Result<HashSet<Capability>, SpecError> {
    let all = || -> HashSet<Capability> { all_capabilities().into_iter().collect() };
    if config.privileged {
        return Ok(all());
    }
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    for name in &config.cap_drop {
        if name.eq_ignore_ascii_case("all") {
            caps.clear();
        } else {
            caps.remove(&parse_capability(name)?);
        }
    }
    for name in &config.cap_add {
        if name.eq_ignore_ascii_case("all") {
            caps = all();
        } else {
            caps.insert(parse_capability(name)?);
        }
    }
    Ok(caps)
}

fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| SpecError::Capability(name.to_string()))
}

/// Capabilities in a kernel bit mask (e.g. `CapBnd` of `/proc/self/status`).
pub fn capabilities_from_mask(mask: u64) -> HashSet<Capability> {
    all_capabilities()
        .into_iter()
        .enumerate()
        .filter(|(_, c)| mask & (1u64 << capability_bit(*c)) != 0)
        .map(|(_, c)| c)
        .collect()
}

/// The kernel's bit number of a capability (linux/capability.h).
fn capability_bit(c: Capability) -> u32 {
    use Capability::*;
    match c {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

fn all_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        AuditControl,
        AuditRead,
        AuditWrite,
        BlockSuspend,
        Bpf,
        CheckpointRestore,
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        IpcLock,
        IpcOwner,
        Kill,
        Lease,
        LinuxImmutable,
        MacAdmin,
        MacOverride,
        Mknod,
        NetAdmin,
        NetBindService,
        NetBroadcast,
        NetRaw,
        Perfmon,
        Setfcap,
        Setgid,
        Setpcap,
        Setuid,
        SysAdmin,
        SysBoot,
        SysChroot,
        SysModule,
        SysNice,
        SysPacct,
        SysPtrace,
        SysRawio,
        SysResource,
        SysTime,
        SysTtyConfig,
        Syslog,
        WakeAlarm,
    ]
}

/// The umask a container's process starts with: Docker's and runc's, never the caller's.
pub const CONTAINER_UMASK: u32 = 0o022;

/// The container's hostname: the one asked for, else its short id (as Docker's).
pub fn hostname(cfg: &ContainerConfig, id: &str) -> String {
    cfg.hostname
        .clone()
        .unwrap_or_else(|| id.chars().take(12).collect())
}

/// Builds the spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let cfg = input.config;
    let hostname = hostname(cfg, input.id);
    let caps: HashSet<Capability> = capabilities(cfg)?
        .intersection(input.bounding)
        .copied()
        .collect();
    let cap_list: HashSet<Capability> = caps.clone();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(input.user.uid)
                .gid(input.user.gid)
                .additional_gids(input.user.additional_gids.clone())
                .umask(CONTAINER_UMASK)
                .build()?,
        )
        .args(process_args(cfg, input.image)?)
        .env(environment(
            cfg,
            input.image,
            &hostname,
            input.user.home.as_deref(),
        ))
        .cwd(input.cwd.to_path_buf())
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(cap_list.clone())
                .effective(cap_list.clone())
                .permitted(cap_list)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .rlimits(rlimits(&cfg.ulimits, input.nofile_hard))
        .no_new_privileges(!cfg.privileged)
        .build()?;

    let mut mounts = base_mounts(cfg.privileged)?;
    for m in input.mounts {
        mounts.push(user_mount(m)?);
    }

    let r = &cfg.resources;
    let mut memory = LinuxMemoryBuilder::default();
    let mut unified = std::collections::HashMap::new();
    if let Some(limit) = r.memory {
        memory = memory.limit(limit as i64);
        if input.swap_accounting {
            // No swap: the limit is what the container gets. v1 spells it memory + swap =
            // memory; on v2 libcgroups skips a computed swap of 0, so it is written directly.
            if input.cgroup_v2 {
                unified.insert("memory.swap.max".to_string(), "0".to_string());
            } else {
                memory = memory.swap(limit as i64);
            }
        }
    }
    if let Some(res) = r.memory_reservation {
        memory = memory.reservation(res as i64);
    }
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(units) = r.cpu_units {
        cpu = cpu.shares(units.max(2));
    }
    if let Some(millis) = r.cpu_limit_millis {
        cpu = cpu.period(100_000u64).quota((millis * 100) as i64);
    }
    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(cfg.privileged)
            .access("rwm")
            .build()?])
        .memory(memory.build()?)
        .cpu(cpu.build()?);
    if let Some(p) = r.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p as i64).build()?);
    }
    if !unified.is_empty() {
        resources = resources.unified(unified);
    }

    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    // The network namespace belongs to the shim (it is set up before the container
    // exists), so the container inherits it instead of getting a fresh one.
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
    ];
    // On v2 a private cgroup namespace, as Docker and containerd give: the container sees
    // its own cgroup as `/` (in /proc/self/cgroup, and at /sys/fs/cgroup with its limits
    // in memory.max, cpu.max, pids.max), which is where runtimes (JVM, Go, .NET, Node) read
    // their limits. v1 keeps the host's, as Docker's default there.
    if input.cgroup_v2 {
        namespaces.push(ns(LinuxNamespaceType::Cgroup)?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(input.cgroup_path))
        .resources(resources.build()?);
    if cfg.privileged {
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    } else {
        linux = linux
            .masked_paths(
                MASKED_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .readonly_paths(
                READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .seccomp(super::seccomp::default_profile(&caps)?);
    }

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs.to_path_buf())
                .readonly(cfg.read_only)
                .build()?,
        )
        .hostname(hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .annotations(setup_annotations(&cfg.ulimits))
        .build()?)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn base_mounts(privileged: bool) -> Result<Vec<Mount>, SpecError> {
    let ro = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro])?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", ro],
        )?,
    ])
}

fn user_mount(m: &ResolvedMount) -> Result<Mount, SpecError> {
    let target = m.target.to_string_lossy();
    match m.kind {
        MountKind::Bind => {
            let source = m.source.to_string_lossy();
            let rw = if m.read_only { "ro" } else { "rw" };
            mount(
                &target,
                "bind",
                &source,
                &["rbind", "rprivate", "nosuid", "nodev", rw],
            )
        }
        MountKind::Tmpfs => {
            let size = m.size.map(|s| format!("size={s}"));
            let mut opts = vec!["nosuid", "nodev", "mode=1777"];
            if let Some(s) = &size {
                opts.push(s);
            }
            if m.read_only {
                opts.push("ro");
            }
            mount(&target, "tmpfs", "tmpfs", &opts)
        }
    }
}

/// Open files allowed by default, soft and hard: what a process started by systemd gets
/// (systemd's `DefaultLimitNOFILE=1024:524288`), which is what Docker ≥ 25 and containerd 2
/// containers get since their units stopped raising it. The agent's own limit (the unit's
/// `LimitNOFILE`) is not passed on: a container's limits are what it asks for, or these —
/// each capped at the shim's own hard limit, which only `CAP_SYS_RESOURCE` may exceed.
pub const DEFAULT_NOFILE: (u64, u64) = (1024, 524_288);

/// Open files the container's setup needs between the moment its limits are set and the
/// workload's exec (the runtime's sync sockets, `/proc`, the root filesystem and mount points
/// opened by descriptor): the spec never sets `nofile` below this, and the init lowers it to
/// the container's own value right before the exec (see [`NOFILE_ANNOTATION`]). Measured: the
/// setup fails with 8, runs with 16.
pub const SETUP_NOFILE: u64 = 64;

/// Annotation of the spec carrying the container's own `nofile` (`SOFT:HARD`) when it is below
/// [`SETUP_NOFILE`]; the init (`workload::Workload`) applies it last, for the container's
/// process and for every exec, so `--ulimit nofile=4` means 4 to the workload, as with Docker.
pub const NOFILE_ANNOTATION: &str = "org.flotilla.rlimit.nofile";

fn setup_annotations(
    ulimits: &[super::config::Ulimit],
) -> std::collections::HashMap<String, String> {
    ulimits
        .iter()
        .filter(|u| u.name == "nofile" && u.soft.min(u.hard) < SETUP_NOFILE)
        .map(|u| {
            (
                NOFILE_ANNOTATION.to_string(),
                format!("{}:{}", u.soft, u.hard),
            )
        })
        .collect()
}

/// The container's rlimits: its `ulimits` (`nofile` not below [`SETUP_NOFILE`]), and
/// [`DEFAULT_NOFILE`] (capped at `nofile_hard`) unless it sets `nofile`.
fn rlimits(ulimits: &[super::config::Ulimit], nofile_hard: Option<u64>) -> Vec<PosixRlimit> {
    let mut out: Vec<PosixRlimit> = ulimits
        .iter()
        .filter_map(|u| {
            let typ = rlimit_type(&u.name)?;
            let floor = if typ == PosixRlimitType::RlimitNofile {
                SETUP_NOFILE
            } else {
                0
            };
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(u.soft.max(floor))
                .hard(u.hard.max(floor))
                .build()
                .ok()
        })
        .collect();
    if !out.iter().any(|r| r.typ() == PosixRlimitType::RlimitNofile) {
        let cap = nofile_hard.unwrap_or(u64::MAX);
        let (soft, hard) = (DEFAULT_NOFILE.0.min(cap), DEFAULT_NOFILE.1.min(cap));
        out.extend(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(soft)
                .hard(hard)
                .build()
                .ok(),
        );
    }
    out
}

/// The OCI rlimit type of a ulimit name (`nofile` → `RLIMIT_NOFILE`).
pub fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    format!("RLIMIT_{}", name.to_ascii_uppercase()).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::Resources;

    fn image() -> ImageProcess {
        ImageProcess::from_image_config(&serde_json::json!({
            "config": {
                "Entrypoint": ["/bin/app"],
                "Cmd": ["--serve"],
                "Env": ["PATH=/opt/bin:/bin", "MODE=prod"],
                "WorkingDir": "/srv",
                "User": "app"
            }
        }))
    }

    #[test]
    fn a_nofile_below_the_setup_floor_is_lowered_by_the_init() {
        let u = |name: &str, soft, hard| crate::container::config::Ulimit {
            name: name.into(),
            soft,
            hard,
        };
        let asked = [u("nofile", 1, 2), u("nproc", 0, 0)];
        let got: Vec<_> = rlimits(&asked, None)
            .iter()
            .map(|r| (r.typ(), r.soft(), r.hard()))
            .collect();
        assert_eq!(
            got,
            [
                (PosixRlimitType::RlimitNofile, SETUP_NOFILE, SETUP_NOFILE),
                (PosixRlimitType::RlimitNproc, 0, 0)
            ]
        );
        let a = setup_annotations(&asked);
        assert_eq!(a.get(NOFILE_ANNOTATION).map(String::as_str), Some("1:2"));
        // At or above the floor the spec says it all.
        assert!(setup_annotations(&[u("nofile", SETUP_NOFILE, 100)]).is_empty());
        let got = rlimits(&[u("nofile", 100, 200)], None);
        assert_eq!((got[0].soft(), got[0].hard()), (100, 200));
    }

    #[test]
    fn docker_override_rules_for_the_command() {
        let img = image();
        let mut cfg = ContainerConfig::default();
        assert_eq!(
            process_args(&cfg, &img).expect("args"),
            ["/bin/app", "--serve"]
        );
        cfg.command = Some(vec!["--check".into()]);
        assert_eq!(
            process_args(&cfg, &img).expect("args"),
            ["/bin/app", "--check"]
        );
        cfg.entrypoint = Some(vec!["/bin/sh".into()]);
        cfg.command = None;
        assert_eq!(process_args(&cfg, &img).expect("args"), ["/bin/sh"]);
        let empty = ImageProcess::default();
        assert!(matches!(
            process_args(&ContainerConfig::default(), &empty),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn environment_merges_by_key() {
        let img = image();
        let cfg = ContainerConfig {
            env: vec!["MODE=dev".into(), "EXTRA=1".into()],
            ..Default::default()
        };
        let env = environment(&cfg, &img, "h1", Some("/home/app"));
        assert!(env.contains(&"PATH=/opt/bin:/bin".to_string()));
        assert!(env.contains(&"MODE=dev".to_string()));
        assert!(!env.contains(&"MODE=prod".to_string()));
        assert!(env.contains(&"HOSTNAME=h1".to_string()));
        assert!(env.contains(&"HOME=/home/app".to_string()));
        assert!(env.contains(&"EXTRA=1".to_string()));
    }

    #[test]
    fn workdir_outside_kernel_filesystems() {
        let img = image();
        assert_eq!(
            working_dir(&ContainerConfig::default(), &img).expect("cwd"),
            PathBuf::from("/srv")
        );
        for bad in ["/proc/self/fd/7", "/sys/x", "rel", "/a/../b"] {
            let cfg = ContainerConfig {
                workdir: Some(bad.into()),
                ..Default::default()
            };
            assert!(working_dir(&cfg, &img).is_err(), "{bad}");
        }
    }

    #[test]
    fn capability_masks_follow_kernel_bits() {
        // CapBnd of a host whose root lacks CAP_SYS_RESOURCE (bit 24)
        let caps = capabilities_from_mask(0x0000_01ff_feff_ffff);
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&Capability::SysResource));
        assert!(caps.contains(&Capability::CheckpointRestore));
        assert_eq!(
            capabilities_from_mask(1 << 21),
            [Capability::SysAdmin].into()
        );
    }

    #[test]
    fn capability_sets() {
        let cfg = ContainerConfig::default();
        let caps = capabilities(&cfg).expect("caps");
        assert_eq!(caps.len(), 14);
        assert!(caps.contains(&Capability::Mknod));
        let cfg = ContainerConfig {
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["net_bind_service".into(), "CAP_KILL".into()],
            ..Default::default()
        };
        let caps = capabilities(&cfg).expect("caps");
        assert_eq!(caps, [Capability::NetBindService, Capability::Kill].into());
        let cfg = ContainerConfig {
            cap_add: vec!["CAP_NOPE".into()],
            ..Default::default()
        };
        assert!(matches!(capabilities(&cfg), Err(SpecError::Capability(_))));
    }

    #[test]
    fn hardened_spec_with_limits_and_mounts() {
        let img = image();
        let cfg = ContainerConfig {
            read_only: true,
            resources: Resources {
                cpu_units: Some(512),
                cpu_limit_millis: Some(250),
                memory: Some(64 << 20),
                memory_reservation: Some(32 << 20),
                pids: Some(50),
            },
            ..Default::default()
        };
        let mounts = [ResolvedMount {
            kind: MountKind::Tmpfs,
            source: PathBuf::new(),
            target: "/tmp".into(),
            read_only: false,
            size: Some(1 << 20),
        }];
        let spec = build(&SpecInput {
            id: "0123456789abcdef",
            config: &cfg,
            image: &img,
            user: &ResolvedUser::default(),
            cwd: Path::new("/srv"),
            rootfs: Path::new("/data/c/rootfs"),
            cgroup_path: "/flotilla/n/0123456789abcdef",
            mounts: &mounts,
            cgroup_v2: false,
            swap_accounting: true,
            bounding: &capabilities_from_mask(u64::MAX),
            nofile_hard: Some(20_000),
        })
        .expect("spec");
        let p = spec.process().as_ref().expect("process");
        assert_eq!(p.no_new_privileges(), Some(true));
        // Open files: systemd's default, never above what the shim itself may have.
        let nofile: Vec<_> = p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (r.typ(), r.soft(), r.hard()))
            .collect();
        assert_eq!(nofile, [(PosixRlimitType::RlimitNofile, 1024, 20_000)]);
        assert!(spec.annotations().as_ref().is_none_or(|a| a.is_empty()));
        assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux.seccomp().is_some());
        assert!(linux
            .masked_paths()
            .as_ref()
            .expect("masked")
            .contains(&"/proc/kcore".to_string()));
        let res = linux.resources().as_ref().expect("resources");
        let mem = res.memory().as_ref().expect("memory");
        assert_eq!(
            (mem.limit(), mem.reservation(), mem.swap()),
            (Some(64 << 20), Some(32 << 20), Some(64 << 20))
        );
        let cpu = res.cpu().as_ref().expect("cpu");
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(25_000), Some(100_000))
        );
        assert_eq!(res.pids().as_ref().map(|p| p.limit()), Some(50));
        let tmp = spec
            .mounts()
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .expect("tmpfs");
        assert!(tmp
            .options()
            .as_ref()
            .expect("opts")
            .contains(&"size=1048576".to_string()));
    }
}
