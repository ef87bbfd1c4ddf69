//! The top-level keys: `volumes`, `secrets` and `configs` (what services refer to), `networks`
//! (warned), and the keys that are the loader's.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::units::{kind, scalar_text};
use super::{Cx, ValueKind, ValueOrigin, ValueSource};

/// What services refer to, read from the top level.
#[derive(Debug, Default)]
pub struct Globals {
    /// Compose volume name → its name on the nodes.
    pub volumes: BTreeMap<String, String>,
    /// Compose secret name → Flotilla secret name.
    pub secrets: BTreeMap<String, String>,
    /// Compose config name → Flotilla config name.
    pub configs: BTreeMap<String, String>,
    /// Where the values of declared secrets and configs come from.
    pub values: Vec<ValueSource>,
}

/// Reads the top level, warning about what does not map.
pub fn read(cx: &mut Cx, doc: &Map<String, Value>) -> Globals {
    let mut g = Globals::default();
    for (key, v) in doc {
        match key.as_str() {
            // The loader read these: the project's name, the obsolete version (it warns).
            "name" | "version" | "services" => {}
            k if k.starts_with("x-") => {}
            "volumes" => volumes(cx, v, &mut g),
            "secrets" => values(cx, ValueKind::Secret, v, &mut g),
            "configs" => values(cx, ValueKind::Config, v, &mut g),
            "networks" => networks(cx, v),
            "include" => cx.warn(
                "include",
                "not read here: the loader includes the files (this document did not come from it)",
            ),
            "models" => cx.warn("models", "not mapped: Flotilla runs no language models"),
            _ => cx.not_compose(key, key, super::keys::TOP),
        }
    }
    g
}

/// Each declared network: warned once, as services are not separated by network.
fn networks(cx: &mut Cx, v: &Value) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (name, def) in m {
                if name.starts_with("x-") {
                    continue;
                }
                let external = def
                    .get("external")
                    .is_some_and(|e| e != &Value::Bool(false));
                cx.warn(
                    &format!("networks.{name}"),
                    if external {
                        "not mapped: tasks join no external network; every service of a \
                         project reaches every other by its name"
                    } else {
                        "not mapped: every service of a project reaches every other by its \
                         name; networks are not separated"
                    },
                );
            }
        }
        other => cx.problem(
            "networks",
            format!("expected a mapping, found {}", kind(other)),
        ),
    }
}

/// The letters, digits, `_` and `-` a volume name may hold, others replaced by `-`.
fn volume_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `external`'s name, if the entry is external: `external: true` (with the entry's `name`) or
/// the obsolete `external: {name: N}`.
fn external(cx: &mut Cx, path: &str, m: &Map<String, Value>) -> Option<Option<String>> {
    match m.get("external") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(None),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(None),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => None,
        Some(Value::Object(e)) => match e.get("name") {
            Some(Value::String(n)) => Some(Some(n.clone())),
            _ => Some(None),
        },
        Some(other) => {
            cx.problem(
                &format!("{path}.external"),
                format!("expected true or false, found {}", kind(other)),
            );
            None
        }
    }
}

fn volumes(cx: &mut Cx, v: &Value, g: &mut Globals) {
    let m = match v {
        Value::Null => return,
        Value::Object(m) => m,
        other => {
            cx.problem(
                "volumes",
                format!("expected a mapping, found {}", kind(other)),
            );
            return;
        }
    };
    for (name, def) in m {
        if name.starts_with("x-") {
            continue;
        }
        let path = format!("volumes.{name}");
        let empty = Map::new();
        let d = match def {
            Value::Null => &empty,
            Value::Object(d) => d,
            other => {
                cx.problem(&path, format!("expected a mapping, found {}", kind(other)));
                continue;
            }
        };
        let own_name = match d.get("name") {
            None | Some(Value::Null) => None,
            Some(v) => match scalar_text(v) {
                Some(s) => Some(s),
                None => {
                    cx.problem(&format!("{path}.name"), "expected a string");
                    None
                }
            },
        };
        let ext = external(cx, &path, d);
        let wanted = match (&ext, own_name) {
            (Some(Some(n)), _) => n.clone(),
            (_, Some(n)) => n,
            // Compose names a project's volume PROJECT_NAME.
            (_, None) => format!("{}_{name}", cx.project),
        };
        let flotilla = volume_name(&wanted);
        if flotilla != wanted || flotilla.len() > 255 || flotilla.is_empty() {
            if ext.is_some() || flotilla.len() > 255 || flotilla.is_empty() {
                cx.problem(
                    &path,
                    format!(
                        "'{wanted}' cannot name a volume on a node (1-255 letters, digits, '_' or \
                         '-')"
                    ),
                );
                continue;
            }
            cx.warn(
                &path,
                format!("named {flotilla} on the nodes ('{wanted}' is not a volume name there)"),
            );
        }
        for (k, val) in d {
            let kp = format!("{path}.{k}");
            match k.as_str() {
                "name" | "external" => {}
                k if k.starts_with("x-") => {}
                "driver" => match val.as_str() {
                    None if val.is_null() => {}
                    Some("local") => {}
                    _ => cx.warn(
                        &kp,
                        format!(
                            "{}: not mapped: a node's volumes are local directories",
                            super::units::describe(val)
                        ),
                    ),
                },
                "driver_opts" => {
                    if val.as_object().is_some_and(|o| !o.is_empty()) {
                        cx.warn(
                            &kp,
                            "not mapped: a node's volumes are plain local directories",
                        );
                    }
                }
                "labels" => {
                    if !val.is_null() {
                        cx.warn(&kp, "not mapped: volumes have no labels");
                    }
                }
                _ => cx.not_compose(&kp, k, super::keys::VOLUME),
            }
        }
        g.volumes.insert(name.clone(), flotilla);
    }
}

/// An absolute path: as the loader leaves it, or relative to the project directory.
pub fn absolute(cx: &Cx, p: &str) -> PathBuf {
    let path = Path::new(p);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cx.project_dir.join(path)
    };
    // Lexically, as Compose does: `..` of a path never looked at on disk.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Top-level `secrets` or `configs`.
fn values(cx: &mut Cx, what: ValueKind, v: &Value, g: &mut Globals) {
    let top = match what {
        ValueKind::Secret => "secrets",
        ValueKind::Config => "configs",
    };
    let m = match v {
        Value::Null => return,
        Value::Object(m) => m,
        other => {
            cx.problem(top, format!("expected a mapping, found {}", kind(other)));
            return;
        }
    };
    for (name, def) in m {
        if name.starts_with("x-") {
            continue;
        }
        let path = format!("{top}.{name}");
        let Some(d) = def.as_object() else {
            cx.problem(
                &path,
                format!(
                    "expected a mapping (file, environment{} or external), found {}",
                    if what == ValueKind::Config {
                        ", content"
                    } else {
                        ""
                    },
                    kind(def)
                ),
            );
            continue;
        };
        let own_name = d.get("name").and_then(scalar_text);
        let ext = external(cx, &path, d);
        let mut origin = None;
        for (k, val) in d {
            let kp = format!("{path}.{k}");
            match k.as_str() {
                "name" | "external" => {}
                k if k.starts_with("x-") => {}
                "file" => match val.as_str() {
                    Some(f) => origin = Some(ValueOrigin::File(absolute(cx, f))),
                    None => cx.problem(&kp, format!("expected a path, found {}", kind(val))),
                },
                "environment" => match val.as_str() {
                    Some(e) if !e.is_empty() => origin = Some(ValueOrigin::Environment(e.into())),
                    _ => cx.problem(&kp, "expected the name of a variable"),
                },
                "content" if what == ValueKind::Config => match scalar_text(val) {
                    Some(c) => origin = Some(ValueOrigin::Content(c)),
                    None => cx.problem(&kp, format!("expected text, found {}", kind(val))),
                },
                "labels" => cx.warn(&kp, format!("not mapped: {top} have no labels")),
                "driver" | "driver_opts" => {
                    cx.warn(&kp, format!("not mapped: Flotilla keeps {top} itself"))
                }
                "template_driver" => cx.warn(&kp, "not mapped: values are given as they are"),
                _ => {
                    let known = match what {
                        ValueKind::Secret => super::keys::SECRET,
                        ValueKind::Config => super::keys::CONFIG,
                    };
                    cx.not_compose(&kp, k, known);
                }
            }
        }
        let flotilla = match (&ext, &own_name) {
            (Some(Some(n)), _) => n.clone(),
            (Some(None), Some(n)) => n.clone(),
            (Some(None), None) => name.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => format!("{}-{name}", cx.project),
        };
        if let Some(why) = flotilla_api::secrets::name_problem(&flotilla) {
            cx.problem(
                &path,
                format!(
                    "'{flotilla}' cannot name a Flotilla {}: {why}",
                    &top[..top.len() - 1]
                ),
            );
            continue;
        }
        match (ext, origin) {
            (Some(_), Some(_)) => cx.problem(
                &path,
                "external cannot go with file, environment or content",
            ),
            (Some(_), None) => {}
            (None, Some(origin)) => g.values.push(ValueSource {
                kind: what,
                name: flotilla.clone(),
                origin,
            }),
            (None, None) => cx.problem(
                &path,
                format!(
                    "needs file, environment{} or external: true",
                    if what == ValueKind::Config {
                        ", content"
                    } else {
                        ""
                    }
                ),
            ),
        }
        match what {
            ValueKind::Secret => g.secrets.insert(name.clone(), flotilla),
            ValueKind::Config => g.configs.insert(name.clone(), flotilla),
        };
    }
}
