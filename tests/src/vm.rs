//! A real Linux kernel with cgroup v2 only, under QEMU, for tests that need what this machine's
//! kernel cannot give them: the unified cgroup hierarchy, systemd as PID 1, and power cuts.
//!
//! # How a guest boots
//!
//! QEMU (Debian's `qemu-system-x86`, TCG: nested KVM does not start on these machines) boots
//! the host's own Debian kernel (`linux-image-amd64`, `/boot/vmlinuz-*`) with
//! `cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1`, so the guest's `/sys/fs/cgroup` is
//! cgroup2 alone. Its initramfs, built here for each boot, is Debian's `busybox-static`, the
//! kernel modules the first steps need (9p over virtio, overlayfs, ext4, virtio-blk, resolved
//! from `modules.dep`) and a shell `init` that:
//!
//! 1. mounts the host's root filesystem read-only over 9p (`-virtfs … readonly=on`), so the
//!    guest has the host's binaries, Debian packages and this workspace's build at the same
//!    paths;
//! 2. puts an overlayfs on top of it whose upper layer is a tmpfs, or — with a [`Disk`] — a
//!    directory on a persistent ext4 image (virtio-blk), so what the guest installs, configures
//!    and writes survives a reboot or a power cut like a real machine's root disk;
//! 3. mounts the host's result directory ([`Vm::out`], writable 9p) at `/vm/out`, and a real
//!    filesystem for data directories at `/vm/data` or [`VmOptions::data_at`] (the disk's
//!    `data` directory, else a tmpfs): an overlayfs upper directory (every container's root)
//!    cannot sit on overlayfs;
//! 4. `switch_root`s into the overlay and runs the test's script, either as PID 1's only work
//!    ([`Init::Script`]) or as a oneshot unit under Debian's systemd ([`Init::Systemd`]).
//!
//! The script's output goes to `out/script.log`, its exit status to `out/exit`; the guest
//! then powers off. The kernel console (and with systemd, the journal's console output) is
//! kept in `console.log` next to it.
//!
//! # Power cuts
//!
//! [`Vm::power_cut`] kills QEMU with `SIGKILL`: the guest's page cache and everything not yet
//! written to the virtual disk are gone, as when a board loses power. What QEMU has already
//! written to the image file is kept (it is in the host's page cache), which is a disk whose
//! volatile write cache survives; a real SD card may lose more than that.
//!
//! # Cost
//!
//! TCG is about 25 times slower than native here: a boot to a shell takes 4–6 s, a boot to
//! systemd's `multi-user.target` about 25 s, one `ctr run --rm true` about 0.4 s. Choose what
//! runs inside with care.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// What PID 1 of the guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// A shell that mounts the kernel filesystems and runs the script: boots in seconds.
    Script,
    /// The host's systemd (`/lib/systemd/systemd`), which runs the script as a oneshot unit
    /// once `multi-user.target` is reached (so units enabled in the guest have started).
    Systemd,
}

/// A persistent virtual disk: an ext4 image holding the guest root's upper layer (`root/`)
/// and its data filesystem (`data/`, mounted at `/vm/data`).
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
}

impl Disk {
    /// Makes a sparse ext4 image of `size_mib` MiB at `path` (`mkfs.ext4` from e2fsprogs).
    pub fn create(path: &Path, size_mib: u64) -> Result<Self> {
        let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        f.set_len(size_mib << 20)?;
        drop(f);
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(path)
            .output()
            .context("running mkfs.ext4 (e2fsprogs)")?;
        if !o.status.success() {
            bail!("mkfs.ext4: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How to boot a guest.
#[derive(Debug)]
pub struct VmOptions<'a> {
    /// PID 1.
    pub init: Init,
    /// A POSIX shell script run as root in the guest, from `/`, with `/vm/out` and `/vm/data`
    /// mounted and `lo` up. Its output and exit status come back in [`Vm::out`].
    pub script: String,
    /// The persistent disk, if any.
    pub disk: Option<&'a Disk>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Where the data filesystem (ext4 on the disk, else a tmpfs) is mounted in the guest,
    /// e.g. `/var/lib/flotilla` for daemons installed as they would be on a real host.
    pub data_at: &'a str,
    /// systemd units masked for this boot (e.g. the control plane, to boot a node with no
    /// control plane reachable).
    pub mask: &'a [&'a str],
}

impl Default for VmOptions<'_> {
    fn default() -> Self {
        Self {
            init: Init::Script,
            script: String::new(),
            disk: None,
            memory_mib: 1536,
            cpus: 2,
            data_at: "/vm/data",
            mask: &[],
        }
    }
}

/// How a guest's script ended.
#[derive(Debug)]
pub struct Outcome {
    /// The script's exit status.
    pub exit: i32,
    /// Its standard output and error.
    pub log: String,
}

/// A running guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Vm {
    qemu: Child,
    dir: tempfile::TempDir,
    out: PathBuf,
    /// Its place among the guests of this process, given back once QEMU is gone.
    _slot: Slot,
}

/// At most this many guests run at once in one test process: under TCG each keeps a core busy,
/// and the test binaries run more tests at once than the machine has cores (to overlap their
/// waits), so a third guest would only slow the others down past their timeouts.
const MAX_GUESTS: usize = 2;

/// Guests running in this process, and a wake-up for a test waiting to start one.
static GUESTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A guest's place: taken before QEMU starts (waiting while [`MAX_GUESTS`] run), given back
/// when dropped.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Self {
        let (running, freed) = &GUESTS;
        let mut n = running.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= MAX_GUESTS {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (running, freed) = &GUESTS;
        let mut n = running.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        freed.notify_one();
    }
}

/// The host's kernel image and its version (`/boot/vmlinuz-V` with `/lib/modules/V`).
pub fn kernel() -> Result<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&version)
                .join("modules.dep")
                .exists()
                .then(|| (e.path(), version))
        })
        .collect();
    // By version: 6.1.0-10 after 6.1.0-9.
    let key = |v: &str| -> Vec<u64> {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    found.sort_by_key(|(_, v)| key(v));
    found.pop().ok_or_else(|| {
        anyhow!(
            "no /boot/vmlinuz-VERSION with its /lib/modules/VERSION: install linux-image-amd64 \
             (scripts/install-deps.sh does)"
        )
    })
}

/// Modules the initramfs loads before `switch_root`, each after what it depends on.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "crc32c_generic",
    "ext4",
    "virtio_blk",
];

/// `names` and everything they depend on, dependencies first, as paths relative to
/// `/lib/modules/VERSION` (from `modules.dep`; built-in modules are skipped).
fn module_order(version: &str, names: &[&str]) -> Result<Vec<String>> {
    let dep_file = format!("/lib/modules/{version}/modules.dep");
    let text = fs::read_to_string(&dep_file).with_context(|| format!("reading {dep_file}"))?;
    let mut deps = std::collections::HashMap::new();
    for line in text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let stem = Path::new(module)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .unwrap_or_default()
            .replace('-', "_");
        deps.insert(
            stem,
            (
                module.to_string(),
                rest.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            ),
        );
    }
    let by_path: std::collections::HashMap<String, Vec<String>> =
        deps.values().map(|(p, d)| (p.clone(), d.clone())).collect();
    fn visit(
        path: &str,
        by_path: &std::collections::HashMap<String, Vec<String>>,
        order: &mut Vec<String>,
    ) {
        if order.iter().any(|p| p == path) {
            return;
        }
        for d in by_path.get(path).into_iter().flatten() {
            visit(d, by_path, order);
        }
        order.push(path.to_string());
    }
    let mut order = Vec::new();
    for name in names {
        // A module missing from modules.dep is built into the kernel.
        if let Some((path, _)) = deps.get(&name.replace('-', "_")) {
            visit(path, &by_path, &mut order);
        }
    }
    Ok(order)
}

/// The initramfs's `/init` (busybox sh).
fn initramfs_init(options: &VmOptions<'_>, modules: &[String]) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| {
            let file = Path::new(m)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(m);
            format!("insmod /modules/{file} || fail \"insmod {file}\"\n")
        })
        .collect();
    let disk = if options.disk.is_some() {
        "mkdir -p /disk\n\
         mount -t ext4 /dev/vda /disk || fail 'mount /dev/vda'\n\
         mkdir -p /disk/root/upper /disk/root/work /disk/data\n\
         upper=/disk/root/upper; work=/disk/root/work; data=/disk/data\n"
    } else {
        "mkdir -p /scratch; mount -t tmpfs -o mode=755 scratch /scratch\n\
         mkdir -p /scratch/upper /scratch/work /scratch/data\n\
         upper=/scratch/upper; work=/scratch/work; data=/scratch/data\n"
    };
    let masked = options.mask.join(" ");
    let handover = match options.init {
        Init::Script => "exec switch_root /newroot /bin/sh /vm/stage2\n".to_string(),
        Init::Systemd => format!(
            "mkdir -p /newroot/etc/systemd/system/multi-user.target.wants\n\
             cp /vm-test.service /newroot/etc/systemd/system/flotilla-vm-test.service\n\
             ln -sf /etc/systemd/system/flotilla-vm-test.service \
             /newroot/etc/systemd/system/multi-user.target.wants/flotilla-vm-test.service\n\
             for u in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
             e2scrub_reap.service fstrim.timer systemd-networkd-wait-online.service \
             openipmi.service docker-registry.service {masked}; do \
             ln -sf /dev/null /newroot/etc/systemd/system/$u; done\n\
             : > /newroot/etc/fstab\n\
             echo vm > /newroot/etc/hostname\n\
             exec switch_root /newroot /lib/systemd/systemd\n"
        ),
    };
    let data_at = options.data_at;
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         fail() {{ echo \"vm init: $1\"; poweroff -f; }}\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         {insmods}\
         mkdir -p /ro /newroot\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /ro \
         || fail 'mount the host root over 9p'\n\
         {disk}\
         mount -t overlay overlay -o lowerdir=/ro,upperdir=$upper,workdir=$work /newroot \
         || fail 'mount the overlay root'\n\
         mkdir -p /newroot/vm/out /newroot{data_at}\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot/vm/out \
         || fail 'mount the result directory'\n\
         mount --bind $data /newroot{data_at}\n\
         cp /stage2 /newroot/vm/stage2; cp /script /newroot/vm/script\n\
         umount /proc /sys /dev\n\
         {handover}"
    )
}

/// Stage 2, as PID 1 (`Init::Script`) or from the oneshot unit (`Init::Systemd`).
fn stage2(init: Init) -> String {
    let mounts = match init {
        // PID 1 is this shell: it mounts what systemd would.
        Init::Script => {
            "mount -t proc proc /proc; mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev 2>/dev/null; mkdir -p /dev/pts /dev/shm\n\
             mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts\n\
             mount -t tmpfs shm /dev/shm\n\
             mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
             mount -t tmpfs -o mode=755 run /run; mount -t tmpfs -o mode=1777 tmp /tmp\n\
             hostname vm; ip link set lo up\n\
             modprobe -a veth bridge macvlan nf_tables nft_chain_nat 2>/dev/null\n"
        }
        Init::Systemd => "",
    };
    let end = match init {
        Init::Script => "sync\n/bin/busybox poweroff -f\n",
        Init::Systemd => "sync\n/bin/systemctl poweroff --no-block\n",
    };
    // The helpers' waits inside run this much longer (`crate::patient`): TCG, niced beside
    // the host's tests.
    format!(
        "{mounts}\
         cd /\n\
         export {}={GUEST_PATIENCE}\n\
         /bin/sh /vm/script > /vm/out/script.log 2>&1\n\
         echo $? > /vm/out/exit.tmp && mv /vm/out/exit.tmp /vm/out/exit\n\
         {end}",
        crate::PATIENCE_VAR
    )
}

/// How many times longer the test helpers wait inside a guest ([`crate::PATIENCE_VAR`]).
const GUEST_PATIENCE: u32 = 4;

const TEST_UNIT: &str = "[Unit]\n\
Description=Flotilla VM test script\n\
After=multi-user.target\n\
[Service]\n\
Type=oneshot\n\
Environment=HOME=/root\n\
ExecStart=/bin/sh /vm/stage2\n\
StandardOutput=journal+console\n\
StandardError=journal+console\n\
[Install]\n\
WantedBy=multi-user.target\n";

impl Vm {
    /// Boots a guest. Fails (naming what to install) when QEMU or the kernel is missing.
    pub fn start(options: VmOptions<'_>) -> Result<Self> {
        let (kernel, version) = kernel()?;
        let dir = tempfile::Builder::new().prefix("flotilla-vm-").tempdir()?;
        let out = dir.path().join("out");
        fs::create_dir(&out)?;
        fs::set_permissions(&out, fs::Permissions::from_mode(0o777))?;

        // The initramfs: busybox, modules, init, stage 2 and the script.
        let root = dir.path().join("initramfs");
        for d in ["bin", "modules", "dev", "proc", "sys"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .context("copying /bin/busybox (install busybox-static)")?;
        let modules = module_order(&version, MODULES)?;
        for m in &modules {
            let src = Path::new("/lib/modules").join(&version).join(m);
            let name = src.file_name().ok_or_else(|| anyhow!("module {m}"))?;
            fs::copy(&src, root.join("modules").join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
        let exec = |path: PathBuf, text: &str| -> Result<()> {
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
            Ok(())
        };
        exec(root.join("init"), &initramfs_init(&options, &modules))?;
        exec(root.join("stage2"), &stage2(options.init))?;
        exec(root.join("script"), &options.script)?;
        fs::write(root.join("vm-test.service"), TEST_UNIT)?;
        let initrd = dir.path().join("initrd.cpio");
        cpio(&root, &initrd)?;

        let console = dir.path().join("console.log");
        let mut args: Vec<String> = vec![
            "-machine".into(),
            "q35,accel=tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            options.cpus.to_string(),
            "-m".into(),
            options.memory_mib.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-nic".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", console.display()),
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            "console=ttyS0 quiet panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 \
             systemd.show_status=0"
                .into(),
            "-virtfs".into(),
            "local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap"
                .into(),
            "-virtfs".into(),
            format!(
                "local,path={},mount_tag=out,security_model=passthrough",
                out.display()
            ),
        ];
        if let Some(disk) = options.disk {
            args.push("-drive".into());
            args.push(format!(
                "file={},format=raw,if=virtio,cache=writeback",
                disk.path.display()
            ));
        }
        let slot = Slot::take();
        // setpriv (util-linux) makes QEMU die with the test process, also when that is killed.
        let qemu = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(dir.path().join("qemu.err"))?))
            .spawn()
            .context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
        Ok(Self {
            qemu,
            dir,
            out,
            _slot: slot,
        })
    }

    /// The host directory the guest sees at `/vm/out`.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The kernel console so far (boot messages, systemd's, and the script unit's output).
    pub fn console(&self) -> String {
        let mut text = fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        if let Ok(err) = fs::read_to_string(self.dir.path().join("qemu.err")) {
            if !err.trim().is_empty() {
                text.push_str("\n--- qemu stderr ---\n");
                text.push_str(&err);
            }
        }
        text
    }

    /// The script's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.out.join("script.log")).unwrap_or_default()
    }

    /// Waits until the guest has written `out/NAME`, and returns its content. Fails if the
    /// guest ends first or `timeout` passes, with the script's output and the console's tail.
    pub fn wait_file(&mut self, name: &str, timeout: Duration) -> Result<String> {
        let path = self.out.join(name);
        let start = Instant::now();
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                return Ok(text);
            }
            if let Some(status) = self.qemu.try_wait()? {
                bail!(
                    "the guest ended ({status}) before writing {name}\n{}",
                    self.report()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "the guest did not write {name} within {timeout:?}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the script to end and the guest to power off ([`Vm::out`] stays until the
    /// `Vm` is dropped).
    pub fn wait(&mut self, timeout: Duration) -> Result<Outcome> {
        let exit = self.wait_file("exit", timeout)?;
        let exit: i32 = exit
            .trim()
            .parse()
            .map_err(|_| anyhow!("out/exit holds {exit:?}"))?;
        let start = Instant::now();
        while self.qemu.try_wait()?.is_none() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Outcome {
            exit,
            log: self.log(),
        })
    }

    /// Cuts the power: QEMU is killed, the guest gets no shutdown.
    pub fn power_cut(mut self) -> Result<()> {
        self.cut_power()
    }

    /// Cuts the power as [`Vm::power_cut`] does, and keeps [`Vm::out`] and the logs to read
    /// until the `Vm` is dropped: what the guest wrote there before the cut, and nothing after.
    pub fn cut_power(&mut self) -> Result<()> {
        self.qemu.kill()?;
        self.qemu.wait()?;
        Ok(())
    }

    /// The script's output and the console's last lines, for a failure message.
    pub fn report(&self) -> String {
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- script output ---\n{}\n--- console (last 60 lines) ---\n{}",
            self.log(),
            tail.join("\n")
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Packs `dir` as a newc cpio archive (the initramfs format) with busybox's `cpio`.
fn cpio(dir: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    collect(dir, dir, &mut names)?;
    let mut child = Command::new("/bin/busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(fs::File::create(archive)?))
        .stderr(Stdio::null())
        .spawn()
        .context("running busybox cpio")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("cpio stdin"))?;
    stdin.write_all(names.join("\n").as_bytes())?;
    stdin.write_all(b"\n")?;
    drop(stdin);
    if !child.wait()?.success() {
        bail!("busybox cpio failed");
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, names: &mut Vec<String>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
        names.push(rel);
        if e.file_type()?.is_dir() {
            collect(root, &e.path(), names)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_come_first() {
        let (_, version) = kernel().expect("the host kernel (scripts/install-deps.sh)");
        let order = module_order(&version, &["9p", "ext4"]).expect("modules.dep");
        let pos = |stem: &str| {
            order
                .iter()
                .position(|p| p.ends_with(&format!("/{stem}.ko")))
                .unwrap_or_else(|| panic!("{stem} missing from {order:?}"))
        };
        assert!(pos("9pnet") < pos("9p"));
        assert!(pos("jbd2") < pos("ext4"));
    }
}
