//! Wire types of Flotilla, in one place: what agents and the control plane say to each other
//! over QUIC, and how it is framed. Domain types elsewhere do not know the encoding.
//!
//! Framing: on each bidirectional stream the opener sends one request frame and reads one
//! reply frame; a frame is a 4-byte big-endian length and that many bytes of JSON. Frames
//! larger than [`MAX_FRAME`] are refused before they are read, but for what the control plane
//! pushes to a node ([`ServerPush`]), up to [`MAX_PUSH_FRAME`].

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

pub mod config;
pub mod discovery;
pub mod errors;
pub mod exec;
pub mod images;
pub mod ipam;
pub mod lockfile;
pub mod logging;
pub mod ops;
pub mod page;
pub mod project;
#[cfg(feature = "quic")]
pub mod quic;
pub mod scaling;
pub mod schedule;
pub mod secrets;
pub mod service;
pub mod stdout;
pub mod systemd;
pub mod taskdef;
pub mod tasks;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol versions this build speaks, oldest first: a control plane accepts agents of
/// earlier versions while a fleet upgrades. Version 2 adds [`ServerPush::RegistryDelta`]: a
/// session that negotiated 1 is only ever pushed whole registries. Version 3 adds a delta's
/// `endpoints` ([`discovery::EndpointsDelta`]): a session that negotiated 2 gets each changed
/// service whole. Version 4 lets one registry push carry several deltas in a row
/// ([`PROTOCOL_DELTAS_IN_A_ROW`]). Version 5 lets a push's frame be compressed
/// ([`PROTOCOL_PACKED_PUSHES`]).
pub const PROTOCOLS: &[u32] = &[1, 2, 3, 4, 5];

/// The first protocol version whose agents take registry deltas.
pub const PROTOCOL_REGISTRY_DELTAS: u32 = 2;

/// The first protocol version whose agents take a service's endpoints changed one by one in a
/// registry delta.
pub const PROTOCOL_ENDPOINT_DELTAS: u32 = 3;

/// The first protocol version whose agents take several registry deltas in a row on one push:
/// a stream of [`ServerPush::RegistryDelta`] frames, one per change, oldest first and each
/// following the one before it, up to [`MAX_DELTAS_IN_A_PUSH`]. The node applies them in
/// order, keeps what they make in one commit, and answers once with the version it then holds
/// (as for one delta). The control plane encodes each change once and sends a node behind
/// the frames of the changes it lacks, instead of a delta composed for its version.
pub const PROTOCOL_DELTAS_IN_A_ROW: u32 = 4;

/// The first protocol version whose agents take a push's frame packed: the top bit of its
/// length word ([`PACKED`]) set, its body a Zstandard frame (RFC 8878) of the JSON. The control
/// plane packs the frames of the registry that are worth it (a whole registry of a DAEMON on
/// 10,000 nodes is 1.3 MB of JSON and 213 KB packed), once for every node.
pub const PROTOCOL_PACKED_PUSHES: u32 = 5;

/// The bit of a frame's length word that says its body is packed ([`PROTOCOL_PACKED_PUSHES`]);
/// the other 31 bits are the packed body's length. Only a push of the control plane may be
/// packed: in any other frame the length is then over its limit and refused.
pub const PACKED: u32 = 1 << 31;

/// The largest window a packed frame may ask its reader for (2^24 bytes, as large as
/// [`MAX_PUSH_FRAME`]): the Zstandard frame header names the window its decoder allocates.
const PACKED_WINDOW_LOG: u32 = 24;

/// The Zstandard level frames are packed at: the library's default, about 300 MB/s here.
const PACKED_LEVEL: i32 = 3;

/// The most registry deltas one push carries ([`PROTOCOL_DELTAS_IN_A_ROW`]); a node refuses a
/// push with more. The control plane keeps fewer changes than this.
pub const MAX_DELTAS_IN_A_PUSH: usize = 256;

/// Port of the control plane (QUIC for agents, HTTPS for operators) when none is given.
pub const DEFAULT_PORT: u16 = 7443;

/// How an agent keeps its session: what `nodeagent` does, and what the fleet simulator must do
/// to stand for it.
pub mod session {
    use std::time::Duration;

    /// How often a live session pings the control plane.
    pub const PING_EVERY: Duration = Duration::from_secs(10);
    /// How long a ping may take on a fast path before it counts as unanswered (see
    /// [`ping_timeout`] and [`ping_lost`]).
    pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
    /// Pings in a row that may go unanswered while the control plane's packets still arrive
    /// (a link that is slow and lossy at once: a ping's stream then needs retransmissions a
    /// round trip apart) before the session counts as lost anyway.
    pub const MAX_UNANSWERED_PINGS: u32 = 3;

    /// How long a ping may take on a path whose smoothed round-trip time is `rtt`:
    /// [`PING_TIMEOUT`], or eight round trips on a slower path (room for a few of QUIC's
    /// retransmissions, each a probe timeout — about a round trip and more — after the last;
    /// RFC 9002, section 6.2).
    pub fn ping_timeout(rtt: Duration) -> Duration {
        PING_TIMEOUT.max(rtt.saturating_mul(8))
    }

    /// Whether a ping that went unanswered ends the session: when nothing at all arrived from
    /// the control plane while it waited (it is gone without closing: a power cut, `kill -9`,
    /// a cut link), or when it is the [`MAX_UNANSWERED_PINGS`]th in a row. Otherwise the link
    /// is slow or lossy and the session is kept (the control plane still answers QUIC).
    pub fn ping_lost(unanswered_in_a_row: u32, heard_meanwhile: bool) -> bool {
        !heard_meanwhile || unanswered_in_a_row >= MAX_UNANSWERED_PINGS
    }
    /// Longest wait between two dial attempts.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
    /// QUIC keep-alive interval of the agent's connection.
    pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
    /// QUIC idle timeout the agent asks for.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long after its handshake is done on its side an agent waits, at least, for the
    /// control plane to confirm it (QUIC's `HANDSHAKE_DONE`, RFC 9001 §4.1.2) before it gives
    /// up on the connection and dials again (with its usual backoff): see
    /// [`handshake_confirm_within`].
    ///
    /// The control plane confirms a round trip after the agent's last handshake flight
    /// arrives. When that flight is lost (or waits too long in the control plane's socket
    /// queue), the agent sends it again only at its probe timeout (RFC 9002 §6.2), and after a
    /// wait for admission that timeout is long: the wait makes the first round-trip sample
    /// long, and the probes sent during it doubled the backoff, which acknowledgments in
    /// Initial packets do not reset (§6.2.1). Seen in a 10,000-node admission: after a 4.3 s
    /// wait, one agent sent its lost flight again 15.4 s later, another not within 22 s, both
    /// past the control plane's 15 s idle timeout, which bounds its handshake; their hellos
    /// went unanswered until the agents' idle timeout, or were answered with a stateless
    /// reset (BENCHMARKS.md, *Fleet*). A new dial is admitted sooner.
    pub const HANDSHAKE_CONFIRM_WITHIN: Duration = Duration::from_secs(5);

    /// The longest an agent waits for the control plane to confirm a handshake, whatever the
    /// round-trip time: the control plane's idle timeout (15 s, counted from the agent's
    /// first packet) less the 5 s its admission gate leaves a handshake at least. A
    /// connection still unconfirmed by then is one the control plane has dropped or is about
    /// to; a round-trip time made long by an overloaded control plane or by the wait for
    /// admission (its first sample) must not keep an agent waiting on it.
    pub const HANDSHAKE_CONFIRM_AT_MOST: Duration = Duration::from_secs(10);

    /// How long an agent waits for the control plane to confirm a handshake on a path whose
    /// round-trip time is `rtt` (as known before the handshake: the last session's, else the
    /// handshake's own estimate): [`HANDSHAKE_CONFIRM_WITHIN`], or eight round trips on a slower
    /// path, as [`ping_timeout`], and [`HANDSHAKE_CONFIRM_AT_MOST`] at most. On a 1 s round
    /// trip, a last flight lost once is confirmed about 7 s after the handshake (its probe
    /// timeout is then three round trips, doubled once by the Initial probe the first reply
    /// came too late for, unless the dial started from the last session's round-trip time),
    /// and its hello, which the control plane dropped with it, is sent again a round trip
    /// after the confirmation (the agent nudges).
    pub fn handshake_confirm_within(rtt: Duration) -> Duration {
        HANDSHAKE_CONFIRM_WITHIN
            .max(rtt.saturating_mul(8))
            .min(HANDSHAKE_CONFIRM_AT_MOST)
    }
}

/// `host:port` from `host` or `host:port` (the default port added).
pub fn with_default_port(server: &str) -> String {
    if server
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        server.to_string()
    } else {
        format!("{server}:{DEFAULT_PORT}")
    }
}

/// `noun` for `n` things, as messages say it: "task" for 1, "tasks" otherwise.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        noun.to_string()
    } else {
        format!("{noun}s")
    }
}

/// `n` and its `noun`: "1 problem", "2 problems", "0 warnings".
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {}", plural(n, noun))
}

/// A byte count as the command lines show sizes: binary units with one decimal
/// (`512 B`, `1.5 MiB`, `2.0 GiB`; IEC 80000-13 prefixes).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Largest frame accepted (1 MiB), but for a push of the control plane ([`MAX_PUSH_FRAME`]).
pub const MAX_FRAME: usize = 1 << 20;

/// Largest push the control plane sends a node and a node reads (16 MiB): a whole registry
/// of service discovery grows with the fleet — an endpoint is about 120 bytes of JSON, so a
/// DAEMON service registered for discovery on 10,000 nodes is over 1 MiB — and comes from
/// the control plane only, authenticated by the session's mutual TLS. Everything a node or an
/// unauthenticated peer sends stays within [`MAX_FRAME`].
pub const MAX_PUSH_FRAME: usize = 16 << 20;

/// Picks the newest protocol both sides speak.
pub fn negotiate(ours: &[u32], theirs: &[u32]) -> Option<u32> {
    ours.iter().copied().filter(|v| theirs.contains(v)).max()
}

/// Enrollment, sent only after the server proved the CA the token pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Protocol versions the agent speaks.
    pub protocols: Vec<u32>,
    /// Token id (public part).
    pub token_id: String,
    /// Token secret.
    pub secret: String,
    /// CSR (PEM) carrying the node's public key; the private key never leaves the node.
    pub csr_pem: String,
    /// The node's host name, a hint for operators.
    pub hostname: String,
    /// Labels from the command line (become node attributes with the token's).
    pub labels: BTreeMap<String, String>,
    /// Set when a node that was enrolled before (its certificate expired while it was
    /// offline) comes back: it keeps its id, tasks and data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousIdentity>,
}

/// A node's earlier identity, proven by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousIdentity {
    /// Its last certificate (PEM), possibly expired.
    pub cert_pem: String,
    /// Signature by that certificate's key over the token id and the new CSR (base64).
    pub proof: String,
}

/// The answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JoinReply {
    /// Enrolled: the node's id, certificate and the cluster CA.
    Joined {
        /// Server-assigned node id.
        node_id: String,
        /// The node certificate (PEM).
        cert_pem: String,
        /// The cluster CA certificate (PEM).
        ca_pem: String,
        /// Negotiated protocol version.
        protocol: u32,
    },
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
}

/// First message of an agent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the agent speaks.
    pub protocols: Vec<u32>,
    /// The agent's version string.
    pub agent_version: String,
    /// The node's address in the cluster: where its host ports are reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// The discovery registry the node holds, if any (`Registry::held`): a control plane whose
    /// registry is that one (version and digest) sends it nothing, one that kept the changes
    /// since sends those, any other the whole registry. Absent (an agent before it, or a node
    /// holding none): the whole registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<discovery::HeldRegistry>,
}

/// The answer to [`Hello`]; only after it is the session established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HelloReply {
    /// Accepted.
    Welcome {
        /// Negotiated protocol version.
        protocol: u32,
        /// The node id, as the server read it from the certificate.
        node_id: String,
        /// Server time (seconds since the epoch), so agents can spot a wrong clock.
        server_time: u64,
    },
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
    /// The control plane is admitting sessions as fast as it allows: dial again after this
    /// long. Each refused agent gets its own later slot, so a reconnect storm (every node after
    /// a control plane restart) is spread evenly instead of coming back in waves.
    Busy {
        /// Milliseconds to wait before dialling again.
        retry_after_ms: u64,
    },
}

/// Requests an agent makes during a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Liveness and clock check.
    Ping,
    /// The node's capacity and load (at the start of a session, then every half minute).
    Heartbeat {
        /// Resources.
        resources: NodeResources,
        /// Usage of the running containers of its tasks, kept in memory by the control plane.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        usage: Vec<tasks::TaskUsage>,
    },
    /// Status of the tasks on the node (those that changed, or all after a reconnect).
    Report {
        /// Task statuses.
        tasks: Vec<tasks::TaskStatus>,
    },
    /// A new certificate for the same key (CSR, PEM), before the current one expires.
    Renew {
        /// The CSR.
        csr_pem: String,
    },
    /// A version of a secret a task of the node's desired state is placed with (answered
    /// with [`AgentReply::Secret`], or refused — and recorded — for any other).
    Secret {
        /// The secret's name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A version of a config a task of the node's desired state is placed with (answered
    /// with [`AgentReply::Config`]; refused as `Secret` is for any other).
    Config {
        /// The config's name.
        name: String,
        /// Its version.
        version: u32,
    },
    /// Whether the control plane's content store holds an image, by reference (Docker's
    /// defaults apply): answered with [`AgentReply::Image`], or `Refused` when it does not
    /// hold it (a control plane too old to know the request refuses it too).
    ///
    /// With `pull`, a node that could not reach the image's registry asks the control plane to
    /// pull it (pull-through): the answer comes once the control plane holds it — minutes for
    /// a large image — or is `Refused` naming why its pull failed. A control plane of a
    /// release before `pull` ignores the field and answers as without it.
    Image {
        /// The image reference, as a task definition names it.
        image: String,
        /// Pull the image into the content store first if it is not there.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pull: bool,
        /// The node's platform, `OS/ARCH[/VARIANT]`, which a pull picks from an index (the
        /// control plane's own when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
    /// A blob of the content store from byte `offset` to its end (a cut transfer resumes
    /// from what the node has): answered with [`AgentReply::Blob`], then the bytes, raw, on
    /// the same stream until it finishes — paced by the control plane's
    /// `image_rate_limit` for the node. The node verifies the whole blob against `digest`.
    Blob {
        /// `sha256:<64 hex>`.
        digest: String,
        /// The first byte wanted, from 0.
        offset: u64,
    },
}

/// A node's capacity and load (sent in heartbeats, shown in `NodeInfo`). camelCase on the
/// wire; the previous release's snake_case names are still read, so its agents keep reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    /// CPUs the agent may use.
    pub cpus: u32,
    /// Memory, bytes.
    #[serde(alias = "memory_bytes")]
    pub memory_bytes: u64,
    /// Memory available, bytes.
    #[serde(alias = "memory_available_bytes")]
    pub memory_available_bytes: u64,
    /// Disk of the data directory, bytes.
    #[serde(alias = "disk_bytes")]
    pub disk_bytes: u64,
    /// Disk available, bytes.
    #[serde(alias = "disk_available_bytes")]
    pub disk_available_bytes: u64,
    /// One-minute load average, in thousandths.
    #[serde(alias = "load1_milli")]
    pub load1_milli: u64,
    /// CPU time the node's CPUs spent busy since it booted, microseconds: `/proc/stat`'s `cpu`
    /// line's user, nice, system, irq and softirq (proc(5)). A counter: the control plane derives the
    /// node's CPU use from two heartbeats. Absent from agents of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_busy_usec: Option<u64>,
}

/// Answers to [`AgentRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AgentReply {
    /// Answer to `Ping`.
    Pong {
        /// Server time (seconds since the epoch).
        server_time: u64,
    },
    /// Answer to `Report`.
    Recorded,
    /// Answer to `Renew`.
    Renewed {
        /// The new certificate (PEM).
        cert_pem: String,
    },
    /// Answer to `Secret`: the value (base64 on the wire; never logged).
    Secret {
        /// The value.
        value: secrets::SecretValue,
    },
    /// Answer to `Config`: the value (base64 on the wire).
    Config {
        /// The value.
        value: secrets::SecretValue,
    },
    /// Answer to `Image`: the image the content store holds under that name.
    Image(Box<images::StoredImage>),
    /// Answer to `Blob`: the blob's whole size; its bytes from the offset asked for follow
    /// on the stream.
    Blob {
        /// Bytes of the whole blob.
        size: u64,
    },
    /// The request was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What the control plane pushes to an agent (on a stream it opens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "snake_case")]
pub enum ServerPush {
    /// The node's desired state.
    Desired(tasks::DesiredState),
    /// Stream a task's container logs back on this stream as [`LogFrame`]s.
    Logs(LogRequest),
    /// The cluster's discoverable services (answered with `Persisted { generation: version }`).
    Registry(discovery::Registry),
    /// What changed in the registry since version `from` (protocol 2). Answered with
    /// `Persisted { generation }`, the version then held: `to` once applied, or the version
    /// the node holds when it does not hold `from` — the control plane then sends it what
    /// changed since that version, or the whole registry. From protocol 4
    /// ([`PROTOCOL_DELTAS_IN_A_ROW`]) the stream may carry more deltas after it, each
    /// answered by the one reply.
    RegistryDelta(discovery::RegistryDelta),
    /// Run a command in a task's container; the stream then carries [`exec::ExecFrame`]s
    /// both ways (see [`exec`]).
    Exec(exec::ExecRequest),
    /// Pull an image into the node's store ahead of a deployment; answered with
    /// [`images::PullFrame`]s on this stream.
    Pull(images::PullRequest),
}

/// Which logs of a task to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// Task id.
    pub task: String,
    /// One container by its name in the task definition (all of them otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Keep streaming new lines until the containers exit or the reader goes away.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines of each container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
}

/// One log record of a container, as a node sends it and `GET /v1/tasks/{id}/logs` streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Container name in the task definition.
    pub container: String,
    /// RFC 3339 time the line was read.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// A piece of a longer line (the line goes on in the next record).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// The text (invalid UTF-8 replaced), without its newline.
    pub text: String,
}

/// What a node sends back for [`ServerPush::Logs`], frame after frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "logs", rename_all = "snake_case")]
pub enum LogFrame {
    /// Records, oldest first.
    Lines {
        /// The records.
        lines: Vec<LogLine>,
    },
    /// Nothing more will come (the containers exited or the request is done).
    End,
    /// The node cannot serve this request.
    Error {
        /// Why.
        reason: String,
    },
}

/// The agent's answer to a [`ServerPush`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PushReply {
    /// Persisted: the node will converge to this generation, offline too.
    Persisted {
        /// The generation now held.
        generation: u64,
    },
    /// Refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame of `len` bytes, over the `limit` of its kind ([`MAX_FRAME`],
    /// [`MAX_PUSH_FRAME`], an exec stream's chunk), announced by the peer or about to be sent.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The largest allowed.
        limit: usize,
    },
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is not the JSON expected.
    #[error("malformed message: {0}")]
    Decode(#[from] serde_json::Error),
    /// A packed frame ([`PACKED`]) whose body is not a Zstandard frame this reader takes.
    #[error("packed frame: {0}")]
    Unpack(std::io::Error),
}

/// Writes one frame (at most [`MAX_FRAME`]).
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    write_encoded(w, &frame).await
}

/// One frame as [`write_frame`] writes it (length and body, at most [`MAX_FRAME`]), encoded once
/// to be written to any number of streams with [`write_encoded`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_within(msg, MAX_FRAME)
}

/// A push of the control plane as one frame (at most [`MAX_PUSH_FRAME`]), for [`write_encoded`];
/// a node reads it with [`read_push`].
pub fn encode_push(push: &ServerPush) -> Result<Vec<u8>, FrameError> {
    encode_within(push, MAX_PUSH_FRAME)
}

fn encode_within<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > limit {
        return Err(FrameError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// `frame` (made by [`encode_push`]) packed: the same push, its body compressed and its
/// length word marked [`PACKED`], for a node of [`PROTOCOL_PACKED_PUSHES`] or later to read
/// with [`read_push`] or [`read_next_push`]. Errors: `frame` shorter than its length word, or
/// a packed body over [`MAX_PUSH_FRAME`].
pub fn pack_push(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let body = frame
        .get(4..)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    let packed = zstd::bulk::compress(body, PACKED_LEVEL).map_err(FrameError::Io)?;
    if packed.len() > MAX_PUSH_FRAME {
        return Err(FrameError::TooLarge {
            len: packed.len(),
            limit: MAX_PUSH_FRAME,
        });
    }
    let mut out = Vec::with_capacity(4 + packed.len());
    out.extend_from_slice(&(packed.len() as u32 | PACKED).to_be_bytes());
    out.extend_from_slice(&packed);
    Ok(out)
}

/// The body of a packed frame unpacked, refused past `limit` bytes (or past a window of
/// 2^24 bytes) without unpacking the rest: a packed frame may stand for far more than it
/// weighs.
pub fn unpack(packed: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
    use std::io::Read;
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(packed).map_err(FrameError::Unpack)?;
    decoder
        .window_log_max(PACKED_WINDOW_LOG)
        .map_err(FrameError::Unpack)?;
    let mut body = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(FrameError::Unpack)?;
    if body.len() > limit {
        return Err(FrameError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// Writes a frame made by [`encode_frame`].
pub async fn write_encoded<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame (at most [`MAX_FRAME`]; a longer one is refused before its body is read).
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    read_within(r, MAX_FRAME).await
}

/// Reads one push of the control plane, as a node does (at most [`MAX_PUSH_FRAME`], packed
/// or not: [`PACKED`]).
pub async fn read_push<R: AsyncRead + Unpin>(r: &mut R) -> Result<ServerPush, FrameError> {
    read_next_push(r)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
}

/// Reads the next push of a stream that may carry several in a row
/// ([`PROTOCOL_DELTAS_IN_A_ROW`]): `None` when the stream ends where a frame would start; a
/// stream that ends inside a frame is an error.
pub async fn read_next_push<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<ServerPush>, FrameError> {
    let Some(body) = read_next_body(r, MAX_PUSH_FRAME, true).await? else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&body)?))
}

async fn read_within<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    limit: usize,
) -> Result<T, FrameError> {
    read_next_within(r, limit)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
}

/// The next frame of at most `limit` bytes, or `None` when the stream ends where one would
/// start.
async fn read_next_within<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    let Some(body) = read_next_body(r, limit, false).await? else {
        return Ok(None);
    };
    Ok(Some(serde_json::from_slice(&body)?))
}

/// The body of the next frame, of at most `limit` bytes packed and unpacked (a packed one
/// only where `packed_ok`, unpacked here), or `None` when the stream ends where a frame would
/// start. A frame over its limit is refused before its body is read.
pub async fn read_next_body<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    packed_ok: bool,
) -> Result<Option<Vec<u8>>, FrameError> {
    let Some((body, packed)) = read_next_raw(r, limit, packed_ok).await? else {
        return Ok(None);
    };
    if packed {
        return Ok(Some(unpack(&body, limit)?));
    }
    Ok(Some(body))
}

/// The body of the next frame as it came (at most `limit` bytes) and whether it is packed
/// (only where `packed_ok`; see [`unpack`]), or `None` when the stream ends where a frame would
/// start.
pub async fn read_next_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    packed_ok: bool,
) -> Result<Option<(Vec<u8>, bool)>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            n => got += n,
        }
    }
    let word = u32::from_be_bytes(len);
    let packed = packed_ok && word & PACKED != 0;
    let len = if packed { word & !PACKED } else { word } as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some((body, packed)))
}

/// Parses `key=value` labels: keys of letters, digits, `.`, `_`, `-`, `/` (at most 63),
/// values of printable characters without spaces (at most 253).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("label '{text}': expected key=value"))?;
    let key_ok = !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Err(format!(
            "label '{text}': key must be 1-63 letters, digits, '.', '_', '-', '/'"
        ));
    }
    if v.len() > 253 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "label '{text}': value must be at most 253 printable characters without spaces"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Labels as the wire carries them.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::session::{ping_lost, ping_timeout, MAX_UNANSWERED_PINGS, PING_TIMEOUT};

    #[test]
    fn a_handshake_is_waited_for_eight_round_trips_between_5_and_10_s() {
        use super::session::handshake_confirm_within as within;
        use std::time::Duration;
        let ms = Duration::from_millis;
        assert_eq!(within(ms(1)), ms(5_000));
        assert_eq!(within(ms(1_000)), ms(8_000));
        assert_eq!(within(ms(2_000)), ms(10_000));
        assert_eq!(within(Duration::MAX), ms(10_000));
    }

    #[test]
    fn a_ping_unanswered_ends_the_session_only_when_nothing_arrives_or_too_many_in_a_row() {
        // A control plane gone without closing: nothing arrives, the first miss ends it.
        assert!(ping_lost(1, false));
        // A slow, lossy link: its packets arrive, the session is kept up to the limit.
        for n in 1..MAX_UNANSWERED_PINGS {
            assert!(!ping_lost(n, true), "{n}");
        }
        assert!(ping_lost(MAX_UNANSWERED_PINGS, true));
        // A LAN's round trip keeps the fixed timeout; a satellite's second gets eight.
        let ms = std::time::Duration::from_millis;
        assert_eq!(ping_timeout(ms(1)), PING_TIMEOUT);
        assert_eq!(ping_timeout(ms(1000)), ms(8000));
        assert_eq!(
            ping_timeout(std::time::Duration::MAX),
            std::time::Duration::MAX
        );
    }

    use super::*;

    #[test]
    fn counts_say_one_thing_and_many_things() {
        assert_eq!(count(1, "problem"), "1 problem");
        assert_eq!(count(2, "problem"), "2 problems");
        assert_eq!(count(0, "warning"), "0 warnings");
        assert_eq!(plural(1, "schedule"), "schedule");
    }

    #[tokio::test]
    async fn deltas_in_a_row_are_read_to_the_end_of_their_stream_and_a_cut_frame_is_an_error() {
        use discovery::RegistryDelta;
        let delta = |from: u64| {
            ServerPush::RegistryDelta(RegistryDelta {
                from,
                to: from + 1,
                upserted: Vec::new(),
                removed: Vec::new(),
                endpoints: Vec::new(),
            })
        };
        let mut bytes = encode_push(&delta(1)).expect("encode");
        bytes.extend(encode_push(&delta(2)).expect("encode"));
        let mut r = &bytes[..];
        assert_eq!(read_next_push(&mut r).await.expect("first"), Some(delta(1)));
        assert_eq!(
            read_next_push(&mut r).await.expect("second"),
            Some(delta(2))
        );
        assert_eq!(read_next_push(&mut r).await.expect("the end"), None);
        // Cut inside the length or inside the body: never taken for the end of the row.
        for cut in [2, bytes.len() - 3] {
            let mut r = &bytes[..cut];
            let mut read = Vec::new();
            let e = loop {
                match read_next_push(&mut r).await {
                    Ok(Some(p)) => read.push(p),
                    Ok(None) => panic!("a frame cut at {cut} taken for the end after {read:?}"),
                    Err(e) => break e,
                }
            };
            assert!(matches!(e, FrameError::Io(_)), "{e}");
        }
        // A push with none is the end at once; read as one push, it is an error.
        assert_eq!(read_next_push(&mut &b""[..]).await.expect("empty"), None);
        assert!(read_push(&mut &b""[..]).await.is_err());
    }

    #[tokio::test]
    async fn a_registry_of_a_daemon_on_ten_thousand_nodes_is_pushed_in_one_frame() {
        use discovery::{DiscoveredService, Endpoint, Registry};
        let endpoints = (0..12_000u32)
            .map(|i| Endpoint {
                task: format!("t-{i:012x}"),
                node: format!("n-{i:08x}"),
                address: std::net::Ipv4Addr::from(0x0a80_0000 + i),
                port: Some(32768),
                task_address: Some(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8) + 2)),
                task_port: Some(8080),
            })
            .collect();
        let push = ServerPush::Registry(Registry {
            version: 7,
            services: vec![DiscoveredService {
                namespace: "shop".into(),
                name: "edge".into(),
                service: "edge".into(),
                vip: None,
                port: Some(8080),
                fixed_port: None,
                protocol: taskdef::Protocol::Tcp,
                endpoints,
            }],
        });
        // Over what a node or a peer may send, within what the control plane may push.
        let frame = encode_push(&push).expect("encode");
        assert!(frame.len() > MAX_FRAME, "{}", frame.len());
        assert!(matches!(
            encode_frame(&push),
            Err(FrameError::TooLarge {
                limit: MAX_FRAME,
                ..
            })
        ));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move { read_push(&mut b).await });
        write_encoded(&mut a, &frame).await.expect("write");
        assert_eq!(reader.await.expect("reader").expect("read"), push);
        // Read as any other frame, it is refused at its length.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&frame[..4]).await.expect("write");
        let refused = read_frame::<_, ServerPush>(&mut b).await;
        let e = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e,
            format!(
                "frame of {} bytes exceeds the {MAX_FRAME}-byte limit",
                frame.len() - 4
            )
        );
        // Packed (protocol 5), a fraction of its weight, read back as the same push, alone or
        // in a row; read as any other frame, refused at its length.
        let packed = pack_push(&frame).expect("pack");
        assert!(
            packed.len() * 4 < frame.len(),
            "{} of {}",
            packed.len(),
            frame.len()
        );
        assert_ne!(
            u32::from_be_bytes(packed[..4].try_into().expect("word")) & PACKED,
            0
        );
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move {
            let one = read_push(&mut b).await;
            let next = read_next_push(&mut b).await;
            (one, next, read_next_push(&mut b).await)
        });
        write_encoded(&mut a, &packed).await.expect("write");
        write_encoded(&mut a, &frame).await.expect("write");
        drop(a);
        let (one, next, end) = reader.await.expect("reader");
        assert_eq!(one.expect("packed"), push);
        assert_eq!(next.expect("unpacked after it"), Some(push.clone()));
        assert!(matches!(end, Ok(None)));
        assert!(matches!(
            read_frame::<_, ServerPush>(&mut &packed[..]).await,
            Err(FrameError::TooLarge {
                limit: MAX_FRAME,
                ..
            })
        ));
        // A push over its own limit is refused before its body is read.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_PUSH_FRAME as u32 + 1).to_be_bytes())
            .await
            .expect("write");
        assert!(matches!(
            read_push(&mut b).await,
            Err(FrameError::TooLarge {
                limit: MAX_PUSH_FRAME,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_packed_push_that_unpacks_past_its_limit_or_is_not_zstandard_is_refused() {
        let packed = |body: &[u8]| {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            pack_push(&frame).expect("pack")
        };
        // 17 MiB of the same byte packs into a few KiB: refused once past 16 MiB unpacked.
        let bomb = packed(&vec![b' '; MAX_PUSH_FRAME + (1 << 20)]);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        assert!(matches!(
            read_push(&mut &bomb[..]).await,
            Err(FrameError::TooLarge {
                limit: MAX_PUSH_FRAME,
                ..
            })
        ));
        // Not a Zstandard frame.
        let mut garbage = ((4u32) | PACKED).to_be_bytes().to_vec();
        garbage.extend_from_slice(b"junk");
        let e = read_push(&mut &garbage[..]).await.expect_err("garbage");
        assert!(matches!(e, FrameError::Unpack(_)), "{e}");
        // A frame that asks for a window past 16 MiB (128 MiB here) is not unpacked.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        encoder.window_log(27).expect("window");
        std::io::Write::write_all(&mut encoder, br#"{"Registry":{"version":1,"services":[]}}"#)
            .expect("write");
        let body = encoder.finish().expect("finish");
        let mut wide = (body.len() as u32 | PACKED).to_be_bytes().to_vec();
        wide.extend_from_slice(&body);
        let e = read_push(&mut &wide[..]).await.expect_err("wide");
        assert!(matches!(e, FrameError::Unpack(_)), "{e}");
        // Packed, it must still be JSON of a push.
        let e = read_push(&mut &packed(b"{}")[..])
            .await
            .expect_err("not a push");
        assert!(matches!(e, FrameError::Decode(_)), "{e}");
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let msg = AgentRequest::Renew {
            csr_pem: "x".into(),
        };
        write_frame(&mut a, &msg).await.expect("write");
        let got: AgentRequest = read_frame(&mut b).await.expect("read");
        assert_eq!(got, msg);

        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .expect("write");
        assert!(matches!(
            read_frame::<_, AgentRequest>(&mut b).await,
            Err(FrameError::TooLarge { .. })
        ));
        // An encoded frame reads as the message.
        let frame = encode_frame(&msg).expect("encode");
        write_encoded(&mut a, &frame).await.expect("write");
        assert_eq!(
            read_frame::<_, AgentRequest>(&mut b).await.expect("read"),
            msg
        );
        assert!(matches!(
            encode_frame(&"x".repeat(MAX_FRAME)),
            Err(FrameError::TooLarge { .. })
        ));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&5u32.to_be_bytes()).await.expect("write");
        a.write_all(b"{oops").await.expect("write");
        assert!(matches!(
            read_frame::<_, Hello>(&mut b).await,
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn server_addresses() {
        assert_eq!(with_default_port("cp.example"), "cp.example:7443");
        assert_eq!(with_default_port("10.0.0.1:9000"), "10.0.0.1:9000");
    }

    #[test]
    fn an_agent_of_the_previous_release_still_reports() {
        // Its report and heartbeat as it sends them: snake_case inside the shapes the operator
        // API now shows in camelCase.
        let report = r#"{"request": "report", "tasks": [{"id": "t-1", "state": "STOPPED",
            "stop_reason": "an essential container exited", "stop_code": "EssentialContainerExited",
            "containers": [{"name": "main", "state": "exited", "exit_code": 3, "restarts": 2}]}]}"#;
        let AgentRequest::Report { tasks } = serde_json::from_str(report).expect("old report")
        else {
            panic!("not a report")
        };
        let c = &tasks[0].containers[0];
        assert_eq!((c.exit_code, c.restarts), (Some(3), 2));
        assert_eq!(
            tasks[0].stop_code,
            Some(tasks::StopCode::EssentialContainerExited)
        );
        let heartbeat = r#"{"request": "heartbeat",
            "resources": {"cpus": 4, "memory_bytes": 8, "memory_available_bytes": 6,
                          "disk_bytes": 100, "disk_available_bytes": 50, "load1_milli": 250},
            "usage": [{"id": "t-1", "containers": {"main": {"cpu_usec": 7, "memory_bytes": 9, "pids": 1}}}]}"#;
        let AgentRequest::Heartbeat { resources, usage } =
            serde_json::from_str(heartbeat).expect("old heartbeat")
        else {
            panic!("not a heartbeat")
        };
        assert_eq!(
            resources,
            NodeResources {
                cpus: 4,
                memory_bytes: 8,
                memory_available_bytes: 6,
                disk_bytes: 100,
                disk_available_bytes: 50,
                load1_milli: 250,
                cpu_busy_usec: None,
            }
        );
        let u = &usage[0].containers["main"];
        assert_eq!((u.cpu_usec, u.memory_bytes, u.pids), (7, 9, 1));
    }

    /// Every key of `v` (not the user's: labels), recursively.
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    if k != "labels" {
                        keys(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_operator_api_speaks_camel_case() {
        use ops::*;
        let resources = NodeResources {
            cpus: 1,
            cpu_busy_usec: Some(1),
            ..Default::default()
        };
        let labels: Labels = [("site_code".to_string(), "a".to_string())].into();
        let token = TokenInfo {
            id: "k".into(),
            created_at: 1,
            expires_at: 2,
            uses: 1,
            used: 0,
            labels: labels.clone(),
        };
        let container = tasks::ContainerStatus {
            name: "main".into(),
            state: tasks::ContainerState::Restarting,
            exit_code: Some(1),
            reason: None,
            restarts: 1,
            restart_at: Some(9),
            health: None,
            usage: Some(tasks::ContainerUsage {
                cpu_usec: 1,
                memory_bytes: 2,
                pids: 3,
            }),
        };
        let bodies = [
            serde_json::to_value(TokenCreate {
                ttl_secs: Some(60),
                uses: Some(1),
                labels: labels.clone(),
            }),
            serde_json::to_value(TokenCreated {
                token: "FLT1-…".into(),
                info: token,
            }),
            serde_json::to_value(NodeInfo {
                id: "n-1".into(),
                hostname: "h".into(),
                labels,
                joined_at: 1,
                token_id: "k".into(),
                cert_not_after: 2,
                revoked: false,
                connected: true,
                draining: false,
                state: NodeState::Ready,
                agent_version: Some("0.1.0".into()),
                last_seen: Some(3),
                resources: Some(resources),
                cpu_millicores: Some(250),
            }),
            serde_json::to_value(AdminIssue {
                name: "ops".into(),
                csr_pem: "…".into(),
            }),
            serde_json::to_value(AdminCredential {
                cert_pem: "…".into(),
                ca_pem: "…".into(),
            }),
            serde_json::to_value(container),
        ];
        let mut all = Vec::new();
        for b in bodies {
            keys(&b.expect("serializes"), &mut all);
        }
        let snake: Vec<&String> = all.iter().filter(|k| k.contains('_')).collect();
        assert!(snake.is_empty(), "snake_case keys: {snake:?}");
        assert!(all.iter().any(|k| k == "ttlSecs") && all.iter().any(|k| k == "exitCode"));
        // An older client's field is refused, not silently dropped.
        assert!(serde_json::from_str::<TokenCreate>(r#"{"ttl_secs": 60}"#).is_err());
    }

    #[test]
    fn versions_and_labels() {
        assert_eq!(negotiate(&[1, 2], &[2, 3]), Some(2));
        assert_eq!(negotiate(&[1], &[2]), None);
        // An agent of the previous release speaks 1 only: no registry deltas for it.
        assert_eq!(negotiate(PROTOCOLS, &[1]), Some(1));
        assert_eq!(
            parse_label("site=store-12"),
            Ok(("site".into(), "store-12".into()))
        );
        assert!(parse_label("site").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_label("a b=c").is_err());
        assert!(parse_label("k=with space").is_err());
    }
}
