//! The control plane's metrics in the Prometheus formats, encoded with `prometheus-client`;
//! `scrape.rs` serves them on their own plain-HTTP listener (`--metrics-listen`, off by
//! default) at `GET /metrics`, and `api.rs` at `GET /v1/metrics` (admin certificate, the way to
//! scrape over TLS).
//!
//! A scrape asks the core for [`Command::Metrics`]: the cluster's state in numbers, computed
//! from its memory (nothing read from or written to the store), and the counters the core
//! keeps (placements, refusals, sessions, store commit latency); this module adds the operator
//! API's request latency, which the API adapter observes. Names follow Prometheus' conventions
//! (<https://prometheus.io/docs/practices/naming/>): the `flotilla_` prefix, base units
//! (seconds) in the name, `_total` on counters. Every label has a bounded set of values.
//!
//! | metric | type | labels | source |
//! | --- | --- | --- | --- |
//! | `flotilla_nodes` | gauge | `state` | nodes by state (`READY`, `DRAINING`, `DISCONNECTED`, `REVOKED`) |
//! | `flotilla_agent_sessions` | gauge | | nodes with a live session |
//! | `flotilla_agent_session_attempts_total` | counter | `result` | hellos: `admitted`, `rate_limited` (told to come back: `session_rate`), `refused` |
//! | `flotilla_tasks` | gauge | `service`, `state` | tasks held, by service (`""`: not a service's) and state |
//! | `flotilla_service_desired_tasks` | gauge | `service` | desired count (DAEMON: nodes it may run on) |
//! | `flotilla_service_running_tasks` | gauge | `service` | tasks running |
//! | `flotilla_service_pending_tasks` | gauge | `service` | tasks placed, not running yet |
//! | `flotilla_service_deployments` | gauge | `service`, `state` | deployments by rollout state |
//! | `flotilla_placements_total` | counter | `origin` | tasks placed (`task_run`, `service`, `schedule`) |
//! | `flotilla_placement_refusals_total` | counter | `origin`, `reason` | tasks that got no node, under the reason most nodes gave |
//! | `flotilla_store_commit_duration_seconds` | histogram | | one store transaction's commit |
//! | `flotilla_store_commit_failures_total` | counter | | commits that failed |
//! | `flotilla_api_request_duration_seconds` | histogram | `method`, `route`, `code` | operator API requests, by route template |
//! | `flotilla_image_sent_bytes_total` | counter | | bytes of the content store's blobs sent to nodes over their sessions (`AgentRequest::Blob`), as written to the streams |
//! | `flotilla_agent_connections_refused_total` | counter | `reason` | QUIC connections refused before their handshake ([`AdmissionRefusal`]); no hello, so not in the session attempts |

use std::time::Duration;

use flotilla_metrics::{family, gauge};
use hyper::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use orchestratord::cluster::metrics::{PlacementOrigin, RefusalReason, Snapshot};

/// Upper bounds (seconds) of the API latency buckets: Prometheus' defaults.
const API_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The labels of an operator API request: its method, its route template (never the path it
/// was called with) and the status code answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `GET`, `POST`, `PUT`, `DELETE`, `PATCH`, `HEAD` or `OTHER`.
    pub method: &'static str,
    /// A template of `api/openapi.yaml` (`/v1/tasks/{id}`), or `other`.
    pub route: &'static str,
    /// The HTTP status code.
    pub code: u16,
}

type ApiHistograms = Family<ApiLabels, Histogram, fn() -> Histogram>;

fn api_histogram() -> Histogram {
    Histogram::new(API_BUCKETS)
}

/// Why a connection was refused before its handshake (`agents::serve`'s admission gate): the
/// `reason` label of `flotilla_agent_connections_refused_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AdmissionRefusal {
    /// `address`: its address already held its share of the admission turns
    /// (`agents::ADMISSIONS_PER_ADDRESS`).
    Address,
    /// `wait`: no turn came within `agents::ADMISSION_WAIT` (many nodes dialling at once, as
    /// after a restart of the control plane); the node dials again.
    Wait,
}

impl AdmissionRefusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::Wait => "wait",
        }
    }
}

/// What the adapters measure themselves (shared, cheap to clone through its `Arc`).
#[derive(Debug)]
pub struct Metrics {
    api: ApiHistograms,
    image_sent: Counter,
    refused_address: Counter,
    refused_wait: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            api: Family::new_with_constructor(api_histogram),
            image_sent: Counter::default(),
            refused_address: Counter::default(),
            refused_wait: Counter::default(),
        }
    }
}

impl Metrics {
    /// An operator API request answered `code` after `took`.
    pub fn api_request(&self, method: &Method, path: &str, code: StatusCode, took: Duration) {
        let labels = ApiLabels {
            method: method_label(method),
            route: route_of(path),
            code: code.as_u16(),
        };
        self.api.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// `bytes` of a content-store blob were written to a node's stream.
    pub fn image_sent(&self, bytes: u64) {
        self.image_sent.inc_by(bytes);
    }

    /// A connection was refused before its handshake, for `why`.
    pub fn connection_refused(&self, why: AdmissionRefusal) {
        match why {
            AdmissionRefusal::Address => self.refused_address.inc(),
            AdmissionRefusal::Wait => self.refused_wait.inc(),
        };
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// The operator API's route templates (the paths of `api/openapi.yaml`; a unit test keeps
/// them in step).
pub const ROUTES: &[&str] = &[
    "/v1/tokens",
    "/v1/tokens/{id}",
    "/v1/nodes",
    "/v1/nodes/{id}",
    "/v1/nodes/{id}/revoke",
    "/v1/nodes/{id}/labels",
    "/v1/nodes/{id}/drain",
    "/v1/nodes/{id}/activate",
    "/v1/admins",
    "/v1/taskdefs",
    "/v1/taskdefs/{taskdef}",
    "/v1/taskdefs/{taskdef}/deregister",
    "/v1/tasks",
    "/v1/tasks/{id}",
    "/v1/tasks/{id}/stop",
    "/v1/tasks/{id}/logs",
    "/v1/tasks/{id}/exec",
    "/v1/images",
    "/v1/images/prefetch",
    "/v1/images/pull",
    "/v1/images/{name}",
    "/v1/services",
    "/v1/services/{name}",
    "/v1/services/{name}/endpoints",
    "/v1/services/{name}/scaling",
    "/v1/services/{name}/scaling/policies",
    "/v1/services/{name}/scaling/policies/{policy}",
    "/v1/services/{name}/scaling/scheduled-actions",
    "/v1/services/{name}/scaling/scheduled-actions/{action}",
    "/v1/schedules",
    "/v1/schedules/{name}",
    "/v1/secrets",
    "/v1/secrets/{name}",
    "/v1/secrets/{name}/versions",
    "/v1/configs",
    "/v1/configs/{name}",
    "/v1/configs/{name}/versions",
    "/v1/projects",
    "/v1/projects/{name}",
    "/v1/events",
    "/v1/metrics",
];

/// The route template `path` is an instance of (`other` for none): the `route` label, so a
/// label never carries an id.
pub fn route_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    ROUTES
        .iter()
        .find(|template| {
            let t: Vec<&str> = template.trim_matches('/').split('/').collect();
            t.len() == segments.len()
                && t.iter().zip(&segments).all(|(t, s)| {
                    if t.starts_with('{') {
                        !s.is_empty()
                    } else {
                        t == s
                    }
                })
        })
        .copied()
        .unwrap_or("other")
}

/// The metrics of `snapshot` and the API's, encoded: OpenMetrics or the Prometheus text
/// format. The content type and the text.
pub fn encode(snapshot: Snapshot, metrics: &Metrics, openmetrics: bool) -> (&'static str, String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    registry.register_with_unit(
        "flotilla_api_request_duration",
        "Operator API requests by method, route template and status code, until the response head (a streamed body is not timed)",
        Unit::Seconds,
        metrics.api.clone(),
    );
    registry.register_with_unit(
        "flotilla_image_sent",
        "Bytes of the content store's blobs sent to nodes over their sessions",
        Unit::Bytes,
        metrics.image_sent.clone(),
    );
    registry.register_collector(Box::new(RefusalCollector([
        (AdmissionRefusal::Address, metrics.refused_address.get()),
        (AdmissionRefusal::Wait, metrics.refused_wait.get()),
    ])));
    flotilla_metrics::encode(&registry, openmetrics)
}

/// `flotilla_agent_connections_refused_total`, every reason present from the start (a
/// counter that appears only at its first refusal breaks `rate()` over its first value).
#[derive(Debug)]
struct RefusalCollector([(AdmissionRefusal, u64); 2]);

impl Collector for RefusalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        family(
            &mut encoder,
            "flotilla_agent_connections_refused",
            "Agent connections refused before their handshake, by reason: address (its address held its share of the admission turns) or wait (no turn within the admission wait)",
            MetricType::Counter,
            self.0
                .iter()
                .map(|(why, n)| ([("reason", why.as_str())], ConstCounter::new(*n))),
        )
    }
}

/// The snapshot's metrics, encoded at each scrape.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let c = &s.counters;
        family(
            &mut encoder,
            "flotilla_nodes",
            "Nodes by state",
            MetricType::Gauge,
            s.nodes.iter().map(|(st, n)| ([("state", *st)], gauge(*n))),
        )?;
        family(
            &mut encoder,
            "flotilla_agent_sessions",
            "Nodes with a live agent session",
            MetricType::Gauge,
            [(Vec::<(&str, &str)>::new(), gauge(s.sessions))],
        )?;
        family(
            &mut encoder,
            "flotilla_agent_session_attempts",
            "Agent session hellos by result: admitted, rate_limited (told to come back later, beyond the session rate) or refused",
            MetricType::Counter,
            [
                ("admitted", c.sessions_admitted),
                ("rate_limited", c.sessions_rate_limited),
                ("refused", c.sessions_refused),
            ]
            .map(|(r, n)| ([("result", r)], ConstCounter::new(n))),
        )?;
        family(
            &mut encoder,
            "flotilla_tasks",
            "Tasks the control plane holds by service (empty: not a service's task) and state",
            MetricType::Gauge,
            s.tasks.iter().map(|((service, state), n)| {
                (
                    [("service", service.as_str()), ("state", *state)],
                    gauge(*n),
                )
            }),
        )?;
        let per_service =
            |name, help, get: fn(&orchestratord::cluster::metrics::ServiceTasks) -> u64| {
                (
                    name,
                    help,
                    s.services
                        .iter()
                        .map(move |t| ([("service", t.service.as_str())], gauge(get(t)))),
                )
            };
        for (name, help, samples) in [
            per_service(
                "flotilla_service_desired_tasks",
                "Tasks a service should run: its desired count (DAEMON: the nodes it may run on now)",
                |t| t.desired,
            ),
            per_service(
                "flotilla_service_running_tasks",
                "Tasks of a service that are running",
                |t| t.running,
            ),
            per_service(
                "flotilla_service_pending_tasks",
                "Tasks of a service placed and not running yet",
                |t| t.pending,
            ),
        ] {
            family(&mut encoder, name, help, MetricType::Gauge, samples)?;
        }
        family(
            &mut encoder,
            "flotilla_service_deployments",
            "Deployments of a service by rollout state",
            MetricType::Gauge,
            s.deployments.iter().map(|((service, state), n)| {
                (
                    [("service", service.as_str()), ("state", *state)],
                    gauge(*n),
                )
            }),
        )?;
        family(
            &mut encoder,
            "flotilla_placements",
            "Tasks placed on a node, by origin: task_run, service or schedule",
            MetricType::Counter,
            PlacementOrigin::ALL.map(|o| {
                let n = c.placements.get(&o).copied().unwrap_or(0);
                ([("origin", o.as_str())], ConstCounter::new(n))
            }),
        )?;
        family(
            &mut encoder,
            "flotilla_placement_refusals",
            "Tasks that asked for a node and got none, by origin and the reason most nodes gave (a service that cannot place retries every round)",
            MetricType::Counter,
            PlacementOrigin::ALL.into_iter().flat_map(|o| {
                RefusalReason::ALL.map(|r| {
                    let n = c.refusals.get(&(o, r)).copied().unwrap_or(0);
                    (
                        [("origin", o.as_str()), ("reason", r.as_str())],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        let h = &c.commits;
        let mut metric = encoder.encode_descriptor(
            "flotilla_store_commit_duration",
            "Store commits (one transaction per command that wrote something)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum,
            h.count,
            &h.buckets(),
            None,
        )?;
        family(
            &mut encoder,
            "flotilla_store_commit_failures",
            "Store commits that failed (the command did nothing)",
            MetricType::Counter,
            [(
                Vec::<(&str, &str)>::new(),
                ConstCounter::new(c.commit_failures),
            )],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestratord::cluster::metrics::{Counters, ServiceTasks};

    fn snapshot() -> Snapshot {
        let mut counters = Counters::default();
        counters.placed(PlacementOrigin::TaskRun, 2);
        counters.refused(PlacementOrigin::Service, RefusalReason::Memory, 3);
        counters.committed(Duration::from_millis(3), true);
        counters.sessions_admitted = 1;
        Snapshot {
            nodes: vec![
                ("READY", 1),
                ("DRAINING", 0),
                ("DISCONNECTED", 2),
                ("REVOKED", 0),
            ],
            tasks: [
                (("".to_string(), "RUNNING"), 1),
                (("web".to_string(), "PENDING"), 2),
            ]
            .into_iter()
            .collect(),
            services: vec![ServiceTasks {
                service: "web".into(),
                desired: 3,
                running: 0,
                pending: 2,
            }],
            deployments: [(("web".to_string(), "IN_PROGRESS"), 1)]
                .into_iter()
                .collect(),
            sessions: 1,
            counters,
        }
    }

    #[test]
    fn both_formats_carry_every_metric_with_its_value() {
        let m = Metrics::default();
        m.api_request(
            &Method::GET,
            "/v1/tasks/t-123",
            StatusCode::OK,
            Duration::from_millis(2),
        );
        m.connection_refused(AdmissionRefusal::Wait);
        m.connection_refused(AdmissionRefusal::Wait);
        for openmetrics in [false, true] {
            let (kind, text) = encode(snapshot(), &m, openmetrics);
            assert_eq!(
                kind.starts_with("application/openmetrics-text"),
                openmetrics
            );
            for line in [
                "flotilla_nodes{state=\"READY\"} 1",
                "flotilla_nodes{state=\"DISCONNECTED\"} 2",
                "flotilla_agent_sessions 1",
                "flotilla_agent_session_attempts_total{result=\"admitted\"} 1",
                "flotilla_tasks{service=\"\",state=\"RUNNING\"} 1",
                "flotilla_tasks{service=\"web\",state=\"PENDING\"} 2",
                "flotilla_service_desired_tasks{service=\"web\"} 3",
                "flotilla_service_pending_tasks{service=\"web\"} 2",
                "flotilla_service_deployments{service=\"web\",state=\"IN_PROGRESS\"} 1",
                "flotilla_placements_total{origin=\"task_run\"} 2",
                "flotilla_placements_total{origin=\"schedule\"} 0",
                "flotilla_placement_refusals_total{origin=\"service\",reason=\"memory\"} 3",
                "flotilla_store_commit_duration_seconds_bucket{le=\"0.004\"} 1",
                "flotilla_store_commit_duration_seconds_bucket{le=\"+Inf\"} 1",
                "flotilla_store_commit_duration_seconds_count 1",
                "flotilla_store_commit_failures_total 0",
                "flotilla_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/tasks/{id}\",code=\"200\"} 1",
                "flotilla_agent_connections_refused_total{reason=\"wait\"} 2",
                "flotilla_agent_connections_refused_total{reason=\"address\"} 0",
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "{line} missing (openmetrics: {openmetrics}):\n{text}"
                );
            }
            assert!(!text.contains("t-123"), "a raw path leaked:\n{text}");
            assert_eq!(text.ends_with("# EOF\n"), openmetrics);
        }
    }

    #[test]
    fn the_fleet_dashboard_reads_only_what_the_control_plane_emits() {
        use flotilla_metrics::dashboard::{unknown_names, Source, FLEET_DASHBOARD};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(FLEET_DASHBOARD);
        let dashboard = std::fs::read_to_string(&path).expect("the fleet dashboard");
        let m = Metrics::default();
        m.api_request(
            &Method::GET,
            "/v1/tasks",
            StatusCode::OK,
            Duration::from_millis(2),
        );
        m.connection_refused(AdmissionRefusal::Wait);
        m.connection_refused(AdmissionRefusal::Wait);
        for openmetrics in [false, true] {
            let (_, text) = encode(snapshot(), &m, openmetrics);
            let checked = unknown_names(&dashboard, Source::ControlPlane, &text)
                .unwrap_or_else(|problems| panic!("{}:\n{}", path.display(), problems.join("\n")));
            assert!(
                checked >= 10,
                "only {checked} of the control plane's queries found"
            );
        }
    }

    #[test]
    fn routes_are_templates_never_paths() {
        assert_eq!(route_of("/v1/tasks/t-1"), "/v1/tasks/{id}");
        assert_eq!(route_of("/v1/tasks/t-1/logs"), "/v1/tasks/{id}/logs");
        assert_eq!(route_of("/v1/taskdefs/web:3"), "/v1/taskdefs/{taskdef}");
        assert_eq!(route_of("/v1/tasks"), "/v1/tasks");
        assert_eq!(route_of("/v1/tasks/"), "/v1/tasks");
        assert_eq!(route_of("/v1/nope/1"), "other");
        assert_eq!(route_of("/v1/tasks/t-1/x/y"), "other");
        assert_eq!(route_of("/v1/tasks//stop"), "other");
        assert_eq!(route_of(""), "other");
    }

    #[test]
    fn every_documented_path_is_a_route_template() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("api/openapi.yaml");
        let doc: serde_json::Value = yaml_serde::from_str(&text).expect("yaml");
        let documented: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
        for p in &documented {
            let instance = p
                .replace("{id}", "x-1")
                .replace("{taskdef}", "fam:1")
                .replace("{name}", "svc");
            assert_eq!(route_of(&instance), p.as_str(), "{p}");
        }
        for r in ROUTES {
            assert!(documented.iter().any(|p| p == r), "{r} is not documented");
        }
    }
}
