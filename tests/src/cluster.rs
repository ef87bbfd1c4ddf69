//! A control plane for tests: `orchestratord init` + `run` on a loopback port, the admin
//! credential in a temporary directory, the typed operator API client on it, and agents joined
//! through the real binaries.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flotilla_api::ops::{NodeInfo, NodeState, TaskDefRegistered, TaskInfo, TaskRun};
use flotilla_api::service::{ServiceCreated, ServiceInfo};
use flotilla_client::blocking::Client;

/// A running `orchestratord`.
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    /// Its data directory.
    pub data: PathBuf,
    /// The admin credential directory.
    pub admin: PathBuf,
    /// Where the operator CLI reaches it (UDP and TCP).
    pub addr: SocketAddr,
    /// Where it listens.
    listen: SocketAddr,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, std::ffi::OsString)>,
    /// The operator API client, made on first use (so that a control plane made and dropped
    /// inside an async test never starts its runtime).
    api: OnceLock<Client>,
}

/// A loopback port free for both TCP and UDP right now.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(t) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = t.local_addr() else { continue };
        if UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free loopback port")
}

impl ControlPlane {
    /// Initializes and starts a control plane on loopback; `run_args` go to
    /// `orchestratord run`.
    pub fn start(run_args: &[&str]) -> Self {
        Self::start_listening(std::net::Ipv4Addr::LOCALHOST, run_args)
    }

    /// Like [`ControlPlane::start`], listening on `ip` (`0.0.0.0` to be reached from the
    /// hosts of a [`crate::netns::Lan`] as well as from loopback).
    pub fn start_listening(ip: std::net::Ipv4Addr, run_args: &[&str]) -> Self {
        Self::start_with(ip, run_args, &[])
    }

    /// Like [`ControlPlane::start_listening`], `orchestratord run` given extra environment
    /// variables.
    pub fn start_with(
        ip: std::net::Ipv4Addr,
        run_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("cp");
        let admin = dir.path().join("admin");
        let port = free_port();
        let out = Command::new(crate::bin("orchestratord"))
            .arg("--data-dir")
            .arg(&data)
            .args(["init", "--port", &port.to_string(), "--admin-config"])
            .arg(&admin)
            .output()
            .expect("orchestratord init");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cp = Self {
            data,
            admin,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            listen: SocketAddr::from((ip, port)),
            child: None,
            extra_args: run_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
            api: OnceLock::new(),
            dir,
        };
        cp.spawn();
        cp
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("orchestratord.log"))
            .expect("log");
        let child = Command::new(crate::bin("orchestratord"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(["run", "--listen", &self.listen.to_string()])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("orchestratord run");
        self.child = Some(child);
        let start = Instant::now();
        while !self.flotilla(&["token", "ls"]).status.success() {
            assert!(
                start.elapsed() < crate::patient(Duration::from_secs(10)),
                "control plane did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pid of `orchestratord run`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while `orchestratord run` is running (it has not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops `orchestratord run` with SIGKILL (a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for node `id`'s first report of its resources. Its first heartbeat follows its
    /// session at once, but until the control plane has it the node takes no task (a node that
    /// never reported has no room), and on a busy machine that is a while.
    pub fn wait_reported(&self, id: &str) {
        crate::wait(
            &format!("node {id}'s first report of its resources"),
            Duration::from_secs(30),
            || {
                self.nodes()
                    .iter()
                    .any(|n| n.id == id && n.resources.is_some())
            },
        );
    }

    /// Starts `orchestratord run` again (after [`ControlPlane::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Scratch directory of the test.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The control plane's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("orchestratord.log")).unwrap_or_default()
    }

    /// Waits until the control plane's log contains `what`. What the control plane logs about a
    /// node's message may land after the node's own log line about it: assert on it through this,
    /// not on [`ControlPlane::log`] read once.
    pub fn wait_log(&self, what: &str, timeout: Duration) {
        let timeout = crate::patient(timeout);
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(
                start.elapsed() < timeout,
                "the control plane's log never showed '{what}':\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `flotilla ARGS` with the admin credential.
    pub fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(crate::bin("flotilla"))
            .arg("--config")
            .arg(&self.admin)
            .args(args)
            .output()
            .expect("flotilla")
    }

    /// Runs `flotilla ARGS`, which must succeed; returns stdout.
    pub fn flotilla_ok(&self, args: &[&str]) -> String {
        let o = self.flotilla(args);
        assert!(
            o.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `flotilla ARGS -o json`, which must succeed; its output decoded.
    pub fn flotilla_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.flotilla_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("flotilla {a:?}: {e}:\n{out}"))
    }

    /// A new join token.
    pub fn token(&self, args: &[&str]) -> String {
        let mut a = vec!["token", "create"];
        a.extend_from_slice(args);
        self.flotilla_ok(&a).trim().to_string()
    }

    /// The operator API, typed, with the admin credential (dialling [`ControlPlane::addr`]).
    /// Do not use it from inside an async runtime.
    pub fn api(&self) -> &Client {
        self.api.get_or_init(|| {
            let cred = flotilla_certs::credential::Credential::load(&self.admin)
                .expect("admin credential");
            Client::at(&cred, self.addr).expect("operator API client")
        })
    }

    /// Every node (`GET /v1/nodes`).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.api().nodes().expect("nodes")
    }

    /// The state of node `id`, if the control plane knows it.
    pub fn node_state(&self, id: &str) -> Option<NodeState> {
        self.nodes()
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.state)
    }

    /// Every task (`GET /v1/tasks`).
    pub fn tasks(&self) -> Vec<TaskInfo> {
        self.api().tasks().expect("tasks")
    }

    /// Task `id` (`GET /v1/tasks/{id}`).
    pub fn task(&self, id: &str) -> TaskInfo {
        self.api()
            .task(id)
            .unwrap_or_else(|e| panic!("task {id}: {e}"))
    }

    /// Runs `req` (`POST /v1/tasks`), which must be placed.
    pub fn run_task(&self, req: &TaskRun) -> Vec<TaskInfo> {
        self.api()
            .run_task(req)
            .unwrap_or_else(|e| panic!("running {}: {e}", req.task_definition))
    }

    /// Runs one task of `taskdef` and returns its id.
    pub fn run_one(&self, taskdef: &str) -> String {
        self.run_task(&TaskRun::new(taskdef))
            .into_iter()
            .next()
            .expect("one task")
            .id
    }

    /// Runs `n` tasks of `taskdef` (ten per request) and waits until the control plane has
    /// them all `RUNNING`, for at most `timeout`; their ids.
    pub fn run_all_running(
        &self,
        taskdef: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let mut req = TaskRun::new(taskdef);
            req.count = u32::try_from((n - ids.len()).min(10))?;
            ids.extend(self.run_task(&req).into_iter().map(|t| t.id));
        }
        let start = Instant::now();
        while self
            .tasks()
            .iter()
            .filter(|t| t.state == flotilla_api::tasks::TaskState::Running)
            .count()
            < n
        {
            if start.elapsed() > timeout {
                anyhow::bail!("{n} tasks did not all run within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(ids)
    }

    /// Registers a task definition given as JSON or YAML, which must be valid.
    pub fn register(&self, def: &str) -> TaskDefRegistered {
        self.api()
            .register_taskdef(def.as_bytes())
            .unwrap_or_else(|e| panic!("registering:\n{def}\n{e}"))
    }

    /// Creates a service from a CreateService document (JSON or YAML), which must be valid.
    pub fn create_service(&self, spec: &str) -> ServiceCreated {
        self.api()
            .create_service(spec.as_bytes())
            .unwrap_or_else(|e| panic!("creating the service:\n{spec}\n{e}"))
    }

    /// Service `name` (`GET /v1/services/{name}`).
    pub fn service(&self, name: &str) -> ServiceInfo {
        self.api()
            .service(name)
            .unwrap_or_else(|e| panic!("service {name}: {e}"))
    }

    /// `host:port` for agents.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail("orchestratord", &self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// On a failing test, shows the last lines of a daemon's log with the test's output (a
/// CI run keeps nothing else of it).
fn print_tail(daemon: &str, log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(80)..];
    eprintln!("--- last {} lines of {daemon}'s log ---", tail.len());
    for line in tail {
        eprintln!("{line}");
    }
}

/// A node agent's data directory and, once started, its `nodeagent run`.
#[derive(Debug)]
pub struct Agent {
    /// Data directory.
    pub data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    args: Vec<std::ffi::OsString>,
    /// The network namespace it runs in, when on a [`crate::netns::Host`].
    netns: Option<String>,
    /// Extra arguments of `nodeagent run`.
    run_args: Vec<String>,
    /// The umask it is started with (the test's own when unset).
    umask: Option<u32>,
    /// A file holding the boot id it is to see, when it runs as in another boot of the
    /// machine (see [`Agent::in_another_boot`]).
    boot: Option<PathBuf>,
}

impl Agent {
    /// An agent with its data under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            data: dir.join("data"),
            log: dir.join("agent.log"),
            child: None,
            args: Vec::new(),
            netns: None,
            run_args: Vec::new(),
            umask: None,
            boot: None,
        }
    }

    /// An agent over a container test node (its data directory, cgroup parent and allowed
    /// bind roots).
    pub fn for_node(node: &crate::node::Node) -> Self {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--cgroup-parent".into(), node.cgroup_parent.clone().into()];
        for r in &node.bind_roots {
            args.push("--bind-root".into());
            args.push(r.clone().into());
        }
        Self {
            data: node.data.clone(),
            log: node.scratch().join("agent.log"),
            child: None,
            args,
            netns: None,
            run_args: Vec::new(),
            umask: None,
            boot: None,
        }
    }

    /// The same agent, started (`join`, `run`) from a shell whose umask is `mask`.
    pub fn with_umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// An agent over `node` with 5 s heartbeats, enrolled with `cp` with a fresh token and in
    /// session.
    pub fn in_session(cp: &ControlPlane, node: &crate::node::Node) -> Self {
        Self::in_session_with(cp, node, &[])
    }

    /// [`Agent::in_session`], its `run` given `args` too.
    pub fn in_session_with(cp: &ControlPlane, node: &crate::node::Node, args: &[&str]) -> Self {
        let mut run_args = vec!["--heartbeat", "5"];
        run_args.extend_from_slice(args);
        let mut agent = Self::for_node(node).with_run_args(&run_args);
        assert!(agent
            .join(&cp.server(), &cp.token(&[]), &[])
            .status
            .success());
        agent.run();
        agent.wait_in_service(cp);
        agent
    }

    /// The same agent, run as if in another boot of the machine: in a mount namespace of its
    /// own in which `/proc/sys/kernel/random/boot_id` reads a boot id made up for it (a bind
    /// mount of a file there; the kernel's stays as it is for everything else). Its shims and
    /// containers inherit the namespace, so they and their records carry that boot id too, and
    /// what it mounts (its task networks' namespaces) lives only there. Killing it and every
    /// process it started ([`crate::node::Node::power_cut`]) is then a power cut: that boot's
    /// mounts go with its last process, and an agent started normally afterwards is in the
    /// next boot. `nodeagent ctr` sees that boot only through [`Agent::in_its_boot`].
    pub fn in_another_boot(mut self) -> Self {
        assert!(
            self.netns.is_none() && self.umask.is_none(),
            "another boot, in a network namespace or with a umask: not supported"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        );
        let file = self.log.with_extension("boot_id");
        std::fs::write(&file, format!("{id}\n")).expect("boot id file");
        self.boot = Some(file);
        self
    }

    /// `command` (a `nodeagent` command line) run inside the mount namespace of this agent's
    /// boot (see [`Agent::in_another_boot`]), while it runs.
    pub fn in_its_boot(&self, command: &Command) -> Command {
        let pid = self.pid().expect("the agent runs");
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(pid.to_string())
            .arg("-m")
            .arg("--")
            .arg(command.get_program())
            .args(command.get_args());
        c
    }

    /// The same agent, `nodeagent run` given `args` too.
    pub fn with_run_args(mut self, args: &[&str]) -> Self {
        self.run_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The same agent, run on `host` (in its network namespace).
    pub fn on_host(mut self, host: &crate::netns::Host) -> Self {
        self.netns = Some(host.netns.clone());
        self
    }

    /// `nodeagent --data-dir …`, inside the agent's host (or boot) when it has one.
    pub fn command(&self) -> Command {
        let program: std::ffi::OsString = match self.umask {
            Some(_) => "sh".into(),
            None => crate::bin("nodeagent").into(),
        };
        let mut c = match (&self.netns, &self.boot) {
            (Some(ns), _) => crate::netns::command_in(ns, program),
            (None, Some(boot)) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg("mount --bind \"$0\" /proc/sys/kernel/random/boot_id && exec \"$@\"")
                    .arg(boot)
                    .arg(program);
                c
            }
            (None, None) => Command::new(program),
        };
        if let Some(mask) = self.umask {
            c.arg("-c")
                .arg(format!("umask {mask:03o}; exec \"$@\""))
                .arg("sh")
                .arg(crate::bin("nodeagent"));
        }
        c.arg("--data-dir").arg(&self.data).args(&self.args);
        c
    }

    /// Pid of `nodeagent run`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills `nodeagent run` (like a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `nodeagent join SERVER --token TOKEN EXTRA…`.
    pub fn join(&self, server: &str, token: &str, extra: &[&str]) -> Output {
        self.command()
            .args(["join", server, "--token", token])
            .args(extra)
            .output()
            .expect("nodeagent join")
    }

    /// Waits for its session, then for the control plane to have its first report of its
    /// resources ([`ControlPlane::wait_reported`]): from then on it takes tasks.
    pub fn wait_in_service(&self, cp: &ControlPlane) {
        self.wait_log("session established", 1, Duration::from_secs(15));
        let id = flotilla_certs::credential::Credential::load(&self.identity())
            .expect("the node's credential")
            .name;
        cp.wait_reported(&id);
    }

    /// Starts `nodeagent run`.
    pub fn run(&mut self) {
        self.run_with_env(&[]);
    }

    /// Starts `nodeagent run` with extra environment variables (the log is appended to).
    pub fn run_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = self.command();
        cmd.arg("run")
            .args(&self.run_args)
            .env("NODEAGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("nodeagent run"));
    }

    /// True while `nodeagent run` is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The identity directory.
    pub fn identity(&self) -> PathBuf {
        self.data.join("identity")
    }

    /// Waits until the log contains `what` `times` times.
    pub fn wait_log(&self, what: &str, times: usize, timeout: Duration) {
        let timeout = crate::patient(timeout);
        let start = Instant::now();
        while self.log().matches(what).count() < times {
            assert!(
                start.elapsed() < timeout,
                "agent log never showed '{what}' x{times}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail("nodeagent", &self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub mod raw {
    //! Hand-made QUIC clients and servers for what the real binaries never do.
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use flotilla_api::{
        read_frame, write_frame, AgentReply, AgentRequest, Hello, HelloReply, PROTOCOLS,
    };
    use flotilla_certs::credential::Credential;
    use flotilla_certs::tls::ALPN_AGENT;
    use flotilla_certs::SERVER_NAME;

    /// A single-threaded runtime.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A session of node `cred` as a real agent starts one: connected, hello answered, and
    /// its first heartbeat (2 CPUs, 4 GiB) recorded — a node that never reported takes no task.
    pub async fn in_session(addr: SocketAddr, cred: &Credential) -> quinn::Connection {
        let conn = connect(addr, client_of(cred)).await.expect("connect");
        hello(&conn).await.expect("hello");
        assert_eq!(request(&conn, &heartbeat()).await, AgentReply::Recorded);
        conn
    }

    /// A heartbeat of a node with 2 CPUs and 4 GiB, nothing running.
    pub fn heartbeat() -> AgentRequest {
        AgentRequest::Heartbeat {
            resources: flotilla_api::NodeResources {
                cpus: 2,
                memory_bytes: 4 << 30,
                ..Default::default()
            },
            usage: Vec::new(),
        }
    }

    /// Connects to the control plane.
    pub async fn connect(
        addr: SocketAddr,
        tls: rustls::ClientConfig,
    ) -> Result<quinn::Connection, String> {
        let mut ep =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        ep.connect(addr, SERVER_NAME)
            .expect("connect")
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a hello; returns the reply or why the server closed.
    pub async fn hello(conn: &quinn::Connection) -> Result<HelloReply, String> {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(
            &mut s,
            &Hello {
                protocols: PROTOCOLS.to_vec(),
                agent_version: "test".into(),
                address: None,
                registry: None,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = s.finish();
        match tokio::time::timeout(Duration::from_secs(5), read_frame::<_, HelloReply>(&mut r))
            .await
        {
            Ok(Ok(h)) => Ok(h),
            _ => Err(conn
                .close_reason()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "no reply".into())),
        }
    }

    /// One request, one reply.
    pub async fn request(conn: &quinn::Connection, req: &AgentRequest) -> AgentReply {
        let (mut s, mut r) = conn.open_bi().await.expect("stream");
        write_frame(&mut s, req).await.expect("write");
        let _ = s.finish();
        read_frame(&mut r).await.expect("read")
    }

    /// The mTLS client configuration of a credential.
    pub fn client_of(cred: &Credential) -> rustls::ClientConfig {
        flotilla_certs::tls::client(&cred.ca_pem, &cred.identity, ALPN_AGENT).expect("client tls")
    }
}

/// Hosts on a test LAN, each with a container node and an agent in session with one control
/// plane: the fixture of the multi-host tests. Dropped in order: agents, nodes (their containers
/// and cgroups), the control plane, the hosts, the LAN.
#[derive(Debug)]
pub struct Fleet {
    /// The agents, one per host.
    pub agents: Vec<Agent>,
    /// Their node ids.
    pub ids: Vec<String>,
    /// Their container nodes.
    pub nodes: Vec<crate::node::Node>,
    /// The control plane (listening on every address, reached on the LAN's gateway).
    pub cp: ControlPlane,
    /// The hosts.
    pub hosts: Vec<crate::netns::Host>,
    /// `HOST:PORT` of the control plane as the hosts reach it.
    pub server: String,
    /// The LAN.
    pub lan: crate::netns::Lan,
    /// Extra arguments of every `nodeagent run`.
    agent_args: Vec<String>,
}

impl Fleet {
    /// A control plane and `labels.len()` hosts, each joined with its labels (`[]` for none)
    /// and in session.
    pub fn start(labels: &[&[&str]]) -> Self {
        Self::start_with(labels, |_| (Vec::new(), Vec::new()))
    }

    /// Like [`Fleet::start`], with the extra arguments `args` makes from the LAN: those of
    /// `orchestratord run`, and those of every `nodeagent run`.
    pub fn start_with(
        labels: &[&[&str]],
        args: impl FnOnce(&crate::netns::Lan) -> (Vec<String>, Vec<String>),
    ) -> Self {
        let lan = crate::netns::Lan::new();
        let (args, agent_args) = args(&lan);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cp = ControlPlane::start_listening(std::net::Ipv4Addr::UNSPECIFIED, &args);
        let server = format!("{}:{}", lan.gateway, cp.addr.port());
        let mut fleet = Self {
            agents: Vec::new(),
            ids: Vec::new(),
            nodes: Vec::new(),
            cp,
            hosts: Vec::new(),
            server,
            lan,
            agent_args,
        };
        for l in labels {
            fleet.add(l);
        }
        fleet
    }

    /// One more host, joined with `labels` (`KEY=VALUE`) and in session; returns its index.
    pub fn add(&mut self, labels: &[&str]) -> usize {
        let host = self.lan.host();
        let node = crate::node::Node::new();
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let mut agent = Agent::for_node(&node).on_host(&host).with_run_args(&args);
        let mut extra = Vec::new();
        for l in labels {
            extra.extend(["--label", l]);
        }
        let out = agent.join(&self.server, &self.cp.token(&[]), &extra);
        assert!(
            out.status.success(),
            "join: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = flotilla_certs::credential::Credential::load(&agent.identity())
            .expect("identity")
            .name;
        agent.run();
        agent.wait_log("session established", 1, Duration::from_secs(15));
        self.cp.wait_reported(&id);
        self.agents.push(agent);
        self.ids.push(id);
        self.nodes.push(node);
        self.hosts.push(host);
        self.ids.len() - 1
    }

    /// Registers a task definition given as JSON or YAML.
    pub fn register(&self, def: &str) {
        self.cp.register(def);
    }

    /// The state the control plane shows for node `i`.
    pub fn node_state(&self, i: usize) -> Option<NodeState> {
        self.cp.node_state(&self.ids[i])
    }

    /// The index of node `id` in the fleet.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// Waits for every node's containers to be gone, stops the agents and checks that no
    /// container, cgroup or mount is left.
    pub fn finish(mut self) {
        for n in &self.nodes {
            // The containers, their state and our cgroup parents (which go after the
            // containers' records: a kill in between would leave them).
            n.wait_removed(Duration::from_secs(60));
            // Their networks go right after them.
            n.wait_for("task networks removed", Duration::from_secs(30), || {
                n.leftover_mounts().is_empty()
            });
        }
        for a in &mut self.agents {
            a.kill();
        }
        for n in &self.nodes {
            n.assert_clean();
        }
    }
}
