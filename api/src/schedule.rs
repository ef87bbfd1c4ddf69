//! Scheduled tasks: a task definition started by a cron expression in a time zone. A schedule
//! pinned to a node is fired by that node itself, so it runs at its minute even while the node
//! is cut off from the control plane; the node reports the run when it can.

use serde::{Deserialize, Serialize};

use crate::taskdef::KeyValue;

/// What an operator creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name.
    pub name: String,
    /// `FAMILY` or `FAMILY:REVISION` (resolved when the schedule is created).
    pub task_definition: String,
    /// Five-field cron expression or `@daily`-style macro.
    pub cron: String,
    /// Time zone of the expression (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Pin to this node: the node fires it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the previous run still runs: `forbid` (skip, the default), `allow`, or `replace`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Environment added to every container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<KeyValue>,
}

fn utc() -> String {
    "UTC".into()
}

/// What a schedule does when it fires while its previous run still runs (Kubernetes CronJob's
/// `concurrencyPolicy`: Forbid, Allow, Replace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip this firing.
    #[default]
    Forbid,
    /// Start another run anyway.
    Allow,
    /// Stop the previous run and start this one.
    Replace,
}

impl Overlap {
    /// As written: `forbid`, `allow`, `replace`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbid => "forbid",
            Self::Allow => "allow",
            Self::Replace => "replace",
        }
    }
}

impl std::str::FromStr for Overlap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "forbid" => Ok(Self::Forbid),
            "allow" => Ok(Self::Allow),
            "replace" => Ok(Self::Replace),
            o => Err(format!("overlap: '{o}': allow, forbid or replace")),
        }
    }
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One run of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRun {
    /// The task it started.
    pub task: String,
    /// When it fired (seconds since the epoch).
    pub fired_at: u64,
    /// Where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    /// The spec (its task definition resolved to `family:revision`).
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// Next firing (seconds since the epoch): by the control plane, or for a pinned schedule
    /// the next minute its cron names, at which its node fires it by its own clock. Absent when
    /// the schedule never fires again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<u64>,
    /// The latest runs, newest first (at most 20).
    pub runs: Vec<ScheduleRun>,
    /// Creation time.
    pub created_at: u64,
}

/// Checks a spec; every problem named by its field.
pub fn check(s: &ScheduleSpec) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let ok = !s.name.is_empty()
        && s.name.len() <= 255
        && s.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        problems.push("name: use 1-255 letters, digits, '_' or '-'".into());
    }
    if let Err(e) = flotilla_scheduler::cron::parse(&s.cron, &s.timezone) {
        problems.push(format!("cron: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
