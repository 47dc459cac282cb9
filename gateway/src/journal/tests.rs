use std::time::Duration;

use super::*;

fn opts(max_bytes: u64) -> JournalOptions {
    JournalOptions {
        max_bytes,
        segment_bytes: 4096,
        max_payload: 1024,
    }
}

fn msg(i: usize) -> Message {
    Message {
        topic: format!("t/{}", i % 3),
        payload: Bytes::from(format!("{{\"i\":{i}}}")),
    }
}

async fn take(rx: &mut mpsc::UnboundedReceiver<Record>, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(r)) => out.push(r),
            other => panic!("journal gave {} of {n} entries: {other:?}", out.len()),
        }
    }
    out
}

#[tokio::test]
async fn durable_appends_come_out_in_order_and_come_back_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut rx) = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    for i in 0..100 {
        j.append(vec![msg(i)], true).await.unwrap();
    }
    let got = take(&mut rx, 100).await;
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert_eq!(&got[41].payload[..], b"{\"i\":41}");
    // Ingest took the first 60 and they were processed; the rest are held by a batch.
    let holds = j.holds().clone();
    holds.taken(60, false);
    let hold = holds.taken(61, true);
    holds.taken(100, false);
    j.close().await;
    drop(hold);

    let (j, mut rx) = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    let again = take(&mut rx, 40).await;
    assert_eq!(again[0].seq, 61);
    assert_eq!(again[39].seq, 100);
    assert_eq!(&again[0].payload[..], b"{\"i\":60}");
    assert!(
        rx.try_recv().is_err(),
        "only the unreleased entries come back"
    );
    assert_eq!(j.stats().recovered.load(Ordering::Relaxed), 40);
    // New entries continue the numbering.
    j.append(vec![msg(7)], true).await.unwrap();
    assert_eq!(take(&mut rx, 1).await[0].seq, 101);
    j.holds().taken(101, false);
    j.close().await;

    let (_j, mut rx) = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(rx.try_recv().is_err(), "all released");
}

#[tokio::test]
async fn a_full_journal_holds_appends_back_until_entries_are_released() {
    let dir = tempfile::tempdir().unwrap();
    // Ten messages of the same size fill it.
    let one = record::encoded_len("t/0", b"{\"i\":10}") as u64;
    let (j, mut rx) = Journal::open(dir.path(), opts(one * 10)).unwrap();
    for i in 10..20 {
        j.append(vec![msg(i)], true).await.unwrap();
    }
    let waiting = {
        let j = j.clone();
        tokio::spawn(async move { j.append(vec![msg(20)], true).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the eleventh append waits for room");
    take(&mut rx, 10).await;
    j.holds().taken(3, false);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("room came back")
        .unwrap()
        .unwrap();
    assert!(j.stats().waits.load(Ordering::Relaxed) >= 1);
    assert!(matches!(
        j.append(
            vec![Message {
                topic: "t".into(),
                payload: Bytes::from(vec![0u8; 1000]),
            }],
            true
        )
        .await,
        Err(JournalError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn segments_are_deleted_once_released_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut rx) = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    for i in 0..2000 {
        j.append(vec![msg(i)], i % 100 == 99).await.unwrap();
    }
    j.append(vec![msg(0)], true).await.unwrap();
    take(&mut rx, 2001).await;
    let files = || {
        list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
    };
    assert!(files().len() > 5, "4 KiB segments: {:?}", files());
    j.holds().taken(1990, false);
    j.close().await;
    let left = files();
    assert!(left.len() <= 2, "released segments are deleted: {left:?}");

    // A crash in the middle of a write leaves half a record at the end.
    let last = left.last().unwrap().clone();
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let (j, mut rx) = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    let back = take(&mut rx, 11).await;
    assert_eq!(back[0].seq, 1991);
    assert_eq!(back[10].seq, 2001);
    j.append(vec![msg(5)], true).await.unwrap();
    assert_eq!(take(&mut rx, 1).await[0].seq, 2002);
    j.close().await;
    let (_j, mut rx) = Journal::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(
        take(&mut rx, 12).await[11].seq,
        2002,
        "the repaired file reads whole"
    );
}

#[tokio::test]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (j, mut rx) = Journal::open(dir.path(), opts(1 << 24)).unwrap();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                j.append(vec![msg(t * 100 + i)], true).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    take(&mut rx, 1000).await;
    let commits = j.stats().commits.load(Ordering::Relaxed);
    assert!(
        commits < 1000,
        "1000 appends from 50 tasks took {commits} commits"
    );
}

#[test]
fn the_release_point_stops_below_the_oldest_batch_in_flight() {
    let holds = Arc::new(Holds::default());
    assert_eq!(holds.release_point(), 0);
    holds.taken(3, false);
    assert_eq!(holds.release_point(), 3);
    let a = holds.taken(4, true);
    let b = holds.taken(6, true);
    holds.taken(9, false);
    assert_eq!(holds.release_point(), 3);
    drop(a);
    assert_eq!(holds.release_point(), 5);
    drop(b);
    assert_eq!(holds.release_point(), 9);
}
