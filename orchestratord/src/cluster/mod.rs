//! The control plane's core: the one writer of the cluster's state.
//!
//! Everything that changes the cluster is a [`Command`] — an operator's request, what an agent
//! says, a timer tick — and [`Cluster::execute`] runs it, at a time given by the caller, in one
//! transaction: its records, the generations of the nodes whose desired state it changed, and
//! its events are committed to the store together, or nothing is. The answer is an
//! [`Outcome`]: a [`Reply`] and the [`Effect`]s the adapters carry out (push a desired state or
//! the registry to nodes, close a session). The core owns the store, live node information
//! (not connections), the address pools and the discovery registry; it imports no network or
//! async-runtime crate. It runs on one dedicated thread fed by a channel (the binary's `core`); the
//! HTTPS API, the QUIC sessions and the timers are thin adapters around it.

mod agents;
pub mod command;
pub mod ctx;
mod desired;
mod discovery;
mod feed;
mod gauges;
mod images;
mod listing;
pub mod live;
pub mod metrics;
pub mod network;
mod operator;
pub mod placement;
mod projects;
pub mod records;
mod scaling;
mod schedules;
pub mod secrets;
mod services;
pub mod state;
pub mod store;
mod tasks;
pub use tasks::STOPPED_RETENTION_SECS;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod listing_tests;
#[cfg(test)]
mod project_tests;
#[cfg(test)]
mod registry_tests;
#[cfg(test)]
mod scaling_tests;
#[cfg(test)]
mod tests;

use flotilla_certs::ClusterCa;

pub use command::{
    Agent, CloseCode, ClusterError, Command, Effect, Now, Operator, Outcome, RegistryAnswer, Reply,
    Tick,
};
pub use ctx::{Config, Ids, RandomIds, DEFAULT_SCALING_PERIOD};
pub use store::{RedbStore, Store};

use ctx::Ctx;
use live::Live;
use state::{State, Txn};

/// The cluster: its state, its store and what it knows of live nodes.
#[derive(Debug)]
pub struct Cluster {
    state: State,
    store: Box<dyn Store>,
    live: Live,
    config: Config,
    ca: ClusterCa,
    sealing: flotilla_certs::sealing::SealingKey,
    ids: Box<dyn Ids>,
    registry: feed::Feed,
    awsvpc_cursor: Option<std::net::Ipv4Addr>,
    metrics: metrics::Counters,
    scaling: scaling::Windows,
}

impl Cluster {
    /// The cluster of `store` (every record loaded), at `now`: no node is connected yet.
    pub fn open(
        store: Box<dyn Store>,
        ca: ClusterCa,
        config: Config,
        ids: Box<dyn Ids>,
        now: Now,
    ) -> Result<Self, ClusterError> {
        let state = State::new(store.load()?);
        let sealing = ca
            .sealing_key(secrets::PURPOSE)
            .map_err(|e| ClusterError::Internal(format!("the secrets' sealing key: {e}")))?;
        Ok(Self {
            sealing,
            state,
            store,
            live: Live::new(now, config.session_rate),
            config,
            ca,
            ids,
            registry: feed::Feed::default(),
            awsvpc_cursor: None,
            metrics: metrics::Counters::default(),
            scaling: scaling::Windows::default(),
        })
    }

    /// Runs a command at `now`: its changes committed in one transaction (nothing committed
    /// when it fails), then its reply and effects.
    pub fn execute(&mut self, command: Command, now: Now) -> Result<Outcome, ClusterError> {
        let registry = self.registry.now();
        self.registry.begin();
        let result = self.run(command, now);
        if result.is_err() {
            // Derived from uncommitted state: computed again next round. Its pushes were not
            // made: the nodes are as before them.
            self.registry.restore(registry);
            for (node, before) in self.registry.sent() {
                self.live.update(&node, |l| {
                    l.registry_sent = before;
                    l.registry_in_flight = false;
                });
            }
        }
        result
    }

    fn run(&mut self, command: Command, now: Now) -> Result<Outcome, ClusterError> {
        if let Command::Health = command {
            return Ok(Outcome {
                reply: Reply::Health(self.store.healthy()),
                effects: Vec::new(),
            });
        }
        if let Command::Metrics = command {
            // Read-only: computed from memory, nothing committed.
            let view = Txn::new(&self.state);
            let snapshot = gauges::snapshot(&view, &self.live, &self.metrics);
            return Ok(Outcome {
                reply: Reply::Metrics(Box::new(snapshot)),
                effects: Vec::new(),
            });
        }
        let mut txn = Txn::new(&self.state);
        let mut cx = Ctx {
            txn: &mut txn,
            live: &mut self.live,
            config: &self.config,
            ca: &self.ca,
            sealing: &self.sealing,
            ids: self.ids.as_mut(),
            awsvpc_cursor: &mut self.awsvpc_cursor,
            feed: &mut self.registry,
            now,
            effects: Vec::new(),
            views: Default::default(),
            push: Default::default(),
            metrics: &mut self.metrics,
        };
        let reply = match command {
            // Projects are built on the operator's handlers (`projects.rs` calls them), so they
            // are dispatched here rather than by `operator::execute`.
            Command::Operator(op) if projects::handles(&op) => projects::execute(&mut cx, op)?,
            Command::Operator(op) => operator::execute(&mut cx, op)?,
            Command::Agent(a) => agents::execute(&mut cx, a)?,
            Command::Tick(Tick::NodeLossCheck) => {
                cx.live.clock_reads(now);
                services::node_loss_check(&mut cx);
                Reply::Done
            }
            Command::Tick(Tick::ServiceRound) => {
                services::round(&mut cx)?;
                discovery::round(&mut cx);
                Reply::Done
            }
            Command::Tick(Tick::ScalingRound) => {
                scaling::round(&mut cx, &mut self.scaling)?;
                Reply::Done
            }
            Command::Tick(Tick::ScheduleRound) => {
                schedules::round(&mut cx)?;
                Reply::Done
            }
            Command::Tick(Tick::PruneStopped) => {
                let n = tasks::prune_stopped(&mut cx, |txn, t| {
                    t.info
                        .service()
                        .and_then(|name| txn.service(name))
                        .is_some_and(|s| services::kept_stopped(s, t))
                });
                if n > 0 {
                    tracing::info!(
                        "removed the records of {n} tasks stopped more than {} h ago",
                        tasks::STOPPED_RETENTION_SECS / 3600
                    );
                }
                Reply::Done
            }
            Command::Health | Command::Metrics => Reply::Done,
        };
        let Ctx {
            mut effects,
            mut push,
            ..
        } = cx;
        txn.stamp_stopped(now.secs());
        push.extend(desired::bump_changed(&mut txn));
        let writes = txn.into_writes();
        if !writes.is_empty() {
            // Measured for the metrics only: no decision reads this clock.
            let started = std::time::Instant::now();
            let committed = self.store.commit(&writes);
            self.metrics.committed(started.elapsed(), committed.is_ok());
            committed?;
            self.state.apply(writes);
        }
        let view = Txn::new(&self.state);
        for node in push {
            let Some(state) = desired::state(&view, &node) else {
                continue;
            };
            if !self.live.connected(&node) {
                continue;
            }
            self.live.pushed(&node, now);
            let registry = self
                .live
                .peek(&node)
                .filter(|l| l.registry_in_flight)
                .map(|_| self.registry.registry().version);
            effects.push(Effect::PushDesired {
                node,
                state: Box::new(state),
                registry,
            });
        }
        Ok(Outcome { reply, effects })
    }
}
