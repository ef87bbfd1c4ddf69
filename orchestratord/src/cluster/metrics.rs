//! What the control plane measures about itself, kept by the core as plain numbers: counters
//! bumped where things happen ([`Counters`]: placements and placement refusals in the plan
//! applier and the scheduler's callers, session admissions, store commits and their latency),
//! and the [`Snapshot`] of the cluster's state a scrape asks for ([`super::Command::Metrics`]),
//! counted from memory by [`super::gauges::snapshot`]. Nothing here is written to the store, and no command decides
//! anything from it; the binary's `metrics` module encodes it in the Prometheus formats.
//!
//! Counters count attempts: a command refused (nothing committed) still counts the placements
//! it was refused, and they start at zero when the control plane starts, as Prometheus counters
//! do. Every label takes a bounded set of values (states, reasons and origins from enums here,
//! service names the operator created).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::ops::NodeState;
use flotilla_api::service::RolloutState;
use flotilla_api::tasks::TaskState;
use flotilla_scheduler::Unplaceable;

use super::records::Origin;

/// Where a placement was asked for (the `origin` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlacementOrigin {
    /// `flotilla task run` (`POST /v1/tasks`).
    TaskRun,
    /// A service round.
    Service,
    /// An unpinned schedule firing.
    Schedule,
}

impl PlacementOrigin {
    /// Every origin, in label order.
    pub const ALL: [Self; 3] = [Self::TaskRun, Self::Service, Self::Schedule];

    /// The label value: `task_run`, `service`, `schedule`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskRun => "task_run",
            Self::Service => "service",
            Self::Schedule => "schedule",
        }
    }

    /// The origin of a task made for `origin` (none: an operator's `task run`).
    pub fn of(origin: Option<&Origin>) -> Self {
        match origin {
            None => Self::TaskRun,
            Some(Origin::Service(_)) => Self::Service,
            Some(Origin::Schedule(_)) => Self::Schedule,
        }
    }
}

/// Why a placement was refused, as a bounded label (the `reason` label): the kind of the
/// scheduler's or the plan applier's reason, whose text names ports and expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The cluster has no node that is not revoked.
    NoNodes,
    /// The nodes had no live session.
    Disconnected,
    /// The nodes were draining.
    Draining,
    /// The nodes had not reported their resources yet.
    ResourcesUnknown,
    /// The nodes failed a `memberOf` constraint.
    MemberOf,
    /// The nodes already ran a task of the group (`distinctInstance`).
    DistinctInstance,
    /// The nodes lacked CPU.
    Cpu,
    /// The nodes lacked memory.
    Memory,
    /// A host port the task publishes was taken.
    HostPort,
    /// The node of the plan left the cluster (or was revoked) before it was applied.
    NotInCluster,
    /// Anything else.
    Other,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 11] = [
        Self::NoNodes,
        Self::Disconnected,
        Self::Draining,
        Self::ResourcesUnknown,
        Self::MemberOf,
        Self::DistinctInstance,
        Self::Cpu,
        Self::Memory,
        Self::HostPort,
        Self::NotInCluster,
        Self::Other,
    ];

    /// The label value: `no_nodes`, `disconnected`, `draining`, `resources_unknown`,
    /// `member_of`, `distinct_instance`, `cpu`, `memory`, `host_port`, `not_in_cluster`,
    /// `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoNodes => "no_nodes",
            Self::Disconnected => "disconnected",
            Self::Draining => "draining",
            Self::ResourcesUnknown => "resources_unknown",
            Self::MemberOf => "member_of",
            Self::DistinctInstance => "distinct_instance",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::HostPort => "host_port",
            Self::NotInCluster => "not_in_cluster",
            Self::Other => "other",
        }
    }

    /// The kind of a reason the scheduler (`flotilla_scheduler::refusal` and
    /// [`Unplaceable::reasons`]) or the plan applier gives. Only a label is derived from the
    /// text, never a decision; a unit test produces each of the scheduler's reasons and keeps
    /// this in step with its wording.
    pub fn of(why: &str) -> Self {
        match why {
            "were disconnected" => Self::Disconnected,
            "were draining" => Self::Draining,
            "had not reported resources yet" => Self::ResourcesUnknown,
            "lacked CPU" => Self::Cpu,
            "lacked memory" => Self::Memory,
            "is not in the cluster" => Self::NotInCluster,
            w if w.starts_with("failed memberOf(") => Self::MemberOf,
            w if w.ends_with("(distinctInstance)") => Self::DistinctInstance,
            w if w.starts_with(flotilla_scheduler::PORT_TAKEN) => Self::HostPort,
            _ => Self::Other,
        }
    }

    /// How far a node refused for this reason got through the scheduler's checks (state,
    /// then constraints, then room): what breaks a tie between reasons.
    fn rank(self) -> u8 {
        match self {
            Self::Other | Self::NoNodes | Self::NotInCluster => 0,
            Self::Disconnected => 1,
            Self::Draining => 2,
            Self::ResourcesUnknown => 3,
            Self::MemberOf => 4,
            Self::DistinctInstance => 5,
            Self::Cpu => 6,
            Self::Memory => 7,
            Self::HostPort => 8,
        }
    }

    /// The reason most nodes gave for a request the scheduler could not place — on a tie, the
    /// reason of the nodes that got furthest (a lack of room over a disconnected node) —, or
    /// [`RefusalReason::NoNodes`] when there was no node at all.
    pub fn dominant(why: &Unplaceable) -> Self {
        let mut kinds: BTreeMap<Self, usize> = BTreeMap::new();
        for (text, nodes) in &why.reasons {
            *kinds.entry(Self::of(text)).or_default() += nodes;
        }
        kinds
            .into_iter()
            .max_by_key(|(k, n)| (*n, k.rank()))
            .map_or(Self::NoNodes, |(k, _)| k)
    }
}

/// Upper bounds (seconds) of the store commit latency buckets: 0.25 ms to about 4 s, doubling
/// (a redb commit is one or two fsyncs).
pub const COMMIT_BUCKETS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096,
];

/// A histogram with fixed bounds: observations counted per bucket (not cumulative), their sum
/// and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, increasing.
    pub bounds: &'static [f64],
    /// Observations per bucket: `counts[i]` in `(bounds[i-1], bounds[i]]`, the last one above
    /// every bound.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram with these bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Counts one observation of `v`.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `(upper bound, observations in the bucket)` for every bound and `+Inf` (not cumulative:
    /// the encoder adds them up, as the exposition formats list them).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// What the core counts as it goes (since the control plane started).
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// Tasks placed (created by the plan applier), by origin.
    pub placements: BTreeMap<PlacementOrigin, u64>,
    /// Tasks that asked for a node and got none, by origin and the reason most nodes gave.
    pub refusals: BTreeMap<(PlacementOrigin, RefusalReason), u64>,
    /// Agent sessions admitted (the hello answered with a welcome).
    pub sessions_admitted: u64,
    /// Agent sessions told to come back later: beyond the session rate.
    pub sessions_rate_limited: u64,
    /// Agent sessions refused: unknown or revoked node, no common protocol.
    pub sessions_refused: u64,
    /// Store commits (commands that wrote something), by how long they took.
    pub commits: Histogram,
    /// Store commits that failed (the command did nothing).
    pub commit_failures: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            placements: BTreeMap::new(),
            refusals: BTreeMap::new(),
            sessions_admitted: 0,
            sessions_rate_limited: 0,
            sessions_refused: 0,
            commits: Histogram::new(&COMMIT_BUCKETS),
            commit_failures: 0,
        }
    }
}

impl Counters {
    /// `n` tasks of `origin` placed.
    pub fn placed(&mut self, origin: PlacementOrigin, n: usize) {
        if n > 0 {
            *self.placements.entry(origin).or_default() += n as u64;
        }
    }

    /// `n` tasks of `origin` refused for `reason`.
    pub fn refused(&mut self, origin: PlacementOrigin, reason: RefusalReason, n: usize) {
        if n > 0 {
            *self.refusals.entry((origin, reason)).or_default() += n as u64;
        }
    }

    /// The tasks of a request the scheduler could not place (`why.requested - why.placed`, or
    /// every one of them when the request is all or nothing).
    pub fn unplaceable(&mut self, origin: PlacementOrigin, why: &Unplaceable, all: bool) {
        let n = if all {
            why.requested
        } else {
            why.requested.saturating_sub(why.placed)
        };
        self.refused(origin, RefusalReason::dominant(why), n);
    }

    /// A store commit that took `took`.
    pub fn committed(&mut self, took: Duration, ok: bool) {
        if ok {
            self.commits.observe(took.as_secs_f64());
        } else {
            self.commit_failures += 1;
        }
    }
}

/// How many of a service's tasks there should be and are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTasks {
    /// The service.
    pub service: String,
    /// Tasks it should run: its desired count (REPLICA), or the nodes its tasks may run on now
    /// (DAEMON: ready, not draining, passing its constraints).
    pub desired: u64,
    /// Tasks running (started, healthy or not yet).
    pub running: u64,
    /// Tasks placed and not running yet.
    pub pending: u64,
}

/// The cluster's state in numbers, at one moment, and the counters then.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Nodes by state (`READY`, `DRAINING`, `DISCONNECTED`, `REVOKED`), every state listed.
    pub nodes: Vec<(&'static str, u64)>,
    /// Tasks the control plane holds (stopped ones too, until they are forgotten) by service
    /// (`""` for tasks no service runs) and state; every state listed for each service and for
    /// `""`.
    pub tasks: BTreeMap<(String, &'static str), u64>,
    /// Desired, running and pending tasks of each service.
    pub services: Vec<ServiceTasks>,
    /// Deployments of each service by rollout state, every state listed.
    pub deployments: BTreeMap<(String, &'static str), u64>,
    /// Nodes with a live session.
    pub sessions: u64,
    /// The counters.
    pub counters: Counters,
}

/// Every node state, in label order.
pub const NODE_STATES: [NodeState; 4] = [
    NodeState::Ready,
    NodeState::Draining,
    NodeState::Disconnected,
    NodeState::Revoked,
];

/// Every task state, in label order.
pub const TASK_STATES: [TaskState; 5] = [
    TaskState::Provisioning,
    TaskState::Pending,
    TaskState::Running,
    TaskState::Stopping,
    TaskState::Stopped,
];

/// Every rollout state, in label order.
pub const ROLLOUT_STATES: [RolloutState; 3] = [
    RolloutState::InProgress,
    RolloutState::Completed,
    RolloutState::Failed,
];

/// A task state as the API spells it (the `state` label).
pub fn task_state(s: TaskState) -> &'static str {
    flotilla_api::page::task_state_name(s)
}

/// A rollout state as the API spells it (the `state` label).
pub fn rollout_state(s: RolloutState) -> &'static str {
    match s {
        RolloutState::InProgress => "IN_PROGRESS",
        RolloutState::Completed => "COMPLETED",
        RolloutState::Failed => "FAILED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_scheduler::{
        Constraint, HostPort, NodeState as SchedState, NodeView, Request, Resources,
        Snapshot as Sn, Strategy,
    };

    fn node(id: &str, state: SchedState, capacity: Option<(u64, u64)>) -> NodeView {
        NodeView {
            id: id.into(),
            attributes: Default::default(),
            capacity: capacity.map(|(m, c)| Resources {
                memory_mib: m,
                cpu_units: c,
            }),
            used: Resources::default(),
            ports: Default::default(),
            groups: Default::default(),
            state,
        }
    }

    fn request(need: (u64, u64), constraints: Vec<Constraint>, ports: Vec<HostPort>) -> Request {
        Request {
            group: "g".into(),
            count: 1,
            need: Resources {
                memory_mib: need.0,
                cpu_units: need.1,
            },
            ports,
            constraints,
            strategy: vec![Strategy::Spread("instanceId".into())],
            seed: 0,
        }
    }

    /// Every reason the scheduler gives is classified (not `other`), from the scheduler itself.
    #[test]
    fn every_scheduler_reason_has_its_own_label() {
        let ready = |id| node(id, SchedState::Ready, Some((1024, 1024)));
        let mut taken = ready("ports");
        taken.ports.insert(HostPort {
            port: 80,
            udp: false,
        });
        let mut grouped = ready("grouped");
        grouped.groups.insert("g".into(), 1);
        let cases: Vec<(NodeView, Request, RefusalReason)> = vec![
            (
                node("d", SchedState::Disconnected, Some((1024, 1024))),
                request((1, 1), vec![], vec![]),
                RefusalReason::Disconnected,
            ),
            (
                node("dr", SchedState::Draining, Some((1024, 1024))),
                request((1, 1), vec![], vec![]),
                RefusalReason::Draining,
            ),
            (
                node("u", SchedState::Ready, None),
                request((1, 1), vec![], vec![]),
                RefusalReason::ResourcesUnknown,
            ),
            (
                ready("m"),
                request(
                    (1, 1),
                    vec![Constraint::member_of("attribute:zone == a").expect("expression")],
                    vec![],
                ),
                RefusalReason::MemberOf,
            ),
            (
                grouped,
                request((1, 1), vec![Constraint::DistinctInstance], vec![]),
                RefusalReason::DistinctInstance,
            ),
            (
                ready("c"),
                request((1, 4096), vec![], vec![]),
                RefusalReason::Cpu,
            ),
            (
                ready("mem"),
                request((4096, 1), vec![], vec![]),
                RefusalReason::Memory,
            ),
            (
                taken,
                request(
                    (1, 1),
                    vec![],
                    vec![HostPort {
                        port: 80,
                        udp: false,
                    }],
                ),
                RefusalReason::HostPort,
            ),
        ];
        for (view, req, want) in cases {
            let why = flotilla_scheduler::refusal(&view, &req).expect("refused");
            assert_eq!(RefusalReason::of(&why), want, "{why}");
            let snap = Sn { nodes: vec![view] };
            let unplaceable = flotilla_scheduler::place(&snap, &req).expect_err("refused");
            assert_eq!(RefusalReason::dominant(&unplaceable), want, "{unplaceable}");
        }
        let empty =
            flotilla_scheduler::place(&Sn { nodes: vec![] }, &request((1, 1), vec![], vec![]))
                .expect_err("no node");
        assert_eq!(RefusalReason::dominant(&empty), RefusalReason::NoNodes);
        assert_eq!(
            RefusalReason::of("is not in the cluster"),
            RefusalReason::NotInCluster
        );
        assert_eq!(RefusalReason::of("something new"), RefusalReason::Other);
    }

    #[test]
    fn the_reason_most_nodes_gave_counts_ties_going_to_the_furthest() {
        let why = |r: &[(&str, usize)]| Unplaceable {
            placed: 1,
            requested: 4,
            reasons: r.iter().map(|(w, n)| (w.to_string(), *n)).collect(),
            port_taken_on: Vec::new(),
        };
        let w = why(&[
            ("lacked memory", 3),
            ("were draining", 2),
            ("had port 80/tcp taken", 2),
        ]);
        assert_eq!(RefusalReason::dominant(&w), RefusalReason::Memory);
        // two port reasons add up under one label
        let w = why(&[
            ("lacked memory", 3),
            ("had port 80 taken", 2),
            ("had port 81 taken", 2),
        ]);
        assert_eq!(RefusalReason::dominant(&w), RefusalReason::HostPort);
        let w = why(&[("were disconnected", 2), ("lacked CPU", 2)]);
        assert_eq!(RefusalReason::dominant(&w), RefusalReason::Cpu);
        let w = why(&[("lacked memory", 2), ("something new", 2)]);
        assert_eq!(RefusalReason::dominant(&w), RefusalReason::Memory);
        let mut c = Counters::default();
        c.unplaceable(PlacementOrigin::Service, &w, false);
        c.unplaceable(PlacementOrigin::TaskRun, &w, true);
        assert_eq!(
            c.refusals
                .get(&(PlacementOrigin::Service, RefusalReason::Memory)),
            Some(&3)
        );
        assert_eq!(
            c.refusals
                .get(&(PlacementOrigin::TaskRun, RefusalReason::Memory)),
            Some(&4)
        );
    }

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 2.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 1, 2]);
        assert_eq!(h.count, 5);
        assert!((h.sum - 5.65).abs() < 1e-9);
        assert_eq!(h.buckets(), [(0.1, 2), (1.0, 1), (f64::INFINITY, 2)]);
    }
}
