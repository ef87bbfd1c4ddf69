//! Cluster-wide network assignments: each node's bridge subnet (carved from one pool, so no
//! two nodes' task addresses overlap) and `awsvpc` task addresses on the LAN (from a pool;
//! an address is held from the task's creation until it is reported `STOPPED` — its node
//! removes the interface before it reports that — so it is never handed out twice).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use flotilla_api::ipam;
use flotilla_api::tasks::{NodeNetwork, TaskAddress, TaskState};
use ipnet::Ipv4Net;

use crate::store::{Store, StoreError};

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

/// Hands out subnets and addresses; one at a time.
#[derive(Debug, Default)]
pub struct Assigner {
    /// The settings.
    pub settings: Settings,
    /// The last awsvpc address handed out (the next search starts after it); held from
    /// choosing an address until the task holding it is stored.
    last: Mutex<Option<Ipv4Addr>>,
    /// Held while a bridge subnet is chosen and stored.
    subnets: Mutex<()>,
}

impl Assigner {
    /// An assigner over `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            last: Mutex::new(None),
            subnets: Mutex::new(()),
        }
    }

    /// Node `id`'s network settings, assigning its bridge subnet the first time.
    pub fn node(&self, store: &Store, id: &str) -> Result<NodeNetwork, StoreError> {
        let _one = self.subnets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut node) = store.node(id)? else {
            return Ok(NodeNetwork::default());
        };
        if let Some(s) = node.bridge_subnet {
            return Ok(NodeNetwork {
                bridge_subnet: Some(s),
            });
        }
        let used: BTreeSet<Ipv4Net> = store
            .nodes()?
            .iter()
            .filter_map(|n| n.bridge_subnet)
            .collect();
        let subnet = (0u32..)
            .map_while(|i| {
                ipam::nth_subnet(self.settings.bridge_pool, self.settings.bridge_prefix, i)
            })
            .find(|s| !used.contains(s));
        match subnet {
            Some(s) => {
                node.bridge_subnet = Some(s);
                store.put_node(&node)?;
                tracing::info!(node = %id, subnet = %s, "bridge subnet assigned");
                Ok(NodeNetwork {
                    bridge_subnet: Some(s),
                })
            }
            None => {
                tracing::warn!(node = %id, pool = %self.settings.bridge_pool, "bridge pool exhausted: the node's bridge tasks cannot start");
                Ok(NodeNetwork::default())
            }
        }
    }

    /// Held while tasks with awsvpc addresses are created (pass it to
    /// [`Assigner::awsvpc_address`], store the task, then drop it).
    pub fn begin(&self) -> std::sync::MutexGuard<'_, Option<Ipv4Addr>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An awsvpc address for a new task; `Err` says why there is none.
    pub fn awsvpc_address(
        &self,
        store: &Store,
        last: &mut Option<Ipv4Addr>,
    ) -> Result<Result<TaskAddress, String>, StoreError> {
        let Some(pool) = self.settings.awsvpc else {
            return Ok(Err(
                "the control plane has no awsvpc address pool (orchestratord --awsvpc-subnet)"
                    .into(),
            ));
        };
        let held: BTreeSet<Ipv4Addr> = store
            .tasks()?
            .iter()
            .filter(|t| t.info.state != TaskState::Stopped)
            .filter_map(|t| t.address.map(|a| a.address.addr()))
            .collect();
        let (first, end) = (u32::from(pool.first), u32::from(pool.last));
        let start = last
            .map(u32::from)
            .filter(|a| (first..end).contains(a))
            .map_or(first, |a| a + 1);
        let free = (start..=end)
            .chain(first..start)
            .map(Ipv4Addr::from)
            .find(|a| !held.contains(a) && Some(*a) != pool.gateway);
        let Some(addr) = free else {
            return Ok(Err(format!(
                "the awsvpc pool {}-{} has no free address",
                pool.first, pool.last
            )));
        };
        *last = Some(addr);
        Ok(Ok(TaskAddress {
            address: Ipv4Net::new(addr, pool.subnet.prefix_len()).unwrap_or_default(),
            gateway: pool.gateway,
        }))
    }
}
