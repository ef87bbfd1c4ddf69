//! The QUIC endpoint's UDP socket and its kernel buffers. Thousands of agents dialling at once
//! (a cold start, the reconnect storm after a restart) send their handshakes in bursts; a
//! receive buffer of the kernel's default size (about 200 KiB) overflows, the kernel drops
//! the datagrams (`Udp: RcvbufErrors` in `/proc/net/snmp`) and each dropped handshake waits
//! out QUIC's probe timeout before it is sent again.
//!
//! The endpoint's configuration ([`endpoint_config`]) keeps what must outlive a restart: the
//! keys of its stateless resets and connection IDs.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::net::sockopt;

/// The buffer size asked for, each way (32 MiB): about 14,000 handshake datagrams (each takes
/// about 2.3 KiB of it, its buffer's true size), a 10,000-node fleet's first flights at once.
/// With 8 MiB (about 3,600), a 10,000-agent reconnect storm lost 7,442 datagrams, each lost
/// handshake packet a probe timeout; with 32 MiB none (BENCHMARKS.md, *Fleet*). It is kernel
/// memory taken only while datagrams wait to be read.
pub const BUFFER_BYTES: usize = 32 << 20;

/// What the kernel granted a socket (it reports twice what it holds for data: its own
/// bookkeeping is counted in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// `SO_RCVBUF` as the kernel reports it, bytes.
    pub recv: usize,
    /// `SO_SNDBUF` as the kernel reports it, bytes.
    pub send: usize,
    /// The size asked for.
    pub asked: usize,
}

impl Buffers {
    /// True when the kernel granted less than asked each way (it caps `SO_RCVBUF` and
    /// `SO_SNDBUF` at `net.core.rmem_max` and `wmem_max` unless the process may override them).
    pub fn capped(&self) -> bool {
        self.recv < self.asked || self.send < self.asked
    }
}

/// Binds a UDP socket at `addr` with receive and send buffers of `bytes` each: asked for
/// with `SO_RCVBUF`/`SO_SNDBUF`, then — when the kernel's limit (`net.core.rmem_max`,
/// `wmem_max`) capped them — with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, which a process with
/// `CAP_NET_ADMIN` (the control plane as root) may use past the limit, as journald does for
/// its sockets. Returns the socket and what the kernel granted.
pub fn bind(addr: SocketAddr, bytes: usize) -> io::Result<(UdpSocket, Buffers)> {
    let socket = UdpSocket::bind(addr)?;
    let buffers = size(&socket, bytes)?;
    Ok((socket, buffers))
}

/// Sizes an open socket's buffers as [`bind`] does.
pub fn size(socket: &UdpSocket, bytes: usize) -> io::Result<Buffers> {
    // The kernel doubles what it is given; asking for half gets `bytes` as it reports it.
    let half = bytes / 2;
    sockopt::set_socket_recv_buffer_size(socket, half)?;
    sockopt::set_socket_send_buffer_size(socket, half)?;
    let mut recv = sockopt::socket_recv_buffer_size(socket)?;
    let mut send = sockopt::socket_send_buffer_size(socket)?;
    // Without CAP_NET_ADMIN these fail with EPERM: the capped sizes stand.
    if recv < bytes && sockopt::set_socket_recv_buffer_size_force(socket, half).is_ok() {
        recv = sockopt::socket_recv_buffer_size(socket)?;
    }
    if send < bytes && sockopt::set_socket_send_buffer_size_force(socket, half).is_ok() {
        send = sockopt::socket_send_buffer_size(socket)?;
    }
    Ok(Buffers {
        recv,
        send,
        asked: bytes,
    })
}

/// The most datagrams the control plane hands the kernel in one send (GSO segments). quinn
/// keeps, for each connection, a buffer as large as the largest batch it ever sent: with
/// quinn's 10 segments of up to 1,452 bytes, 16–32 KiB per session once a large push went
/// to it, 81 MB of the control plane's 297 MB peak heap at 3,000 sessions (heaptrack) and
/// the most of what took it past 1 GiB at 10,000. Four keep it at 5.8 KiB.
pub const SEGMENTS_PER_SEND: usize = 4;

/// A QUIC socket that sends at most [`SEGMENTS_PER_SEND`] datagrams at a time, the rest as
/// the socket it wraps.
#[derive(Debug)]
pub struct FewSegments(Arc<dyn quinn::AsyncUdpSocket>);

impl FewSegments {
    /// `socket` for quinn on `runtime`, sending at most [`SEGMENTS_PER_SEND`] at a time.
    pub fn wrap(socket: UdpSocket, runtime: &dyn quinn::Runtime) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self(runtime.wrap_udp_socket(socket)?)))
    }
}

impl quinn::AsyncUdpSocket for FewSegments {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments().min(SEGMENTS_PER_SEND)
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// The least time between two stateless resets the endpoint sends: none. quinn's default,
/// 20 ms, would answer 50 packets a second, 200 s for a 10,000-node fleet after a restart; and
/// quinn compares against the time its endpoint woke to read the socket, the same for every
/// datagram it then reads, so any least time answers only the first packet of each read (a
/// 10,000-agent storm measured 3,100 sessions still waiting for their ping or idle timeout
/// with 100 µs). A reset is smaller than the packet that called for it (no amplification) and
/// goes only to a packet for an ID the control plane issued ([`TaggedCids`]); one who forges
/// packets for such an ID gets one reset per packet back, as any answer to a packet (an ICMP
/// error, a TCP reset).
pub const STATELESS_RESET_EVERY: Duration = Duration::ZERO;

/// The length of the connection IDs the control plane issues (quinn's default).
pub const CID_LEN: usize = 8;

/// Of which random: 5 bytes, 2^40 IDs. The pairs of ID and reset token a client can learn
/// (its own, and the ones it asks for by retiring IDs) never make a table of them worth
/// having, and an ID whose token a reset has revealed is not issued again by chance (RFC 9000
/// §10.3.2). The other 3 bytes are the tag.
pub const CID_RANDOM: usize = 5;

/// The connection IDs the control plane issues: [`CID_RANDOM`] random bytes, then the first
/// bytes of HMAC-SHA256(key, those bytes). A packet for an ID without its tag was never the
/// control plane's: it is dropped without a reset (1 in 2^24 passes). The key comes from the
/// CA, so the IDs of the sessions of a control plane that restarted still carry their tag.
/// (quinn's `HashedConnectionIdGenerator` has 3 random bytes and a hash that is not keyed
/// for secrecy: made for a key that dies with the process.)
pub struct TaggedCids {
    key: Arc<ring::hmac::Key>,
    /// Keyed with the operating system's randomness: the random bytes are its hashes of a
    /// count.
    random: std::collections::hash_map::RandomState,
    issued: u64,
}

impl std::fmt::Debug for TaggedCids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggedCids")
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl TaggedCids {
    /// IDs tagged with `key`.
    pub fn new(key: Arc<ring::hmac::Key>) -> Self {
        Self {
            key,
            random: std::collections::hash_map::RandomState::new(),
            issued: 0,
        }
    }

    fn tag(&self, random: &[u8]) -> [u8; CID_LEN - CID_RANDOM] {
        let mac = ring::hmac::sign(&self.key, random);
        let mut tag = [0; CID_LEN - CID_RANDOM];
        tag.copy_from_slice(&mac.as_ref()[..CID_LEN - CID_RANDOM]);
        tag
    }
}

impl quinn::ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.random.build_hasher();
        h.write_u64(self.issued);
        self.issued += 1;
        let mut id = [0; CID_LEN];
        id[..CID_RANDOM].copy_from_slice(&h.finish().to_le_bytes()[..CID_RANDOM]);
        let tag = self.tag(&id[..CID_RANDOM]);
        id[CID_RANDOM..].copy_from_slice(&tag);
        quinn::ConnectionId::new(&id)
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if cid.len() == CID_LEN && self.tag(&cid[..CID_RANDOM]) == cid[CID_RANDOM..] {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The control plane's QUIC endpoint configuration, with `keys` (derived from the cluster CA,
/// so the same after a restart) for its stateless resets and connection IDs.
///
/// A node whose session the control plane lost — a restart, a crash, `kill -9` — is answered
/// at its next packet (a keep-alive comes every 5 s) with a stateless reset (RFC 9000 §10.3)
/// and redials then, instead of after an unanswered ping or its idle timeout: after a restart
/// 10,000 nodes redial within seconds of it rather than over the 15 s that takes. A reset is
/// smaller than the packet that called for it (RFC 9000 §10.3.3: no amplification, no reset
/// loop); see [`STATELESS_RESET_EVERY`].
pub fn endpoint_config(keys: flotilla_certs::EndpointKeys) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(Arc::new(keys.reset_key));
    let cid_key = Arc::new(keys.cid_key);
    config
        .cid_generator(move || Box::new(TaggedCids::new(cid_key.clone())))
        .min_reset_interval(STATELESS_RESET_EVERY);
    config
}

/// `Udp: RcvbufErrors` of `/proc/net/snmp`: datagrams the kernel dropped at a full receive
/// buffer, on every socket of the host, since it booted.
pub fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// A server socket a test can take away as `kill -9` does: afterwards nothing is sent or
    /// received and the port is free for the next server.
    #[derive(Debug)]
    struct Killable(Mutex<Option<Arc<dyn quinn::AsyncUdpSocket>>>, SocketAddr);

    impl Killable {
        fn kill(&self) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        }

        fn inner(&self) -> Option<Arc<dyn quinn::AsyncUdpSocket>> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    #[derive(Debug)]
    struct Writable;

    impl quinn::UdpPoller for Writable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl quinn::AsyncUdpSocket for Killable {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
            Box::pin(Writable)
        }

        fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
            self.inner().map_or(Ok(()), |s| s.try_send(transmit))
        }

        fn poll_recv(
            &self,
            cx: &mut Context,
            bufs: &mut [io::IoSliceMut<'_>],
            meta: &mut [quinn::udp::RecvMeta],
        ) -> Poll<io::Result<usize>> {
            self.inner()
                .map_or(Poll::Pending, |s| s.poll_recv(cx, bufs, meta))
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.1)
        }

        fn max_transmit_segments(&self) -> usize {
            self.inner().map_or(1, |s| s.max_transmit_segments())
        }

        fn max_receive_segments(&self) -> usize {
            self.inner().map_or(1, |s| s.max_receive_segments())
        }

        fn may_fragment(&self) -> bool {
            self.inner().is_none_or(|s| s.may_fragment())
        }
    }

    /// How a node's session with a control plane on `keys` ends when that control plane is
    /// killed and another, on `after`, takes its port: `None` if it has not ended within 3 s
    /// (its idle timeout is 30 s).
    async fn session_across_a_restart(
        ca: &flotilla_certs::ClusterCa,
        after: quinn::EndpointConfig,
    ) -> Option<quinn::ConnectionError> {
        use flotilla_certs::tls::{self, ALPN_AGENT};
        let hour = Duration::from_secs(3600);
        let server_cert = ca.issue_server(&[], hour).expect("server certificate");
        let server = || {
            let tls = tls::server(ca.cert_pem(), &server_cert, &[ALPN_AGENT]).expect("tls");
            quinn::ServerConfig::with_crypto(Arc::new(
                quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls"),
            ))
        };
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let first = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = first.local_addr().expect("address");
        let killable = Arc::new(Killable(
            Mutex::new(Some(runtime.wrap_udp_socket(first).expect("wrap"))),
            addr,
        ));
        let before = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(ca.endpoint_keys().expect("keys")),
            Some(server()),
            killable.clone(),
            runtime.clone(),
        )
        .expect("first endpoint");

        let admin = ca.issue_admin("test", hour).expect("client certificate");
        let tls = tls::client(ca.cert_pem(), &admin, ALPN_AGENT).expect("client tls");
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls"),
        ));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(100)));
        transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("idle")));
        client.transport_config(Arc::new(transport));
        let node =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("client");
        let (session, accepted) = tokio::join!(
            async {
                node.connect_with(client, addr, flotilla_certs::SERVER_NAME)
                    .expect("connect")
                    .await
                    .expect("handshake")
            },
            async {
                before
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("accepted")
            }
        );
        // kill -9: the old server sends nothing more (not even a close), and its port is free.
        killable.kill();
        let mut bound = UdpSocket::bind(addr);
        for _ in 0..50 {
            if bound.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            bound = UdpSocket::bind(addr);
        }
        let _restarted = quinn::Endpoint::new(
            after,
            Some(server()),
            bound.expect("the port again"),
            runtime,
        )
        .expect("second endpoint");
        let ended = tokio::time::timeout(Duration::from_secs(3), session.closed())
            .await
            .ok();
        drop(accepted);
        ended
    }

    #[test]
    fn issued_ids_carry_their_tag_and_others_do_not() {
        use quinn::ConnectionIdGenerator;
        let ca = flotilla_certs::ClusterCa::generate("cid-test").expect("CA");
        let key = || Arc::new(ca.endpoint_keys().expect("keys").cid_key);
        let mut g = TaggedCids::new(key());
        let ids: Vec<_> = (0..1000).map(|_| g.generate_cid()).collect();
        // A restarted control plane (another generator on the same key) knows them.
        let after = TaggedCids::new(key());
        assert!(ids.iter().all(|id| after.validate(id).is_ok()));
        let distinct: BTreeSet<Vec<u8>> = ids.iter().map(|id| id.to_vec()).collect();
        assert_eq!(distinct.len(), ids.len(), "no ID issued twice");
        assert!(ids.iter().all(|id| id.len() == CID_LEN));
        // Anything else is not its: another cluster's, a bit flipped, another length.
        let other = flotilla_certs::ClusterCa::generate("cid-test").expect("CA");
        let theirs = TaggedCids::new(Arc::new(other.endpoint_keys().expect("keys").cid_key));
        assert!(ids.iter().filter(|id| theirs.validate(id).is_ok()).count() <= 1);
        let mut flipped = ids[0].to_vec();
        flipped[0] ^= 1;
        assert!(after.validate(&quinn::ConnectionId::new(&flipped)).is_err());
        assert!(after
            .validate(&quinn::ConnectionId::new(&ids[0][..7]))
            .is_err());
        assert!(after.validate(&quinn::ConnectionId::new(&[])).is_err());
    }

    #[tokio::test]
    async fn a_restarted_control_plane_resets_the_sessions_of_the_one_before() {
        let ca = flotilla_certs::ClusterCa::generate("reset-test").expect("CA");
        // The keys come from the CA: the restarted endpoint answers the node's next packet
        // (a keep-alive) with a reset it accepts.
        let same = endpoint_config(ca.endpoint_keys().expect("keys"));
        assert!(
            matches!(
                session_across_a_restart(&ca, same).await,
                Some(quinn::ConnectionError::Reset)
            ),
            "the node learns at once that its session is gone"
        );
        // With keys made anew at each start (quinn's default) the same packets are dropped
        // unanswered, and the node waits for its idle timeout.
        let fresh = quinn::EndpointConfig::default();
        let ended = session_across_a_restart(&ca, fresh).await;
        assert!(ended.is_none(), "{ended:?}");
    }

    #[test]
    fn a_socket_gets_the_buffers_asked_for_or_what_the_kernel_allows() {
        let (socket, b) = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 20).expect("bind");
        assert!(socket.local_addr().expect("address").port() != 0);
        // 1 MiB is under every usual limit (rmem_max is 208 KiB by default, but root may
        // force past it); either way the kernel reports no more than twice what was asked.
        assert!(b.recv > 0 && b.recv <= 2 << 20, "{b:?}");
        assert!(b.send > 0 && b.send <= 2 << 20, "{b:?}");
        assert!(
            rcvbuf_errors().is_some(),
            "/proc/net/snmp has Udp: RcvbufErrors"
        );
    }
}
