//! Reload planning against real pipelines: which rules keep their state.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::Int64Type;

use super::*;
use crate::engine::RuleOutput;

const STREAM: &str = "CREATE STREAM t (device STRING, ts BIGINT, temp DOUBLE)
  WITH (DATASOURCE = 'sensors/+/t', FORMAT = 'json', TIMESTAMP = 'ts', LATENESS = '1s');\n";

const WINDOWED: &str = "CREATE RULE a INTO out AS
  SELECT device, window_start, count(*) AS n FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);\n";

const FILTER: &str = "CREATE RULE b INTO out AS SELECT device, temp FROM t WHERE temp > 50;\n";

fn parse(text: &str) -> RuleSet {
    let (set, errors) = RuleSet::parse(Path::new("rules.sql"), text);
    assert!(errors.is_empty(), "{errors:?}");
    set
}

/// What the gateway holds: the declarations that run and one pipeline per stream.
struct Running {
    set: RuleSet,
    pipelines: Vec<StreamPipeline>,
}

impl Running {
    async fn start(text: &str) -> Running {
        let set = parse(text);
        let p = plan(&RuleSet::default(), set, vec![], |s| s == "out").await;
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let mut r = Running {
            set: RuleSet::default(),
            pipelines: vec![],
        };
        r.apply(p);
        r
    }

    async fn reload(&mut self, text: &str) -> (ReloadSummary, Vec<SqlError>, Vec<Applied>) {
        let (set, errors) = RuleSet::parse(Path::new("rules.sql"), text);
        let p = plan(&self.set, set, errors, |s| s == "out").await;
        let summary = p.summary.clone();
        let errors = p.errors.clone();
        let applied = self.apply(p);
        (summary, errors, applied)
    }

    fn apply(&mut self, p: ReloadPlan) -> Vec<Applied> {
        let mut applied = vec![];
        self.pipelines
            .retain(|x| !p.removed_streams.contains(&x.stream.name));
        for change in p.streams {
            match change {
                StreamChange::Update { stream, rules, .. } => {
                    let pipeline = self
                        .pipelines
                        .iter_mut()
                        .find(|x| x.stream.name == stream)
                        .expect("running stream");
                    applied.push(apply(pipeline, rules));
                }
                StreamChange::Start { pipeline, .. } => {
                    self.pipelines
                        .retain(|x| x.stream.name != pipeline.stream.name);
                    self.pipelines.push(pipeline);
                }
            }
        }
        self.set = p.running;
        applied
    }

    fn pipeline(&mut self) -> &mut StreamPipeline {
        &mut self.pipelines[0]
    }

    fn rule(&self, name: &str) -> &RunningRule {
        self.pipelines
            .iter()
            .flat_map(|p| &p.rules)
            .find(|r| r.def.name == name)
            .unwrap_or_else(|| panic!("rule {name} is not running"))
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .pipelines
            .iter()
            .flat_map(|p| p.rules.iter().map(|r| r.def.name.clone()))
            .collect();
        n.sort();
        n
    }
}

fn batch(p: &StreamPipeline, rows: &[(&str, i64, f64)]) -> RecordBatch {
    RecordBatch::try_new(
        p.stream.schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

async fn push(r: &mut Running, rows: &[(&str, i64, f64)]) -> Vec<RuleOutput> {
    let p = r.pipeline();
    let b = batch(p, rows);
    let (outs, errs) = p.push_at(&b, 0).await;
    assert!(errs.is_empty(), "{errs:?}");
    outs
}

fn rows_of(outs: &[RuleOutput], rule: &str) -> Vec<RecordBatch> {
    outs.iter()
        .filter(|o| &*o.rule == rule)
        .flat_map(|o| o.batches.clone())
        .filter(|b| b.num_rows() > 0)
        .collect()
}

fn counts(outs: &[RuleOutput]) -> Vec<i64> {
    rows_of(outs, "a")
        .iter()
        .flat_map(|b| {
            let n = b.column(b.schema().index_of("n").unwrap());
            n.as_primitive::<Int64Type>().values().to_vec()
        })
        .collect()
}

fn columns(outs: &[RuleOutput], rule: &str) -> Vec<Vec<String>> {
    rows_of(outs, rule)
        .iter()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .collect()
}

fn total_rows(outs: &[RuleOutput], rule: &str) -> usize {
    rows_of(outs, rule).iter().map(|b| b.num_rows()).sum()
}

#[tokio::test]
async fn an_unchanged_rule_keeps_its_window_while_a_changed_one_is_replaced() {
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}")).await;
    let a_counters = r.rule("a").counters.clone();
    let b_counters = r.rule("b").counters.clone();
    let outs = push(&mut r, &[("d1", 1_000, 60.0), ("d1", 2_000, 30.0)]).await;
    assert_eq!(total_rows(&outs, "b"), 1);
    assert_eq!(r.rule("a").open_windows(), 1);

    // Only b changes: a higher threshold and another column.
    let (summary, errors, applied) = r
        .reload(&format!(
            "{STREAM}{WINDOWED}CREATE RULE b INTO out AS \
             SELECT device, temp, 'v2' AS version FROM t WHERE temp > 20;\n"
        ))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.rules_unchanged, ["a"]);
    assert_eq!(summary.rules_changed, ["b"]);
    assert!(summary.rules_added.is_empty() && summary.rules_removed.is_empty());
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].retired, [("b".to_string(), 0)]);
    assert!(
        Arc::ptr_eq(&r.rule("a").counters, &a_counters),
        "a was replaced"
    );
    assert!(
        !Arc::ptr_eq(&r.rule("b").counters, &b_counters),
        "b was kept"
    );
    assert_eq!(r.rule("a").open_windows(), 1, "a lost its open window");

    let outs = push(&mut r, &[("d1", 3_000, 30.0), ("d1", 4_000, 10.0)]).await;
    assert_eq!(total_rows(&outs, "b"), 1, "b's new threshold");
    assert_eq!(columns(&outs, "b"), [vec!["device", "temp", "version"]]);
    // A row far ahead closes a's window: it counts the rows from before and after.
    let outs = push(&mut r, &[("d1", 30_000, 0.0)]).await;
    assert_eq!(counts(&outs), [4]);
    assert_eq!(
        a_counters
            .records_in
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[tokio::test]
async fn reformatting_or_moving_a_rule_does_not_restart_it() {
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}")).await;
    let a = r.rule("a").counters.clone();
    let b = r.rule("b").counters.clone();
    let (summary, errors, applied) = r
        .reload(&format!(
            "-- moved and reformatted\n{FILTER}\n{STREAM}\nCREATE RULE a   INTO out AS\n\
             SELECT device,\n window_start,\n count(*) AS n\n FROM t\n \
             GROUP BY device, TUMBLINGWINDOW(ss, 10);\n"
        ))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!summary.changes_anything(), "{summary:?}");
    assert!(applied.iter().all(|a| a.retired.is_empty()));
    assert!(Arc::ptr_eq(&r.rule("a").counters, &a));
    assert!(Arc::ptr_eq(&r.rule("b").counters, &b));
    // The kept rule carries its new position.
    assert!(r.rule("a").def.pos.line > 4, "{:?}", r.rule("a").def.pos);
}

#[tokio::test]
async fn removed_rules_stop_and_new_ones_start() {
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}")).await;
    push(&mut r, &[("d1", 1_000, 60.0)]).await;
    let (summary, errors, applied) = r
        .reload(&format!(
            "{STREAM}{FILTER}CREATE RULE c INTO out AS SELECT device FROM t;\n"
        ))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.rules_removed, ["a"]);
    assert_eq!(summary.rules_added, ["c"]);
    assert_eq!(summary.rules_unchanged, ["b"]);
    assert_eq!(
        applied[0].retired,
        [("a".to_string(), 1)],
        "a's open window is reported"
    );
    assert_eq!(r.names(), ["b", "c"]);
    let outs = push(&mut r, &[("d1", 2_000, 60.0), ("d2", 3_000, 10.0)]).await;
    assert_eq!(total_rows(&outs, "c"), 2);
    assert_eq!(total_rows(&outs, "a"), 0);
}

#[tokio::test]
async fn a_changed_stream_restarts_its_rules() {
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}")).await;
    let a = r.rule("a").counters.clone();
    push(&mut r, &[("d1", 1_000, 60.0)]).await;
    let changed_stream = STREAM.replace("LATENESS = '1s'", "LATENESS = '2s'");
    let set = parse(&format!("{changed_stream}{WINDOWED}{FILTER}"));
    let p = plan(&r.set, set, vec![], |s| s == "out").await;
    assert_eq!(p.summary.streams_changed, ["t"]);
    assert_eq!(p.summary.rules_changed, ["a", "b"]);
    match &p.streams[..] {
        [StreamChange::Start { pipeline, replaces }] => {
            assert!(replaces);
            assert_eq!(pipeline.rules.len(), 2);
            assert!(pipeline.rules.iter().all(|r| r.open_windows() == 0));
        }
        _ => panic!("the stream is not rebuilt"),
    }
    r.apply(p);
    assert!(!Arc::ptr_eq(&r.rule("a").counters, &a));
    assert_eq!(r.rule("a").open_windows(), 0);
}

#[tokio::test]
async fn streams_come_and_go() {
    let mut r = Running::start(&format!("{STREAM}{FILTER}")).await;
    let other = "CREATE STREAM u (device STRING) WITH (DATASOURCE = 'u/#', FORMAT = 'json');\n\
                 CREATE RULE c INTO out AS SELECT device FROM u;\n";
    let (summary, errors, _) = r.reload(&format!("{STREAM}{FILTER}{other}")).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.streams_added, ["u"]);
    assert_eq!(summary.rules_added, ["c"]);
    assert_eq!(r.pipelines.len(), 2);
    let (summary, errors, _) = r.reload(other).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.streams_removed, ["t"]);
    assert_eq!(summary.rules_removed, ["b"]);
    assert_eq!(r.names(), ["c"]);
}

#[tokio::test]
async fn a_rule_that_no_longer_plans_keeps_running_its_previous_version() {
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}")).await;
    let b = r.rule("b").counters.clone();
    let (summary, errors, applied) = r
        .reload(&format!(
            "{STREAM}{WINDOWED}CREATE RULE b INTO out AS SELECT device, humidity FROM t;\n"
        ))
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("humidity"), "{}", errors[0]);
    assert_eq!(errors[0].pos.line, 5, "{}", errors[0]);
    assert_eq!(summary.kept_previous, ["rule b"]);
    assert!(!summary.changes_anything(), "{summary:?}");
    assert!(applied.iter().all(|a| a.retired.is_empty()));
    assert!(Arc::ptr_eq(&r.rule("b").counters, &b));
    let outs = push(&mut r, &[("d1", 1_000, 60.0)]).await;
    assert_eq!(columns(&outs, "b"), [vec!["device", "temp"]]);
    // The next reload compares against the version that runs: fixing it is a change.
    let (summary, errors, _) = r
        .reload(&format!(
            "{STREAM}{WINDOWED}CREATE RULE b INTO out AS SELECT device FROM t;\n"
        ))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.rules_changed, ["b"]);
}

#[tokio::test]
async fn a_syntax_error_keeps_what_the_file_declared_and_the_rest_reloads() {
    let c = "CREATE RULE c INTO out AS SELECT device FROM t WHERE temp > 0;\n";
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}{c}")).await;
    let a = r.rule("a").counters.clone();
    let b = r.rule("b").counters.clone();
    // b gets a typo, c a real change, a stays.
    let (summary, errors, _) = r
        .reload(&format!(
            "{STREAM}{WINDOWED}CREATE RULE b INTO out AS SELEC device FROM t;\n\
             CREATE RULE c INTO out AS SELECT device FROM t WHERE temp > 5;\n"
        ))
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, Path::new("rules.sql"));
    assert_eq!(errors[0].pos.line, 5, "{}", errors[0]);
    assert!(errors[0].pos.column > 1, "{}", errors[0]);
    assert_eq!(summary.kept_previous, ["rule b"]);
    assert_eq!(summary.rules_changed, ["c"]);
    assert!(summary.rules_removed.is_empty(), "{summary:?}");
    assert_eq!(r.names(), ["a", "b", "c"]);
    assert!(Arc::ptr_eq(&r.rule("a").counters, &a));
    assert!(Arc::ptr_eq(&r.rule("b").counters, &b));
    // A file that does not even tokenize keeps everything it declared.
    let (summary, errors, _) = r.reload("CREATE STREAM 'unterminated").await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(!summary.changes_anything(), "{summary:?}");
    assert_eq!(r.names(), ["a", "b", "c"]);
}

#[tokio::test]
async fn a_rule_deleted_from_a_good_file_stops() {
    let mut r = Running::start(&format!("{STREAM}{WINDOWED}{FILTER}")).await;
    let (summary, errors, _) = r.reload(&format!("{STREAM}{WINDOWED}")).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(summary.rules_removed, ["b"]);
    assert_eq!(r.names(), ["a"]);
}

#[tokio::test]
async fn an_unchanged_rule_keeps_its_analytic_state_and_a_changed_one_starts_afresh() {
    const LAG: &str =
        "CREATE RULE l INTO out AS SELECT lag(temp) OVER (PARTITION BY device) AS prev FROM t;\n";
    let prev = |outs: &[RuleOutput]| -> Vec<Option<f64>> {
        rows_of(outs, "l")
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
                (0..c.len())
                    .map(|i| c.is_valid(i).then(|| c.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut r = Running::start(&format!("{STREAM}{LAG}")).await;
    push(&mut r, &[("a", 1_000, 1.0)]).await;
    // Another rule added beside it: `l` is kept, with what it saw.
    r.reload(&format!("{STREAM}{LAG}{FILTER}")).await;
    assert_eq!(prev(&push(&mut r, &[("a", 2_000, 2.0)]).await), [Some(1.0)]);
    // Its WHEN changed: a new rule, which has seen nothing.
    let changed = LAG.replace("PARTITION BY device", "PARTITION BY device WHEN temp > 0");
    r.reload(&format!("{STREAM}{changed}{FILTER}")).await;
    assert_eq!(prev(&push(&mut r, &[("a", 3_000, 3.0)]).await), [None]);
}
