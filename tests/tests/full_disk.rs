//! Full disks: the control plane's and a node's data directories on small filesystems of their
//! own, filled to the last byte while they work. Writes fail, saying why, in the logs and to the
//! operator; what runs goes on; nothing half-written is kept; and both write again once space
//! returns, without a restart — then, restarted, both find everything they acknowledged. On a
//! node's ext4 filled while a container writes its log and a layer is unpacked: the container
//! runs on, the layer fails naming the full disk and leaves nothing half-stored, and both go on
//! once space returns. A report the control plane cannot record (its store refusing every
//! write) is sent again by the node, on the same session, until it is recorded.

use std::time::Duration;

use flotilla_api::secrets::SecretInfo;
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::disk::Tmpfs;
use flotilla_tests::image::{busybox_image, write_layout, Compression, Layer};
use flotilla_tests::node::Node;
use flotilla_tests::taskdefs::STEADY;
use flotilla_tests::{host_arch, wait};

const NO_SPACE: &str = "No space left on device";

fn running(cp: &ControlPlane, task: &str) -> bool {
    cp.task(task).state == TaskState::Running
}

#[test]
fn full_data_directories_fail_writes_clearly_and_recover_when_space_returns() {
    // The control plane's data directory moved onto 16 MiB of its own.
    let mut cp = ControlPlane::start(&[]);
    cp.stop();
    let cp_fs = Tmpfs::move_onto(&cp.data, |p| Tmpfs::mount_at(p, "16m")).expect("tmpfs");
    cp.restart();
    // The node's on 64 MiB (the test image takes about 20).
    let node_fs = Tmpfs::mount("64m").expect("tmpfs");
    let node = Node::bare_with_data(node_fs.path().join("node"));
    node.import_test_image();
    let mut agent = Agent::in_session(&cp, &node);
    cp.register(STEADY);
    let first = cp.run_one("steady");
    wait("the first task", Duration::from_secs(30), || {
        running(&cp, &first)
    });
    let first_pid = node.running()[&format!("{first}-0")];

    // The node's disk full: it refuses the desired state it cannot keep, saying why, and the
    // control plane sends it again; what runs goes on.
    node_fs.fill().expect("filling the node's disk");
    let second = cp.run_one("steady");
    agent.wait_log(
        "refused what the control plane sent",
        1,
        Duration::from_secs(30),
    );
    assert!(agent.log().contains(NO_SPACE), "{}", agent.log());
    cp.wait_log(NO_SPACE, Duration::from_secs(10));
    assert_eq!(cp.task(&second).state, TaskState::Pending);
    assert_eq!(node.running().get(&format!("{first}-0")), Some(&first_pid));
    // Space back: the next delivery is kept (the agent opened its database again).
    node_fs.release().expect("freeing the node's disk");
    wait("the second task", Duration::from_secs(40), || {
        running(&cp, &second)
    });
    assert!(
        agent.log().contains("opened again after a storage error"),
        "{}",
        agent.log()
    );

    // The control plane's disk full: a write fails, saying why, and leaves nothing behind;
    // reads go on.
    cp_fs.fill().expect("filling the control plane's disk");
    let value = cp.scratch().join("value");
    std::fs::write(&value, vec![b'x'; 60_000]).expect("value");
    let value = value.to_str().expect("utf8");
    let mut acknowledged = Vec::new();
    let refused = loop {
        let name = format!("s{}", acknowledged.len());
        let out = cp.flotilla(&["secret", "create", &name, value]);
        if !out.status.success() {
            break (name, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        acknowledged.push(name);
        assert!(acknowledged.len() < 300, "16 MiB took 300 secrets of 60 kB");
    };
    assert!(
        refused.1.contains(NO_SPACE) && refused.1.contains("500"),
        "{refused:?}"
    );
    let secrets = |cp: &ControlPlane| -> Vec<String> {
        let list: Vec<SecretInfo> = cp.flotilla_json(&["secret", "ls"]);
        list.into_iter().map(|s| s.name).collect()
    };
    let listed = secrets(&cp);
    assert!(!listed.contains(&refused.0), "{listed:?}");
    assert!(running(&cp, &first) && running(&cp, &second));
    // Space back: writes go on without a restart.
    cp_fs.release().expect("freeing the control plane's disk");
    cp.flotilla_ok(&["secret", "create", "after", value]);
    let third = cp.run_one("steady");
    wait("the third task", Duration::from_secs(30), || {
        running(&cp, &third)
    });

    // Nothing corrupted: both killed and started again find what they acknowledged, and the
    // node's containers are the ones from before.
    cp.restart();
    agent.kill();
    agent.run();
    agent.wait_log("session established", 2, Duration::from_secs(30));
    let listed = secrets(&cp);
    for name in acknowledged.iter().chain([&"after".to_string()]) {
        assert!(listed.contains(name), "{name} lost: {listed:?}");
    }
    assert!(!listed.contains(&refused.0), "{listed:?}");
    for task in [&first, &second, &third] {
        wait("the tasks after a restart", Duration::from_secs(30), || {
            running(&cp, task)
        });
    }
    assert_eq!(node.running().get(&format!("{first}-0")), Some(&first_pid));
}

/// A container that logs a numbered line every 50 ms until it is stopped. No network of its
/// own: the other test's agent holds this namespace's task bridge.
const LOUD: &str = r#"{
  "family": "loud",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05 & wait; done"]
  }]
}"#;

/// The number of the last line `task` logged, as the control plane reads it from the node.
fn last_line(cp: &ControlPlane, task: &str) -> Option<u64> {
    let out = cp.flotilla(&["logs", task, "--tail", "1"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.rsplit_once("line ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .next_back()
}

/// The entries of a directory of the node's image store (none when it is missing).
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn on_a_full_ext4_disk_a_container_runs_on_and_an_unpack_fails_cleanly_until_space_returns() {
    let cp = ControlPlane::start(&[]);
    let node_fs = Tmpfs::ext4(128).expect("ext4 on a loop device");
    let node = Node::bare_with_data(node_fs.path().join("node"));
    node.import_test_image();
    let _agent = Agent::in_session(&cp, &node);
    cp.register(LOUD);
    let task = cp.run_one("loud");
    wait("the task running", Duration::from_secs(30), || {
        running(&cp, &task)
    });
    let name = format!("{task}-0");
    let pid = node.running()[&name];
    wait("its log growing", Duration::from_secs(20), || {
        last_line(&cp, &task).is_some()
    });
    // An image of a layer of its own, 4 MiB that do not compress, to import while full.
    let mut spec = busybox_image(host_arch());
    let mut noise = vec![0u8; 4 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut own = Layer::new();
    own.dir("data", 0o755).file("data/blob", &noise, 0o644);
    spec.layers.push((own.finish(), Compression::Gzip));
    let layout = node.scratch().join("big");
    write_layout(&layout, "1", &spec).expect("layout");
    let layout = layout.to_str().expect("utf-8");

    node_fs.fill().expect("filling the node's disk");
    // What the container writes has nowhere to go: it runs on.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node.running().get(&name),
        Some(&pid),
        "the container was not kept"
    );
    // A layer unpacked now fails naming the full disk, and leaves nothing half-stored.
    let out = node.ctr(&["image", "import", layout, "--name", "shop/big:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an import onto a full disk succeeded"
    );
    assert!(err.contains(NO_SPACE), "{err}");
    let images = node.ctr_ok(&["image", "ls"]);
    assert!(!images.contains("shop/big"), "{images}");
    let store = node_fs.path().join("node/images");
    assert_eq!(
        entries(&store.join("tmp")),
        Vec::<String>::new(),
        "unpack leftovers"
    );
    assert_eq!(
        entries(&store.join("ingest")),
        Vec::<String>::new(),
        "ingest leftovers"
    );

    // Space back: the log goes on from the same process, and the import succeeds.
    node_fs.release().expect("freeing the node's disk");
    let before = last_line(&cp, &task).unwrap_or(0);
    wait(
        "new lines after space returned",
        Duration::from_secs(20),
        || last_line(&cp, &task).is_some_and(|n| n > before),
    );
    assert_eq!(node.running().get(&name), Some(&pid));
    node.ctr_ok(&["image", "import", layout, "--name", "shop/big:1"]);
    assert!(running(&cp, &task));
}

/// A container that sleeps until SIGTERM ends it with exit code 0; no network of its own (the
/// other tests' agents hold this namespace's task bridge).
const QUIET: &str = r#"{
  "family": "quiet",
  "networkMode": "none",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait; done"]
  }]
}"#;

/// A file made immutable (`chattr +i`: every write to it fails, also through descriptors
/// already open, as a failing disk's would) until dropped, also when the test fails.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: std::path::PathBuf) -> Self {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .expect("chattr (Debian's e2fsprogs)");
        assert!(ok.success(), "chattr +i {}", path.display());
        Self(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_report_the_control_plane_cannot_record_is_sent_again_until_it_is() {
    // The control plane's data directory on an ext4 of its own, whatever the host's is (ext4
    // refuses writes to an immutable file through descriptors already open; tmpfs does not).
    let mut cp = ControlPlane::start(&[]);
    cp.stop();
    let _cp_fs = Tmpfs::move_onto(&cp.data, |p| Tmpfs::ext4_at(p, 32)).expect("ext4");
    cp.restart();
    let node = Node::bare();
    node.import_test_image();
    let agent = Agent::in_session(&cp, &node);
    cp.register(QUIET);
    let task = cp.run_one("quiet");
    wait("the task running", Duration::from_secs(30), || {
        running(&cp, &task)
    });
    let sessions = agent.log().matches("session established").count();

    // The store refuses every write; the container ends: the report of it is refused, and the
    // node sends it again (after 2 s, then 4 s), whole.
    let store = Immutable::set(cp.data.join("orchestratord.redb"));
    let pid = node.running()[&format!("{task}-0")];
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    agent.wait_log("; sent again in ", 3, Duration::from_secs(30));
    assert!(
        running(&cp, &task),
        "recorded while the store refuses writes"
    );
    // Writable again: the next send is recorded, with the container's exit code, on the same
    // session.
    drop(store);
    wait("the report recorded", Duration::from_secs(30), || {
        cp.task(&task).state == TaskState::Stopped
    });
    let stopped = cp.task(&task);
    assert_eq!(
        stopped.containers.first().and_then(|c| c.exit_code),
        Some(0),
        "{stopped:#?}"
    );
    assert_eq!(
        agent.log().matches("session established").count(),
        sessions,
        "delivered by a new session, not sent again:\n{}",
        agent.log()
    );
    // Kept: the control plane started again has it as recorded.
    cp.restart();
    assert_eq!(cp.task(&task).state, TaskState::Stopped);
}
