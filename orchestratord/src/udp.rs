//! The QUIC endpoint's UDP socket and its kernel buffers. Thousands of agents dialling at once
//! (a cold start, the reconnect storm after a restart) send their handshakes in bursts; a
//! receive buffer of the kernel's default size (about 200 KiB) overflows, the kernel drops
//! the datagrams (`Udp: RcvbufErrors` in `/proc/net/snmp`) and each dropped handshake waits
//! out QUIC's probe timeout before it is sent again.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustix::net::sockopt;

/// The buffer size asked for, each way (8 MiB).
pub const BUFFER_BYTES: usize = 8 << 20;

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
