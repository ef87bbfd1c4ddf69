//! `ports` and `expose`: port mappings, one per container port.

use serde_json::Value;

use super::*;

/// How many port mappings (`ports` and `expose` together) a service may have.
pub(crate) const MAX_PORTS: usize = 1000;

impl Service<'_> {
    /// Adds the container ports `target` (published on `published`, if given).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_ports(
        &mut self,
        p: &str,
        target: &str,
        published: Option<&str>,
        host_ip: Option<&str>,
        protocol: Option<&str>,
        name: Option<String>,
        exposed: bool,
    ) {
        let udp = match protocol.map(str::to_ascii_lowercase).as_deref() {
            None | Some("tcp") => false,
            Some("udp") => true,
            Some(o) => {
                self.warn(
                    p,
                    format!("'{o}': not mapped: Flotilla publishes tcp and udp ports"),
                );
                return;
            }
        };
        let (t0, t1) = match units::port_range(target) {
            Ok(r) => r,
            Err(e) => {
                self.problem(p, e);
                return;
            }
        };
        let hosts: Option<(u16, u16)> = match published {
            None => None,
            Some(h) => match units::port_range(h) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(p, e);
                    return;
                }
            },
        };
        if let Some(ip) = host_ip {
            if !["0.0.0.0", "::", ""].contains(&ip) {
                self.warn(
                    p,
                    format!(
                        "host address {ip}: published on every address of the node (Flotilla \
                         binds no single address)"
                    ),
                );
            }
        }
        let count = t1 - t0;
        // A range is a mapping per port: `1-60000:1-60000` in a few bytes would otherwise be
        // 60,000 mappings, and a file of them billions.
        let mapped = self.ports.len() + self.exposed.len();
        if mapped + usize::from(count) + 1 > MAX_PORTS {
            self.problem(
                p,
                format!(
                    "{} ports: a service maps at most {MAX_PORTS} (each port of a range is a \
                     mapping)",
                    mapped + usize::from(count) + 1
                ),
            );
            return;
        }
        let host_for = |i: u16| -> Option<u16> {
            let (h0, h1) = hosts?;
            if h1 - h0 == count {
                Some(h0 + i)
            } else {
                None
            }
        };
        if let Some((h0, h1)) = hosts {
            if h1 - h0 != count {
                if count == 0 {
                    self.warn(
                        p,
                        format!(
                            "host ports {h0}-{h1}: the node picks the host port from its \
                             dynamic range (a range of host ports is not mapped)"
                        ),
                    );
                } else {
                    self.problem(
                        p,
                        format!("{t0}-{t1} and {h0}-{h1}: ranges of different lengths"),
                    );
                    return;
                }
            }
        }
        if self.network.as_deref() == Some("host") {
            if let Some((h0, _)) = hosts.filter(|(h0, _)| *h0 != t0) {
                self.warn(
                    p,
                    format!(
                        "network_mode host: the container's port {t0} is the node's port (host \
                         port {h0} is not mapped)"
                    ),
                );
            }
        }
        for i in 0..=count {
            let host = if self.network.as_deref() == Some("host") {
                None
            } else {
                host_for(i)
            };
            let port = Port {
                container: t0 + i,
                host,
                udp,
                name: if count == 0 { name.clone() } else { None },
                path: p.to_string(),
            };
            if exposed {
                self.exposed.push(port);
            } else {
                self.ports.push(port);
            }
        }
    }

    pub(super) fn ports(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match item {
                Value::Number(_) => {
                    let t = scalar_text(item).unwrap_or_default();
                    self.add_ports(&ip, &t, None, None, None, None, false);
                }
                Value::String(s) => match units::short_port(s) {
                    Ok(sp) => self.add_ports(
                        &ip,
                        &sp.target,
                        sp.published.as_deref(),
                        sp.host_ip.as_deref(),
                        sp.protocol.as_deref(),
                        None,
                        false,
                    ),
                    Err(e) => self.problem(&ip, e),
                },
                Value::Object(m) => {
                    let mut target = None;
                    let mut published = None;
                    let mut host_ip = None;
                    let mut protocol = None;
                    let mut name = None;
                    for (k, val) in m {
                        let kp = format!("{ip}.{k}");
                        match k.as_str() {
                            "target" => target = scalar_text(val),
                            "published" => published = scalar_text(val),
                            "host_ip" => host_ip = scalar_text(val),
                            "protocol" => protocol = scalar_text(val),
                            "name" => name = scalar_text(val),
                            "mode" => match val.as_str() {
                                Some("host") => {}
                                Some("ingress") => self.warn(
                                    &kp,
                                    "ingress: published on the nodes that run the service's \
                                     tasks, not on every node (there is no routing mesh)",
                                ),
                                _ => self.problem(&kp, "expected host or ingress"),
                            },
                            "app_protocol" => self
                                .warn(&kp, "not mapped: a port mapping names its transport only"),
                            k if k.starts_with("x-") => {}
                            _ => self.not_compose(&kp, k, keys::PORT),
                        }
                    }
                    match target {
                        Some(t) => self.add_ports(
                            &ip,
                            &t,
                            published.as_deref().filter(|p| !p.is_empty()),
                            host_ip.as_deref(),
                            protocol.as_deref(),
                            name,
                            false,
                        ),
                        None => self.problem(&format!("{ip}.target"), "required"),
                    }
                }
                other => self.problem(
                    &ip,
                    format!(
                        "expected a port, a string or a mapping, found {}",
                        kind(other)
                    ),
                ),
            }
        }
    }

    pub(super) fn expose(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match scalar_text(item) {
                Some(t) => {
                    let (port, proto) = match t.split_once('/') {
                        Some((a, b)) => (a.to_string(), Some(b.to_string())),
                        None => (t.clone(), None),
                    };
                    self.add_ports(&ip, &port, None, None, proto.as_deref(), None, true);
                }
                None => self.problem(&ip, format!("expected a port, found {}", kind(item))),
            }
        }
    }
}
