//! Benchmark: placements per second of the scheduler on 1,000 and 10,000 simulated nodes (a
//! fake cluster: the scheduler is a pure function, no real node is involved), spreading over
//! sites then bin-packing memory, against the naive baseline that scans every node for every
//! task, in the same run. `cargo build --release --workspace && target/release/bench-place`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use flotilla_scheduler::{
    place, place_naive, BinpackField, Constraint, NodeState, NodeView, Request, Resources,
    Snapshot, Strategy,
};

fn snapshot(nodes: usize) -> Snapshot {
    Snapshot {
        nodes: (0..nodes)
            .map(|i| NodeView {
                id: format!("n-{i:06}"),
                attributes: BTreeMap::from([
                    ("site".to_string(), format!("store-{}", i % 50)),
                    (
                        "arch".to_string(),
                        if i % 3 == 0 { "arm64" } else { "amd64" }.to_string(),
                    ),
                ]),
                capacity: Some(Resources {
                    cpu_units: 4096,
                    memory_mib: 8192,
                }),
                used: Resources {
                    cpu_units: (i as u64 * 37) % 2048,
                    memory_mib: (i as u64 * 101) % 4096,
                },
                ports: BTreeSet::new(),
                groups: BTreeMap::new(),
                state: NodeState::Ready,
            })
            .collect(),
    }
}

fn request(count: usize) -> Request {
    Request {
        group: "service:pos".into(),
        count,
        need: Resources {
            cpu_units: 128,
            memory_mib: 256,
        },
        ports: Vec::new(),
        constraints: vec![
            Constraint::member_of("attribute:arch in [amd64, arm64]").expect("expression")
        ],
        strategy: vec![
            Strategy::Spread("site".into()),
            Strategy::Binpack(BinpackField::Memory),
        ],
        seed: 1,
    }
}

fn rate(f: impl Fn() -> usize) -> f64 {
    let start = Instant::now();
    let mut placed = 0;
    while start.elapsed().as_secs_f64() < 1.0 {
        placed += f();
    }
    placed as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    flotilla_tests::bench_args([]);
    println!("placements per second (spread over 50 sites, then binpack memory; one core)");
    for nodes in [1_000, 10_000] {
        let snap = snapshot(nodes);
        let req = request(nodes);
        assert_eq!(
            place(&snap, &req).expect("fits"),
            place_naive(&snap, &req).expect("fits"),
            "the two placements differ"
        );
        let fast = rate(|| place(&snap, &req).map(|p| p.len()).unwrap_or(0));
        let small = request(100);
        let naive = rate(|| place_naive(&snap, &small).map(|p| p.len()).unwrap_or(0));
        let one = rate(|| place(&snap, &request(1)).map(|p| p.len()).unwrap_or(0));
        println!(
            "  {nodes:>6} nodes: {fast:>12.0} /s in batches of {nodes}  naive scan {naive:>10.0} /s  = {:>6.0}x   single-task requests {one:>8.0} /s",
            fast / naive
        );
    }
}
