use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn opts() -> QueueOptions {
    QueueOptions {
        commit_delay: Duration::from_millis(2),
        cache_bytes: 1 << 20,
        limits: QueueLimits::default(),
    }
}

fn limited(max_bytes: Option<u64>, on_full: OnFull, ttl: Option<Duration>) -> QueueOptions {
    QueueOptions {
        limits: QueueLimits {
            max_bytes,
            on_full,
            ttl,
        },
        ..opts()
    }
}

/// Bytes one entry takes, by the layout the store documents: format byte, enqueue
/// time, name length, name, payload, plus the 8-byte key.
fn size_of(rule: &str, body: &str) -> u64 {
    (1 + 8 + 2 + rule.len() + body.len() + 8) as u64
}

fn body(i: usize) -> String {
    format!("{{\"n\":{i:06},\"pad\":\"{}\"}}", "x".repeat(180))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 15 s");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_its_oldest_entries_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 * 1024;
    let q = Queue::open(
        "t",
        &dir.path().join("q.redb"),
        limited(Some(max), OnFull::DropOldest, None),
    )
    .unwrap();
    let total = 1_000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(37) {
        q.append(chunk.iter().map(|i| entry("r", &body(*i))).collect())
            .await
            .unwrap();
    }
    let kept = q.read_from(0, 10_000).unwrap();
    let per = size_of("r", &body(0));
    // The newest entries that fit, in order, none corrupt.
    let fit = (max / per) as usize;
    assert_eq!(kept.len(), fit, "{per} bytes an entry, {max} allowed");
    for (m, i) in kept.iter().zip(total - fit..total) {
        assert_eq!(m.payload, Bytes::from(body(i)));
        assert_eq!(m.seq, i as u64 + 1);
    }
    let st = q.stats();
    assert_eq!(
        st.dropped_oldest.load(Ordering::Relaxed),
        (total - fit) as u64
    );
    assert_eq!(st.entries.load(Ordering::Relaxed), fit as u64);
    assert_eq!(st.bytes.load(Ordering::Relaxed), fit as u64 * per);
    assert_eq!(q.depth().unwrap(), fit as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_results_until_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let per = size_of("r", &body(0));
    let max = 10 * per + per / 2;
    let q = Queue::open(
        "t",
        &dir.path().join("q.redb"),
        limited(Some(max), OnFull::RejectNew, None),
    )
    .unwrap();
    for i in 0..10 {
        q.append(vec![entry("r", &body(i))]).await.unwrap();
    }
    let refused = q.append(vec![entry("r", &body(10))]).await;
    assert!(
        matches!(refused, Err(StoreError::Full { .. })),
        "{refused:?}"
    );
    let refused = q
        .append(vec![entry("r", &body(11)), entry("r", &body(12))])
        .await;
    assert!(matches!(refused, Err(StoreError::Full { .. })));
    assert_eq!(q.stats().rejected.load(Ordering::Relaxed), 3);
    // What was accepted is untouched.
    let held: Vec<Bytes> = q
        .read_from(0, 100)
        .unwrap()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        held,
        (0..10).map(|i| Bytes::from(body(i))).collect::<Vec<_>>()
    );
    // Delivery makes room again.
    q.remove(vec![1, 2]).await.unwrap();
    q.append(vec![entry("r", &body(13)), entry("r", &body(14))])
        .await
        .unwrap();
    assert_eq!(q.depth().unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_past_their_time_to_live_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        "t",
        &dir.path().join("q.redb"),
        limited(None, OnFull::DropOldest, Some(Duration::from_millis(300))),
    )
    .unwrap();
    q.append((0..5).map(|i| entry("r", &body(i))).collect())
        .await
        .unwrap();
    assert!(q.oldest_age().unwrap().is_some());
    wait_for("expiry", || q.depth().unwrap() == 0).await;
    assert_eq!(q.stats().expired.load(Ordering::Relaxed), 5);
    assert_eq!(q.oldest_age().unwrap(), None);
    // Fresh entries stay.
    q.append(vec![entry("r", "fresh")]).await.unwrap();
    assert_eq!(q.depth().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_stays_bounded_while_twenty_times_the_limit_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    let max: u64 = 1 << 20;
    let q = Queue::open(
        "t",
        &dir.path().join("q.redb"),
        limited(Some(max), OnFull::DropOldest, None),
    )
    .unwrap();
    let per = size_of("r", &body(0));
    let total = (20 * max / per) as usize + 1;
    let mut largest = 0;
    let mut i = 0;
    while i < total {
        let n = 500.min(total - i);
        q.append((i..i + n).map(|k| entry("r", &body(k))).collect())
            .await
            .unwrap();
        i += n;
        // A sink delivering a third of what arrives: the queue stays full.
        let oldest: Vec<u64> = q
            .read_from(0, n / 3)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        q.remove(oldest).await.unwrap();
        largest = largest.max(q.file_bytes());
    }
    assert!(q.stats().dropped_oldest.load(Ordering::Relaxed) > 0);
    assert!(q.stats().bytes.load(Ordering::Relaxed) <= max);
    // The stated bound (docs/architecture.md): 2 × max_bytes + 1 MiB.
    let bound = 2 * max + (1 << 20);
    assert!(
        largest <= bound,
        "file reached {largest} bytes for a {max}-byte queue (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backlog_gives_its_disk_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open("t", &dir.path().join("q.redb"), opts()).unwrap();
    let mut seqs = Vec::new();
    for chunk in 0..100 {
        q.append(
            (0..1_000)
                .map(|k| entry("r", &body(chunk * 1_000 + k)))
                .collect(),
        )
        .await
        .unwrap();
    }
    for m in q.read_from(0, 200_000).unwrap() {
        seqs.push(m.seq);
    }
    assert_eq!(seqs.len(), 100_000);
    let full = q.file_bytes();
    assert!(full > 20 << 20, "backlog file is {full} bytes");
    for chunk in seqs.chunks(5_000) {
        q.remove(chunk.to_vec()).await.unwrap();
    }
    wait_for("compaction", || {
        q.stats().compactions.load(Ordering::Relaxed) > 0
    })
    .await;
    let after = q.file_bytes();
    assert!(
        after < 2 << 20,
        "file is {after} bytes after draining a {full}-byte backlog"
    );
    // Still a working queue.
    q.append(vec![entry("r", "after")]).await.unwrap();
    assert_eq!(q.read_from(0, 10).unwrap().len(), 1);
}
