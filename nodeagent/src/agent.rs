//! `nodeagent join` (enrollment) and `nodeagent run` (the session with the control plane).
//!
//! The node's key is made here and never leaves the node; its identity lives in
//! `<data-dir>/identity/` (see `flotilla_certs::credential`). The session is one QUIC
//! connection dialled by the agent, established only after the `Hello` round trip, kept alive
//! with pings, renewing the node certificate in place at a random 50–80 % of its lifetime, and
//! redialled with exponential backoff and jitter when it drops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use flotilla_api::discovery::RegistryDelta;
use flotilla_api::{
    read_frame, write_frame, AgentReply, AgentRequest, Hello, HelloReply, JoinReply, JoinRequest,
    Labels, PreviousIdentity, PushReply, ServerPush, MAX_PUSH_FRAME, PROTOCOLS,
};
use flotilla_certs::credential::Credential;
use flotilla_certs::tls::ALPN_AGENT;
use flotilla_certs::token::JoinToken;
use flotilla_certs::{key_and_csr, CertifiedKey, SERVER_NAME};
use quinn::{Connection, ConnectionError, Endpoint};
use ring::rand::{SecureRandom, SystemRandom};

use crate::runner::Runner;
use flotilla_api::quic::{hello_reply, HelloLost};
use flotilla_api::session::MAX_BACKOFF;
use flotilla_api::session::PING_EVERY;
use flotilla_api::session::{ping_lost, ping_timeout};

/// Close code the control plane uses for a revoked node.
const CLOSE_REVOKED: u32 = 2;

/// First wait before a report the control plane did not record (its disk full, say) is sent
/// again, whole; doubled at each resend refused in a row up to [`REPORT_RETRY_MAX`].
const REPORT_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between two sends of a report the control plane keeps refusing.
const REPORT_RETRY_MAX: Duration = Duration::from_secs(30);

/// When a report the control plane did not record is sent again: nothing else would send it
/// before the node's state changes again.
///
/// The wait is [`REPORT_RETRY`] after the first refusal and doubles with each resend refused
/// in a row, up to [`REPORT_RETRY_MAX`]. A report sent because the node's state changed while
/// a resend is due, and refused too, leaves that resend as it is: a resend always carries the
/// node's whole, latest state, so it neither comes sooner nor waits longer for it.
#[derive(Debug)]
struct Resend {
    due: Option<tokio::time::Instant>,
    wait: Duration,
}

impl Resend {
    fn new() -> Self {
        Resend {
            due: None,
            wait: REPORT_RETRY,
        }
    }

    /// The control plane recorded a report: nothing is due, and the next refusal starts the
    /// wait over.
    fn recorded(&mut self) {
        *self = Resend::new();
    }

    /// The control plane refused a report at `now`; returns how long until it is sent again.
    fn refused(&mut self, now: tokio::time::Instant) -> Duration {
        match self.due {
            Some(due) => due.saturating_duration_since(now),
            None => {
                let wait = self.wait;
                self.due = Some(now + wait);
                self.wait = (wait * 2).min(REPORT_RETRY_MAX);
                wait
            }
        }
    }

    /// The resend is being sent now: nothing is due until it is answered.
    fn sending(&mut self) {
        self.due = None;
    }
}

/// Tells systemd the agent is ready, once.
fn announce_ready(status: &str) {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| flotilla_api::systemd::ready(status));
}

/// The control plane asked to be dialled again after this long.
#[derive(Debug)]
struct Busy(Duration);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "control plane busy; come back in {:?}", self.0)
    }
}

impl std::error::Error for Busy {}

/// Where the node's identity lives.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

async fn resolve(server: &str) -> Result<std::net::SocketAddr> {
    let with_port = flotilla_api::with_default_port(server);
    let mut addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .with_context(|| format!("resolving {with_port}"))?;
    addrs
        .next()
        .with_context(|| format!("{with_port} resolves to no address"))
}

fn client_endpoint() -> Result<Endpoint> {
    Endpoint::client(std::net::SocketAddr::from(([0, 0, 0, 0], 0))).context("opening a UDP socket")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Enrolls this node with the control plane at `server` using `token`.
pub async fn join(data_dir: &Path, server: &str, token: &str, labels: &[String]) -> Result<String> {
    let dir = identity_dir(data_dir);
    let token: JoinToken = token.parse()?;
    let key = key_and_csr(&hostname())?;
    // A node whose certificate expired (offline too long) comes back with its identity.
    let previous = match Credential::load(&dir) {
        Err(_) => None,
        Ok(existing) => {
            let (_, not_after) =
                flotilla_certs::validity_of(&pem_der(&existing.identity.cert_pem)?)?;
            if not_after > SystemTime::now() {
                bail!(
                    "this node already joined as {} and its certificate is valid until {} \
                     (identity in {}); `nodeagent run` connects with it",
                    existing.name,
                    humantime::format_rfc3339_seconds(not_after),
                    dir.display()
                );
            }
            Some((
                existing.name.clone(),
                PreviousIdentity {
                    cert_pem: existing.identity.cert_pem.clone(),
                    proof: flotilla_certs::rejoin_proof(
                        &existing.identity.key_pem,
                        token.id(),
                        &key.cert_pem,
                    )?,
                },
            ))
        }
    };
    let mut wanted = Labels::new();
    for l in labels {
        let (k, v) = flotilla_api::parse_label(l).map_err(anyhow::Error::msg)?;
        wanted.insert(k, v);
    }
    let addr = resolve(server).await?;
    let endpoint = client_endpoint()?;
    let cfg = flotilla_api::quic::client_config(
        flotilla_certs::tls::enrollment_client(*token.ca_digest())?,
        None,
    )
    .context("QUIC TLS configuration")?;
    // The handshake completes only if the server proved the CA the token pins; nothing is
    // sent before.
    let conn = endpoint
        .connect_with(cfg, addr, SERVER_NAME)?
        .await
        .map_err(|e| {
            // The address it resolved to, when the name is not that address already.
            let resolved = if server.starts_with(&addr.to_string()) {
                String::new()
            } else {
                format!(" ({addr})")
            };
            anyhow::anyhow!("connecting to {server}{resolved}: {}", explain(&e))
        })?;
    let (mut send, mut recv) = conn.open_bi().await.context("opening the join stream")?;
    let req = JoinRequest {
        protocols: PROTOCOLS.to_vec(),
        token_id: token.id().to_string(),
        secret: token.secret().to_string(),
        csr_pem: key.cert_pem.clone(),
        hostname: hostname(),
        labels: wanted,
        previous: previous.as_ref().map(|(_, p)| p.clone()),
    };
    write_frame(&mut send, &req)
        .await
        .context("sending the join request")?;
    let _ = send.finish();
    let reply: JoinReply = read_frame(&mut recv)
        .await
        .context("reading the join reply")?;
    conn.close(quinn::VarInt::from_u32(0), b"joined");
    endpoint.wait_idle().await;
    match reply {
        JoinReply::Joined {
            node_id,
            cert_pem,
            ca_pem,
            ..
        } => {
            if let Some((old, _)) = &previous {
                if *old != node_id {
                    bail!("the control plane gave this node a new id {node_id} instead of {old}");
                }
            }
            Credential {
                server: server.to_string(),
                name: node_id.clone(),
                ca_pem,
                identity: CertifiedKey {
                    cert_pem,
                    key_pem: key.key_pem,
                },
            }
            .write(&dir)?;
            Ok(node_id)
        }
        JoinReply::Refused { reason } => {
            bail!("the control plane refused to enroll this node: {reason}")
        }
    }
}

/// Turns connection errors into what an operator needs to hear (the clock, a revocation).
fn explain(e: &ConnectionError) -> String {
    let text = e.to_string();
    if text.contains("certificate not valid yet") || text.contains("certificate expired") {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        return format!(
            "{text} — the clock of this node reads {now}: if that is wrong, fix it (NTP, RTC); \
             certificates cannot be checked against a wrong clock"
        );
    }
    match e {
        ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(CLOSE_REVOKED) => {
            "this node was revoked by an operator; it needs a new token (`nodeagent join`) to return".into()
        }
        ConnectionError::ApplicationClosed(c) => {
            format!("closed by the control plane: {}", String::from_utf8_lossy(&c.reason))
        }
        _ => text,
    }
}

/// When the control plane at `server` presents a certificate the cluster CA this node trusts
/// (in `dir`) did not sign — rustls's "unknown issuer", or "bad signature" when the other CA
/// has the same name — what that means and what to do: the address is another cluster's, or
/// its control plane was initialized anew with a new CA.
fn untrusted_server(text: &str, server: &str, dir: &Path) -> Option<String> {
    let foreign = [
        "invalid peer certificate: UnknownIssuer",
        "invalid peer certificate: BadSignature",
    ];
    foreign.iter().any(|f| text.contains(f)).then(|| {
        format!(
            "the control plane at {server} is not of the cluster this node joined (its \
             certificate is not signed by the CA in {}): the address is another cluster's, or \
             the control plane was initialized anew; to join that one, run `nodeagent join \
             {server} --token …` with one of its tokens",
            dir.join(flotilla_certs::CA_CERT_FILE).display()
        )
    })
}

/// A random fraction in `[lo, hi)`.
fn random_between(lo: f64, hi: f64) -> f64 {
    let mut b = [0u8; 4];
    let _ = SystemRandom::new().fill(&mut b);
    lo + (hi - lo) * (u32::from_le_bytes(b) as f64 / u32::MAX as f64)
}

/// When to renew the certificate: at a random 50–80 % of its lifetime (from its issue, not
/// from its backdated start).
fn renewal_due(cert_pem: &str) -> Result<SystemTime> {
    let der = pem_der(cert_pem)?;
    let (not_before, not_after) = flotilla_certs::validity_of(&der)?;
    let issued = not_before + flotilla_certs::BACKDATE;
    let lifetime = not_after
        .duration_since(issued)
        .unwrap_or(Duration::from_secs(60));
    Ok(issued + lifetime.mul_f64(random_between(0.5, 0.8)))
}

/// The control plane's clock as this node last heard it (the `server_time` of its welcome
/// and pongs), carried forward by the monotonic clock: what a certificate's validity is
/// judged by, since the control plane checks this node's certificate against its own clock.
#[derive(Debug, Clone, Copy)]
struct ServerClock {
    /// Seconds since the epoch it said.
    said: u64,
    /// When it was heard.
    at: std::time::Instant,
}

impl ServerClock {
    fn heard(said: u64) -> Self {
        Self {
            said,
            at: std::time::Instant::now(),
        }
    }

    /// The control plane's clock now, as far as this node can tell.
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.said) + self.at.elapsed()
    }
}

/// How long until the certificate valid from `not_before` is to be renewed at `due`, judged
/// at `server_now`, the control plane's clock, which is what checks it: the time left until
/// `due`, or none when the certificate is not valid yet by that clock (issued while both
/// clocks ran ahead, then set back: renewed at once, while the session lasts, not at the next
/// handshake, which it would fail). `None` while this node's clock (`local_now`) and the
/// control plane's differ by more than [`flotilla_certs::BACKDATE`]: a certificate issued then
/// is dated by a clock one side will find wrong once it is set right — a control plane a year
/// ahead would issue one that is not valid for a year once it is back, and the node could not
/// connect again without a new join; and a node a year ahead would find every renewal due
/// again at once and renew at every turn of the loop. The current certificate stays: valid by
/// whichever clock is right, it serves again once the wrong one is.
fn renewal_wait(
    not_before: SystemTime,
    due: SystemTime,
    server_now: SystemTime,
    local_now: SystemTime,
) -> Option<Duration> {
    let skew = match server_now.duration_since(local_now) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > flotilla_certs::BACKDATE {
        return None;
    }
    if server_now < not_before {
        return Some(Duration::ZERO);
    }
    Some(due.duration_since(server_now).unwrap_or(Duration::ZERO))
}

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| anyhow::anyhow!("certificate: {e:?}"))
}

/// Runs the node: converges to its persisted desired state (with or without a control plane)
/// and keeps the session with the control plane, forever.
pub async fn run(
    data_dir: &Path,
    node: flotilla_runtime::container::StoreOptions,
    images: crate::images::ImageSettings,
    heartbeat: Duration,
    net: crate::network::Settings,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let dir = identity_dir(data_dir);
    // Bound first: an address that cannot be had is a configuration error, said at once.
    let metrics = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics_listen {addr}: cannot listen there"))?,
        ),
        None => None,
    };
    let mut cred = Credential::load(&dir).with_context(|| {
        format!(
            "no node identity in {} (run `nodeagent join` first)",
            dir.display()
        )
    })?;
    let store = {
        let d = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            flotilla_runtime::container::ContainerStore::open(&d, node)
        })
        .await??
    };
    let runtime = Arc::new(crate::runtime::StoreRuntime::new(store.clone()));
    let runner = Runner::open(data_dir, store, runtime, &cred.name, net, images)?;
    tracing::info!(
        generation = runner.generation(),
        "converging to the persisted desired state"
    );
    let mut rounds = runner.rounds();
    tokio::spawn(runner.clone().run());
    tokio::spawn(runner.clone().collect_images());
    if let Some(listener) = metrics {
        tracing::info!(
            "metrics at http://{}/metrics",
            listener
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        );
        let (runner, data_dir) = (runner.clone(), data_dir.to_path_buf());
        // One scrape measures at a time: scrapers at once wait their turn rather than take
        // the blocking pool that container starts and heartbeats need.
        let one = Arc::new(tokio::sync::Semaphore::new(1));
        tokio::spawn(flotilla_metrics::serve(listener, move |accept| {
            let (runner, data_dir, one) = (runner.clone(), data_dir.clone(), one.clone());
            async move {
                let _turn = one.acquire_owned().await;
                scrape(runner, data_dir, accept).await
            }
        }));
    }
    // Ready for systemd once the node's containers are re-adopted (one full round) and the
    // first session attempt is over, established or not: a node serves its tasks offline too.
    let _ = rounds.wait_for(|r| r.is_some()).await;
    if let Some(every) = flotilla_api::systemd::watchdog_interval() {
        let r = runner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let r = r.clone();
                if tokio::task::spawn_blocking(move || r.healthy())
                    .await
                    .unwrap_or(false)
                {
                    flotilla_api::systemd::ping();
                } else {
                    tracing::error!("the runner does not answer; withholding the watchdog ping");
                }
            }
        });
    }
    // A control plane that neither answers nor refuses would hold the first attempt for the
    // whole handshake timeout: the node is ready (offline) after 5 s at most.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        announce_ready("running offline: the control plane has not answered yet");
    });
    let endpoint = client_endpoint()?;
    let mut backoff = Duration::from_secs(1);
    let mut known_rtt = None;
    loop {
        let started = std::time::Instant::now();
        let result = session(
            &endpoint,
            &dir,
            &mut cred,
            &runner,
            heartbeat,
            &mut known_rtt,
        )
        .await;
        runner.set_online(false);
        runner.session().set(None);
        announce_ready("running offline: the control plane is not reachable yet");
        match result {
            Ok(()) => tracing::info!("session closed"),
            Err(e) => match e.downcast_ref::<Busy>() {
                // The control plane gave this node a slot: come back then (a little jitter
                // keeps slots from lining up across restarts), backoff unchanged.
                Some(Busy(after)) => {
                    let wait = after.mul_f64(random_between(1.0, 1.1));
                    tracing::info!(
                        "control plane busy admitting sessions; dialling again in {:.1} s",
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                None => tracing::warn!(node = %cred.name, "session: {e:#}"),
            },
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        // Jitter spreads a fleet's reconnects after a control plane restart.
        let wait = backoff.mul_f64(random_between(0.5, 1.5));
        tracing::info!("reconnecting in {:.1} s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session with the control plane, until it ends. `known_rtt` is the path's round-trip
/// time as the last session knew it (kept up to date at each ping).
async fn session(
    endpoint: &Endpoint,
    dir: &Path,
    cred: &mut Credential,
    runner: &Arc<Runner>,
    heartbeat_every: Duration,
    known_rtt: &mut Option<Duration>,
) -> Result<()> {
    let (_, not_after) = flotilla_certs::validity_of(&pem_der(&cred.identity.cert_pem)?)?;
    if not_after <= SystemTime::now() {
        bail!(
            "this node's certificate expired at {} (this node's clock reads {}): if the clock is \
             right, get a new token and run `nodeagent join {} --token …` — the node keeps its \
             identity, tasks and data",
            humantime::format_rfc3339_seconds(not_after),
            humantime::format_rfc3339_seconds(SystemTime::now()),
            cred.server
        );
    }
    let addr = resolve(&cred.server).await?;
    let tls = flotilla_certs::tls::client(&cred.ca_pem, &cred.identity, ALPN_AGENT)?;
    let quic =
        flotilla_api::quic::client_config(tls, *known_rtt).context("QUIC TLS configuration")?;
    let conn = endpoint
        .connect_with(quic, addr, SERVER_NAME)?
        .await
        .map_err(|e| {
            let text = explain(&e);
            match untrusted_server(&text, &cred.server, dir) {
                Some(hint) => anyhow::anyhow!("connecting to {}: {text} — {hint}", cred.server),
                None => anyhow::anyhow!("connecting to {}: {text}", cred.server),
            }
        })?;
    // TLS 1.3 lets a client "connect" before the server checked its certificate: the
    // session exists only once the server answered the hello.
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| anyhow::anyhow!("{}", explain(&e)))?;
    write_frame(
        &mut send,
        &Hello {
            protocols: PROTOCOLS.to_vec(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            address: runner.address().or_else(|| source_address(addr)),
            registry: runner.dns().registry().held(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("sending hello: {e}"))?;
    let _ = send.finish();
    let written = tokio::time::Instant::now();
    let reply: HelloReply = match hello_reply(&conn, &mut recv, *known_rtt, written).await {
        Ok(r) => r,
        Err(HelloLost::Unconfirmed(within)) => bail!(
            "hello: the control plane did not confirm the handshake within {within:?}; dialling \
             again"
        ),
        Err(HelloLost::Frame(e)) => {
            let why = conn
                .close_reason()
                .map(|c| explain(&c))
                .unwrap_or_else(|| e.to_string());
            bail!("hello: {why}");
        }
    };
    let (protocol, server_time) = match reply {
        HelloReply::Welcome {
            protocol,
            node_id,
            server_time,
        } => {
            if node_id != cred.name {
                bail!(
                    "the control plane knows this certificate as {node_id}, not {}",
                    cred.name
                );
            }
            (protocol, server_time)
        }
        HelloReply::Refused { reason } => bail!("hello refused: {reason}"),
        HelloReply::Busy { retry_after_ms } => {
            conn.close(quinn::VarInt::from_u32(0), b"busy: coming back later");
            return Err(Busy(Duration::from_millis(retry_after_ms.min(600_000))).into());
        }
    };
    check_clock(server_time);
    let mut server_clock = ServerClock::heard(server_time);
    tracing::info!(node = %cred.name, server = %cred.server, protocol, "session established");
    {
        // The daemon's own line for whoever started it by hand: a closed output (the terminal
        // gone, a journal stream restarted) is no reason to panic or to end the agent.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "session established as {} with {}",
            cred.name,
            cred.server
        );
    }
    announce_ready(&format!("in session with {}", cred.server));
    runner.set_online(true);
    runner.session().set(Some(conn.clone()));
    let r = runner.clone();
    tokio::task::spawn_blocking(move || r.contact()).await?;
    let mut due = renewal_due(&cred.identity.cert_pem)?;
    let mut valid_from = flotilla_certs::validity_of(&pem_der(&cred.identity.cert_pem)?)?.0;
    let mut renewal_held = false;
    let mut ping = tokio::time::interval(PING_EVERY);
    // Pings in a row the control plane did not answer while its packets still arrived.
    let mut unanswered = 0u32;
    // Everything known is reported once per session, then whenever it changes.
    let mut status = runner.status();
    status.mark_changed();
    let mut resend = Resend::new();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    // After a stall, one heartbeat, not a burst of them a few milliseconds apart: the control
    // plane derives CPU rates from the time between heartbeats.
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let data_dir = dir.parent().unwrap_or(dir).to_path_buf();
    loop {
        let until_renewal =
            match renewal_wait(valid_from, due, server_clock.now(), SystemTime::now()) {
                Some(wait) => {
                    renewal_held = false;
                    Some(wait)
                }
                None => {
                    if !renewal_held {
                        tracing::warn!(
                            "certificate renewal waits until this node's clock and the control \
                             plane's agree (within {} s)",
                            flotilla_certs::BACKDATE.as_secs()
                        );
                        renewal_held = true;
                    }
                    // Looked at again at the loop's next turn (the next pong says the
                    // control plane's clock anew).
                    None
                }
            };
        tokio::select! {
            e = conn.closed() => bail!("{}", explain(&e)),
            push = conn.accept_bi() => {
                let (mut send, mut recv) = push.map_err(|e| anyhow::anyhow!("{}", explain(&e)))?;
                let reply = match flotilla_api::read_push(&mut recv).await {
                    Ok(ServerPush::Logs(req)) => {
                        tokio::spawn(crate::logs::serve(
                            runner.store().clone(),
                            runner.clone(),
                            req,
                            send,
                        ));
                        continue;
                    }
                    Ok(ServerPush::Exec(req)) => {
                        tokio::spawn(crate::exec::serve(
                            runner.store().clone(),
                            runner.clone(),
                            req,
                            send,
                            recv,
                        ));
                        continue;
                    }
                    Ok(ServerPush::Pull(req)) => {
                        tokio::spawn(crate::prefetch::serve(runner.clone(), req, send));
                        continue;
                    }
                    Ok(ServerPush::Registry(registry)) => {
                        let dns = runner.dns().clone();
                        match tokio::task::spawn_blocking(move || dns.set(registry)).await? {
                            Ok(version) => PushReply::Persisted { generation: version },
                            Err(e) => PushReply::Refused {
                                reason: flotilla_api::errors::chain(e.as_ref()),
                            },
                        }
                    }
                    // More may follow on the same stream (protocol 4): all are applied and
                    // kept at once, and answered once.
                    Ok(ServerPush::RegistryDelta(delta)) => match deltas_in_a_row(delta, &mut recv).await {
                        Ok(deltas) => {
                            let dns = runner.dns().clone();
                            match tokio::task::spawn_blocking(move || dns.apply(&deltas)).await? {
                                Ok(version) => PushReply::Persisted { generation: version },
                                Err(e) => PushReply::Refused {
                                    reason: flotilla_api::errors::chain(e.as_ref()),
                                },
                            }
                        }
                        Err(reason) => PushReply::Refused { reason },
                    },
                    Ok(ServerPush::Desired(state)) => {
                        let r = runner.clone();
                        match tokio::task::spawn_blocking(move || r.set_desired(state)).await? {
                            Ok(generation) => PushReply::Persisted { generation },
                            Err(e) => PushReply::Refused {
                                reason: flotilla_api::errors::chain(e.as_ref()),
                            },
                        }
                    }
                    Err(e) => PushReply::Refused { reason: format!("bad push: {e}") },
                };
                // Said here too: a node that cannot keep what it is sent (a full disk) says so
                // in its own log, not only in the control plane's.
                if let PushReply::Refused { reason } = &reply {
                    tracing::warn!("refused what the control plane sent: {reason}");
                }
                let _ = write_frame(&mut send, &reply).await;
                let _ = send.finish();
            }
            _ = heartbeat.tick() => {
                let resources = crate::host::node_resources(&data_dir);
                let r = runner.clone();
                let usage = tokio::task::spawn_blocking(move || r.usage()).await.unwrap_or_default();
                match request(&conn, &AgentRequest::Heartbeat { resources, usage }).await {
                    Ok(AgentReply::Recorded) => {
                        let r = runner.clone();
                        tokio::task::spawn_blocking(move || r.contact()).await?;
                    }
                    Ok(other) => tracing::warn!("heartbeat: {other:?}"),
                    Err(e) => bail!("heartbeat: {e:#}"),
                }
            }
            changed = status.changed() => {
                if changed.is_ok() {
                    let tasks = status.borrow_and_update().clone();
                    match request(&conn, &AgentRequest::Report { tasks: tasks.clone() }).await {
                        Ok(AgentReply::Recorded) => {
                            resend.recorded();
                            runner.acknowledge(&tasks)?;
                        }
                        Ok(other) => {
                            let why = match other {
                                AgentReply::Refused { reason } => reason,
                                other => format!("unexpected answer {other:?}"),
                            };
                            let wait = resend.refused(tokio::time::Instant::now());
                            tracing::warn!(
                                "the control plane did not record the report ({why}); sent \
                                 again in {:.0} s",
                                wait.as_secs_f64().ceil()
                            );
                        }
                        Err(e) => bail!("report: {e:#}"),
                    }
                }
            }
            () = tokio::time::sleep_until(resend.due.unwrap_or_else(tokio::time::Instant::now)),
                if resend.due.is_some() =>
            {
                resend.sending();
                status.mark_changed();
            }
            _ = ping.tick() => {
                // A control plane that vanished without closing (power cut, kill -9) is
                // noticed here rather than at the idle timeout; a slow, lossy link that still
                // carries its packets keeps the session (`session::ping_lost`).
                let heard_before = conn.stats().udp_rx.datagrams;
                *known_rtt = Some(conn.rtt());
                let within = ping_timeout(conn.rtt());
                match tokio::time::timeout(within, request(&conn, &AgentRequest::Ping)).await {
                    Ok(Ok(AgentReply::Pong { server_time })) => {
                        unanswered = 0;
                        check_clock(server_time);
                        server_clock = ServerClock::heard(server_time);
                    }
                    Ok(Ok(other)) => tracing::warn!("unexpected reply to ping: {other:?}"),
                    Ok(Err(e)) => bail!("ping: {e:#}"),
                    Err(_) => {
                        unanswered += 1;
                        let heard = conn.stats().udp_rx.datagrams > heard_before;
                        if ping_lost(unanswered, heard) {
                            conn.close(quinn::VarInt::from_u32(0), b"no answer to ping");
                            if heard {
                                bail!("the control plane did not answer {unanswered} pings in a row");
                            }
                            bail!("the control plane did not answer a ping within {within:?}, and nothing arrived from it");
                        }
                        tracing::info!(
                            rtt_ms = conn.rtt().as_millis() as u64,
                            unanswered,
                            "the control plane did not answer a ping within {within:?}, but its packets still arrive: a slow or lossy link; the session is kept"
                        );
                    }
                }
            }
            _ = tokio::time::sleep(until_renewal.unwrap_or(PING_EVERY)), if until_renewal.is_some() => {
                let fresh = key_and_csr(&cred.name)?;
                match request(&conn, &AgentRequest::Renew { csr_pem: fresh.cert_pem.clone() }).await? {
                    AgentReply::Renewed { cert_pem } => {
                        cred.replace_identity(dir, CertifiedKey { cert_pem, key_pem: fresh.key_pem })?;
                        due = renewal_due(&cred.identity.cert_pem)?;
                        valid_from = flotilla_certs::validity_of(&pem_der(&cred.identity.cert_pem)?)?.0;
                        tracing::info!(node = %cred.name, "certificate renewed in place");
                    }
                    AgentReply::Refused { reason } => {
                        tracing::warn!("certificate renewal refused: {reason}");
                        // Tried again in 30 s, whether or not the certificate is valid yet.
                        due = server_clock.now() + Duration::from_secs(30);
                        valid_from = UNIX_EPOCH;
                    }
                    other => tracing::warn!("unexpected reply to renew: {other:?}"),
                }
            }
        }
    }
}

/// The registry deltas of one push: `first`, then those that follow it on the stream
/// (protocol 4), at most [`flotilla_api::MAX_DELTAS_IN_A_PUSH`] and [`MAX_PUSH_FRAME`] bytes
/// after the first (as sent and, for a packed frame, unpacked); why the push is refused when
/// something else follows, a frame is bad or there are more.
async fn deltas_in_a_row<R: tokio::io::AsyncRead + Unpin>(
    first: RegistryDelta,
    recv: &mut R,
) -> std::result::Result<Vec<RegistryDelta>, String> {
    let mut deltas = vec![first];
    let mut left = MAX_PUSH_FRAME;
    let over = || format!("bad push: registry deltas in a row over {MAX_PUSH_FRAME} bytes");
    loop {
        let (raw, packed) = match flotilla_api::read_next_raw(recv, left, true).await {
            Ok(None) => return Ok(deltas),
            Ok(Some(frame)) => frame,
            Err(flotilla_api::FrameError::TooLarge { .. }) => return Err(over()),
            Err(e) => return Err(format!("bad push: delta {}: {e}", deltas.len() + 1)),
        };
        left -= raw.len();
        let body = if packed {
            match flotilla_api::unpack(&raw, left) {
                Ok(body) => {
                    left -= body.len();
                    body
                }
                Err(flotilla_api::FrameError::TooLarge { .. }) => return Err(over()),
                Err(e) => return Err(format!("bad push: delta {}: {e}", deltas.len() + 1)),
            }
        } else {
            raw
        };
        match serde_json::from_slice::<ServerPush>(&body) {
            Ok(ServerPush::RegistryDelta(d)) => {
                if deltas.len() == flotilla_api::MAX_DELTAS_IN_A_PUSH {
                    return Err(format!(
                        "bad push: more than {} registry deltas in a row",
                        flotilla_api::MAX_DELTAS_IN_A_PUSH
                    ));
                }
                deltas.push(d);
            }
            Ok(_) => {
                return Err(format!(
                    "bad push: something other than a registry delta after {} of them",
                    deltas.len()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "bad push: delta {}: malformed message: {e}",
                    deltas.len() + 1
                ))
            }
        }
    }
}

async fn request(conn: &Connection, req: &AgentRequest) -> Result<AgentReply> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, req).await?;
    let _ = send.finish();
    Ok(read_frame(&mut recv).await?)
}

/// Says plainly when this node's clock is far from the control plane's.
fn check_clock(server_time: u64) {
    let local = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let skew = local.abs_diff(server_time);
    if skew > 300 {
        tracing::warn!(
            skew_secs = skew,
            "this node's clock is {} s {} the control plane's: fix it (NTP, RTC)",
            skew,
            if local < server_time {
                "behind"
            } else {
                "ahead of"
            }
        );
    }
}

/// A scrape of `GET /metrics`: the node measured now (off the async workers) and the agent's
/// meters, in the format `accept` asks for.
async fn scrape(
    runner: Arc<Runner>,
    data_dir: std::path::PathBuf,
    accept: Option<String>,
) -> flotilla_metrics::Scrape {
    let openmetrics = flotilla_metrics::wants_openmetrics(accept.as_deref());
    tokio::task::spawn_blocking(move || {
        let snapshot = crate::metrics::collect(&runner, &data_dir);
        crate::metrics::encode(snapshot, runner.meters(), openmetrics)
    })
    .await
    .map_err(|e| {
        (
            flotilla_metrics::StatusCode::INTERNAL_SERVER_ERROR,
            format!("measuring the node: {e}"),
        )
    })
}

/// The address this node uses to reach `server`: where the rest of the cluster reaches it,
/// unless it says otherwise (`--address`).
fn source_address(server: std::net::SocketAddr) -> Option<std::net::Ipv4Addr> {
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    probe.connect(server).ok()?;
    match probe.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn deltas_in_a_row_are_read_packed_or_not_within_one_budget_as_sent_and_unpacked() {
        use flotilla_api::discovery::RegistryDelta;
        use flotilla_api::{encode_push, pack_push, ServerPush, MAX_PUSH_FRAME};
        let delta = |from: u64| RegistryDelta {
            from,
            to: from + 1,
            ..RegistryDelta::default()
        };
        let frame =
            |from: u64| encode_push(&ServerPush::RegistryDelta(delta(from))).expect("encode");
        let mut row = frame(2);
        row.extend(pack_push(&frame(3)).expect("pack"));
        let read = super::deltas_in_a_row(delta(1), &mut &row[..]).await;
        assert_eq!(read.expect("a row"), [delta(1), delta(2), delta(3)]);
        // A packed frame that unpacks past what is left of the row's budget: refused, not
        // unpacked further.
        let mut heavy = (MAX_PUSH_FRAME as u32).to_be_bytes().to_vec();
        heavy.extend(vec![b' '; MAX_PUSH_FRAME]);
        let mut row = frame(2);
        row.extend(pack_push(&heavy).expect("pack"));
        let e = super::deltas_in_a_row(delta(1), &mut &row[..])
            .await
            .expect_err("over");
        assert_eq!(
            e,
            format!("bad push: registry deltas in a row over {MAX_PUSH_FRAME} bytes")
        );
        // Something else after deltas, and a packed frame that is no Zstandard frame.
        let mut row = frame(2);
        row.extend(encode_push(&ServerPush::Registry(Default::default())).expect("encode"));
        let e = super::deltas_in_a_row(delta(1), &mut &row[..])
            .await
            .expect_err("other");
        assert!(
            e.contains("something other than a registry delta after 2"),
            "{e}"
        );
        let mut row = (4 | flotilla_api::PACKED).to_be_bytes().to_vec();
        row.extend(b"junk");
        let e = super::deltas_in_a_row(delta(1), &mut &row[..])
            .await
            .expect_err("junk");
        assert!(e.starts_with("bad push: delta 2: packed frame:"), "{e}");
    }

    use super::*;

    #[test]
    fn a_refused_report_is_sent_again_after_a_wait_that_doubles_with_each_refused_resend() {
        let start = tokio::time::Instant::now();
        let mut resend = Resend::new();
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..6 {
            let wait = resend.refused(now);
            assert_eq!(resend.due, Some(now + wait));
            waits.push(wait.as_secs());
            now += wait;
            resend.sending();
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        resend.recorded();
        assert_eq!(resend.due, None);
        assert_eq!(resend.refused(now), REPORT_RETRY);
    }

    #[test]
    fn a_changed_state_refused_while_a_resend_is_due_neither_hastens_nor_delays_it() {
        let start = tokio::time::Instant::now();
        let mut resend = Resend::new();
        assert_eq!(resend.refused(start), Duration::from_secs(2));
        // The node's state changes 0.5 s later; that report is refused too.
        let later = start + Duration::from_millis(500);
        assert_eq!(resend.refused(later), Duration::from_millis(1500));
        assert_eq!(resend.due, Some(start + Duration::from_secs(2)));
        // The resend is refused: the wait doubles once, not twice.
        let due = start + Duration::from_secs(2);
        resend.sending();
        assert_eq!(resend.refused(due), Duration::from_secs(4));
    }

    #[test]
    fn renewal_follows_the_control_planes_clock_and_a_certificate_it_dates_ahead_is_renewed_at_once(
    ) {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let (from, due) = (at(1_000_000), at(2_000_000));
        const YEAR: u64 = 365 * 86_400;
        // by the control plane's clock: the time left, none once due (a node's clock a few
        // minutes off changes nothing)
        assert_eq!(
            renewal_wait(from, due, at(1_500_000), at(1_500_300)),
            Some(Duration::from_secs(500_000))
        );
        assert_eq!(
            renewal_wait(from, due, at(2_000_001), at(2_000_001)),
            Some(Duration::ZERO)
        );
        // either clock a year ahead of the other: no renewal (the node's ahead would find it
        // due at every turn; the control plane's ahead would date the certificate a year on)
        assert_eq!(
            renewal_wait(from, due, at(1_500_000), at(1_500_000 + YEAR)),
            None
        );
        assert_eq!(
            renewal_wait(from, due, at(1_500_000 + YEAR), at(1_500_000)),
            None
        );
        // issued while both clocks ran a year ahead, judged once they are back: not valid
        // yet, so renewed now
        assert_eq!(
            renewal_wait(at(40_000_000), at(41_000_000), at(1_500_000), at(1_500_000)),
            Some(Duration::ZERO)
        );
        // the control plane's clock as last heard, carried forward
        let heard = ServerClock::heard(1_500_000);
        assert!(heard.now() >= at(1_500_000) && heard.now() < at(1_500_010));
    }
}
