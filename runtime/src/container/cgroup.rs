//! cgroups as the node has them: v1 controllers (legacy or hybrid) or the unified v2
//! hierarchy, detected with libcgroups, never configured. libcontainer applies the limits;
//! this module reads usage back and removes our parent directories once they are empty.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcgroups::common::CgroupSetup;
use serde::{Deserialize, Serialize};

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
    /// Memory in use, bytes.
    pub memory_bytes: u64,
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
                Ok(CgroupUsage {
                    cpu_ns: cpu.saturating_mul(1000),
                    memory_bytes: number(&read(&dir.join("memory.current"))?).unwrap_or(0),
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
                Ok(CgroupUsage {
                    cpu_ns: number(&at("cpuacct", "cpuacct.usage")?).unwrap_or(0),
                    memory_bytes: number(&at("memory", "memory.usage_in_bytes")?).unwrap_or(0),
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
        let roots: Vec<&PathBuf> = match self {
            Self::V2 { root } => vec![root],
            Self::V1 { mounts } => {
                let mut r: Vec<&PathBuf> = mounts.values().collect();
                r.dedup();
                r
            }
        };
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
