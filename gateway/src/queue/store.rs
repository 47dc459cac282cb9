//! The queue's on-disk store: one redb file per sink, one table keyed by a big-endian
//! u64 sequence number. Value layout: rule-name length (u16, big-endian), the rule
//! name, the payload.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fieldgate_connectors::sink::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");

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
    #[error("queue entry {0} is corrupt")]
    Corrupt(u64),
    #[error("queue writer thread: {0}")]
    Thread(std::io::Error),
    #[error("queue commit failed: {0}")]
    CommitFailed(String),
    #[error("queue is closed")]
    Closed,
    #[error("cannot create queue directory: {0}")]
    Dir(std::io::Error),
}

pub(super) struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::Dir)?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        // Make sure the table exists so readers never see "table not found".
        let tx = db.begin_write()?;
        tx.open_table(ENTRIES)?;
        tx.commit()?;
        Ok(Store { db })
    }

    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ENTRIES)?;
        Ok(t.last()?.map_or(0, |(k, _)| k.value()))
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(ENTRIES)?.len()?)
    }

    /// Writes entries under consecutive sequence numbers after `last`, durably.
    pub fn append(&self, last: u64, entries: &[(Arc<str>, Bytes)]) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let mut seq = last;
        {
            let mut t = tx.open_table(ENTRIES)?;
            let mut buf = Vec::new();
            for (rule, payload) in entries {
                seq += 1;
                buf.clear();
                encode(rule, payload, &mut buf);
                t.insert(seq, buf.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    pub fn remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            let mut t = tx.open_table(ENTRIES)?;
            for s in seqs {
                t.remove(s)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A durable empty commit: makes earlier non-durable deletes durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Message>, StoreError> {
        let tx = self.db.begin_read()?;
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

fn encode(rule: &str, payload: &[u8], out: &mut Vec<u8>) {
    let name = &rule.as_bytes()[..rule.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
}

fn decode(v: &[u8]) -> Option<(Arc<str>, Bytes)> {
    let len = usize::from(u16::from_be_bytes([*v.first()?, *v.get(1)?]));
    let name = std::str::from_utf8(v.get(2..2 + len)?).ok()?;
    Some((Arc::from(name), Bytes::copy_from_slice(&v[2 + len..])))
}
