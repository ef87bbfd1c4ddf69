//! Benchmark: container start-to-exit of `true`, `nodeagent ctr run --rm` against `runc run` of
//! the same bundle (the OCI spec nodeagent generates, seccomp profile and all, over a copy of
//! the same root filesystem, with its own network namespace like ours), measured alternately in
//! the same run: ROUNDS rounds (default 3) of ITERATIONS runs of each (default 30, after two
//! warm-up runs), each round's medians and ratio printed, then the spread of the rounds. Also
//! reports the idle resident memory of a shim. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-run [ITERATIONS] [ROUNDS]`.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_tests::image::{busybox_image, write_layout};

fn main() -> Result<()> {
    let [iterations, rounds] = flotilla_tests::bench_args([("ITERATIONS", 30), ("ROUNDS", 3)]);
    let (iterations, rounds) = (iterations.max(1) as usize, rounds.max(1) as usize);
    flotilla_tests::require_root();
    let nodeagent = flotilla_tests::bin("nodeagent");
    let work = tempfile::tempdir()?;
    let data = work.path().join("node");
    let parent = format!("flotilla-bench/{}", std::process::id());
    let _cgroups = Cgroups(parent.clone());
    let ctr = |args: &[&str]| -> Result<String> {
        let out = Command::new(&nodeagent)
            .arg("--data-dir")
            .arg(&data)
            .arg("--cgroup-parent")
            .arg(&parent)
            .arg("ctr")
            .args(args)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("nodeagent ctr {args:?} failed: {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "bench",
        &busybox_image(flotilla_tests::host_arch()),
    )?;
    ctr(&[
        "image",
        "import",
        layout.to_str().context("path")?,
        "--name",
        "bench/busybox",
    ])?;

    // The bundle nodeagent generates, captured from a running container.
    let id = ctr(&["run", "-d", "bench/busybox", "sleep", "60"])?;
    let dir = data.join("containers").join(&id);
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("config.json"))?)?;
    let seccomp: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("seccomp.json"))?)?;
    let shim_pid = serde_json::from_slice::<flotilla_runtime::container::RuntimeState>(&fs::read(
        dir.join("state.json"),
    )?)?
    .shim
    .pid;
    std::thread::sleep(Duration::from_millis(300));
    let shim_rss = flotilla_tests::Resident::of(u32::try_from(shim_pid)?)?;

    let bundle = work.path().join("bundle");
    fs::create_dir_all(&bundle)?;
    flotilla_tests::copy_container_files(&dir, shim_pid, &mut spec, &bundle)?;
    ctr(&["rm", "-f", &id])?;
    // The seccomp profile nodeagent compiles ahead and installs itself; runc gets it in the
    // spec and compiles it on its start path, as it always does.
    spec["linux"]["seccomp"] = seccomp;
    spec["root"]["path"] = "rootfs".into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["linux"]["cgroupsPath"] = format!("/{parent}/runc").into();
    // Ours gets a fresh network namespace from its shim; runc makes one from the spec.
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.push(serde_json::json!({ "type": "network" }));
    }
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    let runc_root = work.path().join("runc-state");

    let time = |cmd: &mut Command| -> Result<Duration> {
        let t = Instant::now();
        let s = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        let d = t.elapsed();
        if !s.success() {
            bail!("{cmd:?} failed: {s}");
        }
        Ok(d)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        ms(v[((v.len() - 1) as f64 * p).round() as usize])
    };
    println!(
        "container run of `true`, {rounds} rounds of {iterations} runs each, alternating, same bundle"
    );
    let mut ratios = Vec::new();
    let mut n = 0;
    for round in 1..=rounds {
        let mut ours = Vec::new();
        let mut runc = Vec::new();
        for i in 0..iterations + 2 {
            let a = time(
                Command::new(&nodeagent)
                    .arg("--data-dir")
                    .arg(&data)
                    .arg("--cgroup-parent")
                    .arg(&parent)
                    .args(["ctr", "run", "--rm", "bench/busybox", "true"]),
            )?;
            let b = time(
                Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["run", "--bundle"])
                    .arg(&bundle)
                    .arg(format!("bench-{n}")),
            )?;
            n += 1;
            // The first two of a round warm caches.
            if i >= 2 {
                ours.push(a);
                runc.push(b);
            }
        }
        let (om, o90) = (pct(&mut ours, 0.5), pct(&mut ours, 0.9));
        let (rm, r90) = (pct(&mut runc, 0.5), pct(&mut runc, 0.9));
        println!("round {round}:");
        println!("  nodeagent ctr run --rm : median {om:6.1} ms   p90 {o90:6.1} ms");
        println!("  runc run               : median {rm:6.1} ms   p90 {r90:6.1} ms");
        println!("  ratio (median)         : {:.2}x runc", om / rm);
        ratios.push(om / rm);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio over {rounds} rounds: {:.2}-{:.2}x runc, median {:.2}x (target <= 0.80x)",
        ratios[0],
        ratios[ratios.len() - 1],
        ratios[ratios.len() / 2]
    );
    println!("shim idle RSS: {shim_rss}");
    Ok(())
}

/// The benchmark's cgroup parent, removed from every hierarchy when the benchmark ends, also
/// when it fails: runc leaves its parents behind (nodeagent removes its own when empty).
struct Cgroups(String);

impl Drop for Cgroups {
    fn drop(&mut self) {
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for entry in hierarchies.flatten() {
            let _ = fs::remove_dir(entry.path().join(&self.0).join("runc"));
            let _ = fs::remove_dir(entry.path().join(&self.0));
            let _ = fs::remove_dir(entry.path().join("flotilla-bench"));
        }
    }
}
