use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn opts() -> QueueOptions {
    QueueOptions {
        commit_delay: Duration::from_millis(2),
        cache_bytes: 1 << 20,
    }
}

fn entry(rule: &str, body: &str) -> (Arc<str>, Bytes) {
    (Arc::from(rule), Bytes::from(body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_entries_read_back_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let q = Queue::open("t", &path, opts()).unwrap();
        q.append(vec![entry("r1", "a"), entry("r2", "b")])
            .await
            .unwrap();
        q.append(vec![entry("r1", "c")]).await.unwrap();
        assert_eq!(*q.committed().borrow(), 3);
        let got = q.read_from(0, 10).unwrap();
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(&*got[1].rule, "r2");
        assert_eq!(got[2].payload, Bytes::from("c"));
        q.remove(vec![1]).await.unwrap();
        q.close().await;
    }
    // Give the writer thread time to drop its database handle.
    let mut reopened = None;
    for _ in 0..100 {
        match Queue::open("t", &path, opts()) {
            Ok(q) => {
                reopened = Some(q);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let q = reopened.expect("queue reopens");
    let seqs: Vec<u64> = q.read_from(0, 10).unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 3], "the delete was made durable by close");
    q.append(vec![entry("r", "d")]).await.unwrap();
    let seqs: Vec<u64> = q.read_from(3, 10).unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4], "sequence numbers continue after a restart");
    assert_eq!(q.depth().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_get_distinct_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open("t", &dir.path().join("q.redb"), opts()).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                q.append(vec![entry("r", &format!("{t}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = q.read_from(0, 1000).unwrap();
    assert_eq!(all.len(), 400);
    let mut bodies: Vec<String> = all
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 400);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}
