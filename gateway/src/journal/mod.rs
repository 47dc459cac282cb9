//! The ingest journal: every message the embedded broker accepts is on disk here before
//! the device gets its PUBACK.
//!
//! Appends are group-committed by one writer thread: it takes every append waiting for
//! it, writes them with one `write`, makes them durable with one `fdatasync` and only then
//! answers them, so appends arriving during a sync share the next one. Committed entries
//! go, in order, to ingest ([`Journal::open`]'s receiver).
//!
//! An entry stays in the journal until ingest has handed it to the streams that read it
//! and those have processed it and made their results durable in the sink queues: a
//! [`Hold`] travels with every batch and is dropped once that is done ([`Holds`]). After
//! a crash, the entries past the last release point are read back and processed again.
//!
//! The journal is bounded in bytes: an append waits while the unreleased entries fill
//! it, so devices are held back (their PUBACKs wait) and nothing acknowledged is dropped.
//! A write or sync that fails (a full disk, an I/O error) is undone and retried with a
//! back-off; its appends keep waiting.
//!
//! On disk: segment files `<first seq>.journal` of [`record`]s, and `released`, the
//! sequence number up to which everything has been processed.

mod record;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use record::Record;

/// Journal settings.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// Most bytes of unreleased entries; appends wait beyond it.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Largest payload an append can carry (the broker's packet limit).
    pub max_payload: usize,
}

/// Why an append was not taken.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The messages of one append take more room than the whole journal.
    #[error("a message of {size} bytes is larger than the whole journal ({max} bytes)")]
    TooLarge {
        /// Bytes the messages take in the journal.
        size: usize,
        /// The journal's size, `journal.max_bytes`.
        max: u64,
    },
    /// The journal's writer has stopped.
    #[error("the journal is closed")]
    Closed,
}

/// Journal counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Bytes and entries not released yet.
    pub bytes: AtomicU64,
    /// Entries not released yet.
    pub entries: AtomicU64,
    /// Entries appended since start.
    pub appended: AtomicU64,
    /// Commits (one sync each) and the time they took, with a histogram of it.
    pub commits: AtomicU64,
    /// Time the commits took, in nanoseconds.
    pub commit_nanos: AtomicU64,
    /// Commits that took at most each bound of [`COMMIT_BUCKETS`] (cumulative, like
    /// Prometheus buckets).
    pub commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    /// Writes or syncs that failed (each retried).
    pub write_errors: AtomicU64,
    /// Appends that had to wait for room, and the time they waited.
    pub waits: AtomicU64,
    /// Time appends waited for room, in nanoseconds.
    pub wait_nanos: AtomicU64,
    /// Entries read back at start.
    pub recovered: AtomicU64,
    /// Set while the last write or sync failed.
    pub failing: AtomicBool,
}

/// Upper bounds of the commit-latency histogram, in seconds.
pub const COMMIT_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

impl JournalStats {
    fn commit_took(&self, d: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        let s = d.as_secs_f64();
        for (i, b) in COMMIT_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.commit_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Entries handed on and not processed yet: the lowest sequence number each batch in
/// flight holds, and how far ingest has read. Everything below both is released.
#[derive(Debug, Default)]
pub struct Holds {
    inner: Mutex<HoldsInner>,
}

#[derive(Debug, Default)]
struct HoldsInner {
    /// Lowest sequence number of a batch in flight → batches holding it.
    live: BTreeMap<u64, usize>,
    /// The last entry ingest has taken and routed.
    taken: u64,
}

impl Holds {
    /// Records that ingest routed entry `seq`; with `hold`, it starts a batch that must
    /// be processed before the entry is released.
    pub fn taken(self: &Arc<Self>, seq: u64, hold: bool) -> Option<Hold> {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        h.taken = h.taken.max(seq);
        if !hold {
            return None;
        }
        *h.live.entry(seq).or_default() += 1;
        Some(Hold {
            holds: self.clone(),
            low: seq,
        })
    }

    /// Every entry up to this sequence number has been processed.
    pub fn release_point(&self) -> u64 {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match h.live.keys().next() {
            Some(low) => (low - 1).min(h.taken),
            None => h.taken,
        }
    }
}

/// Keeps the entries of one batch, from `low` on, in the journal until dropped.
#[derive(Debug)]
pub struct Hold {
    holds: Arc<Holds>,
    low: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut h = self.holds.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = h.live.get_mut(&self.low) {
            *n -= 1;
            if *n == 0 {
                h.live.remove(&self.low);
            }
        }
    }
}

/// One message to journal.
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The payload as published.
    pub payload: Bytes,
}

/// A handle to the journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    tx: std::sync::mpsc::Sender<Command>,
    budget: Arc<Semaphore>,
    max_bytes: u64,
    stats: Arc<JournalStats>,
    holds: Arc<Holds>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Command {
    Append {
        messages: Vec<Message>,
        done: Option<oneshot::Sender<()>>,
    },
    Close(oneshot::Sender<()>),
}

/// Bytes one message holds of the journal's budget.
fn cost(m: &Message) -> u64 {
    record::encoded_len(&m.topic, &m.payload) as u64
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, reading back what was not released; those
    /// entries are the first the receiver gives, before any new ones.
    pub fn open(
        dir: &Path,
        opts: JournalOptions,
    ) -> anyhow::Result<(Journal, mpsc::UnboundedReceiver<Record>)> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the journal directory {}", dir.display()))?;
        let released = read_released(dir)?;
        let (out, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(JournalStats::default());
        let mut segments = Vec::new();
        let mut unreleased = VecDeque::new();
        let mut last_seq = released;
        let listed = list_segments(dir)?;
        let count = listed.len();
        for (i, (first, path)) in listed.into_iter().enumerate() {
            let file =
                File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let seg = record::read_segment(file, opts.max_payload.max(1 << 20))
                .with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(damage) = &seg.damage {
                tracing::warn!(
                    file = %path.display(),
                    %damage,
                    "journal segment ends in a damaged record (a write cut short by a \
                     crash was never acknowledged); keeping the records before it"
                );
                if i + 1 == count {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .with_context(|| format!("cannot repair {}", path.display()))?;
                    f.set_len(seg.valid_len)
                        .and_then(|_| f.sync_data())
                        .with_context(|| format!("cannot repair {}", path.display()))?;
                }
            }
            let mut seg_last = first.saturating_sub(1);
            for r in seg.records {
                seg_last = seg_last.max(r.seq);
                last_seq = last_seq.max(r.seq);
                if r.seq > released {
                    let c = record::encoded_len(&r.topic, &r.payload) as u64;
                    unreleased.push_back((r.seq, c));
                    stats.recovered.fetch_add(1, Ordering::Relaxed);
                    let _ = out.send(r);
                }
            }
            segments.push(SegmentFile {
                path,
                last: seg_last,
            });
        }
        let held: u64 = unreleased.iter().map(|(_, c)| c).sum();
        stats.bytes.store(held, Ordering::Relaxed);
        stats
            .entries
            .store(unreleased.len() as u64, Ordering::Relaxed);
        let recovered = unreleased.len();
        if recovered > 0 {
            tracing::info!(
                entries = recovered,
                bytes = held,
                "journal: processing again what was accepted but not processed before the stop"
            );
        }
        let max = usize::try_from(opts.max_bytes).unwrap_or(Semaphore::MAX_PERMITS);
        let max = max.min(Semaphore::MAX_PERMITS);
        let budget = Arc::new(Semaphore::new(max));
        budget.forget_permits(usize::try_from(held).unwrap_or(max));
        let holds = Arc::new(Holds::default());
        {
            let mut h = holds.inner.lock().unwrap_or_else(|e| e.into_inner());
            h.taken = released;
        }
        let (tx, commands) = std::sync::mpsc::channel();
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            opts,
            segments,
            current: None,
            next_seq: last_seq + 1,
            unreleased,
            released,
            released_written: released,
            last_checkpoint: Instant::now(),
            out,
            budget: budget.clone(),
            stats: stats.clone(),
            holds: holds.clone(),
            buf: Vec::new(),
        };
        writer.forget_released()?;
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(commands))
            .context("cannot start the journal's writer thread")?;
        Ok((
            Journal {
                shared: Arc::new(Shared {
                    tx,
                    budget,
                    max_bytes: opts.max_bytes,
                    stats,
                    holds,
                    writer: Mutex::new(Some(thread)),
                }),
            },
            rx,
        ))
    }

    /// The journal's counters.
    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.shared.stats
    }

    /// What keeps entries in the journal until they are processed.
    pub fn holds(&self) -> &Arc<Holds> {
        &self.shared.holds
    }

    /// Why the journal cannot take messages, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.shared
            .stats
            .failing
            .load(Ordering::Relaxed)
            .then(|| "the ingest journal cannot write to its disk".to_string())
    }

    /// Appends messages, waiting for room first. With `durable`, returns once they are on
    /// disk; without, once the writer has them (they are then on disk within one commit).
    pub async fn append(&self, messages: Vec<Message>, durable: bool) -> Result<(), JournalError> {
        let cost: u64 = messages.iter().map(cost).sum();
        if cost > self.shared.max_bytes {
            return Err(JournalError::TooLarge {
                size: cost as usize,
                max: self.shared.max_bytes,
            });
        }
        let n = u32::try_from(cost).map_err(|_| JournalError::TooLarge {
            size: cost as usize,
            max: self.shared.max_bytes,
        })?;
        let budget = &self.shared.budget;
        match budget.try_acquire_many(n) {
            Ok(p) => p.forget(),
            Err(_) => {
                let t = Instant::now();
                let p = budget
                    .acquire_many(n)
                    .await
                    .map_err(|_| JournalError::Closed)?;
                p.forget();
                let stats = &self.shared.stats;
                stats.waits.fetch_add(1, Ordering::Relaxed);
                stats
                    .wait_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
        let (done, durable_rx) = match durable {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        self.shared
            .tx
            .send(Command::Append { messages, done })
            .map_err(|_| JournalError::Closed)?;
        if let Some(rx) = durable_rx {
            rx.await.map_err(|_| JournalError::Closed)?;
        }
        Ok(())
    }

    /// Commits what is pending, records the release point and stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let thread = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct SegmentFile {
    path: PathBuf,
    /// Highest sequence number in it.
    last: u64,
}

struct Current {
    file: File,
    len: u64,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    opts: JournalOptions,
    /// Closed and current segments, oldest first (the last is the current one, if open).
    segments: Vec<SegmentFile>,
    current: Option<Current>,
    next_seq: u64,
    /// Committed entries not released yet: (seq, cost), in order.
    unreleased: VecDeque<(u64, u64)>,
    released: u64,
    released_written: u64,
    last_checkpoint: Instant,
    out: mpsc::UnboundedSender<Record>,
    budget: Arc<Semaphore>,
    stats: Arc<JournalStats>,
    holds: Arc<Holds>,
    buf: Vec<u8>,
}

/// How often the writer looks at the release point when idle.
const IDLE_TICK: Duration = Duration::from_millis(20);
/// Least time between two writes of the release point.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

impl Writer {
    fn run(mut self, commands: std::sync::mpsc::Receiver<Command>) {
        let mut backoff = Duration::from_millis(50);
        let mut failed_log = crate::logging::RateLimited::new(Duration::from_secs(10));
        let mut pending: Vec<Command> = Vec::new();
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            if pending.is_empty() && closing.is_none() {
                match commands.recv_timeout(IDLE_TICK) {
                    Ok(c) => pending.push(c),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            while let Ok(c) = commands.try_recv() {
                pending.push(c);
            }
            let mut appends = Vec::new();
            for c in pending.drain(..) {
                match c {
                    Command::Append { messages, done } => appends.push((messages, done)),
                    Command::Close(tx) => closing = Some(tx),
                }
            }
            if !appends.is_empty() {
                match self.commit(&appends) {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        self.stats.failing.store(false, Ordering::Relaxed);
                        for (_, done) in appends {
                            if let Some(d) = done {
                                let _ = d.send(());
                            }
                        }
                    }
                    Err(e) => {
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        self.stats.failing.store(true, Ordering::Relaxed);
                        if let Some(held) = failed_log.allow(1) {
                            tracing::error!(
                                error = %e,
                                not_logged_before = held,
                                "journal write failed; devices wait for their \
                                 acknowledgements until it succeeds"
                            );
                        }
                        // Back into the queue, in order, ahead of what came since.
                        pending = appends
                            .into_iter()
                            .map(|(messages, done)| Command::Append { messages, done })
                            .collect();
                        if let Some(tx) = closing.take() {
                            // Stopping: what cannot be written was never acknowledged.
                            let _ = tx.send(());
                            return;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            self.release(closing.is_some());
            if let Some(tx) = closing.take() {
                let _ = tx.send(());
                return;
            }
        }
        self.release(true);
    }

    /// Writes and syncs one group of appends, then hands the entries to ingest. On an
    /// error the segment is cut back to where it was, so nothing of the group remains.
    fn commit(
        &mut self,
        appends: &[(Vec<Message>, Option<oneshot::Sender<()>>)],
    ) -> std::io::Result<()> {
        let started = Instant::now();
        if self
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.opts.segment_bytes)
        {
            self.rotate()?;
        }
        self.buf.clear();
        let mut seq = self.next_seq;
        for (messages, _) in appends {
            for m in messages {
                record::encode(&mut self.buf, seq, &m.topic, &m.payload);
                seq += 1;
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return Err(std::io::Error::other("no open journal segment"));
        };
        let before = cur.len;
        let written = cur
            .file
            .write_all(&self.buf)
            .and_then(|_| cur.file.sync_data());
        if let Err(e) = written {
            let _ = cur.file.set_len(before);
            let _ = std::io::Seek::seek(&mut cur.file, std::io::SeekFrom::Start(before));
            return Err(e);
        }
        cur.len += self.buf.len() as u64;
        self.stats.commit_took(started.elapsed());
        let mut seq = self.next_seq;
        for (messages, _) in appends {
            for m in messages {
                let c = record::encoded_len(&m.topic, &m.payload) as u64;
                self.unreleased.push_back((seq, c));
                self.stats.bytes.fetch_add(c, Ordering::Relaxed);
                self.stats.entries.fetch_add(1, Ordering::Relaxed);
                self.stats.appended.fetch_add(1, Ordering::Relaxed);
                let _ = self.out.send(Record {
                    seq,
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                });
                seq += 1;
            }
        }
        if let Some(last) = self.segments.last_mut() {
            last.last = seq - 1;
        }
        self.next_seq = seq;
        Ok(())
    }

    /// Starts a new segment file, named by the next sequence number.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = self.dir.join(format!("{:020}.journal", self.next_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        sync_dir(&self.dir)?;
        self.segments.push(SegmentFile {
            path,
            last: self.next_seq.saturating_sub(1),
        });
        self.current = Some(Current { file, len });
        Ok(())
    }

    /// Gives back the room of released entries, deletes segments wholly released and,
    /// now and then (or with `now`), records the release point.
    fn release(&mut self, now: bool) {
        let point = self
            .holds
            .release_point()
            .min(self.next_seq.saturating_sub(1));
        if point > self.released {
            self.released = point;
            let mut freed = 0u64;
            let mut n = 0u64;
            while let Some(&(seq, c)) = self.unreleased.front() {
                if seq > point {
                    break;
                }
                self.unreleased.pop_front();
                freed += c;
                n += 1;
            }
            self.stats.bytes.fetch_sub(freed, Ordering::Relaxed);
            self.stats.entries.fetch_sub(n, Ordering::Relaxed);
            self.budget.add_permits(freed as usize);
        }
        if self.released > self.released_written
            && (now || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
        {
            match write_released(&self.dir, self.released) {
                Ok(()) => {
                    self.released_written = self.released;
                    self.last_checkpoint = Instant::now();
                    if let Err(e) = self.forget_released() {
                        tracing::warn!(error = %e, "cannot delete a released journal segment");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the journal's release point");
                    self.last_checkpoint = Instant::now();
                }
            }
        }
    }

    /// Deletes the segments, but the current one, whose entries are all released.
    fn forget_released(&mut self) -> anyhow::Result<()> {
        let keep_current = usize::from(self.current.is_some());
        while self.segments.len() > keep_current && self.segments[0].last <= self.released_written {
            let s = self.segments.remove(0);
            std::fs::remove_file(&s.path)?;
        }
        Ok(())
    }
}

/// The segment files in `dir`, by first sequence number.
fn list_segments(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

const RELEASED: &str = "released";

fn read_released(dir: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(dir.join(RELEASED)) {
        Ok(s) => s.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{} is not a sequence number; remove it to process the whole journal again",
                dir.join(RELEASED).display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read {}: {e}",
            dir.join(RELEASED).display()
        )),
    }
}

/// Records the release point: written aside, synced, renamed over the old one.
fn write_released(dir: &Path, point: u64) -> std::io::Result<()> {
    let tmp = dir.join("released.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(point.to_string().as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(RELEASED))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
