//! What the adapters share: the core's handle, the nodes' live QUIC connections, and the wake
//! signal of the timers; and how the core's effects are carried out over them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_api::{read_frame, write_frame, PushReply, ServerPush};
use quinn::{Connection, VarInt};

use crate::core::Core;
use orchestratord::cluster::{Agent, Command, Effect, Outcome};

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
}

/// Each node's live connection (at most one: a reconnect replaces the old one).
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Connection>>);

impl Sessions {
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

    fn all(&self) -> Vec<(String, Connection)> {
        self.map()
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }
}

/// How long a node has to answer a push. An agent persists what it is sent (an fsync on an
/// SD card can take seconds) and answers; one that does not answer in this time holds no
/// stream, task or copy of the push any longer (it is sent again: with the next session, or
/// a heartbeat of this one finding its generation behind).
pub const PUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends `what` on a new stream of a node's session and reads its answer, within
/// [`PUSH_TIMEOUT`].
pub async fn push(conn: &Connection, what: &ServerPush) -> Result<PushReply, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, what)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        read_frame::<_, PushReply>(&mut recv)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(PUSH_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", PUSH_TIMEOUT.as_secs())))
}

impl Plane {
    /// Runs `command` on the core and carries out its effects; the reply, or why it failed.
    pub async fn run(
        &self,
        command: Command,
    ) -> Result<orchestratord::cluster::Reply, orchestratord::cluster::ClusterError> {
        let Outcome { reply, effects } = self.core.call(command).await?;
        self.carry_out(effects);
        Ok(reply)
    }

    /// Carries out effects (pushes in the background). A node's desired state is sent only
    /// once a registry pushed to it by the same call was answered (or failed): a task it starts
    /// gets its namespace's services in its environment from that registry, so they follow
    /// from the records of the same commit, never from which push arrived first.
    pub fn carry_out(&self, effects: Vec<Effect>) {
        let mut registry_sent: HashMap<String, tokio::sync::oneshot::Receiver<()>> = HashMap::new();
        for effect in effects {
            match effect {
                Effect::PushDesired { node, state } => {
                    let Some(conn) = self.sessions.get(&node) else {
                        continue;
                    };
                    let core = self.core.clone();
                    let after = registry_sent.remove(&node);
                    tokio::spawn(async move {
                        if let Some(after) = after {
                            let _ = after.await;
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
                        if let Err(e) = core.call(Command::Agent(said)).await {
                            tracing::warn!("recording an acknowledgement: {e}");
                        }
                    });
                }
                Effect::PushRegistry { node, registry } => {
                    let targets = match node {
                        Some(n) => self.sessions.get(&n).map(|c| (n, c)).into_iter().collect(),
                        None => self.sessions.all(),
                    };
                    for (node, conn) in targets {
                        let registry = registry.clone();
                        let (sent, done) = tokio::sync::oneshot::channel();
                        registry_sent.insert(node.clone(), done);
                        tokio::spawn(async move {
                            let _sent = sent;
                            match push(&conn, &ServerPush::Registry((*registry).clone())).await {
                                Ok(PushReply::Persisted { .. }) => {
                                    tracing::debug!(node = %node, version = registry.version, "registry delivered")
                                }
                                Ok(PushReply::Refused { reason }) => {
                                    tracing::warn!(node = %node, "registry refused: {reason}")
                                }
                                Err(e) => {
                                    tracing::debug!(node = %node, "registry not delivered: {e}")
                                }
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
