//! Struct and list columns: declared in a stream, reached into by rules.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;

use fieldgate_rules::StreamPipeline;
use fieldgate_rules::arrow::array::RecordBatch;
use fieldgate_rules::arrow::json::ReaderBuilder;
use serde_json::{Value, json};

const STREAM: &str = "CREATE STREAM t (
    device STRING,
    ts BIGINT,
    reading STRUCT(site STRING, temp DOUBLE, probe STRUCT(id BIGINT)),
    tags ARRAY<STRING>,
    samples DOUBLE[]
) WITH (DATASOURCE = 'sensors/+/t', TIMESTAMP = 'ts');\n";

async fn pipeline(rules: &str) -> StreamPipeline {
    let text = format!("{STREAM}{rules}");
    common::only_pipeline("nested.sql", &text).await
}

/// One input row, as plain Rust data.
#[derive(Clone, Debug)]
struct Row {
    device: String,
    ts: i64,
    /// `None`: no `reading` object at all.
    reading: Option<Reading>,
    /// `None`: no `tags` key.
    tags: Option<Vec<String>>,
    samples: Vec<f64>,
}

#[derive(Clone, Debug)]
struct Reading {
    site: Option<String>,
    temp: Option<f64>,
    probe: Option<i64>,
}

impl Row {
    fn to_json(&self) -> Value {
        let mut o = json!({"device": self.device, "ts": self.ts, "samples": self.samples});
        if let Some(r) = &self.reading {
            let mut rj = json!({});
            if let Some(s) = &r.site {
                rj["site"] = json!(s);
            }
            if let Some(t) = r.temp {
                rj["temp"] = json!(t);
            }
            if let Some(p) = r.probe {
                rj["probe"] = json!({"id": p});
            }
            o["reading"] = rj;
        }
        if let Some(t) = &self.tags {
            o["tags"] = json!(t);
        }
        o
    }
}

/// The rows as a batch of the stream's schema (decoded from JSON, as the gateway does).
fn batch(p: &StreamPipeline, rows: &[Row]) -> RecordBatch {
    let text: String = rows.iter().map(|r| format!("{}\n", r.to_json())).collect();
    let mut reader = ReaderBuilder::new(p.stream.schema.clone())
        .with_batch_size(rows.len().max(1))
        .build(Cursor::new(text.into_bytes()))
        .unwrap();
    reader.next().unwrap().unwrap()
}

use common::json_rows as results;

fn rows(n: i64) -> Vec<Row> {
    let sites = ["north", "south", "east"];
    (0..n)
        .map(|i| Row {
            device: format!("d{}", i % 4),
            ts: i * 137,
            reading: (i % 13 != 0).then(|| Reading {
                site: (i % 7 != 0).then(|| sites[(i % 3) as usize].to_string()),
                temp: (i % 11 != 0).then_some((i % 17) as f64 * 2.5 - 5.0),
                probe: (i % 2 == 0).then_some(i * 10),
            }),
            tags: (i % 9 != 0).then(|| {
                (0..i % 4)
                    .map(|k| if (i + k) % 3 == 0 { "hot" } else { "ok" }.to_string())
                    .collect()
            }),
            samples: (0..i % 5).map(|k| ((i * 7 + k) % 23) as f64).collect(),
        })
        .collect()
}

#[tokio::test]
async fn a_stateless_rule_reaches_into_structs_and_lists() {
    let mut p = pipeline(
        "CREATE RULE hot INTO out AS
           SELECT device, reading['site'] AS site, reading.probe.id AS probe,
                  get_field(reading, 'temp') * 2 AS twice, tags[1] AS first_tag,
                  array_length(tags) AS n_tags, samples[2] AS second_sample
           FROM t
           WHERE reading['temp'] > 10 AND array_has(tags, 'hot');",
    )
    .await;
    let input = rows(300);
    let mut got = Vec::new();
    for chunk in input.chunks(45) {
        let (outs, errs) = p.push(&batch(&p, chunk)).await;
        assert!(errs.is_empty(), "{errs:?}");
        got.extend(results(&outs));
    }
    let expected: Vec<Value> = input
        .iter()
        .filter_map(|r| {
            let reading = r.reading.as_ref()?;
            let tags = r.tags.as_ref()?;
            if !(reading.temp? > 10.0 && tags.iter().any(|t| t == "hot")) {
                return None;
            }
            Some(json!({
                "device": r.device,
                "site": reading.site,
                "probe": reading.probe,
                "twice": reading.temp.map(|t| t * 2.0),
                "first_tag": tags.first(),
                "n_tags": tags.len(),
                "second_sample": r.samples.get(1),
            }))
        })
        .collect();
    // ArrayWriter leaves out null values; the expectation writes them as null.
    let expected: Vec<Value> = expected
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().retain(|_, x| !x.is_null());
            v
        })
        .collect();
    assert!(expected.len() > 10, "the data must select some rows");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn whole_struct_and_list_values_pass_through() {
    let mut p = pipeline(
        "CREATE RULE copy INTO out AS SELECT device, reading, tags FROM t WHERE device = 'd1';",
    )
    .await;
    let input = rows(40);
    let (outs, errs) = p.push(&batch(&p, &input)).await;
    assert!(errs.is_empty(), "{errs:?}");
    let expected: Vec<Value> = input
        .iter()
        .filter(|r| r.device == "d1")
        .map(|r| {
            let mut v = json!({"device": r.device});
            if let Some(rd) = &r.reading {
                let mut o = serde_json::Map::new();
                if let Some(s) = &rd.site {
                    o.insert("site".into(), json!(s));
                }
                if let Some(t) = rd.temp {
                    o.insert("temp".into(), json!(t));
                }
                if let Some(id) = rd.probe {
                    o.insert("probe".into(), json!({"id": id}));
                }
                v["reading"] = Value::Object(o);
            }
            if let Some(t) = &r.tags {
                v["tags"] = json!(t);
            }
            v
        })
        .collect();
    assert_eq!(results(&outs), expected);
}

#[tokio::test]
async fn a_tumbling_window_aggregates_nested_fields_by_a_nested_key() {
    let mut p = pipeline(
        "CREATE RULE w INTO out AS
           SELECT reading['site'] AS site, window_start, count(*) AS n,
                  avg(reading['temp']) AS avg_temp, max(samples[1]) AS max_first,
                  sum(cardinality(tags)) AS n_tags
           FROM t
           WHERE reading.temp IS NOT NULL
           GROUP BY reading['site'], TUMBLINGWINDOW(ss, 10);",
    )
    .await;
    let input = rows(400);
    let mut outs = Vec::new();
    for chunk in input.chunks(37) {
        let (o, errs) = p.push(&batch(&p, chunk)).await;
        assert!(errs.is_empty(), "{errs:?}");
        outs.extend(o);
    }
    let before_finish = results(&outs).len();
    outs.extend(p.finish().await.0);

    // Reference: plain Rust over the input rows.
    #[derive(Default)]
    struct Acc {
        n: i64,
        sum: f64,
        max_first: Option<f64>,
        tags: Option<i64>,
    }
    let mut expected: BTreeMap<(Option<String>, i64), Acc> = BTreeMap::new();
    for r in &input {
        let Some(reading) = &r.reading else { continue };
        let Some(temp) = reading.temp else { continue };
        let start = r.ts.div_euclid(10_000) * 10_000;
        let a = expected.entry((reading.site.clone(), start)).or_default();
        a.n += 1;
        a.sum += temp;
        if let Some(f) = r.samples.first() {
            a.max_first = Some(a.max_first.map_or(*f, |m| m.max(*f)));
        }
        if let Some(t) = &r.tags {
            a.tags = Some(a.tags.unwrap_or(0) + t.len() as i64);
        }
    }
    let mut got: Vec<((Option<String>, i64), Value)> = results(&outs)
        .into_iter()
        .map(|v| {
            let key = (
                v.get("site").and_then(|s| s.as_str()).map(String::from),
                v["window_start"].as_i64().unwrap(),
            );
            (key, v)
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), expected.len());
    assert!(
        expected.keys().any(|(site, _)| site.is_none()),
        "the data must have rows without a site"
    );
    assert!(before_finish > 0, "the watermark must close windows early");
    for ((key, v), (ekey, e)) in got.iter().zip(&expected) {
        assert_eq!(key, ekey);
        assert_eq!(v["n"].as_i64(), Some(e.n), "{key:?}");
        let avg = v["avg_temp"].as_f64().unwrap();
        assert!((avg - e.sum / e.n as f64).abs() < 1e-9, "{key:?}: {avg}");
        assert_eq!(v.get("max_first").and_then(Value::as_f64), e.max_first);
        assert_eq!(v.get("n_tags").and_then(Value::as_i64), e.tags, "{key:?}");
    }
}

#[tokio::test]
async fn a_session_window_keys_on_a_nested_field() {
    let mut p = pipeline(
        "CREATE RULE s INTO out AS
           SELECT reading.site AS site, window_start, window_end, count(*) AS n
           FROM t GROUP BY reading.site, SESSIONWINDOW(ss, 60, 5);",
    )
    .await;
    let row = |site: &str, ts: i64| Row {
        device: "d".into(),
        ts,
        reading: Some(Reading {
            site: Some(site.into()),
            temp: None,
            probe: None,
        }),
        tags: None,
        samples: vec![],
    };
    let input = [
        row("a", 1_000),
        row("b", 2_000),
        row("a", 4_000),
        row("a", 12_000),
        row("b", 6_500),
    ];
    let (mut outs, errs) = p.push(&batch(&p, &input)).await;
    assert!(errs.is_empty(), "{errs:?}");
    outs.extend(p.finish().await.0);
    let mut got: Vec<(String, i64, i64)> = results(&outs)
        .iter()
        .map(|v| {
            (
                v["site"].as_str().unwrap().to_string(),
                v["window_start"].as_i64().unwrap(),
                v["n"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    // Sessions with a 5 s gap: a: {1s, 4s}, {12s}; b: {2s, 6.5s}.
    assert_eq!(
        got,
        [
            ("a".to_string(), 1_000, 2),
            ("a".to_string(), 12_000, 1),
            ("b".to_string(), 2_000, 2)
        ]
    );
}
