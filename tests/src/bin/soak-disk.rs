//! `soak-disk`: the full-disk scenario in full (issue 21; RELIABILITY.md, *Full disks*). The
//! control plane's data directory on an ext4 of its own (32 MiB), a node's on another
//! (128 MiB), both on loop devices; one agent in session and a steady task running. Then, for
//! minutes, two things at once:
//! - a write load through the operator CLI: secrets created with a known value, tasks run and
//!   stopped and a service scaled ([`flotilla_tests::power::Load`]), each write recorded as
//!   acknowledged or refused, with its error;
//! - a filler: cycles drawn from the seed, each filling the control plane's disk, the node's
//!   or both to the last byte ([`flotilla_tests::disk::Tmpfs::fill`]), holding them full for
//!   3–30 s, then giving the space back.
//!
//! With the space back it checks: both daemons still run (the same processes), neither log
//! holds a panic; every refused write names `No space left on device` and came while the
//! control plane's disk was full; per cycle, how long until the first write was acknowledged
//! again (control plane) and until the tasks placed meanwhile ran (node); the steady task's
//! container kept its pid throughout; the cluster converges. Then both daemons are killed
//! (`SIGKILL`) and started again on the same filesystems: every acknowledged secret (its size
//! and, for a sample, its value as a task reads it), task, stop and scale is there, nothing
//! refused is, every container that ran before runs on as the same process, none runs twice.
//! Prints the figures; exits non-zero on any violation. Root; builds nothing (run
//! `cargo build --workspace --bins` first).
//!
//! ```text
//! soak-disk [--minutes 5] [--seed N] [--cp-mib 32] [--node-mib 128]
//!           [--keep DIR]   # the daemons' logs, every write and every cycle written there
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::secrets::SecretInfo;
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::disk::Tmpfs;
use flotilla_tests::node::Node;
use flotilla_tests::power::{self, Ledger, Load, Rng, Snapshot, Write};
use flotilla_tests::taskdefs::STEADY;
use sha2::Digest as _;

/// What a refused write must name.
const NO_SPACE: &str = "No space left on device";

/// How long one CLI call may take before it counts as a daemon stuck.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// How long the cluster may take to converge (with the space back, and after the restart), and
/// a node's tasks placed while its disk was full to run once it is back.
const CONVERGE: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Options {
    minutes: u64,
    seed: u64,
    cp_mib: u64,
    node_mib: u64,
    keep: Option<PathBuf>,
}

const USAGE: &str = "\
usage: soak-disk [--minutes 5] [--seed N] [--cp-mib 32] [--node-mib 128] [--keep DIR]

The control plane's and a node's data directories on small ext4 filesystems of their own,
filled to the last byte and given back for minutes under a write load; every refused write
must name the full disk, nothing acknowledged may be lost, containers run on, and the cluster
converges when space returns and after both daemons are killed. Root; run `cargo build
--workspace --bins` first, and hold /work/systest.lock (RELIABILITY.md, \"Full disks\").

  --minutes M      how long the load and the filler run (5)
  --seed N         the seed of the fill cycles and the load (default: the clock's seconds)
  --cp-mib MIB     the control plane's filesystem, at least 16 (32)
  --node-mib MIB   the node's filesystem, at least 64 (128)
  --keep DIR       write both daemons' logs, every write and every cycle there
";

fn options() -> Result<Options> {
    let mut o = Options {
        minutes: 5,
        seed: flotilla_tests::clock_seed(),
        cp_mib: 32,
        node_mib: 128,
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| flotilla_tests::flag_number(&mut args, name);
        match a.as_str() {
            "--minutes" => o.minutes = value("--minutes")?,
            "--seed" => o.seed = value("--seed")?,
            "--cp-mib" => o.cp_mib = value("--cp-mib")?,
            "--node-mib" => o.node_mib = value("--node-mib")?,
            "--keep" => o.keep = Some(args.next().context("--keep needs a directory")?.into()),
            other => flotilla_tests::soak_usage(other, USAGE),
        }
    }
    if o.cp_mib < 16 || o.node_mib < 64 {
        bail!("--cp-mib at least 16, --node-mib at least 64 (the test image takes about 20 MiB)");
    }
    Ok(o)
}

/// Which disks a cycle fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    ControlPlane,
    Node,
    Both,
}

impl Target {
    fn cp(self) -> bool {
        self != Target::Node
    }
    fn node(self) -> bool {
        self != Target::ControlPlane
    }
    fn name(self) -> &'static str {
        match self {
            Target::ControlPlane => "control plane",
            Target::Node => "node",
            Target::Both => "both",
        }
    }
}

/// One fill of the filler.
#[derive(Debug)]
struct Cycle {
    target: Target,
    /// When the fill began and when the space was back.
    filling: Instant,
    released: Instant,
    /// How long the disks were held full, once filled.
    held: Duration,
    /// Bytes the filler wrote (control plane's, node's).
    filled: (u64, u64),
    /// The node's tasks placed while its disk was full, and how long after the space was back
    /// they all ran (none when it timed out).
    stranded: usize,
    node_recovery: Option<Duration>,
}

/// One write of the load.
#[derive(Debug)]
struct Outcome {
    what: String,
    start: Instant,
    end: Instant,
    /// The error it was refused with.
    refused: Option<String>,
}

/// The state shared by the load and the filler.
struct Run<'a> {
    cp: &'a ControlPlane,
    node: &'a Node,
    cp_fs: &'a Tmpfs,
    node_fs: &'a Tmpfs,
    steady_pid: i32,
    started: Instant,
    deadline: Instant,
    problems: std::sync::Mutex<Vec<String>>,
}

impl Run<'_> {
    fn problem(&self, p: String) {
        println!("VIOLATION: {p}");
        if let Ok(mut v) = self.problems.lock() {
            v.push(p);
        }
    }
}

fn main() -> Result<()> {
    let o = options()?;
    flotilla_tests::require_root();
    println!(
        "soak-disk: the control plane's data on {} MiB of ext4, the node's on {} MiB, {} \
         minutes, seed {}",
        o.cp_mib, o.node_mib, o.minutes, o.seed
    );
    // Declared so that each filesystem goes before what owns the directory it is mounted on.
    let mut cp = ControlPlane::start(&[]);
    cp.stop();
    let cp_fs = Tmpfs::move_onto(&cp.data, |p| Tmpfs::ext4_at(p, o.cp_mib))?;
    cp.restart();
    let node_fs = Tmpfs::ext4(o.node_mib)?;
    let node = Node::bare_with_data(node_fs.path().join("node"));
    node.import_test_image();
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(STEADY);
    cp.register(power::TASKDEF);
    cp.create_service(power::SERVICE_JSON);
    let steady = cp.run_one("steady");
    flotilla_tests::wait("the steady task", CONVERGE, || {
        cp.task(&steady).state == TaskState::Running
    });
    let steady_name = format!("{steady}-0");
    let steady_pid = node.running()[&steady_name];
    let (cp_pid, agent_pid) = (cp.pid(), agent.pid());
    println!(
        "steady task {steady}: container pid {steady_pid}; control plane pid {cp_pid:?}, agent \
         pid {agent_pid:?}"
    );
    let values = cp.scratch().join("values");
    std::fs::create_dir_all(&values)?;

    let started = Instant::now();
    let run = Run {
        started,
        cp: &cp,
        node: &node,
        cp_fs: &cp_fs,
        node_fs: &node_fs,
        steady_pid,
        deadline: started + Duration::from_secs(o.minutes * 60),
        problems: std::sync::Mutex::new(Vec::new()),
    };
    let done = AtomicBool::new(false);
    let (cycles, load) = std::thread::scope(|s| {
        let filler = s.spawn(|| filler(&run, o.seed, &done));
        let load = load(&run, o.seed ^ 0x10ad, &values);
        done.store(true, Ordering::SeqCst);
        let cycles = filler
            .join()
            .map_err(|_| anyhow::anyhow!("the filler panicked"))
            .and_then(|r| r);
        (cycles, load)
    });
    // Whatever happened, the space is back from here on.
    let _ = cp_fs.release();
    let _ = node_fs.release();
    let cycles = cycles?;
    let load = load?;
    let mut problems = run.problems.into_inner().unwrap_or_default();
    let soaked = started.elapsed();

    // With the space back: the same processes, no panic, every refusal clear and timely.
    if !cp.running() || cp.pid() != cp_pid {
        problems.push("the control plane exited during the run".into());
    }
    if !agent.running() || agent.pid() != agent_pid {
        problems.push("the agent exited during the run".into());
    }
    let cp_windows: Vec<(Instant, Instant)> = cycles
        .iter()
        .filter(|c| c.target.cp())
        .map(|c| (c.filling, c.released + Duration::from_secs(2)))
        .collect();
    for w in &load.outcomes {
        let Some(err) = &w.refused else { continue };
        if !err.contains(NO_SPACE) {
            problems.push(format!("{} refused unclearly: {err}", w.what));
        }
        if !cp_windows.iter().any(|(a, b)| w.start < *b && w.end > *a) {
            problems.push(format!(
                "{} refused while the control plane's disk had room: {err}",
                w.what
            ));
        }
    }
    let converged = Instant::now();
    let before = converge(
        &cp,
        &node,
        &load.ledger,
        &mut problems,
        "with the space back",
    );
    let converged_in = converged.elapsed();
    let steady_now = node.running().get(&steady_name).copied();
    if steady_now != Some(steady_pid) {
        problems.push(format!(
            "the steady task's container is {steady_now:?}, was {steady_pid}"
        ));
    }

    // Both killed and started again on the same filesystems.
    let sessions = agent.log().matches("session established").count();
    cp.stop();
    agent.kill();
    let restarted = Instant::now();
    cp.restart();
    agent.run();
    agent.wait_log("session established", sessions + 1, CONVERGE);
    let after = converge(&cp, &node, &load.ledger, &mut problems, "after the restart");
    let restarted_in = restarted.elapsed();
    // (Not compared when the first look never converged: it holds nothing then.)
    if !before.is_empty() && before != after {
        problems.push(format!(
            "the containers running before the restart were {before:?}, after it {after:?}"
        ));
    }
    for t in cp.tasks() {
        if t.started_by.is_none() && t.id != steady && !load.ledger.knows(&t.id) {
            problems.push(format!(
                "task {} is there, which no acknowledged write ran",
                t.id
            ));
        }
    }
    // A task the node could not start while its disk was full stopped saying why.
    let mut unstarted = 0;
    for t in cp.tasks() {
        let Some(reason) = t.stop_reason.as_deref() else {
            continue;
        };
        if reason.contains("could not start") {
            unstarted += 1;
            if !reason.contains(NO_SPACE) {
                problems.push(format!("task {} stopped unclearly: {reason}", t.id));
            }
        }
    }
    let listed: Vec<SecretInfo> = cp.flotilla_json(&["secret", "ls"]);
    let listed: BTreeMap<String, SecretInfo> =
        listed.into_iter().map(|s| (s.name.clone(), s)).collect();
    for (name, value) in &load.secrets {
        match listed.get(name) {
            None => problems.push(format!("lost: acknowledged secret {name}")),
            Some(s) if s.versions.len() != 1 || s.versions[0].size != value.len() => {
                problems.push(format!(
                    "secret {name} is {:?}, was created with {} bytes",
                    s.versions,
                    value.len()
                ))
            }
            Some(_) => {}
        }
    }
    for name in &load.refused_secrets {
        if listed.contains_key(name) {
            problems.push(format!(
                "secret {name} is there, whose creation was refused"
            ));
        }
    }
    let sampled = check_values(&cp, &load.secrets, o.seed, &mut problems);
    for (who, log) in [("the control plane", cp.log()), ("the agent", agent.log())] {
        if log.contains("panicked") {
            problems.push(format!("{who} panicked"));
        }
    }

    report(&cycles, &load, soaked);
    println!(
        "\nwith the space back, converged in {:.1} s; restarted (both killed) and converged in \
         {:.1} s: {} acknowledged tasks and {} secrets checked ({} values read by a task), {} \
         containers the same processes (the steady task's pid {steady_pid}); {unstarted} tasks \
         the node could not start while its disk was full",
        converged_in.as_secs_f64(),
        restarted_in.as_secs_f64(),
        load.ledger_tasks,
        load.secrets.len(),
        sampled,
        after.len(),
    );
    if let Some(dir) = &o.keep {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        std::fs::write(dir.join("orchestratord.log"), cp.log())?;
        std::fs::write(dir.join("nodeagent.log"), agent.log())?;
        let t0 = started;
        let mut writes = String::new();
        for w in &load.outcomes {
            let _ = writeln!(
                writes,
                "{:>8.3} {:>8.3} {} {}",
                w.start.duration_since(t0).as_secs_f64(),
                w.end.duration_since(t0).as_secs_f64(),
                w.what,
                w.refused
                    .as_deref()
                    .map_or("ok".into(), |e| format!("REFUSED {e}"))
            );
        }
        std::fs::write(dir.join("writes.log"), writes)?;
        let mut text = String::new();
        for c in &cycles {
            let _ = writeln!(
                text,
                "{:>8.3} {c:?}",
                c.filling.duration_since(t0).as_secs_f64()
            );
        }
        std::fs::write(dir.join("cycles.log"), text)?;
    }
    if !problems.is_empty() {
        println!("\n{} violation(s):", problems.len());
        for p in &problems {
            println!("- {p}");
        }
        bail!("{} violation(s); seed {}", problems.len(), o.seed);
    }
    println!(
        "\nno violation: both daemons ran throughout, every refusal named the full disk, \
         nothing acknowledged was lost and nothing refused kept; seed {}",
        o.seed
    );
    drop(agent);
    drop(node);
    Ok(())
}

/// What the load did.
struct LoadRecord {
    outcomes: Vec<Outcome>,
    ledger: Ledger,
    ledger_tasks: usize,
    /// Acknowledged secrets and their values; secrets whose creation was refused.
    secrets: BTreeMap<String, Vec<u8>>,
    refused_secrets: Vec<String>,
}

/// `flotilla ARGS -o json` with the admin credential, given [`CALL_LIMIT`]: its output, or
/// the error it printed.
fn flotilla(cp: &ControlPlane, args: &[&str]) -> Result<std::result::Result<String, String>> {
    let out = Command::new("timeout")
        .arg(CALL_LIMIT.as_secs().to_string())
        .arg(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(args)
        .args(["-o", "json"])
        .output()
        .context("running flotilla")?;
    Ok(match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(124) => Err(format!("no answer within {CALL_LIMIT:?}")),
        _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    })
}

/// The write load until the deadline: one write in three a secret, the others
/// [`Load`]'s.
fn load(run: &Run, seed: u64, values: &Path) -> Result<LoadRecord> {
    let mut rng = Rng::new(seed);
    let mut load = Load::new(seed ^ 0x5eed, Vec::new());
    let mut lines = String::new();
    let mut record = LoadRecord {
        outcomes: Vec::new(),
        ledger: Ledger::default(),
        ledger_tasks: 0,
        secrets: BTreeMap::new(),
        refused_secrets: Vec::new(),
    };
    let mut n = 0u64;
    while Instant::now() < run.deadline {
        n += 1;
        let (what, write, value, args) = if rng.below(3) == 0 {
            let name = format!("s{n}");
            let size = 100 + rng.below(30_000) as usize;
            let value: Vec<u8> = (0..size)
                .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.below(36) as usize])
                .collect();
            let path = values.join(&name);
            std::fs::write(&path, &value)?;
            let args = vec![
                "secret".to_string(),
                "create".into(),
                name.clone(),
                path.to_string_lossy().into_owned(),
            ];
            (
                format!("secret create {name} ({size} bytes)"),
                None,
                Some((name, value)),
                args,
            )
        } else {
            let write = load.draw();
            if let Write::Pause(pause) = write {
                std::thread::sleep(pause);
                continue;
            }
            (
                write.args().join(" "),
                Some(write.clone()),
                None,
                write.args(),
            )
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let start = Instant::now();
        let answer = flotilla(run.cp, &args)?;
        let end = Instant::now();
        let refused = answer.as_ref().err().cloned();
        match (answer, write, value) {
            (Ok(text), Some(write), _) => {
                for line in load.acknowledged(&write, &text)? {
                    lines.push_str(&line);
                    lines.push('\n');
                }
            }
            (Ok(_), None, Some((name, value))) => {
                record.secrets.insert(name, value);
            }
            (Err(e), Some(write), _) => {
                if e.contains(NO_SPACE) {
                    // Refused for sure: it must not have happened.
                    load.refused(&write);
                } else if let Some(line) = write.tried() {
                    // Perhaps committed: the ledger allows either.
                    lines.push_str(&line);
                    lines.push('\n');
                }
            }
            (Err(e), None, Some((name, _))) if e.contains(NO_SPACE) => {
                record.refused_secrets.push(name);
            }
            _ => {}
        }
        if end - start >= CALL_LIMIT {
            run.problem(format!("{what}: no answer within {CALL_LIMIT:?}"));
        }
        record.outcomes.push(Outcome {
            what,
            start,
            end,
            refused,
        });
    }
    record.ledger_tasks = lines.lines().filter(|l| l.starts_with("run ")).count();
    record.ledger.merge(&lines)?;
    Ok(record)
}

/// The filler until the deadline (or until the load is `done`): a pause of 2–10 s, then a
/// disk or both filled, held full 3–30 s, and given back; after a node's disk, the time until
/// the tasks placed meanwhile run.
fn filler(run: &Run, seed: u64, done: &AtomicBool) -> Result<Vec<Cycle>> {
    let mut rng = Rng::new(seed);
    let mut cycles = Vec::new();
    let over = || done.load(Ordering::SeqCst) || Instant::now() >= run.deadline;
    while !over() {
        let pause = Instant::now() + Duration::from_secs(2 + rng.below(9));
        while Instant::now() < pause && !over() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if over() {
            break;
        }
        let target = match rng.below(3) {
            0 => Target::ControlPlane,
            1 => Target::Node,
            _ => Target::Both,
        };
        let hold = Duration::from_secs(3 + rng.below(28));
        let filling = Instant::now();
        let filled = fill(run, target);
        let full = Instant::now();
        let filled = match filled {
            Ok(f) => f,
            Err(e) => {
                release(run, target)?;
                return Err(e);
            }
        };
        println!(
            "{:>6.1} s: {} full ({} + {} bytes), for {} s",
            filling.duration_since(run.started).as_secs_f64(),
            target.name(),
            filled.0,
            filled.1,
            hold.as_secs()
        );
        while full.elapsed() < hold {
            std::thread::sleep(Duration::from_millis(500));
            if !Path::new(&format!("/proc/{}", run.steady_pid)).exists() {
                run.problem(format!(
                    "the steady task's container (pid {}) ended while the {} disk was full",
                    run.steady_pid,
                    target.name()
                ));
                break;
            }
        }
        let held = full.elapsed();
        // What the node was given while full and could not keep.
        let stranded: BTreeSet<String> = if target.node() {
            run.cp
                .api()
                .tasks()
                .map(|ts| {
                    ts.into_iter()
                        .filter(|t| {
                            t.desired == DesiredStatus::Running && t.state == TaskState::Pending
                        })
                        .map(|t| t.id)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            BTreeSet::new()
        };
        release(run, target)?;
        let released = Instant::now();
        let mut node_recovery = None;
        if !stranded.is_empty() {
            while released.elapsed() < CONVERGE {
                let tasks = run.cp.api().tasks().unwrap_or_default();
                let waiting = tasks.iter().any(|t| {
                    stranded.contains(&t.id)
                        && t.desired == DesiredStatus::Running
                        && t.state == TaskState::Pending
                });
                if !waiting {
                    node_recovery = Some(released.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            if node_recovery.is_none() {
                run.problem(format!(
                    "{} task(s) placed while the node's disk was full were still pending {} s \
                     after the space was back",
                    stranded.len(),
                    CONVERGE.as_secs()
                ));
            }
        }
        // The steady task's container, as the node sees it.
        let out = run.node.ctr(&["ps", "-a", "-o", "json"]);
        let list: Vec<flotilla_runtime::container::ContainerInfo> =
            serde_json::from_slice(&out.stdout).unwrap_or_default();
        let steady = list
            .iter()
            .find(|c| c.status == Status::Running && c.pid() == Some(run.steady_pid));
        if steady.is_none() {
            run.problem(format!(
                "after the {} disk was full, the steady task's container is no longer pid {} \
                 ({})",
                target.name(),
                run.steady_pid,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        cycles.push(Cycle {
            target,
            filling,
            released,
            held,
            filled,
            stranded: stranded.len(),
            node_recovery,
        });
    }
    Ok(cycles)
}

fn fill(run: &Run, target: Target) -> Result<(u64, u64)> {
    let cp = if target.cp() {
        run.cp_fs
            .fill()
            .context("filling the control plane's disk")?
    } else {
        0
    };
    let node = if target.node() {
        run.node_fs.fill().context("filling the node's disk")?
    } else {
        0
    };
    Ok((cp, node))
}

fn release(run: &Run, target: Target) -> Result<()> {
    // Both given back even if one fails (a fill that failed half-way left its file).
    let cp = if target.cp() {
        run.cp_fs.release()
    } else {
        Ok(())
    };
    let node = if target.node() {
        run.node_fs.release()
    } else {
        Ok(())
    };
    cp.and(node)
}

/// Waits until the cluster is as every acknowledged write says ([`power::verdict`]); the
/// running containers then, by name, with their pids.
fn converge(
    cp: &ControlPlane,
    node: &Node,
    ledger: &Ledger,
    problems: &mut Vec<String>,
    when: &str,
) -> BTreeMap<String, i32> {
    let start = Instant::now();
    loop {
        let snapshot = Snapshot {
            tasks: cp.tasks(),
            services: cp.api().services().expect("services"),
            nodes: cp.nodes(),
            containers: node.ps(),
        };
        let found = power::verdict(&snapshot, Some(ledger));
        if found.is_empty() {
            return snapshot
                .containers
                .iter()
                .filter(|c| c.status == Status::Running)
                .filter_map(|c| Some((c.record.display_name(), c.pid()?)))
                .collect();
        }
        if start.elapsed() > CONVERGE {
            problems.extend(found.into_iter().map(|p| format!("{when}: {p}")));
            return BTreeMap::new();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Reads the values of up to four acknowledged secrets (drawn from `seed`) the way a task
/// gets them, as environment variables, and compares their SHA-256; how many were read.
fn check_values(
    cp: &ControlPlane,
    secrets: &BTreeMap<String, Vec<u8>>,
    seed: u64,
    problems: &mut Vec<String>,
) -> usize {
    let mut rng = Rng::new(seed ^ 0xc0ffee);
    let names: Vec<&String> = secrets.keys().collect();
    let mut sample = BTreeSet::new();
    while sample.len() < names.len().min(4) {
        sample.insert(names[rng.below(names.len() as u64) as usize]);
    }
    if sample.is_empty() {
        return 0;
    }
    let secrets_env: Vec<serde_json::Value> = sample
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"name": format!("S{i}"), "valueFrom": format!("flotilla:{n}")}))
        .collect();
    let script: String = (0..sample.len())
        .map(|i| format!("printf %s \"$S{i}\" | sha256sum; "))
        .collect();
    let def = serde_json::json!({
        "family": "values",
        "networkMode": "none",
        "containerDefinitions": [{
            "name": "main", "image": "test/busybox:latest", "memory": 16,
            "secrets": secrets_env,
            "command": ["sh", "-c", script],
        }],
    });
    cp.register(&def.to_string());
    let task = cp.run_one("values");
    flotilla_tests::wait("the task reading secrets", CONVERGE, || {
        cp.task(&task).state == TaskState::Stopped
    });
    let logs = cp.flotilla_ok(&["logs", &task]);
    for (i, name) in sample.iter().enumerate() {
        let want = hex(&sha2::Sha256::digest(&secrets[*name]));
        let got = logs.lines().nth(i).unwrap_or("").split_whitespace().next();
        if got != Some(want.as_str()) {
            problems.push(format!(
                "secret {name}: a task read a value of SHA-256 {got:?}, created with {want}"
            ));
        }
    }
    sample.len()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn report(cycles: &[Cycle], load: &LoadRecord, soaked: Duration) {
    let ms = |d: Duration| d.as_millis();
    let stats = |mut v: Vec<Duration>| -> String {
        if v.is_empty() {
            return "-".into();
        }
        v.sort();
        format!(
            "{} / {} ms (n={})",
            ms(v[(v.len() - 1) / 2]),
            ms(v[v.len() - 1]),
            v.len()
        )
    };
    println!(
        "\n{} cycles in {:.0} s\n\n| disk filled | cycles | held: median / max | first write \
         acknowledged after: median / max | node's stranded tasks running after: median / max |\n\
         |---|---|---|---|---|",
        cycles.len(),
        soaked.as_secs_f64()
    );
    for target in [Target::ControlPlane, Target::Node, Target::Both] {
        let these: Vec<&Cycle> = cycles.iter().filter(|c| c.target == target).collect();
        let first_ack: Vec<Duration> = these
            .iter()
            .filter(|c| c.target.cp())
            .filter_map(|c| {
                load.outcomes
                    .iter()
                    .filter(|w| w.refused.is_none() && w.end > c.released)
                    .map(|w| w.end - c.released)
                    .min()
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            target.name(),
            these.len(),
            stats(these.iter().map(|c| c.held).collect()),
            stats(first_ack),
            stats(these.iter().filter_map(|c| c.node_recovery).collect()),
        );
    }
    let stranded: usize = cycles.iter().map(|c| c.stranded).sum();
    let written: u64 = cycles.iter().map(|c| c.filled.0 + c.filled.1).sum();
    println!("the filler wrote {} MiB in all", written >> 20);
    let refused = load.outcomes.iter().filter(|w| w.refused.is_some()).count();
    let slowest = load
        .outcomes
        .iter()
        .map(|w| w.end - w.start)
        .max()
        .unwrap_or_default();
    let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for w in &load.outcomes {
        let kind = w.what.split_whitespace().take(2).collect::<Vec<_>>();
        let kind = match kind.as_slice() {
            ["secret", _] => "secret create",
            ["task", "run"] => "task run",
            ["task", "stop"] => "task stop",
            _ => "service scale",
        };
        let e = kinds.entry(kind).or_default();
        if w.refused.is_some() {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    println!(
        "\n{} writes: {} acknowledged, {} refused; slowest answer {} ms; {} tasks placed while \
         the node's disk was full",
        load.outcomes.len(),
        load.outcomes.len() - refused,
        refused,
        ms(slowest),
        stranded
    );
    for (kind, (ok, no)) in kinds {
        println!("  {kind}: {ok} acknowledged, {no} refused");
    }
}
