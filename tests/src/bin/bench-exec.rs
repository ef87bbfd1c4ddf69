//! Benchmark: `flotilla exec TASK -- true` from the operator's machine — the CLI's start, its
//! TLS connection, the control plane's upgrade and event commit, the stream on the node's
//! session, the helper joining the container, the exit code back — against `nodeagent ctr exec
//! CONTAINER true` run on the node itself, measured in the same run on the same container.
//! Each is the wall time of a whole process, start to exit. Run as root:
//! `cargo build --release --workspace && target/release/bench-exec [N]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;

const DEF: &str = r#"{"family":"bench","networkMode":"none","containerDefinitions":[
  {"name":"main","image":"test/busybox:latest","memory":16,"stopTimeout":2,"command":["sleep","3600"]}]}"#;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// Runs `cmd` to its end `n` times (after 2 not counted) and returns each run's wall time.
fn timed(n: usize, mut cmd: impl FnMut() -> Command) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    for i in 0..n + 2 {
        let mut c = cmd();
        c.stdin(Stdio::null()).stdout(Stdio::null());
        let t = Instant::now();
        let s = c.status()?;
        let d = t.elapsed();
        if !s.success() {
            bail!("{c:?}: {s}");
        }
        if i >= 2 {
            out.push(d);
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let [n] = flotilla_tests::bench_args([("EXECS", 40)]);
    let n = n.max(1) as usize;
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let agent = Agent::in_session(&cp, &node);
    cp.register(DEF);
    let task = cp.run_one("bench");
    let start = Instant::now();
    while cp.task(&task).state != TaskState::Running {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("task {task} did not run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let container = format!("{task}-0");

    // Interleaved, so a change in the machine's load meets both alike.
    let (mut exec, mut ctr) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        exec.extend(timed(n / 4 + 1, || {
            let mut c = Command::new(flotilla_tests::bin("flotilla"));
            c.arg("--config")
                .arg(&cp.admin)
                .args(["exec", &task, "--", "true"]);
            c
        })?);
        ctr.extend(timed(n / 4 + 1, || {
            let mut c = node.nodeagent();
            c.args(["ctr", "exec", &container, "true"]);
            c
        })?);
    }
    let (e50, e99) = (pct(&mut exec, 0.5), pct(&mut exec, 0.99));
    let (c50, c99) = (pct(&mut ctr, 0.5), pct(&mut ctr, 0.99));
    println!(
        "exec start-up to exit, `true` in a running container, {} of each, interleaved",
        exec.len()
    );
    println!("  flotilla exec TASK -- true (through the control plane): p50 {e50:.1} ms  p99 {e99:.1} ms");
    println!(
        "  nodeagent ctr exec C true (on the node):               p50 {c50:.1} ms  p99 {c99:.1} ms"
    );
    println!("  ratio (p50): {:.2}x nodeagent ctr exec", e50 / c50);
    cp.flotilla_ok(&["task", "stop", &task]);
    drop(agent);
    Ok(())
}
