//! TLS for the sinks' client connections (cloud MQTT, NATS): the server's CA, and
//! optionally a client certificate and key, as AWS IoT Core, Azure IoT Hub and NATS
//! servers with `verify` require.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[sinks.NAME.tls]`: PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// The CA certificate(s) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate chain, for servers that authenticate clients by certificate.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Why a TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("cannot read {what} {path}: {reason}")]
    Pem {
        /// Which file: `CA file`, `client certificate` or `client key`.
        what: &'static str,
        /// The file's path.
        path: PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// A CA or client certificate file holds no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file's path.
        path: PathBuf,
    },
    /// rustls refused a certificate or the key, or could not set up the protocol versions.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

impl ClientTlsConfig {
    /// Checks values serde cannot: a certificate and its key come together.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err("`tls.cert_file` needs `tls.key_file`".into()),
            (None, Some(_)) => Err("`tls.key_file` needs `tls.cert_file`".into()),
            _ => Ok(()),
        }
    }

    /// Takes relative paths from `base`.
    pub fn rebase(&mut self, base: &Path) {
        self.ca_file = base.join(&self.ca_file);
        if let Some(c) = &mut self.cert_file {
            *c = base.join(&*c);
        }
        if let Some(k) = &mut self.key_file {
            *k = base.join(&*k);
        }
    }

    /// Reads the files into a rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let pem_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls::pki_types::pem::Error| TlsError::Pem {
                what,
                path,
                reason: e.to_string(),
            }
        };
        let certs = |what, path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(pem_err(what, path))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem_err(what, path))?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
            Ok(certs)
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs("CA file", &self.ca_file)? {
            roots.add(ca)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certs("client certificate", cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err("client key", key))?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}
