//! The durable store-and-forward queue (`fieldgate::queue::Queue`), driven through its
//! public API as the gateway's stream tasks and uplink drive it, on a file on the real
//! disk, with the gateway's default queue settings (`QueueConfig::default()`: no commit
//! delay, 4 MiB cache, 1 GiB drop-oldest limit).
//!
//! Run with `cargo bench -p fieldgate --bench queue`. Cases:
//! - `enqueue/P_producers/B`: P tasks each appending batches of B entries in a loop,
//!   every append awaited until durable (group commit). One iteration is one append per
//!   producer, P × B entries;
//! - `enqueue_delay_5ms/P_producers/B`: the same with `commit_delay = 5ms`, for
//!   contrast (appends wait for others to share their commit);
//! - `baseline/write_sync_data/B`: the same bytes an append of B entries makes (encoded
//!   entries and their keys) written to a plain file with `write_all` + `sync_data` per
//!   batch: what the disk allows per fsync;
//! - `drain/read_512_remove`: a backlog of 100,000 entries read with `read_from(seq, 512)`
//!   and deleted with `remove`, 512 at a time, as the uplink does, until the queue is
//!   empty, including the writer's work on the deletes (the timing ends when a flush
//!   has passed through the writer). One iteration is the whole backlog;
//! - `steady/churn_1000`: a constant backlog of 100,000 entries; each iteration appends
//!   1,000 (durable) and removes the oldest 1,000. Afterwards the bench prints the
//!   bytes the queue file takes on disk per payload byte held, and the file's length
//!   per payload byte (criterion measures time only), and how redb uses the pages.
//!
//! Entries are 150-byte JSON rows under the rule name `forward`. The queue files are
//! created under `$FIELDGATE_BENCH_DIR` when set, else under the target directory's
//! `tmp` (the build's disk, not a tmpfs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use fieldgate::config::QueueConfig;
use fieldgate::queue::{Queue, QueueOptions};
use tokio::runtime::Runtime;

/// Every entry's payload length.
const PAYLOAD_BYTES: usize = 150;
const RULE: &str = "forward";
/// What the store adds to each entry: format byte, enqueue time, name length (the
/// store's documented layout), the rule name and the 8-byte key.
const ENTRY_OVERHEAD: usize = 1 + 8 + 2 + RULE.len() + 8;
/// Distinct payloads cycled through.
const POOL: usize = 4096;
/// Backlog drained per `drain` iteration and held during `steady`.
const BACKLOG: usize = 100_000;
/// Most entries the uplink reads at a time (its `READ_BATCH`).
const READ_BATCH: usize = 512;
/// Entries appended and removed per `steady` iteration.
const CHURN: usize = 1000;

/// A multi-thread runtime with two workers, as the gateway runs on this machine.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A fresh directory for one case's queue file.
fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("FIELDGATE_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench directory");
    tempfile::tempdir_in(base).expect("temporary directory")
}

/// The gateway's default queue options, with `commit_delay` replaced.
fn options(commit_delay: Option<Duration>) -> QueueOptions {
    let cfg = QueueConfig::default();
    QueueOptions {
        commit_delay: commit_delay.unwrap_or(cfg.commit_delay),
        ..cfg.options("cloud")
    }
}

/// A rule result as the pipeline encodes it: a JSON row of exactly `PAYLOAD_BYTES`.
fn payload(i: usize) -> Bytes {
    let s = format!(
        r#"{{"device":"press-{:04}","ts":{},"temp":{:06.3},"pressure":{:.2},"humidity":{:05.2},"status":"running","line":"L{}","shift":{},"seq":{:010}}}"#,
        i % 1000,
        1_767_225_600_000u64 + i as u64,
        10.0 + (i % 8000) as f64 / 100.0,
        1000.0 + (i % 9000) as f64 / 100.0,
        10.0 + (i % 8900) as f64 / 100.0,
        i % 8,
        i % 3,
        i,
    );
    assert_eq!(s.len(), PAYLOAD_BYTES, "{s}");
    Bytes::from(s)
}

type Entries = Vec<(Arc<str>, Bytes)>;

fn pool() -> Vec<Bytes> {
    (0..POOL).map(payload).collect()
}

/// `n` entries starting at `start` in the pool.
fn batch(pool: &[Bytes], rule: &Arc<str>, start: usize, n: usize) -> Entries {
    (0..n)
        .map(|i| (rule.clone(), pool[(start + i) % pool.len()].clone()))
        .collect()
}

fn open(rt: &Runtime, dir: &tempfile::TempDir, opts: QueueOptions) -> Queue {
    let path = dir.path().join("cloud.redb");
    rt.block_on(async { Queue::open("cloud", &path, opts) })
        .expect("queue opens")
}

/// Appends `n` entries in commits of up to 16k entries and waits until they are durable.
async fn fill(q: &Queue, pool: &[Bytes], rule: &Arc<str>, n: usize) {
    let mut done = 0;
    while done < n {
        let k = (n - done).min(16 * 1024);
        q.append(batch(pool, rule, done, k)).await.expect("append");
        done += k;
    }
}

/// Waits until the writer has handled every request sent before (and synced deletes).
async fn barrier(q: &Queue) {
    q.clone().close().await;
}

/// `producers` tasks each append `iters` batches of `size`, one after the other.
async fn produce(q: &Queue, pool: &Arc<Vec<Bytes>>, producers: usize, size: usize, iters: u64) {
    let rule: Arc<str> = Arc::from(RULE);
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let q = q.clone();
            let entries = batch(pool, &rule, p * 997, size);
            tokio::spawn(async move {
                for _ in 0..iters {
                    q.append(entries.clone()).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("producer task");
    }
}

/// One group of enqueue cases: every producer count with every batch size.
struct EnqueueGroup {
    name: &'static str,
    /// `None`: the gateway's default commit delay.
    delay: Option<Duration>,
    producers: &'static [usize],
    sizes: &'static [usize],
}

const ENQUEUE: [EnqueueGroup; 2] = [
    EnqueueGroup {
        name: "enqueue",
        delay: None,
        producers: &[1, 4],
        sizes: &[1, 100, 1000, 4096],
    },
    EnqueueGroup {
        name: "enqueue_delay_5ms",
        delay: Some(Duration::from_millis(5)),
        producers: &[1, 4],
        sizes: &[1, 100, 1000],
    },
];

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let pool = Arc::new(pool());
    for EnqueueGroup {
        name: group,
        delay,
        producers: producer_counts,
        sizes,
    } in ENQUEUE
    {
        let mut g = c.benchmark_group(group);
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for &producers in producer_counts {
            for &size in sizes {
                g.throughput(Throughput::Elements((producers * size) as u64));
                let id = BenchmarkId::new(format!("{producers}_producers"), size);
                // One queue file per case, created only when the case runs.
                let mut state: Option<(tempfile::TempDir, Queue)> = None;
                g.bench_function(id, |b| {
                    let (_, q) = state.get_or_insert_with(|| {
                        let dir = bench_dir();
                        let q = open(&rt, &dir, options(delay));
                        (dir, q)
                    });
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let start = Instant::now();
                            produce(q, &pool, producers, size, iters).await;
                            start.elapsed()
                        })
                    })
                });
                if let Some((dir, q)) = state.take() {
                    rt.block_on(q.close());
                    drop(dir);
                }
            }
        }
        g.finish();
    }
}

fn baseline(c: &mut Criterion) {
    use std::io::Write;
    let mut g = c.benchmark_group("baseline");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for size in [1usize, 100, 1000, 4000, 16384] {
        g.throughput(Throughput::Elements(size as u64));
        // The bytes of `size` stored entries: payload plus what the store adds.
        let bytes = vec![b'x'; size * (PAYLOAD_BYTES + ENTRY_OVERHEAD)];
        let mut state: Option<(tempfile::TempDir, std::fs::File)> = None;
        g.bench_function(BenchmarkId::new("write_sync_data", size), |b| {
            let (_, file) = state.get_or_insert_with(|| {
                let dir = bench_dir();
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("raw.log"))
                    .expect("baseline file");
                (dir, file)
            });
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    file.write_all(&bytes).expect("write");
                    file.sync_data().expect("sync_data");
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn drain(c: &mut Criterion) {
    let rt = runtime();
    let pool = pool();
    let rule: Arc<str> = Arc::from(RULE);
    let mut g = c.benchmark_group("drain");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(BACKLOG as u64));
    let mut state: Option<(tempfile::TempDir, Queue)> = None;
    g.bench_function("read_512_remove", |b| {
        let (_, q) = state.get_or_insert_with(|| {
            let dir = bench_dir();
            let q = open(&rt, &dir, options(None));
            (dir, q)
        });
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    fill(q, &pool, &rule, BACKLOG).await;
                    barrier(q).await;
                    let start = Instant::now();
                    let mut cursor = 0;
                    let mut read = 0;
                    loop {
                        let msgs = q.read_from(cursor, READ_BATCH).expect("read");
                        let Some(last) = msgs.last().map(|m| m.seq) else {
                            break;
                        };
                        cursor = last + 1;
                        read += msgs.len();
                        q.remove(msgs.iter().map(|m| m.seq).collect())
                            .await
                            .expect("remove");
                    }
                    barrier(q).await;
                    spent += start.elapsed();
                    assert_eq!(read, BACKLOG);
                    assert_eq!(q.depth().expect("depth"), 0);
                }
                spent
            })
        })
    });
    g.finish();
    if let Some((dir, q)) = state.take() {
        let compactions = q
            .stats()
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("drain: {compactions} compaction(s) of the queue file during the run");
        rt.block_on(q.close());
        drop(dir);
    }
}

/// The `steady` case's queue and what it saw.
struct Churn {
    dir: tempfile::TempDir,
    q: Queue,
    /// Next entry to remove.
    cursor: u64,
    /// Next pool index to append.
    next: usize,
    /// Entries appended (and removed) since the backlog was filled.
    churned: u64,
    /// (file length, bytes allocated on disk, entries held) after each timed call.
    samples: Vec<(u64, u64, u64)>,
}

/// The queue file's length (what `Queue::file_bytes` reports) and the bytes the file
/// system allocated for it (`st_blocks` × 512: the file is sparse, so they differ).
fn file_sizes(q: &Queue, path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(path).map_or(0, |m| m.blocks() * 512);
    (q.file_bytes(), allocated)
}

fn steady(c: &mut Criterion) {
    let rt = runtime();
    let pool = pool();
    let rule: Arc<str> = Arc::from(RULE);
    let mut g = c.benchmark_group("steady");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(CHURN as u64));
    let mut state: Option<Churn> = None;
    g.bench_function("churn_1000", |b| {
        let s = state.get_or_insert_with(|| {
            let dir = bench_dir();
            let q = open(&rt, &dir, options(None));
            rt.block_on(fill(&q, &pool, &rule, BACKLOG));
            Churn {
                dir,
                q,
                cursor: 0,
                next: BACKLOG,
                churned: 0,
                samples: Vec::new(),
            }
        });
        b.iter_custom(|iters| {
            let spent = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    s.q.append(batch(&pool, &rule, s.next, CHURN))
                        .await
                        .expect("append");
                    s.next += CHURN;
                    let msgs = s.q.read_from(s.cursor, CHURN).expect("read");
                    let last = msgs.last().map_or(s.cursor, |m| m.seq);
                    s.cursor = last + 1;
                    s.q.remove(msgs.iter().map(|m| m.seq).collect())
                        .await
                        .expect("remove");
                    s.churned += CHURN as u64;
                }
                start.elapsed()
            });
            let held = s.q.depth().expect("depth");
            let (len, allocated) = file_sizes(&s.q, &s.dir.path().join("cloud.redb"));
            s.samples.push((len, allocated, held));
            spent
        })
    });
    g.finish();
    let Some(s) = state.take() else { return };
    rt.block_on(barrier(&s.q));
    let path = s.dir.path().join("cloud.redb");
    let held = s.q.depth().expect("depth");
    let (len, allocated) = file_sizes(&s.q, &path);
    let ratio = |bytes: u64, held: u64| bytes as f64 / (held as f64 * PAYLOAD_BYTES as f64);
    // The second half of the run, once the backlog has been replaced a few times.
    let late = &s.samples[s.samples.len() / 2..];
    let range = |pick: fn(&(u64, u64, u64)) -> u64| {
        late.iter().fold((f64::MAX, 0f64), |(lo, hi), x| {
            let r = ratio(pick(x), x.2);
            (lo.min(r), hi.max(r))
        })
    };
    let (alo, ahi) = range(|x| x.1);
    let (llo, lhi) = range(|x| x.0);
    let entry = (PAYLOAD_BYTES + ENTRY_OVERHEAD) as f64 / PAYLOAD_BYTES as f64;
    eprintln!(
        "steady: {churned} entries appended and removed ({turns:.1} × the backlog); \
         backlog {held} entries of {PAYLOAD_BYTES} B payload = {payload} B\n\
         steady: disk bytes per payload byte = {a:.3} at the end (second half of the run: \
         {alo:.3}–{ahi:.3}): {allocated} B allocated on disk\n\
         steady: file length per payload byte = {l:.3} (second half: {llo:.3}–{lhi:.3}): \
         {len} B, what Queue::file_bytes reports; the entry layout alone is {entry:.3}",
        churned = s.churned,
        turns = s.churned as f64 / BACKLOG as f64,
        payload = held * PAYLOAD_BYTES as u64,
        a = ratio(allocated, held),
        l = ratio(len, held),
    );
    rt.block_on(s.q.close());
    store_report(&path);
}

/// Prints how the closed queue file's pages are used (redb's own accounting), to say
/// where the bytes per payload byte go.
fn store_report(path: &std::path::Path) {
    // The writer thread drops its database handle shortly after the queue closes.
    let mut db = None;
    for _ in 0..100 {
        match redb::Database::open(path) {
            Ok(d) => {
                db = Some(d);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let Some(db) = db else {
        eprintln!(
            "steady: cannot reopen {} for its page statistics",
            path.display()
        );
        return;
    };
    let tx = db.begin_write().expect("write transaction");
    let stats = tx.stats().expect("store statistics");
    tx.abort().expect("abort");
    let page = stats.page_size() as u64;
    let file = std::fs::metadata(path).map_or(0, |m| m.len());
    eprintln!(
        "steady: store pages ({page} B): {allocated} allocated = {alloc_b} B of the {file} B file; \
         {leaf} leaf + {branch} branch pages; keys and values stored {stored} B, \
         metadata {meta} B, fragmented {frag} B; tree height {height}",
        allocated = stats.allocated_pages(),
        alloc_b = stats.allocated_pages() * page,
        leaf = stats.leaf_pages(),
        branch = stats.branch_pages(),
        stored = stats.stored_bytes(),
        meta = stats.metadata_bytes(),
        frag = stats.fragmented_bytes(),
        height = stats.tree_height(),
    );
}

criterion::criterion_group!(benches, enqueue, baseline, drain, steady);
criterion::criterion_main!(benches);
