//! `.env` and `env_file` files, read as Compose reads them (compose-go's `dotenv` package;
//! <https://docs.docker.com/compose/how-tos/environment-variables/variable-interpolation/#env-file-syntax>).
//!
//! - `KEY=VALUE`, one a line; an `export ` prefix is ignored; blank lines and lines starting
//!   with `#` are skipped; a line `KEY` alone takes `KEY` from the lookup when it is set there.
//! - Unquoted values are trimmed, and an inline comment (` #…`, whitespace before the `#`) is
//!   cut.
//! - `'single quotes'`: literal, may span lines.
//! - `"double quotes"`: `\n`, `\r`, `\t`, `\"`, `\\` and `\$` escapes, may span lines.
//! - Unquoted and double-quoted values are interpolated like Compose values, looking variables
//!   up in the lookup first and then among the file's earlier lines; an unset one is empty.
//! - The `raw` format (`env_file: {format: raw}`) takes everything after the first `=` as it is.

use std::collections::BTreeMap;

use crate::interpolate::{self, Lookup};

/// Parses one file's text. `file` names it in errors (`FILE:LINE: …`).
///
/// # Errors
/// Every malformed line.
pub(crate) fn parse(
    text: &str,
    file: &str,
    lookup: Lookup<'_>,
    raw: bool,
) -> Result<Vec<(String, String)>, Vec<String>> {
    // A byte order mark, as editors on Windows write, is not part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    let mut errors = Vec::new();
    // What the values may still add up to: `A2=$A1$A1` doubles at each line.
    let mut budget = interpolate::MAX_TOTAL;
    let mut pos = 0;
    let mut line_no = 0;
    while pos < text.len() {
        line_no += 1;
        let line_end = text[pos..].find('\n').map_or(text.len(), |n| pos + n);
        let line = text[pos..line_end].trim_end_matches('\r');
        let start_line = line_no;
        let trimmed = line.trim_start();
        let mut next = line_end + 1;
        if trimmed.is_empty() || trimmed.starts_with('#') {
            pos = next;
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map_or(trimmed, str::trim_start);
        let Some(eq) = body.find('=') else {
            let key = body.trim();
            if !valid_key(key) {
                // Not quoted: a line without `=` is as likely a value that lost its key (a
                // password pasted alone) as anything, and errors end up in terminals and CI
                // logs.
                errors.push(format!(
                    "{file}:{start_line}: not a KEY=VALUE line (no `=`, and not a variable name)"
                ));
            } else if let Some(value) = lookup(key).or_else(|| own.get(key).cloned()) {
                own.insert(key.to_owned(), value.clone());
                vars.push((key.to_owned(), value));
            }
            pos = next;
            continue;
        };
        let key = body[..eq].trim();
        if !valid_key(key) {
            // Not quoted either: a line of a key file (`env_file: ~/.ssh/id_rsa`) has `=` and
            // `/` or `+` before it.
            errors.push(format!(
                "{file}:{start_line}: what comes before `=` is not a variable name (letters, \
                 digits, '_', '.', '-', '[' and ']')"
            ));
            pos = next;
            continue;
        }
        // Offsets within `text`, so quoted values can run past this line: `body` is a suffix
        // of `line`, which starts at `pos`.
        let mut value_at = pos + (line.len() - body.len()) + eq + 1;
        while value_at < line_end && matches!(text.as_bytes()[value_at], b' ' | b'\t') {
            value_at += 1;
        }
        let after = &text[value_at..];
        let value = if raw {
            Ok(text[value_at..line_end].trim_end_matches('\r').to_owned())
        } else if let Some(quoted) = after.strip_prefix('\'') {
            match quoted.find('\'') {
                Some(close) => {
                    let value = quoted[..close].to_owned();
                    let end = value_at + 1 + close + 1;
                    line_no += text[value_at..end].matches('\n').count();
                    next = text[end..].find('\n').map_or(text.len(), |n| end + n + 1);
                    Ok(value)
                }
                None => Err(format!(
                    "{file}:{start_line}: {key}: ' without its closing '"
                )),
            }
        } else if let Some(quoted) = after.strip_prefix('"') {
            match double_quoted(quoted) {
                Some((template, used)) => {
                    let end = value_at + 1 + used;
                    line_no += text[value_at..end].matches('\n').count();
                    next = text[end..].find('\n').map_or(text.len(), |n| end + n + 1);
                    expand(&template, lookup, &own)
                        .map_err(|e| format!("{file}:{start_line}: {key}: {e}"))
                }
                None => Err(format!(
                    "{file}:{start_line}: {key}: \" without its closing \""
                )),
            }
        } else {
            let mut value = text[value_at..line_end].trim_end_matches('\r');
            if let Some(hash) = value.find(" #").or_else(|| value.find("\t#")) {
                value = &value[..hash];
            }
            expand(value.trim(), lookup, &own)
                .map_err(|e| format!("{file}:{start_line}: {key}: {e}"))
        };
        match value {
            Ok(value) if value.len() > budget => {
                errors.push(format!(
                    "{file}:{start_line}: {key}: the file's values add up to more than {} bytes",
                    interpolate::MAX_TOTAL
                ));
                break;
            }
            Ok(value) => {
                budget -= value.len();
                own.insert(key.to_owned(), value.clone());
                vars.push((key.to_owned(), value));
            }
            Err(e) => errors.push(e),
        }
        pos = next;
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors)
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']'))
}

/// The text of a double-quoted value (after its opening quote) with escapes applied (`\$`
/// kept as `$$` for interpolation), and how many bytes it used including the closing quote.
fn double_quoted(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '$')) => out.push_str("$$"),
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return None,
            },
            c => out.push(c),
        }
    }
    None
}

fn expand(
    template: &str,
    lookup: Lookup<'_>,
    own: &BTreeMap<String, String>,
) -> Result<String, String> {
    let both = |k: &str| lookup(k).or_else(|| own.get(k).cloned());
    let mut unset = Vec::new();
    interpolate::substitute(template, &both, &mut unset, interpolate::MAX_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<(String, String)> {
        let lookup = |k: &str| (k == "OUTER").then(|| "outer".to_owned());
        parse(text, ".env", &lookup, false).expect("parses")
    }

    #[test]
    fn doubling_lines_are_bounded() {
        let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
        for i in 1..200 {
            text.push_str(&format!("A{i}=$A{}$A{}\n", i - 1, i - 1));
        }
        let lookup = |_: &str| None;
        let start = std::time::Instant::now();
        let errors = parse(&text, ".env", &lookup, false).expect_err("too large");
        assert!(errors[0].contains("longer than"), "{}", errors[0]);
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        // Many values each under the limit, adding up past the total.
        let big = "x".repeat(1000);
        let mut text = format!("B={big}\n");
        for i in 0..40_000 {
            text.push_str(&format!("C{i}=$B\n"));
        }
        let errors = parse(&text, ".env", &lookup, false).expect_err("too large");
        assert_eq!(errors.len(), 1, "stops at the first");
        assert!(errors[0].contains("add up to"), "{}", errors[0]);
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        assert_eq!(parse_ok("\u{feff}A=1\n"), pairs(&[("A", "1")]));
    }

    #[test]
    fn an_unclosed_quote_does_not_show_the_lines_it_ran_into() {
        let lookup = |_: &str| None;
        let errors = parse("B=\"x${\nPASSWORD=hunter2\nC=\"\n", ".env", &lookup, false)
            .expect_err("unclosed");
        assert!(!errors[0].contains("hunter2"), "{errors:?}");
    }

    #[test]
    fn a_line_that_may_be_a_value_is_not_quoted_in_errors() {
        let lookup = |_: &str| None;
        let errors = parse("hunter2 s3cret\n", ".env", &lookup, false).expect_err("not KEY=VALUE");
        assert_eq!(
            errors,
            [".env:1: not a KEY=VALUE line (no `=`, and not a variable name)"]
        );
        let errors = parse("MIIEv+QIBADAN/Bgkq=\n", ".env", &lookup, false).expect_err("bad name");
        assert!(!errors[0].contains("MIIE"), "{}", errors[0]);
        assert!(
            errors[0].starts_with(".env:1: what comes before `=`"),
            "{}",
            errors[0]
        );
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_rules_compose_reads_env_files_with() {
        let text = "\
# a comment
PLAIN=value
  SPACED =  padded value  
export EXPORTED=yes
COMMENTED=value # a comment
HASH=a#b
SINGLE='literal $PLAIN \\n # not a comment'
DOUBLE=\"line1\\nline2 \\\"q\\\" \\\\ $PLAIN \\$PLAIN\"
MULTI='first
second'
AFTER=${PLAIN}-${OUTER}-${NOPE:-dflt}
EMPTY=
OUTER
MISSING_ALONE
CRLF=x\r
";
        assert_eq!(
            parse_ok(text),
            pairs(&[
                ("PLAIN", "value"),
                ("SPACED", "padded value"),
                ("EXPORTED", "yes"),
                ("COMMENTED", "value"),
                ("HASH", "a#b"),
                ("SINGLE", "literal $PLAIN \\n # not a comment"),
                ("DOUBLE", "line1\nline2 \"q\" \\ value $PLAIN"),
                ("MULTI", "first\nsecond"),
                ("AFTER", "value-outer-dflt"),
                ("EMPTY", ""),
                ("OUTER", "outer"),
                ("CRLF", "x"),
            ])
        );
    }

    #[test]
    fn raw_format_keeps_values_as_written() {
        let lookup = |_: &str| None;
        let vars = parse("A='q' $B # c\n", "f", &lookup, true).expect("parses");
        assert_eq!(vars, pairs(&[("A", "'q' $B # c")]));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let lookup = |_: &str| None;
        let errors =
            parse("OK=1\nnot a line\nQ='open\n", "x.env", &lookup, false).expect_err("malformed");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("x.env:2:"), "{errors:?}");
        assert!(errors[1].starts_with("x.env:3:"), "{errors:?}");
    }
}
