//! The registry as nodes are sent it: the registry now, the last changes that made it
//! (deltas, per service: replaced whole or removed) and the encoded frames that bring a node
//! to it — one per starting version, shared by every node that starts there.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use flotilla_api::discovery::{Registry, RegistryDelta};
use flotilla_api::ServerPush;

use super::command::RegistryPush;

/// How many registry changes are kept to send as deltas: a node whose version is older gets
/// the whole registry.
pub const KEPT_CHANGES: usize = 64;

/// How a session takes the registry, by the protocol its agent negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RegistryForm {
    /// Protocol 1: whole registries only.
    #[default]
    Whole,
    /// Protocol 2: deltas, each changed service whole.
    Services,
    /// Protocol 3: deltas, a service's endpoints changed one by one.
    Endpoints,
}

impl RegistryForm {
    /// The form an agent of `protocol` takes.
    pub fn of(protocol: u32) -> Self {
        if protocol >= flotilla_api::PROTOCOL_ENDPOINT_DELTAS {
            RegistryForm::Endpoints
        } else if protocol >= flotilla_api::PROTOCOL_REGISTRY_DELTAS {
            RegistryForm::Services
        } else {
            RegistryForm::Whole
        }
    }
}

/// Where a push starts (`None`: the whole registry) and the form of its delta.
type FrameKey = (Option<u64>, RegistryForm);

/// The registry, the last changes that made it, and the frames that bring a node to it.
#[derive(Debug, Default)]
pub struct Feed {
    registry: Arc<Registry>,
    /// The last changes, oldest first; the last one ends at the registry's version.
    changes: VecDeque<Arc<RegistryDelta>>,
    /// Encoded pushes to the current version by the version they apply to (`None`: the whole
    /// registry) and the form of a delta; `None` when it does not fit in a frame.
    frames: HashMap<FrameKey, Option<Arc<[u8]>>>,
}

impl Feed {
    /// The registry now.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// `next` (numbered) becomes the registry; what changed is kept.
    pub fn change(&mut self, next: Registry) {
        if self.registry.version != 0 {
            self.changes
                .push_back(Arc::new(RegistryDelta::between(&self.registry, &next)));
            while self.changes.len() > KEPT_CHANGES {
                self.changes.pop_front();
            }
        }
        self.registry = Arc::new(next);
        self.frames.clear();
    }

    /// Back to `registry`, an earlier registry of this feed (its command failed).
    pub fn restore(&mut self, registry: Arc<Registry>) {
        if registry.version == self.registry.version {
            return;
        }
        self.changes.retain(|d| d.to <= registry.version);
        self.registry = registry;
        self.frames.clear();
    }

    /// What changed since `version`, when the kept changes go back that far.
    fn since(&self, version: u64) -> Option<RegistryDelta> {
        let start = self.changes.iter().position(|d| d.from == version)?;
        let mut out = (*self.changes[start]).clone();
        for d in self.changes.iter().skip(start + 1) {
            out = out.then(d).ok()?;
        }
        Some(out)
    }

    /// What brings a node holding `held` (`None`: unknown) to the current registry: nothing
    /// when it holds it (or there is none yet), a delta in its `form` when it takes deltas and
    /// the kept changes go back to its version, else the whole registry.
    pub fn push_for(&mut self, held: Option<u64>, form: RegistryForm) -> Option<RegistryPush> {
        let version = self.registry.version;
        if version == 0 || held == Some(version) {
            return None;
        }
        let from = held
            .filter(|v| form != RegistryForm::Whole && self.changes.iter().any(|d| d.from == *v));
        let form = if from.is_some() {
            form
        } else {
            RegistryForm::Whole
        };
        let frame = match self.frames.get(&(from, form)) {
            Some(f) => f.clone(),
            None => {
                let encoded = match from.and_then(|v| self.since(v)) {
                    Some(d) if form == RegistryForm::Services => flotilla_api::encode_push(
                        &ServerPush::RegistryDelta(d.services_whole(&self.registry)),
                    ),
                    Some(d) => flotilla_api::encode_push(&ServerPush::RegistryDelta(d)),
                    None => {
                        flotilla_api::encode_push(&ServerPush::Registry((*self.registry).clone()))
                    }
                };
                let frame = match encoded {
                    Ok(f) => Some(Arc::<[u8]>::from(f)),
                    Err(e) => {
                        tracing::warn!(version, ?from, "the registry cannot be sent: {e}");
                        None
                    }
                };
                self.frames.insert((from, form), frame.clone());
                frame
            }
        }?;
        Some(RegistryPush {
            version,
            from,
            frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::discovery::DiscoveredService;
    use flotilla_api::taskdef::Protocol;

    fn numbered(version: u64, names: &[&str]) -> Registry {
        Registry {
            version,
            services: names
                .iter()
                .map(|n| DiscoveredService {
                    namespace: "ns".into(),
                    name: n.to_string(),
                    service: n.to_string(),
                    vip: None,
                    port: None,
                    fixed_port: None,
                    protocol: Protocol::Tcp,
                    endpoints: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_feed_sends_deltas_within_its_kept_changes_and_the_whole_past_them() {
        let mut feed = Feed::default();
        assert_eq!(
            feed.push_for(None, RegistryForm::Endpoints),
            None,
            "no registry yet"
        );
        feed.change(numbered(1, &[]));
        let whole = feed.push_for(None, RegistryForm::Endpoints).expect("whole");
        assert_eq!((whole.version, whole.from), (1, None));
        assert_eq!(
            feed.push_for(Some(1), RegistryForm::Endpoints),
            None,
            "held already"
        );
        let names: Vec<String> = (0..KEPT_CHANGES + 5).map(|i| format!("s{i}")).collect();
        for (i, _) in names.iter().enumerate() {
            let refs: Vec<&str> = names[..=i].iter().map(String::as_str).collect();
            feed.change(numbered(i as u64 + 2, &refs));
        }
        let last = feed.registry().version;
        // One frame per starting version, shared by every node there.
        let a = feed
            .push_for(Some(last - 1), RegistryForm::Endpoints)
            .expect("delta");
        let b = feed
            .push_for(Some(last - 1), RegistryForm::Endpoints)
            .expect("delta");
        assert_eq!(a.from, Some(last - 1));
        assert!(Arc::ptr_eq(&a.frame, &b.frame));
        // Within the kept changes: one delta; past them, or unknown: the whole registry.
        let oldest_kept = last - KEPT_CHANGES as u64;
        assert_eq!(
            feed.push_for(Some(oldest_kept), RegistryForm::Endpoints)
                .map(|p| p.from),
            Some(Some(oldest_kept))
        );
        assert_eq!(
            feed.push_for(Some(oldest_kept - 1), RegistryForm::Endpoints)
                .map(|p| p.from),
            Some(None)
        );
        assert_eq!(
            feed.push_for(Some(999_999), RegistryForm::Endpoints)
                .map(|p| p.from),
            Some(None)
        );
        // An agent that takes no deltas: always whole, the same frame.
        let old = feed
            .push_for(Some(last - 1), RegistryForm::Whole)
            .expect("whole");
        let unknown = feed.push_for(None, RegistryForm::Endpoints).expect("whole");
        assert_eq!(old.from, None);
        assert!(Arc::ptr_eq(&old.frame, &unknown.frame));
        // A failed command's change is taken back.
        let before = feed.registry().clone();
        feed.change(numbered(last + 1, &["x"]));
        feed.restore(before.clone());
        assert_eq!(feed.registry(), &before);
        assert_eq!(
            feed.push_for(Some(last - 1), RegistryForm::Endpoints)
                .map(|p| p.version),
            Some(last)
        );
    }

    #[test]
    fn an_agent_of_protocol_2_gets_a_changed_service_whole_and_one_of_3_its_endpoints() {
        use flotilla_api::discovery::Endpoint;
        let with = |version: u64, tasks: &[&str]| {
            let mut r = numbered(version, &["web"]);
            r.services[0].endpoints = tasks
                .iter()
                .map(|t| Endpoint {
                    task: t.to_string(),
                    node: "n-1".into(),
                    address: std::net::Ipv4Addr::new(10, 0, 0, 1),
                    port: Some(80),
                    task_address: None,
                    task_port: None,
                })
                .collect();
            r
        };
        let mut feed = Feed::default();
        feed.change(with(1, &["t-1", "t-2", "t-3"]));
        feed.change(with(2, &["t-1", "t-2", "t-4"]));
        fn delta(feed: &mut Feed, form: RegistryForm) -> RegistryDelta {
            let push = feed.push_for(Some(1), form).expect("a delta");
            match serde_json::from_slice::<ServerPush>(&push.frame[4..]) {
                Ok(ServerPush::RegistryDelta(d)) => d,
                other => panic!("{other:?}"),
            }
        }
        let by_endpoint = delta(&mut feed, RegistryForm::Endpoints);
        assert!(by_endpoint.upserted.is_empty());
        assert_eq!(by_endpoint.endpoints[0].removed, ["t-3"]);
        let whole = delta(&mut feed, RegistryForm::Services);
        assert!(whole.endpoints.is_empty());
        assert_eq!(whole.upserted, feed.registry().services);
        // Each made once and shared.
        let a = feed
            .push_for(Some(1), RegistryForm::Services)
            .expect("delta");
        let b = feed
            .push_for(Some(1), RegistryForm::Services)
            .expect("delta");
        assert!(Arc::ptr_eq(&a.frame, &b.frame));
        assert_eq!(RegistryForm::of(1), RegistryForm::Whole);
        assert_eq!(RegistryForm::of(2), RegistryForm::Services);
        assert_eq!(RegistryForm::of(3), RegistryForm::Endpoints);
    }
}
