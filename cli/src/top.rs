//! `flotilla top nodes|tasks`: CPU and memory in use now, as `kubectl top` shows them, from
//! what the nodes' last heartbeats said (the control plane keeps it in memory; nothing is
//! measured on request). CPU is a rate between a node's last two heartbeats, so a task or node
//! shows `<unknown>` until it has sent two.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use flotilla_api::ops::{NodeInfo, TaskInfo};
use flotilla_api::tasks::TaskState;
use flotilla_client::Client;

use crate::{list, Listing, Output, WatchArgs};

/// What a cell says when the nodes have not measured it (yet).
const UNKNOWN: &str = "<unknown>";

/// `flotilla top`.
#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Each node: CPU in use by all its processes (thousandths of a core, `m`) and its share of
    /// the node's CPUs, memory in use (MemTotal less MemAvailable) and its share.
    Nodes {
        /// Order by this use, most first [default: by node id].
        #[arg(long, value_name = "WHAT")]
        sort_by: Option<SortBy>,
        #[command(flatten)]
        w: WatchArgs,
    },
    /// Each running task: CPU in use by its containers together, their working set (memory
    /// in use less the inactive file cache) and the task's memory limit.
    Tasks {
        /// Only the tasks of this service.
        #[arg(long)]
        service: Option<String>,
        /// Only the tasks on this node.
        #[arg(long)]
        node: Option<String>,
        /// Order by this use, most first [default: by task id].
        #[arg(long, value_name = "WHAT")]
        sort_by: Option<SortBy>,
        #[command(flatten)]
        w: WatchArgs,
    },
}

/// What `--sort-by` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    /// CPU in use.
    Cpu,
    /// Memory in use.
    Memory,
}

/// Runs `flotilla top …`.
pub async fn run(api: &Client, cmd: TopCommand, output: Output) -> Result<()> {
    match cmd {
        TopCommand::Nodes { sort_by, w } => list(output, w, || nodes(api, sort_by)).await,
        TopCommand::Tasks {
            service,
            node,
            sort_by,
            w,
        } => {
            // A name that does not exist is an error, not an empty table.
            if let Some(s) = &service {
                api.service(s).await?;
            }
            if let Some(n) = &node {
                api.node(n).await?;
            }
            let filter = TaskFilter { service, node };
            list(output, w, || tasks(api, &filter, sort_by)).await
        }
    }
}

/// `1250m`, as kubectl prints CPU.
fn millicores(m: Option<u64>) -> String {
    m.map_or_else(|| UNKNOWN.to_string(), |m| format!("{m}m"))
}

/// `24Mi`, as kubectl prints memory (binary mebibytes, rounded).
fn mebibytes(bytes: u64) -> String {
    format!("{}Mi", bytes.saturating_add(1 << 19) >> 20)
}

/// `42%` of `whole`.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return UNKNOWN.to_string();
    }
    format!("{}%", (part as f64 * 100.0 / whole as f64).round() as u64)
}

/// A node's memory in use, bytes, when it reported its resources.
fn node_memory(n: &NodeInfo) -> Option<u64> {
    let r = n.resources.as_ref()?;
    Some(r.memory_bytes.saturating_sub(r.memory_available_bytes))
}

/// A task's memory in use, bytes: its working set when its node measures one.
fn task_memory(t: &TaskInfo) -> Option<u64> {
    let u = t.usage.as_ref()?;
    Some(u.memory_working_set_bytes.unwrap_or(u.memory_bytes))
}

/// Orders `items` by `sort_by`, most first (unknowns last), else leaves them as listed.
fn sort<T>(
    items: &mut [T],
    sort_by: Option<SortBy>,
    cpu: fn(&T) -> Option<u64>,
    mem: fn(&T) -> Option<u64>,
) {
    let key = match sort_by {
        None => return,
        Some(SortBy::Cpu) => cpu,
        Some(SortBy::Memory) => mem,
    };
    items.sort_by_key(|t| std::cmp::Reverse(key(t)));
}

async fn nodes(api: &Client, sort_by: Option<SortBy>) -> Result<Listing<NodeInfo>> {
    let mut all = api.nodes().await?;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    sort(&mut all, sort_by, |n| n.cpu_millicores, node_memory);
    let items = all
        .into_iter()
        .map(|n| {
            let cpus = n.resources.as_ref().map_or(0, |r| u64::from(r.cpus));
            let total = n.resources.as_ref().map_or(0, |r| r.memory_bytes);
            let row = vec![
                n.id.clone(),
                millicores(n.cpu_millicores),
                n.cpu_millicores
                    .map_or_else(|| UNKNOWN.to_string(), |m| percent(m, cpus * 1000)),
                node_memory(&n).map_or_else(|| UNKNOWN.to_string(), mebibytes),
                node_memory(&n).map_or_else(|| UNKNOWN.to_string(), |m| percent(m, total)),
            ];
            (n.id.clone(), row, n)
        })
        .collect();
    Ok(Listing {
        header: &["NODE", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"],
        items,
    })
}

/// Which tasks `top tasks` shows.
#[derive(Debug)]
struct TaskFilter {
    service: Option<String>,
    node: Option<String>,
}

impl TaskFilter {
    fn keeps(&self, t: &TaskInfo) -> bool {
        t.state == TaskState::Running
            && self
                .service
                .as_deref()
                .is_none_or(|s| t.service() == Some(s))
            && self
                .node
                .as_deref()
                .is_none_or(|n| t.node.as_deref() == Some(n))
    }
}

async fn tasks(
    api: &Client,
    filter: &TaskFilter,
    sort_by: Option<SortBy>,
) -> Result<Listing<TaskInfo>> {
    let mut all: Vec<TaskInfo> = api
        .tasks()
        .await?
        .into_iter()
        .filter(|t| filter.keeps(t))
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    sort(&mut all, sort_by, |t| t.cpu_millicores, task_memory);
    let items = all
        .into_iter()
        .map(|t| {
            let service = t.service().unwrap_or_default().to_string();
            let limit = t.usage.as_ref().and_then(|u| u.memory_limit_bytes);
            let row = vec![
                t.id.clone(),
                service,
                t.node.clone().unwrap_or_default(),
                millicores(t.cpu_millicores),
                task_memory(&t).map_or_else(|| UNKNOWN.to_string(), mebibytes),
                // A task without a memory limit of its own: its containers' limits bound it.
                limit.map_or_else(|| "-".to_string(), mebibytes),
            ];
            (t.id.clone(), row, t)
        })
        .collect();
    Ok(Listing {
        header: &[
            "TASK",
            "SERVICE",
            "NODE",
            "CPU(cores)",
            "MEMORY(bytes)",
            "MEMORY LIMIT",
        ],
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_as_kubectl_prints_them() {
        assert_eq!(millicores(Some(512)), "512m");
        assert_eq!(millicores(None), "<unknown>");
        assert_eq!(mebibytes(24 << 20), "24Mi");
        assert_eq!(mebibytes((24 << 20) + (600 << 10)), "25Mi");
        assert_eq!(mebibytes(0), "0Mi");
        assert_eq!(percent(512, 2000), "26%");
        assert_eq!(percent(1, 0), "<unknown>");
    }

    #[test]
    fn most_first_and_the_unmeasured_last() {
        let mut v = [Some(5), None, Some(9), Some(1)];
        sort(&mut v, Some(SortBy::Cpu), |x| *x, |_| None);
        assert_eq!(v, [Some(9), Some(5), Some(1), None]);
        let mut same = [Some(5), None, Some(9)];
        sort(&mut same, None, |x| *x, |_| None);
        assert_eq!(same, [Some(5), None, Some(9)]);
    }
}
