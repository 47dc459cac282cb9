//! The durable queue in front of each sink.
//!
//! Every rule result addressed to a sink is appended here before anything else happens
//! to it. Appends are group-committed: one writer thread per queue gathers the appends
//! that arrive within `commit_delay`, writes them in one transaction and makes it
//! durable with a single fsync; an append is accepted only when that commit returned.
//! The sink's uplink worker reads from the oldest entry on and deletes an entry only
//! after the sink confirmed it, so a crash or an outage can repeat a delivery but never
//! lose one.
//!
//! The store behind the queue is redb ([`store`]); see `docs/architecture.md` for why.

mod store;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldgate_connectors::sink::Message;
use tokio::sync::{mpsc, oneshot, watch};

use store::Store;
pub use store::StoreError;
use writer::{Request, run_writer};

/// A handle to one sink's durable queue. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    store: Arc<Store>,
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
}

impl Queue {
    /// Opens (or creates) the queue file and starts its writer thread.
    pub fn open(name: &str, path: &Path, opts: QueueOptions) -> Result<Queue, StoreError> {
        let store = Arc::new(Store::open(path, opts.cache_bytes)?);
        let last = store.last_seq()?;
        let (tx, rx) = mpsc::channel(1024);
        let (committed_tx, committed) = watch::channel(last);
        let writer_store = store.clone();
        let delay = opts.commit_delay;
        let thread_name = format!("queue-{name}");
        let log_name = name.to_string();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || run_writer(&log_name, &writer_store, rx, committed_tx, last, delay))
            .map_err(StoreError::Thread)?;
        Ok(Queue {
            store,
            requests: tx,
            committed,
        })
    }

    /// Appends entries and returns once they are durable.
    pub async fn append(&self, entries: Vec<(Arc<str>, Bytes)>) -> Result<(), StoreError> {
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

    /// Deletes delivered entries. Deletes are not fsynced on their own: after a crash an
    /// entry deleted since the last durable commit is delivered again, never lost.
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

    /// Number of entries waiting.
    pub fn depth(&self) -> Result<u64, StoreError> {
        self.store.len()
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

#[cfg(test)]
mod tests;
