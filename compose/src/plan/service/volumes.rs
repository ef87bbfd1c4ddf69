//! `volumes` and `tmpfs`: task volumes (named, anonymous, bind) with their mount points,
//! and tmpfs mounts.

use serde_json::{json, Map, Value};

use super::*;

impl Service<'_> {
    /// `/path[:size=64m,mode=1777,…]`.
    pub(super) fn tmpfs_short(&mut self, p: &str, t: &str) {
        let (target, opts) = t.split_once(':').unwrap_or((t, ""));
        let mut size = None;
        let mut options = Vec::new();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", s)) => match units::bytes(&Value::String(s.into())) {
                    Ok(b) => size = Some(units::mib(b).max(1)),
                    Err(e) => self.problem(p, e),
                },
                _ => options.push(o.to_string()),
            }
        }
        self.add_tmpfs(p, target, size, options);
    }

    pub(super) fn add_tmpfs(
        &mut self,
        p: &str,
        target: &str,
        size: Option<u64>,
        options: Vec<String>,
    ) {
        if !target.starts_with('/') {
            self.problem(p, format!("'{target}' is not an absolute path"));
            return;
        }
        let size = size.unwrap_or_else(|| {
            self.warn(
                p,
                format!(
                    "{target}: no size given; a tmpfs on Flotilla has one: {DEFAULT_TMPFS_MIB} MiB \
                     (write {target}:size=…)"
                ),
            );
            DEFAULT_TMPFS_MIB
        });
        let mut t = json!({"containerPath": target, "size": size});
        if !options.is_empty() {
            t["mountOptions"] = json!(options);
        }
        self.tmpfs.push((t, p.to_string()));
    }

    /// A task volume, once per name.
    pub(super) fn task_volume(&mut self, v: Value) {
        let name = v.get("name").cloned();
        if !self
            .task_volumes
            .iter()
            .any(|t| t.get("name") == name.as_ref())
        {
            self.task_volumes.push(v);
        }
    }

    pub(super) fn mount(&mut self, source: &str, target: &str, read_only: bool) {
        self.mounts
            .push(json!({"sourceVolume": source, "containerPath": target, "readOnly": read_only}));
    }

    /// The task volume of a bind mount of `source` (a host path) for volume entry `i`.
    pub(super) fn bind(&mut self, p: &str, i: usize, source: &str) -> Option<String> {
        if source.starts_with('~') {
            self.problem(
                p,
                format!("'{source}': a path in a home directory, which the loader expands"),
            );
            return None;
        }
        let abs = absolute(self.cx, source);
        if let Some(written) = self.cx.home_paths.get(source).cloned() {
            self.warn(
                p,
                format!(
                    "{written}: a path on this machine (~ is its HOME): each node mounts its own \
                     {} (below its bind_roots); a file is better given as a config",
                    abs.display()
                ),
            );
        } else if abs.starts_with(&self.cx.project_dir) {
            self.warn(
                p,
                format!(
                    "{source}: a path on this machine: each node mounts its own {} (below its \
                     bind_roots); a file is better given as a config",
                    abs.display()
                ),
            );
        }
        let name = format!("bind-{i}");
        self.task_volume(json!({"name": name, "host": {"sourcePath": abs.to_string_lossy()}}));
        Some(name)
    }

    /// The task volume of named volume `source`.
    pub(super) fn named(&mut self, p: &str, source: &str) -> Option<String> {
        match self.g.volumes.get(source) {
            Some(n) => {
                let n = n.clone();
                self.task_volume(json!({"name": n, "dockerVolumeConfiguration":
                    {"scope": "shared", "autoprovision": true}}));
                Some(n)
            }
            None => {
                self.problem(
                    p,
                    format!("volume '{source}' is not declared under the top-level volumes"),
                );
                None
            }
        }
    }

    pub(super) fn anonymous(&mut self, i: usize) -> String {
        let name = format!("anonymous-{i}");
        self.task_volume(json!({"name": name}));
        name
    }

    pub(super) fn volumes(&mut self, p: &str, v: &Value) {
        let Some(items) = v.as_array() else {
            if !v.is_null() {
                self.problem(p, format!("expected a list, found {}", kind(v)));
            }
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            match item {
                Value::String(s) => self.volume_short(&ip, i, s),
                Value::Object(m) => self.volume_long(&ip, i, m),
                other => self.problem(
                    &ip,
                    format!("expected a string or a mapping, found {}", kind(other)),
                ),
            }
        }
    }

    pub(super) fn volume_short(&mut self, p: &str, i: usize, s: &str) {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [t] => (None, *t, ""),
            [s, t] => (Some(*s), *t, ""),
            [s, t, m] => (Some(*s), *t, *m),
            _ => {
                self.problem(p, format!("'{s}' is not [SOURCE:]TARGET[:MODE]"));
                return;
            }
        };
        if !target.starts_with('/') {
            self.problem(p, format!("'{target}': the target is not an absolute path"));
            return;
        }
        let mut read_only = false;
        let mut other = Vec::new();
        for o in mode.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => read_only = true,
                "rw" => {}
                o => other.push(o),
            }
        }
        if !other.is_empty() {
            self.warn(
                p,
                format!(
                    "{}: not applied (Flotilla does no SELinux relabeling and has no propagation, \
                     consistency or nocopy options)",
                    other.join(", ")
                ),
            );
        }
        let volume = match source {
            Some("") => {
                self.problem(p, format!("'{s}': the source is empty"));
                None
            }
            None => Some(self.anonymous(i)),
            Some(src) if src.starts_with(['/', '.', '~']) => self.bind(p, i, src),
            Some(src) => self.named(p, src),
        };
        if let Some(v) = volume {
            self.mount(&v, target, read_only);
        }
    }

    pub(super) fn volume_long(&mut self, p: &str, i: usize, m: &Map<String, Value>) {
        let kind_of = m.get("type").and_then(Value::as_str).unwrap_or("");
        let source = m
            .get("source")
            .and_then(scalar_text)
            .filter(|s| !s.is_empty());
        let Some(target) = m.get("target").and_then(scalar_text) else {
            self.problem(&format!("{p}.target"), "required");
            return;
        };
        if !target.starts_with('/') {
            self.problem(
                &format!("{p}.target"),
                format!("'{target}' is not an absolute path"),
            );
            return;
        }
        let mut read_only = false;
        let mut tmpfs_size = None;
        for (k, val) in m {
            let kp = format!("{p}.{k}");
            match k.as_str() {
                "type" | "source" | "target" => {}
                k if k.starts_with("x-") => {}
                "read_only" => read_only = self.boolean(&kp, val).unwrap_or(false),
                "consistency" => self.warn(&kp, "not mapped: mounts have no consistency options"),
                "bind" | "volume" | "tmpfs" | "image" => {
                    let Some(sub) = val.as_object() else {
                        if !val.is_null() {
                            self.problem(&kp, format!("expected a mapping, found {}", kind(val)));
                        }
                        continue;
                    };
                    for (sk, sv) in sub {
                        let sp = format!("{kp}.{sk}");
                        match (k.as_str(), sk.as_str()) {
                            (_, x) if x.starts_with("x-") => {}
                            ("tmpfs", "size") => match units::bytes(sv) {
                                Ok(b) => tmpfs_size = Some(units::mib(b).max(1)),
                                Err(e) => self.problem(&sp, e),
                            },
                            ("bind", "create_host_path") => {
                                if units::boolean(sv).unwrap_or(true) {
                                    self.warn(
                                        &sp,
                                        "not mapped: a node does not create a missing bind \
                                         source; the task fails to start",
                                    );
                                }
                            }
                            ("bind", "selinux") => {
                                self.warn(&sp, "not mapped: Flotilla does no SELinux relabeling")
                            }
                            ("volume", "nocopy") => {
                                self.warn(&sp, "not mapped: Flotilla has no nocopy option")
                            }
                            ("tmpfs", "mode")
                            | ("bind", "propagation" | "recursive")
                            | ("volume", "subpath" | "labels")
                            | ("image", "subpath") => self.warn(&sp, "not mapped"),
                            _ => self.not_compose(&sp, sk, keys::mount_options(k)),
                        }
                    }
                }
                _ => self.not_compose(&kp, k, keys::MOUNT),
            }
        }
        let volume = match (kind_of, source.as_deref()) {
            ("volume", None) => Some(self.anonymous(i)),
            ("volume", Some(s)) => self.named(p, s),
            ("bind", Some(s)) => self.bind(p, i, s),
            ("bind", None) => {
                self.problem(&format!("{p}.source"), "required for a bind mount");
                None
            }
            ("tmpfs", _) => {
                self.add_tmpfs(p, &target, tmpfs_size, Vec::new());
                None
            }
            ("npipe" | "cluster" | "image", _) => {
                self.warn(
                    &format!("{p}.type"),
                    format!("{kind_of}: not mapped: mounts are binds, volumes and tmpfs"),
                );
                None
            }
            (t, _) => {
                self.problem(
                    &format!("{p}.type"),
                    format!("'{t}' is not volume, bind or tmpfs"),
                );
                None
            }
        };
        if let Some(v) = volume {
            self.mount(&v, &target, read_only);
        }
    }
}
