//! `deploy`: resources, replicas, restart policy, placement and the deployment's bounds.

use serde_json::{json, Map, Value};

use super::*;

impl Service<'_> {
    pub(super) fn deploy(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                k if k.starts_with("x-") => {}
                "mode" => match val.as_str() {
                    Some("replicated") => {}
                    Some("global") => self.global = true,
                    // A job's tasks run to success once (completionPolicy onFailure).
                    Some(j @ ("replicated-job" | "global-job")) => {
                        self.global = j == "global-job";
                        self.job = true;
                    }
                    _ => self.problem(
                        &kp,
                        "expected replicated, global, replicated-job or global-job",
                    ),
                },
                "replicas" => match units::integer(val, 0, 10_000) {
                    Ok(n) => self.replicas = Some((n as u32, kp)),
                    Err(e) => self.problem(&kp, e),
                },
                "endpoint_mode" => match val.as_str() {
                    Some("vip") => {}
                    Some("dnsrr") => {
                        self.vip = false;
                        self.warn(
                            &kp,
                            "dnsrr: the name answers with the tasks' node addresses; each task \
                             is reached on its host port (its SRV record), not on the container \
                             port",
                        );
                    }
                    _ => self.problem(&kp, "expected vip or dnsrr"),
                },
                "labels" => self.warn(
                    &kp,
                    "not mapped: Flotilla services have no labels (container labels are labels)",
                ),
                "resources" => self.resources(&kp, val),
                "restart_policy" => self.restart_policy(&kp, val),
                "placement" => self.placement(&kp, val),
                "update_config" => self.update = Some(val.clone()),
                "rollback_config" => self.warn(
                    &kp,
                    "not mapped: a rollback deploys the last completed revision as any \
                     deployment is rolled out",
                ),
                _ => self.not_compose(&kp, k, keys::DEPLOY),
            }
        }
    }

    pub(super) fn resources(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            let limits = match k.as_str() {
                k if k.starts_with("x-") => continue,
                "limits" => true,
                "reservations" => false,
                _ => {
                    self.not_compose(&kp, k, keys::RESOURCES);
                    continue;
                }
            };
            let Some(r) = val.as_object() else {
                if !val.is_null() {
                    self.problem(&kp, format!("expected a mapping, found {}", kind(val)));
                }
                continue;
            };
            for (rk, rv) in r {
                let rp = format!("{kp}.{rk}");
                match rk.as_str() {
                    x if x.starts_with("x-") => {}
                    "memory" => match units::bytes(rv) {
                        Ok(0) => {}
                        Ok(b) if units::mib(b) < MIN_MEMORY => self.problem(
                            &rp,
                            format!(
                                "{}: less than the {MIN_MEMORY} MiB a container needs",
                                describe(rv)
                            ),
                        ),
                        Ok(b) => {
                            let slot = Some((units::mib(b), rp));
                            if limits {
                                self.memory = slot;
                            } else {
                                self.reservation = slot;
                            }
                        }
                        Err(e) => self.problem(&rp, e),
                    },
                    "cpus" => match units::number(rv) {
                        Ok(n) if n <= 0.0 => {}
                        Ok(n) if limits => self.cpu_limit = Some((n, rp)),
                        Ok(n) => {
                            let units = (n * 1024.0).round().max(1.0) as u32;
                            if let Some((_, at)) = &self.cpu_weight {
                                let at = at.clone();
                                self.warn(&at, format!("overridden by {rp}"));
                            }
                            self.cpu_weight = Some((units, rp));
                        }
                        Err(e) => self.problem(&rp, e),
                    },
                    "pids" if limits => self.warn(&rp, "not mapped: Flotilla sets no pids limit"),
                    "generic_resources" | "devices" if !limits => self.warn(
                        &rp,
                        "not mapped: placement counts memory and CPU only; no device is passed \
                         to containers",
                    ),
                    _ => {
                        let known = if limits {
                            keys::LIMITS
                        } else {
                            keys::RESERVATIONS
                        };
                        self.not_compose(&rp, rk, known);
                    }
                }
            }
        }
    }

    pub(super) fn restart_policy(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        // Swarm's default condition is any.
        let mut r = Restart {
            enabled: true,
            ignore_success: false,
            period: None,
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                x if x.starts_with("x-") => {}
                "condition" => match val.as_str() {
                    Some("any") => {}
                    Some("on-failure") => r.ignore_success = true,
                    Some("none") => r.enabled = false,
                    _ => self.problem(&kp, "expected none, on-failure or any"),
                },
                "delay" => self.warn(
                    &kp,
                    "not mapped: the node waits 1 s, doubling to 5 minutes, between restarts",
                ),
                "max_attempts" => self.warn(
                    &kp,
                    "not mapped: the node keeps restarting a failing container, ever more slowly",
                ),
                "window" => match units::duration(val) {
                    Ok(secs) => {
                        let want = units::whole_seconds(secs);
                        let got = want.clamp(60, 1800);
                        if got != want {
                            self.warn(
                                &kp,
                                format!(
                                    "{}: {got} s on Flotilla (restartAttemptPeriod: a run of at \
                                     least 60 to 1800 s counts as a success)",
                                    describe(val)
                                ),
                            );
                        }
                        r.period = Some(got as u32);
                    }
                    Err(e) => self.problem(&kp, e),
                },
                _ => self.not_compose(&kp, k, keys::RESTART_POLICY),
            }
        }
        self.deploy_restart = Some((r, p.to_string()));
    }

    pub(super) fn placement(&mut self, p: &str, v: &Value) {
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(p, format!("expected a mapping, found {}", kind(v)));
            }
            return;
        };
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                x if x.starts_with("x-") => {}
                "constraints" => match units::string_or_list(val) {
                    Ok(list) => {
                        for (i, c) in list.iter().enumerate() {
                            self.constraint(&format!("{kp}[{i}]"), c);
                        }
                    }
                    Err(e) => self.problem(&kp, e),
                },
                "preferences" => {
                    let Some(items) = val.as_array() else {
                        self.problem(&kp, format!("expected a list, found {}", kind(val)));
                        continue;
                    };
                    for (i, pref) in items.iter().enumerate() {
                        let pp = format!("{kp}[{i}]");
                        match pref.get("spread").and_then(Value::as_str) {
                            Some(s) => match s.strip_prefix("node.labels.") {
                                Some(label) if is_attribute(label) => self.strategy.push(
                                    json!({"type": "spread", "field": format!("attribute:{label}")}),
                                ),
                                _ => self.warn(
                                    &pp,
                                    format!(
                                        "spread over '{s}': not mapped: tasks spread over node \
                                         labels (node.labels.NAME)"
                                    ),
                                ),
                            },
                            None => self.problem(&pp, "expected {spread: node.labels.NAME}"),
                        }
                    }
                }
                "max_replicas_per_node" => match units::integer(val, 0, i64::MAX) {
                    Ok(1) => self.constraints.push(json!({"type": "distinctInstance"})),
                    Ok(0) => {}
                    Ok(n) => self.warn(
                        &kp,
                        format!(
                            "{n}: not mapped: Flotilla bounds tasks per node to one \
                             (distinctInstance) or none"
                        ),
                    ),
                    Err(e) => self.problem(&kp, e),
                },
                _ => self.not_compose(&kp, k, keys::PLACEMENT),
            }
        }
    }

    /// `node.labels.K == V` or `!=`: a `memberOf` on the node's label.
    pub(super) fn constraint(&mut self, p: &str, c: &str) {
        let parsed = ["==", "!="]
            .into_iter()
            .find_map(|op| c.split_once(op).map(|(l, r)| (l.trim(), op, r.trim())));
        let Some((lhs, op, value)) = parsed else {
            self.problem(
                p,
                format!("'{c}' is not ATTRIBUTE == VALUE or ATTRIBUTE != VALUE"),
            );
            return;
        };
        let Some(label) = lhs.strip_prefix("node.labels.") else {
            self.warn(
                p,
                format!(
                    "'{c}': not mapped: a node's only attributes are its labels (`flotilla node \
                     label`): write node.labels.NAME {op} VALUE"
                ),
            );
            return;
        };
        let quoted = if value
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "._-/:*".contains(ch))
            && !value.is_empty()
        {
            value.to_string()
        } else if !value.contains('"') {
            format!("\"{value}\"")
        } else if !value.contains('\'') {
            format!("'{value}'")
        } else {
            self.warn(
                p,
                format!("'{c}': not mapped: the value has both kinds of quote"),
            );
            return;
        };
        if !is_attribute(label) {
            self.warn(
                p,
                format!(
                    "'{c}': not mapped: '{label}' cannot be an attribute name (letters, digits \
                     and ._-/:*)"
                ),
            );
            return;
        }
        self.constraints.push(
            json!({"type": "memberOf", "expression": format!("attribute:{label} {op} {quoted}")}),
        );
    }

    /// The deployment configuration `update_config` asks for, for `count` tasks.
    pub(super) fn update_config(&mut self, v: &Value, count: u32) -> Option<Value> {
        let p = self.at("deploy.update_config");
        let Some(m) = v.as_object() else {
            if !v.is_null() {
                self.problem(&p, format!("expected a mapping, found {}", kind(v)));
            }
            return None;
        };
        let mut parallelism: u64 = 1;
        let mut start_first = false;
        let mut breaker: Option<Value> = None;
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                x if x.starts_with("x-") => {}
                "parallelism" => match units::integer(val, 0, i64::MAX) {
                    Ok(n) => parallelism = n as u64,
                    Err(e) => self.problem(&kp, e),
                },
                "order" => match val.as_str() {
                    Some("start-first") => start_first = true,
                    Some("stop-first") => {}
                    _ => self.problem(&kp, "expected start-first or stop-first"),
                },
                "failure_action" => match val.as_str() {
                    Some("rollback") => breaker = Some(json!({"enable": true, "rollback": true})),
                    Some("pause") => breaker = Some(json!({"enable": true, "rollback": false})),
                    Some("continue") => {}
                    _ => self.problem(&kp, "expected continue, pause or rollback"),
                },
                "delay" => self.warn(
                    &kp,
                    "not mapped: a deployment starts new tasks as soon as the bounds allow",
                ),
                "monitor" | "max_failure_ratio" => self.warn(
                    &kp,
                    "not mapped: the circuit breaker (failure_action) stops a deployment whose \
                     tasks keep failing: half the desired count, at least 3",
                ),
                _ => self.not_compose(&kp, k, keys::UPDATE_CONFIG),
            }
        }
        let mut d = Map::new();
        if self.global {
            if start_first {
                self.warn(
                    &format!("{p}.order"),
                    "start-first: not mapped for a global service: a node's task is stopped \
                     before its replacement starts",
                );
            }
        } else if count > 0 {
            let n = u64::from(count);
            // Tasks replaced at once: parallelism, all of them for 0.
            let step = if parallelism == 0 {
                n
            } else {
                parallelism.min(n)
            };
            if start_first {
                d.insert("minimumHealthyPercent".into(), json!(100));
                d.insert(
                    "maximumPercent".into(),
                    json!(100 + (step * 100).div_ceil(n)),
                );
            } else {
                d.insert("minimumHealthyPercent".into(), json!((n - step) * 100 / n));
                d.insert("maximumPercent".into(), json!(100));
            }
        }
        if let Some(b) = breaker {
            d.insert("deploymentCircuitBreaker".into(), b);
        }
        (!d.is_empty()).then_some(Value::Object(d))
    }
}
