//! Persistent sessions kept across a restart: which clients have one, and what they
//! subscribed to.
//!
//! rmqtt keeps sessions in memory only. For every session that outlives its connection
//! (MQTT 3.1.1 `clean session = 0`, MQTT 5 a session expiry interval above 0) this
//! module writes the client's identity and subscriptions to `data_dir/sessions.redb`
//! whenever they change: at CONNECT, after each SUBSCRIBE and UNSUBSCRIBE (before their
//! acknowledgement), and at the disconnect. At start the stored sessions that have not
//! expired are rebuilt as offline sessions, routed at once: messages published to their
//! topics are queued for them, and their client reconnects to `session present = 1`.
//!
//! Not kept: messages queued for an offline session and QoS 1/2 deliveries in flight at
//! the restart (they were in memory), and a session's last will (a will is never
//! published for a connection that was open at a crash). The password a client gave is
//! not written. A session whose client was connected at a crash starts its expiry when
//! the gateway starts again.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::{Session, SessionState};
use rmqtt::types::{
    ConnectInfo, DisconnectInfo, Id, SessionSubMap, SessionSubs, SubscriptionOptions,
    TimestampMillis, TopicFilter,
};
use rmqtt::utils::timestamp_millis;
use serde::{Deserialize, Serialize};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// What is kept of one persistent session, keyed by its client id.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The session's identity (listener, addresses, client id, username, creation).
    id: Id,
    /// The CONNECT that made or last resumed it, without password, auth data and will.
    connect: ConnectInfo,
    created_at: TimestampMillis,
    subscriptions: Vec<(TopicFilter, SubscriptionOptions)>,
    /// Set once its client disconnected; `None` while connected.
    disconnect: Option<DisconnectInfo>,
}

/// The store and the hooks that keep it current. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    db: Arc<Database>,
    /// The client ids the store holds a record for: most clients never have one, and
    /// their connects and disconnects need not touch the file.
    known: Arc<Mutex<HashSet<String>>>,
}

impl SessionStore {
    /// Opens (or creates) the store.
    pub fn open(path: &Path) -> anyhow::Result<SessionStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::builder()
            .set_cache_size(1024 * 1024)
            .create(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let tx = db.begin_write()?;
        tx.open_table(SESSIONS)?;
        tx.commit()?;
        Ok(SessionStore {
            db: Arc::new(db),
            known: Arc::default(),
        })
    }

    /// Rebuilds the stored sessions that have not expired as offline sessions of `scx`,
    /// with their subscriptions routed; forgets the others. Call once the listeners are
    /// registered with `scx` and before any client connects. Returns how many it rebuilt.
    pub async fn restore(&self, scx: &ServerContext) -> anyhow::Result<usize> {
        let stored = {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(SESSIONS)?;
            let mut all = Vec::new();
            for row in table.iter()? {
                let (key, value) = row?;
                all.push((key.value().to_string(), value.value().to_vec()));
            }
            all
        };
        self.known_ids()
            .extend(stored.iter().map(|(id, _)| id.clone()));
        let now = timestamp_millis();
        let mut restored = 0;
        for (client_id, bytes) in stored {
            let session = match serde_json::from_slice::<Stored>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(client = %client_id, error = %e, "broker: a stored session cannot be read; it is forgotten");
                    self.remove(&client_id, None).await;
                    continue;
                }
            };
            match rebuild(scx, session, now).await {
                Ok(true) => restored += 1,
                Ok(false) => self.remove(&client_id, None).await,
                Err(e) => {
                    tracing::warn!(client = %client_id, error = %e, "broker: a stored session cannot be rebuilt; it is forgotten");
                    self.remove(&client_id, None).await;
                }
            }
        }
        if restored > 0 {
            tracing::info!(
                sessions = restored,
                "broker: persistent sessions restored with their subscriptions"
            );
        }
        Ok(restored)
    }

    /// Writes a session's current state. At its CONNECT a session takes its client id
    /// over (a session that ends with its connection forgets the client's stored one);
    /// later a session writes only over its own record, so a session taken over that
    /// reports late cannot overwrite its successor's.
    async fn save(&self, session: &Session, moment: Moment) {
        let client_id = session.id.client_id.to_string();
        let stored = match snapshot(session, moment == Moment::Disconnected).await {
            Ok(Some(s)) => s,
            Ok(None) if moment == Moment::Connected => return self.remove(&client_id, None).await,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(client = %client_id, error = %e, "broker: cannot read a session to keep it");
                return;
            }
        };
        let bytes = match serde_json::to_vec(&stored) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(client = %client_id, error = %e, "broker: cannot encode a session to keep it");
                return;
            }
        };
        let db = self.db.clone();
        let mine = session.id.create_time;
        let written = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let tx = db.begin_write()?;
            let write = {
                let mut table = tx.open_table(SESSIONS)?;
                let write = match (moment, owner(&table, &client_id)?) {
                    (Moment::Connected, _) => true,
                    (_, Some(owner)) => owner == mine,
                    (Moment::Subscriptions, None) => true,
                    (Moment::Disconnected, None) => false,
                };
                if write {
                    table.insert(client_id.as_str(), bytes.as_slice())?;
                }
                write
            };
            tx.commit()?;
            Ok(write)
        })
        .await;
        match flatten(written) {
            Ok(true) => {
                self.known_ids().insert(session.id.client_id.to_string());
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(client = %session.id.client_id, error = %e, "broker: cannot keep a persistent session; it will not survive a restart");
            }
        }
    }

    fn known_ids(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a client's session; with `only`, only if it is still that session (one
    /// that was taken over must not forget its successor).
    async fn remove(&self, client_id: &str, only: Option<TimestampMillis>) {
        if !self.known_ids().contains(client_id) {
            return;
        }
        let db = self.db.clone();
        let key = client_id.to_string();
        let removed = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let tx = db.begin_write()?;
            // Taken over: the record is its successor's, which stays.
            let successor = {
                let mut table = tx.open_table(SESSIONS)?;
                let successor =
                    matches!((owner(&table, &key)?, only), (Some(c), Some(mine)) if c != mine);
                if !successor {
                    table.remove(key.as_str())?;
                }
                successor
            };
            tx.commit()?;
            Ok(!successor)
        })
        .await;
        match flatten(removed) {
            Ok(true) => {
                self.known_ids().remove(client_id);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(client = %client_id, error = %e, "broker: cannot forget an ended session")
            }
        }
    }
}

/// When a session's record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// At its CONNECT: the session owns its client id from now on.
    Connected,
    /// After a SUBSCRIBE or UNSUBSCRIBE.
    Subscriptions,
    /// At its disconnect.
    Disconnected,
}

/// What a blocking store operation gave, its error and a failed task as one text.
fn flatten<T>(r: Result<anyhow::Result<T>, tokio::task::JoinError>) -> Result<T, String> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Which session a client's stored record belongs to, by its creation time; `None`
/// without a record (or with one that cannot be read).
fn owner(
    table: &redb::Table<&str, &[u8]>,
    client_id: &str,
) -> Result<Option<TimestampMillis>, redb::StorageError> {
    Ok(table
        .get(client_id)?
        .and_then(|v| serde_json::from_slice::<Stored>(v.value()).ok())
        .map(|s| s.id.create_time))
}

/// Whether a session outlives its connection, by the CONNECT that opened it.
fn persistent(connect: &ConnectInfo) -> bool {
    match connect {
        ConnectInfo::V3(_, c) => !c.clean_session,
        ConnectInfo::V5(_, c) => c.session_expiry_interval_secs > 0,
    }
}

/// What to keep of a session, or `None` when it ends with its connection.
async fn snapshot(session: &Session, disconnected: bool) -> rmqtt::Result<Option<Stored>> {
    let connect = session.connect_info().await?;
    if !persistent(&connect) {
        return Ok(None);
    }
    let mut connect = connect.as_ref().clone();
    match &mut connect {
        ConnectInfo::V3(_, c) => {
            c.password = None;
            c.last_will = None;
        }
        ConnectInfo::V5(_, c) => {
            c.password = None;
            c.auth_data = None;
            c.last_will = None;
        }
    }
    let subscriptions = session
        .subscriptions()
        .await?
        .read()
        .await
        .iter()
        .map(|(tf, opts)| (tf.clone(), opts.clone()))
        .collect();
    let disconnect = if disconnected {
        Some(DisconnectInfo {
            disconnected_at: timestamp_millis(),
            reasons: Vec::new(),
            mqtt_disconnect: session.disconnect().await?,
        })
    } else {
        None
    };
    Ok(Some(Stored {
        id: session.id.clone(),
        connect,
        created_at: session.created_at().await?,
        subscriptions,
        disconnect,
    }))
}

/// Rebuilds one stored session as an offline session; `false` when it has expired or
/// its listener is gone.
async fn rebuild(scx: &ServerContext, stored: Stored, now: TimestampMillis) -> rmqtt::Result<bool> {
    let Some(listen_cfg) = scx
        .listen_cfgs
        .get(&stored.id.lid)
        .map(|c| c.value().clone())
    else {
        return Ok(false);
    };
    let connect = Arc::new(stored.connect);
    let fitter = scx.extends.fitter_mgr().await.create(
        connect.clone(),
        stored.id.clone(),
        listen_cfg.clone(),
    );
    let disconnect = stored
        .disconnect
        .unwrap_or_else(|| DisconnectInfo::new(now));
    let expiry = fitter.session_expiry_interval(disconnect.mqtt_disconnect.as_ref());
    let offline_for =
        Duration::from_millis(u64::try_from(now - disconnect.disconnected_at).unwrap_or(0));
    let Some(left) = expiry.checked_sub(offline_for).filter(|l| !l.is_zero()) else {
        return Ok(false);
    };
    let subscriptions: SessionSubMap = stored.subscriptions.into_iter().collect();
    let routes: Vec<_> = subscriptions
        .iter()
        .map(|(tf, opts)| (tf.clone(), opts.clone()))
        .collect();
    let session = Session::new(
        stored.id.clone(),
        scx.clone(),
        fitter.max_mqueue_len(),
        listen_cfg,
        fitter.clone(),
        None,
        fitter.max_inflight(),
        stored.created_at,
        connect,
        false,
        false,
        false,
        disconnect.disconnected_at,
        SessionSubs::from(subscriptions),
        Some(disconnect),
        None,
    )
    .await?;
    let tx = SessionState::offline_restart(session.clone(), left).await?;
    let mut entry = scx.extends.shared().await.entry(stored.id.clone());
    entry.set(session, tx).await?;
    let router = scx.extends.router().await;
    for (tf, opts) in routes {
        router.add(&tf, stored.id.clone(), opts).await?;
    }
    Ok(true)
}

#[async_trait::async_trait]
impl Handler for SessionStore {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientConnected(s) => self.save(s, Moment::Connected).await,
            Parameter::SessionSubscribed(s, _) | Parameter::SessionUnsubscribed(s, _) => {
                self.save(s, Moment::Subscriptions).await
            }
            Parameter::ClientDisconnected(s, _) => self.save(s, Moment::Disconnected).await,
            Parameter::SessionTerminated(s, _) => {
                self.remove(&s.id.client_id, Some(s.id.create_time)).await
            }
            _ => {}
        }
        (true, acc)
    }
}
