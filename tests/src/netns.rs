//! Several hosts on one machine: a test LAN (a bridge in the root network namespace, whose
//! address the control plane is reached on) and hosts (a network namespace each, joined to the
//! LAN by a veth pair) whose link can be cut and restored. Processes enter a host with
//! `nsenter --net` (which, unlike `ip netns exec`, leaves /sys and its cgroup mounts alone).
//! Everything is removed on drop, also when a test fails.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Loads `rules` with `nft -f -` run as `nft` says.
fn nft(mut nft: Command, rules: &str) {
    let mut child = nft
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, rules.as_bytes()).expect("rules");
    }
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `program` run inside the network namespace `netns` (the program keeps nsenter's pid).
pub fn command_in(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program);
    c
}

/// A bridge in the root namespace with a /24 of its own.
#[derive(Debug)]
pub struct Lan {
    bridge: String,
    prefix: [u8; 3],
    /// The root namespace's address on the LAN (where the control plane is reached).
    pub gateway: Ipv4Addr,
    hosts: AtomicU32,
}

impl Lan {
    /// A new LAN.
    pub fn new() -> Self {
        crate::require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = [10, 20 + (pid % 200) as u8, (n % 250) as u8];
        let bridge = format!("flb{}-{n}", pid % 100_000);
        let gateway = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 1);
        ip_quiet(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let lan = Self {
            bridge,
            prefix,
            gateway,
            hosts: AtomicU32::new(0),
        };
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &lan.bridge]);
        ip(&["link", "set", &lan.bridge, "up"]);
        lan
    }

    /// A new host on this LAN.
    pub fn host(&self) -> Host {
        let h = self.hosts.fetch_add(1, Ordering::SeqCst);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 100_000;
        let netns = format!("flotilla-test-{pid}-{n}");
        let veth = format!("flv{pid}-{n}");
        let addr = Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 10 + h as u8);
        ip_quiet(&["netns", "del", &netns]);
        ip_quiet(&["link", "del", &veth]);
        ip(&["netns", "add", &netns]);
        let host = Host { netns, veth, addr };
        ip(&[
            "link",
            "add",
            &host.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.netns,
        ]);
        ip(&["link", "set", &host.veth, "master", &self.bridge]);
        ip(&["link", "set", &host.veth, "up"]);
        let ns = ["-n", host.netns.as_str()];
        ip(&[&ns[..], &["link", "set", "lo", "up"]].concat());
        ip(&[
            &ns[..],
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        ]
        .concat());
        ip(&[&ns[..], &["link", "set", "eth0", "up"]].concat());
        let gw = self.gateway.to_string();
        ip(&[&ns[..], &["route", "add", "default", "via", &gw]].concat());
        host
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.bridge]);
    }
}

/// A host: a network namespace with one link to its LAN.
#[derive(Debug)]
pub struct Host {
    /// Name of its network namespace (under /run/netns).
    pub netns: String,
    veth: String,
    /// Its address on the LAN.
    pub addr: Ipv4Addr,
}

impl Host {
    /// `program` run inside this host's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.netns, program)
    }

    /// Cuts the host's link (as if its cable were pulled).
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth, "down"]);
    }

    /// Restores the link.
    pub fn restore(&self) {
        ip(&["link", "set", &self.veth, "up"]);
    }

    /// Makes the host's link lose `percent` % of the packets it carries, each way, each
    /// packet drawn at random (nftables `numgen random`); `0` makes it whole again. Both
    /// drops are silent, as on a real link: what the host receives is dropped on its way in
    /// (its namespace's `input` hook), what it sends on the LAN's end of its link (an
    /// `ingress` hook of that device in the root namespace) — a drop in its own `output` hook
    /// would fail the send (`EPERM`), which a real link never does.
    pub fn lose(&self, percent: u32) {
        let table = format!("flotilla_loss_{}", self.veth.replace('-', "_"));
        let _ = self
            .command("nft")
            .args(["delete", "table", "inet", "flotilla_loss"])
            .output();
        let _ = Command::new("nft")
            .args(["delete", "table", "netdev", &table])
            .output();
        if percent == 0 {
            return;
        }
        nft(
            self.command("nft"),
            &format!(
                "table inet flotilla_loss {{\nchain input {{ type filter hook input priority 0; \
                 policy accept; iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n}}\n"
            ),
        );
        nft(
            Command::new("nft"),
            &format!(
                "table netdev {table} {{\nchain ingress {{ type filter hook ingress device \
                 \"{}\" priority 0; policy accept; numgen random mod 100 < {percent} drop; }}\n\
                 }}\n",
                self.veth
            ),
        );
    }

    /// Leaves the host a route to its LAN only (no default route): nothing beyond the LAN —
    /// a registry, a DNS server — can be reached, and trying fails at once.
    pub fn lan_only(&self) {
        ip(&["-n", &self.netns, "route", "del", "default"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.lose(0);
        ip_quiet(&["link", "del", &self.veth]);
        ip_quiet(&["netns", "del", &self.netns]);
    }
}

/// Moves the calling thread into the network namespace mounted at `path` (a host's
/// `/run/netns/NAME`, or a task's namespace under an agent's data directory).
pub fn enter(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let ns = std::fs::File::open(path)?;
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

/// Runs `clients` threads inside the network namespace at `path` for `secs` seconds, each
/// repeating `op` (which sets itself up once per thread: it is called with the thread's
/// number and returns the operation to repeat); returns completed operations per second.
/// The closed-loop driver of the network benchmarks.
pub fn closed_loop<F, Op>(
    path: &std::path::Path,
    secs: u64,
    clients: usize,
    op: F,
) -> anyhow::Result<f64>
where
    F: Fn(usize) -> anyhow::Result<Op> + Send + Sync + 'static,
    Op: FnMut() -> anyhow::Result<()>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let op = std::sync::Arc::new(op);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (path, op) = (path.to_path_buf(), op.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                enter(&path)?;
                let mut once = op(c)?;
                let mut done = 0u64;
                while std::time::Instant::now() < deadline {
                    once()?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok(total as f64 / secs.max(1) as f64)
}
