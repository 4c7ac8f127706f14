//! What all clients share: the configuration, the users, the pools by
//! (database, user), the cancel keys and the client count. Built once in
//! `main` (or a test) and passed down as an `Arc`; there are no globals.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use crate::auth::client::Proof;
use crate::auth::throttle::Throttle;
use crate::auth::{Secret, Users};
use crate::backend::{Credential, Endpoint, Target};
use crate::cancel::Cancels;
use crate::config::{Config, ConfigError, DatabaseConfig, Sources};
use crate::pool::{Limit, Pool, PoolSettings};
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::stats::{GlobalStats, Periods, Totals};
use crate::tls::{Acceptor, Tls};

pub struct Pooler {
    /// Swapped whole by a reload; read with [`Pooler::config`].
    config: RwLock<Arc<Config>>,
    users: RwLock<Arc<Users>>,
    /// Where the configuration came from, to read it again on reload
    /// (`None`: it cannot be reloaded).
    sources: Option<Sources>,
    pub cancels: Arc<Cancels>,
    pub shutdown: Shutdown,
    pub registry: Arc<Registry>,
    pub throttle: Throttle,
    /// Clients past login, counted against `max_client_conn`.
    pub clients: AtomicUsize,
    pub stats: GlobalStats,
    /// Snapshots for SHOW STATS averages and the stats log line.
    pub periods: Periods,
    /// Built from the configuration; swapped whole on reload.
    tls: RwLock<Arc<Tls>>,
    pools: DashMap<(String, String), Arc<Pool>>,
    /// Logged-in clients per database and per user (client limits).
    db_clients: DashMap<String, AtomicUsize>,
    user_clients: DashMap<String, AtomicUsize>,
    /// `SET key = value` on the console, in order: they win over the file,
    /// env vars and flags, and last through RELOAD.
    set_on_console: std::sync::Mutex<Vec<(String, String)>>,
    /// Databases DISABLEd on the console: new clients are refused.
    disabled: std::sync::Mutex<std::collections::BTreeSet<String>>,
    db_limits: DashMap<String, Arc<Limit>>,
    user_limits: DashMap<String, Arc<Limit>>,
}

impl Pooler {
    pub fn new(config: Config) -> Result<Arc<Pooler>, ConfigError> {
        Self::with_sources(config, None)
    }

    /// A pooler that `reload` can read again from `sources`.
    pub fn with_sources(
        config: Config,
        sources: Option<Sources>,
    ) -> Result<Arc<Pooler>, ConfigError> {
        let users = Users::load(&config)?;
        let tls = Tls::new(&config)?;
        let db_limits = config
            .databases
            .iter()
            .map(|d| (d.name.clone(), Arc::new(Limit::new(d.max_db_connections))))
            .collect();
        let throttle = Throttle::new(
            config.auth_failure_limit.min(u32::MAX as usize) as u32,
            config.auth_failure_block_time,
            config.auth_failure_delay,
        );
        Ok(Arc::new(Pooler {
            config: RwLock::new(Arc::new(config)),
            users: RwLock::new(Arc::new(users)),
            sources,
            cancels: Arc::default(),
            shutdown: Shutdown::default(),
            registry: Arc::default(),
            throttle,
            clients: AtomicUsize::new(0),
            stats: GlobalStats::default(),
            periods: Periods::default(),
            tls: RwLock::new(Arc::new(tls)),
            pools: DashMap::new(),
            disabled: Default::default(),
            set_on_console: Default::default(),
            db_clients: DashMap::new(),
            user_clients: DashMap::new(),
            db_limits,
            user_limits: DashMap::new(),
        }))
    }

    /// Counts a client of `db` and `user` against `max_db_client_connections`
    /// and `max_user_client_connections` until [`Pooler::uncount_client`].
    /// Counted first, checked after: two logins at once may both be
    /// refused, never both let past a limit. A refused client is not
    /// counted.
    pub fn count_client(&self, db: &DatabaseConfig, user: &str) -> crate::error::Result<()> {
        let add = |map: &DashMap<String, AtomicUsize>, key: &str| {
            let n = map.entry(key.to_owned()).or_default();
            n.fetch_add(1, Ordering::Relaxed) + 1
        };
        let (in_db, of_user) = (
            add(&self.db_clients, &db.name),
            add(&self.user_clients, user),
        );
        let over = |n: usize, max: usize| max > 0 && n > max;
        let refused = if over(in_db, db.max_db_client_connections) {
            "max_db_client_connections"
        } else if over(of_user, self.config().max_user_client_connections(user)) {
            "max_user_client_connections"
        } else {
            return Ok(());
        };
        self.uncount_client(&db.name, user);
        Err(crate::error::Error::ClientLimit(refused))
    }

    /// A client counted by [`Pooler::count_client`] is gone.
    pub fn uncount_client(&self, database: &str, user: &str) {
        for (map, key) in [(&self.db_clients, database), (&self.user_clients, user)] {
            if let Some(n) = map.get(key) {
                n.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// DISABLE (`true`) or ENABLE a database for new clients.
    pub fn set_disabled(&self, database: &str, disabled: bool) {
        let mut set = self.disabled.lock().unwrap();
        if disabled {
            set.insert(database.to_owned());
        } else {
            set.remove(database);
        }
    }

    pub fn is_disabled(&self, database: &str) -> bool {
        self.disabled.lock().unwrap().contains(database)
    }

    /// The pool for a logged-in client, created on first use. A login that
    /// proves a credential the configuration does not give (SCRAM
    /// pass-through, a password typed in clear, a secret `auth_query`
    /// found) brings the pool's up to date: after a password change, new
    /// backends use the new one.
    pub fn pool(&self, db: &DatabaseConfig, client_user: &str, proof: &Proof) -> Arc<Pool> {
        // A user in the upstream URL is the one every backend logs in as.
        let user = db.upstream.user.as_deref().unwrap_or(client_user);
        // A client's login proves its own password, not another role's.
        let proved = (user == client_user)
            .then(|| proved_credential(proof))
            .flatten();
        let key = (db.name.clone(), user.to_owned());
        if let Some(pool) = self.pools.get(&key) {
            if let Some(credential) = proved {
                if self.configured_credential(db, user).is_none()
                    && pool.target.endpoint().credential != credential
                {
                    pool.target.set_endpoint(Endpoint::of(db, credential));
                }
            }
            return pool.clone();
        }
        self.pools
            .entry(key)
            .or_insert_with(|| {
                let credential = self
                    .configured_credential(db, user)
                    .or(proved)
                    .unwrap_or(Credential::None);
                let target = Arc::new(Target::new(
                    &db.name,
                    user,
                    Endpoint::of(db, credential),
                    self.registry.clone(),
                    self.tls.read().unwrap().connector(&db.name),
                    self.config().tcp,
                    db.connect_query.clone(),
                ));
                let db_limit = self
                    .db_limits
                    .entry(db.name.clone())
                    .or_insert_with(|| Arc::new(Limit::new(db.max_db_connections)))
                    .clone();
                let user_limit = self
                    .user_limits
                    .entry(user.to_owned())
                    .or_insert_with(|| {
                        Arc::new(Limit::new(self.config().max_user_connections(user)))
                    })
                    .clone();
                Pool::new(
                    db.name.clone(),
                    user.to_owned(),
                    target,
                    self.settings(db, user),
                    self.config().server_check_query.clone(),
                    vec![db_limit, user_limit],
                )
            })
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.read().unwrap().clone()
    }

    /// What clients' TLS handshakes use (`None`: TLS is off for clients).
    pub fn acceptor(&self) -> Option<Arc<Acceptor>> {
        self.tls.read().unwrap().acceptor.clone()
    }

    /// Reads the configuration again (SIGHUP, RELOAD). Pool sizes, limits,
    /// timeouts, users and databases change live without dropping anyone;
    /// a bad new configuration changes nothing. Addresses to listen on need
    /// a restart.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let set = self.set_on_console.lock().unwrap();
        self.reload_with(&set)
    }

    /// The console's `SET key = value`: the configuration is loaded again
    /// with it, as RELOAD does; a bad value changes nothing.
    pub fn set(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut set = self.set_on_console.lock().unwrap();
        let mut with = set.clone();
        // One entry per setting: repeated SETs do not pile up.
        let key = crate::config::canonical(key);
        with.retain(|(k, _)| k != key);
        with.push((key.to_owned(), value.to_owned()));
        self.reload_with(&with)?;
        *set = with;
        Ok(())
    }

    /// Loads the configuration again, with `set` (the console's SETs, held
    /// locked: one reload at a time) over the flags.
    fn reload_with(&self, set: &[(String, String)]) -> Result<(), ConfigError> {
        // Log rotation signals with a reload, whether the file loads or not.
        crate::logs::reopen();
        let Some(sources) = &self.sources else {
            return Err(ConfigError("this configuration cannot be reloaded".into()));
        };
        let mut sources = sources.clone();
        // After the flags: they win, and the last one of a key.
        sources.flags.extend(set.iter().cloned());
        let mut new = Config::load(&sources)?;
        let users = Users::load(&new)?;
        let tls = Arc::new(Tls::new(&new)?);
        let old = self.config();
        // Clients' cancel keys carry the peer id they were issued under.
        if new.peer_id != old.peer_id {
            tracing::warn!(
                event = "reload",
                setting = "peer_id",
                "changing peer_id needs a restart; keeping the old one"
            );
            new.peer_id = old.peer_id;
        }
        // Sizes chosen by `auto` at startup stay (asking again needs a restart).
        for db in new.databases.iter_mut().filter(|d| d.auto_pool_size) {
            if let Some(before) = old.database(&db.name) {
                db.pool_size = before.pool_size;
            }
        }
        for (name, changed) in [
            ("listen", old.listen != new.listen),
            (
                "unix_socket_dir",
                old.unix_socket_dir != new.unix_socket_dir,
            ),
            ("metrics_listen", old.metrics_listen != new.metrics_listen),
            ("logfile", old.logfile != new.logfile),
            ("pidfile", old.pidfile != new.pidfile),
        ] {
            if changed {
                tracing::warn!(
                    event = "reload",
                    setting = name,
                    "changing {name} needs a restart; keeping the old one"
                );
            }
        }
        for db in &new.databases {
            if let Some(limit) = self.db_limits.get(&db.name) {
                limit.set_max(db.max_db_connections);
            }
        }
        for limit in self.user_limits.iter() {
            limit.set_max(new.max_user_connections(limit.key()));
        }
        *self.users.write().unwrap() = Arc::new(users);
        *self.config.write().unwrap() = Arc::new(new);
        *self.tls.write().unwrap() = tls.clone();
        for pool in self.pools() {
            *pool.target.tls.write().unwrap() = tls.connector(&pool.database);
            *pool.target.tcp.write().unwrap() = self.config().tcp;
            if let Some(db) = self.config().database(&pool.database) {
                self.repoint(&pool, &db);
                *pool.target.connect_query.write().unwrap() = db.connect_query.clone();
                let settings = self.settings(&db, &pool.user);
                pool.update_settings(settings, self.config().server_check_query.clone());
            }
        }
        tracing::info!(event = "reload", "configuration reloaded");
        Ok(())
    }

    /// After a reload: a pool whose database now has another upstream, or
    /// whose user another password, sends new backends there and closes
    /// the old ones as they come back (as RECONNECT), as PgBouncer does.
    /// One whose database now names another user gets no new clients; its
    /// backends are closed as they come back.
    fn repoint(&self, pool: &Pool, db: &DatabaseConfig) {
        if db.upstream.user.as_ref().is_some_and(|u| *u != pool.user) {
            pool.reconnect();
            return;
        }
        let target = &pool.target;
        let credential = self
            .configured_credential(db, &pool.user)
            .unwrap_or_else(|| target.endpoint().credential.clone());
        let moved = target.set_endpoint(Endpoint::of(db, credential));
        if moved {
            tracing::info!(
                event = "reload",
                database = %pool.database,
                user = %pool.user,
                "the upstream or credential changed: reconnecting"
            );
            pool.reconnect();
        }
    }

    /// Every pool, for the admin console and metrics.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<_> = self.pools.iter().map(|p| p.value().clone()).collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        pools
    }

    /// Every `stats_period`: keeps the snapshots SHOW STATS averages over,
    /// and logs one line per database with traffic, like PgBouncer's.
    pub async fn keep_stats(self: Arc<Self>) {
        let period = self
            .config()
            .stats_period
            .max(std::time::Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut now: std::collections::BTreeMap<String, Totals> =
                std::collections::BTreeMap::new();
            for pool in self.pools() {
                now.entry(pool.database.clone())
                    .or_default()
                    .add_pool(&pool.stats);
            }
            let mut periods = self.periods.by_database.lock().unwrap();
            for (db, totals) in now {
                let before = periods
                    .get(&db)
                    .map(|(_, after)| *after)
                    .unwrap_or_default();
                let avg = totals.averages(&before, period);
                if totals != before && self.config().log_stats {
                    tracing::info!(
                        event = "stats",
                        database = %db,
                        xacts_per_s = avg.xacts,
                        queries_per_s = avg.queries,
                        in_bytes_per_s = avg.received,
                        out_bytes_per_s = avg.sent,
                        xact_us = avg.xact_us,
                        query_us = avg.query_us,
                        wait_us = avg.wait_us,
                        "stats"
                    );
                }
                periods.insert(db, (before, totals));
            }
        }
    }

    /// Frees the pools of databases the `*` entry serves once no client has
    /// held them for `autodb_idle_timeout` (a client naming many databases
    /// must not leave a pool each behind for ever). Checks every second.
    pub async fn forget_unused_auto_pools(self: Arc<Self>) {
        let mut unused_since = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let config = self.config();
            let Some(limit) = config.autodb_idle_timeout else {
                unused_since.clear();
                continue;
            };
            // Held only by this map: no client has it.
            let unused: Vec<(String, String)> = self
                .pools
                .iter()
                .filter(|p| Arc::strong_count(p.value()) == 1)
                .filter(|p| config.is_auto_database(&p.key().0))
                .map(|p| p.key().clone())
                .collect();
            unused_since.retain(|key, _| unused.contains(key));
            let now = std::time::Instant::now();
            for key in unused {
                let since = *unused_since.entry(key.clone()).or_insert(now);
                if now.duration_since(since) < limit {
                    continue;
                }
                unused_since.remove(&key);
                // Checked again under the map's lock: a client may have
                // just taken it.
                if self
                    .pools
                    .remove_if(&key, |_, p| Arc::strong_count(p) == 1)
                    .is_some()
                {
                    tracing::info!(
                        event = "autodb_freed",
                        database = %key.0,
                        user = %key.1,
                        "freed the pool of an automatic database no client used for autodb_idle_timeout"
                    );
                }
            }
        }
    }

    /// A pool's settings: the database's, under what `[users]` sets for
    /// `user`.
    fn settings(&self, db: &DatabaseConfig, user: &str) -> PoolSettings {
        let c = &self.config();
        let u = c.users.get(user).cloned().unwrap_or_default();
        PoolSettings {
            mode: u.pool_mode.unwrap_or(db.pool_mode),
            size: u.pool_size.unwrap_or(db.pool_size),
            min_size: db.min_pool_size,
            reserve_size: u.reserve_pool_size.unwrap_or(db.reserve_pool_size),
            reserve_timeout: c.reserve_pool_timeout,
            query_wait_timeout: c.query_wait_timeout,
            connect_timeout: c.server_connect_timeout,
            idle_timeout: c.server_idle_timeout,
            lifetime: c.server_lifetime,
            check_delay: c.server_check_delay,
            login_retry: c.server_login_retry,
            round_robin: c.server_round_robin,
        }
    }

    /// The credential the configuration gives backends logging in as
    /// `user`: the URL's password, else the user's stored password or md5
    /// secret. `None`: it comes from clients' logins ([`proved_credential`]).
    fn configured_credential(&self, db: &DatabaseConfig, user: &str) -> Option<Credential> {
        if db.upstream.user.is_some() {
            if let Some(p) = &db.upstream.password {
                return Some(Credential::Password(p.clone()));
            }
        }
        secret_credential(self.users().get(user).as_deref())
    }
}

/// A stored password or md5 secret, which backends can log in with (a SCRAM
/// secret alone cannot: it takes a client's ClientKey).
fn secret_credential(secret: Option<&Secret>) -> Option<Credential> {
    match secret? {
        Secret::Plain { password, .. } => Some(Credential::Password(password.clone())),
        Secret::Md5(m) => Some(Credential::Md5(m.clone())),
        _ => None,
    }
}

/// What a client's login proved that backends can log in with: the secret
/// `auth_query` found, else the password the client typed (plain auth) or
/// the ClientKey its SCRAM login proved (SCRAM pass-through, as PgBouncer
/// does).
fn proved_credential(proof: &Proof) -> Option<Credential> {
    secret_credential(proof.looked_up.as_deref()).or_else(|| {
        match (&proof.cleartext, &proof.scram) {
            (Some(p), _) => Some(Credential::Password(p.clone())),
            (None, Some(keys)) => Some(Credential::ScramKeys(keys.clone())),
            (None, None) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console's SETs keep one entry per setting (under its canonical
    /// name), the last value winning; a refused one leaves them as they were.
    #[test]
    fn console_sets_keep_one_entry_per_setting() {
        let flags = vec![(
            "upstream".to_owned(),
            "postgres://u:p@127.0.0.1/d".to_owned(),
        )];
        let sources = Sources {
            flags,
            ..Sources::default()
        };
        let config = Config::load(&sources).unwrap();
        let pooler = Pooler::with_sources(config, Some(sources)).unwrap();
        for size in ["4", "5", "6"] {
            pooler.set("pool_size", size).unwrap();
        }
        pooler.set("default_pool_size", "7").unwrap();
        // Cancel keys already issued carry the peer id: it stays.
        pooler.set("peer_id", "5").unwrap();
        assert_eq!(pooler.config().peer_id, 0);
        assert!(pooler.set("default_pool_size", "many").is_err());
        assert_eq!(
            *pooler.set_on_console.lock().unwrap(),
            [
                ("default_pool_size".to_owned(), "7".to_owned()),
                ("peer_id".to_owned(), "5".to_owned())
            ]
        );
        assert_eq!(pooler.config().default_pool_size, 7);
    }
}
