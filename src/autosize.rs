//! `default_pool_size = auto`: a pool size derived from what the server
//! allows, shared across a fleet.
//!
//! A Heroku Postgres plan caps connections across all dynos. At startup
//! pgdyno asks each such database's server for `max_connections` and
//! `superuser_reserved_connections`, keeps `pool_size_headroom` free for
//! other tools, divides the rest by `fleet_size`, and logs what it chose.

use std::sync::Arc;

use crate::auth::Users;
use crate::backend::{Backend, Credential, Endpoint, Target};
use crate::config::{Config, ConfigError};

/// The pool size for a server allowing `max_connections`.
pub fn pool_size(max_connections: usize, reserved: usize, headroom: usize, fleet: usize) -> usize {
    (max_connections.saturating_sub(reserved + headroom) / fleet.max(1)).max(1)
}

/// Replaces each `auto` pool size by the size its server allows.
pub async fn resolve(config: &mut Config) -> Result<(), ConfigError> {
    let users = Users::load(config)?;
    let (headroom, fleet) = (config.pool_size_headroom, config.fleet_size);
    for db in config.databases.iter_mut().filter(|d| d.auto_pool_size) {
        let user = db.upstream.user.clone().unwrap_or_default();
        let credential = match (&db.upstream.password, users.get(&user)) {
            (Some(p), _) => Credential::Password(p.clone()),
            (None, Some(secret)) => match (secret.password(), secret.md5(&user)) {
                (Some(p), _) => Credential::Password(p.to_owned()),
                (None, Some(m)) => Credential::Md5(m),
                (None, None) => Credential::None,
            },
            (None, None) => Credential::None,
        };
        let mut endpoint = Endpoint::of(db, credential);
        if db.name == crate::config::FALLBACK_DATABASE && db.upstream.dbname.is_none() {
            // `*` names no database: ask the server's own.
            endpoint.dbname = "postgres".into();
        }
        let tls = crate::tls::Connector::new(&db.upstream, &config.server_tls, &mut None)?;
        let target = Arc::new(Target::new(
            &db.name,
            &user,
            endpoint,
            Arc::default(),
            Arc::new(tls),
            config.tcp,
            String::new(),
        ));
        let fail = |e: crate::error::Error| {
            ConfigError(format!(
                "default_pool_size = auto: cannot ask database {} for max_connections: {e}",
                db.name
            ))
        };
        let mut backend = Backend::connect(target, config.server_connect_timeout, 0)
            .await
            .map_err(fail)?;
        let row = backend
            .query_row(
                "SELECT current_setting('max_connections'), \
                 current_setting('superuser_reserved_connections')",
            )
            .await
            .map_err(fail)?;
        let number = |i: usize| {
            row.get(i)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    ConfigError(format!(
                        "default_pool_size = auto: unexpected answer from database {}",
                        db.name
                    ))
                })
        };
        let (max, reserved) = (number(0)?, number(1)?);
        db.pool_size = pool_size(max, reserved, headroom, fleet);
        tracing::info!(
            event = "auto_pool_size",
            database = %db.name,
            max_connections = max,
            superuser_reserved_connections = reserved,
            pool_size_headroom = headroom,
            fleet_size = fleet,
            pool_size = db.pool_size,
            "default_pool_size = auto: pool size chosen"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pool_size;

    #[test]
    fn sizes() {
        // Heroku's standard-0: 120 connections, 3 reserved, 4 dynos.
        assert_eq!(pool_size(120, 3, 5, 4), 28);
        assert_eq!(pool_size(20, 3, 5, 1), 12);
        assert_eq!(pool_size(10, 3, 5, 8), 1);
        assert_eq!(pool_size(5, 3, 5, 1), 1);
    }
}
