//! Benchmark: TCP connections per second through a bridge task's host-port mapping against the
//! same connections made directly to the task's address. A real cluster (one host, its agent,
//! a bridge task running `probe serve 80` — one byte per connection — published on host port
//! 8080); closed-loop clients in the host's namespace connect, read the byte and reset the
//! connection (no TIME_WAIT), for a few seconds each way, alternating. *Anchor:* the direct
//! connection: the ratio is what the nftables DNAT costs. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-portmap [SECONDS] [CLIENTS]`.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_tests::cluster::Fleet;

const SERVER: &str = r#"{"family": "server", "networkMode": "bridge", "containerDefinitions": [{
  "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
  "portMappings": [{"containerPort": 80, "hostPort": 8080}],
  "command": ["/probe", "serve", "80"]}]}"#;

/// Closed-loop clients in the namespace at `netns` connecting to `to` for `secs`; connections/s.
fn blast(netns: &Path, to: SocketAddr, secs: u64, clients: usize) -> Result<f64> {
    flotilla_tests::netns::closed_loop(netns, secs, clients, move |_| {
        let mut byte = [0u8; 1];
        Ok(move || -> Result<()> {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connecting to {to}"))?;
            c.read_exact(&mut byte)?;
            // Reset, not close: neither side keeps the connection in TIME_WAIT.
            rustix::net::sockopt::set_socket_linger(&c, Some(Duration::ZERO))?;
            Ok(())
        })
    })
}

fn main() -> Result<()> {
    let [secs, clients] = flotilla_tests::bench_args([("SECONDS", 3), ("CLIENTS", 4)]);
    let (secs, clients) = (secs.max(1), clients.max(1) as usize);
    flotilla_tests::require_root();
    let fleet = Fleet::start(&[&[]]);
    let cp = &fleet.cp;
    fleet.register(SERVER);
    let placed = cp
        .api()
        .run_task(&flotilla_api::ops::TaskRun::new("server"))?;
    let id = placed.first().context("a placed task")?.id.clone();
    let t = Instant::now();
    let address = loop {
        let task = cp.api().task(&id)?;
        let address = task.network.as_ref().and_then(|n| n.address);
        match address {
            Some(a) if task.state == flotilla_api::tasks::TaskState::Running => break a,
            _ => {}
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the server task never ran: {task:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let host = &fleet.hosts[0];
    let netns = PathBuf::from(format!("/run/netns/{}", host.netns));
    let direct = SocketAddr::from((address, 80));
    let mapped: SocketAddr = format!("{}:8080", host.addr).parse()?;
    // Warm up both paths (ARP, the server's threads).
    blast(&netns, direct, 1, clients)?;
    blast(&netns, mapped, 1, clients)?;
    println!(
        "bench-portmap: {clients} closed-loop clients, {secs} s per run, from the node to its task"
    );
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let d = blast(&netns, direct, secs, clients)?;
        let m = blast(&netns, mapped, secs, clients)?;
        println!(
            "round {round}: through host port {m:>8.0} conn/s   direct {d:>8.0} conn/s   ratio {:.2}",
            m / d
        );
        ratios.push(m / d);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio mapped/direct: {:.2}", ratios[1]);
    cp.flotilla_ok(&["task", "stop", &id]);
    fleet.finish();
    Ok(())
}
