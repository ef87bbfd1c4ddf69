//! Benchmark: what one Prometheus scrape of a node agent costs, with N running containers
//! (default 50). A real control plane and `nodeagent run --metrics-listen` on loopback; N idle
//! tasks (`sleep`, network `bridge`: each its own network namespace, so every scrape reads N
//! cgroups and N `/proc/PID/net/dev`) started through the control plane. Each scrape is a
//! whole `GET /metrics` (connect, request with Prometheus' `Accept` header and no compression,
//! the answer read to its end), timed; also the exposition's bytes and series, and the CPU time
//! the serving process used per scrape (user + system, all threads, over the scrapes, less what
//! it used over an equal time without scrapes). The agent is scraped with no task first, then
//! with the N containers. *Anchor:* Debian's `prometheus-node-exporter` (its default
//! collectors) on the same host, scraped alternately with the agent in the same run — the
//! exporter a node usually runs beside it; skipped with a note when not installed
//! (`apt-get install prometheus-node-exporter`). Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-scrape [CONTAINERS] [SCRAPES]`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::{free_port, Agent, ControlPlane};
use flotilla_tests::node::Node;

const DEF: &str = r#"{"family":"idle","networkMode":"bridge","containerDefinitions":[
  {"name":"main","image":"test/busybox:latest","memory":16,"stopTimeout":2,"command":["sleep","3600"]}]}"#;

/// What Prometheus 2.42 sends (it asks for gzip too; neither side compresses here).
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// One scrape: its wall time, the body's bytes and series, the content type.
struct Scrape {
    took: Duration,
    bytes: usize,
    series: usize,
    kind: String,
}

fn scrape(addr: SocketAddr) -> Result<Scrape> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: {ACCEPT}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        bail!("GET http://{addr}/metrics: {head}");
    }
    let kind = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok(Scrape {
        took,
        bytes: body.len(),
        series: body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count(),
        kind,
    })
}

/// A serving process to scrape: where, and its pid (for its CPU time).
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

/// The scrapes of one target in a round, and the CPU time it used for them.
#[derive(Default)]
struct Measured {
    scrapes: Vec<Scrape>,
    cpu: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The p-th quantile (0–1) of sorted `v`, the nearest rank.
fn quantile(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

impl Measured {
    fn sorted_ms(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.scrapes.iter().map(|s| ms(s.took)).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median_ms(&self) -> f64 {
        quantile(&self.sorted_ms(), 0.5)
    }

    /// CPU per scrape in ms, less `idle` (what the process used in an equal time unscraped).
    fn cpu_ms(&self, idle: Duration) -> f64 {
        ms(self.cpu.saturating_sub(idle)) / self.scrapes.len().max(1) as f64
    }

    fn report(&self, name: &str, idle: Duration) {
        let v = self.sorted_ms();
        let last = self.scrapes.last();
        println!(
            "  {name:<34} {:>7.2} ms median (min {:.2}, p90 {:.2}, max {:.2}) over {} scrapes; CPU {:.2} ms/scrape; {} bytes, {} series ({})",
            quantile(&v, 0.5),
            v[0],
            quantile(&v, 0.9),
            v[v.len() - 1],
            v.len(),
            self.cpu_ms(idle),
            last.map_or(0, |s| s.bytes),
            last.map_or(0, |s| s.series),
            last.map_or("", |s| s.kind.as_str()),
        );
    }
}

/// `n` scrapes of each target, one after the other in turn, 100 ms apart; then the CPU each
/// used in as long a time without scrapes.
fn round(targets: &[&Target], n: usize) -> Result<(Vec<Measured>, Vec<Duration>)> {
    for t in targets {
        for _ in 0..2 {
            scrape(t.addr)?; // warm-up
        }
    }
    let mut out: Vec<Measured> = targets.iter().map(|_| Measured::default()).collect();
    let cpu0: Vec<Duration> = targets
        .iter()
        .map(|t| flotilla_tests::cpu_time(t.pid))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    for _ in 0..n {
        for (t, m) in targets.iter().zip(&mut out) {
            m.scrapes.push(scrape(t.addr)?);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let window = start.elapsed();
    for ((t, m), c0) in targets.iter().zip(&mut out).zip(&cpu0) {
        m.cpu = flotilla_tests::cpu_time(t.pid)?.saturating_sub(*c0);
    }
    let before: Vec<Duration> = targets
        .iter()
        .map(|t| flotilla_tests::cpu_time(t.pid))
        .collect::<Result<_>>()?;
    std::thread::sleep(window);
    let idle = targets
        .iter()
        .zip(&before)
        .map(|(t, b)| Ok(flotilla_tests::cpu_time(t.pid)?.saturating_sub(*b)))
        .collect::<Result<_>>()?;
    Ok((out, idle))
}

/// Debian's node exporter on a free loopback port, with its default collectors.
fn node_exporter(dir: &Path) -> Result<Option<(Child, SocketAddr)>> {
    if !Path::new(NODE_EXPORTER).exists() {
        println!(
            "anchor: {NODE_EXPORTER} not installed (apt-get install prometheus-node-exporter): skipped"
        );
        return Ok(None);
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(NODE_EXPORTER)
        .arg(format!("--web.listen-address={addr}"))
        // Its textfile collector's default directory may hold the host's files; none here.
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(NODE_EXPORTER)?;
    let t = Instant::now();
    while scrape(addr).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{NODE_EXPORTER} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Some((child, addr)))
}

fn run(n: usize, scrapes: usize, work: &Path) -> Result<()> {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent =
        Agent::for_node(&node).with_run_args(&["--metrics-listen", &metrics.to_string()]);
    let o = agent.join(&cp.server(), &cp.token(&[]), &[]);
    if !o.status.success() {
        bail!("join: {}", String::from_utf8_lossy(&o.stderr));
    }
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    let t = Instant::now();
    while !cp.nodes().iter().any(|n| n.resources.is_some()) {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the node never reported its resources");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cp.register(DEF);
    let agent_target = Target {
        name: "nodeagent",
        addr: metrics,
        pid: agent.pid().context("agent pid")?,
    };
    let exporter = node_exporter(work)?;
    let exporter_target = exporter.as_ref().map(|(c, addr)| Target {
        name: "prometheus-node-exporter",
        addr: *addr,
        pid: c.id(),
    });
    let result = (|| -> Result<()> {
        let (idle, idle_cpu) = round(&[&agent_target], scrapes)?;
        println!("with no task:");
        idle[0].report("nodeagent", idle_cpu[0]);

        let ids = cp.run_all_running("idle", n, Duration::from_secs(180))?;
        std::thread::sleep(Duration::from_secs(3));
        let mut targets = vec![&agent_target];
        targets.extend(exporter_target.as_ref());
        let (busy, busy_cpu) = round(&targets, scrapes)?;
        println!("with {n} running containers:");
        for ((t, m), c) in targets.iter().zip(&busy).zip(&busy_cpu) {
            m.report(t.name, *c);
        }
        let (a, i) = (&busy[0], &idle[0]);
        println!(
            "  each container adds {:.3} ms of scrape time, {:.3} ms of CPU, {} bytes",
            (a.median_ms() - i.median_ms()) / n as f64,
            (a.cpu_ms(busy_cpu[0]) - i.cpu_ms(idle_cpu[0])) / n as f64,
            (a.scrapes.last().map_or(0, |s| s.bytes) as f64
                - i.scrapes.last().map_or(0, |s| s.bytes) as f64)
                / n as f64
        );
        if let Some(e) = busy.get(1) {
            println!(
                "ratio: nodeagent with {n} containers / prometheus-node-exporter: {:.2}x the scrape time (median), {:.2}x the CPU per scrape, {:.2}x the bytes",
                a.median_ms() / e.median_ms(),
                a.cpu_ms(busy_cpu[0]) / e.cpu_ms(busy_cpu[1]).max(1e-9),
                a.scrapes.last().map_or(0, |s| s.bytes) as f64
                    / e.scrapes.last().map_or(1, |s| s.bytes).max(1) as f64
            );
        }
        for id in &ids {
            cp.flotilla(&["task", "stop", id]);
        }
        let t = Instant::now();
        while cp.tasks().iter().any(|t| t.state != TaskState::Stopped)
            && t.elapsed() < Duration::from_secs(90)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    if let Some((mut child, _)) = exporter {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(agent);
    drop(cp);
    node.remove_all();
    result
}

fn main() -> Result<()> {
    let [n, scrapes] = flotilla_tests::bench_args([("CONTAINERS", 50), ("SCRAPES", 21)]);
    let (n, scrapes) = (n.max(1) as usize, scrapes.max(1) as usize);
    flotilla_tests::require_root();
    let work = tempfile::tempdir()?;
    run(n, scrapes, work.path())
}
