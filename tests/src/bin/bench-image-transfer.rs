//! Benchmark: an image fetched by a node from the control plane's content store over its
//! session (`flotilla image push`, then the agent's pull: QUIC, the control plane reading its
//! blob files) against the same image pulled by the same agent from a plain registry
//! (Debian's docker-registry, plain HTTP, as the agent's registry mirror), both on loopback,
//! measured in the same run. Each run is `flotilla image prefetch REF --node ID` to its end —
//! fetch, verify, unpack —, with the image's own layers removed from the node before it. Runs
//! alternate, so a change in the machine's load meets both alike. Prints medians, MB/s and
//! the ratio. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-image-transfer [RUNS] [MIB]`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::image::{busybox_image, tar_dir, write_layout, Compression, Layer};
use flotilla_tests::node::Node;
use flotilla_tests::registry::{Auth, Registry};

/// Deterministic bytes that do not compress (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let [runs, mib] = flotilla_tests::bench_args([("RUNS", 5), ("MIB", 64)]);
    flotilla_tests::require_root();
    let runs = runs.max(1) as usize;
    let work = tempfile::tempdir()?;

    // busybox (the node holds its layers: its test image) and two layers of its own.
    let mut spec = busybox_image(flotilla_tests::host_arch());
    let half = (mib as usize) << 19;
    for i in 0..2u64 {
        let mut own = Layer::new();
        own.dir("data", 0o755)
            .file(&format!("data/{i}"), &noise(i + 1, half), 0o644);
        spec.layers.push((own.finish(), Compression::Gzip));
    }
    let layout = work.path().join("layout");
    let built = write_layout(&layout, "1", &spec)?;
    let own_bytes: u64 = built.layers[built.layers.len() - 2..]
        .iter()
        .map(|d| {
            std::fs::metadata(layout.join("blobs/sha256").join(&d[7..]))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let archive = work.path().join("app.tar");
    tar_dir(&layout, &archive)?;

    let storage = work.path().join("registry");
    std::fs::create_dir_all(&storage)?;
    let registry = Registry::start(&storage, Auth::None)?;
    registry.push(&layout, "1", "bench/app")?;
    let from_registry = format!("{}/bench/app:1", registry.addr);

    let cp = ControlPlane::start(&[]);
    let from_cp = "bench/pushed:1";
    cp.flotilla_ok(&[
        "image",
        "push",
        &archive.display().to_string(),
        "--name",
        from_cp,
    ]);
    let node = Node::new();
    let mirror = format!("{}=http://{}", registry.addr, registry.addr);
    let agent = Agent::in_session_with(&cp, &node, &["--registry-mirror", &mirror]);
    let id = flotilla_certs::credential::Credential::load(&agent.identity())?.name;

    let prefetch = |image: &str| -> Result<Duration> {
        // The image's own layers go (under both its names), busybox's stay (the test image
        // has them).
        for name in [from_cp, from_registry.as_str()] {
            let _ = node.ctr(&["image", "rm", name]);
        }
        let pruned = node.ctr(&["image", "prune"]);
        if !pruned.status.success() {
            bail!(
                "ctr image prune: {}",
                String::from_utf8_lossy(&pruned.stderr)
            );
        }
        let t = Instant::now();
        let out = cp.flotilla(&["image", "prefetch", image, "--node", &id]);
        let took = t.elapsed();
        let said = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !said.contains(": pulled sha256:") {
            bail!(
                "prefetch of {image}: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    };
    let (mut cp_times, mut registry_times) = (Vec::new(), Vec::new());
    // One of each first, not counted: caches warm alike.
    for i in 0..=runs {
        let c = prefetch(from_cp).context("from the control plane")?;
        let r = prefetch(&from_registry).context("from the registry")?;
        if i > 0 {
            cp_times.push(c);
            registry_times.push(r);
        }
    }
    if !agent.log().contains("fetched from the control plane") {
        bail!(
            "the agent did not fetch from the control plane:\n{}",
            agent.log()
        );
    }
    let (c, r) = (median(cp_times.clone()), median(registry_times.clone()));
    let mbps = |d: Duration| own_bytes as f64 / d.as_secs_f64() / 1e6;
    let spread = |v: &[Duration]| {
        let ms: Vec<u128> = v.iter().map(Duration::as_millis).collect();
        format!(
            "{}–{} ms",
            ms.iter().min().unwrap_or(&0),
            ms.iter().max().unwrap_or(&0)
        )
    };
    println!(
        "image of 2 own layers, {:.1} MB compressed (incompressible), {runs} alternating runs of each, fetch + verify + unpack",
        own_bytes as f64 / 1e6
    );
    println!(
        "  from the control plane over the session: median {} ms ({:.0} MB/s), {}",
        c.as_millis(),
        mbps(c),
        spread(&cp_times)
    );
    println!(
        "  from docker-registry over HTTP (mirror): median {} ms ({:.0} MB/s), {}",
        r.as_millis(),
        mbps(r),
        spread(&registry_times)
    );
    println!(
        "  ratio (median): {:.2}x the registry pull's time",
        c.as_secs_f64() / r.as_secs_f64()
    );
    drop(agent);
    Ok(())
}
