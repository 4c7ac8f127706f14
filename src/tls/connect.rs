//! TLS toward PostgreSQL with libpq's sslmode meanings:
//!
//! | sslmode     | asks for TLS | server says N | checks the certificate      |
//! |-------------|--------------|---------------|-----------------------------|
//! | disable     | no           |               |                             |
//! | allow/prefer| yes          | plaintext     | no                          |
//! | require     | yes          | refused       | no                          |
//! | verify-ca   | yes          | refused       | chain to the CA             |
//! | verify-full | yes          | refused       | chain and host name         |
//!
//! (`allow` is `prefer` here: pgdyno never stays in plaintext when the
//! server offers TLS.) Unix sockets never use TLS, as in libpq.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{cert, provider_with, versions, ALPN};
use crate::config::tls::{ChannelBinding, Pem, ServerTls, SslMode};
use crate::config::{ConfigError, Host, Parse, Upstream};
use crate::error::{Error, Result};
use crate::protocol::SSL_REQUEST;
use crate::stream::Stream;

/// How to open connections to one upstream.
#[derive(Debug)]
pub struct Connector {
    pub mode: SslMode,
    /// `None` for disable (and Unix sockets).
    tls: Option<(Tls, ServerName<'static>)>,
    pub channel_binding: ChannelBinding,
}

/// A rustls connector, shown in Debug output by name only.
struct Tls(TlsConnector);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl Connector {
    pub fn disabled() -> Connector {
        Connector {
            mode: SslMode::Disable,
            tls: None,
            channel_binding: ChannelBinding::Prefer,
        }
    }

    /// The URL's `sslmode`, `sslrootcert` (a file, or `system`), `sslcert`,
    /// `sslkey` and `channel_binding` win over the server_tls_* defaults.
    /// `system_roots` caches the system's roots across upstreams.
    pub fn new(
        upstream: &Upstream,
        defaults: &ServerTls,
        system_roots: &mut Option<Arc<RootCertStore>>,
    ) -> Result<Connector, ConfigError> {
        let param = |key: &str| upstream.param(key).filter(|v| !v.is_empty());
        let path = |key: &str| param(key).map(PathBuf::from);
        let mode = match param("sslmode") {
            Some(m) => SslMode::parse(m).map_err(|e| ConfigError(format!("sslmode: {e}")))?,
            None => defaults.sslmode,
        };
        let channel_binding = match param("channel_binding") {
            Some(c) => ChannelBinding::parse(c)
                .map_err(|e| ConfigError(format!("channel_binding: {e}")))?,
            None => ChannelBinding::Prefer,
        };
        let host = match &upstream.host {
            Host::Tcp(h) if mode != SslMode::Disable => h,
            _ => {
                return Ok(Connector {
                    mode: SslMode::Disable,
                    tls: None,
                    channel_binding,
                })
            }
        };
        let server_name = ServerName::try_from(host.clone()).map_err(|e| {
            ConfigError(format!("host {host}: not usable as a TLS server name: {e}"))
        })?;
        let provider = provider_with(&defaults.ciphers);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(defaults.protocols))
            .map_err(|e| {
                ConfigError(format!("server_tls_protocols with server_tls_ciphers: {e}"))
            })?;
        let verifier: Arc<dyn ServerCertVerifier> = if mode >= SslMode::VerifyCa {
            let roots = match path("sslrootcert").or(defaults.ca_file.clone()) {
                Some(p) if p.as_os_str() != "system" => cert::roots(&Pem::File(p))?,
                _ => match system_roots {
                    Some(r) => r.clone(),
                    None => system_roots.insert(cert::system_roots()?).clone(),
                },
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| ConfigError(format!("server TLS roots: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        } else {
            Arc::new(AnyCertificate(provider))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let cert_file = path("sslcert").or(defaults.cert_file.clone());
        let key_file = path("sslkey").or(defaults.key_file.clone());
        let mut config = match (cert_file, key_file) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(cert::certs(&Pem::File(c))?, cert::key(&Pem::File(k))?)
                .map_err(|e| {
                    ConfigError(format!("server_tls_cert_file and server_tls_key_file: {e}"))
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(ConfigError(
                    "a client certificate for PostgreSQL needs both server_tls_cert_file and \
                     server_tls_key_file (or sslcert and sslkey)"
                        .into(),
                ))
            }
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Connector {
            mode,
            tls: Some((Tls(TlsConnector::from(Arc::new(config))), server_name)),
            channel_binding,
        })
    }

    /// Negotiates encryption on a new socket to PostgreSQL: SSLRequest,
    /// then the handshake or (prefer, on 'N') plaintext. Returns the stream
    /// and, over TLS, the server certificate's channel binding data.
    pub async fn negotiate(&self, mut tcp: TcpStream) -> Result<(Stream, Option<Vec<u8>>)> {
        let Some((connector, name)) = &self.tls else {
            return Ok((Stream::Tcp(tcp), None));
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
        tcp.write_all(&request).await.map_err(Error::BackendIo)?;
        // One byte exactly: anything after 'S' belongs to the handshake.
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(Error::BackendIo)?;
        match answer[0] {
            b'S' => {}
            b'N' if !self.mode.requires_tls() => return Ok((Stream::Tcp(tcp), None)),
            b'N' => {
                return Err(Error::BackendConnect(format!(
                    "server does not support TLS, and sslmode={} requires it",
                    self.mode.name()
                )))
            }
            other => {
                return Err(Error::BackendProtocol(format!(
                    "unexpected answer to SSLRequest: {:?}",
                    other as char
                )))
            }
        }
        let tls = connector.0.connect(name.clone(), tcp).await.map_err(|e| {
            Error::BackendConnect(format!("TLS handshake (sslmode={}): {e}", self.mode.name()))
        })?;
        let binding = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| cert::end_point_hash(c));
        Ok((Stream::TlsClient(Box::new(tls)), binding))
    }
}

/// prefer and require: encrypted, but any certificate will do (libpq's
/// meaning; Heroku Postgres's certificates chain to no public root). The
/// handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
