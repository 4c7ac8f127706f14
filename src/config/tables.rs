//! The config file's tables: `[databases]` (with `upstream` or
//! `DATABASE_URL` as a database of its own), `[users]` and `[peers]`, each
//! entry checked as it is read.

use super::url::{self, Upstream};
use super::value::{Origin, Raw};
use super::{settings, Config, ConfigError, DatabaseConfig, UserConfig};

/// The databases: the `[databases]` table of the file, plus `upstream`, or
/// else `DATABASE_URL`.
pub(super) fn databases(
    raw: &Raw,
    config: &Config,
    file_databases: Option<toml::Table>,
    database_url: Option<&str>,
) -> Result<Vec<DatabaseConfig>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in file_databases.unwrap_or_default() {
        out.push(database_entry(&name, &value, config)?);
    }
    let upstream = raw.string("upstream")?;
    let (key, url) = if !upstream.is_empty() {
        ("upstream", Some(upstream.as_str()))
    } else {
        ("DATABASE_URL", database_url.filter(|_| out.is_empty()))
    };
    if let Some(url) = url {
        let upstream =
            url::parse(url).map_err(|e| ConfigError(format!("invalid value for {key}: {e}")))?;
        let name = upstream
            .dbname
            .clone()
            .or_else(|| upstream.user.clone())
            .ok_or_else(|| ConfigError(format!("invalid value for {key}: no database name")))?;
        if out.iter().any(|d: &DatabaseConfig| d.name == name) {
            return Err(ConfigError(format!(
                "invalid value for {key}: database \"{name}\" is also in [databases]"
            )));
        }
        out.push(DatabaseConfig::with_defaults(name, upstream, config));
    }
    if out.is_empty() {
        return Err(ConfigError(
            "missing setting upstream: give --upstream postgres://user:password@host:port/dbname, \
             a [databases] table in the config file, or DATABASE_URL"
                .into(),
        ));
    }
    Ok(out)
}

impl DatabaseConfig {
    fn with_defaults(name: String, upstream: Upstream, config: &Config) -> Self {
        DatabaseConfig {
            name,
            upstream,
            pool_size: config.default_pool_size,
            auto_pool_size: config.auto_pool_size,
            min_pool_size: config.min_pool_size,
            reserve_pool_size: config.reserve_pool_size,
            pool_mode: config.pool_mode,
            max_db_connections: config.max_db_connections,
            max_db_client_connections: config.max_db_client_connections,
            connect_query: config.connect_query.clone(),
        }
    }
}

fn database_entry(
    name: &str,
    value: &toml::Value,
    config: &Config,
) -> Result<DatabaseConfig, ConfigError> {
    let err = |what: String| ConfigError(format!("invalid value for databases.{name}: {what}"));
    let (url, table) = match value {
        toml::Value::String(url) => (url.clone(), toml::Table::new()),
        toml::Value::Table(t) => {
            let mut t = t.clone();
            match t.remove("url") {
                Some(toml::Value::String(url)) => (url, t),
                _ => return Err(err("a table needs url = \"postgres://...\"".into())),
            }
        }
        _ => return Err(err("expected a URL string or a table with url".into())),
    };
    let upstream = url::parse(&url).map_err(err)?;
    let mut db = DatabaseConfig::with_defaults(name.to_owned(), upstream, config);
    // `*` leaves it open: each client's database name is the server's.
    if db.upstream.dbname.is_none() && name != FALLBACK_DATABASE {
        db.upstream.dbname = Some(name.to_owned());
    }
    let mut raw = Raw::default();
    for (key, value) in table {
        let key = settings::canonical(&key).to_owned();
        raw.add_value(&key, value, Origin::File(format!("databases.{name}")))?;
    }
    for key in raw.keys() {
        match key.as_str() {
            "default_pool_size" => {
                db.pool_size = raw.parse(&key)?;
                db.auto_pool_size = false;
            }
            "min_pool_size" => db.min_pool_size = raw.parse(&key)?,
            "reserve_pool_size" => db.reserve_pool_size = raw.parse(&key)?,
            "pool_mode" => db.pool_mode = raw.parse(&key)?,
            "max_db_connections" => db.max_db_connections = raw.parse(&key)?,
            "connect_query" => db.connect_query = raw.string(&key)?,
            "max_db_client_connections" => db.max_db_client_connections = raw.parse(&key)?,
            other => {
                return Err(err(format!(
                    "unknown key \"{other}\" (use url, pool_size, min_pool_size, \
                     reserve_pool_size, pool_mode, max_db_connections, \
                     max_db_client_connections, connect_query)"
                )))
            }
        }
    }
    if db.pool_size == 0 {
        return Err(err("pool_size must be at least 1".into()));
    }
    Ok(db)
}

/// `[databases]`' `*`: serves any database name without an entry of its
/// own.
pub const FALLBACK_DATABASE: &str = "*";

/// The largest peer id (PgBouncer's): ids are 14 bits of a cancel key.
pub const MAX_PEER_ID: u16 = 16383;

/// A `[peers]` entry: where a peer takes cancels, and how many it is sent
/// at once.
#[derive(Debug, Clone)]
pub struct Peer {
    pub upstream: Upstream,
    /// Connections open to it at once, each carrying one cancel
    /// (PgBouncer's peer `pool_size`; `default_pool_size` unless given).
    pub pool_size: usize,
}

/// A `[peers]` entry: `id = "host=... port=... pool_size=..."` (or a URL),
/// as PgBouncer's, or a table `{ url = "...", pool_size = 4 }`.
pub(super) fn peer_entry(
    id: &str,
    value: &toml::Value,
    default_pool_size: usize,
) -> Result<(u16, Peer), ConfigError> {
    let err = |what: String| ConfigError(format!("invalid value for peers.{id}: {what}"));
    let number = id
        .parse::<u16>()
        .ok()
        .filter(|n| (1..=MAX_PEER_ID).contains(n))
        .ok_or_else(|| err(format!("a peer id is a number from 1 to {MAX_PEER_ID}")))?;
    let (text, pool_size) = match value {
        toml::Value::String(text) => (text, None),
        toml::Value::Table(t) => {
            if let Some(other) = t
                .keys()
                .find(|k| !["url", "pool_size"].contains(&k.as_str()))
            {
                return Err(err(format!("unknown key \"{other}\" (use url, pool_size)")));
            }
            let Some(toml::Value::String(text)) = t.get("url") else {
                return Err(err("a table needs url = \"host=... port=...\"".into()));
            };
            let size = match t.get("pool_size") {
                None => None,
                Some(toml::Value::Integer(n)) => Some(n.to_string()),
                Some(_) => return Err(err("pool_size is a number".into())),
            };
            (text, size)
        }
        _ => {
            return Err(err(
                "expected a string such as \"host=127.0.0.1 port=6433\"".into(),
            ))
        }
    };
    let mut upstream = url::parse(text).map_err(err)?;
    if !upstream.more_hosts.is_empty() {
        return Err(err("a peer is one pgdyno: give one host".into()));
    }
    // In the connection string, as PgBouncer writes it; the table's wins.
    let in_string = upstream
        .params
        .iter()
        .rposition(|(k, _)| k == "pool_size")
        .map(|i| upstream.params.remove(i).1);
    upstream.params.retain(|(k, _)| k != "pool_size");
    let pool_size = match pool_size.or(in_string) {
        None => default_pool_size,
        Some(n) => n.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
            err(format!(
                "pool_size must be a number of at least 1, not \"{n}\""
            ))
        })?,
    };
    Ok((
        number,
        Peer {
            upstream,
            pool_size,
        },
    ))
}

/// A `[users]` entry: a table of pool_mode, pool_size, reserve_pool_size
/// and max_user_connections.
pub(super) fn user_entry(name: &str, value: &toml::Value) -> Result<UserConfig, ConfigError> {
    let err = |what: String| ConfigError(format!("invalid value for users.{name}: {what}"));
    let toml::Value::Table(table) = value else {
        return Err(err(
            "expected a table, e.g. { pool_mode = \"session\" }".into()
        ));
    };
    let mut raw = Raw::default();
    for (key, value) in table {
        let key = settings::canonical(key).to_owned();
        raw.add_value(&key, value.clone(), Origin::File(format!("users.{name}")))?;
    }
    let mut user = UserConfig::default();
    for key in raw.keys() {
        match key.as_str() {
            "pool_mode" => user.pool_mode = Some(raw.parse(&key)?),
            "default_pool_size" => user.pool_size = Some(raw.parse(&key)?),
            "reserve_pool_size" => user.reserve_pool_size = Some(raw.parse(&key)?),
            "max_user_connections" => user.max_user_connections = Some(raw.parse(&key)?),
            "max_user_client_connections" => {
                user.max_user_client_connections = Some(raw.parse(&key)?)
            }
            other => {
                return Err(err(format!(
                    "unknown key \"{other}\" (use pool_mode, pool_size, reserve_pool_size, \
                     max_user_connections, max_user_client_connections)"
                )))
            }
        }
    }
    if user.pool_size == Some(0) {
        return Err(err("pool_size must be at least 1".into()));
    }
    Ok(user)
}
