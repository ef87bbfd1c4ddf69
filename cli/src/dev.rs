//! `flotilla dev`: a whole cluster on this machine, in the foreground. It runs the real
//! `orchestratord` and `nodeagent` (found next to this binary), enrolls the local node through
//! the same token flow a real node uses, imports a demo image built from the host's static
//! busybox, runs a demo task and says what to type next. Ctrl-C (or a closed terminal, or
//! SIGTERM) drains the node — its tasks are stopped and their containers removed, and no service
//! replaces them — then stops the agent and the control plane. The containers get as long as
//! their `stopTimeout`s take (bounded: see [`stop_grace`]); a second Ctrl-C (or SIGTERM) kills
//! them at once. Whatever happens, what the agent did not remove is removed on the node directly, and
//! the last line says that nothing is left or exactly what is and how to remove it. The daemons
//! and every command it runs are in process groups of their own, so the terminal's signals reach
//! only `flotilla dev`, which stops them in that order, and no cleanup step is cut short. The
//! data directory is kept: running it again reuses the cluster and takes the node back into
//! service.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::count;
use flotilla_api::lockfile::Lock;
use flotilla_api::ops::{TaskRun, TokenCreate};
use flotilla_certs::credential::Credential;
use flotilla_client::Client;

/// Name of the demo image in the node's store.
const DEMO_IMAGE: &str = "demo/busybox:latest";
/// The dev cluster's scaling period and heartbeat interval, seconds: a third of the defaults,
/// so that auto scaling answers within a demo (out after 30 s of load, in after 150 s idle).
const DEV_SECS: u64 = 10;

/// The demo task definition: a service that says hello every 5 s.
const DEMO_TASKDEF: &str = r#"{
  "family": "demo",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "hello",
    "image": "demo/busybox:latest",
    "memory": 16,
    "stopTimeout": 2,
    "restartPolicy": {"enabled": true},
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do echo \"hello from Flotilla task container $(hostname) at $(date -u +%T)\"; sleep 5 & wait; done"]
  }]
}"#;

/// Settings of `flotilla dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the cluster lives (control plane, node, admin credential, logs).
    #[arg(long, default_value = "/var/lib/flotilla/dev")]
    data_dir: PathBuf,
    /// Port of the control plane on 127.0.0.1 (UDP for the agent, TCP for the CLI).
    #[arg(long, default_value_t = flotilla_api::DEFAULT_PORT)]
    port: u16,
    /// cgroup parent of the node's containers.
    #[arg(long, default_value = "flotilla-dev")]
    cgroup_parent: String,
}

/// A daemon started by `flotilla dev`.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        // Their own process group: a terminal's Ctrl-C or hang-up signals the foreground group,
        // and the daemons must outlive `flotilla dev`'s shutdown, not race it.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child, log })
    }

    /// Fails with the end of its log if it exited.
    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`, without holding up the runtime (a signal that
    /// comes meanwhile is answered at once).
    async fn stop(&mut self, grace: Duration) {
        if !self.terminate() {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM; false when it had already exited.
    fn terminate(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return false;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        true
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.terminate() {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `name` next to this binary (as the workspace builds them), else from `PATH`.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the flotilla binary")?;
    if let Some(p) = exe.parent().map(|d| d.join(name)).filter(|p| p.exists()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} is neither next to {} nor on PATH", exe.display()))
}

/// How to call this binary: `flotilla` when that is what PATH finds, else its full path.
fn invocation() -> String {
    let exe = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("flotilla"))
        .find(|p| p.exists())
        .and_then(|p| p.canonicalize().ok());
    match exe {
        Some(e) if on_path.as_ref() != Some(&e) => e.display().to_string(),
        _ => "flotilla".to_string(),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().nth(1))
            == Some("0")
    })
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interrupt: &Interrupt,
    up: &mut Running,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        interrupt.check()?;
        up.check()?;
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin credential directory the printed commands should use: the default one when it is
/// free (the dev credential is copied there) or already this cluster's; otherwise the dev one,
/// named with `--config`.
fn operator_config(dev_admin: &Path, given: Option<PathBuf>) -> Result<Option<PathBuf>> {
    if given.is_some() {
        return Ok(given);
    }
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(Some(dev_admin.to_path_buf()));
    };
    let default = PathBuf::from(home).join(".config/flotilla");
    let ours = Credential::load(dev_admin)?;
    match Credential::load(&default) {
        Ok(c) if c.ca_pem == ours.ca_pem && c.server == ours.server => Ok(None),
        Ok(_) => Ok(Some(dev_admin.to_path_buf())),
        Err(_) if !default.join("credential.json").exists() => {
            ours.write(&default)
                .with_context(|| format!("writing {}", default.display()))?;
            Ok(None)
        }
        Err(_) => Ok(Some(dev_admin.to_path_buf())),
    }
}

/// Prints a line for the person at the terminal. When standard output is gone — a pipe whose
/// reader died with the same Ctrl-C (`flotilla dev | tee log`) — the line goes to standard
/// error (still the terminal); a terminal that went away (hang-up) is no reason to stop
/// shutting down.
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        to_dev_log(&line);
        if writeln!(std::io::stdout(), "{line}").is_err() {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }};
}

/// `<data-dir>/dev.log`, once the data directory is this run's: every line `flotilla dev`
/// says, with its time — what a stop did is there also when no terminal was left to show it
/// (a closed terminal, a pipe's reader gone).
static DEV_LOG: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Name of that log in the data directory.
const DEV_LOG_FILE: &str = "dev.log";

/// Appends `line` to [`DEV_LOG`] (nothing before it is open; a failed write is no reason to
/// stop anything).
fn to_dev_log(line: &str) {
    if let Some(f) = DEV_LOG.get() {
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        for l in line.lines() {
            let _ = writeln!(f, "{now} {l}");
        }
    }
}

/// Ctrl-C, a closed terminal (SIGHUP) or SIGTERM, caught from the start so that none ever
/// leaves half a cluster behind; a second Ctrl-C or SIGTERM asks to hurry: containers are
/// killed instead of waited for. A hang-up never hurries (one closed terminal can deliver it
/// more than once: to the job, from the shell, when the session leader exits).
struct Interrupt {
    /// Signals received that ask to stop.
    received: AtomicUsize,
    /// Of them, Ctrl-C and SIGTERM (a second one asks to hurry; a hang-up never does).
    asked: AtomicUsize,
    /// A second Ctrl-C or SIGTERM came.
    hurry: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Interrupt {
    fn install() -> Result<std::sync::Arc<Self>> {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers are in place once these return, and stay: no signal ends this process
        // before it has stopped what it started.
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let me = std::sync::Arc::new(Self {
            received: 0.into(),
            asked: 0.into(),
            hurry: false.into(),
            notify: tokio::sync::Notify::new(),
        });
        let m = me.clone();
        tokio::spawn(async move {
            let mut last = None::<Instant>;
            loop {
                let again = tokio::select! {
                    _ = int.recv() => Some("Ctrl-C"),
                    _ = term.recv() => Some("SIGTERM"),
                    _ = hup.recv() => None,
                };
                // One request can come twice: timeout(1) and other supervisors signal both
                // the process and its process group. A person's second Ctrl-C comes later.
                if last.is_some_and(|t| t.elapsed() < SAME_REQUEST) {
                    continue;
                }
                last = Some(Instant::now());
                m.received.fetch_add(1, Ordering::SeqCst);
                // Only a Ctrl-C or SIGTERM after another asks to hurry: a closed terminal is
                // often followed by its session's SIGTERM (logind), still the first request.
                let earlier = match again {
                    Some(_) => m.asked.fetch_add(1, Ordering::SeqCst),
                    None => 0,
                };
                if let (Some(what), true) = (again, earlier > 0) {
                    if m.hurry.swap(true, Ordering::SeqCst) {
                        say!("{what} again: already stopping as fast as it can; it ends by itself, leaving nothing half-removed");
                    } else {
                        say!("{what} again: killing the containers now instead of waiting for them to stop");
                    }
                }
                m.notify.notify_waiters();
            }
        });
        Ok(me)
    }

    fn interrupted(&self) -> bool {
        self.received.load(Ordering::SeqCst) > 0
    }

    fn hurried(&self) -> bool {
        self.hurry.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        if self.interrupted() {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// Signals closer together than this are one request to stop, not a second one to hurry.
const SAME_REQUEST: Duration = Duration::from_millis(100);

/// Starting stopped because a signal asked to stop.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// What `flotilla dev` started, stopped in reverse order whatever happens.
#[derive(Default)]
struct Running {
    cp: Option<Daemon>,
    agent: Option<Daemon>,
    api: Option<Client>,
    node_id: Option<String>,
}

impl Running {
    fn check(&mut self) -> Result<()> {
        for d in [&mut self.cp, &mut self.agent].into_iter().flatten() {
            d.check()?;
        }
        Ok(())
    }

    /// Tasks (their containers removed), then the agent, then the control plane. The node is
    /// drained, so no service replaces the tasks meanwhile; what the agent could not stop in
    /// time (or at all) is removed on the node directly once it is stopped.
    async fn shutdown(&mut self, interrupt: &Interrupt, node: &NodeCommands<'_>) -> Result<()> {
        let mut drain_failed = None;
        if let (Some(api), Some(node_id), Some(agent), Some(cp)) =
            (&self.api, &self.node_id, &mut self.agent, &mut self.cp)
        {
            let drained = match agent.check() {
                Ok(()) => drain(api, node_id, agent, cp, interrupt, node).await,
                Err(e) => Err(e),
            };
            if let Err(e) = drained {
                say!("{e:#}");
                drain_failed = Some(e);
            }
        }
        let grace = if interrupt.hurried() { 2 } else { 10 };
        if let Some(a) = &mut self.agent {
            say!("stopping the node agent");
            a.stop(Duration::from_secs(grace)).await;
        }
        if let Some(c) = &mut self.cp {
            say!("stopping the control plane");
            c.stop(Duration::from_secs(grace)).await;
        }
        if self.agent.is_none() {
            return Ok(());
        }
        // Also after a clean drain: the agent may have been stopped before it removed the
        // last task's network, the bridge or the nftables table; and after a failed one, what
        // the agent did not stop is killed here.
        let removed = remove_left(node);
        // Also when the removal failed: say exactly what is left.
        let left = node.leftovers();
        if !left.is_empty() {
            let mut text = format!(
                "stopped, but {} {} left behind (each with the command that removes it):",
                count(left.len(), "thing"),
                if left.len() == 1 { "is" } else { "are" }
            );
            for l in &left {
                text.push_str("\n  ");
                text.push_str(l);
            }
            bail!("{text}");
        }
        removed?;
        // Nothing is left, but the tasks may not be recorded as they ended.
        if let Some(e) = drain_failed {
            bail!(
                "stopped and nothing is left running, but the stop did not go as it should: {e:#}"
            );
        }
        Ok(())
    }
}

/// The node's commands and where its things live, to stop it and check what is left.
struct NodeCommands<'a> {
    nodeagent: &'a Path,
    data_dir: &'a Path,
    cgroup_parent: &'a str,
}

/// The configuration files of the dev cluster's daemons, in its data directory: written
/// (comments only) when missing, and always passed with `--config`, so that a host's
/// `/etc/flotilla/*.toml` (a production node's metrics port, mirrors, bridge) never reaches
/// the dev cluster, and an operator has one place to give it settings.
const DAEMON_CONFIGS: [&str; 2] = ["orchestratord", "nodeagent"];

/// `<data-dir>/DAEMON.toml` ([`DAEMON_CONFIGS`]).
fn daemon_config(data_dir: &Path, daemon: &str) -> PathBuf {
    data_dir.join(format!("{daemon}.toml"))
}

/// Writes each of [`DAEMON_CONFIGS`] that is missing.
///
/// # Errors
/// A file that cannot be written, named.
fn write_daemon_configs(data_dir: &Path) -> Result<()> {
    for daemon in DAEMON_CONFIGS {
        let path = daemon_config(data_dir, daemon);
        if path.exists() {
            continue;
        }
        let text = format!(
            "# Settings of this `flotilla dev` cluster's {daemon}: the keys of\n\
             # /etc/flotilla/{daemon}.toml (`{daemon} --help` lists them). The host's\n\
             # /etc/flotilla/{daemon}.toml is not read for this cluster; flags that\n\
             # `flotilla dev` passes override what is here.\n"
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl NodeCommands<'_> {
    /// `nodeagent --data-dir … --cgroup-parent … ARGS`, in a process group of its own: a
    /// second Ctrl-C reaches `flotilla dev` only, never a removal half done.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.nodeagent);
        c.arg("--config")
            .arg(daemon_config(self.data_dir, "nodeagent"))
            .arg("--data-dir")
            .arg(self.data_dir.join("node"))
            .arg("--cgroup-parent")
            .arg(self.cgroup_parent)
            .args(args)
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    /// How a person types `nodeagent … ctr ARGS` for this node.
    fn typed(&self, args: &str) -> String {
        format!(
            "{} --config {} --data-dir {} --cgroup-parent {} ctr {args}",
            self.nodeagent.display(),
            daemon_config(self.data_dir, "nodeagent").display(),
            self.data_dir.join("node").display(),
            self.cgroup_parent
        )
    }

    /// What of the cluster is still there, each with how to remove it: processes naming the
    /// data directory or in the node's cgroup parent (daemons, shims, containers' processes),
    /// containers, and mounts below the data directory.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let data = self.data_dir.display().to_string();
        let cgroup = format!(":/{}/", self.cgroup_parent.trim_matches('/'));
        let me = std::process::id().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            // Ours, not a person's `tail -f` of a log in the data directory, nor their
            // `flotilla --config <data-dir>/admin service ls -w` watching the cluster.
            let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
            let ours = exe.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["orchestratord", "nodeagent", "flotilla-shim"].contains(&n)
                    || (n == "flotilla" && cmd.split(' ').any(|a| a == "dev"))
            });
            if (ours && cmd.contains(&data)) || cg.contains(&cgroup) {
                out.push(format!("process {pid} ({}): kill -9 {pid}", cmd.trim_end()));
            }
        }
        match containers(self) {
            Ok(ids) if !ids.is_empty() => out.push(format!(
                "{}: {}",
                count(ids.len(), "container"),
                self.typed(&format!("rm -f {}", ids.join(" ")))
            )),
            Ok(_) => {}
            Err(e) => out.push(format!("{e:#}")),
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in info.lines().filter_map(|l| l.split_whitespace().nth(4)) {
            if m.starts_with(&data) {
                out.push(format!("mount {m}: umount -l {m}"));
            }
        }
        out
    }
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
/// Where the host's one dev cluster is claimed (tmpfs: gone at boot with what it guarded).
const HOST_LOCK: &str = "/run/flotilla/dev.lock";

/// Takes `dir` (made if missing) for this process: an exclusive lock on `dir/dev.lock`, held
/// until the returned file is closed (also when the process dies), with this process's id in
/// it. Refused, naming the holder, while another `flotilla dev` holds it.
fn own_data_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    hold(&dir.join("dev.lock"), &std::process::id().to_string())?.map_err(|holder| {
        let holder = holder.map_or(String::new(), |pid| format!(" (pid {pid})"));
        anyhow::anyhow!(
            "flotilla dev is already running on {}{holder}: use that cluster, or stop it first \
             (Ctrl-C in its terminal)",
            dir.display()
        )
    })
}

/// Takes the host for this process's dev cluster ([`HOST_LOCK`], holding its pid and data
/// directory). Refused, naming the holder, while another `flotilla dev` runs on the host: the
/// node of each would share the host's task bridge, its nftables table `ip flotilla` and the
/// bridge subnets, and one stopping would remove what the other's tasks use.
fn own_host(data_dir: &Path) -> Result<std::fs::File> {
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let me = format!("pid {}, data dir {}", std::process::id(), dir.display());
    hold(Path::new(HOST_LOCK), &me)?.map_err(|holder| {
        let holder = holder.map_or(String::new(), |h| format!(" ({h})"));
        anyhow::anyhow!(
            "flotilla dev is already running on this host{holder}: use that cluster, or stop it \
             first (Ctrl-C in its terminal). One dev cluster per host: two would share the task \
             bridge, the nftables table and the bridge subnets"
        )
    })
}

/// The lock on `path` for this process, with `me` written in it; `Ok(Err(holder))` with the
/// holder's line (when it wrote a printable one) while another process holds it.
fn hold(path: &Path, me: &str) -> Result<std::result::Result<std::fs::File, Option<String>>> {
    Ok(match flotilla_api::lockfile::try_lock(path, me)? {
        Lock::Taken(file) => Ok(file),
        Lock::Busy { holder } => Err(holder),
    })
}

pub async fn run(args: DevArgs, config: Option<PathBuf>) -> Result<()> {
    if !is_root() {
        bail!("flotilla dev runs containers (namespaces, mounts, cgroups): run it as root");
    }
    // One `flotilla dev` per host, refused before it makes anything; and per data directory
    // (a second one would share the first one's admin credential and stores, and its stopping
    // would drain the first one's node), also where `/run` is not the host's.
    let _host = own_host(&args.data_dir)?;
    let _owner = own_data_dir(&args.data_dir)?;
    let log = args.data_dir.join(DEV_LOG_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let _ = DEV_LOG.set(std::sync::Mutex::new(file));
    let interrupt = Interrupt::install()?;
    write_daemon_configs(&args.data_dir)?;
    let nodeagent = sibling("nodeagent")?;
    let node = NodeCommands {
        nodeagent: &nodeagent,
        data_dir: &args.data_dir,
        cgroup_parent: &args.cgroup_parent,
    };
    let mut up = Running::default();
    let failure = match start(&args, config, &interrupt, &mut up, &node).await {
        // Until Ctrl-C, SIGTERM, or a daemon dying.
        Ok(()) => loop {
            tokio::select! {
                _ = interrupt.notify.notified() => break None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if interrupt.interrupted() {
                        break None;
                    }
                    if let Err(e) = up.check() {
                        break Some(e);
                    }
                }
            }
        },
        Err(e) if e.is::<Interrupted>() => {
            say!("interrupted while starting");
            None
        }
        Err(e) if interrupt.interrupted() => {
            say!("interrupted while starting ({e:#})");
            None
        }
        Err(e) => Some(e),
    };
    say!("stopping: the node's tasks, then the node agent, then the control plane (Ctrl-C again to kill the containers at once)");
    let stopped = up.shutdown(&interrupt, &node).await;
    let outcome = match (failure, stopped) {
        (Some(e), Err(left)) => Err(e.context(format!("{left:#}"))),
        (Some(e), Ok(())) => Err(e),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(()),
    };
    match outcome {
        Err(e) => {
            to_dev_log(&format!(
                "error: {}",
                flotilla_api::errors::chain(e.as_ref())
            ));
            Err(e)
        }
        Ok(()) => {
            say!(
                "stopped: nothing of the dev cluster is left running (no process, container, mount or task network); data kept in {} for the next run",
                args.data_dir.display()
            );
            Ok(())
        }
    }
}

/// Brings the cluster up and the demo task to RUNNING, recording what runs in `up`.
async fn start(
    args: &DevArgs,
    config: Option<PathBuf>,
    interrupt: &Interrupt,
    up: &mut Running,
    node: &NodeCommands<'_>,
) -> Result<()> {
    let orchestratord = sibling("orchestratord")?;
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cp_dir, node_dir, admin) = (dir.join("cp"), dir.join("node"), dir.join("admin"));
    let cp_config = daemon_config(dir, "orchestratord");
    let listen = format!("127.0.0.1:{}", args.port);
    let started = Instant::now();

    // The control plane: initialized once, then run.
    if !cp_dir.join(flotilla_certs::CA_CERT_FILE).exists() {
        let out = Command::new(&orchestratord)
            .arg("--config")
            .arg(&cp_config)
            .arg("--data-dir")
            .arg(&cp_dir)
            .args(["init", "--cluster", "dev", "--port", &args.port.to_string()])
            .arg("--admin-config")
            .arg(&admin)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .context("running orchestratord init")?;
        if !out.status.success() {
            bail!(
                "orchestratord init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let mut cmd = Command::new(&orchestratord);
    cmd.arg("--config")
        .arg(&cp_config)
        .arg("--data-dir")
        .arg(&cp_dir)
        .args(["run", "--listen", &listen])
        // One machine, a demo: auto scaling decides every 10 s, not 30.
        .args(["--scaling-period", &DEV_SECS.to_string()]);
    up.cp = Some(Daemon::spawn(
        "orchestratord",
        cmd,
        dir.join("orchestratord.log"),
    )?);
    let api = wait_for(
        "the control plane",
        Duration::from_secs(15),
        interrupt,
        up,
        async || {
            let api = Client::open(&admin).await.ok()?;
            api.tokens().await.ok()?;
            Some(api)
        },
    )
    .await?;
    up.api = Some(api.clone());

    // The node: enrolled once with a token, like any node.
    let identity = node_dir.join("identity");
    if !identity.join("credential.json").exists() {
        let t = api
            .create_token(&TokenCreate {
                ttl_secs: Some(600),
                uses: Some(1),
                labels: [("dev".to_string(), "true".to_string())].into(),
            })
            .await?;
        let out = node
            .cmd(&["join", &listen, "--token", &t.token])
            .output()
            .context("running nodeagent join")?;
        if !out.status.success() {
            bail!(
                "nodeagent join: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let node_id = Credential::load(&identity)?.name;
    // Heartbeats (usage for `task inspect` and auto scaling) every 10 s, not 30.
    let mut agent_cmd = node.cmd(&["run", "--heartbeat", &DEV_SECS.to_string()]);
    // What the agent does, without libcgroups' per-start notes on controllers this kernel
    // lacks (the agent's own default keeps them out too).
    agent_cmd.env("NODEAGENT_LOG", "info,libcgroups=error,libcontainer=error");
    up.agent = Some(Daemon::spawn(
        "nodeagent",
        agent_cmd,
        dir.join("nodeagent.log"),
    )?);
    up.node_id = Some(node_id.clone());

    // The demo image, built from the host's busybox-static, once.
    let have = node
        .cmd(&["ctr", "image", "inspect", DEMO_IMAGE])
        .output()?;
    if !have.status.success() {
        let out = node
            .cmd(&["ctr", "image", "import-busybox", "--name", DEMO_IMAGE])
            .output()?;
        if !out.status.success() {
            bail!(
                "importing the demo image: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    interrupt.check()?;
    match api.taskdef("demo").await {
        Ok(_) => {}
        Err(e) if e.status() == Some(404) => {
            api.register_taskdef(DEMO_TASKDEF.as_bytes()).await?;
        }
        Err(e) => return Err(e.into()),
    }
    let node = wait_for(
        "the node to connect",
        Duration::from_secs(30),
        interrupt,
        up,
        async || api.node(&node_id).await.ok().filter(|n| n.connected),
    )
    .await?;
    // The last run drained the node on its way out: it takes tasks again (its services'
    // tasks come back).
    if node.draining {
        api.activate_node(&node_id).await?;
    }
    let tasks = api.tasks().await?;
    let demo = match tasks.iter().find(|t| {
        t.task_definition.starts_with("demo:")
            && t.node.as_deref() == Some(node_id.as_str())
            && t.desired == flotilla_api::tasks::DesiredStatus::Running
            && t.state != flotilla_api::tasks::TaskState::Stopped
    }) {
        Some(t) => t.id.clone(),
        None => {
            let placed = api
                .run_task(&TaskRun {
                    node: Some(node_id.clone()),
                    ..TaskRun::new("demo")
                })
                .await?;
            placed
                .first()
                .map(|t| t.id.clone())
                .context("the control plane placed no task")?
        }
    };
    wait_for(
        "the demo task to run",
        Duration::from_secs(60),
        interrupt,
        up,
        async || {
            let t = api.task(&demo).await.ok()?;
            (t.state == flotilla_api::tasks::TaskState::Running).then_some(())
        },
    )
    .await?;

    let operator = operator_config(&admin, config)?;
    let flag = match &operator {
        Some(d) => format!(" --config {}", d.display()),
        None => String::new(),
    };
    let me = invocation();
    say!(
        "flotilla dev: control plane on {listen}, node {node_id} READY, demo task {demo} RUNNING ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    say!(
        "data in {} (logs: orchestratord.log, nodeagent.log, dev.log)",
        dir.display()
    );
    match &operator {
        Some(d) => say!("admin credential in {} (hence --config below)", d.display()),
        None => {
            say!("admin credential in ~/.config/flotilla (flotilla's default: no --config needed)")
        }
    }
    say!("next, in another terminal:");
    say!("  {me}{flag} task ls");
    say!("  {me}{flag} logs {demo} -f");
    say!("  {me}{flag} node ls");
    say!("  {me}{flag} taskdef register web.json && {me}{flag} task run web   (web.json: README, \"Your first task\")");
    say!("Ctrl-C (or closing this terminal) stops the cluster and removes its containers; a second Ctrl-C kills them without waiting; the data stays for the next run.");
    Ok(())
}

/// The containers on the node (`nodeagent ctr ps -a -q`).
fn containers(node: &NodeCommands) -> Result<Vec<String>> {
    let out = node.cmd(&["ctr", "ps", "-a", "-q"]).output()?;
    if !out.status.success() {
        bail!(
            "listing the node's containers: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Time the node's tasks get to stop: each task its containers' longest `stopTimeout`
/// (SIGTERM, then SIGKILL), one task after another as the node may stop them, plus 10 s for the
/// node to remove them; at most 5 minutes.
async fn stop_grace(api: &Client, node_id: &str) -> Duration {
    let Ok(tasks) = api.tasks().await else {
        return Duration::from_secs(u64::from(DEFAULT_STOP_TIMEOUT) + 10);
    };
    let mut total = 0u64;
    for t in tasks.iter().filter(|t| {
        t.node.as_deref() == Some(node_id) && t.state != flotilla_api::tasks::TaskState::Stopped
    }) {
        let longest = match api.taskdef(&t.task_definition).await {
            Ok(def) => def
                .task_definition
                .container_definitions
                .iter()
                .map(|c| c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT))
                .max()
                .unwrap_or(0),
            Err(_) => DEFAULT_STOP_TIMEOUT,
        };
        total += u64::from(longest);
    }
    Duration::from_secs((total + 10).min(300))
}

/// ECS's `stopTimeout` when a container sets none.
const DEFAULT_STOP_TIMEOUT: u32 = 30;

/// Drains the node (its tasks stopped, nothing placed on it, so no service replaces them) and
/// waits until its containers are gone and the control plane holds every task's last report
/// (STOPPED, with its containers' exit codes), so that what the next run shows is what
/// happened: at most [`stop_grace`]. Asked to hurry, it kills the containers' processes
/// (SIGKILL, as `docker kill` does) and still lets the agent record their exits, keep their
/// logs, remove them and report, for at most [`HURRIED_GRACE`]. What is still there then is
/// left to [`remove_left`]; an error means the drain itself failed.
async fn drain(
    api: &Client,
    node_id: &str,
    agent: &mut Daemon,
    cp: &mut Daemon,
    interrupt: &Interrupt,
    node: &NodeCommands<'_>,
) -> Result<()> {
    api.drain_node(node_id).await.context("draining the node")?;
    let grace = stop_grace(api, node_id).await;
    let start = Instant::now();
    let mut hurried = None::<Instant>;
    let mut told = None::<Instant>;
    loop {
        let left = containers(node)?;
        let unreported = unreported_tasks(api, node_id).await;
        if left.is_empty() && unreported == Some(0) {
            return Ok(());
        }
        // Nothing would stop them any more.
        agent.check()?;
        // Nothing would record how they ended.
        cp.check()
            .context("the tasks' last reports could not be recorded")?;
        let waiting_for = match (left.is_empty(), unreported) {
            (true, Some(n)) => format!("the node to report {} stopped", count(n, "task")),
            (true, None) => "the control plane to answer".to_string(),
            (false, _) => format!("{} to stop", count(left.len(), "container")),
        };
        if interrupt.hurried() {
            let since = *hurried.get_or_insert_with(Instant::now);
            if since.elapsed() > HURRIED_GRACE {
                say!(
                    "still waiting for {waiting_for} {} s after the second signal: going on without it",
                    HURRIED_GRACE.as_secs()
                );
                return Ok(());
            }
            kill_running(node);
        } else if start.elapsed() > grace {
            say!(
                "still waiting for {waiting_for} after {} s: going on without it",
                grace.as_secs()
            );
            return Ok(());
        } else if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            let more = grace.saturating_sub(start.elapsed()).as_secs();
            let hint = if left.is_empty() {
                String::new()
            } else {
                format!(
                    "; Ctrl-C again to kill {} now",
                    if left.len() == 1 { "it" } else { "them" }
                )
            };
            say!("waiting for {waiting_for} (at most {more} s more{hint})");
            told = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long, after a second Ctrl-C, the agent gets to record the killed containers' exits,
/// remove them and report their tasks before they are removed behind its back.
const HURRIED_GRACE: Duration = Duration::from_secs(10);

/// How many of the node's tasks the control plane does not have as STOPPED yet; `None` when
/// it did not answer.
async fn unreported_tasks(api: &Client, node_id: &str) -> Option<usize> {
    let tasks = api.tasks().await.ok()?;
    Some(
        tasks
            .iter()
            .filter(|t| {
                t.node.as_deref() == Some(node_id)
                    && t.state != flotilla_api::tasks::TaskState::Stopped
            })
            .count(),
    )
}

/// Sends SIGKILL to the node's running containers (`nodeagent ctr kill -s KILL`) with the
/// agent running, which sees them exit as it sees any container exit. A container that ends
/// meanwhile is no error: the next round sees what is left.
fn kill_running(node: &NodeCommands) {
    let Ok(out) = node.cmd(&["ctr", "ps", "-q"]).output() else {
        return;
    };
    let running: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if running.is_empty() {
        return;
    }
    let mut args = vec!["ctr", "kill", "-s", "KILL"];
    args.extend(running.iter().map(String::as_str));
    let _ = node
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// With the agent stopped: kills and removes the node's containers and removes the task
/// networks (namespaces, veths, the bridge, the nftables table) directly; the networks also when
/// a container could not be removed.
fn remove_left(node: &NodeCommands) -> Result<()> {
    let left = containers(node)?;
    let mut removed = Ok(());
    if !left.is_empty() {
        say!("killing and removing {}", count(left.len(), "container"));
        let mut args = vec!["ctr", "rm", "-f"];
        args.extend(left.iter().map(String::as_str));
        let out = node.cmd(&args).output()?;
        if !out.status.success() {
            removed = Err(anyhow::anyhow!(
                "removing {}: {}",
                count(left.len(), "container"),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let out = node.cmd(&["ctr", "network", "prune"]).output()?;
    if !out.status.success() {
        bail!(
            "removing the task networks: {}; then run: {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            node.typed("network prune")
        );
    }
    removed
}
