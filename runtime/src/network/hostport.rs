//! Host ports a task publishes are held by the node, as Docker's proxy holds them: a socket
//! bound to the port on every address of the node for as long as the task's network lives, so
//! nothing else on the node can take it and a port something already holds is refused (with
//! who holds it) instead of having its traffic silently diverted to the task.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use super::nft::Proto;

/// Ports the node itself needs, never published: ssh, so the node stays reachable.
pub const RESERVED: &[(u16, &str)] = &[(22, "ssh")];

/// Why a host port cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Something on the node holds it.
    #[error("host port {port}/{proto} is in use on this node{}", holder_text(.holder))]
    InUse {
        /// The port.
        port: u16,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// The holding process (`name (pid N)`), when it could be found.
        holder: Option<String>,
    },
    /// The node itself needs it.
    #[error(
        "host port {port}/{proto} is reserved for the node's own {what} and cannot be published"
    )]
    Reserved {
        /// The port.
        port: u16,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// What the node uses it for.
        what: &'static str,
    },
    /// Binding it failed for another reason.
    #[error("holding host port {port}/{proto}")]
    Bind {
        /// The port.
        port: u16,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(h: &Option<String>) -> String {
    match h {
        Some(h) => format!(" (held by {h})"),
        None => String::new(),
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// A host port held for a task; released when dropped.
pub enum HeldPort {
    /// A bound TCP socket (not listening: a connection that was not forwarded is refused).
    Tcp(std::net::TcpListener),
    /// A bound UDP socket.
    Udp(UdpSocket),
}

impl fmt::Debug for HeldPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, a) = match self {
            Self::Tcp(s) => ("tcp", s.local_addr()),
            Self::Udp(s) => ("udp", s.local_addr()),
        };
        match a {
            Ok(a) => write!(f, "HeldPort({}/{p})", a.port()),
            Err(_) => write!(f, "HeldPort(?/{p})"),
        }
    }
}

/// Holds `port` for `proto` on every IPv4 address of the node (the namespace of the caller):
/// refused when reserved ([`RESERVED`]) or when anything holds it — a listener on any address,
/// including the agent's own sockets.
pub fn hold(port: u16, proto: Proto) -> Result<HeldPort, PortError> {
    let name = proto_name(proto);
    if let Some((_, what)) = RESERVED.iter().find(|(p, _)| *p == port) {
        return Err(PortError::Reserved {
            port,
            proto: name,
            what,
        });
    }
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let bound = match proto {
        // `std`'s TcpListener listens; a bare bound socket is what holds the port here.
        Proto::Tcp => bind_tcp(addr).map(HeldPort::Tcp),
        Proto::Udp => UdpSocket::bind(addr).map(HeldPort::Udp),
    };
    bound.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => PortError::InUse {
            port,
            proto: name,
            holder: holder(port, proto),
        },
        _ => PortError::Bind {
            port,
            proto: name,
            source: e,
        },
    })
}

/// A TCP socket bound to `addr` without listening and without `SO_REUSEADDR` (so no other
/// socket may bind the port), as a `TcpListener` that owns the descriptor.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{bind, socket_with, AddressFamily, SocketFlags, SocketType};
    let fd = socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    bind(&fd, &addr)?;
    Ok(TcpListener::from(fd))
}

/// Whether `port` is free for `proto` right now (a check, not a hold: for `host` tasks, whose
/// own process binds it).
pub fn check_free(port: u16, proto: Proto) -> Result<(), PortError> {
    hold(port, proto).map(drop)
}

/// The process holding `port` (`name (pid N)`), from `/proc/net` and `/proc/*/fd`.
pub fn holder(port: u16, proto: Proto) -> Option<String> {
    let tables: &[&str] = match proto {
        Proto::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
        Proto::Udp => &["/proc/net/udp", "/proc/net/udp6"],
    };
    let inodes: Vec<u64> = tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| socket_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| wanted.iter().any(|w| l.as_os_str() == w.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", comm.trim()));
        }
    }
    None
}

/// Inodes of the sockets bound to local `port` in a `/proc/net/{tcp,udp}[6]` table (TCP: only
/// listening or bound ones, not connections that happen to use the port).
fn socket_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let remote_port = f.get(2)?.rsplit(':').next()?;
            // Bound or listening sockets have no peer (port 0).
            (p == port && remote_port == "0000")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_is_reserved() {
        let e = hold(22, Proto::Tcp).expect_err("reserved");
        assert_eq!(
            e.to_string(),
            "host port 22/tcp is reserved for the node's own ssh and cannot be published"
        );
    }

    /// A listener on a free port below the kernel's ephemeral range, so that no socket bound
    /// to port 0 elsewhere (other tests, other processes) takes the port once it is let go.
    fn listener_outside_the_ephemeral_range() -> (TcpListener, u16) {
        let start = 20_000 + (std::process::id() % 8_000) as u16;
        (0..4_000)
            .map(|i| 20_000 + (start - 20_000 + i) % 8_000)
            .find_map(|port| TcpListener::bind(("0.0.0.0", port)).ok().map(|l| (l, port)))
            .expect("a free port in 20000-27999")
    }

    #[test]
    fn a_port_held_elsewhere_is_refused_with_its_holder() {
        let (other, port) = listener_outside_the_ephemeral_range();
        let e = hold(port, Proto::Tcp).expect_err("in use");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("host port {port}/tcp is in use on this node")),
            "{text}"
        );
        assert!(
            text.contains(&format!("(pid {})", std::process::id())),
            "{text}"
        );
        drop(other);
        let held = once_let_go(|| hold(port, Proto::Tcp)).expect("free again");
        // Held: nothing else binds it now.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        drop(held);
        once_let_go(|| TcpListener::bind(("127.0.0.1", port))).expect("free after the hold");
    }

    /// `bind` retried for a moment: a process another test thread forks just then holds a copy
    /// of a dropped socket's descriptor until it execs (close-on-exec), so a port that was let
    /// go comes free within moments, not always at once.
    fn once_let_go<T, E>(mut bind: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match bind() {
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                done => return done,
            }
        }
    }

    #[test]
    fn udp_ports_are_held_too() {
        let other = UdpSocket::bind("0.0.0.0:0").expect("socket");
        let port = other.local_addr().expect("addr").port();
        assert!(matches!(
            hold(port, Proto::Udp),
            Err(PortError::InUse { .. })
        ));
    }

    #[test]
    fn only_bound_sockets_of_the_port_are_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2222 1\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1\n";
        assert_eq!(socket_inodes(table, 8080), [1111]);
        assert_eq!(socket_inodes(table, 22), [3333]);
    }
}
