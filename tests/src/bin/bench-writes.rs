//! Benchmark: what an idle node writes to its disk per hour — the wear of an SD card.
//!
//! - **Flotilla:** a real control plane and `nodeagent run` whose data directory is an ext4
//!   filesystem of its own on a loop device; N idle tasks (`sleep`, network `none`, a service
//!   with a `disconnectPolicy` whose `stopOnClientAfter` makes the agent record its last contact
//!   with the control plane: the most a node records) started through the control plane. After
//!   they are all `RUNNING` and a settle period, for a window:
//!   - per process, `write_bytes` of `/proc/PID/io` (bytes the process caused to be sent to a
//!     block device: each page it dirtied, counted when dirtied) of the agent and of every
//!     container's `flotilla-shim` (found by the runtime's own record of each container,
//!     `containers/<id>/state.json`, and checked by `/proc/PID/comm`), and of the containers'
//!     own processes (`sleep`: the zero baseline of the method);
//!   - the sectors the node's loop device wrote (`/sys/block/loopN/stat`): everything that
//!     reached its disk, including what no process is charged for — the filesystem's journal,
//!     inode updates (a file's modification time), writeback;
//!   - what lands where: the files under the data directory whose size or modification time
//!     changed, and (with Debian's `strace`, attached to the agent and every shim) the write
//!     and `fsync` calls per file — for `agent.redb`, its commits;
//!   - the agent's own log (its standard error; under systemd, the journal's to write).
//! - **Anchor, the same window:** Debian's `containerd` (a private daemon, its root on a loop
//!   device of its own, its state directory on a tmpfs as `/run/containerd` is) running N
//!   `ctr run -d` containers of the same root filesystem, each with its
//!   `containerd-shim-runc-v2`: the same figures for the field's daemon. Skipped with a note
//!   when not installed (`apt-get install containerd`).
//!
//! Every figure is printed per hour, with the ratio of the node's total to the budget of
//! 1 MiB/h. Run as root:
//! `cargo build --workspace --bins && target/debug/bench-writes [--minutes N] [--settle S]
//! [--containers N] [--no-anchor] [--no-strace]` (defaults 10 min, 60 s, 20).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use flotilla_tests::cluster::{Agent, ControlPlane};
use flotilla_tests::node::Node;

/// The budget of an idle node (issue 20): 1 MiB written per hour.
const BUDGET: f64 = 1024.0 * 1024.0;

const DEF: &str = r#"{"family":"idle","networkMode":"none","containerDefinitions":[
  {"name":"main","image":"test/busybox:latest","memory":16,"stopTimeout":2,"command":["sleep","86400"]}]}"#;

/// The benchmark's options.
#[derive(Debug)]
struct Options {
    minutes: f64,
    settle: u64,
    containers: usize,
    anchor: bool,
    strace: bool,
}

fn options() -> Options {
    let usage = "usage: bench-writes [--minutes N (default 10)] [--settle SECONDS (default 60)] \
                 [--containers N (default 20)] [--no-anchor] [--no-strace]";
    let mut o = Options {
        minutes: 10.0,
        settle: 60,
        containers: 20,
        anchor: true,
        strace: true,
    };
    let mut args = std::env::args().skip(1);
    let bad = |what: String| -> ! {
        eprintln!("bench-writes: {what}\n{usage}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> String {
            args.next()
                .unwrap_or_else(|| bad(format!("{name} needs a value")))
        };
        match a.as_str() {
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            "--minutes" => {
                let v = value("--minutes");
                o.minutes = match v.parse::<f64>() {
                    Ok(m) if m > 0.0 && m.is_finite() => m,
                    _ => bad(format!("--minutes must be a positive number, not {v:?}")),
                };
            }
            "--settle" => {
                let v = value("--settle");
                o.settle = v
                    .parse()
                    .unwrap_or_else(|_| bad(format!("--settle must be whole seconds, not {v:?}")));
            }
            "--containers" => {
                let v = value("--containers");
                o.containers = match v.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => bad(format!("--containers must be a positive number, not {v:?}")),
                };
            }
            "--no-anchor" => o.anchor = false,
            "--no-strace" => o.strace = false,
            other => bad(format!("unknown argument {other:?}")),
        }
    }
    o
}

/// An ext4 filesystem of its own on a loop device (`mount -o loop`: the device goes with the
/// last unmount), so that what reaches its disk can be read from the device's counters.
#[derive(Debug)]
struct LoopFs {
    dir: PathBuf,
    /// `loopN`.
    device: String,
}

impl LoopFs {
    /// Makes a sparse image of `mib` MiB at `image` and mounts it at `dir`. Inode tables and
    /// journal are zeroed now, not by the kernel in the background during the window.
    fn mount(image: &Path, dir: &Path, mib: u64) -> Result<Self> {
        fs::File::create(image)?.set_len(mib * 1024 * 1024)?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(image))?;
        fs::create_dir_all(dir)?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir))?;
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(dir)
            .output()?;
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let device = source
            .strip_prefix("/dev/")
            .filter(|d| d.starts_with("loop"))
            .with_context(|| format!("{} is mounted from {source:?}", dir.display()))?
            .to_string();
        Ok(Self {
            dir: dir.to_path_buf(),
            device,
        })
    }

    /// Bytes the device has written since it was set up (sectors of 512 bytes, field 7 of
    /// `/sys/block/DEV/stat`).
    fn written(&self) -> Result<u64> {
        let path = format!("/sys/block/{}/stat", self.device);
        let text = fs::read_to_string(&path).with_context(|| path.clone())?;
        let sectors: u64 = text
            .split_whitespace()
            .nth(6)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{path}: {text:?}"))?;
        Ok(sectors * 512)
    }

    /// Flushes what the filesystem holds dirty, so a window starts and ends with nothing
    /// pending (the writeback of what was dirtied before it is not charged to it).
    fn sync(&self) {
        let _ = Command::new("sync").arg("-f").arg(&self.dir).status();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

fn run(c: &mut Command) -> Result<()> {
    let o = c.output()?;
    if !o.status.success() {
        bail!("{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// `write_bytes` of `/proc/PID/io` (`None` once the process is gone).
fn write_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// The shims and containers' processes of the node, from each container's `state.json`.
fn node_processes(data: &Path) -> Result<(Vec<u32>, Vec<u32>)> {
    let (mut shims, mut inits) = (Vec::new(), Vec::new());
    for e in fs::read_dir(data.join("containers"))?.flatten() {
        let Ok(bytes) = fs::read(e.path().join("state.json")) else {
            continue;
        };
        let state: flotilla_runtime::container::RuntimeState = serde_json::from_slice(&bytes)?;
        let shim = u32::try_from(state.shim.pid)?;
        if comm(shim) != "flotilla-shim" {
            bail!(
                "pid {shim} of {} is not a flotilla-shim",
                e.path().display()
            );
        }
        shims.push(shim);
        inits.push(u32::try_from(state.init.pid)?);
    }
    Ok((shims, inits))
}

/// Processes named `name` whose command line mentions `needle`.
fn pids_of(name: &str, needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let ours = fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle));
        if comm(pid) == name && ours {
            out.push(pid);
        }
    }
    out
}

/// Every regular file under `dir` with its size and modification time (not following links,
/// not into other filesystems).
fn files(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let Ok(top) = fs::metadata(dir) else {
        return out;
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            use std::os::unix::fs::MetadataExt as _;
            if m.dev() != top.dev() {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.insert(
                    e.path(),
                    (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                );
            }
        }
    }
    out
}

/// A path under the data directory with each container's id as `<id>`, so the files of the N
/// containers add up to one line.
fn kind_of(path: &str, data: &Path) -> String {
    let data = data.to_string_lossy();
    let Some(rest) = path.strip_prefix(data.as_ref()) else {
        return path.to_string();
    };
    let mut parts: Vec<String> = rest
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    if parts.len() > 2 && ["containers", "libcontainer", "task-logs"].contains(&parts[0].as_str()) {
        parts[1] = "<id>".into();
    }
    if parts.first().is_some_and(|p| p == "libcontainer") && parts.len() > 1 {
        parts[1] = "<id>".into();
    }
    format!("<data>/{}", parts.join("/"))
}

/// What changed under `dir` between two listings, by kind of file: (files, bytes grown).
fn changed(
    before: &BTreeMap<PathBuf, (u64, SystemTime)>,
    after: &BTreeMap<PathBuf, (u64, SystemTime)>,
    data: &Path,
) -> BTreeMap<String, (usize, i64)> {
    let mut out: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for (p, (size, mtime)) in after {
        let grew = match before.get(p) {
            Some((s, m)) if s == size && m == mtime => continue,
            Some((s, _)) => *size as i64 - *s as i64,
            None => *size as i64,
        };
        let e = out.entry(kind_of(&p.to_string_lossy(), data)).or_default();
        e.0 += 1;
        e.1 += grew;
    }
    for (p, (size, _)) in before {
        if !after.contains_key(p) {
            let e = out
                .entry(format!("{} (removed)", kind_of(&p.to_string_lossy(), data)))
                .or_default();
            e.0 += 1;
            e.1 -= *size as i64;
        }
    }
    out
}

/// `strace` attached to processes, its output in a file.
struct Strace {
    child: Child,
    out: PathBuf,
}

impl Strace {
    fn attach(pids: &[u32], out: &Path) -> Result<Self> {
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-y", "-s", "0", "-o"]).arg(out).args([
            "-e",
            "trace=write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,\
             rename,renameat,renameat2,unlink,unlinkat,ftruncate,truncate,fallocate,\
             utimensat,futimesat,mkdir,mkdirat,fchmod,fchmodat,openat",
        ]);
        for p in pids {
            c.arg("-p").arg(p.to_string());
        }
        let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        // Attaching takes a moment per thread.
        std::thread::sleep(Duration::from_secs(2));
        Ok(Self {
            child,
            out: out.to_path_buf(),
        })
    }

    /// Detaches (SIGINT) and reads what was traced: see [`strace_totals`].
    fn finish(mut self, data: &Path) -> Result<BTreeMap<String, [u64; 5]>> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out)?;
        Ok(strace_totals(&text, data))
    }
}

/// Sums an `strace -f -y` log: per file kind, [write calls, bytes written, fsyncs, renames,
/// other calls that change metadata: times, sizes, modes, files made or removed, and opens
/// that may write]. Pipes, sockets and `/proc`, `/sys`, `/dev` are left out (no disk behind
/// them).
fn strace_totals(text: &str, data: &Path) -> BTreeMap<String, [u64; 5]> {
    let mut out: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    // An unfinished call per pid: (syscall, path).
    let mut pending: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (call, path, ret) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((call, path)) = pending.remove(pid) else {
                continue;
            };
            let ret = r.rsplit_once(" = ").map(|(_, v)| v.to_string());
            (call, path, ret)
        } else {
            let Some((call, args)) = rest.split_once('(') else {
                continue;
            };
            let path = args
                .split_once('<')
                .filter(|(fd, _)| fd.chars().all(|c| c.is_ascii_digit()))
                .and_then(|(_, p)| p.split_once('>'))
                .map(|(p, _)| p.to_string())
                .or_else(|| {
                    // rename(…, "new") and friends: the last quoted path.
                    args.rsplit('"').nth(1).map(str::to_string)
                })
                .unwrap_or_default();
            if rest.ends_with("<unfinished ...>") {
                pending.insert(pid.to_string(), (call.to_string(), path));
                continue;
            }
            let ret = rest.rsplit_once(" = ").map(|(_, v)| v.to_string());
            (call.to_string(), path, ret)
        };
        if !path.starts_with('/')
            || ["/proc/", "/sys/", "/dev/"]
                .iter()
                .any(|p| path.starts_with(p))
        {
            continue;
        }
        let ret: i64 = ret
            .as_deref()
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(-1);
        let reading = call == "openat" && !(rest.contains("O_WRONLY") || rest.contains("O_RDWR"));
        if reading {
            // An open for reading only changes nothing (its atime aside).
            continue;
        }
        let e = out.entry(kind_of(&path, data)).or_default();
        match call.as_str() {
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
                e[0] += 1;
                e[1] += u64::try_from(ret).unwrap_or(0);
            }
            "fsync" | "fdatasync" | "sync_file_range" => e[2] += 1,
            "rename" | "renameat" | "renameat2" => e[3] += 1,
            _ => e[4] += 1,
        }
    }
    out
}

/// Bytes per hour of `bytes` written over `window`.
fn per_hour(bytes: u64, window: Duration) -> f64 {
    bytes as f64 * 3600.0 / window.as_secs_f64().max(1e-9)
}

fn kib(bytes_per_hour: f64) -> String {
    format!("{:>9.1} KiB/h", bytes_per_hour / 1024.0)
}

/// A sum of `write_bytes` over processes, read at the window's start and end.
fn sum_delta(before: &BTreeMap<u32, u64>, pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| Some(write_bytes(*p)?.saturating_sub(*before.get(p)?)))
        .sum()
}

fn snapshot(pids: &[u32]) -> BTreeMap<u32, u64> {
    pids.iter()
        .filter_map(|p| Some((*p, write_bytes(*p)?)))
        .collect()
}

/// The containerd anchor, started and brought to N running containers.
struct Containerd {
    daemon: Child,
    sock: PathBuf,
    disk: LoopFs,
    state: PathBuf,
    n: usize,
}

impl Containerd {
    fn start(n: usize, rootfs_from: &Path, work: &Path) -> Result<Self> {
        let disk = LoopFs::mount(&work.join("containerd.img"), &work.join("containerd"), 1024)?;
        let root = disk.dir.join("root");
        let rootfs = disk.dir.join("rootfs");
        run(Command::new("cp").arg("-a").arg(rootfs_from).arg(&rootfs))?;
        // Its state directory is a tmpfs, as /run/containerd is.
        let state = PathBuf::from(format!("/run/flotilla-bench-writes-{}", std::process::id()));
        fs::create_dir_all(&state)?;
        let sock = state.join("containerd.sock");
        let config = work.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = \"{}\"\n[ttrpc]\naddress = \"{}\"\n",
                root.display(),
                state.join("state").display(),
                sock.display(),
                state.join("ttrpc.sock").display(),
            ),
        )?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let me = Self {
            daemon,
            sock,
            disk,
            state,
            n,
        };
        let t = Instant::now();
        while !me.sock.exists() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("containerd did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let rootfs = rootfs.to_str().context("utf8")?.to_string();
        for i in 0..n {
            me.ctr(&[
                "run",
                "-d",
                "--rootfs",
                &rootfs,
                &format!("bw-{i}"),
                "/bin/sleep",
                "86400",
            ])?;
        }
        Ok(me)
    }

    fn ctr(&self, args: &[&str]) -> Result<()> {
        let s = Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "bench"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !s.success() {
            bail!("ctr {args:?}: {s}");
        }
        Ok(())
    }

    fn shims(&self) -> Vec<u32> {
        pids_of("containerd-shim", &self.sock.to_string_lossy())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", &format!("bw-{i}")]);
        }
        std::thread::sleep(Duration::from_millis(500));
        for i in 0..self.n {
            let id = format!("bw-{i}");
            let _ = self.ctr(&["task", "rm", "-f", &id]);
            let _ = self.ctr(&["container", "rm", &id]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.state)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.state);
        let _ = &self.disk;
    }
}

fn main() -> Result<()> {
    let o = options();
    flotilla_tests::require_root();
    let strace = o.strace && Command::new("strace").arg("-V").output().is_ok();
    let anchor = o.anchor && Path::new("/usr/bin/containerd").exists();

    let node = Node::bare_at("node");
    let disk = LoopFs::mount(&node.scratch().join("node.img"), &node.data, 2048)?;
    node.import_test_image();
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::for_node(&node);
    let j = agent.join(&cp.server(), &cp.token(&[]), &[]);
    if !j.status.success() {
        bail!("join: {}", String::from_utf8_lossy(&j.stderr));
    }
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    cp.register(DEF);
    let spec = serde_json::json!({
        "serviceName": "idle", "taskDefinition": "idle", "desiredCount": o.containers,
        "disconnectPolicy": {"lostAfter": 3600, "stopOnClientAfter": 1800}
    });
    cp.create_service(&spec.to_string());
    let t = Instant::now();
    while cp
        .tasks()
        .iter()
        .filter(|t| t.state == flotilla_api::tasks::TaskState::Running)
        .count()
        < o.containers
    {
        if t.elapsed() > Duration::from_secs(180) {
            bail!("{} tasks did not all run within 180 s", o.containers);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{} idle tasks RUNNING after {:.1} s",
        o.containers,
        t.elapsed().as_secs_f64()
    );
    let agent_pid = agent.pid().context("agent pid")?;
    let (shims, inits) = node_processes(&node.data)?;
    if shims.len() != o.containers {
        bail!("{} shims found for {} tasks", shims.len(), o.containers);
    }

    let work = tempfile::tempdir()?;
    let containerd = if anchor {
        let shim = shims[0];
        let dir = fs::read_dir(node.data.join("containers"))?
            .flatten()
            .find(|e| e.path().join("state.json").exists())
            .context("a container")?
            .path();
        let rootfs = format!("/proc/{shim}/root{}", dir.join("rootfs").display());
        Some(Containerd::start(
            o.containers,
            Path::new(&rootfs),
            work.path(),
        )?)
    } else {
        println!("containerd: not installed or --no-anchor: the anchor is skipped");
        None
    };

    println!("settling {} s", o.settle);
    std::thread::sleep(Duration::from_secs(o.settle));

    let agent_log = node.scratch().join("agent.log");
    let log_size = || fs::metadata(&agent_log).map_or(0, |m| m.len());
    let cd_pids = containerd
        .as_ref()
        .map(|c| (c.daemon.id(), c.shims()))
        .unwrap_or_default();
    let tracer = if strace {
        let mut pids = vec![agent_pid];
        pids.extend(&shims);
        Some(Strace::attach(&pids, &work.path().join("strace.log"))?)
    } else {
        println!("strace: not installed or --no-strace: no per-file calls");
        None
    };
    disk.sync();
    if let Some(c) = &containerd {
        c.disk.sync();
    }
    let mut all: Vec<u32> = vec![agent_pid];
    all.extend(&shims);
    all.extend(&inits);
    all.push(cd_pids.0);
    all.extend(&cd_pids.1);
    let io0 = snapshot(&all);
    let dev0 = disk.written()?;
    let cd_dev0 = containerd.as_ref().map(|c| c.disk.written()).transpose()?;
    let files0 = files(&node.data);
    let log0 = log_size();
    let start = Instant::now();
    let window = Duration::from_secs_f64(o.minutes * 60.0);
    println!("measuring for {:.1} min", o.minutes);
    std::thread::sleep(window);
    // What the window dirtied reaches the device now, not after it.
    disk.sync();
    if let Some(c) = &containerd {
        c.disk.sync();
    }
    let elapsed = start.elapsed();
    let agent_w = sum_delta(&io0, &[agent_pid]);
    let shims_w = sum_delta(&io0, &shims);
    let inits_w = sum_delta(&io0, &inits);
    let dev = disk.written()?.saturating_sub(dev0);
    let files1 = files(&node.data);
    let log = log_size().saturating_sub(log0);
    let cd = containerd
        .as_ref()
        .map(|c| -> Result<(u64, u64, u64)> {
            Ok((
                sum_delta(&io0, &[cd_pids.0]),
                sum_delta(&io0, &cd_pids.1),
                c.disk.written()?.saturating_sub(cd_dev0.unwrap_or(0)),
            ))
        })
        .transpose()?;
    let traced = tracer.map(|t| t.finish(&node.data)).transpose()?;

    let still: usize = shims.iter().filter(|p| write_bytes(**p).is_some()).count();
    println!(
        "\nwindow {:.1} min, {} containers ({} shims alive at the end)",
        elapsed.as_secs_f64() / 60.0,
        o.containers,
        still
    );
    println!("flotilla, write_bytes per process (/proc/PID/io):");
    println!(
        "  nodeagent run                 {}",
        kib(per_hour(agent_w, elapsed))
    );
    println!(
        "    of which its own log (stderr) {}",
        kib(per_hour(log, elapsed))
    );
    println!(
        "  flotilla-shim, all {:<3}        {}",
        shims.len(),
        kib(per_hour(shims_w, elapsed))
    );
    println!(
        "  containers' processes (sleep) {}  (baseline: 0 expected)",
        kib(per_hour(inits_w, elapsed))
    );
    let total = agent_w + shims_w;
    println!(
        "  total agent + shims           {}  = {:.3}× the 1 MiB/h budget",
        kib(per_hour(total, elapsed)),
        per_hour(total, elapsed) / BUDGET
    );
    println!(
        "  data directory's device       {}  = {:.3}× the budget (journal and metadata included)",
        kib(per_hour(dev, elapsed)),
        per_hour(dev, elapsed) / BUDGET
    );
    println!("files under the data directory changed in the window (files, bytes grown per hour):");
    for (kind, (n, grew)) in changed(&files0, &files1, &node.data) {
        println!(
            "  {kind:<60} {n:>4} files {:>10.1} KiB/h",
            grew as f64 * 3600.0 / elapsed.as_secs_f64() / 1024.0
        );
    }
    if let Some(t) = traced {
        println!(
            "strace of the agent and the shims, per hour (writes, KiB, fsyncs, renames, \
             other metadata calls: times, sizes, modes, files made or removed, opens to write):"
        );
        let mut rows: Vec<_> = t.into_iter().collect();
        rows.sort_by_key(|(_, v)| std::cmp::Reverse(v[1]));
        for (kind, [w, b, f, r, m]) in rows {
            let h = |x: u64| x as f64 * 3600.0 / elapsed.as_secs_f64();
            println!(
                "  {kind:<60} {:>8.0} writes {:>9.1} KiB {:>7.0} fsyncs {:>6.0} renames {:>6.0} other",
                h(w),
                h(b) / 1024.0,
                h(f),
                h(r),
                h(m)
            );
        }
    }
    if let Some((daemon, shims, dev)) = cd {
        println!(
            "anchor, containerd with {} idle containers, the same window:",
            o.containers
        );
        println!(
            "  containerd                    {}",
            kib(per_hour(daemon, elapsed))
        );
        println!(
            "  containerd-shim-runc-v2, all {:<3} {}",
            cd_pids.1.len(),
            kib(per_hour(shims, elapsed))
        );
        println!(
            "  its root's device             {}",
            kib(per_hour(dev, elapsed))
        );
        let ours = per_hour(total, elapsed);
        let theirs = per_hour(daemon + shims, elapsed);
        if theirs > 0.0 {
            println!("  flotilla / containerd (processes): {:.2}×", ours / theirs);
        }
    }

    drop(containerd);
    cp.flotilla(&["service", "rm", "idle"]);
    let t = Instant::now();
    while !node_processes(&node.data).map_or(true, |(s, _)| s.is_empty())
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(agent);
    drop(cp);
    node.remove_all();
    drop(node);
    drop(disk);
    Ok(())
}
