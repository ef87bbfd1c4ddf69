//! Benchmark: what a node costs in memory and disk before its containers do any work, against
//! the per-container supervisors of the field measured in the same run.
//!
//! - **Binaries:** the size of each Flotilla binary as built and fully stripped (`strip`),
//!   beside Debian's `conmon`, `containerd-shim-runc-v2`, `containerd` and `runc`.
//! - **Flotilla:** a real control plane and `nodeagent run`; N idle tasks (`sleep`, network
//!   `none`) started through the control plane; 3 s after the last is RUNNING, the memory of the
//!   agent and of every container's `flotilla-shim` from `/proc/PID/smaps_rollup`: RSS, PSS (each
//!   shared page divided among the processes mapping it: what the node really pays) and USS
//!   (private pages: what one more container costs).
//! - **conmon** (podman's and CRI-O's supervisor): N `conmon`s, each running the same container
//!   (the spec nodeagent generated, over a copy of its root filesystem) through `runc`.
//! - **containerd:** a private `containerd` daemon and N containers over the same root
//!   filesystem (`ctr run -d --rootfs`), each with its `containerd-shim-runc-v2`; the node's
//!   overhead is the daemon plus the shims.
//!
//! An anchor whose binaries are missing is skipped with a note (`apt-get install conmon
//! containerd`). Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-footprint [N]` (default 50).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;

const DEF: &str = r#"{"family":"idle","networkMode":"none","containerDefinitions":[
  {"name":"main","image":"test/busybox:latest","memory":16,"stopTimeout":2,"command":["sleep","3600"]}]}"#;

/// One process's memory from `/proc/PID/smaps_rollup`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    pss: u64,
    uss: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("/proc/{pid}/smaps_rollup"))?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            rss: field("Rss:"),
            pss: field("Pss:"),
            uss: field("Private_Clean:") + field("Private_Dirty:"),
        })
    }

    fn add(self, o: Self) -> Self {
        Self {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            uss: self.uss + o.uss,
        }
    }
}

/// Median and range of one measure over a set of processes.
fn spread(v: &[Memory], f: impl Fn(&Memory) -> u64) -> String {
    let mut x: Vec<u64> = v.iter().map(f).collect();
    x.sort_unstable();
    if x.is_empty() {
        return "-".into();
    }
    format!(
        "{:>6} KiB (min {}, max {})",
        x[x.len() / 2],
        x[0],
        x[x.len() - 1]
    )
}

fn report(name: &str, per_container: &[Memory], fixed: Option<(&str, Memory)>) {
    println!("{name}: {} containers", per_container.len());
    println!("  per container USS {}", spread(per_container, |m| m.uss));
    println!("  per container PSS {}", spread(per_container, |m| m.pss));
    println!("  per container RSS {}", spread(per_container, |m| m.rss));
    let total = per_container
        .iter()
        .fold(Memory::default(), |a, m| a.add(*m));
    if let Some((what, m)) = fixed {
        println!(
            "  {what}: RSS {} KiB, PSS {} KiB, USS {} KiB",
            m.rss, m.pss, m.uss
        );
        println!(
            "  node overhead ({what} + supervisors), PSS: {:.1} MiB",
            (total.pss + m.pss) as f64 / 1024.0
        );
    } else {
        println!(
            "  node overhead (supervisors), PSS: {:.1} MiB",
            total.pss as f64 / 1024.0
        );
    }
}

fn sizes(work: &Path) -> Result<()> {
    println!("binaries (bytes as built / fully stripped):");
    let ours = ["nodeagent", "flotilla-shim", "orchestratord", "flotilla"];
    for b in ours {
        let path = flotilla_tests::bin(b);
        let stripped = work.join(format!("{b}.stripped"));
        let ok = Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        let built = fs::metadata(&path)?.len();
        let small = if ok {
            fs::metadata(&stripped)?.len()
        } else {
            0
        };
        println!("  {b:<24} {:>6.1} MB / {:>6.1} MB", mb(built), mb(small));
    }
    for a in [
        "/usr/bin/conmon",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/bin/containerd",
        "/usr/sbin/runc",
    ] {
        match fs::metadata(a) {
            Ok(m) => println!("  {a:<24} {:>6.1} MB (Debian's, stripped)", mb(m.len())),
            Err(_) => println!("  {a:<24} not installed"),
        }
    }
    Ok(())
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// Processes named `name` whose command line mentions `needle` (this run's, not another's or a
/// zombie's).
fn pids_of(name: &str, needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let named =
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name);
        let ours = fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle));
        if named && ours {
            out.push(pid);
        }
    }
    out
}

/// Flotilla: the agent and the shims of `n` idle tasks. Returns the bundle (spec and root
/// filesystem of one of those containers) for the anchors.
fn flotilla(n: usize, work: &Path) -> Result<PathBuf> {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node);
    let o = agent.join(&cp.server(), &cp.token(&[]), &[]);
    if !o.status.success() {
        bail!("join: {}", String::from_utf8_lossy(&o.stderr));
    }
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    cp.register(DEF);
    std::thread::sleep(Duration::from_secs(3));
    let agent_pid = agent.pid().context("agent pid")?;
    let alone = Memory::of(agent_pid)?;
    let status = flotilla_tests::Resident::of(agent_pid)?;
    println!(
        "nodeagent run, idle with no task: RSS {} KiB ({} anonymous + {} file-backed), PSS {} KiB, USS {} KiB",
        alone.rss, status.anon, status.file, alone.pss, alone.uss
    );
    let ids = cp.run_all_running("idle", n, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(3));
    let agent_mem = Memory::of(agent_pid)?;
    let mut shims = Vec::new();
    let mut one = None;
    for e in fs::read_dir(node.data.join("containers"))?.flatten() {
        let Ok(state) = fs::read(e.path().join("state.json")) else {
            continue;
        };
        let state: flotilla_runtime::container::RuntimeState = serde_json::from_slice(&state)?;
        shims.push(Memory::of(u32::try_from(state.shim.pid)?)?);
        one.get_or_insert((e.path(), state.shim.pid));
    }
    report(
        "flotilla-shim",
        &shims,
        Some(("nodeagent run (with them)", agent_mem)),
    );

    // The anchors' bundle: this container's spec and a copy of its root filesystem.
    let (dir, shim) = one.context("no container")?;
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("config.json"))?)?;
    spec["linux"]["seccomp"] = serde_json::from_slice(&fs::read(dir.join("seccomp.json"))?)?;
    let bundle = work.join("bundle");
    fs::create_dir_all(&bundle)?;
    flotilla_tests::copy_container_files(&dir, shim, &mut spec, &bundle)?;
    spec["root"]["path"] = bundle.join("rootfs").to_string_lossy().into_owned().into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "3600"]);
    spec["process"]["terminal"] = false.into();
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.push(serde_json::json!({"type": "network"}));
    }
    fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    for id in &ids {
        cp.flotilla(&["task", "stop", id]);
    }
    let t = Instant::now();
    while cp.tasks().iter().any(|t| t.state != TaskState::Stopped) && t.elapsed().as_secs() < 60 {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(agent);
    drop(cp);
    node.remove_all();
    Ok(bundle)
}

/// A bundle directory per container: the same spec and root filesystem, its own cgroup.
fn bundle_for(bundle: &Path, name: &str, cgroup: &str) -> Result<PathBuf> {
    let dir = bundle.with_file_name(format!("bundle-{name}"));
    fs::create_dir_all(&dir)?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json"))?)?;
    spec["linux"]["cgroupsPath"] = cgroup.into();
    fs::write(dir.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(dir)
}

fn conmon(n: usize, bundle: &Path, work: &Path) -> Result<()> {
    if !Path::new("/usr/bin/conmon").exists() {
        println!("conmon: not installed (apt-get install conmon): skipped");
        return Ok(());
    }
    let root = work.join("conmon-runc");
    let mut mems = Vec::new();
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("fp-conmon-{i}");
        let b = bundle_for(bundle, &name, &format!("/flotilla-bench/{name}"))?;
        let pidfile = b.join("conmon.pid");
        let s = Command::new("conmon")
            .args(["--api-version", "1", "-c", &name, "-u", &name, "-n", &name])
            .args([
                "-r",
                "/usr/sbin/runc",
                "--runtime-arg",
                "--root",
                "--runtime-arg",
            ])
            .arg(&root)
            .arg("-b")
            .arg(&b)
            .arg("-p")
            .arg(b.join("ctr.pid"))
            .arg("--conmon-pidfile")
            .arg(&pidfile)
            .arg("-l")
            .arg(format!("k8s-file:{}", b.join("ctr.log").display()))
            .arg("--exit-dir")
            .arg(&b)
            .arg("--socket-dir-path")
            .arg(&b)
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        if !s.success() {
            bail!("conmon for {name}: {s}");
        }
        names.push(name);
        let pid: u32 = fs::read_to_string(&pidfile)?.trim().parse()?;
        mems.push(pid);
    }
    std::thread::sleep(Duration::from_secs(3));
    let mems = mems
        .into_iter()
        .map(Memory::of)
        .collect::<Result<Vec<_>>>()?;
    report("conmon (runc)", &mems, None);
    for name in &names {
        let runc = |args: &[&str]| {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(args)
                .stderr(Stdio::null())
                .status();
        };
        runc(&["kill", name, "KILL"]);
        std::thread::sleep(Duration::from_millis(50));
        runc(&["delete", "-f", name]);
    }
    Ok(())
}

fn containerd(n: usize, rootfs: &Path, work: &Path) -> Result<()> {
    if !Path::new("/usr/bin/containerd").exists() {
        println!("containerd: not installed (apt-get install containerd): skipped");
        return Ok(());
    }
    let dir = work.join("containerd");
    fs::create_dir_all(&dir)?;
    let sock = dir.join("containerd.sock");
    fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\naddress = \"{}\"\n[ttrpc]\naddress = \"{}\"\n",
            dir.join("root").display(),
            dir.join("state").display(),
            sock.display(),
            dir.join("ttrpc.sock").display(),
        ),
    )?;
    let mut daemon = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        let ctr = |args: &[&str]| -> Result<()> {
            let s = Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .args(["--namespace", "bench"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !s.success() {
                bail!("ctr {args:?}: {s}");
            }
            Ok(())
        };
        let t = Instant::now();
        while !sock.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("containerd did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 0..n {
            ctr(&[
                "run",
                "-d",
                "--rootfs",
                rootfs.to_str().context("utf8")?,
                &format!("fp-{i}"),
                "/bin/sleep",
                "3600",
            ])?;
        }
        std::thread::sleep(Duration::from_secs(3));
        let sock_text = sock.to_string_lossy();
        let shims = pids_of("containerd-shim", &sock_text)
            .into_iter()
            .chain(pids_of("containerd-shim-runc-v2", &sock_text))
            .map(Memory::of)
            .collect::<Result<Vec<_>>>()?;
        let daemon_mem = Memory::of(daemon.id())?;
        report(
            "containerd-shim-runc-v2",
            &shims,
            Some(("containerd (daemon)", daemon_mem)),
        );
        for i in 0..n {
            let id = format!("fp-{i}");
            let _ = ctr(&["task", "kill", "-s", "KILL", &id]);
        }
        std::thread::sleep(Duration::from_millis(500));
        for i in 0..n {
            let id = format!("fp-{i}");
            let _ = ctr(&["task", "rm", "-f", &id]);
            let _ = ctr(&["container", "rm", &id]);
        }
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    // Mounts containerd's snapshotter left, if any.
    let _ = Command::new("umount")
        .args(["-R", "-l"])
        .arg(dir.join("state"))
        .stderr(Stdio::null())
        .status();
    result
}

fn main() -> Result<()> {
    let [n] = flotilla_tests::bench_args([("CONTAINERS", 50)]);
    let n = n.max(1) as usize;
    flotilla_tests::require_root();
    let work = tempfile::tempdir()?;
    sizes(work.path())?;
    let bundle = flotilla(n, work.path())?;
    let c = conmon(n, &bundle, work.path());
    let d = containerd(n, &bundle.join("rootfs"), work.path());
    for entry in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        for i in 0..n {
            let _ = fs::remove_dir(entry.path().join(format!("flotilla-bench/fp-conmon-{i}")));
        }
        let _ = fs::remove_dir(entry.path().join("flotilla-bench"));
    }
    c?;
    d
}
