//! TLS on both sides, with rustls: the acceptor clients meet and the
//! connectors to each upstream, built from the configuration (a bad
//! certificate stops startup or refuses a reload) and swapped whole on
//! reload, so rotated certificates apply to new connections.
//!
//! - [`accept`]: SSLRequest or PostgreSQL 17's direct TLS, client
//!   certificates, what a client's handshake tells the login.
//! - [`connect`]: SSLRequest toward PostgreSQL with libpq's sslmode meanings.
//! - [`cert`]: PEM loading; the channel binding hash and CN of a certificate.
//!
//! The TLS streams themselves are variants of [`crate::stream::Stream`].

pub mod accept;
pub mod cert;
pub mod connect;

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use accept::{Acceptor, ClientTlsInfo};
pub use connect::Connector;

use crate::config::tls::{Ciphers, Protocols};
use crate::config::{Config, ConfigError};

/// PostgreSQL's ALPN protocol name (required for direct TLS).
pub const ALPN: &[u8] = b"postgresql";

/// The TLS half of a configuration.
pub struct Tls {
    /// `None` when client_tls_sslmode is disable.
    pub acceptor: Option<Arc<Acceptor>>,
    connectors: HashMap<String, Arc<Connector>>,
}

impl Tls {
    pub fn new(config: &Config) -> Result<Tls, ConfigError> {
        let acceptor = Acceptor::new(&config.client_tls)?.map(Arc::new);
        let mut system_roots = None;
        let mut connectors = HashMap::new();
        for db in &config.databases {
            let connector = Connector::new(&db.upstream, &config.server_tls, &mut system_roots)
                .map_err(|e| ConfigError(format!("database {}: {}", db.name, e.0)))?;
            connectors.insert(db.name.clone(), Arc::new(connector));
        }
        Ok(Tls {
            acceptor,
            connectors,
        })
    }

    /// The connector for a configured database, or for one the `*` entry
    /// serves (plaintext for any other).
    pub fn connector(&self, database: &str) -> Arc<Connector> {
        self.connectors
            .get(database)
            .or_else(|| self.connectors.get(crate::config::FALLBACK_DATABASE))
            .cloned()
            .unwrap_or_else(|| Arc::new(Connector::disabled()))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The provider with only the cipher suites `ciphers` chooses.
fn provider_with(ciphers: &Ciphers) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let names_some = |tls13: bool| ciphers.only.iter().any(|&(_, t)| t == tls13);
    provider.cipher_suites.retain(|suite| {
        let tls13 = matches!(suite, rustls::SupportedCipherSuite::Tls13(_));
        let name = suite.suite().as_str().unwrap_or_default();
        !names_some(tls13) || ciphers.only.iter().any(|&(n, _)| n == name)
    });
    Arc::new(provider)
}

fn versions(p: Protocols) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if p.tls13 {
        v.push(&rustls::version::TLS13);
    }
    if p.tls12 {
        v.push(&rustls::version::TLS12);
    }
    v
}
