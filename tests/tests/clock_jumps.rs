//! Clock jumps: a node's wall clock jumps a year ahead and back while it runs a task with a
//! health check, a container its restart policy restarts with backoff and a schedule pinned to
//! it that fires every minute; then the control plane's clock does the same. Each daemon runs
//! under libfaketime with a timestamp file of its own, rewritten while it runs; the monotonic
//! clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC`), as a wall clock set by hand or by NTP
//! leaves it. Nothing may be restarted, fired in a burst, started twice or lost, and the
//! node's session and certificate must come through without an operator.
//!
//! The short form (one jump each way per daemon, 8 s holds) runs in the test command. The full
//! form of RELIABILITY.md sets `FLOTILLA_CLOCK_HOLD` (seconds a clock is held a year ahead)
//! and `FLOTILLA_CLOCK_CYCLES` (jumps ahead and back per daemon).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_api::tasks::{HealthStatus, TaskState};
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

/// A year, in seconds (a whole number of minutes: a schedule's minutes fall on the same
/// seconds of the fake clock as of the real one).
const YEAR: i64 = 365 * 86_400;

/// Up for good, checked every 5 s.
const WEB: &str = r#"{
  "family": "web",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "healthCheck": {"command": ["CMD-SHELL", "true"], "interval": 5, "timeout": 2, "retries": 1},
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// Exits as it starts, every run: restarted at once, then after 1 s, 2 s, 4 s …
const CRASH: &str = r#"{
  "family": "crash",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "command": ["sh", "-c", "exit 3"]
  }]
}"#;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn real_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(secs).expect("seconds")
}

/// Debian's libfaketime.
fn libfaketime() -> PathBuf {
    for dir in std::fs::read_dir("/usr/lib").expect("/usr/lib").flatten() {
        let p = dir.path().join("faketime/libfaketime.so.1");
        if p.exists() {
            return p;
        }
    }
    panic!("libfaketime missing: install Debian's faketime (scripts/install-deps.sh)")
}

/// One daemon's wall clock: an offset from the real one in a timestamp file libfaketime
/// reads at every call; and the stretches of fake time it showed, to count the minutes that
/// turned on it.
struct FakeClock {
    file: PathBuf,
    offset: i64,
    /// (fake start, fake end) of each stretch between jumps; the last one is open.
    stretches: Vec<(i64, Option<i64>)>,
    /// Jumps ahead made.
    ahead: usize,
}

impl FakeClock {
    fn new(file: &Path) -> Self {
        std::fs::write(file, "+0").expect("timestamp file");
        Self {
            file: file.to_path_buf(),
            offset: 0,
            stretches: vec![(real_now(), None)],
            ahead: 0,
        }
    }

    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("LD_PRELOAD", libfaketime().into_os_string()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.file.clone().into_os_string(),
            ),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }

    /// The clock jumps to read `offset` seconds from the real time.
    fn set(&mut self, offset: i64) {
        let now = real_now();
        if let Some(last) = self.stretches.last_mut() {
            last.1 = Some(now + self.offset);
        }
        std::fs::write(&self.file, format!("{offset:+}")).expect("timestamp file");
        if offset > self.offset {
            self.ahead += 1;
        }
        self.offset = offset;
        self.stretches.push((now + offset, None));
    }

    /// Minutes that turned on this clock so far, jumps left out.
    fn minutes_turned(&self) -> i64 {
        let now = real_now() + self.offset;
        self.stretches
            .iter()
            .map(|(a, b)| b.unwrap_or(now).div_euclid(60) - a.div_euclid(60))
            .sum()
    }
}

fn env_of<'a>(v: &'a [(&'static str, OsString)]) -> Vec<(&'static str, &'a std::ffi::OsStr)> {
    v.iter().map(|(k, v)| (*k, v.as_os_str())).collect()
}

/// What is watched on the node while the clocks jump.
struct Watch<'a> {
    node: &'a Node,
    web: String,
    web_pid: i32,
    crash: String,
    /// (restart count, when first seen, agent run) of the crashing container.
    restarts: Vec<(u32, Instant, u32)>,
    /// Which stretch of the backoff: a new one with each run of the agent (the backoff is in
    /// memory) and before each jump ahead of its clock (see [`Watch::new_run`]).
    run: u32,
    /// The restart count as each stretch began.
    bases: Vec<u32>,
}

impl Watch<'_> {
    /// One look: the web container is the same process; the crashing one's restarts are
    /// noted.
    fn look(&mut self) {
        let ps = self.node.ps();
        let names: Vec<&str> = ps
            .iter()
            .filter_map(|c| c.record.config.name.as_deref())
            .collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a container twice: {names:?}");
        let web = ps
            .iter()
            .find(|c| c.record.config.name.as_deref() == Some(self.web.as_str()))
            .expect("the web container");
        assert_eq!(web.status, Status::Running, "the web container stopped");
        assert_eq!(web.pid(), Some(self.web_pid), "the web container restarted");
        assert_eq!(web.restart_count, 0, "the web container restarted");
        let crash = ps
            .iter()
            .find(|c| c.record.config.name.as_deref() == Some(self.crash.as_str()))
            .expect("the crashing container");
        if self.restarts.last().map(|r| r.0) != Some(crash.restart_count) {
            self.restarts
                .push((crash.restart_count, Instant::now(), self.run));
        }
    }

    /// Looks every 200 ms for `d`.
    fn hold(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.look();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The restart count last seen.
    fn count(&self) -> u32 {
        self.restarts.last().map_or(0, |r| r.0)
    }

    /// The agent was started again (its backoff is kept in memory), or its clock is about to
    /// jump ahead (a container run that spans the jump reads a year long, which starts its
    /// backoff over: RELIABILITY.md, *Left alone*): attempts count from here, and no gap across
    /// this point is checked.
    fn new_run(&mut self) {
        self.bases.push(self.count());
        self.run += 1;
    }

    /// No restart came before its backoff: attempt k (k ≥ 3) of an agent's run waits
    /// 2^(k-2) s (at most 300 s) after the exit before it, which follows attempt k-1 within a
    /// moment. (The first look found a count, not a restart's moment: it is left out.)
    fn check_backoff(&self) {
        for w in self.restarts.windows(2).skip(1) {
            let ((a, at_a, run_a), (b, at_b, run_b)) = (w[0], w[1]);
            let base = self.bases.get(run_b as usize).copied().unwrap_or(0);
            let attempt = b.saturating_sub(base);
            if b != a + 1 || run_a != run_b || attempt < 3 {
                continue;
            }
            let backoff = 2f64
                .powi(i32::try_from(attempt).expect("small") - 2)
                .min(300.0);
            let gap = at_b.duration_since(at_a).as_secs_f64();
            assert!(
                gap >= backoff - 0.6,
                "restart {b} came {gap:.1} s after restart {a}, before its {backoff} s backoff: {:?}",
                self.restarts
            );
        }
    }
}

fn fired(agent: &Agent) -> Vec<String> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("schedule fired"))
        .filter_map(|l| {
            let at = l.find("task=")? + 5;
            Some(l[at..].split_whitespace().next()?.to_string())
        })
        .collect()
}

/// `offset` moved so that the clock reads `second` seconds past a minute now (0–59): a jump
/// that lands a few seconds before a minute turns, so the short form sees the next firing
/// without waiting out most of a minute.
fn landing_at(offset: i64, second: i64) -> i64 {
    let now = real_now() + offset;
    offset + (second - now.rem_euclid(60)).rem_euclid(60)
}

#[test]
fn clocks_a_year_ahead_and_back_restart_nothing_fire_no_burst_and_keep_the_session() {
    let hold = Duration::from_secs(setting("FLOTILLA_CLOCK_HOLD", 8));
    let cycles = setting("FLOTILLA_CLOCK_CYCLES", 1);
    let began = Instant::now();
    let node = Node::new();
    let mut cp_clock = FakeClock::new(&node.scratch().join("cp-clock"));
    let cp_env = cp_clock.env();
    let cp = ControlPlane::start_with(std::net::Ipv4Addr::LOCALHOST, &[], &env_of(&cp_env));
    let mut agent_clock = FakeClock::new(&node.scratch().join("agent-clock"));
    let agent_env = agent_clock.env();
    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    let o = agent.join(&cp.server(), &cp.token(&[]), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let identity =
        std::fs::read_to_string(agent.identity().join("credential.json")).expect("credential");
    let node_id = cp.nodes()[0].id.clone();
    agent.run_with_env(&env_of(&agent_env));
    agent.wait_in_service(&cp);

    cp.register(WEB);
    cp.register(CRASH);
    cp.register(flotilla_tests::taskdefs::ONCE);
    let web = cp.run_one("web");
    let crash = cp.run_one("crash");
    wait("web healthy", Duration::from_secs(30), || {
        let t = cp.task(&web);
        t.state == TaskState::Running
            && t.containers.first().and_then(|c| c.health) == Some(HealthStatus::Healthy)
    });
    let delivered = format!("node={node_id}");
    let deliveries = || {
        cp.log()
            .lines()
            .filter(|l| l.contains("desired state delivered") && l.contains(&delivered))
            .count()
    };
    let before = deliveries();
    cp.flotilla_ok(&[
        "schedule",
        "create",
        "tick",
        "--taskdef",
        "once",
        "--cron",
        "* * * * *",
        "--node",
        &node_id,
    ]);
    // Counted from here: the node sees the schedule first a moment later.
    agent_clock.stretches = vec![(real_now(), None)];
    wait("the schedule delivered", Duration::from_secs(10), || {
        deliveries() > before
    });
    let web_name = format!("{web}-0");
    let mut watch = Watch {
        node: &node,
        web_pid: *node.running().get(&web_name).expect("web runs"),
        web: web_name,
        crash: format!("{crash}-0"),
        restarts: Vec::new(),
        run: 0,
        bases: vec![0],
    };
    watch.look();
    let renewed = |agent: &Agent| agent.log().matches("certificate renewed in place").count();
    let sessions = |agent: &Agent| agent.log().matches("session established").count();

    // The node's clock: a year ahead, held, then back (the k-th time k years ahead: each
    // jump to minutes that never ran, which would not run again, so there is a catch-up to
    // see).
    let mut back_counts = Vec::new();
    // The node's clock once the schedule last fired after a jump back: the next jump back
    // lands after it, or it would land on a minute that already ran (with holds of 30 s the
    // second cycle comes back within the first one's minute), which does not run again.
    let mut fired_back_at = 0;
    for k in 1..=cycles {
        let before = fired(&agent).len();
        watch.look();
        watch.new_run();
        agent_clock.set(YEAR * i64::try_from(k).expect("small"));
        // Its catch-up: the minute that was due, once, at once.
        wait("the catch-up run", Duration::from_secs(5), || {
            fired(&agent).len() > before
        });
        watch.hold(hold);
        assert_eq!(cp.task(&web).state, TaskState::Running);
        assert_eq!(
            cp.task(&web).containers[0].health,
            Some(HealthStatus::Healthy)
        );
        // Back a year, to a few seconds before a minute turns (within two minutes of the real
        // time, after the minute the last jump back ran): the schedule fires at that minute,
        // not a year later.
        let before = fired(&agent).len();
        agent_clock.set(landing_at((fired_back_at - real_now()).max(0), 56));
        back_counts.push(watch.count());
        let landed = Instant::now();
        while fired(&agent).len() == before {
            assert!(
                landed.elapsed() < Duration::from_secs(10),
                "the schedule did not fire after the clock was set back:\n{}",
                agent.log()
            );
            watch.look();
            std::thread::sleep(Duration::from_millis(200));
        }
        fired_back_at = real_now() + agent_clock.offset;
        watch.hold(Duration::from_secs(2));
    }
    assert_eq!(sessions(&agent), 1, "the session dropped");
    // Its certificate is judged by the control plane's clock: no renewal at all.
    assert_eq!(renewed(&agent), 0, "renewed by a wrong clock");

    // The control plane's clock: a year ahead, held, then back. The operator API refuses the
    // admin certificate meanwhile (a year old by its clock): only the node is watched.
    for _ in 0..cycles {
        cp_clock.set(YEAR);
        watch.hold(hold);
        cp_clock.set(0);
        watch.hold(Duration::from_secs(2));
    }
    assert_eq!(sessions(&agent), 1, "the session dropped");
    assert_eq!(cp.nodes()[0].state, flotilla_api::ops::NodeState::Ready);
    // No certificate dated by the control plane's wrong clock.
    assert_eq!(renewed(&agent), 0, "renewed by a wrong clock");

    // The full form also sets both clocks a year ahead (the site's time server wrong), long
    // enough for the node to hear the control plane's clock (a ping every 10 s): its
    // certificate, expired by both, is renewed and dated a year ahead; both back, that one is
    // not valid yet, and is renewed again while the session lasts.
    if hold >= Duration::from_secs(12) {
        let offset = agent_clock.offset;
        for _ in 0..cycles {
            let before = renewed(&agent);
            cp_clock.set(YEAR);
            agent_clock.set(YEAR + offset);
            watch.hold(hold);
            wait("a renewal a year ahead", Duration::from_secs(30), || {
                watch.look();
                renewed(&agent) > before
            });
            cp_clock.set(0);
            agent_clock.set(offset);
            wait("a renewal back", Duration::from_secs(30), || {
                watch.look();
                renewed(&agent) > before + 1
            });
            watch.hold(Duration::from_secs(2));
        }
        assert_eq!(sessions(&agent), 1, "the session dropped");
    }

    // The node's session is made anew (the agent restarted): its certificate is valid by
    // both clocks, it is the same node, and nothing starts again.
    agent.kill();
    watch.new_run();
    agent.run_with_env(&env_of(&agent_env));
    agent.wait_log("session established", 2, Duration::from_secs(30));
    watch.hold(Duration::from_secs(2));
    assert!(
        !cp.log().contains("node rejoined"),
        "the node enrolled again"
    );
    assert!(
        !agent.log().contains("certificate expired"),
        "{}",
        agent.log()
    );
    let cred: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.identity().join("credential.json")).expect("credential"),
    )
    .expect("credential json");
    let old: serde_json::Value = serde_json::from_str(&identity).expect("credential json");
    assert_eq!(cred["name"], old["name"], "another identity");
    let nodes = cp.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(nodes[0].connected);

    // The crashing container was restarted after each time the clock went back (its exit,
    // dated a year ahead, did not hold it), never before its backoff.
    let last_back = *back_counts.last().expect("a cycle");
    wait(
        "a restart after the clock went back",
        Duration::from_secs(310),
        || {
            watch.look();
            watch.count() > last_back
        },
    );
    watch.check_backoff();

    // The control plane holds what it held: both tasks running, the web one healthy, its one
    // container never restarted; no task lost, none started twice.
    let t = cp.task(&web);
    assert_eq!(t.state, TaskState::Running, "{t:?}");
    assert_eq!(t.containers[0].restarts, 0, "{t:?}");
    wait("web healthy again", Duration::from_secs(15), || {
        cp.task(&web).containers[0].health == Some(HealthStatus::Healthy)
    });
    assert_eq!(cp.task(&crash).state, TaskState::Running);
    let events = cp.api().events(0, 1000).expect("events");
    let kinds: BTreeMap<&str, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.kind.as_str()).or_default() += 1;
        m
    });
    let stopped = |id: &str| {
        events
            .iter()
            .any(|e| e.subject == id && e.kind.starts_with("task.stop"))
    };
    assert!(
        !kinds.contains_key("task.lost") && !kinds.contains_key("node.rejoined"),
        "{kinds:?}"
    );
    assert!(!stopped(&web) && !stopped(&crash), "{events:?}");
    let tasks = cp.tasks();
    let by_def = |f: &str| {
        tasks
            .iter()
            .filter(|t| t.task_definition.starts_with(f))
            .count()
    };
    assert_eq!((by_def("web"), by_def("crash")), (1, 1), "{tasks:?}");

    // The schedule: one run per minute its clock turned, plus one catch-up per jump ahead;
    // at least one after each jump back; each minute's run once.
    let runs = fired(&agent);
    let unique: BTreeSet<&String> = runs.iter().collect();
    assert_eq!(unique.len(), runs.len(), "a run started twice: {runs:?}");
    let most = agent_clock.minutes_turned() + i64::try_from(agent_clock.ahead).expect("small");
    assert!(
        i64::try_from(runs.len()).expect("small") <= most,
        "{} runs, at most {most}: {runs:?}",
        runs.len()
    );
    // Every run is known to the control plane: reported, and not removed as stopped for
    // long while its clock read a year ahead.
    wait(
        "every run reported and kept",
        Duration::from_secs(30),
        || {
            let known: BTreeSet<String> = cp.tasks().into_iter().map(|t| t.id).collect();
            runs.iter().all(|r| known.contains(r))
        },
    );
    let containers: Vec<String> = node
        .ps()
        .into_iter()
        .filter_map(|c| c.record.config.name)
        .collect();
    let unique: BTreeSet<&String> = containers.iter().collect();
    assert_eq!(unique.len(), containers.len(), "{containers:?}");
    for log in [agent.log(), cp.log()] {
        assert!(!log.contains("panicked"), "{log}");
    }
    eprintln!(
        "clock jumps: {cycles} cycle(s) of {} s per daemon; {} scheduled runs (at most {most}); \
         crash restarts {:?}; {} certificate renewals; {:.1} s",
        hold.as_secs(),
        runs.len(),
        watch
            .restarts
            .iter()
            .map(|(n, at, _)| (*n, at.duration_since(began).as_secs()))
            .collect::<Vec<_>>(),
        renewed(&agent),
        began.elapsed().as_secs_f64()
    );

    cp.flotilla_ok(&["schedule", "rm", "tick"]);
    cp.flotilla_ok(&["task", "stop", &web]);
    cp.flotilla_ok(&["task", "stop", &crash]);
    wait("the tasks stopped", Duration::from_secs(20), || {
        [&web, &crash]
            .iter()
            .all(|id| cp.task(id).state == TaskState::Stopped)
    });
    node.wait_removed(Duration::from_secs(20));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}
