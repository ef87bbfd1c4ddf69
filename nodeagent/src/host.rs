//! What the node has and how busy it is, read from `/proc` and the data directory's filesystem:
//! the resources a heartbeat reports and the node's metrics show.

use std::path::Path;

/// The node's capacity and load now.
pub fn node_resources(data_dir: &Path) -> flotilla_api::NodeResources {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let load1_milli = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
        })
        .map_or(0, |l| (l * 1000.0) as u64);
    let (disk_bytes, disk_available_bytes) = rustix::fs::statvfs(data_dir)
        .map(|s| (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
        .unwrap_or((0, 0));
    flotilla_api::NodeResources {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: kib("MemTotal:"),
        memory_available_bytes: kib("MemAvailable:"),
        disk_bytes,
        disk_available_bytes,
        load1_milli,
        cpu_busy_usec: cpu_busy_usec(&std::fs::read_to_string("/proc/stat").unwrap_or_default()),
    }
}

/// The time all CPUs spent busy since boot, microseconds, from `/proc/stat`'s first line
/// (proc(5): `cpu user nice system idle iowait irq softirq steal guest guest_nice`, in clock
/// ticks; guest time is already counted in user time): user, nice, system, irq and softirq —
/// not idle, iowait, steal (time the hypervisor gave to others) or the two guest columns.
/// `None` when the line does not read.
fn cpu_busy_usec(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if ticks.len() < 8 {
        return None;
    }
    let busy: u64 = [0, 1, 2, 5, 6].iter().map(|&i| ticks[i]).sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(busy.saturating_mul(1_000_000) / hz)
}

/// CPUs with a line of their own (`cpuN`) in `/proc/stat`: those online.
pub fn online_cpus(stat: &str) -> u32 {
    let n = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .and_then(|r| r.split(char::is_whitespace).next())
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cpu_time_leaves_idle_iowait_and_guest_out() {
        let hz = rustix::param::clock_ticks_per_second();
        let stat = "cpu  100 20 30 5000 70 1 2 3 40 0\ncpu0 50 10 15 2500 35 0 1 1 20 0\nintr 1\n";
        // user + nice + system + irq + softirq
        assert_eq!(cpu_busy_usec(stat), Some(153 * 1_000_000 / hz));
        assert_eq!(cpu_busy_usec("cpu  1 2 3\n"), None);
        assert_eq!(cpu_busy_usec("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(cpu_busy_usec(""), None);
        assert!(
            cpu_busy_usec(&std::fs::read_to_string("/proc/stat").expect("/proc/stat")).is_some()
        );
    }

    #[test]
    fn online_cpus_are_the_numbered_lines() {
        let stat = "cpu  1 2 3 4 5 6 7 8
cpu0 1 2 3 4
cpu1 1 2 3 4
cpuX 1
intr 5
";
        assert_eq!(online_cpus(stat), 2);
        assert_eq!(online_cpus(""), 0);
    }
}
