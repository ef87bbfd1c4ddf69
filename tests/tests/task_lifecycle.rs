//! A task's life on its node with real containers: slow operations on one task never hold up
//! the others, stops go in reverse `dependsOn` order, a container is asked to stop with its
//! image's stop signal, and a container its restart policy restarts — or a power cut stopped —
//! is the same container when it starts again.

use std::time::{Duration, Instant};

use flotilla_api::tasks::{ContainerState, TaskState};
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::{Node, IMAGE};
use flotilla_tests::wait;

/// Ignores SIGTERM: a stop waits out its whole `stopTimeout` (20 s), then SIGKILL.
const STUBBORN: &str = r#"{
  "family": "stubborn",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 20,
    "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]
  }]
}"#;

/// Exits 0 at SIGTERM.
const QUICK: &str = r#"{
  "family": "quick",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 20,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

fn wait_state(cp: &ControlPlane, id: &str, state: TaskState, timeout: Duration) {
    wait(&format!("task {id} {state:?}"), timeout, || {
        cp.task(id).state == state
    });
}

#[test]
fn a_task_waiting_out_its_stop_timeout_holds_up_nothing_else_on_its_node() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(STUBBORN);
    cp.register(QUICK);
    let stubborn = cp.run_one("stubborn");
    let quick = cp.run_one("quick");
    wait_state(&cp, &stubborn, TaskState::Running, Duration::from_secs(30));
    wait_state(&cp, &quick, TaskState::Running, Duration::from_secs(30));

    // The stubborn task waits out its 20 s; meanwhile a new task starts at once…
    let stopped_at = Instant::now();
    cp.flotilla_ok(&["task", "stop", &stubborn]);
    wait_state(&cp, &stubborn, TaskState::Stopping, Duration::from_secs(5));
    let placed = Instant::now();
    let new = cp.run_one("quick");
    wait_state(&cp, &new, TaskState::Running, Duration::from_secs(3));
    let to_run = placed.elapsed();
    // …and another task's stop is not queued behind it.
    let asked = Instant::now();
    cp.flotilla_ok(&["task", "stop", &quick]);
    wait_state(&cp, &quick, TaskState::Stopped, Duration::from_secs(4));
    let to_stop = asked.elapsed();
    assert_eq!(cp.task(&quick).containers[0].exit_code, Some(0));
    assert_eq!(cp.task(&stubborn).state, TaskState::Stopping);
    eprintln!("new task running in {to_run:?}, another stopped in {to_stop:?}, while one stops");

    // The stubborn one ends by SIGKILL once its stopTimeout ran out, not before.
    wait_state(&cp, &stubborn, TaskState::Stopped, Duration::from_secs(30));
    let took = stopped_at.elapsed();
    assert!(took >= Duration::from_secs(19), "{took:?}");
    assert_eq!(cp.task(&stubborn).containers[0].exit_code, Some(137));

    cp.flotilla_ok(&["task", "stop", &new]);
    wait_state(&cp, &new, TaskState::Stopped, Duration::from_secs(10));
    // Gone to the last directory before the agent is killed.
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// `app` depends on `db`; both note in a host file when they are asked to stop and when they
/// are done. `app` takes 2 s to shut down (or, `stubborn`, ignores SIGTERM).
fn app_on_db(family: &str, order: &std::path::Path, stubborn: bool) -> String {
    let app = if stubborn {
        "trap 'echo app-term >> /out/order' TERM; while true; do sleep 0.2; done"
    } else {
        "trap 'echo app-term >> /out/order; sleep 2; echo app-exit >> /out/order; exit 0' TERM; \
         while true; do sleep 0.2 & wait; done"
    };
    serde_json::json!({
        "family": family,
        "networkMode": "none",
        "volumes": [{"name": "out", "host": {"sourcePath": order}}],
        "containerDefinitions": [
            {"name": "db", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 10,
             "mountPoints": [{"sourceVolume": "out", "containerPath": "/out"}],
             "command": ["sh", "-c", "trap 'echo db-term >> /out/order; exit 0' TERM; echo db-up >> /out/order; while true; do sleep 0.2 & wait; done"]},
            {"name": "app", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 3,
             "dependsOn": [{"containerName": "db", "condition": "START"}],
             "mountPoints": [{"sourceVolume": "out", "containerPath": "/out"}],
             "command": ["sh", "-c", format!("echo app-up >> /out/order; {app}")]}
        ]
    })
    .to_string()
}

#[test]
fn a_task_stops_its_dependents_first_each_within_its_stop_timeout() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    for (family, stubborn) in [("polite", false), ("stubborn", true)] {
        let dir = node.bind_roots[0].join(family);
        std::fs::create_dir_all(&dir).expect("host dir");
        let order = dir.join("order");
        cp.register(&app_on_db(family, &dir, stubborn));
        let id = cp.run_one(family);
        let start = Instant::now();
        while !std::fs::read_to_string(&order).is_ok_and(|s| s.contains("app-up")) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{family}: not both up after 30 s; the order file: {:?}; the task: {:#?}; the node: {:#?}",
                std::fs::read_to_string(&order),
                cp.task(&id),
                node.ps()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_state(&cp, &id, TaskState::Running, Duration::from_secs(10));
        let asked = Instant::now();
        cp.flotilla_ok(&["task", "stop", &id]);
        wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(30));
        let took = asked.elapsed();
        let lines = std::fs::read_to_string(&order).expect("order");
        let t = cp.task(&id);
        let code = |name: &str| {
            t.containers
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.exit_code)
        };
        eprintln!("{family}: stopped in {took:?}: {lines:?}");
        if stubborn {
            // app had its 3 s and was killed; only then was db asked, and it ended on its own.
            assert_eq!(lines, "db-up\napp-up\napp-term\ndb-term\n");
            assert_eq!((code("app"), code("db")), (Some(137), Some(0)));
            assert!(took >= Duration::from_secs(3), "{took:?}");
        } else {
            // db is asked only once app has finished its own shutdown.
            assert_eq!(lines, "db-up\napp-up\napp-term\napp-exit\ndb-term\n");
            assert_eq!((code("app"), code("db")), (Some(0), Some(0)));
        }
    }
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// Imports into `node` an image `name` of busybox whose configuration says `StopSignal:
/// stop` and whose command leaves on SIGUSR1 with 0 and on SIGTERM with 5 — unless `stop`
/// asks for SIGUSR1, then it ignores SIGTERM.
fn import_stop_signal_image(node: &Node, name: &str, stop: &str) {
    use flotilla_tests::image::{busybox_image, write_layout_with};
    let mut spec = busybox_image(flotilla_tests::host_arch());
    let term = if stop.contains("USR1") || stop == "10" {
        "''"
    } else {
        "'exit 5'"
    };
    spec.cmd = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "trap 'exit 0' USR1; trap {term} TERM; echo up; while true; do sleep 0.2 & wait; done"
        ),
    ];
    let layout = node.scratch().join(name.replace([':', '/'], "-"));
    write_layout_with(&layout, "", &spec, &serde_json::json!({"StopSignal": stop}))
        .expect("layout");
    node.ctr_ok(&[
        "image",
        "import",
        layout.to_str().expect("utf8"),
        "--name",
        name,
    ]);
}

#[test]
fn a_container_is_asked_to_stop_with_its_images_stop_signal() {
    let node = Node::new();
    // By name and by number: the trap runs at once and the container exits 0, well within
    // the 20 s it would otherwise wait before SIGKILL.
    for (n, (image, stop)) in [("stop/usr1:1", "SIGUSR1"), ("stop/ten:1", "10")]
        .into_iter()
        .enumerate()
    {
        import_stop_signal_image(&node, image, stop);
        let name = format!("sig-{n}");
        node.ctr_ok(&["run", "-d", "--name", &name, image]);
        node.wait_for("it to run", Duration::from_secs(10), || {
            node.ctr_ok(&["logs", &name]).contains("up")
        });
        let t = Instant::now();
        let out = node.ctr_ok(&["stop", "-t", "20", &name]);
        let took = t.elapsed();
        eprintln!("ctr stop ({stop}): {took:?}: {}", out.trim());
        assert!(took < Duration::from_secs(3), "{stop}: {took:?}");
        assert_eq!(node.inspect(&name).exit.map(|e| e.exit_code), Some(0));
        node.ctr_ok(&["rm", &name]);
    }
    // A StopSignal that names no signal is warned about when the container is made, naming
    // the image and the value, and SIGTERM is used.
    import_stop_signal_image(&node, "stop/bogus:1", "SIGNOPE");
    let out = node.ctr(&["run", "-d", "--name", "bogus", "stop/bogus:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("stop/bogus:1") && err.contains("unknown signal 'SIGNOPE'"),
        "{err}"
    );
    node.wait_for("it to run", Duration::from_secs(10), || {
        node.ctr_ok(&["logs", "bogus"]).contains("up")
    });
    node.ctr_ok(&["stop", "-t", "20", "bogus"]);
    assert_eq!(node.inspect("bogus").exit.map(|e| e.exit_code), Some(5));
    node.ctr_ok(&["rm", "bogus"]);

    // The same through a task: its stop is the image's signal, then its stopTimeout.
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(
        r#"{"family": "usr1", "networkMode": "none", "containerDefinitions": [
            {"name": "main", "image": "stop/usr1:1", "memory": 32, "stopTimeout": 20}]}"#,
    );
    let id = cp.run_one("usr1");
    wait_state(&cp, &id, TaskState::Running, Duration::from_secs(30));
    node.wait_for("it to run", Duration::from_secs(10), || {
        node.ctr_ok(&["logs", &format!("{id}-0")]).contains("up")
    });
    let t = Instant::now();
    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(30));
    let took = t.elapsed();
    eprintln!("task stop (SIGUSR1): {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(cp.task(&id).containers[0].exit_code, Some(0));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// Prints nothing for 12 s, then one line, then nothing.
const QUIET: &str = r#"{
  "family": "quiet",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 12 & wait; echo late; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

#[test]
fn a_follower_of_a_quiet_task_waits_for_its_first_line_and_daemon_logs_are_plain_text() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(QUIET);
    let id = cp.run_one("quiet");
    wait_state(&cp, &id, TaskState::Running, Duration::from_secs(30));
    // Not following: nothing yet, at once.
    let t = Instant::now();
    assert_eq!(cp.flotilla_ok(&["logs", &id]), "");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Following: it waits past the control plane's 10 s for the node's answer and gets the
    // line printed after 12 s.
    let mut follow = Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["logs", &id, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first = lines.next().map(|l| l.expect("utf8"));
    if first.as_deref() != Some("late") {
        let _ = follow.kill();
        let out = follow.wait_with_output().expect("wait");
        panic!(
            "logs -f gave {first:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cp.flotilla_ok(&["task", "stop", &id]);
    wait(
        "logs -f to end with the task",
        Duration::from_secs(20),
        || follow.try_wait().expect("wait").is_some(),
    );
    assert!(follow.wait().expect("wait").success());

    // The daemons write their logs into files (as `flotilla dev` runs them): no colour codes.
    agent.kill();
    for (daemon, log) in [("orchestratord", cp.log()), ("nodeagent", agent.log())] {
        assert!(!log.is_empty(), "{daemon} logged nothing");
        assert!(!log.contains('\x1b'), "{daemon}'s log has escapes:\n{log}");
    }
    node.remove_all();
    node.assert_clean();
}

/// Says something on each stream and ends: its essential container exits 3.
const CRASHING: &str = r#"{
  "family": "crashing",
  "networkMode": "none",
  "containerDefinitions": [
    {"name": "side", "image": "test/busybox:latest", "memory": 32, "essential": false, "stopTimeout": 2,
     "command": ["sh", "-c", "echo side was here; trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]},
    {"name": "main", "image": "test/busybox:latest", "memory": 32,
     "command": ["sh", "-c", "echo starting; sleep 1; echo cannot reach the database >&2; exit 3"]}
  ]
}"#;

#[test]
fn a_stopped_tasks_logs_are_read_after_its_containers_are_removed() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(CRASHING);
    let id = cp.run_one("crashing");
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(30));
    node.wait_for(
        "its containers to be removed",
        Duration::from_secs(10),
        || node.ps().is_empty(),
    );
    // Each line on its stream, under its container's name, as while it ran.
    let o = cp.flotilla(&["logs", &id]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    // (in the order they were written: the two containers start together)
    let mut out: Vec<&str> = stdout.lines().collect();
    out.sort();
    assert_eq!(out, ["main | starting", "side | side was here"], "{stdout}");
    assert_eq!(stderr, "main | cannot reach the database\n");
    // One container by name, the last line; following ends at once (nothing runs).
    let o = cp.flotilla(&["logs", &id, "-c", "main", "--tail", "1", "-f"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "cannot reach the database\n"
    );
    let o = cp.flotilla(&["logs", &id, "-c", "nope"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no container 'nope' (it has side, main)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An agent restart keeps them (they are files, not memory).
    agent.kill();
    agent.run();
    agent.wait_log("session established", 2, Duration::from_secs(30));
    assert_eq!(
        cp.flotilla_ok(&["logs", &id, "-c", "side"]),
        "side was here\n"
    );
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// Counts its runs in its own root filesystem (`/runs`) and in the image's volume (`/data`,
/// `Volumes` in the image's configuration); its first two runs crash (exit 7), the third stays
/// up.
const CRASH_TWICE: &str = r#"{
  "family": "crash-twice",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/volumes:1", "memory": 32, "stopTimeout": 5,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "command": ["sh", "-c", "n=$(( $(cat /runs 2>/dev/null || echo 0) + 1 )); echo $n > /runs; echo $n >> /data/runs; echo run $n; case $n in 1|2) echo crash $n >&2; exit 7;; esac; trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

#[test]
fn a_restarted_container_keeps_its_layer_volumes_log_and_restart_count() {
    use flotilla_runtime::container::Status;
    use flotilla_tests::image::{busybox_image, write_layout_with};

    let node = Node::new();
    let layout = node.scratch().join("volumes-image");
    write_layout_with(
        &layout,
        "",
        &busybox_image(flotilla_tests::host_arch()),
        &serde_json::json!({"Volumes": {"/data": {}}}),
    )
    .expect("layout");
    node.ctr_ok(&[
        "image",
        "import",
        layout.to_str().expect("utf8"),
        "--name",
        "test/volumes:1",
    ]);
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(CRASH_TWICE);
    let id = cp.run_one("crash-twice");
    let name = format!("{id}-0");
    // Restarted at once, then after 1 s: the third run finds what the first two wrote, so it
    // stays up.
    wait(
        "two restarts, then running",
        Duration::from_secs(30),
        || {
            let t = cp.task(&id);
            t.state == TaskState::Running
                && t.containers.first().is_some_and(|c| c.restarts == 2)
                && node.inspect(&name).status == Status::Running
        },
    );
    // One container all along, which counts its restarts.
    let ours: Vec<_> = node
        .ps()
        .into_iter()
        .filter(|c| c.record.config.name.as_deref() == Some(name.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].restart_count, 2);
    assert!(
        node.ctr_ok(&["ps"]).contains("RESTARTS"),
        "ctr ps shows the count"
    );
    // Its anonymous volume kept what every run wrote (the third run's line waited for:
    // the count is reported before the run's command has its first line out).
    node.wait_exec_output(
        &name,
        &["cat", "/data/runs"],
        "1\n2\n3\n",
        Duration::from_secs(10),
    );
    node.wait_for("the third run's line", Duration::from_secs(10), || {
        String::from_utf8_lossy(&node.ctr(&["logs", &name]).stdout).ends_with("run 3\n")
    });
    // Its log holds every run, for `flotilla logs` and `ctr logs` alike.
    let o = cp.flotilla(&["logs", &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "run 1\nrun 2\nrun 3\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "crash 1\ncrash 2\n");
    let o = node.ctr(&["logs", &name]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "run 1\nrun 2\nrun 3\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "crash 1\ncrash 2\n");

    // An agent restart changes nothing: the count is the container's, not the agent's memory.
    let pid = node.running().get(&name).copied();
    agent.kill();
    agent.run();
    agent.wait_log("session established", 2, Duration::from_secs(30));
    // (a report every round; a few heartbeats' time for one from the new agent)
    std::thread::sleep(Duration::from_secs(6));
    let t = cp.task(&id);
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.containers[0].restarts, 2, "{t:?}");
    assert_eq!(node.running().get(&name).copied(), pid, "restarted again");
    assert_eq!(node.inspect(&name).restart_count, 2);

    // Stopped and removed, its log is still read whole.
    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    assert_eq!(cp.flotilla_ok(&["logs", &id]), "run 1\nrun 2\nrun 3\n");
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_restart_that_cannot_start_keeps_the_container_and_goes_on_after_an_agent_restart() {
    use flotilla_runtime::container::{Status, RESTART_FAILED_EXIT};

    let node = Node::new();
    let out = node.bind_roots[0].join("out");
    let away = node.bind_roots[0].join("away");
    std::fs::create_dir(&out).expect("out");
    // Its first run ends after 5 s; it stays up once the host directory holds `stay`.
    let def = serde_json::json!({
        "family": "needs-out",
        "networkMode": "none",
        "volumes": [{"name": "out", "host": {"sourcePath": out}}],
        "containerDefinitions": [{
            "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 5,
            "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
            "mountPoints": [{"sourceVolume": "out", "containerPath": "/out"}],
            "command": ["sh", "-c", "echo run >> /out/runs; echo run; cat /out/stay 2>/dev/null && exec sleep 1000; sleep 5; exit 3"]
        }]
    });
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(&def.to_string());
    let id = cp.run_one("needs-out");
    let name = format!("{id}-0");
    node.wait_for("its first run", Duration::from_secs(30), || {
        node.ctr(&["inspect", &name]).status.success()
            && node.inspect(&name).status == Status::Running
    });
    let container = node.inspect(&name).record.id;
    // Its bind source goes while it runs: its restart cannot start.
    std::fs::rename(&out, &away).expect("move the source away");
    node.wait_for("a failed restart", Duration::from_secs(30), || {
        node.inspect(&name)
            .exit
            .is_some_and(|e| e.exit_code == RESTART_FAILED_EXIT && e.error.is_some())
    });
    let failed = node.inspect(&name);
    assert_eq!(failed.record.id, container, "the same container");
    assert!(failed.restart_count >= 1, "{failed:?}");
    let error = failed.exit.and_then(|e| e.error).unwrap_or_default();
    assert!(
        error.contains(&container) && error.contains(&out.display().to_string()),
        "the error names the container and the source: {error}"
    );
    assert!(
        node.ctr_ok(&["ps", "-a"]).contains("restart failed"),
        "ctr ps says so"
    );
    // Its policy covers the failure: the task runs on, its container being restarted.
    assert_eq!(cp.task(&id).state, TaskState::Running);

    // The agent goes in the middle of the backoff; the source comes back meanwhile. The next
    // agent restarts the same container, and its count goes on.
    agent.kill();
    std::fs::write(away.join("stay"), "").expect("stay");
    std::fs::rename(&away, &out).expect("move the source back");
    let before = node.inspect(&name).restart_count;
    agent.run();
    agent.wait_log("session established", 2, Duration::from_secs(30));
    node.wait_for("the restart to run", Duration::from_secs(30), || {
        node.inspect(&name).status == Status::Running
    });
    let now = node.inspect(&name);
    assert_eq!(now.record.id, container, "the same container");
    assert!(
        now.restart_count > before,
        "{} after {before}",
        now.restart_count
    );
    // (Running comes before the command's first line: what it writes is waited for.)
    node.wait_for("the restarted run's line", Duration::from_secs(10), || {
        std::fs::read_to_string(out.join("runs")).is_ok_and(|r| r.len() >= "run\nrun\n".len())
    });
    assert_eq!(
        std::fs::read_to_string(out.join("runs")).expect("runs"),
        "run\nrun\n"
    );
    wait("the count reported", Duration::from_secs(20), || {
        let t = cp.task(&id);
        t.state == TaskState::Running && t.containers[0].restarts == now.restart_count
    });
    assert_eq!(node.ctr_ok(&["logs", &name]), "run\nrun\n");

    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// Healthy in its first run (`/tmp/ok` is there), which ends after 4 s; its second run removes
/// `/tmp/ok` and stays up, unhealthy.
const HEALTHY_ONCE: &str = r#"{
  "family": "healthy-once",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "healthCheck": {"command": ["CMD-SHELL", "cat /tmp/ok"], "interval": 5, "timeout": 2, "retries": 1},
    "command": ["sh", "-c", "if [ -e /ran ]; then rm -f /tmp/ok; exec sleep 1000; fi; echo > /ran; echo > /tmp/ok; sleep 4; exit 1"]
  }]
}"#;

#[test]
fn a_restarted_containers_health_starts_over_with_its_new_run() {
    use flotilla_api::tasks::HealthStatus;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(HEALTHY_ONCE);
    let id = cp.run_one("healthy-once");
    let health = || cp.task(&id).containers.first().and_then(|c| c.health);
    wait("healthy in its first run", Duration::from_secs(30), || {
        health() == Some(HealthStatus::Healthy)
    });
    wait("restarted", Duration::from_secs(30), || {
        let t = cp.task(&id);
        t.containers
            .first()
            .is_some_and(|c| c.restarts == 1 && c.state == ContainerState::Running)
    });
    // The first run's verdict is not the new run's: it starts over, and the check fails.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_ne!(
            health(),
            Some(HealthStatus::Healthy),
            "the first run's verdict"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait(
        "unhealthy in its second run",
        Duration::from_secs(20),
        || health() == Some(HealthStatus::Unhealthy),
    );
    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_restart_never_follows_a_bind_source_swapped_for_a_symlink() {
    use flotilla_runtime::container::{Status, RESTART_FAILED_EXIT};

    let node = Node::new();
    let src = node.bind_roots[0].join("src");
    std::fs::create_dir(&src).expect("src");
    // Outside every bind root: what a symlink swapped in would lead to.
    let outside = node.scratch().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("secret"), "outside").expect("secret");
    let def = serde_json::json!({
        "family": "swapped",
        "networkMode": "none",
        "volumes": [{"name": "src", "host": {"sourcePath": src}}],
        "containerDefinitions": [{
            "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
            "restartPolicy": {"enabled": true},
            "mountPoints": [{"sourceVolume": "src", "containerPath": "/b"}],
            "command": ["sh", "-c", "cat /b/secret 2>/dev/null; echo written > /b/written; sleep 3; exit 3"]
        }]
    });
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(&def.to_string());
    let id = cp.run_one("swapped");
    let name = format!("{id}-0");
    node.wait_for("its first run", Duration::from_secs(30), || {
        node.ctr(&["inspect", &name]).status.success()
            && node.inspect(&name).status == Status::Running
    });
    // While it runs, the source becomes a symlink to a directory outside the roots.
    std::fs::remove_dir_all(&src).expect("rm src");
    std::os::unix::fs::symlink(&outside, &src).expect("symlink");
    node.wait_for("a refused restart", Duration::from_secs(30), || {
        node.inspect(&name)
            .exit
            .is_some_and(|e| e.exit_code == RESTART_FAILED_EXIT && e.error.is_some())
    });
    let error = node
        .inspect(&name)
        .exit
        .and_then(|e| e.error)
        .unwrap_or_default();
    assert!(error.contains("now leads to"), "{error}");
    assert!(
        !outside.join("written").exists(),
        "the container wrote outside its bind roots"
    );
    assert!(!node.ctr_ok(&["logs", &name]).contains("outside"));

    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// Counts its runs in its own root filesystem (`/runs`) and says so in its log; stays up.
const KEEPER: &str = r#"{
  "family": "keeper",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 5,
    "command": ["sh", "-c", "n=$(( $(cat /runs 2>/dev/null || echo 0) + 1 )); echo $n > /runs; echo run $n; trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
  }]
}"#;

/// The first boot of a power-cut test: `node`'s agent, enrolled with `cp`, runs [`KEEPER`] as
/// in a boot of its own until its first run has written `/runs` and its line; then the power
/// is cut ([`Node::power_cut`]: that boot's processes and mounts are gone, its files stay).
/// The task's id and its container as that boot last saw it.
fn keeper_until_a_power_cut(
    node: &Node,
    cp: &ControlPlane,
) -> (String, flotilla_runtime::container::ContainerInfo) {
    keeper_of_until_a_power_cut(KEEPER, node, cp)
}

/// [`keeper_until_a_power_cut`] with task definition `def` (of family `keeper`).
fn keeper_of_until_a_power_cut(
    def: &str,
    node: &Node,
    cp: &ControlPlane,
) -> (String, flotilla_runtime::container::ContainerInfo) {
    let agent = first_boot(node, cp);
    cp.register(def);
    let id = cp.run_one("keeper");
    wait_state(cp, &id, TaskState::Running, Duration::from_secs(30));
    let before = first_run(&agent, node, &id);
    power_cut(agent, node, &id);
    (id, before)
}

/// The first boot of a power-cut test: `node`'s agent, enrolled with `cp` and in session, in
/// a boot of its own.
fn first_boot(node: &Node, cp: &ControlPlane) -> Agent {
    let mut agent = Agent::for_node(node)
        .with_run_args(&["--heartbeat", "5"])
        .in_another_boot();
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    wait("the node's resources", Duration::from_secs(10), || {
        cp.nodes().first().is_some_and(|n| n.resources.is_some())
    });
    agent
}

/// Task `id` of [`KEEPER`] in the first boot, once its first run has written `/runs` and its
/// line: its container, seen from inside that boot.
fn first_run(agent: &Agent, node: &Node, id: &str) -> flotilla_runtime::container::ContainerInfo {
    use flotilla_runtime::container::{ContainerInfo, Status};

    let name = format!("{id}-0");
    let ctr = |args: &[&str]| {
        let mut base = node.nodeagent();
        base.arg("ctr").args(args);
        let out = agent.in_its_boot(&base).output().expect("nsenter");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    node.wait_for("its first run's line", Duration::from_secs(10), || {
        ctr(&["logs", &name]) == "run 1\n"
    });
    let before: ContainerInfo = serde_json::from_str(&ctr(&["inspect", &name])).expect("inspect");
    assert_eq!(before.status, Status::Running);
    assert_eq!(ctr(&["exec", &name, "cat", "/runs"]), "1\n");
    before
}

/// The power cut ([`Node::power_cut`]: the first boot's processes and mounts are gone, its
/// files stay).
fn power_cut(mut agent: Agent, node: &Node, id: &str) {
    use flotilla_runtime::container::Status;

    agent.kill();
    node.power_cut();
    let netns = node.data.join("netns").join(id);
    assert!(
        !flotilla_runtime::network::netns::is_namespace(&netns),
        "its network namespace outlived the cut"
    );
    // That boot's records, seen from this one: a container cut off with it.
    assert_ne!(node.inspect(&format!("{id}-0")).status, Status::Running);
}

/// A node cut off from its control plane stops a service's task once the service's
/// `stopOnClientAfter` has passed, before the control plane replaces it elsewhere (after
/// `lostAfter`). A power cut while cut off does not start that count over: the node starts
/// again past the limit, with the control plane still away, and does not run the task again
/// — it would run twice.
#[test]
fn after_a_power_cut_while_cut_off_a_task_past_its_stop_on_client_after_stays_stopped() {
    use flotilla_runtime::container::Status;

    let node = Node::new();
    let mut cp = ControlPlane::start(&[]);
    let _cut = scopeguard(|| node.power_cut());
    let first = first_boot(&node, &cp);
    cp.register(KEEPER);
    cp.create_service(
        r#"{"serviceName": "keeper", "taskDefinition": "keeper", "desiredCount": 1,
            "disconnectPolicy": {"lostAfter": 60, "stopOnClientAfter": 4}}"#,
    );
    wait(
        "the service's task running",
        Duration::from_secs(30),
        || cp.tasks().iter().any(|t| t.state == TaskState::Running),
    );
    let id = cp.tasks().remove(0).id;
    let name = format!("{id}-0");
    first_run(&first, &node, &id);
    // The control plane goes; then the power, before the limit.
    cp.stop();
    let gone = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    power_cut(first, &node, &id);
    // The machine is back after the limit; the control plane is still away.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(gone.elapsed()));
    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    agent.run();
    agent.wait_log(
        "stopping it (stopOnClientAfter)",
        1,
        Duration::from_secs(20),
    );
    // (One listing per look: the container may be removed between two commands.)
    node.wait_for("its container set aside", Duration::from_secs(10), || {
        node.ps()
            .iter()
            .find(|c| c.record.config.name.as_deref() == Some(name.as_str()))
            .is_none_or(|c| c.status == Status::Exited)
    });
    // It never ran in this boot: its log, while it is still there, holds the first run only.
    let logs = node.ctr(&["logs", &name]);
    if logs.status.success() {
        assert_eq!(
            String::from_utf8_lossy(&logs.stdout),
            "run 1\n",
            "{}",
            agent.log()
        );
    }
    assert!(
        !agent.log().contains("starts again in place"),
        "{}",
        agent.log()
    );
    // The control plane back: the task was stopped by its node, and the service goes on.
    cp.restart();
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(60));
    let t = cp.task(&id);
    assert!(
        t.stop_reason
            .as_deref()
            .unwrap_or_default()
            .contains("stopOnClientAfter"),
        "{t:?}"
    );
    cp.flotilla_ok(&["service", "rm", "keeper"]);
    node.wait_removed(Duration::from_secs(30));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// A power cut for real, on one machine: the agent runs as in a boot of its own (its own
/// boot id, its mounts in a namespace of their own); then it and every process it started
/// are killed at once — shims, containers — and with the last of them go that boot's
/// overlay mounts and its task's network namespace. The agent started again (in this boot)
/// starts the same container again: its id, its writable layer, its log, in the task's
/// network namespace made anew.
#[test]
fn after_a_power_cut_a_running_container_starts_again_in_place() {
    use flotilla_runtime::container::Status;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    // Dropped before the node: also when the test fails, nothing of that boot outlives the
    // test (the node then removes what is left).
    let _cut = scopeguard(|| node.power_cut());
    let (id, before) = keeper_until_a_power_cut(&node, &cp);
    let name = format!("{id}-0");
    let old_pid = before.pid().expect("pid");
    let netns = node.data.join("netns").join(&id);

    // The next boot.
    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    agent.run();
    let named = || {
        node.ps()
            .into_iter()
            .find(|c| c.record.config.name.as_deref() == Some(name.as_str()))
    };
    node.wait_for(
        "its container to run again",
        Duration::from_secs(30),
        || named().is_some_and(|c| c.status == Status::Running && c.pid() != Some(old_pid)),
    );
    let after = named().expect("its container");
    // The same container: its id, and nothing beside it.
    assert_eq!(
        after.record.id,
        before.record.id,
        "a new container took its place:\n{}",
        agent.log()
    );
    assert_eq!(node.ps().len(), 1, "{:?}", node.ps());
    // Its restart count starts over, as Docker's after a reboot.
    assert_eq!(after.restart_count, 0);
    // Its log holds both runs, for `ctr logs` and `flotilla logs` alike (waited for first:
    // Running comes before the command's first line).
    node.wait_for("its second run's line", Duration::from_secs(10), || {
        node.ctr_ok(&["logs", &name]) == "run 1\nrun 2\n"
    });
    // Its writable layer kept what the first run wrote: the second counts on from it.
    assert_eq!(node.ctr_ok(&["exec", &name, "cat", "/runs"]), "2\n");
    // In the task's network namespace, made anew in this boot.
    let pid = after.pid().expect("pid");
    let joined = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("its netns");
    let made = std::fs::metadata(&netns).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert!(
        flotilla_runtime::network::netns::is_namespace(&netns),
        "no task network namespace"
    );
    assert_eq!(
        joined.to_string_lossy(),
        format!("net:[{}]", made.expect("stat")),
        "not in the task's new network namespace"
    );
    agent.wait_log("it starts again in place", 1, Duration::from_secs(5));
    // (the first boot's session, then this one's)
    agent.wait_log("session established", 2, Duration::from_secs(30));
    wait(
        "the task reported running again",
        Duration::from_secs(30),
        || {
            let t = cp.task(&id);
            t.state == TaskState::Running && t.containers[0].restarts == 0
        },
    );
    assert_eq!(cp.flotilla_ok(&["logs", &id]), "run 1\nrun 2\n");

    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// A container whose new run fails after a power cut for a reason other than a damaged layer
/// — its bind source is not there yet, as a network mount not up — is never replaced: it
/// stays with its writable layer, its failed run recorded as its exit (125, naming the
/// source), as a failed restart is; its restart policy tries again, and once the source is
/// back the same container runs on from its layer.
#[test]
fn after_a_power_cut_a_container_whose_new_run_fails_keeps_its_layer_and_runs_again() {
    use flotilla_runtime::container::Status;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let _cut = scopeguard(|| node.power_cut());
    let source = node.bind_roots[0].join("data");
    std::fs::create_dir_all(&source).expect("the bind source");
    let def = KEEPER
        .replace(
            r#""stopTimeout": 5,"#,
            r#""stopTimeout": 5, "restartPolicy": {"enabled": true},
               "mountPoints": [{"sourceVolume": "d", "containerPath": "/d"}],"#,
        )
        .replace(
            r#""networkMode": "none","#,
            &format!(
                r#""networkMode": "none", "volumes": [{{"name": "d", "host": {{"sourcePath": "{}"}}}}],"#,
                source.display()
            ),
        );
    let (id, before) = keeper_of_until_a_power_cut(&def, &node, &cp);
    let name = format!("{id}-0");
    let dir = node.data.join("containers").join(&before.record.id);
    // The machine comes back without it (its mount not up yet).
    let away = node.bind_roots[0].join("data.away");
    std::fs::rename(&source, &away).expect("the source away");

    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    agent.run();
    node.wait_for("its failed run recorded", Duration::from_secs(30), || {
        node.inspect(&name).exit.is_some_and(|e| {
            e.exit_code == 125
                && e.error
                    .is_some_and(|e| e.contains(&source.display().to_string()))
        })
    });
    let failed = node.inspect(&name);
    assert_eq!(
        failed.record.id,
        before.record.id,
        "a new container took its place:\n{}",
        agent.log()
    );
    // Every try fails the same way while the source is away: the layer is as the first run
    // left it.
    assert_eq!(
        std::fs::read_to_string(dir.join("upper").join("runs")).expect("/runs in its layer"),
        "1\n"
    );

    // The source back, the policy's next try runs the same container on from its layer.
    std::fs::rename(&away, &source).expect("the source back");
    node.wait_for("it to run again", Duration::from_secs(30), || {
        node.inspect(&name).status == Status::Running
    });
    let after = node.inspect(&name);
    assert_eq!(after.record.id, before.record.id);
    node.wait_exec_output(&name, &["cat", "/runs"], "2\n", Duration::from_secs(10));
    assert_eq!(node.ps().len(), 1, "{:?}", node.ps());
    assert!(
        !agent.log().contains("it starts again in a new container"),
        "{}",
        agent.log()
    );

    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// A container whose record did not survive the power cut (not JSON any more) is set aside
/// once, with a warning naming it — not skipped on every listing with its image layers pinned
/// — and its task runs in a new container.
#[test]
fn after_a_power_cut_a_container_whose_record_is_damaged_is_set_aside_and_its_task_runs() {
    use flotilla_runtime::container::Status;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let _cut = scopeguard(|| node.power_cut());
    let (id, before) = keeper_until_a_power_cut(&node, &cp);
    let name = format!("{id}-0");
    let containers = node.data.join("containers");
    let old = containers.join(&before.record.id);
    std::fs::write(old.join("container.json"), "{ torn").expect("a torn record");
    let lease = node.data.join("images/leases").join(&before.record.id);
    assert!(lease.exists(), "no lease at {}", lease.display());

    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    agent.run();
    node.wait_for(
        "a new container of the task to run",
        Duration::from_secs(30),
        || {
            node.ps().iter().any(|c| {
                c.record.config.name.as_deref() == Some(&name) && c.status == Status::Running
            })
        },
    );
    let aside = containers.join(".damaged").join(&before.record.id);
    assert!(aside.join("upper").is_dir(), "not set aside as it was");
    assert!(!old.exists());
    assert!(!lease.exists(), "its image lease stays");
    agent.wait_log("set aside", 1, Duration::from_secs(5));
    assert!(
        agent.log().lines().any(|l| l.contains("WARN")
            && l.contains(&before.record.id)
            && l.contains("its record is unreadable")),
        "{}",
        agent.log()
    );
    // Listed without a word about it from now on.
    let o = node.ctr(&["ps", "-a"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("unreadable"));

    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    std::fs::remove_dir_all(containers.join(".damaged")).expect("the damaged one away");
    node.remove_all();
    node.assert_clean();
}

/// A container whose writable layer did not survive the power cut cannot start again in
/// place: a new container takes its place, the agent's log names it, and the task runs.
#[test]
fn after_a_power_cut_a_container_whose_layer_is_damaged_is_replaced_and_its_task_runs() {
    use flotilla_runtime::container::Status;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let _cut = scopeguard(|| node.power_cut());
    let (id, before) = keeper_until_a_power_cut(&node, &cp);
    let name = format!("{id}-0");
    let upper = node
        .data
        .join("containers")
        .join(&before.record.id)
        .join("upper");
    std::fs::remove_dir_all(&upper).expect("its upper directory");

    let mut agent = Agent::for_node(&node).with_run_args(&["--heartbeat", "5"]);
    agent.run();
    node.wait_for(
        "a container of the task to run",
        Duration::from_secs(30),
        || {
            node.ps().iter().any(|c| {
                c.record.config.name.as_deref() == Some(&name) && c.status == Status::Running
            })
        },
    );
    let now = node.ps();
    // A new one, alone: the damaged one is gone.
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].record.id, before.record.id);
    node.wait_exec_output(&name, &["cat", "/runs"], "1\n", Duration::from_secs(10));
    let warned = || {
        agent.log().lines().any(|l| {
            l.contains("WARN")
                && l.contains(&name)
                && l.contains("its writable layer is damaged")
                && l.contains("it starts again in a new container")
        })
    };
    let start = std::time::Instant::now();
    while !warned() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no warning naming {name}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait("the task reported running", Duration::from_secs(30), || {
        cp.task(&id).state == TaskState::Running
    });

    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// Runs `f` when dropped.
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}

/// Crashes as it starts, every run: its restart policy tries again at once, then after 1 s,
/// 2 s, 4 s …
const CRASH_LOOP: &str = r#"{
  "family": "crash-loop",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 5,
    "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    "command": ["sh", "-c", "echo crashing; exit 3"]
  }]
}"#;

/// What `task inspect` shows of a container between two runs its restart policy makes: it
/// is restarting — its exit code, and when the next try is — under a running task, as `task
/// ls` says.
#[test]
fn a_container_waiting_for_its_next_restart_shows_as_restarting_with_when() {
    use flotilla_api::ops::TaskInfo;

    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(CRASH_LOOP);
    let id = cp.run_one("crash-loop");
    let mut seen = None;
    wait("a pending restart", Duration::from_secs(30), || {
        let t: TaskInfo = cp.flotilla_json(&["task", "inspect", &id]);
        let restarting = t
            .containers
            .first()
            .is_some_and(|c| c.state == ContainerState::Restarting && c.restarts >= 2);
        if restarting {
            seen = Some(t.clone());
        }
        restarting
    });
    let t = seen.expect("seen");
    let c = &t.containers[0];
    assert_eq!(t.state, TaskState::Running, "{t:?}");
    assert_eq!(c.exit_code, Some(3), "{t:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // The third try waits 2 s after the exit, the fourth 4 s: the next one is that soon.
    let at = c.restart_at.expect("when the next try is");
    assert!(
        at + 2 >= now && at <= now + 10,
        "restartAt {at}, now {now}: {t:?}"
    );
    let listed = cp.flotilla_ok(&["task", "ls"]);
    let row = listed.lines().find(|l| l.starts_with(&id)).expect("listed");
    assert!(row.contains("RUNNING"), "{listed}");
    cp.flotilla_ok(&["task", "stop", &id]);
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(20));
    // Stopped, it restarts no more: it is exited.
    let t = cp.task(&id);
    assert_eq!(t.containers[0].state, ContainerState::Exited, "{t:?}");
    node.wait_removed(Duration::from_secs(10));
    agent.kill();
    node.remove_all();
    node.assert_clean();
}

/// A task whose image cannot be pulled: its stop reason names the image once and says what
/// to do; its container never ran, so it has no logs — and `flotilla logs` says so, and why,
/// rather than that they were removed.
#[test]
fn a_task_whose_image_cannot_be_pulled_says_why_once_and_has_no_logs() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    // A registry that is not there: a local port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let image = format!("127.0.0.1:{port}/gone/app:1");
    cp.register(&format!(
        r#"{{"family": "unpullable", "networkMode": "none", "containerDefinitions": [{{
            "name": "main", "image": "{image}", "memory": 32}}]}}"#
    ));
    let id = cp.run_one("unpullable");
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(60));
    let t = cp.task(&id);
    let reason = t.stop_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "container main could not start: pulling image '{image}': registry 127.0.0.1:{port}: "
        )),
        "{reason}"
    );
    assert_eq!(reason.matches("gone/app").count(), 1, "{reason}");
    assert!(
        reason.contains(&format!(
            "; check that this node resolves and reaches 127.0.0.1:{port} over HTTPS"
        )),
        "{reason}"
    );
    let c = &t.containers[0];
    assert_eq!(
        (c.state, c.exit_code, c.reason.as_deref()),
        (ContainerState::Exited, None, Some(reason.as_str())),
        "{t:?}"
    );
    // The agent's log says it once too.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("could not start"))
        .expect("the failure logged");
    assert_eq!(line.matches("gone/app").count(), 1, "{line}");

    let o = cp.flotilla(&["logs", &id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "task {id} has no logs: its containers never started: container main could not start"
        )),
        "{err}"
    );
    assert!(!err.contains("kept"), "{err}");

    // A tag mistyped: the registry is asked first (it has no such tag, or cannot be reached),
    // then the reason names the image of the node's store it likely meant.
    cp.register(&format!(
        r#"{{"family": "mistyped", "networkMode": "none", "containerDefinitions": [{{
            "name": "main", "image": "{}", "memory": 32}}]}}"#,
        IMAGE.trim_end_matches('t')
    ));
    let id = cp.run_one("mistyped");
    wait_state(&cp, &id, TaskState::Stopped, Duration::from_secs(60));
    let reason = cp.task(&id).stop_reason.unwrap_or_default();
    assert!(
        reason.ends_with(&format!(
            "; did you mean '{IMAGE}', which this node's store holds?"
        )),
        "{reason}"
    );
    agent.kill();
    node.remove_all();
    node.assert_clean();
}
