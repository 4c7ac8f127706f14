//! The client side of TLS: reading how a client opens (SSLRequest, or
//! PostgreSQL 17's direct TLS handshake), the handshake, and what it tells
//! the login (channel binding data, the client certificate's CN).
//!
//! Each client's handshake runs in that client's own task under its login
//! deadline, so a slow or broken one never holds up the accept loop.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{cert, provider, provider_with, versions, ALPN};
use crate::config::tls::{ClientTls, SslMode};
use crate::config::ConfigError;
use crate::error::{Error, Result};
use crate::protocol::{GSSENC_REQUEST, SSL_REQUEST};
use crate::stream::{Conn, Stream};

/// The first byte of a TLS handshake record: a direct TLS client.
const TLS_HANDSHAKE: u8 = 0x16;

pub struct Acceptor {
    acceptor: TlsAcceptor,
    pub mode: SslMode,
    /// Our certificate's tls-server-end-point hash: SCRAM-SHA-256-PLUS is
    /// offered when there is one.
    end_point: Option<Arc<[u8]>>,
}

/// What a client's TLS handshake established.
#[derive(Debug, Clone)]
pub struct ClientTlsInfo {
    /// Channel binding data for SCRAM-SHA-256-PLUS.
    pub channel_binding: Option<Arc<[u8]>>,
    /// The CN of the certificate the client presented.
    pub peer_cn: Option<String>,
}

impl Acceptor {
    /// `None` when clients get no TLS (client_tls_sslmode = disable).
    pub fn new(s: &ClientTls) -> Result<Option<Acceptor>, ConfigError> {
        if s.sslmode == SslMode::Disable {
            return Ok(None);
        }
        let missing = |what: &str| ConfigError(format!("client_tls_sslmode needs {what}"));
        let certs = cert::certs(s.cert.as_ref().ok_or_else(|| missing("a certificate"))?)?;
        let key = cert::key(s.key.as_ref().ok_or_else(|| missing("a private key"))?)?;
        let end_point = cert::end_point_hash(&certs[0]).map(Arc::from);
        let builder = ServerConfig::builder_with_provider(provider_with(&s.ciphers))
            .with_protocol_versions(&versions(s.protocols))
            .map_err(|e| {
                ConfigError(format!("client_tls_protocols with client_tls_ciphers: {e}"))
            })?;
        let builder = if s.sslmode >= SslMode::VerifyCa {
            let ca = s.ca.as_ref().ok_or_else(|| missing("client_tls_ca_file"))?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(cert::roots(ca)?, provider())
                    .build()
                    .map_err(|e| ConfigError(format!("{}: {e}", ca.origin())))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            ConfigError(format!(
                "client_tls_cert_file and client_tls_key_file do not go together: {e}"
            ))
        })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Some(Acceptor {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mode: s.sslmode,
            end_point,
        }))
    }

    /// The handshake. A direct TLS client must have negotiated ALPN
    /// `postgresql` (PostgreSQL 17 insists on it too).
    async fn handshake(&self, tcp: TcpStream, direct: bool) -> Result<(Stream, ClientTlsInfo)> {
        let tls = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| Error::ClientTls(e.to_string()))?;
        let (_, session) = tls.get_ref();
        if direct && session.alpn_protocol() != Some(ALPN) {
            return Err(Error::ClientTls(
                "direct TLS connection without ALPN protocol \"postgresql\"".into(),
            ));
        }
        let peer_cn = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|c| cert::common_name(c));
        tracing::debug!(
            version = ?session.protocol_version(),
            cipher = ?session.negotiated_cipher_suite().map(|c| c.suite()),
            direct,
            "TLS established"
        );
        let info = ClientTlsInfo {
            channel_binding: self.end_point.clone(),
            peer_cn,
        };
        Ok((Stream::TlsServer(Box::new(tls)), info))
    }
}

/// Reads how a TCP client opens: a TLS handshake (direct TLS), an
/// SSLRequest (answered 'S', then the handshake), a GSSENCRequest
/// (answered 'N'), or a plain startup packet, whose first bytes are left in
/// the returned connection's buffer. Reads exactly what it consumes, so no
/// plaintext sent after an SSLRequest can be mistaken for protected data.
///
/// Without an acceptor (or on a Unix socket) nothing is read here: the
/// login answers SSLRequest with 'N'.
pub async fn negotiate(
    stream: Stream,
    acceptor: Option<&Acceptor>,
) -> Result<(Conn, Option<ClientTlsInfo>)> {
    let (acceptor, mut tcp) = match (acceptor, stream) {
        (Some(acceptor), Stream::Tcp(tcp)) => (acceptor, tcp),
        (_, stream) => return Ok((Conn::new(stream), None)),
    };
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(Error::ClientIo)? == 0 {
        return Err(Error::ClientGone);
    }
    if first[0] == TLS_HANDSHAKE {
        let (stream, info) = acceptor.handshake(tcp, true).await?;
        return Ok((Conn::new(stream), Some(info)));
    }
    let mut head = [0u8; 8];
    for _ in 0..2 {
        tcp.read_exact(&mut head)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::ClientGone,
                _ => Error::ClientIo(e),
            })?;
        let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        match (len, code) {
            (8, SSL_REQUEST) => {
                tcp.write_all(b"S").await.map_err(Error::ClientIo)?;
                let (stream, info) = acceptor.handshake(tcp, false).await?;
                return Ok((Conn::new(stream), Some(info)));
            }
            // libpq asks for GSS encryption first when it has credentials.
            (8, GSSENC_REQUEST) => tcp.write_all(b"N").await.map_err(Error::ClientIo)?,
            _ => break,
        }
    }
    let mut conn = Conn::new(Stream::Tcp(tcp));
    conn.rbuf.extend_from_slice(&head);
    Ok((conn, None))
}
