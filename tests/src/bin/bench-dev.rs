//! Benchmark: `flotilla dev` from nothing to the demo task RUNNING (CA and certificates made,
//! control plane up, node enrolled with a token, demo image built from busybox-static and
//! imported, task placed and its container started), cold (empty data directory) and warm
//! (the same directory again), and its Ctrl-C to everything stopped. Anchor, in the same run:
//! `runc run` of one busybox container (`true`), i.e. what starting a single container by hand
//! costs. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-dev [RUNS]`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `flotilla dev` on `dir` until its demo task runs, then interrupts it; returns (time to
/// RUNNING, time from Ctrl-C to exit).
fn dev_run(dir: &Path, port: u16, parent: &str) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut child = Command::new(flotilla_tests::bin("flotilla"))
        .env("HOME", dir.join("home"))
        .env_remove("FLOTILLA_CONFIG")
        .arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .args(["--port", &port.to_string(), "--cgroup-parent", parent])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let up = loop {
        match lines.next().transpose()? {
            Some(l) if l.contains("RUNNING") => break start.elapsed(),
            Some(_) => {}
            None => bail!(
                "flotilla dev ended before the demo ran: {:?}",
                child.wait()?
            ),
        }
    };
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("pid")?;
    let stop = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
    for l in lines {
        l?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("flotilla dev exited {status}");
    }
    Ok((up, stop.elapsed()))
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let [runs] = flotilla_tests::bench_args([("RUNS", 5)]);
    let runs = runs.max(1) as usize;
    flotilla_tests::require_root();
    let work = tempfile::tempdir()?;
    let parent = format!("flotilla-bench/dev-{}", std::process::id());

    // Anchor: a bundle of the host's busybox with `runc spec`'s defaults, running `true`.
    let bundle = work.path().join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("/bin/busybox (busybox-static)")?;
    for applet in ["true", "sh"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let s = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()?;
    if !s.success() {
        bail!("runc spec failed");
    }
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/{parent}/runc").into();
    std::fs::write(&config, serde_json::to_vec(&spec)?)?;
    let mut runc = Vec::new();
    for i in 0..runs + 1 {
        let t = Instant::now();
        let s = Command::new("runc")
            .arg("--root")
            .arg(work.path().join("runc-state"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("anchor-{i}"))
            .stdout(Stdio::null())
            .status()?;
        if !s.success() {
            bail!("runc run failed: {s}");
        }
        if i > 0 {
            runc.push(t.elapsed());
        }
    }

    let (mut cold, mut warm, mut stop) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let dir = work.path().join(format!("dev-{i}"));
        let port = flotilla_tests::cluster::free_port();
        let (up, down) = dev_run(&dir, port, &parent)?;
        cold.push(up);
        stop.push(down);
        let (up, down) = dev_run(&dir, port, &parent)?;
        warm.push(up);
        stop.push(down);
    }
    let r = median(&mut runc);
    let (c, w, s) = (median(&mut cold), median(&mut warm), median(&mut stop));
    println!("flotilla dev to the demo task RUNNING, {runs} runs each (medians)");
    println!(
        "  cold (empty data dir)  : {c:7.0} ms  = {:5.1}x one runc run",
        c / r
    );
    println!(
        "  warm (same data dir)   : {w:7.0} ms  = {:5.1}x one runc run",
        w / r
    );
    println!("  Ctrl-C to all stopped  : {s:7.0} ms");
    println!("  anchor runc run `true` : {r:7.1} ms");
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(entry.path().join(&parent).join("runc"));
        let _ = std::fs::remove_dir(entry.path().join(&parent));
        let _ = std::fs::remove_dir(entry.path().join("flotilla-bench"));
    }
    Ok(())
}
