//! The node's metrics in the Prometheus formats (`prometheus-client`), served in plain HTTP at
//! `GET /metrics` on `--metrics-listen` (`metrics_listen`; off by default) by
//! `flotilla_metrics::serve`.
//!
//! A scrape reads the node as it is now — its task containers' cgroups, their task network
//! namespaces' interface counters, `/proc/meminfo` — in one blocking pass ([`collect`]); the
//! agent's own counters ([`Meters`]) are kept as it works. Nothing is written. Container
//! metrics carry cAdvisor's names and meanings
//! (<https://github.com/google/cadvisor/blob/master/docs/storage/prometheus.md>), so dashboards
//! made for cAdvisor work; each is labelled with `task` (id), `container` (its name in the task
//! definition), `family`, `revision`, `service` (empty: not a service's) and `namespace` (its
//! service's discovery namespace, or empty). Only running containers of the node's desired
//! tasks are reported.
//!
//! | metric | type | labels | source |
//! | --- | --- | --- | --- |
//! | `container_cpu_usage_seconds_total` | counter | container's | cgroup CPU time (`cpu.stat` `usage_usec`; v1 `cpuacct.usage`) |
//! | `container_memory_usage_bytes` | gauge | container's | `memory.current` (v1 `memory.usage_in_bytes`): page cache included |
//! | `container_memory_working_set_bytes` | gauge | container's | usage less `inactive_file` of `memory.stat` (v1 `total_inactive_file`) |
//! | `container_spec_memory_limit_bytes` | gauge | container's | the cgroup's limit; 0 when unlimited, as cAdvisor reports it |
//! | `container_oom_events_total` | counter | container's | OOM kills in the cgroup (`memory.events` `oom_kill`; v1 `memory.oom_control`) |
//! | `container_processes` | gauge | container's | processes and threads (`pids.current`) |
//! | `container_start_time_seconds` | gauge | container's | Unix time its current run started |
//! | `flotilla_container_restarts_total` | counter | container's | restarts in place (its `restartPolicy`) |
//! | `container_network_receive_bytes_total` | counter | task's, `interface` | the task network namespace's interfaces (`/proc/PID/net/dev`; not `lo`; none for `host` tasks) |
//! | `container_network_transmit_bytes_total` | counter | task's, `interface` | the same, sent |
//! | `machine_cpu_cores` | gauge | | CPUs online (`cpuN` lines of `/proc/stat`) |
//! | `machine_memory_bytes` | gauge | | `MemTotal` |
//! | `flotilla_node_memory_available_bytes` | gauge | | `MemAvailable` |
//! | `flotilla_node_load1` | gauge | | 1-minute load average |
//! | `flotilla_node_cpu_busy_seconds_total` | counter | | CPU time the node's CPUs spent busy since boot: `/proc/stat`'s `cpu` line's user, nice, system, irq and softirq (proc(5)); its rate over `machine_cpu_cores` is the node's CPU use |
//! | `flotilla_node_disk_bytes`, `flotilla_node_disk_available_bytes` | gauge | | the data directory's filesystem |
//! | `flotilla_agent_session_connected` | gauge | | 1 while the session with the control plane is up |
//! | `flotilla_agent_desired_tasks` | gauge | `desired` | tasks of the node's desired state (`RUNNING`, `STOPPED`) |
//! | `flotilla_agent_reconcile_duration_seconds` | histogram | | one reconcile round: observe, decide, act |
//! | `flotilla_agent_image_pulls_total` | counter | `result` | pulls for tasks: `ok`, `failed` |
//! | `flotilla_agent_image_pull_bytes_total` | counter | | compressed layer bytes fetched from registries (layers the store held are not fetched) |
//! | `flotilla_agent_dns_queries_total` | counter | `answered` | queries to the node's resolver: `local` (cluster names, from the registry), `forwarded` |

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use flotilla_api::tasks::DesiredStatus;
use flotilla_metrics::{family, gauge};
use flotilla_runtime::container::cgroup::CgroupUsage;
use flotilla_runtime::container::{NetworkMode, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::meters::Meters;
use crate::runner::Runner;

/// Interfaces of one task's network namespace reported at most (`eth0` and a few a task made).
const MAX_INTERFACES: usize = 16;

/// A container's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ContainerLabels {
    /// Task id.
    pub task: String,
    /// Its name in the task definition.
    pub container: String,
    /// Task definition family.
    pub family: String,
    /// Task definition revision.
    pub revision: String,
    /// The task's service (empty: none).
    pub service: String,
    /// The service's discovery namespace (empty: none).
    pub namespace: String,
}

/// A task network interface's labels: the task's, and the interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InterfaceLabels {
    /// Task id.
    pub task: String,
    /// Task definition family.
    pub family: String,
    /// Task definition revision.
    pub revision: String,
    /// The task's service (empty: none).
    pub service: String,
    /// The service's discovery namespace (empty: none).
    pub namespace: String,
    /// The interface in the task's network namespace (`eth0`).
    pub interface: String,
}

/// One running container, measured.
#[derive(Debug, Clone)]
pub struct ContainerSample {
    /// Its labels.
    pub labels: ContainerLabels,
    /// Its cgroup.
    pub usage: CgroupUsage,
    /// When its current run started, Unix seconds.
    pub started_at: Option<f64>,
    /// Restarts in place.
    pub restarts: u32,
}

/// One interface of a task's network namespace: bytes received and sent.
#[derive(Debug, Clone)]
pub struct InterfaceSample {
    /// Its labels.
    pub labels: InterfaceLabels,
    /// Bytes received.
    pub receive_bytes: u64,
    /// Bytes sent.
    pub transmit_bytes: u64,
}

/// The node as one scrape sees it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Running containers of desired tasks.
    pub containers: Vec<ContainerSample>,
    /// Their tasks' network interfaces.
    pub interfaces: Vec<InterfaceSample>,
    /// The node's capacity and load.
    pub resources: flotilla_api::NodeResources,
    /// Desired tasks to run and to stop.
    pub desired: (u64, u64),
    /// DNS queries answered locally and forwarded.
    pub dns: (u64, u64),
}

/// The node now (blocking: reads cgroups and `/proc`).
pub fn collect(runner: &Runner, data_dir: &Path) -> Snapshot {
    let desired = runner.desired();
    let tasks: BTreeMap<&str, _> = desired.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut resources = crate::host::node_resources(data_dir);
    // The machine's CPUs, as cAdvisor counts them (the agent may be held to fewer).
    if let Some(n) = std::fs::read_to_string("/proc/stat")
        .ok()
        .map(|s| crate::host::online_cpus(&s))
        .filter(|&n| n > 0)
    {
        resources.cpus = n;
    }
    let mut snapshot = Snapshot {
        resources,
        desired: desired
            .tasks
            .iter()
            .fold((0, 0), |(run, stop), t| match t.desired {
                DesiredStatus::Running => (run + 1, stop),
                DesiredStatus::Stopped => (run, stop + 1),
            }),
        dns: runner.dns_queries(),
        ..Default::default()
    };
    let store = runner.store();
    let mut measured_network = std::collections::BTreeSet::new();
    for c in store.list().unwrap_or_default() {
        if c.status != Status::Running {
            continue;
        }
        let Some(name) = crate::runtime::task_container(&c) else {
            continue;
        };
        let Some(task) = tasks.get(name.task.as_str()) else {
            continue;
        };
        let Some(def) = task.definition.container_definitions.get(name.index) else {
            continue;
        };
        let Ok(usage) = store.stats_of(&c) else {
            continue;
        };
        let revision = task
            .task_definition
            .rsplit_once(':')
            .map_or("", |(_, r)| r)
            .to_string();
        let labels = ContainerLabels {
            task: task.id.clone(),
            container: def.name.clone(),
            family: task.definition.family.clone(),
            revision,
            service: task.service.clone().unwrap_or_default(),
            namespace: task.namespace.clone().unwrap_or_default(),
        };
        // A task's containers share its network namespace: read it once, through any of them.
        let netns = !matches!(c.record.config.network, NetworkMode::Host);
        if netns && measured_network.insert(name.task.clone()) {
            if let Some(pid) = c.pid() {
                // The task may make interfaces of its own (with CAP_NET_ADMIN): a bounded
                // number of series, and a name that is not UTF-8 costs only itself.
                let dev = std::fs::read(format!("/proc/{pid}/net/dev")).unwrap_or_default();
                let dev = String::from_utf8_lossy(&dev);
                for (interface, rx, tx) in net_dev(&dev).into_iter().take(MAX_INTERFACES) {
                    snapshot.interfaces.push(InterfaceSample {
                        labels: InterfaceLabels {
                            task: labels.task.clone(),
                            family: labels.family.clone(),
                            revision: labels.revision.clone(),
                            service: labels.service.clone(),
                            namespace: labels.namespace.clone(),
                            interface,
                        },
                        receive_bytes: rx,
                        transmit_bytes: tx,
                    });
                }
            }
        }
        snapshot.containers.push(ContainerSample {
            labels,
            usage,
            started_at: c.state.as_ref().and_then(|s| unix_seconds(&s.started_at)),
            restarts: c.restart_count,
        });
    }
    snapshot
}

/// An RFC 3339 time as Unix seconds.
fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The interfaces of a `/proc/net/dev` table but `lo`: name, bytes received, bytes sent
/// (proc(5): two header lines, then `NAME: rx_bytes rx_packets … tx_bytes …`, tx_bytes the
/// ninth number). Lines that do not parse are skipped.
pub fn net_dev(table: &str) -> Vec<(String, u64, u64)> {
    table
        .lines()
        .filter_map(|l| {
            let (name, counters) = l.split_once(':')?;
            let name = name.trim();
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (name != "lo" && n.len() >= 9).then(|| (name.to_string(), n[0], n[8]))
        })
        .collect()
}

/// `snapshot` and `meters` encoded: OpenMetrics or the Prometheus text format.
pub fn encode(snapshot: Snapshot, meters: &Meters, openmetrics: bool) -> (&'static str, String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    registry.register_with_unit(
        "flotilla_agent_reconcile_duration",
        "One reconcile round of the agent: observe the containers, decide, act",
        Unit::Seconds,
        meters.rounds.clone(),
    );
    registry.register_collector(Box::new(MeterCollector {
        connected: meters.connected.load(Ordering::Relaxed),
        pulls: (
            meters.pulls_ok.load(Ordering::Relaxed),
            meters.pulls_failed.load(Ordering::Relaxed),
        ),
        pull_bytes: meters.pull_bytes.load(Ordering::Relaxed),
    }));
    flotilla_metrics::encode(&registry, openmetrics)
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

type PerContainer = fn(&ContainerSample) -> u64;

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let cs = &s.containers;
        family(
            &mut encoder,
            "container_cpu_usage_seconds",
            "Cumulative CPU time consumed by the container, seconds",
            MetricType::Counter,
            cs.iter().map(|c| {
                let secs = c.usage.cpu_ns as f64 / 1e9;
                (c.labels.clone(), ConstCounter::new(secs))
            }),
        )?;
        let gauges: [(&str, &str, PerContainer); 4] = [
            (
                "container_memory_usage_bytes",
                "Current memory usage of the container, page cache included, bytes",
                |c| c.usage.memory_bytes,
            ),
            (
                "container_memory_working_set_bytes",
                "Current working set of the container: memory usage less inactive file cache, bytes",
                |c| c.usage.memory_working_set_bytes,
            ),
            (
                "container_spec_memory_limit_bytes",
                "Memory limit of the container, bytes (0: unlimited)",
                |c| c.usage.memory_limit.unwrap_or(0),
            ),
            (
                "container_processes",
                "Processes and threads running in the container",
                |c| c.usage.pids,
            ),
        ];
        for (name, help, get) in gauges {
            family(
                &mut encoder,
                name,
                help,
                MetricType::Gauge,
                cs.iter().map(|c| (c.labels.clone(), gauge(get(c)))),
            )?;
        }
        family(
            &mut encoder,
            "container_oom_events",
            "Times the kernel's OOM killer killed a process of the container",
            MetricType::Counter,
            cs.iter()
                .map(|c| (c.labels.clone(), ConstCounter::new(c.usage.oom_kills))),
        )?;
        family(
            &mut encoder,
            "container_start_time_seconds",
            "Start time of the container's current run since the Unix epoch, seconds",
            MetricType::Gauge,
            cs.iter()
                .filter_map(|c| c.started_at.map(|t| (c.labels.clone(), ConstGauge::new(t)))),
        )?;
        family(
            &mut encoder,
            "flotilla_container_restarts",
            "Times the container was started again in place under its restart policy",
            MetricType::Counter,
            cs.iter()
                .map(|c| (c.labels.clone(), ConstCounter::new(u64::from(c.restarts)))),
        )?;
        family(
            &mut encoder,
            "container_network_receive_bytes",
            "Cumulative bytes received on an interface of the task's network namespace",
            MetricType::Counter,
            s.interfaces
                .iter()
                .map(|i| (i.labels.clone(), ConstCounter::new(i.receive_bytes))),
        )?;
        family(
            &mut encoder,
            "container_network_transmit_bytes",
            "Cumulative bytes sent on an interface of the task's network namespace",
            MetricType::Counter,
            s.interfaces
                .iter()
                .map(|i| (i.labels.clone(), ConstCounter::new(i.transmit_bytes))),
        )?;
        let r = &s.resources;
        let none = Vec::<(&str, &str)>::new;
        for (name, help, v) in [
            (
                "machine_cpu_cores",
                "CPUs of the machine that are online",
                u64::from(r.cpus),
            ),
            (
                "machine_memory_bytes",
                "Memory of the machine (MemTotal), bytes",
                r.memory_bytes,
            ),
            (
                "flotilla_node_memory_available_bytes",
                "Memory available for new work without swapping (MemAvailable), bytes",
                r.memory_available_bytes,
            ),
            (
                "flotilla_node_disk_bytes",
                "Size of the filesystem of the agent's data directory, bytes",
                r.disk_bytes,
            ),
            (
                "flotilla_node_disk_available_bytes",
                "Space available to the agent on the filesystem of its data directory, bytes",
                r.disk_available_bytes,
            ),
        ] {
            family(
                &mut encoder,
                name,
                help,
                MetricType::Gauge,
                [(none(), gauge(v))],
            )?;
        }
        family(
            &mut encoder,
            "flotilla_node_load1",
            "1-minute load average of the node",
            MetricType::Gauge,
            [(none(), ConstGauge::new(r.load1_milli as f64 / 1000.0))],
        )?;
        if let Some(busy) = r.cpu_busy_usec {
            family(
                &mut encoder,
                "flotilla_node_cpu_busy_seconds",
                "CPU time the node's CPUs spent busy since boot (user, nice, system, irq, softirq)",
                MetricType::Counter,
                [(none(), ConstCounter::new(busy as f64 / 1e6))],
            )?;
        }
        family(
            &mut encoder,
            "flotilla_agent_desired_tasks",
            "Tasks of the node's desired state by what is desired of them",
            MetricType::Gauge,
            [("RUNNING", s.desired.0), ("STOPPED", s.desired.1)]
                .map(|(d, n)| ([("desired", d)], gauge(n))),
        )?;
        family(
            &mut encoder,
            "flotilla_agent_dns_queries",
            "Queries to the node's resolver by who answered: local (cluster names) or forwarded",
            MetricType::Counter,
            [("local", s.dns.0), ("forwarded", s.dns.1)]
                .map(|(a, n)| ([("answered", a)], ConstCounter::new(n))),
        )?;
        Ok(())
    }
}

#[derive(Debug)]
struct MeterCollector {
    connected: bool,
    pulls: (u64, u64),
    pull_bytes: u64,
}

impl Collector for MeterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let none = Vec::<(&str, &str)>::new;
        family(
            &mut encoder,
            "flotilla_agent_session_connected",
            "1 while the agent's session with the control plane is up, else 0",
            MetricType::Gauge,
            [(none(), gauge(u64::from(self.connected)))],
        )?;
        family(
            &mut encoder,
            "flotilla_agent_image_pulls",
            "Image pulls for tasks by result: ok or failed",
            MetricType::Counter,
            [("ok", self.pulls.0), ("failed", self.pulls.1)]
                .map(|(r, n)| ([("result", r)], ConstCounter::new(n))),
        )?;
        family(
            &mut encoder,
            "flotilla_agent_image_pull_bytes",
            "Compressed layer bytes fetched from registries by pulls for tasks",
            MetricType::Counter,
            [(none(), ConstCounter::new(self.pull_bytes))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot() -> Snapshot {
        let labels = ContainerLabels {
            task: "t-1".into(),
            container: "web".into(),
            family: "shop".into(),
            revision: "3".into(),
            service: "front".into(),
            namespace: "prod".into(),
        };
        Snapshot {
            containers: vec![ContainerSample {
                labels,
                usage: CgroupUsage {
                    cpu_ns: 2_500_000_000,
                    memory_bytes: 8192,
                    memory_working_set_bytes: 4096,
                    memory_limit: Some(1 << 20),
                    pids: 3,
                    pids_limit: None,
                    oom_kills: 1,
                },
                started_at: Some(1_700_000_000.5),
                restarts: 2,
            }],
            interfaces: vec![InterfaceSample {
                labels: InterfaceLabels {
                    task: "t-1".into(),
                    family: "shop".into(),
                    revision: "3".into(),
                    service: "front".into(),
                    namespace: "prod".into(),
                    interface: "eth0".into(),
                },
                receive_bytes: 100,
                transmit_bytes: 200,
            }],
            resources: flotilla_api::NodeResources {
                cpus: 4,
                memory_bytes: 1 << 30,
                memory_available_bytes: 1 << 29,
                disk_bytes: 10,
                disk_available_bytes: 5,
                load1_milli: 1500,
                cpu_busy_usec: Some(2_500_000),
            },
            desired: (2, 1),
            dns: (7, 3),
        }
    }

    #[test]
    fn both_formats_carry_every_metric_with_its_value() {
        let meters = Meters::default();
        meters.round(Duration::from_millis(3));
        meters.connected(true);
        meters.pulled(true);
        meters.pulled(false);
        let labels = r#"task="t-1",container="web",family="shop",revision="3",service="front",namespace="prod""#;
        let iface = r#"task="t-1",family="shop",revision="3",service="front",namespace="prod",interface="eth0""#;
        for openmetrics in [false, true] {
            let (kind, text) = encode(snapshot(), &meters, openmetrics);
            assert_eq!(
                kind.starts_with("application/openmetrics-text"),
                openmetrics
            );
            for line in [
                format!("container_cpu_usage_seconds_total{{{labels}}} 2.5"),
                format!("container_memory_usage_bytes{{{labels}}} 8192"),
                format!("container_memory_working_set_bytes{{{labels}}} 4096"),
                format!("container_spec_memory_limit_bytes{{{labels}}} 1048576"),
                format!("container_processes{{{labels}}} 3"),
                format!("container_oom_events_total{{{labels}}} 1"),
                format!("container_start_time_seconds{{{labels}}} 1700000000.5"),
                format!("flotilla_container_restarts_total{{{labels}}} 2"),
                format!("container_network_receive_bytes_total{{{iface}}} 100"),
                format!("container_network_transmit_bytes_total{{{iface}}} 200"),
                "machine_cpu_cores 4".into(),
                "machine_memory_bytes 1073741824".into(),
                "flotilla_node_memory_available_bytes 536870912".into(),
                "flotilla_node_load1 1.5".into(),
                "flotilla_node_cpu_busy_seconds_total 2.5".into(),
                "flotilla_node_disk_available_bytes 5".into(),
                "flotilla_agent_desired_tasks{desired=\"RUNNING\"} 2".into(),
                "flotilla_agent_dns_queries_total{answered=\"forwarded\"} 3".into(),
                "flotilla_agent_session_connected 1".into(),
                "flotilla_agent_image_pulls_total{result=\"failed\"} 1".into(),
                "flotilla_agent_image_pull_bytes_total 0".into(),
                "flotilla_agent_reconcile_duration_seconds_count 1".into(),
                "flotilla_agent_reconcile_duration_seconds_bucket{le=\"0.005\"} 1".into(),
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "{line} missing (openmetrics: {openmetrics}):\n{text}"
                );
            }
        }
    }

    #[test]
    fn the_fleet_dashboard_reads_only_what_the_agent_emits() {
        use flotilla_metrics::dashboard::{unknown_names, Source, FLEET_DASHBOARD};
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(FLEET_DASHBOARD);
        let dashboard = std::fs::read_to_string(&path).expect("the fleet dashboard");
        for openmetrics in [false, true] {
            let (_, text) = encode(snapshot(), &Meters::default(), openmetrics);
            let checked = unknown_names(&dashboard, Source::Node, &text)
                .unwrap_or_else(|problems| panic!("{}:\n{}", path.display(), problems.join("\n")));
            assert!(checked >= 15, "only {checked} of the agent's queries found");
        }
    }

    #[test]
    fn net_dev_reads_each_interface_but_loopback() {
        let table = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  \
eth0:  123456     100    0    0    0     0          0         0    65432      50    0    0    0     0       0          0\n\
garbage\n\
 bad: 1 2 x\n";
        assert_eq!(net_dev(table), [("eth0".to_string(), 123456, 65432)]);
        assert!(net_dev("").is_empty());
    }
}
