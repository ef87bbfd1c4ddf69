//! `soak-links`: the bad-links scenario in full (issue 21; RELIABILITY.md, *Lossy and slow
//! links*). A fleet of real agents, each host in its own network namespace, whose links lose a
//! share of their packets each way (nftables `numgen random` on both sides of each host's
//! link) and sit behind a relay that delays every datagram and drops a share of them too (the
//! control plane's own link), churned for minutes at random — a service scaled, containers
//! killed, tasks stopped, a host cut off and brought back. After each action the fleet must
//! converge (the nodes run exactly the tasks the control plane holds as running, as many as
//! the service wants), and at every look no task may run on two nodes. Prints each action and,
//! at the end, the time to converge per kind of action (count, median, 90th percentile,
//! maximum). Root; builds nothing (run `cargo build --workspace --bins` first).
//!
//! ```text
//! soak-links [--minutes 5] [--hosts 3] [--loss 30] [--delay-ms 500] [--cp-loss 5] [--seed N]
//!            [--keep DIR]   # the control plane's and agents' logs written there at the end
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_tests::churn::{converge, observe, SERVE};
use flotilla_tests::cluster::Fleet;
use flotilla_tests::power::Rng;
use flotilla_tests::relay::DelayRelay;

#[derive(Debug)]
struct Options {
    minutes: u64,
    hosts: usize,
    loss: u32,
    delay_ms: u64,
    cp_loss: u32,
    seed: u64,
    keep: Option<std::path::PathBuf>,
}

const USAGE: &str = "\
usage: soak-links [--minutes 5] [--hosts 3] [--loss 30] [--delay-ms 500] [--cp-loss 5]
                  [--seed N] [--keep DIR]

A fleet of real agents, each host in its own network namespace, churned for minutes over links
that lose packets, its control plane behind a relay that delays and drops datagrams; each
action must converge, and no task may run twice. Root; run `cargo build --workspace --bins`
first, and hold /work/systest.lock (RELIABILITY.md, \"Lossy and slow links\").

  --minutes M     how long the churn runs (5)
  --hosts N       agents, each in its own network namespace (3)
  --loss P        % of packets each host's link drops, each way (30; at most 90)
  --delay-ms MS   delay the relay adds to each datagram, each way (500)
  --cp-loss P     % of datagrams the relay drops (5; at most 90)
  --seed N        the seed of every random choice (default: the clock's seconds)
  --keep DIR      write the control plane's and agents' logs there at the end
";

fn options() -> Result<Options> {
    let mut o = Options {
        minutes: 5,
        hosts: 3,
        loss: 30,
        delay_ms: 500,
        cp_loss: 5,
        seed: flotilla_tests::clock_seed(),
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| flotilla_tests::flag_number(&mut args, name);
        match a.as_str() {
            "--minutes" => o.minutes = value("--minutes")?,
            "--hosts" => o.hosts = usize::try_from(value("--hosts")?)?,
            "--loss" => o.loss = u32::try_from(value("--loss")?)?,
            "--delay-ms" => o.delay_ms = value("--delay-ms")?,
            "--cp-loss" => o.cp_loss = u32::try_from(value("--cp-loss")?)?,
            "--seed" => o.seed = value("--seed")?,
            "--keep" => o.keep = Some(args.next().context("--keep needs a directory")?.into()),
            other => flotilla_tests::soak_usage(other, USAGE),
        }
    }
    if o.hosts == 0 || o.loss > 90 || o.cp_loss > 90 {
        bail!("--hosts at least 1; --loss and --cp-loss at most 90 (%)");
    }
    Ok(o)
}

/// The most tasks the service is scaled to.
const MAX_COUNT: u64 = 8;

fn main() -> Result<()> {
    let o = options()?;
    flotilla_tests::require_root();
    println!(
        "soak-links: {} hosts, {} % loss on each host's link, {} ms each way and {} % loss on \
         the control plane's, {} minutes, seed {}",
        o.hosts, o.loss, o.delay_ms, o.cp_loss, o.minutes, o.seed
    );
    let mut rng = Rng::new(o.seed);
    let fleet = Fleet::start(&[]);
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], fleet.cp.addr.port()));
    let relay = DelayRelay::start_lossy(
        std::net::SocketAddr::new(fleet.lan.gateway.into(), 0),
        upstream,
        Duration::from_millis(o.delay_ms),
        o.cp_loss,
        o.seed ^ 0x5eed,
    )
    .context("relay")?;
    // The fleet goes before the relay: its teardown needs the control plane.
    let (mut fleet, relay) = (fleet, relay);
    fleet.server = relay.addr.to_string();
    let joined = Instant::now();
    for _ in 0..o.hosts {
        fleet.add(&[]);
    }
    println!(
        "joined: {} hosts in {} ms",
        o.hosts,
        joined.elapsed().as_millis()
    );
    for h in &fleet.hosts {
        h.lose(o.loss);
    }
    fleet.register(SERVE);
    let mut count = 2;
    let asked = Instant::now();
    fleet.cp.create_service(&format!(
        r#"{{"serviceName": "web", "taskDefinition": "serve", "desiredCount": {count}}}"#
    ));
    converge(&fleet, count, "created", asked);

    let mut took: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(o.minutes * 60);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let (kind, what, started) = match rng.below(4) {
            0 => {
                count = 1 + rng.below(MAX_COUNT) as usize;
                let asked = Instant::now();
                fleet
                    .cp
                    .flotilla_ok(&["service", "scale", "web", &count.to_string()]);
                ("scale", format!("scaled to {count}"), asked)
            }
            1 => {
                let running: Vec<(usize, String)> = fleet
                    .nodes
                    .iter()
                    .enumerate()
                    .flat_map(|(i, node)| node.running().into_keys().map(move |k| (i, k)))
                    .collect();
                let Some((i, name)) = pick(&mut rng, &running) else {
                    continue;
                };
                let killed = Instant::now();
                fleet.nodes[i].ctr_ok(&["kill", "-s", "KILL", &name]);
                ("kill", format!("killed {name} on host {i}"), killed)
            }
            2 => {
                let (held, _) = observe(&fleet);
                let held: Vec<String> = held.into_iter().collect();
                let Some(task) = pick(&mut rng, &held) else {
                    continue;
                };
                let asked = Instant::now();
                fleet.cp.flotilla_ok(&["task", "stop", &task]);
                ("stop", format!("stopped task {task}"), asked)
            }
            _ => {
                let i = rng.below(o.hosts as u64) as usize;
                let secs = 5 + rng.below(21);
                fleet.hosts[i].cut();
                std::thread::sleep(Duration::from_secs(secs));
                fleet.hosts[i].restore();
                (
                    "cut",
                    format!("host {i} cut off for {secs} s"),
                    Instant::now(),
                )
            }
        };
        let t = converge(&fleet, count, &format!("action {n} ({what})"), started);
        println!("{n:>4} {what}: converged in {} ms", t.as_millis());
        took.entry(kind).or_default().push(t);
    }
    let mut actions = 0;
    println!("\n| action | count | median | 90th percentile | max |\n|---|---|---|---|---|");
    for (kind, mut ts) in took {
        ts.sort();
        actions += ts.len();
        let at = |q: f64| ts[((ts.len() - 1) as f64 * q).round() as usize].as_millis();
        println!(
            "| {kind} | {} | {} ms | {} ms | {} ms |",
            ts.len(),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
    if let Some(dir) = &o.keep {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        std::fs::write(dir.join("orchestratord.log"), fleet.cp.log())?;
        for (i, a) in fleet.agents.iter().enumerate() {
            std::fs::write(dir.join(format!("nodeagent-{i}.log")), a.log())?;
        }
    }
    for (i, a) in fleet.agents.iter().enumerate() {
        if a.log().contains("panicked") {
            bail!("agent {i} panicked:\n{}", a.log());
        }
    }
    if fleet.cp.log().contains("panicked") {
        bail!("the control plane panicked:\n{}", fleet.cp.log());
    }
    println!(
        "\n{actions} actions, each converged; no task ran on two nodes at any look; seed {}",
        o.seed
    );
    drop((fleet, relay));
    Ok(())
}

fn pick<T: Clone>(rng: &mut Rng, from: &[T]) -> Option<T> {
    if from.is_empty() {
        return None;
    }
    Some(from[rng.below(from.len() as u64) as usize].clone())
}
