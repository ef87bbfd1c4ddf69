//! The scheduler harness: snapshots in, plans out.

use super::*;

/// A ready node with 4 cores and 4 GiB, and `attrs` as labels.
fn node(id: &str, attrs: &[(&str, &str)]) -> NodeView {
    NodeView {
        id: id.into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: Some(Resources {
            cpu_units: 4096,
            memory_mib: 4096,
        }),
        used: Resources::default(),
        ports: BTreeSet::new(),
        groups: BTreeMap::new(),
        state: NodeState::Ready,
    }
}

fn request(count: usize) -> Request {
    Request {
        group: "family:web".into(),
        count,
        need: Resources {
            cpu_units: 256,
            memory_mib: 512,
        },
        ports: Vec::new(),
        constraints: Vec::new(),
        strategy: Vec::new(),
        seed: 7,
    }
}

fn sites() -> Snapshot {
    Snapshot {
        nodes: vec![
            node("a1", &[("site", "a"), ("arch", "arm64")]),
            node("a2", &[("site", "a"), ("arch", "arm64")]),
            node("a3", &[("site", "a"), ("arch", "amd64")]),
            node("b1", &[("site", "b"), ("arch", "amd64")]),
            node("c1", &[("site", "c"), ("arch", "amd64")]),
        ],
    }
}

fn tally(plan: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for n in plan {
        *t.entry(n.clone()).or_default() += 1;
    }
    t
}

#[test]
fn filters_each_say_why_they_refused() {
    let mut snap = sites();
    snap.nodes[0].state = NodeState::Draining;
    snap.nodes[1].state = NodeState::Disconnected;
    snap.nodes[2].used.memory_mib = 3800; // 296 MiB left
    snap.nodes[3].ports.insert(HostPort {
        port: 8080,
        udp: false,
    });
    snap.nodes[4].used.cpu_units = 4000;
    let mut req = request(1);
    req.ports = vec![HostPort {
        port: 8080,
        udp: false,
    }];
    let e = place(&snap, &req).expect_err("nothing fits");
    assert_eq!(
        e.to_string(),
        "no node can take a task: 1 node had port 8080/tcp taken, 1 node lacked CPU, \
         1 node lacked memory, 1 node was disconnected, 1 node was draining"
    );
    // Only the node refused for the port is where its holder is.
    assert_eq!(e.port_taken_on, vec![snap.nodes[3].id.clone()]);
    // memberOf and distinctInstance
    let mut req = request(3);
    req.constraints = vec![
        Constraint::member_of("attribute:arch == amd64").expect("parse"),
        Constraint::DistinctInstance,
    ];
    let plan = place(&sites(), &req).expect("three amd64 nodes");
    assert_eq!(tally(&plan).len(), 3);
    assert!(plan
        .iter()
        .all(|n| ["a3", "b1", "c1"].contains(&n.as_str())));
    req.count = 4;
    let e = place(&sites(), &req).expect_err("only three");
    assert_eq!(
        e.to_string(),
        "room for 3 of 4 tasks: 3 nodes already had a task of the group (distinctInstance), \
         2 nodes failed memberOf(attribute:arch == amd64)"
    );
}

#[test]
fn a_refusal_on_one_node_names_it_and_its_reason() {
    let one = |why: &str| Unplaceable {
        placed: 0,
        requested: 1,
        reasons: [(why.to_string(), 1)].into(),
        port_taken_on: Vec::new(),
    };
    assert_eq!(
        one("lacked memory").on_node("n-1"),
        "node n-1 cannot take the task: it lacked memory"
    );
    assert_eq!(
        one("were draining").on_node("n-1"),
        "node n-1 cannot take the task: it was draining"
    );
    assert_eq!(
        one("were draining").to_string(),
        "no node can take a task: 1 node was draining"
    );
    let none = Unplaceable {
        placed: 0,
        requested: 1,
        reasons: BTreeMap::new(),
        port_taken_on: Vec::new(),
    };
    assert_eq!(
        none.on_node("n-9"),
        "node n-9 cannot take the task: it is not in the cluster"
    );
}

#[test]
fn spread_binpack_random_and_chains() {
    // spread over sites: one per site before a second anywhere
    let mut req = request(6);
    req.strategy = vec![Strategy::Spread("site".into())];
    let plan = place(&sites(), &req).expect("fits");
    let per_site = |plan: &[String]| {
        let mut t = BTreeMap::new();
        for n in plan {
            *t.entry(n[..1].to_string()).or_insert(0) += 1;
        }
        t
    };
    assert_eq!(
        per_site(&plan[..3]),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
    );
    assert_eq!(
        per_site(&plan),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 2)])
    );
    // existing tasks count: site a already has 2
    let mut snap = sites();
    snap.nodes[0].groups.insert("family:web".into(), 2);
    req.count = 2;
    let plan = place(&snap, &req).expect("fits");
    assert_eq!(
        per_site(&plan),
        BTreeMap::from([("b".into(), 1), ("c".into(), 1)])
    );

    // spread over instances
    req.strategy = vec![Strategy::Spread("instanceId".into())];
    req.count = 10;
    let t = tally(&place(&sites(), &req).expect("fits"));
    assert!(t.values().all(|n| *n == 2), "{t:?}");

    // binpack on memory: the fullest node first, until it is full
    let mut snap = sites();
    snap.nodes[3].used.memory_mib = 3000;
    req.strategy = vec![Strategy::Binpack(BinpackField::Memory)];
    req.count = 3;
    let plan = place(&snap, &req).expect("fits");
    assert_eq!(plan, ["b1", "b1", "a1"]);

    // random: seeded, so the same seed gives the same plan and another seed another one
    req.strategy = vec![Strategy::Random];
    req.count = 20;
    let one = place(&sites(), &req).expect("fits");
    assert_eq!(one, place(&sites(), &req).expect("fits"));
    assert!(tally(&one).len() >= 3, "{one:?}");
    req.seed = 8;
    assert_ne!(one, place(&sites(), &req).expect("fits"));

    // chain: spread over sites, then binpack within a site
    let mut snap = sites();
    snap.nodes[2].used.memory_mib = 2048;
    req.strategy = vec![
        Strategy::Spread("site".into()),
        Strategy::Binpack(BinpackField::Memory),
    ];
    req.count = 4;
    let plan = place(&snap, &req).expect("fits");
    assert_eq!(plan, ["a3", "b1", "c1", "a3"]);
    // chain: binpack first, spread breaks its ties
    req.strategy = vec![
        Strategy::Binpack(BinpackField::Memory),
        Strategy::Spread("site".into()),
    ];
    req.count = 2;
    let plan = place(&sites(), &req).expect("fits");
    assert_eq!(plan, ["a1", "a1"]);
}

#[test]
fn strategies_parse_as_ecs_writes_them() {
    assert_eq!(
        Strategy::parse("spread", Some("attribute:site")),
        Ok(Strategy::Spread("site".into()))
    );
    assert_eq!(
        Strategy::parse("spread", Some("instanceId")),
        Ok(Strategy::Spread("instanceId".into()))
    );
    assert_eq!(
        Strategy::parse("binpack", Some("memory")),
        Ok(Strategy::Binpack(BinpackField::Memory))
    );
    assert_eq!(Strategy::parse("random", None), Ok(Strategy::Random));
    assert!(Strategy::parse("binpack", Some("disk")).is_err());
    assert!(Strategy::parse("spread", Some("site")).is_err());
    assert!(Strategy::parse("spread", None).is_err());
    assert!(Strategy::parse("pack", None).is_err());
}

/// A deterministic generator for random snapshots.
struct Gen(u64);

impl Gen {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = mix(self.0);
        self.0 % n
    }
}

fn random_snapshot(g: &mut Gen, nodes: usize) -> Snapshot {
    let sites = ["a", "b", "c", "d"];
    let racks = ["r1", "r2", "r3"];
    Snapshot {
        nodes: (0..nodes)
            .map(|i| {
                let mut n = node(
                    &format!("n{i:05}"),
                    &[
                        ("site", sites[g.next(4) as usize]),
                        ("rack", racks[g.next(3) as usize]),
                    ],
                );
                if g.next(5) == 0 {
                    n.attributes.remove("rack");
                }
                n.used.memory_mib = g.next(4096);
                n.used.cpu_units = g.next(4096);
                n.groups.insert("family:web".into(), g.next(3));
                if g.next(10) == 0 {
                    n.state = NodeState::Draining;
                }
                if g.next(4) == 0 {
                    n.capacity = None;
                }
                n
            })
            .collect(),
    }
}

#[test]
fn the_fast_placement_equals_the_naive_scan_and_is_reproducible() {
    let chains: Vec<Vec<Strategy>> = vec![
        vec![],
        vec![Strategy::Spread("site".into())],
        vec![
            Strategy::Spread("site".into()),
            Strategy::Spread("rack".into()),
            Strategy::Binpack(BinpackField::Memory),
        ],
        vec![
            Strategy::Spread("site".into()),
            Strategy::Spread("instanceId".into()),
        ],
        vec![
            Strategy::Binpack(BinpackField::Cpu),
            Strategy::Spread("rack".into()),
        ],
        vec![Strategy::Random],
        vec![Strategy::Spread("rack".into()), Strategy::Random],
    ];
    let mut g = Gen(42);
    for round in 0..40 {
        let size = 1 + g.next(60) as usize;
        let snap = random_snapshot(&mut g, size);
        let mut req = request(1 + g.next(40) as usize);
        req.strategy = chains[round % chains.len()].clone();
        req.seed = round as u64;
        if round % 3 == 0 {
            req.constraints
                .push(Constraint::member_of("attribute:site in [a, b, c]").expect("parse"));
        }
        if round % 5 == 0 {
            req.constraints.push(Constraint::DistinctInstance);
        }
        let fast = place(&snap, &req);
        let naive = place_naive(&snap, &req);
        match (&fast, &naive) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "round {round}: {:?}", req.strategy),
            (Err(a), Err(b)) => assert_eq!(a.placed, b.placed, "round {round}"),
            _ => panic!("round {round}: {fast:?} vs {naive:?}"),
        }
        assert_eq!(fast, place(&snap, &req), "round {round}: not reproducible");
    }
}

#[test]
fn a_node_that_has_not_reported_its_resources_takes_nothing() {
    let mut snap = Snapshot {
        nodes: vec![node("a", &[]), node("b", &[])],
    };
    snap.nodes[0].capacity = None;
    assert_eq!(place(&snap, &request(1)).expect("b"), ["b"]);
    snap.nodes[1].capacity = None;
    let why = place(&snap, &request(1)).expect_err("nothing reported");
    assert_eq!(
        why.reasons,
        BTreeMap::from([("had not reported resources yet".to_string(), 2)])
    );
    assert!(refusal(&snap.nodes[0], &request(1)).is_some());
}
