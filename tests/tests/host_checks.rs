//! Hosts that cannot run containers are told so when the agent starts, not at its first
//! container: a data directory on overlayfs (the root of a container, of a live or VM image)
//! makes `nodeagent run` and `nodeagent ctr run` fail at once, naming the path and the fix. On a
//! good host the checks pass and leave nothing behind.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::{bin, require_root};
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

/// Unmounts on drop, also when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.0, UnmountFlags::empty()) {
            eprintln!("unmounting {}: {e}; detaching it", self.0.display());
            let _ = unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

/// An overlayfs mounted at `<dir>/merged` (lower, upper and work beside it).
fn overlay(dir: &Path) -> Mounted {
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| dir.join(d));
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir(d).expect("mkdir");
    }
    let data = CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ))
    .expect("options");
    mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .expect("mount");
    Mounted(merged)
}

/// Runs `cmd`, killing it and failing the test when it is not done within `limit`.
fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NODEAGENT_LOG", "info")
        .spawn()
        .expect("spawn nodeagent");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "nodeagent still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    (child.wait_with_output().expect("output"), took)
}

fn nodeagent(data: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("nodeagent"));
    c.arg("--data-dir").arg(data).args(args);
    c
}

#[test]
fn a_data_directory_on_overlayfs_is_refused_at_start() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // Dropped before `dir`: unmounted first, then removed.
    let merged = overlay(dir.path());
    let data = merged.0.join("agent-data");

    let (out, took) = run_within(nodeagent(&data, &["run"]), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nodeagent run succeeded: {err}");
    assert_eq!(out.status.code(), Some(78), "exit code: {err}");
    assert!(err.contains("overlayfs"), "{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains("--data-dir"), "the fix is named: {err}");
    // Before anything else: not the missing identity, no control plane dialled.
    assert!(!err.contains("no node identity"), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eprintln!("nodeagent run refused the host in {took:?}");

    // `ctr run` says the same before creating anything (exit 125: nothing ran).
    let (out, _) = run_within(
        nodeagent(&data, &["ctr", "run", "--rm", "test/none:latest", "true"]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("overlayfs") && err.contains(&data.display().to_string()),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(data.join("containers"))
        .expect("containers dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_good_host_passes_and_the_probe_leaves_nothing() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // No identity: the agent gets past the host checks and stops at the next step.
    let (out, _) = run_within(nodeagent(&data, &["run"]), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("host checks passed"), "{err}");
    assert!(err.contains("no node identity"), "{err}");
    let left: Vec<String> = fs::read_dir(data.join("containers"))
        .expect("containers dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".preflight"))
        .collect();
    assert!(left.is_empty(), "probe scratch left: {left:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&dir.path().display().to_string()),
        "{mounts}"
    );
}

#[test]
fn a_missing_shim_is_named_at_start() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // nodeagent installed alone: flotilla-shim is not beside it.
    let lone = dir.path().join("bin");
    fs::create_dir(&lone).expect("mkdir");
    fs::copy(bin("nodeagent"), lone.join("nodeagent")).expect("copy nodeagent");
    let shim = lone.join("flotilla-shim");
    for args in [
        &["run"][..],
        &["ctr", "run", "--rm", "test/none:latest", "true"],
    ] {
        let mut cmd = Command::new(lone.join("nodeagent"));
        cmd.arg("--data-dir").arg(&data).args(args);
        let (out, _) = run_within(cmd, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        let code = if args[0] == "run" { 78 } else { 125 };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "the container shim {} cannot be found",
                shim.display()
            )),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("install flotilla-shim next to nodeagent"),
            "{err}"
        );
    }
}
