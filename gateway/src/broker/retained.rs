//! Retained messages, kept on disk so they survive a restart.
//!
//! rmqtt asks its retain storage to set a topic's retained message while it handles the
//! PUBLISH, before the acknowledgement; this storage commits it to a redb file under
//! `data_dir` there and then, and keeps the topic tree in memory for lookups. Kept per
//! topic: payload and QoS (MQTT 5 properties of a retained message are not kept).

use std::path::Path;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::types::{CodecPublish, From, Id, Publish, QoS, Retain, TopicFilter, TopicName};

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// The retained messages: in memory for matching, in redb for the next start.
pub struct RetainedStore {
    db: Database,
    memory: DefaultRetainStorage,
}

impl RetainedStore {
    /// Opens (or creates) the store and loads what it holds.
    pub async fn open(path: &Path) -> anyhow::Result<RetainedStore> {
        use anyhow::Context;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::builder()
            .set_cache_size(4 * 1024 * 1024)
            .create(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let tx = db.begin_write()?;
        tx.open_table(RETAINED)?;
        tx.commit()?;
        let memory = DefaultRetainStorage::new();
        let tx = db.begin_read()?;
        let table = tx.open_table(RETAINED)?;
        let mut n = 0usize;
        for row in table.iter()? {
            let (topic, value) = row?;
            let topic = topic.value();
            let value = value.value();
            let Some((&qos, payload)) = value.split_first() else {
                continue;
            };
            let retain = retain(topic, qos, payload);
            memory
                .set_with_timeout(&TopicName::from(topic), retain, None)
                .await?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(retained = n, "broker: retained messages restored");
        }
        Ok(RetainedStore { db, memory })
    }

    fn persist(&self, topic: &str, qos: u8, payload: &[u8]) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RETAINED)?;
            if payload.is_empty() {
                table.remove(topic)?;
            } else {
                let mut value = Vec::with_capacity(payload.len() + 1);
                value.push(qos);
                value.extend_from_slice(payload);
                table.insert(topic, value.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// A retained message as rmqtt holds it, from what was stored.
fn retain(topic: &str, qos: u8, payload: &[u8]) -> Retain {
    let qos = match qos {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    };
    let publish = Publish::new(
        Box::new(CodecPublish {
            dup: false,
            retain: true,
            qos,
            topic: topic.into(),
            packet_id: None,
            payload: bytes::Bytes::copy_from_slice(payload),
            properties: None,
        }),
        None,
        None,
        Some(rmqtt::utils::timestamp_millis()),
    );
    Retain {
        msg_id: None,
        from: From::from_system(Id::new(0, 0, None, None, "fieldgate".into(), None)),
        publish,
    }
}

#[async_trait::async_trait]
impl RetainStorage for RetainedStore {
    fn enable(&self) -> bool {
        true
    }

    async fn set(
        &self,
        topic: &TopicName,
        retain: Retain,
        expiry_interval: Option<Duration>,
    ) -> rmqtt::Result<()> {
        let qos = retain.publish.qos as u8;
        self.persist(topic, qos, &retain.publish.payload)
            .map_err(|e| anyhow::anyhow!("cannot keep the retained message of {topic}: {e}"))?;
        self.memory
            .set_with_timeout(topic, retain, expiry_interval)
            .await
    }

    async fn get(&self, topic_filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.memory.get_message(topic_filter).await
    }

    async fn count(&self) -> isize {
        self.memory.count().await
    }

    async fn max(&self) -> isize {
        self.memory.max().await
    }
}
