//! The group-commit writer thread of one queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::store::{Store, StoreError};

/// Most entries written in one commit.
const MAX_ENTRIES_PER_COMMIT: usize = 16 * 1024;

/// One entry to append: the rule that produced it and its encoded result.
type Entry = (Arc<str>, Bytes);
/// Where an append learns whether its commit succeeded.
type Done = oneshot::Sender<Result<(), StoreError>>;

pub(super) enum Request {
    Append { entries: Vec<Entry>, done: Done },
    Remove { seqs: Vec<u64> },
    Flush { done: oneshot::Sender<()> },
}

/// Serves requests until every sender is gone. Appends that arrive within `delay` of
/// the first one share its commit.
pub(super) fn run_writer(
    name: &str,
    store: &Store,
    mut rx: mpsc::Receiver<Request>,
    committed: watch::Sender<u64>,
    mut last: u64,
    delay: Duration,
) {
    let mut removed_since_sync = false;
    while let Some(first) = rx.blocking_recv() {
        let mut appends: Vec<(Vec<Entry>, Done)> = Vec::new();
        let mut removes: Vec<u64> = Vec::new();
        let mut flushes = Vec::new();
        let mut count = 0;
        let deadline = Instant::now() + delay;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Request::Append { entries, done }) => {
                    count += entries.len();
                    appends.push((entries, done));
                }
                Some(Request::Remove { seqs }) => removes.extend(seqs),
                Some(Request::Flush { done }) => flushes.push(done),
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
            match store.remove(&removes) {
                Ok(()) => removed_since_sync = true,
                Err(e) => {
                    tracing::error!(queue = name, error = %e, "deleting delivered entries failed")
                }
            }
        }
        if !appends.is_empty() {
            let all: Vec<Entry> = appends
                .iter()
                .flat_map(|(e, _)| e.iter().cloned())
                .collect();
            match store.append(last, &all) {
                Ok(seq) => {
                    last = seq;
                    removed_since_sync = false;
                    committed.send_replace(last);
                    for (_, done) in appends {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(queue = name, error = %e, "queue commit failed");
                    let msg = e.to_string();
                    for (_, done) in appends {
                        let _ = done.send(Err(StoreError::CommitFailed(msg.clone())));
                    }
                }
            }
        }
        if !flushes.is_empty() {
            if removed_since_sync {
                if let Err(e) = store.sync() {
                    tracing::error!(queue = name, error = %e, "queue sync failed");
                }
                removed_since_sync = false;
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }
    if removed_since_sync {
        let _ = store.sync();
    }
}
