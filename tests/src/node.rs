//! A node for container tests: a private data directory and cgroup parent, `nodeagent ctr`
//! against them, the test image imported, and checks that nothing is left behind.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flotilla_runtime::container::{ContainerInfo, ContainerStats, Status};

use crate::image::{busybox_image, host_binary_layer, write_layout, Compression};

/// Name the test image is imported under.
pub const IMAGE: &str = "test/busybox:latest";

/// One isolated node.
#[derive(Debug)]
pub struct Node {
    dir: tempfile::TempDir,
    /// The agent's data directory.
    pub data: PathBuf,
    /// The cgroup parent of its containers.
    pub cgroup_parent: String,
    /// Host roots bind mounts may come from.
    pub bind_roots: Vec<PathBuf>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The files of the test image's OCI layout (busybox and the probe, gzip-compressed), each as
/// its path in the layout and its bytes: built once per test process, as compressing and hashing
/// the layers is most of a container test's setup (about a minute under the cgroup v2 tests'
/// emulated CPU). Each node writes its own copy.
fn test_layout() -> &'static [(PathBuf, Vec<u8>)] {
    static FILES: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = busybox_image(crate::host_arch());
        let probe = host_binary_layer(&crate::bin("probe")).expect("probe layer");
        spec.layers.push((probe, Compression::Gzip));
        write_layout(dir.path(), "test", &spec).expect("layout");
        let mut files = Vec::new();
        let mut dirs = vec![dir.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in fs::read_dir(&d).expect("reading the layout") {
                let path = entry.expect("layout entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let bytes = fs::read(&path).expect("layout file");
                    let rel = path.strip_prefix(dir.path()).expect("in the layout");
                    files.push((rel.to_path_buf(), bytes));
                }
            }
        }
        files
    })
}

impl Node {
    /// A node with nothing in its store yet.
    pub fn bare() -> Self {
        Self::bare_at("node")
    }

    /// A node with nothing in its store yet whose data directory is `relative` (a path of
    /// any length) inside the test's scratch directory.
    pub fn bare_at(relative: &str) -> Self {
        crate::require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join(relative);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let node = Self {
            data,
            // Its own top-level cgroup, shared with no other node: a parent shared by the
            // nodes of tests running at once would be removed (empty) by one while another's
            // container is being made under it.
            cgroup_parent: format!("flotilla-test-{}-{n}", std::process::id()),
            bind_roots: vec![dir.path().join("allowed")],
            dir,
        };
        fs::create_dir_all(&node.bind_roots[0]).expect("allowed root");
        node
    }

    /// A node with nothing in its store yet whose data directory is `data` (outside its scratch
    /// directory: a filesystem of its own, made and removed by the caller after the node).
    pub fn bare_with_data(data: PathBuf) -> Self {
        let mut node = Self::bare();
        node.data = data;
        node
    }

    /// A node with the test image imported.
    pub fn new() -> Self {
        let node = Self::bare();
        node.import_test_image();
        node
    }

    /// Imports the test image ([`IMAGE`]) into the node's store (what [`Node::new`] does, for
    /// a node made with [`Node::bare_at`] whose data directory was prepared first).
    pub fn import_test_image(&self) {
        let node = self;
        let layout = node.dir.path().join("layout");
        for (path, bytes) in test_layout() {
            let path = layout.join(path);
            fs::create_dir_all(path.parent().expect("in the layout")).expect("layout directory");
            fs::write(&path, bytes).expect("layout file");
        }
        node.ctr_ok(&[
            "image",
            "import",
            layout.to_str().expect("utf8"),
            "--name",
            IMAGE,
        ]);
    }

    /// Scratch directory of the test (removed with the node).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The command line of `nodeagent` for this node, before `ctr`.
    pub fn nodeagent(&self) -> Command {
        let mut c = Command::new(crate::bin("nodeagent"));
        c.arg("--data-dir")
            .arg(&self.data)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent);
        for r in &self.bind_roots {
            c.arg("--bind-root").arg(r);
        }
        c
    }

    /// Runs `nodeagent ctr ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.nodeagent()
            .arg("ctr")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nodeagent")
    }

    /// Runs `nodeagent ctr ARGS`, which must succeed; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "nodeagent ctr {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `ctr exec NAME ARGS` succeeds and prints `want` (what a container's command
    /// writes comes after `ctr` reads it as running), failing the test after `timeout`
    /// ([`crate::patient`]) with what it printed last.
    pub fn wait_exec_output(&self, name: &str, args: &[&str], want: &str, timeout: Duration) {
        let timeout = crate::patient(timeout);
        let start = Instant::now();
        loop {
            let out = self.ctr(&[&["exec", name][..], args].concat());
            let got = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && got == want {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "`ctr exec {name} {args:?}` printed {got:?} ({}), not {want:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr inspect`.
    pub fn inspect(&self, name: &str) -> ContainerInfo {
        serde_json::from_str(&self.ctr_ok(&["inspect", name])).expect("ctr inspect")
    }

    /// Every container, `ctr ps -a -o json`.
    pub fn ps(&self) -> Vec<ContainerInfo> {
        serde_json::from_str(&self.ctr_ok(&["ps", "-a", "-o", "json"])).expect("ctr ps")
    }

    /// The running containers by name, with their pids.
    pub fn running(&self) -> std::collections::BTreeMap<String, i32> {
        self.ps()
            .into_iter()
            .filter(|c| c.status == Status::Running)
            .filter_map(|c| Some((c.record.config.name.clone()?, c.pid()?)))
            .collect()
    }

    /// `ctr stats -o json C…`.
    pub fn stats(&self, containers: &[&str]) -> Vec<ContainerStats> {
        let mut args = vec!["stats", "-o", "json"];
        args.extend_from_slice(containers);
        serde_json::from_str(&self.ctr_ok(&args)).expect("ctr stats")
    }

    /// Waits until `cond` holds (polling), failing the test after `timeout`
    /// ([`crate::patient`]).
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let timeout = crate::patient(timeout);
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the node's agent has removed every container with what goes with the last
    /// one (their state directories, our cgroup parents), failing the test after `timeout`
    /// ([`crate::patient`]). Before its agent is killed: a removal cut short leaves our
    /// parents for the agent's next start to prune, not for [`Node::assert_clean`].
    pub fn wait_removed(&self, timeout: Duration) {
        self.wait_for("every container removed, with our cgroups", timeout, || {
            self.ps().is_empty()
                && self.leftover_state().is_empty()
                && self.leftover_cgroups().is_empty()
        });
    }

    /// cgroup directories of this node's parent that still exist, in any hierarchy: under
    /// `/sys/fs/cgroup` itself (v2) or under a hierarchy mounted there (v1).
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let v1 = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        std::iter::once(root.clone())
            .chain(v1)
            .map(|h| h.join(&self.cgroup_parent))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Processes whose command line names this node's scratch directory.
    pub fn leftover_processes(&self) -> Vec<String> {
        let me = self.dir.path().display().to_string();
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&me) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// Kills every process of this node at once with SIGKILL, as a power cut stops them: its
    /// agent and shims (their command lines name its scratch directory) and every process in
    /// its cgroups (its containers'), until none is left. What only they held goes with them:
    /// a mount namespace of theirs and what is mounted in it (overlays, network namespaces).
    /// Files stay as they were.
    pub fn power_cut(&self) {
        for _ in 0..50 {
            let mut pids: BTreeSet<i32> = self
                .leftover_processes()
                .iter()
                .filter_map(|p| p.split(':').next()?.parse().ok())
                .collect();
            for cgroup in self.leftover_cgroups() {
                let out = Command::new("find")
                    .arg(&cgroup)
                    .args(["-name", "cgroup.procs", "-exec", "cat", "{}", "+"])
                    .output();
                if let Ok(o) = out {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
            pids.remove(&(std::process::id() as i32));
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // (one may have ended meanwhile)
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "processes of the node outlived its power cut: {:?}",
            self.leftover_processes()
        );
    }

    /// Mounts below the node's data directory in this mount namespace.
    pub fn leftover_mounts(&self) -> Vec<String> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let data = self.data.display().to_string();
        info.lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&data))
            .map(str::to_string)
            .collect()
    }

    /// Entries left in the containers and libcontainer state directories.
    pub fn leftover_state(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for sub in ["containers", "libcontainer", "images/leases"] {
            for e in fs::read_dir(self.data.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    out.insert(format!("{sub}/{name}"));
                }
            }
        }
        out
    }

    /// The entries under `dir` with their sizes and modification times (for a failure message:
    /// what a leftover directory holds says which step left it).
    fn describe(&self, dir: &Path) -> String {
        let out = Command::new("find")
            .arg(dir)
            .args(["-printf", "%p %s bytes, modified %TT\n"])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("{}: {e}", dir.display()),
        }
    }

    /// Asserts that no container, cgroup, mount or state directory is left.
    pub fn assert_clean(&self) {
        let state = self.leftover_state();
        assert!(
            state.is_empty(),
            "state left behind: {state:?}; what they hold:\n{}",
            state
                .iter()
                .map(|s| self.describe(&self.data.join(s)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            self.leftover_cgroups(),
            Vec::<PathBuf>::new(),
            "cgroups left behind"
        );
        assert_eq!(
            self.leftover_mounts(),
            Vec::<String>::new(),
            "mounts left behind"
        );
    }

    /// Removes every container (forcefully) and our cgroup parents.
    pub fn remove_all(&self) {
        let out = self.ctr(&["ps", "-a", "-o", "json"]);
        let list: Vec<ContainerInfo> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for c in list {
            let _ = self.ctr(&["rm", "-f", &c.record.id]);
        }
        // Task networks an agent killed mid-way left behind.
        let _ = self.ctr(&["network", "prune"]);
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Also on failure: no container, cgroup or mount outlives the test.
        self.remove_all();
        for p in self.leftover_cgroups() {
            let _ = Command::new("find")
                .arg(&p)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .status();
        }
        for m in self.leftover_mounts() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}
