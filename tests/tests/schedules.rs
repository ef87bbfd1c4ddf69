//! Scheduled tasks: a schedule pinned to a node fires at its minute on that node while it is
//! cut off from the control plane, and the run is reported (and its container removed) once the
//! link is back; an unpinned schedule is fired by the control plane on a connected node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_api::tasks::TaskState;
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::Fleet;
use flotilla_tests::wait;

const ONCE: &str = r#"{
  "family": "once",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16,
    "command": ["sh", "-c", "echo ran on schedule"]
  }]
}"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn a_pinned_schedule_fires_on_its_disconnected_node_and_reports_later() {
    let fleet = Fleet::start(&[&[], &[]]);
    let (cp, ids, hosts, nodes) = (&fleet.cp, &fleet.ids, &fleet.hosts, &fleet.nodes);
    fleet.register(ONCE);

    // Leave time to cut the link before the minute turns.
    while now() % 60 > 35 {
        std::thread::sleep(Duration::from_millis(500));
    }
    cp.flotilla_ok(&[
        "schedule",
        "create",
        "local",
        "--taskdef",
        "once",
        "--cron",
        "* * * * *",
        "--node",
        &ids[0],
    ]);
    cp.flotilla_ok(&[
        "schedule",
        "create",
        "tick",
        "--taskdef",
        "once",
        "--cron",
        "* * * * *",
    ]);
    let bad = cp.flotilla(&[
        "schedule",
        "create",
        "x",
        "--taskdef",
        "once",
        "--cron",
        "61 * * * *",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("minute: '61' is not from 0 to 59"));
    // The node has its schedule once its desired state is delivered.
    wait("the node's desired state", Duration::from_secs(10), || {
        cp.log().matches("desired state delivered").count() >= 2
    });
    hosts[0].cut();
    let minute = (now() / 60 + 1) * 60;
    // The node derives its run's id from its id, the schedule and the minute.
    let id = flotilla_api::tasks::scheduled_task_id(&ids[0], "local", minute);
    // It runs on the cut-off node at that minute.
    nodes[0].wait_for(
        "the scheduled run on the disconnected node",
        Duration::from_secs(100),
        || {
            nodes[0].ps().iter().any(|c| {
                c.record.config.name.as_deref() == Some(format!("{id}-0").as_str())
                    && c.status == Status::Exited
            })
        },
    );
    assert!(now() >= minute, "it ran before its minute");
    assert_eq!(
        nodes[0].ctr_ok(&["logs", &format!("{id}-0")]),
        "ran on schedule\n"
    );
    assert!(
        !cp.tasks().iter().any(|t| t.id == id),
        "the control plane cannot know yet"
    );
    // Meanwhile the control plane fired the unpinned one on the connected node.
    wait(
        "the control plane's run of tick",
        Duration::from_secs(30),
        || {
            cp.tasks().iter().any(|t| {
                t.started_by.as_deref() == Some("schedule:tick")
                    && t.node.as_deref() == Some(ids[1].as_str())
            })
        },
    );

    // Link back: the run is reported with its exit code, then its container goes.
    hosts[0].restore();
    wait("the run reported", Duration::from_secs(120), || {
        cp.tasks()
            .iter()
            .any(|t| t.id == id && t.state == TaskState::Stopped)
    });
    let t = cp.task(&id);
    assert_eq!(t.started_by.as_deref(), Some("schedule:local"), "{t:?}");
    assert_eq!(
        t.containers.first().and_then(|c| c.exit_code),
        Some(0),
        "{t:?}"
    );
    let s = cp.api().schedule("local").expect("schedule");
    assert!(
        s.runs
            .iter()
            .any(|r| r.task == id && r.node.as_deref() == Some(ids[0].as_str())),
        "{s:?}"
    );

    cp.flotilla_ok(&["schedule", "rm", "local", "tick"]);
    fleet.finish();
}
