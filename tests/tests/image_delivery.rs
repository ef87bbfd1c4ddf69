//! Images delivered to a fleet ahead of its deployments: `flotilla image prefetch` pulls an
//! image onto the nodes a constraint selects, each through its own registry mirror, and a
//! deployment on them later starts every task without fetching anything — the relay in front
//! of the registry sees no request —, while a task started on a node without it pulls it there,
//! through the same mirror.

use std::time::Duration;

use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::Fleet;
use flotilla_tests::image::{busybox_image, write_layout, Compression, Layer};
use flotilla_tests::registry::{Auth, Proxy, Registry};
use flotilla_tests::{host_arch, wait};

/// The registry name task definitions use; the nodes reach it only through their mirror.
const IMAGE: &str = "registry.shop.test/shop/app:1.0";

#[test]
fn a_prefetched_image_starts_a_deployment_without_a_pull() {
    // The nodes hold busybox's layers already (their test image); this one has a layer of its
    // own, 2 MiB that do not compress, so a pull is seen by what it fetches.
    let mut spec = busybox_image(host_arch());
    let mut own = Layer::new();
    let mut noise = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open("/dev/urandom").expect("urandom"),
            2 << 20,
        ),
        &mut noise,
    )
    .expect("noise");
    own.dir("app", 0o755).file("app/data", &noise, 0o644);
    spec.layers.push((own.finish(), Compression::Gzip));
    let layout = tempfile::tempdir().expect("layout");
    write_layout(layout.path(), "1.0", &spec).expect("image");
    let storage = tempfile::tempdir().expect("storage");
    let registry = Registry::start(storage.path(), Auth::None).expect("registry");
    registry
        .push(layout.path(), "1.0", "shop/app")
        .expect("push");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut relay = None;
    let fleet = Fleet::start_with(
        &[&["site=s1"], &["site=s1"], &["site=s1"], &["site=s2"]],
        |lan| {
            let proxy = rt
                .block_on(Proxy::start_on(lan.gateway, &registry.addr))
                .expect("relay");
            let mirror = format!("registry.shop.test=http://{}", proxy.addr);
            relay = Some(proxy);
            (Vec::new(), vec!["--registry-mirror".into(), mirror])
        },
    );
    let relay = relay.expect("relay");
    // What went through the relay: requests seen, bytes served.
    let seen = || {
        let log = relay.log.lock().expect("log");
        (log.requests.len(), log.bytes_down)
    };

    // The three nodes of site s1 pull it, each through its mirror; s2's does not.
    let out = fleet.cp.flotilla_ok(&[
        "image",
        "prefetch",
        IMAGE,
        "--constraint",
        "attribute:site == s1",
    ]);
    for id in &fleet.ids[..3] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{id}: pulled sha256:"))),
            "{out}"
        );
    }
    assert!(!out.contains(&fleet.ids[3]), "{out}");
    assert!(
        out.ends_with(&format!("3 of 3 nodes hold {IMAGE} (3 pulled, 0 had it)\n")),
        "{out}"
    );
    let fetched = seen();
    assert!(
        fetched.0 >= 3 && fetched.1 > 3 * (2 << 20),
        "the image's own layer went through the relay to each node: {fetched:?}"
    );

    // Again: every node has it, nothing is fetched.
    let again = fleet.cp.flotilla_ok(&[
        "image",
        "prefetch",
        IMAGE,
        "--constraint",
        "attribute:site == s1",
    ]);
    assert_eq!(again.matches("nothing fetched").count(), 3, "{again}");
    assert_eq!(seen(), fetched, "a present image was fetched again");

    // A node that is not in the cluster, a constraint that does not parse: refused, named.
    let bad = fleet
        .cp
        .flotilla(&["image", "prefetch", IMAGE, "--node", "n-nope"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("node n-nope is not in the cluster"), "{said}");

    // A DAEMON service on site s1 starts its three tasks from the nodes' stores.
    fleet.register(&format!(
        r#"{{"family": "app", "networkMode": "none",
  "placementConstraints": [{{"type": "memberOf", "expression": "attribute:site == s1"}}],
  "containerDefinitions": [{{"name": "main", "image": "{IMAGE}", "memory": 16,
    "stopTimeout": 2, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]}}]}}"#
    ));
    fleet.cp.create_service(
        r#"{"serviceName": "app", "taskDefinition": "app", "schedulingStrategy": "DAEMON"}"#,
    );
    wait("three tasks running", Duration::from_secs(60), || {
        let tasks = fleet.cp.tasks();
        let running: Vec<_> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .collect();
        assert!(
            !tasks.iter().any(|t| t.state == TaskState::Stopped),
            "{tasks:#?}"
        );
        running.len() == 3
    });
    assert_eq!(seen(), fetched, "the deployment fetched from the registry");
    for a in &fleet.agents[..3] {
        assert!(!a.log().contains("pulling"), "{}", a.log());
    }

    // Without a prefetch, s2's node pulls the image when a task of it starts there, through
    // its mirror too.
    fleet.register(&format!(
        r#"{{"family": "one", "networkMode": "none",
  "containerDefinitions": [{{"name": "main", "image": "{IMAGE}", "memory": 16,
    "stopTimeout": 2, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]}}]}}"#
    ));
    let placed = fleet.cp.run_task(&flotilla_api::ops::TaskRun {
        node: Some(fleet.ids[3].clone()),
        ..flotilla_api::ops::TaskRun::new("one")
    });
    let on_s2 = placed.into_iter().next().expect("one task").id;
    wait("the task on s2 running", Duration::from_secs(60), || {
        let t = fleet.cp.task(&on_s2);
        assert_ne!(t.state, TaskState::Stopped, "{t:#?}");
        t.state == TaskState::Running
    });
    // (The relay counts a chunk once it has passed it on: the last ones a moment later.)
    let through = std::time::Instant::now();
    let mut now = seen();
    while now.1 <= fetched.1 + (2 << 20) && through.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        now = seen();
    }
    assert!(
        now.1 > fetched.1 + (2 << 20),
        "the task's pull did not go through the mirror: {now:?}"
    );
    assert!(fleet.agents[3].log().contains("pulling"));

    fleet.cp.flotilla_ok(&["task", "stop", &on_s2]);
    fleet.cp.flotilla_ok(&["service", "rm", "app"]);
    fleet.finish();
}
