//! Settings from the TOML file, `PGDYNO_*` env vars and `--flags` (flags win
//! over env, env over the file) turned into one validated [`Config`].
//!
//! No globals: the `Config` is built once, wrapped in an `Arc` and passed
//! down. A bad value stops startup with an error naming the key and where
//! the value came from.

mod settings;
mod tables;
pub mod tls;
mod url;
mod value;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use settings::{canonical, Setting, SETTINGS};
use tables::{databases, peer_entry, user_entry};
pub use tables::{Peer, FALLBACK_DATABASE, MAX_PEER_ID};
pub use url::{parse as parse_upstream, Host, LoadBalance, SessionAttrs, Upstream};
pub use value::Parse;
use value::{Origin, Raw};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Trust,
    /// A TLS client certificate whose CN is the user (verify-full), no
    /// password.
    Cert,
    Plain,
    Md5,
    ScramSha256,
    /// Per connection, from `auth_hba_file` (see [`crate::auth::hba`]).
    Hba,
}

impl PoolMode {
    /// As the settings write it.
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

impl AuthType {
    /// As the settings write it.
    pub fn name(self) -> &'static str {
        match self {
            AuthType::Trust => "trust",
            AuthType::Cert => "cert",
            AuthType::Plain => "plain",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Hba => "hba",
        }
    }
}

impl LogFormat {
    /// As the settings write it.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Timeouts while a client is served, `None` for never: `client_idle_timeout`
/// (between transactions; for session mode, where the client holds a
/// backend then), `idle_transaction_timeout`, `query_timeout`,
/// `transaction_timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub client_idle: Option<Duration>,
    pub idle_transaction: Option<Duration>,
    pub query: Option<Duration>,
    pub transaction: Option<Duration>,
}

impl Timeouts {
    /// Whether the relay has one to keep while a client holds a backend
    /// (in transaction mode, `client_idle_timeout` runs unbound only).
    pub fn in_relay(&self, transaction_mode: bool) -> bool {
        self.idle_transaction.is_some()
            || self.query.is_some()
            || self.transaction.is_some()
            || (self.client_idle.is_some() && !transaction_mode)
    }
}

/// Socket options for client and server TCP connections (PgBouncer's
/// `tcp_*`). `None`: the system's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub keepalive: bool,
    pub keepidle: Option<Duration>,
    pub keepintvl: Option<Duration>,
    pub keepcnt: Option<u32>,
    pub user_timeout: Option<Duration>,
    /// SO_SNDBUF and SO_RCVBUF, in bytes.
    pub socket_buffer: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `listen_addr` and `listen_port` as given (already in `listen`).
    pub listen_parts: (String, String),
    pub listen_backlog: usize,
    pub worker_threads: usize,
    pub unix_socket_dir: Option<PathBuf>,
    pub unix_socket_mode: u32,
    /// The Unix socket's group: a name in /etc/group or a number.
    pub unix_socket_group: Option<String>,
    pub so_reuseport: bool,
    pub tcp: TcpOptions,
    pub metrics_listen: Option<SocketAddr>,
    pub pool_mode: PoolMode,
    pub default_pool_size: usize,
    /// `default_pool_size = auto`: sized from the server (see `autosize`).
    pub auto_pool_size: bool,
    pub fleet_size: usize,
    pub pool_size_headroom: usize,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    pub max_client_conn: usize,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    pub max_db_client_connections: usize,
    pub max_user_client_connections: usize,
    /// `None` waits forever.
    pub query_wait_timeout: Option<Duration>,
    /// How long a cancel request may take to reach its backend or peer.
    pub cancel_wait_timeout: Option<Duration>,
    pub client_login_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_idle_timeout: Option<Duration>,
    pub autodb_idle_timeout: Option<Duration>,
    /// The timeouts the relay keeps while a client holds a backend.
    pub timeouts: Timeouts,
    pub server_check_delay: Duration,
    pub server_check_query: String,
    pub server_login_retry: Duration,
    pub server_lifetime: Option<Duration>,
    pub server_reset_query: String,
    pub connect_query: String,
    pub server_reset_query_always: bool,
    pub server_round_robin: bool,
    pub server_fast_close: bool,
    /// Simple Query messages end the client's connection.
    pub disable_pqexec: bool,
    pub application_name_add_host: bool,
    pub shutdown_timeout: Duration,
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    pub auth_hba_file: Option<PathBuf>,
    /// User name maps for `auth_hba_file`'s `map=` (pg_ident.conf format).
    pub auth_ident_file: Option<PathBuf>,
    pub auth_user: String,
    pub auth_query: String,
    pub auth_dbname: String,
    pub auth_failure_limit: usize,
    pub auth_failure_block_time: Duration,
    pub auth_failure_delay: Duration,
    pub ignore_startup_parameters: Vec<String>,
    pub max_packet_size: usize,
    pub max_prepared_statements: usize,
    /// PBKDF2 iterations of the SCRAM secrets pgdyno makes from passwords.
    pub scram_iterations: u32,
    pub track_extra_parameters: Vec<String>,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    pub stats_period: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Log lines go to this file too (appended; opened again on reload).
    pub logfile: Option<PathBuf>,
    /// The process id is written here while pgdyno runs.
    pub pidfile: Option<PathBuf>,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,
    pub log_stats: bool,
    pub client_tls: tls::ClientTls,
    pub server_tls: tls::ServerTls,
    pub databases: Vec<DatabaseConfig>,
    /// The file's `[users]`: settings of one user's pools.
    pub users: BTreeMap<String, UserConfig>,
    /// This process's id among pgdynos sharing a port (`so_reuseport`); 0:
    /// none. It is written into each client's cancel key.
    pub peer_id: u16,
    /// The file's `[peers]`: where each peer takes cancel requests for
    /// the keys it issued.
    pub peers: BTreeMap<u16, Peer>,
    /// Things worth a log line once logging is up.
    pub warnings: Vec<String>,
}

/// One database clients can pick by name, and its pool settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub name: String,
    pub upstream: Upstream,
    pub pool_size: usize,
    /// `pool_size` is to be derived from the server (see `autosize`).
    pub auto_pool_size: bool,
    pub min_pool_size: usize,
    pub reserve_pool_size: usize,
    pub pool_mode: PoolMode,
    pub max_db_connections: usize,
    pub max_db_client_connections: usize,
    pub connect_query: String,
}

/// One user's settings from `[users]`, over its databases' (as PgBouncer's
/// `[users]` section). `None`: the database's or the default.
#[derive(Debug, Clone, Default)]
pub struct UserConfig {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub reserve_pool_size: Option<usize>,
    pub max_user_connections: Option<usize>,
    pub max_user_client_connections: Option<usize>,
}

/// Where settings come from, gathered by `main`.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    /// `(name, value)` from `--name value`, dashes already turned into underscores.
    pub flags: Vec<(String, String)>,
    /// The process environment (all of it; only `PGDYNO_*` and `DATABASE_URL` are read).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut raw = Raw::default();
        let mut warnings = Vec::new();
        let [mut file_databases, mut file_users, mut file_peers] = [None, None, None];
        let file = sources
            .file
            .clone()
            .or_else(|| env_var(&sources.env, "PGDYNO_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            [file_databases, file_users, file_peers] = raw.add_file(path)?;
        }
        for (name, value) in &sources.env {
            if let Some(key) = name.strip_prefix("PGDYNO_") {
                if key == "CONFIG" {
                    continue;
                }
                let key = key.to_ascii_lowercase();
                // Other tools use the prefix too (PGDYNO_BIN in scripts):
                // an unknown name is reported, not fatal.
                if settings::find(settings::canonical(&key)).is_none() {
                    warnings.push(format!("ignoring env {name}: not a pgdyno setting"));
                    continue;
                }
                raw.add_string(&key, value, Origin::Env(name.clone()))?;
            }
        }
        for (name, value) in &sources.flags {
            raw.add_string(name, value, Origin::Flag(name.replace('_', "-")))?;
        }
        let mut config = Config::from_raw(&raw)?;
        config.warnings = warnings;
        for (name, value) in file_users.unwrap_or_default() {
            let user = user_entry(&name, &value)?;
            config.users.insert(name, user);
        }
        for (id, value) in file_peers.unwrap_or_default() {
            let (id, peer) = peer_entry(&id, &value, config.default_pool_size)?;
            config.peers.insert(id, peer);
        }
        config.databases = databases(
            &raw,
            &config,
            file_databases,
            env_var(&sources.env, "DATABASE_URL"),
        )?;
        Ok(config)
    }

    fn from_raw(raw: &Raw) -> Result<Config, ConfigError> {
        let listen_parts = (
            raw.string("listen_addr")?.trim().to_owned(),
            raw.string("listen_port")?.trim().to_owned(),
        );
        Ok(Config {
            listen: listen_address(raw.parse("listen")?, &listen_parts)?,
            listen_parts,
            listen_backlog: raw.parse("listen_backlog")?,
            worker_threads: raw.parse("worker_threads")?,
            unix_socket_dir: raw.path("unix_socket_dir")?,
            unix_socket_mode: raw.octal("unix_socket_mode")?,
            unix_socket_group: Some(raw.string("unix_socket_group")?.trim().to_owned())
                .filter(|g| !g.is_empty()),
            so_reuseport: raw.parse("so_reuseport")?,
            tcp: TcpOptions {
                keepalive: raw.parse("tcp_keepalive")?,
                keepidle: nonzero(raw.duration("tcp_keepidle")?),
                keepintvl: nonzero(raw.duration("tcp_keepintvl")?),
                keepcnt: Some(raw.parse("tcp_keepcnt")?).filter(|&n| n > 0),
                user_timeout: nonzero(raw.millis("tcp_user_timeout")?),
                socket_buffer: Some(raw.parse("tcp_socket_buffer")?).filter(|&n| n > 0),
            },
            metrics_listen: raw.optional("metrics_listen")?,
            pool_mode: raw.parse("pool_mode")?,
            default_pool_size: if raw.string("default_pool_size")?.trim() == "auto" {
                1
            } else {
                raw.parse("default_pool_size")?
            },
            auto_pool_size: raw.string("default_pool_size")?.trim() == "auto",
            fleet_size: raw.parse("fleet_size")?,
            pool_size_headroom: raw.parse("pool_size_headroom")?,
            min_pool_size: raw.parse("min_pool_size")?,
            reserve_pool_size: raw.parse("reserve_pool_size")?,
            reserve_pool_timeout: raw.duration("reserve_pool_timeout")?,
            max_client_conn: raw.parse("max_client_conn")?,
            max_db_connections: raw.parse("max_db_connections")?,
            max_user_connections: raw.parse("max_user_connections")?,
            max_db_client_connections: raw.parse("max_db_client_connections")?,
            max_user_client_connections: raw.parse("max_user_client_connections")?,
            query_wait_timeout: nonzero(raw.duration("query_wait_timeout")?),
            cancel_wait_timeout: nonzero(raw.duration("cancel_wait_timeout")?),
            client_login_timeout: raw.duration("client_login_timeout")?,
            server_connect_timeout: raw.duration("server_connect_timeout")?,
            server_idle_timeout: nonzero(raw.duration("server_idle_timeout")?),
            autodb_idle_timeout: nonzero(raw.duration("autodb_idle_timeout")?),
            timeouts: Timeouts {
                client_idle: nonzero(raw.duration("client_idle_timeout")?),
                idle_transaction: nonzero(raw.duration("idle_transaction_timeout")?),
                query: nonzero(raw.duration("query_timeout")?),
                transaction: nonzero(raw.duration("transaction_timeout")?),
            },
            server_check_delay: raw.duration("server_check_delay")?,
            server_check_query: raw.string("server_check_query")?,
            server_login_retry: raw.duration("server_login_retry")?,
            server_lifetime: nonzero(raw.duration("server_lifetime")?),
            server_reset_query: raw.string("server_reset_query")?,
            connect_query: raw.string("connect_query")?,
            server_reset_query_always: raw.parse("server_reset_query_always")?,
            server_round_robin: raw.parse("server_round_robin")?,
            server_fast_close: raw.parse("server_fast_close")?,
            disable_pqexec: raw.parse("disable_pqexec")?,
            application_name_add_host: raw.parse("application_name_add_host")?,
            shutdown_timeout: raw.duration("shutdown_timeout")?,
            auth_type: raw.parse("auth_type")?,
            auth_file: raw.path("auth_file")?,
            auth_hba_file: raw.path("auth_hba_file")?,
            auth_ident_file: raw.path("auth_ident_file")?,
            auth_user: raw.string("auth_user")?,
            auth_query: raw.string("auth_query")?,
            auth_dbname: raw.string("auth_dbname")?,
            auth_failure_limit: raw.parse("auth_failure_limit")?,
            auth_failure_block_time: raw.duration("auth_failure_block_time")?,
            auth_failure_delay: raw.duration("auth_failure_delay")?,
            ignore_startup_parameters: raw.list("ignore_startup_parameters")?,
            max_packet_size: raw.parse("max_packet_size")?,
            max_prepared_statements: raw.parse("max_prepared_statements")?,
            scram_iterations: raw.parse("scram_iterations")?,
            track_extra_parameters: raw.list("track_extra_parameters")?,
            admin_users: raw.list("admin_users")?,
            stats_users: raw.list("stats_users")?,
            stats_period: raw.duration("stats_period")?,
            log_format: raw.parse("log_format")?,
            log_level: raw.string("log_level")?,
            logfile: raw.path("logfile")?,
            pidfile: raw.path("pidfile")?,
            log_connections: raw.parse("log_connections")?,
            log_disconnections: raw.parse("log_disconnections")?,
            log_pooler_errors: raw.parse("log_pooler_errors")?,
            log_stats: raw.parse("log_stats")?,
            client_tls: tls::client(raw)?,
            server_tls: tls::server(raw)?,
            databases: Vec::new(),
            users: BTreeMap::new(),
            // Out of range is refused by `validate`.
            peer_id: u16::try_from(raw.parse::<usize>("peer_id")?).unwrap_or(u16::MAX),
            peers: BTreeMap::new(),
            warnings: Vec::new(),
        })
        .and_then(Config::validate)
    }

    fn validate(self) -> Result<Config, ConfigError> {
        if self.peer_id > MAX_PEER_ID {
            return Err(ConfigError(format!(
                "invalid value for peer_id: at most {MAX_PEER_ID}"
            )));
        }
        if self.auth_type == AuthType::Cert
            && self.client_tls.sslmode != crate::config::tls::SslMode::VerifyFull
        {
            return Err(ConfigError(
                "invalid value for auth_type: cert needs client_tls_sslmode = verify-full \
                 (the certificate's CN is the user name)"
                    .into(),
            ));
        }
        if self.auth_type == AuthType::Hba && self.auth_hba_file.is_none() {
            return Err(ConfigError(
                "invalid value for auth_type: hba needs auth_hba_file".into(),
            ));
        }
        if self.fleet_size == 0 {
            return Err(ConfigError(
                "invalid value for fleet_size: must be at least 1".into(),
            ));
        }
        if self.default_pool_size == 0 {
            return Err(ConfigError(
                "invalid value for default_pool_size: must be at least 1".into(),
            ));
        }
        let most = crate::auth::scram::MAX_ITERATIONS;
        if !(1..=most).contains(&self.scram_iterations) {
            return Err(ConfigError(format!(
                "invalid value for scram_iterations: must be from 1 to {most}"
            )));
        }
        if self.max_packet_size < 1024 {
            return Err(ConfigError(
                "invalid value for max_packet_size: must be at least 1024".into(),
            ));
        }
        Ok(self)
    }

    /// The database a client asks for by `name`: its own entry, else one
    /// made from the `*` entry (PgBouncer's fallback database; the server
    /// database is then the one asked for, unless `*` names one).
    pub fn database(&self, name: &str) -> Option<Cow<'_, DatabaseConfig>> {
        if let Some(db) = self.databases.iter().find(|d| d.name == name) {
            return Some(Cow::Borrowed(db));
        }
        let fallback = self
            .databases
            .iter()
            .find(|d| d.name == FALLBACK_DATABASE)?;
        Some(Cow::Owned(DatabaseConfig {
            name: name.to_owned(),
            ..fallback.clone()
        }))
    }

    /// Whether `name` is served by the `*` entry rather than its own.
    pub fn is_auto_database(&self, name: &str) -> bool {
        matches!(self.database(name), Some(Cow::Owned(_)))
    }

    /// `max_user_client_connections` for `user`: its own, else the global one.
    pub fn max_user_client_connections(&self, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.max_user_client_connections)
            .unwrap_or(self.max_user_client_connections)
    }

    /// `max_user_connections` for `user`: its own, else the global one.
    pub fn max_user_connections(&self, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.max_user_connections)
            .unwrap_or(self.max_user_connections)
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn env_var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `listen`, its address or port replaced by PgBouncer's `listen_addr`
/// (an address, `*` for every IPv4 one, or `localhost`) and `listen_port`
/// where they are set (`parts`).
fn listen_address(
    mut listen: SocketAddr,
    (addr, port): &(String, String),
) -> Result<SocketAddr, ConfigError> {
    let ip = match addr.as_str() {
        "" => None,
        "*" => Some(std::net::Ipv4Addr::UNSPECIFIED.into()),
        "localhost" => Some(std::net::Ipv4Addr::LOCALHOST.into()),
        other => Some(other.parse().map_err(|_| {
            ConfigError(format!(
                "invalid value for listen_addr: {other:?} is not one IP address, * or localhost \
                 (pgdyno listens on one address)"
            ))
        })?),
    };
    if let Some(ip) = ip {
        listen.set_ip(ip);
    }
    if !port.is_empty() {
        let port = port.parse().map_err(|_| {
            ConfigError(format!(
                "invalid value for listen_port: {port:?} is not a port number"
            ))
        })?;
        listen.set_port(port);
    }
    Ok(listen)
}

/// Reads a config file's text, for reload and startup alike.
pub fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|e| {
        // toml's own text quotes the offending line, which may hold a
        // password (an upstream URL): say where, and what, only.
        let at = e
            .span()
            .map(|s| {
                let before = text.get(..s.start).unwrap_or(&text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigError(format!(
            "invalid config file {}{at}: {}",
            path.display(),
            e.message()
        ))
    })
}

#[cfg(test)]
mod tests;
