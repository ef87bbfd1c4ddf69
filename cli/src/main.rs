//! `flotilla`: the operator CLI. It talks to the control plane's HTTPS API with an admin
//! client certificate from `~/.config/flotilla/` (or `--config DIR`), as written by
//! `orchestratord init` or `flotilla admin issue`.

#![forbid(unsafe_code)]

mod dev;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_api::ops::{
    AdminCredential, AdminIssue, ApiError, Event, NodeInfo, NodeLabels, PlacementConstraintSpec,
    PlacementStrategySpec, TaskDefRegistered, TaskDefRevision, TaskInfo, TaskRun, TokenCreate,
    TokenCreated, TokenInfo,
};
use flotilla_api::schedule::{ScheduleInfo, ScheduleSpec};
use flotilla_api::service::{ServiceCreated, ServiceInfo, ServiceUpdate};
use flotilla_api::{Labels, LogLine};
use flotilla_certs::credential::Credential;
use flotilla_certs::{key_and_csr, CertifiedKey, SERVER_NAME};

#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about = "Flotilla operator CLI")]
struct Cli {
    /// Credential directory (server address, CA, admin certificate and key).
    #[arg(long, global = true, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A whole cluster on this machine, in the foreground: control plane, this node enrolled
    /// with a token, a demo task. Ctrl-C stops it all; the data stays for the next run.
    Dev(dev::DevArgs),
    #[command(flatten)]
    Cluster(ClusterCommand),
}

/// Commands against a control plane, with an admin credential.
#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Operators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Task definitions (the ECS RegisterTaskDefinition shape, JSON or YAML).
    #[command(subcommand)]
    Taskdef(TaskdefCommand),
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Services: tasks kept running (REPLICA: a count; DAEMON: one per node), rolled out on
    /// updates.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Scheduled tasks: a task definition started by a cron expression.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// What happened in the cluster, oldest first (the control plane keeps the last 10,000).
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Keep printing new events as they happen (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print a task's container logs, read from its node over the node's session.
    Logs {
        /// Task id.
        task: String,
        /// Only this container (by its name in the task definition).
        #[arg(long, short = 'c')]
        container: Option<String>,
        /// Keep printing new lines until the containers exit (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each container.
        #[arg(long)]
        tail: Option<u32>,
        /// Prefix each line with its time.
        #[arg(long, short = 't')]
        timestamps: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Run tasks of FAMILY[:REVISION].
    Run {
        /// FAMILY (newest active revision) or FAMILY:REVISION.
        taskdef: String,
        /// Run on this node (default: the control plane picks).
        #[arg(long)]
        node: Option<String>,
        /// How many tasks.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Environment KEY=VALUE for every container (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Only nodes matching this memberOf expression, e.g. "attribute:site == store-12"
        /// (repeatable; added to the task definition's).
        #[arg(long = "constraint", value_name = "EXPRESSION")]
        constraints: Vec<String>,
        /// At most one of these tasks per node.
        #[arg(long)]
        distinct_instance: bool,
        /// Placement strategy, in order (repeatable): spread:instanceId,
        /// spread:attribute:NAME, binpack:memory, binpack:cpu, random [default: spread:instanceId].
        #[arg(long = "strategy", value_name = "TYPE[:FIELD]")]
        strategies: Vec<String>,
    },
    /// List tasks.
    #[command(alias = "list")]
    Ls,
    /// Show a task: state, stop reason, each container's exit code.
    Inspect {
        /// Task id.
        id: String,
    },
    /// Stop tasks (SIGTERM, then SIGKILL after the container's stopTimeout).
    Stop {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Create a schedule.
    Create {
        /// Schedule name.
        name: String,
        /// FAMILY or FAMILY:REVISION.
        #[arg(long)]
        taskdef: String,
        /// Cron expression (5 fields, or @hourly, @daily …), e.g. "0 2 * * *".
        #[arg(long)]
        cron: String,
        /// Time zone of the expression, e.g. Europe/Paris.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Pin it to this node: the node fires it itself, also while disconnected.
        #[arg(long)]
        node: Option<String>,
        /// When the previous run still runs: forbid (skip), allow, or replace.
        #[arg(long, default_value = "forbid")]
        overlap: flotilla_api::schedule::Overlap,
        /// Environment KEY=VALUE for every container (repeatable).
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// List schedules.
    #[command(alias = "list")]
    Ls,
    /// Show a schedule and its latest runs.
    Inspect {
        /// Schedule name.
        name: String,
    },
    /// Delete schedules (runs already started keep running).
    #[command(alias = "remove")]
    Rm {
        /// Schedule names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Create a service (the ECS CreateService shape, JSON or YAML).
    Create {
        /// File, or - for standard input.
        file: PathBuf,
    },
    /// List services.
    #[command(alias = "list")]
    Ls,
    /// Show a service with its deployments.
    Inspect {
        /// Service name.
        name: String,
    },
    /// What DNS answers for a service: its names, VIP and the healthy tasks with the address
    /// and port each is reached on.
    Endpoints {
        /// Service name.
        name: String,
    },
    /// Deploy another revision, or change the count.
    Update {
        /// Service name.
        name: String,
        /// FAMILY or FAMILY:REVISION to deploy.
        #[arg(long)]
        taskdef: Option<String>,
        /// Tasks wanted (REPLICA).
        #[arg(long)]
        desired_count: Option<u32>,
        /// Deploy again even with the same revision (replaces every task).
        #[arg(long)]
        force_new_deployment: bool,
    },
    /// Change the number of tasks (REPLICA).
    Scale {
        /// Service name.
        name: String,
        /// Tasks wanted.
        count: u32,
    },
    /// Delete a service; its tasks are stopped.
    #[command(alias = "remove")]
    Rm {
        /// Service names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TaskdefCommand {
    /// Register a task definition as the next revision of its family.
    Register {
        /// File (JSON or YAML), or - for standard input.
        file: PathBuf,
    },
    /// List every revision.
    #[command(alias = "list")]
    Ls,
    /// Show FAMILY (newest active revision) or FAMILY:REVISION.
    Inspect {
        /// FAMILY or FAMILY:REVISION.
        taskdef: String,
    },
    /// Deregister a revision: no new tasks start from it; running ones keep running.
    Deregister {
        /// FAMILY:REVISION.
        taskdef: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token (printed once; only its hash is stored).
    Create {
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Nodes that may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Label KEY=VALUE every node joining with it gets (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List tokens.
    #[command(alias = "list")]
    Ls,
    /// Revoke tokens.
    #[command(alias = "remove")]
    Rm {
        /// Token ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls,
    /// Show a node.
    Inspect {
        /// Node id.
        id: String,
    },
    /// Revoke a node: its live session ends at once, and it is refused from then on.
    Revoke {
        /// Node id.
        id: String,
    },
    /// Set or remove a node's labels (its placement attributes).
    Label {
        /// Node id.
        id: String,
        /// Labels KEY=VALUE to add or replace.
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Label key to remove (repeatable).
        #[arg(long = "rm", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Drain a node: nothing new is placed on it and its tasks are stopped.
    Drain {
        /// Node id.
        id: String,
    },
    /// Make a drained node take tasks again.
    Activate {
        /// Node id.
        id: String,
    },
    /// Remove a node from the cluster: its session ends and its certificate is refused.
    #[command(alias = "remove")]
    Rm {
        /// Node id.
        id: String,
        /// Remove it even with tasks not stopped (they are recorded STOPPED).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Issue an admin credential for another operator (the key is made here).
    Issue {
        /// The operator's name.
        name: String,
        /// Where to write the credential directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    cred: Credential,
}

fn config_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    let home = std::env::var_os("HOME").context("HOME is not set; give --config")?;
    Ok(PathBuf::from(home).join(".config/flotilla"))
}

impl Api {
    async fn open(dir: &Path) -> Result<Self> {
        let cred = Credential::load(dir).with_context(|| {
            format!(
                "no admin credential in {} (see `orchestratord init`)",
                dir.display()
            )
        })?;
        let with_port = flotilla_api::with_default_port(&cred.server);
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to no address"))?;
        let tls = flotilla_certs::tls::client(&cred.ca_pem, &cred.identity, b"http/1.1")?;
        // The server is known by its cluster name whatever address reaches it.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve(SERVER_NAME, addr)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTPS client")?;
        Ok(Self {
            http,
            base: format!("https://{SERVER_NAME}:{}", addr.port()),
            cred,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<T>> {
        let raw = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        self.call_raw(method, path, raw).await
    }

    /// A request whose answer must have a body.
    async fn expect<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        self.call(method.clone(), path, body)
            .await?
            .with_context(|| format!("{method} {path}: empty reply"))
    }

    /// A request with a body sent as given (JSON or YAML documents).
    async fn call_raw<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path} on {}", self.cred.server))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("{} ({status})", api_error(&bytes));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("reply to {method} {path}"))?,
        ))
    }
}

impl Api {
    /// A GET whose answer is read as it comes (no overall time limit).
    async fn stream(&self, path: &str) -> Result<reqwest::Response> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(100 * 365 * 86_400))
            .send()
            .await
            .with_context(|| format!("GET {path} on {}", self.cred.server))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            bail!("{} ({status})", api_error(&bytes));
        }
        Ok(resp)
    }
}

/// Reads FILE, or standard input for `-`.
fn read_input(file: &Path) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn print_service(s: &ServiceInfo) {
    println!(
        "{}  {:?}  {}  desired {}  running {}  pending {}",
        s.spec.service_name,
        s.spec.scheduling_strategy,
        s.spec.task_definition,
        s.spec.desired_count,
        s.running_count,
        s.pending_count
    );
    for d in &s.deployments {
        println!(
            "  {} {:<8} {:<12} {} running {} pending {} failed {}{}",
            d.id,
            d.status,
            d.rollout_state,
            d.task_definition,
            d.running_count,
            d.pending_count,
            d.failed_tasks,
            d.rollout_state_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    if let Some(p) = &s.placement_problem {
        println!("  cannot place: {p}");
    }
}

async fn service(api: &Api, cmd: ServiceCommand, json: bool) -> Result<()> {
    use reqwest::Method;
    match cmd {
        ServiceCommand::Create { file } => {
            let created: ServiceCreated = api
                .call_raw(Method::POST, "/v1/services", Some(read_input(&file)?))
                .await?
                .context("empty reply")?;
            print(json, &created, || {
                for w in &created.warnings {
                    eprintln!("warning: {w}");
                }
                print_service(&created.service);
            })?;
        }
        ServiceCommand::Ls => {
            let list: Vec<ServiceInfo> = api.expect(Method::GET, "/v1/services", None).await?;
            print(json, &list, || {
                let rows: Vec<Vec<String>> =
                    list.iter()
                        .map(|s| {
                            let primary = s.deployments.iter().find(|d| {
                                d.status == flotilla_api::service::DeploymentStatus::Primary
                            });
                            vec![
                                s.spec.service_name.clone(),
                                format!("{:?}", s.spec.scheduling_strategy).to_uppercase(),
                                s.spec.task_definition.clone(),
                                s.spec.desired_count.to_string(),
                                s.running_count.to_string(),
                                s.pending_count.to_string(),
                                primary
                                    .map(|d| d.rollout_state.to_string())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect();
                table(
                    &[
                        "NAME",
                        "MODE",
                        "TASK DEFINITION",
                        "DESIRED",
                        "RUNNING",
                        "PENDING",
                        "ROLLOUT",
                    ],
                    &rows,
                );
            })?;
        }
        ServiceCommand::Inspect { name } => {
            let s: ServiceInfo = api
                .expect(Method::GET, &format!("/v1/services/{name}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        ServiceCommand::Endpoints { name } => {
            let d: flotilla_api::discovery::DiscoveredService = api
                .expect(Method::GET, &format!("/v1/services/{name}/endpoints"), None)
                .await?;
            print(json, &d, || {
                println!("name: {}", d.fqdn());
                if let Some(v) = d.vip {
                    let port = d.port.map(|p| format!(":{p}")).unwrap_or_default();
                    println!("vip:  {v}{port}");
                }
                let rows: Vec<Vec<String>> = d
                    .endpoints
                    .iter()
                    .map(|e| {
                        vec![
                            e.task.clone(),
                            e.node.clone(),
                            e.address.to_string(),
                            e.port.map(|p| p.to_string()).unwrap_or_default(),
                            d.task_fqdn(&e.task),
                        ]
                    })
                    .collect();
                table(&["TASK", "NODE", "ADDRESS", "PORT", "NAME"], &rows);
            })?;
        }
        ServiceCommand::Update {
            name,
            taskdef,
            desired_count,
            force_new_deployment,
        } => {
            let update = ServiceUpdate {
                task_definition: taskdef,
                desired_count,
                force_new_deployment,
            };
            let s: ServiceInfo = api
                .expect(
                    Method::PUT,
                    &format!("/v1/services/{name}"),
                    Some(serde_json::to_value(update)?),
                )
                .await?;
            print(json, &s, || print_service(&s))?;
        }
        ServiceCommand::Scale { name, count } => {
            let update = ServiceUpdate {
                desired_count: Some(count),
                ..Default::default()
            };
            let s: ServiceInfo = api
                .expect(
                    Method::PUT,
                    &format!("/v1/services/{name}"),
                    Some(serde_json::to_value(update)?),
                )
                .await?;
            print(json, &s, || print_service(&s))?;
        }
        ServiceCommand::Rm { names } => {
            for n in names {
                api.call::<serde_json::Value>(Method::DELETE, &format!("/v1/services/{n}"), None)
                    .await?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

/// `KEY=VALUE` pairs.
fn key_values(env: &[String]) -> Result<Vec<flotilla_api::taskdef::KeyValue>> {
    env.iter()
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--env {e}: expected KEY=VALUE"))?;
            Ok(flotilla_api::taskdef::KeyValue {
                name: k.to_string(),
                value: v.to_string(),
            })
        })
        .collect()
}

async fn schedule(api: &Api, cmd: ScheduleCommand, json: bool) -> Result<()> {
    use reqwest::Method;
    match cmd {
        ScheduleCommand::Create {
            name,
            taskdef,
            cron,
            timezone,
            node,
            overlap,
            env,
        } => {
            let spec = ScheduleSpec {
                name,
                task_definition: taskdef,
                cron,
                timezone,
                node,
                overlap,
                env: key_values(&env)?,
            };
            let s: ScheduleInfo = api
                .expect(
                    Method::POST,
                    "/v1/schedules",
                    Some(serde_json::to_value(spec)?),
                )
                .await?;
            print(json, &s, || {
                println!(
                    "{} {} at '{}' ({}){}",
                    s.spec.name,
                    s.spec.task_definition,
                    s.spec.cron,
                    s.spec.timezone,
                    match (&s.spec.node, s.next_run) {
                        (Some(n), _) => format!(", fired by node {n}"),
                        (None, Some(t)) => format!(", next {}", when(t)),
                        (None, None) => ", never fires".into(),
                    }
                )
            })?;
        }
        ScheduleCommand::Ls => {
            let list: Vec<ScheduleInfo> = api.expect(Method::GET, "/v1/schedules", None).await?;
            print(json, &list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.spec.name.clone(),
                            s.spec.task_definition.clone(),
                            s.spec.cron.clone(),
                            s.spec.timezone.clone(),
                            s.spec.node.clone().unwrap_or_else(|| "-".into()),
                            s.next_run.map(when).unwrap_or_default(),
                            s.runs.first().map(|r| when(r.fired_at)).unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "TASK DEFINITION",
                        "CRON",
                        "TIME ZONE",
                        "NODE",
                        "NEXT",
                        "LAST RUN",
                    ],
                    &rows,
                );
            })?;
        }
        ScheduleCommand::Inspect { name } => {
            let s: ScheduleInfo = api
                .expect(Method::GET, &format!("/v1/schedules/{name}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        ScheduleCommand::Rm { names } => {
            for n in names {
                api.call::<serde_json::Value>(Method::DELETE, &format!("/v1/schedules/{n}"), None)
                    .await?;
                println!("{n}");
            }
        }
    }
    Ok(())
}

/// The message of an API error body.
fn api_error(bytes: &[u8]) -> String {
    match serde_json::from_slice::<ApiError>(bytes) {
        Ok(e) if e.problems.is_empty() => e.error,
        Ok(e) => format!("{}:\n  {}", e.error, e.problems.join("\n  ")),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// `flotilla logs`: newline-delimited [`LogLine`]s printed to stdout or stderr as they came
/// from the container, prefixed by the container's name when the task has several.
async fn logs(
    api: &Api,
    task: &str,
    container: Option<String>,
    follow: bool,
    tail: Option<u32>,
    timestamps: bool,
) -> Result<()> {
    use std::io::Write;
    let info: TaskInfo = api
        .expect(reqwest::Method::GET, &format!("/v1/tasks/{task}"), None)
        .await?;
    let prefix = container.is_none() && info.containers.len() > 1;
    let mut query = vec![format!("follow={follow}")];
    if let Some(c) = &container {
        query.push(format!("container={c}"));
    }
    if let Some(t) = tail {
        query.push(format!("tail={t}"));
    }
    let mut resp = api
        .stream(&format!("/v1/tasks/{task}/logs?{}", query.join("&")))
        .await?;
    let mut pending = Vec::new();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(chunk) = resp.chunk().await.context("reading the logs")? {
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let record: Vec<u8> = pending.drain(..=nl).collect();
            let value: serde_json::Value =
                serde_json::from_slice(&record).context("a log record from the server")?;
            if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
                bail!("{e}");
            }
            let l: LogLine = serde_json::from_value(value).context("a log record")?;
            let w: &mut dyn Write = if l.stream == "stderr" {
                &mut err
            } else {
                &mut out
            };
            if timestamps {
                write!(w, "{} ", l.time)?;
            }
            if prefix {
                write!(w, "{} | ", l.container)?;
            }
            write!(w, "{}", l.text)?;
            if !l.partial {
                writeln!(w)?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn labels_text(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn print<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human();
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.output == Output::Json;
    let command = match cli.command {
        Command::Dev(args) => return dev::run(args, cli.config).await,
        Command::Cluster(c) => c,
    };
    let api = Api::open(&config_dir(cli.config)?).await?;
    use reqwest::Method;
    match command {
        ClusterCommand::Token(TokenCommand::Create { ttl, uses, labels }) => {
            let mut l = Labels::new();
            for x in &labels {
                let (k, v) = flotilla_api::parse_label(x).map_err(anyhow::Error::msg)?;
                l.insert(k, v);
            }
            let req = TokenCreate {
                ttl_secs: Some(ttl.as_secs().max(1)),
                uses: Some(uses),
                labels: l,
            };
            let t: TokenCreated = api
                .expect(Method::POST, "/v1/tokens", Some(serde_json::to_value(req)?))
                .await?;
            print(json, &t, || println!("{}", t.token))?;
        }
        ClusterCommand::Token(TokenCommand::Ls) => {
            let list: Vec<TokenInfo> = api
                .call(Method::GET, "/v1/tokens", None)
                .await?
                .unwrap_or_default();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            print(json, &list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            format!("{}/{}", t.used, t.uses),
                            if t.expires_at <= now {
                                format!("expired {}", when(t.expires_at))
                            } else {
                                when(t.expires_at)
                            },
                            labels_text(&t.labels),
                        ]
                    })
                    .collect();
                table(&["ID", "USED", "EXPIRES", "LABELS"], &rows);
            })?;
        }
        ClusterCommand::Token(TokenCommand::Rm { ids }) => {
            for id in ids {
                api.call::<serde_json::Value>(Method::DELETE, &format!("/v1/tokens/{id}"), None)
                    .await?;
                println!("{id}");
            }
        }
        ClusterCommand::Node(NodeCommand::Ls) => {
            let list: Vec<NodeInfo> = api
                .call(Method::GET, "/v1/nodes", None)
                .await?
                .unwrap_or_default();
            print(json, &list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|n| {
                        let r = n.resources.clone().unwrap_or_default();
                        vec![
                            n.id.clone(),
                            n.hostname.clone(),
                            n.state.to_string(),
                            if n.resources.is_some() {
                                r.cpus.to_string()
                            } else {
                                String::new()
                            },
                            if n.resources.is_some() {
                                format!("{}/{}", gib(r.memory_available_bytes), gib(r.memory_bytes))
                            } else {
                                String::new()
                            },
                            n.agent_version.clone().unwrap_or_default(),
                            n.last_seen.map(when).unwrap_or_default(),
                            labels_text(&n.labels),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATE",
                        "CPUS",
                        "MEMORY FREE/TOTAL",
                        "AGENT",
                        "LAST SEEN",
                        "LABELS",
                    ],
                    &rows,
                );
            })?;
        }
        ClusterCommand::Node(NodeCommand::Inspect { id }) => {
            let n: NodeInfo = api
                .expect(Method::GET, &format!("/v1/nodes/{id}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&n)?);
        }
        ClusterCommand::Node(NodeCommand::Revoke { id }) => {
            let n: NodeInfo = api
                .expect(Method::POST, &format!("/v1/nodes/{id}/revoke"), None)
                .await?;
            print(json, &n, || println!("revoked {}", n.id))?;
        }
        ClusterCommand::Node(NodeCommand::Label { id, labels, remove }) => {
            if labels.is_empty() && remove.is_empty() {
                bail!("nothing to change: give KEY=VALUE labels and/or --rm KEY");
            }
            let mut change = NodeLabels::default();
            for x in &labels {
                let (k, v) = flotilla_api::parse_label(x).map_err(anyhow::Error::msg)?;
                change.set.insert(k, v);
            }
            change.remove = remove;
            let n: NodeInfo = api
                .expect(
                    Method::PUT,
                    &format!("/v1/nodes/{id}/labels"),
                    Some(serde_json::to_value(change)?),
                )
                .await?;
            print(json, &n, || println!("{} {}", n.id, labels_text(&n.labels)))?;
        }
        ClusterCommand::Node(NodeCommand::Drain { id }) => {
            let n: NodeInfo = api
                .expect(Method::POST, &format!("/v1/nodes/{id}/drain"), None)
                .await?;
            print(json, &n, || println!("draining {}", n.id))?;
        }
        ClusterCommand::Node(NodeCommand::Activate { id }) => {
            let n: NodeInfo = api
                .expect(Method::POST, &format!("/v1/nodes/{id}/activate"), None)
                .await?;
            print(json, &n, || println!("active {}", n.id))?;
        }
        ClusterCommand::Node(NodeCommand::Rm { id, force }) => {
            api.call::<serde_json::Value>(
                Method::DELETE,
                &format!("/v1/nodes/{id}?force={force}"),
                None,
            )
            .await?;
            println!("{id}");
        }
        ClusterCommand::Task(TaskCommand::Run {
            taskdef,
            node,
            count,
            env,
            constraints,
            distinct_instance,
            strategies,
        }) => {
            let kv = key_values(&env)?;
            let mut placement_constraints: Vec<PlacementConstraintSpec> = constraints
                .into_iter()
                .map(|e| PlacementConstraintSpec {
                    kind: "memberOf".into(),
                    expression: Some(e),
                })
                .collect();
            if distinct_instance {
                placement_constraints.push(PlacementConstraintSpec {
                    kind: "distinctInstance".into(),
                    expression: None,
                });
            }
            let placement_strategy = strategies
                .iter()
                .map(|s| {
                    let (kind, field) = match s.split_once(':') {
                        Some((k, f)) => (k, Some(f.to_string())),
                        None => (s.as_str(), None),
                    };
                    PlacementStrategySpec {
                        kind: kind.to_string(),
                        field,
                    }
                })
                .collect();
            let req = TaskRun {
                task_definition: taskdef,
                node,
                count,
                env: kv,
                placement_constraints,
                placement_strategy,
            };
            let tasks: Vec<TaskInfo> = api
                .call(Method::POST, "/v1/tasks", Some(serde_json::to_value(req)?))
                .await?
                .unwrap_or_default();
            print(json, &tasks, || {
                for t in &tasks {
                    println!("{} on {}", t.id, t.node.as_deref().unwrap_or("-"));
                }
            })?;
        }
        ClusterCommand::Service(cmd) => service(&api, cmd, json).await?,
        ClusterCommand::Schedule(cmd) => schedule(&api, cmd, json).await?,
        ClusterCommand::Task(TaskCommand::Ls) => {
            let list: Vec<TaskInfo> = api
                .call(Method::GET, "/v1/tasks", None)
                .await?
                .unwrap_or_default();
            print(json, &list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.task_definition.clone(),
                            t.node.clone().unwrap_or_default(),
                            format!("{:?}", t.state).to_uppercase(),
                            format!("{:?}", t.desired).to_uppercase(),
                            t.stop_reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "TASK DEFINITION",
                        "NODE",
                        "STATE",
                        "DESIRED",
                        "STOP REASON",
                    ],
                    &rows,
                );
            })?;
        }
        ClusterCommand::Task(TaskCommand::Inspect { id }) => {
            let t: TaskInfo = api
                .expect(Method::GET, &format!("/v1/tasks/{id}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
        ClusterCommand::Events {
            since,
            limit,
            follow,
        } => {
            let mut since = since;
            loop {
                let list: Vec<Event> = api
                    .expect(
                        reqwest::Method::GET,
                        &format!("/v1/events?since={since}&limit={limit}"),
                        None,
                    )
                    .await?;
                if json {
                    for e in &list {
                        println!("{}", serde_json::to_string(e)?);
                    }
                } else {
                    for e in &list {
                        println!(
                            "{:>6}  {}  {:<20} {:<16} {}",
                            e.seq,
                            when(e.time),
                            e.kind,
                            e.subject,
                            e.message
                        );
                    }
                }
                since = list.last().map_or(since, |e| e.seq);
                if !follow {
                    break;
                }
                if list.len() < limit as usize {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        ClusterCommand::Logs {
            task,
            container,
            follow,
            tail,
            timestamps,
        } => logs(&api, &task, container, follow, tail, timestamps).await?,
        ClusterCommand::Task(TaskCommand::Stop { ids }) => {
            for id in ids {
                let t: TaskInfo = api
                    .expect(Method::POST, &format!("/v1/tasks/{id}/stop"), None)
                    .await?;
                println!("{} {}", t.id, format!("{:?}", t.state).to_uppercase());
            }
        }
        ClusterCommand::Taskdef(TaskdefCommand::Register { file }) => {
            let text = read_input(&file)?;
            let r: TaskDefRegistered = api
                .call_raw(Method::POST, "/v1/taskdefs", Some(text))
                .await
                .with_context(|| format!("registering {}", file.display()))?
                .context("empty reply")?;
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            print(json, &r, || println!("{}:{}", r.family, r.revision))?;
        }
        ClusterCommand::Taskdef(TaskdefCommand::Ls) => {
            let list: Vec<TaskDefRevision> = api
                .call(Method::GET, "/v1/taskdefs", None)
                .await?
                .unwrap_or_default();
            print(json, &list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            format!("{}:{}", t.family, t.revision),
                            format!("{:?}", t.status).to_uppercase(),
                            t.task_definition
                                .container_definitions
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(","),
                            when(t.registered_at),
                        ]
                    })
                    .collect();
                table(
                    &["TASK DEFINITION", "STATUS", "CONTAINERS", "REGISTERED"],
                    &rows,
                );
            })?;
        }
        ClusterCommand::Taskdef(TaskdefCommand::Inspect { taskdef }) => {
            let t: TaskDefRevision = api
                .expect(Method::GET, &format!("/v1/taskdefs/{taskdef}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
        ClusterCommand::Taskdef(TaskdefCommand::Deregister { taskdef }) => {
            let t: TaskDefRevision = api
                .call(
                    Method::POST,
                    &format!("/v1/taskdefs/{taskdef}/deregister"),
                    None,
                )
                .await?
                .context("empty reply")?;
            print(json, &t, || {
                println!("deregistered {}:{}", t.family, t.revision)
            })?;
        }
        ClusterCommand::Admin(AdminCommand::Issue { name, out }) => {
            flotilla_certs::validate_name(&name)?;
            let key = key_and_csr(&name)?;
            let req = AdminIssue {
                name: name.clone(),
                csr_pem: key.cert_pem.clone(),
            };
            let c: AdminCredential = api
                .expect(Method::POST, "/v1/admins", Some(serde_json::to_value(req)?))
                .await?;
            Credential {
                server: api.cred.server.clone(),
                name: name.clone(),
                ca_pem: c.ca_pem,
                identity: CertifiedKey {
                    cert_pem: c.cert_pem,
                    key_pem: key.key_pem,
                },
            }
            .write(&out)?;
            println!("admin credential for {name} written to {}", out.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
