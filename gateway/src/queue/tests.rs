use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fieldgate_e2e::SmallDisk;

use super::*;

fn opts() -> QueueOptions {
    QueueOptions {
        commit_delay: Duration::from_millis(2),
        cache_bytes: 1 << 20,
        limits: QueueLimits::default(),
        min_free_bytes: Some(0),
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

/// The number a [`body`] was made from.
fn n_of(payload: &[u8]) -> usize {
    std::str::from_utf8(&payload[5..11])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
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
        // Two commits: the last entry of each is marked, and a read that stops inside
        // a commit does not mark where it stopped.
        let ends: Vec<bool> = got.iter().map(|m| m.commit_end).collect();
        assert_eq!(ends, [false, true, true]);
        assert!(!q.read_from(0, 1).unwrap()[0].commit_end);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_never_repeat_after_the_queue_drained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..5 {
        let q = reopen(&path, opts()).await;
        q.append((0..3).map(|i| entry("r", &body(i))).collect())
            .await
            .unwrap();
        let got = q.read_from(0, 100).unwrap();
        for m in &got {
            assert!(
                seen.insert(m.seq),
                "round {round}: sequence {} used twice",
                m.seq
            );
        }
        // Delivered: the queue is empty when it closes, and when it opens again.
        q.remove(got.iter().map(|m| m.seq).collect()).await.unwrap();
        wait_for("the delete", || q.depth().unwrap() == 0).await;
        // A compaction of the empty file keeps the high-water mark too.
        if round == 2 {
            q.store.compact().unwrap();
        }
        q.close().await;
    }
    assert_eq!(seen.len(), 15);
}

/// Opens the queue at `path` once the last writer has let go of the file.
async fn reopen(path: &std::path::Path, o: QueueOptions) -> Queue {
    for _ in 0..100 {
        if let Ok(q) = Queue::open("t", path, o) {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} does not open again", path.display());
}

/// A small disk on a fresh directory.
fn small_disk(mib: u64) -> (tempfile::TempDir, SmallDisk) {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), mib);
    (dir, disk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_reserve_drop_oldest_keeps_the_newest_and_reports_it() {
    let (_dir, disk) = small_disk(16);
    let o = QueueOptions {
        min_free_bytes: Some(8 << 20),
        ..opts()
    };
    let q = Queue::open("t", &disk.path().join("q.redb"), o).unwrap();
    assert!(q.problem().is_none());
    let mut next = 0;
    while q.problem().is_none() {
        q.append((next..next + 200).map(|i| entry("r", &body(i))).collect())
            .await
            .unwrap();
        next += 200;
        assert!(next < 200_000, "the reserve was never reached");
    }
    let problem = q.problem().unwrap();
    assert!(problem.contains("reserve"), "{problem}");
    assert!(!q.stats().writable.load(Ordering::Relaxed));
    // From here the queue holds what it holds: new results push the oldest out.
    let held = q.stats().bytes.load(Ordering::Relaxed);
    for _ in 0..50 {
        q.append((next..next + 200).map(|i| entry("r", &body(i))).collect())
            .await
            .unwrap();
        next += 200;
    }
    let dropped = q.stats().dropped_oldest.load(Ordering::Relaxed);
    assert!(dropped >= 50 * 200 - 200, "{dropped} dropped");
    assert!(q.stats().bytes.load(Ordering::Relaxed) <= held);
    let kept = q.read_from(0, 1_000_000).unwrap();
    assert_eq!(
        kept.len() as u64 + dropped,
        next as u64,
        "every result kept or counted"
    );
    // The newest ones, in order.
    assert_eq!(kept.last().unwrap().payload, Bytes::from(body(next - 1)));
    assert!(kept.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(q.stats().storage_errors.load(Ordering::Relaxed), 0);
    assert!(
        free_bytes(disk.path()).unwrap() > 4 << 20,
        "the reserve held"
    );
    // Delivering everything and compacting gives the space back: writable again.
    let seqs: Vec<u64> = kept.iter().map(|m| m.seq).collect();
    q.remove(seqs).await.unwrap();
    wait_for("room again", || q.problem().is_none()).await;
    assert!(q.stats().writable.load(Ordering::Relaxed));
}

#[test]
fn the_default_reserve_is_a_twentieth_of_the_disk_at_most_64_mib() {
    let (_dir, disk) = small_disk(16);
    assert_eq!(default_reserve(disk.path()), (16 << 20) / 20);
    let (_dir, big) = small_disk(4096);
    assert_eq!(default_reserve(big.path()), 64 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_disk_reserve_reject_new_refuses_and_counts() {
    let (_dir, disk) = small_disk(16);
    let o = QueueOptions {
        min_free_bytes: Some(8 << 20),
        ..limited(None, OnFull::RejectNew, None)
    };
    let q = Queue::open("t", &disk.path().join("q.redb"), o).unwrap();
    let mut accepted = 0;
    let mut refused = 0;
    for round in 0..400 {
        match q
            .append(
                (0..200)
                    .map(|i| entry("r", &body(round * 200 + i)))
                    .collect(),
            )
            .await
        {
            Ok(()) => accepted += 200,
            Err(StoreError::Full { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(refused >= 5, "never refused: the reserve was never reached");
    assert!(q.problem().is_some());
    let kept = q.read_from(0, 1_000_000).unwrap();
    let rejected = q.stats().rejected.load(Ordering::Relaxed);
    // What was accepted is held, all of it, oldest first; the refusals are counted.
    assert!(
        kept.len() >= accepted,
        "{} held, {accepted} accepted",
        kept.len()
    );
    assert_eq!(kept[0].payload, Bytes::from(body(0)));
    assert!(rejected >= 5 * 200 - 200, "{rejected}");
    assert_eq!(q.stats().storage_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_recovered_in_process_without_losing_what_was_committed() {
    let (_dir, disk) = small_disk(16);
    let path = disk.path().join("q.redb");
    // No reserve: the disk fills up under the queue and its writes fail.
    let q = Queue::open("t", &path, opts()).unwrap();
    q.append((0..100).map(|i| entry("r", &body(i))).collect())
        .await
        .unwrap();
    let first_ten: Vec<u64> = q.read_from(0, 10).unwrap().iter().map(|m| m.seq).collect();
    let filler = disk.fill();
    let mut next = 100;
    let mut failures = 0;
    for _ in 0..200 {
        match q
            .append((next..next + 500).map(|i| entry("r", &body(i))).collect())
            .await
        {
            Ok(()) => next += 500,
            Err(e) => {
                assert!(e.is_storage_failure(), "{e}");
                failures += 1;
                if failures >= 3 {
                    break;
                }
            }
        }
    }
    assert!(failures >= 3, "the disk never filled");
    assert!(q.problem().is_some(), "a failing queue says so");
    assert!(!q.stats().writable.load(Ordering::Relaxed));
    assert!(q.stats().storage_errors.load(Ordering::Relaxed) > 0);
    // Deliveries confirmed meanwhile are deleted once the store works again.
    q.remove(first_ten).await.unwrap();
    // Space comes back: the same queue, without a restart, takes results again and
    // still holds everything it committed, under ever rising sequence numbers.
    std::fs::remove_file(filler).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if q.append(vec![entry("r", &body(next))]).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the queue did not recover: {:?}", q.problem());
    next += 1;
    wait_for("writable again", || q.problem().is_none()).await;
    let kept = q.read_from(0, 1_000_000).unwrap();
    let ns: Vec<usize> = kept.iter().map(|m| n_of(&m.payload)).collect();
    assert_eq!(
        ns,
        (10..next).collect::<Vec<_>>(),
        "all but the ten delivered"
    );
    assert!(kept.windows(2).all(|w| w[1].seq > w[0].seq));
    // Deliveries work again too.
    q.remove(kept.iter().map(|m| m.seq).collect())
        .await
        .unwrap();
    wait_for("the delete", || q.depth().unwrap() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_an_empty_queue_holds_results_back_until_space_returns() {
    let (_dir, disk) = small_disk(16);
    let o = QueueOptions {
        min_free_bytes: Some(4 << 20),
        ..opts()
    };
    let q = Queue::open("t", &disk.path().join("q.redb"), o).unwrap();
    let filler = disk.fill();
    // Nothing old to drop: the results wait (the caller retries) rather than go.
    let e = q
        .append(vec![entry("r", &body(0))])
        .await
        .expect_err("taken below the reserve");
    assert!(e.is_storage_failure(), "{e}");
    assert!(q.problem().is_some_and(|p| p.contains("reserve")));
    assert_eq!(q.stats().dropped_oldest.load(Ordering::Relaxed), 0);
    std::fs::remove_file(filler).unwrap();
    wait_for("room again", || q.problem().is_none()).await;
    q.append(vec![entry("r", &body(0))]).await.unwrap();
    assert_eq!(q.depth().unwrap(), 1);
}
