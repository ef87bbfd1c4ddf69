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
    /// The service `name` in `namespace`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&DiscoveredService> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The registry `delta` makes of this one; refused unless the delta applies to this
    /// version. Services stay ordered by namespace and name.
    pub fn apply(&self, delta: &RegistryDelta) -> Result<Registry, OutOfSequence> {
        if delta.from != self.version {
            return Err(OutOfSequence {
                held: self.version,
                from: delta.from,
            });
        }
        let mut services: BTreeMap<ServiceName, DiscoveredService> =
            self.services.iter().map(|s| (s.key(), s.clone())).collect();
        for k in &delta.removed {
            services.remove(k);
        }
        for s in &delta.upserted {
            services.insert(s.key(), s.clone());
        }
        Ok(Registry {
            version: delta.to,
            services: services.into_values().collect(),
        })
    }
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
/// replaced (each whole) and the services removed. Sent to agents that speak protocol 2 in
/// place of the whole registry when they hold `from`.
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

impl RegistryDelta {
    /// What changed from `old` to `new`.
    pub fn between(old: &Registry, new: &Registry) -> Self {
        let before: BTreeMap<ServiceName, &DiscoveredService> =
            old.services.iter().map(|s| (s.key(), s)).collect();
        let after: BTreeMap<ServiceName, &DiscoveredService> =
            new.services.iter().map(|s| (s.key(), s)).collect();
        let upserted = after
            .iter()
            .filter(|(k, s)| before.get(*k) != Some(*s))
            .map(|(_, s)| (*s).clone())
            .collect();
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
        }
    }

    /// `self` and then `next` as one delta (from `self.from` to `next.to`).
    pub fn then(&self, next: &RegistryDelta) -> Result<RegistryDelta, OutOfSequence> {
        if next.from != self.to {
            return Err(OutOfSequence {
                held: self.to,
                from: next.from,
            });
        }
        let mut changes: BTreeMap<ServiceName, Option<DiscoveredService>> = BTreeMap::new();
        for d in [self, next] {
            for k in &d.removed {
                changes.insert(k.clone(), None);
            }
            for s in &d.upserted {
                changes.insert(s.key(), Some(s.clone()));
            }
        }
        let mut out = RegistryDelta {
            from: self.from,
            to: next.to,
            ..Default::default()
        };
        for (k, change) in changes {
            match change {
                Some(s) => out.upserted.push(s),
                None => out.removed.push(k),
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
        assert_eq!(names, ["api", "web"], "unchanged services are not carried");
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
    fn a_delta_applies_only_to_the_version_it_follows() {
        let v1 = registry(1, vec![service("a", "web", &["t-1"])]);
        let v2 = registry(2, vec![service("a", "web", &["t-1", "t-2"])]);
        let v3 = registry(3, vec![]);
        let d12 = RegistryDelta::between(&v1, &v2);
        let d23 = RegistryDelta::between(&v2, &v3);
        // A gap (2→3 given to a holder of 1) and a repeat (1→2 given to a holder of 2).
        assert_eq!(v1.apply(&d23), Err(OutOfSequence { held: 1, from: 2 }));
        assert_eq!(v2.apply(&d12), Err(OutOfSequence { held: 2, from: 1 }));
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
}
