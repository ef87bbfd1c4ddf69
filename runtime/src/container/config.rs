//! What a caller asks for when creating a container, and its validation.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::logs::LogLimits;

/// Settings of a container; anything left `None` comes from the image or a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// Unique name (optional; the id always works).
    pub name: Option<String>,
    /// Image reference in the node's store.
    pub image: String,
    /// Replaces the image's entrypoint (and then its cmd as well, as Docker does).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` entries, overriding the image's.
    pub env: Vec<String>,
    /// Working directory (absolute), overriding the image's.
    pub workdir: Option<String>,
    /// `user[:group]` by name or number, overriding the image's.
    pub user: Option<String>,
    /// Hostname (default: the short id).
    pub hostname: Option<String>,
    /// cgroup limits.
    pub resources: Resources,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Network namespace.
    pub network: NetworkMode,
    /// A host file mounted read-only at `/etc/resolv.conf` (default: a copy of the node's,
    /// without its loopback name servers outside `host`, as Docker gives it).
    pub resolv_conf: Option<PathBuf>,
    /// The container's own addresses, named by its hostname in its `/etc/hosts` (none: its
    /// name is on `127.0.1.1`; see `network::names`).
    pub addresses: Vec<std::net::IpAddr>,
    /// Capabilities added to the default set (`ALL` for every one).
    pub cap_add: Vec<String>,
    /// Capabilities removed from the default set (`ALL` for every one).
    pub cap_drop: Vec<String>,
    /// All capabilities, no seccomp, no masked paths, every device: only when asked.
    pub privileged: bool,
    /// Volumes, bind mounts and tmpfs.
    pub mounts: Vec<MountRequest>,
    /// Log size bounds.
    pub log: LogLimits,
    /// Resource limits of the container's processes (`nofile`, `nproc` …); `nofile` defaults
    /// to [`super::spec::DEFAULT_NOFILE`], the others are inherited from the agent.
    pub ulimits: Vec<Ulimit>,
    /// Run an init as the container's PID 1 that reaps orphaned processes and passes signals
    /// on to the command (Docker's `--init`, ECS `linuxParameters.initProcessEnabled`,
    /// Compose `init: true`); see [`super::workload`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    /// The cgroup of the task the container belongs to, shared with the task's other
    /// containers and limited as a whole; the container's own cgroup is nested in it (none:
    /// the container's cgroup sits right under the node's cgroup parent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cgroup: Option<TaskCgroup>,
    /// Names of what the container gets from its secrets at each start — environment
    /// variables and files in `/run/secrets` —, never their values: those are handed over at
    /// each start ([`super::secrets::SecretMaterial`]) and held only in memory. A start is
    /// given only secrets named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Paths in the container of the config files it gets at each start (Docker Swarm's and
    /// Compose's `configs`), never their content: that is handed over at each start
    /// ([`super::secrets::SecretMaterial::configs`]), and each file is mounted read-only at
    /// its path. Each path is absolute and normalized, not `/`, neither at, under nor above
    /// one of [`super::secrets::RESERVED_TARGETS`] or one of `mounts`' targets, listed once
    /// and never under another's (see [`super::secrets::ConfigFile::target`]). A start is
    /// given only configs listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<String>,
}

/// A task's cgroup, `<cgroup parent>/<task>`: its containers' cgroups are made inside it, so
/// its limits hold for all of them together — what ECS's task-level `cpu` and `memory` are on
/// Linux ("the hard limit of CPU units / memory to present for the task", RegisterTaskDefinition).
/// Made (or its limits written again) before each of its containers starts; removed with the
/// last container that names it (see `ContainerStore::remove`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskCgroup {
    /// The task's id, the cgroup's name: `[A-Za-z0-9_.-]`, at most 64 characters, never a
    /// container id.
    pub task: String,
    /// Hard CPU limit in CPU units (1024 = one core): a CFS quota of `units / 1024` of a
    /// 100 ms period (`cpu.max` on v2, `cpu.cfs_quota_us` on v1), as the ECS agent sets it.
    pub cpu_limit_units: Option<u64>,
    /// Relative CPU weight of the whole task against other tasks, in CPU units (`cpu.shares`
    /// on v1; on v2 `cpu.weight`, converted as runc and libcgroups convert shares).
    pub cpu_units: Option<u64>,
    /// Hard memory limit of all its containers together, bytes, without swap beyond it
    /// (`memory.max` and `memory.swap.max` 0 on v2; `memory.limit_in_bytes` and
    /// `memory.memsw.limit_in_bytes` on v1, where the kernel accounts swap).
    pub memory: Option<u64>,
}

/// One POSIX resource limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// `nofile`, `nproc`, `core` … (`RLIMIT_` + the name in capitals).
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit (raising it above the agent's needs CAP_SYS_RESOURCE).
    pub hard: u64,
}

/// cgroup limits of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Relative CPU weight in CPU units (1024 = one core's worth), as cgroup v1 shares.
    pub cpu_units: Option<u64>,
    /// Hard CPU limit in thousandths of a core (500 = half a core).
    pub cpu_limit_millis: Option<u64>,
    /// Hard memory limit, bytes.
    pub memory: Option<u64>,
    /// Memory reservation (soft limit), bytes.
    pub memory_reservation: Option<u64>,
    /// Maximum processes and threads.
    pub pids: Option<u64>,
}

/// The network a container sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own namespace with only `lo` (up).
    #[default]
    None,
    /// The node's namespace.
    Host,
    /// An existing namespace, mounted at this path (a task's, shared by its containers).
    Join(PathBuf),
}

/// A mount asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountRequest {
    /// A named local volume.
    Volume {
        /// Volume name.
        name: String,
        /// Path in the container.
        target: String,
        /// Read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// A host path below an allowed root.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path in the container.
        target: String,
        /// Read-only.
        #[serde(default)]
        read_only: bool,
    },
    /// An in-memory filesystem.
    Tmpfs {
        /// Path in the container.
        target: String,
        /// Size bound in bytes (default: the kernel's, half of RAM).
        #[serde(default)]
        size: Option<u64>,
    },
}

impl MountRequest {
    /// Path in the container.
    pub fn target(&self) -> &str {
        match self {
            Self::Volume { target, .. }
            | Self::Bind { target, .. }
            | Self::Tmpfs { target, .. } => target,
        }
    }

    /// Parses `-v` syntax: `NAME:/path[:ro|rw]` (volume) or `/host:/path[:ro|rw]` (bind).
    pub fn parse_volume(spec: &str) -> Result<Self, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [s, t] => (*s, *t, false),
            [s, t, "ro"] => (*s, *t, true),
            [s, t, "rw"] => (*s, *t, false),
            [_, _, o] => return Err(format!("'{spec}': unknown option '{o}' (use ro or rw)")),
            _ => return Err(format!("'{spec}': expected SOURCE:TARGET[:ro|rw]")),
        };
        if source.starts_with('/') {
            Ok(Self::Bind {
                source: PathBuf::from(source),
                target: target.to_string(),
                read_only,
            })
        } else {
            Ok(Self::Volume {
                name: source.to_string(),
                target: target.to_string(),
                read_only,
            })
        }
    }

    /// Parses `--tmpfs` syntax: `/path[:size=64m]`.
    pub fn parse_tmpfs(spec: &str) -> Result<Self, String> {
        let (target, opts) = spec.split_once(':').unwrap_or((spec, ""));
        let mut size = None;
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", v)) => {
                    size = Some(parse_size(v).map_err(|e| format!("'{spec}': {e}"))?)
                }
                _ => {
                    return Err(format!(
                        "'{spec}': unknown tmpfs option '{opt}' (only size=)"
                    ))
                }
            }
        }
        Ok(Self::Tmpfs {
            target: target.to_string(),
            size,
        })
    }
}

/// Parses a byte size: `512`, `64k`, `64M`, `1.5g` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.to_ascii_lowercase().trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("invalid size '{text}' (e.g. 512k, 64M, 1G)")),
    };
    // Digits with at most one point, as Docker's sizes: no sign (`+64M`), exponent or space.
    let plain = num.bytes().any(|b| b.is_ascii_digit())
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && num.bytes().filter(|&b| b == b'.').count() <= 1;
    if !plain {
        return Err(format!(
            "invalid size '{text}': digits and a unit (e.g. 512k, 64M, 1.5G; no sign)"
        ));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size '{text}' (e.g. 512k, 64M, 1G)"))?;
    if !n.is_finite() || n < 0.0 || n * mult as f64 > u64::MAX as f64 / 2.0 {
        return Err(format!("invalid size '{text}'"));
    }
    Ok((n * mult as f64) as u64)
}

/// Container and volume names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 characters, so
/// they can name files and never form a path.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name '{name}': use letters, digits, '_', '.', '-', starting with a letter or digit, at most 64 characters"
        ))
    }
}

/// A task cgroup's name (see [`TaskCgroup::task`]): `[A-Za-z0-9_.-]`, at most 64 characters,
/// not `.` or `..`, never a container id (those name containers' own cgroups beside it).
pub fn validate_task_cgroup_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && !super::is_id(name)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' cannot name a task's cgroup: use letters, digits, '_', '.', '-', at most \
             64 characters, not a container id"
        ))
    }
}

/// A path inside the container: absolute, no `..`, normalized (`/a//b/` → `/a/b`).
pub fn container_path(field: &str, path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("{field} '{path}' must be an absolute path"));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{field} '{path}' must not contain '..'"))
            }
        }
    }
    Ok(out)
}

impl ContainerConfig {
    /// Checks everything that does not need the node (names, paths, env, limits) and
    /// reports every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.image.trim().is_empty() {
            errs.push("image: required".to_string());
        }
        if let Some(n) = &self.name {
            if let Err(e) = validate_name("container", n) {
                errs.push(format!("name: {e}"));
            }
        }
        for (i, e) in self.env.iter().enumerate() {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !k.contains('\0') => {}
                _ => errs.push(format!("env[{i}]: '{e}' is not KEY=VALUE")),
            }
        }
        errs.extend(super::secrets::name_problems(&self.secrets));
        errs.extend(super::secrets::config_target_problems(&self.configs));
        if let NetworkMode::Join(p) = &self.network {
            if !p.is_absolute() {
                errs.push(format!(
                    "network: '{}' is not an absolute path",
                    p.display()
                ));
            }
        }
        if let Some(p) = &self.resolv_conf {
            if !p.is_absolute() {
                errs.push(format!(
                    "resolv_conf: '{}' is not an absolute path",
                    p.display()
                ));
            }
        }
        if let Some(w) = &self.workdir {
            if let Err(e) = container_path("workdir", w) {
                errs.push(e);
            }
        }
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                errs.push(format!("hostname '{h}' is not a valid host name"));
            }
        }
        let r = &self.resources;
        if r.cpu_units == Some(0) {
            errs.push("resources.cpu_units: must be at least 2".into());
        }
        if r.cpu_limit_millis == Some(0) {
            errs.push("resources.cpu_limit: must be above 0".into());
        }
        if matches!(r.memory, Some(m) if m < 6 * 1024 * 1024) {
            errs.push("resources.memory: at least 6 MiB is needed to start a container".into());
        }
        if let (Some(m), Some(res)) = (r.memory, r.memory_reservation) {
            if res > m {
                errs.push(format!(
                    "resources.memory_reservation ({res}) exceeds resources.memory ({m})"
                ));
            }
        }
        if r.pids == Some(0) {
            errs.push("resources.pids: must be at least 1".into());
        }
        if let Some(t) = &self.task_cgroup {
            if let Err(e) = validate_task_cgroup_name(&t.task) {
                errs.push(format!("task_cgroup.task: {e}"));
            }
            if t.cpu_limit_units == Some(0) {
                errs.push("task_cgroup.cpu_limit_units: must be at least 1".into());
            }
            if t.cpu_units == Some(0) {
                errs.push("task_cgroup.cpu_units: must be at least 2".into());
            }
            if matches!(t.memory, Some(m) if m < 6 * 1024 * 1024) {
                errs.push(
                    "task_cgroup.memory: at least 6 MiB is needed to start a container".into(),
                );
            }
        }
        for (i, u) in self.ulimits.iter().enumerate() {
            if super::spec::rlimit_type(&u.name).is_none() {
                errs.push(format!("ulimits[{i}].name: unknown limit '{}'", u.name));
            }
            if u.soft > u.hard {
                errs.push(format!(
                    "ulimits[{i}]: soft limit {} exceeds hard limit {}",
                    u.soft, u.hard
                ));
            }
            if self.ulimits[..i].iter().any(|o| o.name == u.name) {
                errs.push(format!("ulimits[{i}].name: '{}' is set twice", u.name));
            }
        }
        let mut targets = Vec::new();
        for (i, m) in self.mounts.iter().enumerate() {
            match container_path(&format!("mounts[{i}].target"), m.target()) {
                Ok(t) if t == Path::new("/") => {
                    errs.push(format!("mounts[{i}].target: cannot mount over '/'"))
                }
                Ok(t) => {
                    if targets.contains(&t) {
                        errs.push(format!(
                            "mounts[{i}].target: '{}' is mounted twice",
                            t.display()
                        ));
                    }
                    targets.push(t);
                }
                Err(e) => errs.push(e),
            }
            match m {
                MountRequest::Volume { name, .. } => {
                    if let Err(e) = validate_name("volume", name) {
                        errs.push(format!("mounts[{i}]: {e}"));
                    }
                }
                MountRequest::Bind { source, .. } => {
                    if !source.is_absolute() {
                        errs.push(format!(
                            "mounts[{i}].source '{}' must be an absolute host path",
                            source.display()
                        ));
                    }
                }
                MountRequest::Tmpfs { .. } => {}
            }
        }
        for (i, c) in self.configs.iter().enumerate() {
            let config = Path::new(c);
            let clash = self.mounts.iter().enumerate().find_map(|(j, m)| {
                container_path("", m.target())
                    .ok()
                    .filter(|t| config.starts_with(t) || t.starts_with(config))
                    .map(|t| (j, t))
            });
            if let Some((j, t)) = clash {
                errs.push(format!(
                    "configs[{i}]: '{}' clashes with the mount at '{}' (mounts[{j}])",
                    c.escape_debug(),
                    t.display()
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_form_paths() {
        for bad in ["", "..", ".x", "a/b", "a b", "-x", &"x".repeat(65), "a\0"] {
            assert!(validate_name("volume", bad).is_err(), "{bad:?}");
        }
        for good in ["data", "db-1", "a.b_c", "9"] {
            assert!(validate_name("volume", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn container_paths_are_normalized_and_confined() {
        assert_eq!(
            container_path("t", "/a//b/./c/").expect("ok"),
            PathBuf::from("/a/b/c")
        );
        assert!(container_path("t", "a").is_err());
        assert!(container_path("t", "/a/../../etc").is_err());
    }

    #[test]
    fn volume_and_tmpfs_flags() {
        assert_eq!(
            MountRequest::parse_volume("data:/var/lib/x:ro").expect("ok"),
            MountRequest::Volume {
                name: "data".into(),
                target: "/var/lib/x".into(),
                read_only: true
            }
        );
        assert!(matches!(
            MountRequest::parse_volume("/srv:/srv").expect("ok"),
            MountRequest::Bind { .. }
        ));
        assert!(MountRequest::parse_volume("a:/b:rx").is_err());
        assert!(MountRequest::parse_volume("a").is_err());
        assert_eq!(
            MountRequest::parse_tmpfs("/tmp:size=64m").expect("ok"),
            MountRequest::Tmpfs {
                target: "/tmp".into(),
                size: Some(64 << 20)
            }
        );
        assert!(MountRequest::parse_tmpfs("/tmp:mode=777").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        for bad in ["+64M", "1e3", "0x10", "1.2.3M", ".M", "inf", "NaN"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let cfg = ContainerConfig {
            name: Some("../x".into()),
            image: "busybox".into(),
            env: vec!["NOVALUE".into()],
            workdir: Some("rel".into()),
            resources: Resources {
                memory: Some(1024),
                ..Default::default()
            },
            mounts: vec![
                MountRequest::Volume {
                    name: "a/b".into(),
                    target: "/data/../x".into(),
                    read_only: false,
                },
                MountRequest::Tmpfs {
                    target: "/data/".into(),
                    size: None,
                },
            ],
            secrets: vec!["TOKEN".into(), "A=B".into()],
            configs: vec![
                "/etc/app.conf".into(),
                "/proc/x".into(),
                "/data/keep".into(),
            ],
            ..Default::default()
        };
        let errs = cfg.validate().expect_err("invalid");
        let all = errs.join("\n");
        for field in [
            "name:",
            "env[0]",
            "workdir",
            "resources.memory",
            "mounts[0].target",
            "mounts[0]: invalid volume",
            "secrets[1]: name 'A=B'",
            "configs[1]: target '/proc/x' is at or under /proc",
            "configs[2]: '/data/keep' clashes with the mount at '/data' (mounts[1])",
        ] {
            assert!(all.contains(field), "{field} missing in:\n{all}");
        }
    }

    #[test]
    fn a_task_cgroup_is_one_level_below_the_parent_and_never_a_containers() {
        let with = |task: &str, memory: Option<u64>| ContainerConfig {
            image: "busybox".into(),
            task_cgroup: Some(TaskCgroup {
                task: task.into(),
                memory,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(with("t-0a1b", Some(64 << 20)).validate().is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "0123456789abcdef0123456789abcdef",
            "t 1",
        ] {
            let errs = with(bad, None).validate().expect_err(bad);
            assert!(errs[0].starts_with("task_cgroup.task:"), "{bad}: {errs:?}");
        }
        let errs = with("t-1", Some(1 << 20)).validate().expect_err("1 MiB");
        assert_eq!(
            errs,
            ["task_cgroup.memory: at least 6 MiB is needed to start a container"]
        );
    }
}
