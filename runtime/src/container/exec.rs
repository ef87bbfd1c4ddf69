//! Running a command inside a running container (`nodeagent ctr exec`, health checks).
//!
//! A helper — `flotilla-shim` with a command after `--`, launched isolated like a shim (see
//! [`super::isolate`]), so no process that joins the container ever has a writable
//! `/proc/<pid>/exe` — enters the container's network namespace (its shim's or its task's,
//! which the spec does not name), then joins the container through libcontainer's tenant
//! builder: its namespaces, cgroup, user, capabilities, no_new_privs, and the container's
//! seccomp profile.
//! The command gets the helper's stdio, or — with a console socket — a terminal: libcontainer
//! opens a pseudoterminal in the container's own `devpts`, makes it the command's controlling
//! terminal and sends its master to the socket (the OCI runtime spec's `consoleSocket`), where
//! nodeagent takes it. The helper waits for the command (killing it after the timeout), passes
//! it `SIGHUP` and `SIGINT`, kills it on `SIGTERM`, and exits with its code. It stays
//! single-threaded, like the shim.

use std::fs;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{kill_process, pidfd_open, waitpid, PidfdFlags, Signal, WaitOptions};

use super::seccomp;

/// Exit code when the command could not be run at all.
pub const CANNOT_RUN: i32 = 126;
/// Exit code when the command ran past its timeout and was killed.
pub const TIMED_OUT: i32 = 124;

/// Runs `args` in container `id` — on a terminal whose master goes to the listening Unix
/// socket at `console`, when given; returns the command's exit code (128 + signal when
/// killed), [`CANNOT_RUN`] or [`TIMED_OUT`].
pub fn main(
    data_dir: &Path,
    id: &str,
    args: Vec<String>,
    timeout: Option<Duration>,
    console: Option<&Path>,
) -> i32 {
    match run(data_dir, id, args, timeout, console) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "exec in {}: {e}",
                container_name(data_dir, id)
            );
            // As `docker exec`: 126 also for a command not found (`docker run` says 127).
            CANNOT_RUN
        }
    }
}

/// The container as people know it: `NAME (ID)`, or its id when it has no name.
fn container_name(data_dir: &Path, id: &str) -> String {
    let record = data_dir.join("containers").join(id).join("container.json");
    let name = fs::read(record).ok().and_then(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        v["config"]["name"].as_str().map(str::to_string)
    });
    let short: String = id.chars().take(12).collect();
    match name {
        Some(n) => format!("container {n} ({short})"),
        None => format!("container {short}"),
    }
}

/// Why the process could not start, in the container's terms, when libcontainer's own error
/// does not say it: its working directory gone (`rmdir` since the container started) or not a
/// directory, or its command missing or not executable. Looked up inside the running
/// container's root (`/proc/PID/root` of its init, symlinks resolved within it); `None` when
/// that cannot tell.
fn why_not(data_dir: &Path, id: &str, process: &oci_spec::runtime::Process) -> Option<NotRunnable> {
    use rustix::fs::{Mode, OFlags};
    let container =
        libcontainer::container::Container::load(data_dir.join("libcontainer").join(id)).ok()?;
    let pid = container.pid()?;
    let dirs = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(format!("/proc/{pid}/root"), dirs, Mode::empty()).ok()?;
    why_not_in(root.as_fd(), process)
}

/// Why a process cannot run in a container, with the exit code Docker gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NotRunnable {
    /// 127 for a command not found, 126 for one that cannot be run (not an executable file,
    /// a working directory that cannot be entered), as `docker run` exits.
    pub code: i32,
    /// Why, in the container's terms.
    pub message: String,
}

/// [`why_not`] for the root filesystem open at `root` (a container's, before its init runs
/// or while it does): symlinks are resolved within it. `None` when nothing there explains a
/// failure.
pub(super) fn why_not_in(
    root: std::os::fd::BorrowedFd<'_>,
    process: &oci_spec::runtime::Process,
) -> Option<NotRunnable> {
    let cannot = |message: String| NotRunnable { code: 126, message };
    let missing = |message: String| NotRunnable { code: 127, message };
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let dirs = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let inside = |path: &Path, flags: OFlags| {
        openat2(root, path, flags, Mode::empty(), ResolveFlags::IN_ROOT)
    };
    let cwd = process.cwd();
    match inside(cwd, dirs) {
        Ok(_) => {}
        Err(rustix::io::Errno::NOENT) => {
            return Some(cannot(format!(
                "its working directory {} does not exist in the container (removed since the \
                 container started?)",
                cwd.display()
            )))
        }
        Err(rustix::io::Errno::NOTDIR) => {
            return Some(cannot(format!(
                "its working directory {} is not a directory in the container",
                cwd.display()
            )))
        }
        Err(e) => {
            return Some(cannot(format!(
                "its working directory {} cannot be entered: {e}",
                cwd.display()
            )))
        }
    }
    let program = process.args().as_ref()?.first()?;
    let file = OFlags::PATH | OFlags::CLOEXEC;
    let found = |p: &Path| {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        };
        let f = inside(&p, file).ok()?;
        let st = rustix::fs::fstat(&f).ok()?;
        let regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
        Some(regular && st.st_mode & 0o111 != 0)
    };
    if program.contains('/') {
        return match found(Path::new(program)) {
            None => Some(missing(format!(
                "command '{program}' not found in the container"
            ))),
            Some(false) => Some(cannot(format!(
                "command '{program}' is not an executable file in the container"
            ))),
            Some(true) => None,
        };
    }
    let path = process
        .env()
        .as_ref()?
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("")
        .to_string();
    let hit = path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| found(&Path::new(d).join(program)) == Some(true));
    (!hit).then(|| {
        missing(format!(
            "command '{program}' not found in the container (its PATH is {path})"
        ))
    })
}

fn run(
    data_dir: &Path,
    id: &str,
    args: Vec<String>,
    timeout: Option<Duration>,
    console: Option<&Path>,
) -> Result<i32, String> {
    if !super::is_id(id) {
        return Err(format!("invalid container id '{id}'"));
    }
    if args.is_empty() {
        return Err("no command given".into());
    }
    if !super::isolate::launched_isolated() {
        return Err("exec runs only as launched by nodeagent (in its own mount namespace)".into());
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    // The command gets the umask containers get, not the caller's.
    super::reset_umask();
    // Its network namespace belongs to its shim (or its task), not to the container's spec:
    // the tenant would not join it.
    join_network(data_dir, id)?;
    // The container's own seccomp profile, as its shim kept it.
    let dir = data_dir.join("containers").join(id);
    let filter = match fs::read(dir.join("seccomp.json")) {
        Ok(bytes) => {
            let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the container's seccomp profile: {e}"))?;
            let cache = data_dir.join("containers").join(".seccomp");
            Some(seccomp::compile_cached(&profile, &cache).map_err(|e| e.to_string())?)
        }
        // Privileged containers run without one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", dir.join("seccomp.json").display())),
    };
    // The process as libcontainer would make it, with the container's resource limits: they
    // are set before its capabilities go, which the executor is too late for.
    let spec_path = dir.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&spec_path)
        .map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let process = exec_process(&spec, args, console.is_some())?;
    let process_file = rustix::fs::memfd_create("flotilla-exec", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("memfd: {e}"))?;
    let json = serde_json::to_vec(&process).map_err(|e| e.to_string())?;
    rustix::io::write(&process_file, &json).map_err(|e| format!("writing the process: {e}"))?;
    let process_path = format!("/proc/self/fd/{}", process_file.as_raw_fd());
    // Signals for the command come through a signalfd, blocked from now on: one that comes
    // while the command is being made waits for it. The command's process inherits the mask
    // until the executor empties it right before execve (`workload::fresh_signal_state`).
    let signals = relayed_signals()?;
    let launcher = launcher();
    let built = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(data_dir.join("libcontainer"))
        .map_err(|e| e.to_string())?
        .with_console_socket(console)
        .with_executor(super::workload::Workload::new(filter, false))
        .as_tenant()
        .with_process(Some(process_path))
        // libcontainer takes a console socket only for a "detached" terminal; the helper
        // waits for the command all the same.
        .with_detach(console.is_some())
        .build();
    drop(process_file);
    sweep(&data_dir.join("libcontainer").join(id), console);
    let pid = built.map_err(|e| match why_not(data_dir, id, &process) {
        Some(why) => why.message,
        None => e.to_string(),
    })?;
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).ok_or("invalid pid")?;
    // Our child: wait for it through a pidfd, so the timeout needs no signal handler.
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|e| format!("pidfd: {e}"))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    // Once the launcher is gone, the command is hung up and killed this much later.
    let mut kill_at: Option<Instant> = None;
    let mut hung_up = false;
    loop {
        if kill_at.is_some_and(|k| k <= Instant::now()) {
            let _ = kill_process(pid, Signal::KILL);
            kill_at = None;
        }
        let left = [deadline, kill_at]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if deadline.is_some_and(|d| d <= Instant::now()) {
            let _ = kill_process(pid, Signal::KILL);
            let _ = waitpid(Some(pid), WaitOptions::empty());
            let _ = writeln!(
                std::io::stderr(),
                "exec in {}: timed out after {:?}",
                container_name(data_dir, id),
                timeout.unwrap_or_default()
            );
            return Ok(TIMED_OUT);
        }
        let spec = left.map(|l| Timespec {
            tv_sec: l.as_secs() as i64,
            tv_nsec: l.subsec_nanos() as i64,
        });
        let mut fds = vec![
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(&signals, PollFlags::IN),
        ];
        let watching = !hung_up && launcher.is_some();
        if let (true, Some(l)) = (watching, &launcher) {
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        match poll(&mut fds, spec.as_ref()) {
            Ok(0) => continue,
            Ok(_) if fds[0].revents().contains(PollFlags::IN) => break,
            Ok(_) => {
                if fds[1].revents().contains(PollFlags::IN) {
                    relay(&signals, pid);
                }
                if fds
                    .get(2)
                    .is_some_and(|f| f.revents().contains(PollFlags::IN))
                {
                    // The agent (or `ctr exec`) that launched us ended: as a closed terminal,
                    // a hang-up, then a kill.
                    let _ = kill_process(pid, Signal::HUP);
                    kill_at = Some(Instant::now() + HANGUP_GRACE);
                    hung_up = true;
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("waiting: {e}")),
        }
    }
    let status = waitpid(Some(pid), WaitOptions::empty())
        .map_err(|e| format!("waitpid: {e}"))?
        .map(|(_, s)| s)
        .ok_or("no exit status")?;
    Ok(if let Some(code) = status.exit_status() {
        code
    } else if let Some(sig) = status.terminating_signal() {
        128 + sig
    } else {
        CANNOT_RUN
    })
}

/// How long a command whose launcher ended has between its hang-up and its kill.
pub const HANGUP_GRACE: Duration = Duration::from_secs(5);

/// A pidfd of the process that launched this helper (the agent, or `nodeagent ctr exec`),
/// readable once it has ended; `None` when it is already gone or cannot be watched.
fn launcher() -> Option<rustix::fd::OwnedFd> {
    let parent = rustix::process::getppid()?;
    if parent.as_raw_nonzero().get() == 1 {
        return None;
    }
    let fd = pidfd_open(parent, PidfdFlags::empty()).ok()?;
    // It may have ended between getppid and pidfd_open (the pid reused since): ask again.
    (rustix::process::getppid() == Some(parent)).then_some(fd)
}

/// Removes what libcontainer's tenant builder leaves in the container's state directory `dir`
/// after each exec: the link to our `console`, and the notify sockets and terminal links
/// (`tenant-notify-*`, `tenant-tty-*`) of execs that ended — those older than a minute; a
/// younger one may be another exec's, still being built.
fn sweep(dir: &Path, console: Option<&Path>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("tenant-tty-") || name.starts_with("tenant-notify-")) {
            continue;
        }
        let ours = console.is_some_and(|c| fs::read_link(e.path()).is_ok_and(|t| t == c));
        let ended = e
            .path()
            .symlink_metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < old);
        if ours || ended {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Blocks `SIGHUP`, `SIGINT` and `SIGTERM` in this (single-threaded) helper and returns a
/// signalfd that reads them.
fn relayed_signals() -> Result<nix::sys::signalfd::SignalFd, String> {
    use nix::sys::signal::{SigSet, Signal as S};
    let mut set = SigSet::empty();
    for s in [S::SIGHUP, S::SIGINT, S::SIGTERM] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    nix::sys::signalfd::SignalFd::with_flags(
        &set,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(|e| format!("signalfd: {e}"))
}

/// Passes the signals `signals` holds on to the command `pid` (still our unreaped child, so
/// the pid is its own): `SIGHUP` and `SIGINT` as they are, `SIGTERM` as `SIGKILL` — the
/// agent's last word when the operator is gone and the command did not end on the hang-up.
fn relay(signals: &nix::sys::signalfd::SignalFd, pid: rustix::process::Pid) {
    while let Ok(Some(info)) = signals.read_signal() {
        let signal = match Signal::from_named_raw(info.ssi_signo as i32) {
            Some(Signal::HUP) => Signal::HUP,
            Some(Signal::INT) => Signal::INT,
            _ => Signal::KILL,
        };
        let _ = kill_process(pid, signal);
    }
}

/// The process an exec runs, as `docker exec` makes it: the container's environment, user
/// (and groups), working directory, capabilities, no_new_privs and resource limits (`rlimits`:
/// its `ulimits` and open files). libcontainer's own exec runs as root in `/` with open files
/// 1024:1024 and no other limit.
fn exec_process(
    spec: &oci_spec::runtime::Spec,
    args: Vec<String>,
    terminal: bool,
) -> Result<oci_spec::runtime::Process, String> {
    use oci_spec::runtime::ProcessBuilder;
    let own = spec
        .process()
        .as_ref()
        .ok_or("the container's spec has no process")?;
    let mut env = own.env().clone().unwrap_or_default();
    // As `docker exec -t`: a terminal's programs need its type.
    if terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let mut b = ProcessBuilder::default()
        .args(args)
        .terminal(terminal)
        .env(env)
        .user(own.user().clone())
        .cwd(own.cwd().clone())
        .rlimits(own.rlimits().clone().unwrap_or_default());
    if let Some(caps) = own.capabilities() {
        b = b.capabilities(caps.clone());
    }
    if let Some(nnp) = own.no_new_privileges() {
        b = b.no_new_privileges(nnp);
    }
    b.build().map_err(|e| e.to_string())
}

/// A network probe run from inside a container's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection to this port on the container's loopback.
    Tcp(u16),
    /// An HTTP GET of this path on this port on the container's loopback; 2xx and 3xx pass.
    Http {
        /// Port.
        port: u16,
        /// Path, from `/`.
        path: String,
    },
}

impl Probe {
    /// `tcp:PORT` or `http:PORT/PATH` (the helper's argument).
    pub fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("'{p}' is not a port"))
        };
        match s.split_once(':') {
            Some(("tcp", p)) => Ok(Self::Tcp(port(p)?)),
            Some(("http", rest)) => {
                let (p, path) = rest.split_once('/').unwrap_or((rest, ""));
                Ok(Self::Http {
                    port: port(p)?,
                    path: format!("/{path}"),
                })
            }
            _ => Err(format!("probe '{s}': tcp:PORT or http:PORT/PATH")),
        }
    }

    /// The helper's argument for this probe.
    pub fn arg(&self) -> String {
        match self {
            Self::Tcp(p) => format!("tcp:{p}"),
            Self::Http { port, path } => format!("http:{port}{path}"),
        }
    }
}

/// Moves this (single-threaded) helper into container `id`'s network namespace: that of its
/// init, checked to be the recorded process (not a reused pid).
fn join_network(data_dir: &Path, id: &str) -> Result<(), String> {
    let state: super::RuntimeState =
        fs::read(data_dir.join("containers").join(id).join("state.json"))
            .map_err(|e| format!("not started: {e}"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    let now = super::process::ProcessIdentity::of(state.init.pid)
        .map_err(|e| format!("not running: {e}"))?;
    if now != state.init {
        return Err("not running".into());
    }
    let ns = fs::File::open(format!("/proc/{}/ns/net", state.init.pid))
        .map_err(|e| format!("its network namespace: {e}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("joining its network namespace: {e}"))?;
    Ok(())
}

/// Runs `probe` in container `id`'s network namespace; 0 when it passes, 1 when it fails,
/// [`CANNOT_RUN`] when it cannot be tried.
pub fn probe_main(data_dir: &Path, id: &str, probe: &str, timeout: Duration) -> i32 {
    match run_probe(data_dir, id, probe, timeout) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "probe in {id}: {e}");
            CANNOT_RUN
        }
    }
}

fn run_probe(data_dir: &Path, id: &str, probe: &str, timeout: Duration) -> Result<bool, String> {
    use std::io::{Read, Write};
    if !super::is_id(id) {
        return Err(format!("invalid container id '{id}'"));
    }
    let probe = Probe::parse(probe)?;
    join_network(data_dir, id)?;
    let port = match &probe {
        Probe::Tcp(p) | Probe::Http { port: p, .. } => *p,
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return Ok(false);
    };
    let Probe::Http { path, .. } = probe else {
        return Ok(true);
    };
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: flotilla-health\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return Ok(false);
    }
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match conn.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    // "HTTP/1.x NNN"
    let status = std::str::from_utf8(&head[..got])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    Ok(status.is_some_and(|c| (200..400).contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, SpecBuilder, UserBuilder,
    };

    #[test]
    fn an_exec_gets_the_containers_user_directory_limits_environment_and_capabilities() {
        let limit = |typ, soft: u64, hard: u64| {
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .expect("rlimit")
        };
        let limits = vec![
            limit(PosixRlimitType::RlimitNofile, 100, 200),
            limit(PosixRlimitType::RlimitNproc, 50, 50),
        ];
        let own = ProcessBuilder::default()
            .args(vec!["sleep".to_string(), "600".to_string()])
            .env(vec!["PATH=/bin".to_string(), "A=1".to_string()])
            .cwd("/srv")
            .user(
                UserBuilder::default()
                    .uid(65534u32)
                    .gid(65534u32)
                    .build()
                    .expect("user"),
            )
            .no_new_privileges(true)
            .rlimits(limits.clone())
            .build()
            .expect("process");
        let spec = SpecBuilder::default()
            .process(own.clone())
            .build()
            .expect("spec");
        let p = exec_process(
            &spec,
            vec!["sh".into(), "-c".into(), "ulimit -n".into()],
            false,
        )
        .expect("exec process");
        assert_eq!(
            p.args().as_deref(),
            Some(&["sh".to_string(), "-c".into(), "ulimit -n".into()][..])
        );
        assert_eq!(p.rlimits().as_deref(), Some(&limits[..]));
        assert_eq!(p.env(), own.env());
        assert_eq!(p.capabilities(), own.capabilities());
        assert_eq!(p.no_new_privileges(), Some(true));
        // As the container's own process, not as libcontainer's exec: root, in /.
        assert_eq!((p.user().uid(), p.user().gid()), (65534, 65534));
        assert_eq!(p.cwd(), &std::path::PathBuf::from("/srv"));
    }
}
