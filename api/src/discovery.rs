//! Service discovery: how a service registers (`discovery` in its spec) and the registry the
//! control plane pushes to every node, from which each node answers DNS for the cluster domain
//! and programs service VIPs — also while the control plane is unreachable.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::taskdef::Protocol;

/// The cluster's DNS domain.
pub const DOMAIN: &str = "flotilla.internal";

/// Seconds a DNS answer about a service may be cached.
pub const TTL: u32 = 5;

/// The address containers send DNS queries to, inside their own network namespace.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// `discovery` of a service (Flotilla's own field): the name it registers under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    /// Namespace: `NAME.NAMESPACE.flotilla.internal`.
    pub namespace: String,
    /// Name (default: the service name).
    pub name: String,
    /// The container whose port is the service's (default: the first with a port mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The service's port (a `containerPort` of that container; default: its first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// Give the service a stable virtual address, balanced over its healthy tasks on every
    /// node.
    #[serde(default)]
    pub vip: bool,
}

/// True when `s` is one DNS label Flotilla accepts for names and namespaces: 1 to 63 lowercase
/// letters, digits and hyphens, not starting or ending with a hyphen.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The registry a node holds, as its hello says it (`Hello::registry`): the control plane
/// sends nothing when it is the registry now, what changed since when it is a kept version
/// with the same services, else the whole registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRegistry {
    /// [`Registry::version`].
    pub version: u64,
    /// [`Registry::digest`].
    pub digest: String,
}

/// What every node knows of the cluster's discoverable services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Increases with every change (milliseconds of the control plane's clock at the change,
    /// or the previous version + 1).
    pub version: u64,
    /// The services, ordered by namespace and name.
    pub services: Vec<DiscoveredService>,
}

impl Registry {
    /// Its services' content: hex SHA-256 of their JSON (this crate's serialization, in
    /// their order: by namespace and name, endpoints by task id), 64 characters. Two registries
    /// with the same services have the same digest whatever their versions; a node says it with
    /// the version it holds ([`HeldRegistry`]) so that a version numbered again with other
    /// services (a control plane's store put back from a backup) is never taken for it.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(&self.services).unwrap_or_default();
        ring::digest::digest(&ring::digest::SHA256, &json)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// What a node holding this registry says of it in its hello; `None` for none (version 0).
    pub fn held(&self) -> Option<HeldRegistry> {
        (self.version != 0).then(|| HeldRegistry {
            version: self.version,
            digest: self.digest(),
        })
    }

    /// The service `name` in `namespace`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&DiscoveredService> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The registry `delta` makes of this one; refused unless the delta applies to this
    /// version and every service whose endpoints it changes is held. Services stay ordered by
    /// namespace and name, endpoints by task id.
    pub fn apply(&self, delta: &RegistryDelta) -> Result<Registry, DeltaError> {
        if delta.from != self.version {
            return Err(OutOfSequence {
                held: self.version,
                from: delta.from,
            }
            .into());
        }
        let mut services: BTreeMap<ServiceName, DiscoveredService> =
            self.services.iter().map(|s| (s.key(), s.clone())).collect();
        for k in &delta.removed {
            services.remove(k);
        }
        for s in &delta.upserted {
            services.insert(s.key(), s.clone());
        }
        for e in &delta.endpoints {
            let k = e.key();
            let Some(s) = services.get(&k) else {
                return Err(DeltaError::NotHeld(k));
            };
            let changed = e.applied_to(s);
            services.insert(k, changed);
        }
        Ok(Registry {
            version: delta.to,
            services: services.into_values().collect(),
        })
    }
}

/// One service's change in composed deltas.
enum Change {
    Removed,
    Whole(DiscoveredService),
    Endpoints(EndpointsDelta),
}

/// A service's place in the registry: its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What changed in the registry from version `from` to version `to`: the services added or
/// replaced (each whole), the services removed and — from protocol 3
/// ([`crate::PROTOCOL_ENDPOINT_DELTAS`]) — the services of which only endpoints changed, by
/// endpoint. Sent to agents that speak protocol 2 or later in place of the whole registry when
/// they hold `from`; an agent of protocol 2 gets no `endpoints` (see
/// [`RegistryDelta::services_whole`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryDelta {
    /// The version it applies to.
    pub from: u64,
    /// The version it makes.
    pub to: u64,
    /// Services added or replaced, whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserted: Vec<DiscoveredService>,
    /// Services removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ServiceName>,
    /// Services held at `from` of which only endpoints changed, ordered by namespace and name
    /// (protocol 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointsDelta>,
}

/// What changed in the endpoints of one service, its other fields as they were: a DAEMON
/// service on 10,000 nodes has 10,000 endpoints (about 1.2 MB), and a task started or stopped
/// changes one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsDelta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Endpoints added or changed (by task id), ordered by task id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserted: Vec<Endpoint>,
    /// Task ids whose endpoints went (a task not held is no error: composed deltas may name a
    /// task added and removed since `from`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl EndpointsDelta {
    fn key(&self) -> ServiceName {
        ServiceName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// What changed from `old`'s endpoints to `new`'s (the same service).
    fn between(old: &DiscoveredService, new: &DiscoveredService) -> Self {
        let before: BTreeMap<&str, &Endpoint> =
            old.endpoints.iter().map(|e| (e.task.as_str(), e)).collect();
        let after: BTreeMap<&str, &Endpoint> =
            new.endpoints.iter().map(|e| (e.task.as_str(), e)).collect();
        EndpointsDelta {
            namespace: new.namespace.clone(),
            name: new.name.clone(),
            upserted: after
                .iter()
                .filter(|(t, e)| before.get(*t) != Some(*e))
                .map(|(_, e)| (*e).clone())
                .collect(),
            removed: before
                .keys()
                .filter(|t| !after.contains_key(*t))
                .map(|t| t.to_string())
                .collect(),
        }
    }

    /// `service` with these endpoint changes (its endpoints stay ordered by task id).
    fn applied_to(&self, service: &DiscoveredService) -> DiscoveredService {
        let mut endpoints: BTreeMap<&str, &Endpoint> = service
            .endpoints
            .iter()
            .map(|e| (e.task.as_str(), e))
            .collect();
        for t in &self.removed {
            endpoints.remove(t.as_str());
        }
        for e in &self.upserted {
            endpoints.insert(e.task.as_str(), e);
        }
        DiscoveredService {
            endpoints: endpoints.into_values().cloned().collect(),
            ..service.clone()
        }
    }

    /// These changes, then `next`'s, as one.
    fn then(&self, next: &EndpointsDelta) -> EndpointsDelta {
        let mut upserted: BTreeMap<String, Endpoint> = self
            .upserted
            .iter()
            .map(|e| (e.task.clone(), e.clone()))
            .collect();
        let mut removed: std::collections::BTreeSet<String> =
            self.removed.iter().cloned().collect();
        for t in &next.removed {
            upserted.remove(t);
            removed.insert(t.clone());
        }
        for e in &next.upserted {
            removed.remove(&e.task);
            upserted.insert(e.task.clone(), e.clone());
        }
        EndpointsDelta {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            upserted: upserted.into_values().collect(),
            removed: removed.into_iter().collect(),
        }
    }
}

/// A delta that does not follow the registry it is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("registry delta from version {from} does not apply to version {held}")]
pub struct OutOfSequence {
    /// The version held.
    pub held: u64,
    /// The version the delta applies to.
    pub from: u64,
}

/// Why a delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// It does not follow the version held.
    #[error(transparent)]
    OutOfSequence(#[from] OutOfSequence),
    /// It changes the endpoints of a service the registry does not hold: no control plane
    /// sends that; the registry held is not what the delta was made against.
    #[error("registry delta changes the endpoints of {0}, which the registry does not hold")]
    NotHeld(ServiceName),
}

impl DeltaError {
    /// The version to answer the control plane with, to be sent what changed since: the one
    /// held, or 0 (nothing usable: the whole registry) when the delta named a service not held.
    pub fn held(&self) -> u64 {
        match self {
            DeltaError::OutOfSequence(e) => e.held,
            DeltaError::NotHeld(_) => 0,
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

impl RegistryDelta {
    /// What changed from `old` to `new`: a service of which only endpoints changed is carried
    /// by endpoint when that is fewer endpoints than the service has, else whole.
    pub fn between(old: &Registry, new: &Registry) -> Self {
        let before: BTreeMap<ServiceName, &DiscoveredService> =
            old.services.iter().map(|s| (s.key(), s)).collect();
        let after: BTreeMap<ServiceName, &DiscoveredService> =
            new.services.iter().map(|s| (s.key(), s)).collect();
        let mut upserted = Vec::new();
        let mut endpoints = Vec::new();
        for (k, s) in &after {
            let Some(was) = before.get(k) else {
                upserted.push((*s).clone());
                continue;
            };
            if was == s {
                continue;
            }
            let same_but_endpoints = DiscoveredService {
                endpoints: Vec::new(),
                ..(*was).clone()
            } == DiscoveredService {
                endpoints: Vec::new(),
                ..(*s).clone()
            };
            let e = EndpointsDelta::between(was, s);
            if same_but_endpoints && e.upserted.len() + e.removed.len() < s.endpoints.len() {
                endpoints.push(e);
            } else {
                upserted.push((*s).clone());
            }
        }
        let removed = before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .cloned()
            .collect();
        Self {
            from: old.version,
            to: new.version,
            upserted,
            removed,
            endpoints,
        }
    }

    /// This delta as an agent of protocol 2 takes it: each service whose endpoints it changes
    /// carried whole, as it is in `at`, the registry at [`RegistryDelta::to`].
    pub fn services_whole(&self, at: &Registry) -> RegistryDelta {
        let mut out = RegistryDelta {
            endpoints: Vec::new(),
            ..self.clone()
        };
        for e in &self.endpoints {
            if let Some(s) = at.service(&e.namespace, &e.name) {
                out.upserted.push(s.clone());
            }
        }
        out.upserted.sort_by_key(DiscoveredService::key);
        out
    }

    /// `self` and then `next` as one delta (from `self.from` to `next.to`).
    pub fn then(&self, next: &RegistryDelta) -> Result<RegistryDelta, DeltaError> {
        if next.from != self.to {
            return Err(OutOfSequence {
                held: self.to,
                from: next.from,
            }
            .into());
        }
        let mut changes: BTreeMap<ServiceName, Change> = BTreeMap::new();
        for d in [self, next] {
            for k in &d.removed {
                changes.insert(k.clone(), Change::Removed);
            }
            for s in &d.upserted {
                changes.insert(s.key(), Change::Whole(s.clone()));
            }
            for e in &d.endpoints {
                let change = match changes.remove(&e.key()) {
                    None => Change::Endpoints(e.clone()),
                    Some(Change::Whole(s)) => Change::Whole(e.applied_to(&s)),
                    Some(Change::Endpoints(before)) => Change::Endpoints(before.then(e)),
                    // Endpoints of a service removed before: no control plane makes that.
                    Some(Change::Removed) => return Err(DeltaError::NotHeld(e.key())),
                };
                changes.insert(e.key(), change);
            }
        }
        let mut out = RegistryDelta {
            from: self.from,
            to: next.to,
            ..Default::default()
        };
        for (k, change) in changes {
            match change {
                Change::Whole(s) => out.upserted.push(s),
                Change::Removed => out.removed.push(k),
                Change::Endpoints(e) => out.endpoints.push(e),
            }
        }
        Ok(out)
    }
}

/// A service as DNS answers for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Flotilla service it is.
    pub service: String,
    /// Its virtual address, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    /// The service port (the container port; also the port on the VIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The port every task is reached on when its definition fixes one (a static host port,
    /// or the container port of host and awsvpc tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_port: Option<u16>,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its healthy running tasks.
    pub endpoints: Vec<Endpoint>,
}

/// One healthy task of a service, and where it is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Task id.
    pub task: String,
    /// Its node.
    pub node: String,
    /// The address it is reached on from anywhere in the cluster: its own (awsvpc) or its
    /// node's (bridge, host).
    pub address: Ipv4Addr,
    /// The port it is reached on there (the host port of a bridge mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The task's own address (bridge, awsvpc): what its own node uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_address: Option<Ipv4Addr>,
    /// The port on the task's own address: the container port of its own task definition,
    /// which a deployment to a new revision may change while both revisions' tasks serve.
    /// Absent (an older control plane): the service's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_port: Option<u16>,
}

impl DiscoveredService {
    /// Its place in the registry.
    pub fn key(&self) -> ServiceName {
        ServiceName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `NAME.NAMESPACE.flotilla.internal`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.{DOMAIN}", self.name, self.namespace)
    }

    /// The name of one of its tasks: `TASK.NAME.NAMESPACE.flotilla.internal`.
    pub fn task_fqdn(&self, task: &str) -> String {
        format!("{task}.{}", self.fqdn())
    }
}

/// The Kubernetes-style environment variables a task in `namespace` gets for the services of
/// its namespace: `NAME_SERVICE_HOST` (the VIP, or the DNS name) and `NAME_SERVICE_PORT`
/// (the VIP's port, or the port the definition fixes for every task).
pub fn environment(registry: &Registry, namespace: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in registry
        .services
        .iter()
        .filter(|s| s.namespace == namespace)
    {
        let key = s.name.to_ascii_uppercase().replace('-', "_");
        let host = s.vip.map_or_else(|| s.fqdn(), |v| v.to_string());
        out.push((format!("{key}_SERVICE_HOST"), host));
        let port = if s.vip.is_some() {
            s.port
        } else {
            s.fixed_port
        };
        if let Some(p) = port {
            out.push((format!("{key}_SERVICE_PORT"), p.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["api", "a", "shop-2", &"x".repeat(63)] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "API", "a.b", "a_b", &"x".repeat(64)] {
            assert!(!is_label(bad), "{bad}");
        }
    }

    fn endpoint(task: &str, port: u16) -> Endpoint {
        Endpoint {
            task: task.into(),
            node: "n-1".into(),
            address: Ipv4Addr::new(10, 0, 0, 1),
            port: Some(port),
            task_address: None,
            task_port: None,
        }
    }

    #[test]
    fn environment_names_the_namespace_services() {
        let registry = Registry {
            version: 1,
            services: vec![
                DiscoveredService {
                    namespace: "shop".into(),
                    name: "cart-db".into(),
                    service: "cart-db".into(),
                    vip: None,
                    port: Some(5432),
                    fixed_port: Some(49200),
                    protocol: Protocol::Tcp,
                    endpoints: vec![endpoint("t-1", 49200), endpoint("t-2", 49200)],
                },
                DiscoveredService {
                    namespace: "shop".into(),
                    name: "api".into(),
                    service: "api".into(),
                    vip: Some(Ipv4Addr::new(10, 43, 0, 7)),
                    port: Some(80),
                    fixed_port: None,
                    protocol: Protocol::Tcp,
                    endpoints: vec![endpoint("t-3", 49201), endpoint("t-4", 49300)],
                },
                DiscoveredService {
                    namespace: "other".into(),
                    name: "x".into(),
                    service: "x".into(),
                    vip: None,
                    port: None,
                    fixed_port: None,
                    protocol: Protocol::Tcp,
                    endpoints: vec![],
                },
            ],
        };
        let env = environment(&registry, "shop");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("CART_DB_SERVICE_HOST"),
            Some("cart-db.shop.flotilla.internal")
        );
        assert_eq!(get("CART_DB_SERVICE_PORT"), Some("49200"));
        assert_eq!(get("API_SERVICE_HOST"), Some("10.43.0.7"));
        assert_eq!(get("API_SERVICE_PORT"), Some("80"));
        assert_eq!(get("X_SERVICE_HOST"), None);
        assert_eq!(env.len(), 4);
    }

    fn service(ns: &str, name: &str, tasks: &[&str]) -> DiscoveredService {
        DiscoveredService {
            namespace: ns.into(),
            name: name.into(),
            service: name.into(),
            vip: None,
            port: Some(80),
            fixed_port: None,
            protocol: Protocol::Tcp,
            endpoints: tasks.iter().map(|t| endpoint(t, 80)).collect(),
        }
    }

    fn registry(version: u64, services: Vec<DiscoveredService>) -> Registry {
        Registry { version, services }
    }

    #[test]
    fn a_delta_carries_what_changed_and_makes_the_new_registry() {
        let old = registry(
            5,
            vec![
                service("a", "db", &["t-1"]),
                service("a", "web", &["t-2"]),
                service("b", "x", &[]),
            ],
        );
        let new = registry(
            9,
            vec![
                service("a", "api", &["t-4"]),
                service("a", "web", &["t-2", "t-3"]),
                service("b", "x", &[]),
            ],
        );
        let d = RegistryDelta::between(&old, &new);
        assert_eq!((d.from, d.to), (5, 9));
        let names: Vec<&str> = d.upserted.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api"], "unchanged services are not carried");
        // web gained one endpoint of two: carried by endpoint.
        assert_eq!(
            d.endpoints,
            [EndpointsDelta {
                namespace: "a".into(),
                name: "web".into(),
                upserted: vec![endpoint("t-3", 80)],
                removed: vec![],
            }]
        );
        assert_eq!(
            d.removed,
            [ServiceName {
                namespace: "a".into(),
                name: "db".into()
            }]
        );
        assert_eq!(old.apply(&d), Ok(new.clone()), "in order, as whole");
        // Nothing changed: an empty delta still moves the version.
        let same = RegistryDelta::between(&new, &registry(10, new.services.clone()));
        assert!(same.upserted.is_empty() && same.removed.is_empty());
        assert_eq!(new.apply(&same).map(|r| r.version), Ok(10));
    }

    #[test]
    fn a_registry_made_by_deltas_has_the_digest_of_the_one_they_lead_to() {
        let old = registry(
            5,
            vec![service("a", "db", &["t-1"]), service("a", "web", &["t-2"])],
        );
        let new = registry(
            9,
            vec![
                service("a", "api", &["t-4"]),
                service("a", "web", &["t-3", "t-2", "t-5"]),
            ],
        );
        // As the control plane numbers it: endpoints by task id.
        let mut new = new;
        new.services[1]
            .endpoints
            .sort_by(|a, b| a.task.cmp(&b.task));
        let made = old
            .apply(&RegistryDelta::between(&old, &new))
            .expect("applies");
        assert_eq!(made.digest(), new.digest());
        // Through the wire (JSON) too: the node's copy is what it decoded.
        let decoded: Registry =
            serde_json::from_slice(&serde_json::to_vec(&made).expect("json")).expect("decodes");
        assert_eq!(decoded.digest(), new.digest());
        let digest = new.digest();
        assert_eq!(digest.len(), 64);
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Another version of the same services: the same digest; other services: another.
        assert_eq!(registry(10, new.services.clone()).digest(), digest);
        assert_ne!(old.digest(), digest);
        assert_eq!(new.held(), Some(HeldRegistry { version: 9, digest }));
        assert_eq!(Registry::default().held(), None, "version 0: none held");
    }

    #[test]
    fn a_delta_applies_only_to_the_version_it_follows() {
        let v1 = registry(1, vec![service("a", "web", &["t-1"])]);
        let v2 = registry(2, vec![service("a", "web", &["t-1", "t-2"])]);
        let v3 = registry(3, vec![]);
        let d12 = RegistryDelta::between(&v1, &v2);
        let d23 = RegistryDelta::between(&v2, &v3);
        // A gap (2→3 given to a holder of 1) and a repeat (1→2 given to a holder of 2).
        assert_eq!(
            v1.apply(&d23),
            Err(OutOfSequence { held: 1, from: 2 }.into())
        );
        assert_eq!(
            v2.apply(&d12),
            Err(OutOfSequence { held: 2, from: 1 }.into())
        );
        // A reset to nothing: every service removed.
        assert_eq!(v2.apply(&d23), Ok(v3.clone()));
        assert!(d23.upserted.is_empty() && d23.removed.len() == 1);
    }

    #[test]
    fn deltas_in_a_row_compose_into_one() {
        let v1 = registry(
            1,
            vec![service("a", "db", &["t-1"]), service("a", "web", &[])],
        );
        let v2 = registry(2, vec![service("a", "web", &["t-2"])]);
        let v3 = registry(
            3,
            vec![service("a", "db", &["t-9"]), service("a", "web", &["t-2"])],
        );
        let v4 = registry(4, vec![service("a", "db", &["t-9"])]);
        let d = RegistryDelta::between(&v1, &v2)
            .then(&RegistryDelta::between(&v2, &v3))
            .and_then(|d| d.then(&RegistryDelta::between(&v3, &v4)))
            .expect("in sequence");
        assert_eq!((d.from, d.to), (1, 4));
        // db removed then added again: carried whole; web changed then removed: removed.
        assert_eq!(v1.apply(&d), Ok(v4.clone()));
        assert_eq!(d.upserted.len() + d.removed.len(), 2);
        assert!(RegistryDelta::between(&v1, &v2)
            .then(&RegistryDelta::between(&v3, &v4))
            .is_err());
    }

    #[test]
    fn a_task_replaced_in_a_service_of_a_thousand_endpoints_is_sent_as_two_endpoints() {
        let tasks: Vec<String> = (0..1000).map(|i| format!("t-{i:04}")).collect();
        let refs: Vec<&str> = tasks.iter().map(String::as_str).collect();
        let old = registry(1, vec![service("a", "edge", &refs)]);
        let mut replaced = refs.clone();
        replaced[500] = "t-9999";
        replaced.sort_unstable();
        let new = registry(2, vec![service("a", "edge", &replaced)]);
        let d = RegistryDelta::between(&old, &new);
        assert!(d.upserted.is_empty() && d.removed.is_empty(), "{d:?}");
        assert_eq!(d.endpoints.len(), 1);
        assert_eq!(d.endpoints[0].removed, ["t-0500"]);
        assert_eq!(d.endpoints[0].upserted, [endpoint("t-9999", 80)]);
        let frame = serde_json::to_vec(&d).expect("encode");
        let whole = serde_json::to_vec(&d.services_whole(&new)).expect("encode");
        assert!(frame.len() < 300, "{} bytes", frame.len());
        assert!(whole.len() > 50_000, "{} bytes", whole.len());
        assert_eq!(old.apply(&d), Ok(new.clone()));
        // As an agent of protocol 2 takes it: the service whole, the same registry made.
        let d2 = d.services_whole(&new);
        assert!(d2.endpoints.is_empty() && d2.upserted.len() == 1);
        assert_eq!(old.apply(&d2), Ok(new));
    }

    #[test]
    fn endpoints_of_a_service_not_held_are_refused_and_ask_for_the_whole_registry() {
        let held = registry(3, vec![service("a", "web", &["t-1"])]);
        let d = RegistryDelta {
            from: 3,
            to: 4,
            endpoints: vec![EndpointsDelta {
                namespace: "a".into(),
                name: "db".into(),
                upserted: vec![endpoint("t-2", 80)],
                removed: vec![],
            }],
            ..Default::default()
        };
        let e = held.apply(&d).err();
        assert_eq!(
            e.as_ref().map(ToString::to_string).as_deref(),
            Some("registry delta changes the endpoints of db.a, which the registry does not hold")
        );
        assert_eq!(e.map(|e| e.held()), Some(0));
    }

    /// Registries in a row, each from the one before by a change drawn from `seed`: endpoints
    /// added, removed or changed, a service's port changed, a service removed or added again.
    fn registries_in_a_row(seed: u64, n: usize) -> Vec<Registry> {
        let mut x = seed;
        let mut next = move |m: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % m
        };
        let mut out = vec![registry(
            1,
            vec![
                service("a", "db", &["t-1", "t-2"]),
                service("a", "web", &["t-3", "t-4", "t-5", "t-6"]),
            ],
        )];
        for v in 2..=n as u64 {
            let mut r = out.last().cloned().unwrap_or_default();
            r.version = v;
            for _ in 0..=next(3) {
                let names = ["db", "web", "cache"];
                let name = names[next(3) as usize];
                let at = r.services.iter().position(|s| s.name == name);
                match (next(6), at) {
                    (0, Some(i)) => {
                        r.services.remove(i);
                    }
                    (1, Some(i)) => r.services[i].port = Some(80 + next(3) as u16),
                    (2 | 3, Some(i)) => {
                        let t = format!("t-{}", next(12));
                        let port = 80 + next(2) as u16;
                        let eps = &mut r.services[i].endpoints;
                        eps.retain(|e| e.task != t);
                        eps.push(endpoint(&t, port));
                        eps.sort_by(|a, b| a.task.cmp(&b.task));
                    }
                    (_, Some(i)) => {
                        let eps = &mut r.services[i].endpoints;
                        if !eps.is_empty() {
                            let k = next(eps.len() as u64) as usize;
                            eps.remove(k);
                        }
                    }
                    (_, None) => {
                        r.services.push(service("a", name, &["t-7"]));
                        r.services.sort_by_key(DiscoveredService::key);
                    }
                }
            }
            out.push(r);
        }
        out
    }

    #[test]
    fn composed_deltas_of_endpoints_and_services_make_the_registry_of_their_end() {
        let (mut by_endpoint, mut whole, mut removed) = (0, 0, 0);
        for seed in 0..40 {
            let rs = registries_in_a_row(seed, 12);
            let deltas: Vec<RegistryDelta> = rs
                .windows(2)
                .map(|w| RegistryDelta::between(&w[0], &w[1]))
                .collect();
            for d in &deltas {
                by_endpoint += d.endpoints.len();
                whole += d.upserted.len();
                removed += d.removed.len();
            }
            for i in 0..deltas.len() {
                let mut composed = deltas[i].clone();
                for (j, d) in deltas.iter().enumerate().skip(i) {
                    if j > i {
                        composed = composed.then(d).expect("in sequence");
                    }
                    let end = &rs[j + 1];
                    assert_eq!(
                        rs[i].apply(&composed).as_ref(),
                        Ok(end),
                        "seed {seed}: {i} to {}: {composed:?}",
                        j + 1
                    );
                    assert_eq!(
                        rs[i].apply(&composed.services_whole(end)).as_ref(),
                        Ok(end),
                        "seed {seed}: {i} to {}, services whole",
                        j + 1
                    );
                }
            }
        }
        // Every kind of change was drawn, many times.
        assert!(
            by_endpoint > 50 && whole > 50 && removed > 20,
            "{by_endpoint} {whole} {removed}"
        );
    }
}
