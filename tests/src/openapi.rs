//! The operator API's description (`api/openapi.yaml`) as a checker of real answers: which
//! operations exist, which statuses each may answer, and a validator for the JSON Schema subset
//! the document uses (`$ref`, `type`, `enum`, `properties`, `required`, `additionalProperties`,
//! `items`, `minItems`, `minimum`, `maximum`). A keyword outside that subset is an error, so a
//! schema is never silently left unchecked.

use std::path::PathBuf;

use serde_json::Value;

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "default", "title", "example"];

/// The parsed document.
#[derive(Debug)]
pub struct Doc {
    root: Value,
}

/// Where the document lives in the repository.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.yaml")
}

impl Doc {
    /// Loads `api/openapi.yaml`.
    pub fn load() -> Self {
        let text = std::fs::read_to_string(path()).expect("api/openapi.yaml");
        let root: Value = yaml_serde::from_str(&text).expect("api/openapi.yaml is YAML");
        Self { root }
    }

    /// Every documented operation: (METHOD, path template).
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in self.root["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// The headers documented for answer `status` of `METHOD template`.
    pub fn response_headers(&self, method: &str, template: &str, status: u16) -> Vec<String> {
        let response =
            &self.root["paths"][template][method.to_lowercase()]["responses"][status.to_string()];
        self.resolve(response)
            .ok()
            .and_then(|r| r.get("headers"))
            .and_then(Value::as_object)
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return Ok(v);
            };
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("only local references: {r}"))?;
            v = self
                .root
                .pointer(pointer)
                .ok_or_else(|| format!("dangling reference {r}"))?;
        }
        Err("reference chain too long".into())
    }

    /// Checks an answer of `METHOD template`: its status is documented, and its body matches
    /// the documented schema (every line of it for `application/x-ndjson`; the whole text as a
    /// string for `text/*`).
    pub fn check(
        &self,
        method: &str,
        template: &str,
        status: u16,
        body: &[u8],
    ) -> Result<(), String> {
        let op = self.root["paths"]
            .get(template)
            .and_then(|p| p.get(method.to_lowercase()))
            .ok_or_else(|| format!("{method} {template} is not documented"))?;
        let response = op["responses"]
            .get(status.to_string())
            .ok_or_else(|| format!("{method} {template}: status {status} is not documented"))?;
        let response = self.resolve(response)?;
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return if body.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{method} {template} {status}: documented without a body"
                ))
            };
        };
        let (kind, media) = content.iter().next().ok_or("empty content")?;
        let schema = &media["schema"];
        if kind.starts_with("text/") {
            // Text (the metrics): a string, as its schema says.
            let text = std::str::from_utf8(body)
                .map_err(|e| format!("{method} {template} {status}: not UTF-8 text: {e}"))?;
            let mut errors = Vec::new();
            self.validate(schema, &Value::String(text.to_string()), "$", &mut errors);
            return if errors.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{method} {template} {status}: {}",
                    errors.join("; ")
                ))
            };
        }
        let docs: Vec<&[u8]> = if kind == "application/x-ndjson" {
            body.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            vec![body]
        };
        for d in docs {
            let value: Value = serde_json::from_slice(d).map_err(|e| {
                format!(
                    "{method} {template} {status}: not JSON ({e}): {}",
                    String::from_utf8_lossy(d)
                )
            })?;
            let mut errors = Vec::new();
            self.validate(schema, &value, "$", &mut errors);
            if !errors.is_empty() {
                return Err(format!(
                    "{method} {template} {status}: {}\nbody: {value}",
                    errors.join("; ")
                ));
            }
        }
        Ok(())
    }

    /// Validates `value` against `schema`, adding one error per mismatch.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => return errors.push(format!("{at}: {e}")),
        };
        let Some(map) = schema.as_object() else {
            return errors.push(format!("{at}: schema is not an object"));
        };
        for (k, rule) in map {
            match k.as_str() {
                "type" => {
                    let types: Vec<&str> = match rule {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => return errors.push(format!("{at}: bad type rule")),
                    };
                    if !types.iter().any(|t| is_type(value, t)) {
                        errors.push(format!(
                            "{at}: expected {}, found {value}",
                            types.join(" or ")
                        ));
                    }
                }
                "enum" => {
                    if !rule.as_array().is_some_and(|a| a.contains(value)) {
                        errors.push(format!("{at}: {value} is not one of {rule}"));
                    }
                }
                "required" => {
                    if let Some(obj) = value.as_object() {
                        for r in rule
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                        {
                            if !obj.contains_key(r) {
                                errors.push(format!("{at}: '{r}' is missing"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let (Some(obj), Some(props)) = (value.as_object(), rule.as_object()) {
                        for (name, v) in obj {
                            if let Some(s) = props.get(name) {
                                self.validate(s, v, &format!("{at}.{name}"), errors);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(obj) = value.as_object() {
                        let known = map.get("properties").and_then(Value::as_object);
                        for (name, v) in obj {
                            if known.is_some_and(|k| k.contains_key(name)) {
                                continue;
                            }
                            match rule {
                                Value::Bool(false) => {
                                    errors.push(format!("{at}: '{name}' is not documented"))
                                }
                                Value::Bool(true) => {}
                                s => self.validate(s, v, &format!("{at}.{name}"), errors),
                            }
                        }
                    }
                }
                "items" => {
                    for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                        self.validate(rule, v, &format!("{at}[{i}]"), errors);
                    }
                }
                "minItems" => {
                    if let (Some(a), Some(n)) = (value.as_array(), rule.as_u64()) {
                        if (a.len() as u64) < n {
                            errors.push(format!("{at}: fewer than {n} items"));
                        }
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(v), Some(n)) = (value.as_f64(), rule.as_f64()) {
                        if (k == "minimum" && v < n) || (k == "maximum" && v > n) {
                            errors.push(format!("{at}: {v} is outside {k} {n}"));
                        }
                    }
                }
                other if ANNOTATIONS.contains(&other) => {}
                other => errors.push(format!("{at}: unsupported schema keyword '{other}'")),
            }
        }
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validator_catches_what_it_claims_to() {
        let doc = Doc {
            root: serde_json::json!({"components": {"schemas": {"T": {
                "type": "object", "required": ["a"], "additionalProperties": false,
                "properties": {"a": {"type": "integer", "minimum": 1},
                               "b": {"type": "array", "items": {"enum": ["x"]}}}
            }}}}),
        };
        let t = serde_json::json!({"$ref": "#/components/schemas/T"});
        let errs = |v: Value| {
            let mut e = Vec::new();
            doc.validate(&t, &v, "$", &mut e);
            e
        };
        assert!(errs(serde_json::json!({"a": 2, "b": ["x"]})).is_empty());
        assert_eq!(errs(serde_json::json!({"b": []})), ["$: 'a' is missing"]);
        assert_eq!(errs(serde_json::json!({"a": 0})).len(), 1);
        assert_eq!(errs(serde_json::json!({"a": "1"})).len(), 1);
        assert_eq!(
            errs(serde_json::json!({"a": 1, "c": 1})),
            ["$: 'c' is not documented"]
        );
        assert_eq!(errs(serde_json::json!({"a": 1, "b": ["y"]})).len(), 1);
        let mut e = Vec::new();
        doc.validate(&serde_json::json!({"oneOf": []}), &Value::Null, "$", &mut e);
        assert_eq!(e, ["$: unsupported schema keyword 'oneOf'"]);
    }
}
