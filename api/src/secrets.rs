//! Secrets: named values kept encrypted by the control plane and given to the containers that
//! reference them, in ECS's shape — a container definition's `secrets: [{"name": "DB_PASSWORD",
//! "valueFrom": "flotilla:NAME[:JSON-KEY][:VERSION]"}]`, after Secrets Manager's
//! `arn:…:secret:NAME:json-key:version-stage:version-id` (see "Pass Secrets Manager secrets
//! through Amazon ECS environment variables" in the ECS developer guide).
//!
//! A value is at most [`MAX_VALUE`] bytes (Secrets Manager's limit). It travels in JSON as
//! base64 ([`SecretValue`]) and is never printed: its `Debug` says only its size.

use serde::{Deserialize, Serialize};

/// The largest value, bytes: Secrets Manager's `SecretString`/`SecretBinary` limit (65,536
/// bytes, "Quotas for AWS Secrets Manager").
pub const MAX_VALUE: usize = 65_536;

/// The prefix of a `valueFrom` that names a Flotilla secret.
pub const SCHEME: &str = "flotilla:";

/// Where a container finds its secrets as files (Docker Swarm's place for them).
pub const FILES_DIR: &str = "/run/secrets";

/// A secret's value: bytes, base64 in JSON, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(pub Vec<u8>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(SecretValue)
            .map_err(|_| serde::de::Error::custom("a secret value must be base64"))
    }
}

/// `POST /v1/secrets` (create) and `POST /v1/secrets/{name}/versions` (rotate, `name` unset);
/// configs' the same (`/v1/configs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretPut {
    /// The secret's name (create only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its value.
    pub value: SecretValue,
}

/// One version of a secret, as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersionInfo {
    /// 1 for the value it was created with, one more for each rotation.
    pub version: u32,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The value's size, bytes.
    pub size: usize,
}

/// A secret, as `GET /v1/secrets[/{name}]` shows it: metadata only; a config's the same
/// (`GET /v1/configs[/{name}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Its versions, oldest first; the last is what an unversioned reference gets.
    pub versions: Vec<SecretVersionInfo>,
    /// Active task definition revisions that reference it (`family:revision`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

impl SecretInfo {
    /// The newest version's number.
    pub fn latest(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

/// A `valueFrom` naming a Flotilla secret: `flotilla:NAME[:JSON-KEY][:VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// The secret.
    pub secret: String,
    /// A key of the value's JSON object, whose value is given instead of the whole.
    pub json_key: Option<String>,
    /// A version; none: the newest when the task is placed.
    pub version: Option<u32>,
}

impl SecretRef {
    /// Parses `text`: `None` when it does not start with [`SCHEME`] (an AWS ARN, say), else
    /// the reference or what is wrong with it.
    pub fn parse(text: &str) -> Option<Result<Self, String>> {
        let rest = text.strip_prefix(SCHEME)?;
        let mut parts = rest.split(':');
        let secret = parts.next().unwrap_or_default().to_string();
        let json_key = parts.next().filter(|k| !k.is_empty()).map(str::to_string);
        let version = parts.next();
        if parts.next().is_some() {
            return Some(Err(
                "has more than flotilla:NAME[:JSON-KEY][:VERSION]".to_string()
            ));
        }
        if let Some(why) = name_problem(&secret) {
            return Some(Err(format!("secret name '{secret}': {why}")));
        }
        let version = match version.filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Some(Err(format!(
                        "version '{v}': a version is a whole number from 1"
                    )))
                }
            },
        };
        Some(Ok(Self {
            secret,
            json_key,
            version,
        }))
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}", self.secret)?;
        match (&self.json_key, self.version) {
            (None, None) => Ok(()),
            (Some(k), None) => write!(f, ":{k}"),
            (k, Some(v)) => write!(f, ":{}:{v}", k.as_deref().unwrap_or("")),
        }
    }
}

/// What is wrong with secret name `name`, if anything: 1–128 letters, digits, `_`, `-` or `.`,
/// starting with a letter or digit (it is a key of the store and part of `valueFrom`, whose
/// separator is `:`).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 128 {
        return Some("use 1-128 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("start with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Some("use only letters, digits, '_', '-' and '.'");
    }
    None
}

/// The part of `value` a reference gives: the whole, or with `json_key` the value of that key
/// of the JSON object `value` is (a string as it is, anything else as JSON text). The error
/// names the key, never the value.
pub fn pick(value: &[u8], json_key: Option<&str>) -> Result<Vec<u8>, String> {
    let Some(key) = json_key else {
        return Ok(value.to_vec());
    };
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value)
        .map_err(|_| format!("JSON key '{key}': the value is not a JSON object"))?;
    match object.get(key) {
        None => Err(format!("JSON key '{key}': the value has no such key")),
        Some(serde_json::Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

/// What is wrong with a value to store, if anything.
pub fn value_problem(value: &[u8]) -> Option<String> {
    if value.is_empty() {
        return Some("a secret's value is empty".to_string());
    }
    if value.len() > MAX_VALUE {
        return Some(format!(
            "a secret's value is {} bytes; at most {MAX_VALUE} are stored",
            value.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_secrets_manager_arns_do() {
        let r = |s: &str| SecretRef::parse(s).expect("a value");
        assert_eq!(
            r("flotilla:db").expect("a value"),
            SecretRef {
                secret: "db".into(),
                json_key: None,
                version: None
            }
        );
        assert_eq!(
            r("flotilla:db:password")
                .expect("a value")
                .json_key
                .as_deref(),
            Some("password")
        );
        let pinned = r("flotilla:db::3").expect("a value");
        assert_eq!((pinned.json_key, pinned.version), (None, Some(3)));
        let both = r("flotilla:db:user:2").expect("a value");
        assert_eq!(both.to_string(), "flotilla:db:user:2");
        assert_eq!(
            r("flotilla:db::3").expect("a value").to_string(),
            "flotilla:db::3"
        );
        assert!(SecretRef::parse("arn:aws:secretsmanager:eu:1:secret:x").is_none());
        for bad in [
            "flotilla:",
            "flotilla:-x",
            "flotilla:a b",
            "flotilla:db::0",
            "flotilla:db::v2",
            "flotilla:db:k:1:extra",
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_json_key_picks_its_value_and_errors_never_show_the_value() {
        let v = br#"{"user": "app", "port": 5432, "password": "hunter2"}"#;
        assert_eq!(pick(v, Some("user")).expect("a value"), b"app");
        assert_eq!(pick(v, Some("port")).expect("a value"), b"5432");
        assert_eq!(pick(v, None).expect("a value"), v.to_vec());
        let e = pick(v, Some("nope")).expect_err("an error");
        assert!(e.contains("nope") && !e.contains("hunter2"), "{e}");
        let e = pick(b"hunter2", Some("user")).expect_err("an error");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn values_are_base64_on_the_wire_and_never_debug_printed() {
        let v = SecretValue(b"hunter2".to_vec());
        let json = serde_json::to_string(&v).expect("a value");
        assert_eq!(json, "\"aHVudGVyMg==\"");
        assert_eq!(
            serde_json::from_str::<SecretValue>(&json).expect("a value"),
            v
        );
        assert!(!format!("{v:?}").contains("hunter2"));
        assert!(serde_json::from_str::<SecretValue>("\"***\"").is_err());
        assert!(value_problem(b"").is_some());
        assert!(value_problem(&vec![b'x'; MAX_VALUE + 1]).is_some());
        assert!(value_problem(&vec![b'x'; MAX_VALUE]).is_none());
    }
}
