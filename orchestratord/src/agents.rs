//! The agents' adapter: one QUIC endpoint, two ALPNs, every message translated into a command
//! for the core.
//!
//! - `flotilla-join/1`: enrollment. No client certificate; the token in the first (and only)
//!   request is the credential. The core assigns the node id and signs the CSR's public key.
//! - `flotilla/1`: agent sessions. The node's identity comes from its verified certificate and
//!   nothing else; a session counts once the `Hello` round trip is done. Revocation closes the
//!   live connection at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::{
    read_frame, write_frame, AgentReply, AgentRequest, Hello, HelloReply, JoinReply, JoinRequest,
};
use flotilla_certs::tls::{ALPN_AGENT, ALPN_JOIN};
use flotilla_certs::{identity_of, Role};
use quinn::{Connection, VarInt};

use crate::metrics::AdmissionRefusal;
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

/// How long a session may go without a packet from its node (QUIC's idle timeout, the least
/// of this and the node's own; RFC 9000 §10.1). Nodes send keep-alives every 5 s
/// (`flotilla_api::session::KEEP_ALIVE`): a node silent for 15 s is gone. It bounds a
/// handshake too: quinn counts it from the connection's first packet, and gives up at once,
/// without a word, on a connection accepted later than that (`abandoning accept of stale
/// initial`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a connection may wait for its turn before it is refused (QUIC's
/// `CONNECTION_REFUSED`, RFC 9000 §20.1; the node dials again after its backoff, which a
/// refusal doubles). While it waits, quinn keeps what the node resends of its first flight.
/// [`HANDSHAKE_ROOM`] below [`IDLE_TIMEOUT`], which counts from the first packet: a connection
/// given its turn at the last moment still has 5 s for its handshake. (At 20 s, a connection
/// that waited 15–20 s was dropped unanswered when its turn came, and its node waited out its
/// own 30 s handshake timeout: 2 to 13 nodes per 10,000-node reconnect storm, each back 40 s
/// after the restart instead of about 20; BENCHMARKS.md, *Fleet*.)
pub const ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// What [`IDLE_TIMEOUT`] leaves a connection for its handshake at least, after the longest
/// wait for its turn (more when the node's resent Initials came during the wait: quinn counts
/// from the last).
pub const HANDSHAKE_ROOM: Duration = Duration::from_secs(5);
const _: () =
    assert!(ADMISSION_WAIT.as_millis() + HANDSHAKE_ROOM.as_millis() <= IDLE_TIMEOUT.as_millis());

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

/// How many of the turns (held or waited for) connections from one [`Source`] may have: a
/// peer cannot take every turn from one address, and a site of many nodes behind one NAT
/// address is admitted this many at a time (the others are refused at once and dial again
/// after their backoff).
pub const ADMISSIONS_PER_ADDRESS: usize = 64;

/// Where a connection comes from, as [`ADMISSIONS_PER_ADDRESS`] counts it: its IPv4 address,
/// or its IPv6 address's /64 (one host's share of addresses on a LAN, RFC 4291 §2.5.1: a peer
/// with a /64 would otherwise have 2^64 shares); and whether QUIC proved the address (a
/// Retry's token came back, RFC 9000 §8.1). Proven and unproven connections have a share
/// each: Initials sent from a forged source address fill only the unproven share of that
/// address, and a node dialling from it is then sent a Retry instead of being refused, comes
/// back proven and takes its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    /// The address (IPv6: its first 64 bits, the rest zero).
    pub net: IpAddr,
    /// Whether QUIC validated the address.
    pub proven: bool,
}

impl Source {
    /// The source of a connection from `ip`, proven or not.
    pub fn of(ip: IpAddr, proven: bool) -> Self {
        let net = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(std::net::Ipv6Addr::from(
                    u128::from(v6) & !((1u128 << 64) - 1),
                )),
            },
        };
        Self { net, proven }
    }
}

/// How long the control plane remembers a first flight it answered with a Retry.
pub const RETRIED_FOR: Duration = Duration::from_secs(10);

/// The most first flights remembered at once (about 150 bytes each); while that many are
/// recent, one more is not remembered.
pub const RETRIED_AT_MOST: usize = 65_536;

/// First flights answered with a Retry (RFC 9000 §8.1.2), by the client's address and the
/// connection ID it chose, for [`RETRIED_FOR`].
///
/// A client resends its first flight at its probe timeout (about 1 s on a new path: RFC 9002
/// §6.2.2) when nothing came back yet — and in a storm the copies wait in the socket's queue
/// for seconds. The first is answered with a Retry and forgotten by quinn; without this, a
/// later copy would be taken as a new connection and, when a turn happened to be free, begin a
/// handshake the client never answers (it goes on with the Retry's token), holding that turn
/// until the 15 s idle timeout: 1,667 such handshakes in a 10,000-agent reconnect storm. A copy
/// is answered with the Retry again instead: a client takes only the first (RFC 9000
/// §17.2.5.2) and one that lost it gets this one.
///
/// Every operation costs O(1) (amortised): what is forgotten is forgotten oldest first, from
/// the order they were remembered in, never by a scan — forged first flights from made-up
/// addresses fill it at most, and then are not remembered.
#[derive(Clone, Default)]
struct Retried(Arc<Mutex<RetriedInner>>);

#[derive(Default)]
struct RetriedInner {
    at: HashMap<(SocketAddr, quinn::ConnectionId), Instant>,
    /// What was remembered, oldest first (a first flight remembered again is in it twice: only
    /// its newest time counts).
    order: std::collections::VecDeque<(Instant, (SocketAddr, quinn::ConnectionId))>,
}

impl RetriedInner {
    /// Forgets what is older than [`RETRIED_FOR`] at `now`.
    fn forget_old(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if now.saturating_duration_since(at) < RETRIED_FOR {
                break;
            }
            self.order.pop_front();
            if self.at.get(&key) == Some(&at) {
                self.at.remove(&key);
            }
        }
    }
}

impl Retried {
    /// Remembers the first flight of `from` to `cid`, answered at `now`.
    fn remember(&self, from: SocketAddr, cid: quinn::ConnectionId, now: Instant) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.forget_old(now);
        if m.order.len() < RETRIED_AT_MOST {
            m.at.insert((from, cid), now);
            m.order.push_back((now, (from, cid)));
        }
    }

    /// Whether the first flight of `from` to `cid` was answered with a Retry within
    /// [`RETRIED_FOR`] of `now`.
    fn recalls(&self, from: SocketAddr, cid: quinn::ConnectionId, now: Instant) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.forget_old(now);
        m.at.contains_key(&(from, cid))
    }
}

/// Why a connection got no turn.
#[derive(Debug, PartialEq, Eq)]
enum NoTurn {
    /// Its [`Source`] already holds or waits for [`Gate`]'s share of one.
    Address,
    /// None was free within the gate's wait.
    Waited,
}

/// Turns to be admitted: at most `in_flight` at once, given in the order they were asked
/// for, at most `per_address` held or asked for from one [`Source`]; an ask that waited
/// `wait` gets none.
#[derive(Clone)]
struct Gate {
    turns: Arc<tokio::sync::Semaphore>,
    per_address: usize,
    by_address: Arc<Mutex<HashMap<Source, usize>>>,
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

    /// Whether `from` holds or waits for its whole share now.
    fn share_taken(&self, from: Source) -> bool {
        let by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        by_address
            .get(&from)
            .is_some_and(|n| *n >= self.per_address)
    }

    /// A turn for a connection from `from` that arrived at `arrived`, once one is free (the
    /// semaphore is fair: first asked, first given), within the gate's wait from `arrived`.
    async fn turn(&self, from: Source, arrived: tokio::time::Instant) -> Result<Turn, NoTurn> {
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
        let wait = self.wait.saturating_sub(arrived.elapsed());
        let permit = tokio::time::timeout(wait, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| NoTurn::Waited)?
            .map_err(|_| NoTurn::Waited)?;
        Ok(Turn {
            _permit: permit,
            _share: share,
        })
    }
}

/// One [`Source`]'s count of a turn held or asked for, given back when dropped.
struct Share {
    by_address: Arc<Mutex<HashMap<Source, usize>>>,
    from: Source,
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
/// handshake and first request at once and [`ADMISSIONS_PER_ADDRESS`] from one [`Source`];
/// one that waited [`ADMISSION_WAIT`] for its turn, or came from a proven address with its
/// share taken, is refused (an unproven one is sent a Retry).
pub async fn serve(plane: Plane, endpoint: quinn::Endpoint) {
    let gate = Gate::new(ADMISSIONS_IN_FLIGHT, ADMISSIONS_PER_ADDRESS, ADMISSION_WAIT);
    let retried = Retried::default();
    while let Some(incoming) = endpoint.accept().await {
        // (quinn's own count of the wait starts a little earlier, at the first packet.)
        let arrived = tokio::time::Instant::now();
        let (plane, gate, retried) = (plane.clone(), gate.clone(), retried.clone());
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let from = Source::of(peer.ip(), incoming.remote_address_validated());
            // When turns run short, or its address's unproven share is taken (by Initials
            // from forged addresses, perhaps), a peer whose address is not proven yet is sent
            // a Retry first (RFC 9000 §8.1.2): a node comes back one round trip later with a
            // token that proves it, while Initials from forged addresses never hold a turn.
            // A copy of a first flight answered so is answered so again (`Retried`).
            if !from.proven && incoming.may_retry() {
                let (cid, now) = (incoming.orig_dst_cid(), Instant::now());
                let again = retried.recalls(peer, cid, now);
                if again || gate.free() < ADMISSIONS_IN_FLIGHT / 2 || gate.share_taken(from) {
                    if again {
                        tracing::debug!(%peer, "a first flight again after its Retry: the Retry again");
                    }
                    // Remembered first: once the Retry is sent quinn forgets the flight, and
                    // a copy read meanwhile on another thread must find it here.
                    retried.remember(peer, cid, now);
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                    return;
                }
            }
            let turn = match gate.turn(from, arrived).await {
                Ok(turn) => turn,
                Err(why) => {
                    let (why, text) = match why {
                        NoTurn::Address => (
                            AdmissionRefusal::Address,
                            "its address has its share of the turns to be admitted",
                        ),
                        NoTurn::Waited => (
                            AdmissionRefusal::Wait,
                            "no turn to be admitted within the wait",
                        ),
                    };
                    tracing::debug!(%peer, "refused: {text}");
                    plane.metrics.connection_refused(why);
                    incoming.refuse();
                    return;
                }
            };
            match tokio::time::timeout(HANDSHAKE_WITHIN, incoming).await {
                Ok(Ok(conn)) => connection(plane, conn, turn).await,
                Ok(Err(e)) => tracing::debug!(%peer, "handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "handshake not done within {HANDSHAKE_WITHIN:?}"),
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

    /// A node's source, proven (as after a Retry).
    fn ip(last: u8) -> Source {
        Source::of(IpAddr::from([192, 0, 2, last]), true)
    }

    #[test]
    fn a_retried_first_flight_is_recalled_for_a_while_and_the_memory_is_bounded() {
        let t0 = Instant::now();
        let from = |port| SocketAddr::from(([192, 0, 2, 1], port));
        let cid = |b| quinn::ConnectionId::new(&[b; 8]);
        let r = Retried::default();
        let len = |r: &Retried| {
            let m = r.0.lock().expect("lock");
            (m.at.len(), m.order.len())
        };
        r.remember(from(1000), cid(1), t0);
        assert!(r.recalls(from(1000), cid(1), t0 + Duration::from_secs(9)));
        // Another connection of the same client, or the same ID from elsewhere: not a copy.
        assert!(!r.recalls(from(1000), cid(2), t0));
        assert!(!r.recalls(from(1001), cid(1), t0));
        // Remembered again later: kept from then on.
        r.remember(from(1000), cid(1), t0 + Duration::from_secs(5));
        assert!(r.recalls(from(1000), cid(1), t0 + RETRIED_FOR));
        // Forgotten RETRIED_FOR after it was last remembered.
        assert!(!r.recalls(
            from(1000),
            cid(1),
            t0 + Duration::from_secs(5) + RETRIED_FOR
        ));
        assert_eq!(len(&r), (0, 0));
        // Full of recent ones: one more is not remembered, and nothing is scanned for room.
        for i in 0..RETRIED_AT_MOST {
            r.remember(from((i % 60_000) as u16), cid((i / 60_000) as u8), t0);
        }
        let later = t0 + Duration::from_secs(1);
        r.remember(from(1), cid(200), later);
        assert!(
            !r.recalls(from(1), cid(200), later),
            "not kept while all are recent"
        );
        assert_eq!(len(&r), (RETRIED_AT_MOST, RETRIED_AT_MOST));
        // Once they are old, they go, oldest first, and there is room again.
        let much_later = t0 + RETRIED_FOR;
        r.remember(from(1), cid(200), much_later);
        assert!(r.recalls(from(1), cid(200), much_later));
        assert_eq!(len(&r), (1, 1), "the stale ones went");
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_bounded_given_in_order_and_refused_after_the_wait() {
        let s = Duration::from_secs;
        let gate = Gate::new(2, 64, s(10));
        let began = tokio::time::Instant::now();
        let first = gate
            .turn(ip(1), tokio::time::Instant::now())
            .await
            .expect("a free turn at once");
        let second = gate
            .turn(ip(2), tokio::time::Instant::now())
            .await
            .expect("a second free turn at once");
        // Two more ask, in this order, while both turns are held.
        let ask = |gate: &Gate, from| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let turn = gate.turn(from, tokio::time::Instant::now()).await;
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
        assert_eq!(
            gate.turn(ip(5), tokio::time::Instant::now()).await.err(),
            Some(NoTurn::Waited)
        );
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
        let one = gate
            .turn(ip(1), tokio::time::Instant::now())
            .await
            .expect("first");
        let two = gate
            .turn(ip(1), tokio::time::Instant::now())
            .await
            .expect("second");
        // The third waits (both turns held): waiting counts against its address's share.
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.turn(ip(1), tokio::time::Instant::now()).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let asked = tokio::time::Instant::now();
        assert_eq!(
            gate.turn(ip(1), tokio::time::Instant::now()).await.err(),
            Some(NoTurn::Address),
            "a fourth from the same address"
        );
        assert_eq!(tokio::time::Instant::now(), asked, "refused at once");
        // Another address still waits its turn, and gets it.
        let other = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.turn(ip(2), tokio::time::Instant::now()).await.is_ok() })
        };
        drop(one);
        assert!(waiting.await.expect("waiting"));
        drop(two);
        assert!(other.await.expect("other"));
        assert!(
            gate.turn(ip(1), tokio::time::Instant::now()).await.is_ok(),
            "the share is given back"
        );
        assert!(gate.by_address.lock().expect("lock").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_counts_from_when_the_connection_arrived() {
        let s = Duration::from_secs;
        let gate = Gate::new(1, 64, s(10));
        let held = gate
            .turn(ip(1), tokio::time::Instant::now())
            .await
            .expect("free");
        // Handed over 8 s after it arrived (a busy accept loop): 2 s of its wait are left.
        let arrived = tokio::time::Instant::now();
        tokio::time::sleep(s(8)).await;
        let asked = tokio::time::Instant::now();
        assert_eq!(gate.turn(ip(2), arrived).await.err(), Some(NoTurn::Waited));
        assert_eq!(tokio::time::Instant::now(), asked + s(2));
        // Past its wait already: refused at once.
        let asked = tokio::time::Instant::now();
        assert_eq!(gate.turn(ip(2), arrived).await.err(), Some(NoTurn::Waited));
        assert_eq!(tokio::time::Instant::now(), asked);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn forged_initials_take_only_the_unproven_share_of_an_address() {
        let gate = Gate::new(8, 2, Duration::from_secs(10));
        let node = IpAddr::from([192, 0, 2, 7]);
        let now = tokio::time::Instant::now;
        // Two Initials sent from the node's address by someone else, never answered.
        let forged: Vec<Turn> = vec![
            gate.turn(Source::of(node, false), now()).await.expect("1"),
            gate.turn(Source::of(node, false), now()).await.expect("2"),
        ];
        assert!(gate.share_taken(Source::of(node, false)), "sent a Retry");
        // The node, proven by the Retry's token, still has its share.
        assert!(!gate.share_taken(Source::of(node, true)));
        let turn = gate.turn(Source::of(node, true), now()).await;
        assert!(turn.is_ok());
        drop((forged, turn));
        assert!(gate.by_address.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_ipv6_peer_has_one_share_per_64_and_a_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("a");
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("b");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("c");
        assert_eq!(Source::of(a, true), Source::of(b, true));
        assert_ne!(Source::of(a, true), Source::of(c, true));
        assert_ne!(Source::of(a, true), Source::of(a, false));
        assert_eq!(
            Source::of(a, true).net,
            "2001:db8:1:2::".parse::<IpAddr>().expect("net")
        );
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("mapped");
        assert_eq!(
            Source::of(mapped, false),
            Source::of(IpAddr::from([192, 0, 2, 9]), false)
        );
    }
}
