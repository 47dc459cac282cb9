//! The queue's on-disk store: one redb file per sink. Table `entries` maps a big-endian
//! u64 sequence number to an entry: format byte (1), enqueue time (u64 epoch ms,
//! big-endian), rule-name length (u16, big-endian), the rule name, the payload. Table
//! `meta` keeps the bytes held and the highest sequence number ever used, updated in the
//! same transaction as the entries, so they never disagree with them, not even after a
//! crash; a drained queue therefore never hands out a sequence number (and a message id)
//! a second time. Table `commit_ends` holds the sequence number of the last entry of each
//! commit still queued, so that a sink packing several results into one message cuts the
//! same messages on every resend ([`Message::commit_end`]); entries from before the table
//! (below `meta`'s `ends_from`) count as commits of one entry. A table of its own, not a
//! flag in the entries, keeps the files readable by versions that do not know it.
//!
//! After an I/O error (a full disk, say) redb refuses every further operation until the
//! database is opened again. The store notes such an error ([`Store::broken`]) and the
//! writer reopens it ([`Store::reopen`]) in-process; what was committed before is kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use fieldgate_connectors::sink::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const COMMIT_ENDS: TableDefinition<u64, ()> = TableDefinition::new("commit_ends");
/// Key in `meta`: the first sequence number whose commit end `commit_ends` records.
const ENDS_FROM: &str = "ends_from";
/// Key in `meta`: bytes held by the entries (keys included).
const BYTES: &str = "bytes";
/// Key in `meta`: a random number drawn when the store was created, which makes
/// message ids unique across a store file being deleted and created again.
const EPOCH: &str = "epoch";
/// Key in `meta`: the highest sequence number ever used, so that sequence numbers keep
/// rising after the queue drained (and its table is empty).
const LAST_SEQ: &str = "last_seq";
const FORMAT: u8 = 1;
/// Fixed part of an encoded entry: format, enqueue time, name length.
const HEADER: usize = 1 + 8 + 2;
/// What an entry costs besides its value: its key.
const KEY_BYTES: u64 = 8;

/// Errors of the queue store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's redb file could not be opened or created.
    #[error("queue database: {0}")]
    Database(#[from] redb::DatabaseError),
    /// A transaction could not be started.
    #[error("queue transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("queue table: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing the store's file failed.
    #[error("queue storage: {0}")]
    Storage(#[from] redb::StorageError),
    /// A transaction could not be committed.
    #[error("queue commit: {0}")]
    Commit(#[from] redb::CommitError),
    /// A transaction's durability could not be set.
    #[error("queue durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// Compacting the store's file failed.
    #[error("queue compaction: {0}")]
    Compaction(#[from] redb::CompactionError),
    /// The entry of this sequence number cannot be decoded.
    #[error("queue entry {0} is corrupt")]
    Corrupt(u64),
    /// The queue's writer thread could not be started.
    #[error("queue writer thread: {0}")]
    Thread(std::io::Error),
    /// A commit failed for a reason other than the disk; nothing of it was committed.
    #[error("queue commit failed: {0}")]
    CommitFailed(String),
    /// With `on_full = "reject_new"`, the queue was full (at `max_bytes`, or its disk at
    /// the reserve): the results that did not fit were refused.
    #[error("queue is full ({bytes} of {max} bytes held); results that did not fit were refused")]
    Full {
        /// Bytes the queue held, counting the results taken before these in the same commit.
        bytes: u64,
        /// The size limit in force: `max_bytes`, or what the queue holds when its disk is
        /// at the reserve.
        max: u64,
    },
    /// The queue's writer has stopped.
    #[error("queue is closed")]
    Closed,
    /// The queue's directory could not be created.
    #[error("cannot create queue directory: {0}")]
    Dir(std::io::Error),
    /// A thread panicked while holding the store's lock.
    #[error("queue store lock poisoned")]
    Poisoned,
    /// The store cannot take results now (its disk failed, or is at the reserve with too
    /// little held to make room); the same append can be retried.
    #[error("queue cannot take results now: {0}")]
    Unwritable(String),
}

impl StoreError {
    /// Whether the error comes from the disk (full, failing, or the store closed after such an
    /// error) rather than from the request: the same request can succeed once the store
    /// has been reopened or space returned.
    pub fn is_storage_failure(&self) -> bool {
        fn disk(e: &redb::StorageError) -> bool {
            matches!(
                e,
                redb::StorageError::Io(_)
                    | redb::StorageError::PreviousIo
                    | redb::StorageError::Corrupted(_)
                    | redb::StorageError::DatabaseClosed
            )
        }
        match self {
            StoreError::Storage(e)
            | StoreError::Database(redb::DatabaseError::Storage(e))
            | StoreError::Transaction(redb::TransactionError::Storage(e))
            | StoreError::Table(redb::TableError::Storage(e))
            | StoreError::Commit(redb::CommitError::Storage(e))
            | StoreError::Compaction(redb::CompactionError::Storage(e)) => disk(e),
            StoreError::Commit(redb::CommitError::TransactionPoisoned)
            | StoreError::Unwritable(_) => true,
            _ => false,
        }
    }
}

/// One entry to append: the rule that produced it and its encoded result.
pub type Entry = (Arc<str>, Bytes);

/// What the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub entries: u64,
    pub bytes: u64,
}

pub(super) struct Store {
    /// Readers share the database; compaction and reopening need it alone. `None` while
    /// closed after an I/O error, until it could be opened again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    cache_bytes: usize,
    /// Set when an operation met an I/O error: the database must be reopened.
    broken: AtomicBool,
}

/// Bytes an entry with this rule name and payload takes in the store.
pub fn entry_bytes(rule: &str, payload: &[u8]) -> u64 {
    (HEADER + rule.len().min(usize::from(u16::MAX)) + payload.len()) as u64 + KEY_BYTES
}

impl Store {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::Dir)?;
        }
        let db = Self::open_db(path, cache_bytes)?;
        // Make sure the tables exist so readers never see "table not found".
        let tx = db.begin_write()?;
        tx.open_table(COMMIT_ENDS)?;
        {
            let last_entry = tx
                .open_table(ENTRIES)?
                .last()?
                .map_or(0, |(k, _)| k.value());
            let mut meta = tx.open_table(META)?;
            if meta.get(EPOCH)?.is_none() {
                meta.insert(EPOCH, rand::random::<u64>())?;
            }
            if meta.get(ENDS_FROM)?.is_none() {
                let recorded = meta.get(LAST_SEQ)?.map_or(0, |v| v.value());
                meta.insert(ENDS_FROM, last_entry.max(recorded) + 1)?;
            }
        }
        tx.commit()?;
        Ok(Store {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            cache_bytes,
            broken: AtomicBool::new(false),
        })
    }

    fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
        Ok(Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?)
    }

    /// Closes the database and opens it again, as redb requires after an I/O error;
    /// redb then recovers the last durable commit. On failure the store stays closed
    /// (every operation fails) until a later call succeeds.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().map_err(|_| StoreError::Poisoned)?;
        // The old handle holds the file's lock: it goes first.
        *db = None;
        let opened = Self::open_db(&self.path, self.cache_bytes)?;
        // A database that opens but cannot be read is no better than a closed one.
        {
            let tx = opened.begin_read()?;
            tx.open_table(ENTRIES)?;
            tx.open_table(META)?;
            tx.open_table(COMMIT_ENDS)?;
        }
        *db = Some(opened);
        self.broken.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether an operation met an I/O error since the last (re)open.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Runs `f` on the open database; notes an I/O error it meets.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.read()?;
        let Some(db) = guard.as_ref() else {
            return Err(StoreError::Unwritable(
                "its file is closed after an I/O error and could not be opened again yet".into(),
            ));
        };
        let r = f(db);
        if let Err(e) = &r
            && e.is_storage_failure()
        {
            self.broken.store(true, Ordering::SeqCst);
        }
        r
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        self.db.read().map_err(|_| StoreError::Poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Option<Database>>, StoreError> {
        self.db.write().map_err(|_| StoreError::Poisoned)
    }

    pub fn epoch(&self) -> Result<u64, StoreError> {
        self.with(|db| {
            let tx = db.begin_read()?;
            Ok(tx.open_table(META)?.get(EPOCH)?.map_or(0, |v| v.value()))
        })
    }

    /// The highest sequence number ever used: the last entry's, or the one recorded when
    /// the queue drained since.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let last_entry = tx
                .open_table(ENTRIES)?
                .last()?
                .map_or(0, |(k, _)| k.value());
            let recorded = tx.open_table(META)?.get(LAST_SEQ)?.map_or(0, |v| v.value());
            Ok(last_entry.max(recorded))
        })
    }

    pub fn held(&self) -> Result<Held, StoreError> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?.len()?;
            let bytes = tx.open_table(META)?.get(BYTES)?.map_or(0, |v| v.value());
            Ok(Held { entries, bytes })
        })
    }

    /// Enqueue time (epoch ms) of the oldest entry.
    pub fn oldest_enqueued(&self) -> Result<Option<u64>, StoreError> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(ENTRIES)?;
            let Some((k, v)) = t.first()? else {
                return Ok(None);
            };
            Ok(Some(
                enqueued_at(v.value()).ok_or(StoreError::Corrupt(k.value()))?,
            ))
        })
    }

    /// Writes entries under consecutive sequence numbers after `last`, durably, then
    /// drops the oldest entries while more than `max_bytes` are held. Returns the last
    /// sequence number, what was added and what was dropped.
    pub fn append<'e>(
        &self,
        last: u64,
        entries: impl IntoIterator<Item = &'e Entry>,
        now_ms: u64,
        max_bytes: Option<u64>,
    ) -> Result<(u64, Held, Held), StoreError> {
        self.with(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            let mut seq = last;
            let mut added = Held::default();
            let mut dropped = Held::default();
            {
                let mut t = tx.open_table(ENTRIES)?;
                let mut meta = tx.open_table(META)?;
                let mut bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
                let mut buf = Vec::new();
                for (rule, payload) in entries {
                    seq += 1;
                    buf.clear();
                    encode(rule, now_ms, payload, &mut buf);
                    t.insert(seq, buf.as_slice())?;
                    added.entries += 1;
                    added.bytes += buf.len() as u64 + KEY_BYTES;
                    bytes += buf.len() as u64 + KEY_BYTES;
                }
                if let Some(max) = max_bytes {
                    while bytes > max {
                        let Some((_, v)) = t.pop_first()? else { break };
                        let b = v.value().len() as u64 + KEY_BYTES;
                        bytes = bytes.saturating_sub(b);
                        dropped.entries += 1;
                        dropped.bytes += b;
                    }
                }
                meta.insert(BYTES, bytes)?;
                meta.insert(LAST_SEQ, seq)?;
                let mut ends = tx.open_table(COMMIT_ENDS)?;
                if seq > last {
                    ends.insert(seq, ())?;
                }
                prune_ends(&t, &mut ends)?;
            }
            tx.commit()?;
            Ok((seq, added, dropped))
        })
    }

    /// Deletes delivered entries (without an fsync of its own); returns what went.
    pub fn remove(&self, seqs: &[u64]) -> Result<Held, StoreError> {
        self.with(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::None)?;
            let mut removed = Held::default();
            {
                let mut t = tx.open_table(ENTRIES)?;
                let mut meta = tx.open_table(META)?;
                for s in seqs {
                    if let Some(v) = t.remove(s)? {
                        removed.entries += 1;
                        removed.bytes += v.value().len() as u64 + KEY_BYTES;
                    }
                }
                let bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
                meta.insert(BYTES, bytes.saturating_sub(removed.bytes))?;
                prune_ends(&t, &mut tx.open_table(COMMIT_ENDS)?)?;
            }
            tx.commit()?;
            Ok(removed)
        })
    }

    /// Deletes entries enqueued before `cutoff_ms` (epoch ms); returns what went.
    pub fn expire(&self, cutoff_ms: u64) -> Result<Held, StoreError> {
        self.with(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::None)?;
            let mut expired = Held::default();
            {
                let mut t = tx.open_table(ENTRIES)?;
                let mut meta = tx.open_table(META)?;
                loop {
                    let old = match t.first()? {
                        Some((k, v)) => {
                            let at =
                                enqueued_at(v.value()).ok_or(StoreError::Corrupt(k.value()))?;
                            (at < cutoff_ms).then(|| (k.value(), v.value().len() as u64))
                        }
                        None => None,
                    };
                    let Some((k, len)) = old else { break };
                    t.remove(k)?;
                    expired.entries += 1;
                    expired.bytes += len + KEY_BYTES;
                }
                let bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
                meta.insert(BYTES, bytes.saturating_sub(expired.bytes))?;
                prune_ends(&t, &mut tx.open_table(COMMIT_ENDS)?)?;
            }
            tx.commit()?;
            Ok(expired)
        })
    }

    /// A durable empty commit: makes earlier non-durable deletes durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.with(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Size of the store's file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The directory the store's file is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Gives free pages back to the file system. Waits for readers to finish.
    pub fn compact(&self) -> Result<bool, StoreError> {
        let mut guard = self.write()?;
        let Some(db) = guard.as_mut() else {
            return Err(StoreError::Unwritable("its file is closed".into()));
        };
        let r = (|| -> Result<bool, StoreError> {
            // Make earlier non-durable commits durable: compaction needs them settled.
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.commit()?;
            Ok(db.compact()?)
        })();
        if let Err(e) = &r
            && e.is_storage_failure()
        {
            self.broken.store(true, Ordering::SeqCst);
        }
        r
    }

    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Message>, StoreError> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(ENTRIES)?;
            let ends = tx.open_table(COMMIT_ENDS)?;
            let ends_from = tx
                .open_table(META)?
                .get(ENDS_FROM)?
                .map_or(0, |v| v.value());
            let mut out = Vec::new();
            let mut entries = t.range(from..)?;
            // The commit ends walked beside the entries: one range read, not a lookup
            // per entry.
            let mut ends = ends.range(from..)?;
            let mut next_end = ends.next().transpose()?.map(|(k, _)| k.value());
            for item in entries.by_ref().take(max) {
                let (k, v) = item?;
                let seq = k.value();
                let (rule, payload) = decode(v.value()).ok_or(StoreError::Corrupt(seq))?;
                while next_end.is_some_and(|e| e < seq) {
                    next_end = ends.next().transpose()?.map(|(k, _)| k.value());
                }
                out.push(Message {
                    seq,
                    rule,
                    payload,
                    commit_end: seq < ends_from || next_end == Some(seq),
                });
            }
            // Commits are whole in a snapshot: its last entry ends one, recorded or not
            // (entries a version without `commit_ends` appended).
            if entries.next().is_none()
                && let Some(last) = out.last_mut()
            {
                last.commit_end = true;
            }
            Ok(out)
        })
    }
}

/// Forgets the commit ends below the first queued entry: their commits are gone.
fn prune_ends(
    entries: &redb::Table<u64, &[u8]>,
    ends: &mut redb::Table<u64, ()>,
) -> Result<(), StoreError> {
    let first = entries.first()?.map(|(k, _)| k.value());
    match first {
        Some(first) => ends.retain_in(..first, |_, _| false)?,
        None => ends.retain(|_, _| false)?,
    }
    Ok(())
}

fn encode(rule: &str, now_ms: u64, payload: &[u8], out: &mut Vec<u8>) {
    let name = &rule.as_bytes()[..rule.len().min(usize::from(u16::MAX))];
    out.push(FORMAT);
    out.extend_from_slice(&now_ms.to_be_bytes());
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
}

fn enqueued_at(v: &[u8]) -> Option<u64> {
    if *v.first()? != FORMAT {
        return None;
    }
    Some(u64::from_be_bytes(v.get(1..9)?.try_into().ok()?))
}

fn decode(v: &[u8]) -> Option<(Arc<str>, Bytes)> {
    if *v.first()? != FORMAT {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*v.get(9)?, *v.get(10)?]));
    let name = std::str::from_utf8(v.get(HEADER..HEADER + len)?).ok()?;
    Some((
        Arc::from(name),
        Bytes::copy_from_slice(v.get(HEADER + len..)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bytes_is_what_an_entry_takes_on_disk() {
        for (rule, payload) in [("forward", &b"{\"n\":1}"[..]), ("", b""), ("r", &[7; 300])] {
            let mut value = Vec::new();
            encode(rule, 1_700_000_000_000, payload, &mut value);
            assert_eq!(entry_bytes(rule, payload), value.len() as u64 + 8, "{rule}");
            let (r, p) = decode(&value).expect("decodes");
            assert_eq!((&*r, &p[..]), (rule, payload));
        }
    }
}
