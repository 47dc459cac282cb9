//! Connecting: the OPC UA client the gateway is (its application certificate, trust
//! list, timeouts and reconnect backoff), choosing the server's endpoint that matches the
//! configured security, and the identity the gateway logs in with.

use std::sync::Arc;

use opcua::client::transport::TcpConnector;
use opcua::client::{Client, ClientBuilder, IdentityToken, Session, SessionEventLoop};
use opcua::crypto::SecurityPolicy as UaPolicy;
use opcua::types::{EndpointDescription, MessageSecurityMode, StatusCode};

use super::config::{Identity, SecurityMode, SecurityPolicy, ServerConfig};
use super::pki::Pki;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The client could not be built: the certificate directory or the configuration.
    #[error("OPC UA client: {0}")]
    Client(String),
    /// The server's endpoints could not be fetched.
    #[error("cannot reach {endpoint}: {status}")]
    Unreachable {
        /// The endpoint URL.
        endpoint: String,
        /// What the client reported.
        status: String,
    },
    /// The server offers no endpoint with the configured security.
    #[error(
        "{endpoint} offers no endpoint with security policy {policy} and mode {mode:?} (it offers: {offered})"
    )]
    NoMatchingEndpoint {
        /// The endpoint URL.
        endpoint: String,
        /// The configured policy.
        policy: &'static str,
        /// The configured mode.
        mode: SecurityMode,
        /// What the server offers.
        offered: String,
    },
    /// The identity could not be loaded.
    #[error("identity: {0}")]
    Identity(String),
}

/// Most elements of an array the client decodes (notifications of one publish, values of
/// one read, an array value).
const MAX_ARRAY_LENGTH: usize = 100_000;
/// Most chunks of one message (of 64 KiB each): 4 MiB.
const MAX_CHUNKS: usize = 64;

/// Most notifications a subscription's publish carries; more come in further publishes.
pub const MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 10_000;

/// The client of one server: built once, connected as often as needed.
pub struct Connector {
    client: Client,
    cfg: ServerConfig,
}

/// Creates the gateway's application certificate and key under `pki` when they are
/// missing (once, before the servers' tasks start, so that they do not race to create
/// it).
pub fn ensure_certificate(pki: &Pki, gateway_id: &str) -> Result<(), ConnectError> {
    if pki.own_certificate().exists() {
        return Ok(());
    }
    ClientBuilder::new()
        .application_name(format!("fieldgate {gateway_id}"))
        .application_uri(application_uri(gateway_id))
        .product_uri("urn:fieldgate")
        .pki_dir(pki.dir())
        .create_sample_keypair(true)
        .client()
        .map_err(|e| ConnectError::Client(e.join("; ")))?;
    if pki.own_certificate().exists() {
        Ok(())
    } else {
        Err(ConnectError::Client(format!(
            "cannot create the application certificate under {}",
            pki.dir().display()
        )))
    }
}

/// The application URI of a gateway, in its certificate and its sessions.
pub fn application_uri(gateway_id: &str) -> String {
    format!("urn:fieldgate:{gateway_id}")
}

impl Connector {
    /// A client for `cfg`, its certificate under `pki` (created when missing).
    pub fn new(cfg: &ServerConfig, pki: &Pki, gateway_id: &str) -> Result<Self, ConnectError> {
        let retry_limit = -1;
        let client = ClientBuilder::new()
            .application_name(format!("fieldgate {gateway_id}"))
            .application_uri(application_uri(gateway_id))
            .product_uri("urn:fieldgate")
            .pki_dir(pki.dir())
            .create_sample_keypair(true)
            .trust_server_certs(false)
            .verify_server_certs(true)
            .session_retry_limit(retry_limit)
            .session_retry_initial(cfg.reconnect_min)
            .session_retry_max(cfg.reconnect_max)
            .keep_alive_interval(cfg.keepalive)
            .max_failed_keep_alive_count(2)
            .request_timeout(cfg.request_timeout)
            // A publish of a large group carries thousands of notifications: the client's
            // default of 1000 array elements refused them and dropped the connection.
            .max_array_length(MAX_ARRAY_LENGTH)
            .max_chunk_count(MAX_CHUNKS)
            .max_message_size(MAX_CHUNKS * 65_535)
            .session_timeout(u32::try_from(cfg.session_timeout.as_millis()).unwrap_or(u32::MAX))
            .session_name(format!("fieldgate {gateway_id}"))
            .recreate_subscriptions(true)
            .client()
            .map_err(|e| ConnectError::Client(e.join("; ")))?;
        Ok(Connector {
            client,
            cfg: cfg.clone(),
        })
    }

    /// The server's endpoint matching the configured security, with the configured host.
    pub async fn endpoint(&self) -> Result<EndpointDescription, ConnectError> {
        let url = &self.cfg.endpoint;
        let endpoints = self
            .client
            .get_server_endpoints_from_url(url.as_str())
            .await
            .map_err(|e| ConnectError::Unreachable {
                endpoint: url.clone(),
                status: e.to_string(),
            })?;
        let policy = match self.cfg.security_policy {
            SecurityPolicy::None => UaPolicy::None,
            SecurityPolicy::Basic256Sha256 => UaPolicy::Basic256Sha256,
            SecurityPolicy::Aes128Sha256RsaOaep => UaPolicy::Aes128Sha256RsaOaep,
        };
        let mode = match self.cfg.mode() {
            SecurityMode::None => MessageSecurityMode::None,
            SecurityMode::Sign => MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        };
        let found = endpoints.iter().find(|e| {
            e.security_mode == mode && UaPolicy::from_uri(e.security_policy_uri.as_ref()) == policy
        });
        let Some(found) = found else {
            let offered: Vec<String> = endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        UaPolicy::from_uri(e.security_policy_uri.as_ref()),
                        e.security_mode
                    )
                })
                .collect();
            return Err(ConnectError::NoMatchingEndpoint {
                endpoint: url.clone(),
                policy: self.cfg.security_policy.name(),
                mode: self.cfg.mode(),
                offered: offered.join(", "),
            });
        };
        let mut endpoint = found.clone();
        // Servers often advertise a host name the gateway cannot resolve; the configured
        // URL is the one that reaches them.
        endpoint.endpoint_url = url.as_str().into();
        Ok(endpoint)
    }

    /// A session on the matching endpoint and the event loop that must run for it.
    pub async fn session(
        &mut self,
    ) -> Result<(Arc<Session>, SessionEventLoop<TcpConnector>), ConnectError> {
        let endpoint = self.endpoint().await?;
        let identity = identity(&self.cfg.identity)?;
        self.client
            .connect_to_endpoint_directly(endpoint, identity)
            .map_err(|e| ConnectError::Client(e.to_string()))
    }
}

/// The identity token of a configured identity; a password from the environment is read
/// here, at each connection, so a rotated secret is picked up.
fn identity(id: &Identity) -> Result<IdentityToken, ConnectError> {
    Ok(match id {
        Identity::Anonymous => IdentityToken::Anonymous,
        Identity::Username {
            user,
            password,
            password_env,
        } => {
            let password = match (password, password_env) {
                (Some(p), _) => p.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    ConnectError::Identity(format!("environment variable {var} is not set"))
                })?,
                (None, None) => String::new(),
            };
            IdentityToken::new_user_name(user.clone(), password)
        }
        Identity::X509 {
            certificate,
            private_key,
        } => IdentityToken::new_x509_path(certificate, private_key).map_err(|e| {
            ConnectError::Identity(format!(
                "{} / {}: {e}",
                certificate.display(),
                private_key.display()
            ))
        })?,
    })
}

/// Whether a status code says the server's certificate was refused.
pub fn is_untrusted(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BadCertificateUntrusted
            | StatusCode::BadSecurityChecksFailed
            | StatusCode::BadCertificateInvalid
    )
}
