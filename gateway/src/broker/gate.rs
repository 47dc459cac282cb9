//! The gateway's hooks in the broker: authentication, access control, and the journal
//! an allowed PUBLISH goes through before it is acknowledged.
//!
//! rmqtt calls its publish hook before its publish ACL hook, so the journal is written
//! in the ACL hook, after the allow decision: a refused message never reaches the rules.
//! A client must never be made a superuser here, since rmqtt skips the ACL hook (and so
//! the journal) for superusers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rmqtt::codec::v5::SubscribeAckReason as SubAck;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{AuthResult, PublishAclResult, SubscribeAclResult};

use super::BrokerCounters;
use super::acl::{Acl, Client};
use super::passwords::Passwords;
use crate::config::{AckMode, BrokerConfig};
use crate::journal::{Journal, Message};
use crate::logging::SharedRateLimited;

/// Why the broker refused a client something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A username with a wrong password, or a user the password file does not know.
    BadCredentials,
    /// A client without a username where anonymous clients are refused.
    Anonymous,
    /// A subscription the ACL does not grant.
    SubscribeDenied,
    /// A publish the ACL does not grant.
    PublishDenied,
    /// A publish to a `$SYS` topic, which only the broker writes.
    SystemTopic,
    /// A topic longer or deeper than `broker.max_topic_length` / `max_topic_levels`.
    TopicLimits,
    /// A message the journal cannot hold.
    TooLarge,
    /// A subscription past `broker.max_subscriptions`.
    SubscriptionLimit,
    /// A CONNECT with a client id longer than `broker.max_client_id_length` or invalid.
    ClientId,
    /// A CONNECT past `broker.max_connections`, or one the broker could not serve in time.
    Unavailable,
    /// A CONNECT refused for another reason (its CONNACK code is logged).
    Connect,
}

impl Refusal {
    /// Every reason, in [`Refusal::index`] order.
    pub const ALL: [Refusal; 11] = [
        Refusal::BadCredentials,
        Refusal::Anonymous,
        Refusal::SubscribeDenied,
        Refusal::PublishDenied,
        Refusal::SystemTopic,
        Refusal::TopicLimits,
        Refusal::TooLarge,
        Refusal::SubscriptionLimit,
        Refusal::ClientId,
        Refusal::Unavailable,
        Refusal::Connect,
    ];

    /// Position in [`Refusal::ALL`] and in `BrokerCounters::refused`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label in metrics and logs, e.g. `bad_credentials`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad_credentials",
            Refusal::Anonymous => "anonymous",
            Refusal::SubscribeDenied => "subscribe_denied",
            Refusal::PublishDenied => "publish_denied",
            Refusal::SystemTopic => "system_topic",
            Refusal::TopicLimits => "topic_limits",
            Refusal::TooLarge => "too_large",
            Refusal::SubscriptionLimit => "subscription_limit",
            Refusal::ClientId => "client_id",
            Refusal::Unavailable => "unavailable",
            Refusal::Connect => "connect_other",
        }
    }
}

/// The password and ACL files, as last loaded.
#[derive(Debug, Clone, Default)]
pub struct Access {
    passwords: Option<Arc<Passwords>>,
    acl: Option<Arc<Acl>>,
}

impl Access {
    pub fn load(cfg: &BrokerConfig) -> anyhow::Result<Access> {
        Ok(Access {
            passwords: match &cfg.password_file {
                Some(p) => {
                    Some(Arc::new(Passwords::load(p).map_err(|e| {
                        anyhow::anyhow!("key `broker.password_file`: {e}")
                    })?))
                }
                None => None,
            },
            acl: match &cfg.acl_file {
                Some(p) => {
                    Some(Arc::new(Acl::load(p).map_err(|e| {
                        anyhow::anyhow!("key `broker.acl_file`: {e}")
                    })?))
                }
                None => None,
            },
        })
    }
}

/// The hook handler. Cheap to clone.
#[derive(Clone)]
pub struct Gate(Arc<Inner>);

struct Inner {
    access: RwLock<Access>,
    cfg: BrokerConfig,
    journal: Journal,
    counters: Arc<BrokerCounters>,
    /// Listeners whose clients proved themselves with a certificate.
    mutual_tls: Vec<u16>,
    stopping: AtomicBool,
}

impl Gate {
    pub fn new(
        access: Access,
        cfg: BrokerConfig,
        journal: Journal,
        counters: Arc<BrokerCounters>,
        mutual_tls: Vec<u16>,
    ) -> Gate {
        Gate(Arc::new(Inner {
            access: RwLock::new(access),
            cfg,
            journal,
            counters,
            mutual_tls,
            stopping: AtomicBool::new(false),
        }))
    }

    pub fn stop(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    fn access(&self) -> Access {
        self.0
            .access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the password and ACL files again; a broken file keeps the old rules.
    pub fn reload(&self) {
        let counters = &self.0.counters;
        match Access::load(&self.0.cfg) {
            Ok(a) => {
                *self.0.access.write().unwrap_or_else(|e| e.into_inner()) = a;
                counters.access_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("broker password and ACL files reloaded");
            }
            Err(e) => {
                counters
                    .access_reload_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "broker access files not reloaded; the previous ones stay in force");
            }
        }
    }

    /// Reloads the access files on SIGHUP and when one of them changes.
    pub async fn reload_on_change(self) {
        let files: Vec<PathBuf> = [&self.0.cfg.password_file, &self.0.cfg.acl_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if files.is_empty() {
            return;
        }
        let stamp = |files: &[PathBuf]| -> Vec<Option<SystemTime>> {
            files
                .iter()
                .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .collect()
        };
        let mut seen = stamp(&files);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP reload of the broker's access files");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                s = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => s.is_some(),
            };
            let now = stamp(&files);
            if signalled || now != seen {
                seen = now;
                self.reload();
            }
        }
    }

    async fn authenticate(&self, info: &rmqtt::types::ConnectInfo) -> AuthResult {
        let id = info.id();
        let client = id.client_id.to_string();
        if self.0.mutual_tls.contains(&id.lid) {
            // The TLS handshake checked the certificate; its common name is the username.
            return AuthResult::Allow(false, None);
        }
        let access = self.access();
        let Some(user) = info.username() else {
            self.0
                .counters
                .refused(Refusal::Anonymous, &client, "no username");
            return AuthResult::NotAuthorized;
        };
        let Some(passwords) = access.passwords else {
            if self.0.cfg.anonymous_allowed() {
                // Without a password file a username is a label, as for anonymous clients.
                return AuthResult::Allow(false, None);
            }
            self.0
                .counters
                .refused(Refusal::BadCredentials, &client, "no password file");
            return AuthResult::BadUsernameOrPassword;
        };
        let user = user.to_string();
        let password = info.password().map(|p| p.to_vec()).unwrap_or_default();
        let who = user.clone();
        let ok = tokio::task::spawn_blocking(move || passwords.verify(&who, &password))
            .await
            .unwrap_or(false);
        if ok {
            AuthResult::Allow(false, None)
        } else {
            self.0
                .counters
                .refused(Refusal::BadCredentials, &client, &format!("user `{user}`"));
            AuthResult::BadUsernameOrPassword
        }
    }

    /// Whether a topic or filter is within the configured length and depth.
    fn within_limits(&self, topic: &str) -> bool {
        topic.len() <= self.0.cfg.max_topic_length
            && topic.split('/').count() <= self.0.cfg.max_topic_levels
    }

    /// Whether a subscription is granted; `Err` with the MQTT 5 reason code if not.
    async fn subscribe(&self, s: &rmqtt::session::Session, filter: &str) -> Result<(), SubAck> {
        let client = s.id.client_id.to_string();
        if !self.within_limits(filter) {
            self.0
                .counters
                .refused(Refusal::TopicLimits, &client, filter);
            return Err(SubAck::NotAuthorized);
        }
        let max = self.0.cfg.max_subscriptions;
        if max > 0
            && let Ok(subs) = s.subscriptions().await
        {
            let subs = subs.read().await;
            // Subscribing again to a filter replaces it: not one more.
            if subs.len() >= max && !subs.contains_key(filter) {
                drop(subs);
                self.0
                    .counters
                    .refused(Refusal::SubscriptionLimit, &client, filter);
                return Err(SubAck::QuotaExceeded);
            }
        }
        // A shared subscription is checked on the filter it shares.
        let plain = filter
            .strip_prefix("$share/")
            .and_then(|r| r.split_once('/'))
            .map_or(filter, |(_, f)| f);
        if let Some(acl) = self.access().acl
            && !acl.may_subscribe(&acl_client(s, &client), plain)
        {
            self.0
                .counters
                .refused(Refusal::SubscribeDenied, &client, filter);
            return Err(SubAck::NotAuthorized);
        }
        Ok(())
    }

    fn may_receive(&self, s: &rmqtt::session::Session, topic: &str) -> bool {
        let Some(acl) = self.access().acl else {
            return true;
        };
        let client = s.id.client_id.to_string();
        acl.may_receive(&acl_client(s, &client), topic)
    }

    async fn publish(
        &self,
        s: &rmqtt::session::Session,
        p: &rmqtt::types::Publish,
    ) -> PublishAclResult {
        let client = s.id.client_id.to_string();
        let topic: &str = &p.topic;
        let refuse = |r: Refusal, why: &str| {
            self.0.counters.refused(r, &client, topic);
            PublishAclResult::rejected(false, Some(why.to_string().into()))
        };
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            // MQTT forbids these in a topic name: the connection is closed.
            super::protocol_errors::counted(super::ProtocolError::InvalidTopic, topic);
            return PublishAclResult::rejected(true, Some("invalid topic name".into()));
        }
        if topic == "$SYS" || topic.starts_with("$SYS/") {
            return refuse(Refusal::SystemTopic, "$SYS topics are the broker's");
        }
        if !self.within_limits(topic) {
            return refuse(Refusal::TopicLimits, "topic too long or too deep");
        }
        if let Some(acl) = self.access().acl
            && !acl.may_publish(&acl_client(s, &client), topic)
        {
            return refuse(Refusal::PublishDenied, "not authorized");
        }
        if self.0.stopping.load(Ordering::Relaxed) {
            // Never acknowledged: the device sends it again to the next run.
            std::future::pending::<()>().await;
        }
        if p.retain && p.payload.is_empty() {
            // Clearing a retained message is for the broker, not a reading.
            return PublishAclResult::allow();
        }
        let wait = p.qos != rmqtt::types::QoS::AtMostOnce && self.0.cfg.ack == AckMode::Durable;
        let message = Message {
            topic: topic.to_string(),
            payload: p.payload.clone(),
        };
        match self.0.journal.append(vec![message], wait).await {
            Ok(()) => PublishAclResult::allow(),
            Err(e) => refuse(Refusal::TooLarge, &e.to_string()),
        }
    }
}

/// CONNECTs rmqtt refused in its handshake by itself (client id, session limit,
/// handshake timeout), by [`Refusal::index`]. No hook sees those clients: rmqtt reports
/// them only in its log, where the [`ProtocolErrorLayer`](super::ProtocolErrorLayer)
/// finds them.
static HANDSHAKE_REFUSALS: [AtomicU64; Refusal::ALL.len()] =
    [const { AtomicU64::new(0) }; Refusal::ALL.len()];

/// Counts a CONNECT rmqtt refused, by the CONNACK code's name in its log line
/// (`V3(IdentifierRejected)`, `V5(ServerUnavailable)`...). The credential refusals are
/// not counted here: [`Gate::authenticate`] counted them already.
pub(super) fn handshake_refused(code: &str) {
    let has = |names: &[&str]| names.iter().any(|n| code.contains(n));
    let r = if has(&["BadUserNameOrPassword", "NotAuthorized"]) {
        return;
    } else if has(&["IdentifierRejected", "ClientIdentifierNotValid"]) {
        Refusal::ClientId
    } else if has(&[
        "ServiceUnavailable",
        "ServerUnavailable",
        "ServerBusy",
        "QuotaExceeded",
    ]) {
        Refusal::Unavailable
    } else {
        Refusal::Connect
    };
    HANDSHAKE_REFUSALS[r.index()].fetch_add(1, Ordering::Relaxed);
    log_refusal(r, "(in the handshake)", code);
}

/// Logs a refusal unless one was logged within the last few seconds.
pub(super) fn log_refusal(r: Refusal, client: &str, detail: &str) {
    static LOG: SharedRateLimited = SharedRateLimited::new(Duration::from_secs(5));
    if let Some(held) = LOG.allow(1) {
        tracing::warn!(
            target: "fieldgate::broker",
            reason = r.as_str(),
            client = %client,
            detail = %detail,
            not_logged_before = held,
            "broker refused a client's request"
        );
    }
}

/// Refusals of one reason so far: the hooks' and the handshake's.
pub(super) fn refusals(counters: &BrokerCounters, r: Refusal) -> u64 {
    counters.refused[r.index()].load(Ordering::Relaxed)
        + HANDSHAKE_REFUSALS[r.index()].load(Ordering::Relaxed)
}

/// The ACL's view of a session's client; `client_id` is the session's client id as text.
fn acl_client<'a>(s: &'a rmqtt::session::Session, client_id: &'a str) -> Client<'a> {
    Client {
        username: s.id.username.as_deref(),
        client_id,
    }
}

#[async_trait::async_trait]
impl Handler for Gate {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let r = self.authenticate(info).await;
                (false, Some(HookResult::AuthResult(r)))
            }
            Parameter::ClientConnected(_) => {
                let c = &self.0.counters;
                c.connections.fetch_add(1, Ordering::Relaxed);
                c.accepted.fetch_add(1, Ordering::Relaxed);
                (true, acc)
            }
            Parameter::ClientDisconnected(s, reason) => {
                self.0.counters.connections.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(client = %s.id.client_id, ?reason, "client disconnected");
                super::protocol_errors::disconnected(reason);
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let r = match self.subscribe(s, &sub.topic_filter).await {
                    Ok(()) => SubscribeAclResult::new_success(sub.opts.qos(), None),
                    Err(code) => SubscribeAclResult::new_failure(code),
                };
                (false, Some(HookResult::SubscribeAclResult(r)))
            }
            Parameter::MessageExpiryCheck(s, _, p) => {
                // The subscription was granted; this message may still be one the
                // subscriber must not see (a `deny` inside what it subscribed to).
                if self.may_receive(s, &p.topic) {
                    (true, acc)
                } else {
                    (false, Some(HookResult::MessageExpiry))
                }
            }
            Parameter::MessagePublishCheckAcl(s, p) => {
                let r = self.publish(s, p).await;
                (false, Some(HookResult::PublishAclResult(r)))
            }
            _ => (true, acc),
        }
    }
}
