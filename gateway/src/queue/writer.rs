//! The group-commit writer thread of one queue: the only code that changes the store.
//! Besides appends and deletes it enforces the queue's limits (size, on-full policy,
//! time to live) and gives disk space back once a backlog has drained.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::store::{Entry, Held, Store, StoreError, entry_bytes};
use super::{OnFull, QueueLimits, QueueOptions, QueueStats, now_ms};

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

/// Where an append learns whether its commit succeeded.
type Done = oneshot::Sender<Result<(), StoreError>>;

/// An append waiting for the group commit: the entries that fit, and the error to
/// report after the commit when the rest were refused.
struct Append {
    entries: Vec<Entry>,
    done: Done,
    refused: Option<StoreError>,
}

fn pending_bytes(appends: &[Append]) -> u64 {
    appends
        .iter()
        .flat_map(|a| a.entries.iter())
        .map(|(r, p)| entry_bytes(r, p))
        .sum()
}

pub(super) enum Request {
    Append {
        entries: Vec<Entry>,
        done: Done,
    },
    Remove {
        seqs: Vec<u64>,
    },
    Flush {
        done: oneshot::Sender<()>,
    },
    /// Periodic work: expire entries past their time to live, compact.
    Maintain,
}

/// The writer's state between requests.
pub(super) struct Writer<'a> {
    pub name: &'a str,
    pub store: &'a Store,
    pub committed: watch::Sender<u64>,
    pub last: u64,
    pub delay: Duration,
    pub limits: QueueLimits,
    pub stats: Arc<QueueStats>,
    pub held: Held,
    removed_since_sync: bool,
    last_compaction: Option<Instant>,
    /// Drops not yet logged: (full, rejected, expired) entries, and when last logged.
    unlogged: (u64, u64, u64),
    last_drop_log: Option<Instant>,
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
        let w = Self {
            name,
            store,
            committed,
            last,
            delay: opts.commit_delay,
            limits: opts.limits,
            stats,
            held,
            removed_since_sync: false,
            last_compaction: None,
            unlogged: (0, 0, 0),
            last_drop_log: None,
        };
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
            let mut appends: Vec<Append> = Vec::new();
            let mut removes: Vec<u64> = Vec::new();
            let mut flushes = Vec::new();
            let mut maintain = false;
            let mut count = 0;
            let deadline = Instant::now() + self.delay;
            let mut next = Some(first);
            loop {
                match next.take() {
                    Some(Request::Append { mut entries, done }) => {
                        // Deliveries that arrived first make room first.
                        if !removes.is_empty() && self.fitting(&entries, &appends) < entries.len() {
                            self.remove(std::mem::take(&mut removes));
                        }
                        // With `reject_new`, what fits is taken, in order; the rest refused.
                        let fit = self.fitting(&entries, &appends);
                        let refused = (fit < entries.len()).then(|| {
                            let n = (entries.len() - fit) as u64;
                            self.stats.rejected.fetch_add(n, Ordering::Relaxed);
                            self.unlogged.1 += n;
                            StoreError::Full {
                                bytes: self.held.bytes + pending_bytes(&appends),
                                max: self.limits.max_bytes.unwrap_or(0),
                            }
                        });
                        entries.truncate(fit);
                        if entries.is_empty() {
                            let _ = done.send(refused.map_or(Ok(()), Err));
                        } else {
                            count += entries.len();
                            appends.push(Append {
                                entries,
                                done,
                                refused,
                            });
                        }
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
            if !removes.is_empty() {
                self.remove(removes);
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if maintain {
                self.maintain();
            }
            self.log_drops();
            self.publish_held();
            if !flushes.is_empty() {
                if self.removed_since_sync {
                    if let Err(e) = self.store.sync() {
                        tracing::error!(queue = self.name, error = %e, "queue sync failed");
                    }
                    self.removed_since_sync = false;
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

    fn remove(&mut self, seqs: Vec<u64>) {
        match self.store.remove(&seqs) {
            Ok(gone) => {
                self.lose(gone);
                self.removed_since_sync = true;
            }
            Err(e) => {
                tracing::error!(queue = self.name, error = %e, "deleting delivered entries failed")
            }
        }
    }

    /// How many leading `entries` fit: all of them unless `reject_new` is in force and
    /// they would take the queue over its size.
    fn fitting(&self, entries: &[Entry], pending: &[Append]) -> usize {
        let (Some(max), OnFull::RejectNew) = (self.limits.max_bytes, self.limits.on_full) else {
            return entries.len();
        };
        let mut total = self.held.bytes + pending_bytes(pending);
        entries
            .iter()
            .take_while(|(r, p)| {
                total += entry_bytes(r, p);
                total <= max
            })
            .count()
    }

    fn commit(&mut self, appends: Vec<Append>) {
        let all: Vec<Entry> = appends
            .iter()
            .flat_map(|a| a.entries.iter().cloned())
            .collect();
        let max = match self.limits.on_full {
            OnFull::DropOldest => self.limits.max_bytes,
            OnFull::RejectNew => None,
        };
        match self.store.append(self.last, &all, now_ms(), max) {
            Ok((seq, added, dropped)) => {
                self.held.entries += added.entries;
                self.held.bytes += added.bytes;
                self.lose(dropped);
                self.last = seq;
                self.removed_since_sync = false;
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
        // Deletes are committed without an fsync; making them durable once a second
        // bounds what a crash makes the uplink send again to about a second's worth.
        if self.removed_since_sync {
            match self.store.sync() {
                Ok(()) => self.removed_since_sync = false,
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
                Err(e) => tracing::warn!(queue = self.name, error = %e, "queue compaction failed"),
            }
        }
    }

    fn log_drops(&mut self) {
        if self.unlogged == (0, 0, 0)
            || self
                .last_drop_log
                .is_some_and(|t| t.elapsed() < DROP_LOG_EVERY)
        {
            return;
        }
        let (full, rejected, expired) = std::mem::take(&mut self.unlogged);
        self.last_drop_log = Some(Instant::now());
        tracing::warn!(
            queue = self.name,
            dropped_oldest = full,
            rejected_new = rejected,
            expired,
            max_bytes = self.limits.max_bytes,
            "queue limits dropped results"
        );
    }
}
