//! `flotilla compose`: a Compose project deployed onto the fleet, with the `docker compose`
//! verbs that make sense there.
//!
//! The files are loaded and mapped here, on the operator's machine (`flotilla-compose`); the
//! control plane sees a project: task definitions and services applied in one command each
//! time (`PUT /v1/projects/{name}`), changing only what differs. `up` applies the services in
//! the order their `depends_on` asks — a service is applied once the services it depends on
//! meet their conditions (`service_started`: its tasks running; `service_healthy`: running
//! and passing their health checks; `service_completed_successfully`: a task that ended with
//! every exit code 0) — as `docker compose up` starts containers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use flotilla_api::project::{Change, ProjectApplied, ProjectApply, ProjectService};
use flotilla_api::secrets::{SecretPut, SecretValue};
use flotilla_api::service::{SchedulingStrategy, ServiceInfo, ServiceUpdate};
use flotilla_api::tasks::{HealthStatus, TaskState};
use flotilla_api::{errln, outln};
use flotilla_client::{Client, LogQuery, ValueKind};
use flotilla_compose::plan::{Condition, Plan, ServicePlan, ValueOrigin};
use flotilla_compose::{LoadOptions, Loaded};

use crate::{cell, print, print_document, printable, table, when, Output};

/// `flotilla compose [-f FILE]… [-p NAME] …`.
#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    /// Compose file (repeatable: later files override earlier ones, merged as Compose merges
    /// them). Default: compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml
    /// in this directory, then its compose.override.yml (or .yaml, or docker-compose.override.*)
    /// there if any.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Project name: the discovery namespace of its services, and the prefix of their names
    /// (default: `name:` in the file, else COMPOSE_PROJECT_NAME, else the directory's name).
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    project: Option<String>,
    /// Variables for interpolation (repeatable; default: .env in the project directory). The
    /// environment wins over them.
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Enable services of this profile (repeatable; also COMPOSE_PROFILES).
    #[arg(long = "profile", value_name = "PROFILE")]
    profiles: Vec<String>,
    #[command(subcommand)]
    command: ComposeCommand,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum ComposeCommand {
    /// Print the project as loaded (files merged, variables interpolated, `extends` and
    /// profiles applied), then on standard error every key that does not map onto the fleet.
    Config {
        /// Only the services' names, one a line.
        #[arg(long)]
        services: bool,
    },
    /// Create or update the project's services, in `depends_on` order, then wait until every
    /// service runs its tasks (and they pass their health checks). A second `up` with the
    /// same files changes nothing.
    Up {
        /// Return once the services are applied (dependencies are still waited for).
        #[arg(short = 'd', long)]
        detach: bool,
        /// Remove the project's services that are no longer in the files.
        #[arg(long)]
        remove_orphans: bool,
        /// Seconds to wait for a dependency's condition, and without `-d` for the services.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        wait_timeout: u64,
    },
    /// Remove the project's services (their tasks stop) and the task definitions only they
    /// used. Named volumes stay on the nodes (`nodeagent ctr volume rm` removes one there).
    Down,
    /// The project's tasks.
    Ps {
        /// Also stopped tasks.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// The logs of the project's running tasks (or of these services'), each line prefixed
    /// with its service and task.
    Logs {
        /// Services (default: all).
        services: Vec<String>,
        /// Keep printing new lines (Ctrl-C to stop).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines of each container.
        #[arg(long)]
        tail: Option<u32>,
        /// Prefix each line with its time.
        #[arg(short = 't', long)]
        timestamps: bool,
    },
    /// Replace the tasks of the project's services (or of these) with new ones, as a rolling
    /// deployment.
    Restart {
        /// Services (default: all).
        services: Vec<String>,
    },
    /// Set services' task counts: SERVICE=N (until the next `up`, which sets the files' count).
    Scale {
        /// SERVICE=N pairs.
        #[arg(value_name = "SERVICE=N", required = true)]
        pairs: Vec<String>,
    },
    /// The projects of the cluster.
    Ls,
}

/// Runs a `flotilla compose` command that needs no control plane (`config`); `None` for the
/// others.
pub fn run_local(args: &ComposeArgs, output: Output) -> Option<Result<()>> {
    match &args.command {
        ComposeCommand::Config { services } => Some(config(args, *services, output)),
        _ => None,
    }
}

fn config(args: &ComposeArgs, services: bool, output: Output) -> Result<()> {
    let (loaded, plan) = load_and_plan(args)?;
    if services {
        for s in &plan.services {
            outln!("{}", s.name);
        }
        return Ok(());
    }
    let output = if output == Output::Table {
        Output::Yaml
    } else {
        output
    };
    print_document(output, &loaded.document)
}

/// Runs a `flotilla compose` command.
pub async fn run(api: &Client, args: ComposeArgs, output: Output) -> Result<()> {
    match &args.command {
        ComposeCommand::Config { services } => config(&args, *services, output),
        ComposeCommand::Up {
            detach,
            remove_orphans,
            wait_timeout,
        } => {
            let (_, plan) = load_and_plan(&args)?;
            up(
                api,
                &plan,
                *detach,
                *remove_orphans,
                Duration::from_secs(*wait_timeout),
                output,
            )
            .await
        }
        ComposeCommand::Down => {
            let name = project_name(&args)?;
            let done = api.remove_project(&name).await?;
            print(output, &done, || print_changes(&done))
        }
        ComposeCommand::Ps { all } => ps(api, &project_name(&args)?, *all, output).await,
        ComposeCommand::Logs {
            services,
            follow,
            tail,
            timestamps,
        } => {
            let name = project_name(&args)?;
            let query = LogQuery {
                container: None,
                follow: *follow,
                tail: *tail,
            };
            logs(api, &name, services, query, *timestamps, output).await
        }
        ComposeCommand::Restart { services } => {
            let name = project_name(&args)?;
            let mut done = Vec::new();
            for s in chosen(api, &name, services).await? {
                let update = ServiceUpdate {
                    force_new_deployment: true,
                    ..Default::default()
                };
                done.push(api.update_service(&s.spec.service_name, &update).await?);
            }
            print(output, &done, || {
                for s in &done {
                    outln!("{} restarting", s.spec.service_name);
                }
            })
        }
        ComposeCommand::Scale { pairs } => {
            let name = project_name(&args)?;
            let mut wanted = Vec::new();
            for p in pairs {
                let (s, n) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow!("'{}': not SERVICE=N", printable(p)))?;
                let n: u32 = n
                    .parse()
                    .map_err(|_| anyhow!("'{}': N is not a count", printable(p)))?;
                wanted.push((s.to_string(), n));
            }
            let names: Vec<String> = wanted.iter().map(|(s, _)| s.clone()).collect();
            let found = chosen(api, &name, &names).await?;
            let mut done = Vec::new();
            for ((_, n), s) in wanted.iter().zip(found) {
                if s.spec.scheduling_strategy == SchedulingStrategy::Daemon {
                    bail!(
                        "{}: a global service (DAEMON) runs one task on every node; it has no count",
                        s.spec.service_name
                    );
                }
                let update = ServiceUpdate {
                    desired_count: Some(*n),
                    ..Default::default()
                };
                done.push(api.update_service(&s.spec.service_name, &update).await?);
            }
            print(output, &done, || {
                for s in &done {
                    outln!("{} scaled to {}", s.spec.service_name, s.spec.desired_count);
                }
            })
        }
        ComposeCommand::Ls => {
            let list = api.projects().await?;
            print(output, &list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.services.to_string(),
                            format!("{}/{}", p.running_count, p.desired_count),
                        ]
                    })
                    .collect();
                table(&["NAME", "SERVICES", "RUNNING"], &rows);
            })
        }
    }
}

/// What `-f`, `-p`, `--env-file` and `--profile` say, for the loader.
fn options(args: &ComposeArgs) -> Result<LoadOptions> {
    let mut profiles = args.profiles.clone();
    if let Ok(p) = std::env::var("COMPOSE_PROFILES") {
        profiles.extend(
            p.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from),
        );
    }
    Ok(LoadOptions {
        files: args.files.clone(),
        working_dir: std::env::current_dir().context("the current directory")?,
        project_name: args.project.clone(),
        env_files: args.env_files.clone(),
        profiles,
        environment: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    })
}

/// Loads and maps the project; prints every warning on standard error.
fn load_and_plan(args: &ComposeArgs) -> Result<(Loaded, Plan)> {
    let loaded = flotilla_compose::load(&options(args)?).map_err(problems)?;
    let plan = flotilla_compose::plan(&loaded).map_err(problems)?;
    for w in loaded.warnings.iter().chain(&plan.warnings) {
        errln!("warning: {}", printable(w));
    }
    for r in &plan.refusals {
        errln!("warning: {} (`compose up` refuses this)", printable(r));
    }
    Ok((loaded, plan))
}

/// The project's name: `-p`, or what loading the files says.
fn project_name(args: &ComposeArgs) -> Result<String> {
    if let Some(p) = &args.project {
        if !flotilla_api::discovery::is_label(p) {
            bail!(
                "-p {}: a project name is 1-63 lowercase letters, digits and '-', not starting or ending with '-'",
                printable(p)
            );
        }
        return Ok(p.clone());
    }
    let loaded = flotilla_compose::load(&options(args)?).map_err(problems)?;
    Ok(loaded.name)
}

fn problems(list: Vec<String>) -> anyhow::Error {
    let mut text = String::new();
    for (i, p) in list.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&printable(p));
    }
    anyhow!("{text}")
}

/// `up`: the values the files provide, then the services stage by stage.
async fn up(
    api: &Client,
    plan: &Plan,
    detach: bool,
    remove_orphans: bool,
    timeout: Duration,
    output: Output,
) -> Result<()> {
    if !plan.refusals.is_empty() {
        return Err(problems(plan.refusals.clone()));
    }
    if plan.services.is_empty() {
        bail!(
            "project {}: no service to run (check --profile)",
            plan.project
        );
    }
    let stages = flotilla_compose::plan::stages(plan).map_err(|e| anyhow!(e))?;
    provide_values(api, plan).await?;
    let by_name: BTreeMap<&str, &ServicePlan> =
        plan.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut applied: Vec<&ServicePlan> = Vec::new();
    let mut changes: BTreeMap<String, (String, Change)> = BTreeMap::new();
    let mut warnings = BTreeSet::new();
    let mut last = None;
    for (i, stage) in stages.iter().enumerate() {
        for name in stage {
            let s = by_name
                .get(name.as_str())
                .ok_or_else(|| anyhow!("stage names unknown service {name}"))?;
            for d in &s.depends_on {
                let Some(dep) = by_name.get(d.service.as_str()) else {
                    continue;
                };
                wait_for(api, &plan.project, dep, d.condition, timeout).await?;
            }
            applied.push(s);
        }
        let final_step = i + 1 == stages.len();
        let req = ProjectApply {
            services: applied
                .iter()
                .map(|s| ProjectService {
                    task_definition: s.spec.task_definition.clone(),
                    service: s.spec.service.clone(),
                })
                .collect(),
            remove_orphans: final_step && remove_orphans,
        };
        let done = api.apply_project(&plan.project, &req).await?;
        for c in &done.services {
            let entry = changes
                .entry(c.service.clone())
                .or_insert((c.task_definition.clone(), c.change));
            if entry.1 == Change::Unchanged {
                *entry = (c.task_definition.clone(), c.change);
            }
        }
        warnings.extend(done.warnings.iter().cloned());
        last = Some(done);
    }
    for w in &warnings {
        errln!("warning: {}", printable(w));
    }
    let mut result = last.ok_or_else(|| anyhow!("no stage applied"))?;
    result.services = changes
        .into_iter()
        .map(
            |(service, (task_definition, change))| flotilla_api::project::ServiceChange {
                service,
                task_definition,
                change,
            },
        )
        .collect();
    if output == Output::Table {
        print_changes(&result);
    }
    if !remove_orphans {
        let mine: BTreeSet<&str> = plan
            .services
            .iter()
            .map(|s| s.service_name.as_str())
            .collect();
        if let Ok(p) = api.project(&plan.project).await {
            for s in p
                .services
                .iter()
                .filter(|s| !mine.contains(s.spec.service_name.as_str()))
            {
                errln!(
                    "warning: service {} of project {} is not in the files; `flotilla compose up --remove-orphans` removes it",
                    s.spec.service_name,
                    plan.project
                );
            }
        }
    }
    if !detach {
        for s in &plan.services {
            wait_for(api, &plan.project, s, Condition::Started, timeout).await?;
            if has_health_check(s) {
                wait_for(api, &plan.project, s, Condition::Healthy, timeout).await?;
            }
        }
        if output == Output::Table {
            outln!("project {}: every service is running", plan.project);
        }
    }
    if output != Output::Table {
        print(output, &result, || {})?;
    }
    Ok(())
}

/// Creates the secrets and configs the files provide (`file:`, `content:`, `environment:`)
/// that the control plane does not have yet. One it has is left as it is: a changed file is
/// a new version only through `flotilla secret rotate` / `flotilla config update`, which the
/// note printed here says.
async fn provide_values(api: &Client, plan: &Plan) -> Result<()> {
    for v in &plan.values {
        let kind = match v.kind {
            flotilla_compose::plan::ValueKind::Secret => ValueKind::Secret,
            flotilla_compose::plan::ValueKind::Config => ValueKind::Config,
        };
        match api.value_info(kind, &v.name).await {
            Ok(_) => continue,
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
        let bytes = match &v.origin {
            // Bounded: a path to /dev/zero or a FIFO fails at once rather than eating memory
            // or blocking.
            ValueOrigin::File(path) => {
                flotilla_compose::files::read_bounded(path, flotilla_api::secrets::MAX_VALUE as u64)
                    .with_context(|| {
                        format!("{} {}: reading {}", noun(kind), v.name, path.display())
                    })?
            }
            ValueOrigin::Content(text) => text.clone().into_bytes(),
            ValueOrigin::Environment(var) => std::env::var(var)
                .map_err(|_| {
                    anyhow!(
                        "{} {}: the environment variable {var} is not set",
                        noun(kind),
                        v.name
                    )
                })?
                .into_bytes(),
        };
        if let Some(why) = flotilla_api::secrets::value_problem(&bytes) {
            bail!("{} {}: {why}", noun(kind), v.name);
        }
        let put = SecretPut {
            name: v.name.clone(),
            value: SecretValue(bytes),
        };
        api.create_value(kind, &put).await?;
        errln!(
            "{} {} created (a later change of its source needs `flotilla {} {} {}`)",
            noun(kind),
            v.name,
            noun(kind),
            match kind {
                ValueKind::Secret => "rotate",
                ValueKind::Config => "update",
            },
            v.name
        );
    }
    Ok(())
}

fn noun(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Secret => "secret",
        ValueKind::Config => "config",
    }
}

fn has_health_check(s: &ServicePlan) -> bool {
    s.spec.task_definition["containerDefinitions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c.get("healthCheck").is_some()))
}

/// Where a service is, as `up` waits on it.
struct Progress {
    met: bool,
    /// Why it cannot be met any more (a task unhealthy, a one-shot task failed, a deployment
    /// stopped by its circuit breaker): `up` stops at once, as `docker compose up` does.
    failed: Option<String>,
    /// What is missing, for the wait's message.
    state: String,
}

/// Waits until `s` meets `condition`, printing each new state; gives up after `timeout`
/// naming what it last saw, or at once when the condition cannot be met.
async fn wait_for(
    api: &Client,
    project: &str,
    s: &ServicePlan,
    condition: Condition,
    timeout: Duration,
) -> Result<()> {
    if condition == Condition::Healthy && !has_health_check(s) {
        bail!(
            "{project}: {} has no healthcheck in the files, so service_healthy cannot be met \
             (Flotilla does not run an image's HEALTHCHECK): give it one, or depend on it with \
             condition: service_started",
            s.name
        );
    }
    let start = Instant::now();
    let mut shown = String::new();
    loop {
        let p = progress(api, s, condition).await?;
        if p.met {
            return Ok(());
        }
        if let Some(why) = p.failed {
            bail!("{project}: {} cannot be {}: {why}", s.name, what(condition));
        }
        if p.state != shown {
            errln!(
                "{project}: waiting for {} to be {}: {}",
                s.name,
                what(condition),
                p.state
            );
            shown = p.state.clone();
        }
        if start.elapsed() >= timeout {
            bail!(
                "{project}: {} was not {} within {} s: {}",
                s.name,
                what(condition),
                timeout.as_secs(),
                p.state
            );
        }
        crate::wait_or_reader_gone(Duration::from_secs(1)).await?;
    }
}

fn what(c: Condition) -> &'static str {
    match c {
        Condition::Started => "running",
        Condition::Healthy => "healthy",
        Condition::CompletedSuccessfully => "completed successfully",
    }
}

async fn progress(api: &Client, s: &ServicePlan, condition: Condition) -> Result<Progress> {
    let info = api.service(&s.service_name).await?;
    let primary = info.deployments.first();
    let primary_id = primary.map(|d| d.id.clone());
    let mut tasks: Vec<_> = api
        .tasks()
        .await?
        .into_iter()
        .filter(|t| t.service() == Some(s.service_name.as_str()) && t.deployment == primary_id)
        .collect();
    tasks.sort_by_key(|t| t.created_at);
    let running: Vec<_> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .collect();
    let want = match info.spec.scheduling_strategy {
        SchedulingStrategy::Replica => info.spec.desired_count as usize,
        SchedulingStrategy::Daemon => tasks
            .iter()
            .filter(|t| t.state != TaskState::Stopped)
            .count()
            .max(1),
    };
    // The newest stopped task's reason, for a service whose tasks keep ending.
    let last_stop = tasks
        .iter()
        .rev()
        .find(|t| t.state == TaskState::Stopped)
        .map(|t| {
            let exit = t
                .containers
                .iter()
                .find_map(|c| c.exit_code.filter(|&e| e != 0))
                .map(|e| format!(", exit code {e}"))
                .unwrap_or_default();
            format!(
                "; the last task stopped: {}{exit}",
                cell(t.stop_reason.as_deref().unwrap_or("no reason given"))
            )
        })
        .unwrap_or_default();
    let breaker = primary
        .filter(|d| d.rollout_state == flotilla_api::service::RolloutState::Failed)
        .map(|d| {
            format!(
                "its deployment failed: {}",
                cell(
                    d.rollout_state_reason
                        .as_deref()
                        .unwrap_or("no reason given")
                )
            )
        });
    Ok(match condition {
        Condition::Started => Progress {
            met: running.len() >= want,
            failed: breaker,
            state: format!(
                "{}/{want} tasks running{}{last_stop}",
                running.len(),
                problem(&info)
            ),
        },
        Condition::Healthy => {
            let healthy = running
                .iter()
                .filter(|t| {
                    t.containers
                        .iter()
                        .all(|c| c.health.is_none_or(|h| h == HealthStatus::Healthy))
                        && t.containers.iter().any(|c| c.health.is_some())
                })
                .count();
            let unhealthy = running.iter().find(|t| {
                t.containers
                    .iter()
                    .any(|c| c.health == Some(HealthStatus::Unhealthy))
            });
            Progress {
                met: want == 0 || healthy >= want,
                failed: breaker
                    .or_else(|| unhealthy.map(|t| format!("task {} is unhealthy", t.id))),
                state: format!(
                    "{}/{want} tasks running, {healthy} healthy{}{last_stop}",
                    running.len(),
                    problem(&info)
                ),
            }
        }
        Condition::CompletedSuccessfully => {
            let ended: Vec<_> = tasks
                .iter()
                .filter(|t| t.state == TaskState::Stopped && !t.containers.is_empty())
                .collect();
            let done = ended
                .iter()
                .any(|t| t.containers.iter().all(|c| c.exit_code == Some(0)));
            Progress {
                met: done,
                failed: ended.first().map(|t| {
                    format!(
                        "task {} ended without success{}",
                        t.id,
                        last_stop.trim_start_matches(';')
                    )
                }),
                state: format!("{} tasks, none ended yet", tasks.len()),
            }
        }
    })
}

fn problem(info: &ServiceInfo) -> String {
    info.placement_problem
        .as_deref()
        .map(|p| format!(" ({})", cell(p)))
        .unwrap_or_default()
}

fn print_changes(done: &ProjectApplied) {
    for c in &done.services {
        outln!("{:<10} {} ({})", c.change, c.service, c.task_definition);
    }
}

/// The project's services named (by their Compose name, or their Flotilla name), or all.
async fn chosen(api: &Client, project: &str, names: &[String]) -> Result<Vec<ServiceInfo>> {
    let p = api.project(project).await?;
    if names.is_empty() {
        return Ok(p.services);
    }
    names
        .iter()
        .map(|n| {
            p.services
                .iter()
                .find(|s| compose_name(s) == n || &s.spec.service_name == n)
                .cloned()
                .ok_or_else(|| anyhow!("project {project} has no service {}", printable(n)))
        })
        .collect()
}

/// A service's name in its project: its discovery name.
fn compose_name(s: &ServiceInfo) -> &str {
    s.spec
        .discovery
        .as_ref()
        .map_or(s.spec.service_name.as_str(), |d| d.name.as_str())
}

async fn ps(api: &Client, project: &str, all: bool, output: Output) -> Result<()> {
    let p = api.project(project).await?;
    let names: BTreeMap<&str, &str> = p
        .services
        .iter()
        .map(|s| (s.spec.service_name.as_str(), compose_name(s)))
        .collect();
    let tasks: Vec<_> = api
        .tasks()
        .await?
        .into_iter()
        .filter(|t| t.service().is_some_and(|s| names.contains_key(s)))
        .filter(|t| all || t.state != TaskState::Stopped)
        .collect();
    print(output, &tasks, || {
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                let health: Vec<&str> = t
                    .containers
                    .iter()
                    .filter_map(|c| c.health.map(HealthStatus::as_str))
                    .collect();
                vec![
                    names[t.service().unwrap_or_default()].to_string(),
                    t.id.clone(),
                    t.task_definition.clone(),
                    t.node.clone().unwrap_or_else(|| "-".into()),
                    format!("{:?}", t.state).to_uppercase(),
                    if health.is_empty() {
                        "-".into()
                    } else {
                        health.join(",")
                    },
                    when(t.created_at),
                ]
            })
            .collect();
        table(
            &[
                "SERVICE",
                "TASK",
                "TASK DEFINITION",
                "NODE",
                "STATE",
                "HEALTH",
                "CREATED",
            ],
            &rows,
        );
    })
}

/// `logs`: every chosen task's stream at once, each line prefixed `SERVICE-N | ` (N counts
/// the service's tasks by age, from 1, as Compose numbers containers).
async fn logs(
    api: &Client,
    project: &str,
    services: &[String],
    query: LogQuery,
    timestamps: bool,
    output: Output,
) -> Result<()> {
    use std::io::Write;
    let chosen = chosen(api, project, services).await?;
    let mut tasks = api.tasks().await?;
    tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let mut streams = Vec::new();
    for s in &chosen {
        let mine = tasks.iter().filter(|t| {
            t.service() == Some(s.spec.service_name.as_str()) && t.state != TaskState::Stopped
        });
        for (i, t) in mine.enumerate() {
            streams.push((format!("{}-{}", compose_name(s), i + 1), t.id.clone()));
        }
    }
    if streams.is_empty() {
        bail!("project {project}: no running task");
    }
    let width = streams.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    for (prefix, task) in streams {
        let (api, tx, query) = (api.clone(), tx.clone(), query.clone());
        tokio::spawn(async move {
            let mut stream = match api.logs(&task, &query).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send((prefix, Err(e))).await;
                    return;
                }
            };
            loop {
                let l = stream.next().await;
                let end = !matches!(l, Ok(Some(_)));
                if end {
                    if let Err(e) = l {
                        let _ = tx.send((prefix, Err(e))).await;
                    }
                    return;
                }
                if tx.send((prefix.clone(), l)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        let got = tokio::select! {
            got = rx.recv() => got,
            () = flotilla_api::stdout::closed() => {
                return Err(flotilla_api::stdout::closed_error().into())
            }
        };
        let Some((prefix, line)) = got else { break };
        let l = match line {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                errln!("{prefix}: {e}");
                continue;
            }
        };
        if output != Output::Table {
            crate::print_record(output, &l)?;
            continue;
        }
        let w: &mut dyn Write = if l.stream == "stderr" {
            &mut err
        } else {
            &mut out
        };
        write!(w, "{prefix:<width$} | ")?;
        if timestamps {
            write!(w, "{} ", l.time)?;
        }
        write!(w, "{}", l.text)?;
        if !l.partial {
            writeln!(w)?;
        }
        w.flush()?;
    }
    Ok(())
}
