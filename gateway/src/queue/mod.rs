//! The durable queue in front of each sink.
//!
//! Every rule result addressed to a sink is appended here before anything else happens
//! to it. Appends are group-committed: one writer thread per queue gathers the appends
//! waiting for it (and those that arrive within `commit_delay`), writes them in one
//! transaction and makes it durable with a single fsync; an append is accepted only
//! when that commit returned.
//! The sink's uplink worker reads from the oldest entry on and deletes an entry only
//! after the sink confirmed it, so a crash or an outage can repeat a delivery but never
//! lose one.
//!
//! Each queue is bounded: a largest size in bytes with an on-full policy (drop the
//! oldest entries, or refuse new ones) and an optional time to live. Every entry a limit
//! removes or refuses is counted in [`QueueStats`] and logged. Once a backlog has
//! drained, the store's file is compacted so the disk space goes back.
//!
//! A full disk is a state of the queue, not a failure of the gateway. When the file
//! system is down to `min_free_bytes`, the queue stops growing: it holds what it holds,
//! and the on-full policy decides about new results as at `max_bytes`. Should a commit
//! still fail (the disk filled by something else, an I/O error), nothing of it was
//! committed; the store is reopened in-process, the appends waiting for that commit are
//! answered with a [`StoreError::Unwritable`] their callers retry, and the queue reports
//! itself not writable ([`Queue::problem`]) until a commit succeeds again.
//!
//! The store behind the queue is redb ([`store`]); see `docs/architecture.md` for why.

mod store;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_connectors::sink::Message;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use store::Store;
pub use store::{Entry, StoreError, entry_bytes};
use writer::{Request, Writer};

/// How often the writer expires old entries and considers compacting.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// A handle to one sink's durable queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    store: Arc<Store>,
    stats: Arc<QueueStats>,
    requests: mpsc::Sender<Request>,
    /// Highest committed sequence number (0 before the first entry).
    committed: watch::Receiver<u64>,
}

/// Queue settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Longest an append waits for others to share its commit.
    pub commit_delay: Duration,
    /// Memory redb may use as cache, in bytes.
    pub cache_bytes: usize,
    /// Largest size, on-full policy and time to live.
    pub limits: QueueLimits,
    /// Free space the queue leaves on its file system: below it, the queue stops growing.
    /// 0: no reserve (the queue grows until a write fails); `None`: [`default_reserve`].
    pub min_free_bytes: Option<u64>,
}

/// What a full queue does with new results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Accept the new results and drop the oldest entries to make room.
    #[default]
    DropOldest,
    /// Take the new results that fit, in order, and refuse the rest (counted and
    /// logged).
    RejectNew,
}

/// Bounds of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueLimits {
    /// Largest size of the entries held, in bytes; `None`: unbounded.
    pub max_bytes: Option<u64>,
    /// What happens at `max_bytes`: `drop_oldest` (default) or `reject_new`.
    pub on_full: OnFull,
    /// Entries older than this are dropped; `None`: kept until delivered.
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// What a queue holds and has dropped, for the operations surface.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Entries waiting.
    pub entries: AtomicU64,
    /// Bytes they take in the store.
    pub bytes: AtomicU64,
    /// Entries dropped to make room (`on_full = "drop_oldest"`).
    pub dropped_oldest: AtomicU64,
    /// Results refused because the queue was full (`on_full = "reject_new"`).
    pub rejected: AtomicU64,
    /// Entries dropped after their time to live.
    pub expired: AtomicU64,
    /// Compactions of the store's file.
    pub compactions: AtomicU64,
    /// Operations of the store that failed on the disk (a full disk, an I/O error).
    pub storage_errors: AtomicU64,
    /// Whether the queue can make new results durable: its store works and its file
    /// system is above the reserve.
    pub writable: AtomicBool,
    /// Free bytes of the queue's file system, as last seen.
    pub disk_free: AtomicU64,
    /// Why the queue is not writable, while it is not.
    pub problem: Mutex<Option<String>>,
}

impl QueueStats {
    fn new() -> QueueStats {
        QueueStats {
            writable: AtomicBool::new(true),
            ..QueueStats::default()
        }
    }

    /// Records whether the queue is writable and, if not, why.
    fn set_problem(&self, problem: Option<String>) {
        self.writable.store(problem.is_none(), Ordering::Relaxed);
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }
}

impl Queue {
    /// Opens (or creates) the queue file and starts its writer thread.
    /// Must be called inside a Tokio runtime (a task asks the writer for periodic work).
    pub fn open(name: &str, path: &Path, opts: QueueOptions) -> Result<Queue, StoreError> {
        let store = Arc::new(Store::open(path, opts.cache_bytes)?);
        let last = store.last_seq()?;
        let held = store.held()?;
        let stats = Arc::new(QueueStats::new());
        let (tx, rx) = mpsc::channel(1024);
        let (committed_tx, committed) = watch::channel(last);
        let writer_store = store.clone();
        let writer_stats = stats.clone();
        let thread_name = format!("queue-{name}");
        let log_name = name.to_string();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                Writer::new(
                    &log_name,
                    &writer_store,
                    committed_tx,
                    last,
                    opts,
                    writer_stats,
                    held,
                )
                .run(rx)
            })
            .map_err(StoreError::Thread)?;
        // A weak sender, so the ticker never keeps the writer alive.
        let ticker = tx.downgrade();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MAINTAIN_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(tx) = ticker.upgrade() else { break };
                // Skip a beat rather than queue up behind a busy writer.
                let _ = tx.try_send(Request::Maintain);
            }
        });
        Ok(Queue {
            store,
            stats,
            requests: tx,
            committed,
        })
    }

    /// Appends entries and returns once they are durable.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        self.append_shared(entries.into()).await
    }

    /// Appends entries and returns once they are durable. An error for which
    /// [`StoreError::is_storage_failure`] holds committed nothing and can be retried with
    /// the same entries (which is why they are shared, not moved).
    pub async fn append_shared(&self, entries: Arc<[Entry]>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.requests
            .send(Request::Append { entries, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes delivered entries. Deletes are not fsynced on their own (the writer makes
    /// them durable once a second): after a crash an entry deleted since the last
    /// durable commit is delivered again, never lost.
    pub async fn remove(&self, seqs: Vec<u64>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.requests
            .send(Request::Remove { seqs })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Up to `max` entries with a sequence number of at least `from`, oldest first.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Message>, StoreError> {
        self.store.read_from(from, max)
    }

    /// The random number drawn when the queue's file was created; part of message ids.
    pub fn epoch(&self) -> Result<u64, StoreError> {
        self.store.epoch()
    }

    /// Number of entries waiting.
    pub fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.store.held()?.entries)
    }

    /// Bytes the waiting entries take.
    pub fn held_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.store.held()?.bytes)
    }

    /// Counters of what the queue holds and dropped.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Why the queue cannot make new results durable now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.stats.problem.lock().ok().and_then(|p| p.clone())
    }

    /// How long the oldest waiting entry has been queued.
    pub fn oldest_age(&self) -> Result<Option<Duration>, StoreError> {
        let now = now_ms();
        Ok(self
            .store
            .oldest_enqueued()?
            .map(|t| Duration::from_millis(now.saturating_sub(t))))
    }

    /// Size of the store's file on disk, in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.store.file_bytes()
    }

    /// Watches the highest committed sequence number.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Asks the writer to commit what it holds and stop once every handle is dropped.
    pub async fn close(self) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(Request::Flush { done }).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The reserve a queue leaves free when none is configured: 5% of its file system, at
/// most 64 MiB (a small data partition keeps room for its queues; a large one does
/// not set aside gigabytes).
pub fn default_reserve(dir: &Path) -> u64 {
    const MAX: u64 = 64 * 1024 * 1024;
    rustix::fs::statvfs(dir).map_or(MAX, |st| {
        (st.f_blocks.saturating_mul(st.f_frsize) / 20).min(MAX)
    })
}

/// The clock entries are stamped with: epoch milliseconds.
fn now_ms() -> u64 {
    u64::try_from(fieldgate_rules::now_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
