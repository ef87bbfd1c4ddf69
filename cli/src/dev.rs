//! `flotilla dev`: a whole cluster on this machine, in the foreground. It runs the real
//! `orchestratord` and `nodeagent` (found next to this binary), enrolls the local node through
//! the same token flow a real node uses, imports a demo image built from the host's static
//! busybox, runs a demo task and says what to type next. Ctrl-C (or a closed terminal, or
//! SIGTERM) drains the node — its tasks are stopped and their containers removed, and no service
//! replaces them — then stops the agent and the control plane. The daemons run in their own
//! process group, so the terminal's signals reach only `flotilla dev`, which stops them in that
//! order. The data directory is kept: running it again reuses the cluster and takes the node
//! back into service.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::count;
use flotilla_api::ops::{TaskRun, TokenCreate};
use flotilla_certs::credential::Credential;
use flotilla_client::Client;

/// Name of the demo image in the node's store.
const DEMO_IMAGE: &str = "demo/busybox:latest";

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

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
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

/// Prints a line for the person at the terminal; a terminal that went away (hang-up) is no
/// reason to stop shutting down.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Ctrl-C, a closed terminal (SIGHUP) or SIGTERM, caught from the start so that none ever
/// leaves half a cluster behind.
struct Interrupt {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Interrupt {
    fn install() -> Result<std::sync::Arc<Self>> {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers are in place once these return.
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let me = std::sync::Arc::new(Self {
            flag: false.into(),
            notify: tokio::sync::Notify::new(),
        });
        let m = me.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            m.flag.store(true, std::sync::atomic::Ordering::SeqCst);
            m.notify.notify_waiters();
        });
        Ok(me)
    }

    fn check(&self) -> Result<()> {
        if self.flag.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

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
    /// drained, so no service replaces the tasks meanwhile; what the agent could not stop is
    /// removed on the node directly once it is stopped.
    async fn shutdown(&mut self, node_cmd: &dyn Fn(&[&str]) -> Command) -> Result<()> {
        let mut drained = Err(anyhow::anyhow!("the node agent was not running"));
        if let (Some(api), Some(node), Some(agent)) = (&self.api, &self.node_id, &mut self.agent) {
            if agent.check().is_ok() {
                drained = drain(api, node, node_cmd).await;
            }
        }
        if let Some(a) = &mut self.agent {
            a.stop(Duration::from_secs(10));
        }
        if let Some(c) = &mut self.cp {
            c.stop(Duration::from_secs(10));
        }
        if self.agent.is_none() {
            return Ok(());
        }
        match drained {
            Ok(()) => Ok(()),
            Err(e) => {
                say!("{e:#}; removing what is left on the node");
                remove_left(node_cmd)
            }
        }
    }
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs, config: Option<PathBuf>) -> Result<()> {
    if !is_root() {
        bail!("flotilla dev runs containers (namespaces, mounts, cgroups): run it as root");
    }
    let interrupt = Interrupt::install()?;
    let nodeagent = sibling("nodeagent")?;
    let node_dir = args.data_dir.join("node");
    let node_cmd = |extra: &[&str]| {
        let mut c = Command::new(&nodeagent);
        c.arg("--data-dir")
            .arg(&node_dir)
            .arg("--cgroup-parent")
            .arg(&args.cgroup_parent)
            .args(extra);
        c
    };
    let mut up = Running::default();
    let failure = match start(&args, config, &interrupt, &mut up, &node_cmd).await {
        // Until Ctrl-C, SIGTERM, or a daemon dying.
        Ok(()) => loop {
            tokio::select! {
                _ = interrupt.notify.notified() => break None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if interrupt.check().is_err() {
                        break None;
                    }
                    if let Err(e) = up.check() {
                        break Some(e);
                    }
                }
            }
        },
        Err(e) if interrupt.check().is_err() => {
            say!("interrupted while starting ({e:#})");
            None
        }
        Err(e) => Some(e),
    };
    say!("stopping: tasks, then the node agent, then the control plane");
    let stopped = up.shutdown(&node_cmd).await;
    match (failure, stopped) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => {
            say!("stopped; no container left running");
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
    node_cmd: &dyn Fn(&[&str]) -> Command,
) -> Result<()> {
    let orchestratord = sibling("orchestratord")?;
    let nodeagent = sibling("nodeagent")?;
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cp_dir, node_dir, admin) = (dir.join("cp"), dir.join("node"), dir.join("admin"));
    let listen = format!("127.0.0.1:{}", args.port);
    let started = Instant::now();

    // The control plane: initialized once, then run.
    if !cp_dir.join(flotilla_certs::CA_CERT_FILE).exists() {
        let out = Command::new(&orchestratord)
            .arg("--data-dir")
            .arg(&cp_dir)
            .args(["init", "--cluster", "dev", "--port", &args.port.to_string()])
            .arg("--admin-config")
            .arg(&admin)
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
    cmd.arg("--data-dir")
        .arg(&cp_dir)
        .args(["run", "--listen", &listen]);
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
        let out = Command::new(&nodeagent)
            .arg("--data-dir")
            .arg(&node_dir)
            .args(["join", &listen, "--token", &t.token])
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
    let mut agent_cmd = node_cmd(&["run"]);
    agent_cmd.env("NODEAGENT_LOG", "info");
    up.agent = Some(Daemon::spawn(
        "nodeagent",
        agent_cmd,
        dir.join("nodeagent.log"),
    )?);
    up.node_id = Some(node_id.clone());

    // The demo image, built from the host's busybox-static, once.
    let have = node_cmd(&["ctr", "image", "inspect", DEMO_IMAGE]).output()?;
    if !have.status.success() {
        let out = node_cmd(&["ctr", "image", "import-busybox", "--name", DEMO_IMAGE]).output()?;
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

    let flag = match operator_config(&admin, config)? {
        Some(d) => format!(" --config {}", d.display()),
        None => String::new(),
    };
    let me = invocation();
    say!(
        "flotilla dev: control plane on {listen}, node {node_id} READY, demo task {demo} RUNNING ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    say!(
        "data in {} (logs: orchestratord.log, nodeagent.log)",
        dir.display()
    );
    say!("next, in another terminal:");
    say!("  {me}{flag} task ls");
    say!("  {me}{flag} logs {demo} -f");
    say!("  {me}{flag} node ls");
    say!("  {me}{flag} taskdef register my-task.json && {me}{flag} task run my-task");
    say!("Ctrl-C stops the cluster and its containers; the data stays for the next run.");
    Ok(())
}

/// The containers on the node (`nodeagent ctr ps -a -q`).
fn containers(node_cmd: &dyn Fn(&[&str]) -> Command) -> Result<Vec<String>> {
    let out = node_cmd(&["ctr", "ps", "-a", "-q"]).output()?;
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

/// Drains the node (its tasks stopped, nothing placed on it, so no service replaces them) and
/// waits until its containers are gone.
async fn drain(api: &Client, node_id: &str, node_cmd: &dyn Fn(&[&str]) -> Command) -> Result<()> {
    api.drain_node(node_id).await.context("draining the node")?;
    let start = Instant::now();
    loop {
        let left = containers(node_cmd)?;
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} still on the node after 60 s",
                count(left.len(), "container")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the agent stopped: removes the node's containers and task networks directly.
fn remove_left(node_cmd: &dyn Fn(&[&str]) -> Command) -> Result<()> {
    let left = containers(node_cmd)?;
    if !left.is_empty() {
        let mut args = vec!["ctr", "rm", "-f"];
        args.extend(left.iter().map(String::as_str));
        let out = node_cmd(&args).output()?;
        if !out.status.success() {
            bail!(
                "removing {}: {}; see `nodeagent ctr ps -a`",
                count(left.len(), "container"),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let out = node_cmd(&["ctr", "network", "prune"]).output()?;
    if !out.status.success() {
        bail!(
            "removing the task networks: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    say!(
        "removed {} on the node directly",
        count(left.len(), "container")
    );
    Ok(())
}
