//! Power cuts for real (RELIABILITY.md, "Power cuts"): `power-cuts --cuts 100 --seed N`
//! boots a guest with a control plane and a node agent on one virtual disk, loads it with
//! writes, kills it at random moments and checks every boot against every acknowledged write
//! (see `flotilla_tests::power`). Build the workspace's binaries first (`cargo build
//! --workspace --bins`): the guest runs them, and this binary's guest modes, from `target/`.
//!
//! ```text
//! power-cuts [--cuts N] [--seed N] [--chains K] [--keep DIR]
//! power-cuts guest-check --out DIR --limit SECS --pids PID,PID   (in the guest)
//! power-cuts guest-load --seed N --log FILE                      (in the guest)
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_tests::power;

const USAGE: &str = "\
usage: power-cuts [--cuts 100] [--seed N] [--chains 1] [--keep DIR]

Boots a guest under QEMU with a control plane and a node agent on one virtual disk, loads it
with writes, cuts its power at random moments and checks every boot against every
acknowledged write: none lost, no store unreadable, no task doubled. Root; run `cargo build
--workspace --bins` first; the binaries must not lie under /tmp or /run, which the guest
mounts its own (RELIABILITY.md, \"Power cuts\").

  --cuts N      power cuts in all, shared among the chains (100)
  --seed N      the seed of every random choice (default: the clock)
  --chains K    guests cut at once, each with its own disk (1)
  --keep DIR    each boot's logs under DIR/chain-K/boot-N/, and the disk of a failed cycle

In the guest (the host's run starts these): guest-check --out DIR --limit SECS --pids PID,PID;
guest-load --seed N --log FILE.
";

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("guest-check" | "guest-load") => args.remove(0),
        _ => String::new(),
    };
    let mut flags = std::collections::HashMap::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let known = match mode.as_str() {
            "guest-check" => &["out", "limit", "pids"][..],
            "guest-load" => &["seed", "log"][..],
            _ => &["cuts", "seed", "chains", "keep"][..],
        };
        let Some(name) = flag.strip_prefix("--").filter(|n| known.contains(n)) else {
            flotilla_tests::soak_usage(&flag, USAGE);
        };
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        flags.insert(name.to_string(), value);
    }
    let get = |name: &str| flags.get(name).cloned();
    let need = |name: &str| get(name).ok_or_else(|| anyhow!("--{name} is needed"));
    match mode.as_str() {
        "guest-check" => {
            let pids = need("pids")?
                .split(',')
                .map(|p| p.parse().context("--pids"))
                .collect::<Result<Vec<u32>>>()?;
            let limit = Duration::from_secs(need("limit")?.parse().context("--limit")?);
            power::guest_check(&PathBuf::from(need("out")?), limit, &pids)
        }
        "guest-load" => power::guest_load(
            need("seed")?.parse().context("--seed")?,
            &PathBuf::from(need("log")?),
        ),
        _ => {
            let seed = match get("seed") {
                Some(s) => s.parse().context("--seed")?,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos() as u64,
            };
            let cuts: u32 = get("cuts")
                .map_or(Ok(100), |c| c.parse())
                .context("--cuts")?;
            let chains: u32 = get("chains")
                .map_or(Ok(1), |c| c.parse())
                .context("--chains")?;
            let harness = std::env::current_exe()?;
            power::hidden_in_guest(&harness)?;
            let bin_dir = harness
                .parent()
                .ok_or_else(|| anyhow!("no directory of {}", harness.display()))?
                .to_path_buf();
            println!(
                "power-cuts: {cuts} cuts in {chains} chain(s), seed {seed} (repeat with --seed \
                 {seed} --chains {chains})"
            );
            let started = std::time::Instant::now();
            // Each chain its own guest, disk and ledger, its seed the run's plus its number.
            let runs: Vec<_> = (0..chains.max(1))
                .map(|i| {
                    let options = power::Options {
                        cuts: cuts / chains.max(1) + u32::from(i < cuts % chains.max(1)),
                        seed: seed.wrapping_add(u64::from(i)),
                        harness: harness.clone(),
                        bin_dir: bin_dir.clone(),
                        keep: get("keep").map(|k| PathBuf::from(k).join(format!("chain-{i}"))),
                        label: if chains > 1 {
                            format!("chain {i}: ")
                        } else {
                            String::new()
                        },
                    };
                    std::thread::spawn(move || power::run(&options))
                })
                .collect();
            let mut total = power::Report::default();
            let mut failed = Vec::new();
            for (i, run) in runs.into_iter().enumerate() {
                match run.join() {
                    Ok(Ok(r)) => total.add(&r),
                    Ok(Err(e)) => failed.push(format!("chain {i}: {e:#}")),
                    Err(_) => failed.push(format!("chain {i} panicked")),
                }
            }
            if !failed.is_empty() {
                bail!("seed {seed}:\n{}", failed.join("\n"));
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "power-cuts: seed {seed}, {chains} chain(s): {} cuts ({} in the load, {} in \
                 recovery), {} boots checked, {} acknowledged writes ({} tasks) checked at \
                 every later boot: 0 lost, 0 unreadable stores, 0 doubled tasks; slowest \
                 convergence {:.1} s; {:.0} s in all, {:.1} s per cut",
                total.cuts,
                total.cuts_in_load,
                total.cuts_in_recovery,
                total.checks,
                total.acknowledged,
                total.tasks,
                total.slowest_convergence,
                seconds,
                seconds / f64::from(total.cuts.max(1)),
            );
            Ok(())
        }
    }
}
