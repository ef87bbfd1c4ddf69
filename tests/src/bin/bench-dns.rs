//! Benchmark: DNS queries per second a node's agent answers for a task. A real cluster (one
//! host, its agent, a service registered in a namespace, a bridge task); closed-loop clients
//! inside the task's network namespace ask `A web.bench.flotilla.internal` of the task's
//! resolver (127.0.0.11:53, served by the agent) for a few seconds. *Anchor:* dnsmasq (Debian's
//! `dnsmasq-base`) answering the same name from its configuration, in the same namespace, with
//! the same clients, in the same run. dnsmasq answers from one socket, one query after the
//! other, the agent from two loops on it; the clients run on the same cores, so answers/s is a property of the whole machine:
//! the CPU time each server used per answer (its process's user + system time over the run,
//! all threads) is printed next to it. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-dns [SECONDS] [CLIENTS]`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_tests::cluster::Fleet;

const NAME: &str = "web.bench.flotilla.internal";

const WEB: &str = r#"{"family": "web", "networkMode": "bridge", "containerDefinitions": [{
  "name": "web", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
  "portMappings": [{"containerPort": 80}],
  "command": ["sh", "-c", "mkdir -p /www && exec httpd -f -p 80 -h /www"]}]}"#;

const CLIENT: &str = r#"{"family": "client", "networkMode": "bridge", "containerDefinitions": [{
  "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
  "command": ["sleep", "3600"]}]}"#;

/// A query for `A name` with id `id`, as a client sends it.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63));
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]); // A, IN
    q
}

/// Closed-loop clients in the namespace at `netns` asking `server` for `secs`; answers/s.
fn blast(netns: &Path, server: SocketAddr, secs: u64, clients: usize) -> Result<f64> {
    flotilla_tests::netns::closed_loop(netns, secs, clients, move |c| {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 512];
        let mut id = u16::try_from(c).unwrap_or(0).wrapping_mul(7919);
        Ok(move || -> Result<()> {
            id = id.wrapping_add(1);
            sock.send(&query(id, NAME))?;
            let n = sock.recv(&mut buf).context("no answer")?;
            // Same id, NOERROR, one answer at least.
            if n < 12 || buf[..2] != id.to_be_bytes() || buf[3] & 0x0f != 0 || buf[7] == 0 {
                bail!("bad answer from {server}: {:?}", &buf[..n.min(16)]);
            }
            Ok(())
        })
    })
}

fn main() -> Result<()> {
    let [secs, clients] = flotilla_tests::bench_args([("SECONDS", 5), ("CLIENTS", 4)]);
    let (secs, clients) = (secs.max(1), clients.max(1) as usize);
    flotilla_tests::require_root();
    let fleet = Fleet::start(&[&[]]);
    let cp = &fleet.cp;
    fleet.register(WEB);
    fleet.register(CLIENT);
    let api = cp.api();
    api.create_service(
        br#"{"serviceName": "web", "taskDefinition": "web", "desiredCount": 1, "discovery": {"namespace": "bench"}}"#,
    )?;
    let placed = api.run_task(&flotilla_api::ops::TaskRun::new("client"))?;
    let client = placed.first().context("a placed task")?.id.clone();
    let t = Instant::now();
    loop {
        let e = api.service_endpoints("web")?;
        let task = api.task(&client)?;
        if !e.endpoints.is_empty() && task.state == flotilla_api::tasks::TaskState::Running {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the service or the client never came up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give the registry push a moment to reach the node.
    std::thread::sleep(Duration::from_secs(2));
    let netns: PathBuf = fleet.nodes[0].data.join("netns").join(&client);
    let mut dnsmasq = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "--",
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.12",
            "--port=5353",
            "--user=root",
            "--pid-file=",
            &format!("--address=/{NAME}/10.1.2.3"),
        ])
        .spawn()
        .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(500));
    let ours: SocketAddr = "127.0.0.11:53".parse()?;
    let anchor: SocketAddr = "127.0.0.12:5353".parse()?;
    let agent_pid = fleet.agents[0].pid().context("agent pid")?;
    let dnsmasq_pid = dnsmasq.id();
    // Answers/s and the server's CPU microseconds per answer.
    let measure = |server: SocketAddr, pid: u32| -> Result<(f64, f64)> {
        let cpu = flotilla_tests::cpu_time(pid)?;
        let rate = blast(&netns, server, secs, clients)?;
        let used = flotilla_tests::cpu_time(pid)?.saturating_sub(cpu);
        Ok((
            rate,
            used.as_secs_f64() * 1e6 / (rate * secs as f64).max(1.0),
        ))
    };
    println!("bench-dns: {clients} closed-loop clients, {secs} s per run, A {NAME}");
    let mut ratios = Vec::new();
    let mut costs = Vec::new();
    for round in 1..=3 {
        let a = measure(anchor, dnsmasq_pid);
        let f = measure(ours, agent_pid);
        let ((a, a_us), (f, f_us)) = match (a, f) {
            (Ok(a), Ok(f)) => (a, f),
            (a, f) => {
                let _ = dnsmasq.kill();
                let _ = dnsmasq.wait();
                bail!("round {round}: dnsmasq {:?}, agent {:?}", a.err(), f.err());
            }
        };
        println!(
            "round {round}: agent {f:>9.0} answers/s ({f_us:.1} us CPU each)   dnsmasq {a:>9.0} answers/s ({a_us:.1} us CPU each)   ratio {:.2}",
            f / a
        );
        ratios.push(f / a);
        costs.push(f_us / a_us);
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    ratios.sort_by(f64::total_cmp);
    costs.sort_by(f64::total_cmp);
    println!(
        "ratio agent/dnsmasq answers/s: {:.2}-{:.2}, median {:.2}",
        ratios[0], ratios[2], ratios[1]
    );
    println!(
        "ratio agent/dnsmasq CPU per answer: {:.2}-{:.2}, median {:.2}",
        costs[0], costs[2], costs[1]
    );
    cp.flotilla_ok(&["task", "stop", &client]);
    cp.flotilla_ok(&["service", "rm", "web"]);
    fleet.finish();
    Ok(())
}
