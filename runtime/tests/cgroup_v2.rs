//! The cgroup v2 path, on a host that mounts v1 controllers: the limits a container asks for go
//! through the same spec and libcgroups' own v2 manager that run on a v2 host, into a directory
//! laid out like a v2 hierarchy; detection is checked against the real cgroup2 mount here.
//! The real v2 kernel is the tests crate's `cgroup_v2` suite (a QEMU guest).

use std::fs;
use std::path::{Path, PathBuf};

use flotilla_runtime::container::spec::{self, ImageProcess, ResolvedUser, SpecInput};
use flotilla_runtime::container::{CgroupHierarchy, ContainerConfig, Resources};
use libcgroups::common::{CgroupManager, CgroupSetup, ControllerOpt};

const ID: &str = "0123456789abcdef0123456789abcdef";

fn v2_layout(root: &Path, rel: &str) -> PathBuf {
    fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .expect("write");
    fs::write(root.join("cgroup.subtree_control"), "").expect("write");
    let dir = root.join(rel);
    fs::create_dir_all(&dir).expect("mkdir");
    for f in [
        "cgroup.procs",
        "cgroup.controllers",
        "cgroup.subtree_control",
        "cpu.weight",
        "cpu.max",
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "pids.max",
    ] {
        fs::write(dir.join(f), "").expect("write");
    }
    fs::write(
        dir.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .expect("write");
    dir
}

#[test]
fn limits_land_in_v2_files_through_libcgroups() {
    let root = tempfile::tempdir().expect("tmp");
    let rel = format!("flotilla/n1/{ID}");
    let dir = v2_layout(root.path(), &rel);
    let config = ContainerConfig {
        image: "busybox".into(),
        command: Some(vec!["true".into()]),
        resources: Resources {
            cpu_units: Some(512),
            cpu_limit_millis: Some(250),
            memory: Some(64 << 20),
            memory_reservation: Some(32 << 20),
            pids: Some(50),
        },
        ..Default::default()
    };
    let bounding = spec::capabilities_from_mask(u64::MAX);
    let oci = spec::build(&SpecInput {
        id: ID,
        config: &config,
        image: &ImageProcess::default(),
        user: &ResolvedUser::default(),
        cwd: Path::new("/"),
        rootfs: Path::new("/unused"),
        cgroup_path: &format!("/{rel}"),
        mounts: &[],
        cgroup_v2: true,
        swap_accounting: true,
        bounding: &bounding,
        nofile_hard: None,
    })
    .expect("spec");
    let resources = oci
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .expect("resources");
    let manager =
        libcgroups::v2::manager::Manager::new(root.path().to_path_buf(), PathBuf::from(&rel))
            .expect("manager");
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .expect("apply");
    let read = |f: &str| {
        fs::read_to_string(dir.join(f))
            .expect("read")
            .trim()
            .to_string()
    };
    // shares → weight by the logarithmic mapping of current OCI runtimes (1024 → 100, the
    // v2 default; 512 → 59)
    assert_eq!(read("cpu.weight"), "59");
    assert_eq!(read("cpu.max"), "25000 100000");
    assert_eq!(read("memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("memory.low"), (32u64 << 20).to_string());
    // memory + swap = memory: no swap
    assert_eq!(read("memory.swap.max"), "0");
    assert_eq!(read("pids.max"), "50");

    // usage is read back from the v2 files
    fs::write(dir.join("cpu.stat"), "usage_usec 2000\n").expect("write");
    fs::write(dir.join("memory.current"), "1048576\n").expect("write");
    fs::write(dir.join("memory.events"), "oom 1\noom_kill 1\n").expect("write");
    fs::write(dir.join("pids.current"), "2\n").expect("write");
    let h = CgroupHierarchy::V2 {
        root: root.path().to_path_buf(),
    };
    let u = h.usage(&format!("/{rel}")).expect("usage");
    assert_eq!(
        (u.cpu_ns, u.memory_bytes, u.oom_kills, u.pids),
        (2_000_000, 1 << 20, 1, 2)
    );
    assert_eq!((u.memory_limit, u.pids_limit), (Some(64 << 20), Some(50)));

    // on v2 the container gets a private cgroup namespace (it sees its own cgroup as `/`)
    let namespaces = oci
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .expect("namespaces");
    assert!(namespaces
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup));
}

#[test]
fn detection_matches_libcgroups() {
    // Every cgroup2 mount is recognized as unified by libcgroups' own detection …
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cgroup2: Vec<&str> = info
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert!(!cgroup2.is_empty(), "no cgroup2 mount on this host");
    for m in cgroup2 {
        assert!(
            matches!(
                libcgroups::common::get_cgroup_setup_with_root(Path::new(m)),
                Ok(CgroupSetup::Unified)
            ),
            "{m}"
        );
    }
    // … and the hierarchy Flotilla reads is the one libcontainer will use.
    let setup = libcgroups::common::get_cgroup_setup().expect("setup");
    let h = CgroupHierarchy::detect().expect("detect");
    assert_eq!(
        h.is_v2(),
        matches!(setup, CgroupSetup::Unified),
        "{setup:?}"
    );
}
