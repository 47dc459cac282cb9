//! `fieldgate rules check` and `fieldgate rules test`: the rule author's tools. They
//! parse, plan and run rule files offline, with no broker, queue or network.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use fieldgate_connectors::codec::JsonDecoder;
use fieldgate_connectors::codec::json_rows;
use fieldgate_connectors::mqtt::topic_matches;
use fieldgate_rules::{NullFields, RuleOutput, RuleSet, StreamPipeline, now_millis};
use serde_json::Value;

/// Parses and plans every stream and rule under `paths`; prints each error as
/// `file:line:col: message`. With `groups`, Modbus and OPC UA streams are checked
/// against the configured groups. Returns whether all of them are valid.
pub async fn check(
    paths: &[PathBuf],
    sink_exists: impl Fn(&str) -> bool,
    groups: Option<&crate::ingest::SourceGroups>,
) -> anyhow::Result<bool> {
    let (mut set, mut errors) = RuleSet::load(paths);
    if let Some(g) = groups {
        g.retain_known(&mut set, &mut errors);
    }
    let (pipelines, build_errors) = set.build(sink_exists).await;
    errors.extend(build_errors);
    for e in &errors {
        eprintln!("{e}");
    }
    // Meanings that differ from eKuiper's: the rules run, but may not mean what a rule
    // copied from eKuiper meant.
    let warnings: Vec<_> = set.rules.iter().flat_map(|r| &r.warnings).collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let rules: usize = pipelines.iter().map(|p| p.rules.len()).sum();
    if errors.is_empty() {
        println!("ok: {} streams, {rules} rules", pipelines.len());
    } else {
        eprintln!("{} error(s)", errors.len());
    }
    Ok(errors.is_empty())
}

/// Options of `rules test`.
pub struct TestOptions {
    /// Rule files or directories of them.
    pub paths: Vec<PathBuf>,
    /// Events, one JSON object per line: a payload, or `{"topic": ..., "payload": ...}`.
    pub input: PathBuf,
    /// Only this rule's results; `None`: every rule's.
    pub rule: Option<String>,
    /// The stream that bare payload lines feed; `None`: the only stream (with several,
    /// such lines are rejected).
    pub stream: Option<String>,
    /// Expected results (JSON lines as printed) to compare with; `None`: the results are
    /// printed.
    pub expect: Option<PathBuf>,
    /// Pass although input lines were rejected or rules failed on rows.
    pub allow_rejects: bool,
}

/// What a `rules test` run saw, printed at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TestSummary {
    /// Input lines read (blank ones not counted).
    pub lines: u64,
    /// Rows decoded and fed to the rules.
    pub rows_in: u64,
    /// Result rows produced.
    pub rows_out: u64,
    /// Input lines (or a line's payload for one of its streams) that could not be used.
    pub rejected: u64,
    /// Rows that came after their window had closed.
    pub late: u64,
    /// Rule failures: failed executions (their batch's results are missing), rows a
    /// rule failed on, and rows without an event time.
    pub rule_errors: u64,
    /// Bytes of the payloads fed to the streams (a line feeding two streams counts twice).
    pub bytes_in: u64,
    /// Bytes of the results, encoded as the sinks send them.
    pub bytes_out: u64,
}

impl TestSummary {
    /// How much smaller the results are than the input, in percent (negative when larger).
    pub fn reduction_percent(&self) -> f64 {
        match self.bytes_in {
            0 => 0.0,
            n => 100.0 * (1.0 - self.bytes_out as f64 / n as f64),
        }
    }
}

impl std::fmt::Display for TestSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let change = self.reduction_percent();
        let change = if change >= 0.0 {
            format!("{change:.1}% less")
        } else {
            format!("{:.1}% more", -change)
        };
        write!(
            f,
            "{} lines, {} rows in, {} results out, {} rejected, {} late, {} rule errors; \
             {} bytes in, {} bytes out ({change})",
            self.lines,
            self.rows_in,
            self.rows_out,
            self.rejected,
            self.late,
            self.rule_errors,
            self.bytes_in,
            self.bytes_out,
        )
    }
}

/// Runs the rules over recorded events and prints or checks the results. Returns
/// whether the run passed: results matched the expectation (if one was given) and, unless
/// `allow_rejects`, no input line was rejected and no rule failed.
pub async fn test(opts: &TestOptions) -> anyhow::Result<bool> {
    let (passed, summary) = test_with_summary(opts).await?;
    eprintln!("summary: {summary}");
    Ok(passed)
}

/// [`test`], returning the summary too.
pub async fn test_with_summary(opts: &TestOptions) -> anyhow::Result<(bool, TestSummary)> {
    let (set, mut errors) = RuleSet::load(&opts.paths);
    let (mut pipelines, build_errors) = set.build(|_| true).await;
    errors.extend(build_errors);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!("the rule files have {} error(s)", errors.len());
    }
    if let Some(r) = &opts.rule
        && !pipelines
            .iter()
            .any(|p| p.rules.iter().any(|x| x.name() == r))
    {
        bail!("no rule named `{r}`");
    }
    let mut decoders = pipelines
        .iter()
        .map(|p| JsonDecoder::new(p.stream.schema.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let default_stream = match (&opts.stream, pipelines.len()) {
        (Some(name), _) => Some(
            pipelines
                .iter()
                .position(|p| &p.stream.name == name)
                .with_context(|| format!("no stream named `{name}`"))?,
        ),
        (None, 1) => Some(0),
        _ => None,
    };
    let file = std::fs::File::open(&opts.input)
        .with_context(|| format!("cannot read {}", opts.input.display()))?;
    let mut results: Vec<Value> = Vec::new();
    let mut summary = TestSummary::default();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", opts.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let (targets, payload) = match route(&line, &pipelines, default_stream) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}:{}: {e}", opts.input.display(), n + 1);
                summary.rejected += 1;
                continue;
            }
        };
        for i in targets {
            summary.bytes_in += payload.len() as u64;
            let decoded = decoders[i].decode(&[payload.as_bytes()]);
            for r in &decoded.rejected {
                eprintln!(
                    "{}:{}: stream `{}`: {}",
                    opts.input.display(),
                    n + 1,
                    pipelines[i].stream.name,
                    r.reason
                );
                summary.rejected += 1;
            }
            if let Some(batch) = decoded.batch {
                summary.rows_in += batch.num_rows() as u64;
                let (outs, errs) = pipelines[i].push_at(&batch, now_millis()).await;
                for e in errs {
                    eprintln!("{}:{}: {e}", opts.input.display(), n + 1);
                }
                summary.bytes_out += collect(outs, opts.rule.as_deref(), &mut results)?;
            }
        }
    }
    // The end of the input closes every window.
    for p in &mut pipelines {
        let (outs, errs) = p.finish().await;
        for e in errs {
            eprintln!("{e}");
        }
        summary.bytes_out += collect(outs, opts.rule.as_deref(), &mut results)?;
    }
    if summary.rejected > 0 {
        eprintln!("{} input line(s) could not be used", summary.rejected);
    }
    summary.rows_out = results.len() as u64;
    for rule in pipelines.iter().flat_map(|p| p.rules.iter()) {
        if opts.rule.as_deref().is_none_or(|r| r == rule.name()) {
            summary.late += rule.counters.late.load(Ordering::Relaxed);
            summary.rule_errors += rule.counters.errors.load(Ordering::Relaxed);
        }
    }
    let matched = match &opts.expect {
        None => {
            let mut out = std::io::stdout().lock();
            for r in &results {
                writeln!(out, "{r}")?;
            }
            true
        }
        Some(path) => compare(path, results)?,
    };
    let clean = summary.rejected == 0 && summary.rule_errors == 0;
    if !clean && !opts.allow_rejects {
        eprintln!(
            "fail: input lines were rejected or rules failed (pass --allow-rejects to accept that)"
        );
    }
    Ok((matched && (clean || opts.allow_rejects), summary))
}

/// Which streams an input line feeds, and its payload. A line is either
/// `{"topic": "...", "payload": {...}}` (routed as the broker would) or, with a single
/// stream or `--stream`, the payload itself.
fn route(
    line: &str,
    pipelines: &[StreamPipeline],
    default: Option<usize>,
) -> anyhow::Result<(Vec<usize>, String)> {
    let v: Value = serde_json::from_str(line).context("not a JSON object")?;
    let Value::Object(map) = &v else {
        bail!("not a JSON object")
    };
    if let (Some(Value::String(topic)), Some(payload)) = (map.get("topic"), map.get("payload"))
        && map.len() == 2
    {
        let payload = match payload {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let targets: Vec<usize> = pipelines
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.stream
                    .source
                    .mqtt_filter()
                    .is_some_and(|f| topic_matches(f, topic))
            })
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            bail!("topic `{topic}` matches no stream");
        }
        return Ok((targets, payload));
    }
    match default {
        Some(i) => Ok((vec![i], line.to_string())),
        None => {
            bail!("several streams: give each line a \"topic\" and \"payload\", or pass --stream")
        }
    }
}

/// Adds the result rows of `outs` (of rule `only`, if given) to `results`; returns the
/// bytes they take encoded.
fn collect(
    outs: Vec<RuleOutput>,
    only: Option<&str>,
    results: &mut Vec<Value>,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for o in outs {
        if only.is_some_and(|r| r != &*o.rule) {
            continue;
        }
        for row in json_rows(&o.batches, o.null_fields == NullFields::Written)? {
            bytes += row.len() as u64;
            let row: Value = serde_json::from_slice(&row)?;
            results.push(serde_json::json!({ "rule": &*o.rule, "row": row }));
        }
    }
    Ok(bytes)
}

/// Compares results with the expected lines, in any order; numbers match within a
/// relative 1e-9. Prints a diff and returns false on a mismatch.
fn compare(path: &Path, mut got: Vec<Value>) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut missing = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let want: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        match got.iter().position(|g| same(g, &want)) {
            Some(i) => {
                got.swap_remove(i);
            }
            None => missing.push((n + 1, want)),
        }
    }
    if missing.is_empty() && got.is_empty() {
        println!("ok: results match {}", path.display());
        return Ok(true);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "results differ from {}:", path.display())?;
    for (line, v) in &missing {
        writeln!(out, "- {v}    (expected, line {line})")?;
    }
    for v in &got {
        writeln!(out, "+ {v}    (produced, not expected)")?;
    }
    Ok(false)
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::{TestOptions, TestSummary, same, test, test_with_summary};
    use serde_json::json;

    const NESTED_RULES: &str = "\
CREATE STREAM env (device STRING, ts BIGINT,
                   reading STRUCT(site STRING, temp DOUBLE), tags ARRAY<STRING>)
WITH (DATASOURCE = 'env/+', TIMESTAMP = 'ts');
CREATE RULE alarms INTO cloud AS
SELECT device, reading['site'] AS site, tags[1] AS first_tag, reading
FROM env WHERE array_has(tags, 'alarm');
CREATE RULE site_avg INTO cloud AS
SELECT reading.site AS site, window_start, avg(reading['temp']) AS avg_temp
FROM env GROUP BY reading.site, TUMBLINGWINDOW(ss, 10);
";

    const NESTED_INPUT: &str = r#"{"device":"a","ts":1000,"reading":{"site":"n","temp":20},"tags":["alarm"]}
{"device":"b","ts":2000,"reading":{"site":"n","temp":23,"unit":"C"},"tags":["ok","alarm"]}
{"device":"c","ts":3000,"reading":{"site":"s"},"tags":[]}
{"device":"d","ts":4000,"reading":{"site":"s","temp":"hot"}}
{"device":"e","ts":12000,"reading":{"site":"s","temp":5.5}}
"#;

    const NESTED_EXPECTED: &str = r#"{"rule":"alarms","row":{"device":"a","site":"n","first_tag":"alarm","reading":{"site":"n","temp":20.0}}}
{"rule":"alarms","row":{"device":"b","site":"n","first_tag":"ok","reading":{"site":"n","temp":23.0}}}
{"rule":"site_avg","row":{"site":"n","window_start":0,"avg_temp":21.5}}
{"rule":"site_avg","row":{"site":"s","window_start":0,"avg_temp":null}}
{"rule":"site_avg","row":{"site":"s","window_start":10000,"avg_temp":5.5}}
"#;

    #[tokio::test]
    async fn rules_test_runs_rules_over_nested_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let opts = |expected: &str| TestOptions {
            paths: vec![write("env.sql", NESTED_RULES)],
            input: write("events.jsonl", NESTED_INPUT),
            rule: None,
            stream: None,
            expect: Some(write("expected.jsonl", expected)),
            allow_rejects: true,
        };
        let (passed, summary) = test_with_summary(&opts(NESTED_EXPECTED)).await.unwrap();
        assert!(passed);
        // Device d's "hot" temperature is the one rejected line.
        // Bytes in are the input lines; bytes out the result rows as sinks send them.
        let bytes_in: usize = NESTED_INPUT.lines().map(str::len).sum();
        let bytes_out: usize = NESTED_EXPECTED
            .lines()
            .map(|l| l.len() - l.find("\"row\":").unwrap() - "\"row\":".len() - 1)
            .sum();
        assert_eq!(
            summary,
            TestSummary {
                lines: 5,
                rows_in: 4,
                rows_out: 5,
                rejected: 1,
                late: 0,
                rule_errors: 0,
                bytes_in: bytes_in as u64,
                bytes_out: bytes_out as u64,
            }
        );
        assert!(summary.to_string().contains(&format!(
            "{bytes_in} bytes in, {bytes_out} bytes out ({:.1}% less)",
            100.0 * (1.0 - bytes_out as f64 / bytes_in as f64)
        )));
        // Without --allow-rejects that rejected line fails the run.
        let strict = TestOptions {
            allow_rejects: false,
            ..opts(NESTED_EXPECTED)
        };
        assert!(!test(&strict).await.unwrap());
        // A wrong expectation is caught.
        let wrong = NESTED_EXPECTED.replace("21.5", "21.0");
        assert!(!test(&opts(&wrong)).await.unwrap());
    }

    #[tokio::test]
    async fn runtime_errors_and_rejected_lines_fail_the_run_and_are_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let rules = "CREATE STREAM s (device STRING, ts BIGINT, code STRING, v BIGINT)\n\
                     WITH (DATASOURCE = 'd/+', TIMESTAMP = 'ts', LATENESS = '1s');\n\
                     CREATE RULE parsed INTO out AS SELECT device, CAST(code AS BIGINT) AS n FROM s;\n\
                     CREATE RULE per_10s INTO out AS SELECT device, count(*) AS c FROM s \
                     GROUP BY device, TUMBLINGWINDOW(ss, 10);\n";
        let input = "{\"device\":\"a\",\"ts\":1000,\"code\":\"12\",\"v\":1}\n\
                     {\"device\":\"a\",\"ts\":30000,\"code\":\"d9\",\"v\":2}\n\
                     {\"device\":\"a\",\"ts\":2000,\"code\":\"3\",\"v\":3}\n\
                     {\"device\":\"a\",\"ts\":31000,\"code\":\"4\",\"v\":1.5}\n\
                     not json\n";
        let opts = |allow| TestOptions {
            paths: vec![write("r.sql", rules)],
            input: write("in.jsonl", input),
            rule: None,
            stream: None,
            expect: None,
            allow_rejects: allow,
        };
        let (passed, s) = test_with_summary(&opts(false)).await.unwrap();
        assert!(!passed, "{s}");
        assert_eq!((s.lines, s.rows_in, s.rejected), (5, 3, 2), "{s}");
        // `CAST('d9' AS BIGINT)` fails its row; the row at 2000 came after the first
        // window closed (watermark 29 s).
        assert_eq!((s.rule_errors, s.late), (1, 1), "{s}");
        let (passed, s2) = test_with_summary(&opts(true)).await.unwrap();
        assert!(passed);
        assert_eq!(s, s2);
    }

    #[test]
    fn numbers_match_within_a_relative_tolerance_and_nothing_else_does() {
        assert!(same(
            &json!({"a": 0.1 + 0.2, "b": [1, "x"]}),
            &json!({"b": [1, "x"], "a": 0.3})
        ));
        assert!(!same(&json!({"a": 0.31}), &json!({"a": 0.3})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same(&json!({"a": "1"}), &json!({"a": 1})));
    }
}
