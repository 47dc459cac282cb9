//! The queue's on-disk store: one redb file per sink. Table `entries` maps a big-endian
//! u64 sequence number to an entry: format byte (1), enqueue time (u64 epoch ms,
//! big-endian), rule-name length (u16, big-endian), the rule name, the payload. Table
//! `meta` keeps the bytes held, updated in the same transaction as the entries, so the
//! two never disagree, not even after a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use fieldgate_connectors::sink::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in `meta`: bytes held by the entries (keys included).
const BYTES: &str = "bytes";
/// Key in `meta`: a random number drawn when the store was created, which makes
/// message ids unique across a store file being deleted and created again.
const EPOCH: &str = "epoch";
const FORMAT: u8 = 1;
/// Fixed part of an encoded entry: format, enqueue time, name length.
const HEADER: usize = 1 + 8 + 2;
/// What an entry costs besides its value: its key.
const KEY_BYTES: u64 = 8;

/// Errors of the queue store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("queue database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("queue transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("queue table: {0}")]
    Table(#[from] redb::TableError),
    #[error("queue storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("queue commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("queue durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("queue compaction: {0}")]
    Compaction(#[from] redb::CompactionError),
    #[error("queue entry {0} is corrupt")]
    Corrupt(u64),
    #[error("queue writer thread: {0}")]
    Thread(std::io::Error),
    #[error("queue commit failed: {0}")]
    CommitFailed(String),
    #[error("queue is full ({bytes} of {max} bytes held); results that did not fit were refused")]
    Full { bytes: u64, max: u64 },
    #[error("queue is closed")]
    Closed,
    #[error("cannot create queue directory: {0}")]
    Dir(std::io::Error),
    #[error("queue store lock poisoned")]
    Poisoned,
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
    /// Readers share the database; compaction needs it alone.
    db: RwLock<Database>,
    path: PathBuf,
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
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        // Make sure the tables exist so readers never see "table not found".
        let tx = db.begin_write()?;
        tx.open_table(ENTRIES)?;
        {
            let mut meta = tx.open_table(META)?;
            if meta.get(EPOCH)?.is_none() {
                meta.insert(EPOCH, rand::random::<u64>())?;
            }
        }
        tx.commit()?;
        Ok(Store {
            db: RwLock::new(db),
            path: path.to_path_buf(),
        })
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Database>, StoreError> {
        self.db.read().map_err(|_| StoreError::Poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Database>, StoreError> {
        self.db.write().map_err(|_| StoreError::Poisoned)
    }

    pub fn epoch(&self) -> Result<u64, StoreError> {
        let db = self.read()?;
        let tx = db.begin_read()?;
        Ok(tx.open_table(META)?.get(EPOCH)?.map_or(0, |v| v.value()))
    }

    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let db = self.read()?;
        let tx = db.begin_read()?;
        let t = tx.open_table(ENTRIES)?;
        Ok(t.last()?.map_or(0, |(k, _)| k.value()))
    }

    pub fn held(&self) -> Result<Held, StoreError> {
        let db = self.read()?;
        let tx = db.begin_read()?;
        let entries = tx.open_table(ENTRIES)?.len()?;
        let bytes = tx.open_table(META)?.get(BYTES)?.map_or(0, |v| v.value());
        Ok(Held { entries, bytes })
    }

    /// Enqueue time (epoch ms) of the oldest entry.
    pub fn oldest_enqueued(&self) -> Result<Option<u64>, StoreError> {
        let db = self.read()?;
        let tx = db.begin_read()?;
        let t = tx.open_table(ENTRIES)?;
        let Some((k, v)) = t.first()? else {
            return Ok(None);
        };
        Ok(Some(
            enqueued_at(v.value()).ok_or(StoreError::Corrupt(k.value()))?,
        ))
    }

    /// Writes entries under consecutive sequence numbers after `last`, durably, then
    /// drops the oldest entries while more than `max_bytes` are held. Returns the last
    /// sequence number, what was added and what was dropped.
    pub fn append(
        &self,
        last: u64,
        entries: &[Entry],
        now_ms: u64,
        max_bytes: Option<u64>,
    ) -> Result<(u64, Held, Held), StoreError> {
        let db = self.read()?;
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
        }
        tx.commit()?;
        Ok((seq, added, dropped))
    }

    /// Deletes delivered entries (without an fsync of its own); returns what went.
    pub fn remove(&self, seqs: &[u64]) -> Result<Held, StoreError> {
        let db = self.read()?;
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
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Deletes entries enqueued before `cutoff_ms` (epoch ms); returns what went.
    pub fn expire(&self, cutoff_ms: u64) -> Result<Held, StoreError> {
        let db = self.read()?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::None)?;
        let mut expired = Held::default();
        {
            let mut t = tx.open_table(ENTRIES)?;
            let mut meta = tx.open_table(META)?;
            loop {
                let old = match t.first()? {
                    Some((k, v)) => {
                        let at = enqueued_at(v.value()).ok_or(StoreError::Corrupt(k.value()))?;
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
        }
        tx.commit()?;
        Ok(expired)
    }

    /// A durable empty commit: makes earlier non-durable deletes durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let db = self.read()?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    /// Size of the store's file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// Gives free pages back to the file system. Waits for readers to finish.
    pub fn compact(&self) -> Result<bool, StoreError> {
        let mut db = self.write()?;
        // Make earlier non-durable commits durable: compaction needs them settled.
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(db.compact()?)
    }

    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Message>, StoreError> {
        let db = self.read()?;
        let tx = db.begin_read()?;
        let t = tx.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in t.range(from..)?.take(max) {
            let (k, v) = item?;
            let seq = k.value();
            let (rule, payload) = decode(v.value()).ok_or(StoreError::Corrupt(seq))?;
            out.push(Message { seq, rule, payload });
        }
        Ok(out)
    }
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
