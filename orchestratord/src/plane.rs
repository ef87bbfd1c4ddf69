//! What the adapters share: the core's handle, the nodes' live QUIC connections, and the wake
//! signal of the timers; and how the core's effects are carried out over them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_api::{encode_push, read_frame, PushReply, ServerPush};
use quinn::{Connection, VarInt};

use crate::core::Core;
use orchestratord::cluster::{Agent, Command, Effect, Outcome, RegistryAnswer};

/// The adapters' shared parts.
#[derive(Debug, Clone)]
pub struct Plane {
    /// The core.
    pub core: Core,
    /// Live sessions by node.
    pub sessions: Arc<Sessions>,
    /// Wakes the timers (a service changed).
    pub wake: Arc<tokio::sync::Notify>,
    /// What the adapters measure (the operator API's latency).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The blobs of the images pushed to the control plane.
    pub content: Arc<crate::content::ContentStore>,
    /// The control plane's own pulls from registries into the content store.
    pub puller: Arc<crate::content::Puller>,
    /// The images prefetches in progress asked each node for.
    pub prefetches: Arc<Prefetches>,
}

/// The images a prefetch in progress asked each node for (`api/prefetch.rs`): what a node may
/// get from the content store besides its tasks' images, passed to the core with each of its
/// image and blob requests (`Agent::Image`, `Agent::Blob`). In memory only: a prefetch is not a
/// record, and one that ends (or a control plane that restarts) grants nothing more.
#[derive(Debug, Default)]
pub struct Prefetches(Mutex<HashMap<String, HashMap<String, usize>>>);

/// A prefetch's grant of one image to one node, held while it is in progress for that node:
/// dropped, it grants nothing more (unless another prefetch of the image to the node goes on).
#[derive(Debug)]
pub struct PrefetchGrant {
    record: Arc<Prefetches>,
    node: String,
    image: String,
}

impl Prefetches {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, usize>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a prefetch asks `node` for `image` (the reference as given) until the grant
    /// is dropped.
    pub fn grant(self: &Arc<Self>, node: &str, image: &str) -> PrefetchGrant {
        *self
            .map()
            .entry(node.to_string())
            .or_default()
            .entry(image.to_string())
            .or_default() += 1;
        PrefetchGrant {
            record: self.clone(),
            node: node.to_string(),
            image: image.to_string(),
        }
    }

    /// The references of the images prefetches in progress asked `node` for.
    pub fn of(&self, node: &str) -> Vec<String> {
        self.map()
            .get(node)
            .map(|images| images.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for PrefetchGrant {
    fn drop(&mut self) {
        let mut map = self.record.map();
        let Some(images) = map.get_mut(&self.node) else {
            return;
        };
        if let Some(n) = images.get_mut(&self.image) {
            *n -= 1;
            if *n == 0 {
                images.remove(&self.image);
            }
        }
        if images.is_empty() {
            map.remove(&self.node);
        }
    }
}

/// Each node's live connection (at most one: a reconnect replaces the old one), the last
/// registry push to each session, and the newest registry version each session's node said
/// it holds.
#[derive(Debug, Default)]
pub struct Sessions(
    Mutex<HashMap<String, Connection>>,
    Mutex<HashMap<String, (usize, tokio::sync::oneshot::Receiver<()>)>>,
    Mutex<HashMap<String, (usize, tokio::sync::watch::Sender<u64>)>>,
    RegistryPushes,
);

/// How many registry pushes are under way at once, over all sessions. A DAEMON service
/// registered for discovery on 10,000 nodes puts 10,000 endpoints in every node's registry:
/// sent to every session at once, the transfers' state (QUIC's packets in flight, each
/// node's receive buffers) grew past a gigabyte on each side. In turns, a session whose turn
/// comes later is sent every change up to then in one push.
pub const REGISTRY_PUSHES_IN_FLIGHT: usize = 256;

/// The turns of [`REGISTRY_PUSHES_IN_FLIGHT`], given in the order they were asked for.
#[derive(Debug)]
struct RegistryPushes(Arc<tokio::sync::Semaphore>);

impl Default for RegistryPushes {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(
            REGISTRY_PUSHES_IN_FLIGHT,
        )))
    }
}

/// A registry push's place in its session's order.
struct Turn {
    /// Done when the push before it to the same session is.
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped when this one is done.
    mine: tokio::sync::oneshot::Sender<()>,
}

impl Sessions {
    /// The next registry push to `node`'s session `conn`: after the last one to that session.
    fn registry_turn(&self, node: &str, conn: &Connection) -> Turn {
        let (mine, next) = tokio::sync::oneshot::channel();
        let mut last = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let after = last
            .insert(node.to_string(), (conn.stable_id(), next))
            .filter(|(session, _)| *session == conn.stable_id())
            .map(|(_, r)| r);
        Turn { after, mine }
    }

    /// The newest registry version `node` said it holds on session `conn` (0 before it said
    /// any), to be told or watched.
    fn registry_held(&self, node: &str, conn: &Connection) -> tokio::sync::watch::Sender<u64> {
        let mut held = self.2.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(node) {
            Some((session, tx)) if *session == conn.stable_id() => tx.clone(),
            _ => {
                let tx = tokio::sync::watch::Sender::new(0);
                held.insert(node.to_string(), (conn.stable_id(), tx.clone()));
                tx
            }
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `conn` as the node's session; returns the one it replaces.
    pub fn insert(&self, node: &str, conn: Connection) -> Option<Connection> {
        self.map().insert(node.to_string(), conn)
    }

    /// Forgets the node's session if it is still `conn` (a newer one stays).
    pub fn remove_if(&self, node: &str, conn: &Connection) {
        let mut map = self.map();
        if map
            .get(node)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            map.remove(node);
        }
    }

    /// The node's live connection.
    pub fn get(&self, node: &str) -> Option<Connection> {
        self.map().get(node).cloned()
    }

    fn take(&self, node: &str) -> Option<Connection> {
        self.map().remove(node)
    }
}

/// How long a node has to answer a push. An agent persists what it is sent (an fsync on an
/// SD card can take seconds) and answers; one that does not answer in this time holds no
/// stream, task or copy of the push any longer (it is sent again: with the next session, or
/// a heartbeat of this one finding its generation behind).
pub const PUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a node on a path of smoothed round-trip time `rtt` has to answer a push:
/// [`PUSH_TIMEOUT`], or sixteen round trips on a slow path — a satellite link a second away
/// that also loses packets needs several of QUIC's retransmissions, each a probe timeout after
/// the last and doubling (RFC 9002, section 6.2), and a push given up there is sent again only
/// at the node's next heartbeat.
pub fn push_timeout(rtt: std::time::Duration) -> std::time::Duration {
    PUSH_TIMEOUT.max(rtt.saturating_mul(16))
}

/// Sends `what` on a new stream of a node's session and reads its answer, within
/// [`push_timeout`].
pub async fn push(conn: &Connection, what: &ServerPush) -> Result<PushReply, String> {
    let frame = encode_push(what).map_err(|e| e.to_string())?;
    exchange(conn, &[Arc::from(frame)]).await
}

/// Sends encoded pushes, one after the other, on a new stream of a node's session and reads
/// its one answer, within [`push_timeout`] of the session's round-trip time.
pub async fn exchange(conn: &Connection, frames: &[Arc<[u8]>]) -> Result<PushReply, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        // Handed to QUIC as they are, not copied into the stream's buffer: the frames of a
        // registry push are shared by all the sessions they go to.
        for frame in frames {
            send.write_chunk(bytes::Bytes::from_owner(frame.clone()))
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = send.finish();
        read_frame::<_, PushReply>(&mut recv)
            .await
            .map_err(|e| e.to_string())
    };
    let within = push_timeout(conn.rtt());
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", within.as_secs())))
}

impl Plane {
    /// Removes every blob of the content store no image references, with no push under way
    /// (its gate held exclusively): after a failed push or pull, after one that replaced an
    /// image, and when the control plane starts (a crash between a push's blobs and its
    /// commit).
    pub async fn sweep_content(&self) {
        let content = self.content.clone();
        let _gate = content.gate.write().await;
        let keep = match self
            .run(Command::Operator(
                orchestratord::cluster::Operator::ReferencedBlobs,
            ))
            .await
        {
            Ok(orchestratord::cluster::Reply::Blobs(keep)) => keep,
            other => return tracing::warn!("content store sweep: unexpected answer {other:?}"),
        };
        let store = content.clone();
        match tokio::task::spawn_blocking(move || store.sweep(&keep)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("content store: {n} blobs no image references removed"),
            Ok(Err(e)) => tracing::warn!("content store sweep: {e}"),
            Err(e) => tracing::warn!("content store sweep: {e}"),
        }
    }

    /// Runs `command` on the core and carries out its effects; the reply, or why it failed.
    pub async fn run(
        &self,
        command: Command,
    ) -> Result<orchestratord::cluster::Reply, orchestratord::cluster::ClusterError> {
        let Outcome { reply, effects } = self.core.call(command).await?;
        self.carry_out(effects);
        Ok(reply)
    }

    /// Carries out effects (pushes in the background). A node's desired state that names a
    /// registry version is sent once the node said it holds that version (or a newer one), or
    /// after [`PUSH_TIMEOUT`], or when its session ends: a task it starts gets its
    /// namespace's services in its environment from the registry, so they follow from the
    /// records of the same commit, never from which push arrived first.
    pub fn carry_out(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::PushDesired {
                    node,
                    state,
                    registry,
                } => {
                    let Some(conn) = self.sessions.get(&node) else {
                        continue;
                    };
                    let plane = self.clone();
                    let held = registry.map(|v| (v, self.sessions.registry_held(&node, &conn)));
                    tokio::spawn(async move {
                        if let Some((version, held)) = held {
                            let mut held = held.subscribe();
                            let _ = tokio::time::timeout(
                                PUSH_TIMEOUT,
                                held.wait_for(|h| *h >= version),
                            )
                            .await;
                        }
                        let generation = state.generation;
                        let answer = push(&conn, &ServerPush::Desired(*state)).await;
                        let said = match answer {
                            Ok(PushReply::Persisted { generation }) => {
                                Agent::DesiredAcked { node, generation }
                            }
                            Ok(PushReply::Refused { reason }) => {
                                Agent::DesiredRefused { node, reason }
                            }
                            // The next session, or a heartbeat of this one, sends it again.
                            Err(e) => {
                                return tracing::info!(node = %node, generation, "desired state not delivered: {e}")
                            }
                        };
                        if let Err(e) = plane.run(Command::Agent(said)).await {
                            tracing::warn!("recording an acknowledgement: {e}");
                        }
                    });
                }
                Effect::PushRegistry { nodes, push } => {
                    for node in nodes {
                        let Some(conn) = self.sessions.get(&node) else {
                            continue;
                        };
                        // Pushes to one session go in order: a delta applies to what the
                        // one before it made.
                        let before = self.sessions.registry_turn(&node, &conn);
                        let held = self.sessions.registry_held(&node, &conn);
                        // The answer's own effects (the next push) are carried out too.
                        let plane = self.clone();
                        let push = push.clone();
                        let pushes = self.sessions.3 .0.clone();
                        tokio::spawn(async move {
                            let _turn = before.mine;
                            if let Some(previous) = before.after {
                                let _ = previous.await;
                            }
                            // Never closed: a permit always comes.
                            let permit = pushes.acquire_owned().await;
                            let answer = exchange(&conn, &push.frames).await;
                            // Given back before the core hears of it: the turn is the transfer's.
                            drop(permit);
                            let answer = match answer {
                                Ok(PushReply::Persisted { generation }) => {
                                    RegistryAnswer::Holds(generation)
                                }
                                Ok(PushReply::Refused { reason }) => {
                                    tracing::warn!(node = %node, "registry refused: {reason}");
                                    RegistryAnswer::Refused
                                }
                                Err(e) => {
                                    tracing::debug!(node = %node, "registry not delivered: {e}");
                                    RegistryAnswer::Unanswered
                                }
                            };
                            if let RegistryAnswer::Holds(h) = answer {
                                held.send_if_modified(|v| {
                                    let newer = h > *v;
                                    if newer {
                                        *v = h;
                                    }
                                    newer
                                });
                            }
                            let said = Agent::RegistryAnswered {
                                node,
                                session: conn.stable_id() as u64,
                                pushed: push.version,
                                from: push.from,
                                answer,
                            };
                            if let Err(e) = plane.run(Command::Agent(said)).await {
                                tracing::warn!("recording the registry a node holds: {e}");
                            }
                        });
                    }
                }
                Effect::CloseSession { node, code, reason } => {
                    if let Some(conn) = self.sessions.take(&node) {
                        conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
                    }
                }
                Effect::WakeServices => self.wake.notify_one(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_waits_longer_on_a_slow_path_only() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(push_timeout(ms(2)), PUSH_TIMEOUT);
        assert_eq!(push_timeout(ms(1000)), ms(16_000));
    }

    #[test]
    fn a_prefetch_grants_its_image_to_its_node_until_it_ends_for_that_node() {
        let record = Arc::new(Prefetches::default());
        let first = record.grant("n1", "docker.io/library/a:1");
        let second = record.grant("n1", "docker.io/library/a:1");
        let other = record.grant("n2", "docker.io/library/b:1");
        assert_eq!(record.of("n1"), vec!["docker.io/library/a:1".to_string()]);
        assert_eq!(record.of("n3"), Vec::<String>::new());
        drop(first);
        assert_eq!(
            record.of("n1"),
            vec!["docker.io/library/a:1".to_string()],
            "a second prefetch of the image to the node goes on"
        );
        drop(second);
        assert!(record.of("n1").is_empty());
        assert_eq!(record.of("n2"), vec!["docker.io/library/b:1".to_string()]);
        drop(other);
        assert!(record.map().is_empty(), "nothing left behind");
    }
}
