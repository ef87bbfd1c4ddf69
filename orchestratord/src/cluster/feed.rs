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

/// The registry, the last changes that made it, and the frames that bring a node to it.
#[derive(Debug, Default)]
pub struct Feed {
    registry: Arc<Registry>,
    /// The last changes, oldest first; the last one ends at the registry's version.
    changes: VecDeque<Arc<RegistryDelta>>,
    /// Encoded pushes to the current version by the version they apply to (`None`: the whole
    /// registry); `None` when it does not fit in a frame.
    frames: HashMap<Option<u64>, Option<Arc<[u8]>>>,
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
    /// when it holds it (or there is none yet), a delta when it takes deltas and the kept
    /// changes go back to its version, else the whole registry.
    pub fn push_for(&mut self, held: Option<u64>, deltas: bool) -> Option<RegistryPush> {
        let version = self.registry.version;
        if version == 0 || held == Some(version) {
            return None;
        }
        let from = held.filter(|v| deltas && self.changes.iter().any(|d| d.from == *v));
        let frame = match self.frames.get(&from) {
            Some(f) => f.clone(),
            None => {
                let encoded = match from.and_then(|v| self.since(v)) {
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
                self.frames.insert(from, frame.clone());
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
        assert_eq!(feed.push_for(None, true), None, "no registry yet");
        feed.change(numbered(1, &[]));
        let whole = feed.push_for(None, true).expect("whole");
        assert_eq!((whole.version, whole.from), (1, None));
        assert_eq!(feed.push_for(Some(1), true), None, "held already");
        let names: Vec<String> = (0..KEPT_CHANGES + 5).map(|i| format!("s{i}")).collect();
        for (i, _) in names.iter().enumerate() {
            let refs: Vec<&str> = names[..=i].iter().map(String::as_str).collect();
            feed.change(numbered(i as u64 + 2, &refs));
        }
        let last = feed.registry().version;
        // One frame per starting version, shared by every node there.
        let a = feed.push_for(Some(last - 1), true).expect("delta");
        let b = feed.push_for(Some(last - 1), true).expect("delta");
        assert_eq!(a.from, Some(last - 1));
        assert!(Arc::ptr_eq(&a.frame, &b.frame));
        // Within the kept changes: one delta; past them, or unknown: the whole registry.
        let oldest_kept = last - KEPT_CHANGES as u64;
        assert_eq!(
            feed.push_for(Some(oldest_kept), true).map(|p| p.from),
            Some(Some(oldest_kept))
        );
        assert_eq!(
            feed.push_for(Some(oldest_kept - 1), true).map(|p| p.from),
            Some(None)
        );
        assert_eq!(
            feed.push_for(Some(999_999), true).map(|p| p.from),
            Some(None)
        );
        // An agent that takes no deltas: always whole, the same frame.
        let old = feed.push_for(Some(last - 1), false).expect("whole");
        let unknown = feed.push_for(None, true).expect("whole");
        assert_eq!(old.from, None);
        assert!(Arc::ptr_eq(&old.frame, &unknown.frame));
        // A failed command's change is taken back.
        let before = feed.registry().clone();
        feed.change(numbered(last + 1, &["x"]));
        feed.restore(before.clone());
        assert_eq!(feed.registry(), &before);
        assert_eq!(
            feed.push_for(Some(last - 1), true).map(|p| p.version),
            Some(last)
        );
    }
}
