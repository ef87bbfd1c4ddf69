//! Configuration files of the daemons (`/etc/flotilla/*.toml`): TOML whose keys are checked
//! before the values are read, so a misspelled key fails with its name and the nearest known
//! one instead of being ignored.

use serde::de::DeserializeOwned;

/// Parses `text` (the file at `path`) into `T`, whose fields are `known`.
pub fn parse<T: DeserializeOwned>(path: &str, text: &str, known: &[&str]) -> Result<T, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("{path}: {e}"))?;
    let mut problems = Vec::new();
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(match nearest(key, known) {
                Some(k) => format!("unknown key '{key}' (did you mean '{k}'?)"),
                None => format!("unknown key '{key}' (known: {})", known.join(", ")),
            });
        }
    }
    if !problems.is_empty() {
        return Err(format!("{path}: {}", problems.join("; ")));
    }
    toml::from_str(text).map_err(|e| format!("{path}: {e}"))
}

/// An example file with its commented-out settings (`# key = value`, for known keys) turned
/// on: what the daemons' tests parse to keep the shipped examples true.
pub fn uncomment(example: &str, known: &[&str]) -> String {
    example
        .lines()
        .map(|l| {
            let setting = l.strip_prefix("# ").filter(|rest| {
                rest.split_once(" = ")
                    .is_some_and(|(k, _)| known.contains(&k))
            });
            setting.unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The known key closest to `key`, if close enough to be a likely typo. Case does not count
/// (`containerdefinitions` is `containerDefinitions` misspelled), nor `-` for `_`.
pub fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&key, &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct C {
        listen: Option<String>,
        session_rate: Option<u32>,
    }

    const KNOWN: &[&str] = &["data_dir", "listen", "session_rate"];

    #[test]
    fn a_misspelled_key_names_the_nearest_one() {
        let c: C = parse("f.toml", "listen = \"0.0.0.0:1\"\nsession_rate = 5", KNOWN).expect("ok");
        assert_eq!(
            (c.listen.as_deref(), c.session_rate),
            (Some("0.0.0.0:1"), Some(5))
        );
        let e = parse::<C>("f.toml", "sesion_rate = 5", KNOWN).expect_err("typo");
        assert_eq!(
            e,
            "f.toml: unknown key 'sesion_rate' (did you mean 'session_rate'?)"
        );
        let e = parse::<C>("f.toml", "data-dir = \"/x\"", KNOWN).expect_err("dash");
        assert!(e.contains("did you mean 'data_dir'"), "{e}");
        let e = parse::<C>("f.toml", "colour = 1", KNOWN).expect_err("unrelated");
        assert!(
            e.contains("unknown key 'colour' (known: data_dir, listen, session_rate)"),
            "{e}"
        );
        let e = parse::<C>("f.toml", "session_rate = \"x\"", KNOWN).expect_err("type");
        assert!(
            e.starts_with("f.toml: ") && e.contains("session_rate"),
            "{e}"
        );
    }
}
