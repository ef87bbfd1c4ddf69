//! The fleet's Grafana dashboard (`grafana/flotilla-fleet.json`) checked against what the
//! exporters really emit: the metric names of every PromQL query in it, each taken to the
//! exporter that answers it, must be families of that exporter's exposition. Each daemon's
//! unit tests call [`unknown_names`] with an exposition they encode in-process, so a renamed
//! metric or a misspelled query fails the build's tests, with no container and no Prometheus.
//!
//! Which exporter answers a query is the dashboard's layout: a panel belongs to the row above
//! it, and rows are titled `Control plane: …` (`orchestratord`) or `Nodes: …` (`nodeagent`);
//! the template variables `service` and `node` read the control plane's and the agents'
//! metrics. A panel outside such a row, or another query variable, is a problem for both.

use std::collections::BTreeSet;

use serde_json::Value;

/// The fleet dashboard, relative to the workspace root.
pub const FLEET_DASHBOARD: &str = "grafana/flotilla-fleet.json";

/// The exporter whose metrics a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `orchestratord run --metrics-listen`.
    ControlPlane,
    /// `nodeagent run --metrics-listen`.
    Node,
}

impl Source {
    /// The source of the panels under a row titled `title`.
    fn of_row(title: &str) -> Option<Self> {
        if title.starts_with("Control plane:") {
            Some(Self::ControlPlane)
        } else if title.starts_with("Nodes:") {
            Some(Self::Node)
        } else {
            None
        }
    }

    /// The daemon that serves it.
    pub fn daemon(self) -> &'static str {
        match self {
            Self::ControlPlane => "orchestratord",
            Self::Node => "nodeagent",
        }
    }

    /// The source of the template variable `name`'s query.
    fn of_variable(name: &str) -> Option<Self> {
        match name {
            "service" => Some(Self::ControlPlane),
            "node" => Some(Self::Node),
            _ => None,
        }
    }
}

/// One PromQL query of the dashboard: where it is, which exporter answers it, and the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `panel "TITLE"` or `variable NAME`.
    pub place: String,
    /// Its exporter, if the layout says.
    pub source: Option<Source>,
    /// The PromQL expression.
    pub expr: String,
}

/// Every PromQL query of `dashboard` (its JSON): panel targets' `expr` and query variables'
/// `label_values(SELECTOR, LABEL)` / `query_result(EXPR)`. A panel without a `Control plane:`
/// or `Nodes:` row above it, or a variable of another query language, is an error.
pub fn queries(dashboard: &Value) -> Result<Vec<Query>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut row: Option<(String, Option<Source>)> = None;
    let mut panel = |p: &Value, row: &Option<(String, Option<Source>)>, out: &mut Vec<Query>| {
        let title = p["title"].as_str().unwrap_or_default();
        let place = format!("panel {title:?}");
        let source = row.as_ref().and_then(|(_, s)| *s);
        if source.is_none() {
            problems.push(format!(
                "{place}: not under a row titled \"Control plane: …\" or \"Nodes: …\""
            ));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("{place}: no query"));
        }
        for t in targets {
            match t["expr"].as_str() {
                Some(expr) => out.push(Query {
                    place: place.clone(),
                    source,
                    expr: expr.to_string(),
                }),
                None => problems.push(format!("{place}: a target without \"expr\"")),
            }
        }
    };
    for p in dashboard["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if p["type"] == "row" {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            let source = Source::of_row(&title);
            // A collapsed row holds its panels itself.
            for inner in p["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                panel(inner, &Some((title.clone(), source)), &mut out);
            }
            row = Some((title, source));
        } else {
            panel(p, &row, &mut out);
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or_default();
        let place = format!("variable {name}");
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default()
            .trim();
        let expr = if let Some(args) = call_args(query, "label_values") {
            // label_values(LABEL) reads no metric; label_values(SELECTOR, LABEL) one.
            match args.rsplit_once(',') {
                Some((selector, _)) => selector.trim().to_string(),
                None => {
                    problems.push(format!("{place}: names no metric"));
                    continue;
                }
            }
        } else if let Some(expr) = call_args(query, "query_result") {
            expr.trim().to_string()
        } else {
            problems.push(format!(
                "{place}: {query:?} is neither label_values(…) nor query_result(…)"
            ));
            continue;
        };
        let source = Source::of_variable(name);
        if source.is_none() {
            problems.push(format!(
                "{place}: no exporter is known to answer it (only service and node are)"
            ));
        }
        out.push(Query {
            place,
            source,
            expr,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The arguments of `query` when it is the call `name(…)`.
fn call_args<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

/// The metric names a PromQL expression reads: its identifiers that are neither functions,
/// aggregations, keywords, label names (in `{…}`, `by (…)`, `on (…)` …) nor Grafana variables
/// (`$node`, `${node}`, `$__rate_interval`). A selector by `__name__` is refused: its names
/// could not be checked.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 8] = [
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i)?,
            '{' => {
                let end = skip_group(&chars, i, '{', '}')?;
                let inside: String = chars[i..end].iter().collect();
                if inside.contains("__name__") {
                    return Err(format!(
                        "{expr:?}: a selector by __name__ cannot be checked"
                    ));
                }
                i = end;
            }
            '[' => i = skip_group(&chars, i, '[', ']')?,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_group(&chars, i, '{', '}')?;
                } else {
                    while i < chars.len() && is_part(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number or a duration (`0.95`, `1e9`, `5m`, `0x1f`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_start(c) => {
                let start = i;
                while i < chars.len() && is_part(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                // A call, or an aggregation with its grouping first (`sum by (le) (…)`).
                let rest: String = chars[next..].iter().take(64).collect();
                let rest = rest.to_ascii_lowercase();
                let grouped = ["by", "without"].iter().any(|g| {
                    rest.strip_prefix(g)
                        .is_some_and(|r| r.trim_start().starts_with('('))
                });
                let called = chars.get(next) == Some(&'(') || grouped;
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if called {
                        i = skip_group(&chars, next, '(', ')')?;
                    }
                } else if !called && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    Ok(names)
}

/// The index after the string opening at `open`.
fn skip_string(chars: &[char], open: usize) -> Result<usize, String> {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string at {open}"))
}

/// The index after the group that `open_at` opens with `open`, strings inside skipped.
fn skip_group(chars: &[char], open_at: usize, open: char, close: char) -> Result<usize, String> {
    let mut depth = 0;
    let mut i = open_at;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i)?;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("unclosed {open:?} at {open_at}"))
}

/// The series names an exposition (either text format) lets a query read, from its `# TYPE`
/// lines: a gauge's name, a counter's with `_total`, a histogram's `_bucket`, `_sum` and
/// `_count`, a summary's name, `_sum` and `_count`.
pub fn series_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" if name.ends_with("_total") => {
                names.insert(name.to_string());
            }
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" | "gaugehistogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            "summary" => {
                for suffix in ["", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// What is wrong with `dashboard` (its JSON) for `source`, whose exposition is `exposition`:
/// the layout's problems, and every query `source` answers that reads a name `exposition` does
/// not emit (or no name at all). `Ok` holds how many queries were checked.
pub fn unknown_names(
    dashboard: &str,
    source: Source,
    exposition: &str,
) -> Result<usize, Vec<String>> {
    let doc: Value = serde_json::from_str(dashboard).map_err(|e| vec![format!("json: {e}")])?;
    let emitted = series_names(exposition);
    let mut problems = Vec::new();
    let mut checked = 0;
    for q in queries(&doc)? {
        if q.source != Some(source) {
            continue;
        }
        checked += 1;
        match metric_names(&q.expr) {
            Ok(names) if names.is_empty() => {
                problems.push(format!("{}: {:?} reads no metric", q.place, q.expr));
            }
            Ok(names) => {
                for n in names.iter().filter(|n| !emitted.contains(*n)) {
                    problems.push(format!(
                        "{}: {:?} reads {n}, which {} does not emit",
                        q.place,
                        q.expr,
                        source.daemon()
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", q.place)),
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).expect("parses").into_iter().collect()
    }

    #[test]
    fn names_are_the_selectors_only() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.95, sum by (le, route) (rate(flotilla_api_request_duration_seconds_bucket{route!="/v1/metrics"}[$__rate_interval])))"#
            ),
            ["flotilla_api_request_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                r#"sum by (instance) (rate(container_cpu_usage_seconds_total{instance=~"$node",service=~"${service}"}[5m] offset 1h)) / on (instance) group_left () machine_cpu_cores"#
            ),
            ["container_cpu_usage_seconds_total", "machine_cpu_cores"]
        );
        assert_eq!(
            names(
                r#"label_replace(sum without (le) (flotilla_tasks{state!="STOPPED"}), "service", "(none)", "service", "")"#
            ),
            ["flotilla_tasks"]
        );
        assert_eq!(
            names("a_total > bool 0 and on() b or c unless D / 1e9 - .5"),
            ["D", "a_total", "b", "c"]
        );
        assert!(names("vector(1) * 2").is_empty());
        assert!(metric_names(r#"{__name__=~"flotilla_.*"}"#).is_err());
        assert!(metric_names(r#"x{a="b"#).is_err());
    }

    #[test]
    fn series_names_follow_the_family_types() {
        let om = "# HELP a A.\n# TYPE a counter\na_total 1\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\n# TYPE g gauge\ng 1\n# EOF\n";
        let text = "# TYPE b_total counter\nb_total 1\n";
        let got: Vec<String> = series_names(&format!("{om}{text}")).into_iter().collect();
        assert_eq!(
            got,
            [
                "a_total",
                "b_total",
                "g",
                "h_seconds_bucket",
                "h_seconds_count",
                "h_seconds_sum"
            ]
        );
    }

    fn dashboard(row: &str, expr: &str, variable: &str) -> String {
        serde_json::json!({
            "panels": [
                {"type": "row", "title": row, "panels": []},
                {"type": "timeseries", "title": "p", "targets": [{"refId": "A", "expr": expr}]}
            ],
            "templating": {"list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {"type": "query", "name": "node", "query": {"query": variable, "refId": "V"}}
            ]}
        })
        .to_string()
    }

    #[test]
    fn a_name_the_exporter_does_not_emit_is_reported() {
        let exposition =
            "# TYPE machine_cpu_cores gauge\n# TYPE container_cpu_usage_seconds counter\n";
        let good = dashboard(
            "Nodes: CPU",
            "rate(container_cpu_usage_seconds_total[1m]) / machine_cpu_cores",
            "label_values(machine_cpu_cores, instance)",
        );
        assert_eq!(unknown_names(&good, Source::Node, exposition), Ok(2));
        // The control plane answers nothing of it: nothing to check there.
        assert_eq!(unknown_names(&good, Source::ControlPlane, ""), Ok(0));
        // A counter without _total, a variable on a name nobody emits.
        let bad = dashboard(
            "Nodes: CPU",
            "rate(container_cpu_usage_seconds[1m])",
            "label_values(machine_cpus{job=\"x\"}, instance)",
        );
        let problems = unknown_names(&bad, Source::Node, exposition).expect_err("two unknown");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("reads container_cpu_usage_seconds,"));
        assert!(problems[1].contains("variable node") && problems[1].contains("machine_cpus"));
        // A panel no known row holds is every exporter's problem.
        let stray = dashboard("Misc", "machine_cpu_cores", "label_values(instance)");
        for source in [Source::Node, Source::ControlPlane] {
            let problems = unknown_names(&stray, source, exposition).expect_err("layout");
            assert_eq!(problems.len(), 2, "{problems:?}");
        }
    }
}
