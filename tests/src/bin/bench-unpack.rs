//! Benchmark: unpack throughput of a ~100 MB multi-layer image, `nodeagent ctr image import`
//! (verify + safe unpack into the store) against `umoci unpack` of the same OCI layout, measured
//! in the same run. Prints medians and the ratio. Run as root with release binaries:
//! `cargo build --release --workspace && target/release/bench-unpack`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use flotilla_tests::image::{write_layout, Compression, ImageSpec, Layer};

const LAYERS: usize = 4;
const FILES_PER_LAYER: usize = 1200;
const RUNS: usize = 5;

/// Deterministic content: half incompressible, half text-like, as real images are.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 4096) % 2 == 0 {
                x as u8
            } else {
                b"flotilla edge orchestrator layer text "[i % 38]
            }
        })
        .collect()
}

fn image() -> ImageSpec {
    let mut layers = Vec::new();
    for l in 0..LAYERS {
        let mut layer = Layer::new();
        for d in 0..12 {
            layer.dir(&format!("l{l}/d{d}"), 0o755);
        }
        for f in 0..FILES_PER_LAYER {
            let len = 1024 + (f * 7919) % 40_000;
            layer.file(
                &format!("l{l}/d{}/f{f}", f % 12),
                &content((l * 100_000 + f) as u64, len),
                0o644,
            );
            if f % 50 == 0 {
                layer.symlink(&format!("l{l}/d{}/s{f}", f % 12), &format!("f{f}"));
            }
        }
        layers.push((layer.finish(), Compression::Gzip));
    }
    ImageSpec {
        layers,
        arch: flotilla_tests::host_arch().into(),
        cmd: vec![],
    }
}

fn time(mut cmd: Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd.output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    flotilla_tests::bench_args([]);
    flotilla_tests::require_root();
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout)?;
    let spec = image();
    let tar_bytes: usize = spec.layers.iter().map(|(t, _)| t.len()).sum();
    write_layout(&layout, "bench", &spec)?;
    let blob_bytes: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .map(|e| {
            e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .unwrap_or(0)
        })
        .sum();
    println!(
        "image: {LAYERS} gzip layers, {} files, {:.1} MB uncompressed, {:.1} MB compressed",
        LAYERS * FILES_PER_LAYER,
        tar_bytes as f64 / 1e6,
        blob_bytes as f64 / 1e6
    );
    let nodeagent = flotilla_tests::bin("nodeagent");
    let (mut ours, mut umoci) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let store = work.path().join(format!("store{run}"));
        let mut c = Command::new(&nodeagent);
        c.arg("--data-dir")
            .arg(&store)
            .args(["ctr", "image", "import"])
            .arg(&layout)
            .args(["--name", "bench/image:1"]);
        ours.push(time(c)?);
        std::fs::remove_dir_all(&store)?;

        let bundle = work.path().join(format!("bundle{run}"));
        let mut c = Command::new("umoci");
        c.args(["unpack", "--image"])
            .arg(format!("{}:bench", layout.display()))
            .arg(&bundle);
        umoci.push(time(c)?);
        std::fs::remove_dir_all(&bundle)?;
        // Start each run with no dirty pages from the last one.
        let _ = Command::new("sync").status();
    }
    let (o, u) = (median(ours), median(umoci));
    let mbps = |d: Duration| tar_bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "nodeagent ctr image import: median {:.0} ms ({:.0} MB/s)",
        o.as_secs_f64() * 1e3,
        mbps(o)
    );
    println!(
        "umoci unpack:               median {:.0} ms ({:.0} MB/s)",
        u.as_secs_f64() * 1e3,
        mbps(u)
    );
    println!(
        "ratio (nodeagent time / umoci time): {:.2}",
        o.as_secs_f64() / u.as_secs_f64()
    );
    Ok(())
}
