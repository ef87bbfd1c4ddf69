//! The agents' adapter: one QUIC endpoint, two ALPNs, every message translated into a command
//! for the core.
//!
//! - `flotilla-join/1`: enrollment. No client certificate; the token in the first (and only)
//!   request is the credential. The core assigns the node id and signs the CSR's public key.
//! - `flotilla/1`: agent sessions. The node's identity comes from its verified certificate and
//!   nothing else; a session counts once the `Hello` round trip is done. Revocation closes the
//!   live connection at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::{
    read_frame, write_frame, AgentReply, AgentRequest, Hello, HelloReply, JoinReply, JoinRequest,
};
use flotilla_certs::tls::{ALPN_AGENT, ALPN_JOIN};
use flotilla_certs::{identity_of, Role};
use quinn::{Connection, VarInt};

use crate::plane::Plane;
use flotilla_api::images::StoredImage;
use orchestratord::cluster::{Agent, CloseCode, ClusterError, Command, Reply};

fn refuse(conn: &Connection, code: CloseCode, reason: &str) {
    tracing::info!(peer = %conn.remote_address(), "refused: {reason}");
    conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
}

/// How many connections may be between their first packet and the answer to their first
/// request (a session's `Hello`, a join's `JoinRequest`) at once: the handshakes' crypto and
/// the first requests' work, bounded. A fleet dialling at once after a restart is admitted this
/// many at a time, in the order it dialled, each quickly, rather than all of them slowly
/// together: then the handshakes in progress and the established sessions' pings are read
/// from the socket in time instead of dropped behind a flood of retransmitted handshakes
/// (BENCHMARKS.md, *Fleet*). 512 in flight keep about 1,700 admissions/s going at 300 ms
/// round trips, above the core's default `session_rate` of 1,000/s.
pub const ADMISSIONS_IN_FLIGHT: usize = 512;

/// How long a connection may wait for its turn before it is refused (QUIC's
/// `CONNECTION_REFUSED`, RFC 9000 §20.1; the node dials again after its backoff, which a
/// refusal doubles). While it waits, quinn keeps what the node resends of its first flight.
/// 10 s below the agents' 30 s handshake timeout (`flotilla_api::session::IDLE_TIMEOUT`), so
/// that a handshake begun at the last moment still ends before the node gives up on it.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(20);

/// How long a connection's handshake may take once it has its turn: the agents' own handshake
/// timeout (`flotilla_api::session::IDLE_TIMEOUT`), by which a node has given up on it anyway.
/// Handshakes of a fleet dialling at once lose packets and wait out QUIC's probe timeouts,
/// which double (RFC 9002 §6.2): a few such losses take seconds.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(30);

/// How long after its handshake a connection may take to send its first request (a node
/// sends it at once, in the handshake's last flight): a peer that handshakes and then says
/// nothing (a join needs no certificate) holds its turn no longer.
pub const FIRST_REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// How long the answer to a first request may take to be taken by the peer (into its
/// stream's flow-control window; a node reads it at once): a peer that asks and then never
/// reads (a zero window, kept alive) holds its turn no longer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How many of the turns (held or waited for) connections from one IP address may have: a
/// peer cannot take every turn from one address, and a site of many nodes behind one NAT
/// address is admitted this many at a time (the others are refused at once and dial again
/// after their backoff).
pub const ADMISSIONS_PER_ADDRESS: usize = 64;

/// Why a connection got no turn.
#[derive(Debug, PartialEq, Eq)]
enum NoTurn {
    /// Its address already holds or waits for [`Gate`]'s share of one address.
    Address,
    /// None was free within the gate's wait.
    Waited,
}

/// Turns to be admitted: at most `in_flight` at once, given in the order they were asked
/// for, at most `per_address` held or asked for from one address; an ask that waited `wait`
/// gets none.
#[derive(Clone)]
struct Gate {
    turns: Arc<tokio::sync::Semaphore>,
    per_address: usize,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    wait: Duration,
}

impl Gate {
    fn new(in_flight: usize, per_address: usize, wait: Duration) -> Self {
        Self {
            turns: Arc::new(tokio::sync::Semaphore::new(in_flight)),
            per_address,
            by_address: Arc::default(),
            wait,
        }
    }

    /// How many turns are free now.
    fn free(&self) -> usize {
        self.turns.available_permits()
    }

    /// A turn for a connection from `from`, once one is free (the semaphore is fair: first
    /// asked, first given).
    async fn turn(&self, from: IpAddr) -> Result<Turn, NoTurn> {
        let share = {
            let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = by_address.entry(from).or_default();
            if *n >= self.per_address {
                return Err(NoTurn::Address);
            }
            *n += 1;
            Share {
                by_address: self.by_address.clone(),
                from,
            }
        };
        let permit = tokio::time::timeout(self.wait, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| NoTurn::Waited)?
            .map_err(|_| NoTurn::Waited)?;
        Ok(Turn {
            _permit: permit,
            _share: share,
        })
    }
}

/// One address's count of a turn held or asked for, given back when dropped.
struct Share {
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    from: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_address.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.from);
            }
        }
    }
}

/// Accepts connections until the endpoint closes, at most [`ADMISSIONS_IN_FLIGHT`] in their
/// handshake and first request at once and [`ADMISSIONS_PER_ADDRESS`] from one address; one
/// that waited [`ADMISSION_WAIT`] for its turn, or came from an address with its share taken,
/// is refused.
pub async fn serve(plane: Plane, endpoint: quinn::Endpoint) {
    let gate = Gate::new(ADMISSIONS_IN_FLIGHT, ADMISSIONS_PER_ADDRESS, ADMISSION_WAIT);
    while let Some(incoming) = endpoint.accept().await {
        let (plane, gate) = (plane.clone(), gate.clone());
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            // When turns run short, a peer whose address is not proven yet is sent a Retry
            // first (RFC 9000 §8.1.2): a node comes back one round trip later with a token
            // that proves it, while Initials from forged addresses never hold a turn.
            if gate.free() < ADMISSIONS_IN_FLIGHT / 2
                && !incoming.remote_address_validated()
                && incoming.may_retry()
            {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                return;
            }
            let turn = match gate.turn(peer.ip()).await {
                Ok(turn) => turn,
                Err(why) => {
                    tracing::debug!(%peer, "refused: {}", match why {
                        NoTurn::Address => "its address has its share of the turns to be admitted",
                        NoTurn::Waited => "no turn to be admitted within the wait",
                    });
                    incoming.refuse();
                    return;
                }
            };
            match tokio::time::timeout(HANDSHAKE_WITHIN, incoming).await {
                Ok(Ok(conn)) => connection(plane, conn, turn).await,
                Ok(Err(e)) => tracing::debug!("handshake failed: {e}"),
                Err(_) => tracing::debug!("handshake not done within {HANDSHAKE_WITHIN:?}"),
            }
        });
    }
}

/// A connection's place among [`ADMISSIONS_IN_FLIGHT`] (and its address's share), given back
/// once its first request is answered (dropped): held [`HANDSHAKE_WITHIN`],
/// [`FIRST_REQUEST_WITHIN`] and [`ANSWER_WITHIN`] at most.
struct Turn {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _share: Share,
}

/// The first request of `conn`: its first stream and what the frame on it decodes to, within
/// [`FIRST_REQUEST_WITHIN`]. `None` when the peer closed first, or said nothing by then
/// (closed, saying so).
async fn first_request<T: serde::de::DeserializeOwned>(
    conn: &Connection,
) -> Option<(quinn::SendStream, Result<T, flotilla_api::FrameError>)> {
    let read = async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        Some((send, read_frame::<_, T>(&mut recv).await))
    };
    match tokio::time::timeout(FIRST_REQUEST_WITHIN, read).await {
        Ok(first) => first,
        Err(_) => {
            refuse(
                conn,
                CloseCode::Refused,
                &format!("no first request within {FIRST_REQUEST_WITHIN:?} of the handshake"),
            );
            None
        }
    }
}

/// Writes the answer to the first request of `conn` on `send` and finishes the stream, within
/// [`ANSWER_WITHIN`]. False when it could not, the connection then closed.
async fn answer<T: serde::Serialize>(
    conn: &Connection,
    send: &mut quinn::SendStream,
    msg: &T,
) -> bool {
    match tokio::time::timeout(ANSWER_WITHIN, write_frame(send, msg)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
            true
        }
        Ok(Err(_)) => false,
        Err(_) => {
            refuse(
                conn,
                CloseCode::Refused,
                &format!("the answer to the first request not read within {ANSWER_WITHIN:?}"),
            );
            false
        }
    }
}

async fn connection(plane: Plane, conn: Connection, turn: Turn) {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(p) if p == ALPN_JOIN => join(&plane, conn, turn).await,
        Some(p) if p == ALPN_AGENT => session(&plane, conn, turn).await,
        _ => refuse(&conn, CloseCode::Refused, "unknown protocol"),
    }
}

async fn join(plane: &Plane, conn: Connection, turn: Turn) {
    let Some((mut send, request)) = first_request::<JoinRequest>(&conn).await else {
        return;
    };
    let reply = match request {
        Ok(request) => {
            let peer = conn.remote_address().to_string();
            match plane
                .run(Command::Agent(Agent::Join { request, peer }))
                .await
            {
                Ok(Reply::Join(r)) => *r,
                Ok(other) => JoinReply::Refused {
                    reason: format!("unexpected answer {other:?}"),
                },
                Err(e) => {
                    tracing::error!("join: {e}");
                    JoinReply::Refused {
                        reason: format!("the control plane could not enroll the node: {e}"),
                    }
                }
            }
        }
        Err(e) => JoinReply::Refused {
            reason: format!("bad join request: {e}"),
        },
    };
    if !answer(&conn, &mut send, &reply).await {
        return;
    }
    drop(turn);
    // Let the reply reach the node before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

async fn session(plane: &Plane, conn: Connection, turn: Turn) {
    // Who it is comes from the verified certificate, never from a message.
    let chain = conn.peer_identity().and_then(|p| {
        p.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let Some(leaf) = chain.as_ref().and_then(|c| c.first()) else {
        return refuse(
            &conn,
            CloseCode::Refused,
            "a node certificate is required (run `nodeagent join` first)",
        );
    };
    let node = match identity_of(leaf) {
        Ok((id, _)) if id.role == Role::Node => id.name,
        Ok((id, _)) => {
            return refuse(
                &conn,
                CloseCode::Refused,
                &format!("not a node certificate ({:?} {})", id.role, id.name),
            )
        }
        Err(e) => return refuse(&conn, CloseCode::Refused, &e.to_string()),
    };
    let Some((mut send, hello)) = first_request::<Hello>(&conn).await else {
        return;
    };
    let hello = match hello {
        Ok(h) => h,
        Err(e) => return refuse(&conn, CloseCode::Refused, &format!("bad hello: {e}")),
    };
    let session = conn.stable_id() as u64;
    let remote = match conn.remote_address().ip() {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let outcome = plane
        .core
        .call(Command::Agent(Agent::Hello {
            node: node.clone(),
            session,
            hello,
            remote,
        }))
        .await;
    let effects = match outcome {
        Ok(o) => match o.reply {
            Reply::Hello(welcome @ HelloReply::Welcome { .. }) => {
                if !answer(&conn, &mut send, &welcome).await {
                    closed(plane, &node, session).await;
                    return;
                }
                o.effects
            }
            Reply::Hello(other) => {
                let busy = matches!(other, HelloReply::Busy { .. });
                if !answer(&conn, &mut send, &other).await {
                    return;
                }
                // Answered: the turn goes back before the wait for the agent to close.
                drop(turn);
                if busy {
                    // Closed once the agent has read the answer (or gives up), not before.
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                } else if let HelloReply::Refused { reason } = other {
                    refuse(&conn, CloseCode::Refused, &reason);
                }
                return;
            }
            Reply::CloseSession { code, reason } => return refuse(&conn, code, &reason),
            other => {
                return refuse(
                    &conn,
                    CloseCode::Refused,
                    &format!("unexpected answer {other:?}"),
                )
            }
        },
        Err(e) => {
            tracing::error!(node = %node, "session: {e}");
            return refuse(
                &conn,
                CloseCode::Refused,
                "the control plane could not read its store",
            );
        }
    };
    drop(turn);
    // One live session per node: a reconnect replaces the old one.
    if let Some(old) = plane.sessions.insert(&node, conn.clone()) {
        old.close(
            VarInt::from_u32(CloseCode::Refused as u32),
            b"replaced by a newer session",
        );
    }
    tracing::info!(node = %node, peer = %conn.remote_address(), "session established");
    plane.carry_out(effects);
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(node = %node, "session ended: {e}");
                break;
            }
        };
        let said = match read_frame::<_, AgentRequest>(&mut recv).await {
            Ok(AgentRequest::Ping) => Agent::Ping { node: node.clone() },
            Ok(AgentRequest::Heartbeat { resources, usage }) => Agent::Heartbeat {
                node: node.clone(),
                resources,
                usage,
            },
            Ok(AgentRequest::Renew { csr_pem }) => Agent::Renew {
                node: node.clone(),
                csr_pem,
            },
            Ok(AgentRequest::Report { tasks }) => Agent::Report {
                node: node.clone(),
                tasks,
            },
            Ok(AgentRequest::Secret { name, version }) => Agent::FetchSecret {
                kind: orchestratord::cluster::secrets::Kind::Secret,
                node: node.clone(),
                name,
                version,
            },
            Ok(AgentRequest::Config { name, version }) => Agent::FetchSecret {
                kind: orchestratord::cluster::secrets::Kind::Config,
                node: node.clone(),
                name,
                version,
            },
            Ok(AgentRequest::Image {
                image, pull: false, ..
            }) => {
                let reply = held_image(plane, &node, &image).await;
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
                continue;
            }
            Ok(AgentRequest::Image {
                image,
                pull: true,
                platform,
            }) => {
                // A pull takes long: on its own task, so the session's other requests are not
                // held up behind it.
                let (plane, node) = (plane.clone(), node.clone());
                tokio::spawn(async move {
                    let reply = pulled_image(&plane, &node, &image, platform.as_deref()).await;
                    let _ = write_frame(&mut send, &reply).await;
                    let _ = send.finish();
                });
                continue;
            }
            Ok(AgentRequest::Blob { digest, offset }) => {
                // A transfer takes long: on its own task, so the session's other requests
                // (heartbeats, reports) are not held up behind it.
                let (plane, node) = (plane.clone(), node.clone());
                tokio::spawn(async move {
                    // Only a blob of an image the node may have, checked before it waits for a
                    // slot: a refused request holds none.
                    if let Some(refused) = blob_refused(&plane, &node, &digest).await {
                        let _ = write_frame(&mut send, &refused).await;
                        let _ = send.finish();
                        return;
                    }
                    let _slot = plane.content.transfer_slot(&node).await;
                    let pacer = plane.content.pacer(&node);
                    match plane
                        .content
                        .serve_blob(&digest, offset, pacer.as_deref(), &mut send, &|n| {
                            plane.metrics.image_sent(n)
                        })
                        .await
                    {
                        Ok(n) => {
                            let digest: String = digest.chars().take(80).collect();
                            tracing::debug!(node = %node, %digest, offset, bytes = n, "blob sent");
                            let _ = send.finish();
                        }
                        // The content store's own disk: the operator's to see.
                        Err(e) if e.starts_with("reading ") => {
                            tracing::warn!(node = %node, %digest, offset, "blob transfer: {e}");
                            let _ = send.reset(VarInt::from_u32(0));
                        }
                        Err(e) => {
                            tracing::info!(node = %node, %digest, offset, "blob transfer: {e}");
                            let _ = send.reset(VarInt::from_u32(0));
                        }
                    }
                });
                continue;
            }
            Err(e) => {
                let refused = AgentReply::Refused {
                    reason: format!("bad request: {e}"),
                };
                let _ = write_frame(&mut send, &refused).await;
                let _ = send.finish();
                continue;
            }
        };
        let reply = match plane.run(Command::Agent(said)).await {
            Ok(Reply::Agent(r)) => r,
            Ok(other) => AgentReply::Refused {
                reason: format!("unexpected answer {other:?}"),
            },
            Err(e) => AgentReply::Refused {
                reason: e.to_string(),
            },
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
    }
    plane.sessions.remove_if(&node, &conn);
    closed(plane, &node, session).await;
}

/// What the core says of `node` having an image (the core's `Agent::Image`).
enum MayHave {
    /// It may, and the content store holds it.
    Held(Box<StoredImage>),
    /// It may, but the content store does not hold it: why, to tell the node.
    NotHeld(String),
    /// It may not (a task of its own uses it, or a prefetch asked it for it: neither), or the
    /// core could not say: the refusal to send.
    Refused(AgentReply),
}

/// Whether `node` may have image `reference` from the content store, and whether the store
/// holds it: the core's `Agent::Image` (its tasks), with the prefetches in progress that asked
/// the node for an image (the plane's record).
async fn may_have(plane: &Plane, node: &str, reference: &str) -> MayHave {
    if let Err(e) = flotilla_oci::ImageRef::parse(reference) {
        return MayHave::Refused(AgentReply::Refused {
            reason: e.to_string(),
        });
    }
    let ask = Agent::Image {
        node: node.to_string(),
        image: reference.to_string(),
        prefetching: plane.prefetches.of(node),
    };
    match plane.run(Command::Agent(ask)).await {
        Ok(Reply::Agent(AgentReply::Image(i))) => MayHave::Held(i),
        Ok(Reply::Agent(r)) => MayHave::Refused(r),
        Ok(other) => MayHave::Refused(AgentReply::Refused {
            reason: format!("unexpected answer {other:?}"),
        }),
        Err(ClusterError::NotFound(why)) => MayHave::NotHeld(why),
        Err(e) => MayHave::Refused(AgentReply::Refused {
            reason: e.to_string(),
        }),
    }
}

/// The answer to `AgentRequest::Image { pull: false }` from `node`: the image the content
/// store holds under the reference's lookup names when the node may have it ([`may_have`]),
/// else a refusal saying why.
async fn held_image(plane: &Plane, node: &str, image: &str) -> AgentReply {
    match may_have(plane, node, image).await {
        MayHave::Held(i) => AgentReply::Image(i),
        MayHave::NotHeld(reason) => AgentReply::Refused { reason },
        MayHave::Refused(r) => r,
    }
}

/// The answer to `AgentRequest::Image { pull: true }` (pull-through): for an image the node
/// may have ([`may_have`]; checked before anything is pulled), the image once the content
/// store holds it, pulled by the control plane if it did not, else a refusal naming why the
/// pull failed.
async fn pulled_image(
    plane: &Plane,
    node: &str,
    image: &str,
    platform: Option<&str>,
) -> AgentReply {
    if let MayHave::Refused(r) = may_have(plane, node, image).await {
        return r;
    }
    let platform = match platform.map(str::parse::<flotilla_oci::manifest::Platform>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            return AgentReply::Refused {
                reason: format!("platform: {e}"),
            }
        }
    };
    let ask = crate::pull::PullAsk {
        reference: image.to_string(),
        platform,
        insecure: false,
        require_platform: false,
    };
    match crate::pull::pull(plane, &ask, Some(node)).await {
        Ok(i) => AgentReply::Image(Box::new(i)),
        Err(e) => {
            tracing::info!(node = %node, "pull-through for the node: {e}");
            AgentReply::Refused {
                reason: e.to_string(),
            }
        }
    }
}

/// Why `node` may not have blob `digest` (the core's `Agent::Blob`: it is no part of an image
/// the node may have), as the refusal to send it; `None` when it may.
async fn blob_refused(plane: &Plane, node: &str, digest: &str) -> Option<AgentReply> {
    let ask = Agent::Blob {
        node: node.to_string(),
        digest: digest.to_string(),
        prefetching: plane.prefetches.of(node),
    };
    match plane.run(Command::Agent(ask)).await {
        Ok(Reply::Done) => None,
        Ok(Reply::Agent(r)) => Some(r),
        Ok(other) => Some(AgentReply::Refused {
            reason: format!("unexpected answer {other:?}"),
        }),
        Err(e) => Some(AgentReply::Refused {
            reason: e.to_string(),
        }),
    }
}

async fn closed(plane: &Plane, node: &str, session: u64) {
    let ended = Agent::SessionClosed {
        node: node.to_string(),
        session,
    };
    if let Err(e) = plane.run(Command::Agent(ended)).await {
        tracing::warn!(node = %node, "recording the end of a session: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_bounded_given_in_order_and_refused_after_the_wait() {
        let s = Duration::from_secs;
        let gate = Gate::new(2, 64, s(10));
        let began = tokio::time::Instant::now();
        let first = gate.turn(ip(1)).await.expect("a free turn at once");
        let second = gate.turn(ip(2)).await.expect("a second free turn at once");
        // Two more ask, in this order, while both turns are held.
        let ask = |gate: &Gate, from| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let turn = gate.turn(from).await;
                (tokio::time::Instant::now(), turn)
            })
        };
        let third = ask(&gate, ip(3));
        tokio::time::sleep(Duration::from_millis(1)).await;
        let fourth = ask(&gate, ip(4));
        tokio::time::sleep(s(3)).await;
        assert!(
            !third.is_finished() && !fourth.is_finished(),
            "only two at once"
        );
        drop(second);
        let (at, turn) = third.await.expect("third");
        assert!(
            turn.is_ok(),
            "the first to ask gets the first turn given back"
        );
        assert_eq!(at, began + s(3) + Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!fourth.is_finished(), "the fourth waits for the next one");
        drop(first);
        let (_, last) = fourth.await.expect("fourth");
        assert!(last.is_ok());
        // Both turns held again: the next ask is refused after the wait, not before.
        let asked = tokio::time::Instant::now();
        assert_eq!(gate.turn(ip(5)).await.err(), Some(NoTurn::Waited));
        assert_eq!(tokio::time::Instant::now(), asked + s(10));
        drop((turn, last));
        assert!(
            gate.by_address.lock().expect("lock").is_empty(),
            "every share given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_gets_its_share_of_the_turns_and_no_more() {
        let s = Duration::from_secs;
        let gate = Gate::new(2, 3, s(10));
        let one = gate.turn(ip(1)).await.expect("first");
        let two = gate.turn(ip(1)).await.expect("second");
        // The third waits (both turns held): waiting counts against its address's share.
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.turn(ip(1)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let asked = tokio::time::Instant::now();
        assert_eq!(
            gate.turn(ip(1)).await.err(),
            Some(NoTurn::Address),
            "a fourth from the same address"
        );
        assert_eq!(tokio::time::Instant::now(), asked, "refused at once");
        // Another address still waits its turn, and gets it.
        let other = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.turn(ip(2)).await.is_ok() })
        };
        drop(one);
        assert!(waiting.await.expect("waiting"));
        drop(two);
        assert!(other.await.expect("other"));
        assert!(gate.turn(ip(1)).await.is_ok(), "the share is given back");
        assert!(gate.by_address.lock().expect("lock").is_empty());
    }
}
