//! Links, addresses and routes through rtnetlink. Every call runs on a thread of its own with a
//! small single-threaded runtime, inside the network namespace it concerns (see
//! [`netns::run_in`]), so callers stay synchronous and never move a thread of theirs.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage, MacVlanMode};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth,
};

use super::netns;

/// Name of a task's interface inside its namespace.
pub const TASK_IFNAME: &str = "eth0";

/// Runs `f` with a netlink handle bound to the namespace at `ns` (this one when `None`).
fn with_handle<T, F, Fut>(ns: Option<&Path>, f: F) -> io::Result<T>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, rtnetlink::Error>>,
    T: Send + 'static,
{
    netns::run_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            f(handle).await.map_err(to_io)
        })
    })
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        // Raised by `index_of` only: its message names the missing link.
        rtnetlink::Error::NamespaceError(m) => io::Error::new(io::ErrorKind::NotFound, m),
        other => io::Error::other(other.to_string()),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The index of link `name`; a missing link is an error that names it (carried as a
/// `NamespaceError`, which nothing else here raises).
async fn index_of(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    match find(handle, name).await? {
        Some(l) => Ok(l.header.index),
        None => Err(rtnetlink::Error::NamespaceError(format!(
            "no link named {name}"
        ))),
    }
}

async fn add_address(
    handle: &Handle,
    index: u32,
    address: Ipv4Net,
) -> Result<(), rtnetlink::Error> {
    match handle
        .address()
        .add(index, IpAddr::V4(address.addr()), address.prefix_len())
        .execute()
        .await
    {
        Err(e) if is_errno(&e, EEXIST) => Ok(()),
        other => other,
    }
}

/// True when link `name` exists in this namespace.
pub fn exists(name: &str) -> io::Result<bool> {
    let name = name.to_string();
    with_handle(None, move |h| async move {
        Ok(find(&h, &name).await?.is_some())
    })
}

/// Makes sure bridge `name` exists, is up and has `gateway` (e.g. `10.42.3.1/24`).
pub fn ensure_bridge(name: &str, gateway: Ipv4Net) -> io::Result<()> {
    let name = name.to_string();
    with_handle(None, move |h| async move {
        if find(&h, &name).await?.is_none() {
            match h
                .link()
                .add(LinkBridge::new(&name).up().build())
                .execute()
                .await
            {
                Err(e) if is_errno(&e, EEXIST) => {}
                other => other?,
            }
        }
        let index = index_of(&h, &name).await?;
        add_address(&h, index, gateway).await?;
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
    })
}

/// What a task's interface inside its namespace gets.
#[derive(Debug, Clone, Copy)]
pub struct Inside {
    /// Its address and prefix.
    pub address: Ipv4Net,
    /// Its default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// Connects the namespace at `ns` to `bridge` with a veth pair: `host_if` on the bridge here,
/// [`TASK_IFNAME`] inside with `inside`'s address and default route, `host_if` in hairpin
/// mode. A leftover `host_if` from an earlier attempt is replaced.
pub fn attach_veth(bridge: &str, host_if: &str, ns: &Path, inside: Inside) -> io::Result<()> {
    let fd = netns::open(ns)?;
    let (bridge, host_if) = (bridge.to_string(), host_if.to_string());
    with_handle(None, move |h| async move {
        let br = index_of(&h, &bridge).await?;
        if let Some(old) = find(&h, &host_if).await? {
            h.link().del(old.header.index).execute().await?;
        }
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(TASK_IFNAME.to_string())
            .setns_by_fd(fd.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_if.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(br)
            .up()
            .build();
        h.link().add(veth).execute().await?;
        drop(fd);
        // Hairpin mode, so that a frame may leave by the port it came in on: a task reaching
        // itself through a VIP or a host port, when the node translates bridged frames
        // (`br_netfilter`), is sent back to its own port.
        let port = index_of(&h, &host_if).await?;
        h.link()
            .set_port(LinkBridgePort::new(port).hairpin(true).build())
            .execute()
            .await
    })?;
    configure_inside(ns, inside)
}

/// Gives the namespace at `ns` an interface of its own on the node's LAN: a macvlan (bridge
/// mode) of `uplink`, made directly inside the namespace as [`TASK_IFNAME`].
pub fn attach_macvlan(uplink: &str, ns: &Path, inside: Inside) -> io::Result<()> {
    let fd = netns::open(ns)?;
    let name = uplink.to_string();
    with_handle(None, move |h| async move {
        let parent = index_of(&h, &name).await?;
        let link = LinkMacVlan::new(TASK_IFNAME, parent, MacVlanMode::Bridge)
            .setns_by_fd(fd.as_raw_fd())
            .build();
        h.link().add(link).execute().await?;
        drop(fd);
        Ok(())
    })
    .map_err(|e| io::Error::new(e.kind(), format!("macvlan on {uplink}: {e}")))?;
    configure_inside(ns, inside)
}

fn configure_inside(ns: &Path, inside: Inside) -> io::Result<()> {
    with_handle(Some(ns), move |h| async move {
        if let Some(lo) = find(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await?;
        }
        let eth = index_of(&h, TASK_IFNAME).await?;
        add_address(&h, eth, inside.address).await?;
        h.link()
            .set(LinkUnspec::new_with_index(eth).up().build())
            .execute()
            .await?;
        if let Some(gw) = inside.gateway {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .build();
            match h.route().add(route).execute().await {
                Err(e) if is_errno(&e, EEXIST) => {}
                other => other?,
            }
        }
        Ok(())
    })
}

/// Brings up `lo` in the namespace at `ns` (a fresh namespace has it down).
pub fn loopback_up(ns: &Path) -> io::Result<()> {
    with_handle(Some(ns), move |h| async move {
        if let Some(lo) = find(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await?;
        }
        Ok(())
    })
}

/// Deletes link `name` in the namespace at `ns` (this one when `None`); a missing link is no
/// error. Deleting either end of a veth pair deletes both.
pub fn delete(ns: Option<&Path>, name: &str) -> io::Result<()> {
    let name = name.to_string();
    with_handle(ns, move |h| async move {
        if let Some(link) = find(&h, &name).await? {
            match h.link().del(link.header.index).execute().await {
                Err(e) if is_errno(&e, ENODEV) => {}
                other => other?,
            }
        }
        Ok(())
    })
}
