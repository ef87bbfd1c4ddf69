//! Task definitions through the real `flotilla` and `orchestratord`: ECS-shaped files in JSON
//! and YAML, revisions per family, deregistration, and invalid files refused with every path.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_api::ops::{TaskDefRevision, TaskDefStatus};
use flotilla_tests::cluster::ControlPlane;

const WEB: &str = r#"{
  "family": "web",
  "executionRoleArn": "arn:aws:iam::123456789012:role/ecsTaskExecutionRole",
  "requiresCompatibilities": ["EC2"],
  "networkMode": "bridge",
  "containerDefinitions": [
    {
      "name": "httpd",
      "image": "test/busybox:latest",
      "memory": 32,
      "essential": true,
      "command": ["httpd", "-f", "-p", "8080"],
      "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
      "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/web"}}
    }
  ]
}"#;

#[test]
fn register_revisions_inspect_and_deregister() {
    let cp = ControlPlane::start(&[]);
    let dir = cp.scratch().join("defs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("web.json");
    std::fs::write(&file, WEB).expect("write");
    let o = cp.flotilla(&["taskdef", "register", file.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "web:1");
    let warnings = String::from_utf8_lossy(&o.stderr);
    for field in [
        "$.executionRoleArn",
        "$.requiresCompatibilities",
        "$.containerDefinitions[0].logConfiguration",
    ] {
        assert!(
            warnings.contains(field),
            "no warning for {field}:\n{warnings}"
        );
    }

    // YAML on standard input, same shape: revision 2
    let yaml = "family: web\ncontainerDefinitions:\n  - name: httpd\n    image: test/busybox:latest\n    memoryReservation: 16\n    command: [sleep, '60']\n";
    let mut child = Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["taskdef", "register", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "web:2",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let list: Vec<TaskDefRevision> = cp.flotilla_json(&["taskdef", "ls"]);
    assert_eq!(list.len(), 2);
    // What `inspect` prints is the revision as the API has it.
    let latest: TaskDefRevision =
        serde_json::from_str(&cp.flotilla_ok(&["taskdef", "inspect", "web"])).expect("json");
    assert_eq!(latest, cp.api().taskdef("web").expect("web"));
    assert_eq!(latest.revision, 2);
    assert_eq!(
        latest.task_definition.container_definitions[0].memory_reservation,
        Some(16)
    );
    cp.flotilla_ok(&["taskdef", "deregister", "web:2"]);
    let latest = cp.api().taskdef("web").expect("web");
    assert_eq!(latest.revision, 1, "the newest active revision");
    let two = cp.api().taskdef("web:2").expect("web:2");
    assert_eq!(two.status, TaskDefStatus::Inactive);
    let o = cp.flotilla(&["taskdef", "inspect", "nope"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no active task definition in family nope"));
}

#[test]
fn invalid_definitions_are_refused_with_every_path() {
    let cp = ControlPlane::start(&[]);
    let bad = r#"{
      "family": "bad",
      "networkMode": "overlay",
      "containerDefinitions": [
        {"name": "a", "image": "x", "memory": -64, "cpu": "two"},
        {"name": "a", "memory": 64}
      ]
    }"#;
    let file = cp.scratch().join("bad.json");
    std::fs::write(&file, bad).expect("write");
    let o = cp.flotilla(&["taskdef", "register", file.to_str().expect("utf8")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for path in [
        "$.networkMode",
        "$.containerDefinitions[0].memory",
        "$.containerDefinitions[0].cpu",
        "$.containerDefinitions[1].image",
        "$.containerDefinitions[1].name: duplicate container name",
    ] {
        assert!(err.contains(path), "{path} not named in:\n{err}");
    }
    assert!(
        cp.flotilla_ok(&["taskdef", "ls"]).lines().count() <= 1,
        "an invalid definition was stored"
    );
    // garbage is refused, not a crash
    std::fs::write(&file, "\u{0}{{{[").expect("write");
    let o = cp.flotilla(&["taskdef", "register", file.to_str().expect("utf8")]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("$: not valid"));
    assert!(
        cp.flotilla(&["token", "ls"]).status.success(),
        "the control plane survives"
    );
}

/// The real ECS files of `api/tests/fixtures/ecs/` the way their users have them.
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures/ecs")
        .join(name)
}

#[test]
fn what_ecs_tooling_saves_registers_through_the_cli() {
    let cp = ControlPlane::start(&[]);
    let path = |name: &str| fixture(name).to_str().expect("utf8").to_string();
    // describe-task-definition output, wrapped, with its read-only fields
    let o = cp.flotilla(&[
        "taskdef",
        "register",
        &path("17-register-output-wrapped.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "nginx:1");
    let warnings = String::from_utf8_lossy(&o.stderr);
    assert!(
        warnings.contains("warning: $.taskDefinition: read as the task definition it wraps"),
        "{warnings}"
    );
    // numbers written as strings: one warning for all of them
    let o = cp.flotilla(&[
        "taskdef",
        "register",
        &path("05-nginx-reverse-proxy-links.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let warnings = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        warnings.matches("numbers written as strings").count(),
        1,
        "{warnings}"
    );
    // Terraform's container_definitions: refused without a family, saying how ...
    let terraform = path("19-terraform-container-definitions.json");
    let o = cp.flotilla(&["taskdef", "register", &terraform]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--family NAME"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // ... and registered with one, as `aws ecs register-task-definition` does.
    let o = cp.flotilla(&[
        "taskdef", "register", "--family", "warp", "--memory", "0.5 GB", &terraform,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "warp:1");
    assert_eq!(
        cp.api()
            .taskdef("warp")
            .expect("warp")
            .task_definition
            .memory,
        Some(512)
    );
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly_as_sigpipe_would() {
    let cp = ControlPlane::start(&[]);
    let file = cp.scratch().join("web.json");
    std::fs::write(&file, WEB).expect("write");
    cp.flotilla_ok(&["taskdef", "register", file.to_str().expect("utf8")]);
    for args in [
        &["taskdef", "ls"][..],
        &["-o", "yaml", "taskdef", "ls"],
        &["taskdef", "inspect", "web"],
        &["task", "ls"],
        &["node", "ls"],
        &["token", "ls"],
        &["-o", "json", "events"],
        &["events"],
        &["--help"],
    ] {
        // The reader has gone before anything is written: `flotilla … | true`.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = Command::new(flotilla_tests::bin("flotilla"))
            .arg("--config")
            .arg(&cp.admin)
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("flotilla");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.is_empty(), "{args:?} said: {err}");
        // clap prints its help itself and ignores the closed pipe.
        let want = if args == ["--help"] { 0 } else { 141 };
        assert_eq!(o.status.code(), Some(want), "{args:?}");
    }
}

#[test]
fn a_watch_ends_once_its_reader_has_gone_even_when_nothing_changes() {
    let cp = ControlPlane::start(&[]);
    for (args, keep) in [
        (&["task", "ls", "-w"][..], 1),
        (&["service", "ls", "-w"], 1),
        (&["node", "ls", "-w"], 1),
        (&["events", "-f"], 1),
        // An empty list prints nothing as JSON: the reader has gone before any write.
        (&["-o", "json", "task", "ls", "-w"], 0),
    ] {
        let mut cmd = Command::new(flotilla_tests::bin("flotilla"));
        cmd.arg("--config").arg(&cp.admin).args(args);
        // `flotilla … -w | head -c 1`: the header is read, then nothing more changes.
        let (code, err) = flotilla_tests::with_reader_gone(cmd, keep, Duration::from_secs(5));
        assert!(err.is_empty(), "{args:?} said: {err}");
        assert_eq!(code, Some(141), "{args:?}");
    }
}
