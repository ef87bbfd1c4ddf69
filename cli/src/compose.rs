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
    /// Remove the project's services and the task definitions only they used, and wait until
    /// their tasks have stopped. Named volumes stay on the nodes (`nodeagent ctr volume rm`
    /// removes one there), and so do the secrets and configs `up` created (`flotilla secret
    /// rm`). A project that has no service is nothing to remove (not an error).
    Down {
        /// Seconds to wait for the tasks to stop.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
        /// (Not on a fleet: named volumes stay on the nodes; says how to remove them.)
        #[arg(short = 'v', long)]
        volumes: bool,
    },
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
    /// Run a command in a running task of SERVICE, as `flotilla exec` does (with this
    /// terminal as its input and a pseudo-terminal when standard input is one, as `docker
    /// compose exec`; `-T` for none).
    Exec {
        /// No pseudo-terminal, and standard input only when it is not a terminal.
        #[arg(short = 'T', long = "no-tty")]
        no_tty: bool,
        /// Which of the service's running tasks, by age from 1.
        #[arg(long, default_value_t = 1)]
        index: usize,
        /// The Compose service.
        service: String,
        /// The command and its arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
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
            let applied = std::sync::Mutex::new(Vec::new());
            tokio::select! {
                done = up(
                    api,
                    &plan,
                    *detach,
                    *remove_orphans,
                    Duration::from_secs(*wait_timeout),
                    output,
                    &applied,
                ) => done,
                _ = tokio::signal::ctrl_c() => {
                    let applied = applied.lock().map(|a| a.clone()).unwrap_or_default();
                    let missing: Vec<&str> = plan
                        .services
                        .iter()
                        .map(|s| s.name.as_str())
                        .filter(|n| !applied.iter().any(|a| a == n))
                        .collect();
                    if applied.is_empty() {
                        bail!("interrupted: nothing of project {} was applied", plan.project)
                    }
                    bail!(
                        "interrupted: project {} is applied up to {} (not yet: {}); the applied \
                         services keep running. `flotilla compose up` again finishes it, \
                         `flotilla compose down` removes it",
                        plan.project,
                        applied.join(", "),
                        if missing.is_empty() { "-".to_string() } else { missing.join(", ") }
                    )
                }
            }
        }
        ComposeCommand::Down { timeout, .. } => {
            let name = project_name(&args)?;
            down(api, &name, Duration::from_secs(*timeout), output).await
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
        ComposeCommand::Exec {
            no_tty,
            index,
            service,
            command,
        } => {
            let name = project_name(&args)?;
            let s = chosen(api, &name, std::slice::from_ref(service))
                .await?
                .remove(0);
            let mut tasks: Vec<_> = api
                .tasks()
                .await?
                .into_iter()
                .filter(|t| {
                    t.service() == Some(s.spec.service_name.as_str())
                        && t.state == TaskState::Running
                })
                .collect();
            tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            let Some(task) = index.checked_sub(1).and_then(|i| tasks.get(i)) else {
                bail!(
                    "{}: {} running tasks, no task {index} (`flotilla compose ps` lists them)",
                    compose_name(&s),
                    tasks.len()
                );
            };
            let terminal = rustix::termios::isatty(std::io::stdin());
            let args = crate::exec::ExecArgs::new(
                task.id.clone(),
                None,
                true,
                terminal && !no_tty,
                command.clone(),
            );
            crate::exec::run(api, args).await
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
    let loaded = flotilla_compose::load(&options(args)?)
        .map_err(problems)
        .map_err(|e| {
            e.context(
                "which project? name it with -p NAME, or run this where its compose file is \
                 (`flotilla compose ls` lists the projects)",
            )
        })?;
    Ok(loaded.name)
}

/// The project `name` as the control plane has it; an unknown one is said with how to find
/// the known ones.
async fn project_info(api: &Client, name: &str) -> Result<flotilla_api::project::ProjectInfo> {
    match api.project(name).await {
        Err(e) if e.status() == Some(404) => bail!(
            "no project {name} in the cluster (`flotilla compose ls` lists the projects; `up` makes one)"
        ),
        other => Ok(other?),
    }
}

/// What `flotilla compose` can tell before the credential is read: that the files load and
/// map (for `up`), or which project is meant (for the rest). Prints nothing.
pub fn check(args: &ComposeArgs) -> Result<()> {
    match &args.command {
        ComposeCommand::Up { .. } => {
            let loaded = flotilla_compose::load(&options(args)?).map_err(problems)?;
            let plan = flotilla_compose::plan(&loaded).map_err(problems)?;
            if !plan.refusals.is_empty() {
                return Err(problems(plan.refusals));
            }
            Ok(())
        }
        ComposeCommand::Down { volumes: true, .. } => bail!(
            "down -v: named volumes live on each node that ran the project's tasks, and the \
             control plane does not manage volumes yet: remove one there with `nodeagent ctr \
             volume rm PROJECT_VOLUME` after `flotilla compose down` (nothing was removed)"
        ),
        ComposeCommand::Config { .. } | ComposeCommand::Ls => Ok(()),
        _ => project_name(args).map(drop),
    }
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
    applied_so_far: &std::sync::Mutex<Vec<String>>,
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
    let mut printed = BTreeSet::new();
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
        if let Ok(mut so_far) = applied_so_far.lock() {
            *so_far = applied.iter().map(|s| s.name.clone()).collect();
        }
        for c in &done.services {
            let entry = changes
                .entry(c.service.clone())
                .or_insert((c.task_definition.clone(), c.change));
            if entry.1 == Change::Unchanged && c.change != Change::Unchanged {
                *entry = (c.task_definition.clone(), c.change);
            }
            // Each change as it is made; what stayed as it was, at the end.
            if output == Output::Table
                && c.change != Change::Unchanged
                && printed.insert(c.service.clone())
            {
                outln!("{:<10} {} ({})", c.change, c.service, c.task_definition);
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
        for c in result
            .services
            .iter()
            .filter(|c| !printed.contains(&c.service))
        {
            outln!("{:<10} {} ({})", c.change, c.service, c.task_definition);
        }
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
    } else if let Ok(p) = api.project(&plan.project).await {
        // Returned without waiting: say now what keeps a service from running.
        for s in &p.services {
            if let Some(why) = &s.placement_problem {
                errln!(
                    "warning: {}: {} (its tasks wait until a node can take them)",
                    s.spec.service_name,
                    cell(why)
                );
            }
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

/// Failed tasks of a service's deployment after which `up` stops waiting for it.
const FAILED_TASKS: usize = 3;

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
    // Tasks that failed (not stopped on purpose): past a few, waiting longer is a crash loop
    // (a database never ready, a command that exits), as `docker compose up` stops at the
    // first failure of a dependency.
    let failures = tasks
        .iter()
        .filter(|t| {
            t.state == TaskState::Stopped
                && !t
                    .stop_code
                    .is_some_and(flotilla_api::tasks::StopCode::is_retirement)
        })
        .count();
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
        })
        .or_else(|| {
            (failures >= FAILED_TASKS && condition != Condition::CompletedSuccessfully).then(|| {
                format!(
                    "{failures} of its tasks failed{}",
                    last_stop.replacen(';', ":", 1).trim_end()
                )
            })
        });
    // A one-shot service's tasks that completed (its completionPolicy does not run them
    // again) count as started, and as healthy: they did their work.
    let completed = primary.map_or(0, |d| d.completed_count as usize);
    let done = if completed > 0 {
        format!(", {completed} completed")
    } else {
        String::new()
    };
    Ok(match condition {
        Condition::Started => Progress {
            met: running.len() + completed >= want,
            failed: breaker,
            state: format!(
                "{}/{want} tasks running{done}{}{last_stop}",
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
                met: want == 0 || healthy + completed >= want,
                failed: breaker
                    .or_else(|| unhealthy.map(|t| format!("task {} is unhealthy", t.id))),
                state: format!(
                    "{}/{want} tasks running, {healthy} healthy{done}{}{last_stop}",
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
            // A failed run is tried again unless the service replaces nothing: give up at
            // once then, or after a few failed runs.
            let retried =
                info.spec.completion_policy.replace != flotilla_api::service::ReplaceStopped::Never;
            let failed_runs = ended.len();
            Progress {
                met: done,
                failed: (failed_runs > 0 && (!retried || failed_runs >= FAILED_TASKS)).then(|| {
                    format!(
                        "{failed_runs} of its runs failed{}",
                        last_stop.replacen(';', ":", 1).trim_end()
                    )
                }),
                state: if failed_runs == 0 {
                    format!("{} tasks, none ended yet", tasks.len())
                } else {
                    format!("{failed_runs} runs failed; tried again{last_stop}")
                },
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

/// `down`: the project's services removed, then their tasks waited for.
async fn down(api: &Client, project: &str, timeout: Duration, output: Output) -> Result<()> {
    let done = match api.remove_project(project).await {
        Ok(done) => done,
        Err(e) if e.status() == Some(404) => {
            errln!("project {project} has no service: nothing to remove (`flotilla compose ls` lists the projects)");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    print(output, &done, || print_changes(&done))?;
    let removed: BTreeSet<&str> = done.services.iter().map(|c| c.service.as_str()).collect();
    let start = Instant::now();
    loop {
        let live = api
            .tasks()
            .await?
            .into_iter()
            .filter(|t| t.service().is_some_and(|s| removed.contains(s)))
            .filter(|t| t.state != TaskState::Stopped)
            .count();
        if live == 0 {
            break;
        }
        if start.elapsed() >= timeout {
            bail!(
                "project {project}: {live} tasks had not stopped within {} s (`flotilla task ls` shows them)",
                timeout.as_secs()
            );
        }
        crate::wait_or_reader_gone(Duration::from_secs(1)).await?;
    }
    // What `up` made that `down` keeps.
    let prefix = format!("{project}-");
    for kind in [ValueKind::Secret, ValueKind::Config] {
        let kept: Vec<String> = api
            .values(kind)
            .await?
            .into_iter()
            .map(|v| v.name)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        if !kept.is_empty() {
            errln!(
                "kept: {}s {} (`flotilla {} rm NAME` removes one)",
                noun(kind),
                kept.join(", "),
                noun(kind)
            );
        }
    }
    Ok(())
}

fn print_changes(done: &ProjectApplied) {
    for c in &done.services {
        outln!("{:<10} {} ({})", c.change, c.service, c.task_definition);
    }
}

/// The project's services named (by their Compose name, or their Flotilla name), or all.
async fn chosen(api: &Client, project: &str, names: &[String]) -> Result<Vec<ServiceInfo>> {
    let p = project_info(api, project).await?;
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
    let p = project_info(api, project).await?;
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
        // A service without tasks has no row: say why.
        for svc in &p.services {
            if let Some(why) = &svc.placement_problem {
                errln!(
                    "{}: not every task is placed: {}",
                    compose_name(svc),
                    cell(why)
                );
            }
        }
    })
}

/// The tasks `logs` reads, and each one's prefix: `SERVICE-N`, N counting the service's
/// tasks by age from 1, as Compose numbers containers.
#[derive(Debug, Default)]
struct Streams {
    seen: BTreeSet<String>,
    numbered: BTreeMap<String, usize>,
}

impl Streams {
    /// The running tasks of `services` not read yet, oldest first, with their prefixes.
    ///
    /// Only a task whose containers have started (RUNNING, or STOPPING with its logs still
    /// there) is taken: a task still PROVISIONING or PENDING has no log to open yet, and is
    /// left for a later call instead of being marked read with a failed stream.
    async fn new_tasks(
        &mut self,
        api: &Client,
        services: &[ServiceInfo],
    ) -> Result<Vec<(String, String)>> {
        let mut tasks = api.tasks().await?;
        tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut new = Vec::new();
        for s in services {
            let mine: Vec<_> = tasks
                .iter()
                .filter(|t| {
                    t.service() == Some(s.spec.service_name.as_str())
                        && matches!(t.state, TaskState::Running | TaskState::Stopping)
                        && !self.seen.contains(&t.id)
                })
                .collect();
            for t in mine {
                let n = self
                    .numbered
                    .entry(s.spec.service_name.clone())
                    .or_default();
                *n += 1;
                self.seen.insert(t.id.clone());
                new.push((format!("{}-{n}", compose_name(s)), t.id.clone()));
            }
        }
        Ok(new)
    }
}

type LogItem = (
    String,
    Result<Option<flotilla_api::LogLine>, flotilla_client::ClientError>,
);

/// Reads one task's log stream into `tx`, each record with `prefix`.
fn stream_task(
    api: &Client,
    tx: &tokio::sync::mpsc::Sender<LogItem>,
    prefix: String,
    task: String,
    query: &LogQuery,
) {
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
    let names: Vec<String> = chosen.iter().map(|s| s.spec.service_name.clone()).collect();
    let mut streams = Streams::default();
    let first = streams.new_tasks(api, &chosen).await?;
    if first.is_empty() {
        let names: Vec<&str> = chosen.iter().map(compose_name).collect();
        if !query.follow {
            bail!(
                "project {project}: no running task of {} (stopped tasks' logs went with their containers)",
                names.join(", ")
            );
        }
        // Between a rollout's stop of the old task and the start of the new one, say: the
        // services are followed, so their next tasks are waited for.
        errln!(
            "project {project}: no running task of {} yet; waiting for one",
            names.join(", ")
        );
    }
    // Every prefix is `SERVICE-N`: aligned on the longest service name, as Compose aligns them.
    let width = chosen
        .iter()
        .map(|s| compose_name(s).len() + 2)
        .max()
        .unwrap_or(0);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    for (prefix, task) in first {
        stream_task(api, &tx, prefix, task, &query);
    }
    if query.follow {
        // Follow the services, not only their tasks of now: a task that replaces one (a
        // rollout, `compose restart`, a crash) is followed too, numbered on.
        let (api, tx, query, project) =
            (api.clone(), tx.clone(), query.clone(), project.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Ok(p) = api.project(&project).await else {
                    continue;
                };
                let chosen: Vec<ServiceInfo> = p
                    .services
                    .into_iter()
                    .filter(|s| names.contains(&s.spec.service_name))
                    .collect();
                let Ok(new) = streams.new_tasks(&api, &chosen).await else {
                    continue;
                };
                for (prefix, task) in new {
                    stream_task(&api, &tx, prefix, task, &query);
                }
                if tx.is_closed() {
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
