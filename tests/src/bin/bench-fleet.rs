//! Benchmark: a fleet simulator — fake agents, not nodes (`flotilla_tests::fleet`) — holding
//! AGENTS sessions with one control plane. Each simulated agent has its own node identity from
//! the real enrollment and its own mTLS QUIC session speaking the real protocol (hello,
//! desired-state acknowledgements, task reports, heartbeats with usage, pings); its containers
//! are simulated (RUNNING 200 ms after a start, STOPPED 100 ms after a stop), so only the
//! control plane and the protocol are measured.
//!
//! `bench-fleet [AGENTS] [IDLE_SECS] [HEARTBEAT_SECS] [DISCOVERY]`
//!
//! Without `FLEET_SERVER` it starts its own `orchestratord run` (the binary next to this one,
//! its log at `warn`, or at the filter in `FLEET_CP_LOG`, written to `orchestratord.log` in the
//! scratch directory it prints and removes at the end) and measures, in order: enrollment of
//! the fleet (joins with one token); cold admission (every agent dialling at once → all in
//! session, and → all READY in the API); IDLE_SECS of steady state (heartbeats every
//! HEARTBEAT_SECS: their round trip p50/p99, the control plane's CPU, RSS and bytes written to
//! disk); a DAEMON service rolled out to every
//! node (→ every task RUNNING and recorded; with DISCOVERY=1 the service registers for
//! discovery and the time until every agent holds the registry with every endpoint is measured
//! too); the latency of listing every node and every task, in one call and in pages of 500 (as
//! `flotilla task ls` and `node ls` read them); the DAEMON service updated to a new revision
//! (→ every node's one RUNNING task of the new revision); a reconnect storm (`kill -9` of
//! the control plane, restarted 2 s later as systemd's `RestartSec=2` does → every agent in
//! session again; with DISCOVERY=1 also → every agent holding the registry again); and a
//! REPLICA service of AGENTS tasks (→ all RUNNING and recorded). How the
//! agents got their registries (whole, as deltas) and how many UDP datagrams the kernel dropped
//! at full socket receive buffers (`Udp: RcvbufErrors`, every socket of the host) are printed
//! with each phase. The simulator shares the machine's cores with the control plane. With
//! `FLEET_TRACE_DIALS` set, every session that ends and every dial that fails prints a line
//! (`TRACE` on stderr: the time in seconds since the Unix epoch, the simulator's socket it
//! came from, how long after the dial, why), to find a failed dial in a packet capture or in
//! the control plane's debug log.
//!
//! With `FLEET_SERVER=HOST:PORT` and `FLEET_TOKEN=TOKEN` (a token allowing AGENTS more joins)
//! it only simulates: enrolls AGENTS agents with that control plane, keeps them in session and
//! prints a line every 10 s until interrupted. Several such processes may run against one
//! control plane (give each its own `FLEET_ADDRESS_OFFSET` so their node addresses differ).
//!
//! Build with `cargo build --release -p flotilla-tests --bin bench-fleet -p orchestratord`
//! (and `-p flotilla` for the `flotilla` binary the control plane helper polls), then run
//! `target/release/bench-fleet 1000`.

use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::ops::{NodeState, TokenCreate};
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::ControlPlane;
use flotilla_tests::fleet::{self, percentile, AgentState, Settings, Shared, Simulator};

const DEF: &str = r#"{
  "family": "fleet",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "web", "image": "test/busybox:latest", "memory": 32,
    "portMappings": [{"containerPort": 80}],
    "command": ["httpd", "-f", "-p", "80"]
  }]
}"#;

/// The DAEMON service's next revision: another command, the same shape.
const DEF_2: &str = r#"{
  "family": "fleet",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "web", "image": "test/busybox:latest", "memory": 32,
    "portMappings": [{"containerPort": 80}],
    "command": ["httpd", "-f", "-p", "80", "-h", "/tmp"]
  }]
}"#;

/// The REPLICA service's tasks: no network, so they add no port or address to any node.
const REPLICA: &str = r#"{
  "family": "fleet-replica",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16,
    "command": ["sleep", "1000000"]
  }]
}"#;

/// Page size of the paged listings: what the CLI asks for by default.
const PAGE: u32 = 500;

/// Every page of a listing, one after another: the whole listing's time, the number of items,
/// and the pages' median and slowest time.
fn paged<T>(
    mut pages: impl Iterator<Item = Result<Vec<T>, flotilla_client::ClientError>>,
) -> Result<String> {
    let started = Instant::now();
    let (mut items, mut times) = (0, Vec::new());
    loop {
        let t = Instant::now();
        let Some(page) = pages.next() else { break };
        times.push(t.elapsed());
        items += page?.len();
    }
    let took = started.elapsed();
    let n = times.len();
    Ok(format!(
        "{items} in {} ({n} pages; a page p50 {} max {})",
        ms(took),
        ms(percentile(&mut times, 50.0)),
        ms(percentile(&mut times, 100.0))
    ))
}

/// How many of the agents' tasks of task definition `prefix…` are RUNNING and recorded.
fn recorded_running(shared: &Shared, prefix: &str) -> usize {
    shared
        .agents
        .iter()
        .map(|a| {
            a.state()
                .tasks
                .values()
                .filter(|t| {
                    t.desired.task_definition.starts_with(prefix)
                        && t.state == TaskState::Running
                        && t.reported == Some(TaskState::Running)
                })
                .count()
        })
        .sum()
}

fn main() -> Result<()> {
    let [agents, idle_secs, heartbeat_secs, discovery] = flotilla_tests::bench_args([
        ("AGENTS", 1000),
        ("IDLE_SECS", 60),
        ("HEARTBEAT_SECS", 30),
        ("DISCOVERY", 0),
    ]);
    if agents == 0 || heartbeat_secs == 0 {
        eprintln!("bench-fleet: AGENTS and HEARTBEAT_SECS must be at least 1");
        std::process::exit(2);
    }
    let agents = agents as usize;
    let settings = Settings {
        heartbeat: Duration::from_secs(heartbeat_secs),
        address_offset: std::env::var("FLEET_ADDRESS_OFFSET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        ..Settings::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match std::env::var("FLEET_SERVER") {
        Ok(server) => {
            let token = std::env::var("FLEET_TOKEN")
                .context("FLEET_SERVER needs FLEET_TOKEN (a join token allowing AGENTS joins)")?;
            let addr = flotilla_api::with_default_port(&server)
                .to_socket_addrs()
                .with_context(|| format!("resolving {server}"))?
                .next()
                .with_context(|| format!("{server} resolves to no address"))?;
            rt.block_on(simulate_only(addr, &token, agents, settings))
        }
        Err(_) => measure(&rt, agents, idle_secs, discovery != 0, settings),
    }
}

/// Enrolls and keeps `agents` in session with the control plane at `addr`, until interrupted.
async fn simulate_only(
    addr: std::net::SocketAddr,
    token: &str,
    agents: usize,
    settings: Settings,
) -> Result<()> {
    let t = Instant::now();
    let host = format!("fleet-sim-{}", std::process::id());
    let enrolled = fleet::enroll(addr, token, agents, 64, &host).await?;
    println!(
        "enrolled {agents} agents in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let sim = Simulator::start(&enrolled, settings)?;
    let shared = sim.shared().clone();
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => println!("{}", summary(&shared)),
        }
    }
    sim.stop().await;
    Ok(())
}

/// One line about the fleet now, and the heartbeat round trips since the last line.
fn summary(shared: &Shared) -> String {
    let mut rtts = shared.take_heartbeat_rtts();
    let (p50, p99) = (percentile(&mut rtts, 50.0), percentile(&mut rtts, 99.0));
    let (mut in_session, mut busy, mut running) = (0, 0, 0);
    for a in &shared.agents {
        let st = a.state();
        in_session += usize::from(st.in_session);
        busy += st.busy;
        running += st.recorded(TaskState::Running);
    }
    format!(
        "{in_session}/{} in session, {busy} busy answers, {running} tasks RUNNING; heartbeat \
         round trip p50 {} p99 {} ({} samples)",
        shared.agents.len(),
        ms(p50),
        ms(p99),
        rtts.len()
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Waits until `f` holds (polling every 50 ms); the time it took.
fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let t = Instant::now();
    while !f()? {
        if t.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(t.elapsed())
}

/// Bytes process `pid` caused to be written to storage so far (`/proc/PID/io`).
fn written(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("write_bytes missing in /proc/PID/io")
}

/// Where the agents' registries stand while they are awaited: how many hold all `agents`
/// endpoints of the service, how many fewer (and the fewest), how many none; their versions.
fn registry_census(shared: &Shared, agents: usize) -> String {
    let (mut all, mut fewer, mut none, mut fewest) = (0, 0, 0, usize::MAX);
    let mut versions = std::collections::BTreeSet::new();
    for a in &shared.agents {
        let st = a.state();
        match st
            .registry
            .as_ref()
            .and_then(|r| r.services.get("bench/fleet"))
        {
            Some(e) if e.len() == agents => all += 1,
            Some(e) => {
                fewer += 1;
                fewest = fewest.min(e.len());
            }
            None => none += 1,
        }
        versions.insert(st.registry.as_ref().map_or(0, |r| r.version));
    }
    format!(
        "agents with all {agents} endpoints: {all}; with fewer: {fewer} (fewest {}); without \
         the service: {none}; {} versions held, newest {}; {}",
        if fewer > 0 { fewest } else { 0 },
        versions.len(),
        versions.last().copied().unwrap_or(0),
        registry_deliveries(shared)
    )
}

/// Why the agents' sessions ended, or their dials failed, so far: each kind with its count.
fn ended(shared: &Shared) -> std::collections::BTreeMap<String, u32> {
    let mut all = std::collections::BTreeMap::<String, u32>::new();
    for a in &shared.agents {
        for (why, n) in &a.state().ended {
            *all.entry(why.clone()).or_default() += n;
        }
    }
    all
}

/// [`ended`] since `before` (one of its earlier results), most frequent first.
fn ended_tally(shared: &Shared, before: &std::collections::BTreeMap<String, u32>) -> String {
    let mut all: Vec<_> = ended(shared)
        .into_iter()
        .map(|(why, n)| {
            let n = n - before.get(&why).copied().unwrap_or(0);
            (why, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.iter()
        .map(|(why, n)| format!("{n}× {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How long after `from` each agent's current session was established.
fn established_since(shared: &Shared, from: Instant) -> Vec<Duration> {
    shared
        .agents
        .iter()
        .filter_map(|a| a.state().established_at)
        .map(|t| t.saturating_duration_since(from))
        .collect()
}

/// When the first and the last of the agents' current sessions were established, after `from`.
fn window(shared: &Shared, from: Instant) -> (Duration, Duration) {
    let at = established_since(shared, from);
    (
        at.iter().min().copied().unwrap_or_default(),
        at.iter().max().copied().unwrap_or_default(),
    )
}

fn all(shared: &Shared, f: impl Fn(&AgentState) -> bool) -> bool {
    shared.count(f) == shared.agents.len()
}

/// Datagrams the kernel dropped at full socket receive buffers (every socket of the host:
/// the control plane's and the simulator's) since `from`.
fn dropped_since(from: Option<u64>) -> String {
    match (from, orchestratord::udp::rcvbuf_errors()) {
        (Some(a), Some(b)) => format!("{} UDP datagrams dropped at full receive buffers", b - a),
        _ => "UDP drops unknown (no /proc/net/snmp)".into(),
    }
}

/// The one registry version every agent holds, each with all `agents` endpoints of the
/// service; `None` while they differ or one lacks an endpoint.
fn settled(shared: &Shared, agents: usize) -> Option<u64> {
    let versions: BTreeSet<u64> = shared
        .agents
        .iter()
        .filter_map(|a| a.state().registry.as_ref().map(|r| r.version))
        .collect();
    let all_endpoints = all(shared, |a| {
        a.registry
            .as_ref()
            .and_then(|r| r.services.get("bench/fleet"))
            .is_some_and(|e| e.len() == agents)
    });
    match (versions.len(), versions.first()) {
        (1, Some(v)) if all_endpoints => Some(*v),
        _ => None,
    }
}

/// Whole registries the agents were sent so far.
fn wholes(shared: &Shared) -> u64 {
    shared
        .agents
        .iter()
        .map(|a| u64::from(a.state().registry_wholes))
        .sum()
}

/// How the agents got their registries so far: whole, as deltas (and how many pushes carried
/// several in a row), deltas out of sequence.
fn registry_deliveries(shared: &Shared) -> String {
    let (mut whole, mut deltas, mut rows, mut out) = (0u64, 0u64, 0u64, 0u64);
    for a in &shared.agents {
        let st = a.state();
        whole += u64::from(st.registry_wholes);
        deltas += u64::from(st.registry_deltas);
        rows += u64::from(st.registry_pushes_in_a_row);
        out += u64::from(st.registry_out_of_sequence);
    }
    format!(
        "{whole} whole registries, {deltas} deltas applied ({rows} pushes of several in a row), \
         {out} deltas out of sequence"
    )
}

/// `net.core.rmem_max`, what caps a socket's receive buffer for a process that may not force it.
fn rmem_max() -> String {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn measure(
    rt: &tokio::runtime::Runtime,
    agents: usize,
    idle_secs: u64,
    discovery: bool,
    settings: Settings,
) -> Result<()> {
    let cp_log = std::env::var_os("FLEET_CP_LOG");
    // A bridge subnet for each of 32,768 nodes (the default pool holds 256).
    let mut cp = ControlPlane::start_with(
        std::net::Ipv4Addr::LOCALHOST,
        &["--bridge-pool", "10.128.0.0/9", "--bridge-prefix", "24"],
        &[(
            "ORCHESTRATORD_LOG",
            cp_log.as_deref().unwrap_or(std::ffi::OsStr::new("warn")),
        )],
    );
    let pid = |cp: &ControlPlane| cp.pid().context("control plane not running");
    if cp_log.is_some() {
        println!(
            "control plane log: {}",
            cp.scratch().join("orchestratord.log").display()
        );
    }
    println!(
        "fleet of {agents} simulated agents, heartbeat every {} s",
        settings.heartbeat.as_secs()
    );
    println!(
        "control plane at start: {}; net.core.rmem_max {} (the control plane, as root, may force \
         its socket's {} MiB past it)",
        flotilla_tests::Resident::of(pid(&cp)?)?,
        rmem_max(),
        orchestratord::udp::BUFFER_BYTES >> 20
    );
    let drops_at_start = orchestratord::udp::rcvbuf_errors();

    let token = cp
        .api()
        .create_token(&TokenCreate {
            ttl_secs: Some(3600),
            uses: Some(u32::try_from(agents)?),
            labels: Default::default(),
        })?
        .token;
    let t = Instant::now();
    let enrolled = rt.block_on(fleet::enroll(cp.addr, &token, agents, 64, "sim"))?;
    let took = t.elapsed();
    println!(
        "enrollment: {agents} joins in {:.2} s ({:.0} joins/s)",
        took.as_secs_f64(),
        agents as f64 / took.as_secs_f64()
    );

    // Cold admission: every agent dials at once.
    let drops0 = orchestratord::udp::rcvbuf_errors();
    let cpu0 = flotilla_tests::cpu_time(pid(&cp)?)?;
    let started = Instant::now();
    let sim = {
        let _in_runtime = rt.enter();
        Simulator::start(&enrolled, settings.clone())?
    };
    let shared = Arc::clone(sim.shared());
    let admitted = until("every agent in session", Duration::from_secs(600), || {
        Ok(all(&shared, |a| a.in_session))
    })?;
    let busy: u32 = shared.agents.iter().map(|a| a.state().busy).sum();
    let (first, last) = window(&shared, started);
    let t = Instant::now();
    until(
        "every node READY in the API",
        Duration::from_secs(120),
        || {
            let nodes = cp.api().nodes()?;
            Ok(nodes.len() == agents && nodes.iter().all(|n| n.state == NodeState::Ready))
        },
    )?;
    println!(
        "cold admission: every agent in session after {:.2} s (sessions established from {:.2} \
         s to {:.2} s; {busy} busy answers), all READY in the API {:.2} s later; control plane \
         CPU {:.1} s; {}",
        admitted.as_secs_f64(),
        first.as_secs_f64(),
        last.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        (flotilla_tests::cpu_time(pid(&cp)?)? - cpu0).as_secs_f64(),
        dropped_since(drops0)
    );
    let tally = ended_tally(&shared, &Default::default());
    if !tally.is_empty() {
        println!("dials failed in the cold admission, by why: {tally}");
    }

    // Steady state: nothing but heartbeats, pings and keep-alives.
    std::thread::sleep(Duration::from_secs(2));
    shared.take_heartbeat_rtts();
    let (cpu0, w0) = (flotilla_tests::cpu_time(pid(&cp)?)?, written(pid(&cp)?)?);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs.max(1)));
    let idle = t.elapsed();
    let cpu = flotilla_tests::cpu_time(pid(&cp)?)? - cpu0;
    let w = written(pid(&cp)?)? - w0;
    let mut rtts = shared.take_heartbeat_rtts();
    println!(
        "idle {:.0} s: control plane CPU {:.1} % of one core, {:.1} KiB/min written, RSS {}",
        idle.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / idle.as_secs_f64(),
        w as f64 / 1024.0 * 60.0 / idle.as_secs_f64(),
        flotilla_tests::Resident::of(pid(&cp)?)?
    );
    if rtts.is_empty() {
        println!(
            "heartbeat round trip: no heartbeat in the idle window (IDLE_SECS is shorter than \
             HEARTBEAT_SECS)"
        );
    } else {
        println!(
            "heartbeat round trip: p50 {} p99 {} max {} ({} heartbeats)",
            ms(percentile(&mut rtts, 50.0)),
            ms(percentile(&mut rtts, 99.0)),
            ms(percentile(&mut rtts, 100.0)),
            rtts.len()
        );
    }
    let lost = shared
        .agents
        .iter()
        .filter(|a| a.state().sessions != 1)
        .count();
    if lost > 0 {
        println!(
            "note: {lost} agents lost a session so far; sessions ended and dials failed, by \
             why: {}",
            ended_tally(&shared, &Default::default())
        );
    }

    // A DAEMON service on every node.
    cp.api().register_taskdef(DEF.as_bytes())?;
    let mut spec = serde_json::json!({"serviceName": "fleet", "taskDefinition": "fleet",
        "schedulingStrategy": "DAEMON"});
    if discovery {
        spec["discovery"] = serde_json::json!({"namespace": "bench"});
    }
    let cpu0 = flotilla_tests::cpu_time(pid(&cp)?)?;
    let t = Instant::now();
    cp.api().create_service(spec.to_string().as_bytes())?;
    until(
        "a task RUNNING on every node",
        Duration::from_secs(600),
        || Ok(all(&shared, |a| a.recorded(TaskState::Running) == 1)),
    )?;
    let rolled = t.elapsed();
    println!(
        "DAEMON rollout: a task RUNNING (and recorded) on every node {:.2} s after the service \
         was created; control plane CPU {:.1} s, RSS {}",
        rolled.as_secs_f64(),
        (flotilla_tests::cpu_time(pid(&cp)?)? - cpu0).as_secs_f64(),
        flotilla_tests::Resident::of(pid(&cp)?)?
    );
    if discovery {
        let mut census_at = Instant::now();
        until(
            "the registry with every endpoint on every agent",
            Duration::from_secs(600),
            || {
                let done = all(&shared, |a| {
                    a.registry
                        .as_ref()
                        .and_then(|r| r.services.get("bench/fleet"))
                        .is_some_and(|e| e.len() == agents)
                });
                if !done && census_at.elapsed() > Duration::from_secs(30) {
                    census_at = Instant::now();
                    println!("  … {}", registry_census(&shared, agents));
                }
                Ok(done)
            },
        )?;
        println!(
            "discovery: every agent holds the registry with all {agents} endpoints {:.2} s after \
             the service was created; control plane RSS {}; so far {}",
            t.elapsed().as_secs_f64(),
            flotilla_tests::Resident::of(pid(&cp)?)?,
            registry_deliveries(&shared)
        );
    }
    let t = Instant::now();
    let nodes = cp.api().nodes()?;
    let nodes_took = t.elapsed();
    let t = Instant::now();
    let tasks = cp.api().tasks()?;
    let tasks_took = t.elapsed();
    println!(
        "listing: {} nodes in {}, {} tasks in {} (one unpaginated call each)",
        nodes.len(),
        ms(nodes_took),
        tasks.len(),
        ms(tasks_took)
    );
    let running = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .count();
    if running != agents {
        bail!("the API shows {running} tasks RUNNING, not {agents}");
    }
    let api = cp.api();
    println!(
        "paged listing (pages of {PAGE}, one after another): nodes {}; tasks {}",
        paged(api.node_pages(&Default::default(), PAGE)?)?,
        paged(api.task_pages(&Default::default(), PAGE)?)?
    );

    // The DAEMON service updated: every node's task replaced by one of the new revision.
    cp.api().register_taskdef(DEF_2.as_bytes())?;
    let cpu0 = flotilla_tests::cpu_time(pid(&cp)?)?;
    let t = Instant::now();
    cp.api().update_service(
        "fleet",
        &flotilla_api::service::ServiceUpdate {
            task_definition: Some("fleet:2".into()),
            ..Default::default()
        },
    )?;
    until(
        "one task of fleet:2 RUNNING on every node, and no other",
        Duration::from_secs(600),
        || {
            Ok(all(&shared, |a| {
                let running: Vec<&str> = a
                    .tasks
                    .values()
                    .filter(|t| t.state == TaskState::Running)
                    .map(|t| t.desired.task_definition.as_str())
                    .collect();
                running == ["fleet:2"] && a.recorded(TaskState::Running) == 1
            }))
        },
    )?;
    println!(
        "DAEMON update: every node's task replaced by one of revision 2, RUNNING and recorded, \
         {:.2} s after the update; control plane CPU {:.1} s, RSS {}",
        t.elapsed().as_secs_f64(),
        (flotilla_tests::cpu_time(pid(&cp)?)? - cpu0).as_secs_f64(),
        flotilla_tests::Resident::of(pid(&cp)?)?
    );

    // Reconnect storm: kill -9, restarted 2 s later — once the registry has settled (every
    // agent holding one version with every endpoint), so that the storm measures a restart
    // with nothing changed; a registry changed by then is numbered anew and sent whole.
    if discovery {
        until(
            "one registry with every endpoint on every agent before the kill",
            Duration::from_secs(120),
            || Ok(settled(&shared, agents).is_some()),
        )?;
    }
    let before: Vec<u32> = shared.agents.iter().map(|a| a.state().sessions).collect();
    // The newest registry an agent holds, and the whole ones sent so far: a registry with the
    // same services keeps its version across the restart, and an agent that holds it is sent
    // nothing.
    let held_at_kill = shared
        .agents
        .iter()
        .filter_map(|a| a.state().registry.as_ref().map(|r| r.version))
        .max()
        .unwrap_or(0);
    let wholes_at_kill = wholes(&shared);
    let ended_at_kill = ended(&shared);
    let drops0 = orchestratord::udp::rcvbuf_errors();
    let killed = Instant::now();
    cp.stop();
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    // A registry numbered after the restart has a version of at least this (its
    // milliseconds).
    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    cp.restart();
    let cpu0 = flotilla_tests::cpu_time(pid(&cp)?)?;
    let sim_cpu0 = flotilla_tests::cpu_time(std::process::id())?;
    until(
        "every agent back in session",
        Duration::from_secs(600),
        || {
            Ok(shared.agents.iter().zip(&before).all(|(a, b)| {
                let st = a.state();
                st.in_session && st.sessions > *b
            }))
        },
    )?;
    let back = restarted.elapsed();
    let from_kill = killed.elapsed();
    let sim_cpu = flotilla_tests::cpu_time(std::process::id())? - sim_cpu0;
    let (first, last) = window(&shared, restarted);
    let busy: u32 = shared.agents.iter().map(|a| a.state().busy).sum::<u32>() - busy;
    let t = Instant::now();
    until(
        "every node READY in the API",
        Duration::from_secs(120),
        || {
            let nodes = cp.api().nodes()?;
            Ok(nodes.len() == agents && nodes.iter().all(|n| n.state == NodeState::Ready))
        },
    )?;
    println!(
        "reconnect storm: every agent in session again {:.2} s after the restart ({:.2} s after \
         the kill; sessions established from {:.2} s to {:.2} s after the restart; {busy} busy \
         answers), all READY in the API {:.2} s later; control plane CPU {:.1} s, RSS {}; {}",
        back.as_secs_f64(),
        from_kill.as_secs_f64(),
        first.as_secs_f64(),
        last.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        (flotilla_tests::cpu_time(pid(&cp)?)? - cpu0).as_secs_f64(),
        flotilla_tests::Resident::of(pid(&cp)?)?,
        dropped_since(drops0)
    );
    let mut at = established_since(&shared, restarted);
    let sessions_since: Vec<u32> = shared
        .agents
        .iter()
        .zip(&before)
        .map(|(a, b)| a.state().sessions - b)
        .collect();
    println!(
        "storm: the agents' sessions established after the restart by p50 {:.1} s, p90 {:.1} s, \
         p99 {:.1} s, max {:.1} s; the simulator's CPU meanwhile {:.1} s (of its two cores); {} \
         agents needed more than one session to stay (at most {}); \
         sessions ended and dials failed since the kill (one session of each agent ended by it), \
         by why: {}",
        percentile(&mut at, 50.0).as_secs_f64(),
        percentile(&mut at, 90.0).as_secs_f64(),
        percentile(&mut at, 99.0).as_secs_f64(),
        percentile(&mut at, 100.0).as_secs_f64(),
        sim_cpu.as_secs_f64(),
        sessions_since.iter().filter(|n| **n > 1).count(),
        sessions_since.iter().max().copied().unwrap_or(0),
        ended_tally(&shared, &ended_at_kill)
    );
    if discovery {
        let t = Instant::now();
        until(
            "the restarted control plane's registry with every endpoint on every agent",
            Duration::from_secs(120),
            || Ok(settled(&shared, agents).is_some_and(|v| v >= held_at_kill)),
        )?;
        let version = settled(&shared, agents).unwrap_or(0);
        println!(
            "after the storm: every agent holds the restarted control plane's registry with all \
             {agents} endpoints {:.2} s after all were back ({}; {} whole registries sent since \
             the kill); control plane RSS {}; in all {}",
            t.elapsed().as_secs_f64(),
            if version >= restarted_ms {
                "numbered anew: its services changed since the newest an agent held"
            } else {
                "its version kept across the restart"
            },
            wholes(&shared) - wholes_at_kill,
            flotilla_tests::Resident::of(pid(&cp)?)?,
            registry_deliveries(&shared)
        );
    }
    // Every node keeps its one task through the storm (or gets it back).
    let t = Instant::now();
    let settled = until(
        "every node's task RUNNING after the storm",
        Duration::from_secs(60),
        || Ok(all(&shared, |a| a.recorded(TaskState::Running) == 1)),
    );
    match settled {
        Ok(_) => println!(
            "after the storm: a task RUNNING on every node {:.2} s after all were back",
            t.elapsed().as_secs_f64()
        ),
        Err(e) => {
            println!("note: {e}");
            for a in shared
                .agents
                .iter()
                .filter(|a| a.state().recorded(TaskState::Running) != 1)
                .take(5)
            {
                let st = a.state();
                let tasks: Vec<String> = st
                    .tasks
                    .iter()
                    .map(|(id, t)| format!("{id} {:?} (recorded {:?})", t.state, t.reported))
                    .collect();
                println!("  {} generation {}: {tasks:?}", a.node_id, st.generation);
            }
        }
    }
    let tasks = cp.api().tasks()?;
    let mut by_state = std::collections::BTreeMap::new();
    for t in &tasks {
        *by_state
            .entry(format!("{:?} {:?}", t.state, t.stop_code))
            .or_insert(0) += 1;
    }
    println!("tasks after the storm: {by_state:?}");

    // A REPLICA service of as many tasks as agents, spread over the fleet.
    cp.api().register_taskdef(REPLICA.as_bytes())?;
    let cpu0 = flotilla_tests::cpu_time(pid(&cp)?)?;
    let t = Instant::now();
    let spec = serde_json::json!({"serviceName": "replicas", "taskDefinition": "fleet-replica",
        "desiredCount": agents, "schedulingStrategy": "REPLICA"});
    cp.api().create_service(spec.to_string().as_bytes())?;
    until(
        "every replica RUNNING and recorded",
        Duration::from_secs(900),
        || Ok(recorded_running(&shared, "fleet-replica:") == agents),
    )?;
    println!(
        "REPLICA service of {agents} tasks: all RUNNING and recorded {:.2} s after the service \
         was created; control plane CPU {:.1} s, RSS {}",
        t.elapsed().as_secs_f64(),
        (flotilla_tests::cpu_time(pid(&cp)?)? - cpu0).as_secs_f64(),
        flotilla_tests::Resident::of(pid(&cp)?)?
    );
    let api = cp.api();
    println!(
        "paged listing with the replicas: tasks {}; the service's RUNNING tasks {}",
        paged(api.task_pages(&Default::default(), PAGE)?)?,
        paged(api.task_pages(
            &flotilla_api::page::TaskFilter {
                service: Some("replicas".into()),
                state: Some(TaskState::Running),
                ..Default::default()
            },
            PAGE
        )?)?
    );
    println!("in the whole run: {}", dropped_since(drops_at_start));
    rt.block_on(sim.stop());
    Ok(())
}
