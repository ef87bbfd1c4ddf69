//! Forgetting tracked connections whose translation no longer holds. A connection to a VIP or a
//! host port is translated once, when conntrack first sees it; an entry left behind (a closed
//! connection in TIME_WAIT, say) would send a new connection that reuses its ports to a task
//! that is gone. The entries whose answers come from a removed backend are deleted with
//! conntrack-tools (`conntrack -D`); there is no maintained Rust library for conntrack's
//! netlink interface.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::nft::Proto;

/// Deletes the tracked connections of this network namespace answered from `address` (and,
/// when given, from that protocol and port). Finding none is no error.
pub fn forget(address: Ipv4Addr, port: Option<(Proto, u16)>) -> io::Result<()> {
    let mut cmd = Command::new("conntrack");
    cmd.args([
        "-D",
        "--family",
        "ipv4",
        "--reply-src",
        &address.to_string(),
    ]);
    if let Some((proto, p)) = port {
        let proto = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        cmd.args(["-p", proto, "--reply-port-src", &p.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("conntrack (conntrack-tools): {e}")))?;
    // 1 with "0 flow entries have been deleted" is the nothing-found case.
    let none = String::from_utf8_lossy(&out.stderr).contains("0 flow entries");
    if out.status.success() || none {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "conntrack -D --reply-src {address}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
