//! pgdyno's error type: what went wrong, who caused it, and the SQLSTATE a
//! client is told.

use std::io;

/// Who failed: decides logging level and whether a backend may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The application connection (bad input, went away).
    Client,
    /// The PostgreSQL connection (refused, died, rejected our login).
    Backend,
    /// pgdyno's own limits and state (pool timeouts, shutdown).
    Pooler,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client connection: {0}")]
    ClientIo(#[source] io::Error),
    #[error("client closed the connection")]
    ClientGone,
    #[error("{0}")]
    ClientProtocol(String),
    /// The client's TLS handshake failed; the socket carries nothing more.
    #[error("TLS handshake failed: {0}")]
    ClientTls(String),
    #[error("SSL required: this server accepts only TLS connections (client_tls_sslmode)")]
    TlsRequired,
    #[error("password authentication failed for user \"{user}\"")]
    AuthFailed { user: String },
    #[error("{0}")]
    AuthUnsupported(String),
    #[error("no such database: {0}")]
    NoSuchDatabase(String),
    #[error("unsupported startup parameter: {0}")]
    UnsupportedStartupParameter(String),
    #[error("no more connections allowed (max_client_conn)")]
    TooManyClients,
    /// max_db_client_connections or max_user_client_connections.
    #[error("no more connections allowed ({0})")]
    ClientLimit(&'static str),
    /// DISABLE on the console.
    #[error("database does not allow connections: {0}")]
    DatabaseDisabled(String),
    #[error("query_wait_timeout")]
    QueryWaitTimeout,
    #[error("client_login_timeout")]
    LoginTimeout,
    #[error("client_idle_timeout")]
    ClientIdleTimeout,
    #[error("idle transaction timeout")]
    IdleTransactionTimeout,
    #[error("query_timeout")]
    QueryTimeout,
    #[error("transaction timeout")]
    TransactionTimeout,
    #[error("server login has been failing, cached error: {0} (server_login_retry)")]
    LoginRetry(String),
    #[error("pooler is shutting down")]
    ShuttingDown,
    #[error("terminating connection due to administrator command")]
    Killed,
    /// server_fast_close: the session's backend was marked for closing.
    #[error("server_fast_close: the database's connection settings changed; connect again")]
    ServerFastClose,
    #[error("backend connection: {0}")]
    BackendIo(#[source] io::Error),
    #[error("could not connect to server: {0}")]
    BackendConnect(String),
    /// A server that is not what `target_session_attrs` asks for.
    #[error("could not connect to a suitable server: {0}")]
    BackendUnsuitable(String),
    #[error("server closed the connection unexpectedly")]
    BackendGone,
    #[error("{0}")]
    BackendProtocol(String),
    /// PostgreSQL refused our login; its own SQLSTATE and message.
    #[error("server login failed: {message}")]
    BackendRejected { code: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether a backend login that failed so might succeed on another
    /// server of the same database: it could not be reached, or it cannot
    /// take a connection now (shutting down, starting up, full). A refused
    /// login or an unknown database would be refused there too.
    pub fn another_host_may_do(&self) -> bool {
        match self {
            Error::BackendIo(_)
            | Error::BackendConnect(_)
            | Error::BackendUnsuitable(_)
            | Error::BackendGone => true,
            Error::BackendRejected { code, .. } => code.starts_with("57P") || code == "53300",
            _ => false,
        }
    }

    /// The SQLSTATE a client receives for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            Error::ClientIo(_) | Error::ClientGone | Error::ClientTls(_) => "08006",
            Error::ClientProtocol(_) => "08P01",
            Error::TlsRequired => "28000",
            Error::AuthFailed { .. } => "28P01",
            Error::AuthUnsupported(_) => "28000",
            Error::NoSuchDatabase(_) => "3D000",
            Error::UnsupportedStartupParameter(_) => "08P01",
            Error::TooManyClients | Error::ClientLimit(_) => "53300",
            Error::DatabaseDisabled(_) => "08P01",
            Error::QueryWaitTimeout
            | Error::LoginTimeout
            | Error::ClientIdleTimeout
            | Error::IdleTransactionTimeout
            | Error::QueryTimeout
            | Error::TransactionTimeout
            | Error::LoginRetry(_)
            | Error::ServerFastClose => "08P01",
            Error::ShuttingDown | Error::Killed => "57P01",
            Error::BackendIo(_)
            | Error::BackendGone
            | Error::BackendConnect(_)
            | Error::BackendUnsuitable(_) => "08006",
            Error::BackendProtocol(_) => "08P01",
            Error::BackendRejected { code, .. } => code,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Error::ClientIo(_)
            | Error::ClientGone
            | Error::ClientProtocol(_)
            | Error::ClientTls(_)
            | Error::TlsRequired
            | Error::AuthFailed { .. }
            | Error::AuthUnsupported(_)
            | Error::NoSuchDatabase(_)
            | Error::UnsupportedStartupParameter(_)
            | Error::LoginTimeout => Side::Client,
            Error::TooManyClients
            | Error::ClientLimit(_)
            | Error::DatabaseDisabled(_)
            | Error::ClientIdleTimeout
            | Error::IdleTransactionTimeout
            | Error::QueryTimeout
            | Error::TransactionTimeout
            | Error::LoginRetry(_)
            | Error::QueryWaitTimeout
            | Error::ShuttingDown
            | Error::Killed
            | Error::ServerFastClose => Side::Pooler,
            Error::BackendIo(_)
            | Error::BackendConnect(_)
            | Error::BackendUnsuitable(_)
            | Error::BackendGone
            | Error::BackendProtocol(_)
            | Error::BackendRejected { .. } => Side::Backend,
        }
    }

    /// Whether the client connection can still carry an ErrorResponse.
    pub fn client_reachable(&self) -> bool {
        !matches!(
            self,
            Error::ClientIo(_) | Error::ClientGone | Error::ClientTls(_)
        )
    }

    /// The message text a client sees.
    pub fn client_message(&self) -> String {
        match self {
            Error::BackendRejected { message, .. } => message.clone(),
            Error::BackendIo(_) | Error::BackendGone => {
                "server conn crashed? server closed the connection unexpectedly".into()
            }
            other => other.to_string(),
        }
    }
}
