//! Stopping `flotilla dev` as a person does it, in a real terminal: a tmux pane (a pty) running
//! an interactive bash, where a typed Ctrl-C becomes SIGINT for the whole foreground job,
//! closing the terminal hangs up the session, and `| tee LOG` puts a reader in the job that
//! dies with it. With a bridge task running (a published port; its container ignores SIGTERM,
//! so only SIGKILL after its `stopTimeout` ends it), every way of stopping ends within a bounded
//! time and leaves no process, container, mount, cgroup, link, nft table or network namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_api::ops::TaskInfo;
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::free_port;
use flotilla_tests::node::Node;
use flotilla_tests::terminal::Terminal;

/// The line `flotilla dev` ends with when nothing is left.
const ALL_GONE: &str = "stopped: nothing of the dev cluster is left running";

/// One dev cluster at a time: each makes the bridge `flotilla0` and the nft table `ip flotilla`.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pids of the processes that belong to a test's cluster: those naming its scratch directory
/// on their command line (flotilla dev, the daemons, shims, tee) and those in its cgroup
/// parent (the containers' processes).
fn cluster_processes(scratch: &Path, cgroup_parent: &str) -> Vec<(u32, String)> {
    let me = scratch.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if cmd.contains(&me) || cgroup.contains(cgroup_parent) {
            out.push((pid, format!("{pid}: {}", cmd.trim_end())));
        }
    }
    out
}

/// Kills what a failed test left running (by pid, only its own cluster's processes), before
/// the node removes containers, networks, cgroups and mounts.
struct Reaper {
    scratch: PathBuf,
    cgroup_parent: String,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, _) in cluster_processes(&self.scratch, &self.cgroup_parent) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The host's shared network state, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
struct HostNetwork {
    links: Vec<String>,
    nft_tables: String,
    netns: Vec<String>,
}

impl HostNetwork {
    fn now() -> Self {
        let out = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip");
        let links = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect();
        let out = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        let nft_tables = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut netns: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        netns.sort();
        Self {
            links,
            nft_tables,
            netns,
        }
    }
}

/// How `flotilla dev` is typed.
#[derive(Clone, Copy)]
enum Typed {
    Alone,
    IntoTee,
}

/// `flotilla dev` typed into a terminal, with what it needs to be checked and cleaned up.
/// Fields drop in order: leftover processes killed, the terminal closed, then the node's
/// containers, networks, cgroups and mounts removed.
struct DevInTerminal {
    _reaper: Reaper,
    term: Terminal,
    node: Node,
    home: PathBuf,
    port: u16,
    before: HostNetwork,
}

impl DevInTerminal {
    fn start(typed: Typed) -> Self {
        let node = Node::bare();
        let home = node.scratch().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let before = HostNetwork::now();
        let reaper = Reaper {
            scratch: node.scratch().to_path_buf(),
            cgroup_parent: node.cgroup_parent.clone(),
        };
        let term = Terminal::open();
        let port = free_port();
        let mut line = format!(
            "HOME={} {} dev --data-dir {} --port {port} --cgroup-parent {}",
            home.display(),
            flotilla_tests::bin("flotilla").display(),
            node.scratch().display(),
            node.cgroup_parent
        );
        if let Typed::IntoTee = typed {
            line.push_str(&format!(
                " | tee {}",
                node.scratch().join("dev.log").display()
            ));
        }
        term.type_line(&line);
        term.wait_for("RUNNING (", Duration::from_secs(60));
        Self {
            _reaper: reaper,
            term,
            node,
            home,
            port,
            before,
        }
    }

    /// Task `id` as the control plane recorded it once `flotilla dev` has stopped — what the
    /// next run shows: its store opened by `orchestratord run` alone, with no agent to
    /// report anything more.
    fn task_as_recorded(&self, id: &str) -> TaskInfo {
        let cp = Command::new(flotilla_tests::bin("orchestratord"))
            .arg("--data-dir")
            .arg(self.node.scratch().join("cp"))
            .args(["run", "--listen", &format!("127.0.0.1:{}", self.port)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("orchestratord run");
        struct Killed(std::process::Child);
        impl Drop for Killed {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _cp = Killed(cp);
        let start = Instant::now();
        loop {
            let o = Command::new(flotilla_tests::bin("flotilla"))
                .env("HOME", &self.home)
                .env_remove("FLOTILLA_CONFIG")
                .args(["task", "inspect", id])
                .output()
                .expect("flotilla");
            if o.status.success() {
                return serde_json::from_slice(&o.stdout).expect("json");
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the control plane never answered: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The control plane holds task `id` as STOPPED, its container `web` killed (137):
    /// the stop was reported before the agent stopped.
    fn assert_recorded_as_killed(&self, id: &str) {
        let t = self.task_as_recorded(id);
        let web = t.containers.iter().find(|c| c.name == "web");
        assert!(
            t.state == TaskState::Stopped && web.and_then(|c| c.exit_code) == Some(137),
            "{t:#?}"
        );
    }

    fn flotilla(&self, args: &[&str]) -> String {
        let o = Command::new(flotilla_tests::bin("flotilla"))
            .env("HOME", &self.home)
            .env_remove("FLOTILLA_CONFIG")
            .args(args)
            .output()
            .expect("flotilla");
        assert!(
            o.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a bridge task publishing a port, whose container ignores SIGTERM (so it ends only
    /// by SIGKILL after `stop_timeout` s: 2 at least, as task definitions take it), and waits
    /// until it runs.
    fn run_bridge_task(&self, stop_timeout: u32) -> String {
        let def = self.node.scratch().join("web.json");
        std::fs::write(
            &def,
            format!(
                r#"{{"family": "web", "networkMode": "bridge", "containerDefinitions": [{{
  "name": "web", "image": "demo/busybox:latest", "memory": 32, "stopTimeout": {stop_timeout},
  "portMappings": [{{"containerPort": 80, "hostPort": 0}}],
  "command": ["sh", "-c", "trap '' TERM; mkdir -p /www; echo hi > /www/index.html; httpd -f -p 80 -h /www & wait"]
}}]}}"#
            ),
        )
        .expect("write");
        self.flotilla(&["taskdef", "register", def.to_str().expect("utf8")]);
        let placed: Vec<TaskInfo> =
            serde_json::from_str(&self.flotilla(&["task", "run", "web", "-o", "json"]))
                .expect("json");
        let id = placed[0].id.clone();
        flotilla_tests::wait("the bridge task to run", Duration::from_secs(30), || {
            let t: TaskInfo =
                serde_json::from_str(&self.flotilla(&["task", "inspect", &id])).expect("json");
            t.state == TaskState::Running
        });
        id
    }

    /// The pid of `flotilla dev`.
    fn pid(&self) -> u32 {
        let flotilla = flotilla_tests::bin("flotilla").display().to_string();
        cluster_processes(self.node.scratch(), &self.node.cgroup_parent)
            .into_iter()
            .find(|(_, cmd)| cmd.contains(&format!("{flotilla} dev ")))
            .map(|(pid, _)| pid)
            .expect("the flotilla dev process")
    }

    fn processes(&self) -> Vec<String> {
        cluster_processes(self.node.scratch(), &self.node.cgroup_parent)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Waits until no process of the cluster is left (`flotilla dev` included).
    fn wait_gone(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let left = self.processes();
            if left.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "still running {timeout:?} after the stop:\n{}\nthe terminal shows:\n{}",
                left.join("\n"),
                self.term.screen().trim_end()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// No container, mount, cgroup, state, link, nft table or network namespace is left.
    fn assert_nothing_left(&self) {
        assert_eq!(self.processes(), Vec::<String>::new(), "processes left");
        assert!(
            self.node.ps().is_empty(),
            "containers left: {:?}",
            self.node.ps()
        );
        self.node.assert_clean();
        let netns_dir = self.node.data.join("netns");
        let netns: Vec<_> = std::fs::read_dir(&netns_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(netns.is_empty(), "network namespaces left: {netns:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let scratch = self.node.scratch().display().to_string();
        let ours: Vec<&str> = mounts.lines().filter(|l| l.contains(&scratch)).collect();
        assert!(ours.is_empty(), "mounts left: {ours:#?}");
        assert_eq!(HostNetwork::now(), self.before, "network state left");
    }
}

#[test]
fn ctrl_c_in_a_terminal_stops_a_bridge_task_and_leaves_nothing() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    let id = dev.run_bridge_task(2);
    dev.term.ctrl_c();
    let took = dev.wait_gone(Duration::from_secs(30));
    let screen = dev.term.wait_for(ALL_GONE, Duration::from_secs(5));
    // The prompt is back: the shell got its terminal again.
    assert!(screen.trim_end().ends_with("term$"), "{screen}");
    dev.assert_nothing_left();
    dev.assert_recorded_as_killed(&id);
    eprintln!("Ctrl-C: everything gone {took:?} after it");
}

#[test]
fn a_second_ctrl_c_kills_the_containers_at_once_and_leaves_nothing() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    // Its container would take 60 s to be killed by its own stopTimeout.
    let id = dev.run_bridge_task(60);
    dev.term.ctrl_c();
    dev.term.wait_for("Ctrl-C again", Duration::from_secs(10));
    // A person reads it, then presses again.
    std::thread::sleep(Duration::from_millis(300));
    dev.term.ctrl_c();
    let took = dev.wait_gone(Duration::from_secs(20));
    let screen = dev.term.wait_for(ALL_GONE, Duration::from_secs(5));
    assert!(screen.contains("killing"), "{screen}");
    // The agent, not a cleanup behind its back, removed the killed container.
    assert!(!screen.contains("killing and removing"), "{screen}");
    dev.assert_nothing_left();
    dev.assert_recorded_as_killed(&id);
    eprintln!("double Ctrl-C: everything gone {took:?} after the second");
}

#[test]
fn closing_the_terminal_stops_a_bridge_task_and_leaves_nothing() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    let id = dev.run_bridge_task(2);
    dev.term.close();
    let took = dev.wait_gone(Duration::from_secs(30));
    dev.assert_nothing_left();
    dev.assert_recorded_as_killed(&id);
    // Nobody saw the stop; its log in the data directory tells how it went.
    let log = std::fs::read_to_string(dev.node.scratch().join("dev.log")).expect("dev.log");
    assert!(
        log.contains("stopping: the node's tasks")
            && log.lines().last().is_some_and(|l| l.contains(ALL_GONE)),
        "{log}"
    );
    eprintln!("closed terminal: everything gone {took:?} after it");
}

#[test]
fn ctrl_c_with_the_output_piped_into_tee_leaves_nothing() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::IntoTee);
    dev.run_bridge_task(2);
    dev.term.ctrl_c();
    let took = dev.wait_gone(Duration::from_secs(30));
    // tee died with the job: what it says while stopping comes on standard error.
    dev.term.wait_for(ALL_GONE, Duration::from_secs(5));
    dev.assert_nothing_left();
    eprintln!("Ctrl-C into tee: everything gone {took:?} after it");
}

#[test]
fn kill_pid_stops_a_bridge_task_and_leaves_nothing() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    dev.run_bridge_task(2);
    let pid = dev.pid();
    let status = Command::new("kill")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let took = dev.wait_gone(Duration::from_secs(30));
    dev.term.wait_for(ALL_GONE, Duration::from_secs(5));
    dev.assert_nothing_left();
    eprintln!("kill PID: everything gone {took:?} after it");
}

/// Sends `flotilla dev` the `signals` (`kill -NAME`), `apart` from each other, and checks
/// that they were one request to stop: the bridge task's container (which ignores SIGTERM)
/// had its whole `stopTimeout` (3 s) before SIGKILL, and nothing is left.
fn one_request(signals: &[&str], apart: Duration) {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    let id = dev.run_bridge_task(3);
    let pid = dev.pid();
    let asked = Instant::now();
    for (i, sig) in signals.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(apart);
        }
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
    dev.wait_gone(Duration::from_secs(30));
    let took = asked.elapsed();
    let log = std::fs::read_to_string(dev.node.scratch().join("dev.log")).expect("dev.log");
    // Not hurried: the container had its whole stopTimeout before SIGKILL.
    assert!(!log.contains("again:"), "{log}");
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(
        log.lines().last().is_some_and(|l| l.contains(ALL_GONE)),
        "{log}"
    );
    dev.assert_nothing_left();
    dev.assert_recorded_as_killed(&id);
}

#[test]
fn a_signal_delivered_twice_at_once_is_one_request_to_stop() {
    // As timeout(1) does: the signal to the process, then to its process group.
    one_request(&["INT", "INT"], Duration::ZERO);
}

#[test]
fn a_hang_up_then_the_sessions_sigterm_is_one_request_to_stop() {
    // A closed SSH session: the hang-up, then logind's SIGTERM to the session's processes.
    one_request(&["HUP", "TERM"], Duration::from_millis(500));
}

#[test]
fn a_control_plane_that_dies_while_the_node_drains_is_said_and_the_stop_fails() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    dev.run_bridge_task(20);
    dev.term.ctrl_c();
    dev.term.wait_for("waiting for", Duration::from_secs(10));
    let cp = cluster_processes(dev.node.scratch(), &dev.node.cgroup_parent)
        .into_iter()
        .find(|(_, cmd)| cmd.contains("orchestratord") && cmd.contains(" run "))
        .map(|(pid, _)| pid)
        .expect("the control plane");
    let status = Command::new("kill")
        .args(["-9", &cp.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    dev.wait_gone(Duration::from_secs(40));
    dev.term.type_line("echo exit=$?");
    let screen = dev.term.wait_for("exit=", Duration::from_secs(5));
    assert!(
        screen.contains("the tasks' last reports could not be recorded")
            && screen.contains("orchestratord exited")
            && screen.contains("exit=1")
            && !screen.contains(ALL_GONE),
        "{screen}"
    );
    dev.assert_nothing_left();
}

#[test]
fn closing_the_terminal_while_it_stops_still_leaves_nothing() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    dev.run_bridge_task(5);
    dev.term.ctrl_c();
    dev.term.wait_for("waiting for", Duration::from_secs(10));
    // Impatient: the window is closed mid-way; nobody sees the rest, it finishes anyway.
    dev.term.close();
    let took = dev.wait_gone(Duration::from_secs(30));
    dev.assert_nothing_left();
    eprintln!("Ctrl-C, then the terminal closed: everything gone {took:?} after it");
}

#[test]
fn ctrl_c_in_a_terminal_while_it_starts_leaves_nothing() {
    let _serial = serial();
    let node = Node::bare();
    let before = HostNetwork::now();
    let _reaper = Reaper {
        scratch: node.scratch().to_path_buf(),
        cgroup_parent: node.cgroup_parent.clone(),
    };
    let term = Terminal::open();
    term.type_line(&format!(
        "HOME={} {} dev --data-dir {} --port {} --cgroup-parent {}",
        node.scratch().display(),
        flotilla_tests::bin("flotilla").display(),
        node.scratch().display(),
        free_port(),
        node.cgroup_parent
    ));
    // While the control plane comes up and the node joins.
    std::thread::sleep(Duration::from_millis(400));
    term.ctrl_c();
    let screen = term.wait_for("stopped: ", Duration::from_secs(30));
    assert!(screen.contains(ALL_GONE), "{screen}");
    let left: Vec<String> = cluster_processes(node.scratch(), &node.cgroup_parent)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(left, Vec::<String>::new(), "processes left");
    assert!(node.ps().is_empty(), "containers left: {:?}", node.ps());
    node.assert_clean();
    assert_eq!(HostNetwork::now(), before, "network state left");
}

#[test]
fn what_is_left_behind_is_named_with_how_to_remove_it() {
    let _serial = serial();
    let dev = DevInTerminal::start(Typed::Alone);
    // Something no stop can remove: a mount below the node's data directory, not of the node.
    let stray = dev.node.data.join("stray");
    std::fs::create_dir_all(&stray).expect("mkdir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "stray"])
        .arg(&stray)
        .status()
        .expect("mount");
    assert!(status.success());
    dev.term.ctrl_c();
    dev.wait_gone(Duration::from_secs(30));
    dev.term.type_line("echo exit=$?");
    let screen = dev.term.wait_for("exit=", Duration::from_secs(5));
    let stray = stray.display();
    assert!(
        screen.contains("1 thing is left behind")
            && screen.contains(&format!("mount {stray}: umount -l {stray}"))
            && screen.contains("exit=1"),
        "{screen}"
    );
    assert!(!screen.contains(ALL_GONE), "{screen}");
    let status = Command::new("umount")
        .arg(stray.to_string())
        .status()
        .expect("umount");
    assert!(status.success());
    dev.assert_nothing_left();
}
