//! Fixtures and harnesses for Flotilla's system tests: OCI images built from Debian's
//! `busybox-static`, malicious layers, a real `docker-registry` on a loopback port, a token
//! service, and a TCP proxy that can cut connections.

#![forbid(unsafe_code)]

pub mod churn;
pub mod cluster;
pub mod disk;
pub mod fleet;
pub mod image;
pub mod netns;
pub mod node;
pub mod openapi;
pub mod power;
pub mod registry;
pub mod relay;
pub mod taskdefs;
pub mod terminal;
pub mod vm;

use std::path::{Path, PathBuf};

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

/// Copies what a running container's spec uses from the node into `bundle`, for a benchmark's
/// anchor to run the same container: its merged root filesystem, seen through its shim's mount
/// namespace (`/proc/<shim>/root`), to `bundle/rootfs` with `cp -a`, and the files the shim
/// made in the container's directory (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`),
/// with `spec`'s mounts of them pointed at the copies — they go when the container is removed.
pub fn copy_container_files(
    container_dir: &std::path::Path,
    shim_pid: i32,
    spec: &mut serde_json::Value,
    bundle: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let merged = format!(
        "/proc/{shim_pid}/root{}",
        container_dir.join("rootfs").display()
    );
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&merged)
        .arg(bundle.join("rootfs"))
        .status()?;
    anyhow::ensure!(status.success(), "copying {merged}: {status}");
    for m in spec["mounts"].as_array_mut().into_iter().flatten() {
        let Some(source) = m["source"].as_str().map(std::path::PathBuf::from) else {
            continue;
        };
        if let (Ok(rest), Some(name)) = (source.strip_prefix(container_dir), source.file_name()) {
            if rest.components().count() == 1 && source.is_file() {
                let copy = bundle.join(name);
                std::fs::copy(&source, &copy)?;
                m["source"] = copy.to_string_lossy().into_owned().into();
            }
        }
    }
    Ok(())
}

/// The variable that stretches the test helpers' waits for a state: a factor (a number from
/// 1 to 100; 1 when unset or unreadable, 100 above). The cgroup v2 guests set it ([`vm`]): under QEMU's TCG, niced
/// beside the host's tests, a guest runs 10–50 times slower than the host, and a helper's
/// "until it is so, at most T" must not fail there for the host's T.
pub const PATIENCE_VAR: &str = "FLOTILLA_TEST_PATIENCE";

/// `timeout` stretched by [`PATIENCE_VAR`]. The helpers that wait for a state — [`wait`],
/// `Node::wait_for`, `Agent::wait_log`, `ControlPlane::wait_log` and a control plane's
/// start — take their deadline through this; a test that asserts how *soon* something
/// happens does not (it measures, and the guests do not run such tests).
pub fn patient(timeout: std::time::Duration) -> std::time::Duration {
    static FACTOR: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        std::env::var(PATIENCE_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|f| *f >= 1.0)
            .map_or(1.0, |f| f.min(100.0))
    });
    timeout.mul_f64(*FACTOR)
}

/// Waits until `cond` holds (polling every 200 ms), failing the test after `timeout`
/// ([`patient`]).
pub fn wait(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let timeout = patient(timeout);
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

/// Ends a soak binary's argument parsing at an argument it does not take: `-h`/`--help`
/// prints `usage` (what the tool does, its flags and their defaults) on standard output and
/// exits 0; anything else is named on standard error above the usage, and the exit status is
/// 2, as for a bad invocation of a Unix tool, so that a typo never starts a long run.
pub fn soak_usage(arg: &str, usage: &str) -> ! {
    if arg == "-h" || arg == "--help" {
        println!("{}", usage.trim_end());
        std::process::exit(0);
    }
    eprintln!("unknown argument {arg:?}\n{}", usage.trim_end());
    std::process::exit(2);
}

/// The value after flag `name` of a soak binary (`--minutes 5`) as a whole number, from the
/// arguments still to read.
pub fn flag_number(args: &mut impl Iterator<Item = String>, name: &str) -> anyhow::Result<u64> {
    use anyhow::Context;
    let v = args
        .next()
        .with_context(|| format!("{name} needs a value"))?;
    v.parse()
        .with_context(|| format!("{name}: '{v}' is not a number"))
}

/// A seed from the wall clock (seconds since the epoch), for a run not given `--seed`.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs())
}

/// The numeric arguments of a benchmark binary, each given as `(NAME, default)` in the order they
/// are passed: `bench-x [NAME]…`. `-h`/`--help` prints the usage line (with the defaults) and the
/// binary's own description is in its doc comment; a flag, a word that is not a whole number or
/// one argument too many prints the usage on standard error and exits 2 (as a bad invocation of a
/// Unix tool does), so a typo never runs an hour-long benchmark with the defaults.
pub fn bench_args<const K: usize>(names: [(&str, u64); K]) -> [u64; K] {
    let mut args = std::env::args();
    let bin = args
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "bench".into());
    let usage: String = names
        .iter()
        .map(|(n, d)| format!(" [{n} (default {d})]"))
        .collect();
    let usage = format!("usage: {bin}{usage}");
    let given: Vec<String> = args.collect();
    if given.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        std::process::exit(0);
    }
    let mut values = names.map(|(_, d)| d);
    if given.len() > K {
        let extra = given.len() - K;
        let plural = if extra == 1 { "" } else { "s" };
        eprintln!("{bin}: {extra} argument{plural} too many\n{usage}");
        std::process::exit(2);
    }
    for (i, a) in given.iter().enumerate() {
        match a.parse() {
            Ok(v) => values[i] = v,
            Err(_) => {
                eprintln!(
                    "{bin}: {} must be a whole number, not {a:?}\n{usage}",
                    names[i].0
                );
                std::process::exit(2);
            }
        }
    }
    values
}

/// This machine's architecture in OCI (Go) naming, as images and indexes spell it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Resident memory of a process, from `/proc/PID/status`, in KiB: the total and its parts —
/// anonymous (heap, thread stacks: private to the process) and file-backed (the pages of its
/// binary and libraries it has mapped: clean, shared with every process mapping the same file,
/// reclaimable by the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// `VmRSS`.
    pub total: u64,
    /// `RssAnon`.
    pub anon: u64,
    /// `RssFile`.
    pub file: u64,
    /// `Threads`.
    pub threads: u64,
}

impl Resident {
    /// Reads process `pid`'s.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| anyhow::anyhow!("{name} missing in /proc/{pid}/status"))
        };
        Ok(Self {
            total: field("VmRSS:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            threads: field("Threads:")?,
        })
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} KiB ({} anonymous + {} file-backed; threads: {})",
            self.total, self.anon, self.file, self.threads
        )
    }
}

/// CPU time (user + system, all threads) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 counted after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: field {i} after the name"))
    };
    let hz = rustix::param::clock_ticks_per_second();
    Ok(std::time::Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / hz as f64,
    ))
}

/// Runs `cmd` with its standard output a pipe whose reader reads `keep` bytes (none: the reader
/// has gone before anything is written, as `… | true`), then goes away; answers the exit code
/// and standard error, failing the test when the command does not end within `limit`.
pub fn with_reader_gone(
    mut cmd: std::process::Command,
    keep: usize,
    limit: std::time::Duration,
) -> (Option<i32>, String) {
    use std::io::Read as _;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    // Close-on-exec: the command must not hold the reading end itself.
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    let mut reader = Some(std::fs::File::from(reader));
    if keep == 0 {
        // Gone before anything can be written.
        reader = None;
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The command holds the write end now.
    drop(cmd);
    if let Some(mut r) = reader {
        // Read on a thread, so a command that never writes fails the test, not hangs it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0; keep];
            let _ = tx.send(r.read_exact(&mut buf).map(|()| r));
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(r)) => drop(r),
            Ok(Err(e)) => panic!("reading the first {keep} bytes: {e}"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no first {keep} bytes of output within {limit:?}");
            }
        }
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {limit:?} after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
