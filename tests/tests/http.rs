//! The HTTP sink against a local receiver that answers 500, then 429 with Retry-After,
//! then 200, and later one 400: every result is delivered once the receiver takes it,
//! `Retry-After` is honoured, and the refused batch lands in the dead-letter file.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use fieldgate_e2e::*;

/// One request the receiver got: when, its headers, its decoded body, what it answered.
struct Seen {
    at: Instant,
    headers: HeaderMap,
    rows: Vec<serde_json::Value>,
    answered: u16,
}

#[derive(Default)]
struct Receiver {
    /// Answers to give, in order; then 200.
    script: VecDeque<(u16, Option<&'static str>)>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn ingest(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let mut raw = Vec::new();
    if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .expect("valid gzip");
    } else {
        raw = body.to_vec();
    }
    let rows: Vec<serde_json::Value> = std::str::from_utf8(&raw)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line a JSON object"))
        .collect();
    let mut r = r.lock().unwrap();
    let (status, retry_after) = r.script.pop_front().unwrap_or((200, None));
    r.seen.push(Seen {
        at: Instant::now(),
        headers,
        rows,
        answered: status,
    });
    let mut h = HeaderMap::new();
    if let Some(ra) = retry_after {
        h.insert("retry-after", ra.parse().unwrap());
    }
    (
        StatusCode::from_u16(status).unwrap(),
        h,
        format!("answer {status}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_honour_retry_after_and_a_refused_batch_goes_to_dead_letters() {
    let state: Shared = Arc::default();
    state.lock().unwrap().script = VecDeque::from([(500, None), (429, Some("2")), (200, None)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/ingest", axum::routing::post(ingest))
        .with_state(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().unwrap();
    let setup = GatewaySetup::new(
        &tmp.path().join("gw"),
        &format!(
            "[sinks.api]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/ingest\"\n\
             gzip = true\nauth = \"Bearer s3cret\"\nbatch_max = 50\n\
             retry_min = \"100ms\"\nretry_max = \"1s\"\ndead_letter = \"dead/api.jsonl\"\n"
        ),
        &forward_rules("api"),
    );
    let mut gw = Gateway::start(&setup);
    publish_all(setup.mqtt_port, "dev", &plant_readings(0..120, 1)).await;

    let delivered = |s: &Receiver| -> Vec<i64> {
        let mut v: Vec<i64> = s
            .seen
            .iter()
            .filter(|x| x.answered == 200)
            .flat_map(|x| x.rows.iter().map(|r| r["n"].as_i64().unwrap()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let ok = eventually(Duration::from_secs(30), || {
        delivered(&state.lock().unwrap()) == (0..120).collect::<Vec<_>>()
    })
    .await;
    assert!(ok, "not all 120 delivered; log:\n{}", gw.log_text());
    {
        let s = state.lock().unwrap();
        let answers: Vec<u16> = s.seen.iter().map(|x| x.answered).collect();
        assert_eq!(&answers[..3], &[500, 429, 200], "{answers:?}");
        // The request after the 429 waited for its Retry-After of 2 s.
        let waited = s.seen[2].at - s.seen[1].at;
        assert!(
            waited >= Duration::from_millis(1900),
            "retried after {waited:?}"
        );
        // The batch refused with 500 and 429 is the one delivered next, with what was
        // queued behind it meanwhile: order is kept.
        assert!(
            s.seen[2].rows.starts_with(&s.seen[0].rows),
            "{:?} then {:?}",
            s.seen[0].rows,
            s.seen[2].rows
        );
        for x in &s.seen {
            assert_eq!(x.headers["authorization"], "Bearer s3cret");
            assert!(x.rows.len() <= 50);
            assert!(x.rows.iter().all(|r| r["_msg_id"].is_string()));
        }
        let order: Vec<i64> = s
            .seen
            .iter()
            .filter(|x| x.answered == 200)
            .flat_map(|x| x.rows.iter().map(|r| r["n"].as_i64().unwrap()))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "delivered out of order"
        );
    }

    // The receiver refuses the next batch as malformed: it goes to the dead-letter file,
    // is not sent again, and what follows is delivered.
    state.lock().unwrap().script.push_back((400, None));
    let before = state.lock().unwrap().seen.len();
    publish_all(setup.mqtt_port, "dev", &plant_readings(500..501, 1)).await;
    let dead = setup.dir.join("dead/api.jsonl");
    let ok = eventually(Duration::from_secs(15), || dead.exists()).await;
    assert!(ok, "no dead-letter file; log:\n{}", gw.log_text());
    let line = std::fs::read_to_string(&dead).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["status"], 400);
    assert_eq!(v["response"], "answer 400");
    assert_eq!(v["message"]["n"], 500);
    publish_all(setup.mqtt_port, "dev", &plant_readings(501..502, 1)).await;
    let ok = eventually(Duration::from_secs(15), || {
        delivered(&state.lock().unwrap()).contains(&501)
    })
    .await;
    assert!(
        ok,
        "501 not delivered after the refusal; log:\n{}",
        gw.log_text()
    );
    let s = state.lock().unwrap();
    let refused_again = s.seen[before + 1..]
        .iter()
        .any(|x| x.rows.iter().any(|r| r["n"] == 500));
    assert!(!refused_again, "a refused result was sent again");
    drop(s);
    assert!(gw.terminate(Duration::from_secs(10)).success());
    server.abort();
}
