//! Benchmark: task launch latency — `POST /v1/tasks` until the control plane reports the task
//! RUNNING (placement, desired state pushed and persisted on the node, container created and
//! started, status reported back), image already on the node — against `runc run -d` of the
//! same container's bundle, measured in the same run. Also the idle resident memory of the
//! agent and of the control plane (2 s after the last task), anonymous and file-backed. Run as
//! root:
//! `cargo build --release --workspace && target/release/bench-launch [N]`.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::ops::TaskRun;
use flotilla_api::tasks::TaskState;
use flotilla_certs::credential::Credential;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::{Node, IMAGE};
use flotilla_tests::Resident;

const DEF: &str = r#"{"family":"bench","networkMode":"none","containerDefinitions":[
  {"name":"main","image":"test/busybox:latest","memory":16,"stopTimeout":2,"command":["sleep","3600"]}]}"#;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let [n] = flotilla_tests::bench_args([("TASKS", 30)]);
    let n = n.max(1) as usize;
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node);
    let o = agent.join(&cp.server(), &cp.token(&[]), &[]);
    if !o.status.success() {
        bail!("join: {}", String::from_utf8_lossy(&o.stderr));
    }
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    let f = cp.scratch().join("bench.json");
    fs::write(&f, DEF)?;
    cp.flotilla_ok(&["taskdef", "register", f.to_str().context("utf8")?]);

    let cred = Credential::load(&cp.admin)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut launch = Vec::new();
    rt.block_on(async {
        let api = flotilla_client::Client::at(&cred, cp.addr)?;
        for i in 0..n + 2 {
            let t = Instant::now();
            let created = api.run_task(&TaskRun::new("bench")).await?;
            let id = created.first().context("a placed task")?.id.clone();
            loop {
                let t2 = api.task(&id).await?;
                if t2.state == TaskState::Running {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("task {id} did not run: {t2:?}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if i >= 2 {
                launch.push(t.elapsed());
            }
            api.stop_task(&id).await?;
            while api.task(&id).await?.state != TaskState::Stopped {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::Ok(())
    })?;
    let (agent_pid, cp_pid) = (
        agent.pid().context("agent pid")?,
        cp.pid().context("control plane pid")?,
    );
    std::thread::sleep(Duration::from_secs(2));
    let idle = (Resident::of(agent_pid)?, Resident::of(cp_pid)?);

    // The anchor: the same container's bundle with runc, detached.
    let id = node
        .ctr_ok(&["run", "-d", IMAGE, "sleep", "60"])
        .trim()
        .to_string();
    let dir = node.data.join("containers").join(&id);
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("config.json"))?)?;
    spec["linux"]["seccomp"] = serde_json::from_slice(&fs::read(dir.join("seccomp.json"))?)?;
    let state: flotilla_runtime::container::RuntimeState =
        serde_json::from_slice(&fs::read(dir.join("state.json"))?)?;
    let shim = state.shim.pid;
    let bundle = node.scratch().join("bundle");
    fs::create_dir_all(&bundle)?;
    flotilla_tests::copy_container_files(&dir, shim, &mut spec, &bundle)?;
    node.ctr_ok(&["rm", "-f", &id]);
    spec["root"]["path"] = "rootfs".into();
    spec["process"]["args"] = serde_json::json!(["sleep", "3600"]);
    spec["linux"]["cgroupsPath"] = format!("/{}/runc", node.cgroup_parent).into();
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.push(serde_json::json!({"type": "network"}));
    }
    fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let root = node.scratch().join("runc-state");
    let mut runc = Vec::new();
    for i in 0..n + 2 {
        let name = format!("bench-{i}");
        let t = Instant::now();
        let s = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        let d = t.elapsed();
        if !s.success() {
            bail!("runc run failed");
        }
        if i >= 2 {
            runc.push(d);
        }
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &name])
            .status();
    }
    for e in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = fs::remove_dir(e.path().join(&node.cgroup_parent).join("runc"));
    }
    let (l50, l99) = (pct(&mut launch, 0.5), pct(&mut launch, 0.99));
    let (r50, r99) = (pct(&mut runc, 0.5), pct(&mut runc, 0.99));
    println!(
        "task launch, API call -> RUNNING reported, image on the node, {n} tasks one after another"
    );
    println!("  flotilla task      : p50 {l50:6.1} ms   p99 {l99:6.1} ms");
    println!("  runc run -d (same) : p50 {r50:6.1} ms   p99 {r99:6.1} ms");
    println!(
        "  ratio p50          : {:.2}x runc (target <= 1.5x; p99 target <= 100 ms)",
        l50 / r50
    );
    println!("idle RSS:");
    println!("  nodeagent run     : {}", idle.0);
    println!("  orchestratord run : {}", idle.1);
    agent.kill();
    Ok(())
}
