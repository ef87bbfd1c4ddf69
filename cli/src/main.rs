//! `flotilla`: the operator CLI. It talks to the control plane's HTTPS API through
//! `flotilla-client`, with an admin client certificate from `~/.config/flotilla/` (or
//! `--config DIR`), as written by `orchestratord init` or `flotilla admin issue`. Every command
//! that prints data prints a table (or a line) by default, and the API's answer with `-o json`
//! or `-o yaml`.

#![forbid(unsafe_code)]

mod compose;
mod dev;
mod exec;
mod image;
mod scaling;
mod secret;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use flotilla_api::ops::{
    AdminIssue, EventFilter, NodeInfo, NodeLabels, PlacementConstraintSpec, PlacementStrategySpec,
    TaskInfo, TaskRun, TokenCreate,
};
use flotilla_api::schedule::ScheduleSpec;
use flotilla_api::service::{ServiceInfo, ServiceUpdate};
use flotilla_api::Labels;
use flotilla_certs::credential::Credential;
use flotilla_certs::{key_and_csr, CertifiedKey};
use flotilla_client::{Client, ClientError, LogQuery};

use flotilla_api::stdout::{closed_pipe, EXIT_CLOSED_PIPE};
use flotilla_api::{errln, out, outln};

#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about = "Flotilla operator CLI")]
struct Cli {
    /// Credential directory (server address, CA, admin certificate and key).
    #[arg(long, global = true, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Output format: a table (or a line), a table with more columns (`wide`: `task ls`,
    /// `node ls`), or the API's answer as JSON or YAML (streams: one JSON object per line, or
    /// YAML documents separated by `---`).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How commands print what they got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Tables and lines for people (`inspect`: JSON).
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// Tables with more columns (`task ls`: service, address, ports, containers, restarts;
    /// `node ls`: load, disk, joined, certificate expiry); elsewhere as `table`.
    Wide,
}

/// `-w`: keep listing.
#[derive(Debug, Clone, Copy, clap::Args)]
struct WatchArgs {
    /// After the list, keep polling (every 2 s) and print each item that appears or changes —
    /// a table row, a line of JSON or a YAML document (Ctrl-C to stop).
    #[arg(short = 'w', long)]
    watch: bool,
}

/// `task ls`: which tasks (all when no flag is given; flags together narrow it).
#[derive(Debug, Clone, clap::Args)]
struct TaskLsArgs {
    #[command(flatten)]
    watch: WatchArgs,
    /// Items asked for at a time, each batch printed as it comes (1 to 1000; as kubectl's
    /// `--chunk-size`).
    #[arg(long, value_name = "N", default_value_t = PAGE, value_parser = clap::value_parser!(u32).range(1..=1000))]
    chunk_size: u32,
    /// Only the tasks of this node, whatever their state.
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    /// Only the tasks of this service.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Only the tasks of this task definition family (any revision).
    #[arg(long, value_name = "FAMILY")]
    family: Option<String>,
    /// Only the tasks in this state: PROVISIONING, PENDING, RUNNING, STOPPING or STOPPED.
    #[arg(long, value_name = "STATE", value_parser = task_state_arg)]
    state: Option<flotilla_api::tasks::TaskState>,
}

impl TaskLsArgs {
    fn filter(&self) -> flotilla_client::TaskFilter {
        flotilla_client::TaskFilter {
            node: self.node.clone(),
            service: self.service.clone(),
            family: self.family.clone(),
            state: self.state,
            ..Default::default()
        }
    }
}

fn task_state_arg(s: &str) -> Result<flotilla_api::tasks::TaskState, String> {
    flotilla_api::page::task_state(s)
        .ok_or_else(|| "expected PROVISIONING, PENDING, RUNNING, STOPPING or STOPPED".into())
}

/// `node ls`: which nodes (all when no flag is given).
#[derive(Debug, Clone, clap::Args)]
struct NodeLsArgs {
    #[command(flatten)]
    watch: WatchArgs,
    /// Items asked for at a time, each batch printed as it comes (1 to 1000; as kubectl's
    /// `--chunk-size`).
    #[arg(long, value_name = "N", default_value_t = PAGE, value_parser = clap::value_parser!(u32).range(1..=1000))]
    chunk_size: u32,
    /// Only the nodes in this state: READY, DRAINING, DISCONNECTED or REVOKED.
    #[arg(long, value_name = "STATE", value_parser = node_state_arg)]
    status: Option<flotilla_api::ops::NodeState>,
    /// Only the nodes with this label (KEY, any value, or KEY=VALUE; repeatable: all of them).
    #[arg(long = "label", value_name = "KEY[=VALUE]")]
    labels: Vec<String>,
}

impl NodeLsArgs {
    fn filter(&self) -> flotilla_client::NodeFilter {
        flotilla_client::NodeFilter {
            status: self.status,
            labels: self
                .labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (l.clone(), None),
                })
                .collect(),
        }
    }
}

fn node_state_arg(s: &str) -> Result<flotilla_api::ops::NodeState, String> {
    flotilla_api::page::node_state(s)
        .ok_or_else(|| "expected READY, DRAINING, DISCONNECTED or REVOKED".into())
}

/// How many items `task ls` and `node ls` ask for at a time by default.
const PAGE: u32 = 500;

#[derive(Debug, Subcommand)]
enum Command {
    /// A whole cluster on this machine, in the foreground: control plane, this node enrolled
    /// with a token, a demo task. Ctrl-C stops it all (twice: kills the containers without
    /// waiting); the data stays for the next run.
    Dev(dev::DevArgs),
    /// Print a completion script for SHELL: `source <(flotilla completion bash)`, or save it
    /// where the shell loads completions (bash: /etc/bash_completion.d/flotilla, zsh: a
    /// directory of $fpath as `_flotilla`, fish: ~/.config/fish/completions/flotilla.fish).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    /// Secrets: values sealed by the control plane, given as environment variables and files
    /// in /run/secrets to the containers whose task definition references them
    /// (`"valueFrom": "flotilla:NAME[:JSON-KEY][:VERSION]"`).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Configs: files such as nginx.conf kept by the control plane and mounted read-only where
    /// a container definition's `configs` say (`{"source": NAME, "target": PATH}`).
    #[command(subcommand)]
    Config(secret::ConfigCommand),
    /// Images: `push`, `ls`, `inspect`, `rm` in the control plane's content store; `prefetch`
    /// pulls one onto the nodes ahead of a deployment.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Compose projects: a Compose file's services deployed onto the fleet (`up`, `down`,
    /// `ps`, `logs`, `config`, `restart`, `scale`, `ls`), each service a task definition and a
    /// service named PROJECT-SERVICE, the project their discovery namespace.
    Compose(compose::ComposeArgs),
    /// Service auto scaling (Application Auto Scaling's shapes): policies, scheduled actions
    /// and what was decided; `flotilla service autoscale` turns it on.
    #[command(subcommand)]
    Scaling(scaling::ScalingCommand),
    /// CPU and memory in use now, as `kubectl top` shows them: from the nodes' last
    /// heartbeats (CPU: between their last two).
    #[command(subcommand)]
    Top(top::TopCommand),
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
        /// Only events of this kind (`task.stopped`), or of kinds it begins up to a dot
        /// (`task`: every task event; `service.deployment`).
        #[arg(long)]
        kind: Option<String>,
        /// Only events about this node, task, service, schedule, token or task definition
        /// (`family:revision`).
        #[arg(long)]
        subject: Option<String>,
    },
    /// Run a command in a task's container, through the control plane and the node's own
    /// session: `flotilla exec -it TASK -- sh`. Exits with the command's exit code (126 when
    /// it could not run, 255 when the connection broke). A closed terminal, SIGTERM, or Ctrl-C
    /// without `-it` end it with 128 + the signal, and the node hangs the command up (SIGHUP,
    /// SIGKILL 5 s later). Each exec is a `task.exec` event naming the admin, the container and
    /// the command.
    Exec(exec::ExecArgs),
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
    /// List tasks, oldest first (fetched and printed 500 at a time).
    #[command(alias = "list")]
    Ls(TaskLsArgs),
    /// Show a task: state, stop reason, each container's exit code.
    Inspect {
        /// Task id.
        id: String,
    },
    /// Stop tasks (each container's stop signal — its image's StopSignal, SIGTERM by default —
    /// then SIGKILL after its stopTimeout).
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
    Ls(WatchArgs),
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
    /// Turn on, change or (--off) turn off a service's auto scaling (REPLICA).
    ///
    /// Sets the bounds its desired count is kept within and, with --target-cpu or
    /// --target-memory, puts the target-tracking policies cpu-target-tracking or
    /// memory-target-tracking (replacing those of the same names). Other policies and the
    /// scheduled actions are kept: `flotilla scaling` lists and changes them.
    Autoscale(scaling::AutoscaleArgs),
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
        /// File (JSON or YAML), or - for standard input: a task definition, the output of `aws
        /// ecs describe-task-definition`, or (with --family) a bare containerDefinitions array
        /// such as Terraform's container_definitions.
        file: PathBuf,
        /// Family, in place of the file's (as `aws ecs register-task-definition --family`).
        #[arg(long)]
        family: Option<String>,
        /// Task-level CPU units or vCPUs ("256", "0.25 vCPU"), in place of the file's.
        #[arg(long)]
        cpu: Option<String>,
        /// Task-level memory in MiB or GB ("512", "0.5 GB"), in place of the file's.
        #[arg(long)]
        memory: Option<String>,
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
    /// List nodes, by id (fetched and printed 500 at a time).
    #[command(alias = "list")]
    Ls(NodeLsArgs),
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

fn config_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    let home = std::env::var_os("HOME").context("HOME is not set; give --config")?;
    Ok(PathBuf::from(home).join(".config/flotilla"))
}

/// What to say when `dir` holds no admin credential: how to get one, and — only when `dir` is
/// the default one, not a directory named with `--config` or `FLOTILLA_CONFIG` — how to read
/// another.
fn no_credential(dir: &Path, named: bool) -> String {
    let another = if named {
        ""
    } else {
        "; `--config DIR` reads another"
    };
    format!(
        "no admin credential in {} (`flotilla dev` makes one for a cluster on this machine; \
         `orchestratord init` or `flotilla admin issue` for a cluster's{another})",
        dir.display()
    )
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
    // A one-shot service says what stopped tasks it leaves, and how many completed.
    let replace = s.spec.completion_policy.replace;
    let one_shot = replace != flotilla_api::service::ReplaceStopped::Always;
    outln!(
        "{}  {}  {}  desired {}  running {}  pending {}{}",
        s.spec.service_name,
        s.spec.scheduling_strategy,
        s.spec.task_definition,
        s.spec.desired_count,
        s.running_count,
        s.pending_count,
        if one_shot {
            format!(
                "  completed {}  (replaces stopped: {replace})",
                s.completed_count
            )
        } else {
            String::new()
        }
    );
    for d in &s.deployments {
        outln!(
            "  {} {:<8} {:<12} {} running {} pending {}{} failed {}{}",
            d.id,
            d.status,
            d.rollout_state,
            d.task_definition,
            d.running_count,
            d.pending_count,
            if one_shot {
                format!(" completed {}", d.completed_count)
            } else {
                String::new()
            },
            d.failed_tasks,
            d.rollout_state_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    if let Some(p) = &s.placement_problem {
        outln!("  problem: {p}");
    }
}

async fn service(api: &Client, cmd: ServiceCommand, output: Output) -> Result<()> {
    match cmd {
        ServiceCommand::Create { file } => {
            let created = api
                .create_service(&read_input(&file)?)
                .await
                .with_context(|| format!("creating the service of {}", file.display()))?;
            for w in &created.warnings {
                errln!("warning: {w}");
            }
            print(output, &created, || print_service(&created.service))?;
        }
        ServiceCommand::Ls(w) => list(output, w, || service_listing(api)).await?,
        ServiceCommand::Inspect { name } => {
            print_document(output, &api.service(&name).await?)?;
        }
        ServiceCommand::Endpoints { name } => {
            let d = api.service_endpoints(&name).await?;
            print(output, &d, || {
                outln!("name: {}", d.fqdn());
                if let Some(v) = d.vip {
                    let port = d.port.map(|p| format!(":{p}")).unwrap_or_default();
                    outln!("vip:  {v}{port}");
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
            let s = api.update_service(&name, &update).await?;
            print(output, &s, || print_service(&s))?;
        }
        ServiceCommand::Scale { name, count } => {
            let update = ServiceUpdate {
                desired_count: Some(count),
                ..Default::default()
            };
            let s = api.update_service(&name, &update).await?;
            print(output, &s, || print_service(&s))?;
        }
        ServiceCommand::Autoscale(a) => scaling::autoscale(api, a, output).await?,
        ServiceCommand::Rm { names } => {
            let (removed, outcome) = each(&names, "service", "not removed", async |n| {
                api.remove_service(n).await?;
                if output == Output::Table {
                    outln!("{n}");
                }
                Ok(n.to_string())
            })
            .await;
            print(output, &removed, || {})?;
            outcome?;
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

async fn schedule(api: &Client, cmd: ScheduleCommand, output: Output) -> Result<()> {
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
            let s = api.create_schedule(&spec).await?;
            print(output, &s, || {
                outln!(
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
            let list = api.schedules().await?;
            print(output, &list, || {
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
            print_document(output, &api.schedule(&name).await?)?;
        }
        ScheduleCommand::Rm { names } => {
            let (removed, outcome) = each(&names, "schedule", "not removed", async |n| {
                api.remove_schedule(n).await?;
                if output == Output::Table {
                    outln!("{n}");
                }
                Ok(n.to_string())
            })
            .await;
            print(output, &removed, || {})?;
            outcome?;
        }
    }
    Ok(())
}

/// `flotilla logs`: each record printed to stdout or stderr as it came from the container,
/// prefixed by the container's name when the task has several; with `-o json`/`yaml`, each
/// record whole, on stdout.
async fn logs(
    api: &Client,
    task: &str,
    query: LogQuery,
    timestamps: bool,
    output: Output,
) -> Result<()> {
    use std::io::Write;
    let info = api.task(task).await?;
    let prefix = query.container.is_none() && info.containers.len() > 1;
    let mut stream = api.logs(task, &query).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        // A quiet task sends nothing for a long time: end once the reader has gone.
        let l = tokio::select! {
            l = stream.next() => l?,
            () = flotilla_api::stdout::closed() => {
                return Err(flotilla_api::stdout::closed_error().into())
            }
        };
        let Some(l) = l else { break };
        if output != Output::Table {
            print_record(output, &l)?;
            continue;
        }
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
    Ok(())
}

/// `flotilla events`: pages of events, then (with `follow`) new ones as they come.
async fn events(
    api: &Client,
    mut since: u64,
    limit: u32,
    filter: &EventFilter,
    follow: bool,
    output: Output,
) -> Result<()> {
    if output == Output::Table {
        outln!(
            "{:>6}  {:<20}  {:<28} {:<16} MESSAGE",
            "SEQ",
            "TIME",
            "KIND",
            "SUBJECT"
        );
    }
    loop {
        let list = api.events_matching(since, limit, filter).await?;
        for e in &list {
            if output == Output::Table {
                outln!(
                    "{:>6}  {:<20}  {:<28} {:<16} {}",
                    e.seq,
                    when(e.time),
                    printable(&e.kind),
                    printable(&e.subject),
                    printable(&e.message)
                );
            } else {
                print_record(output, e)?;
            }
        }
        since = list.last().map_or(since, |e| e.seq);
        if !follow {
            return Ok(());
        }
        if list.len() < limit as usize {
            wait_or_reader_gone(Duration::from_secs(1)).await?;
        }
    }
}

fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths = column_widths(header, rows);
    table_row(header, &widths);
    for r in rows {
        table_row(r, &widths);
    }
}

/// The width of each column: its widest cell.
fn column_widths<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.as_ref().chars().count());
        }
    }
    widths
}

/// One line of a table, its cells padded to `widths`.
fn table_row<S: AsRef<str>>(cells: &[S], widths: &[usize]) {
    let s: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{:w$}", c.as_ref()))
        .collect();
    outln!("{}", s.join("  ").trim_end());
}

/// What an `ls` shows: its columns, and each item with its key and its row.
struct Listing<T> {
    header: &'static [&'static str],
    items: Vec<(String, Vec<String>, T)>,
}

/// Columns that change with the clock alone (`AGE`, `LAST SEEN`): `-w` does not count them as
/// a change of the item, as `kubectl get -w` does not.
const CLOCK_COLUMNS: &[&str] = &["AGE", "LAST SEEN", "JOINED", "CERTIFICATE"];

/// The cells of `row` that say what the item is, not how long ago something was.
fn what_changes(header: &[&str], row: &[String]) -> Vec<String> {
    header
        .iter()
        .zip(row)
        .filter(|(h, _)| !CLOCK_COLUMNS.contains(h))
        .map(|(_, c)| c.clone())
        .collect()
}

/// Prints a listing — a table, or the API's list as JSON or YAML; with `-w`, then polls every
/// 2 s and prints each item that appeared or changed (a row under the same columns, a line of
/// JSON, or a YAML document), as `kubectl get -w` does.
async fn list<T, F, Fut>(output: Output, w: WatchArgs, fetch: F) -> Result<()>
where
    T: serde::Serialize,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Listing<T>>>,
{
    let first = fetch().await?;
    let rows: Vec<Vec<String>> = first.items.iter().map(|(_, r, _)| r.clone()).collect();
    if !w.watch {
        let items: Vec<&T> = first.items.iter().map(|(_, _, t)| t).collect();
        return print(output, &items, || table(first.header, &rows));
    }
    let mut widths = column_widths(first.header, &rows);
    let emit = |row: &[String], item: &T, widths: &[usize]| -> Result<()> {
        match output {
            Output::Table | Output::Wide => table_row(row, widths),
            Output::Json => outln!("{}", serde_json::to_string(item)?),
            Output::Yaml => out!("---\n{}", yaml_serde::to_string(item)?),
        }
        Ok(())
    };
    if output == Output::Table {
        table_row(first.header, &widths);
    }
    let mut seen: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for (key, row, item) in &first.items {
        emit(row, item, &widths)?;
        seen.insert(key.clone(), what_changes(first.header, row));
    }
    loop {
        wait_or_reader_gone(WATCH_EVERY).await?;
        let next = fetch().await?;
        for (key, row, item) in &next.items {
            let now = what_changes(next.header, row);
            if seen.get(key) == Some(&now) {
                continue;
            }
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
            emit(row, item, &widths)?;
            seen.insert(key.clone(), now);
        }
    }
}

/// Prints a listing page by page as the pages come, the same text as the whole listing at
/// once would be — one table (its columns as wide as the first page needs, widened for a
/// later page's longer cells), one JSON array, one YAML sequence — without holding the pages
/// already printed.
struct PagePrinter {
    output: Output,
    /// The table's column widths, once its header is printed.
    widths: Option<Vec<usize>>,
    /// Items printed.
    printed: usize,
}

impl PagePrinter {
    fn new(output: Output) -> Self {
        Self {
            output,
            widths: None,
            printed: 0,
        }
    }

    fn page<T: serde::Serialize>(&mut self, page: &Listing<T>) -> Result<()> {
        match self.output {
            Output::Table | Output::Wide => {
                let rows: Vec<Vec<String>> = page.items.iter().map(|(_, r, _)| r.clone()).collect();
                let widths = match &mut self.widths {
                    Some(w) => {
                        for (w, h) in w.iter_mut().zip(column_widths(page.header, &rows)) {
                            *w = (*w).max(h);
                        }
                        w
                    }
                    None => {
                        let w = column_widths(page.header, &rows);
                        table_row(page.header, &w);
                        self.widths.insert(w)
                    }
                };
                for r in &rows {
                    table_row(r, widths);
                }
            }
            Output::Json => {
                for (_, _, item) in &page.items {
                    // `serde_json::to_string_pretty` of the whole array, an item at a time.
                    out!("{}", if self.printed == 0 { "[\n" } else { ",\n" });
                    let text = serde_json::to_string_pretty(item)?;
                    let lines: Vec<String> = text.lines().map(|l| format!("  {l}")).collect();
                    out!("{}", lines.join("\n"));
                    self.printed += 1;
                }
            }
            Output::Yaml => {
                for (_, _, item) in &page.items {
                    out!("{}", yaml_serde::to_string(&[item])?);
                    self.printed += 1;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self.output {
            Output::Table | Output::Wide => {}
            Output::Json if self.printed == 0 => outln!("[]"),
            Output::Json => outln!("\n]"),
            Output::Yaml if self.printed == 0 => {
                out!("{}", yaml_serde::to_string(&Vec::<u8>::new())?)
            }
            Output::Yaml => {}
        }
        Ok(())
    }
}

/// Waits `d`, or less when standard output's reader goes away meanwhile: then the closed pipe
/// as an error, which ends the command quietly (`flotilla service ls -w | head -1` ends once
/// `head` has, even when nothing changes and so nothing is written).
async fn wait_or_reader_gone(d: Duration) -> Result<()> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = flotilla_api::stdout::closed() => Err(flotilla_api::stdout::closed_error().into()),
    }
}

/// How often `-w` polls.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Every task `filter` matches, as `task ls` shows them (`-w`'s listing: every page).
async fn task_listing(
    api: &Client,
    wide: bool,
    filter: &flotilla_client::TaskFilter,
) -> Result<Listing<TaskInfo>> {
    Ok(task_rows(api.task_pages(filter, PAGE)?.all().await?, wide))
}

/// Tasks as `task ls` shows them.
fn task_rows(tasks: Vec<TaskInfo>, wide: bool) -> Listing<TaskInfo> {
    let now = now_secs();
    let items = tasks
        .into_iter()
        .map(|t| {
            let mut row = vec![
                t.id.clone(),
                t.task_definition.clone(),
                t.node.clone().unwrap_or_default(),
                format!("{:?}", t.state).to_uppercase(),
                format!("{:?}", t.desired).to_uppercase(),
                age(now, t.created_at),
            ];
            if wide {
                row.extend(task_wide_cells(&t));
            }
            row.push(cell(t.stop_reason.as_deref().unwrap_or_default()));
            (t.id.clone(), row, t)
        })
        .collect();
    let header: &'static [&'static str] = if wide {
        &[
            "ID",
            "TASK DEFINITION",
            "NODE",
            "STATE",
            "DESIRED",
            "AGE",
            "SERVICE",
            "ADDRESS",
            "PORTS",
            "CONTAINERS",
            "RESTARTS",
            "STOP REASON",
        ]
    } else {
        &[
            "ID",
            "TASK DEFINITION",
            "NODE",
            "STATE",
            "DESIRED",
            "AGE",
            "STOP REASON",
        ]
    };
    Listing { header, items }
}

/// `task ls -o wide`'s own cells: service, address, published ports (`HOST->CONTAINER`),
/// containers with their states, and their restarts together.
fn task_wide_cells(t: &TaskInfo) -> [String; 5] {
    let service = t.service().unwrap_or_default().to_string();
    let address = t
        .network
        .as_ref()
        .and_then(|n| n.address)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ports = t
        .network
        .iter()
        .flat_map(|n| &n.bindings)
        .map(|b| format!("{}->{}", b.host_port, b.container_port))
        .collect::<Vec<_>>()
        .join(",");
    let containers = t
        .containers
        .iter()
        .map(|c| format!("{}:{}", c.name, format!("{:?}", c.state).to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let restarts: u32 = t.containers.iter().map(|c| c.restarts).sum();
    [
        service,
        address,
        ports,
        cell(&containers),
        restarts.to_string(),
    ]
}

/// Every node `filter` matches, as `node ls` shows them (`-w`'s listing: every page).
async fn node_listing(
    api: &Client,
    wide: bool,
    filter: &flotilla_client::NodeFilter,
) -> Result<Listing<NodeInfo>> {
    Ok(node_rows(api.node_pages(filter, PAGE)?.all().await?, wide))
}

/// Nodes as `node ls` shows them.
fn node_rows(nodes: Vec<NodeInfo>, wide: bool) -> Listing<NodeInfo> {
    let now = now_secs();
    let items = nodes
        .into_iter()
        .map(|n| {
            let r = n.resources.clone().unwrap_or_default();
            let mut row = vec![
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
                n.last_seen
                    .map(|t| format!("{} ago", age(now, t)))
                    .unwrap_or_default(),
            ];
            if wide {
                let reported = n.resources.is_some();
                row.extend([
                    if reported {
                        format!("{:.2}", r.load1_milli as f64 / 1000.0)
                    } else {
                        String::new()
                    },
                    if reported {
                        format!("{}/{}", gib(r.disk_available_bytes), gib(r.disk_bytes))
                    } else {
                        String::new()
                    },
                    age(now, n.joined_at),
                    if n.cert_not_after > now {
                        format!("in {}", age(n.cert_not_after, now))
                    } else {
                        "expired".to_string()
                    },
                ]);
            }
            row.push(labels_text(&n.labels));
            (n.id.clone(), row, n)
        })
        .collect();
    let header: &'static [&'static str] = if wide {
        &[
            "ID",
            "HOSTNAME",
            "STATE",
            "CPUS",
            "MEMORY FREE/TOTAL",
            "AGENT",
            "LAST SEEN",
            "LOAD",
            "DISK FREE/TOTAL",
            "JOINED",
            "CERTIFICATE",
            "LABELS",
        ]
    } else {
        &[
            "ID",
            "HOSTNAME",
            "STATE",
            "CPUS",
            "MEMORY FREE/TOTAL",
            "AGENT",
            "LAST SEEN",
            "LABELS",
        ]
    };
    Listing { header, items }
}

async fn service_listing(api: &Client) -> Result<Listing<ServiceInfo>> {
    let items = api
        .services()
        .await?
        .into_iter()
        .map(|s| {
            let primary = s
                .deployments
                .iter()
                .find(|d| d.status == flotilla_api::service::DeploymentStatus::Primary);
            let row = vec![
                s.spec.service_name.clone(),
                s.spec.scheduling_strategy.to_string(),
                s.spec.task_definition.clone(),
                s.spec.desired_count.to_string(),
                s.running_count.to_string(),
                s.pending_count.to_string(),
                s.completed_count.to_string(),
                primary
                    .map(|d| d.rollout_state.to_string())
                    .unwrap_or_default(),
                // Why tasks wait (`service inspect` says it too): the column a person scans
                // for when RUNNING stays below DESIRED.
                // The problem says itself what it is: tasks that cannot be placed ("no node
                // can take a task: …", "room for 1 of 2 tasks: …") or keep failing to start.
                cell(s.placement_problem.as_deref().unwrap_or_default()),
            ];
            (s.spec.service_name.clone(), row, s)
        })
        .collect();
    Ok(Listing {
        header: &[
            "NAME",
            "MODE",
            "TASK DEFINITION",
            "DESIRED",
            "RUNNING",
            "PENDING",
            "COMPLETED",
            "ROLLOUT",
            "PROBLEM",
        ],
        items,
    })
}

/// Seconds since the epoch, now.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Longest text of a free-text column (a stop reason, a problem) in a listing: a row stays on
/// one line of a terminal; the whole text is in `inspect` and in `-o json`, as `docker ps`
/// cuts its COMMAND column unless asked not to.
const CELL_CHARS: usize = 80;

/// `text` on one line and at most [`CELL_CHARS`] characters, cut with `…`.
fn cell(text: &str) -> String {
    let one_line = printable(&text.split_whitespace().collect::<Vec<_>>().join(" "));
    if one_line.chars().count() <= CELL_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(CELL_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// `text` safe for a terminal: control characters (an escape sequence, a carriage return, a
/// newline) shown escaped (`\u{1b}`, `\r`, `\n`), so text from elsewhere can neither
/// restyle the terminal nor fake a line of the listing.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// How long ago `then` was, as `kubectl` prints ages: `42s`, `3m12s` (under 10 minutes), `27m`,
/// `5h8m` (under 8 hours), `20h`, `3d4h` (under 8 days), `12d`; a time ahead of this machine's
/// clock is `0s`.
fn age(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{m}m{}s", s % 60),
        600..10_800 => format!("{m}m"),
        10_800..28_800 => format!("{h}h{}m", m % 60),
        28_800..172_800 => format!("{h}h"),
        172_800..691_200 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
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

/// Does `one` to each of `targets` in turn, going on past a failure as `docker rm` does: each
/// failure is said on standard error naming its target (`error: web: …`). Answers what was
/// done, and the command's outcome: for one target its own error; for several, when any
/// failed, how many (`2 of 3 services not removed`, `noun` and `failed` naming them).
pub(crate) async fn each<T>(
    targets: &[String],
    noun: &str,
    failed: &str,
    mut one: impl AsyncFnMut(&str) -> Result<T>,
) -> (Vec<T>, Result<()>) {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for t in targets {
        match one(t).await {
            Ok(d) => done.push(d),
            Err(e) => errors.push((t, e)),
        }
    }
    let outcome = match errors.len() {
        0 => Ok(()),
        1 if targets.len() == 1 => Err(errors.remove(0).1),
        n => {
            for (t, e) in &errors {
                errln!("error: {t}: {}", flotilla_api::errors::chain(e.as_ref()));
            }
            Err(anyhow::anyhow!(
                "{n} of {} {} {failed}",
                targets.len(),
                flotilla_api::plural(targets.len(), noun)
            ))
        }
    };
    (done, outcome)
}

/// Prints `value` as JSON or YAML, or runs `human` for the table output.
fn print<T: serde::Serialize>(output: Output, value: &T, human: impl FnOnce()) -> Result<()> {
    match output {
        Output::Table | Output::Wide => human(),
        Output::Json => outln!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => out!("{}", yaml_serde::to_string(value)?),
    }
    Ok(())
}

/// Prints a document shown whole (`inspect`): YAML with `-o yaml`, JSON otherwise.
fn print_document<T: serde::Serialize>(output: Output, value: &T) -> Result<()> {
    match output {
        Output::Yaml => out!("{}", yaml_serde::to_string(value)?),
        Output::Table | Output::Wide | Output::Json => {
            outln!("{}", serde_json::to_string_pretty(value)?)
        }
    }
    Ok(())
}

/// Prints one record of a stream (events, log lines): one line of JSON, or one YAML document
/// after a `---` separator.
fn print_record<T: serde::Serialize>(output: Output, value: &T) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match output {
        Output::Yaml => write!(out, "---\n{}", yaml_serde::to_string(value)?)?,
        Output::Table | Output::Wide | Output::Json => {
            writeln!(out, "{}", serde_json::to_string(value)?)?
        }
    }
    out.flush()?;
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    // `wide` is a table with more columns where a listing has them.
    let wide = cli.output == Output::Wide;
    let output = if wide { Output::Table } else { cli.output };
    let command = match cli.command {
        Command::Dev(args) => return dev::run(args, cli.config).await,
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            return Ok(());
        }
        Command::Cluster(c) => c,
    };
    // A wrong flag is said before the credential is read or the control plane reached.
    if let ClusterCommand::Service(ServiceCommand::Autoscale(a)) = &command {
        scaling::check(a)?;
    }
    // `compose config` reads files only: no credential needed.
    if let ClusterCommand::Compose(a) = &command {
        if let Some(done) = compose::run_local(a, output) {
            return done;
        }
        // A missing or broken compose file is said before a missing credential.
        compose::check(a)?;
    }
    let named = cli.config.is_some();
    let api = match Client::open(&config_dir(cli.config)?).await {
        Err(ClientError::Credential { dir, source }) => {
            return Err(anyhow::Error::new(source).context(no_credential(&dir, named)))
        }
        opened => opened?,
    };
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
            let t = api.create_token(&req).await?;
            print(output, &t, || outln!("{}", t.token))?;
        }
        ClusterCommand::Token(TokenCommand::Ls) => {
            let list = api.tokens().await?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            print(output, &list, || {
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
            let (removed, outcome) = each(&ids, "token", "not removed", async |id| {
                api.remove_token(id).await?;
                if output == Output::Table {
                    outln!("{id}");
                }
                Ok(id.to_string())
            })
            .await;
            print(output, &removed, || {})?;
            outcome?;
        }
        ClusterCommand::Node(NodeCommand::Ls(a)) => {
            let filter = a.filter();
            if a.watch.watch {
                list(output, a.watch, || node_listing(&api, wide, &filter)).await?
            } else {
                let mut pages = api.node_pages(&filter, a.chunk_size)?;
                let mut printer = PagePrinter::new(output);
                while let Some(page) = pages.next_page().await? {
                    printer.page(&node_rows(page, wide))?;
                }
                printer.finish()?;
            }
        }
        ClusterCommand::Node(NodeCommand::Inspect { id }) => {
            print_document(output, &api.node(&id).await?)?;
        }
        ClusterCommand::Node(NodeCommand::Revoke { id }) => {
            let n = api.revoke_node(&id).await?;
            print(output, &n, || outln!("revoked {}", n.id))?;
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
            let n = api.label_node(&id, &change).await?;
            print(output, &n, || outln!("{} {}", n.id, labels_text(&n.labels)))?;
        }
        ClusterCommand::Node(NodeCommand::Drain { id }) => {
            let n = api.drain_node(&id).await?;
            print(output, &n, || outln!("draining {}", n.id))?;
        }
        ClusterCommand::Node(NodeCommand::Activate { id }) => {
            let n = api.activate_node(&id).await?;
            print(output, &n, || outln!("active {}", n.id))?;
        }
        ClusterCommand::Node(NodeCommand::Rm { id, force }) => {
            api.remove_node(&id, force).await?;
            print(output, &[&id], || outln!("{id}"))?;
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
            let tasks = api.run_task(&req).await?;
            print(output, &tasks, || {
                for t in &tasks {
                    outln!("{} on {}", t.id, t.node.as_deref().unwrap_or("-"));
                }
            })?;
        }
        ClusterCommand::Service(cmd) => service(&api, cmd, output).await?,
        ClusterCommand::Schedule(cmd) => schedule(&api, cmd, output).await?,
        ClusterCommand::Scaling(cmd) => scaling::run(&api, cmd, output).await?,
        ClusterCommand::Secret(cmd) => secret::run(&api, cmd, output).await?,
        ClusterCommand::Config(cmd) => secret::run_config(&api, cmd, output).await?,
        ClusterCommand::Compose(args) => compose::run(&api, args, output).await?,
        ClusterCommand::Top(cmd) => top::run(&api, cmd, output).await?,
        ClusterCommand::Image(cmd) => image::run(&api, cmd, output).await?,
        ClusterCommand::Task(TaskCommand::Ls(a)) => {
            let filter = a.filter();
            if a.watch.watch {
                list(output, a.watch, || task_listing(&api, wide, &filter)).await?
            } else {
                let mut pages = api.task_pages(&filter, a.chunk_size)?;
                let mut printer = PagePrinter::new(output);
                while let Some(page) = pages.next_page().await? {
                    printer.page(&task_rows(page, wide))?;
                }
                printer.finish()?;
            }
        }
        ClusterCommand::Task(TaskCommand::Inspect { id }) => {
            print_document(output, &api.task(&id).await?)?;
        }
        ClusterCommand::Task(TaskCommand::Stop { ids }) => {
            let (stopped, outcome) = each(&ids, "task", "not stopped", async |id| {
                let t = api.stop_task(id).await?;
                if output == Output::Table {
                    outln!("{} {}", t.id, format!("{:?}", t.state).to_uppercase());
                }
                Ok(t)
            })
            .await;
            print(output, &stopped, || {})?;
            outcome?;
        }
        ClusterCommand::Events {
            since,
            limit,
            follow,
            kind,
            subject,
        } => {
            let filter = EventFilter { kind, subject };
            events(&api, since, limit, &filter, follow, output).await?
        }
        ClusterCommand::Exec(args) => exec::run(&api, args).await?,
        ClusterCommand::Logs {
            task,
            container,
            follow,
            tail,
            timestamps,
        } => {
            let query = LogQuery {
                container,
                follow,
                tail,
            };
            logs(&api, &task, query, timestamps, output).await?
        }
        ClusterCommand::Taskdef(TaskdefCommand::Register {
            file,
            family,
            cpu,
            memory,
        }) => {
            let mut document = read_input(&file)?;
            let fields: Vec<(&str, &str)> =
                [("family", &family), ("cpu", &cpu), ("memory", &memory)]
                    .into_iter()
                    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
                    .collect();
            if !fields.is_empty() {
                let text = String::from_utf8(document)
                    .with_context(|| format!("{} is not UTF-8 text", file.display()))?;
                document = flotilla_api::taskdef::with_fields(&text, &fields)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("reading {}", file.display()))?
                    .into_bytes();
            }
            let r = api
                .register_taskdef(&document)
                .await
                .with_context(|| format!("registering {}", file.display()))?;
            for w in &r.warnings {
                errln!("warning: {w}");
            }
            print(output, &r, || outln!("{}:{}", r.family, r.revision))?;
        }
        ClusterCommand::Taskdef(TaskdefCommand::Ls) => {
            let list = api.taskdefs().await?;
            print(output, &list, || {
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
            print_document(output, &api.taskdef(&taskdef).await?)?;
        }
        ClusterCommand::Taskdef(TaskdefCommand::Deregister { taskdef }) => {
            let t = api.deregister_taskdef(&taskdef).await?;
            print(output, &t, || {
                outln!("deregistered {}:{}", t.family, t.revision)
            })?;
        }
        ClusterCommand::Admin(AdminCommand::Issue { name, out }) => {
            flotilla_certs::validate_name(&name)?;
            let key = key_and_csr(&name)?;
            let req = AdminIssue {
                name: name.clone(),
                csr_pem: key.cert_pem.clone(),
            };
            let c = api.issue_admin(&req).await?;
            Credential {
                server: api.server().to_string(),
                name: name.clone(),
                ca_pem: c.ca_pem.clone(),
                identity: CertifiedKey {
                    cert_pem: c.cert_pem.clone(),
                    key_pem: key.key_pem,
                },
            }
            .write(&out)?;
            // The answer (certificate and CA; the key never left this machine).
            print(output, &c, || {
                outln!("admin credential for {name} written to {}", out.display())
            })?;
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
            errln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if closed_pipe(&*e) => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(e) if e.is::<exec::ExitWith>() => {
            ExitCode::from(e.downcast_ref::<exec::ExitWith>().map_or(1, |x| x.0))
        }
        Err(e) if e.is::<exec::ExitWithMessage>() => {
            errln!("error: {e}");
            ExitCode::from(e.downcast_ref::<exec::ExitWithMessage>().map_or(1, |x| x.0))
        }
        Err(e) => {
            let text = flotilla_api::errors::chain(e.as_ref());
            // rustls' words for a server certificate no anchor of ours signed.
            let hint = if text.contains("UnknownIssuer") {
                " — the control plane there is not of the cluster this credential is for (its \
                 certificate is signed by another CA): name that cluster's credential with \
                 `--config DIR`"
            } else {
                ""
            };
            errln!("error: {text}{hint}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn each_goes_on_past_a_failure_and_says_how_many_failed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let targets: Vec<String> = ["a", "bad", "c", "worse"].map(String::from).to_vec();
        let (done, outcome) =
            rt.block_on(super::each(&targets, "service", "not removed", async |t| {
                anyhow::ensure!(!t.contains('b') && !t.contains('w'), "no service {t}");
                Ok(t.to_uppercase())
            }));
        assert_eq!(done, ["A", "C"]);
        assert_eq!(
            outcome.expect_err("two failed").to_string(),
            "2 of 4 services not removed"
        );
        // One target: its own error, as it always was.
        let one = vec!["bad".to_string()];
        let (done, outcome) = rt.block_on(super::each(
            &one,
            "service",
            "not removed",
            async |t| -> anyhow::Result<()> { anyhow::bail!("no service {t}") },
        ));
        assert!(done.is_empty());
        assert_eq!(outcome.expect_err("failed").to_string(), "no service bad");
    }

    /// Every command's flags are consistent (no short option used twice in one command, as
    /// `compose -f FILE logs -f` once had), checked by clap on the whole tree.
    #[test]
    fn the_command_tree_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn free_text_cells_stay_on_one_line_and_are_cut_with_an_ellipsis() {
        assert_eq!(super::cell("short reason"), "short reason");
        assert_eq!(super::cell("two\nlines"), "two lines");
        let long = "é".repeat(200);
        let c = super::cell(&long);
        assert_eq!(c.chars().count(), super::CELL_CHARS);
        assert!(c.ends_with('…'));
        assert_eq!(
            super::cell(&"x".repeat(super::CELL_CHARS)),
            "x".repeat(super::CELL_CHARS)
        );
    }

    #[test]
    fn text_from_elsewhere_cannot_restyle_the_terminal_or_fake_a_line() {
        assert_eq!(super::printable("plain é"), "plain é");
        assert_eq!(super::printable("x\n\u{1b}[31mRED"), "x\\n\\u{1b}[31mRED");
        assert_eq!(super::cell("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
    }

    #[test]
    fn the_clock_alone_is_no_change() {
        let header = ["ID", "STATE", "AGE"];
        let row = |state: &str, age: &str| vec!["t-1".to_string(), state.into(), age.into()];
        assert_eq!(
            super::what_changes(&header, &row("RUNNING", "3s")),
            super::what_changes(&header, &row("RUNNING", "5s"))
        );
        assert_ne!(
            super::what_changes(&header, &row("RUNNING", "3s")),
            super::what_changes(&header, &row("STOPPED", "5s"))
        );
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let now = 100_000_000;
        for (ago, want) in [
            (0, "0s"),
            (42, "42s"),
            (119, "119s"),
            (192, "3m12s"),
            (27 * 60, "27m"),
            (5 * 3600 + 8 * 60, "5h8m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (12 * 86_400, "12d"),
        ] {
            assert_eq!(age(now, now - ago), want, "{ago} s");
        }
        // A time ahead of this clock is not negative.
        assert_eq!(age(now, now + 30), "0s");
    }
}
