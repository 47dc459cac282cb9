//! The group-commit writer thread of one queue: the only code that changes the store.
//! Besides appends and deletes it enforces the queue's limits (size, on-full policy,
//! time to live), gives disk space back once a backlog has drained, and keeps the queue
//! working through a full or failing disk ([`Disk`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::store::{Entry, Held, Store, StoreError, entry_bytes};
use crate::logging::RateLimited;

use super::{OnFull, QueueLimits, QueueOptions, QueueStats, default_reserve, free_bytes, now_ms};

/// Most entries written in one commit.
const MAX_ENTRIES_PER_COMMIT: usize = 16 * 1024;
/// A store file smaller than this is never compacted.
const COMPACT_MIN_FILE: u64 = 8 * 1024 * 1024;
/// Compact when the entries held are less than this fraction of the file.
const COMPACT_BELOW: u64 = 4;
/// Least time between two compactions.
const COMPACT_EVERY: Duration = Duration::from_secs(30);
/// Least time between two log lines about dropped entries.
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);
/// Least time between two log lines about a failing disk.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// First and longest wait before reopening a store that failed.
const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// What a commit may add to the file besides twice its entries' bytes (pages of the
/// tree, the commit's own header): counted against the disk reserve before committing.
const COMMIT_OVERHEAD: u64 = 256 * 1024;
/// Space beyond the reserve needed before a queue at the reserve grows again.
const RESERVE_HYSTERESIS: u64 = 1024 * 1024;
/// Least time between two log lines about reaching or leaving the reserve.
const RESERVE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where an append learns whether its commit succeeded.
type Done = oneshot::Sender<Result<(), StoreError>>;

/// An append waiting for the group commit: its entries, how many of them are taken
/// (the rest refused), and the error to report after the commit when some were refused.
struct Append {
    entries: Arc<[Entry]>,
    take: usize,
    done: Done,
    refused: Option<StoreError>,
}

impl Append {
    fn taken(&self) -> &[Entry] {
        &self.entries[..self.take]
    }
    fn bytes(&self) -> u64 {
        self.taken().iter().map(|(r, p)| entry_bytes(r, p)).sum()
    }
}

fn pending_bytes(appends: &[Append]) -> u64 {
    appends.iter().map(Append::bytes).sum()
}

pub(super) enum Request {
    Append {
        entries: Arc<[Entry]>,
        done: Done,
    },
    Remove {
        seqs: Vec<u64>,
    },
    Flush {
        done: oneshot::Sender<()>,
    },
    /// Periodic work: expire entries past their time to live, compact, look at the disk.
    Maintain,
}

/// The state of the disk under the queue.
#[derive(Debug)]
enum Disk {
    /// Commits succeed and the file system is above the reserve.
    Fine,
    /// The file system is down to its reserve: the queue holds at most `cap` bytes
    /// (what it held when it got there, which its file has room for).
    Low { cap: u64 },
    /// The store met an I/O error: it is reopened at `retry_at`; until a commit succeeds,
    /// appends are answered with [`StoreError::Unwritable`].
    Failed { error: String, retry_at: Instant },
}

/// The writer's state between requests.
pub(super) struct Writer<'a> {
    pub name: &'a str,
    pub store: &'a Store,
    pub committed: watch::Sender<u64>,
    pub last: u64,
    pub delay: Duration,
    pub limits: QueueLimits,
    pub min_free: u64,
    pub stats: Arc<QueueStats>,
    pub held: Held,
    disk: Disk,
    removed_since_sync: bool,
    last_compaction: Option<Instant>,
    /// Drops not yet logged: (full, rejected, expired) entries.
    unlogged: (u64, u64, u64),
    /// When the drops may be logged again.
    drop_log: RateLimited,
    /// Disk failures, logged at a bounded rate.
    failure_log: RateLimited,
    /// Wait before the next reopen; grows while failures go on, reset by a commit.
    reopen_backoff: Duration,
    /// Deliveries confirmed while the store failed: deleted once it works again.
    deferred_removes: Vec<u64>,
    /// Reaching, and leaving, the disk reserve, each logged at a bounded rate.
    reserve_log: [RateLimited; 2],
}

impl<'a> Writer<'a> {
    pub fn new(
        name: &'a str,
        store: &'a Store,
        committed: watch::Sender<u64>,
        last: u64,
        opts: QueueOptions,
        stats: Arc<QueueStats>,
        held: Held,
    ) -> Self {
        let mut w = Self {
            name,
            store,
            committed,
            last,
            delay: opts.commit_delay,
            limits: opts.limits,
            min_free: opts
                .min_free_bytes
                .unwrap_or_else(|| default_reserve(store.dir())),
            stats,
            held,
            disk: Disk::Fine,
            removed_since_sync: false,
            last_compaction: None,
            unlogged: (0, 0, 0),
            drop_log: RateLimited::new(DROP_LOG_EVERY),
            failure_log: RateLimited::new(FAILURE_LOG_EVERY),
            reopen_backoff: REOPEN_MIN,
            deferred_removes: Vec::new(),
            reserve_log: [
                RateLimited::new(RESERVE_LOG_EVERY),
                RateLimited::new(RESERVE_LOG_EVERY),
            ],
        };
        w.look_at_disk(0);
        w.publish_held();
        w
    }

    fn publish_held(&self) {
        self.stats
            .entries
            .store(self.held.entries, Ordering::Relaxed);
        self.stats.bytes.store(self.held.bytes, Ordering::Relaxed);
    }

    fn lose(&mut self, h: Held) {
        self.held.entries = self.held.entries.saturating_sub(h.entries);
        self.held.bytes = self.held.bytes.saturating_sub(h.bytes);
    }

    /// Serves requests until every sender is gone. Appends that arrive within `delay`
    /// of the first one share its commit.
    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends: Vec<(Arc<[Entry]>, Done)> = Vec::new();
            let mut removes: Vec<u64> = Vec::new();
            let mut flushes = Vec::new();
            let mut maintain = false;
            let mut count = 0;
            let deadline = Instant::now() + self.delay;
            let mut next = Some(first);
            loop {
                match next.take() {
                    Some(Request::Append { entries, done }) => {
                        count += entries.len();
                        appends.push((entries, done));
                    }
                    Some(Request::Remove { seqs }) => removes.extend(seqs),
                    Some(Request::Flush { done }) => flushes.push(done),
                    Some(Request::Maintain) => maintain = true,
                    None => {}
                }
                if count >= MAX_ENTRIES_PER_COMMIT || !flushes.is_empty() {
                    break;
                }
                match rx.try_recv() {
                    Ok(r) => next = Some(r),
                    Err(_) if appends.is_empty() => break,
                    Err(_) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        std::thread::sleep((deadline - now).min(Duration::from_micros(500)));
                    }
                }
            }
            self.heal();
            // Deliveries make room before new results need it.
            if !removes.is_empty() {
                self.remove(removes);
            }
            if !appends.is_empty() {
                let (appends, max) = self.admit(appends);
                if !appends.is_empty() {
                    self.commit(appends, max);
                }
            }
            if maintain {
                self.maintain();
            }
            self.log_drops();
            self.publish_held();
            if !flushes.is_empty() {
                if self.removed_since_sync {
                    match self.store.sync() {
                        Ok(()) => self.removed_since_sync = false,
                        Err(e) => self.failed("syncing deletes", &e),
                    }
                }
                for f in flushes {
                    let _ = f.send(());
                }
            }
        }
        if self.removed_since_sync {
            let _ = self.store.sync();
        }
    }

    /// Reopens the store when an operation broke it and its retry is due.
    fn heal(&mut self) {
        let due = match &self.disk {
            Disk::Failed { retry_at, .. } => Instant::now() >= *retry_at,
            _ => self.store.broken(),
        };
        if !due {
            return;
        }
        match self.store.reopen() {
            Ok(()) => {
                // Whatever was committed before is what redb recovered; the sequence
                // goes on from the highest number it ever used.
                match (self.store.last_seq(), self.store.held()) {
                    (Ok(last), Ok(held)) => {
                        self.last = self.last.max(last);
                        self.held = held;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        self.failed("reading the reopened store", &e);
                        return;
                    }
                }
                let was = std::mem::replace(&mut self.disk, Disk::Fine);
                if let Disk::Failed { error, .. } = was {
                    tracing::info!(queue = self.name, after = %error, "queue store reopened");
                }
                self.stats.set_problem(None);
                self.look_at_disk(0);
                if !self.deferred_removes.is_empty() {
                    self.remove(Vec::new());
                }
            }
            Err(e) => self.failed("reopening the store", &e),
        }
    }

    /// Notes a disk failure: counted, logged at a bounded rate, the store to be
    /// reopened after a growing wait, and the queue not writable meanwhile.
    fn failed(&mut self, doing: &str, e: &StoreError) {
        self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
        let error = format!("{doing}: {e}");
        let backoff = self.reopen_backoff;
        self.reopen_backoff = (backoff * 2).min(REOPEN_MAX);
        if let Some(held) = self.failure_log.allow(1) {
            tracing::error!(
                queue = self.name,
                error = %error,
                not_logged_before = held,
                free_bytes = free_bytes(self.store.dir()),
                "queue storage failed: results wait (ingest is held back) until it works again"
            );
        }
        self.stats.set_problem(Some(format!(
            "queue `{}` cannot make results durable: {error}",
            self.name
        )));
        self.disk = Disk::Failed {
            error,
            retry_at: Instant::now() + backoff,
        };
    }

    /// Looks at the free space before a commit of `bytes` and moves between `Fine` and
    /// `Low`; returns the largest size the queue may have now (`None`: no limit).
    fn look_at_disk(&mut self, bytes: u64) -> Option<u64> {
        let free = free_bytes(self.store.dir());
        if let Some(f) = free {
            self.stats.disk_free.store(f, Ordering::Relaxed);
        }
        if matches!(self.disk, Disk::Failed { .. }) {
            return Some(self.held.bytes);
        }
        let (Some(free), true) = (free, self.min_free > 0) else {
            return self.limits.max_bytes;
        };
        let need = bytes.saturating_mul(2).saturating_add(COMMIT_OVERHEAD);
        let low = match &self.disk {
            Disk::Low { .. } => free < self.min_free + need + RESERVE_HYSTERESIS,
            _ => free < self.min_free + need,
        };
        match (&self.disk, low) {
            (Disk::Low { .. }, true) => {}
            (_, true) => {
                let cap = self.held.bytes;
                if self.reserve_log[0].allow(1).is_some() {
                    tracing::warn!(
                        queue = self.name,
                        free_bytes = free,
                        min_free_bytes = self.min_free,
                        held_bytes = cap,
                        on_full = ?self.limits.on_full,
                        "the queue's disk is down to its reserve: the queue stops growing and its on-full policy applies"
                    );
                }
                self.stats.set_problem(Some(format!(
                    "queue `{}`: its disk is down to the reserve ({free} bytes free, min_free_bytes = {})",
                    self.name, self.min_free
                )));
                self.disk = Disk::Low { cap };
            }
            (Disk::Low { .. }, false) => {
                if self.reserve_log[1].allow(1).is_some() {
                    tracing::info!(
                        queue = self.name,
                        free_bytes = free,
                        "the queue's disk has room again"
                    );
                }
                self.stats.set_problem(None);
                self.disk = Disk::Fine;
            }
            _ => {}
        }
        match &self.disk {
            Disk::Low { cap, .. } => Some(self.limits.max_bytes.map_or(*cap, |m| m.min(*cap))),
            _ => self.limits.max_bytes,
        }
    }

    /// Decides which appends go into the commit and how much of each: answers the ones
    /// that cannot (a failed store; results that do not fit a queue at its disk reserve
    /// and that the policy cannot make room for) and returns the others, with the largest
    /// size the queue may have now, which the commit holds it to.
    fn admit(&mut self, appends: Vec<(Arc<[Entry]>, Done)>) -> (Vec<Append>, Option<u64>) {
        if let Disk::Failed { error, .. } = &self.disk {
            let msg = format!("queue `{}`: {error}", self.name);
            for (_, done) in appends {
                let _ = done.send(Err(StoreError::Unwritable(msg.clone())));
            }
            return (Vec::new(), None);
        }
        let incoming: u64 = appends
            .iter()
            .flat_map(|(e, _)| e.iter())
            .map(|(r, p)| entry_bytes(r, p))
            .sum();
        let max = self.look_at_disk(incoming);
        let at_reserve = matches!(self.disk, Disk::Low { .. });
        let mut admitted: Vec<Append> = Vec::with_capacity(appends.len());
        let mut total = self.held.bytes;
        for (entries, done) in appends {
            let take = match (max, self.limits.on_full) {
                // With `reject_new`, what fits is taken, in order; the rest refused.
                (Some(max), OnFull::RejectNew) => entries
                    .iter()
                    .take_while(|(r, p)| {
                        total += entry_bytes(r, p);
                        total <= max
                    })
                    .count(),
                // At the reserve, `drop_oldest` can make room only with what the queue
                // holds: results larger than that wait until the disk has room again.
                (Some(cap), OnFull::DropOldest) if at_reserve => {
                    let bytes: u64 = entries.iter().map(|(r, p)| entry_bytes(r, p)).sum();
                    if pending_bytes(&admitted) + bytes > cap {
                        let _ = done.send(Err(StoreError::Unwritable(format!(
                            "queue `{}`: its disk is down to the reserve and the queue holds \
                             too little to make room ({cap} bytes)",
                            self.name
                        ))));
                        continue;
                    }
                    entries.len()
                }
                _ => entries.len(),
            };
            let refused = (take < entries.len()).then(|| {
                let n = (entries.len() - take) as u64;
                self.stats.rejected.fetch_add(n, Ordering::Relaxed);
                self.unlogged.1 += n;
                StoreError::Full {
                    bytes: self.held.bytes + pending_bytes(&admitted),
                    max: max.unwrap_or(0),
                }
            });
            if take == 0 {
                let _ = done.send(refused.map_or(Ok(()), Err));
            } else {
                admitted.push(Append {
                    entries,
                    take,
                    done,
                    refused,
                });
            }
        }
        (admitted, max)
    }

    fn remove(&mut self, mut seqs: Vec<u64>) {
        if matches!(self.disk, Disk::Failed { .. }) {
            // Deleted once the store works again (or, after a restart, sent again).
            self.deferred_removes.append(&mut seqs);
            return;
        }
        if !self.deferred_removes.is_empty() {
            seqs.append(&mut self.deferred_removes);
        }
        match self.store.remove(&seqs) {
            Ok(gone) => {
                self.lose(gone);
                self.removed_since_sync = true;
            }
            Err(e) if e.is_storage_failure() => {
                self.deferred_removes = seqs;
                self.failed("deleting delivered entries", &e);
            }
            Err(e) => {
                tracing::error!(queue = self.name, error = %e, "deleting delivered entries failed")
            }
        }
    }

    /// Commits the admitted appends; with `drop_oldest`, drops the oldest entries while
    /// the queue holds more than `max` (`reject_new` refused what did not fit already).
    fn commit(&mut self, appends: Vec<Append>, max: Option<u64>) {
        let max = match self.limits.on_full {
            OnFull::DropOldest => max,
            OnFull::RejectNew => None,
        };
        let all = appends.iter().flat_map(Append::taken);
        match self.store.append(self.last, all, now_ms(), max) {
            Ok((seq, added, dropped)) => {
                self.held.entries += added.entries;
                self.held.bytes += added.bytes;
                self.lose(dropped);
                self.last = seq;
                self.removed_since_sync = false;
                self.reopen_backoff = REOPEN_MIN;
                if dropped.entries > 0 {
                    self.stats
                        .dropped_oldest
                        .fetch_add(dropped.entries, Ordering::Relaxed);
                    self.unlogged.0 += dropped.entries;
                }
                self.committed.send_replace(self.last);
                for a in appends {
                    let _ = a.done.send(a.refused.map_or(Ok(()), Err));
                }
            }
            Err(e) if e.is_storage_failure() => {
                // Nothing of the transaction was committed: its appends are retried by
                // their callers once the store works again.
                self.failed("committing results", &e);
                let msg = format!("queue `{}`: {e}", self.name);
                for a in appends {
                    let _ = a.done.send(Err(StoreError::Unwritable(msg.clone())));
                }
            }
            Err(e) => {
                tracing::error!(queue = self.name, error = %e, "queue commit failed");
                let msg = e.to_string();
                for a in appends {
                    let _ = a.done.send(Err(StoreError::CommitFailed(msg.clone())));
                }
            }
        }
    }

    fn maintain(&mut self) {
        if matches!(self.disk, Disk::Failed { .. }) {
            // `heal` reopens it when due; there is nothing else to do until then.
            return;
        }
        // Deletes are committed without an fsync; making them durable once a second
        // bounds what a crash makes the uplink send again to about a second's worth.
        if self.removed_since_sync {
            match self.store.sync() {
                Ok(()) => self.removed_since_sync = false,
                Err(e) if e.is_storage_failure() => return self.failed("syncing deletes", &e),
                Err(e) => tracing::error!(queue = self.name, error = %e, "queue sync failed"),
            }
        }
        if let Some(ttl) = self.limits.ttl {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            match self.store.expire(now_ms().saturating_sub(ttl_ms)) {
                Ok(gone) if gone.entries > 0 => {
                    self.lose(gone);
                    self.removed_since_sync = true;
                    self.stats
                        .expired
                        .fetch_add(gone.entries, Ordering::Relaxed);
                    self.unlogged.2 += gone.entries;
                }
                Ok(_) => {}
                Err(e) if e.is_storage_failure() => return self.failed("expiring entries", &e),
                Err(e) => tracing::error!(queue = self.name, error = %e, "expiring entries failed"),
            }
        }
        let file = self.store.file_bytes();
        let due = self
            .last_compaction
            .is_none_or(|t| t.elapsed() >= COMPACT_EVERY);
        if file >= COMPACT_MIN_FILE && self.held.bytes * COMPACT_BELOW < file && due {
            self.last_compaction = Some(Instant::now());
            match self.store.compact() {
                Ok(_) => {
                    self.removed_since_sync = false;
                    self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        queue = self.name,
                        file_before = file,
                        file_after = self.store.file_bytes(),
                        "queue file compacted"
                    );
                }
                Err(e) if e.is_storage_failure() => return self.failed("compacting", &e),
                Err(e) => tracing::warn!(queue = self.name, error = %e, "queue compaction failed"),
            }
        }
        // Space may have come back without any append asking.
        self.look_at_disk(0);
    }

    fn log_drops(&mut self) {
        // The three counts are kept here; the limiter only times the lines.
        if self.unlogged == (0, 0, 0) || self.drop_log.allow(0).is_none() {
            return;
        }
        let (full, rejected, expired) = std::mem::take(&mut self.unlogged);
        tracing::warn!(
            queue = self.name,
            dropped_oldest = full,
            rejected_new = rejected,
            expired,
            max_bytes = self.limits.max_bytes,
            at_disk_reserve = matches!(self.disk, Disk::Low { .. }),
            "queue limits dropped results"
        );
    }
}
