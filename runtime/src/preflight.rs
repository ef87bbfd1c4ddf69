//! Checks that this host can run containers at all, made when the agent starts instead of at
//! its first container: each problem names the path, the filesystem or the controller at fault
//! and what to do about it.
//!
//! - The data directory must be able to hold overlayfs upper and work directories (every
//!   container's root is an overlayfs mount whose upper directory lives in
//!   `<data-dir>/containers/<id>/`). A data directory on overlayfs — the root of a container,
//!   of a live or VM image — is recognised by `statfs`; anything else the kernel refuses (NFS,
//!   FUSE, vfat, xfs without `ftype=1` …) by a probe: a tiny overlay mounted in a scratch
//!   directory under `<data-dir>/containers/`, written to, and unmounted, in a private mount
//!   namespace of a short-lived thread so the host never sees the mount. The probe mounts the
//!   way the shim does ([`crate::container::rootfs::mount_overlay`]), so a kernel whose
//!   overlayfs is a module gets it loaded exactly as the first container would.
//! - The cgroup controllers containers are limited with: `memory`, `pids` and `cpu` (v1 also
//!   `devices`, which libcontainer always uses there).
//! - `nft` and `conntrack` on the `PATH`: only warnings, since tasks with `host`, `none` or
//!   `awsvpc` networking need neither (`bridge` tasks and VIPs do).
//!
//! The decisions are pure functions of what was read (mountinfo, `cgroup.controllers`,
//! `/proc/cgroups`, `/proc/filesystems`, a `statfs` magic, an errno), tested with sample text.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::container::cgroup::CgroupHierarchy;

/// `OVERLAYFS_SUPER_MAGIC`.
pub const OVERLAYFS_MAGIC: u32 = 0x794c_7630;

/// Prefix of the probe's scratch directories in `<data-dir>/containers/` (dot names are not
/// containers there).
const SCRATCH_PREFIX: &str = ".preflight-";

/// Something that keeps this host from running containers, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, naming the path, filesystem or controller.
    pub what: String,
    /// What to do.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}. To fix: {}", self.what, self.fix)
    }
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Report {
    /// The host cannot run containers while any of these stands.
    pub problems: Vec<Problem>,
    /// Features that will not work; the rest does.
    pub warnings: Vec<String>,
    /// How long the overlay probe took to its verdict (`None`: not run).
    pub probe: Option<Duration>,
    /// The probe's cleanup, still running (see [`Probe::cleanup`]).
    pub cleanup: Option<std::thread::JoinHandle<()>>,
}

impl Report {
    /// True when nothing stands in the way.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Waits for the probe's cleanup (before exiting: an exit would cut it short).
    pub fn finish_cleanup(&mut self) {
        if let Some(h) = self.cleanup.take() {
            let _ = h.join();
        }
    }
}

/// Which checks to make.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// Mount a real overlay under the data directory (needs root; about a millisecond).
    pub overlay_probe: bool,
    /// Look for `nft` and `conntrack` (node networking).
    pub network_tools: bool,
}

/// Every check for `nodeagent run`.
pub const AGENT: Checks = Checks {
    overlay_probe: true,
    network_tools: true,
};

/// The checks for `nodeagent ctr run`: the container itself then shows whatever a probe would
/// (no networking beyond `none` and `host` either).
pub const CTR_RUN: Checks = Checks {
    overlay_probe: false,
    network_tools: false,
};

/// Runs `checks` against this host with its data directory at `data_dir` (created, with
/// `containers/` in it, as the container store makes them).
pub fn check(data_dir: &Path, checks: Checks) -> Report {
    let mut report = Report::default();
    let containers = data_dir.join("containers");
    let made = fs::create_dir_all(data_dir).and_then(|()| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&containers)
    });
    if let Err(e) = made {
        report.problems.push(Problem {
            what: format!(
                "the data directory {} cannot be created: {e}",
                data_dir.display()
            ),
            fix: "run nodeagent as root, or choose a writable place with --data-dir (data_dir \
                  in /etc/flotilla/nodeagent.toml)"
                .into(),
        });
    } else {
        let magic = fs_magic(&containers);
        match magic {
            Ok(m) => {
                if let Some(p) = data_fs_problem(data_dir, &containers, m) {
                    report.problems.push(p);
                } else if checks.overlay_probe {
                    if rustix::process::geteuid().is_root() {
                        let probe = probe_overlay(&containers);
                        if let Err(f) = &probe.verdict {
                            let filesystems =
                                fs::read_to_string("/proc/filesystems").unwrap_or_default();
                            report.problems.push(probe_problem(
                                data_dir,
                                &containers,
                                m,
                                f,
                                &filesystems,
                            ));
                        }
                        report.probe = Some(probe.elapsed);
                        report.cleanup = probe.cleanup;
                    } else {
                        report.warnings.push(
                            "not running as root: the data directory's overlayfs check was \
                             skipped, and containers need root (namespaces, mounts, cgroups)"
                                .into(),
                        );
                    }
                }
            }
            Err(e) => report.problems.push(Problem {
                what: format!("statfs {}: {e}", containers.display()),
                fix: "check the data directory's filesystem (--data-dir)".into(),
            }),
        }
    }
    let proc_cgroups = fs::read_to_string("/proc/cgroups").ok();
    let view = match CgroupHierarchy::detect() {
        Ok(CgroupHierarchy::V2 { root }) => {
            let file = root.join("cgroup.controllers");
            match fs::read_to_string(&file) {
                Ok(c) => CgroupView::V2 {
                    root,
                    controllers: c,
                },
                Err(e) => CgroupView::Unreadable {
                    what: format!("reading {}: {e}", file.display()),
                },
            }
        }
        Ok(CgroupHierarchy::V1 { mounts }) => CgroupView::V1 { mounts },
        Err(e) => CgroupView::Unreadable {
            what: e.to_string(),
        },
    };
    report
        .problems
        .extend(cgroup_problems(&view, proc_cgroups.as_deref()));
    // On v2 every unprivileged container needs its device allowlist loaded as eBPF.
    if matches!(view, CgroupView::V2 { .. }) && rustix::process::geteuid().is_root() {
        if let Err(e) = crate::container::devices::load(crate::container::devices::DEFAULT_ALLOW) {
            report.problems.push(Problem {
                what: format!("containers cannot get their device allowlist on cgroup v2: {e}"),
                fix: "run the agent as root on the host (not in an unprivileged container), on \
                      a kernel built with CONFIG_CGROUP_BPF=y (Debian's, Ubuntu's and \
                      Raspberry Pi OS's are)"
                    .into(),
            });
        }
    }
    if checks.network_tools {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = path.to_string_lossy();
        let nft = find_in_path("nft", &path, is_executable).is_some();
        let conntrack = find_in_path("conntrack", &path, is_executable).is_some();
        report.warnings.extend(network_warnings(nft, conntrack));
    }
    report
}

/// The filesystem magic (`statfs` `f_type`) of `path`.
pub fn fs_magic(path: &Path) -> io::Result<u32> {
    // `f_type` is a signed or unsigned word depending on the architecture; magics are 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(rustix::fs::statfs(path)?.f_type as u32)
}

/// A readable name of a filesystem magic (`statfs` `f_type`).
pub fn fs_name(magic: u32) -> String {
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x0102_1997 => "9p",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x794C_7630 => "overlayfs",
        0x6175_6673 => "aufs",
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x6573_5546 => "fuse",
        0x4D44 => "vfat",
        0x2011_BAB0 => "exfat",
        0x5346_544E => "ntfs",
        0x7366_746E => "ntfs3",
        0x7371_7368 => "squashfs",
        0x9660 => "iso9660",
        0xCA45_1A4E => "bcachefs",
        0x0000_F15F => "ecryptfs",
        0x8584_58F6 => "ramfs",
        _ => return format!("filesystem type {magic:#x}"),
    };
    name.to_string()
}

/// The fix for a data directory that cannot hold overlay upper directories.
fn move_data_dir() -> String {
    "put the data directory on ext4, xfs (made with ftype=1, the default), btrfs or tmpfs — e.g. \
     mount a volume and start with --data-dir /mnt/VOLUME/flotilla (data_dir in \
     /etc/flotilla/nodeagent.toml)"
        .into()
}

/// The data directory's filesystem as `statfs` tells it: overlayfs can never hold an overlay's
/// upper and work directories (the kernel answers `Invalid argument`).
pub fn data_fs_problem(data_dir: &Path, containers: &Path, magic: u32) -> Option<Problem> {
    (magic == OVERLAYFS_MAGIC).then(|| Problem {
        what: format!(
            "the data directory {} is on overlayfs ({} is where each container's overlayfs \
             upper and work directories go): the kernel refuses an overlayfs upper directory on \
             overlayfs, so every container would fail with 'mounting overlayfs …: Invalid \
             argument' (typical when the node's root filesystem is itself a container's or a \
             live/VM image's overlay)",
            data_dir.display(),
            containers.display()
        ),
        fix: move_data_dir(),
    })
}

/// Where the probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// What it was doing.
    pub step: String,
    /// The error number, when the failure was a system call's.
    pub errno: Option<i32>,
    /// The error as text.
    pub error: String,
}

impl ProbeFailure {
    fn io(step: impl Into<String>, e: &io::Error) -> Self {
        Self {
            step: step.into(),
            errno: e.raw_os_error(),
            error: e.to_string(),
        }
    }

    fn semantic(step: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            errno: None,
            error: error.into(),
        }
    }
}

/// True when `/proc/filesystems` lists overlayfs.
pub fn overlay_in_kernel(filesystems: &str) -> bool {
    filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
}

/// What a failed probe means, given the filesystem's magic and `/proc/filesystems` read after
/// the mount was tried (the mount itself asks the kernel to load the module).
pub fn probe_problem(
    data_dir: &Path,
    containers: &Path,
    magic: u32,
    failure: &ProbeFailure,
    filesystems: &str,
) -> Problem {
    let fs = fs_name(magic);
    let eperm = rustix::io::Errno::PERM.raw_os_error();
    let privileged = failure.step == "private mount namespace"
        || (failure.step == "mount" && failure.errno == Some(eperm));
    if privileged {
        return Problem {
            what: format!(
                "nodeagent cannot mount (a test overlay in {} failed at '{}': {}): containers                  need namespaces and mounts",
                containers.display(),
                failure.step,
                failure.error
            ),
            fix: "run nodeagent as full root (CAP_SYS_ADMIN; in a container: privileged, with                   no seccomp or AppArmor profile that forbids mount and unshare)"
                .into(),
        };
    }
    if failure.step == "scratch directory" {
        return Problem {
            what: format!(
                "the data directory {} is not writable: {}",
                data_dir.display(),
                failure.error
            ),
            fix: "make it writable (a read-only filesystem?), or choose another with --data-dir                   (data_dir in /etc/flotilla/nodeagent.toml)"
                .into(),
        };
    }
    if failure.step == "mount" && !overlay_in_kernel(filesystems) {
        return Problem {
            what: format!(
                "this kernel has no overlayfs: /proc/filesystems lacks 'overlay' even after a \
                 mount of it asked the kernel to load the module ({}), and every container's \
                 root is an overlayfs mount",
                failure.error
            ),
            fix: "load it with `modprobe overlay` (and at boot: `echo overlay > \
                  /etc/modules-load.d/overlay.conf`); if the module is missing, install the \
                  kernel's extra modules (e.g. linux-modules-extra-$(uname -r)) or a kernel \
                  built with CONFIG_OVERLAY_FS"
                .into(),
        };
    }
    let einval = rustix::io::Errno::INVAL.raw_os_error();
    let why = match (failure.step.as_str(), failure.errno) {
        ("mount", Some(e)) if e == einval => format!(
            "the kernel refuses {fs} as an overlayfs upper directory (network, FUSE and \
             FAT-like filesystems cannot hold one; `dmesg | grep overlayfs` tells why)"
        ),
        ("upper d_type", _) => {
            let which = match magic {
                0x5846_5342 => " (xfs made with ftype=0: `xfs_info` shows it)",
                0xEF53 => " (ext4 without the filetype feature: `tune2fs -l` lists them)",
                _ => "",
            };
            format!(
                "{fs} does not report file types in directory listings (d_type), which \
                 overlayfs needs to hide deleted files{which}"
            )
        }
        ("mount", _) => format!("overlayfs cannot be mounted over {fs}"),
        (step, _) if step.contains("lower") => format!(
            "{fs} cannot record deleted files and replaced directories the way overlayfs \
             needs (whiteouts, trusted.* extended attributes)"
        ),
        _ => format!("overlayfs over {fs} does not work as containers need it"),
    };
    Problem {
        what: format!(
            "the data directory {} cannot hold containers' root filesystems: {why}; a test \
             overlay in {} failed at '{}': {}",
            data_dir.display(),
            containers.display(),
            failure.step,
            failure.error
        ),
        fix: move_data_dir(),
    }
}

/// A probe's verdict, and the thread still unmounting and removing its scratch directory.
#[derive(Debug)]
pub struct Probe {
    /// What the overlay did.
    pub verdict: Result<(), ProbeFailure>,
    /// Until the verdict.
    pub elapsed: Duration,
    /// The cleanup. Unmounting an overlay syncs its upper filesystem (every dirty page of the
    /// data directory's filesystem: tens of milliseconds on a busy disk, more on a slow one),
    /// so the verdict does not wait for it; a caller about to exit joins it.
    pub cleanup: Option<std::thread::JoinHandle<()>>,
}

/// Mounts a small overlay in a scratch directory under `containers` in a private mount
/// namespace of its own thread (the host never sees the mount; it dies with the thread at the
/// latest), checks what containers rely on — new files listed with their type (d_type),
/// deleting a file of the image (a whiteout), replacing a directory of the image (an opaque
/// directory) — and unmounts it.
pub fn probe_overlay(containers: &Path) -> Probe {
    let started = Instant::now();
    let failed = |f: ProbeFailure| Probe {
        verdict: Err(f),
        elapsed: started.elapsed(),
        cleanup: None,
    };
    sweep_stale(containers);
    let scratch = match tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(containers)
    {
        Ok(s) => s,
        Err(e) => return failed(ProbeFailure::io("scratch directory", &e)),
    };
    let base = scratch.path().to_path_buf();
    let prepare = || -> io::Result<()> {
        fs::create_dir_all(base.join("lower/d"))?;
        fs::write(base.join("lower/a"), b"a")?;
        fs::write(base.join("lower/d/x"), b"x")?;
        for d in ["upper", "work", "merged"] {
            fs::create_dir(base.join(d))?;
        }
        Ok(())
    };
    if let Err(e) = prepare() {
        return failed(ProbeFailure::io("scratch directory", &e));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("preflight".into())
        .spawn(move || {
            let merged = base.join("merged");
            let mounted = mount_in_own_namespace(&base);
            let verdict = mounted
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|()| exercise(&base, &merged));
            let _ = tx.send(verdict);
            if mounted.is_ok() {
                use rustix::mount::{unmount, UnmountFlags};
                if let Err(e) = unmount(&merged, UnmountFlags::empty()) {
                    tracing::warn!(path = %merged.display(), "unmounting the overlay probe: {e}");
                    let _ = unmount(&merged, UnmountFlags::DETACH);
                }
            }
            drop(scratch);
        });
    let cleanup = match spawned {
        Ok(h) => h,
        Err(e) => return failed(ProbeFailure::io("probe thread", &e)),
    };
    let verdict = rx
        .recv()
        .unwrap_or_else(|_| Err(ProbeFailure::semantic("probe thread", "ended early")));
    Probe {
        verdict,
        elapsed: started.elapsed(),
        cleanup: Some(cleanup),
    }
}

/// Removes scratch directories of probes that were killed halfway (their mounts died with
/// their namespace).
fn sweep_stale(containers: &Path) {
    let Ok(entries) = fs::read_dir(containers) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
        if old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Moves this thread (only) into a private mount namespace and mounts the probe's overlay
/// as the shim mounts a container's root.
fn mount_in_own_namespace(base: &Path) -> Result<(), ProbeFailure> {
    use nix::sched::{unshare, CloneFlags};
    use rustix::mount::{mount_change, MountPropagationFlags};
    // Only this thread moves, with its own working directory (which the mount changes).
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
        .map_err(|e| ProbeFailure::io("private mount namespace", &io::Error::from(e)))?;
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| ProbeFailure::io("private mount namespace", &io::Error::from(e)))?;
    crate::container::rootfs::mount_overlay(&[base.join("lower")], base, &base.join("merged"))
        .map_err(|e| ProbeFailure::io("mount", &e))
}

/// What containers do to their root, on the probe's overlay at `merged`.
fn exercise(base: &Path, merged: &Path) -> Result<(), ProbeFailure> {
    let io = |step: &'static str| move |e: io::Error| ProbeFailure::io(step, &e);
    fs::write(merged.join("b"), b"b").map_err(io("new file"))?;
    upper_reports_types(&base.join("upper"))?;
    fs::remove_file(merged.join("a")).map_err(io("deleting a lower file (whiteout)"))?;
    fs::remove_file(merged.join("d/x")).map_err(io("deleting a lower file (whiteout)"))?;
    fs::remove_dir(merged.join("d")).map_err(io("removing a lower directory"))?;
    fs::create_dir(merged.join("d")).map_err(io("replacing a lower directory (opaque)"))?;
    let names = |dir: &Path, step: &'static str| -> Result<Vec<String>, ProbeFailure> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map_err(io(step))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        v.sort();
        Ok(v)
    };
    let top = names(merged, "listing the overlay")?;
    if top != ["b", "d"] {
        return Err(ProbeFailure::semantic(
            "deleting a lower file (whiteout)",
            format!("the overlay lists {top:?} instead of [\"b\", \"d\"]"),
        ));
    }
    let inside = names(&merged.join("d"), "listing a replaced directory")?;
    if !inside.is_empty() {
        return Err(ProbeFailure::semantic(
            "replacing a lower directory (opaque)",
            format!("a removed and remade directory still shows {inside:?}"),
        ));
    }
    Ok(())
}

/// The kernel's own d_type check: a regular file must not be listed as `DT_UNKNOWN`.
fn upper_reports_types(upper: &Path) -> Result<(), ProbeFailure> {
    let step = "upper d_type";
    let fd = rustix::fs::open(
        upper,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| ProbeFailure::io(step, &io::Error::from(e)))?;
    let dir =
        rustix::fs::Dir::read_from(&fd).map_err(|e| ProbeFailure::io(step, &io::Error::from(e)))?;
    for entry in dir {
        let entry = entry.map_err(|e| ProbeFailure::io(step, &io::Error::from(e)))?;
        if entry.file_name().to_bytes() == b"b" {
            return if entry.file_type() == rustix::fs::FileType::Unknown {
                Err(ProbeFailure::semantic(
                    step,
                    "a regular file is listed with type DT_UNKNOWN",
                ))
            } else {
                Ok(())
            };
        }
    }
    Err(ProbeFailure::semantic(
        "new file",
        "a file made on the overlay is not in its upper directory",
    ))
}

/// The cgroup hierarchy as read for the checks.
#[derive(Debug, Clone)]
pub enum CgroupView {
    /// v2: its mount point and the text of its root's `cgroup.controllers`.
    V2 {
        /// Mount point.
        root: PathBuf,
        /// `cgroup.controllers` of the root.
        controllers: String,
    },
    /// v1 (legacy or hybrid): controller → mount point.
    V1 {
        /// Mounted controllers.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// No usable hierarchy.
    Unreadable {
        /// Why.
        what: String,
    },
}

/// Controllers containers are limited with on v2.
pub const V2_REQUIRED: &[&str] = &["memory", "pids", "cpu"];
/// On v1 libcontainer also always writes the device allowlist.
pub const V1_REQUIRED: &[&str] = &["memory", "pids", "cpu", "devices"];

/// A controller's line in `/proc/cgroups`: (v1 hierarchy id, enabled).
fn proc_cgroups_entry(proc_cgroups: &str, name: &str) -> Option<(u64, bool)> {
    proc_cgroups.lines().find_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let mut f = l.split_whitespace();
        if f.next()? != name {
            return None;
        }
        let hierarchy = f.next()?.parse().ok()?;
        let _cgroups = f.next()?;
        let enabled = f.next()? == "1";
        Some((hierarchy, enabled))
    })
}

/// The kernel option that builds a controller.
fn kernel_config(controller: &str) -> &'static str {
    match controller {
        "memory" => "CONFIG_MEMCG",
        "pids" => "CONFIG_CGROUP_PIDS",
        "cpu" => "CONFIG_CGROUP_SCHED and CONFIG_FAIR_GROUP_SCHED",
        "devices" => "CONFIG_CGROUP_DEVICE",
        _ => "its CONFIG_CGROUP_ option",
    }
}

/// The required controllers that are missing, each with why (from `/proc/cgroups` when it
/// could be read) and what to do.
pub fn cgroup_problems(view: &CgroupView, proc_cgroups: Option<&str>) -> Vec<Problem> {
    let (missing, v2_root): (Vec<&str>, Option<&Path>) = match view {
        CgroupView::Unreadable { what } => {
            return vec![Problem {
                what: format!("no usable cgroup hierarchy: {what}"),
                fix: "mount cgroup2 at /sys/fs/cgroup (`mount -t cgroup2 none /sys/fs/cgroup`; \
                      systemd does it at boot)"
                    .into(),
            }]
        }
        CgroupView::V2 { root, controllers } => {
            let have: Vec<&str> = controllers.split_whitespace().collect();
            (
                V2_REQUIRED
                    .iter()
                    .copied()
                    .filter(|c| !have.contains(c))
                    .collect(),
                Some(root.as_path()),
            )
        }
        CgroupView::V1 { mounts } => (
            V1_REQUIRED
                .iter()
                .copied()
                .filter(|c| !mounts.contains_key(*c))
                .collect(),
            None,
        ),
    };
    missing
        .into_iter()
        .map(|c| {
            let entry = proc_cgroups.and_then(|t| proc_cgroups_entry(t, c));
            let memory_hint = if c == "memory" {
                " (Raspberry Pi OS disables it by default: add `cgroup_enable=memory \
                 cgroup_memory=1` to /boot/firmware/cmdline.txt)"
            } else {
                ""
            };
            let (why, fix) = match (entry, v2_root) {
                (Some((_, false)), _) => (
                    "it is disabled on the kernel command line".to_string(),
                    format!(
                        "remove `cgroup_disable={c}` from the kernel command line{memory_hint} \
                         and reboot"
                    ),
                ),
                (None, _) if proc_cgroups.is_some() => (
                    "the kernel does not list it in /proc/cgroups: built without it?".to_string(),
                    format!(
                        "use a kernel built with {} (`grep CGROUP /boot/config-$(uname -r)`)",
                        kernel_config(c)
                    ),
                ),
                (Some((h, true)), Some(root)) if h != 0 => (
                    format!(
                        "the kernel has it, but bound to a cgroup v1 hierarchy, so the cgroup2 \
                         hierarchy at {} cannot offer it",
                        root.display()
                    ),
                    "unmount the v1 hierarchy holding it, or boot with \
                     `systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all`"
                        .to_string(),
                ),
                (_, Some(root)) => (
                    format!(
                        "{} does not offer it",
                        root.join("cgroup.controllers").display()
                    ),
                    format!(
                        "check the kernel has it ({}, not disabled on its command line{}); in a \
                         container or a delegated subtree, have the outer manager delegate \
                         `{c}`",
                        kernel_config(c),
                        memory_hint
                    ),
                ),
                (_, None) => (
                    "no cgroup v1 hierarchy with it is mounted".to_string(),
                    format!(
                        "mount it (`mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup \
                         /sys/fs/cgroup/{c}`; systemd does it at boot) or boot with the unified \
                         hierarchy (`systemd.unified_cgroup_hierarchy=1`)"
                    ),
                ),
            };
            Problem {
                what: format!(
                    "the cgroup controller '{c}' is missing ({why}): containers' {} limits need it",
                    match c {
                        "memory" => "memory",
                        "pids" => "process count",
                        "cpu" => "CPU",
                        _ => "device",
                    }
                ),
                fix,
            }
        })
        .collect()
}

/// The first executable `name` in the directories of `path` (a `PATH` value).
pub fn find_in_path(name: &str, path: &str, executable: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| executable(p))
}

/// The shim binary at `program` (nodeagent's sibling `flotilla-shim`), when it cannot be run:
/// every container start would fail.
pub fn shim_problem(program: &Path) -> Option<Problem> {
    if is_executable(program) {
        return None;
    }
    let what = match fs::metadata(program) {
        Ok(_) => format!("the container shim {} is not executable", program.display()),
        Err(e) => format!(
            "the container shim {} cannot be found: {e}",
            program.display()
        ),
    };
    Some(Problem {
        what,
        fix: "install flotilla-shim next to nodeagent (scripts/install.sh installs both; \
              cargo build --workspace --bins builds both)"
            .into(),
    })
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Warnings for missing networking tools. Neither is fatal: tasks with `host` or `none`
/// networking need neither.
pub fn network_warnings(nft: bool, conntrack: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !nft {
        out.push(
            "`nft` (nftables) is not on the PATH: bridge networking (outbound NAT, published \
             host ports) and service VIPs will not work on this node; tasks with host, none or \
             awsvpc networking will. Install nftables"
                .to_string(),
        );
    }
    if !conntrack {
        out.push(
            "`conntrack` (conntrack-tools) is not on the PATH: when a bridge task or a VIP \
             backend goes away, connections already translated to it are not forgotten, so a \
             new connection reusing their ports may be sent to the gone task. Install \
             conntrack"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn only_overlayfs_is_refused_by_statfs() {
        let data = p("/var/lib/flotilla/nodeagent");
        let c = data.join("containers");
        let problem = data_fs_problem(&data, &c, OVERLAYFS_MAGIC).expect("overlay refused");
        let text = problem.to_string();
        assert!(text.contains("overlayfs"), "{text}");
        assert!(text.contains("/var/lib/flotilla/nodeagent"), "{text}");
        assert!(text.contains("--data-dir"), "{text}");
        for ok in [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x6969, 0] {
            assert_eq!(data_fs_problem(&data, &c, ok), None, "{}", fs_name(ok));
        }
    }

    #[test]
    fn filesystems_are_named() {
        assert_eq!(fs_name(0xEF53), "ext4");
        assert_eq!(fs_name(OVERLAYFS_MAGIC), "overlayfs");
        assert_eq!(fs_name(0x0102_1994), "tmpfs");
        assert_eq!(fs_name(0x1234), "filesystem type 0x1234");
    }

    const FILESYSTEMS: &str = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";

    #[test]
    fn overlay_in_proc_filesystems() {
        assert!(overlay_in_kernel(FILESYSTEMS));
        assert!(!overlay_in_kernel("nodev\tsysfs\n\text4\n"));
        assert!(!overlay_in_kernel("nodev\toverlayish\n"));
        assert!(!overlay_in_kernel(""));
    }

    fn failure(step: &str, errno: Option<i32>) -> ProbeFailure {
        ProbeFailure {
            step: step.into(),
            errno,
            error: "Some error".into(),
        }
    }

    #[test]
    fn a_kernel_without_overlayfs_is_told_apart_from_a_bad_filesystem() {
        let data = p("/srv/agent");
        let c = data.join("containers");
        let enodev = rustix::io::Errno::NODEV.raw_os_error();
        let no_module = probe_problem(
            &data,
            &c,
            0xEF53,
            &failure("mount", Some(enodev)),
            "nodev\tsysfs\n\text4\n",
        );
        assert!(no_module.what.contains("no overlayfs"), "{no_module}");
        assert!(no_module.fix.contains("modprobe overlay"), "{no_module}");

        let einval = rustix::io::Errno::INVAL.raw_os_error();
        let nfs = probe_problem(
            &data,
            &c,
            0x6969,
            &failure("mount", Some(einval)),
            FILESYSTEMS,
        );
        assert!(nfs.what.contains("/srv/agent"), "{nfs}");
        assert!(nfs.what.contains("nfs"), "{nfs}");
        assert!(nfs.what.contains("refuses"), "{nfs}");
        assert!(nfs.fix.contains("ext4"), "{nfs}");

        let xfs = probe_problem(
            &data,
            &c,
            0x5846_5342,
            &failure("upper d_type", None),
            FILESYSTEMS,
        );
        assert!(xfs.what.contains("ftype=0"), "{xfs}");
        assert!(xfs.what.contains("xfs"), "{xfs}");

        // A failure after the mount is never blamed on a missing module.
        let whiteout = probe_problem(
            &data,
            &c,
            0x4D44,
            &failure("deleting a lower file (whiteout)", Some(1)),
            "",
        );
        assert!(whiteout.what.contains("vfat"), "{whiteout}");
        assert!(whiteout.what.contains("whiteout"), "{whiteout}");

        // Not the filesystem's fault: no privilege to mount, or nowhere to write.
        let eperm = rustix::io::Errno::PERM.raw_os_error();
        for step in ["private mount namespace", "mount"] {
            // (EPERM comes before the kernel looks the type up: overlay may not be listed yet.)
            let denied = probe_problem(&data, &c, 0xEF53, &failure(step, Some(eperm)), "");
            assert!(denied.fix.contains("CAP_SYS_ADMIN"), "{denied}");
            assert!(!denied.fix.contains("ext4"), "{denied}");
        }
        let rofs = probe_problem(
            &data,
            &c,
            0xEF53,
            &failure("scratch directory", Some(30)),
            FILESYSTEMS,
        );
        assert!(rofs.what.contains("not writable"), "{rofs}");
    }

    const PROC_CGROUPS_V2: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t0\t1\t1
cpu\t0\t1\t1
memory\t0\t80\t0
pids\t0\t1\t1
";

    fn v2(controllers: &str) -> CgroupView {
        CgroupView::V2 {
            root: p("/sys/fs/cgroup"),
            controllers: controllers.into(),
        }
    }

    #[test]
    fn v2_controllers_present() {
        let all = v2("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert!(cgroup_problems(&all, Some(PROC_CGROUPS_V2)).is_empty());
        assert!(cgroup_problems(&all, None).is_empty());
    }

    #[test]
    fn v2_memory_disabled_on_the_command_line() {
        let got = cgroup_problems(&v2("cpuset cpu io pids\n"), Some(PROC_CGROUPS_V2));
        assert_eq!(got.len(), 1, "{got:?}");
        let text = got[0].to_string();
        assert!(text.contains("'memory'"), "{text}");
        assert!(text.contains("cgroup_disable=memory"), "{text}");
        assert!(text.contains("cgroup_enable=memory"), "{text}");
    }

    #[test]
    fn v2_controller_not_built_bound_to_v1_or_not_delegated() {
        // pids not in /proc/cgroups at all: not built.
        let proc = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t1\t1\nmemory\t0\t1\t1\n";
        let got = cgroup_problems(&v2("cpu memory"), Some(proc));
        assert_eq!(got.len(), 1);
        assert!(got[0].fix.contains("CONFIG_CGROUP_PIDS"), "{}", got[0]);

        // cpu bound to a v1 hierarchy (id 3).
        let proc = "cpu\t3\t1\t1\nmemory\t0\t1\t1\npids\t0\t1\t1\n";
        let got = cgroup_problems(&v2("memory pids"), Some(proc));
        assert_eq!(got.len(), 1);
        assert!(got[0].what.contains("v1 hierarchy"), "{}", got[0]);
        assert!(got[0].fix.contains("cgroup_no_v1"), "{}", got[0]);

        // Known and enabled, just not offered here: a delegation problem.
        let proc = "cpu\t0\t1\t1\nmemory\t0\t1\t1\npids\t0\t1\t1\n";
        let got = cgroup_problems(&v2("memory pids"), Some(proc));
        assert_eq!(got.len(), 1);
        assert!(got[0].what.contains("/sys/fs/cgroup/cgroup.controllers"));
        assert!(got[0].fix.contains("delegate"), "{}", got[0]);

        // Without /proc/cgroups: still named, with the generic advice.
        let got = cgroup_problems(&v2(""), None);
        let names: Vec<bool> = ["'memory'", "'pids'", "'cpu'"]
            .iter()
            .map(|c| got.iter().any(|p| p.what.contains(c)))
            .collect();
        assert_eq!(names, [true, true, true], "{got:?}");
    }

    #[test]
    fn v1_needs_mounted_hierarchies_including_devices() {
        let mountinfo_like: BTreeMap<String, PathBuf> = [
            ("cpu", "/sys/fs/cgroup/cpu,cpuacct"),
            ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
            ("memory", "/sys/fs/cgroup/memory"),
            ("pids", "/sys/fs/cgroup/pids"),
            ("devices", "/sys/fs/cgroup/devices"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), p(v)))
        .collect();
        let full = CgroupView::V1 {
            mounts: mountinfo_like.clone(),
        };
        assert!(cgroup_problems(&full, None).is_empty());
        let mut less = mountinfo_like;
        less.remove("pids");
        let got = cgroup_problems(&CgroupView::V1 { mounts: less }, Some("pids\t0\t1\t1\n"));
        assert_eq!(got.len(), 1);
        assert!(got[0].what.contains("'pids'"), "{}", got[0]);
        assert!(got[0].fix.contains("mount -t cgroup -o pids"), "{}", got[0]);
    }

    #[test]
    fn no_hierarchy_at_all() {
        let got = cgroup_problems(
            &CgroupView::Unreadable {
                what: "nothing at /sys/fs/cgroup".into(),
            },
            None,
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].fix.contains("cgroup2"));
    }

    #[test]
    fn garbage_input_never_panics() {
        let junk = [
            "",
            "\n\n",
            "memory",
            "memory x y z",
            "#memory 0 1 0",
            "\u{0}\u{ffff} \t\t",
            "memory\t-1\t\t1",
        ];
        for j in junk {
            let _ = cgroup_problems(&v2(j), Some(j));
            let _ = overlay_in_kernel(j);
            let _ = probe_problem(&p(j), &p(j), 0, &failure(j, None), j);
            let _ = find_in_path(j, j, |_| true);
        }
    }

    #[test]
    fn tools_are_looked_up_on_the_path() {
        let have = |p: &Path| p == Path::new("/usr/sbin/nft");
        assert_eq!(
            find_in_path("nft", "/usr/local/bin:/usr/sbin:/usr/bin", have),
            Some(p("/usr/sbin/nft"))
        );
        assert_eq!(find_in_path("conntrack", "/usr/sbin::", have), None);
        assert_eq!(find_in_path("nft", "", have), None);
        assert!(network_warnings(true, true).is_empty());
        let w = network_warnings(false, true);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("bridge") && w[0].contains("VIPs"), "{}", w[0]);
        let w = network_warnings(true, false);
        assert!(w[0].contains("conntrack"), "{}", w[0]);
    }

    /// The probe passes on the filesystem the tests run on (ext4 or tmpfs here) and leaves
    /// nothing behind. Needs root; skipped otherwise.
    #[test]
    fn the_probe_passes_here_and_leaves_nothing() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let d = tempfile::tempdir().expect("tmp");
        let mut report = check(d.path(), AGENT);
        report.finish_cleanup();
        assert!(
            report
                .problems
                .iter()
                .all(|p| !p.what.contains("data directory")),
            "{:?}",
            report.problems
        );
        assert!(report.probe.is_some());
        let left: Vec<_> = fs::read_dir(d.path().join("containers"))
            .expect("ls")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(&d.path().display().to_string()),
            "{mounts}"
        );
    }
}
