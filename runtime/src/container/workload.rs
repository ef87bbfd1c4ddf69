//! The last steps of a container's init, right before the workload runs: libcontainer calls
//! [`Workload`] (its `Executor`) once namespaces, mounts, cgroups, capabilities and
//! `no_new_privs` are in place.
//!
//! 0. Before the start, the environment libcontainer made from the spec gets the container's
//!    secret environment entries for this run ([`Workload::with_env`]), which are thus in
//!    the process's environment but never in the spec on disk.
//! 1. The process gets the signal state of a freshly started one (see
//!    [`fresh_signal_state`]).
//! 2. The seccomp program compiled ahead by the shim is installed.
//! 3. The workload is executed — or, for a container that asks for an init (`--init`, ECS
//!    `linuxParameters.initProcessEnabled`, Compose `init: true`), the process forks: the child
//!    executes the workload, and this process stays behind as the container's PID 1 (see
//!    [`run_init`]), as Docker's `docker-init` (tini) does. It needs nothing inside the image:
//!    it is the shim's own code, already in memory, from the shim binary's read-only mount.

use std::collections::HashMap;

use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::seccomp::CompiledFilter;
use super::secrets::SecretEnv;

/// libcontainer's default executor, with the steps above around it.
#[derive(Debug, Clone)]
pub struct Workload {
    filter: Option<CompiledFilter>,
    init: bool,
    env: Vec<SecretEnv>,
}

impl Workload {
    /// Installs `filter` (none: no seccomp) and executes the workload; with `init`, under an
    /// init process that reaps orphans and passes signals on.
    pub fn new(filter: Option<CompiledFilter>, init: bool) -> Self {
        Self {
            filter,
            init,
            env: Vec::new(),
        }
    }

    /// Adds `env` to the workload's environment, each replacing an entry of the spec of the
    /// same name (their names and values must be valid: see
    /// [`super::secrets::SecretMaterial::problems`]). With an init, the workload it forks
    /// inherits them.
    pub fn with_env(mut self, env: Vec<SecretEnv>) -> Self {
        self.env = env;
        self
    }

    fn seccomp(&self) -> Result<(), ExecutorError> {
        if let Some(f) = &self.filter {
            // Sets no_new_privs (already set by the init) and installs the program; from here
            // on only the allowed calls work, execve among them.
            seccompiler::apply_filter(&f.0)
                .map_err(|e| ExecutorError::Other(format!("installing the seccomp filter: {e}")))?;
        }
        Ok(())
    }
}

impl Executor for Workload {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let other =
            |what: &str, e: &dyn std::fmt::Display| ExecutorError::Other(format!("{what}: {e}"));
        if self.init {
            // Every signal stays pending for the init to take with sigwait; the child starts
            // from a clean state before it executes the workload.
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None)
                .map_err(|e| other("blocking signals for the init", &e))?;
            // The workload waits for the end of this pipe, which the init closes with every
            // other descriptor of the setup: it never runs while those are still open in its
            // PID 1 (where `/proc/1/fd` would show them).
            let (closed, closing) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| other("a pipe for the init", &e))?;
            #[allow(unsafe_code)]
            // SAFETY: the container's init process is single-threaded here (libcontainer made
            // it with clone and starts no thread in it), so the child of fork is a complete
            // copy that may run any code: no lock is held by another thread.
            let forked =
                unsafe { nix::unistd::fork() }.map_err(|e| other("forking the init", &e))?;
            match forked {
                nix::unistd::ForkResult::Parent { child } => {
                    drop(closed);
                    // Closed below, with the rest.
                    let _ = std::os::fd::IntoRawFd::into_raw_fd(closing);
                    sys::close_from(3);
                    self.seccomp()?;
                    run_init(child);
                }
                nix::unistd::ForkResult::Child => {
                    drop(closing);
                    let mut byte = [0u8; 1];
                    // End of file once the init closed its end; signals are blocked here, so
                    // nothing interrupts the wait.
                    while matches!(rustix::io::read(&closed, &mut byte), Ok(1)) {}
                }
            }
        }
        own_nofile(spec).map_err(ExecutorError::Other)?;
        fresh_signal_state().map_err(|e| other("resetting signal dispositions", &e))?;
        self.seccomp()?;
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }

    /// libcontainer calls this in the container's init with the environment it parsed from
    /// the spec (plus `HOME`), before the start; the default executor's `execvp` then passes
    /// the process's environment on, so what is added here reaches the workload.
    fn setup_envs(&self, mut envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        for e in &self.env {
            if e.name.is_empty() || e.name.contains(['=', '\0']) || e.value.contains('\0') {
                // Checked long before; never a panic in `set_var` here.
                return Err(ExecutorSetEnvsError::Other(format!(
                    "secret env '{}' cannot be set",
                    e.name.escape_debug()
                )));
            }
            envs.insert(e.name.clone(), e.value.clone());
        }
        libcontainer::workload::default::DefaultExecutor {}.setup_envs(envs)
    }
}

/// Lowers `RLIMIT_NOFILE` to the container's own value when the spec carries one below what
/// the setup needs ([`super::spec::NOFILE_ANNOTATION`]); lowering needs no capability.
fn own_nofile(spec: &Spec) -> Result<(), String> {
    let Some(value) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(super::spec::NOFILE_ANNOTATION))
    else {
        return Ok(());
    };
    let bad = || {
        format!(
            "annotation {}: '{value}' is not SOFT:HARD",
            super::spec::NOFILE_ANNOTATION
        )
    };
    let (soft, hard) = value.split_once(':').ok_or_else(bad)?;
    let (soft, hard): (u64, u64) = (
        soft.parse().map_err(|_| bad())?,
        hard.parse().map_err(|_| bad())?,
    );
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        },
    )
    .map_err(|e| format!("setting nofile to {soft}:{hard}: {e}"))
}

/// The container's PID 1 when it asked for an init: waits for signals (all blocked, so even
/// those a namespace's init would otherwise never get are queued), reaps every child that
/// ends — the workload's orphans are reparented to it — and passes every other signal on to
/// the workload (real-time ones too), so `SIGTERM` reaches a `sleep` that as PID 1 would have
/// ignored it. When the workload ends it exits with the workload's status (128 + the signal's
/// number when it was killed, as a shell reports it); the kernel then ends whatever is left in
/// the container.
///
/// Every descriptor above stderr is closed before (and before the workload runs): what the
/// container's setup held open (the host's `/proc`, the root filesystem by its host path, sync
/// sockets) must not be reachable through `/proc/1/fd` by a workload allowed to inspect its
/// PID 1 (`CAP_SYS_PTRACE`).
fn run_init(workload: Pid) -> ! {
    let all = SigSet::all();
    loop {
        let sig = sys::wait_signal(&all);
        if sig == libc::SIGCHLD {
            if let Some(code) = reap(workload) {
                std::process::exit(code);
            }
        } else if sig > 0
            && ![libc::SIGKILL, libc::SIGSTOP, libc::SIGTTIN, libc::SIGTTOU].contains(&sig)
        {
            // Neither SIGKILL nor SIGSTOP can be caught, and a terminal's job-control stops do
            // not apply to a container's init (tini ignores them too). A workload already
            // gone makes this fail: its SIGCHLD is queued and ends the loop.
            sys::send(workload, sig);
        }
    }
}

/// The few raw system calls of the init, for what nix has no safe form of (real-time signals,
/// `close_range`).
mod sys {
    use nix::sys::signal::SigSet;
    use nix::unistd::Pid;

    /// Closes every descriptor from `first` up: `close_range(2)`, or one by one as
    /// `/proc/self/fd` lists them where the kernel has no `close_range` (before Linux 5.9).
    pub fn close_from(first: u32) {
        #[allow(unsafe_code)]
        // SAFETY: close_range(2) takes plain integers and only closes this process's
        // descriptors; nothing in this (single-threaded, about to loop forever) process uses
        // one above stderr again.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
        if r == 0 {
            return;
        }
        let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| u32::try_from(*fd).is_ok_and(|fd| fd >= first))
            .collect();
        for fd in open {
            #[allow(unsafe_code)]
            // SAFETY: as above; the directory's own descriptor, listed too, is closed already
            // (a close of it fails harmlessly).
            unsafe {
                libc::close(fd);
            }
        }
    }

    /// Waits for one of `set`'s signals (blocked) and returns its number, real-time ones
    /// included; 0 if the wait failed.
    pub fn wait_signal(set: &SigSet) -> i32 {
        let mut sig: libc::c_int = 0;
        #[allow(unsafe_code)]
        // SAFETY: `set` is a valid, initialized sigset_t and `sig` a valid place for the
        // result; sigwait(3) writes nothing else.
        let r = unsafe { libc::sigwait(set.as_ref(), &mut sig) };
        if r == 0 {
            sig
        } else {
            0
        }
    }

    /// Sends signal number `sig` to `pid` (errors ignored: see the caller).
    pub fn send(pid: Pid, sig: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) takes plain integers.
        unsafe {
            libc::kill(pid.as_raw(), sig);
        }
    }
}

/// Reaps every ended child; the workload's exit code once it has ended.
fn reap(workload: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == workload => code = Some(c),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == workload => {
                code = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}

/// Gives the process about to execute the workload the signal state of a freshly started
/// one: every signal's disposition back to default and an empty signal mask. `execve` keeps
/// ignored signals ignored and the mask as it is (signal(7)), and whatever ran before leaves
/// some ignored — a Rust program ignores `SIGPIPE` (without this a container's `yes | head`
/// never ends), and signal 32 arrives ignored from the launcher's side too.
fn fresh_signal_state() -> std::io::Result<()> {
    /// The kernel's `struct sigaction` for rt_sigaction(2) (`include/uapi/asm-generic/signal.h`;
    /// x86-64, arm64 and arm all have `sa_restorer`), not glibc's.
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: [libc::c_ulong; 64 / libc::c_ulong::BITS as usize],
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: [0; 64 / libc::c_ulong::BITS as usize],
    };
    // Every signal, 1 to 64 (SIGRTMAX on Linux), by the raw system call: glibc's wrappers
    // refuse the real-time signals it keeps for itself (32, 33), which may arrive ignored too.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        #[allow(unsafe_code)]
        // SAFETY: `default` is a valid kernel sigaction that installs no handler (SIG_DFL), so
        // no code of ours can ever run in signal context; the old action is not asked for
        // (null), and the size is the kernel's sigset size (8 bytes). The call only changes
        // this process's signal table (the container's init, single-threaded right before
        // execve).
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of_val(&default.mask),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}
