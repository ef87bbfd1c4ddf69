//! `flotilla exec` on a real cluster: a control plane, a real agent in session, a real task of
//! two containers. A command runs in the container asked for, through the control plane and
//! the node's own session, with its output, input and exit code; with `-it` in a person's
//! terminal (a tmux pane) a shell computes, answers its window size and follows a resize, and
//! its exit code comes back. Ctrl-C and a closed terminal end the command on the node. Each
//! exec is an event naming the admin and the command; another cluster's admin and a node's
//! own certificate are refused.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;
use flotilla_tests::terminal::Terminal;
use flotilla_tests::wait;

const PAIR: &str = r#"{
  "family": "pair",
  "networkMode": "none",
  "containerDefinitions": [
    {
      "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
      "environment": [{"name": "WHO", "value": "main"}],
      "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
    },
    {
      "name": "side", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
      "environment": [{"name": "WHO", "value": "side"}],
      "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2 & wait; done"]
    }
  ]
}"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `flotilla --config DIR ARGS` with `input` on its standard input.
fn flotilla_with_input(config: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla");
    use std::io::Write as _;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("input");
    drop(stdin);
    child.wait_with_output().expect("flotilla")
}

/// Pids of processes whose command line is exactly `cmdline` (arguments joined by spaces).
fn processes(cmdline: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if text(&cmd).trim_end_matches('\0').replace('\0', " ") == cmdline {
            out.push(pid);
        }
    }
    out
}

/// A credential directory of `cp`'s cluster (its server and CA) holding another certificate
/// and key: those in `identity`.
fn mixed_credential(cp: &ControlPlane, identity: &Path, name: &str) -> std::path::PathBuf {
    let dir = cp.scratch().join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    for f in ["credential.json", "ca.pem"] {
        fs::copy(cp.admin.join(f), dir.join(f)).expect("copy");
    }
    for f in ["cert.pem", "key.pem"] {
        fs::copy(identity.join(f), dir.join(f)).expect("copy");
    }
    dir
}

#[test]
fn exec_runs_commands_in_a_tasks_container_through_the_control_plane() {
    let node = Node::new();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(PAIR);
    let task = cp.run_one("pair");
    wait("the task running", Duration::from_secs(60), || {
        cp.task(&task).state == TaskState::Running
    });

    // Without a terminal: the first container by default, output on its own streams, the
    // command's exit code.
    let o = cp.flotilla(&[
        "exec",
        &task,
        "--",
        "sh",
        "-c",
        "echo $WHO; echo oops >&2; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "main\n");
    assert_eq!(text(&o.stderr), "oops\n");
    let o = cp.flotilla(&["exec", &task, "--", "false"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let o = cp.flotilla(&["exec", "-c", "side", &task, "--", "sh", "-c", "echo $WHO"]);
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "side\n".into())
    );
    // Standard input with -i, to its end; binary and larger than one frame.
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let o = flotilla_with_input(&cp.admin, &["exec", "-i", &task, "--", "cat"], &input);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stdout == input, "cat gave back {} bytes", o.stdout.len());
    // Without -i the command reads nothing.
    let o = flotilla_with_input(&cp.admin, &["exec", &task, "--", "wc", "-c"], b"ignored");
    assert_eq!(text(&o.stdout).trim(), "0");

    // What cannot run says why, naming what is wrong.
    let o = cp.flotilla(&["exec", &task, "--", "nosuchcmd"]);
    assert_eq!(o.status.code(), Some(126));
    assert!(
        text(&o.stderr).contains("command 'nosuchcmd' not found"),
        "{}",
        text(&o.stderr)
    );
    let o = cp.flotilla(&["exec", "-c", "nope", &task, "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("has no container 'nope' (it has main, side)"),
        "{}",
        text(&o.stderr)
    );
    let o = cp.flotilla(&["exec", "-c", "x\u{1b}[31mRED", &task, "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is not a container name"),
        "{}",
        text(&o.stderr)
    );
    let o = cp.flotilla(&["exec", "t-nope", "--", "true"]);
    assert!(
        text(&o.stderr).contains("no task t-nope") && o.status.code() == Some(1),
        "{}",
        text(&o.stderr)
    );

    // With a terminal, in a person's terminal.
    let term = Terminal::open();
    let flotilla = format!(
        "{} --config {}",
        flotilla_tests::bin("flotilla").display(),
        cp.admin.display()
    );
    term.type_line(&format!("{flotilla} exec -it {task} -- sh; echo rc=$?"));
    term.wait_for("/ # ", Duration::from_secs(20));
    term.type_line("echo $((6*7))");
    let lines = |s: String| {
        s.lines()
            .map(str::trim_end)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    wait("42 on the screen", Duration::from_secs(10), || {
        lines(term.screen()).iter().any(|l| l == "42")
    });
    term.type_line("stty size");
    wait("the window size", Duration::from_secs(10), || {
        lines(term.screen()).iter().any(|l| l == "50 200")
    });
    term.resize(100, 30);
    term.type_line("stty size");
    wait("the new window size", Duration::from_secs(10), || {
        lines(term.screen()).iter().any(|l| l == "30 100")
    });
    // Ctrl-C is the command's: it interrupts the shell's foreground job, not flotilla.
    term.type_line("sleep 3001");
    wait("sleep 3001 running", Duration::from_secs(10), || {
        !processes("sleep 3001").is_empty()
    });
    term.ctrl_c();
    wait("sleep 3001 interrupted", Duration::from_secs(10), || {
        processes("sleep 3001").is_empty()
    });
    term.type_line("exit 3");
    term.wait_for("rc=3", Duration::from_secs(10));

    // Without a terminal Ctrl-C ends flotilla, and the node hangs the command up.
    term.type_line(&format!("{flotilla} exec {task} -- sleep 3002; echo rc=$?"));
    wait("sleep 3002 running", Duration::from_secs(10), || {
        !processes("sleep 3002").is_empty()
    });
    term.ctrl_c();
    term.wait_for("rc=130", Duration::from_secs(10));
    wait("sleep 3002 ended", Duration::from_secs(10), || {
        processes("sleep 3002").is_empty()
    });
    // A closed terminal ends a command on a terminal, even one that ignores the hang-up
    // (killed after the grace).
    term.type_line(&format!(
        "{flotilla} exec -it {task} -- sh -c 'trap \"\" HUP; sleep 3003'"
    ));
    wait("sleep 3003 running", Duration::from_secs(10), || {
        !processes("sleep 3003").is_empty()
    });
    term.close();
    wait("sleep 3003 ended", Duration::from_secs(20), || {
        processes("sleep 3003").is_empty()
    });
    // No exec helper (a shim with a command after `--`) is left behind either, nor a
    // console socket.
    let data = node.data.display().to_string();
    wait("no exec helper left", Duration::from_secs(10), || {
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| {
                let cmd = text(&fs::read(e.path().join("cmdline")).unwrap_or_default());
                !(cmd.contains("flotilla-shim") && cmd.contains(&data) && cmd.contains("\0--\0"))
            })
    });
    let left: Vec<_> = ["containers", "libcontainer"]
        .iter()
        .flat_map(|d| {
            fs::read_dir(node.data.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .flat_map(|c| fs::read_dir(c.path()).into_iter().flatten().flatten())
        .filter(|f| {
            let n = f.file_name().to_string_lossy().into_owned();
            n.starts_with("console-") || n.starts_with("tenant-tty-")
        })
        .map(|f| f.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // An operator who goes away at once — before the command started, or just after —
    // leaves nothing running.
    for ms in [20, 30, 40, 50, 60, 80, 100, 150] {
        let _ = Command::new("timeout")
            .args(["-s", "TERM", &format!("{}", ms as f64 / 1000.0)])
            .arg(flotilla_tests::bin("flotilla"))
            .arg("--config")
            .arg(&cp.admin)
            .args(["exec", &task, "--", "sleep", "3005"])
            .output()
            .expect("timeout");
    }
    wait("no sleep 3005 left", Duration::from_secs(15), || {
        processes("sleep 3005").is_empty()
    });

    // Every exec is an event naming the admin and the command.
    let events = cp.flotilla_ok(&["events", "--kind", "task.exec", "--subject", &task]);
    for want in [
        r#"runs sh -c "echo $WHO; echo oops >&2; exit 7" in container main"#,
        "runs sh -c \"echo $WHO\" in container side",
        "runs sh in container main",
    ] {
        assert!(events.contains(want), "{want}\n{events}");
    }
    assert!(events.contains("admin admin runs"), "{events}");
    assert!(
        !events.contains("nope"),
        "a refused exec is no event:\n{events}"
    );

    // Another cluster's admin, and this cluster's node certificate, are refused.
    let other = ControlPlane::start(&[]);
    let foreign = mixed_credential(&cp, &other.admin, "foreign");
    let nodes = mixed_credential(&cp, &agent.identity(), "node-cert");
    let before = processes("echo should-not-run");
    for (config, says) in [
        (&foreign, ""),
        (
            &nodes,
            "an admin client certificate of this cluster is required",
        ),
    ] {
        let o = Command::new(flotilla_tests::bin("flotilla"))
            .arg("--config")
            .arg(config)
            .args(["exec", &task, "--", "echo", "should-not-run"])
            .output()
            .expect("flotilla");
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
        assert!(!text(&o.stdout).contains("should-not-run"));
    }
    assert_eq!(processes("echo should-not-run"), before);
    let events = cp.flotilla_ok(&["events", "--kind", "task.exec"]);
    assert!(!events.contains("should-not-run"), "{events}");

    // A command outlives neither its exec nor the agent that runs it: the agent killed, its
    // helper hangs the command up.
    let mut exec = Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&cp.admin)
        .args(["exec", &task, "--", "sleep", "3006"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla");
    wait("sleep 3006 running", Duration::from_secs(10), || {
        !processes("sleep 3006").is_empty()
    });
    agent.kill();
    wait(
        "sleep 3006 ended with its agent",
        Duration::from_secs(15),
        || processes("sleep 3006").is_empty(),
    );
    let _ = exec.kill();
    let _ = exec.wait();
    node.remove_all();
    node.assert_clean();
}
