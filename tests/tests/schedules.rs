//! Scheduled tasks: a schedule pinned to a node fires at its minute on that node while it is
//! cut off from the control plane, and the run is reported (and its container removed) once the
//! link is back; an unpinned schedule is fired by the control plane on a connected node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_api::ops::NodeState;
use flotilla_api::tasks::TaskState;
use flotilla_runtime::container::Status;
use flotilla_tests::cluster::Fleet;
use flotilla_tests::wait;

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
    fleet.register(flotilla_tests::taskdefs::ONCE);

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
    // The node has its schedule once its desired state is delivered: its second, after the
    // empty one of its session's start.
    let delivered = format!("node={}", ids[0]);
    wait("the node's desired state", Duration::from_secs(10), || {
        cp.log()
            .lines()
            .filter(|l| l.contains("desired state delivered") && l.contains(&delivered))
            .count()
            >= 2
    });
    // The link is cut 20 s before a minute turns: time for the control plane to see the node
    // go (within 15 s) before that minute, and a cut short enough that the agent's backoff is
    // still short when the link is back.
    let phase = now() % 60;
    std::thread::sleep(Duration::from_secs(if phase <= 40 {
        40 - phase
    } else {
        100 - phase
    }));
    hosts[0].cut();
    // The unpinned schedule is made once the control plane has seen the node go (within 15 s
    // of silence), so that every run of it is placed while only the other node is connected.
    wait(
        "the control plane to see the node gone",
        Duration::from_secs(30),
        || fleet.node_state(0) == Some(NodeState::Disconnected),
    );
    cp.flotilla_ok(&[
        "schedule",
        "create",
        "tick",
        "--taskdef",
        "once",
        "--cron",
        "* * * * *",
    ]);
    // Both fire at the next minute: the pinned one on the cut-off node, the other on the
    // connected one.
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
