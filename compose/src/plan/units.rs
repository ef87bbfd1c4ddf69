//! Compose's scalars: durations, byte sizes, port specifications, booleans and numbers written
//! as YAML or as strings.

use serde_json::{Map, Number, Value};

/// The YAML document as JSON: keys as strings (`1:` is `"1"`), tags dropped (the loader
/// resolved `!reset` and `!override`), floats that JSON cannot hold as strings.
pub fn to_json(v: &yaml_serde::Value) -> Value {
    use yaml_serde::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_u64() {
                Value::Number(i.into())
            } else if let Some(i) = n.as_i64() {
                Value::Number(i.into())
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Number::from_f64(f).map_or_else(|| Value::String(n.to_string()), Value::Number)
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(s) => Value::Array(s.iter().map(to_json).collect()),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Null => "null".into(),
                    other => scalar_text(&to_json(other)).unwrap_or_else(|| format!("{other:?}")),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        Y::Tagged(t) => to_json(&t.value),
    }
}

/// What a value is, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A scalar as text: strings as they are, numbers and booleans as YAML writes them.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A boolean, also written as a string (`"true"`), as the Compose schema allows.
pub fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("expected true or false, found {}", describe(other))),
    }
}

/// A whole number from `min` to `max`, also written as a string.
pub fn integer(v: &Value, min: i64, max: i64) -> Result<i64, String> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!(
            "{} is not from {min} to {max}",
            scalar_text(v).unwrap_or_default()
        )),
        None => Err(format!("expected a whole number, found {}", describe(v))),
    }
}

/// A number (`1.5`, `"0.5"`).
pub fn number(v: &Value) -> Result<f64, String> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("expected a number of 0 or more, found {}", describe(v)))
}

/// A value as a message shows it: the scalar itself (a long string cut after 80 characters),
/// else its kind.
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => match s.char_indices().nth(80) {
            Some((at, _)) => format!("'{}…'", &s[..at]),
            None => format!("'{s}'"),
        },
        Value::Number(_) | Value::Bool(_) => scalar_text(v).unwrap_or_default(),
        other => kind(other).to_string(),
    }
}

/// A Compose duration (`1m30s`, `10s`, `500ms`, `1.5h`; a bare number is seconds), in
/// seconds.
pub fn duration(v: &Value) -> Result<f64, String> {
    let text = match v {
        Value::Number(n) => {
            return n
                .as_f64()
                .filter(|n| *n >= 0.0)
                .ok_or_else(|| bad_duration(v))
        }
        Value::String(s) => s.trim().to_string(),
        other => return Err(bad_duration(other)),
    };
    if text.is_empty() {
        return Err(bad_duration(v));
    }
    if let Ok(n) = text.parse::<f64>() {
        return if n >= 0.0 {
            Ok(n)
        } else {
            Err(bad_duration(v))
        };
    }
    let mut total = 0.0;
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad_duration(v))?;
        let (num, after) = rest.split_at(digits);
        let n: f64 = num.parse().map_err(|_| bad_duration(v))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad_duration(v)),
        };
        total += n * scale;
        rest = next;
    }
    Ok(total)
}

fn bad_duration(v: &Value) -> String {
    format!(
        "{} is not a duration (such as 10s, 1m30s, 500ms)",
        describe(v)
    )
}

/// Whole seconds of a duration, rounded up (a check every 0.5 s is every second, not never).
pub fn whole_seconds(s: f64) -> u64 {
    let c = s.ceil();
    if c >= u64::MAX as f64 {
        u64::MAX
    } else {
        c as u64
    }
}

/// A Compose byte size (`1.5G`, `128M`, `2048m`, `128mb`, `64k`, a number of bytes), in
/// bytes. Units are powers of 1024, as Docker reads them.
pub fn bytes(v: &Value) -> Result<u64, String> {
    let bad = || {
        format!(
            "{} is not a size (bytes, or a number with b, k, m or g: 128m, 1.5g)",
            describe(v)
        )
    };
    let text = match v {
        Value::Number(n) => {
            return n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .ok_or_else(bad)
        }
        Value::String(s) => s.trim().to_ascii_lowercase(),
        _ => return Err(bad()),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let b = (n * scale).round();
    if !b.is_finite() || b < 0.0 || b >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(b as u64)
}

/// Bytes in MiB, rounded up.
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// A port or a range of ports (`80`, `8000-8001`).
pub fn port_range(text: &str) -> Result<(u16, u16), String> {
    let one = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("'{text}' is not a port or a range of ports (1 to 65535)"))
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("'{text}': the range ends before it starts"));
            }
            Ok((a, b))
        }
        None => one(text).map(|p| (p, p)),
    }
}

/// The parts of a short port syntax `[[HOST_IP:]HOST_PORTS:]CONTAINER_PORTS[/PROTOCOL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortPort {
    pub host_ip: Option<String>,
    pub published: Option<String>,
    pub target: String,
    pub protocol: Option<String>,
}

/// Splits a short port syntax (an IPv6 host address in brackets: `[::1]:80:80`).
pub fn short_port(text: &str) -> Result<ShortPort, String> {
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((r, p)) => (r, Some(p.to_string())),
        None => (text, None),
    };
    let (host_ip, rest) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, tail) = after
            .split_once("]:")
            .ok_or_else(|| format!("'{text}': an IPv6 address in brackets is followed by ':'"))?;
        (Some(ip.to_string()), tail)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [t]) => (None, None, *t),
        (None, [p, t]) => (None, Some(*p), *t),
        (None, [ip, p, t]) => (Some(ip.to_string()), Some(*p), *t),
        (Some(ip), [p, t]) => (Some(ip), Some(*p), *t),
        _ => {
            return Err(format!(
                "'{text}' is not [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL]"
            ))
        }
    };
    Ok(ShortPort {
        host_ip: ip.filter(|i| !i.is_empty()),
        published: published.filter(|p| !p.is_empty()).map(str::to_string),
        target: target.to_string(),
        protocol,
    })
}

/// A list of strings from a string (one item) or a list of scalars.
pub fn string_or_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                scalar_text(i)
                    .ok_or_else(|| format!("expected a list of strings, found {} in it", kind(i)))
            })
            .collect(),
        other => Err(format!(
            "expected a string or a list of strings, found {}",
            kind(other)
        )),
    }
}

/// `KEY: VALUE` pairs from a mapping or a list of `KEY=VALUE` (`KEY` alone: no value), as
/// `environment`, `labels`, `sysctls` are written. Values are text (`null`: none).
pub fn list_or_dict(v: &Value) -> Result<Vec<(String, Option<String>)>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Null => Ok((k.clone(), None)),
                other => scalar_text(other)
                    .map(|s| (k.clone(), Some(s)))
                    .ok_or_else(|| {
                        format!(
                            "{k}: expected a string, number or boolean, found {}",
                            kind(other)
                        )
                    }),
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s.clone(), None),
                }),
                other => Err(format!(
                    "expected KEY=VALUE strings in the list, found {}",
                    kind(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "expected a mapping or a list of KEY=VALUE, found {}",
            kind(other)
        )),
    }
}

/// A file mode: a string of octal digits (`"0440"`), or a number that is the mode's value (as
/// YAML reads `0o440`).
pub fn mode(v: &Value) -> Result<u32, String> {
    let m = match v {
        Value::String(s) => u32::from_str_radix(s.trim(), 8).ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    m.filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{} is not a file mode (octal, 0000 to 0777)", describe(v)))
}

/// A user or group id, written as a number or a string of digits.
pub fn id(v: &Value) -> Result<u32, String> {
    integer(v, 0, i64::from(u32::MAX) - 1)
        .map(|n| n as u32)
        .map_err(|_| format!("{} is not a numeric id", describe(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_as_compose_writes_them() {
        for (text, secs) in [
            (json!("10s"), 10.0),
            (json!("1m30s"), 90.0),
            (json!("500ms"), 0.5),
            (json!("1h"), 3600.0),
            (json!("1.5s"), 1.5),
            (json!(20), 20.0),
        ] {
            assert_eq!(duration(&text).expect("a duration"), secs, "{text}");
        }
        for bad in [
            json!("ten"),
            json!("10x"),
            json!(""),
            json!("s"),
            json!([1]),
        ] {
            assert!(duration(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_are_powers_of_1024() {
        for (text, b) in [
            (json!("1.5G"), 1536 << 20),
            (json!("128M"), 128 << 20),
            (json!("2048m"), 2048 << 20),
            (json!("128mb"), 128 << 20),
            (json!("64k"), 64 << 10),
            (json!(1048576), 1 << 20),
            (json!("1000"), 1000),
        ] {
            assert_eq!(bytes(&text).expect("a size"), b, "{text}");
        }
        assert_eq!(mib(1), 1);
        assert_eq!(mib(1 << 20), 1);
        for bad in [json!("lots"), json!("1.5X"), json!(true)] {
            assert!(bytes(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_ports_split_as_compose_splits_them() {
        let p = short_port("127.0.0.1:9229:9229").expect("valid");
        assert_eq!(
            (
                p.host_ip.as_deref(),
                p.published.as_deref(),
                p.target.as_str()
            ),
            (Some("127.0.0.1"), Some("9229"), "9229")
        );
        let p = short_port("53:53/udp").expect("valid");
        assert_eq!(p.protocol.as_deref(), Some("udp"));
        let p = short_port("[::1]:80:8080").expect("valid");
        assert_eq!(p.host_ip.as_deref(), Some("::1"));
        let p = short_port(":443:443").expect("valid");
        assert_eq!((p.host_ip, p.published.as_deref()), (None, Some("443")));
        assert!(short_port("1:2:3:4").is_err());
        assert_eq!(port_range("8000-8001"), Ok((8000, 8001)));
        assert!(port_range("0").is_err() && port_range("9-8").is_err());
    }
}
