//! The registry as nodes are sent it: the registry now, the last changes that made it
//! (deltas, per service: replaced whole or removed, or by endpoint) and the encoded frames that
//! bring a node to it. A change's own frame is encoded once and sent to every node of protocol
//! 4 behind it, in a row with the frames of the changes after it; a delta composed for older
//! agents is encoded once per starting version, shared by every node that starts there. For
//! nodes of protocol 5 a frame worth it is also packed ([`flotilla_api::pack_push`]), once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use flotilla_api::discovery::{HeldRegistry, Registry, RegistryDelta};
use flotilla_api::ServerPush;

use super::command::RegistryPush;

/// How many registry changes are kept to send as deltas: a node whose version is older gets
/// the whole registry. Fewer than a node takes in a row
/// ([`flotilla_api::MAX_DELTAS_IN_A_PUSH`]).
pub const KEPT_CHANGES: usize = 64;

const _: () = assert!(KEPT_CHANGES <= flotilla_api::MAX_DELTAS_IN_A_PUSH);

/// A row of deltas longer than this (bytes) is weighed against the whole registry: a node
/// behind by more than the registry holds is sent the whole.
const ROW_WEIGHED_FROM: usize = 64 << 10;

/// A frame of this many bytes or more is packed for nodes that take packed pushes: below it,
/// what packing saves is not worth the node's unpacking.
const PACK_FROM: usize = 4 << 10;

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
    /// Protocol 4: as 3, and a node behind by several changes is sent each change's own delta,
    /// in a row on one push ([`flotilla_api::PROTOCOL_DELTAS_IN_A_ROW`]).
    InARow,
    /// Protocol 5: as 4, each frame of [`PACK_FROM`] bytes or more packed
    /// ([`flotilla_api::PROTOCOL_PACKED_PUSHES`]).
    Packed,
}

impl RegistryForm {
    /// The form an agent of `protocol` takes.
    pub fn of(protocol: u32) -> Self {
        if protocol >= flotilla_api::PROTOCOL_PACKED_PUSHES {
            RegistryForm::Packed
        } else if protocol >= flotilla_api::PROTOCOL_DELTAS_IN_A_ROW {
            RegistryForm::InARow
        } else if protocol >= flotilla_api::PROTOCOL_ENDPOINT_DELTAS {
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

/// One kept change.
#[derive(Debug)]
struct Change {
    delta: Arc<RegistryDelta>,
    /// The digest of the registry it applies to ([`Registry::digest`]).
    from_digest: Arc<str>,
    /// Its own frame (by endpoint), once first sent; `None` inside when it does not fit.
    frame: Option<Option<Arc<[u8]>>>,
    /// That frame as a node of protocol 5 is sent it ([`pack`]), once first sent.
    packed: Option<Arc<[u8]>>,
}

/// The registry, the last changes that made it, and the frames that bring a node to it.
#[derive(Debug, Default)]
pub struct Feed {
    registry: Arc<Registry>,
    /// Its digest ([`Registry::digest`]).
    digest: Arc<str>,
    /// The last changes, oldest first; the last one ends at the registry's version.
    changes: VecDeque<Change>,
    /// Encoded pushes to the current version by the version they apply to (`None`: the whole
    /// registry) and the form of a delta; `None` when it does not fit in a frame.
    frames: HashMap<FrameKey, Option<Arc<[u8]>>>,
    /// A version a node holds that this feed does not know, at or above its own: the next
    /// registry is numbered above it ([`Feed::above`]).
    floor: u64,
    /// The nodes a push was made for in this command, and what they were sent before
    /// ([`Feed::begin`], [`Feed::sent`]): taken back when the command fails.
    sent: Vec<(String, Option<u64>)>,
    /// Nodes that refused the whole registry, and when (seconds since the epoch): sent it
    /// again [`RETRY_REFUSED_SECS`] later if the registry has not changed meanwhile.
    refused: Vec<(String, u64)>,
}

/// Seconds after a node refused the whole registry (its disk full, say) that it is sent the
/// whole again, if no change sent it meanwhile.
pub const RETRY_REFUSED_SECS: u64 = 30;

/// How far past the clock (and the registry's version) a version a node says it holds is
/// believed, milliseconds: versions are the control plane's clock at a change, so one further
/// ahead is not one it numbered, and numbering above it would only let a node push the
/// registry's versions to their end.
const FLOOR_AHEAD_MS: u64 = 7 * 24 * 3600 * 1000;

/// `push` as one frame; `None` (said in the log) when it does not fit.
fn encode(push: &ServerPush, version: u64, from: Option<u64>) -> Option<Arc<[u8]>> {
    match flotilla_api::encode_push(push) {
        Ok(f) => Some(Arc::from(f)),
        Err(e) => {
            tracing::warn!(version, ?from, "the registry cannot be sent: {e}");
            None
        }
    }
}

/// `frame` as a node of protocol 5 is sent it: packed when it weighs [`PACK_FROM`] or more
/// and packing makes it lighter, else as it is.
fn pack(frame: &Arc<[u8]>) -> Arc<[u8]> {
    if frame.len() < PACK_FROM {
        return frame.clone();
    }
    match flotilla_api::pack_push(frame) {
        Ok(packed) if packed.len() < frame.len() => Arc::from(packed),
        Ok(_) => frame.clone(),
        Err(e) => {
            tracing::warn!("a registry frame is sent unpacked: {e}");
            frame.clone()
        }
    }
}

impl Feed {
    /// The registry now.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The registry now and its digest, for [`Feed::restore`].
    pub fn now(&self) -> (Arc<Registry>, Arc<str>) {
        (self.registry.clone(), self.digest.clone())
    }

    /// `next` (numbered), whose digest is `digest` ([`Registry::digest`]), becomes the
    /// registry; what changed is kept.
    pub fn change(&mut self, next: Registry, digest: String) {
        let digest: Arc<str> = Arc::from(digest);
        if self.registry.version != 0 {
            self.changes.push_back(Change {
                delta: Arc::new(RegistryDelta::between(&self.registry, &next)),
                from_digest: std::mem::replace(&mut self.digest, digest.clone()),
                frame: None,
                packed: None,
            });
            while self.changes.len() > KEPT_CHANGES {
                self.changes.pop_front();
            }
        }
        self.registry = Arc::new(next);
        self.digest = digest;
        self.frames.clear();
    }

    /// Back to `now`, an earlier registry of this feed and its digest ([`Feed::now`]; its
    /// command failed).
    pub fn restore(&mut self, (registry, digest): (Arc<Registry>, Arc<str>)) {
        if registry.version == self.registry.version {
            return;
        }
        self.changes.retain(|c| c.delta.to <= registry.version);
        self.registry = registry;
        self.digest = digest;
        self.frames.clear();
    }

    /// A node says it holds `version`, a registry this feed does not know: when that is at or
    /// above the registry's own, the node would keep its own over the whole one (`nodeagent`
    /// takes only a newer one), so the next registry is numbered above it
    /// ([`Feed::floor`]) — a control plane whose store was put back from a backup numbers
    /// again from below what its nodes hold. A version more than [`FLOOR_AHEAD_MS`] past the
    /// clock is not believed (said in the log, naming `node`).
    pub fn above(&mut self, version: u64, now: super::Now, node: &str) {
        if version < self.registry.version || version <= self.floor {
            return;
        }
        if version
            > now
                .unix_ms
                .max(self.registry.version)
                .saturating_add(FLOOR_AHEAD_MS)
        {
            tracing::warn!(node = %node, version, "the node says it holds a registry version far past this control plane's clock: not believed");
            return;
        }
        tracing::info!(node = %node, version, registry = self.registry.version, "the node holds a registry version this control plane does not know: the next is numbered above it");
        self.floor = version;
    }

    /// The version the next registry must be numbered above (0: none); while it is at or
    /// above the registry's own, the registry is numbered anew even when unchanged.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// `node` refused the whole registry at `now`.
    pub fn refused(&mut self, node: &str, now: super::Now) {
        self.refused.retain(|(n, _)| n != node);
        self.refused.push((node.to_string(), now.secs()));
    }

    /// The nodes that refused the whole registry [`RETRY_REFUSED_SECS`] or more before `now`
    /// (or after it: the clock went back), taken.
    pub fn refused_due(&mut self, now: super::Now) -> Vec<String> {
        if self.refused.is_empty() {
            return Vec::new();
        }
        let secs = now.secs();
        let (due, wait): (Vec<_>, Vec<_>) = self
            .refused
            .drain(..)
            .partition(|(_, at)| *at > secs || secs - at >= RETRY_REFUSED_SECS);
        self.refused = wait;
        due.into_iter().map(|(n, _)| n).collect()
    }

    /// A command starts: the pushes it makes are noted ([`Feed::sent`]).
    pub fn begin(&mut self) {
        self.sent.clear();
    }

    /// A push is made for `node`, which was sent `before`.
    pub fn note_sent(&mut self, node: &str, before: Option<u64>) {
        self.sent.push((node.to_string(), before));
    }

    /// The pushes made since [`Feed::begin`], taken: the nodes and what they were sent before.
    pub fn sent(&mut self) -> Vec<(String, Option<u64>)> {
        std::mem::take(&mut self.sent)
    }

    /// The version a node that says it holds `held` is taken to hold: that version when it
    /// is the registry now or one a kept change applies to, with the same digest; else
    /// `None` (it is sent the whole registry). A version numbered again with other services
    /// (a store put back from a backup) is not taken for the one the node holds.
    pub fn held(&self, held: &HeldRegistry) -> Option<u64> {
        let same = |version: u64, digest: &str| version == held.version && digest == held.digest;
        (self.registry.version != 0
            && (same(self.registry.version, &self.digest)
                || self
                    .changes
                    .iter()
                    .any(|c| same(c.delta.from, &c.from_digest))))
        .then_some(held.version)
    }

    /// Where in the kept changes the one from `version` is.
    fn position(&self, version: u64) -> Option<usize> {
        self.changes.iter().position(|c| c.delta.from == version)
    }

    /// What changed since the kept change at `start`, composed into one delta.
    fn since(&self, start: usize) -> Option<RegistryDelta> {
        let mut out = (*self.changes[start].delta).clone();
        for c in self.changes.iter().skip(start + 1) {
            out = out.then(&c.delta).ok()?;
        }
        Some(out)
    }

    /// The frame of `key` to the current version, encoded once.
    fn frame(&mut self, key: FrameKey, start: Option<usize>) -> Option<Arc<[u8]>> {
        if let Some(f) = self.frames.get(&key) {
            return f.clone();
        }
        let version = self.registry.version;
        let frame = match start.and_then(|i| self.since(i)) {
            Some(d) if key.1 == RegistryForm::Services => encode(
                &ServerPush::RegistryDelta(d.services_whole(&self.registry)),
                version,
                key.0,
            ),
            Some(d) => encode(&ServerPush::RegistryDelta(d), version, key.0),
            None => encode(
                &ServerPush::Registry((*self.registry).clone()),
                version,
                None,
            ),
        };
        self.frames.insert(key, frame.clone());
        frame
    }

    /// The whole registry's frame, encoded once (and, `packed`, packed once: [`pack`]).
    fn whole(&mut self, packed: bool) -> Option<Arc<[u8]>> {
        let plain = self.frame((None, RegistryForm::Whole), None)?;
        if !packed {
            return Some(plain);
        }
        Some(
            self.frames
                .entry((None, RegistryForm::Packed))
                .or_insert_with(|| Some(pack(&plain)))
                .clone()
                .unwrap_or(plain),
        )
    }

    /// The frames of every kept change from `start` on, each encoded once (and, `packed`,
    /// packed once); `None` when one does not fit, when the frames after the first weigh
    /// as much as a node takes in a row or more (`MAX_PUSH_FRAME`, as sent and, a packed one,
    /// also unpacked: `nodeagent`'s `deltas_in_a_row`), or when the row weighs more than the
    /// whole registry (sent in the same form).
    fn row(&mut self, start: usize, packed: bool) -> Option<Vec<Arc<[u8]>>> {
        let mut frames = Vec::with_capacity(self.changes.len() - start);
        let mut bytes = 0;
        // What the node counts of the frames after the first.
        let mut counted = 0;
        for c in self.changes.iter_mut().skip(start) {
            let plain = c
                .frame
                .get_or_insert_with(|| {
                    let d = &c.delta;
                    encode(
                        &ServerPush::RegistryDelta((**d).clone()),
                        d.to,
                        Some(d.from),
                    )
                })
                .clone()?;
            let frame = if packed {
                c.packed.get_or_insert_with(|| pack(&plain)).clone()
            } else {
                plain.clone()
            };
            // Length words included and the limit itself refused: as an agent of protocol 4
            // counts (its stream's bytes after the first frame, below the limit), which is
            // stricter than this release's.
            if !frames.is_empty() {
                counted += frame.len();
                if u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]])
                    & flotilla_api::PACKED
                    != 0
                {
                    counted += plain.len() - 4;
                }
                if counted >= flotilla_api::MAX_PUSH_FRAME {
                    return None;
                }
            }
            bytes += frame.len();
            frames.push(frame);
        }
        if bytes > ROW_WEIGHED_FROM {
            let whole = self.whole(packed)?;
            if bytes > whole.len() {
                return None;
            }
        }
        Some(frames)
    }

    /// What brings a node holding `held` (`None`: unknown) to the current registry: nothing
    /// when it holds it (or there is none yet); when it takes deltas and the kept changes go
    /// back to its version, a delta in its `form` (of protocol 4 and later: each change since,
    /// in a row; of protocol 5, packed where worth it); else the whole registry.
    pub fn push_for(&mut self, held: Option<u64>, form: RegistryForm) -> Option<RegistryPush> {
        let version = self.registry.version;
        if version == 0 || held == Some(version) {
            return None;
        }
        let start = held
            .filter(|_| form != RegistryForm::Whole)
            .and_then(|v| self.position(v));
        let in_a_row = form >= RegistryForm::InARow;
        let packed = form == RegistryForm::Packed;
        if let (Some(i), true) = (start, in_a_row) {
            if let Some(frames) = self.row(i, packed) {
                return Some(RegistryPush {
                    version,
                    from: held,
                    frames,
                });
            }
        }
        let (frame, from) = match start {
            Some(_) if !in_a_row => (self.frame((held, form), start)?, held),
            _ => (self.whole(packed)?, None),
        };
        Some(RegistryPush {
            version,
            from,
            frames: vec![frame],
        })
    }
}

/// What one encoded frame says, unpacked when packed, and whether it was (for tests).
#[cfg(test)]
pub(crate) fn decode_frame(frame: &[u8]) -> (ServerPush, bool) {
    let word = u32::from_be_bytes(frame[..4].try_into().expect("length"));
    let packed = word & flotilla_api::PACKED != 0;
    assert_eq!(
        (word & !flotilla_api::PACKED) as usize + 4,
        frame.len(),
        "one frame each"
    );
    let body = if packed {
        flotilla_api::unpack(&frame[4..], flotilla_api::MAX_PUSH_FRAME).expect("unpack")
    } else {
        frame[4..].to_vec()
    };
    (serde_json::from_slice(&body).expect("a push"), packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::discovery::DiscoveredService;
    use flotilla_api::taskdef::Protocol;

    /// `next` becomes the registry, with its digest.
    fn change(feed: &mut Feed, next: Registry) {
        let digest = next.digest();
        feed.change(next, digest);
    }

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
        change(&mut feed, numbered(1, &[]));
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
            change(&mut feed, numbered(i as u64 + 2, &refs));
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
        assert!(Arc::ptr_eq(&a.frames[0], &b.frames[0]));
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
        assert!(Arc::ptr_eq(&old.frames[0], &unknown.frames[0]));
        // A failed command's change is taken back.
        let before = feed.now();
        change(&mut feed, numbered(last + 1, &["x"]));
        feed.restore(before.clone());
        assert_eq!(feed.registry(), &before.0);
        assert_eq!(feed.held(&before.0.held().expect("numbered")), Some(last));
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
        change(&mut feed, with(1, &["t-1", "t-2", "t-3"]));
        change(&mut feed, with(2, &["t-1", "t-2", "t-4"]));
        fn delta(feed: &mut Feed, form: RegistryForm) -> RegistryDelta {
            let push = feed.push_for(Some(1), form).expect("a delta");
            match serde_json::from_slice::<ServerPush>(&push.frames[0][4..]) {
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
        assert!(Arc::ptr_eq(&a.frames[0], &b.frames[0]));
        assert_eq!(RegistryForm::of(1), RegistryForm::Whole);
        assert_eq!(RegistryForm::of(2), RegistryForm::Services);
        assert_eq!(RegistryForm::of(3), RegistryForm::Endpoints);
        assert_eq!(RegistryForm::of(4), RegistryForm::InARow);
        assert_eq!(RegistryForm::of(5), RegistryForm::Packed);
    }

    /// The deltas a push carries, in order (the frames of one stream).
    fn deltas(push: &RegistryPush) -> Vec<RegistryDelta> {
        push.frames
            .iter()
            .map(|f| match decode_frame(f).0 {
                ServerPush::RegistryDelta(d) => d,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_agent_of_protocol_4_behind_gets_each_change_since_in_a_row_each_encoded_once() {
        let mut feed = Feed::default();
        change(&mut feed, numbered(1, &[]));
        let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let at = |n: usize| {
            let refs: Vec<&str> = names[..n].iter().map(String::as_str).collect();
            numbered(n as u64 + 1, &refs)
        };
        for n in 1..=3 {
            change(&mut feed, at(n));
        }
        let from_2 = feed.push_for(Some(2), RegistryForm::InARow).expect("row");
        assert_eq!((from_2.from, from_2.version), (Some(2), 4));
        let row = deltas(&from_2);
        assert_eq!(
            row.iter().map(|d| (d.from, d.to)).collect::<Vec<_>>(),
            [(2, 3), (3, 4)]
        );
        // Applied in order, they make the registry.
        let mut held = at(1);
        for d in &row {
            held = held.apply(d).expect("follows");
        }
        assert_eq!(&held, &**feed.registry());
        // The next change: the ones before keep their frames, shared by every node behind.
        change(&mut feed, at(4));
        let from_1 = feed.push_for(Some(1), RegistryForm::InARow).expect("row");
        let from_3 = feed.push_for(Some(3), RegistryForm::InARow).expect("row");
        assert_eq!(from_1.frames.len(), 4);
        assert!(Arc::ptr_eq(&from_1.frames[2], &from_2.frames[1]));
        assert!(Arc::ptr_eq(&from_1.frames[2], &from_3.frames[0]));
        assert!(Arc::ptr_eq(&from_1.frames[3], &from_3.frames[1]));
        // Unknown or too old: the whole registry, in one frame.
        let whole = feed.push_for(None, RegistryForm::InARow).expect("whole");
        assert_eq!((whole.from, whole.frames.len()), (None, 1));
        assert!(
            feed.push_for(Some(5), RegistryForm::InARow).is_none(),
            "held"
        );
    }

    #[test]
    fn a_row_that_weighs_more_than_the_whole_registry_is_sent_as_the_whole() {
        use flotilla_api::discovery::Endpoint;
        // Each change replaces every endpoint of one service: the row of all of them is
        // several registries' worth.
        let with = |version: u64| {
            let mut r = numbered(version, &["web"]);
            r.services[0].endpoints = (0..300)
                .map(|i| Endpoint {
                    task: format!("t-{version}-{i}"),
                    node: format!("n-{i}"),
                    address: std::net::Ipv4Addr::new(10, 0, 0, 1),
                    port: Some(80),
                    task_address: None,
                    task_port: None,
                })
                .collect();
            r
        };
        let mut feed = Feed::default();
        for v in 1..=6 {
            change(&mut feed, with(v));
        }
        let one = feed.push_for(Some(5), RegistryForm::InARow).expect("row");
        assert_eq!((one.from, one.frames.len()), (Some(5), 1));
        let behind = feed.push_for(Some(1), RegistryForm::InARow).expect("whole");
        assert_eq!((behind.from, behind.frames.len()), (None, 1));
        let whole = feed.push_for(None, RegistryForm::InARow).expect("whole");
        assert!(Arc::ptr_eq(&behind.frames[0], &whole.frames[0]));
    }

    #[test]
    fn a_packed_row_a_node_would_unpack_past_its_budget_is_sent_as_the_whole() {
        use flotilla_api::discovery::Endpoint;
        let endpoint = |task: String| Endpoint {
            task,
            node: "n-1".into(),
            address: std::net::Ipv4Addr::new(10, 0, 0, 1),
            port: Some(80),
            task_address: None,
            task_port: None,
        };
        // A service of endpoints that pack poorly (the whole registry packed is heavy), and
        // one that comes and goes with 40,000 endpoints that pack very well: 10 MB of JSON
        // each time, a few KB packed.
        let mut seed = 1u64;
        let noise: Vec<Endpoint> = (0..40_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                endpoint(format!("t-{seed:016x}{:016x}", seed.rotate_left(29)))
            })
            .collect();
        let web: Vec<Endpoint> = (0..40_000)
            .map(|i| endpoint(format!("t-{}-{i:06}", "a".repeat(200))))
            .collect();
        let at = |version: u64, with_web: bool| {
            let mut r = numbered(
                version,
                if with_web {
                    &["noise", "web"]
                } else {
                    &["noise"]
                },
            );
            r.services[0].endpoints = noise.clone();
            if with_web {
                r.services[1].endpoints = web.clone();
            }
            r
        };
        let mut feed = Feed::default();
        for v in 1..=7 {
            change(&mut feed, at(v, v % 2 == 0));
        }
        let whole = feed.push_for(None, RegistryForm::Packed).expect("whole");
        // Behind by four changes: a row, one 10 MB frame after the first.
        let near = feed.push_for(Some(3), RegistryForm::Packed).expect("row");
        assert_eq!((near.from, near.frames.len()), (Some(3), 4));
        // Behind by six: the row is lighter than the whole as sent, but the frames after the
        // first unpack to over 16 MiB, which the node refuses: the whole.
        let far = feed.push_for(Some(1), RegistryForm::Packed).expect("whole");
        let sent: usize = feed
            .changes
            .iter()
            .map(|c| c.packed.as_ref().expect("packed").len())
            .sum();
        assert!(
            sent < whole.frames[0].len(),
            "{sent} B of row against {} B whole",
            whole.frames[0].len()
        );
        assert_eq!((far.from, far.frames.len()), (None, 1));
        assert!(Arc::ptr_eq(&far.frames[0], &whole.frames[0]));
    }

    #[test]
    fn an_agent_of_protocol_5_gets_the_frames_worth_it_packed_each_packed_once() {
        use flotilla_api::discovery::Endpoint;
        let endpoint = |version: u64, i: u32| Endpoint {
            task: format!("t-{version:04}-{i:06}"),
            node: format!("n-{i:08x}"),
            address: std::net::Ipv4Addr::from(0x0a80_0000 + i),
            port: Some(32768),
            task_address: None,
            task_port: None,
        };
        // A service of 300 endpoints (about 30 KB of JSON); then one endpoint added, then
        // every endpoint replaced.
        let mut feed = Feed::default();
        let mut r = numbered(1, &["web"]);
        r.services[0].endpoints = (0..300).map(|i| endpoint(1, i)).collect();
        change(&mut feed, r.clone());
        let mut one_more = r.clone();
        one_more.version = 2;
        one_more.services[0].endpoints.push(endpoint(2, 300));
        change(&mut feed, one_more.clone());
        let mut replaced = one_more.clone();
        replaced.version = 3;
        replaced.services[0].endpoints = (0..301).map(|i| endpoint(3, i)).collect();
        change(&mut feed, replaced.clone());
        // The whole: packed, a fraction of the plain one's weight, packed once.
        let plain = feed.push_for(None, RegistryForm::InARow).expect("whole");
        let whole = feed.push_for(None, RegistryForm::Packed).expect("whole");
        assert!(whole.frames[0].len() * 3 < plain.frames[0].len());
        assert_eq!(
            decode_frame(&whole.frames[0]),
            (ServerPush::Registry(replaced.clone()), true)
        );
        let again = feed.push_for(None, RegistryForm::Packed).expect("whole");
        assert!(Arc::ptr_eq(&whole.frames[0], &again.frames[0]));
        // A row: the small change as it is, the heavy one packed; each as the plain row says.
        let row = feed.push_for(Some(1), RegistryForm::Packed).expect("row");
        let plain_row = feed.push_for(Some(1), RegistryForm::InARow).expect("row");
        assert_eq!(row.from, Some(1));
        let read: Vec<(ServerPush, bool)> = row.frames.iter().map(|f| decode_frame(f)).collect();
        assert_eq!(
            read.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [false, true]
        );
        assert!(Arc::ptr_eq(&row.frames[0], &plain_row.frames[0]));
        for ((push, _), plain) in read.iter().zip(&plain_row.frames) {
            assert_eq!(push, &decode_frame(plain).0);
        }
        let mut held = r;
        for (push, _) in read {
            let ServerPush::RegistryDelta(d) = push else {
                panic!("{push:?}")
            };
            held = held.apply(&d).expect("follows");
        }
        assert_eq!(held, replaced);
        let from_2 = feed.push_for(Some(2), RegistryForm::Packed).expect("row");
        assert!(Arc::ptr_eq(&from_2.frames[0], &row.frames[1]));
    }
}
