//! Benchmark: the control plane's core on 1,000 services of 3 tasks on 100 simulated nodes
//! (their agents are commands given to the core, no process: a fake fleet, named as such) — the
//! time of one service round in steady state and while every service rolls out a new revision,
//! of one node-loss check, and of operators' updates — against the round's period (1 s: the
//! share of the core's time the rounds take) and against one fsynced commit of the same store
//! on the same disk, measured in the same run.
//! `cargo build --release --workspace && target/release/bench-core [SERVICES]`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_api::ops::TokenCreate;
use flotilla_api::service::ServiceUpdate;
use flotilla_api::tasks::{
    ContainerState, ContainerStatus, DesiredState, DesiredStatus, TaskState, TaskStatus,
};
use flotilla_api::{Hello, JoinReply, JoinRequest, NodeResources, PROTOCOLS};
use orchestratord::cluster::store::{RedbStore, Store, Writes};
use orchestratord::cluster::{
    Agent, Cluster, Command, Config, Effect, Now, Operator, RandomIds, Reply, Tick,
};

const NODES: usize = 100;
const TASKS_PER_SERVICE: u32 = 3;
const FAMILIES: usize = 10;

fn now() -> Now {
    Now {
        unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

/// The fake fleet: the core, and the last desired state each simulated node was sent.
struct Fleet {
    core: Cluster,
    desired: BTreeMap<String, DesiredState>,
}

impl Fleet {
    fn exec(&mut self, c: Command) -> Reply {
        let o = self.core.execute(c, now()).expect("command");
        for e in o.effects {
            if let Effect::PushDesired { node, state, .. } = e {
                self.desired.insert(node, *state);
            }
        }
        o.reply
    }

    /// Every simulated node reports its desired tasks converged (running, or stopped).
    fn converge(&mut self) {
        let nodes: Vec<(String, DesiredState)> =
            std::mem::take(&mut self.desired).into_iter().collect();
        for (node, d) in nodes {
            let tasks: Vec<TaskStatus> = d
                .tasks
                .iter()
                .map(|t| TaskStatus {
                    id: t.id.clone(),
                    state: match t.desired {
                        DesiredStatus::Running => TaskState::Running,
                        DesiredStatus::Stopped => TaskState::Stopped,
                    },
                    stop_reason: t.stop_reason.clone(),
                    stop_code: t.stop_code,
                    containers: vec![ContainerStatus {
                        name: "main".into(),
                        state: match t.desired {
                            DesiredStatus::Running => ContainerState::Running,
                            DesiredStatus::Stopped => ContainerState::Exited,
                        },
                        exit_code: (t.desired == DesiredStatus::Stopped).then_some(0),
                        reason: None,
                        restarts: 0,
                        restart_at: None,
                        health: None,
                        usage: None,
                    }],
                    scheduled: None,
                    network: None,
                })
                .collect();
            if !tasks.is_empty() {
                self.exec(Command::Agent(Agent::Report { node, tasks }));
            }
        }
    }

    fn timed(&mut self, c: Command) -> Duration {
        let t = Instant::now();
        self.exec(c);
        t.elapsed()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn main() {
    let [services] = flotilla_tests::bench_args([("SERVICES", 1000)]);
    let services = services.max(1) as usize;
    // On the disk the control plane's data would be on (not tmpfs): commits are fsynced.
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let ca = flotilla_certs::ClusterCa::generate("bench").expect("CA");
    let store = RedbStore::open(&dir.path().join("cp.redb")).expect("store");
    let core = Cluster::open(
        Box::new(store),
        ca,
        Config::default(),
        Box::new(RandomIds),
        now(),
    )
    .expect("open");
    let mut fleet = Fleet {
        core,
        desired: BTreeMap::new(),
    };
    for i in 0..NODES {
        let Reply::TokenCreated(t) = fleet.exec(Command::Operator(Operator::CreateToken(
            TokenCreate::default(),
        ))) else {
            panic!("token")
        };
        let token: flotilla_certs::token::JoinToken = t.token.parse().expect("token");
        let key = flotilla_certs::key_and_csr("node").expect("csr");
        let Reply::Join(j) = fleet.exec(Command::Agent(Agent::Join {
            request: JoinRequest {
                protocols: PROTOCOLS.to_vec(),
                token_id: token.id().into(),
                secret: token.secret().into(),
                csr_pem: key.cert_pem,
                hostname: format!("sim{i}"),
                labels: BTreeMap::from([("site".into(), format!("store-{}", i % 10))]),
                previous: None,
            },
            peer: "192.0.2.1:1".into(),
        })) else {
            panic!("join")
        };
        let JoinReply::Joined { node_id, .. } = *j else {
            panic!("refused")
        };
        fleet.exec(Command::Agent(Agent::Hello {
            node: node_id.clone(),
            session: i as u64 + 1,
            hello: Hello {
                protocols: PROTOCOLS.to_vec(),
                agent_version: "simulated".into(),
                address: None,
                registry: None,
            },
            remote: None,
        }));
        fleet.exec(Command::Agent(Agent::Heartbeat {
            node: node_id,
            resources: NodeResources {
                cpus: 64,
                memory_bytes: 256 << 30,
                ..NodeResources::default()
            },
            usage: Vec::new(),
        }));
    }
    for f in 0..FAMILIES {
        for image in ["v1", "v2"] {
            fleet.exec(Command::Operator(Operator::RegisterTaskDef(format!(
                r#"{{"family":"f{f}","containerDefinitions":[{{"name":"main","image":"{image}","memory":64}}]}}"#
            ))));
        }
    }
    let created = Instant::now();
    for s in 0..services {
        fleet.exec(Command::Operator(Operator::CreateService(format!(
            r#"{{"serviceName":"s{s}","taskDefinition":"f{}:1","desiredCount":{TASKS_PER_SERVICE},
                "deploymentConfiguration":{{"minimumHealthyPercent":50,"maximumPercent":200}}}}"#,
            s % FAMILIES
        ))));
    }
    let create_rate = services as f64 / created.elapsed().as_secs_f64();
    // To steady state: every task running, every deployment completed.
    for _ in 0..4 {
        fleet.exec(Command::Tick(Tick::ServiceRound));
        fleet.converge();
    }
    let steady: Vec<Duration> = (0..20)
        .map(|_| fleet.timed(Command::Tick(Tick::ServiceRound)))
        .collect();
    let loss: Vec<Duration> = (0..20)
        .map(|_| fleet.timed(Command::Tick(Tick::NodeLossCheck)))
        .collect();
    let Reply::Tasks(tasks) =
        fleet.exec(Command::Operator(Operator::ListTasks(Default::default())))
    else {
        panic!("tasks")
    };
    let tasks = tasks.items;
    let running = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .count();
    // Every service rolls out its family's second revision.
    let updating = Instant::now();
    for s in 0..services {
        fleet.exec(Command::Operator(Operator::UpdateService(
            format!("s{s}"),
            ServiceUpdate {
                task_definition: Some(format!("f{}:2", s % FAMILIES)),
                ..ServiceUpdate::default()
            },
        )));
    }
    let update_rate = services as f64 / updating.elapsed().as_secs_f64();
    let mut rollout = Vec::new();
    for _ in 0..6 {
        rollout.push(fleet.timed(Command::Tick(Tick::ServiceRound)));
        fleet.converge();
    }
    let Reply::Services(all) = fleet.exec(Command::Operator(Operator::ListServices)) else {
        panic!("services")
    };
    let done = all
        .iter()
        .filter(|s| s.deployments.len() == 1 && s.deployments[0].task_definition.ends_with(":2"))
        .count();
    // Anchor: one fsynced commit of the same store on the same disk.
    let mut anchor_store = RedbStore::open(&dir.path().join("anchor.redb")).expect("store");
    let commits: Vec<Duration> = (0..20)
        .map(|i| {
            let mut w = Writes::default();
            w.events.push(flotilla_api::ops::Event {
                seq: i + 1,
                time: 0,
                kind: "bench".into(),
                subject: "s".into(),
                message: "m".into(),
            });
            let t = Instant::now();
            anchor_store.commit(&w).expect("commit");
            t.elapsed()
        })
        .collect();
    let (commit, _) = median(commits);
    let (steady_p50, steady_p90) = median(steady);
    let (loss_p50, _) = median(loss);
    let busiest = rollout.iter().max().copied().unwrap_or_default();
    let period = Duration::from_secs(1);
    println!(
        "fleet: {services} services × {TASKS_PER_SERVICE} tasks on {NODES} simulated nodes; \
         {running} tasks running; {done} services rolled out to revision 2 in {} rounds",
        rollout.len()
    );
    println!(
        "anchor: one fsynced commit {:.2} ms; the round period 1 s",
        ms(commit)
    );
    println!(
        "service round, steady state: p50 {:.2} ms, p90 {:.2} ms = {:.3}× the period, {:.1}× a commit",
        ms(steady_p50),
        ms(steady_p90),
        steady_p50.as_secs_f64() / period.as_secs_f64(),
        steady_p50.as_secs_f64() / commit.as_secs_f64()
    );
    println!(
        "service round, all rolling out: busiest {:.1} ms = {:.3}× the period ({})",
        ms(busiest),
        busiest.as_secs_f64() / period.as_secs_f64(),
        rollout
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "node-loss check: p50 {:.2} ms = {:.3}× the period",
        ms(loss_p50),
        loss_p50.as_secs_f64() / period.as_secs_f64()
    );
    println!(
        "operators: {create_rate:.0} service creates/s, {update_rate:.0} updates/s (each one commit: {:.2}× the commit anchor's rate)",
        update_rate * commit.as_secs_f64()
    );
}
