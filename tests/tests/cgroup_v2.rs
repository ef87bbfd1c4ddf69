//! The node on a real cgroup v2 kernel: Debian's kernel booted under QEMU with the unified
//! hierarchy only (see `flotilla_tests::vm`), this workspace's binaries and tests run inside.
/// Every test here boots a guest: named `under_qemu::…`, so that `cargo test -- --skip
/// under_qemu::` leaves them out and `-- under_qemu::` runs them alone.
mod under_qemu {
    use std::time::Duration;

    use flotilla_tests::vm::{Disk, Init, Vm, VmOptions};

    /// The newest test executable of this workspace named `name` (`containers` →
    /// `target/debug/deps/containers-HASH`), built by the same `cargo test` as this one.
    fn test_binary(name: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let exe = std::env::current_exe().expect("test executable");
        let deps = exe.parent().expect("deps dir");
        let prefix = format!("{name}-");
        let found = std::fs::read_dir(deps)
            .expect("reading deps dir")
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix(&prefix)
                    .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                    && e.metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
            .unwrap_or_else(|| panic!("no {name} test executable next to {}", exe.display()));
        // `cargo test --test cgroup_v2` alone does not rebuild it: refuse to run an old one.
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(format!("{name}.rs"));
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        assert!(
            modified(&found) >= modified(&source),
            "{} is older than {}: build it first (cargo test -p flotilla-tests --no-run)",
            found.display(),
            source.display()
        );
        found
    }

    /// The tests of `containers.rs` whose subject the cgroup version changes: limits and OOM,
    /// pids, CPU quota with stats, the device allowlist (an eBPF program on v2) and capabilities,
    /// exec joining the container's cgroup — each also checks that nothing is left behind. The whole
    /// file passes in the guest too (about 400 s under TCG; run it with `VM_SUITE=all`), but the rest
    /// does not depend on the cgroup version: volumes, binds and tmpfs, a run's output and exit codes,
    /// and containers re-adopted by a new agent (found by their records and pids; the power cut
    /// below starts a node's containers again on v2).
    const V2_SUBJECTS: &[&str] = &[
        "memory_limit_oom_kills_and_is_reported",
        "pids_limit_stops_a_fork_bomb",
        "cpu_limit_holds_a_busy_loop_near_its_share",
        "default_hardening_applies",
        "exec_joins_a_running_container_with_its_restrictions",
    ];

    #[test]
    fn the_container_suite_passes_on_v2() {
        flotilla_tests::require_root();
        let suite = test_binary("containers");
        let filter = if std::env::var("VM_SUITE").as_deref() == Ok("all") {
            String::new()
        } else {
            format!("--exact {}", V2_SUBJECTS.join(" "))
        };
        let mut vm = Vm::start(VmOptions {
            script: format!(
                "cd /vm/data && {} --test-threads=2 {filter} 2>&1\n",
                suite.display()
            ),
            ..Default::default()
        })
        .expect("boot");
        let out = vm.wait(Duration::from_secs(1200)).expect("script");
        assert_eq!(out.exit, 0, "{}", out.log);
        if filter.is_empty() {
            return;
        }
        for name in V2_SUBJECTS {
            assert!(
                out.log.contains(&format!("test {name} ... ok")),
                "{name} did not pass in the guest:\n{}",
                out.log
            );
        }
    }

    /// The guest has the unified hierarchy only (checked first, in the same boot), and
    /// `task_limits.rs` passes in it: a task's cgroup on the unified hierarchy (controllers
    /// enabled down to it, `memory.max`, `cpu.max`), its containers' cgroups inside it sharing
    /// its memory, and the cgroup gone with the task.
    #[test]
    fn on_the_unified_hierarchy_only_task_limits_hold() {
        flotilla_tests::require_root();
        let suite = test_binary("task_limits");
        let mut vm = Vm::start(VmOptions {
            script: format!(
                "set -e\n\
             echo \"fs=$(stat -f -c %T /sys/fs/cgroup)\"\n\
             echo \"controllers=$(cat /sys/fs/cgroup/cgroup.controllers)\"\n\
             echo \"self=$(cat /proc/self/cgroup)\"\n\
             echo \"data=$(stat -f -c %T /vm/data)\"\n\
             cd /vm/data && {} --test-threads=1 2>&1\n",
                suite.display()
            ),
            ..Default::default()
        })
        .expect("boot");
        let out = vm.wait(Duration::from_secs(1200)).expect("script");
        let line = |key: &str| {
            out.log
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} line:\n{}", out.log))
                .to_string()
        };
        assert_eq!(line("fs="), "cgroup2fs", "{}", out.log);
        let controllers = line("controllers=");
        for c in ["cpu", "memory", "pids", "io"] {
            assert!(controllers.split(' ').any(|x| x == c), "{c}: {}", out.log);
        }
        assert_eq!(line("self="), "0::/", "{}", out.log);
        assert_eq!(line("data="), "tmpfs", "{}", out.log);
        assert_eq!(out.exit, 0, "{}", out.log);
        for name in [
            "task_level_cpu_and_memory_limit_the_task_as_a_whole",
            "a_tasks_containers_share_its_memory",
        ] {
            assert!(
                out.log.contains(&format!("test {name} ... ok")),
                "{name} did not pass in the guest:\n{}",
                out.log
            );
        }
    }

    /// The task definition the node keeps running through restarts and power cuts.
    const PINNED: &str = r#"{
  "family": "kiosk",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait; done"]
  }]
}"#;

    /// The node's containers as `nodeagent ctr ps -o json` lists them.
    fn containers(json: &str, log: &str) -> Vec<flotilla_runtime::container::ContainerInfo> {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("ctr ps: {e}: {json}\n{log}"))
    }

    /// The edge promise, on a real machine's life: Flotilla installed with `scripts/install.sh`,
    /// both daemons started by systemd from the installed units on the unified hierarchy, two
    /// tasks running; `systemctl restart nodeagent` leaves their containers alone; then the power
    /// is cut, and the node boots again with no control plane: the agent, started by systemd,
    /// runs both tasks again — each once, in its container from before the cut.
    #[test]
    fn after_a_power_cut_the_node_runs_its_tasks_again() {
        flotilla_tests::require_root();
        let scratch = tempfile::tempdir().expect("tempdir");
        let disk = Disk::create(&scratch.path().join("disk.img"), 3072).expect("disk");
        let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace")
            .to_path_buf();
        let bin_dir = flotilla_tests::bin("nodeagent")
            .parent()
            .expect("bin dir")
            .to_path_buf();

        // First boot: install, enrol, run two tasks, restart the agent, then wait for the cut.
        let first = format!(
            r#"set -eu
trap 'journalctl -u nodeagent -u orchestratord --no-pager | tail -40' EXIT
cd {workspace}
BIN_DIR={bin_dir} scripts/install.sh > /dev/null
orchestratord init --advertise 127.0.0.1 > /dev/null
systemctl enable --now orchestratord
for i in $(seq 200); do flotilla token ls > /dev/null 2>&1 && break; sleep 0.5; done
token=$(flotilla -o json token create | grep -o 'FLT1-[A-Za-z0-9_.-]*' | head -1)
nodeagent ctr image import /vm/out/layout --name test/busybox:latest > /dev/null
nodeagent join 127.0.0.1 --token "$token"
systemctl enable --now nodeagent
flotilla taskdef register /vm/out/kiosk.json > /dev/null
flotilla task run kiosk --count 2 > /dev/null
for i in $(seq 300); do
  [ "$(flotilla task ls | awk '$4 == "RUNNING"' | wc -l)" = 2 ] && break; sleep 1
done
flotilla task ls
[ "$(flotilla task ls | awk '$4 == "RUNNING"' | wc -l)" = 2 ]
nodeagent ctr ps -o json > /vm/out/before.json
systemctl restart nodeagent
systemctl is-active nodeagent
nodeagent ctr ps -o json > /vm/out/restarted.json
echo "agent $(cat /proc/$(systemctl show -p MainPID --value nodeagent)/cgroup)"
for pid in $(nodeagent ctr ps -o json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$'); do
  echo "container $(cat /proc/$pid/cgroup)"
done
sync
echo ready > /vm/out/ready
sleep 3600
"#,
            workspace = workspace.display(),
            bin_dir = bin_dir.display(),
        );
        let (ready, before, restarted) = {
            let mut vm = Vm::start(VmOptions {
                init: Init::Systemd,
                script: first,
                disk: Some(&disk),
                data_at: "/var/lib/flotilla",
                ..Default::default()
            })
            .expect("boot");
            write_layout(vm.out());
            std::fs::write(vm.out().join("kiosk.json"), PINNED).expect("taskdef");
            let ready = vm.wait_file("ready", Duration::from_secs(900));
            let read = |n: &str| std::fs::read_to_string(vm.out().join(n)).unwrap_or_default();
            let got = (
                ready.map(|_| vm.log()),
                read("before.json"),
                read("restarted.json"),
            );
            if got.0.is_err() {
                panic!("first boot: {:?}", got.0);
            }
            // The power cut: QEMU killed, no shutdown.
            vm.power_cut().expect("power cut");
            got
        };
        let log = ready.expect("first boot");
        let before = containers(&before, &log);
        assert_eq!(before.len(), 2, "{log}");
        let restarted = containers(&restarted, &log);
        // The agent in its unit's cgroup, the containers beside systemd's slices (ARCHITECTURE.md,
        // "cgroups"), as the guest's root namespace sees them.
        assert!(
            log.contains("agent 0::/system.slice/nodeagent.service"),
            "{log}"
        );
        // (`ctr ps -o json` names each container's init and shim pids: the inits are in their
        // containers' cgroups, the shims stay in the unit's.)
        let cgroups: std::collections::BTreeSet<&str> = log
            .lines()
            .filter_map(|l| l.strip_prefix("container 0::/"))
            .collect();
        assert_eq!(
            cgroups
                .iter()
                .filter(|c| c.starts_with("flotilla/vm/"))
                .count(),
            2,
            "{log}"
        );
        assert!(
            cgroups
                .iter()
                .all(|c| c.starts_with("flotilla/vm/") || *c == "system.slice/nodeagent.service"),
            "{log}"
        );
        let pids = |c: &[flotilla_runtime::container::ContainerInfo]| {
            let mut p: Vec<(String, Option<i32>)> = c
                .iter()
                .map(|c| (c.record.display_name(), c.pid()))
                .collect();
            p.sort();
            p
        };
        assert_eq!(
            pids(&before),
            pids(&restarted),
            "systemctl restart nodeagent changed the containers\n{log}"
        );

        // Second boot, the control plane masked: the node alone.
        let second = r#"set -u
trap 'journalctl -u nodeagent --no-pager | tail -40' EXIT
for i in $(seq 300); do
  [ "$(nodeagent ctr ps -q | wc -l)" -ge 2 ] && break; sleep 1
done
sleep 5
systemctl is-active nodeagent
systemctl is-active orchestratord || true
nodeagent ctr ps -a -o json > /vm/out/after.json
journalctl -u nodeagent --no-pager | grep -c 'it starts again' > /dev/null && echo "it starts again"
"#;
        let mut vm = Vm::start(VmOptions {
            init: Init::Systemd,
            script: second.into(),
            disk: Some(&disk),
            data_at: "/var/lib/flotilla",
            mask: &["orchestratord.service"],
            ..Default::default()
        })
        .expect("boot again");
        let out_dir = vm.out().to_path_buf();
        let out = vm.wait(Duration::from_secs(900)).expect("second boot");
        let after = containers(
            &std::fs::read_to_string(out_dir.join("after.json")).unwrap_or_default(),
            &out.log,
        );
        let running: Vec<_> = after
            .iter()
            .filter(|c| c.status == flotilla_runtime::container::Status::Running)
            .collect();
        assert_eq!(running.len(), 2, "{}\n{after:#?}", out.log);
        // The lost containers started again in place: the same two, nothing beside them.
        assert_eq!(after.len(), 2, "{}\n{after:#?}", out.log);
        let ids = |c: &[flotilla_runtime::container::ContainerInfo]| {
            let mut ids: Vec<String> = c.iter().map(|c| c.record.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(&after),
            ids(&before),
            "not the containers from before the power cut\n{}",
            out.log
        );
        assert!(
            out.log.contains("it starts again"),
            "the agent said nothing of the lost containers\n{}",
            out.log
        );
        // Each in its task's cgroup again, made anew after the cut.
        for c in &running {
            let name = c.record.display_name();
            let task = name.rsplit_once('-').map_or("", |(t, _)| t);
            assert_eq!(
                c.record.cgroup_path,
                format!("/flotilla/vm/{task}/{}", c.record.id),
                "{name}"
            );
        }
        let mut names: Vec<String> = running.iter().map(|c| c.record.display_name()).collect();
        names.sort();
        let mut old: Vec<String> = before.iter().map(|c| c.record.display_name()).collect();
        old.sort();
        assert_eq!(names, old, "the same two tasks, each once");
        assert!(out.log.starts_with("active\n"), "{}", out.log);
        assert!(
            out.log.contains("\nmasked\n") || out.log.contains("\ninactive\n"),
            "{}",
            out.log
        );
    }

    /// The test image as an OCI layout at `dir/layout`.
    fn write_layout(dir: &std::path::Path) {
        use flotilla_tests::image::{busybox_image, write_layout};
        let spec = busybox_image(flotilla_tests::host_arch());
        write_layout(&dir.join("layout"), "test", &spec).expect("layout");
    }
}
