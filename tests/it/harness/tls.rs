//! TLS for the tests: certificates made at test time with rcgen, rustls
//! client configurations, and a tokio-postgres connector built on
//! tokio-rustls.
//!
//! - `test_certs()`: one CA; server certificates for the right name, for a
//!   wrong name (both from the CA) and a self-signed one; client
//!   certificates with CN `app` and CN `mallory` from the CA and a
//!   self-signed one with CN `app`. All written as PEM files (keys 0600)
//!   into one scratch directory, once per test run.
//! - `ClientTls`: a rustls client configuration to build (which versions,
//!   a client certificate, ALPN); it always verifies the server against
//!   the test CA and the address 127.0.0.1, as libpq's verify-full would.
//! - `RustlsConnect`: tokio-postgres's `MakeTlsConnect` over tokio-rustls,
//!   giving tokio-postgres `tls-server-end-point` channel binding data.
//! - `ssl_request_handshake`, `direct_handshake`: TLS to pgdyno by hand,
//!   after an SSLRequest or straight away (PostgreSQL 17's direct TLS).
//!
//! How PostgreSQL itself is given a certificate is `cluster`'s business.

use super::{scratch_dir, ssl_request};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A certificate and its private key, as PEM text and as files.
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl CertKey {
    pub fn cert_path(&self) -> &str {
        self.cert_file.to_str().expect("UTF-8 scratch path")
    }

    pub fn key_path(&self) -> &str {
        self.key_file.to_str().expect("UTF-8 scratch path")
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// Every certificate the TLS tests use; `ca.key_file` is the CA's key.
pub struct TestCerts {
    pub ca: CertKey,
    /// From the CA, for 127.0.0.1 and localhost (CN localhost).
    pub server: CertKey,
    /// From the CA, for wrong.example only.
    pub wrong_name: CertKey,
    /// For 127.0.0.1 and localhost, signed by itself.
    pub self_signed: CertKey,
    /// Client certificates from the CA, CN `app` and CN `mallory`.
    pub app: CertKey,
    pub mallory: CertKey,
    /// A client certificate with CN `app` that no CA vouches for.
    pub rogue_app: CertKey,
}

/// The test run's certificates, made on first use.
pub fn test_certs() -> &'static TestCerts {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    CERTS.get_or_init(|| make_certs(&scratch_dir("certs")))
}

fn make_certs(dir: &Path) -> TestCerts {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name = common_name("pgdyno test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_key_pem = ca_key.serialize_pem();
    let ca_key_pkcs8 = ca_key.serialize_der();
    let ca = CertifiedIssuer::self_signed(params, ca_key).expect("CA certificate");
    let ca_files = write_pair(dir, "ca", &ca.pem(), &ca_key_pem);
    let ca_cert = CertKey {
        cert_pem: ca.pem(),
        key_pem: ca_key_pem,
        cert_der: ca.der().clone(),
        key_pkcs8: ca_key_pkcs8,
        cert_file: ca_files.0,
        key_file: ca_files.1,
    };
    let server_auth = ExtendedKeyUsagePurpose::ServerAuth;
    let client_auth = ExtendedKeyUsagePurpose::ClientAuth;
    let local = ["127.0.0.1", "localhost"];
    TestCerts {
        server: leaf(
            dir,
            "server",
            &local,
            "localhost",
            server_auth.clone(),
            Some(&ca),
        ),
        wrong_name: leaf(
            dir,
            "wrong-name",
            &["wrong.example"],
            "wrong.example",
            server_auth.clone(),
            Some(&ca),
        ),
        self_signed: leaf(dir, "self-signed", &local, "localhost", server_auth, None),
        app: leaf(dir, "app", &[], "app", client_auth.clone(), Some(&ca)),
        mallory: leaf(
            dir,
            "mallory",
            &[],
            "mallory",
            client_auth.clone(),
            Some(&ca),
        ),
        rogue_app: leaf(dir, "rogue-app", &[], "app", client_auth, None),
        ca: ca_cert,
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// An end-entity certificate (ECDSA P-256, SHA-256) for `names`, from
/// `issuer` or, without one, signed by itself.
fn leaf(
    dir: &Path,
    stem: &str,
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: Option<&Issuer<'_, KeyPair>>,
) -> CertKey {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate params");
    params.distinguished_name = common_name(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("generate key");
    let cert = match issuer {
        Some(issuer) => {
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&key, issuer)
        }
        None => params.self_signed(&key),
    }
    .expect("sign certificate");
    let (cert_file, key_file) = write_pair(dir, stem, &cert.pem(), &key.serialize_pem());
    CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_pkcs8: key.serialize_der(),
        cert_file,
        key_file,
    }
}

/// `<stem>.crt` and `<stem>.key`, the key readable by its owner only (as
/// libpq wants of a client key).
fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, cert_pem).expect("write certificate");
    std::fs::write(&key, key_pem).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    (cert, key)
}

static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A rustls client configuration that trusts the test CA and checks the
/// server's certificate against 127.0.0.1 (libpq's verify-full).
#[derive(Clone)]
pub struct ClientTls {
    versions: &'static [&'static SupportedProtocolVersion],
    identity: Option<&'static CertKey>,
    alpn: bool,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls::new()
    }
}

impl ClientTls {
    /// TLS 1.2 and 1.3, no client certificate, no ALPN.
    pub fn new() -> ClientTls {
        ClientTls {
            versions: rustls::ALL_VERSIONS,
            identity: None,
            alpn: false,
        }
    }

    pub fn tls12_only(mut self) -> ClientTls {
        self.versions = TLS12_ONLY;
        self
    }

    pub fn tls13_only(mut self) -> ClientTls {
        self.versions = TLS13_ONLY;
        self
    }

    /// Presents `cert` when the server asks for a client certificate.
    pub fn identity(mut self, cert: &'static CertKey) -> ClientTls {
        self.identity = Some(cert);
        self
    }

    /// Offers ALPN "postgresql", as direct TLS requires.
    pub fn alpn_postgresql(mut self) -> ClientTls {
        self.alpn = true;
        self
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(test_certs().ca.cert_der.clone())
            .expect("trust the test CA");
        let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(self.versions)
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match self.identity {
            Some(cert) => builder
                .with_client_auth_cert(vec![cert.cert_der.clone()], cert.private_key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        if self.alpn {
            config.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        Arc::new(config)
    }

    pub fn connector(&self) -> RustlsConnect {
        RustlsConnect(self.config())
    }
}

/// tokio-postgres's TLS hook, on tokio-rustls.
#[derive(Clone)]
pub struct RustlsConnect(Arc<ClientConfig>);

/// One handshake to come, toward the host tokio-postgres names.
pub struct RustlsHandshake {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// A TLS connection as tokio-postgres sees it.
pub struct RustlsStream<S>(TlsStream<S>);

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsHandshake;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsHandshake, Self::Error> {
        Ok(RustlsHandshake {
            config: self.0.clone(),
            name: ServerName::try_from(host)?.to_owned(),
        })
    }
}

impl<S> TlsConnect<S> for RustlsHandshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match tls_server_end_point(self.0.get_ref().1) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the hash of the server's end-entity
/// certificate, with the hash of its signature algorithm, SHA-256 for MD5
/// and SHA-1. Every server certificate here is signed with SHA-256
/// (ECDSA P-256, or RSA for a certificate made elsewhere), so SHA-256.
pub fn tls_server_end_point(conn: &ClientConnection) -> Option<Vec<u8>> {
    let cert = conn.peer_certificates()?.first()?;
    Some(Sha256::digest(cert.as_ref()).to_vec())
}

/// Connects with TLS through `tls` (10 s at most), driving the connection
/// in a spawned task.
pub async fn connect_tls(
    config: &Config,
    tls: RustlsConnect,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        match tokio::time::timeout(Duration::from_secs(10), config.connect(tls)).await {
            Ok(result) => result?,
            Err(_) => panic!("connecting with TLS took more than 10 s"),
        };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// SSLRequest to 127.0.0.1:`port`, then, if the answer is 'S', a TLS
/// handshake (10 s at most) with `config`.
pub async fn ssl_request_handshake(
    port: u16,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(&ssl_request()).await?;
    let mut answer = [0u8];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(io::Error::other(format!(
            "SSLRequest answered {:?}",
            answer[0] as char
        )));
    }
    handshake(tcp, config).await
}

/// A TLS handshake as the first bytes on a new connection: PostgreSQL 17's
/// direct TLS (which wants ALPN "postgresql": see `ClientTls::alpn_postgresql`).
pub async fn direct_handshake(
    port: u16,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    handshake(tcp, config).await
}

async fn handshake(tcp: TcpStream, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("127.0.0.1").expect("an IP address");
    let connect = TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(result) => result,
        Err(_) => panic!("TLS handshake took more than 10 s"),
    }
}
