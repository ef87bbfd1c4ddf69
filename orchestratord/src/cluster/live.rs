//! What the core knows of nodes from their sessions, in memory only (nothing is written to disk
//! per heartbeat): which session each node has, when it was last heard, its resources and its
//! containers' usage, the desired-state generation it acknowledged. And session admission.

use std::collections::{BTreeMap, HashMap};

use flotilla_api::tasks::ContainerUsage;

use super::command::{Now, SessionId};

/// A node's last words.
#[derive(Debug, Clone, Default)]
pub struct LiveInfo {
    /// Its live session, if it has one.
    pub session: Option<SessionId>,
    /// Agent version from its last hello.
    pub agent_version: Option<String>,
    /// Last message (seconds since the epoch).
    pub last_seen: Option<u64>,
    /// Last reported resources.
    pub resources: Option<flotilla_api::NodeResources>,
    /// Usage of its tasks' running containers at the last heartbeat: task → container → usage.
    pub usage: HashMap<String, BTreeMap<String, ContainerUsage>>,
    /// Usage of its tasks' cgroups (each task's containers together) at the last heartbeat.
    pub task_usage: HashMap<String, flotilla_api::tasks::TaskCgroupUsage>,
    /// Its tasks' CPU use between its last two heartbeats (what auto scaling decides on).
    pub task_cpu: HashMap<String, TaskCpu>,
    /// Its own CPU use (all its processes) between its last two heartbeats.
    pub node_cpu: Option<TaskCpu>,
    /// When its last heartbeat came (milliseconds since the epoch).
    pub heartbeat_ms: Option<u64>,
    /// Its tasks RUNNING when its last heartbeat came that the heartbeat did not measure:
    /// their usage is unknown, not nothing.
    pub unmeasured: std::collections::HashSet<String>,
    /// When its last session ended (seconds since the epoch).
    pub disconnected_at: Option<u64>,
    /// The newest desired-state generation it said it persisted, in this session.
    pub acked_generation: Option<u64>,
    /// When its desired state was last sent (seconds since the epoch).
    pub pushed_at: Option<u64>,
    /// How its session takes the registry (by the protocol it negotiated: whole, deltas of
    /// services, deltas of endpoints).
    pub registry_form: super::feed::RegistryForm,
    /// The registry version last sent to it in this session (pushes to a node go in order,
    /// so the next delta starts there), or the version it holds (said in its hello and known
    /// here by version and digest, or in an answer); `None` when not known: it is sent the
    /// whole registry.
    pub registry_sent: Option<u64>,
    /// What its hello said it holds, kept while this control plane has no registry yet (the
    /// first round after a start numbers it): taken then instead of sending it the whole.
    pub registry_claim: Option<flotilla_api::discovery::HeldRegistry>,
    /// A registry push to it is not answered yet. It has at most one: a change meanwhile is
    /// sent once the answer comes, composed with every change since (`discovery::answered`),
    /// so a node that takes pushes slower than the registry changes is sent fewer, larger
    /// deltas rather than a queue of them.
    pub registry_in_flight: bool,
    /// When a request of it for a secret or config was last recorded as refused (seconds since
    /// the epoch): refusals become events at most once a minute per node.
    pub refused_at: Option<u64>,
    /// When a request of it for an image or a blob of the content store was last recorded as
    /// refused (seconds since the epoch): likewise at most one event a minute per node.
    pub image_refused_at: Option<u64>,
}

/// How often a node's refused requests of one kind (secrets and configs; images and blobs)
/// become an event, at most (seconds): each is logged, but a node that keeps asking cannot push
/// the event log's older events out.
pub const REFUSAL_EVENT_EVERY_SECS: u64 = 60;

/// Heartbeats closer together than this (milliseconds) give no new CPU rate.
pub const MIN_RATE_MS: u64 = 1000;

/// A task's (or a node's) CPU use as the control plane derives it from two heartbeats in a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskCpu {
    /// CPU units used (1024 per core), averaged between the last two heartbeats; `None` until
    /// there are two, or when its counter went back (its cgroup was made again).
    pub units: Option<f64>,
    /// When its first heartbeat sample came (seconds since the epoch): how long it has been
    /// measured.
    pub since: u64,
}

impl TaskCpu {
    /// The rate in thousandths of a core (`kubectl top`'s unit), when there is one.
    pub fn millicores(&self) -> Option<u64> {
        self.units
            .map(|u| (u * 1000.0 / 1024.0).round().max(0.0) as u64)
    }

    /// The next sample of a task: `prev` its last one, `cpu_usec` its cgroup's counter now and
    /// `prev_usec` at the last heartbeat, `elapsed_ms` between the two heartbeats.
    pub fn next(
        prev: Option<TaskCpu>,
        cpu_usec: u64,
        prev_usec: Option<u64>,
        elapsed_ms: Option<u64>,
        now_secs: u64,
    ) -> TaskCpu {
        let units = match (prev_usec, elapsed_ms) {
            // Heartbeats too close together (a burst after a stall) say nothing of a rate:
            // the last one stands.
            (Some(_), Some(ms)) if ms < MIN_RATE_MS => prev.and_then(|p| p.units),
            (Some(p), Some(ms)) if cpu_usec >= p => {
                // µs of CPU per µs of wall time is cores; a core is 1024 units.
                Some((cpu_usec - p) as f64 / (ms as f64 * 1000.0) * 1024.0)
            }
            _ => None,
        };
        TaskCpu {
            units,
            since: prev.map_or(now_secs, |p| p.since),
        }
    }
}

/// Every node's live information.
#[derive(Debug)]
pub struct Live {
    nodes: HashMap<String, LiveInfo>,
    /// When this control plane started: a node not heard from since counts as disconnected
    /// from then.
    pub started_at: u64,
    admission: Admission,
}

impl Live {
    /// Nothing known yet, at `now`; sessions admitted at `session_rate` per second.
    pub fn new(now: Now, session_rate: u32) -> Self {
        Self {
            nodes: HashMap::new(),
            started_at: now.secs(),
            admission: Admission::new(session_rate, now),
        }
    }

    /// What a node last said (nothing: the default).
    pub fn get(&self, node: &str) -> LiveInfo {
        self.nodes.get(node).cloned().unwrap_or_default()
    }

    /// What a node last said, without a copy (`None`: nothing yet).
    pub fn peek(&self, node: &str) -> Option<&LiveInfo> {
        self.nodes.get(node)
    }

    /// The node is heard from now; `f` records what it said.
    pub fn touch(&mut self, node: &str, now: Now, f: impl FnOnce(&mut LiveInfo)) {
        let entry = self.nodes.entry(node.to_string()).or_default();
        entry.last_seen = Some(now.secs());
        f(entry);
    }

    /// Whether `node`'s refused request should become an event now: true at most once every
    /// [`REFUSAL_EVENT_EVERY_SECS`] per node and kind of request (`at` picks the kind's time:
    /// `|l| &mut l.refused_at`), recording the time when it is. A time ahead of `now` (the
    /// clock went back) does not hold the next event back.
    pub fn refusal_event_due(
        &mut self,
        node: &str,
        now: Now,
        at: fn(&mut LiveInfo) -> &mut Option<u64>,
    ) -> bool {
        let secs = now.secs();
        let entry = self.nodes.entry(node.to_string()).or_default();
        let last = at(entry);
        if last.is_some_and(|t| t <= secs && secs < t + REFUSAL_EVENT_EVERY_SECS) {
            return false;
        }
        *last = Some(secs);
        entry.last_seen = Some(secs);
        true
    }

    /// Changes what is known of a node that has said nothing (its last-seen time stays).
    pub fn update(&mut self, node: &str, f: impl FnOnce(&mut LiveInfo)) {
        if let Some(l) = self.nodes.get_mut(node) {
            f(l);
        }
    }

    /// The nodes with a live session.
    pub fn in_session(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, l)| l.session.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Its desired state was sent at `now`.
    pub fn pushed(&mut self, node: &str, now: Now) {
        self.nodes.entry(node.to_string()).or_default().pushed_at = Some(now.secs());
    }

    /// Whether the node has a live session.
    pub fn connected(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|l| l.session.is_some())
    }

    /// Seconds the node has been without a session at `now` (`None` while it has one).
    pub fn disconnected_for(&self, node: &str, now: Now) -> Option<u64> {
        let l = self.nodes.get(node);
        if l.is_some_and(|l| l.session.is_some()) {
            return None;
        }
        let since = l.and_then(|l| l.disconnected_at).unwrap_or(self.started_at);
        Some(now.secs().saturating_sub(since))
    }

    /// The clock reads `now`: a session end (or the start) recorded later than that was
    /// recorded by a clock since set back, a year say; counted from it, the node would not be
    /// lost for a year. Such times count from `now` instead.
    pub fn clock_reads(&mut self, now: Now) {
        let now = now.secs();
        self.started_at = self.started_at.min(now);
        for l in self.nodes.values_mut() {
            if let Some(at) = l.disconnected_at.as_mut() {
                *at = (*at).min(now);
            }
        }
    }

    /// A session ended; true when it was the node's live one.
    pub fn close(&mut self, node: &str, session: SessionId, now: Now) -> bool {
        match self.nodes.get_mut(node) {
            Some(l) if l.session == Some(session) => {
                l.session = None;
                l.acked_generation = None;
                l.registry_sent = None;
                l.registry_claim = None;
                l.registry_in_flight = false;
                l.disconnected_at = Some(now.secs());
                true
            }
            _ => false,
        }
    }

    /// Forgets a node (removed from the cluster).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Admits a session at `now`, or says how many milliseconds its agent should wait.
    pub fn admit(&mut self, now: Now) -> Result<(), u64> {
        self.admission.admit(now)
    }
}

/// Session admission: a token bucket of `rate` sessions per second (bursts up to `rate`). An
/// agent turned away gets the next free slot — one every `1/rate` seconds, at least a second
/// ahead — so a storm of reconnects drains at the rate instead of retrying in waves.
#[derive(Debug)]
struct Admission {
    rate: f64,
    tokens: f64,
    last_ms: u64,
    next_slot_ms: u64,
}

impl Admission {
    fn new(rate: u32, now: Now) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last_ms: now.unix_ms,
            next_slot_ms: now.unix_ms,
        }
    }

    fn admit(&mut self, now: Now) -> Result<(), u64> {
        if now.unix_ms < self.last_ms {
            // The clock was set back (after running ahead, a year say): counting from a time
            // it will not reach again would refill nothing and give slots that far away, and
            // no node could come back. The bucket counts on from the clock's time.
            self.last_ms = now.unix_ms;
            self.next_slot_ms = self.next_slot_ms.min(now.unix_ms);
        }
        let elapsed = now.unix_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last_ms = now.unix_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let slot = self.next_slot_ms.max(now.unix_ms + 1000);
        self.next_slot_ms = slot + (1000.0 / self.rate).round() as u64;
        Err(slot - now.unix_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_an_event_once_a_minute_per_node_and_kind_whatever_the_clock_does() {
        let at = |secs: u64| Now {
            unix_ms: secs * 1000,
        };
        let mut live = Live::new(at(0), 10);
        let secrets: fn(&mut LiveInfo) -> &mut Option<u64> = |l| &mut l.refused_at;
        let images: fn(&mut LiveInfo) -> &mut Option<u64> = |l| &mut l.image_refused_at;
        assert!(live.refusal_event_due("n1", at(10_000), secrets));
        assert!(!live.refusal_event_due("n1", at(10_059), secrets));
        // Another kind, another node: their own minute.
        assert!(live.refusal_event_due("n1", at(10_059), images));
        assert!(live.refusal_event_due("n2", at(10_059), secrets));
        assert!(live.refusal_event_due("n1", at(10_060), secrets));
        // The clock went back an hour: the next refusal is an event, not an hour of silence.
        assert!(live.refusal_event_due("n1", at(10_060 - 3600), secrets));
        assert!(!live.refusal_event_due("n1", at(10_061 - 3600), secrets));
    }

    #[test]
    fn a_cpu_rate_is_use_over_the_time_between_two_heartbeats() {
        // Half a core over 10 s: 512 units.
        let first = TaskCpu::next(None, 1_000_000, None, None, 100);
        assert_eq!(
            first,
            TaskCpu {
                units: None,
                since: 100
            }
        );
        let second = TaskCpu::next(Some(first), 6_000_000, Some(1_000_000), Some(10_000), 110);
        assert_eq!(
            second,
            TaskCpu {
                units: Some(512.0),
                since: 100
            }
        );
        // A burst 3 ms later keeps the rate; a counter that went back has none.
        let burst = TaskCpu::next(Some(second), 6_100_000, Some(6_000_000), Some(3), 110);
        assert_eq!(burst.units, Some(512.0));
        // As `top` shows it: half a core is 500 thousandths.
        assert_eq!(burst.millicores(), Some(500));
        assert_eq!(first.millicores(), None);
        let reset = TaskCpu::next(Some(burst), 5, Some(6_100_000), Some(10_000), 120);
        assert_eq!(
            reset,
            TaskCpu {
                units: None,
                since: 100
            }
        );
    }

    #[test]
    fn admission_spreads_a_storm_over_slots_at_the_rate() {
        let t0 = Now { unix_ms: 1_000_000 };
        let at = |ms| Now {
            unix_ms: t0.unix_ms + ms,
        };
        let mut a = Admission::new(4, t0);
        // a burst of the rate is admitted at once
        for _ in 0..4 {
            assert_eq!(a.admit(t0), Ok(()));
        }
        // then each refused agent gets its own slot, a quarter second apart, from 1 s on
        let waits: Vec<u64> = (0..4).map(|_| a.admit(t0).expect_err("busy")).collect();
        assert_eq!(waits, [1000, 1250, 1500, 1750]);
        // tokens come back at the rate
        assert_eq!(a.admit(at(500)), Ok(()));
        assert_eq!(a.admit(at(500)), Ok(()));
        assert!(a.admit(at(500)).is_err());
        // a later refusal queues behind the slots already given
        assert_eq!(a.admit(at(500)).expect_err("busy"), 1750);
    }

    #[test]
    fn a_node_gone_while_the_clock_ran_a_year_ahead_counts_as_gone_from_the_clock_set_back() {
        const YEAR_MS: u64 = 365 * 86_400_000;
        let t0 = Now { unix_ms: 1_000_000 };
        let at = |ms| Now {
            unix_ms: t0.unix_ms + ms,
        };
        let mut live = Live::new(t0, 10);
        live.touch("n-1", t0, |l| l.session = Some(1));
        assert!(live.close("n-1", 1, at(YEAR_MS)));
        // back a year: gone since the clock's time, not for a year to come
        live.clock_reads(at(5_000));
        assert_eq!(live.disconnected_for("n-1", at(5_000)), Some(0));
        assert_eq!(live.disconnected_for("n-1", at(65_000)), Some(60));
    }

    #[test]
    fn admission_goes_on_after_the_clock_ran_a_year_ahead_and_was_set_back() {
        const YEAR_MS: u64 = 365 * 86_400_000;
        let t0 = Now { unix_ms: 1_000_000 };
        let at = |ms| Now {
            unix_ms: t0.unix_ms + ms,
        };
        let mut a = Admission::new(2, t0);
        // a year ahead: a burst of the rate, then slots from 1 s on
        for _ in 0..2 {
            assert_eq!(a.admit(at(YEAR_MS)), Ok(()));
        }
        assert_eq!(a.admit(at(YEAR_MS)).expect_err("busy"), 1000);
        // back: tokens come back at the rate from the clock's time, slots are near
        assert_eq!(a.admit(at(10)).expect_err("busy"), 1000);
        assert_eq!(a.admit(at(1_010)), Ok(()));
        assert_eq!(a.admit(at(1_510)), Ok(()));
    }
}
