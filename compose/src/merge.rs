//! One shape per service attribute, and the merge of two documents (`merge.md`, and
//! compose-go's `override` package where the specification is silent).
//!
//! Each file's services are put in their canonical shape first ([`normalize_service`]), so
//! that merging only ever meets one shape per attribute:
//!
//! - `environment`, `labels`, `annotations`, `sysctls`, `build.args`, `build.labels`,
//!   `deploy.labels`: mappings (`KEY=VALUE` list entries split at the first `=`; an entry
//!   `KEY` alone is null in `environment` and `build.args`, resolved later, and empty
//!   elsewhere), merged by key.
//! - `extra_hosts`: a mapping from host name to a list of addresses (`host:ip` or `host=ip`).
//! - `depends_on`: a mapping by service name; list entries become
//!   `{condition: service_started, required: true}`.
//! - `networks`: a mapping by network name; `ulimits`: each `{soft, hard}`.
//! - `build` given as a string becomes `{context: …}`; `env_file`, `dns`, `dns_search`,
//!   `dns_opt` and `tmpfs` given as a string become a one-item list.
//!
//! Then [`merge`]: mappings merge key by key (recursively), a later scalar wins, a null in
//! the later document keeps the earlier value, sequences are appended; except `command`,
//! `entrypoint`, `healthcheck.test` and each `ulimits` entry, replaced; `volumes` (by target),
//! `secrets` and `configs` (by target: `/run/secrets/NAME` or `/NAME` when not given) and
//! `ports` (by `ip:published:target/protocol`), where an entry with the key of an earlier one
//! replaces it in place; the list-like sets (`cap_add`, `dns`, `profiles`, …), appended
//! without repeating an equal entry; `logging`, replaced when the drivers differ. A later
//! value tagged `!reset` removes the attribute, one tagged `!override` replaces it whole.

use yaml_serde::{Mapping, Sequence, Value};

use crate::load::{child_path, key_name, Diag};

/// Sequences merged as sets: appended, without repeating an equal entry.
const SET_LISTS: &[&str] = &[
    "cap_add",
    "cap_drop",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "expose",
    "external_links",
    "group_add",
    "links",
    "profiles",
    "security_opt",
    "tmpfs",
    "volumes_from",
];

/// Which attribute a unique-resource list holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unique {
    Volumes,
    Ports,
    Secrets,
    Configs,
}

impl Unique {
    pub(crate) const ALL: [(&'static str, Unique); 4] = [
        ("volumes", Unique::Volumes),
        ("ports", Unique::Ports),
        ("secrets", Unique::Secrets),
        ("configs", Unique::Configs),
    ];

    /// The entry's unique key (`None`: it has none and is kept as it is).
    pub(crate) fn key(self, entry: &Value) -> Option<String> {
        match (self, entry) {
            (Unique::Volumes, Value::String(s)) => Some(short_volume(s).1.to_owned()),
            (Unique::Volumes, Value::Mapping(m)) => m.get("target").and_then(scalar_string),
            (Unique::Volumes, _) => None,
            (Unique::Ports, Value::Mapping(m)) => {
                let get = |k: &str, default: &str| {
                    m.get(k)
                        .and_then(scalar_string)
                        .unwrap_or_else(|| default.to_owned())
                };
                Some(format!(
                    "{}:{}:{}/{}",
                    get("host_ip", "0.0.0.0"),
                    get("published", ""),
                    get("target", ""),
                    get("protocol", "tcp")
                ))
            }
            (Unique::Ports, other) => scalar_string(other),
            (Unique::Secrets | Unique::Configs, entry) => {
                let dir = if matches!(self, Unique::Secrets) {
                    "/run/secrets"
                } else {
                    ""
                };
                let (target, source) = match entry {
                    Value::Mapping(m) => (
                        m.get("target").and_then(scalar_string),
                        m.get("source").and_then(scalar_string),
                    ),
                    other => (None, scalar_string(other)),
                };
                match (target, source) {
                    (Some(t), _) if t.starts_with('/') => Some(t),
                    (Some(t), _) => Some(format!("{dir}/{t}")),
                    (None, Some(s)) => Some(format!("{dir}/{s}")),
                    (None, None) => None,
                }
            }
        }
    }
}

/// Splits short volume syntax `[SOURCE:]TARGET[:MODE]` into (source, target, mode).
pub(crate) fn short_volume(spec: &str) -> (Option<&str>, &str, Option<&str>) {
    let mut parts = spec.splitn(3, ':');
    let first = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (None, _) => (None, first, None),
        (Some(target), mode) => (Some(first), target, mode),
    }
}

/// A scalar as text (strings, numbers, booleans).
pub(crate) fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value under any tags.
pub(crate) fn untagged_mut(value: &mut Value) -> &mut Value {
    match value {
        Value::Tagged(tagged) => untagged_mut(&mut tagged.value),
        other => other,
    }
}

fn is_tag(value: &Value, tag: &str) -> bool {
    matches!(value, Value::Tagged(t) if t.tag == tag)
}

/// Puts one service's attributes in their canonical shape (see the module documentation).
pub(crate) fn normalize_service(service: &mut Mapping, path: &str, diag: &mut Diag) {
    for (key, value) in service.iter_mut() {
        let Some(name) = key_name(key) else { continue };
        let path = child_path(path, key);
        let value = untagged_mut(value);
        match name.as_str() {
            "build" => {
                if let Value::String(context) = value {
                    let mut m = Mapping::new();
                    m.insert("context".into(), Value::String(std::mem::take(context)));
                    *value = Value::Mapping(m);
                }
                if let Value::Mapping(build) = value {
                    for (k, null_bare) in [("args", true), ("labels", false)] {
                        if let Some(v) = build.get_mut(k) {
                            let p = format!("{path}.{k}");
                            to_map(untagged_mut(v), &p, null_bare, diag);
                        }
                    }
                }
            }
            "environment" => to_map(value, &path, true, diag),
            "labels" | "annotations" | "sysctls" => to_map(value, &path, false, diag),
            "deploy" => {
                if let Some(labels) = value.as_mapping_mut().and_then(|d| d.get_mut("labels")) {
                    to_map(untagged_mut(labels), &format!("{path}.labels"), false, diag);
                }
            }
            "extra_hosts" => extra_hosts(value, &path, diag),
            "depends_on" => {
                if let Value::Sequence(names) = value {
                    let mut m = Mapping::new();
                    for (i, item) in names.iter().enumerate() {
                        match item {
                            Value::String(s) => {
                                let mut dep = Mapping::new();
                                dep.insert("condition".into(), "service_started".into());
                                dep.insert("required".into(), Value::Bool(true));
                                m.insert(Value::String(s.clone()), Value::Mapping(dep));
                            }
                            _ => diag.error(format!("{path}[{i}]: must be a service name")),
                        }
                    }
                    *value = Value::Mapping(m);
                }
            }
            "networks" => {
                if let Value::Sequence(names) = value {
                    let mut m = Mapping::new();
                    for (i, item) in names.iter().enumerate() {
                        match item {
                            Value::String(s) => {
                                m.insert(Value::String(s.clone()), Value::Null);
                            }
                            _ => diag.error(format!("{path}[{i}]: must be a network name")),
                        }
                    }
                    *value = Value::Mapping(m);
                }
            }
            "ulimits" => {
                if let Value::Mapping(limits) = value {
                    for (_, limit) in limits.iter_mut() {
                        let limit = untagged_mut(limit);
                        if matches!(limit, Value::Number(_) | Value::String(_)) {
                            let mut m = Mapping::new();
                            m.insert("soft".into(), limit.clone());
                            m.insert("hard".into(), limit.clone());
                            *limit = Value::Mapping(m);
                        }
                    }
                }
            }
            "env_file" | "dns" | "dns_search" | "dns_opt" | "tmpfs" => {
                if let Value::String(s) = value {
                    *value = Value::Sequence(vec![Value::String(std::mem::take(s))]);
                }
            }
            _ => {}
        }
    }
}

/// `KEY=VALUE` lists and mappings into a mapping of strings (a bare `KEY` null when
/// `null_bare`, else empty).
fn to_map(value: &mut Value, path: &str, null_bare: bool, diag: &mut Diag) {
    let mut out = Mapping::new();
    match value {
        Value::Null => {}
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let Some(entry) = scalar_string(item) else {
                    diag.error(format!("{path}[{i}]: must be a KEY=VALUE string"));
                    continue;
                };
                match entry.split_once('=') {
                    Some((k, v)) => out.insert(k.into(), v.into()),
                    None if null_bare => out.insert(entry.into(), Value::Null),
                    None => out.insert(entry.into(), "".into()),
                };
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter() {
                let Some(key) = key_name(k) else {
                    diag.error(format!("{path}: a key is not a string"));
                    continue;
                };
                let v = match v {
                    Value::Null | Value::Tagged(_) => v.clone(),
                    other => match scalar_string(other) {
                        Some(s) => Value::String(s),
                        None => {
                            diag.error(format!(
                                "{}: must be a string, a number, a boolean or null",
                                child_path(path, k)
                            ));
                            continue;
                        }
                    },
                };
                out.insert(Value::String(key), v);
            }
        }
        _ => {
            diag.error(format!("{path}: must be a mapping or a list of KEY=VALUE"));
            return;
        }
    }
    *value = Value::Mapping(out);
}

fn extra_hosts(value: &mut Value, path: &str, diag: &mut Diag) {
    let mut out = Mapping::new();
    let mut add = |host: &str, ip: Value| {
        let entry = out
            .entry(Value::String(host.to_owned()))
            .or_insert_with(|| Value::Sequence(Sequence::new()));
        if let Value::Sequence(ips) = entry {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    };
    match value {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let split = item
                    .as_str()
                    .and_then(|s| s.split_once('=').or_else(|| s.split_once(':')));
                match split {
                    Some((host, ip)) => add(host, Value::String(ip.to_owned())),
                    None => diag.error(format!("{path}[{i}]: must be HOST=IP or HOST:IP")),
                }
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter() {
                let Some(host) = key_name(k) else {
                    diag.error(format!("{path}: a key is not a string"));
                    continue;
                };
                match v {
                    Value::Sequence(ips) => ips.iter().for_each(|ip| add(&host, ip.clone())),
                    other => match scalar_string(other) {
                        Some(ip) => add(&host, Value::String(ip)),
                        None => diag.error(format!("{path}.{host}: must be an address")),
                    },
                }
            }
        }
        Value::Null => {}
        _ => {
            diag.error(format!("{path}: must be a mapping or a list of HOST=IP"));
            return;
        }
    }
    *value = Value::Mapping(out);
}

/// Merges `over` onto `base` at `path` (its segments). `None`: the attribute is removed
/// (`!reset`).
pub(crate) fn merge(base: Value, over: Value, path: &[String]) -> Option<Value> {
    let over = match over {
        Value::Tagged(t) if t.tag == "reset" => return None,
        Value::Tagged(t) if t.tag == "override" => return Some(t.value),
        other => other,
    };
    let base = match base {
        Value::Tagged(t) if t.tag == "reset" => return Some(over),
        Value::Tagged(t) => t.value,
        other => other,
    };
    if over.is_null() {
        return Some(base);
    }
    let segs: Vec<&str> = path.iter().map(String::as_str).collect();
    match (segs.as_slice(), base, over) {
        (["services", _, "command" | "entrypoint"], _, over)
        | (["services", _, "healthcheck", "test"], _, over)
        | (["services", _, "ulimits", _], _, over) => Some(over),
        (["services", _, attr], Value::Sequence(base), Value::Sequence(over))
            if Unique::ALL.iter().any(|(a, _)| a == attr) =>
        {
            let kind = Unique::ALL
                .iter()
                .find(|(a, _)| a == attr)
                .map_or(Unique::Volumes, |(_, k)| *k);
            Some(Value::Sequence(merge_unique(base, over, kind)))
        }
        (["services", _, attr], Value::Sequence(mut base), Value::Sequence(over))
            if SET_LISTS.contains(attr) =>
        {
            for item in over {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
            Some(Value::Sequence(base))
        }
        (["services", _, "logging"], Value::Mapping(base), Value::Mapping(over))
            if base.get("driver").is_some()
                && over.get("driver").is_some()
                && base.get("driver") != over.get("driver") =>
        {
            Some(Value::Mapping(over))
        }
        (_, Value::Mapping(base), Value::Mapping(over)) => {
            Some(Value::Mapping(merge_mappings(base, over, path)))
        }
        (_, Value::Sequence(mut base), Value::Sequence(over)) => {
            base.extend(over);
            Some(Value::Sequence(base))
        }
        (_, _, over) => Some(over),
    }
}

/// Merges two mappings key by key, keeping the earlier order.
pub(crate) fn merge_mappings(mut base: Mapping, over: Mapping, path: &[String]) -> Mapping {
    for (k, v) in over {
        let mut child = path.to_vec();
        child.push(key_name(&k).unwrap_or_default());
        match base.get_mut(&k) {
            Some(slot) => {
                let earlier = std::mem::take(slot);
                match merge(earlier, v, &child) {
                    Some(merged) => *slot = merged,
                    None => {
                        base.shift_remove(&k);
                    }
                }
            }
            None if is_tag(&v, "reset") => {}
            None => {
                let v = match v {
                    Value::Tagged(t) if t.tag == "override" => t.value,
                    other => other,
                };
                base.insert(k, v);
            }
        }
    }
    base
}

fn merge_unique(mut base: Sequence, over: Sequence, kind: Unique) -> Sequence {
    for entry in over {
        let key = kind.key(&entry);
        match key.and_then(|k| base.iter().position(|b| kind.key(b).as_deref() == Some(&k))) {
            Some(i) => base[i] = entry,
            None => base.push(entry),
        }
    }
    base
}

/// Removes later duplicates of a unique-resource list, the later entry taking the earlier
/// one's place (compose-go's `EnforceUnicity`).
pub(crate) fn dedupe_unique(list: Sequence, kind: Unique) -> Sequence {
    merge_unique(Sequence::new(), list, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).expect("valid yaml")
    }

    fn normalized(text: &str) -> Value {
        let mut doc = yaml(text);
        let mut diag = Diag::default();
        if let Some(Value::Mapping(services)) = doc.get_mut("services") {
            for (_, svc) in services.iter_mut() {
                if let Value::Mapping(svc) = svc {
                    normalize_service(svc, "services.x", &mut diag);
                }
            }
        }
        assert!(diag.errors.is_empty(), "{:?}", diag.errors);
        doc
    }

    #[test]
    fn two_files_merge_as_merge_md_says() {
        let base = normalized(
            "services:
  web:
    image: a
    command: [echo, foo]
    environment: [A=1, B=2]
    ports: ['8080:80']
    volumes: ['foo:/work', '/data']
    cap_add: [NET_ADMIN]
    depends_on: [db]
    logging: {driver: json-file, options: {max-size: 1m}}
",
        );
        let over = normalized(
            "services:
  web:
    image: b
    command: [echo, bar]
    environment: {B: 3, C: x}
    ports: ['8443:443', '8080:80']
    volumes: ['bar:/work']
    cap_add: [NET_ADMIN, SYS_TIME]
    depends_on: {db: {condition: service_healthy}}
    logging: {driver: syslog}
",
        );
        let merged = merge(base, over, &[]).expect("merged");
        let want = yaml(
            "services:
  web:
    image: b
    command: [echo, bar]
    environment: {A: '1', B: '3', C: x}
    ports: ['8080:80', '8443:443']
    volumes: ['bar:/work', '/data']
    cap_add: [NET_ADMIN, SYS_TIME]
    depends_on: {db: {condition: service_healthy, required: true}}
    logging: {driver: syslog}
",
        );
        assert_eq!(merged, want);
    }

    #[test]
    fn reset_and_override_tags() {
        let base = normalized(
            "services:
  app:
    image: myapp
    ports: ['8080:80']
    environment: {FOO: BAR, KEEP: x}
",
        );
        let over = normalized(
            "services:
  app:
    ports: !override ['8443:443']
    environment:
      FOO: !reset null
    image: !reset null
",
        );
        let merged = merge(base, over, &[]).expect("merged");
        let want = yaml(
            "services:
  app:
    ports: ['8443:443']
    environment: {KEEP: x}
",
        );
        assert_eq!(merged, want);
    }

    #[test]
    fn unique_keys() {
        let key = |kind: Unique, text: &str| kind.key(&yaml(text));
        assert_eq!(key(Unique::Volumes, "./a:/b:ro").as_deref(), Some("/b"));
        assert_eq!(key(Unique::Volumes, "/anon").as_deref(), Some("/anon"));
        assert_eq!(key(Unique::Volumes, "{target: /t}").as_deref(), Some("/t"));
        assert_eq!(
            key(Unique::Secrets, "db").as_deref(),
            Some("/run/secrets/db")
        );
        assert_eq!(key(Unique::Configs, "{source: c}").as_deref(), Some("/c"));
        assert_eq!(
            key(Unique::Ports, "{target: 80, published: 8080}").as_deref(),
            Some("0.0.0.0:8080:80/tcp")
        );
        assert_eq!(key(Unique::Ports, "80").as_deref(), Some("80"));
    }
}
