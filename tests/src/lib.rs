//! Fixtures and harnesses for Flotilla's system tests: OCI images built from Debian's
//! `busybox-static`, malicious layers, a real `docker-registry` on a loopback port, a token
//! service, and a TCP proxy that can cut connections.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod image;
pub mod netns;
pub mod node;
pub mod openapi;
pub mod registry;

use std::path::PathBuf;

/// Path of a workspace binary built next to the running test (`cargo build --workspace` first).
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps, tool binaries in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable dir");
    let p = [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join(name));
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Waits until `cond` holds (polling every 200 ms), failing the test after `timeout`.
pub fn wait(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A number unique in this process (for file names).
pub fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Fails the test unless running as root: these tests need real mounts, devices and cgroups.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "system tests run as root (they create device nodes, mounts and cgroups)"
    );
}

/// This machine's architecture in OCI (Go) naming, as images and indexes spell it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
