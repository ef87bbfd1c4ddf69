//! Service auto scaling: `flotilla service autoscale` for the common case (bounds and target
//! tracking of CPU or memory utilization), `flotilla scaling policy|schedule put|ls|rm` for
//! documents in Application Auto Scaling's shapes, and `flotilla scaling activity` for what the
//! control plane decided.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use flotilla_api::scaling::{
    target_tracking_policy, Autoscale, PolicyType, ScalableTarget, ScalingActivity, ScalingPolicy,
    ScheduledAction, ServiceScaling, MAX_CAPACITY, PREDEFINED_CPU, PREDEFINED_MEMORY,
};
use flotilla_api::{errln, outln};
use flotilla_client::Client;
use flotilla_scheduler::scaling::DEFAULT_COOLDOWN;

use crate::{cell, print, read_input, table, when, Output};

/// Longest cooldown, seconds (Application Auto Scaling's: a day).
const MAX_COOLDOWN: u64 = 86_400;

/// `flotilla service autoscale`.
#[derive(Debug, Clone, clap::Args)]
pub struct AutoscaleArgs {
    /// Service name.
    name: String,
    /// Fewest tasks (MinCapacity).
    #[arg(long, value_name = "N", required_unless_present = "off")]
    min: Option<u32>,
    /// Most tasks (MaxCapacity).
    #[arg(long, value_name = "N", required_unless_present = "off")]
    max: Option<u32>,
    /// Keep the tasks' average CPU utilization near PCT percent of what they reserve (the
    /// task definition's `cpu`): the target-tracking policy cpu-target-tracking.
    #[arg(long, value_name = "PCT")]
    target_cpu: Option<f64>,
    /// Keep the tasks' average memory utilization near PCT percent of what they reserve (the
    /// task definition's `memory`): the target-tracking policy memory-target-tracking.
    #[arg(long, value_name = "PCT")]
    target_memory: Option<f64>,
    /// Seconds after scaling out before the next scale-out (ScaleOutCooldown of the policies
    /// made here; default 300).
    #[arg(long, value_name = "SECS")]
    scale_out_cooldown: Option<u64>,
    /// Seconds after scaling in before the next scale-in (ScaleInCooldown of the policies made
    /// here; default 300).
    #[arg(long, value_name = "SECS")]
    scale_in_cooldown: Option<u64>,
    /// Turn auto scaling off: the bounds, policies and scheduled actions are removed; the
    /// desired count stays as it is.
    #[arg(
        long,
        conflicts_with_all = [
            "min",
            "max",
            "target_cpu",
            "target_memory",
            "scale_out_cooldown",
            "scale_in_cooldown",
        ]
    )]
    off: bool,
}

/// `flotilla scaling`.
#[derive(Debug, Subcommand)]
pub enum ScalingCommand {
    /// A service's scaling policies (Application Auto Scaling's PutScalingPolicy shape, JSON
    /// or YAML: TargetTrackingScaling, or StepScaling with its Alarm).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A service's scheduled actions: new MinCapacity and MaxCapacity at a cron minute
    /// (Application Auto Scaling's PutScheduledAction shape, JSON or YAML).
    #[command(subcommand)]
    Schedule(ScheduledActionCommand),
    /// What the control plane decided for a service, newest first: the desired count before
    /// and after, why, the policy that decided and the metrics it decided on.
    Activity {
        /// Service name.
        service: String,
    },
}

/// `flotilla scaling policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Put a policy, replacing the service's policy of the same PolicyName.
    Put {
        /// Service name.
        service: String,
        /// File (JSON or YAML), or - for standard input: the input of `aws
        /// application-autoscaling put-scaling-policy --cli-input-json`, with Flotilla's Alarm
        /// for a StepScaling policy.
        file: PathBuf,
    },
    /// List a service's policies.
    #[command(alias = "list")]
    Ls {
        /// Service name.
        service: String,
    },
    /// Delete policies of a service.
    #[command(alias = "remove")]
    Rm {
        /// Service name.
        service: String,
        /// Policy names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `flotilla scaling schedule`.
#[derive(Debug, Subcommand)]
pub enum ScheduledActionCommand {
    /// Put a scheduled action, replacing the service's action of the same
    /// ScheduledActionName.
    Put {
        /// Service name.
        service: String,
        /// File (JSON or YAML), or - for standard input: the input of `aws
        /// application-autoscaling put-scheduled-action --cli-input-json`.
        file: PathBuf,
    },
    /// List a service's scheduled actions.
    #[command(alias = "list")]
    Ls {
        /// Service name.
        service: String,
    },
    /// Delete scheduled actions of a service.
    #[command(alias = "remove")]
    Rm {
        /// Service name.
        service: String,
        /// Scheduled action names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What `flotilla service autoscale` (without `--off`) asks for, its flags checked here so
/// that a wrong one is named as the flag it is.
pub fn autoscale_request(a: &AutoscaleArgs) -> Result<Autoscale> {
    let (Some(min), Some(max)) = (a.min, a.max) else {
        bail!("give --min and --max (or --off)");
    };
    if max > MAX_CAPACITY {
        bail!("--max {max}: at most {MAX_CAPACITY}");
    }
    if min > max {
        bail!("--min {min} is above --max {max}");
    }
    for (flag, pct) in [
        ("--target-cpu", a.target_cpu),
        ("--target-memory", a.target_memory),
    ] {
        if let Some(p) = pct {
            if !(p > 0.0 && p <= 100.0) {
                bail!("{flag} {p}: not a percentage above 0 and at most 100");
            }
        }
    }
    for (flag, secs) in [
        ("--scale-out-cooldown", a.scale_out_cooldown),
        ("--scale-in-cooldown", a.scale_in_cooldown),
    ] {
        if let Some(s) = secs {
            if s > MAX_COOLDOWN {
                bail!("{flag} {s}: at most {MAX_COOLDOWN} (a day)");
            }
            if a.target_cpu.is_none() && a.target_memory.is_none() {
                bail!(
                    "{flag}: only with --target-cpu or --target-memory (it is a cooldown of the \
                     policies they make)"
                );
            }
        }
    }
    let policies = [
        (PREDEFINED_CPU, a.target_cpu),
        (PREDEFINED_MEMORY, a.target_memory),
    ]
    .into_iter()
    .filter_map(|(metric, pct)| {
        pct.map(|p| target_tracking_policy(metric, p, a.scale_out_cooldown, a.scale_in_cooldown))
    })
    .collect();
    Ok(Autoscale {
        target: ScalableTarget {
            min_capacity: min,
            max_capacity: max,
        },
        policies,
    })
}

/// Checks what can be checked before the control plane is reached.
pub fn check(a: &AutoscaleArgs) -> Result<()> {
    if !a.off {
        autoscale_request(a)?;
    }
    Ok(())
}

/// `flotilla service autoscale`.
pub async fn autoscale(api: &Client, a: AutoscaleArgs, output: Output) -> Result<()> {
    if a.off {
        api.remove_service_scaling(&a.name).await?;
        return print(output, &[&a.name], || {
            outln!(
                "{}: auto scaling off (its desired count stays as it is)",
                a.name
            )
        });
    }
    let req = autoscale_request(&a)?;
    let r = api.autoscale_service(&a.name, &req).await?;
    for w in &r.warnings {
        errln!("warning: {w}");
    }
    print(output, &r.scaling, || print_scaling(&r.scaling))
}

/// The bounds, then the policies.
fn print_scaling(s: &ServiceScaling) {
    outln!(
        "{}: from {} to {} tasks",
        s.service,
        s.target.min_capacity,
        s.target.max_capacity
    );
    if s.policies.is_empty() {
        outln!("no policies: `flotilla scaling policy put` adds one");
    } else {
        policy_table(&s.policies);
    }
}

/// Every name of an `rm` must be there before anything is removed: a typo in the second name
/// must not leave the first one removed behind an error.
fn all_known(service: &str, what: &str, names: &[String], known: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let has = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    bail!(
        "service {service} has no {what} {}: nothing removed (it has: {has})",
        missing.join(", ")
    )
}

/// `flotilla scaling …`.
pub async fn run(api: &Client, cmd: ScalingCommand, output: Output) -> Result<()> {
    match cmd {
        ScalingCommand::Policy(PolicyCommand::Put { service, file }) => {
            let r = api
                .put_scaling_policy(&service, &read_input(&file)?)
                .await
                .with_context(|| format!("putting the scaling policy of {}", file.display()))?;
            for w in &r.warnings {
                errln!("warning: {w}");
            }
            print(output, &r, || policy_table(&r.scaling.policies))?;
        }
        ScalingCommand::Policy(PolicyCommand::Ls { service }) => {
            let s = api.service_scaling(&service).await?;
            print(output, &s.policies, || policy_table(&s.policies))?;
        }
        ScalingCommand::Policy(PolicyCommand::Rm { service, names }) => {
            let have = api.service_scaling(&service).await?;
            let known: Vec<&str> = have
                .policies
                .iter()
                .map(|p| p.policy_name.as_str())
                .collect();
            all_known(&service, "scaling policy", &names, &known)?;
            for n in &names {
                api.remove_scaling_policy(&service, n).await?;
                if output == Output::Table {
                    outln!("{n}");
                }
            }
            print(output, &names, || {})?;
        }
        ScalingCommand::Schedule(ScheduledActionCommand::Put { service, file }) => {
            let r = api
                .put_scheduled_action(&service, &read_input(&file)?)
                .await
                .with_context(|| format!("putting the scheduled action of {}", file.display()))?;
            for w in &r.warnings {
                errln!("warning: {w}");
            }
            print(output, &r, || {
                scheduled_action_table(&r.scaling.scheduled_actions)
            })?;
        }
        ScalingCommand::Schedule(ScheduledActionCommand::Ls { service }) => {
            let s = api.service_scaling(&service).await?;
            print(output, &s.scheduled_actions, || {
                scheduled_action_table(&s.scheduled_actions)
            })?;
        }
        ScalingCommand::Schedule(ScheduledActionCommand::Rm { service, names }) => {
            let have = api.service_scaling(&service).await?;
            let known: Vec<&str> = have
                .scheduled_actions
                .iter()
                .map(|a| a.scheduled_action_name.as_str())
                .collect();
            all_known(&service, "scheduled action", &names, &known)?;
            for n in &names {
                api.remove_scheduled_action(&service, n).await?;
                if output == Output::Table {
                    outln!("{n}");
                }
            }
            print(output, &names, || {})?;
        }
        ScalingCommand::Activity { service } => {
            let mut list = api.service_scaling(&service).await?.activities;
            // Newest first (a stable sort: decisions of the same second keep their order).
            list.sort_by_key(|a| std::cmp::Reverse(a.time));
            print(output, &list, || {
                let rows: Vec<Vec<String>> = list.iter().map(activity_row).collect();
                table(&["TIME", "FROM", "TO", "CAUSE", "POLICY", "METRICS"], &rows);
            })?;
        }
    }
    Ok(())
}

fn policy_table(policies: &[ScalingPolicy]) {
    let rows: Vec<Vec<String>> = policies.iter().map(policy_row).collect();
    table(
        &["NAME", "TYPE", "METRIC", "TARGET/THRESHOLD", "COOLDOWNS"],
        &rows,
    );
}

fn scheduled_action_table(actions: &[ScheduledAction]) {
    let rows: Vec<Vec<String>> = actions.iter().map(scheduled_action_row).collect();
    table(&["NAME", "SCHEDULE", "TIMEZONE", "MIN", "MAX"], &rows);
}

/// A percentage as written (`60%`, `62.5%`).
fn pct(v: f64) -> String {
    format!("{v}%")
}

/// `NAME TYPE METRIC TARGET/THRESHOLD COOLDOWNS`: a target-tracking policy's target and its
/// two cooldowns (the default 300 s where the policy gives none), a step policy's alarm
/// (`>= 70%`, with its evaluation periods when more than one) and its cooldown.
fn policy_row(p: &ScalingPolicy) -> Vec<String> {
    let secs = |c: Option<u64>| format!("{}s", c.unwrap_or(DEFAULT_COOLDOWN));
    let (goal, cooldowns) = match (
        p.policy_type,
        &p.target_tracking_scaling_policy_configuration,
        &p.step_scaling_policy_configuration,
        &p.alarm,
    ) {
        (PolicyType::TargetTrackingScaling, Some(c), _, _) => (
            pct(c.target_value),
            if c.disable_scale_in {
                format!("out {}, no scale-in", secs(c.scale_out_cooldown))
            } else {
                format!(
                    "out {}, in {}",
                    secs(c.scale_out_cooldown),
                    secs(c.scale_in_cooldown)
                )
            },
        ),
        (PolicyType::StepScaling, _, Some(c), Some(a)) => {
            let op = match a.comparison_operator.as_str() {
                "GreaterThanOrEqualToThreshold" => ">=",
                "GreaterThanThreshold" => ">",
                "LessThanThreshold" => "<",
                "LessThanOrEqualToThreshold" => "<=",
                other => other,
            };
            let periods = if a.evaluation_periods > 1 {
                format!(", {} periods", a.evaluation_periods)
            } else {
                String::new()
            };
            (
                format!("{op} {}{periods}", pct(a.threshold)),
                secs(c.cooldown),
            )
        }
        _ => ("?".into(), "?".into()),
    };
    vec![
        p.policy_name.clone(),
        format!("{:?}", p.policy_type),
        p.metric_name().to_string(),
        goal,
        cooldowns,
    ]
}

/// `NAME SCHEDULE TIMEZONE MIN MAX`; a bound the action keeps is `-`.
fn scheduled_action_row(a: &ScheduledAction) -> Vec<String> {
    let bound = |b: Option<u32>| b.map_or_else(|| "-".into(), |n| n.to_string());
    vec![
        a.scheduled_action_name.clone(),
        a.schedule.clone(),
        a.timezone.clone(),
        bound(a.scalable_target_action.min_capacity),
        bound(a.scalable_target_action.max_capacity),
    ]
}

/// `TIME FROM TO CAUSE POLICY METRICS`.
fn activity_row(a: &ScalingActivity) -> Vec<String> {
    vec![
        when(a.time),
        a.from.to_string(),
        a.to.to_string(),
        cell(&a.cause),
        a.policy.clone().unwrap_or_else(|| "-".into()),
        metrics_text(a.metrics.iter().map(|(name, v)| (name, *v))),
    ]
}

/// `CPUUtilization=73.2% MemoryUtilization=?`: each metric to a tenth of a percent, `?` where
/// it was unknown.
fn metrics_text<S: AsRef<str>>(metrics: impl IntoIterator<Item = (S, Option<f64>)>) -> String {
    metrics
        .into_iter()
        .map(|(name, v)| match v {
            Some(v) => format!("{}={v:.1}%", name.as_ref()),
            None => format!("{}=?", name.as_ref()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rm_with_an_unknown_name_removes_nothing_and_says_what_there_is() {
        let names = ["cpu60".to_string(), "nosuch".to_string()];
        let e =
            all_known("web", "scaling policy", &names, &["cpu60", "steps"]).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "service web has no scaling policy nosuch: nothing removed (it has: cpu60, steps)"
        );
        assert!(all_known("web", "scheduled action", &names[..1], &["cpu60"]).is_ok());
    }
    use clap::Parser;

    fn args(line: &[&str]) -> Result<AutoscaleArgs, clap::Error> {
        #[derive(Debug, Parser)]
        struct Cmd {
            #[command(flatten)]
            a: AutoscaleArgs,
        }
        Cmd::try_parse_from(std::iter::once("autoscale").chain(line.iter().copied())).map(|c| c.a)
    }

    fn request(line: &[&str]) -> Result<Autoscale> {
        autoscale_request(&args(line)?)
    }

    #[test]
    fn autoscale_flags_make_the_target_and_its_target_tracking_policies() {
        let r =
            request(&["web", "--min", "1", "--max", "10", "--target-cpu", "60"]).expect("valid");
        assert_eq!(
            r.target,
            ScalableTarget {
                min_capacity: 1,
                max_capacity: 10
            }
        );
        assert_eq!(
            r.policies,
            [target_tracking_policy(PREDEFINED_CPU, 60.0, None, None)]
        );
        assert_eq!(r.policies[0].policy_name, "cpu-target-tracking");

        let r = request(&[
            "web",
            "--min=2",
            "--max=4",
            "--target-cpu=70",
            "--target-memory=80.5",
            "--scale-out-cooldown=30",
            "--scale-in-cooldown=600",
        ])
        .expect("valid");
        let names: Vec<&str> = r.policies.iter().map(|p| p.policy_name.as_str()).collect();
        assert_eq!(names, ["cpu-target-tracking", "memory-target-tracking"]);
        let c = r.policies[1]
            .target_tracking_scaling_policy_configuration
            .as_ref()
            .expect("a target-tracking configuration");
        assert_eq!(
            (c.target_value, c.scale_out_cooldown, c.scale_in_cooldown),
            (80.5, Some(30), Some(600))
        );
        assert_eq!(
            c.predefined_metric_specification.predefined_metric_type,
            PREDEFINED_MEMORY
        );

        // Bounds alone: policies already put stay.
        let r = request(&["web", "--min", "0", "--max", "0"]).expect("valid");
        assert!(r.policies.is_empty());
    }

    #[test]
    fn a_wrong_autoscale_flag_is_named() {
        let e = |line: &[&str]| request(line).expect_err("refused").to_string();
        assert_eq!(
            e(&["web", "--min", "5", "--max", "3"]),
            "--min 5 is above --max 3"
        );
        assert_eq!(
            e(&["web", "--min", "1", "--max", "10001"]),
            "--max 10001: at most 10000"
        );
        for bad in ["0", "-5", "100.5", "NaN", "inf"] {
            assert_eq!(
                e(&["web", "--min=1", "--max=2", &format!("--target-cpu={bad}")]),
                format!(
                    "--target-cpu {}: not a percentage above 0 and at most 100",
                    bad.parse::<f64>().expect("a float")
                )
            );
        }
        assert!(request(&["web", "--min=1", "--max=2", "--target-memory=100"]).is_ok());
        assert!(e(&["web", "--min=1", "--max=2", "--target-memory=0"])
            .starts_with("--target-memory 0:"));
        assert_eq!(
            e(&[
                "web",
                "--min=1",
                "--max=2",
                "--target-cpu=50",
                "--scale-in-cooldown=86401"
            ]),
            "--scale-in-cooldown 86401: at most 86400 (a day)"
        );
        assert!(e(&["web", "--min=1", "--max=2", "--scale-out-cooldown=60"])
            .starts_with("--scale-out-cooldown: only with --target-cpu or --target-memory"));
    }

    #[test]
    fn off_stands_alone_and_min_max_are_needed_without_it() {
        let a = args(&["web", "--off"]).expect("valid");
        assert!(a.off);
        assert!(check(&a).is_ok());
        for line in [
            &["web", "--off", "--min", "1"][..],
            &["web", "--off", "--target-cpu", "50"],
            &["web", "--off", "--scale-in-cooldown", "5"],
        ] {
            let e = args(line).expect_err("conflict");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{line:?}"
            );
        }
        let e = args(&["web", "--min", "1"]).expect_err("--max missing");
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--max"), "{e}");
    }

    #[test]
    fn metrics_read_with_their_names_and_unknown_ones_as_a_question_mark() {
        assert_eq!(
            metrics_text([("CPUUtilization", Some(73.24)), ("MemoryUtilization", None)]),
            "CPUUtilization=73.2% MemoryUtilization=?"
        );
        assert_eq!(metrics_text(None::<(&str, _)>), "");
        let a = ScalingActivity {
            time: 1_700_000_000,
            from: 2,
            to: 4,
            cause: "scaled out".into(),
            policy: None,
            metrics: [("CPUUtilization".to_string(), Some(100.0))]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            activity_row(&a),
            [
                "2023-11-14T22:13:20Z",
                "2",
                "4",
                "scaled out",
                "-",
                "CPUUtilization=100.0%"
            ]
        );
    }

    /// The policy and scheduled-action files of the README's *Auto scaling* are read without a
    /// problem or a warning.
    #[test]
    fn the_readme_examples_are_read_as_they_are() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Auto scaling\n")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .expect("the README's Auto scaling section");
        let mut read = 0;
        for block in section.split("```").skip(1).step_by(2) {
            let Some(text) = block
                .strip_prefix("json\n")
                .or_else(|| block.strip_prefix("yaml\n"))
            else {
                continue;
            };
            let warnings = if text.contains("ScheduledActionName") {
                flotilla_api::scaling::parse_scheduled_action(text, "web").map(|p| p.warnings)
            } else {
                flotilla_api::scaling::parse_policy(text, "web").map(|p| p.warnings)
            };
            assert_eq!(warnings, Ok(vec![]), "{text}");
            read += 1;
        }
        assert_eq!(read, 3);
    }

    #[test]
    fn policy_rows_say_the_target_or_the_alarm_and_the_cooldowns_that_apply() {
        let t = target_tracking_policy(PREDEFINED_MEMORY, 62.5, Some(60), None);
        assert_eq!(
            policy_row(&t),
            [
                "memory-target-tracking",
                "TargetTrackingScaling",
                "MemoryUtilization",
                "62.5%",
                "out 60s, in 300s"
            ]
        );
        let step = flotilla_api::scaling::parse_policy(
            r#"
PolicyName: out
PolicyType: StepScaling
StepScalingPolicyConfiguration:
  AdjustmentType: ChangeInCapacity
  Cooldown: 30
  StepAdjustments:
    - {MetricIntervalLowerBound: 0, ScalingAdjustment: 2}
Alarm:
  MetricName: CPUUtilization
  Threshold: 70
  ComparisonOperator: GreaterThanOrEqualToThreshold
  EvaluationPeriods: 2
"#,
            "web",
        )
        .expect("valid")
        .value;
        assert_eq!(
            policy_row(&step),
            [
                "out",
                "StepScaling",
                "CPUUtilization",
                ">= 70%, 2 periods",
                "30s"
            ]
        );
        let a = flotilla_api::scaling::parse_scheduled_action(
            r#"{"ScheduledActionName": "mornings", "Schedule": "cron(0 8 ? * 2-6 *)",
                "ScalableTargetAction": {"MinCapacity": 3}}"#,
            "web",
        )
        .expect("valid")
        .value;
        assert_eq!(
            scheduled_action_row(&a),
            ["mornings", "cron(0 8 ? * 2-6 *)", "UTC", "3", "-"]
        );
    }
}
