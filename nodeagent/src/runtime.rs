//! The node's containers as the runner sees them: the runtime name of a task's container.

use std::fmt;
use std::str::FromStr;

/// A task's container as the container runtime names it: `<task id>-<index in the task's
/// definition>` (task ids start with `t-`). The one place that name is built or read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerName {
    /// The task's id.
    pub task: String,
    /// The container's index in the task's `containerDefinitions`.
    pub index: usize,
}

impl ContainerName {
    /// Container `index` of task `task`.
    pub fn new(task: &str, index: usize) -> Self {
        Self {
            task: task.to_string(),
            index,
        }
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.task, self.index)
    }
}

/// A runtime name that is not one of a task's containers (an operator's `ctr run`, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not the name of a task's container (<task id>-<index>)")]
pub struct NotTaskContainer(pub String);

impl FromStr for ContainerName {
    type Err = NotTaskContainer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NotTaskContainer(s.to_string());
        let (task, index) = s.rsplit_once('-').ok_or_else(bad)?;
        if !task.starts_with("t-") || task.len() == 2 || task.ends_with('-') {
            return Err(bad());
        }
        // Only the canonical spelling: the name read back must be the name the runtime holds.
        let canonical = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'));
        if !canonical {
            return Err(bad());
        }
        let index = index.parse().map_err(|_| bad())?;
        Ok(Self {
            task: task.to_string(),
            index,
        })
    }
}

/// The name of task `task`'s own volume `volume` (one not shared across tasks): it lives as
/// long as the task and is removed with it.
pub fn task_volume(task: &str, volume: &str) -> String {
    format!("{task}-{volume}")
}

/// Whether `name` is one of task `task`'s own volumes (see [`task_volume`]).
pub fn is_task_volume(task: &str, name: &str) -> bool {
    name.strip_prefix(task)
        .is_some_and(|rest| rest.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_name_reads_back_as_written_and_nothing_else_is_one() {
        let name = ContainerName::new("t-0a1b2c", 12);
        assert_eq!(name.to_string(), "t-0a1b2c-12");
        assert_eq!("t-0a1b2c-12".parse::<ContainerName>(), Ok(name));
        assert_eq!(
            "t-0a1b2c-0".parse::<ContainerName>(),
            Ok(ContainerName::new("t-0a1b2c", 0))
        );
        for bad in [
            "web-1",
            "t-0a1b2c",
            "t--1",
            "t-0a1b2c-",
            "t-0a1b2c-x",
            "t-0a1b2c-01",
            "t-0a1b2c-+1",
            "t-0a1b2c--1",
            "0a1b2c-1",
        ] {
            assert!(bad.parse::<ContainerName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_task_owns_only_its_own_volumes() {
        assert_eq!(task_volume("t-1", "data"), "t-1-data");
        assert!(is_task_volume("t-1", "t-1-data"));
        assert!(!is_task_volume("t-1", "t-10-data"));
        assert!(!is_task_volume("t-1", "data"));
    }
}
