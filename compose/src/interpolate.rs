//! Variable substitution in Compose values, as `interpolation.md` of the Compose specification
//! gives it (and compose-go's `template` package does it).
//!
//! - `$VAR` and `${VAR}`: the value, or empty with a warning when `VAR` is unset.
//! - `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset): the default.
//! - `${VAR:?message}` (unset or empty) and `${VAR?message}` (unset): an error with the message.
//! - `${VAR:+alternative}` (set and not empty) and `${VAR+alternative}` (set): the alternative,
//!   else empty.
//! - Defaults and alternatives are themselves interpolated, only when used: `${A:-${B:-x}}`.
//!   Messages are not (the specification interpolates them): an error shows a message as
//!   written, so it never prints another variable's value, often a secret.
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

/// How long one value may be once interpolated: `$BIG$BIG$BIG…` must not multiply a large
/// variable without end.
pub(crate) const MAX_VALUE: usize = 1024 * 1024;

/// How many bytes all the values of one file may add up to once interpolated (each env file
/// line may reuse the ones before it: `A2=$A1$A1`, `A3=$A2$A2`, … doubles at each line).
pub(crate) const MAX_TOTAL: usize = 32 * 1024 * 1024;

/// At most this much of a template is quoted in an error.
const QUOTED: usize = 80;

/// `text` for an error message, quoted, cut after [`QUOTED`] characters.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(QUOTED) {
        Some((at, _)) => format!("{:?}…", &text[..at]),
        None => format!("{text:?}"),
    }
}

/// `text` cut after [`QUOTED`] characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(QUOTED) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Looks a variable up: its value when set (possibly empty), `None` when unset.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Substitutes the variables in `template`. Names used while unset (and not defaulted) are
/// pushed to `unset`. The result is at most `limit` bytes long.
///
/// # Errors
/// A required variable that is missing (with its message), a malformed `${…}`, a result
/// longer than `limit`.
pub(crate) fn substitute(
    template: &str,
    lookup: Lookup<'_>,
    unset: &mut Vec<String>,
    limit: usize,
) -> Result<String, String> {
    substitute_at(template, lookup, unset, 0, limit)
}

fn too_long(limit: usize) -> String {
    format!("the value is longer than {limit} bytes once interpolated")
}

fn substitute_at(
    template: &str,
    lookup: Lookup<'_>,
    unset: &mut Vec<String>,
    depth: usize,
    limit: usize,
) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "interpolation nested more than {MAX_NESTING} levels deep"
        ));
    }
    let bytes = template.as_bytes();
    let mut out = String::with_capacity(template.len().min(limit));
    let mut literal_from = 0;
    let mut i = 0;
    // Every index used to slice is the position of an ASCII byte or the end, so always a char
    // boundary.
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if out.len() > limit {
            return Err(too_long(limit));
        }
        out.push_str(&template[literal_from..i]);
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                // Errors say where, never what: the text may be a value, a secret's as often
                // as not (an env file's unclosed quote runs into the lines after it).
                let close = closing_brace(bytes, i + 1).ok_or_else(|| {
                    format!(
                        "invalid interpolation format: the `${{` at character {} has no `}}`; a literal $ is written $$",
                        template[..i].chars().count() + 1
                    )
                })?;
                let inner = &template[i + 2..close];
                out.push_str(&braced(inner, lookup, unset, depth, limit)?);
                i = close + 1;
            }
            Some(&c) if c == b'_' || c.is_ascii_alphabetic() => {
                let end = name_end(bytes, i + 1);
                let name = &template[i + 1..end];
                match lookup(name) {
                    Some(value) => out.push_str(&value),
                    None => unset.push(excerpt_name(name)),
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
    if out.len() > limit {
        return Err(too_long(limit));
    }
    Ok(out)
}

/// A variable name for a message: names are not bounded, messages are.
fn excerpt_name(name: &str) -> String {
    if name.len() > QUOTED {
        format!("{}…", &name[..QUOTED])
    } else {
        name.to_owned()
    }
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
    limit: usize,
) -> Result<String, String> {
    let bytes = inner.as_bytes();
    let starts_well = bytes
        .first()
        .is_some_and(|&c| c == b'_' || c.is_ascii_alphabetic());
    let end = name_end(bytes, 0);
    if !starts_well {
        return Err(
            "invalid interpolation format: a `${` is not followed by a variable name; a literal $ is written $$"
                .to_owned(),
        );
    }
    let name = &inner[..end];
    let rest = &inner[end..];
    let value = lookup(name);
    if rest.is_empty() {
        return Ok(value.unwrap_or_else(|| {
            unset.push(excerpt_name(name));
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
                "invalid interpolation format: in ${{{}…}}, after the name comes }}, :-, -, :?, ?, :+ or +",
                excerpt_name(name)
            )
        })?;
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let mut nested = |arg: &str| substitute_at(arg, lookup, unset, depth + 1, limit);
    match op.as_str() {
        ":-" if non_empty => Ok(value.unwrap_or_default()),
        ":-" => nested(arg),
        "-" if set => Ok(value.unwrap_or_default()),
        "-" => nested(arg),
        ":?" if non_empty => Ok(value.unwrap_or_default()),
        "?" if set => Ok(value.unwrap_or_default()),
        // The message as written, not interpolated: a message naming other variables must
        // not print their values (secrets, as often as not) in an error.
        ":?" | "?" if arg.is_empty() => Err(format!(
            "required variable {} is missing a value",
            excerpt_name(name)
        )),
        ":?" | "?" => Err(format!(
            "required variable {} is missing a value: {}",
            excerpt_name(name),
            cut(arg)
        )),
        ":+" if non_empty => nested(arg),
        "+" if set => nested(arg),
        _ => Ok(String::new()),
    }
}

/// Interpolates every string scalar under `value` (mapping keys excepted). `path` names
/// `value` (`services.web`); problems are reported as `FILE: PATH: …`.
///
/// `budget` is how many bytes the interpolated values may still add up to: each value is at
/// most [`MAX_VALUE`] and takes its length from it; past it, values are errors.
pub(crate) fn interpolate_tree(
    value: &mut Value,
    path: &str,
    file: &str,
    lookup: Lookup<'_>,
    warnings: &mut Vec<String>,
    errors: &mut Vec<String>,
    budget: &mut usize,
) {
    match value {
        Value::String(s) => {
            let mut unset = Vec::new();
            if !s.contains('$') {
                *budget = budget.saturating_sub(s.len());
                return;
            }
            let limit = MAX_VALUE.min(*budget);
            match substitute(s, lookup, &mut unset, limit) {
                Ok(new) => {
                    *budget -= new.len();
                    *s = new;
                }
                Err(e) if e == too_long(limit) && limit < MAX_VALUE => errors.push(format!(
                    "{file}: {path}: the file's values add up to more than {MAX_TOTAL} bytes once interpolated"
                )),
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
                interpolate_tree(item, &p, file, lookup, warnings, errors, budget);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let p = crate::load::child_path(path, k);
                interpolate_tree(v, &p, file, lookup, warnings, errors, budget);
            }
        }
        Value::Tagged(tagged) => {
            interpolate_tree(
                &mut tagged.value,
                path,
                file,
                lookup,
                warnings,
                errors,
                budget,
            );
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
        let out = substitute(template, &lookup, &mut unset, MAX_VALUE);
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
        assert_eq!(
            run("${UNSET:?}").0,
            Err("required variable UNSET is missing a value".into())
        );
        let err = run("${EMPTY:?must not be empty}").0.expect_err("required");
        assert!(err.contains("must not be empty"), "{err}");
        // The message is shown as written: other variables' values stay out of errors.
        let err = run("${UNSET?${MSG} $B}").0.expect_err("required");
        assert!(err.ends_with("${MSG} $B"), "{err}");
        assert!(!err.contains("bee") && !err.contains("set MSG"), "{err}");
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
    fn hostile_expansion_is_bounded() {
        let big = "x".repeat(100_000);
        let lookup = |k: &str| (k == "BIG").then(|| big.clone());
        let template = "$BIG".repeat(100_000);
        let mut unset = Vec::new();
        let err = substitute(&template, &lookup, &mut unset, MAX_VALUE).expect_err("too long");
        assert!(err.contains("longer than"), "{err}");
        let template = format!("${{U:-{}}}", "${BIG}".repeat(100));
        assert!(substitute(&template, &lookup, &mut unset, MAX_VALUE).is_err());
        // Messages quote at most a little of a long template or name.
        let err = run(&format!("${{{}", "A".repeat(100_000)))
            .0
            .expect_err("bad");
        assert!(err.len() < 400, "{err}");
        let (_, unset) = run(&format!("${}", "A".repeat(100_000)));
        assert!(unset[0].len() < 100);
    }

    #[test]
    fn malformed_expressions_do_not_quote_the_text() {
        for template in [
            "hunter2 ${",
            "hunter2 ${SET",
            "hunter2 ${}",
            "hunter2 ${1A}",
            "hunter2 ${A hunter2}",
            "${SET/hunter2/x}",
            "${SET:hunter2}",
        ] {
            let err = run(template).0.expect_err(template);
            assert!(!err.contains("hunter2"), "{template}: {err}");
        }
        let err = run("héllo ${A").0.expect_err("unclosed");
        assert!(err.contains("character 7"), "{err}");
    }

    #[test]
    fn a_files_values_are_bounded_together() {
        let big = "x".repeat(MAX_VALUE / 2);
        let lookup = |k: &str| (k == "BIG").then(|| big.clone());
        let mut doc = Value::Sequence(vec![Value::from("$BIG"); 100]);
        let (mut warnings, mut errors) = (Vec::new(), Vec::new());
        let mut budget = MAX_TOTAL;
        interpolate_tree(
            &mut doc,
            "x",
            "f",
            &lookup,
            &mut warnings,
            &mut errors,
            &mut budget,
        );
        assert!(!errors.is_empty());
        assert!(
            errors.iter().all(|e| e.contains("add up to more than")),
            "{:?}",
            &errors[..1]
        );
    }

    #[test]
    fn hostile_nesting_is_bounded() {
        let template = format!("{}x{}", "${U:-".repeat(10_000), "}".repeat(10_000));
        assert!(run(&template).0.is_err());
    }
}
