//! Service `secrets` and `configs`: the container's files from Flotilla secrets and configs.

use serde_json::{json, Value};

use super::*;

impl Service<'_> {
    pub(super) fn secrets(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let Some((source, target, mode, uid, gid)) = self.reference(&ip, item) else {
                continue;
            };
            let Some(flotilla) = self.g.secrets.get(&source).cloned() else {
                self.problem(
                    &ip,
                    format!("secret '{source}' is not declared under the top-level secrets"),
                );
                continue;
            };
            // Compose's target: a file name under /run/secrets, or an absolute path.
            let name = match target.as_deref() {
                None => source.clone(),
                Some(t) => match t.strip_prefix("/run/secrets/") {
                    Some(n) if !n.contains('/') => n.to_string(),
                    _ if !t.starts_with('/') => t.to_string(),
                    _ => {
                        let file = t.rsplit('/').next().unwrap_or(t).to_string();
                        self.warn(
                            &format!("{ip}.target"),
                            format!(
                                "'{t}': a secret is the file /run/secrets/NAME on Flotilla: it \
                                 is /run/secrets/{file}"
                            ),
                        );
                        file
                    }
                },
            };
            let mut s = json!({"name": name, "valueFrom": format!("flotilla:{flotilla}"),
                               "environment": false});
            if let Some(m) = mode {
                s["mode"] = json!(format!("{m:04o}"));
            }
            if let Some(u) = uid {
                s["uid"] = json!(u);
            }
            if let Some(g) = gid {
                s["gid"] = json!(g);
            }
            self.origin(format!("{C}.secrets[{}]", out.len()), ip);
            out.push(s);
            self.values.push((ValueKind::Secret, flotilla));
        }
        if !out.is_empty() {
            self.container.insert("secrets".into(), Value::Array(out));
        }
    }

    pub(super) fn configs(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let Some((source, target, mode, uid, gid)) = self.reference(&ip, item) else {
                continue;
            };
            let Some(flotilla) = self.g.configs.get(&source).cloned() else {
                self.problem(
                    &ip,
                    format!("config '{source}' is not declared under the top-level configs"),
                );
                continue;
            };
            let target = match target {
                None => format!("/{source}"),
                Some(t) if t.starts_with('/') => t,
                Some(t) => format!("/{t}"),
            };
            let mut c = json!({"source": flotilla, "target": target});
            if let Some(m) = mode {
                c["mode"] = json!(format!("{m:04o}"));
            }
            if let Some(u) = uid {
                c["uid"] = json!(u);
            }
            if let Some(g) = gid {
                c["gid"] = json!(g);
            }
            self.origin(format!("{C}.configs[{}]", out.len()), ip);
            out.push(c);
            self.values.push((ValueKind::Config, flotilla));
        }
        if !out.is_empty() {
            self.container.insert("configs".into(), Value::Array(out));
        }
    }

    /// A secret or config reference: `- NAME` or `{source, target, uid, gid, mode}`.
    pub(super) fn reference(&mut self, p: &str, item: &Value) -> Option<Reference> {
        match item {
            Value::String(s) => Some((s.clone(), None, None, None, None)),
            Value::Object(m) => {
                let mut out = (None, None, None, None, None);
                for (k, v) in m {
                    let kp = format!("{p}.{k}");
                    match k.as_str() {
                        x if x.starts_with("x-") => {}
                        "source" => out.0 = self.text(&kp, v),
                        "target" => out.1 = self.text(&kp, v),
                        "mode" => match units::mode(v) {
                            Ok(m) => out.2 = Some(m),
                            Err(e) => self.problem(&kp, e),
                        },
                        "uid" | "gid" => match units::id(v) {
                            Ok(n) if k == "uid" => out.3 = Some(n),
                            Ok(n) => out.4 = Some(n),
                            Err(e) => self.problem(&kp, e),
                        },
                        _ => self.not_compose(&kp, k, keys::VALUE_REF),
                    }
                }
                match out.0 {
                    Some(s) => Some((s, out.1, out.2, out.3, out.4)),
                    None => {
                        self.problem(&format!("{p}.source"), "required");
                        None
                    }
                }
            }
            other => {
                self.problem(
                    p,
                    format!("expected a name or a mapping, found {}", kind(other)),
                );
                None
            }
        }
    }
}
