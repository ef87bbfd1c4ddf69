//! Containers for real: `nodeagent ctr` runs busybox through libcontainer as root, with cgroup
//! limits, the default hardening, volumes and logs, and re-adopts containers after its own
//! processes are killed. Every test checks that nothing is left behind.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flotilla_runtime::container::Status;
use flotilla_tests::node::{Node, IMAGE};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_reports_output_and_exit_codes_and_cleans_up() {
    let node = Node::new();
    let o = node.ctr(&["run", "--rm", IMAGE, "echo", "hi"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hi\n");

    let o = node.ctr(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));

    let o = node.ctr(&["run", "--rm", IMAGE, "/bin/nope"]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("/bin/nope") && err.contains("not found"),
        "{err}"
    );
    node.assert_clean();

    // A bad setting is refused before anything is created, naming the field.
    let o = node.ctr(&["run", "--rm", "-w", "/proc/self/fd/3", IMAGE, "true"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("working directory"), "{}", stderr(&o));
    node.assert_clean();
}

#[test]
fn a_mistyped_data_directory_is_named_and_nothing_is_made_there() {
    let node = Node::bare();
    assert!(!node.data.exists());
    for args in [
        &["ps"][..],
        &["inspect", "web"],
        &["logs", "web"],
        &["rm", "web"],
        &["image", "ls"],
        &["image", "prune"],
        &["volume", "ls"],
    ] {
        let o = node.ctr(args);
        assert_eq!(o.status.code(), Some(1), "ctr {args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("no data directory at") && err.contains(&*node.data.to_string_lossy()),
            "ctr {args:?}: {err}"
        );
        assert!(
            !node.data.exists(),
            "ctr {args:?} made {}",
            node.data.display()
        );
    }
    // What brings something onto the node makes it.
    node.ctr_ok(&["volume", "create", "v"]);
    assert!(node.data.is_dir());
    node.ctr_ok(&["volume", "rm", "v"]);
    // Whatever else lands among the containers (by hand, by a tool) does not stop the node
    // from listing them.
    let containers = node.data.join("containers");
    std::fs::write(containers.join("restarts.json"), "{}").expect("stray file");
    std::fs::create_dir(containers.join("junk")).expect("stray dir");
    std::fs::write(containers.join("junk").join("container.json"), "{}").expect("record");
    assert_eq!(node.ctr_ok(&["ps", "-a", "-q"]), "");
    std::fs::remove_file(containers.join("restarts.json")).expect("rm");
    std::fs::remove_dir_all(containers.join("junk")).expect("rm");
}

#[test]
fn detached_lifecycle_stop_kill_rm() {
    let node = Node::new();
    let script = "trap 'echo bye; exit 42' TERM; echo up; while true; do sleep 0.1 & wait; done";
    let id = node
        .ctr_ok(&["run", "-d", "--name", "svc", IMAGE, "sh", "-c", script])
        .trim()
        .to_string();
    assert_eq!(id.len(), 32);
    node.wait_for("output", Duration::from_secs(5), || {
        node.ctr_ok(&["logs", "svc"]).contains("up")
    });
    let info = node.inspect("svc");
    assert_eq!(info.status, Status::Running);
    let pid = info.pid().expect("pid");
    assert!(fs::metadata(format!("/proc/{pid}")).is_ok());
    // a second container cannot take the name
    let o = node.ctr(&["run", "-d", "--name", "svc", IMAGE, "true"]);
    assert!(stderr(&o).contains("already used"), "{}", stderr(&o));
    // running containers are not removed without force
    let o = node.ctr(&["rm", "svc"]);
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));

    let out = node.ctr_ok(&["stop", "-t", "5", "svc"]);
    assert!(out.contains("exited 42"), "{out}");
    let info = node.inspect("svc");
    assert_eq!(info.status, Status::Exited);
    assert_eq!(info.exit.map(|e| e.exit_code), Some(42));
    assert!(node.ctr_ok(&["logs", "svc"]).contains("bye"));

    // SIGKILL through `kill`: 128 + 9
    node.ctr_ok(&["run", "-d", "--name", "k", IMAGE, "sleep", "60"]);
    node.ctr_ok(&["kill", "k"]);
    node.wait_for("exit", Duration::from_secs(5), || {
        node.inspect("k").status == Status::Exited
    });
    assert_eq!(node.inspect("k").exit.map(|e| e.exit_code), Some(137));

    node.ctr_ok(&["rm", "svc", "k"]);
    node.assert_clean();
}

/// A container's exit code is its own also when it is looked at as it ends: a `ctr ps` that
/// found no exit record, then the shim gone (it writes the record just before it exits), took
/// it for a container whose shim died unseen and recorded 255 over the shim's record. Four
/// lookers poll while each of a run of short containers ends.
#[test]
fn an_exit_looked_at_as_it_happens_keeps_its_code() {
    let node = Node::new();
    for i in 0..10 {
        let name = format!("quick{i}");
        node.ctr_ok(&["run", "-d", "--name", &name, IMAGE, "sh", "-c", "exit 3"]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    node.wait_for("the exit", Duration::from_secs(10), || {
                        node.ps().iter().any(|c| {
                            c.record.config.name.as_deref() == Some(name.as_str())
                                && c.status == Status::Exited
                        })
                    })
                });
            }
        });
        let exit = node.inspect(&name).exit.expect("exit record");
        assert_eq!(
            (exit.exit_code, exit.unknown),
            (3, false),
            "{name}: {exit:?}"
        );
        node.ctr_ok(&["rm", &name]);
    }
    node.assert_clean();
}

/// The cgroups above a container's (the node's cgroup parent) are ours to remove, but only
/// with the last container: while another one is there it may start and must find them (one
/// removed between a start making it and libcontainer making the container's cgroup under it
/// fails that start). Of the last ones removed at once, one takes them.
#[test]
fn our_parent_cgroups_stay_while_a_container_is_left_and_go_with_the_last() {
    let node = Node::new();
    for name in ["a", "b", "c"] {
        node.ctr_ok(&["run", "-d", "--name", name, IMAGE, "sleep", "60"]);
    }
    node.ctr_ok(&["rm", "-f", "a"]);
    assert!(
        !node.leftover_cgroups().is_empty(),
        "the parent went with a while b and c are still there"
    );
    let removals: Vec<_> = ["b", "c"]
        .iter()
        .map(|name| {
            node.nodeagent()
                .args(["ctr", "rm", "-f", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("nodeagent")
        })
        .collect();
    for mut r in removals {
        assert!(r.wait().expect("wait").success());
    }
    node.assert_clean();
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    let node = Node::new();
    // dd allocates its whole block size and fills it: 64 MiB against a 16 MiB limit
    let o = node.ctr(&[
        "run",
        "--name",
        "oom",
        "--memory",
        "16M",
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    assert!(stderr(&o).contains("OOM"), "{}", stderr(&o));
    let info = node.inspect("oom");
    assert_eq!(info.exit.map(|e| e.oom_killed), Some(true));
    assert!(node.ctr_ok(&["ps", "-a"]).contains("OOM killed"));
    node.ctr_ok(&["rm", "oom"]);

    // On cgroup v2 (this suite also runs in a v2 guest, see cgroup_v2.rs) the container has
    // its own cgroup namespace and sees its own limits where runtimes read them.
    let v2 = flotilla_runtime::container::cgroup::CgroupHierarchy::detect()
        .expect("cgroup hierarchy")
        .is_v2();
    if v2 {
        let o = node.ctr(&[
            "run",
            "--rm",
            "--memory",
            "48M",
            "--pids",
            "64",
            "--cpu",
            "0.5",
            IMAGE,
            "sh",
            "-c",
            "cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max \
             /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.swap.max; \
             grep ' /sys/fs/cgroup ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1",
        ]);
        assert_eq!(
            stdout(&o).lines().collect::<Vec<_>>(),
            ["0::/", "50331648", "64", "50000 100000", "0", "ro"],
            "{}",
            stderr(&o)
        );
    }

    // within the limit the same command succeeds
    let o = node.ctr(&[
        "run",
        "--rm",
        "--memory",
        "128M",
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=16M count=1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    node.assert_clean();
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let node = Node::new();
    // A subshell forks until the kernel refuses; the init then waits without forking.
    node.ctr_ok(&[
        "run",
        "-d",
        "--name",
        "bomb",
        "--pids",
        "20",
        IMAGE,
        "sh",
        "-c",
        "(for i in $(seq 200); do sleep 60 & done) 2>&1; exec sleep 60",
    ]);
    node.wait_for("the fork failure", Duration::from_secs(60), || {
        node.ctr_ok(&["logs", "bomb"]).contains("can't fork")
    });
    let usage = node.stats(&["bomb"]).remove(0).usage;
    assert_eq!(usage.pids_limit, Some(20));
    let pids = usage.pids;
    assert!(
        (10..=20).contains(&pids),
        "{pids} tasks under a limit of 20"
    );
    assert_eq!(
        node.inspect("bomb").status,
        Status::Running,
        "the container itself survives"
    );
    node.ctr_ok(&["rm", "-f", "bomb"]);
    node.assert_clean();
}

#[test]
fn cpu_limit_holds_a_busy_loop_near_its_share() {
    let node = Node::new();
    node.ctr_ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "--cpu",
        "0.25",
        IMAGE,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let a = node.stats(&["busy"]).remove(0).usage.cpu_ns;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let usage = node.stats(&["busy"]).remove(0).usage;
    let b = usage.cpu_ns;
    let share = (b - a) as f64 / t.elapsed().as_nanos() as f64;
    assert!(
        (0.15..=0.35).contains(&share),
        "busy loop used {share:.2} of a core under a 0.25 limit"
    );
    assert!(usage.memory_bytes > 0);
    assert!(usage.pids >= 1);
    node.ctr_ok(&["rm", "-f", "busy"]);
    node.assert_clean();
}

#[test]
fn default_hardening_applies() {
    let node = Node::new();
    let run = |cmd: &str| {
        let o = node.ctr(&["run", "--rm", IMAGE, "sh", "-c", cmd]);
        (o.status.code(), stdout(&o), stderr(&o))
    };
    // Docker's 14 default capabilities, nothing else.
    let (_, out, _) = run("grep CapEff /proc/self/status");
    let mask = u64::from_str_radix(out.split_whitespace().nth(1).expect("mask"), 16).expect("hex");
    let want: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    assert_eq!(mask, want, "effective capabilities {mask:#x}");
    // The device allowlist (v1: the devices controller; v2: an eBPF program): any node may
    // be made, only Docker's list opened.
    // /dev/kmsg (1:11) opened write-only needs no capability, so only the allowlist refuses
    // it (nothing is written: the shell's `:>` only opens).
    let (code, out, err) = run(
        "mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo null2-written; \
         mknod /dev/kmsg2 c 1 11 && echo kmsg2-made; \
         : > /dev/kmsg2 && echo kmsg2-opened",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["null2-written", "kmsg2-made"],
        "exit {code:?}: {err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    let (_, out, _) = run("grep NoNewPrivs /proc/self/status");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // seccomp refuses what namespaces or keyrings would need
    let (_, out, _) = run("/probe syscalls");
    assert!(out.contains("unshare=EPERM"), "{out}");
    assert!(out.contains("mount=EPERM"), "{out}");
    assert!(out.contains("keyctl=EPERM"), "{out}");
    // masked and read-only kernel paths
    let (_, out, _) = run("wc -c < /proc/keys; wc -c < /proc/timer_list; ls /sys/firmware | wc -l");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0"],
        "{out}"
    );
    let (code, _, err) = run("echo 1 > /proc/sys/vm/drop_caches");
    assert_ne!(code, Some(0), "{err}");
    let (code, _, _) = run("echo 1 > /proc/sysrq-trigger");
    assert_ne!(code, Some(0));
    // nothing open above stderr
    let (_, out, _) = run("/probe fds");
    assert_eq!(out.trim(), "done", "leaked descriptors:\n{out}");
    // a new network namespace with a working loopback
    let (_, out, _) = run("cat /sys/class/net/lo/operstate; ls /sys/class/net");
    assert!(
        out.starts_with("unknown") || out.starts_with("up"),
        "lo: {out}"
    );
    assert_eq!(out.lines().nth(1), Some("lo"), "{out}");
    // privileged only when asked
    let o = node.ctr(&["run", "--rm", "--privileged", IMAGE, "/probe", "syscalls"]);
    assert!(stdout(&o).contains("unshare=ok"), "{}", stdout(&o));
    // capabilities can be dropped and added
    let o = node.ctr(&[
        "run",
        "--rm",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "KILL",
        IMAGE,
        "sh",
        "-c",
        "grep CapEff /proc/self/status",
    ]);
    assert!(stdout(&o).contains("0000000000000020"), "{}", stdout(&o));
    // a user from the image
    let o = node.ctr(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        IMAGE,
        "sh",
        "-c",
        "id -u; grep CapEff /proc/self/status",
    ]);
    assert!(
        stdout(&o).starts_with("65534\n"),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("0000000000000000"), "{}", stdout(&o));
    node.assert_clean();
}

/// `SigIgn:` and `SigBlk:` of a `/proc/<pid>/status`, as numbers.
fn signal_masks(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{status}"));
        u64::from_str_radix(line[name.len()..].trim(), 16).expect("hex mask")
    };
    (field("SigIgn:"), field("SigBlk:"))
}

#[test]
fn a_container_starts_with_the_state_of_a_fresh_process() {
    let node = Node::new();
    // Default dispositions and an empty mask: nothing of the (Rust) shim's SIGPIPE ignore.
    let status = node.ctr_ok(&["run", "--rm", IMAGE, "cat", "/proc/self/status"]);
    assert_eq!(signal_masks(&status), (0, 0), "ignored, blocked");
    // So a pipeline's writer ends when its reader is done, as on any shell.
    let o = node.ctr(&[
        "run",
        "--rm",
        IMAGE,
        "timeout",
        "10",
        "sh",
        "-c",
        "yes | head -c 1000 >/dev/null; echo DONE",
    ]);
    assert_eq!(
        (o.status.code(), stdout(&o).trim()),
        (Some(0), "DONE"),
        "{}",
        stderr(&o)
    );
    let limits = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", "ulimit -Sn; ulimit -Hn"]);
        node.ctr_ok(&args)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // Open files: systemd's default for a new process (1024:524288), not the agent's own
    // limit — the hard one capped at what the agent itself may have.
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    assert_eq!(
        limits(&[]),
        ["1024".to_string(), 524_288.min(own).to_string()]
    );
    assert_eq!(limits(&["--ulimit", "nofile=100:200"]), ["100", "200"]);
    // Above the agent's own hard limit: only CAP_SYS_RESOURCE may raise it.
    let may_raise = fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << 24) != 0);
    if own < u64::MAX / 2 {
        let above = format!("nofile=100:{}", own + 1);
        let o = node.ctr(&[
            "run",
            "--rm",
            "--ulimit",
            &above,
            IMAGE,
            "sh",
            "-c",
            "ulimit -Hn",
        ]);
        if may_raise {
            assert_eq!(stdout(&o).trim(), (own + 1).to_string(), "{}", stderr(&o));
        } else {
            assert_eq!(o.status.code(), Some(125));
            assert!(
                stderr(&o).contains(&format!(
                    "ulimit nofile: hard limit {} is above the node's {own}",
                    own + 1
                )),
                "{}",
                stderr(&o)
            );
        }
    }
    // A command run in a running container starts the same way.
    let id = node
        .ctr_ok(&["run", "-d", IMAGE, "sleep", "30"])
        .trim()
        .to_string();
    let status = node.ctr_ok(&["exec", &id, "cat", "/proc/self/status"]);
    assert_eq!(signal_masks(&status), (0, 0), "exec: ignored, blocked");
    node.ctr_ok(&["rm", "-f", &id]);
    node.assert_clean();
}

/// Zombies among the container's processes, counted from inside it.
fn zombies(node: &Node, id: &str) -> usize {
    node.ctr_ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true",
    ])
    .trim()
    .parse()
    .expect("a count")
}

#[test]
fn an_init_reaps_orphans_and_passes_signals_on() {
    let node = Node::new();
    // An orphan whose parent exec'd a program that never waits: without an init it stays a
    // zombie (PID 1 is that program), with one it is reaped.
    // (The orphan leaves a mark just before it ends: the test waits for it, not a time.)
    let script = "sh -c '(sleep 0.2; touch /done) &'; exec sleep 30";
    let plain = node
        .ctr_ok(&["run", "-d", IMAGE, "sh", "-c", script])
        .trim()
        .to_string();
    let init = node
        .ctr_ok(&["run", "-d", "--init", IMAGE, "sh", "-c", script])
        .trim()
        .to_string();
    node.wait_for(
        "the control: a zombie without an init",
        Duration::from_secs(10),
        || zombies(&node, &plain) == 1,
    );
    node.wait_for(
        "the orphan under the init done",
        Duration::from_secs(10),
        || {
            node.ctr(&["exec", &init, "sh", "-c", "test -e /done"])
                .status
                .success()
        },
    );
    // Its end comes microseconds after its mark.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(zombies(&node, &init), 0, "the init reaped the orphan");
    // `sleep` as PID 1 ignores SIGTERM; under the init it gets it and ends at once.
    let started = std::time::Instant::now();
    node.ctr_ok(&["stop", "-t", "20", &init]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let exit = node.inspect(&init).exit.expect("exit recorded");
    assert_eq!(exit.exit_code, 143, "128 + SIGTERM, as a shell reports it");
    // Real-time signals are passed on too, not fatal to the init.
    let o = node.ctr(&[
        "run",
        "--rm",
        "--init",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo got-34' 34; kill -34 1; sleep 0.3; echo still-here",
    ]);
    assert_eq!(
        (
            o.status.code(),
            stdout(&o).split_whitespace().collect::<Vec<_>>()
        ),
        (Some(0), vec!["got-34", "still-here"]),
        "{}",
        stderr(&o)
    );
    // The init holds nothing of the container's setup: a workload allowed to look into its
    // PID 1 finds only stdio there (no host /proc, no host path of the root filesystem).
    let o = node.ctr(&[
        "run",
        "--rm",
        "--init",
        "--cap-add",
        "SYS_PTRACE",
        IMAGE,
        "ls",
        "/proc/1/fd",
    ]);
    assert_eq!(
        stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "{}",
        stderr(&o)
    );
    // The command's own exit code comes through, and it is not PID 1.
    let o = node.ctr(&[
        "run",
        "--rm",
        "--init",
        IMAGE,
        "sh",
        "-c",
        "echo $$; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_ne!(stdout(&o).trim(), "1", "the command runs under the init");
    node.ctr_ok(&["rm", "-f", &plain]);
    node.ctr_ok(&["rm", "-f", &init]);
    node.assert_clean();
}

#[test]
fn shim_binary_cannot_be_written_through_proc() {
    let node = Node::new();
    let id = node
        .ctr_ok(&["run", "-d", IMAGE, "sleep", "30"])
        .trim()
        .to_string();
    let state: flotilla_runtime::container::RuntimeState = serde_json::from_slice(
        &fs::read(node.data.join("containers").join(&id).join("state.json")).expect("state"),
    )
    .expect("json");
    let shim = state.shim.pid;
    // The container's init is a fork of the shim and shares its executable until it execs
    // the workload: the file reached through /proc/<pid>/exe must sit on a read-only mount,
    // so that even a descriptor kept after every agent process ended cannot write it.
    let exe = format!("/proc/{shim}/exe");
    let path_fd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&exe)
        .expect("O_PATH open");
    let st = rustix::fs::fstatvfs(&path_fd).expect("fstatvfs");
    assert!(
        st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        "the shim binary is reachable through {exe} on a writable mount"
    );
    let err = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", path_fd.as_raw_fd()))
        .expect_err("the shim binary opened for writing");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY)),
        "{err}"
    );
    assert_eq!(
        fs::read_link(&exe).expect("exe"),
        fs::canonicalize(flotilla_tests::bin("flotilla-shim")).expect("shim binary"),
        "containers are supervised by flotilla-shim"
    );
    let bin = flotilla_tests::bin("flotilla-shim");
    let perms = fs::metadata(&bin).expect("bin").permissions();
    assert!(
        perms.mode() & 0o200 != 0,
        "the binary itself stays writable for upgrades"
    );
    node.ctr_ok(&["rm", "-f", &id]);
    node.assert_clean();
}

#[test]
fn containers_survive_killed_agents_and_are_readopted() {
    let node = Node::new();
    let script =
        "trap 'exit 42' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1 & wait; done";
    // 10 detached, 10 attached (their nodeagent process stays their launcher)
    for i in 0..10 {
        node.ctr_ok(&[
            "run",
            "-d",
            "--name",
            &format!("d{i}"),
            IMAGE,
            "sh",
            "-c",
            script,
        ]);
    }
    let mut attached = Vec::new();
    for i in 0..10 {
        attached.push(
            node.nodeagent()
                .args([
                    "ctr",
                    "run",
                    "--name",
                    &format!("a{i}"),
                    IMAGE,
                    "sh",
                    "-c",
                    script,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn attached run"),
        );
    }
    // Generous: in the cgroup v2 guest (QEMU without KVM) 20 starts take a minute.
    node.wait_for("20 running", Duration::from_secs(120), || {
        node.ps()
            .iter()
            .filter(|c| c.status == Status::Running)
            .count()
            == 20
    });
    let before: Vec<(String, i32, String)> = node
        .ps()
        .iter()
        .map(|c| {
            (
                c.record.config.name.clone().expect("name"),
                c.pid().expect("pid"),
                c.state.as_ref().expect("started").started_at.clone(),
            )
        })
        .collect();

    // kill -9 every nodeagent process of this node that is not a shim
    let data = node.data.display().to_string();
    let mut killed = 0;
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with("nodeagent"));
        if is_agent && args.contains(&data) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            killed += 1;
        }
    }
    assert_eq!(
        killed, 10,
        "the attached runs were the agent processes to kill"
    );
    for mut a in attached {
        let _ = a.wait();
    }
    let last_tick = |name: &str| -> u64 {
        node.ctr_ok(&["logs", "--tail", "1", name])
            .trim()
            .trim_start_matches("tick ")
            .parse()
            .unwrap_or(0)
    };
    let ticks: Vec<u64> = before.iter().map(|(n, _, _)| last_tick(n)).collect();
    std::thread::sleep(Duration::from_millis(800));

    // a fresh process finds all 20, same pids, same start, output still captured
    let after = node.ps();
    assert_eq!(after.len(), 20);
    for (name, pid, started) in &before {
        let c = after
            .iter()
            .find(|c| c.record.config.name.as_ref() == Some(name))
            .expect("container still listed");
        assert_eq!(c.status, Status::Running, "{name}");
        assert_eq!(c.pid(), Some(*pid), "{name} changed pid (restarted?)");
        assert_eq!(
            c.state.as_ref().map(|s| s.started_at.as_str()),
            Some(started.as_str()),
            "{name} restarted"
        );
    }
    for ((name, _, _), t) in before.iter().zip(ticks) {
        assert!(
            last_tick(name) > t,
            "{name}: no output captured after the kill"
        );
    }
    // and stopping one reports its real exit code
    let out = node.ctr_ok(&["stop", "-t", "5", "a3"]);
    assert!(out.contains("exited 42"), "{out}");
    assert_eq!(node.inspect("a3").exit.map(|e| e.exit_code), Some(42));
    node.remove_all();
    node.assert_clean();
}

#[test]
fn volumes_binds_and_tmpfs() {
    let node = Node::new();
    node.ctr_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    let o = node.ctr(&[
        "run",
        "--rm",
        "-v",
        "data:/data:ro",
        IMAGE,
        "sh",
        "-c",
        "cat /data/f; echo x > /data/g",
    ]);
    assert_eq!(stdout(&o), "kept\n");
    assert_ne!(o.status.code(), Some(0), "a read-only volume was written");
    let ls = node.ctr_ok(&["volume", "ls"]);
    assert!(ls.contains("data"), "{ls}");

    // removal is refused while a container (even a stopped one) uses it
    node.ctr_ok(&["run", "--name", "user", "-v", "data:/data", IMAGE, "true"]);
    let o = node.ctr(&["volume", "rm", "data"]);
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    node.ctr_ok(&["rm", "user"]);
    node.ctr_ok(&["volume", "rm", "data"]);
    assert!(!node.ctr_ok(&["volume", "ls"]).contains("data"));
    let o = node.ctr(&["volume", "create", "../etc"]);
    assert!(stderr(&o).contains("invalid volume name"), "{}", stderr(&o));

    // binds only below the allowed roots, symlinks resolved first
    let allowed = &node.bind_roots[0];
    fs::write(allowed.join("hello"), "from host\n").expect("write");
    let spec = format!("{}:/host:ro", allowed.display());
    let o = node.ctr(&["run", "--rm", "-v", &spec, IMAGE, "cat", "/host/hello"]);
    assert_eq!(stdout(&o), "from host\n", "{}", stderr(&o));
    let o = node.ctr(&["run", "--rm", "-v", "/etc:/host", IMAGE, "true"]);
    assert!(
        stderr(&o).contains("not below an allowed host root"),
        "{}",
        stderr(&o)
    );
    // A source that is not there is named as the bind source it is.
    let missing = allowed.join("not-there");
    let spec = format!("{}:/host", missing.display());
    let o = node.ctr(&["run", "--rm", "-v", &spec, IMAGE, "true"]);
    assert!(
        stderr(&o).contains(&format!("bind mount source {}", missing.display())),
        "{}",
        stderr(&o)
    );
    std::os::unix::fs::symlink("/etc", allowed.join("escape")).expect("symlink");
    let spec = format!("{}:/host", allowed.join("escape").display());
    let o = node.ctr(&["run", "--rm", "-v", &spec, IMAGE, "true"]);
    assert!(
        stderr(&o).contains("not below an allowed host root"),
        "{}",
        stderr(&o)
    );

    // tmpfs with a size bound; read-only root filesystem
    let o = node.ctr(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch:size=1m",
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/scratch/a bs=512k count=1 2>/dev/null && echo small-ok; \
         dd if=/dev/zero of=/scratch/b bs=1M count=2 2>/dev/null || echo big-refused; \
         touch /rootfile 2>/dev/null || echo ro-root",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("small-ok") && out.contains("big-refused") && out.contains("ro-root"),
        "{out}"
    );
    node.assert_clean();
}

#[test]
fn logs_tail_follow_and_streams() {
    let node = Node::new();
    node.ctr_ok(&[
        "run",
        "-d",
        "--name",
        "talk",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; echo warn$i >&2; done; sleep 1; echo last",
    ]);
    // -f follows until the container exits
    let o = node.ctr(&["logs", "-f", "talk"]);
    let out = stdout(&o);
    assert!(
        out.starts_with("line1\n") && out.ends_with("last\n"),
        "{out}"
    );
    assert!(!out.contains("warn"), "stderr lines went to stdout");
    assert!(stderr(&o).contains("warn5"));
    let tail = node.ctr_ok(&["logs", "--tail", "1", "talk"]);
    assert_eq!(tail, "last\n");
    let ts = node.ctr_ok(&["logs", "-t", "--tail", "1", "talk"]);
    assert!(ts.starts_with("20") && ts.contains("Z last"), "{ts}");
    // Caught mid-removal (a removal takes the logs before the record): an error naming the
    // container, not an empty answer.
    let id = node.inspect("talk").record.id;
    let logs = node.data.join("containers").join(&id).join("logs");
    fs::rename(&logs, logs.with_extension("aside")).expect("set the logs aside");
    let o = node.ctr(&["logs", "talk"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("talk: removed while its logs were read"),
        "{}",
        stderr(&o)
    );
    fs::rename(logs.with_extension("aside"), &logs).expect("put the logs back");
    node.ctr_ok(&["rm", "talk"]);
    node.assert_clean();
}

#[test]
fn ctrl_c_on_an_attached_run_stops_and_removes_the_container() {
    let node = Node::new();
    let mut child = node
        .nodeagent()
        .args(["ctr", "run", "--rm", "--name", "fg", IMAGE, "sh", "-c"])
        .arg("trap 'echo stopping; exit 3' TERM; echo ready; while true; do sleep 0.1 & wait; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    node.wait_for("the container", Duration::from_secs(10), || {
        node.ps()
            .first()
            .is_some_and(|c| c.status == Status::Running)
    });
    // Its trap is set once it said so (Running comes before the command's first line).
    node.wait_for("its trap set", Duration::from_secs(10), || {
        stdout(&node.ctr(&["logs", "fg"])).contains("ready")
    });
    if let Some(p) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::INT);
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "ctr run did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    assert_eq!(status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ready") && stdout(&out).contains("stopping"),
        "{}",
        stdout(&out)
    );
    node.assert_clean();
}

#[test]
fn image_content_stays_while_a_container_uses_it() {
    let node = Node::new();
    node.ctr_ok(&["run", "-d", "--name", "keep", IMAGE, "sleep", "60"]);
    node.ctr_ok(&["image", "rm", IMAGE]);
    node.ctr_ok(&["image", "prune"]);
    let layers = node.data.join("images/layers");
    let count = || {
        fs::read_dir(&layers)
            .expect("layers")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
            .count()
    };
    assert!(count() >= 4, "layers of a running container were collected");
    // the running container still sees its files (through its shim's mount namespace)
    let info = node.inspect("keep");
    let shim = info.state.as_ref().expect("started").shim.pid;
    let motd = format!(
        "/proc/{shim}/root{}/rootfs/etc/motd",
        node.data.join("containers").join(&info.record.id).display()
    );
    assert_eq!(
        fs::read_to_string(&motd).expect("motd"),
        "hello from flotilla\n"
    );
    node.ctr_ok(&["stop", "-t", "1", "keep"]);
    node.ctr_ok(&["rm", "keep"]);
    node.ctr_ok(&["image", "prune"]);
    assert_eq!(count(), 0, "layers outlived the last container and image");
    node.assert_clean();
}

/// Whether this process may raise hard limits (`CAP_SYS_RESOURCE`, bit 24 of `CapEff`).
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(eff.trim(), 16).expect("hex") & (1 << 24) != 0
}

#[test]
fn ulimits_apply_to_the_container() {
    let node = Node::new();
    let out = node.ctr_ok(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=100:200",
        "--ulimit",
        "nproc=50",
        IMAGE,
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; ulimit -u",
    ]);
    assert_eq!(out, "100\n200\n50\n");
    // Values too small for the runtime's own setup still mean what they say to the workload,
    // with or without an init in front of it.
    for init in [&[][..], &["--init"]] {
        let mut args = vec!["run", "--rm", "--ulimit", "nofile=1:2"];
        args.extend(init);
        args.extend([IMAGE, "sh", "-c", "ulimit -n; ulimit -Hn"]);
        assert_eq!(node.ctr_ok(&args), "1\n2\n", "{args:?}");
    }
    // No limit, as Docker writes it (-1) or as a shell says it: given where the node's own
    // hard limit allows it (core files usually), refused by name where it does not and the
    // agent may not raise it (memlock, without CAP_SYS_RESOURCE).
    let own_hard = |r| {
        rustix::process::getrlimit(r)
            .maximum
            .map_or("unlimited".to_string(), |m| m.to_string())
    };
    for (ask, resource, shell) in [
        (
            "core=-1",
            rustix::process::Resource::Core,
            "ulimit -c; ulimit -Hc",
        ),
        (
            "memlock=unlimited",
            rustix::process::Resource::Memlock,
            "ulimit -l; ulimit -Hl",
        ),
    ] {
        let o = node.ctr(&["run", "--rm", "--ulimit", ask, IMAGE, "sh", "-c", shell]);
        let (name, _) = ask.split_once('=').expect("name");
        if own_hard(resource) == "unlimited"
            || rustix::process::geteuid().is_root() && has_sys_resource()
        {
            assert_eq!(
                stdout(&o),
                "unlimited\nunlimited\n",
                "{ask}: {}",
                stderr(&o)
            );
        } else {
            assert_eq!(o.status.code(), Some(125), "{ask}");
            assert!(
                stderr(&o).contains(&format!(
                    "ulimit {name}: hard limit unlimited is above the node's"
                )),
                "{ask}: {}",
                stderr(&o)
            );
        }
    }
    // Refused before anything is made, naming the limit, the value and why.
    for (ulimit, want) in [
        ("nofiles=1", "'nofiles=1': unknown limit 'nofiles'"),
        ("cpu=0", "ulimit cpu=0: a CPU-time limit of 0 seconds kills"),
        ("nofile=+5", "ulimit nofile: '+5' is not a count"),
    ] {
        let o = node.ctr(&["run", "--rm", "--ulimit", ulimit, IMAGE, "true"]);
        assert_eq!(o.status.code(), Some(2), "{ulimit}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{ulimit}: {}", stderr(&o));
    }
    node.assert_clean();
}

#[test]
fn exec_gets_the_containers_resource_limits_user_and_directory() {
    let node = Node::new();
    node.ctr_ok(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--ulimit",
        "nofile=100:200",
        "--ulimit",
        "nproc=50",
        IMAGE,
        "sleep",
        "600",
    ]);
    node.ctr_ok(&["run", "-d", "--name", "plain", IMAGE, "sleep", "600"]);
    // (builtins only: under nproc=50 the root user's processes on the host forbid a fork)
    assert_eq!(
        node.ctr_ok(&[
            "exec",
            "limited",
            "sh",
            "-c",
            "ulimit -n; ulimit -Hn; ulimit -u"
        ]),
        "100\n200\n50\n"
    );
    // Every limit as the container's own process has it (open files 1024:524288 by
    // default, not libcontainer's 1024:1024).
    let out = node.ctr_ok(&[
        "exec",
        "plain",
        "sh",
        "-c",
        "cat /proc/self/limits; echo --; cat /proc/1/limits",
    ]);
    let (exec, init) = out.split_once("--\n").expect("two tables");
    assert_eq!(exec, init);
    assert!(exec.contains("Max open files"), "{exec}");
    // Its user and working directory too, as `docker exec` runs a command.
    node.ctr_ok(&[
        "run", "-d", "--name", "nobody", "-u", "65534", "-w", "/tmp", IMAGE, "sleep", "600",
    ]);
    assert_eq!(
        node.ctr_ok(&[
            "exec",
            "nobody",
            "sh",
            "-c",
            "id -u; pwd; grep CapEff /proc/self/status"
        ]),
        node.ctr_ok(&[
            "exec",
            "nobody",
            "sh",
            "-c",
            "id -u; pwd; grep CapEff /proc/1/status"
        ]),
    );
    assert_eq!(
        node.ctr_ok(&["exec", "nobody", "sh", "-c", "id -u; pwd"]),
        "65534\n/tmp\n",
        "runs as the container's user in its directory"
    );
    node.remove_all();
    node.assert_clean();
}

#[test]
fn exec_joins_a_running_container_with_its_restrictions() {
    let node = Node::new();
    node.ctr_ok(&[
        "run",
        "-d",
        "--name",
        "host",
        "--hostname",
        "box",
        IMAGE,
        "sleep",
        "600",
    ]);
    // The command runs as the container's process does, as `docker exec` runs it: its user,
    // working directory, environment, capabilities (none beyond the user's) and rlimits.
    node.ctr_ok(&[
        "run",
        "-d",
        "--name",
        "app",
        "-u",
        "65532:65532",
        "-w",
        "/tmp",
        "-e",
        "MODE=prod",
        "--ulimit",
        "nofile=6:8",
        "--ulimit",
        "nproc=50",
        IMAGE,
        "sleep",
        "600",
    ]);
    let o = node.ctr(&[
        "exec",
        "app",
        "sh",
        "-c",
        "id; pwd; echo $MODE; ulimit -n; ulimit -Hn; ulimit -u; grep CapEff /proc/self/status",
    ]);
    assert_eq!(
        stdout(&o),
        "uid=65532 gid=65532\n/tmp\nprod\n6\n8\n50\nCapEff:\t0000000000000000\n",
        "{}",
        stderr(&o)
    );
    node.ctr_ok(&["rm", "-f", "app"]);
    // Same namespaces (host name, pid 1 is the container's init), same hardening.
    let o = node.ctr(&[
        "exec",
        "host",
        "sh",
        "-c",
        "hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; grep NoNewPrivs /proc/self/status; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "box\nsleep 600 \nNoNewPrivs:\t1\n");
    let o = node.ctr(&["exec", "host", "/probe", "syscalls"]);
    assert!(stdout(&o).contains("unshare=EPERM"), "{}", stdout(&o));
    assert!(stdout(&o).contains("mount=EPERM"), "{}", stdout(&o));
    // In the container's cgroup (and on v2 its cgroup namespace): its pids count while it
    // runs. The container's init shows the same lines.
    let o = node.ctr(&[
        "exec",
        "host",
        "sh",
        "-c",
        "cat /proc/self/cgroup; echo --; cat /proc/1/cgroup",
    ]);
    let out = stdout(&o);
    let (own, init) = out.split_once("--\n").expect("two lists");
    assert_eq!(own, init, "{out}");
    assert!(
        own.contains("flotilla-test") || own.trim() == "0::/",
        "{out}"
    );
    // A command that runs too long is killed; one that does not exist is reported.
    let o = node.ctr(&["exec", "--timeout", "1s", "host", "sleep", "30"]);
    assert_eq!(o.status.code(), Some(124));
    assert!(stderr(&o).contains("timed out after 1s"), "{}", stderr(&o));
    let o = node.ctr(&["exec", "host", "/nope"]);
    assert_eq!(o.status.code(), Some(126));
    assert!(stderr(&o).contains("'/nope' not found"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    // Only running containers.
    node.ctr_ok(&["stop", "-t", "1", "host"]);
    let o = node.ctr(&["exec", "host", "true"]);
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    node.remove_all();
    node.assert_clean();
}

#[test]
fn a_closed_pipe_ends_ctr_commands_quietly_as_sigpipe_would() {
    let node = Node::new();
    node.ctr_ok(&["run", "-d", "--name", "quiet", IMAGE, "sleep", "600"]);
    node.ctr_ok(&["volume", "create", "v1"]);
    for args in [
        &["ps"][..],
        &["ps", "-a"],
        &["ps", "-q"],
        &["-o", "json", "ps"],
        &["inspect", "quiet"],
        &["image", "ls"],
        &["-o", "json", "image", "ls"],
        &["volume", "ls"],
        &["stats"],
        &["logs", "quiet"],
    ] {
        let mut cmd = node.nodeagent();
        cmd.arg("ctr").args(args);
        let (code, err) = flotilla_tests::with_reader_gone(cmd, 0, Duration::from_secs(20));
        assert!(err.is_empty(), "{args:?} said: {err}");
        // `logs` of a container that wrote nothing writes nothing.
        let want = if args == ["logs", "quiet"] { 0 } else { 141 };
        assert_eq!(code, Some(want), "{args:?}");
    }
    // Following a container that writes nothing: it ends once the reader has gone.
    let mut cmd = node.nodeagent();
    cmd.args(["ctr", "logs", "-f", "quiet"]);
    let (code, err) = flotilla_tests::with_reader_gone(cmd, 0, Duration::from_secs(5));
    assert!(err.is_empty(), "logs -f said: {err}");
    assert_eq!(code, Some(141));
    // An attached run whose reader goes: the container is stopped (as a pipeline's writer ends
    // by SIGPIPE) and --rm honoured. It ends at SIGTERM, so the stop waits out no grace period.
    let mut cmd = node.nodeagent();
    cmd.args([
        "ctr",
        "run",
        "--rm",
        "--name",
        "chatty",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo first; sleep 600 & wait",
    ]);
    let (code, err) =
        flotilla_tests::with_reader_gone(cmd, "first\n".len(), Duration::from_secs(20));
    assert!(err.is_empty(), "run said: {err}");
    assert_eq!(code, Some(141));
    assert!(
        !node
            .ps()
            .iter()
            .any(|c| c.record.config.name.as_deref() == Some("chatty")),
        "the attached container was left behind"
    );
    node.ctr_ok(&["rm", "-f", "quiet"]);
    node.ctr_ok(&["volume", "rm", "v1"]);
    node.assert_clean();
}

#[test]
fn exec_that_cannot_start_names_the_directory_command_and_container() {
    let node = Node::new();
    node.ctr_ok(&[
        "run", "-d", "--name", "gone", "-w", "/wd", IMAGE, "sleep", "600",
    ]);
    let o = node.ctr(&["exec", "gone", "nosuchcmd"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains("container gone") && err.contains("command 'nosuchcmd' not found"),
        "{err}"
    );
    // Its working directory removed since it started: every exec starts there (as with
    // `docker exec`), and says so.
    node.ctr_ok(&["exec", "gone", "busybox", "rmdir", "/wd"]);
    let o = node.ctr(&["exec", "gone", "true"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains("container gone")
            && err.contains("working directory /wd does not exist in the container"),
        "{err}"
    );
    node.ctr_ok(&["rm", "-f", "gone"]);
    node.assert_clean();
}

/// A container whose command is missing from its image, or is not an executable file, is
/// not started, and says so in the container's terms (libcontainer's own words named a
/// "process" and repeated "error") with Docker's exit code; nothing of it is left.
#[test]
fn run_of_a_command_the_image_lacks_names_the_command_and_leaves_nothing() {
    let node = Node::new();
    for (command, says) in [
        (
            "nosuchcmd",
            "command 'nosuchcmd' not found in the container (its PATH is /bin)",
        ),
        (
            "/etc/passwd",
            "command '/etc/passwd' is not an executable file in the container",
        ),
        ("./here", "command './here' not found in the container"),
    ] {
        let o = node.ctr(&["run", "--rm", IMAGE, command]);
        let err = stderr(&o);
        // As `docker run`: 127 not found, 126 not executable.
        let code = if says.contains("not found") { 127 } else { 126 };
        assert_eq!(o.status.code(), Some(code), "{err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.contains(says) && !last.contains("exec process"),
            "{err}"
        );
    }
    assert!(node.ps().is_empty(), "{:?}", node.ps());
    node.assert_clean();
}

/// Every regular file below `dir` that holds `needle` (links not followed).
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => todo.push(p),
                Ok(m) if m.is_file() => {
                    let bytes = fs::read(&p).unwrap_or_default();
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(p);
                    }
                }
                _ => {}
            }
        }
    }
    found
}

/// Secrets given at each start reach the container — as environment entries of its process
/// (also under `--init`) and as files on a read-only tmpfs at `/run/secrets`, with their
/// owners and modes — and never the disk: no file of the data directory holds the value
/// while the container runs or after, the host's mount table has no mount for them, and the
/// record names them only. Config files given with them are read-only at their own paths,
/// with their owners and modes — one where the image has no parent directory, one over an
/// image's file, also on a read-only root filesystem —, seen by the container's process and
/// an exec'd shell, held on no disk either, the record listing their paths. A restart gets
/// them again; a name that cannot be a file, a config the container does not list, and a
/// config where the image has a directory are refused; a shim that dies before it reads
/// them fails the start, no hang.
#[test]
fn secrets_reach_the_container_and_never_the_disk() {
    use flotilla_runtime::container::{
        ConfigFile, ContainerConfig, ContainerError, ContainerStore, SecretEnv, SecretFile,
        SecretMaterial, StoreOptions,
    };
    let node = Node::new();
    let store = ContainerStore::open(
        &node.data,
        StoreOptions {
            cgroup_parent: node.cgroup_parent.clone(),
            bind_roots: node.bind_roots.clone(),
            shim: flotilla_tests::bin("flotilla-shim"),
        },
    )
    .expect("store");
    let mut random = [0u8; 16];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).expect("random");
    let value = format!("s3cr3t-{}", hex::encode(random));
    let app_conf = format!("listen 8080 # config-{}", hex::encode(&random[..8]));
    let mut big = value.repeat(64 * 1024 / value.len() + 1).into_bytes();
    big.truncate(64 * 1024);
    let material = SecretMaterial {
        env: vec![SecretEnv {
            name: "DB_PASSWORD".into(),
            value: value.clone(),
        }],
        files: vec![
            SecretFile {
                uid: 1000,
                gid: 1000,
                mode: 0o400,
                ..SecretFile::new("db_password", value.clone())
            },
            // More than a pipe holds: the shim reads while its launcher writes.
            SecretFile::new("big", big),
        ],
        configs: vec![
            // Its directory is not in the image.
            ConfigFile {
                uid: 1000,
                gid: 1000,
                mode: 0o440,
                ..ConfigFile::new("/etc/app/app.conf", app_conf.clone())
            },
            // Over the image's file.
            ConfigFile::new("/data/keep", "kept by a config\n"),
        ],
    };
    let config = |name: &str, init: bool, command: &[&str]| ContainerConfig {
        name: Some(name.into()),
        image: IMAGE.into(),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        env: vec!["DB_PASSWORD=from-the-spec".into()],
        init,
        secrets: vec!["DB_PASSWORD".into(), "db_password".into(), "big".into()],
        configs: vec!["/etc/app/app.conf".into(), "/data/keep".into()],
        ..Default::default()
    };
    let plain = store
        .create(config(
            "sec",
            false,
            &["sh", "-c", "trap 'exit 0' TERM; sleep 60 & wait"],
        ))
        .expect("create");
    // (read-only: the configs' mount points are made in its layer all the same)
    let under_init = store
        .create(ContainerConfig {
            read_only: true,
            ..config("sec-init", true, &["sleep", "60"])
        })
        .expect("create");
    store
        .start_with(&plain.id, &material)
        .expect("start")
        .detach();
    store
        .start_with(&under_init.id, &material)
        .expect("start")
        .detach();
    let leaks = || files_holding(&node.data, value.as_bytes());
    // (the walk reads every file: the records name the secrets)
    assert!(!files_holding(&node.data, b"db_password").is_empty());
    let seen_inside = |name: &str, pid: &str| {
        let script = format!(
            "tr '\\0' '\\n' < /proc/{pid}/environ | grep '^DB_PASSWORD='; \
             cat /run/secrets/db_password; echo; \
             stat -c '%a %u:%g' /run/secrets/db_password; \
             stat -c '%a %u:%g %s' /run/secrets/big; \
             grep ' /run/secrets ' /proc/mounts; \
             echo \"exec: ${{DB_PASSWORD}}\"; \
             echo x > /run/secrets/db_password || echo read-only; \
             cat /etc/app/app.conf; echo; \
             stat -c '%a %u:%g' /etc/app/app.conf /data/keep; \
             cat /proc/{pid}/root/data/keep; \
             echo x > /etc/app/app.conf || echo read-only; \
             echo x > /data/keep || echo read-only"
        );
        let out = node.ctr_ok(&["exec", name, "sh", "-c", &script]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 13, "{name}: {out}");
        assert_eq!(lines[0], format!("DB_PASSWORD={value}"), "{name}");
        assert_eq!(lines[1], value, "{name}");
        assert_eq!(lines[2], "400 1000:1000", "{name}");
        assert_eq!(lines[3], "444 0:0 65536", "{name}");
        assert!(
            lines[4].starts_with("tmpfs /run/secrets tmpfs ro,"),
            "{name}: {}",
            lines[4]
        );
        // An exec'd command has the spec's environment, not the secret entries.
        assert_eq!(lines[5], "exec: from-the-spec", "{name}");
        assert_eq!(lines[6], "read-only", "{name}: {out}");
        // The configs: seen by the exec'd shell and, in its root, by the container's process.
        assert_eq!(lines[7], app_conf, "{name}");
        assert_eq!(lines[8], "440 1000:1000", "{name}");
        assert_eq!(lines[9], "444 0:0", "{name}");
        assert_eq!(lines[10], "kept by a config", "{name}");
        assert_eq!(lines[11..], ["read-only", "read-only"], "{name}: {out}");
    };
    seen_inside("sec", "1");
    seen_inside("sec-init", "$(pidof sleep)");

    // On the host: no mount for them, an empty directory, and the value in no file, nor in
    // the shim's command line; the record names the secrets.
    assert_eq!(node.leftover_mounts(), Vec::<String>::new());
    for sub in ["secrets", "configs"] {
        let dir = store.paths(&plain.id).dir.join(sub);
        assert_eq!(fs::read_dir(&dir).expect(sub).count(), 0, "{sub}");
    }
    assert_eq!(leaks(), Vec::<std::path::PathBuf>::new(), "while running");
    assert_eq!(
        files_holding(&node.data, app_conf.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "a config's content"
    );
    let info = node.inspect("sec");
    assert_eq!(
        info.record.config.secrets,
        ["DB_PASSWORD", "db_password", "big"]
    );
    assert_eq!(
        info.record.config.configs,
        ["/etc/app/app.conf", "/data/keep"]
    );
    let shim = info.state.expect("state").shim.pid;
    let cmdline = fs::read(format!("/proc/{shim}/cmdline")).expect("shim cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&value));

    // (the init passes SIGTERM on to `sleep`, and ends as it did: 128 + 15)
    for (name, code) in [("sec", 0), ("sec-init", 143)] {
        let exit = store.stop(name, Duration::from_secs(5)).expect("stop");
        assert_eq!(exit.map(|e| e.exit_code), Some(code), "{name}");
    }
    assert_eq!(leaks(), Vec::<std::path::PathBuf>::new(), "after the end");

    // A name that cannot be a file is refused, naming it, before anything changes.
    let bad = SecretMaterial {
        files: vec![SecretFile::new("../db_password", value.clone())],
        ..material.clone()
    };
    match store.restart_with("sec", None, &bad) {
        Err(ContainerError::Invalid(problems)) => {
            let all = problems.join("\n");
            assert!(all.contains("'../db_password'"), "{all}");
            assert!(!all.contains(&value), "{all}");
        }
        other => panic!("bad material was not refused: {other:?}"),
    }
    let unlisted = SecretMaterial {
        configs: vec![ConfigFile::new("/etc/other.conf", app_conf.clone())],
        ..material.clone()
    };
    match store.restart_with("sec", None, &unlisted) {
        Err(ContainerError::Invalid(problems)) => {
            assert_eq!(
                problems,
                [
                    "config '/etc/other.conf' is not among the container's configs \
                  (/etc/app/app.conf, /data/keep)"
                ]
            );
        }
        other => panic!("an unlisted config was not refused: {other:?}"),
    }
    assert_eq!(node.inspect("sec").restart_count, 0);

    // A restart gets them again.
    store
        .restart_with("sec", None, &material)
        .expect("restart")
        .detach();
    assert_eq!(node.inspect("sec").restart_count, 1);
    seen_inside("sec", "1");
    store.stop("sec", Duration::from_secs(5)).expect("stop");
    assert_eq!(
        leaks(),
        Vec::<std::path::PathBuf>::new(),
        "after the restart"
    );
    assert_eq!(node.leftover_mounts(), Vec::<String>::new());
    node.ctr_ok(&["rm", "sec", "sec-init"]);
    node.assert_clean();

    // A config where the image has a directory: the start is refused, saying so.
    let over_dir = store
        .create(ContainerConfig {
            configs: vec!["/data/dir".into()],
            ..config("sec-dir", false, &["true"])
        })
        .expect("create");
    let on_dir = SecretMaterial {
        configs: vec![ConfigFile::new("/data/dir", app_conf.clone())],
        ..Default::default()
    };
    match store.start_with(&over_dir.id, &on_dir) {
        Err(ContainerError::Start { message, .. }) => assert!(
            message
                .contains("its config at /data/dir cannot be mounted: the image has a directory"),
            "{message}"
        ),
        other => panic!("a config over a directory was not refused: {other:?}"),
    }
    node.assert_clean();

    let dies_at_once = ContainerStore::open(
        &node.data,
        StoreOptions {
            cgroup_parent: node.cgroup_parent.clone(),
            bind_roots: node.bind_roots.clone(),
            shim: "/bin/true".into(),
        },
    )
    .expect("store");
    let record = dies_at_once
        .create(config("sec-lost", false, &["true"]))
        .expect("create");
    match dies_at_once.start_with(&record.id, &material) {
        Err(ContainerError::Start { message, .. }) => {
            assert!(
                message.contains("handing its secret material to the shim"),
                "{message}"
            );
        }
        other => panic!("a start whose shim died was not refused: {other:?}"),
    }
    node.assert_clean();
}
