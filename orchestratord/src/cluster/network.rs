//! Cluster-wide network assignments: each node's bridge subnet (carved from one pool, so no
//! two nodes' task addresses overlap) and `awsvpc` task addresses on the LAN (from a pool;
//! an address is held from the task's creation until it is reported `STOPPED` — its node
//! removes the interface before it reports that — so it is never handed out twice). Both are
//! chosen and stored in the same transaction, by the one writer.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use flotilla_api::tasks::TaskAddress;
use ipnet::Ipv4Net;

use super::state::Txn;

/// Where the pools come from (control plane settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Pool of node bridge subnets.
    pub bridge_pool: Ipv4Net,
    /// Prefix length of each node's bridge subnet.
    pub bridge_prefix: u8,
    /// The LAN awsvpc tasks get addresses on, if configured.
    pub awsvpc: Option<AwsvpcPool>,
    /// Pool of service virtual addresses.
    pub vip_pool: Ipv4Net,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bridge_pool: Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 16).unwrap_or_default(),
            bridge_prefix: 24,
            awsvpc: None,
            vip_pool: Ipv4Net::new(Ipv4Addr::new(10, 43, 0, 0), 16).unwrap_or_default(),
        }
    }
}

/// The awsvpc address pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsvpcPool {
    /// The LAN (gives the prefix length).
    pub subnet: Ipv4Net,
    /// First address handed out.
    pub first: Ipv4Addr,
    /// Last address handed out.
    pub last: Ipv4Addr,
    /// The LAN's default gateway.
    pub gateway: Option<Ipv4Addr>,
}

impl Settings {
    /// Checks the settings hang together; the message names the setting at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.bridge_prefix < self.bridge_pool.prefix_len() || self.bridge_prefix > 30 {
            return Err(format!(
                "bridge_prefix: {} must be from {} (the pool's) to 30",
                self.bridge_prefix,
                self.bridge_pool.prefix_len()
            ));
        }
        if overlap(self.vip_pool, self.bridge_pool) {
            return Err(format!(
                "vip_pool {} overlaps bridge_pool {}",
                self.vip_pool, self.bridge_pool
            ));
        }
        if let Some(p) = &self.awsvpc {
            if overlap(p.subnet, self.vip_pool) {
                return Err(format!(
                    "awsvpc_subnet {} overlaps vip_pool {}",
                    p.subnet, self.vip_pool
                ));
            }
            for (name, a) in [("first", p.first), ("last", p.last)] {
                if !p.subnet.contains(&a) {
                    return Err(format!(
                        "awsvpc_range: {name} address {a} is outside awsvpc_subnet {}",
                        p.subnet
                    ));
                }
            }
            if p.first > p.last {
                return Err(format!("awsvpc_range: {} comes after {}", p.first, p.last));
            }
            if overlap(p.subnet, self.bridge_pool) {
                return Err(format!(
                    "awsvpc_subnet {} overlaps bridge_pool {}",
                    p.subnet, self.bridge_pool
                ));
            }
        }
        Ok(())
    }
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Gives node `id` a bridge subnet of the pool if it has none (in `txn`); its subnet, or
/// `None` when the pool is exhausted.
pub fn ensure_bridge_subnet(txn: &mut Txn<'_>, settings: &Settings, id: &str) -> Option<Ipv4Net> {
    let node = txn.node(id)?;
    if let Some(s) = node.bridge_subnet {
        return Some(s);
    }
    let mut node = node.clone();
    match txn.lowest_free_bridge_subnet(settings.bridge_pool, settings.bridge_prefix) {
        Some(s) => {
            node.bridge_subnet = Some(s);
            txn.put_node(node);
            tracing::info!(node = %id, subnet = %s, "bridge subnet assigned");
            Some(s)
        }
        None => {
            tracing::warn!(node = %id, pool = %settings.bridge_pool, "bridge pool exhausted: the node's bridge tasks cannot start");
            None
        }
    }
}

/// An awsvpc address for a new task: the first free one after `cursor` (so an address just
/// given back is not reused at once), or why there is none. Addresses of tasks that are not
/// `STOPPED` (in `txn`, so also those placed earlier in the same command) are held.
pub fn awsvpc_address(
    txn: &Txn<'_>,
    settings: &Settings,
    cursor: &mut Option<Ipv4Addr>,
) -> Result<TaskAddress, String> {
    let Some(pool) = settings.awsvpc else {
        return Err(
            "the control plane has no awsvpc address pool (orchestratord --awsvpc-subnet)".into(),
        );
    };
    let held: BTreeSet<Ipv4Addr> = txn
        .tasks()
        .iter()
        .filter(|t| t.is_live())
        .filter_map(|t| t.address.map(|a| a.address.addr()))
        .collect();
    let (first, end) = (u32::from(pool.first), u32::from(pool.last));
    let start = cursor
        .map(u32::from)
        .filter(|a| (first..end).contains(a))
        .map_or(first, |a| a + 1);
    let free = (start..=end)
        .chain(first..start)
        .map(Ipv4Addr::from)
        .find(|a| !held.contains(a) && Some(*a) != pool.gateway);
    let Some(addr) = free else {
        return Err(format!(
            "the awsvpc pool {}-{} has no free address",
            pool.first, pool.last
        ));
    };
    *cursor = Some(addr);
    Ok(TaskAddress {
        address: Ipv4Net::new(addr, pool.subnet.prefix_len()).unwrap_or_default(),
        gateway: pool.gateway,
    })
}
