//! Benchmark: time from a node's loss to its service task's replacement RUNNING elsewhere. Real
//! processes on three hosts (network namespaces on a test LAN): a REPLICA service of one task
//! with `lostAfter` 5 s; the host running it has its link cut. Measured: cut → node seen
//! DISCONNECTED (the session's idle timeout), and DISCONNECTED → replacement RUNNING. *Anchor:*
//! the service's `lostAfter`, the wait it asks for — the ratio says what detection and
//! replacement add to it. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-failover [RUNS]`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::ops::{NodeState, TaskInfo};
use flotilla_api::tasks::{DesiredStatus, TaskState};
use flotilla_tests::cluster::{ControlPlane, Fleet};

const SERVE: &str = r#"{"family": "serve", "networkMode": "none", "containerDefinitions": [{
  "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
  "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]}]}"#;

const LOST_AFTER: u64 = 5;

fn running(cp: &ControlPlane) -> Result<Vec<TaskInfo>> {
    Ok(cp
        .api()
        .tasks()?
        .into_iter()
        .filter(|t| {
            t.started_by.as_deref() == Some("service:bench")
                && t.state == TaskState::Running
                && t.desired == DesiredStatus::Running
        })
        .collect())
}

fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    while !f()? {
        if t.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn main() -> Result<()> {
    let [runs] = flotilla_tests::bench_args([("RUNS", 2)]);
    let runs = runs.max(1) as usize;
    flotilla_tests::require_root();
    let fleet = Fleet::start(&[&[], &[], &[]]);
    let (cp, ids, hosts) = (&fleet.cp, &fleet.ids, &fleet.hosts);
    fleet.register(SERVE);
    let svc = serde_json::json!({"serviceName": "bench", "taskDefinition": "serve", "desiredCount": 1,
        "disconnectPolicy": {"lostAfter": LOST_AFTER}});
    cp.api().create_service(svc.to_string().as_bytes())?;

    let (mut detect, mut replace) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        until("one running task", Duration::from_secs(60), || {
            Ok(running(cp)?.len() == 1)
        })?;
        let task = running(cp)?.remove(0);
        let victim = task
            .node
            .as_deref()
            .and_then(|n| fleet.index_of(n))
            .context("the task's host")?;
        let cut = Instant::now();
        hosts[victim].cut();
        until(
            "the node seen DISCONNECTED",
            Duration::from_secs(60),
            || Ok(fleet.node_state(victim) == Some(NodeState::Disconnected)),
        )?;
        let seen = cut.elapsed();
        until("the replacement RUNNING", Duration::from_secs(60), || {
            Ok(running(cp)?
                .iter()
                .any(|t| t.node.as_deref() != Some(ids[victim].as_str())))
        })?;
        detect.push(seen);
        replace.push(cut.elapsed() - seen);
        hosts[victim].restore();
        until("the node READY again", Duration::from_secs(120), || {
            Ok(fleet.node_state(victim) == Some(NodeState::Ready))
        })?;
        until("one copy left", Duration::from_secs(60), || {
            Ok(running(cp)?.len() == 1)
        })?;
    }
    let secs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("node loss to replacement RUNNING, {runs} runs, lostAfter {LOST_AFTER} s");
    println!("  cut -> node seen DISCONNECTED      : {} s", secs(&detect));
    println!(
        "  DISCONNECTED -> replacement RUNNING : {} s",
        secs(&replace)
    );
    for r in &replace {
        println!(
            "  ratio to lostAfter (anchor)        : {:.2}x",
            r.as_secs_f64() / LOST_AFTER as f64
        );
    }
    cp.api().remove_service("bench")?;
    fleet.finish();
    Ok(())
}
