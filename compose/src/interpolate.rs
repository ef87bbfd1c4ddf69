//! Variable substitution in Compose values, as `interpolation.md` of the Compose specification
//! gives it (and compose-go's `template` package does it).
//!
//! - `$VAR` and `${VAR}`: the value, or empty with a warning when `VAR` is unset.
//! - `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset): the default.
//! - `${VAR:?message}` (unset or empty) and `${VAR?message}` (unset): an error with the message.
//! - `${VAR:+alternative}` (set and not empty) and `${VAR+alternative}` (set): the alternative,
//!   else empty.
//! - Defaults, messages and alternatives are themselves interpolated, only when used:
//!   `${A:-${B:-x}}`.
//! - `$$` is a literal `$` (so `$${x}` gives `${x}`); a `$` not followed by a name, `{` or `$` is
//!   kept as it is ("Compose processes any string following a `$` sign as long as it makes it a
//!   valid variable definition").
//! - A `${` without its `}`, or a braced expression that is not one of the forms above
//!   (`${}`, `${A B}`, `${VAR/x/y}`), is an error.
//!
//! Names are `[_A-Za-z][_A-Za-z0-9]*`. Only values are interpolated, never mapping keys;
//! extension fields (`x-…`) are values like any other, as compose-go interpolates them too.

use yaml_serde::Value;

/// How deep defaults may nest (`${A:-${B:-${C:-…}}}`): bounds the recursion on hostile input.
const MAX_NESTING: usize = 32;

/// Looks a variable up: its value when set (possibly empty), `None` when unset.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Substitutes the variables in `template`. Names used while unset (and not defaulted) are
/// pushed to `unset`.
///
/// # Errors
/// A required variable that is missing (with its message) or a malformed `${…}`.
pub(crate) fn substitute(
    template: &str,
    lookup: Lookup<'_>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    substitute_at(template, lookup, unset, 0)
}

fn substitute_at(
    template: &str,
    lookup: Lookup<'_>,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "interpolation nested more than {MAX_NESTING} levels deep"
        ));
    }
    let bytes = template.as_bytes();
    let mut out = String::with_capacity(template.len());
    let mut literal_from = 0;
    let mut i = 0;
    // Every index used to slice is the position of an ASCII byte or the end, so always a char
    // boundary.
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&template[literal_from..i]);
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let close = closing_brace(bytes, i + 1).ok_or_else(|| {
                    format!("invalid interpolation format: `${{` without its `}}` in {template:?}; a literal $ is written $$")
                })?;
                let inner = &template[i + 2..close];
                out.push_str(&braced(inner, lookup, unset, depth)?);
                i = close + 1;
            }
            Some(&c) if c == b'_' || c.is_ascii_alphabetic() => {
                let end = name_end(bytes, i + 1);
                let name = &template[i + 1..end];
                match lookup(name) {
                    Some(value) => out.push_str(&value),
                    None => unset.push(name.to_owned()),
                }
                i = end;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
        literal_from = i;
    }
    out.push_str(&template[literal_from..]);
    Ok(out)
}

/// The end of the name starting at `from` (`[_A-Za-z0-9]*`).
fn name_end(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while end < bytes.len() && (bytes[end] == b'_' || bytes[end].is_ascii_alphanumeric()) {
        end += 1;
    }
    end
}

/// The index of the `}` closing the `{` at `open`, counting nested `${` (and skipping `$$`).
fn closing_brace(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 1usize;
    let mut j = open + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'$' if bytes.get(j + 1) == Some(&b'{') => {
                depth += 1;
                j += 2;
            }
            b'$' if bytes.get(j + 1) == Some(&b'$') => j += 2,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
                j += 1;
            }
            _ => j += 1,
        }
    }
    None
}

/// One `${…}` expression, without its braces.
fn braced(
    inner: &str,
    lookup: Lookup<'_>,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    let bytes = inner.as_bytes();
    let starts_well = bytes
        .first()
        .is_some_and(|&c| c == b'_' || c.is_ascii_alphabetic());
    let end = name_end(bytes, 0);
    if !starts_well {
        return Err(format!(
            "invalid interpolation format: ${{{inner}}} does not start with a variable name; a literal $ is written $$"
        ));
    }
    let name = &inner[..end];
    let rest = &inner[end..];
    let value = lookup(name);
    if rest.is_empty() {
        return Ok(value.unwrap_or_else(|| {
            unset.push(name.to_owned());
            String::new()
        }));
    }
    let (op, arg) = ["-", "?", "+"]
        .iter()
        .find_map(|op| {
            rest.strip_prefix(&format!(":{op}"))
                .map(|arg| (format!(":{op}"), arg))
                .or_else(|| rest.strip_prefix(op).map(|arg| ((*op).to_owned(), arg)))
        })
        .ok_or_else(|| {
            format!(
                "invalid interpolation format: ${{{inner}}}: after the name comes }}, :-, -, :?, ?, :+ or +"
            )
        })?;
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let mut nested = |arg: &str| substitute_at(arg, lookup, unset, depth + 1);
    match op.as_str() {
        ":-" if non_empty => Ok(value.unwrap_or_default()),
        ":-" => nested(arg),
        "-" if set => Ok(value.unwrap_or_default()),
        "-" => nested(arg),
        ":?" if non_empty => Ok(value.unwrap_or_default()),
        "?" if set => Ok(value.unwrap_or_default()),
        ":?" | "?" => Err(format!(
            "required variable {name} is missing a value: {}",
            nested(arg)?
        )),
        ":+" if non_empty => nested(arg),
        "+" if set => nested(arg),
        _ => Ok(String::new()),
    }
}

/// Interpolates every string scalar under `value` (mapping keys excepted). `path` names
/// `value` (`services.web`); problems are reported as `FILE: PATH: …`.
pub(crate) fn interpolate_tree(
    value: &mut Value,
    path: &str,
    file: &str,
    lookup: Lookup<'_>,
    warnings: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    match value {
        Value::String(s) => {
            let mut unset = Vec::new();
            match substitute(s, lookup, &mut unset) {
                Ok(new) => *s = new,
                Err(e) => errors.push(format!("{file}: {path}: {e}")),
            }
            for name in unset {
                warnings.push(format!(
                    "the {name} variable is not set; using an empty string ({file}: {path})"
                ));
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let p = format!("{path}[{i}]");
                interpolate_tree(item, &p, file, lookup, warnings, errors);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let p = crate::load::child_path(path, k);
                interpolate_tree(v, &p, file, lookup, warnings, errors);
            }
        }
        Value::Tagged(tagged) => {
            interpolate_tree(&mut tagged.value, path, file, lookup, warnings, errors);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env() -> BTreeMap<String, String> {
        [
            ("SET", "value"),
            ("EMPTY", ""),
            ("B", "bee"),
            ("MSG", "set MSG"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn run(template: &str) -> (Result<String, String>, Vec<String>) {
        let env = env();
        let lookup = |k: &str| env.get(k).cloned();
        let mut unset = Vec::new();
        let out = substitute(template, &lookup, &mut unset);
        (out, unset)
    }

    fn ok(template: &str) -> String {
        run(template).0.expect("interpolates")
    }

    #[test]
    fn every_form_of_the_specification() {
        let table = [
            ("$SET", "value"),
            ("${SET}", "value"),
            ("x${SET}y", "xvaluey"),
            ("$SET-suffix", "value-suffix"),
            ("${SET:-default}", "value"),
            ("${EMPTY:-default}", "default"),
            ("${UNSET:-default}", "default"),
            ("${SET-default}", "value"),
            ("${EMPTY-default}", ""),
            ("${UNSET-default}", "default"),
            ("${SET:?err}", "value"),
            ("${SET?err}", "value"),
            ("${EMPTY?err}", ""),
            ("${SET:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${UNSET:+alt}", ""),
            ("${SET+alt}", "alt"),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${UNSET:-${B}}", "bee"),
            ("${UNSET:-${NOPE:-x}}", "x"),
            ("${UNSET:-${NOPE:-${B}}}-tail", "bee-tail"),
            ("${UNSET:-a:b}", "a:b"),
            ("${EXPOSE_PORT-:2283:2283}", ":2283:2283"),
            ("${UNSET:-}", ""),
            ("$$", "$"),
            ("$${SET}", "${SET}"),
            ("$$SET", "$SET"),
            ("^/(sys|proc)($$|/)", "^/(sys|proc)($|/)"),
            ("{{.Node.ID}}", "{{.Node.ID}}"),
            ("cost: 5$", "cost: 5$"),
            ("$5 and $ alone", "$5 and $ alone"),
            ("${UNSET:-$$}", "$"),
            ("héllo ${SET} wörld", "héllo value wörld"),
        ];
        for (template, want) in table {
            assert_eq!(ok(template), want, "{template}");
        }
    }

    #[test]
    fn unset_variables_are_reported_once_used() {
        let (out, unset) = run("${NOPE}/$ALSO_NOT");
        assert_eq!(out.expect("interpolates"), "/");
        assert_eq!(unset, ["NOPE", "ALSO_NOT"]);
        let (_, unset) = run("${SET:-${NOPE}}");
        assert!(unset.is_empty(), "an unused default is not evaluated");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        let err = run("${UNSET:?please set it}").0.expect_err("required");
        assert!(
            err.contains("UNSET") && err.contains("please set it"),
            "{err}"
        );
        let err = run("${EMPTY:?must not be empty}").0.expect_err("required");
        assert!(err.contains("must not be empty"), "{err}");
        let err = run("${UNSET?${MSG}}").0.expect_err("required");
        assert!(err.ends_with("set MSG"), "{err}");
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for template in [
            "${",
            "${SET",
            "${}",
            "${1A}",
            "${A B}",
            "${SET/a/b}",
            "${SET:x}",
        ] {
            assert!(run(template).0.is_err(), "{template}");
        }
    }

    #[test]
    fn hostile_nesting_is_bounded() {
        let template = format!("{}x{}", "${U:-".repeat(10_000), "}".repeat(10_000));
        assert!(run(&template).0.is_err());
    }
}
