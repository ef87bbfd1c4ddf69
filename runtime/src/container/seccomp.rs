//! The default seccomp allowlist: Docker's default profile (moby `profiles/seccomp`) as a
//! baseline — everything not listed fails with EPERM; syscalls that need a capability are
//! allowed only when the container has it.
//!
//! The profile is compiled to BPF by libseccomp in the shim, before the container exists, and
//! the container's init installs that program right before it executes the workload (see
//! [`super::workload::Workload`]). libcontainer would compile the same profile inside the init, after
//! the container joined its cgroups — on the start path; compiling ahead takes that off it.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use std::io::{Read, Seek};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use super::spec::SpecError;

/// Errors compiling a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// libseccomp refused the profile.
    #[error("compiling the seccomp profile: {0}")]
    Compile(String),
    /// The profile uses something this compiler does not translate.
    #[error("seccomp profile: unsupported {0}")]
    Unsupported(String),
}

/// A profile compiled to a BPF program, ready to install.
#[derive(Debug, Clone)]
pub struct CompiledFilter(pub(super) seccompiler::BpfProgram);

impl CompiledFilter {
    /// Instructions in the program.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty program.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(EPERM) as i32),
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        other => return Err(SeccompError::Unsupported(format!("action {other:?}"))),
    })
}

fn arch(a: Arch) -> Result<ScmpArch, SeccompError> {
    Ok(match a {
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchArm => ScmpArch::Arm,
        other => return Err(SeccompError::Unsupported(format!("architecture {other:?}"))),
    })
}

/// Compiles `profile` with libseccomp (the same translation libcontainer makes).
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledFilter, SeccompError> {
    let err = |e: libseccomp::error::SeccompError| SeccompError::Compile(e.to_string());
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    // The init sets no_new_privs itself before installing the program.
    ctx.set_ctl_nnp(false).map_err(err)?;
    for a in profile.architectures().iter().flatten() {
        ctx.add_arch(arch(*a)?).map_err(err)?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let args = rule.args().as_ref();
            let comparators: Vec<ScmpArgCompare> = args
                .into_iter()
                .flatten()
                .map(|a| {
                    let op = match a.op() {
                        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                        LinuxSeccompOperator::ScmpCmpMaskedEq => {
                            ScmpCompareOp::MaskedEqual(a.value_two().unwrap_or(0))
                        }
                    };
                    ScmpArgCompare::new(a.index() as u32, op, a.value())
                })
                .collect();
            let mut indexes: Vec<usize> = args.into_iter().flatten().map(|a| a.index()).collect();
            indexes.sort_unstable();
            let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
            if comparators.is_empty() {
                ctx.add_rule(act, sc).map_err(err)?;
            } else if repeated {
                // Comparisons on the same argument are alternatives: one rule each.
                for c in &comparators {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))
                        .map_err(err)?;
                }
            } else {
                ctx.add_rule_conditional(act, sc, &comparators)
                    .map_err(err)?;
            }
        }
    }
    let memfd = rustix::fs::memfd_create("flotilla-seccomp", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| SeccompError::Compile(format!("memfd: {e}")))?;
    let mut file = std::fs::File::from(memfd);
    ctx.export_bpf(&file).map_err(err)?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| SeccompError::Compile(format!("reading the program: {e}")))?;
    CompiledFilter::from_bytes(&bytes).ok_or_else(|| {
        SeccompError::Compile(format!(
            "libseccomp exported {} bytes, not a BPF program",
            bytes.len()
        ))
    })
}

/// [`compile`], with the result kept in `cache_dir` under a digest of the profile and the
/// libseccomp version: the same profile is compiled once per node, not per container.
pub fn compile_cached(
    profile: &LinuxSeccomp,
    cache_dir: &std::path::Path,
) -> Result<CompiledFilter, SeccompError> {
    use sha2::{Digest, Sha256};
    let version = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(version.as_bytes());
    h.update(serde_json::to_vec(profile).unwrap_or_default());
    let path = cache_dir.join(format!("{}.bpf", hex::encode(h.finalize())));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Some(f) = CompiledFilter::from_bytes(&bytes) {
            return Ok(f);
        }
    }
    let f = compile(profile)?;
    // A cache that cannot be written only costs the next container a compile.
    let _ = std::fs::create_dir_all(cache_dir).and_then(|_| {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, f.to_bytes())?;
        std::fs::rename(&tmp, &path)
    });
    Ok(f)
}

impl CompiledFilter {
    /// The program as the kernel's `sock_filter` array.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 8);
        for i in &self.0 {
            out.extend_from_slice(&i.code.to_ne_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_ne_bytes());
        }
        out
    }

    /// Parses a `sock_filter` array; `None` unless it is a plausible program.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > 4096 {
            return None;
        }
        Some(Self(
            bytes
                .chunks_exact(8)
                .map(|c| seccompiler::sock_filter {
                    code: u16::from_ne_bytes([c[0], c[1]]),
                    jt: c[2],
                    jf: c[3],
                    k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                })
                .collect(),
        ))
    }
}

/// Allowed for every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Architecture-specific, harmless elsewhere (unknown names are dropped below).
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];

/// Allowed only with the named capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// Namespace flags `clone` may not use without CAP_SYS_ADMIN (CLONE_NEWNS, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET, NEWCGROUP).
const CLONE_NS_MASK: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The default profile for a container holding `caps`.
pub fn default_profile(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, SpecError> {
    let known = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|n| libseccomp::ScmpSyscall::from_name(n).is_ok())
            .map(|n| n.to_string())
            .collect()
    };
    let allow = |names: Vec<String>| -> Result<LinuxSyscall, SpecError> {
        Ok(LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()?)
    };
    let mut names: Vec<String> = known(ALLOWED);
    for (cap, extra) in BY_CAPABILITY {
        if caps.contains(cap) {
            names.extend(known(extra));
        }
    }
    names.sort();
    names.dedup();
    let mut rules = vec![allow(names)?];

    let arg = |index: usize, value: u64, op: LinuxSeccompOperator, mask: Option<u64>| {
        let mut b = LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op);
        if let Some(m) = mask {
            b = b.value_two(m);
        }
        b.build()
    };
    if !caps.contains(&Capability::SysAdmin) {
        // clone without namespace flags; clone3 cannot be filtered by flags, so it reports
        // ENOSYS and the C library falls back to clone.
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(
                    0,
                    0,
                    LinuxSeccompOperator::ScmpCmpMaskedEq,
                    Some(CLONE_NS_MASK),
                )?])
                .build()?,
        );
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    // Every socket family but vsock (host ↔ VM channel).
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["socket".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![arg(
                0,
                AF_VSOCK,
                LinuxSeccompOperator::ScmpCmpNe,
                None,
            )?])
            .build()?,
    );
    // personality: only the harmless personas (Linux, 32-bit, uname26 variants, query).
    let personas = [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff]
        .into_iter()
        .map(|p| arg(0, p, LinuxSeccompOperator::ScmpCmpEq, None))
        .collect::<Result<Vec<_>, _>>()?;
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["personality".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(personas)
            .build()?,
    );

    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(rules)
        .build()?)
}

/// The architectures whose system calls the filter admits.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        // libseccomp defaults to the native architecture.
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &LinuxSeccomp) -> HashSet<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn dangerous_calls_need_their_capability() {
        let base: HashSet<Capability> = [Capability::Chown, Capability::SysChroot].into();
        let p = default_profile(&base).expect("profile");
        let a = allowed(&p);
        assert!(a.contains("read") && a.contains("execve") && a.contains("chroot"));
        for denied in [
            "mount", "unshare", "keyctl", "setns", "reboot", "bpf", "add_key",
        ] {
            assert!(!a.contains(denied), "{denied} allowed");
        }
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        let mut admin = base.clone();
        admin.insert(Capability::SysAdmin);
        let a = allowed(&default_profile(&admin).expect("profile"));
        assert!(a.contains("mount") && a.contains("unshare") && a.contains("clone"));
    }

    #[test]
    fn every_listed_name_the_library_knows_is_kept() {
        let p = default_profile(&HashSet::new()).expect("profile");
        let a = allowed(&p);
        // a name this libseccomp cannot resolve is dropped, never an error
        assert!(a.len() > 250, "{}", a.len());
        assert!(a
            .iter()
            .all(|n| libseccomp::ScmpSyscall::from_name(n).is_ok()));
    }

    #[test]
    fn profiles_compile_to_bpf() {
        let p = default_profile(&[Capability::Chown].into()).expect("profile");
        let f = compile(&p).expect("compile");
        // every allowed call and the argument checks end up in the program
        assert!(f.len() > 250 && f.len() < 4096, "{} instructions", f.len());
        let cache = tempfile::tempdir().expect("tmp");
        let a = compile_cached(&p, cache.path()).expect("compile");
        assert_eq!(std::fs::read_dir(cache.path()).expect("ls").count(), 1);
        let b = compile_cached(&p, cache.path()).expect("cached");
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.to_bytes(), f.to_bytes());
        assert!(CompiledFilter::from_bytes(&[0; 7]).is_none());
    }
}
