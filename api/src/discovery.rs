//! Service discovery: how a service registers (`discovery` in its spec) and the registry the
//! control plane pushes to every node, from which each node answers DNS for the cluster domain
//! and programs service VIPs — also while the control plane is unreachable.

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
}
