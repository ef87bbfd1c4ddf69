//! Power cuts for real: a control plane and a node agent on one guest's persistent virtual
//! disk (see [`crate::vm`]) under a steady write load, the guest killed at random moments, and
//! after each boot a check that both stores opened, every write the API acknowledged is there,
//! the node's containers are what the desired state says, and no task runs twice.
//!
//! # One cycle, one boot
//!
//! Each boot (busybox init, [`crate::vm::Init::Script`]: about 5 s where systemd takes 25;
//! the units were already proven under a power cut by `cgroup_v2.rs`, and nothing checked here
//! depends on who started the daemons) starts both daemons from the disk, then runs this
//! binary in the guest twice: `guest-check` waits until the cluster has converged (or a time
//! limit passes) and writes what the API and the node hold to the host-visible `out/`;
//! `guest-load` then drives the write load and logs every acknowledged write there, one line
//! at a time. The host cuts the power at a seeded random moment of the load (or, one cycle in
//! eight, of the recovery itself, before the check ends), merges the acknowledged lines that
//! reached it into its ledger, and boots the same disk again, whose check is judged against
//! the whole ledger ([`verdict`]).
//!
//! # The acknowledged-write ledger
//!
//! `guest-load` writes `try-run`, `run ID`, `try-stop ID`, `stop ID`, `try-scale N` and
//! `scale N` lines, each with one `write(2)` to a 9p file (no guest cache), so a line the host
//! reads after the cut was written before it. A `run`, `stop` or `scale` line is a write the
//! API acknowledged; a `try-` line is one it may or may not have committed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::ops::{NodeInfo, TaskInfo};
use flotilla_api::service::ServiceInfo;
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_runtime::container::{ContainerInfo, Status};

use crate::vm::{Disk, Init, Vm, VmOptions};

/// The task definition the load runs: one container that stops at once on SIGTERM.
pub const TASKDEF: &str = r#"{
  "family": "load",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait; done"]
  }]
}"#;

/// The service whose count the load changes.
pub const SERVICE: &str = "svc";

/// The service's definition, created at count 0.
pub const SERVICE_JSON: &str = r#"{"serviceName":"svc","taskDefinition":"load","desiredCount":0}"#;

/// At most this many tasks run outside the service, so a cycle's recovery stays short.
const MAX_TASKS: usize = 4;

/// The highest count the load scales the service to.
const MAX_SCALE: u32 = 2;

/// A small seeded generator (splitmix64): a run is repeated by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the API acknowledged (and what it was asked without an answer), over every boot.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Per acknowledged task: whether a stop was acknowledged, and whether one was asked.
    tasks: BTreeMap<String, TaskLedger>,
    /// The service's count last acknowledged, and counts asked since without an answer.
    scale: Option<u32>,
    scale_tried: BTreeSet<u32>,
    /// Acknowledged writes so far.
    acknowledged: u64,
}

#[derive(Debug, Default, Clone)]
struct TaskLedger {
    stop_acknowledged: bool,
    stop_tried: bool,
}

impl Ledger {
    /// Adds one boot's log (what reached the host), line by line.
    pub fn merge(&mut self, log: &str) -> Result<()> {
        // A line cut short by the power cut has no newline: it was never complete.
        let complete = match log.rfind('\n') {
            Some(end) => &log[..end],
            None => "",
        };
        for line in complete.lines() {
            let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
            match verb {
                "try-run" => {}
                "run" => {
                    self.tasks.entry(arg.to_string()).or_default();
                    self.acknowledged += 1;
                }
                "try-stop" => self.task(arg)?.stop_tried = true,
                "stop" => {
                    let t = self.task(arg)?;
                    t.stop_tried = true;
                    t.stop_acknowledged = true;
                    self.acknowledged += 1;
                }
                "try-scale" => {
                    self.scale_tried
                        .insert(arg.parse().context("try-scale count")?);
                }
                "scale" => {
                    self.scale = Some(arg.parse().context("scale count")?);
                    self.scale_tried.clear();
                    self.acknowledged += 1;
                }
                _ => bail!("unknown line in the acknowledged-write log: {line:?}"),
            }
        }
        Ok(())
    }

    fn task(&mut self, id: &str) -> Result<&mut TaskLedger> {
        // The load stops tasks it found in the API, also ones whose run it never heard
        // acknowledged (a run that committed before a cut): those are tracked from here.
        Ok(self.tasks.entry(id.to_string()).or_default())
    }

    /// Whether task `id` is one the ledger knows: its run was acknowledged, or a stop of it
    /// asked.
    pub fn knows(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }
}

/// What a guest's check found: the API's tasks, services and nodes, and the node's containers.
#[derive(Debug)]
pub struct Snapshot {
    /// `flotilla task ls` (every task, stopped ones too).
    pub tasks: Vec<TaskInfo>,
    /// `flotilla service ls`.
    pub services: Vec<ServiceInfo>,
    /// `flotilla node ls`.
    pub nodes: Vec<NodeInfo>,
    /// `nodeagent ctr ps -a`.
    pub containers: Vec<ContainerInfo>,
}

/// Everything wrong with `s`: against the desired state alone, and with a ledger against every
/// acknowledged write. Empty when all holds.
pub fn verdict(s: &Snapshot, ledger: Option<&Ledger>) -> Vec<String> {
    judge(&Look::of(s), ledger)
}

/// What [`verdict`] reads of a snapshot.
#[derive(Debug, Default)]
struct Look {
    /// Nodes: id, connected.
    nodes: Vec<(String, bool)>,
    /// Tasks: id, desired, state, started by.
    tasks: Vec<(String, DesiredStatus, TaskState, Option<String>)>,
    /// The service's count, if it exists.
    service_count: Option<u32>,
    /// Containers: name (`TASK-INDEX`), running.
    containers: Vec<(String, bool)>,
}

impl Look {
    fn of(s: &Snapshot) -> Self {
        Self {
            nodes: s
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.connected))
                .collect(),
            tasks: s
                .tasks
                .iter()
                .map(|t| (t.id.clone(), t.desired, t.state, t.started_by.clone()))
                .collect(),
            service_count: s
                .services
                .iter()
                .find(|v| v.spec.service_name == SERVICE)
                .map(|v| v.spec.desired_count),
            containers: s
                .containers
                .iter()
                .map(|c| (c.record.display_name(), c.status == Status::Running))
                .collect(),
        }
    }
}

fn judge(s: &Look, ledger: Option<&Ledger>) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, connected) in &s.nodes {
        if !connected {
            problems.push(format!("node {id} is not connected"));
        }
    }
    if s.nodes.is_empty() {
        problems.push("no node".into());
    }

    // No two containers of one name; at most one running per task.
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, is_running) in &s.containers {
        *names.entry(name).or_default() += 1;
        if *is_running {
            let task = name.rsplit_once('-').map_or(name.as_str(), |(t, _)| t);
            *running.entry(task).or_default() += 1;
        }
    }
    for (name, n) in &names {
        if *n > 1 {
            problems.push(format!("doubled: {n} containers named {name}"));
        }
    }
    let tasks: BTreeMap<&str, _> = s.tasks.iter().map(|t| (t.0.as_str(), t)).collect();
    for (task, n) in &running {
        match tasks.get(task) {
            None => problems.push(format!(
                "{n} container(s) of task {task} run, which the control plane does not know"
            )),
            Some(_) if *n > 1 => problems.push(format!("doubled: {n} containers of {task} run")),
            Some(_) => {}
        }
    }

    // The node as the desired state says, and the control plane told so.
    for (id, desired, state, _) in &s.tasks {
        let n = running.get(id.as_str()).copied().unwrap_or(0);
        let (want_running, want_state) = match desired {
            DesiredStatus::Running => (1, TaskState::Running),
            DesiredStatus::Stopped => (0, TaskState::Stopped),
        };
        if n != want_running {
            problems.push(format!(
                "task {id} is meant {desired:?}: {n} containers run"
            ));
        }
        if *state != want_state {
            problems.push(format!("task {id} is meant {desired:?}: {state:?}"));
        }
    }
    let service_tag = format!("service:{SERVICE}");
    match s.service_count {
        None => problems.push(format!("no service {SERVICE}")),
        Some(count) => {
            let live = s
                .tasks
                .iter()
                .filter(|t| t.3.as_deref() == Some(service_tag.as_str()))
                .filter(|t| t.1 == DesiredStatus::Running)
                .count();
            if live != count as usize {
                problems.push(format!(
                    "service {SERVICE} wants {count} tasks: {live} meant to run"
                ));
            }
            if let Some(ledger) = ledger {
                let mut allowed = ledger.scale_tried.clone();
                allowed.insert(ledger.scale.unwrap_or(0));
                if !allowed.contains(&count) {
                    problems.push(format!(
                        "lost: service {SERVICE} wants {count}, acknowledged {:?} (asked since: \
                         {:?})",
                        ledger.scale, ledger.scale_tried
                    ));
                }
            }
        }
    }

    // Every acknowledged write is there.
    if let Some(ledger) = ledger {
        for (id, l) in &ledger.tasks {
            let Some((_, desired, state, _)) = tasks.get(id.as_str()) else {
                problems.push(format!("lost: acknowledged task {id} is gone"));
                continue;
            };
            if l.stop_acknowledged && *desired != DesiredStatus::Stopped {
                problems.push(format!(
                    "lost: the stop of {id} was acknowledged: it is meant {desired:?} ({state:?})"
                ));
            }
            if !l.stop_tried && *desired != DesiredStatus::Running {
                problems.push(format!(
                    "task {id} was never stopped: it is meant {desired:?}"
                ));
            }
        }
    }
    problems
}

/// Reads the files a guest's check wrote to `out`.
pub fn read_snapshot(out: &Path) -> Result<Snapshot> {
    fn read<T: serde::de::DeserializeOwned>(out: &Path, name: &str) -> Result<T> {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{name}: {text}"))
    }
    Ok(Snapshot {
        tasks: read(out, "tasks.json")?,
        services: read(out, "services.json")?,
        nodes: read(out, "nodes.json")?,
        containers: read(out, "containers.json")?,
    })
}

// ---------------------------------------------------------------------------------------------
// In the guest

/// The guest's data directory (on the virtual disk).
const DATA: &str = "/var/lib/flotilla";

fn flotilla(args: &[&str]) -> Result<String> {
    let o = Command::new("flotilla")
        .args(["-o", "json"])
        .args(args)
        .output()
        .context("running flotilla")?;
    if !o.status.success() {
        bail!(
            "flotilla {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Writes what the API and the node hold to `out` (`tasks.json` …), through a temporary file
/// each, so the host reads whole files.
fn dump(api: &flotilla_client::blocking::Client, out: &Path) -> Result<()> {
    let put = |name: &str, text: &str| -> Result<()> {
        let tmp = out.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, out.join(name))?;
        Ok(())
    };
    put("tasks.json", &serde_json::to_string(&api.tasks()?)?)?;
    put("services.json", &serde_json::to_string(&api.services()?)?)?;
    put("nodes.json", &serde_json::to_string(&api.nodes()?)?)?;
    let o = Command::new("nodeagent")
        .args(["--data-dir", &format!("{DATA}/nodeagent")])
        .args(["ctr", "ps", "-a", "-o", "json"])
        .output()
        .context("running nodeagent ctr ps")?;
    if !o.status.success() {
        bail!("nodeagent ctr ps: {}", String::from_utf8_lossy(&o.stderr));
    }
    put("containers.json", &String::from_utf8_lossy(&o.stdout))
}

/// Whether the node is connected and every task's state is what it is meant to be.
fn api_settled(api: &flotilla_client::blocking::Client) -> Result<bool> {
    let nodes = api.nodes()?;
    if nodes.is_empty() || nodes.iter().any(|n| !n.connected) {
        return Ok(false);
    }
    Ok(api.tasks()?.iter().all(|t| {
        t.state
            == match t.desired {
                DesiredStatus::Running => TaskState::Running,
                DesiredStatus::Stopped => TaskState::Stopped,
            }
    }))
}

/// `guest-check`: waits for the API, then until the cluster converged (at most `limit`),
/// and leaves the last look in `out` with `checked` (`converged SECS` or `timeout SECS`).
/// The daemons `pids` must still be alive.
pub fn guest_check(out: &Path, limit: Duration, pids: &[u32]) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    let admin = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".config/flotilla");
    let mut api = None;
    let result = loop {
        if let Some(pid) = pids
            .iter()
            .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            break format!("dead {pid} after {:.1}", start.elapsed().as_secs_f64());
        }
        if api.is_none() {
            match flotilla_client::blocking::Client::open(&admin) {
                Ok(c) => api = Some(c),
                Err(e) => last = format!("{e:#}"),
            }
        }
        // The API alone first: the node's store is read (a process of its own) only once the
        // control plane has heard from the node about every task.
        let look = match &api {
            Some(api) => match api_settled(api) {
                Ok(true) => dump(api, out).and_then(|()| read_snapshot(out)),
                Ok(false) => Err(anyhow::anyhow!("the control plane has not heard all yet")),
                Err(e) => Err(e),
            },
            None => Err(anyhow::anyhow!("{last}")),
        };
        match look {
            Ok(s) => {
                let problems = verdict(&s, None);
                if problems.is_empty() {
                    break format!("converged {:.1}", start.elapsed().as_secs_f64());
                }
                last = problems.join("\n");
            }
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            // The last look, whole, for the host's report.
            if let Some(api) = &api {
                if let Ok(s) = dump(api, out).and_then(|()| read_snapshot(out)) {
                    last = verdict(&s, None).join("\n");
                }
            }
            break format!("timeout {:.1}\n{last}", start.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(1000));
    };
    std::fs::write(out.join("checked.tmp"), format!("{result}\n"))?;
    std::fs::rename(out.join("checked.tmp"), out.join("checked"))?;
    Ok(())
}

/// One write of the load, as [`Load::draw`] draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `flotilla task run load --count N`.
    Run(u64),
    /// `flotilla task stop ID`.
    Stop(String),
    /// `flotilla service scale svc N`.
    Scale(u32),
    /// No write: a pause in which only reports flow.
    Pause(Duration),
}

impl Write {
    /// Its `flotilla` arguments (before `-o json`); none for a pause.
    pub fn args(&self) -> Vec<String> {
        let own = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        match self {
            Write::Run(n) => own(&["task", "run", "load", "--count", &n.to_string()]),
            Write::Stop(id) => own(&["task", "stop", id]),
            Write::Scale(n) => own(&["service", "scale", SERVICE, &n.to_string()]),
            Write::Pause(_) => Vec::new(),
        }
    }

    /// The ledger line noted before it is asked (`try-…`); none for a pause.
    pub fn tried(&self) -> Option<String> {
        match self {
            Write::Run(_) => Some("try-run".into()),
            Write::Stop(id) => Some(format!("try-stop {id}")),
            Write::Scale(n) => Some(format!("try-scale {n}")),
            Write::Pause(_) => None,
        }
    }
}

/// The write load of [`guest_load`] and of `soak-disk`: tasks of [`TASKDEF`] run (one or two
/// at a time, at most four outside the service) and stopped, the service [`SERVICE`] scaled
/// (0–2), pauses; drawn from a seed.
#[derive(Debug, Clone)]
pub struct Load {
    rng: Rng,
    /// The tasks outside the service it ran and has not stopped yet.
    mine: Vec<String>,
}

impl Load {
    /// A load from `seed`, its running tasks `mine` (outside the service) so far.
    pub fn new(seed: u64, mine: Vec<String>) -> Self {
        Self {
            rng: Rng::new(seed),
            mine,
        }
    }

    /// The next write (a stop's task is taken off the tasks to stop).
    pub fn draw(&mut self) -> Write {
        match self.rng.below(10) {
            0..=3 if self.mine.len() < MAX_TASKS => Write::Run(1 + self.rng.below(2)),
            0..=6 if !self.mine.is_empty() => {
                let i = self.rng.below(self.mine.len() as u64) as usize;
                Write::Stop(self.mine.swap_remove(i))
            }
            0..=8 => Write::Scale(self.rng.below(u64::from(MAX_SCALE) + 1) as u32),
            _ => Write::Pause(Duration::from_millis(300 + self.rng.below(1500))),
        }
    }

    /// `write` acknowledged, `answer` the `-o json` output: the ledger lines to note (a run's
    /// `run ID` per task it started, which are then among the tasks to stop).
    pub fn acknowledged(&mut self, write: &Write, answer: &str) -> Result<Vec<String>> {
        Ok(match write {
            Write::Run(_) => {
                let started: Vec<TaskInfo> =
                    serde_json::from_str(answer).with_context(|| format!("task run: {answer}"))?;
                started
                    .into_iter()
                    .map(|t| {
                        let line = format!("run {}", t.id);
                        self.mine.push(t.id);
                        line
                    })
                    .collect()
            }
            Write::Stop(id) => vec![format!("stop {id}")],
            Write::Scale(n) => vec![format!("scale {n}")],
            Write::Pause(_) => Vec::new(),
        })
    }

    /// `write` refused for sure (the API answered with an error): a stop's task is still to
    /// be stopped.
    pub fn refused(&mut self, write: &Write) {
        if let Write::Stop(id) = write {
            self.mine.push(id.clone());
        }
    }
}

/// `guest-load`: the write load ([`Load`]), forever (the power cut ends it). Each write is
/// logged to `log` before it is asked (`try-…`) and once acknowledged.
pub fn guest_load(seed: u64, log: &Path) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut note = |line: String| -> Result<()> {
        // One write(2) per line: 9p passes it to the host before it returns.
        file.write_all(format!("{line}\n").as_bytes())?;
        file.flush()?;
        Ok(())
    };
    // The tasks outside the service meant to run: listed once, then kept by the load.
    let tasks: Vec<TaskInfo> = serde_json::from_str(&flotilla(&["task", "ls"])?)?;
    let mine: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.started_by.is_none() && t.desired == DesiredStatus::Running)
        .map(|t| t.id)
        .collect();
    let mut load = Load::new(seed, mine);
    std::fs::write(log.with_file_name("loading"), "")?;
    loop {
        let write = load.draw();
        if let Write::Pause(pause) = write {
            std::thread::sleep(pause);
            continue;
        }
        if let Some(line) = write.tried() {
            note(line)?;
        }
        let args = write.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match flotilla(&args) {
            Ok(text) => {
                for line in load.acknowledged(&write, &text)? {
                    note(line)?;
                }
            }
            Err(e) => eprintln!("{e:#}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// On the host

/// How a power-cut run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Power cuts to make.
    pub cuts: u32,
    /// The seed of every random choice (cut moments, the load's).
    pub seed: u64,
    /// The `power-cuts` binary (its guest modes run in the guest).
    pub harness: PathBuf,
    /// Where the daemons' binaries are (`target/debug`).
    pub bin_dir: PathBuf,
    /// Where to keep each boot's logs, and the disk image when a cycle fails.
    pub keep: Option<PathBuf>,
    /// Put before each cycle's line (a chain's name).
    pub label: String,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Power cuts made.
    pub cuts: u32,
    /// Cuts during the load, and during the recovery before the check ended.
    pub cuts_in_load: u32,
    /// Cuts while the daemons were recovering (before their check was written).
    pub cuts_in_recovery: u32,
    /// Boots whose state was checked.
    pub checks: u32,
    /// Acknowledged writes at the end (each checked at every later boot).
    pub acknowledged: u64,
    /// Tasks the ledger tracks.
    pub tasks: usize,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// Slowest convergence after a boot, in seconds.
    pub slowest_convergence: f64,
}

impl Report {
    /// Adds another chain's figures (the run's time is the caller's to measure).
    pub fn add(&mut self, other: &Report) {
        self.cuts += other.cuts;
        self.cuts_in_load += other.cuts_in_load;
        self.cuts_in_recovery += other.cuts_in_recovery;
        self.checks += other.checks;
        self.acknowledged += other.acknowledged;
        self.tasks += other.tasks;
        self.seconds = self.seconds.max(other.seconds);
        self.slowest_convergence = self.slowest_convergence.max(other.slowest_convergence);
    }
}

/// The guest's script for one boot: the first one installs the cluster.
fn script(o: &Options, cycle: u32, seed: u64) -> String {
    format!(
        r#"set -u
export HOME=/root PATH={bin}:/usr/sbin:/usr/bin:/sbin:/bin
D={DATA}
up() {{ echo "$(cut -d' ' -f1 /proc/uptime) s: $1"; }}
up "boot {cycle}"
if [ ! -e $D/installed ]; then
  orchestratord --data-dir $D/orchestratord init --advertise 127.0.0.1 > /dev/null || exit 1
fi
orchestratord --data-dir $D/orchestratord run > /vm/out/orchestratord.log 2>&1 &
cp=$!
for i in $(seq 600); do flotilla task ls > /dev/null 2>&1 && break; sleep 0.2; done
up "the control plane answers"
if [ ! -e $D/installed ]; then
  set -e
  token=$(flotilla -o json token create | grep -o 'FLT1-[A-Za-z0-9_.-]*' | head -1)
  nodeagent --data-dir $D/nodeagent ctr image import /vm/out/layout --name test/busybox:latest > /dev/null
  nodeagent --data-dir $D/nodeagent join 127.0.0.1 --token "$token" > /dev/null
fi
nodeagent --data-dir $D/nodeagent run > /vm/out/nodeagent.log 2>&1 &
na=$!
: > /vm/out/started
if [ ! -e $D/installed ]; then
  flotilla taskdef register /vm/out/load.json > /dev/null
  flotilla service create /vm/out/svc.json > /dev/null
  sync; touch $D/installed; sync
  set +e
fi
{harness} guest-check --out /vm/out --limit 150 --pids $cp,$na || exit 1
up "checked: $(head -1 /vm/out/checked)"
{harness} guest-load --seed {seed} --log /vm/out/acked.log
"#,
        bin = o.bin_dir.display(),
        harness = o.harness.display(),
    )
}

/// Keeps a boot's logs, as far as they reached the host, under [`Options::keep`]'s
/// `boot-CYCLE/`: each cut boot's and the last, checked one's.
fn keep_boot(o: &Options, cycle: u32, out: &Path) -> Result<()> {
    if let Some(keep) = &o.keep {
        let dir = keep.join(format!("boot-{cycle}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("--keep: {}", dir.display()))?;
        for name in ["script.log", "orchestratord.log", "nodeagent.log"] {
            let _ = std::fs::copy(out.join(name), dir.join(name));
        }
    }
    Ok(())
}

/// Refuses a binary the guest cannot see as the host does: the guest shares the host's root
/// read-only but mounts a tmpfs of its own on `/tmp` and `/run` (`vm.rs`), so a binary there
/// would be missing in the guest and every boot would fail its script.
pub fn hidden_in_guest(path: &Path) -> Result<()> {
    let path = std::path::absolute(path)?;
    for dir in GUEST_OWN_DIRS {
        if path.starts_with(dir) {
            bail!(
                "{} lies under {dir}, which the guest mounts its own: copy the binaries (power-cuts, \
                 orchestratord, nodeagent, flotilla) to a directory elsewhere and run power-cuts \
                 from there",
                path.display()
            );
        }
    }
    Ok(())
}

/// Directories the guest mounts a filesystem of its own on (`vm.rs`).
const GUEST_OWN_DIRS: [&str; 2] = ["/tmp", "/run"];

/// The last `n` bytes of `text` (from a character boundary).
fn tail(text: &str, n: usize) -> &str {
    let mut at = text.len().saturating_sub(n);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}

/// Runs the cycles: boot, check against the ledger, load, cut. Fails at the first cycle whose
/// check finds a problem (keeping the disk and logs under [`Options::keep`]), printing one line
/// per cycle.
pub fn run(o: &Options) -> Result<Report> {
    crate::require_root();
    for path in [&o.harness, &o.bin_dir] {
        hidden_in_guest(path)?;
    }
    let scratch = tempfile::Builder::new().prefix("power-cuts-").tempdir()?;
    let disk = Disk::create(&scratch.path().join("disk.img"), 2048)?;
    let mut rng = Rng::new(o.seed);
    let mut ledger = Ledger::default();
    let mut report = Report::default();
    let started = Instant::now();
    let mut cycle = 0;
    // The last boot's logs, kept for a failure's report.
    let mut previous = String::new();
    loop {
        let boot_started = Instant::now();
        let load_seed = rng.next_u64();
        let mut vm = Vm::start(VmOptions {
            init: Init::Script,
            script: script(o, cycle, load_seed),
            disk: Some(&disk),
            data_at: DATA,
            ..Default::default()
        })?;
        if cycle == 0 {
            use crate::image::{busybox_image, write_layout};
            write_layout(
                &vm.out().join("layout"),
                "test",
                &busybox_image(crate::host_arch()),
            )?;
            std::fs::write(vm.out().join("load.json"), TASKDEF)?;
            std::fs::write(vm.out().join("svc.json"), SERVICE_JSON)?;
        }
        let last = cycle == o.cuts;
        // One cycle in eight (not the first, nor the last, which only checks) is cut while the
        // daemons recover: the agent starting its containers again, reports, the service's
        // tasks placed.
        let in_recovery = cycle > 0 && !last && rng.below(8) == 0;
        // From the moment both daemons were started.
        let recovery_delay = Duration::from_millis(100 + rng.below(10_000));
        let load_delay = Duration::from_millis(2000 + rng.below(12_000));
        let logs = |vm: &Vm| {
            let read = |n: &str| std::fs::read_to_string(vm.out().join(n)).unwrap_or_default();
            format!(
                "--- boot {cycle}: guest ---\n{}\n--- orchestratord ---\n{}\n--- nodeagent ---\n{}",
                vm.report(),
                read("orchestratord.log"),
                read("nodeagent.log")
            )
        };
        let fail = |vm: &Vm, what: String| -> Result<Report> {
            if let Some(keep) = &o.keep {
                std::fs::create_dir_all(keep)?;
                let _ = std::fs::copy(disk.path(), keep.join("disk.img"));
                std::fs::write(keep.join("boot.log"), logs(vm))?;
                std::fs::write(keep.join("previous-boot.log"), &previous)?;
            }
            bail!(
                "cycle {cycle} (seed {}): {what}\n{}\n--- the boot before ---\n{}",
                o.seed,
                logs(vm),
                tail(&previous, 20_000)
            )
        };
        let mut convergence = None;
        if in_recovery {
            if let Err(e) = vm.wait_file("started", Duration::from_secs(300)) {
                return fail(&vm, format!("{e:#}"));
            }
            let deadline = Instant::now() + recovery_delay;
            while Instant::now() < deadline && !vm.out().join("checked").exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !in_recovery || vm.out().join("checked").exists() {
            let checked = match vm.wait_file("checked", Duration::from_secs(400)) {
                Ok(c) => c,
                Err(e) => return fail(&vm, format!("{e:#}")),
            };
            if !checked.starts_with("converged ") {
                return fail(&vm, format!("the boot's check: {checked}"));
            }
            let snapshot = match read_snapshot(vm.out()) {
                Ok(s) => s,
                Err(e) => return fail(&vm, format!("{e:#}")),
            };
            let problems = verdict(&snapshot, Some(&ledger));
            if !problems.is_empty() {
                return fail(&vm, problems.join("\n"));
            }
            report.checks += 1;
            let secs: f64 = checked
                .trim()
                .trim_start_matches("converged ")
                .parse()
                .unwrap_or(0.0);
            report.slowest_convergence = report.slowest_convergence.max(secs);
            convergence = Some(secs);
            if last {
                keep_boot(o, cycle, vm.out())?;
                break;
            }
            if let Err(e) = vm.wait_file("loading", Duration::from_secs(60)) {
                return fail(&vm, format!("{e:#}"));
            }
            std::thread::sleep(load_delay);
            report.cuts_in_load += 1;
        } else {
            report.cuts_in_recovery += 1;
        }
        vm.cut_power()?;
        let out = vm.out().to_path_buf();
        let text = logs(&vm);
        keep_boot(o, cycle, &out)?;
        report.cuts += 1;
        let acked = std::fs::read_to_string(out.join("acked.log")).unwrap_or_default();
        ledger.merge(&acked)?;
        drop(vm);
        previous = text;
        let what = match convergence {
            Some(secs) => format!(
                "checked (converged in {secs:.1} s), cut {:.1} s into the load",
                load_delay.as_secs_f64()
            ),
            None => format!(
                "cut {:.1} s after the daemons started, before the check",
                recovery_delay.as_secs_f64()
            ),
        };
        println!(
            "{}cycle {cycle}: {what}; {} acknowledged writes in all; {:.1} s",
            o.label,
            ledger.acknowledged(),
            boot_started.elapsed().as_secs_f64()
        );
        cycle += 1;
    }
    report.acknowledged = ledger.acknowledged();
    report.tasks = ledger.tasks.len();
    report.seconds = started.elapsed().as_secs_f64();
    // A load that never got a write acknowledged would make every check pass unseen.
    if report.cuts_in_load > 0 && report.acknowledged == 0 {
        bail!(
            "seed {}: the load had no write acknowledged in {} cuts",
            o.seed,
            report.cuts
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(
        id: &str,
        desired: DesiredStatus,
        state: TaskState,
    ) -> (String, DesiredStatus, TaskState, Option<String>) {
        (id.into(), desired, state, None)
    }

    /// A converged node: one task running in one container, one stopped, the service at 0.
    fn converged() -> Look {
        Look {
            nodes: vec![("n-1".into(), true)],
            tasks: vec![
                task("t-a", DesiredStatus::Running, TaskState::Running),
                task("t-b", DesiredStatus::Stopped, TaskState::Stopped),
            ],
            service_count: Some(0),
            containers: vec![("t-a-0".into(), true)],
        }
    }

    fn ledger(log: &str) -> Ledger {
        let mut l = Ledger::default();
        l.merge(log).expect("merge");
        l
    }

    #[test]
    fn binaries_under_the_guests_own_tmp_or_run_are_refused_naming_the_path() {
        for bad in ["/tmp/b/nodeagent", "/run/x/power-cuts", "/tmp"] {
            let e = hidden_in_guest(Path::new(bad)).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(bad)),
                "{bad}: {e:?}"
            );
        }
        for good in [
            "/work/target/debug/nodeagent",
            "/tmpfoo/nodeagent",
            "/srv/run/x",
        ] {
            assert!(hidden_in_guest(Path::new(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_converged_node_with_every_acknowledged_write_passes() {
        let l = ledger("run t-a\nrun t-b\ntry-stop t-b\nstop t-b\nscale 0\n");
        assert_eq!(judge(&converged(), Some(&l)), Vec::<String>::new());
    }

    #[test]
    fn a_lost_task_a_lost_stop_and_a_lost_scale_are_found() {
        let mut look = converged();
        look.tasks[1].1 = DesiredStatus::Running;
        look.tasks[1].2 = TaskState::Running;
        look.containers.push(("t-b-0".into(), true));
        let l = ledger("run t-a\nrun t-b\nstop t-b\nrun t-gone\nscale 2\n");
        let problems = judge(&look, Some(&l)).join("\n");
        assert!(
            problems.contains("lost: acknowledged task t-gone is gone"),
            "{problems}"
        );
        assert!(problems.contains("lost: the stop of t-b"), "{problems}");
        assert!(problems.contains("lost: service svc wants 0"), "{problems}");
    }

    #[test]
    fn a_task_running_twice_is_found() {
        let mut look = converged();
        look.containers.push(("t-a-0".into(), true));
        let problems = judge(&look, None).join("\n");
        assert!(
            problems.contains("doubled: 2 containers named t-a-0"),
            "{problems}"
        );
        assert!(
            problems.contains("doubled: 2 containers of t-a run"),
            "{problems}"
        );
        let mut look = converged();
        look.containers.push(("t-x-0".into(), true));
        let problems = judge(&look, None).join("\n");
        assert!(
            problems.contains("task t-x run, which the control plane"),
            "{problems}"
        );
    }

    #[test]
    fn a_node_not_yet_as_desired_is_not_converged() {
        let mut look = converged();
        look.containers.clear();
        look.nodes[0].1 = false;
        let problems = judge(&look, None).join("\n");
        assert!(problems.contains("node n-1 is not connected"), "{problems}");
        assert!(
            problems.contains("task t-a is meant Running: 0 containers run"),
            "{problems}"
        );
    }

    #[test]
    fn a_stop_asked_without_an_answer_may_or_may_not_have_committed() {
        let l = ledger("run t-a\nrun t-b\ntry-stop t-b\ntry-stop t-a\ntry-scale 1\n");
        assert_eq!(judge(&converged(), Some(&l)), Vec::<String>::new());
    }

    #[test]
    fn a_line_cut_short_is_not_acknowledged() {
        let mut l = Ledger::default();
        l.merge("try-run\nrun a1\ntry-stop a1\nstop a1\ntry-scale 2\nscale 2\ntry-run\nrun b")
            .expect("merge");
        assert_eq!(l.acknowledged(), 3);
        assert!(l.tasks["a1"].stop_acknowledged);
        assert!(!l.tasks.contains_key("b"));
        assert_eq!(l.scale, Some(2));
    }
}
