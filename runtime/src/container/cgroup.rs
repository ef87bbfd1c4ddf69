//! cgroups as the node has them: v1 controllers (legacy or hybrid) or the unified v2
//! hierarchy, detected with libcgroups, never configured. libcontainer applies the limits;
//! this module reads usage back and removes our parent directories once they are empty.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcgroups::common::CgroupSetup;
use serde::{Deserialize, Serialize};

use super::config::TaskCgroup;

/// Which hierarchy the node uses, with the mount points needed to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupHierarchy {
    /// v1 controllers, each at its own mount (legacy or hybrid hosts).
    V1 {
        /// Controller name (`cpuacct`, `memory`, `pids` …) to its mount point.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// The unified v2 hierarchy at `root`.
    V2 {
        /// Mount point of cgroup2.
        root: PathBuf,
    },
}

/// Usage of one container's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, bytes (`memory.current` on v2, `memory.usage_in_bytes` on v1: page cache
    /// included).
    pub memory_bytes: u64,
    /// Its working set, bytes: memory in use less the inactive file cache the kernel reclaims
    /// first (`inactive_file` of `memory.stat`; v1: `total_inactive_file`), what cAdvisor's
    /// `container_memory_working_set_bytes` and `kubectl top` report.
    #[serde(default)]
    pub memory_working_set_bytes: u64,
    /// Memory limit, bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// Processes and threads.
    pub pids: u64,
    /// Task limit (`None`: unlimited).
    pub pids_limit: Option<u64>,
    /// Times the kernel's OOM killer killed a process of the container.
    pub oom_kills: u64,
}

/// Errors reading cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Detection failed.
    #[error("detecting the cgroup hierarchy: {0}")]
    Detect(String),
    /// A cgroup file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A cgroup could not be made, or one of its files written.
    #[error("writing {path}: {source}")]
    Write {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A cgroup could not be removed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why (busy: processes or cgroups are still inside).
        source: io::Error,
    },
}

/// The CFS period a task's CPU limit is a quota of, microseconds (the ECS agent's default).
pub const TASK_CPU_PERIOD_US: u64 = 100_000;

/// The kernel's smallest CFS quota, microseconds (`cpu.max`, `cpu.cfs_quota_us`).
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// The CFS quota per [`TASK_CPU_PERIOD_US`] of a CPU limit in CPU units (1024 = one core), as
/// the ECS agent computes it (`vCPU × period`); at least the kernel's 1 ms.
pub fn cpu_quota_us(units: u64) -> u64 {
    (units.saturating_mul(TASK_CPU_PERIOD_US) / 1024).max(MIN_CPU_QUOTA_US)
}

/// `cpu.weight` (1–10000) for cgroup v1 `cpu.shares` (2–262144), the conversion runc, crun
/// and libcgroups use, so a task's weight compares with its containers' as on v1.
pub fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
    "misc",
];

impl CgroupHierarchy {
    /// Detects the node's hierarchy the way libcontainer will use it (hybrid → v1).
    pub fn detect() -> Result<Self, CgroupError> {
        let setup = libcgroups::common::get_cgroup_setup()
            .map_err(|e| CgroupError::Detect(e.to_string()))?;
        match setup {
            CgroupSetup::Unified => Ok(Self::V2 {
                root: libcgroups::v2::util::get_unified_mount_point()
                    .map_err(|e| CgroupError::Detect(e.to_string()))?,
            }),
            CgroupSetup::Legacy | CgroupSetup::Hybrid => {
                let mountinfo =
                    fs::read_to_string("/proc/self/mountinfo").map_err(|e| CgroupError::Read {
                        path: "/proc/self/mountinfo".into(),
                        source: e,
                    })?;
                Ok(Self::V1 {
                    mounts: v1_mounts(&mountinfo),
                })
            }
        }
    }

    /// True for the unified hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self, Self::V2 { .. })
    }

    /// Reads the usage of the cgroup at `path` (relative to the hierarchy roots, as in the
    /// OCI spec's `cgroupsPath`).
    pub fn usage(&self, path: &str) -> Result<CgroupUsage, CgroupError> {
        let rel = path.trim_start_matches('/');
        match self {
            Self::V2 { root } => {
                let dir = root.join(rel);
                let cpu = keyed(&read(&dir.join("cpu.stat"))?, "usage_usec").unwrap_or(0);
                let memory = number(&read(&dir.join("memory.current"))?).unwrap_or(0);
                // Absent where the memory controller is not enabled: no working set then.
                let inactive = read(&dir.join("memory.stat"))
                    .ok()
                    .and_then(|t| keyed(&t, "inactive_file"))
                    .unwrap_or(0);
                Ok(CgroupUsage {
                    cpu_ns: cpu.saturating_mul(1000),
                    memory_bytes: memory,
                    memory_working_set_bytes: memory.saturating_sub(inactive),
                    memory_limit: number(&read(&dir.join("memory.max"))?),
                    pids: number(&read(&dir.join("pids.current"))?).unwrap_or(0),
                    pids_limit: number(&read(&dir.join("pids.max"))?),
                    oom_kills: keyed(&read(&dir.join("memory.events"))?, "oom_kill").unwrap_or(0),
                })
            }
            Self::V1 { mounts } => {
                let at = |ctl: &str, file: &str| -> Result<String, CgroupError> {
                    let Some(m) = mounts.get(ctl) else {
                        return Ok(String::new());
                    };
                    read(&m.join(rel).join(file))
                };
                // The kernel reports "no limit" as a huge page-aligned number on v1.
                let limit =
                    number(&at("memory", "memory.limit_in_bytes")?).filter(|&l| l < (1u64 << 62));
                let memory = number(&at("memory", "memory.usage_in_bytes")?).unwrap_or(0);
                let inactive = keyed(&at("memory", "memory.stat")?, "total_inactive_file");
                Ok(CgroupUsage {
                    cpu_ns: number(&at("cpuacct", "cpuacct.usage")?).unwrap_or(0),
                    memory_bytes: memory,
                    memory_working_set_bytes: memory.saturating_sub(inactive.unwrap_or(0)),
                    memory_limit: limit,
                    pids: number(&at("pids", "pids.current")?).unwrap_or(0),
                    pids_limit: number(&at("pids", "pids.max")?),
                    oom_kills: keyed(&at("memory", "memory.oom_control")?, "oom_kill").unwrap_or(0),
                })
            }
        }
    }

    /// Removes the directories of `parent` (e.g. `flotilla/node-1`) from the deepest up,
    /// in every hierarchy, where they are empty. Busy or missing directories are left alone.
    pub fn remove_empty_parents(&self, parent: &str) {
        let roots = self.roots();
        let parts: Vec<&str> = parent.split('/').filter(|p| !p.is_empty()).collect();
        for root in roots {
            for depth in (1..=parts.len()).rev() {
                let dir = parts[..depth]
                    .iter()
                    .fold(root.to_path_buf(), |p, c| p.join(c));
                // rmdir on a cgroup fails with EBUSY/ENOTEMPTY while children or tasks exist;
                // a level already gone (removed by libcontainer) is no reason to stop.
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// Makes the directories above the container cgroup at `path` (relative to the hierarchy
    /// roots), on v2, where libcgroups makes each one it finds missing with `mkdir` and fails
    /// on `EEXIST`: two containers started at once under a parent that is not there yet (the
    /// first ones under it, or after the last one's removal took it) would race for it, and
    /// one of them fail. Made here, where another's `mkdir` first is no error; libcgroups
    /// still enables the controllers down to the container. v1's controllers make theirs with
    /// `create_dir_all`, which takes such a race.
    pub fn ensure_parents(&self, path: &str) -> Result<(), CgroupError> {
        let Self::V2 { root } = self else {
            return Ok(());
        };
        let rel = path.trim_matches('/');
        let Some((parents, _own)) = rel.rsplit_once('/') else {
            return Ok(());
        };
        let dir = root.join(parents);
        fs::create_dir_all(&dir).map_err(|e| CgroupError::Write {
            path: dir,
            source: e,
        })
    }

    /// Makes the task cgroup at `path` (relative to the hierarchy roots, e.g.
    /// `flotilla/node-1/t-1`) if it is not there and writes its limits — again each time, so a
    /// cgroup lost to a reboot or made by someone else ends up as asked. On v2 every
    /// controller the root offers is enabled down to it and in it (its children are the
    /// task's containers), as libcontainer does for a container; on v1 it is made in the
    /// `cpu` and `memory` hierarchies, where its limits live (libcontainer makes the rest
    /// with the containers' cgroups).
    pub fn ensure_task(&self, path: &str, task: &TaskCgroup) -> Result<(), CgroupError> {
        let rel = path.trim_matches('/');
        let write = |file: PathBuf, value: String| {
            fs::write(&file, value).map_err(|e| CgroupError::Write {
                path: file,
                source: e,
            })
        };
        let mkdir = |dir: &Path| match fs::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(CgroupError::Write {
                path: dir.to_path_buf(),
                source: e,
            }),
        };
        match self {
            Self::V2 { root } => {
                let controllers = read(&root.join("cgroup.controllers"))?;
                let enable = |dir: &Path| {
                    for c in controllers.split_whitespace() {
                        // One at a time: a controller the level cannot take (a threaded
                        // subtree, say) must not keep the others off; a limit that needs it
                        // fails below with its file named.
                        let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
                    }
                };
                enable(root);
                let mut dir = root.clone();
                for part in rel.split('/').filter(|p| !p.is_empty()) {
                    dir.push(part);
                    mkdir(&dir)?;
                    enable(&dir);
                }
                write(
                    dir.join("memory.max"),
                    task.memory.map_or("max".into(), |m| m.to_string()),
                )?;
                // Absent where the kernel does not account swap: then there is none to cap.
                if dir.join("memory.swap.max").exists() {
                    let swap = if task.memory.is_some() { "0" } else { "max" };
                    write(dir.join("memory.swap.max"), swap.into())?;
                }
                let quota = task
                    .cpu_limit_units
                    .map_or("max".into(), |u| cpu_quota_us(u).to_string());
                write(dir.join("cpu.max"), format!("{quota} {TASK_CPU_PERIOD_US}"))?;
                write(
                    dir.join("cpu.weight"),
                    task.cpu_units.map_or(100, cpu_weight).to_string(),
                )
            }
            Self::V1 { mounts } => {
                let at = |ctl: &str| -> Result<PathBuf, CgroupError> {
                    let mount = mounts.get(ctl).ok_or_else(|| CgroupError::Write {
                        path: PathBuf::from("/sys/fs/cgroup").join(ctl),
                        source: io::Error::other(format!(
                            "the {ctl} controller is not mounted; task limits need it"
                        )),
                    })?;
                    let dir = mount.join(rel);
                    fs::create_dir_all(&dir).map_err(|e| CgroupError::Write {
                        path: dir.clone(),
                        source: e,
                    })?;
                    Ok(dir)
                };
                let mem = at("memory")?;
                let limit = mem.join("memory.limit_in_bytes");
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                match task.memory {
                    // memory + swap may never be below memory: the limit first, then the sum.
                    Some(m) => {
                        write(limit, m.to_string())?;
                        if memsw.exists() {
                            write(memsw, m.to_string())?;
                        }
                    }
                    None => {
                        if memsw.exists() {
                            write(memsw, "-1".into())?;
                        }
                        write(limit, "-1".into())?;
                    }
                }
                let cpu = at("cpu")?;
                write(
                    cpu.join("cpu.cfs_period_us"),
                    TASK_CPU_PERIOD_US.to_string(),
                )?;
                write(
                    cpu.join("cpu.cfs_quota_us"),
                    task.cpu_limit_units
                        .map_or("-1".into(), |u| cpu_quota_us(u).to_string()),
                )?;
                write(
                    cpu.join("cpu.shares"),
                    task.cpu_units.map_or(1024, |u| u.max(2)).to_string(),
                )
            }
        }
    }

    /// Removes the cgroup at `path` (relative to the hierarchy roots) in every hierarchy;
    /// one already gone is fine. Fails while processes or cgroups are inside.
    pub fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let rel = path.trim_matches('/');
        let mut first_error = None;
        for root in self.roots() {
            let dir = root.join(rel);
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(CgroupError::Remove {
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The names of the cgroups right under `path` (relative to the hierarchy roots), in any
    /// hierarchy.
    pub fn children(&self, path: &str) -> Vec<String> {
        let rel = path.trim_matches('/');
        let mut out: Vec<String> = self
            .roots()
            .into_iter()
            .flat_map(|root| fs::read_dir(root.join(rel)).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The root of each hierarchy (each v1 mount once).
    fn roots(&self) -> Vec<&PathBuf> {
        match self {
            Self::V2 { root } => vec![root],
            Self::V1 { mounts } => {
                let mut r: Vec<&PathBuf> = mounts.values().collect();
                r.sort();
                r.dedup();
                r
            }
        }
    }

    /// Moves this process into the cgroup it is already in. Useless in itself, but it makes
    /// the kernel pay now, on a background thread, the RCU grace period that the first cgroup
    /// migration of a burst waits for (`cgroup_threadgroup_rwsem`, 5–20 ms on small boards);
    /// the container's own migration moments later then finds the fast path. Best effort.
    pub fn prime_migration(&self) {
        let Ok(own) = fs::read_to_string("/proc/self/cgroup") else {
            return;
        };
        let target = match self {
            Self::V2 { root } => own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| root.join(p.trim_start_matches('/'))),
            Self::V1 { mounts } => own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
                let mount = mounts.get(ctl)?;
                Some(mount.join(path.trim_start_matches('/')))
            }),
        };
        if let Some(dir) = target {
            let _ = fs::write(dir.join("cgroup.procs"), std::process::id().to_string());
        }
    }
}

/// v1 controller mounts from `/proc/self/mountinfo` (joined mounts like `cpu,cpuacct`
/// serve each of their controllers).
fn v1_mounts(mountinfo: &str) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let super_opts = r.nth(1).unwrap_or_default();
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        for opt in super_opts.split(',') {
            if V1_CONTROLLERS.contains(&opt) {
                out.entry(opt.to_string())
                    .or_insert_with(|| PathBuf::from(mount_point));
            }
        }
    }
    out
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| CgroupError::Read {
        path: path.to_path_buf(),
        source: e,
    })
}

fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Value of `key` in a `key value` per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_mounts_from_mountinfo() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd";
        let m = v1_mounts(info);
        assert_eq!(m["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn v2_usage_from_a_v2_layout() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("flotilla/n1/c1");
        fs::create_dir_all(&dir).expect("mkdir");
        for (f, v) in [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
            ("memory.current", "4096\n"),
            (
                "memory.stat",
                "anon 3072\nfile 1024\nactive_file 0\ninactive_file 1024\n",
            ),
            ("memory.max", "max\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
        ] {
            fs::write(dir.join(f), v).expect("write");
        }
        let h = CgroupHierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        let u = h.usage("/flotilla/n1/c1").expect("usage");
        assert_eq!(
            u,
            CgroupUsage {
                cpu_ns: 1_500_000,
                memory_bytes: 4096,
                memory_working_set_bytes: 3072,
                memory_limit: None,
                pids: 3,
                pids_limit: Some(64),
                oom_kills: 1,
            }
        );
        fs::remove_dir_all(&dir).expect("rm");
        h.remove_empty_parents("flotilla/n1");
        assert!(!root.path().join("flotilla").exists());
    }

    #[test]
    fn containers_started_at_once_under_a_missing_v2_parent_all_get_it() {
        let root = tempfile::tempdir().expect("tmp");
        let h = CgroupHierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        // Eight starts at once, the parent missing: none fails on another's mkdir.
        std::thread::scope(|s| {
            let starts: Vec<_> = (0..8)
                .map(|i| {
                    let h = &h;
                    s.spawn(move || h.ensure_parents(&format!("/flotilla-test/n1/c{i}")))
                })
                .collect();
            for start in starts {
                start.join().expect("thread").expect("parents made");
            }
        });
        assert!(root.path().join("flotilla-test/n1").is_dir());
        // The container's own is libcgroups' to make.
        assert!(!root.path().join("flotilla-test/n1/c0").exists());
        h.ensure_parents("c-at-the-root")
            .expect("no parent to make");
        let v1 = CgroupHierarchy::V1 {
            mounts: Default::default(),
        };
        v1.ensure_parents("/a/b/c").expect("nothing on v1");
    }

    #[test]
    fn a_tasks_limits_land_in_its_v2_cgroup_with_controllers_enabled_down_to_it() {
        let root = tempfile::tempdir().expect("tmp");
        fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        let h = CgroupHierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        let dir = root.path().join("flotilla/n1/t-1");
        fs::create_dir_all(&dir).expect("mkdir");
        // Only where the kernel accounts swap.
        fs::write(dir.join("memory.swap.max"), "max").expect("write");
        let task = TaskCgroup {
            task: "t-1".into(),
            cpu_limit_units: Some(512),
            cpu_units: Some(512),
            memory: Some(64 << 20),
        };
        h.ensure_task("flotilla/n1/t-1", &task).expect("ensure");
        let file = |f: &str| fs::read_to_string(dir.join(f)).expect(f);
        assert_eq!(file("memory.max"), (64u64 << 20).to_string());
        assert_eq!(file("memory.swap.max"), "0");
        // Half a core: 50 ms of every 100 ms.
        assert_eq!(file("cpu.max"), "50000 100000");
        assert_eq!(file("cpu.weight"), cpu_weight(512).to_string());
        // (A real cgroup.subtree_control takes one change per write; a file keeps the last.)
        for level in ["", "flotilla", "flotilla/n1", "flotilla/n1/t-1"] {
            let control = root.path().join(level).join("cgroup.subtree_control");
            assert_eq!(fs::read_to_string(&control).expect("control"), "+pids");
        }
        // Again, without limits: they are lifted.
        let none = TaskCgroup {
            task: "t-1".into(),
            ..Default::default()
        };
        h.ensure_task("flotilla/n1/t-1", &none)
            .expect("ensure again");
        assert_eq!(file("memory.max"), "max");
        assert_eq!(file("memory.swap.max"), "max");
        assert_eq!(file("cpu.max"), "max 100000");
        assert_eq!(file("cpu.weight"), "100");
        assert_eq!(h.children("flotilla/n1"), ["t-1"]);
        h.remove("flotilla/n1/t-1")
            .expect_err("files inside: not a cgroup's rmdir");
    }

    #[test]
    fn a_tasks_limits_land_in_its_v1_cpu_and_memory_cgroups() {
        let root = tempfile::tempdir().expect("tmp");
        let mount = |c: &str| root.path().join(c);
        let h = CgroupHierarchy::V1 {
            mounts: ["cpu", "cpuacct", "memory", "pids"]
                .iter()
                .map(|c| (c.to_string(), mount(c)))
                .collect(),
        };
        let mem = mount("memory").join("flotilla/n1/t-1");
        fs::create_dir_all(&mem).expect("mkdir");
        fs::write(mem.join("memory.memsw.limit_in_bytes"), "").expect("write");
        let task = TaskCgroup {
            task: "t-1".into(),
            cpu_limit_units: Some(2048),
            cpu_units: Some(2048),
            memory: Some(64 << 20),
        };
        h.ensure_task("flotilla/n1/t-1", &task).expect("ensure");
        let read = |p: PathBuf| fs::read_to_string(&p).expect("read");
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        let cpu = mount("cpu").join("flotilla/n1/t-1");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "200000");
        assert_eq!(read(cpu.join("cpu.shares")), "2048");
        // pids and cpuacct are libcontainer's to make, with the containers.
        assert!(!mount("pids").join("flotilla").exists());
        assert_eq!(h.children("flotilla/n1"), ["t-1"]);
    }

    #[test]
    fn cpu_units_become_a_quota_and_a_weight_as_ecs_and_runc_map_them() {
        assert_eq!(cpu_quota_us(1024), 100_000);
        assert_eq!(cpu_quota_us(256), 25_000);
        assert_eq!(cpu_quota_us(4096), 400_000);
        // Never below the kernel's 1 ms.
        assert_eq!(cpu_quota_us(1), 1_000);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(u64::MAX), 10_000);
    }

    #[test]
    fn parents_with_children_stay() {
        let root = tempfile::tempdir().expect("tmp");
        fs::create_dir_all(root.path().join("flotilla/n1/other")).expect("mkdir");
        let h = CgroupHierarchy::V2 {
            root: root.path().to_path_buf(),
        };
        h.remove_empty_parents("flotilla/n1");
        assert!(root.path().join("flotilla/n1/other").exists());
    }
}
