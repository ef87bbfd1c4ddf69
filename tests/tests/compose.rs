//! `flotilla compose` end to end, on a real control plane and a real node: a three-service
//! project shaped like awesome-compose's nginx-golang-postgres (a web front, a back end on a
//! port, a "db" with a health check the back end waits for) comes up in `depends_on` order
//! (also after a Ctrl-C while `up` waits, which says what was applied);
//! the front reaches the back end by its Compose service name; `ps`, `logs` and `exec` reach
//! them; a
//! second `up` changes nothing (no event); a changed service alone rolls out; `down` leaves
//! nothing.

use std::path::Path;
use std::time::Duration;

use flotilla_api::ops::{Event, TaskInfo};
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::Fleet;
use flotilla_tests::wait;

/// The project; `FRONT` is what the front serves (changed between two `up`s).
fn compose_file(front: &str) -> String {
    format!(
        r#"name: shop
x-small: &small
  image: test/busybox:latest
  mem_limit: 32m
  stop_grace_period: 2s
services:
  front:
    <<: *small
    command: ["sh", "-c", "mkdir -p /www && echo {front} > /www/index.html && echo serving {front} && exec httpd -f -p 80 -h /www"]
    ports: ["8080:80"]
    depends_on: [back]
  back:
    <<: *small
    command: ["sh", "-c", "mkdir -p /www && echo back says ${{GREETING:-hello}} > /www/index.html && echo back ready && exec httpd -f -p 8000 -h /www"]
    expose: ["8000"]
    depends_on:
      db:
        condition: service_healthy
  db:
    <<: *small
    command: ["sh", "-c", "echo db starting; sleep 3; touch /tmp/ready; exec httpd -f -p 5432 -h /tmp"]
    expose: [5432]
    healthcheck:
      test: ["CMD-SHELL", "[ -e /tmp/ready ]"]
      interval: 5s
      retries: 3
"#
    )
}

fn compose(fleet: &Fleet, file: &Path, args: &[&str]) -> std::process::Output {
    let mut a = vec!["compose", "-f", file.to_str().expect("utf-8 path")];
    a.extend_from_slice(args);
    fleet.cp.flotilla(&a)
}

fn compose_ok(fleet: &Fleet, file: &Path, args: &[&str]) -> (String, String) {
    let o = compose(fleet, file, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "compose {args:?}:\n{out}\n{err}");
    (out, err)
}

fn running(fleet: &Fleet, service: &str) -> Vec<TaskInfo> {
    fleet
        .cp
        .tasks()
        .into_iter()
        .filter(|t| t.service() == Some(service) && t.state == TaskState::Running)
        .collect()
}

fn events(fleet: &Fleet) -> Vec<Event> {
    fleet.cp.api().events(0, 1000).expect("events")
}

/// A running `flotilla compose logs -f SERVICE`: what it printed so far, and its standard error
/// in a file. Dropping it ends the command.
struct Follower {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err: std::path::PathBuf,
}

impl Follower {
    fn start(fleet: &Fleet, file: &Path, service: &str, err: &Path) -> Self {
        let mut child = std::process::Command::new(flotilla_tests::bin("flotilla"))
            .arg("--config")
            .arg(&fleet.cp.admin)
            .args(["compose", "-f", file.to_str().expect("utf-8 path")])
            .args(["logs", "-f", service])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(err).expect("logs -f's stderr"))
            .spawn()
            .expect("flotilla compose logs -f");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = {
            let (stdout, out) = (child.stdout.take().expect("stdout"), out.clone());
            std::thread::spawn(move || {
                for line in
                    std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
                {
                    out.lock().expect("lock").push_str(&(line + "\n"));
                }
            })
        };
        Self {
            child,
            out,
            reader: Some(reader),
            err: err.to_path_buf(),
        }
    }

    /// Waits up to 20 s for `text` in what the command printed; fails the test with all it
    /// printed, on both outputs, as soon as the command has ended.
    fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.out.lock().expect("lock").contains(text) {
            let ended = self.child.try_wait();
            assert!(
                std::time::Instant::now() < deadline && matches!(ended, Ok(None)),
                "logs -f did not print {text:?} (it {ended:?}):\n--- stdout ---\n{}--- stderr ---\n{}",
                self.out.lock().expect("lock"),
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[test]
fn a_compose_project_comes_up_in_order_reaches_by_name_updates_one_service_and_goes() {
    let fleet = Fleet::start(&[&[]]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yaml");
    std::fs::write(&file, compose_file("front v1")).expect("write");

    // `config` needs no control plane, and warns only that back's and db's expose publish
    // their ports on every address of the node.
    let (config, warnings) = compose_ok(&fleet, &file, &["config"]);
    assert!(config.contains("back says ${GREETING:-hello}") || config.contains("back says hello"));
    let warned: Vec<&str> = warnings.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warned.len(), 2, "{warnings}");
    for (line, service) in warned.iter().zip(["back", "db"]) {
        assert!(
            line.contains(&format!(
                "services.{service}.expose: published on a dynamic port of every address of the node"
            )),
            "{warnings}"
        );
    }

    // Ctrl-C while `up` waits for the db to be healthy: the db is applied and keeps running,
    // and `up` says so; nothing else was applied.
    let mut up = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&fleet.cp.admin)
        .args(["compose", "-f", file.to_str().expect("utf-8 path"), "up"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("flotilla compose up");
    let mut stderr = std::io::BufReader::new(up.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).expect("read stderr");
        seen.push_str(&line);
        if n == 0 || line.contains("waiting for db to be healthy") {
            break;
        }
    }
    assert!(seen.contains("waiting for db to be healthy"), "{seen}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&up),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    std::io::Read::read_to_string(&mut stderr, &mut seen).expect("read stderr");
    let status = up.wait().expect("wait");
    assert!(!status.success(), "{seen}");
    assert!(
        seen.contains("interrupted: project shop is applied up to db (not yet: back, front)"),
        "{seen}"
    );
    let names: Vec<String> = fleet
        .cp
        .api()
        .services()
        .expect("services")
        .into_iter()
        .map(|s| s.spec.service_name)
        .collect();
    assert_eq!(names, ["shop-db"]);

    // `up` again finishes the project, in order.
    let (out, _) = compose_ok(&fleet, &file, &["up"]);
    assert!(out.contains("unchanged  shop-db (shop-db:1)"), "{out}");
    for s in ["shop-front", "shop-back"] {
        assert!(out.contains(&format!("created    {s} ({s}:1)")), "{out}");
    }
    for s in ["shop-front", "shop-back", "shop-db"] {
        assert_eq!(running(&fleet, s).len(), 1, "{s}");
    }
    // The back end was placed only once the db had passed its health check: at least the 3 s
    // the db waits before it is ready after it started.
    let db = &running(&fleet, "shop-db")[0];
    let back = &running(&fleet, "shop-back")[0];
    assert!(back.created_at >= db.created_at + 3, "{db:?}\n{back:?}");
    let created: Vec<String> = events(&fleet)
        .into_iter()
        .filter(|e| e.kind == "service.created")
        .map(|e| e.subject)
        .collect();
    assert_eq!(created, ["shop-db", "shop-back", "shop-front"]);

    // The front reaches the back end by its Compose service name and port, as on a laptop.
    let front = running(&fleet, "shop-front").remove(0);
    let container = format!("{}-0", front.id);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let o = fleet.nodes[0].ctr(&[
            "exec",
            &container,
            "--",
            "sh",
            "-c",
            "wget -q -O - http://back:8000/ 2>&1",
        ]);
        let answer = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if answer.contains("back says hello") || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        answer.contains("back says hello"),
        "{answer}\n{}",
        fleet.cp.flotilla_ok(&["service", "inspect", "shop-back"])
    );

    // `ps` and `logs` show them.
    let (ps, _) = compose_ok(&fleet, &file, &["ps"]);
    for s in ["front", "back", "db"] {
        assert!(
            ps.lines()
                .any(|l| l.starts_with(s) && l.contains("RUNNING")),
            "{ps}"
        );
    }
    assert!(
        ps.lines()
            .any(|l| l.starts_with("db") && l.contains("healthy")),
        "{ps}"
    );
    let (page, _) = compose_ok(&fleet, &file, &["exec", "front", "cat", "/www/index.html"]);
    assert_eq!(page, "front v1\n");
    let (logs, _) = compose_ok(&fleet, &file, &["logs", "back", "db"]);
    assert!(logs.contains("back-1 | back ready"), "{logs}");
    assert!(logs.contains("db-1   | db starting"), "{logs}");

    // A second `up` with the same file changes nothing: no event at all.
    let seq = events(&fleet).last().map_or(0, |e| e.seq);
    let (out, _) = compose_ok(&fleet, &file, &["up", "-d"]);
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
    let after: Vec<Event> = events(&fleet).into_iter().filter(|e| e.seq > seq).collect();
    assert!(after.is_empty(), "{after:?}");

    // `logs -f` follows the service: the task that replaces the front's is followed too.
    let mut follow = Follower::start(&fleet, &file, "front", &dir.path().join("logs-f.stderr"));
    follow.wait_for("front-1 | serving front v1");

    // A changed front rolls out alone.
    std::fs::write(&file, compose_file("front v2")).expect("write");
    let (out, _) = compose_ok(&fleet, &file, &["up"]);
    assert!(
        out.contains("updated    shop-front (shop-front:2)"),
        "{out}"
    );
    assert!(out.contains("unchanged  shop-back (shop-back:1)"), "{out}");
    assert!(out.contains("unchanged  shop-db (shop-db:1)"), "{out}");
    wait(
        "the front on its new revision",
        Duration::from_secs(30),
        || {
            let r = running(&fleet, "shop-front");
            r.len() == 1 && r[0].task_definition == "shop-front:2"
        },
    );
    assert_eq!(running(&fleet, "shop-back")[0].id, back.id);
    assert_eq!(running(&fleet, "shop-db")[0].id, db.id);
    follow.wait_for("front-2 | serving front v2");
    drop(follow);

    // With no task of the front running (scaled to none, or between a rollout's stop and
    // start), `logs -f` waits for the next one instead of ending.
    compose_ok(&fleet, &file, &["scale", "front=0"]);
    wait("the front scaled in", Duration::from_secs(30), || {
        fleet
            .cp
            .tasks()
            .iter()
            .all(|t| t.service() != Some("shop-front") || t.state == TaskState::Stopped)
    });
    let err = dir.path().join("logs-f-waits.stderr");
    let mut follow = Follower::start(&fleet, &file, "front", &err);
    wait("logs -f saying it waits", Duration::from_secs(10), || {
        std::fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("no running task of front yet; waiting for one")
    });
    compose_ok(&fleet, &file, &["scale", "front=1"]);
    follow.wait_for("front-1 | serving front v2");
    drop(follow);

    // `down` removes what `up` made, and nothing else.
    fleet.register(
        r#"{"family": "other", "containerDefinitions": [{"name": "m", "image": "test/busybox:latest", "memory": 16}]}"#,
    );
    let (out, _) = compose_ok(&fleet, &file, &["down"]);
    assert_eq!(out.matches("removed").count(), 3, "{out}");
    wait(
        "the project's tasks stopped",
        Duration::from_secs(30),
        || {
            fleet
                .cp
                .tasks()
                .iter()
                .all(|t| t.state == TaskState::Stopped)
        },
    );
    let (ls, _) = compose_ok(&fleet, &file, &["ls"]);
    assert!(!ls.contains("shop"), "{ls}");
    assert!(fleet.cp.api().services().expect("services").is_empty());
    let defs = fleet.cp.api().taskdefs().expect("taskdefs");
    assert!(
        defs.iter()
            .filter(|d| d.family.starts_with("shop-"))
            .all(|d| d.status == flotilla_api::ops::TaskDefStatus::Inactive),
        "{defs:?}"
    );
    assert!(defs
        .iter()
        .any(|d| d.family == "other" && d.status == flotilla_api::ops::TaskDefStatus::Active));
    fleet.finish();
}

/// One-shot services run once: a seed with `restart: "no"` and a migration the app waits
/// for with `service_completed_successfully` each run to their end once — `up` does not wait
/// for them to be running, the fleet does not run them again, and an `up` that changes
/// nothing does not either.
#[test]
fn one_shot_services_run_once_and_up_waits_for_their_completion() {
    let fleet = Fleet::start(&[&[]]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yaml");
    std::fs::write(
        &file,
        r#"name: once
x-small: &small
  image: test/busybox:latest
  mem_limit: 32m
  stop_grace_period: 2s
services:
  seed:
    <<: *small
    command: ["sh", "-c", "echo seeded"]
    restart: "no"
  migrate:
    <<: *small
    command: ["sh", "-c", "echo migrated"]
  app:
    <<: *small
    command: ["sh", "-c", "exec httpd -f -p 80 -h /tmp"]
    depends_on:
      migrate:
        condition: service_completed_successfully
"#,
    )
    .expect("write");
    let (out, _) = compose_ok(&fleet, &file, &["up"]);
    assert!(out.contains("every service is running"), "{out}");
    assert_eq!(running(&fleet, "once-app").len(), 1);
    let runs = |service: &str| {
        fleet
            .cp
            .tasks()
            .into_iter()
            .filter(|t| t.service() == Some(service))
            .collect::<Vec<_>>()
    };
    // Long enough for a service that replaced them to have run them again several times.
    std::thread::sleep(Duration::from_secs(8));
    for s in ["once-seed", "once-migrate"] {
        let tasks = runs(s);
        assert_eq!(tasks.len(), 1, "{s} ran more than once: {tasks:#?}");
        assert_eq!(tasks[0].state, TaskState::Stopped, "{tasks:#?}");
        assert!(tasks[0].containers.iter().all(|c| c.exit_code == Some(0)));
        assert_eq!(fleet.cp.service(s).completed_count, 1);
    }
    let (out, _) = compose_ok(&fleet, &file, &["up", "-d"]);
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs("once-seed").len(), 1);
    assert_eq!(runs("once-migrate").len(), 1);
    compose_ok(&fleet, &file, &["down"]);
    fleet.finish();
}
