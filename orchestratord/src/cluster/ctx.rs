//! What a command's handler works with: its transaction, the live node information, the
//! settings, the CA, the id source, the time, and the effects it asks for.

use std::time::Duration;

use flotilla_certs::ClusterCa;

use super::command::{Effect, Now};
use super::live::Live;
use super::network;
use super::state::Txn;

/// How often auto scaling decides when no setting says (`--scaling-period`): the agents'
/// default heartbeat, so each datapoint has a fresh measurement.
pub const DEFAULT_SCALING_PERIOD: Duration = Duration::from_secs(30);

/// The core's settings (from `orchestratord run`'s flags and configuration file).
#[derive(Debug, Clone)]
pub struct Config {
    /// Lifetime of node certificates.
    pub node_cert_lifetime: Duration,
    /// Agent sessions admitted per second.
    pub session_rate: u32,
    /// Bridge subnets, awsvpc addresses, VIPs.
    pub network: network::Settings,
    /// How often services with a scalable target get a datapoint and a scaling decision.
    pub scaling_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_cert_lifetime: flotilla_certs::NODE_CERT_LIFETIME,
            session_rate: 1000,
            network: network::Settings::default(),
            scaling_period: DEFAULT_SCALING_PERIOD,
        }
    }
}

/// Where new ids come from: random in production, a counter in tests.
pub trait Ids: Send + std::fmt::Debug {
    /// A new task id (`t-…`).
    fn task(&mut self) -> String;
    /// A new deployment id (`d-…`).
    fn deployment(&mut self) -> String;
    /// A new node id (`n-…`).
    fn node(&mut self) -> String;
}

/// Random ids: 48 bits from the system's secure random source.
#[derive(Debug, Default)]
pub struct RandomIds;

impl RandomIds {
    fn suffix() -> String {
        // `n-` + 12 hex digits; the node id generator is the one source of randomness.
        flotilla_certs::new_node_id()
            .map(|n| n[2..].to_string())
            .unwrap_or_else(|_| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("{:012x}", t & 0xffff_ffff_ffff)
            })
    }
}

impl Ids for RandomIds {
    fn task(&mut self) -> String {
        format!("t-{}", Self::suffix())
    }
    fn deployment(&mut self) -> String {
        format!("d-{}", Self::suffix())
    }
    fn node(&mut self) -> String {
        format!("n-{}", Self::suffix())
    }
}

/// A handler's working set.
#[derive(Debug)]
pub struct Ctx<'a, 's> {
    /// The command's transaction.
    pub txn: &'a mut Txn<'s>,
    /// Live node information (not rolled back on a refusal: it records what nodes said).
    pub live: &'a mut Live,
    /// Settings.
    pub config: &'a Config,
    /// The cluster CA.
    pub ca: &'a ClusterCa,
    /// The key secrets' values are sealed with.
    pub sealing: &'a flotilla_certs::sealing::SealingKey,
    /// Id source.
    pub ids: &'a mut dyn Ids,
    /// Where the next awsvpc address search starts.
    pub awsvpc_cursor: &'a mut Option<std::net::Ipv4Addr>,
    /// The discovery registry last computed, its last changes and their encoded pushes.
    pub feed: &'a mut super::feed::Feed,
    /// The time.
    pub now: Now,
    /// Effects asked for, carried out after the commit.
    pub effects: Vec<Effect>,
    /// Views of nodes the plan applier computed in this command, with the node's write count
    /// then ([`super::state::Txn::node_writes`]): reused while nothing else wrote the node.
    pub views: std::collections::HashMap<String, (u64, flotilla_scheduler::NodeView)>,
    /// Nodes to send their desired state after the commit, changed or not (a new session, a
    /// node behind on acknowledgements). Nodes whose desired state the command changed get
    /// it anyway.
    pub push: std::collections::BTreeSet<String>,
    /// What the core counts (placements, refusals, sessions): kept when the command is refused.
    pub metrics: &'a mut super::metrics::Counters,
}

impl Ctx<'_, '_> {
    /// Records an event in this command's commit.
    pub fn event(&mut self, kind: &str, subject: &str, message: impl Into<String>) {
        self.txn
            .event(self.now.secs(), kind, subject, message.into());
    }
}
