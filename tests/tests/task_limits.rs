//! Task-level `cpu` and `memory` with real containers: a cgroup around the task's containers
//! that limits them together (ECS: "the hard limit of CPU units / memory to present for the
//! task"), container-level limits nested inside it, and the cgroup gone with the task. The
//! same tests run in a cgroup v2 guest (`cgroup_v2.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_api::ops::{NodeInfo, TaskInfo};
use flotilla_api::tasks::TaskState;
use flotilla_runtime::container::cgroup::{CgroupHierarchy, CgroupUsage};
use flotilla_runtime::container::{ContainerInfo, Status};
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::wait;

/// Half a core and 64 MiB for the task; `nested` has limits of its own inside them, `free`
/// none and spins.
const CAPPED: &str = r#"{
  "family": "capped",
  "networkMode": "none",
  "cpu": "512",
  "memory": "64",
  "containerDefinitions": [
    {"name": "nested", "image": "test/busybox:latest", "cpu": 128, "memory": 32, "stopTimeout": 2,
     "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]},
    {"name": "free", "image": "test/busybox:latest", "essential": false, "stopTimeout": 2,
     "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do :; done"]}
  ]
}"#;

/// 64 MiB for the task, none for its containers; each holds 40 MiB (its `dd`, PID 1, blocked
/// writing its block into a FIFO nobody reads): alone each fits, together they do not.
const GREEDY: &str = r#"{
  "family": "greedy",
  "networkMode": "none",
  "memory": "64",
  "containerDefinitions": [
    {"name": "first", "image": "test/busybox:latest", "stopTimeout": 2,
     "command": ["sh", "-c", "mkfifo /f; sleep 1000 < /f & exec dd if=/dev/zero of=/f bs=40M count=1"]},
    {"name": "second", "image": "test/busybox:latest", "stopTimeout": 2,
     "dependsOn": [{"containerName": "first", "condition": "START"}],
     "command": ["sh", "-c", "sleep 2; mkfifo /f; sleep 1000 < /f & exec dd if=/dev/zero of=/f bs=40M count=1"]}
  ]
}"#;

fn hierarchy() -> CgroupHierarchy {
    CgroupHierarchy::detect().expect("cgroup hierarchy")
}

/// Where the cgroup at `rel` (relative to the hierarchy roots) is, in every hierarchy that
/// has it.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = match hierarchy() {
        CgroupHierarchy::V2 { root } => vec![root],
        CgroupHierarchy::V1 { mounts } => mounts.into_values().collect(),
    };
    roots
        .into_iter()
        .map(|r| r.join(rel))
        .filter(|d| d.exists())
        .collect()
}

/// The CFS quota and period of the cgroup at `rel`, microseconds (`None`: no quota).
fn cpu_quota(rel: &str) -> (Option<u64>, u64) {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match hierarchy() {
        CgroupHierarchy::V2 { root } => {
            let text = read(root.join(rel).join("cpu.max"));
            let (quota, period) = text.trim().split_once(' ').expect("QUOTA PERIOD");
            (quota.parse().ok(), period.parse().expect("period"))
        }
        CgroupHierarchy::V1 { mounts } => {
            let dir = mounts["cpu"].join(rel);
            let quota: i64 = read(dir.join("cpu.cfs_quota_us"))
                .trim()
                .parse()
                .expect("quota");
            let period = read(dir.join("cpu.cfs_period_us"))
                .trim()
                .parse()
                .expect("period");
            (u64::try_from(quota).ok(), period)
        }
    }
}

fn usage(cgroup: &str) -> CgroupUsage {
    hierarchy()
        .usage(cgroup)
        .unwrap_or_else(|e| panic!("usage of {cgroup}: {e}"))
}

/// The node's running containers of task `task`, by their name in the definition's order.
fn containers_of(node: &Node, task: &str) -> Vec<ContainerInfo> {
    let mut out: Vec<ContainerInfo> = node
        .ps()
        .into_iter()
        .filter(|c| {
            c.status == Status::Running
                && c.record
                    .config
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("{task}-")))
        })
        .collect();
    out.sort_by_key(|c| c.record.display_name());
    out
}

#[test]
fn task_level_cpu_and_memory_limit_the_task_as_a_whole() {
    let node = Node::new();
    // A task cgroup an agent killed half-way through a removal left: the next agent removes it.
    let stale = format!("{}/t-stale", node.cgroup_parent);
    match hierarchy() {
        CgroupHierarchy::V2 { root } => {
            std::fs::create_dir_all(root.join(&stale)).expect("stale cgroup");
        }
        CgroupHierarchy::V1 { mounts } => {
            std::fs::create_dir_all(mounts["memory"].join(&stale)).expect("stale cgroup");
        }
    }
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(CAPPED);
    let task = cp.run_one("capped");
    wait("the task to run", Duration::from_secs(30), || {
        cp.task(&task).state == TaskState::Running
    });
    assert!(
        cgroup_dirs(&stale).is_empty(),
        "a task cgroup no container names was left"
    );
    let running = containers_of(&node, &task);
    assert_eq!(running.len(), 2, "{running:#?}");

    // Both containers' cgroups are inside the task's.
    let task_cgroup = format!("/{}/{task}", node.cgroup_parent);
    for c in &running {
        assert_eq!(
            c.record.cgroup_path,
            format!("{task_cgroup}/{}", c.record.id),
            "{}",
            c.record.display_name()
        );
    }
    // The task: 64 MiB, and 512 CPU units — half of every period (ECS: 1024 units = 1 vCPU).
    assert_eq!(usage(&task_cgroup).memory_limit, Some(64 << 20));
    assert_eq!(
        cpu_quota(task_cgroup.trim_start_matches('/')),
        (Some(50_000), 100_000)
    );
    // Inside it, a container's own limit holds; one without has the task's.
    let (nested, free) = (&running[0], &running[1]);
    assert_eq!(nested.record.display_name(), format!("{task}-0"));
    assert_eq!(
        usage(&nested.record.cgroup_path).memory_limit,
        Some(32 << 20)
    );
    assert_eq!(usage(&free.record.cgroup_path).memory_limit, Some(64 << 20));

    // `free` spins as fast as it may: the task gets half a core at most.
    let window = Duration::from_secs(3);
    let (t0, before) = (Instant::now(), usage(&task_cgroup).cpu_ns);
    std::thread::sleep(window);
    let used = usage(&task_cgroup).cpu_ns - before;
    let cores = used as f64 / t0.elapsed().as_nanos() as f64;
    assert!(
        cores < 0.6,
        "the task used {cores:.2} cores against its 0.5"
    );
    eprintln!("a spinning task limited to 512 CPU units used {cores:.2} cores");

    // `task inspect` shows what the whole task uses and may use, from the node's heartbeats.
    wait("the task's usage", Duration::from_secs(15), || {
        cp.flotilla_json::<TaskInfo>(&["task", "inspect", &task])
            .usage
            .is_some_and(|u| {
                u.memory_limit_bytes == Some(64 << 20)
                    && u.memory_bytes > 0
                    && u.memory_bytes <= 64 << 20
                    && u.pids >= 2
                    && u.cpu_usec > 0
            })
    });

    // `flotilla top tasks` shows it near its share, from two heartbeats; `top nodes` the node
    // busy at least that much.
    let mut cpu = None;
    wait("a CPU rate for the task", Duration::from_secs(20), || {
        let top: Vec<TaskInfo> = cp.flotilla_json(&["top", "tasks"]);
        cpu = top
            .iter()
            .find(|t| t.id == task)
            .and_then(|t| t.cpu_millicores);
        cpu.is_some()
    });
    let cpu = cpu.expect("rate");
    assert!(
        (400..=560).contains(&cpu),
        "top tasks: {cpu}m for a task spinning at its 512 CPU units"
    );
    let table = cp.flotilla_ok(&["top", "tasks"]);
    let row = table
        .lines()
        .find(|l| l.starts_with(task.as_str()))
        .unwrap_or_else(|| panic!("{task} in:\n{table}"));
    assert!(row.contains("m ") && row.contains("64Mi"), "{table}");
    eprintln!("flotilla top tasks:\n{table}");
    let nodes: Vec<NodeInfo> = cp.flotilla_json(&["top", "nodes"]);
    assert!(
        nodes
            .iter()
            .any(|n| n.cpu_millicores.is_some_and(|m| m >= 400)),
        "{nodes:#?}"
    );
    let o = cp.flotilla(&["top", "tasks", "--service", "nope"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("nope"),
        "{o:?}"
    );

    // Stopped and removed: its cgroup goes too, in every hierarchy.
    cp.flotilla_ok(&["task", "stop", &task]);
    wait("the task to stop", Duration::from_secs(20), || {
        cp.task(&task).state == TaskState::Stopped
    });
    node.wait_removed(Duration::from_secs(20));
    node.wait_for("its cgroup to go", Duration::from_secs(5), || {
        cgroup_dirs(task_cgroup.trim_start_matches('/')).is_empty()
    });
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_tasks_containers_share_its_memory() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(GREEDY);
    let task = cp.run_one("greedy");
    // 40 MiB each fits in 64 MiB alone, not together: the kernel OOM-kills one of them, an
    // essential container, which ends the task.
    wait("the task to stop", Duration::from_secs(60), || {
        cp.task(&task).state == TaskState::Stopped
    });
    let t = cp.task(&task);
    assert!(
        t.containers
            .iter()
            .any(|c| c.exit_code == Some(137) && c.reason.as_deref() == Some("OOM killed")),
        "{t:#?}"
    );
    node.wait_removed(Duration::from_secs(20));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}
